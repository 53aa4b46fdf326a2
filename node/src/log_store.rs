//! The durable store: a log of checksummed records, Bitcask-style.
//!
//! On disk, `<data_dir>/log/` holds append-only segment files `segment-NNNNNNNNNN.log`.
//! Each update appends the key's whole new state as one record ([`record`]); nothing is
//! ever overwritten in place. In memory, an [`index`] maps each key to its latest record,
//! so a read is one positional read of one record, whose checksum is verified again.
//!
//! The parts, in the order an update meets them:
//! - the key's stripe lock makes read, change and append of one key one step (two updates
//!   of a key never interleave; updates of other keys go on in parallel);
//! - the [`appender`] writes records in batches, one write and one fsync per batch (group
//!   commit), rolls to a new segment when the active one is full, and answers;
//! - the index then points the key at its new record. A write that failed never reaches
//!   the index, so the key keeps its previous state;
//! - [`compaction`] rewrites sealed segments whose records are mostly dead;
//! - [`recovery`] rebuilds the index when the store opens, cutting a torn tail and skipping
//!   (never serving) damaged records.
//!
//! Every record carries a store-wide sequence number; recovery keeps, per key, the record
//! with the highest one. That single rule is what makes crashes in the middle of an append
//! or of a compaction harmless. All file access goes through [`Env`], so the simulator can
//! crash a node and drop what was not fsynced.
//!
//! Known shortcomings (TODO):
//! - every key must fit in memory (about 70-100 bytes per key plus the key itself), and
//!   recovery reads every segment; Bitcask's hint files would make start-up read less;
//! - compaction takes whole segments by dead ratio and never merges small, mostly live
//!   ones, so a store that rolls often (one roll per compaction output) keeps small files;
//! - after a failed fsync the store retries on the next batch; Linux may have dropped the
//!   failed pages, so under `sync = interval` writes acknowledged before it can be lost
//!   without a second error (the "fsyncgate" problem; PostgreSQL stops the server there).

mod appender;
mod compaction;
mod index;
mod record;
mod recovery;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Notify, RwLock};
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::appender::{create_segment, Appender, AppenderSettings, Command, Counters};
use self::compaction::{Damaged, Trigger};
use self::index::{Index, Location, SegmentTable};
pub use self::recovery::Recovery;
use crate::config::{NodeConfig, SyncPolicy};
use crate::env::{DataFile, Env};
use crate::ring::key_hash;
use crate::storage::{Change, CompactionStats, Storage, StorageError};
use crate::versions::Versions;

/// Per-key lock stripes. Far more than the writers in flight (a connection handles up to
/// 1024 requests, but a node rarely has more than a few dozen updates at once), so two
/// updates of different keys seldom share a stripe; 1024 empty locks cost ~50 KiB.
const STRIPES: usize = 1024;

/// Records waiting for the appender. Beyond this, updates wait to enqueue, which pushes
/// back on the callers instead of growing memory.
const APPEND_QUEUE: usize = 4096;

/// The directory under the node's data dir that holds the segments.
pub const LOG_DIR: &str = "log";

/// The settings of the log store (see `NodeConfig` for what each one means).
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    pub segment_bytes: u64,
    pub compact_dead_ratio: f64,
}

impl LogOptions {
    pub fn from_config(config: &NodeConfig) -> Self {
        LogOptions {
            sync: config.sync,
            sync_interval: config.sync_interval,
            segment_bytes: config.segment_bytes,
            compact_dead_ratio: config.compact_dead_ratio,
        }
    }
}

pub struct LogStore<E: Env> {
    shared: Arc<Shared<E>>,
    compactor: JoinHandle<()>,
}

/// What the store's callers, the appender's users and the compactor share.
pub(crate) struct Shared<E: Env> {
    env: E,
    dir: PathBuf,
    options: LogOptions,
    stripes: Box<[RwLock<()>]>,
    index: Index,
    table: Arc<SegmentTable<E::File>>,
    appender: mpsc::Sender<Command>,
    next_sequence: AtomicU64,
    /// Held for the whole of a compaction: one at a time.
    compacting: tokio::sync::Mutex<()>,
    damaged: Damaged,
    counters: Arc<Counters>,
}

/// How many records the appender took, in how many writes and fsyncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCounters {
    pub records: u64,
    pub writes: u64,
    pub fsyncs: u64,
}

impl<E: Env> LogStore<E> {
    /// Opens (or creates) the log in `dir`: recovers the index, starts a fresh active
    /// segment, and starts the appender and the compactor.
    pub async fn open(
        env: E,
        dir: &Path,
        options: LogOptions,
    ) -> Result<(Self, Recovery), StorageError> {
        let started = env.now();
        env.create_dir_all(dir).await?;
        let recovered = recovery::recover(&env, dir).await?;
        let table = Arc::new(recovered.table);

        // Appending after a recovered tail would put new records behind whatever the scan
        // could not read; a fresh segment keeps the active one clean and the last one.
        let active = create_segment(&env, dir, table.allocate_id()?).await?;
        table.insert(active.clone());
        table.set_active(active.id);

        let rolled = Arc::new(Notify::new());
        let (sender, commands) = mpsc::channel(APPEND_QUEUE);
        let counters = Arc::new(Counters::default());
        let settings = AppenderSettings {
            sync: options.sync,
            sync_interval: options.sync_interval,
            segment_bytes: options.segment_bytes,
            counters: counters.clone(),
        };
        let appender = Appender::new(
            env.clone(),
            dir.to_owned(),
            table.clone(),
            active,
            settings,
            rolled.clone(),
        );
        tokio::spawn(appender.run(commands).in_current_span());

        let shared = Arc::new(Shared {
            env,
            dir: dir.to_owned(),
            options,
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            index: recovered.index,
            table,
            appender: sender,
            next_sequence: AtomicU64::new(recovered.next_sequence),
            compacting: tokio::sync::Mutex::new(()),
            damaged: Damaged::default(),
            counters,
        });
        let compactor = compaction::run(Arc::downgrade(&shared), rolled);
        let compactor = tokio::spawn(compactor.in_current_span());

        let mut report = recovered.report;
        report.elapsed = shared.env.now().duration_since(started);
        Ok((LogStore { shared, compactor }, report))
    }

