//! Giving back the space of overwritten records.
//!
//! A compaction copies the live records (those the index points at) of some sealed
//! segments into new segments, keeping each record's original sequence, then deletes the
//! old segments. The order of steps is what makes a crash at any point lose nothing:
//! 1. copy live records into an output segment whose name was made durable at creation;
//! 2. fsync the output;
//! 3. point the index at the copies, key by key under the key's lock, and only where it
//!    still points at the old record (a write that came meanwhile keeps its newer record);
//! 4. fsync the active segment, so every record that made an old one dead is on disk;
//! 5. delete the old segments and fsync the directory.
//!
//! Until step 5 the old records are still there; recovery then finds the same record twice
//! (same sequence, either will do) or finds the newer write (higher sequence, it wins).
//! Reads and writes go on throughout: each key is locked only for its own index update.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::appender::create_segment;
use super::index::{Location, Segment};
use super::record::{Found, Scanned, Scanner};
use super::Shared;
use crate::env::{DataFile, Env};
use crate::ring::key_hash;
use crate::storage::{CompactionStats, StorageError};

/// How often the compactor looks at the dead ratio when no roll prompts it. Rare enough
/// to cost nothing, frequent enough that space comes back within seconds.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// After a failed compaction (a full or failing disk) the compactor waits this long before
/// it tries again, however many segments roll meanwhile, so it never spins on the error.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Copied records are gathered up to this size before one write to the output.
const COPY_BUFFER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The dead ratio of the sealed segments passed the configured one.
    DeadRatio,
    /// An operator asked: seal the active segment too and compact whatever has dead bytes.
    Requested,
}

/// Compacts whenever the dead ratio asks for it, until the store is dropped.
pub(crate) async fn run<E: Env>(shared: Weak<Shared<E>>, rolled: Arc<Notify>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            () = rolled.notified() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.compact(Trigger::DeadRatio).await {
            Ok(stats) if stats.segments_removed > 0 => log_done(&stats, Trigger::DeadRatio),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "log compaction failed; will retry");
                drop(shared);
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        }
    }
}

pub(crate) fn log_done(stats: &CompactionStats, trigger: Trigger) {
    tracing::info!(
        ?trigger,
        removed = stats.segments_removed,
        written = stats.segments_written,
        records = stats.records_copied,
        bytes_before = stats.bytes_before,
        bytes_after = stats.bytes_after,
        "log compacted"
    );
}

/// A segment being filled with copies, and the index moves that wait for its fsync.
struct Output<F> {
    segment: Arc<Segment<F>>,
    buffer: Vec<u8>,
    written: u64,
    moved: Vec<Moved>,
}

struct Moved {
    key: Box<[u8]>,
    hash: u64,
    from: Location,
    to: Location,
}

impl<F: DataFile> Output<F> {
    fn end(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    fn push(&mut self, found: &Found<'_>, from: Location, hash: u64) -> io::Result<()> {
        let offset = u32::try_from(self.end())
            .map_err(|_| io::Error::other("compaction output beyond 4 GiB"))?;
        let to = Location {
            segment: self.segment.id,
            offset,
            ..from
        };
        self.buffer.extend_from_slice(found.bytes);
        self.moved.push(Moved {
            key: found.key.into(),
            hash,
            from,
            to,
        });
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let len = buffer.len() as u64;
        self.segment.file.write_at(self.written, buffer).await?;
        self.written += len;
        self.segment.size.store(self.written, Ordering::Relaxed);
        Ok(())
    }
}

impl<E: Env> Shared<E> {
    /// One compaction; at most one runs at a time.
    pub(crate) async fn compact(&self, trigger: Trigger) -> Result<CompactionStats, StorageError> {
        let _running = self.compacting.lock().await;
        let mut stats = CompactionStats {
            bytes_before: self.table.total_bytes(),
            ..CompactionStats::default()
        };
        let mut spare_id = None;
        if trigger == Trigger::Requested {
            spare_id = Some(self.roll().await?);
        }
        let inputs = self.choose_inputs(trigger);
        if !inputs.is_empty() {
            self.rewrite(&inputs, spare_id, &mut stats).await?;
            self.flush().await?;
            for input in inputs {
                self.retire(input, &mut stats).await;
            }
            self.env.sync_dir(&self.dir).await?;
        }
        stats.bytes_after = self.table.total_bytes();
        Ok(stats)
    }

