use zeroize::Zeroizing;

use super::*;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8 ^ seed).collect()
}

fn k128() -> SessionKey {
    SessionKey::Aes128(Zeroizing::new([7; 16]))
}

fn k256() -> SessionKey {
    SessionKey::Aes256(Zeroizing::new([9; 32]))
}

/// A counter instead of the system RNG: each call gives other bytes, reproducibly.
fn counting(buf: &mut [u8]) -> Result<(), GcmError> {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = start.wrapping_add(i as u8);
    }
    Ok(())
}

/// Plaintext lengths around every edge: empty, one byte, a segment minus and plus one, the
/// range where Spark before SPARK-56227 miscounted (32728, 32752], several segments.
const LENGTHS: [usize; 9] =
    [0, 1, 32_728, 32_729, PLAIN_SEGMENT - 1, PLAIN_SEGMENT, PLAIN_SEGMENT + 1, 17, 3 * PLAIN_SEGMENT + 5];

fn stream(key: SessionKey, lengths: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let mut enc = GcmEncryptor::with_random(key, counting);
    let (mut wire, mut plain) = (Vec::new(), Vec::new());
    for (i, &len) in lengths.iter().enumerate() {
        let msg = pattern(len, i as u8);
        let sealed = enc.seal(&msg).unwrap();
        assert_eq!(sealed.len() as u64, enc.sealed_len(len as u64), "length prefix of a {len}-byte message");
        assert_eq!(&sealed[..8], &(sealed.len() as u64).to_be_bytes(), "the prefix counts itself");
        wire.extend_from_slice(&sealed);
        plain.extend_from_slice(&msg);
    }
    (wire, plain)
}

fn open_in_pieces(key: SessionKey, wire: &[u8], pieces: &[usize]) -> Result<Vec<u8>, GcmError> {
    let mut dec = GcmDecryptor::new(key);
    let mut out = BytesMut::new();
    let mut rest = wire;
    for &n in pieces {
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        dec.feed(piece, &mut out)?;
        rest = tail;
    }
    dec.feed(rest, &mut out)?;
    assert!(dec.at_message_boundary(), "the stream ended inside a message");
    Ok(out.to_vec())
}

#[test]
fn messages_of_every_edge_length_round_trip_with_both_key_sizes() {
    for key in [k128, k256] {
        let (wire, plain) = stream(key(), &LENGTHS);
        assert_eq!(open_in_pieces(key(), &wire, &[]).unwrap(), plain);
    }
}

#[test]
fn the_wire_layout_is_length_tink_header_and_32_kib_segments() {
    let mut enc = GcmEncryptor::with_random(k256(), counting);
    let sealed = enc.seal(&pattern(PLAIN_SEGMENT + 1, 0)).unwrap();
    // 8 + (1 + 32 + 7) + one full segment + one byte with its tag.
    assert_eq!(sealed.len(), 8 + 40 + CIPHER_SEGMENT + 1 + 16);
    assert_eq!(sealed[8], 40, "Tink's header starts with its own length");
    let mut enc = GcmEncryptor::with_random(k128(), counting);
    let empty = enc.seal(&[]).unwrap();
    assert_eq!(empty.len(), 8 + 24, "an empty message is its prefix only: no segment, no tag");
    assert_eq!(empty[8], 24);
}

#[test]
fn a_stream_fed_one_byte_at_a_time_splits_at_every_byte_boundary() {
    // One piece per byte: every boundary (length, header, segment, tag, message) is a split.
    let (wire, plain) = stream(k128(), &LENGTHS);
    let mut dec = GcmDecryptor::new(k128());
    let mut out = BytesMut::new();
    for b in wire.chunks(1) {
        dec.feed(b, &mut out).unwrap();
    }
    assert!(out[..] == plain[..]);
}

#[test]
fn a_stream_of_small_messages_split_at_every_pair_of_points_gives_the_same_plaintext() {
    let (wire, plain) = stream(k256(), &[0, 3, 1, 40]);
    for a in 0..=wire.len() {
        for b in a..=wire.len() {
            assert_eq!(open_in_pieces(k256(), &wire, &[a, b - a]).unwrap(), plain, "split at {a},{b}");
        }
    }
}

#[test]
fn plaintext_leaves_as_each_segment_completes_not_at_the_message_end() {
    let (wire, plain) = stream(k128(), &[2 * PLAIN_SEGMENT + 9]);
    let mut dec = GcmDecryptor::new(k128());
    let mut out = BytesMut::new();
    dec.feed(&wire[..8 + 24 + CIPHER_SEGMENT], &mut out).unwrap();
    assert_eq!(out[..], plain[..PLAIN_SEGMENT], "one segment in, one segment out");
    dec.feed(&wire[8 + 24 + CIPHER_SEGMENT..wire.len() - 1], &mut out).unwrap();
    assert_eq!(out.len(), 2 * PLAIN_SEGMENT, "the last segment waits for its last byte");
    assert!(!dec.at_message_boundary());
}

