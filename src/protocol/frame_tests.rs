//! Frame codec tests: golden bytes from spec §1.4 and the captured vectors, round trips of
//! every message type, split reads, and frames that must be refused.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn encoded(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    b.to_vec()
}

fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Inbound>, FrameError> {
    let mut codec = FrameCodec::new(max);
    let mut src = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(item) = codec.decode(&mut src)? {
        out.push(item);
    }
    assert!(src.is_empty(), "left over: {src:?}");
    Ok(out)
}

fn every_message() -> Vec<Message> {
    let chunk = StreamChunkId { stream_id: 1000, chunk_index: 3 };
    vec![
        Message::ChunkFetchRequest(chunk),
        Message::ChunkFetchSuccess { chunk, body: Bytes::from_static(b"data") },
        Message::ChunkFetchFailure { chunk, error: "java.lang.IllegalStateException: x".into() },
        Message::RpcRequest { request_id: 7, body: Bytes::from_static(b"\x02abc") },
        Message::RpcResponse { request_id: 7, body: Bytes::new() },
        Message::RpcFailure { request_id: -9, error: "é".into() },
        Message::StreamRequest { stream_id: "1000_0".into() },
        Message::StreamResponse { stream_id: "1000_0".into(), byte_count: 0 },
        Message::StreamFailure { stream_id: "1000_0".into(), error: "Stream '1000_0' was not found.".into() },
        Message::OneWayMessage { body: Bytes::from_static(b"\x13") },
        Message::UploadStream { request_id: 5, meta: Bytes::from_static(b"\x0c"), body_byte_count: 0 },
        Message::MergedBlockMetaRequest {
            request_id: 1,
            app_id: "a".into(),
            shuffle_id: 2,
            shuffle_merge_id: 3,
            reduce_id: 4,
        },
        Message::MergedBlockMetaSuccess { request_id: 1, num_chunks: 2, body: Bytes::from_static(b"xy") },
    ]
}

#[test]
fn every_message_type_round_trips() {
    for m in every_message() {
        let bytes = encoded(&m);
        let got = decode_all(&bytes, 1 << 20).unwrap();
        assert_eq!(got, vec![Inbound::Message(m.clone())], "{m:?}");
    }
}

#[test]
fn golden_bytes_of_spec_section_1_4() {
    let chunk = StreamChunkId { stream_id: 1000, chunk_index: 0 };
    let cases = [
        (Message::RpcResponse { request_id: 7, body: Bytes::new() }, "0000000000000015 04 0000000000000007 00000000"),
        (Message::ChunkFetchRequest(chunk), "0000000000000015 00 00000000000003e8 00000000"),
        (Message::StreamRequest { stream_id: "1000_0".into() }, "0000000000000013 06 00000006 313030305f30"),
        (
            Message::StreamResponse { stream_id: "1000_0".into(), byte_count: 123 },
            "000000000000001b 07 00000006 313030305f30 000000000000007b",
        ),
        (
            Message::RpcResponse {
                request_id: 0x1122334455667788,
                body: Bytes::from(hex("03 00000000000003e8 00000002")),
            },
            "0000000000000022 04 1122334455667788 0000000d 03 00000000000003e8 00000002",
        ),
    ];
    for (m, want) in cases {
        assert_eq!(encoded(&m), hex(want), "{m:?}");
    }
}

#[test]
fn a_zero_copy_header_counts_the_body_it_announces() {
    let chunk = StreamChunkId { stream_id: 1000, chunk_index: 0 };
    let mut b = BytesMut::new();
    Message::ChunkFetchSuccess { chunk, body: Bytes::new() }.encode_header(&mut b, 123);
    assert_eq!(b.to_vec(), hex("0000000000000090 01 00000000000003e8 00000000"));
}

#[test]
fn captured_fetch_shuffle_blocks_request_decodes() {
    // fetch_plain.txt: RpcRequest carrying FetchShuffleBlocks, exact bytes.
    let frame = hex("0000000000000077 03 71906655f6c32862 00000062 \
         09 00000017 6170702d32303236303130313030303030302d30303030 00000001 30 00000000 00000003 \
         0000000000000000 0000000000000001 0000000100000005 00000003 00000002 00000000 00000002 \
         00000001 00000003 00000001 00000001 00");
    let got = decode_all(&frame, 1 << 20).unwrap();
    let Inbound::Message(Message::RpcRequest { request_id, body }) = &got[0] else { panic!("{got:?}") };
    assert_eq!(*request_id, 0x71906655f6c32862);
    assert_eq!(body.len(), 98);
}

#[test]
fn a_frame_split_at_every_byte_decodes_the_same() {
    let mut all = Vec::new();
    for m in every_message() {
        all.extend(encoded(&m));
    }
    for cut in 1..all.len() {
        let mut codec = FrameCodec::new(1 << 20);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for piece in [&all[..cut], &all[cut..]] {
            src.extend_from_slice(piece);
            while let Some(item) = codec.decode(&mut src).unwrap() {
                out.push(item);
            }
        }
        assert_eq!(out.len(), every_message().len(), "cut at {cut}");
    }
}

