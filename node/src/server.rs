//! Accepting connections and serving the requests on them.
//!
//! Each connection starts with a hello naming the protocol version, the cluster and
//! whether a client or a peer is speaking. After that every frame is read as soon as it
//! arrives and handled in its own task, so a slow request never holds up the ones behind
//! it; replies go back through one writer task in whatever order they finish.
//!
//! What a sender gets wrong is answered, never trusted: an oversized frame or bytes that
//! are not MessagePack get an error reply (with the reserved request id 0, since the real
//! id could not be read) and the connection is closed. Other connections are untouched.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::SinkExt;
use futures::StreamExt;
use quorumkv_client::codec::{decode, encode, is_oversized};
use quorumkv_client::connection::{framed, write_frames, ByteStream, FrameReader, FrameWriter};
use quorumkv_client::protocol::{
    Envelope, ErrorReply, Hello, HelloReply, Request, Response, Role, PROTOCOL_VERSION,
    UNKNOWN_REQUEST_ID,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::env::{Env, Listener};
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// A connection that has not said hello by then is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests handled at once per connection; beyond this the reader waits, which pushes
/// back on the sender instead of growing memory.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// Replies waiting for the writer.
const REPLY_QUEUE_FRAMES: usize = 1024;
/// After refusing a frame, unread input is drained for this long before closing, so the
/// sender reads the refusal instead of a connection reset.
const DRAIN_BEFORE_CLOSE: Duration = Duration::from_millis(500);

/// How a reply type carries an error about a frame that could not be read.
trait Reply: Serialize + Send + 'static {
    fn error(reply: ErrorReply) -> Self;
}

impl Reply for Response {
    fn error(reply: ErrorReply) -> Self {
        Response::Error(reply)
    }
}

impl Reply for PeerResponse {
    fn error(reply: ErrorReply) -> Self {
        PeerResponse::Error(reply)
    }
}

pub async fn accept_loop<E: Env>(node: Arc<Node<E>>, mut listener: E::Listener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let task = serve_connection(node.clone(), stream, remote);
                tokio::spawn(task.in_current_span());
            }
            Err(error) => {
                // Usually out of file descriptors; back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<E: Env, S: ByteStream>(node: Arc<Node<E>>, stream: S, remote: String) {
    let (mut reader, mut writer) = framed(stream, node.config.max_frame_bytes);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Some(Ok(frame))) => decode::<Hello>(&frame),
        _ => return,
    };
    let role = match hello
        .map_err(|e| e.to_string())
        .and_then(|h| check_hello(&node, h))
    {
        Ok(role) => role,
        Err(reason) => {
            tracing::warn!(%remote, %reason, "hello refused");
            let _ = writer.send(encode(&HelloReply::Refused { reason })).await;
            return;
        }
    };
    let welcome = HelloReply::Welcome {
        node: node.id().clone(),
        protocol: PROTOCOL_VERSION,
    };
    if writer.send(encode(&welcome)).await.is_err() {
        return;
    }

    match role {
        Role::Client => {
            let handler = move |request: Request| {
                let node = node.clone();
                async move { node.handle_client(request).await }
            };
            serve_frames(reader, writer, handler, remote).await;
        }
        Role::Peer { node: peer, .. } => {
            node.membership.heard_from(&peer, node.env.now());
            let handler = move |request: PeerRequest| {
                let node = node.clone();
                async move { node.handle_peer(request).await }
            };
            serve_frames(reader, writer, handler, remote).await;
        }
    }
}

fn check_hello<E: Env>(node: &Node<E>, hello: Hello) -> Result<Role, String> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
            hello.protocol
        ));
    }
    if hello.cluster != node.config.cluster {
        return Err(format!(
            "this node belongs to cluster '{}', not '{}'",
            node.config.cluster, hello.cluster
        ));
    }
    if let Role::Peer { node: peer, ring } = &hello.role {
        if !node.config.members.contains_key(peer) {
            return Err(format!("{peer} is not a member of this cluster"));
        }
        if *ring != node.ring.fingerprint() {
            return Err(format!(
                "{peer} places keys differently (members, replicas or partitions differ)"
            ));
        }
    }
    Ok(hello.role)
}

/// Reads requests until the connection ends or breaks the protocol.
async fn serve_frames<S, Req, Resp, H, F>(
    mut reader: FrameReader<S>,
    writer: FrameWriter<S>,
    handler: H,
    remote: String,
) where
    S: ByteStream,
    Req: DeserializeOwned + Send + 'static,
    Resp: Reply,
    H: Fn(Req) -> F,
    F: Future<Output = Resp> + Send + 'static,
{
    let (replies, queue) = mpsc::channel::<Bytes>(REPLY_QUEUE_FRAMES);
    let writer_task = tokio::spawn(write_frames(writer, queue));

    // The connection's requests run as futures of this one task rather than a task each:
    // no spawn and no cross-thread wake-up per request, which on a busy node cost more
    // than most requests' own work. They still run concurrently (a slow one holds up no
    // other), and other connections run on other workers.
    let mut running = FuturesUnordered::new();
    let limit = max_frame(&reader);
    let mut reading = true;
    let mut refusal = None;
    while reading || !running.is_empty() {
        tokio::select! {
            biased;
            Some(frame) = running.next(), if !running.is_empty() => {
                if replies.send(frame).await.is_err() {
                    // The writer failed: nothing more can be answered on this connection.
                    break;
                }
            }
            frame = reader.next(), if reading && running.len() < MAX_IN_FLIGHT_PER_CONNECTION => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) if is_oversized(&error) => {
                        refusal = Some(ErrorReply::Rejected {
                            reason: format!("frame exceeds the limit of {limit} bytes"),
                        });
                        reading = false;
                        continue;
                    }
                    None | Some(Err(_)) => {
                        reading = false;
                        continue;
                    }
                };
                match decode::<Envelope<Req>>(&frame) {
                    Ok(envelope) => {
                        let reply = handler(envelope.body);
                        running.push(async move { reply_frame(envelope.id, reply.await, limit) });
                    }
                    Err(error) => {
                        refusal = Some(ErrorReply::from(&error));
                        reading = false;
                    }
                }
            }
        }
    }

    if let Some(reply) = &refusal {
        tracing::debug!(%remote, ?reply, "closing connection after a bad frame");
        let frame = encode(&Envelope {
            id: UNKNOWN_REQUEST_ID,
            body: Resp::error(reply.clone()),
        });
        let _ = replies.send(frame).await;
    }
    drop(replies);
    let _ = writer_task.await;
    if refusal.is_some() {
        drain(reader).await;
    }
}

/// The encoded reply, or an error in its place when the reply would not fit in a frame
/// (the codec would refuse it, and the writer with it, leaving the caller waiting).
fn reply_frame<Resp: Reply>(id: u64, body: Resp, limit: usize) -> Bytes {
    let frame = encode(&Envelope { id, body });
    if frame.len() <= limit {
        return frame;
    }
    let error = ErrorReply::Server {
        reason: format!(
            "reply of {} bytes exceeds the frame limit of {limit}",
            frame.len()
        ),
    };
    encode(&Envelope {
        id,
        body: Resp::error(error),
    })
}

fn max_frame<S>(reader: &FrameReader<S>) -> usize {
    reader.decoder().max_frame_length()
}

/// Reads and discards what the sender still has in flight, for a bounded time.
async fn drain<S: ByteStream>(reader: FrameReader<S>) {
    let mut stream = reader.into_inner();
    let mut sink = vec![0u8; 64 * 1024];
    let discard = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(DRAIN_BEFORE_CLOSE, discard).await;
}
