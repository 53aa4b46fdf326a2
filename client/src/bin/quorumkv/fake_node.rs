//! A stand-in node for tests: speaks the real protocol over in-memory streams, keeps
//! values in a map, and refuses keys starting with [`UNAVAILABLE_PREFIX`] as a node that
//! cannot reach enough replicas would. Lets `import` and `verify` run end to end without
//! a cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quorumkv_client::client::{BoxStream, Dialer};
use quorumkv_client::codec::{decode, encode, DEFAULT_MAX_FRAME_BYTES};
use quorumkv_client::connection::framed;
use quorumkv_client::protocol::{
    Envelope, ErrorReply, Hello, HelloReply, Request, Response, PROTOCOL_VERSION,
};
use quorumkv_client::{Client, ClientConfig, Context, NodeId};
use tokio::io::DuplexStream;

/// Keys the fake refuses with `unavailable`.
pub const UNAVAILABLE_PREFIX: &str = "down-";

/// The context the fake hands out with every read.
const SEEN: &[u8] = b"seen";

/// Bytes buffered in each direction of an in-memory stream.
const PIPE_BYTES: usize = 64 * 1024;

/// Every sibling of every key, shared by all connections, so tests can look and tamper.
pub type Store = Arc<Mutex<BTreeMap<Bytes, Vec<Bytes>>>>;

/// A client whose every connection reaches one fake node over `store`.
pub fn client(store: &Store) -> Client {
    let store = store.clone();
    let dialer: Dialer = Arc::new(move |_address: String| {
        let (near, far) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(serve(far, store.clone()));
        Box::pin(async move { Ok(Box::new(near) as BoxStream) })
    });
    Client::with_dialer(ClientConfig::new(&["fake:1"]), dialer).expect("one node configured")
}

async fn serve(stream: DuplexStream, store: Store) {
    let (mut reader, mut writer) = framed(stream, DEFAULT_MAX_FRAME_BYTES);
    let Some(Ok(frame)) = reader.next().await else {
        return;
    };
    let _hello: Hello = decode(&frame).expect("the client says hello first");
    let welcome = HelloReply::Welcome {
        node: NodeId::from("fake"),
        protocol: PROTOCOL_VERSION,
    };
    if writer.send(encode(&welcome)).await.is_err() {
        return;
    }

    while let Some(Ok(frame)) = reader.next().await {
        let request: Envelope<Request> = decode(&frame).expect("the client sends requests");
        let body = answer(&store, request.body);
        let reply = Envelope {
            id: request.id,
            body,
        };
        if writer.send(encode(&reply)).await.is_err() {
            return;
        }
    }
}

fn answer(store: &Store, request: Request) -> Response {
    let mut store = store.lock().expect("store lock");
    match request {
        Request::Get { key, .. } if key.starts_with(UNAVAILABLE_PREFIX.as_bytes()) => unavailable(),
        // The context only says "this read saw the key"; a put carrying it replaces all.
        Request::Get { key, .. } => Response::Found {
            values: store.get(&key).cloned().unwrap_or_default(),
            context: Context(Bytes::from_static(SEEN)),
        },
        Request::Put { key, .. } if key.starts_with(UNAVAILABLE_PREFIX.as_bytes()) => unavailable(),
        // Without a context a put adds a sibling, as a real node does.
        Request::Put {
            key,
            value,
            context,
            ..
        } => {
            let siblings = store.entry(key).or_default();
            if context.is_some_and(|c| !c.is_empty()) {
                siblings.clear();
            }
            siblings.push(value);
            Response::Written
        }
        other => Response::Error(ErrorReply::Server {
            reason: format!("the fake node does not serve {other:?}"),
        }),
    }
}

fn unavailable() -> Response {
    Response::Error(ErrorReply::Unavailable {
        required: 2,
        alive: 1,
    })
}
