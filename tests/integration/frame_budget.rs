//! The node-wide budget for large request frames being received (`agent.max.pending.frame.bytes`,
//! src/server/input.rs), on real sockets against the real agent: stalled large frames hold at
//! most the budget; a large frame over it waits (the agent stops reading it) and goes on once
//! budget is given back, or is closed and counted after the idle timeout; ordinary requests
//! never wait; and the budget follows a connection from the control runtime to the data runtime
//! and comes back whichever runtime ends it.

use std::time::Duration;

use crate::common::{
    fetch_map_0_0, start_agent_with, test_config, wait_until, TestAgent, TestClient, VectorLayout, APP_ID,
};
use bytes::{BufMut, Bytes, BytesMut};
use spark_shuffle_agent::config::Config;
use spark_shuffle_agent::protocol::{BlockTransferMessage as M, Message};
use spark_shuffle_agent::server::SMALL_FRAME;

const MAX_FRAME: usize = 1 << 20;
const BUDGET: usize = 2 << 20;
/// A large request frame: within the frame limit; two fit the budget, three do not.
const LARGE: usize = 768 << 10;

fn settings() -> Config {
    Config { max_frame_bytes: MAX_FRAME, max_pending_frame_bytes: BUDGET, ..test_config() }
}

/// The bytes of an RpcRequest frame of exactly `len` bytes whose body the agent cannot parse
/// (message type 99): once it has the whole frame it answers an RpcFailure, and the
/// connection stays usable.
fn large_rpc(request_id: i64, len: usize) -> BytesMut {
    let mut body = vec![0u8; len - 21];
    body[0] = 99;
    let mut frame = BytesMut::new();
    Message::RpcRequest { request_id, body: Bytes::from(body) }.encode(&mut frame);
    assert_eq!(frame.len(), len);
    frame
}

async fn expect_rpc_failure(client: &mut TestClient, request_id: i64) {
    match client.recv_message().await {
        Message::RpcFailure { request_id: got, error } if got == request_id => {
            assert!(error.contains("Unknown message type: 99"), "{error}")
        }
        other => panic!("expected the RpcFailure of request {request_id}, got {other:?}"),
    }
}

/// Budget in use, as the gauge reads it. Checked against the budget at every look.
fn pending(agent: &TestAgent) -> u64 {
    let in_use = agent.shared.frame_budget.in_use_bytes();
    assert!(in_use <= BUDGET as u64, "{in_use} bytes granted, over the budget of {BUDGET}");
    in_use
}

async fn registered_client(agent: &TestAgent, layout: &VectorLayout) -> TestClient {
    let mut client = agent.connect().await;
    assert_eq!(client.rpc_msg(&layout.exec0.register(APP_ID, "0")).await, Ok(None), "register");
    client
}

/// Proves a connection works: a fetch of shuffle_0_0_0 on it succeeds.
async fn still_serves(client: &mut TestClient, layout: &VectorLayout) {
    let (id, _) = client.open_stream(&fetch_map_0_0()).await.expect("StreamHandle");
    assert_eq!(client.chunk(id, 0).await.expect("chunk"), layout.map(0, 0).partitions[0]);
}