    /// Makes every acknowledged write durable; the appender stops once the store drops.
    pub async fn close(self) -> Result<(), StorageError> {
        self.shared.flush().await
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.table.total_bytes()
    }

    pub fn counters(&self) -> LogCounters {
        let counters = &self.shared.counters;
        LogCounters {
            records: counters.records.load(Ordering::Relaxed),
            writes: counters.writes.load(Ordering::Relaxed),
            fsyncs: counters.fsyncs.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    fn segment_ids(&self) -> Vec<u32> {
        self.shared.table.all().iter().map(|s| s.id).collect()
    }
}

impl<E: Env> Drop for LogStore<E> {
    fn drop(&mut self) {
        // A compaction cut short is a crash in the middle of one, which loses nothing.
        self.compactor.abort();
    }
}

impl<E: Env> Storage for LogStore<E> {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Versions>, StorageError>> {
        Box::pin(self.shared.get(key))
    }

    fn update<'a>(
        &'a self,
        key: &'a [u8],
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Versions, StorageError>> {
        Box::pin(self.shared.update(key, change))
    }

    fn key_count(&self) -> usize {
        self.shared.index.len()
    }

    fn keys(&self) -> Vec<bytes::Bytes> {
        self.shared.index.keys()
    }

    fn compact(&self) -> BoxFuture<'_, Result<CompactionStats, StorageError>> {
        Box::pin(async move {
            let stats = self.shared.compact(Trigger::Requested).await?;
            compaction::log_done(&stats, Trigger::Requested);
            Ok(stats)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.shared.flush())
    }
}

impl<E: Env> Shared<E> {
    fn stripe(&self, hash: u64) -> &RwLock<()> {
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Versions>, StorageError> {
        let hash = key_hash(key);
        // Held while reading, so compaction cannot move the record and delete its old
        // segment between the lookup and the read.
        let _key = self.stripe(hash).read().await;
        match self.index.get(hash, key) {
            Some(location) => Ok(Some(self.read(key, location).await?)),
            None => Ok(None),
        }
    }

    async fn update(&self, key: &[u8], change: Change<'_>) -> Result<Versions, StorageError> {
        let hash = key_hash(key);
        let _key = self.stripe(hash).write().await;
        let before = self.index.get(hash, key);
        // TODO: a record that fails its checksum here (damaged since recovery) leaves the
        // key unwritable on this node until a restart skips it. Writing on an empty state
        // instead would be right for merges but could reuse this epoch's dots for a
        // coordinator's write, so the error stands.
        let current = match before {
            Some(location) => Some(self.read(key, location).await?),
            None => None,
        };

        let mut state = current.clone().unwrap_or_default();
        change(&mut state).map_err(StorageError::Refused)?;
        if current.as_ref() == Some(&state) {
            // A merge that taught this replica nothing (the usual replication and repair
            // case): the stored record already says it.
            return Ok(state);
        }

        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let bytes = record::encode(sequence, key, &state)?;
        let length = bytes.len() as u32;
        let placed = self.append(bytes).await?;
        let location = Location {
            sequence,
            segment: placed.segment,
            offset: placed.offset,
            length,
        };
        let replaced = self.index.insert(hash, key, location);
        self.table.account(replaced, Some(location));
        Ok(state)
    }

    /// The state stored at `location`, verified.
    async fn read(&self, key: &[u8], location: Location) -> Result<Versions, StorageError> {
        let segment = self.table.get(location.segment).ok_or_else(|| {
            let reason = format!("log segment {} is missing", location.segment);
            StorageError::Io(std::io::Error::other(reason))
        })?;
        let offset = u64::from(location.offset);
        let bytes = segment
            .file
            .read_at(offset, location.length as usize)
            .await?;
        record::decode_state(&bytes, key).map_err(|reason| {
            tracing::error!(segment = location.segment, offset, %reason, "corrupt log record");
            StorageError::Corrupt {
                segment: u64::from(location.segment),
                offset,
                reason,
            }
        })
    }

    async fn append(&self, record: Vec<u8>) -> Result<appender::Placed, StorageError> {
        let (reply, placed) = oneshot::channel();
        self.command(Command::Append { record, reply }).await?;
        Ok(placed.await.map_err(|_| stopped())??)
    }

    /// Seals the active segment; returns a fresh id below the new active one.
    async fn roll(&self) -> Result<u32, StorageError> {
        let (reply, reserved) = oneshot::channel();
        self.command(Command::Roll { reply }).await?;
        Ok(reserved.await.map_err(|_| stopped())??)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        let (reply, synced) = oneshot::channel();
        self.command(Command::Sync { reply }).await?;
        Ok(synced.await.map_err(|_| stopped())??)
    }

    async fn command(&self, command: Command) -> Result<(), StorageError> {
        self.appender.send(command).await.map_err(|_| stopped())
    }
}

/// Only a panic in the appender task could lead here.
fn stopped() -> StorageError {
    StorageError::Io(std::io::Error::other("the log appender has stopped"))
}