    /// Sealed segments worth compacting. Empty ones are always taken (they only cost a
    /// file); otherwise the segments that are themselves at least as dead as the ratio,
    /// once the sealed segments as a whole pass it.
    fn choose_inputs(&self, trigger: Trigger) -> Vec<Arc<Segment<E::File>>> {
        let damaged = self.damaged.lock().expect("damaged lock").clone();
        let mut sealed = self.table.sealed();
        sealed.retain(|segment| !damaged.contains(&segment.id));
        let size = |segment: &Segment<E::File>| segment.size.load(Ordering::Relaxed);
        let ratio = self.options.compact_dead_ratio;

        let total: u64 = sealed.iter().map(|s| size(s)).sum();
        let dead: u64 = sealed.iter().map(|s| s.dead()).sum();
        let due = match trigger {
            Trigger::Requested => true,
            Trigger::DeadRatio => dead as f64 > ratio * total as f64,
        };
        sealed.retain(|segment| match trigger {
            _ if size(segment) == 0 => true,
            Trigger::Requested => segment.dead() > 0,
            Trigger::DeadRatio => due && segment.dead() as f64 >= ratio * size(segment) as f64,
        });
        sealed
    }

    /// Copies the inputs' live records into as many outputs as they need.
    async fn rewrite(
        &self,
        inputs: &[Arc<Segment<E::File>>],
        mut spare_id: Option<u32>,
        stats: &mut CompactionStats,
    ) -> Result<(), StorageError> {
        let mut output = None;
        for input in inputs {
            let size = input.size.load(Ordering::Relaxed);
            let mut scanner = Scanner::new(&input.file, size);
            loop {
                let found = match scanner.next().await? {
                    Scanned::Record(found) => found,
                    // Reported at recovery or on read; the index never points there.
                    Scanned::Corrupt { .. } => continue,
                    Scanned::End | Scanned::Implausible { .. } | Scanned::Torn { .. } => break,
                };
                let hash = key_hash(found.key);
                let here = Location {
                    sequence: found.sequence,
                    segment: input.id,
                    offset: found.offset as u32,
                    length: found.bytes.len() as u32,
                };
                if self.index.get(hash, found.key) != Some(here) {
                    continue;
                }
                let out = match &mut output {
                    Some(out) => out,
                    None => output.insert(self.open_output(spare_id.take()).await?),
                };
                out.push(&found, here, hash)?;
                stats.records_copied += 1;
                if out.buffer.len() >= COPY_BUFFER_BYTES {
                    out.flush().await?;
                }
                if out.end() >= self.options.segment_bytes {
                    if let Some(full) = output.take() {
                        self.install(full).await?;
                        stats.segments_written += 1;
                    }
                }
            }
        }
        if let Some(last) = output {
            self.install(last).await?;
            stats.segments_written += 1;
        }
        Ok(())
    }

    /// A new segment for copies, with an id below the active one (see `Command::Roll`),
    /// registered at once so that a compaction failing half-way leaves a segment a later
    /// one removes.
    async fn open_output(&self, spare_id: Option<u32>) -> Result<Output<E::File>, StorageError> {
        let id = match spare_id {
            Some(id) => id,
            None => self.roll().await?,
        };
        let segment = create_segment(&self.env, &self.dir, id).await?;
        self.table.insert(segment.clone());
        Ok(Output {
            segment,
            buffer: Vec::with_capacity(COPY_BUFFER_BYTES),
            written: 0,
            moved: Vec::new(),
        })
    }

    /// Makes the copies durable, then points the index at them.
    async fn install(&self, mut output: Output<E::File>) -> Result<(), StorageError> {
        output.flush().await?;
        output.segment.file.sync().await?;
        for moved in output.moved {
            // The key's lock keeps a reader from looking up the old location, then
            // reading it after the old segment is gone.
            let _key = self.stripe(moved.hash).write().await;
            if self
                .index
                .replace_if(moved.hash, &moved.key, moved.from, moved.to)
            {
                self.table.account(Some(moved.from), Some(moved.to));
            }
        }
        Ok(())
    }

    /// Deletes an input whose every live record now lives elsewhere.
    async fn retire(&self, input: Arc<Segment<E::File>>, stats: &mut CompactionStats) {
        let live = input.live.load(Ordering::Relaxed);
        if live > 0 {
            // Only a record that failed its checksum since recovery stays behind; keep
            // the segment (the key reports the damage on read) and stop choosing it.
            tracing::error!(
                segment = input.id,
                live,
                "log segment keeps records compaction could not copy; kept"
            );
            let mut damaged = self.damaged.lock().expect("damaged lock");
            damaged.insert(input.id);
            return;
        }
        self.table.remove(input.id);
        match self.env.remove_file(&input.path).await {
            Ok(()) => stats.segments_removed += 1,
            // Left behind, it only holds copies and older records; recovery ranks them.
            Err(error) => tracing::warn!(%error, segment = input.id, "cannot delete segment"),
        }
    }
}

/// Segment ids compaction must leave alone.
pub(crate) type Damaged = std::sync::Mutex<BTreeSet<u32>>;
