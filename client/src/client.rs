//! The async client applications use.
//!
//! A [`Client`] knows several nodes and keeps at most one multiplexed connection to each.
//! Requests are spread round-robin over the nodes that answered last time; a node whose
//! connection fails is marked suspect and tried after the healthy ones, so a request moves
//! on to the next node instead of failing. Reads are retried on another node if a
//! connection drops mid-request; writes are not, because the first attempt may have been
//! applied and a blind retry would add a duplicate sibling.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::codec::DEFAULT_MAX_FRAME_BYTES;
use crate::connection::{ByteStream, Connection};
use crate::consistency::Consistency;
use crate::error::Error;
use crate::protocol::{
    CompactReport, Context, Hello, LocalState, Request, Response, RingReport, Role, StatusReport,
    DEFAULT_CLUSTER, PROTOCOL_VERSION,
};

/// A boxed byte stream, so tests and the simulator can supply their own transport.
pub type BoxStream = Box<dyn ByteStream>;

/// Opens a stream to an address; the default dials TCP.
pub type Dialer = Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<BoxStream>> + Send + Sync>;

#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of each node the client may talk to.
    pub nodes: Vec<String>,
    pub cluster: String,
    /// Longer than a node's own replica timeout, so that a slow quorum comes back as the
    /// node's `Timeout` error with its numbers rather than as a dropped connection.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
}