#[test]
fn an_out_of_frame_stream_body_comes_out_as_body_pieces() {
    let mut bytes = encoded(&Message::StreamResponse { stream_id: "1_0".into(), byte_count: 5 });
    bytes.extend_from_slice(b"hello");
    bytes.extend(encoded(&Message::ChunkFetchRequest(StreamChunkId { stream_id: 1, chunk_index: 1 })));
    let mut codec = FrameCodec::new(1 << 20);
    let mut src = BytesMut::new();
    let mut body = Vec::new();
    let mut msgs = 0;
    // Feed byte by byte: the body must be reassembled exactly, and framing must resume after it.
    for b in bytes {
        src.extend_from_slice(&[b]);
        while let Some(item) = codec.decode(&mut src).unwrap() {
            match item {
                Inbound::Body(piece) => body.extend_from_slice(&piece),
                Inbound::Message(_) => msgs += 1,
            }
        }
    }
    assert_eq!(body, b"hello");
    assert_eq!(msgs, 2);
    assert!(!codec.in_body());
}

#[test]
fn a_zero_length_frame_is_refused() {
    let err = decode_all(&hex("0000000000000000"), 1 << 20).unwrap_err();
    assert!(matches!(err, FrameError::NotPositive(-8)), "{err}");
    assert_eq!(err.to_string(), "Frame length should be positive: -8");
}

#[test]
fn a_negative_frame_length_is_refused() {
    let err = decode_all(&hex("ffffffffffffffff"), 1 << 20).unwrap_err();
    assert!(matches!(err, FrameError::NotPositive(_)), "{err}");
}

#[test]
fn an_oversized_frame_is_refused_before_it_arrives() {
    // Only the 8 length bytes are present: the limit is checked before any reservation.
    let mut codec = FrameCodec::new(1024);
    let mut src = BytesMut::from(&hex("0000000100000000")[..]);
    let err = codec.decode(&mut src).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    assert!(src.capacity() < 1 << 20);
}

#[test]
fn an_unknown_transport_type_is_refused() {
    // probe_bad_frame_type.txt: type 0x0d.
    let err = decode_all(&hex("0000000000000015 0d 0000000000000000 00000000"), 1 << 20).unwrap_err();
    assert!(matches!(err, FrameError::UnknownType(13)), "{err}");
}

#[test]
fn a_header_running_past_its_frame_is_refused() {
    // A ChunkFetchRequest frame that holds only 4 of its 12 header bytes.
    let err = decode_all(&hex("000000000000000d 00 00000001"), 1 << 20).unwrap_err();
    assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
    // A failure whose error string claims more bytes than the frame has.
    let err = decode_all(&hex("0000000000000015 05 0000000000000001 7fffffff"), 1 << 20).unwrap_err();
    assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
}

#[test]
fn a_truncated_frame_waits_for_more_bytes() {
    let bytes = encoded(&Message::ChunkFetchRequest(StreamChunkId { stream_id: 1, chunk_index: 0 }));
    let mut codec = FrameCodec::new(1 << 20);
    let mut src = BytesMut::from(&bytes[..bytes.len() - 1]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
}

#[test]
fn waiting_for_a_large_frame_reserves_nothing() {
    // 9 bytes of a frame announcing 8 MiB: the reader decides how much to buffer, not the codec.
    let mut codec = FrameCodec::new(16 << 20);
    let mut src = BytesMut::with_capacity(64);
    src.extend_from_slice(&hex("0000000000800008 03"));
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert_eq!(src.capacity(), 64, "decode grew the buffer for a frame that has not arrived");
}

#[test]
fn the_incomplete_frame_length_is_known_once_its_length_field_is() {
    let codec = FrameCodec::new(1 << 20);
    let bytes = encoded(&Message::ChunkFetchRequest(StreamChunkId { stream_id: 1, chunk_index: 0 }));
    assert_eq!(bytes.len(), 21);
    assert_eq!(codec.incomplete_frame_len(&bytes[..7]), None, "length field not there yet");
    assert_eq!(codec.incomplete_frame_len(&bytes[..8]), Some(21));
    assert_eq!(codec.incomplete_frame_len(&bytes[..20]), Some(21));
    assert_eq!(codec.incomplete_frame_len(&bytes), None, "complete");
    assert_eq!(codec.incomplete_frame_len(&hex("0000000000000000")), None, "invalid: decode refuses it");
    assert_eq!(codec.incomplete_frame_len(&hex("0000000100000000")), None, "over the limit: decode refuses it");
}

#[test]
fn inside_an_out_of_frame_body_no_frame_is_pending() {
    let mut codec = FrameCodec::new(1 << 20);
    let mut src = BytesMut::from(&encoded(&Message::StreamResponse { stream_id: "1_0".into(), byte_count: 100 })[..]);
    assert!(matches!(codec.decode(&mut src).unwrap(), Some(Inbound::Message(_))));
    // The next 100 bytes are raw body, whatever they look like.
    assert_eq!(codec.incomplete_frame_len(&hex("0000000000001000")), None);
}
