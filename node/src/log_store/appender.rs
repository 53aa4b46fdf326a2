//! The one writer of the log, which commits writes in groups.
//!
//! Every update sends its encoded record here and waits for the answer. The appender takes
//! whatever has queued up, writes it with one `write_at` and, under `sync = always`, lets
//! the callers wait for the fsync that covers it. One fsync runs at a time, in the
//! background, while the next records are written; when it ends, its callers are answered
//! and the next fsync covers everything written meanwhile. The slower the disk, the more
//! each fsync covers, so the fsync rate stays bounded by the disk and not by the writers.
//!
//! A failed write fails its batch; a failed fsync fails every caller still waiting. Either
//! way the file is cut back to the last point known durable, so no record of a write
//! reported as failed can come back at recovery, and the next batch simply tries again.
//! The store never stops serving reads.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::index::{segment_path, Segment, SegmentTable};
use crate::config::SyncPolicy;
use crate::env::{DataFile, Env};

/// Most bytes written in one batch. A few MiB keeps the disk streaming while bounding how
/// long one batch makes the next callers wait.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Turns given to answered callers before the next fsync, as long as each brings records.
/// A few are enough for writers spread over two cores to come back; the bound keeps a
/// steady trickle of writes from holding the fsync back.
const MAX_RIDE_ALONG_YIELDS: usize = 4;

pub(crate) enum Command {
    Append {
        record: Vec<u8>,
        reply: oneshot::Sender<io::Result<Placed>>,
    },
    /// Seal the active segment and answer with a fresh id below the new active one, for
    /// a compaction output (so the active segment always has the highest id).
    Roll {
        reply: oneshot::Sender<io::Result<u32>>,
    },
    /// Fsync whatever was written, whatever the policy.
    Sync {
        reply: oneshot::Sender<io::Result<()>>,
    },
}

impl Command {
    fn bytes(&self) -> usize {
        match self {
            Command::Append { record, .. } => record.len(),
            Command::Roll { .. } | Command::Sync { .. } => 0,
        }
    }
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placed {
    pub segment: u32,
    pub offset: u32,
}

pub(crate) struct Appender<E: Env> {
    env: E,
    dir: PathBuf,
    table: Arc<SegmentTable<E::File>>,
    sync: SyncPolicy,
    sync_interval: Duration,
    segment_bytes: u64,
    active: Arc<Segment<E::File>>,
    /// Where the next record goes in the active segment.
    end: u64,
    /// How far the active segment is known to be on disk.
    durable: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// A failed batch may have left bytes past `end` that could not be cut yet.
    leftover: bool,
    /// Under `sync = always`: written records whose callers wait for an fsync.
    waiting: VecDeque<Waiting>,
    /// The fsync in flight, and how far into the active segment it reaches.
    syncing: Option<(u64, JoinHandle<io::Result<()>>)>,
    /// Told after each roll, so the compactor looks at the newly sealed segment.
    rolled: Arc<Notify>,
    counters: Arc<Counters>,
}

/// A caller to answer once the active segment is durable up to `end`.
struct Waiting {
    end: u64,
    placed: Placed,
    reply: oneshot::Sender<io::Result<Placed>>,
}

pub(crate) struct AppenderSettings {
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    pub segment_bytes: u64,
    pub counters: Arc<Counters>,
}

/// How the appender has batched so far: records per write and per fsync show whether
/// group commit works.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub writes: AtomicU64,
    pub fsyncs: AtomicU64,
}

enum Event {
    Synced(io::Result<()>),
    Tick,
    Command(Option<Command>),
}

impl<E: Env> Appender<E> {
    pub fn new(
        env: E,
        dir: PathBuf,
        table: Arc<SegmentTable<E::File>>,
        active: Arc<Segment<E::File>>,
        settings: AppenderSettings,
        rolled: Arc<Notify>,
    ) -> Self {
        Appender {
            env,
            dir,
            table,
            sync: settings.sync,
            sync_interval: settings.sync_interval,
            segment_bytes: settings.segment_bytes,
            active,
            end: 0,
            durable: 0,
            dirty: false,
            leftover: false,
            waiting: VecDeque::new(),
            syncing: None,
            rolled,
            counters: settings.counters,
        }
    }

