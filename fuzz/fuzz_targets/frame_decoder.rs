//! Fuzz target: arbitrary bytes through the frame codec, and every decoded RPC body through the
//! shuffle-message decoder and OpenBlocks id parser. Nothing may panic, and a message that
//! decodes must re-encode to bytes that decode to the same message.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spark_shuffle_agent::protocol::{parse_open_blocks, BlockTransferMessage, FrameCodec, Inbound, Message};
use tokio_util::codec::Decoder;

fn check_payload(body: &[u8]) {
    if let Ok(msg) = BlockTransferMessage::decode(body) {
        if let BlockTransferMessage::OpenBlocks { block_ids, .. } = &msg {
            let _ = parse_open_blocks(block_ids);
        }
        if !matches!(msg, BlockTransferMessage::Unparsed { .. }) {
            let again = BlockTransferMessage::decode(&msg.encode()).expect("re-encoded message decodes");
            assert_eq!(again, msg);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_payload(data);
    let mut codec = FrameCodec::new(1 << 20);
    let mut input = BytesMut::from(data);
    while let Ok(Some(item)) = codec.decode(&mut input) {
        if let Inbound::Message(Message::RpcRequest { body, .. } | Message::OneWayMessage { body }) = item {
            check_payload(&body);
        }
    }
});