impl ClientConfig {
    pub fn new<S: AsRef<str>>(nodes: &[S]) -> Self {
        ClientConfig {
            nodes: nodes.iter().map(|n| n.as_ref().to_owned()).collect(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// How a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    pub consistency: Consistency,
    /// Let fallback nodes that accept the write for a missing home replica count toward W.
    pub sloppy: bool,
}

impl From<Consistency> for WriteOptions {
    fn from(consistency: Consistency) -> Self {
        WriteOptions {
            consistency,
            sloppy: false,
        }
    }
}

/// What a get returns: every live sibling, and the context to pass to the next write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    pub values: Vec<Bytes>,
    pub context: Context,
}

impl GetResult {
    pub fn is_found(&self) -> bool {
        !self.values.is_empty()
    }
}

type ClientConnection = Connection<Request, Response>;

struct Slot {
    address: String,
    connection: Mutex<Option<Arc<ClientConnection>>>,
    suspect: AtomicBool,
}

struct Inner {
    config: ClientConfig,
    slots: Vec<Slot>,
    next: AtomicUsize,
    dialer: Dialer,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client over TCP. Connections are opened on first use, so this never blocks.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let timeout = config.connect_timeout;
        let dialer: Dialer = Arc::new(move |address: String| {
            Box::pin(async move {
                let connect = tokio::net::TcpStream::connect(address);
                let stream = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream) as BoxStream)
            })
        });
        Self::with_dialer(config, dialer)
    }

    /// A client over a transport of the caller's choosing.
    pub fn with_dialer(config: ClientConfig, dialer: Dialer) -> Result<Self, Error> {
        if config.nodes.is_empty() {
            return Err(Error::NoNodeReachable {
                tried: 0,
                last: "no nodes configured".into(),
            });
        }
        let slots = config
            .nodes
            .iter()
            .map(|address| Slot {
                address: address.clone(),
                connection: Mutex::new(None),
                suspect: AtomicBool::new(false),
            })
            .collect();
        let inner = Inner {
            config,
            slots,
            next: AtomicUsize::new(0),
            dialer,
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    pub async fn get(&self, key: impl Into<Bytes>, read: Consistency) -> Result<GetResult, Error> {
        let request = Request::Get {
            key: key.into(),
            read,
        };
        match self.call(&request, true).await? {
            Response::Found { values, context } => Ok(GetResult { values, context }),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        context: Option<&Context>,
        write: impl Into<WriteOptions>,
    ) -> Result<(), Error> {
        let options = write.into();
        let request = Request::Put {
            key: key.into(),
            value: value.into(),
            context: context.cloned(),
            write: options.consistency,
            sloppy: options.sloppy,
        };
        self.expect_written(&request).await
    }

    pub async fn delete(
        &self,
        key: impl Into<Bytes>,
        context: Option<&Context>,
        write: impl Into<WriteOptions>,
    ) -> Result<(), Error> {
        let options = write.into();
        let request = Request::Delete {
            key: key.into(),
            context: context.cloned(),
            write: options.consistency,
            sloppy: options.sloppy,
        };
        self.expect_written(&request).await
    }

    pub async fn status(&self) -> Result<StatusReport, Error> {
        match self.call(&Request::Status, true).await? {
            Response::Status(report) => Ok(report),
            other => Err(unexpected(&other)),
        }
    }

    /// The state of `key` on the node this client reaches first, without coordination.
    /// Give the client one node's address to choose which node answers.
    pub async fn inspect(&self, key: impl Into<Bytes>) -> Result<LocalState, Error> {
        match self
            .call(&Request::Inspect { key: key.into() }, true)
            .await?
        {
            Response::Local(state) => Ok(state),
            other => Err(unexpected(&other)),
        }
    }

    /// Compacts the storage of the node this client reaches first; give the client one
    /// node's address to choose which. Not retried on another node after a lost
    /// connection, which would compact a node nobody asked for. Compaction copies a
    /// node's live data, so allow a `request_timeout` to match.
    pub async fn compact(&self) -> Result<CompactReport, Error> {
        match self.call(&Request::Compact, false).await? {
            Response::Compacted(report) => Ok(report),
            other => Err(unexpected(&other)),
        }
    }

    /// The partition table, or with a key, that key's partition and preference list.
    pub async fn ring(&self, key: Option<Bytes>) -> Result<RingReport, Error> {
        match self.call(&Request::Ring { key }, true).await? {
            Response::Ring(report) => Ok(report),
            other => Err(unexpected(&other)),
        }
    }

    async fn expect_written(&self, request: &Request) -> Result<(), Error> {
        match self.call(request, false).await? {
            Response::Written => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `request` to one node after another until one answers.
    async fn call(&self, request: &Request, retry_after_send: bool) -> Result<Response, Error> {
        let mut last = String::from("no attempt");
        let order = self.attempt_order();
        for &index in &order {
            let slot = &self.inner.slots[index];
            let connection = match self.connection(slot).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(node = %slot.address, %error, "node unreachable");
                    slot.suspect.store(true, Ordering::Relaxed);
                    last = format!("{}: {error}", slot.address);
                    continue;
                }
            };
            let timeout = self.inner.config.request_timeout;
            match connection.call(request, timeout).await {
                Ok(Response::Error(reply)) => return Err(reply.into()),
                Ok(response) => return Ok(response),
                Err(Error::ConnectionLost { node }) if retry_after_send => {
                    slot.suspect.store(true, Ordering::Relaxed);
                    last = format!("{node}: connection lost");
                }
                Err(error) => {
                    slot.suspect.store(true, Ordering::Relaxed);
                    return Err(error);
                }
            }
        }
        Err(Error::NoNodeReachable {
            tried: order.len(),
            last,
        })
    }

    /// Healthy nodes first in round-robin order, then the suspect ones, so a node that
    /// failed is still tried (and cleared) when nothing better is left.
    fn attempt_order(&self) -> Vec<usize> {
        let slots = &self.inner.slots;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..slots.len()).map(|i| (start + i) % slots.len());
        let (healthy, suspect): (Vec<usize>, Vec<usize>) =
            rotated.partition(|&i| !slots[i].suspect.load(Ordering::Relaxed));
        healthy.into_iter().chain(suspect).collect()
    }

    async fn connection(&self, slot: &Slot) -> Result<Arc<ClientConnection>, Error> {
        if let Some(connection) = slot.connection.lock().expect("slot lock").as_ref() {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }

        // Dial without holding the lock; if two callers race, the later one wins and the
        // earlier connection is dropped once its callers finish.
        let config = &self.inner.config;
        let stream = (self.inner.dialer)(slot.address.clone()).await?;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            cluster: config.cluster.clone(),
            role: Role::Client,
        };
        let handshake = Connection::open(stream, &slot.address, &hello, config.max_frame_bytes);
        let (connection, _node) = tokio::time::timeout(config.connect_timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "hello timed out"))??;

        let connection = Arc::new(connection);
        *slot.connection.lock().expect("slot lock") = Some(connection.clone());
        slot.suspect.store(false, Ordering::Relaxed);
        Ok(connection)
    }
}

fn unexpected(response: &Response) -> Error {
    Error::Protocol {
        reason: format!("unexpected response: {response:?}"),
    }
}