    /// Serves commands until the store drops its sender, then syncs what is left.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut ticker = tokio::time::interval(self.sync_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            match self.next_event(&mut commands, &mut ticker).await {
                Event::Synced(result) => {
                    self.synced(result);
                    self.ride_along(&mut commands).await;
                }
                Event::Tick => self.sync_if_dirty().await,
                Event::Command(Some(first)) => {
                    let batch = gather(first, &mut commands);
                    self.process(batch).await;
                    self.start_sync_if_waiting();
                }
                Event::Command(None) => break,
            }
        }
        if let Err(error) = self.sync_all().await {
            tracing::error!(%error, segment = self.active.id, "log fsync failed at close");
        }
    }

    /// An fsync's end comes first, so callers are answered as soon as possible; then the
    /// periodic tick, ready only once per interval, so it cannot starve the commands.
    async fn next_event(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        ticker: &mut tokio::time::Interval,
    ) -> Event {
        let periodic = self.sync == SyncPolicy::Interval;
        let sync_done = async {
            match &mut self.syncing {
                Some((_, handle)) => handle.await.unwrap_or_else(|e| Err(io::Error::other(e))),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = sync_done => Event::Synced(result),
            _ = ticker.tick(), if periodic => Event::Tick,
            command = commands.recv() => Event::Command(command),
        }
    }

    async fn process(&mut self, batch: Vec<Command>) {
        let mut appends = Vec::with_capacity(batch.len());
        let mut controls = Vec::new();
        for command in batch {
            match command {
                Command::Append { record, reply } => appends.push((record, reply)),
                control => controls.push(control),
            }
        }
        if !appends.is_empty() {
            self.append(appends).await;
        }
        if self.end >= self.segment_bytes {
            if let Err(error) = self.roll().await {
                // The active segment just grows; the next batch tries again.
                tracing::warn!(%error, segment = self.active.id, "cannot roll the log");
            }
        }
        for control in controls {
            match control {
                Command::Roll { reply } => {
                    let _ = reply.send(self.roll_reserving().await);
                }
                Command::Sync { reply } => {
                    let _ = reply.send(self.sync_all().await);
                }
                Command::Append { .. } => unreachable!("appends were taken out above"),
            }
        }
    }

    /// Writes the batch's records back to back. Under `sync = always` the callers wait
    /// for an fsync that covers them; otherwise they are answered at once.
    async fn append(&mut self, mut appends: Vec<(Vec<u8>, oneshot::Sender<io::Result<Placed>>)>) {
        let mut offsets = Vec::with_capacity(appends.len());
        let buffer = if appends.len() == 1 {
            offsets.push(self.end);
            std::mem::take(&mut appends[0].0)
        } else {
            let total = appends.iter().map(|(record, _)| record.len()).sum();
            let mut buffer = Vec::with_capacity(total);
            for (record, _) in &appends {
                offsets.push(self.end + buffer.len() as u64);
                buffer.extend_from_slice(record);
            }
            buffer
        };

        let segment = self.active.id;
        let records = appends.len() as u64;
        self.counters.records.fetch_add(records, Ordering::Relaxed);
        let result = self.write(buffer).await;
        for ((_, reply), offset) in appends.into_iter().zip(offsets) {
            let placed = match &result {
                Ok(()) => place(segment, offset),
                Err(error) => Err(copy(error)),
            };
            match placed {
                Ok(placed) if self.sync == SyncPolicy::Always => self.waiting.push_back(Waiting {
                    end: self.end,
                    placed,
                    reply,
                }),
                answer => {
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Cuts what a failed batch left past `end`, before anything else is written or
    /// synced, so that it can never become durable.
    async fn cut_leftover(&mut self) -> io::Result<()> {
        if self.leftover {
            self.active.file.truncate(self.end).await?;
            self.leftover = false;
        }
        Ok(())
    }

    async fn write(&mut self, buffer: Vec<u8>) -> io::Result<()> {
        self.cut_leftover().await?;
        let len = buffer.len() as u64;
        match self.active.file.write_at(self.end, buffer).await {
            Ok(()) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
                self.end += len;
                self.dirty = true;
                self.active.size.store(self.end, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, segment = self.active.id, "log write failed");
                self.leftover = self.active.file.truncate(self.end).await.is_err();
                Err(error)
            }
        }
    }

    /// Starts an fsync of everything written so far. It runs while later records are
    /// written, and the callers those bring wait for the next one: one fsync in flight
    /// at a time, each covering all that arrived while the previous one ran.
    fn start_sync_if_waiting(&mut self) {
        if self.syncing.is_some() || self.waiting.is_empty() {
            return;
        }
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let segment = self.active.clone();
        let handle = tokio::spawn(async move { segment.file.sync().await });
        self.syncing = Some((self.end, handle));
        self.dirty = false;
    }

    fn synced(&mut self, result: io::Result<()>) {
        let Some((covered, _)) = self.syncing.take() else {
            return;
        };
        match result {
            Ok(()) => {
                self.durable = covered;
                self.acknowledge();
            }
            Err(error) => self.sync_failed(&error),
        }
    }

    /// Before the next fsync starts, the callers just answered get a few scheduler turns
    /// to send their next records, which then ride with it instead of waiting a whole
    /// fsync for the one after. Without this, writers split into two halves that
    /// alternate, each fsync covering only half of them (measured: about 30 records per
    /// fsync with 64 writers instead of 61). Yields, not a timer, so nothing waits on the
    /// clock, and the turns stop as soon as one brings nothing.
    async fn ride_along(&mut self, commands: &mut mpsc::Receiver<Command>) {
        for _ in 0..MAX_RIDE_ALONG_YIELDS {
            tokio::task::yield_now().await;
            let Ok(first) = commands.try_recv() else {
                break;
            };
            let batch = gather(first, commands);
            self.process(batch).await;
        }
        self.start_sync_if_waiting();
    }

    /// Answers every caller whose record is now durable.
    fn acknowledge(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|waiting| waiting.end <= self.durable)
        {
            if let Some(waiting) = self.waiting.pop_front() {
                let _ = waiting.reply.send(Ok(waiting.placed));
            }
        }
    }

    /// After a failed fsync nothing past the durable point can be trusted (the kernel may
    /// have dropped those pages): fail the callers still waiting and cut the file back,
    /// so none of their records comes back at recovery.
    fn sync_failed(&mut self, error: &io::Error) {
        tracing::error!(%error, segment = self.active.id, "log fsync failed");
        for waiting in self.waiting.drain(..) {
            let _ = waiting.reply.send(Err(copy(error)));
        }
        if self.sync == SyncPolicy::Always {
            self.end = self.durable;
            self.active.size.store(self.end, Ordering::Relaxed);
            // Cut before the next write, which also retries it if it fails.
            self.leftover = true;
        }
    }

    /// Waits for the fsync in flight, then fsyncs everything written, whatever the policy.
    async fn sync_all(&mut self) -> io::Result<()> {
        while let Some((_, handle)) = &mut self.syncing {
            let result = handle.await.unwrap_or_else(|e| Err(io::Error::other(e)));
            self.synced(result);
        }
        self.cut_leftover().await?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        match self.active.file.sync().await {
            Ok(()) => {
                self.durable = self.end;
                self.dirty = false;
                self.acknowledge();
                Ok(())
            }
            Err(error) => {
                self.sync_failed(&error);
                Err(error)
            }
        }
    }

    async fn sync_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(error) = self.sync_all().await {
            // Acknowledged writes are at risk until a later sync succeeds.
            tracing::error!(%error, segment = self.active.id, "periodic log fsync failed");
        }
    }

    /// Seals the active segment (synced, so a sealed segment never has a torn tail) and
    /// starts a new one.
    async fn roll(&mut self) -> io::Result<()> {
        self.sync_all().await?;
        let id = self.table.allocate_id()?;
        let segment = create_segment(&self.env, &self.dir, id).await?;
        self.table.insert(segment.clone());
        self.table.set_active(id);
        tracing::debug!(sealed = self.active.id, active = id, "log rolled");
        self.active = segment;
        self.end = 0;
        self.durable = 0;
        self.rolled.notify_one();
        Ok(())
    }

    async fn roll_reserving(&mut self) -> io::Result<u32> {
        let reserved = self.table.allocate_id()?;
        self.roll().await?;
        Ok(reserved)
    }
}

fn copy(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}

/// The first command plus whatever else is already waiting, up to the batch limit.
fn gather(first: Command, commands: &mut mpsc::Receiver<Command>) -> Vec<Command> {
    let mut bytes = first.bytes();
    let mut batch = vec![first];
    while bytes < MAX_BATCH_BYTES {
        match commands.try_recv() {
            Ok(command) => {
                bytes += command.bytes();
                batch.push(command);
            }
            Err(_) => break,
        }
    }
    batch
}

fn place(segment: u32, offset: u64) -> io::Result<Placed> {
    let offset = u32::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment offset beyond 4 GiB"))?;
    Ok(Placed { segment, offset })
}

/// Creates an empty segment file and makes its name durable before anything is written
/// to it: a record acknowledged in a file whose name a crash could lose would be lost.
pub(crate) async fn create_segment<E: Env>(
    env: &E,
    dir: &Path,
    id: u32,
) -> io::Result<Arc<Segment<E::File>>> {
    let path = segment_path(dir, id);
    let file = env.open_file(&path).await?;
    env.sync_dir(dir).await?;
    Ok(Arc::new(Segment::new(id, path, file, 0)))
}