#[test]
fn a_changed_tag_ciphertext_or_header_byte_is_refused() {
    let (wire, _) = stream(k128(), &[PLAIN_SEGMENT + 100]);
    let seg0_end = 8 + 24 + CIPHER_SEGMENT;
    for (at, what) in [
        (seg0_end - 1, "last tag byte of segment 0"),
        (8 + 24, "first ciphertext byte"),
        (wire.len() - 1, "last tag byte of the last segment"),
        (9, "salt"),
        (8 + 24 - 1, "nonce prefix"),
    ] {
        let mut bad = wire.clone();
        bad[at] ^= 1;
        let err = open_in_pieces(k128(), &bad, &[]).unwrap_err();
        assert!(matches!(err, GcmError::BadTag(_)), "{what}: {err:?}");
    }
    let mut bad = wire.clone();
    bad[8] = 40;
    assert!(matches!(open_in_pieces(k128(), &bad, &[]), Err(GcmError::BadHeader { found: 40, expected: 24 })));
}

#[test]
fn the_wrong_key_segments_out_of_order_or_a_changed_length_fail_authentication() {
    let (wire, _) = stream(k128(), &[100]);
    let other = SessionKey::Aes128(Zeroizing::new([8; 16]));
    assert!(matches!(open_in_pieces(other, &wire, &[]), Err(GcmError::BadTag(0))));

    // Two full segments swapped: each one's nonce carries its number.
    let (wire, _) = stream(k128(), &[2 * PLAIN_SEGMENT]);
    let (head, segs) = wire.split_at(8 + 24);
    let mut swapped = head.to_vec();
    swapped.extend_from_slice(&segs[CIPHER_SEGMENT..]);
    swapped.extend_from_slice(&segs[..CIPHER_SEGMENT]);
    assert!(matches!(open_in_pieces(k128(), &swapped, &[]), Err(GcmError::BadTag(0))));

    // The same message cut short with a length to match: the last-segment flag differs.
    let mut cut = wire[..8 + 24 + CIPHER_SEGMENT].to_vec();
    let len = cut.len() as u64;
    cut[..8].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(open_in_pieces(k128(), &cut, &[]), Err(GcmError::BadTag(0))));
}

#[test]
fn lengths_no_spark_encryptor_writes_are_refused_before_any_decryption() {
    let mut dec = GcmDecryptor::new(k128());
    let mut out = BytesMut::new();
    // Shorter than its own header.
    assert!(matches!(dec.feed(&31u64.to_be_bytes(), &mut out), Err(GcmError::BadLength(31))));
    // A last segment of 15 bytes cannot hold its tag.
    let mut dec = GcmDecryptor::new(k128());
    assert!(matches!(dec.feed(&(32u64 + 15).to_be_bytes(), &mut out), Err(GcmError::BadLength(47))));
    // More segments than a u32 numbers.
    let mut dec = GcmDecryptor::new(k128());
    let huge = 32 + (u64::from(u32::MAX) + 1) * CIPHER_SEGMENT as u64;
    assert!(matches!(dec.feed(&huge.to_be_bytes(), &mut out), Err(GcmError::BadLength(_))));
    assert!(out.is_empty());
}

#[test]
fn a_sealed_message_takes_segments_of_exactly_the_size_it_asks_for() {
    let mut enc = GcmEncryptor::with_random(k128(), counting);
    let mut msg = enc.begin(PLAIN_SEGMENT as u64 + 3).unwrap();
    assert_eq!(msg.prefix().len(), 8 + 24);
    assert_eq!(msg.wire_len(), (8 + 24 + CIPHER_SEGMENT + 3 + 16) as u64);
    assert_eq!(msg.next_segment_len(), PLAIN_SEGMENT);
    assert!(matches!(msg.seal_segment(&mut [0; 3]), Err(GcmError::SegmentSize { got: 3, want: PLAIN_SEGMENT })));
    msg.seal_segment(&mut vec![0; PLAIN_SEGMENT]).unwrap();
    assert_eq!(msg.next_segment_len(), 3);
    msg.seal_segment(&mut [0; 3]).unwrap();
    assert!(msg.is_done());
    assert!(matches!(msg.seal_segment(&mut []), Err(GcmError::SegmentSize { got: 0, want: 0 })));
}

#[test]
fn every_message_gets_its_own_salt_so_equal_plaintexts_differ_on_the_wire() {
    let mut enc = GcmEncryptor::new(k256());
    let (a, b) = (enc.seal(b"same").unwrap(), enc.seal(b"same").unwrap());
    assert_ne!(a[9..], b[9..]);
    assert_eq!(open_in_pieces(k256(), &[a, b].concat(), &[]).unwrap(), b"samesame");
}