#[tokio::test]
async fn stalled_large_frames_hold_at_most_the_budget_and_ordinary_clients_are_served_meanwhile() {
    let layout = VectorLayout::new();
    let agent = start_agent_with(&layout.roots(), settings()).await;

    // Two clients send most of a large frame and stall: the budget is full.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let mut client = agent.connect().await;
        let frame = large_rpc(i + 1, LARGE);
        client.send_raw(&frame[..LARGE - 1024]).await;
        stalled.push((client, frame));
    }
    wait_until("both stalled frames hold budget", || pending(&agent) == 2 * LARGE as u64).await;

    // A third large frame does not fit: the agent stops reading it.
    let mut waiting = agent.connect().await;
    let frame = large_rpc(3, LARGE);
    waiting.send_raw(&frame[..16 << 10]).await;
    wait_until("the third frame waits for budget", || agent.shared.frame_budget.waits() == 1).await;
    assert_eq!(pending(&agent), 2 * LARGE as u64, "the third frame took nothing");
    let metrics = agent.agent().admin().exporter.render();
    assert!(metrics.contains(&format!("spark_shuffle_agent_pending_frame_bytes {}", 2 * LARGE)), "{metrics}");
    assert!(metrics.contains("spark_shuffle_agent_pending_frame_waits_total 1"), "{metrics}");

    // Ordinary requests take no budget and do not wait behind the large frames.
    let mut normal = registered_client(&agent, &layout).await;
    still_serves(&mut normal, &layout).await;
    assert_eq!(pending(&agent), 2 * LARGE as u64);

    // One stalled client goes away: its budget goes to the waiting frame, which then arrives
    // whole and is answered.
    drop(stalled.remove(0));
    waiting.send_raw(&frame[16 << 10..]).await;
    expect_rpc_failure(&mut waiting, 3).await;
    still_serves(&mut normal, &layout).await;

    // The other stalled client finishes its frame after all, and is answered too.
    let (mut late, late_frame) = stalled.remove(0);
    late.send_raw(&late_frame[LARGE - 1024..]).await;
    expect_rpc_failure(&mut late, 2).await;
    wait_until("every frame was consumed and its budget given back", || pending(&agent) == 0).await;

    // Large frames keep working, on old connections and new ones.
    waiting.send_raw(&large_rpc(4, LARGE)).await;
    expect_rpc_failure(&mut waiting, 4).await;
    let mut fresh = agent.connect().await;
    fresh.send_raw(&large_rpc(5, MAX_FRAME + 8)).await;
    expect_rpc_failure(&mut fresh, 5).await;
    wait_until("the budget is all back", || pending(&agent) == 0).await;
    assert_eq!(agent.counter(|c| &c.frame_budget_closes), 0);
}

#[tokio::test]
async fn a_frame_that_finds_no_budget_within_the_idle_timeout_is_closed_and_counted() {
    let layout = VectorLayout::new();
    let settings = Config { max_pending_frame_bytes: MAX_FRAME, idle_timeout: Duration::from_secs(2), ..settings() };
    let agent = start_agent_with(&layout.roots(), settings).await;

    let mut holder = agent.connect().await;
    let held = large_rpc(1, LARGE);
    let mut sent = LARGE - (4 << 10);
    holder.send_raw(&held[..sent]).await;
    wait_until("the first frame holds budget", || pending(&agent) == LARGE as u64).await;

    let mut waiting = agent.connect().await;
    waiting.send_raw(&large_rpc(2, LARGE)[..1024]).await;
    {
        // The holder keeps sending (slowly), so it is never idle and its budget never comes back.
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                holder.send_raw(&held[sent..sent + 1]).await;
                sent += 1;
            }
        };
        tokio::select! {
            _ = waiting.expect_closed_silently() => {}
            _ = trickle => {}
        }
    }
    wait_until("the close is counted", || agent.counter(|c| &c.frame_budget_closes) == 1).await;
    assert_eq!(agent.counter(|c| &c.idle_timeouts), 0, "counted as frame_budget, not as idle");

    // The holder was never disturbed.
    holder.send_raw(&held[sent..]).await;
    expect_rpc_failure(&mut holder, 1).await;
    wait_until("the budget is all back", || pending(&agent) == 0).await;
}

/// An OpenBlocks asking for `count` blocks: an honest request larger than [`SMALL_FRAME`],
/// and a data request, so it moves its connection to the data runtime.
fn large_open_blocks(count: usize) -> Bytes {
    let msg =
        M::OpenBlocks { app_id: APP_ID.into(), exec_id: "0".into(), block_ids: vec!["shuffle_0_0_0".into(); count] };
    let body = msg.encode();
    assert!(body.len() > SMALL_FRAME, "{} bytes", body.len());
    body
}

