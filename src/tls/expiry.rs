//! When a certificate stops being valid: `notAfter` read out of its DER, for the expiry metric.
//! Only the few fields in front of it are walked (version, serial, signature algorithm,
//! issuer, then validity); nothing is verified here, rustls does that.

/// Unix seconds of the certificate's `notAfter`, or None if the DER is not shaped like an
/// X.509 certificate.
pub fn not_after_unix_secs(der: &[u8]) -> Option<i64> {
    let (cert, _) = element(der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1; // [0] EXPLICIT version
    }
    for tag in [0x02, 0x30, 0x30] {
        rest = element(rest, tag)?.1; // serialNumber, signature, issuer
    }
    let (validity, _) = element(rest, 0x30)?;
    let not_before_rest = skip_time(validity)?;
    time(not_before_rest)
}

/// One DER element of tag `tag` at the start of `b`: (its contents, what follows it).
fn element(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = b.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn skip_time(b: &[u8]) -> Option<&[u8]> {
    let tag = *b.first()?;
    Some(element(b, tag)?.1)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(b: &[u8]) -> Option<i64> {
    let tag = *b.first()?;
    let (text, _) = element(b, tag)?;
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy = digits(&text[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 4), 20_791);
    }

    /// A certificate's skeleton: version, serial, algorithm, issuer, then validity.
    fn skeleton(not_before: &[u8], not_after: &[u8]) -> Vec<u8> {
        let wrap = |tag: u8, body: &[u8]| {
            let mut out = vec![tag, u8::try_from(body.len()).expect("short")];
            out.extend_from_slice(body);
            out
        };
        let validity = wrap(0x30, &[not_before, not_after].concat());
        let tbs = [
            wrap(0xa0, &wrap(0x02, &[2])),
            wrap(0x02, &[1, 2, 3]),
            wrap(0x30, &wrap(0x06, &[42])),
            wrap(0x30, &[]),
            validity,
        ]
        .concat();
        wrap(0x30, &wrap(0x30, &tbs))
    }

    #[test]
    fn utc_and_generalized_times_are_read() {
        let utc = |s: &str| [vec![0x17, s.len() as u8], s.as_bytes().to_vec()].concat();
        let gen = |s: &str| [vec![0x18, s.len() as u8], s.as_bytes().to_vec()].concat();
        let der = skeleton(&utc("261204000000Z"), &utc("261206120000Z"));
        assert_eq!(not_after_unix_secs(&der), Some(20_793 * 86_400 + 12 * 3600));
        let der = skeleton(&utc("261204000000Z"), &gen("20500101000000Z"));
        assert_eq!(not_after_unix_secs(&der), Some(days_from_civil(2050, 1, 1) * 86_400));
        assert_eq!(not_after_unix_secs(&skeleton(&utc("261204000000Z"), &utc("26120400000Z"))), None, "short");
        assert_eq!(not_after_unix_secs(b"\x30\x03\x02\x01"), None, "truncated");
        assert_eq!(not_after_unix_secs(&[]), None);
    }
}
