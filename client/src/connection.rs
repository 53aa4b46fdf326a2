//! One multiplexed connection: many requests in flight, replies matched by id.
//!
//! A writer task drains a bounded queue of encoded frames and flushes once per burst, so
//! many frames leave in one syscall. A reader task hands each reply to the caller waiting
//! on its id. When either side fails, every waiter is told at once and the connection is
//! marked closed; the owner dials a new one. A call that times out closes the connection
//! too: on a network that can lose segments without resetting the stream (turmoil, a
//! half-dead peer), a timed-out connection may never deliver again.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{decode, encode, frame_codec};
use crate::error::Error;
use crate::protocol::{Envelope, Hello, HelloReply, NodeId, UNKNOWN_REQUEST_ID};

/// Any byte stream a connection can run on: a TCP socket, or a simulated one.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// Frames waiting for the writer; beyond this, callers wait (backpressure, not memory).
const OUTGOING_QUEUE_FRAMES: usize = 1024;

pub type FrameReader<S> = FramedRead<ReadHalf<S>, LengthDelimitedCodec>;
pub type FrameWriter<S> = FramedWrite<WriteHalf<S>, LengthDelimitedCodec>;

/// Splits a stream into framed halves with the given frame limit.
pub fn framed<S: ByteStream>(
    stream: S,
    max_frame_bytes: usize,
) -> (FrameReader<S>, FrameWriter<S>) {
    let (read, write) = tokio::io::split(stream);
    let reader = FramedRead::new(read, frame_codec(max_frame_bytes));
    let writer = FramedWrite::new(write, frame_codec(max_frame_bytes));
    (reader, writer)
}

/// Sends frames from `queue` until it closes or the stream fails, one flush per burst.
pub async fn write_frames<S: ByteStream>(
    mut writer: FrameWriter<S>,
    mut queue: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    while let Some(frame) = queue.recv().await {
        writer.feed(frame).await?;
        while let Ok(frame) = queue.try_recv() {
            writer.feed(frame).await?;
        }
        // Before the syscall, let the tasks already woken on this thread run once: under
        // load they are about to queue frames of their own, which then share this write.
        // A write to a loopback socket costs several microseconds in the kernel, more
        // than encoding a frame, so fewer, larger writes are what lifts throughput (see
        // the README's Benchmark section); an idle connection pays one scheduler pass.
        tokio::task::yield_now().await;
        while let Ok(frame) = queue.try_recv() {
            writer.feed(frame).await?;
        }
        SinkExt::<Bytes>::flush(&mut writer).await?;
    }
    Ok(())
}

type Waiter<Resp> = oneshot::Sender<Result<Resp, Error>>;

struct Pending<Resp> {
    closed: bool,
    // BTreeMap, not HashMap: on close the waiters are woken in id order, so a simulated
    // run wakes tasks in the same order every time.
    waiters: BTreeMap<u64, Waiter<Resp>>,
}

/// A client-side connection sending `Req` and receiving `Resp` in envelopes.
pub struct Connection<Req, Resp> {
    peer: String,
    max_frame_bytes: usize,
    outgoing: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending<Resp>>>,
    next_id: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
    _request: PhantomData<fn(Req)>,
}