#[tokio::test]
async fn budget_granted_on_the_control_runtime_moves_with_the_connection_and_comes_back_on_the_data_runtime() {
    let layout = VectorLayout::new();
    let agent = start_agent_with(&layout.roots(), settings()).await;
    let mut client = registered_client(&agent, &layout).await;

    // Most of a large data request: budget is taken on the control runtime.
    let request_id = client.request_id();
    let mut frame = BytesMut::new();
    Message::RpcRequest { request_id, body: large_open_blocks(30_000) }.encode(&mut frame);
    client.send_raw(&frame[..frame.len() - 100]).await;
    wait_until("the frame holds budget", || pending(&agent) > 0).await;
    // The rest: the frame is decoded, the connection moves with its input, and the request is
    // answered from the data runtime.
    client.send_raw(&frame[frame.len() - 100..]).await;
    match client.recv_message().await {
        Message::RpcResponse { request_id: got, body } if got == request_id => {
            let Ok(M::StreamHandle { stream_id, num_chunks }) = M::decode(&body) else {
                panic!("expected a StreamHandle")
            };
            assert_eq!(num_chunks, 30_000);
            assert_eq!(client.chunk(stream_id, 0).await.expect("chunk"), layout.map(0, 0).partitions[0]);
        }
        other => panic!("expected the StreamHandle, got {other:?}"),
    }
    wait_until("the budget came back on the data runtime", || pending(&agent) == 0).await;
    assert_eq!(agent.counter(|c| &c.connections_active), 1, "and the connection is still open");

    // A large frame begun after the move holds budget on the data runtime; the client going
    // away gives it back.
    let request_id = client.request_id();
    client.send_raw(&large_rpc(request_id, LARGE)[..LARGE / 2]).await;
    wait_until("the new frame holds budget", || pending(&agent) == LARGE as u64).await;
    drop(client);
    wait_until("the connection is gone", || agent.counter(|c| &c.connections_active) == 0).await;
    assert_eq!(pending(&agent), 0);

    // A connection that ends on the control runtime, mid-frame, gives its budget back too.
    let mut control = agent.connect().await;
    control.send_raw(&large_rpc(1, LARGE)[..LARGE / 2]).await;
    wait_until("the frame holds budget", || pending(&agent) == LARGE as u64).await;
    drop(control);
    wait_until("the budget is back", || pending(&agent) == 0).await;
    agent.stop().await;
}

#[tokio::test]
async fn requests_below_the_small_frame_size_never_take_budget() {
    let layout = VectorLayout::new();
    // A budget too small for any large frame: small requests must not notice it.
    let settings = Config { max_frame_bytes: 1 << 20, max_pending_frame_bytes: 1 << 20, ..test_config() };
    let agent = start_agent_with(&layout.roots(), settings).await;
    let mut client = registered_client(&agent, &layout).await;
    let mut hold = agent.connect().await;
    hold.send_raw(&large_rpc(1, 1 << 20)[..1024]).await;
    wait_until("the budget is all taken", || pending(&agent) == 1 << 20).await;
    // A request just under the threshold, sent in two halves so it is buffered incomplete.
    let mut frame = BytesMut::new();
    let body_len = SMALL_FRAME - 21;
    let mut body = BytesMut::with_capacity(body_len);
    body.put_u8(99);
    body.resize(body_len, 0);
    Message::RpcRequest { request_id: 7, body: body.freeze() }.encode(&mut frame);
    client.send_raw(&frame[..SMALL_FRAME / 2]).await;
    client.send_raw(&frame[SMALL_FRAME / 2..]).await;
    expect_rpc_failure(&mut client, 7).await;
    still_serves(&mut client, &layout).await;
    assert_eq!(agent.shared.frame_budget.waits(), 0);
}
