//! Spark's primitive encoders (`Encoders.*`, spec §1.5): big-endian integers, length-prefixed
//! strings and arrays. Every count read off the wire is checked against the bytes actually left
//! before anything is allocated, so a hostile length can never make us reserve memory.

use bytes::{Buf, BufMut};

/// Why a field could not be decoded. Rendered in Java style through [`super::MessageError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ended before a field it announces.
    #[error("readerIndex + length({needed}) exceeds writerIndex (only {left} bytes left)")]
    Truncated {
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message.
        left: usize,
    },
    /// An array or string length was negative.
    #[error("negative length {0}")]
    NegativeLength(i32),
    /// A string field was not valid UTF-8.
    #[error("string is not valid UTF-8")]
    BadUtf8,
}

fn need(buf: &impl Buf, n: usize) -> Result<(), WireError> {
    if buf.remaining() < n {
        return Err(WireError::Truncated { needed: n, left: buf.remaining() });
    }
    Ok(())
}

pub fn get_u8(buf: &mut impl Buf) -> Result<u8, WireError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

pub fn get_bool(buf: &mut impl Buf) -> Result<bool, WireError> {
    // Java writes 1 for true and reads any non-zero byte as true.
    Ok(get_u8(buf)? != 0)
}

pub fn get_i32(buf: &mut impl Buf) -> Result<i32, WireError> {
    need(buf, 4)?;
    Ok(buf.get_i32())
}

pub fn get_i64(buf: &mut impl Buf) -> Result<i64, WireError> {
    need(buf, 8)?;
    Ok(buf.get_i64())
}

/// A length prefix, checked to be non-negative and to fit `elem_size` bytes per element in what
/// is left of the message.
fn get_len(buf: &mut impl Buf, elem_size: usize) -> Result<usize, WireError> {
    let n = get_i32(buf)?;
    let n = usize::try_from(n).map_err(|_| WireError::NegativeLength(n))?;
    need(buf, n.saturating_mul(elem_size))?;
    Ok(n)
}

pub fn get_bytes(buf: &mut impl Buf) -> Result<bytes::Bytes, WireError> {
    let n = get_len(buf, 1)?;
    Ok(buf.copy_to_bytes(n))
}

pub fn get_string(buf: &mut impl Buf) -> Result<String, WireError> {
    let raw = get_bytes(buf)?;
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::BadUtf8)
}

pub fn get_string_array(buf: &mut impl Buf) -> Result<Vec<String>, WireError> {
    // Each string costs at least its 4-byte length prefix.
    let n = get_len(buf, 4)?;
    (0..n).map(|_| get_string(buf)).collect()
}

pub fn get_int_array(buf: &mut impl Buf) -> Result<Vec<i32>, WireError> {
    let n = get_len(buf, 4)?;
    (0..n).map(|_| get_i32(buf)).collect()
}

pub fn get_long_array(buf: &mut impl Buf) -> Result<Vec<i64>, WireError> {
    let n = get_len(buf, 8)?;
    (0..n).map(|_| get_i64(buf)).collect()
}

/// `i32 outerCount`, then that many int arrays (FetchShuffleBlocks reduce ids).
pub fn get_nested_int_array(buf: &mut impl Buf) -> Result<Vec<Vec<i32>>, WireError> {
    let n = get_len(buf, 4)?;
    (0..n).map(|_| get_int_array(buf)).collect()
}

pub fn string_len(s: &str) -> usize {
    4 + s.len()
}

pub fn string_array_len(v: &[String]) -> usize {
    4 + v.iter().map(|s| string_len(s)).sum::<usize>()
}

pub fn put_string(buf: &mut impl BufMut, s: &str) {
    put_len(buf, s.len());
    buf.put_slice(s.as_bytes());
}

pub fn put_bytes(buf: &mut impl BufMut, b: &[u8]) {
    put_len(buf, b.len());
    buf.put_slice(b);
}

pub fn put_string_array(buf: &mut impl BufMut, v: &[String]) {
    put_len(buf, v.len());
    v.iter().for_each(|s| put_string(buf, s));
}

pub fn put_int_array(buf: &mut impl BufMut, v: &[i32]) {
    put_len(buf, v.len());
    v.iter().for_each(|x| buf.put_i32(*x));
}

pub fn put_long_array(buf: &mut impl BufMut, v: &[i64]) {
    put_len(buf, v.len());
    v.iter().for_each(|x| buf.put_i64(*x));
}

/// Lengths we write come from values we decoded or built, all far below 2 GiB; saturate rather
/// than wrap if that ever stops being true, so the peer sees a bad length, not a wrong one.
fn put_len(buf: &mut impl BufMut, n: usize) {
    buf.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_round_trips_with_its_length_prefix() {
        let mut out = Vec::new();
        put_string(&mut out, "app-1");
        assert_eq!(out, b"\x00\x00\x00\x05app-1");
        assert_eq!(get_string(&mut &out[..]).unwrap(), "app-1");
    }

    #[test]
    fn a_huge_array_count_is_refused_before_allocating() {
        let buf = [0x7f, 0xff, 0xff, 0xff, 0, 0];
        assert!(matches!(get_long_array(&mut &buf[..]), Err(WireError::Truncated { .. })));
        assert!(matches!(get_string_array(&mut &buf[..]), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn a_negative_length_is_refused() {
        let buf = [0xff, 0xff, 0xff, 0xfe];
        assert_eq!(get_string(&mut &buf[..]), Err(WireError::NegativeLength(-2)));
    }

    #[test]
    fn invalid_utf8_in_a_string_is_refused() {
        let buf = [0, 0, 0, 1, 0xff];
        assert_eq!(get_string(&mut &buf[..]), Err(WireError::BadUtf8));
    }
}
