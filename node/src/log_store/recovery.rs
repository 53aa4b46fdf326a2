//! Rebuilding the index from the segment files when the store opens.
//!
//! Segments are scanned in id order and every record's checksum is verified. For each key
//! the record with the highest sequence wins, wherever it lies, so copies left by an
//! interrupted compaction (same sequence) are harmless and a compaction copy never
//! outranks a newer write.
//!
//! What a scan can meet, and what it does:
//! - in the last segment, anything unreadable that no good record follows (a partial
//!   record, an impossible length, records failing their checksum): a write torn by a
//!   crash. Cut there (warn). Nothing after it was acknowledged under `sync = always`.
//! - the file ends inside a record in an older segment: sealed segments are synced before
//!   the next one starts, so only an interrupted compaction output ends that way. The
//!   partial record is ignored (warn) and the file left as it is.
//! - a record of plausible length whose checksum fails, with more data after it: damage.
//!   It is reported (error) and skipped, never served; the key falls back to its previous
//!   record if it has one, like a replica that missed a write, which read repair mends.
//! - an impossible length in an older segment: nothing after it can be found again; the
//!   rest of the segment is reported (error) and ignored.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::index::{segment_id, Index, Location, Segment, SegmentTable};
use super::record::{Found, Scanned, Scanner};
use crate::env::{DataFile, Env};
use crate::ring::key_hash;

/// What recovery found, for the node's start-up log.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub keys: usize,
    pub segments: usize,
    pub records: u64,
    /// Records skipped because their checksum or body was bad.
    pub corrupt_records: u64,
    /// Bytes cut from the end of the last segment (a torn write).
    pub torn_bytes: u64,
    pub elapsed: Duration,
}

pub(crate) struct Recovered<F> {
    pub table: SegmentTable<F>,
    pub index: Index,
    /// One above the highest sequence found.
    pub next_sequence: u64,
    pub report: Recovery,
}

pub(crate) async fn recover<E: Env>(env: &E, dir: &Path) -> io::Result<Recovered<E::File>> {
    let files = list_segments(env, dir).await?;
    let last = files.keys().next_back().copied();
    let next_id = match last {
        Some(id) => id
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment ids are exhausted"))?,
        None => 1,
    };
    let mut scan = Scan {
        table: SegmentTable::new(next_id),
        index: Index::new(),
        max_sequence: 0,
        report: Recovery::default(),
    };

    let mut removed_empty = false;
    for (id, path) in files {
        let file = env.open_file(&path).await?;
        let size = file.size().await?;
        if size == 0 {
            // An active segment that never got a record; a new one is started anyway.
            env.remove_file(&path).await?;
            removed_empty = true;
            continue;
        }
        let segment = Arc::new(Segment::new(id, path, file, size));
        scan.table.insert(segment.clone());
        let kept = scan.segment(&segment, Some(id) == last).await?;
        segment.size.store(kept, Ordering::Relaxed);
        if Some(id) == last {
            // What was read may sit only in the page cache (the process died, not the
            // machine); it is served from now on, so it must be on disk first.
            segment.file.sync().await?;
        }
        scan.report.segments += 1;
    }
    if removed_empty {
        env.sync_dir(dir).await?;
    }

    scan.report.keys = scan.index.len();
    Ok(Recovered {
        table: scan.table,
        index: scan.index,
        next_sequence: scan.max_sequence + 1,
        report: scan.report,
    })
}

/// The segment files in the directory by id; anything else is left alone.
async fn list_segments<E: Env>(env: &E, dir: &Path) -> io::Result<BTreeMap<u32, PathBuf>> {
    let mut files = BTreeMap::new();
    for path in env.list_dir(dir).await? {
        match segment_id(&path) {
            Some(id) => {
                files.insert(id, path);
            }
            None => tracing::warn!(path = %path.display(), "ignoring a file in the log dir"),
        }
    }
    Ok(files)
}

/// A record that failed its checksum, not yet known to be damage or a torn tail.
struct Suspect {
    offset: u64,
    length: u64,
    reason: String,
}

struct Scan<F> {
    table: SegmentTable<F>,
    index: Index,
    max_sequence: u64,
    report: Recovery,
}

impl<F: DataFile> Scan<F> {
    /// Indexes one segment's records; returns how many of its bytes are kept.
    ///
    /// In the last segment, bad records are only judged once the scan knows whether a
    /// good one follows: if none does, they are the torn tail, not damage.
    async fn segment(&mut self, segment: &Segment<F>, last: bool) -> io::Result<u64> {
        let size = segment.size.load(Ordering::Relaxed);
        if size > u64::from(u32::MAX) {
            let reason = format!("segment {} is larger than 4 GiB", segment.id);
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        let mut scanner = Scanner::new(&segment.file, size);
        let mut suspects: Vec<Suspect> = Vec::new();
        let end = loop {
            match scanner.next().await? {
                Scanned::Record(found) => {
                    for suspect in suspects.drain(..) {
                        self.corrupt(segment.id, suspect);
                    }
                    self.record(segment.id, &found);
                }
                Scanned::Corrupt {
                    offset,
                    length,
                    reason,
                } => {
                    let suspect = Suspect {
                        offset,
                        length,
                        reason,
                    };
                    if last {
                        suspects.push(suspect);
                    } else {
                        self.corrupt(segment.id, suspect);
                    }
                }
                Scanned::End => break None,
                Scanned::Implausible { offset, length } => {
                    if !last {
                        tracing::error!(
                            segment = segment.id,
                            offset,
                            length,
                            "damaged record header: the rest of this log segment is unreadable"
                        );
                    }
                    break Some(offset);
                }
                Scanned::Torn { offset } => {
                    if !last {
                        tracing::warn!(
                            segment = segment.id,
                            offset,
                            "log segment ends inside a record (an interrupted compaction)"
                        );
                    }
                    break Some(offset);
                }
            }
        };
        let tail = suspects.first().map(|suspect| suspect.offset).or(end);
        match tail {
            Some(offset) if last => cut_torn_tail(segment, offset, &mut self.report).await,
            _ => Ok(size),
        }
    }

    fn corrupt(&mut self, segment: u32, suspect: Suspect) {
        self.report.corrupt_records += 1;
        tracing::error!(
            segment,
            offset = suspect.offset,
            length = suspect.length,
            reason = %suspect.reason,
            "corrupt log record skipped; it is never served"
        );
    }

    /// Points the key at this record unless it already has a newer one.
    fn record(&mut self, segment: u32, found: &Found<'_>) {
        self.report.records += 1;
        self.max_sequence = self.max_sequence.max(found.sequence);
        // The segment is under 4 GiB (checked above), so both fit.
        let location = Location {
            sequence: found.sequence,
            segment,
            offset: found.offset as u32,
            length: found.bytes.len() as u32,
        };
        let hash = key_hash(found.key);
        if let Some(before) = self.index.insert_if_newer(hash, found.key, location) {
            self.table.account(before, Some(location));
        }
    }
}

async fn cut_torn_tail<F: DataFile>(
    segment: &Segment<F>,
    offset: u64,
    report: &mut Recovery,
) -> io::Result<u64> {
    let size = segment.size.load(Ordering::Relaxed);
    tracing::warn!(
        segment = segment.id,
        offset,
        cut_bytes = size - offset,
        "torn write at the end of the log: cutting it off"
    );
    segment.file.truncate(offset).await?;
    report.torn_bytes += size - offset;
    Ok(offset)
}