impl<Req, Resp> Connection<Req, Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Says hello on `stream` and starts the reader and writer tasks.
    pub async fn open<S: ByteStream>(
        stream: S,
        peer: &str,
        hello: &Hello,
        max_frame_bytes: usize,
    ) -> Result<(Self, NodeId), Error> {
        let (mut reader, mut writer) = framed(stream, max_frame_bytes);
        writer.send(encode(hello)).await?;
        let node = read_welcome(&mut reader, peer).await?;

        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE_FRAMES);
        let pending = Arc::new(Mutex::new(Pending {
            closed: false,
            waiters: BTreeMap::new(),
        }));
        let writer_task = tokio::spawn(run_writer(writer, queue, pending.clone()));
        let reader_task = tokio::spawn(run_reader(reader, pending.clone(), peer.to_owned()));
        let connection = Connection {
            peer: peer.to_owned(),
            max_frame_bytes,
            outgoing,
            pending,
            next_id: AtomicU64::new(UNKNOWN_REQUEST_ID + 1),
            tasks: vec![writer_task, reader_task],
            _request: PhantomData,
        };
        Ok((connection, node))
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn is_closed(&self) -> bool {
        self.pending.lock().expect("pending lock").closed
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub async fn call(&self, request: &Req, timeout: Duration) -> Result<Resp, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&Envelope { id, body: request });
        if frame.len() > self.max_frame_bytes {
            return Err(Error::Rejected {
                reason: format!(
                    "request of {} bytes exceeds the frame limit of {} bytes",
                    frame.len(),
                    self.max_frame_bytes
                ),
            });
        }

        let (waiter, reply) = oneshot::channel();
        self.register(id, waiter)?;
        if self.outgoing.send(frame).await.is_err() {
            self.forget(id);
            return Err(self.lost());
        }

        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                self.forget(id);
                self.close();
                Err(self.lost())
            }
        }
    }

    /// Marks the connection closed and fails every waiter; the tasks stop.
    pub fn close(&self) {
        fail_all(&self.pending, &self.peer);
        for task in &self.tasks {
            task.abort();
        }
    }

    fn register(&self, id: u64, waiter: Waiter<Resp>) -> Result<(), Error> {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.closed {
            return Err(self.lost());
        }
        pending.waiters.insert(id, waiter);
        Ok(())
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .expect("pending lock")
            .waiters
            .remove(&id);
    }

    fn lost(&self) -> Error {
        Error::ConnectionLost {
            node: self.peer.clone(),
        }
    }
}

impl<Req, Resp> Drop for Connection<Req, Resp> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn read_welcome<S: ByteStream>(
    reader: &mut FrameReader<S>,
    peer: &str,
) -> Result<NodeId, Error> {
    let frame = match reader.next().await {
        Some(frame) => frame?,
        None => {
            return Err(Error::ConnectionLost {
                node: peer.to_owned(),
            })
        }
    };
    match decode::<HelloReply>(&frame)? {
        HelloReply::Welcome { node, .. } => Ok(node),
        HelloReply::Refused { reason } => Err(Error::Protocol { reason }),
    }
}

async fn run_writer<S: ByteStream, Resp>(
    writer: FrameWriter<S>,
    queue: mpsc::Receiver<Bytes>,
    pending: Arc<Mutex<Pending<Resp>>>,
) {
    if let Err(error) = write_frames(writer, queue).await {
        tracing::debug!(%error, "connection writer stopped");
    }
    fail_all(&pending, "writer");
}

async fn run_reader<S: ByteStream, Resp: DeserializeOwned>(
    mut reader: FrameReader<S>,
    pending: Arc<Mutex<Pending<Resp>>>,
    peer: String,
) {
    while let Some(frame) = reader.next().await {
        let Ok(frame) = frame else { break };
        let envelope: Envelope<Resp> = match decode(&frame) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%peer, %error, "dropping connection after malformed reply");
                break;
            }
        };
        let waiter = pending
            .lock()
            .expect("pending lock")
            .waiters
            .remove(&envelope.id);
        match waiter {
            // The caller may have given up (timeout); a late reply is simply dropped.
            Some(waiter) => drop(waiter.send(Ok(envelope.body))),
            None if envelope.id == UNKNOWN_REQUEST_ID => {
                tracing::warn!(%peer, "peer reported an error about an unreadable frame");
            }
            None => {}
        }
    }
    fail_all(&pending, &peer);
}

fn fail_all<Resp>(pending: &Mutex<Pending<Resp>>, peer: &str) {
    let waiters = {
        let mut pending = pending.lock().expect("pending lock");
        pending.closed = true;
        std::mem::take(&mut pending.waiters)
    };
    for waiter in waiters.into_values() {
        let error = Error::ConnectionLost {
            node: peer.to_owned(),
        };
        drop(waiter.send(Err(error)));
    }
}
