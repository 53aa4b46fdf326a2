//! The floor: an in-process server on loopback that speaks quorumkv's framing and answers
//! every request at once, with no storage, no replication and no coordination.
//!
//! The benchmark talks to it through the same `Client` it uses for a real cluster, so
//! what it measures is what one request and its reply cost on this machine: encoding,
//! the multiplexed connection, two trips through the kernel's loopback, and scheduling.
//! A real node can only be slower; how much slower is the work it does.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quorumkv_client::codec::{decode, encode, DEFAULT_MAX_FRAME_BYTES};
use quorumkv_client::connection::{framed, write_frames};
use quorumkv_client::protocol::{Envelope, Hello, HelloReply, Request, Response, PROTOCOL_VERSION};
use quorumkv_client::{Context, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Replies waiting for a connection's writer, as many as a node allows.
const REPLY_QUEUE_FRAMES: usize = 1024;

/// Starts the server on an ephemeral loopback port; it runs until the process exits.
/// Reads are answered with one value of `value_bytes`, so a read's reply is as large as
/// a real one.
pub async fn start(value_bytes: usize) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let value = Bytes::from(vec![b'x'; value_bytes]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, value.clone()));
        }
    });
    Ok(address)
}

async fn serve(stream: TcpStream, value: Bytes) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let (mut reader, mut writer) = framed(stream, DEFAULT_MAX_FRAME_BYTES);
    let Some(Ok(frame)) = reader.next().await else {
        return;
    };
    if decode::<Hello>(&frame).is_err() {
        return;
    }
    let welcome = HelloReply::Welcome {
        node: NodeId::from("echo"),
        protocol: PROTOCOL_VERSION,
    };
    if writer.send(encode(&welcome)).await.is_err() {
        return;
    }

    // One writer per connection that flushes once per burst, as a node's server does.
    let (replies, queue) = mpsc::channel(REPLY_QUEUE_FRAMES);
    tokio::spawn(write_frames(writer, queue));
    while let Some(Ok(frame)) = reader.next().await {
        let Ok(request) = decode::<Envelope<Request>>(&frame) else {
            return;
        };
        let body = answer(request.body, &value);
        let reply = encode(&Envelope {
            id: request.id,
            body,
        });
        if replies.send(reply).await.is_err() {
            return;
        }
    }
}

fn answer(request: Request, value: &Bytes) -> Response {
    match request {
        Request::Get { .. } => Response::Found {
            values: vec![value.clone()],
            context: Context::default(),
        },
        _ => Response::Written,
    }
}
