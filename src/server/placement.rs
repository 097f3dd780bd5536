//! Which runtime serves a connection. New connections start on the control runtime (a thread
//! of its own), where registrations and other small RPCs are answered at once even while the
//! data runtime is saturated (SPARK-20640, SPARK-24355); the first data request moves the
//! socket to the data runtime for good, at a message boundary with every earlier reply sent.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::connection::{serve_from, ConnectionEnd, HandOver, Served, Session};
use super::transport::Transport;
use super::Shared;
use crate::protocol::Message;

/// Where a connection is being served. New connections start on the control runtime (a
/// thread of its own), where registrations and other small RPCs are answered at once even
/// while the data runtime is saturated; the first data request (a fetch, a chunk, a stream)
/// moves the connection to the data runtime for good.
#[derive(Debug, Clone)]
pub(super) enum Placement {
    Control { data: tokio::runtime::Handle },
    Data,
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    session: Session,
    placement: Placement,
) -> ConnectionEnd {
    let transport = Transport::new(stream, shared.tls.clone());
    // Boxed, and out of the match (a temporary there lives to its end): freed at the
    // hand-over, so a connection on the data runtime does not also keep the room its control
    // phase needed (~2 KiB, times 10,000 connections).
    let served = Box::pin(serve_from(Arc::clone(&shared), transport, &session, placement, None)).await;
    match served {
        Served::End(end) => end,
        Served::HandOver(hand_over) => {
            let HandOver { transport, peer, first, data } = *hand_over;
            // If the move fails, dropping the transport gives its frame budget back.
            let detached = match transport.detach() {
                Ok(d) => d,
                Err(e) => return ConnectionEnd::Io(e),
            };
            let task = data.spawn(async move {
                let transport = match detached.attach() {
                    Ok(t) => t,
                    Err(e) => return ConnectionEnd::Io(e),
                };
                match serve_from(shared, transport, &session, Placement::Data, Some((peer, first))).await {
                    Served::End(end) => end,
                    Served::HandOver(_) => ConnectionEnd::Refused("handed over twice".into()),
                }
            });
            task.await.unwrap_or_else(|e| ConnectionEnd::Refused(format!("connection task failed: {e}")))
        }
    }
}

/// Requests that read block data: they belong on the data runtime.
pub(super) fn is_data_request(msg: &Message) -> bool {
    match msg {
        Message::ChunkFetchRequest(_)
        | Message::StreamRequest { .. }
        | Message::UploadStream { .. }
        | Message::MergedBlockMetaRequest { .. } => true,
        // OpenBlocks (0), FetchShuffleBlocks (9) and FetchShuffleBlockChunks (15) open streams.
        Message::RpcRequest { body, .. } => matches!(body.first(), Some(0 | 9 | 15)),
        _ => false,
    }
}
