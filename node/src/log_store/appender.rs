//! The one writer of the log, which commits writes in groups.
//!
//! Every update sends its encoded record here and waits for the answer. The appender takes
//! whatever has queued up while it was busy, writes it with one `write_at`, covers it with
//! one fsync (under `sync = always`) and only then answers every caller in the batch. The
//! slower the disk, the larger the batches, so the fsync rate stays bounded by the disk and
//! not by the number of writers.
//!
//! A failed write or fsync fails exactly the batch it carried: the file is cut back to
//! where the batch began, so no record of a write reported as failed can come back at
//! recovery, and the next batch simply tries again. The store never stops serving reads.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::MissedTickBehavior;

use super::index::{segment_path, Segment, SegmentTable};
use crate::config::SyncPolicy;
use crate::env::{DataFile, Env};

/// Most bytes written in one batch. A few MiB keeps the disk streaming while bounding how
/// long one batch makes the next callers wait.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
    /// Written since the last fsync.
    dirty: bool,
    /// A failed batch may have left bytes past `end` that could not be cut yet.
    leftover: bool,
    /// Told after each roll, so the compactor looks at the newly sealed segment.
    rolled: Arc<Notify>,
}

pub(crate) struct AppenderSettings {
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    pub segment_bytes: u64,
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
            dirty: false,
            leftover: false,
            rolled,
        }
    }

    /// Serves commands until the store drops its sender, then syncs what is left.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut ticker = tokio::time::interval(self.sync_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let periodic = self.sync == SyncPolicy::Interval;
        loop {
            // The tick goes first: it is ready only once per interval, so it cannot
            // starve the commands, while commands under load would starve it.
            let first = tokio::select! {
                biased;
                _ = ticker.tick(), if periodic => {
                    self.sync_if_dirty().await;
                    continue;
                }
                command = commands.recv() => command,
            };
            let Some(first) = first else { break };
            let batch = gather(first, &mut commands);
            self.process(batch).await;
        }
        self.sync_if_dirty().await;
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
                    let _ = reply.send(self.sync_now().await);
                }
                Command::Append { .. } => unreachable!("appends were taken out above"),
            }
        }
    }

    /// Writes the batch's records back to back and answers each caller.
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
        let result = self.write(buffer).await;
        for ((_, reply), offset) in appends.into_iter().zip(offsets) {
            let answer = match &result {
                Ok(()) => place(segment, offset),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            let _ = reply.send(answer);
        }
    }

    async fn write(&mut self, buffer: Vec<u8>) -> io::Result<()> {
        if self.leftover {
            self.active.file.truncate(self.end).await?;
            self.leftover = false;
        }
        let len = buffer.len() as u64;
        match self.write_and_sync(buffer).await {
            Ok(()) => {
                self.end += len;
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

    async fn write_and_sync(&mut self, buffer: Vec<u8>) -> io::Result<()> {
        self.active.file.write_at(self.end, buffer).await?;
        match self.sync {
            SyncPolicy::Always => self.active.file.sync().await,
            SyncPolicy::Interval | SyncPolicy::Never => {
                self.dirty = true;
                Ok(())
            }
        }
    }

    async fn sync_now(&mut self) -> io::Result<()> {
        self.active.file.sync().await?;
        self.dirty = false;
        Ok(())
    }

    async fn sync_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        if let Err(error) = self.sync_now().await {
            // Acknowledged writes are at risk until a later sync succeeds.
            tracing::error!(%error, segment = self.active.id, "log fsync failed");
        }
    }

    /// Seals the active segment (synced, so a sealed segment never has a torn tail) and
    /// starts a new one.
    async fn roll(&mut self) -> io::Result<()> {
        if self.leftover {
            self.active.file.truncate(self.end).await?;
            self.leftover = false;
        }
        self.sync_now().await?;
        let id = self.table.allocate_id()?;
        let segment = create_segment(&self.env, &self.dir, id).await?;
        self.table.insert(segment.clone());
        self.table.set_active(id);
        tracing::debug!(sealed = self.active.id, active = id, "log rolled");
        self.active = segment;
        self.end = 0;
        self.rolled.notify_one();
        Ok(())
    }

    async fn roll_reserving(&mut self) -> io::Result<u32> {
        let reserved = self.table.allocate_id()?;
        self.roll().await?;
        Ok(reserved)
    }
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
