//! Hints: writes a home replica missed, kept durably until it can take them.
//!
//! A coordinator whose write a home replica did not acknowledge (it was down, or did not
//! answer in time) stores a hint for it; under a sloppy quorum the fallback that took
//! the write on the home's behalf stores it instead. The handoff task ([`crate::handoff`])
//! offers each hint to its target once the failure detector sees it up, and deletes it
//! once the target acknowledged the merge.
//!
//! One hint per (target, key): a second hint for the same pair is merged into the first,
//! so a hot key behind a dead replica costs one state, not one per write. The merged hint
//! keeps the older creation time, so it never outlives the window of anything it carries
//! (the tombstone purge rule relies on that, see [`crate::tombstones`]).
//!
//! Durability: the hints live in memory and in a journal `hints-NNNNNNNNNN.log` of
//! checksummed records (4-byte length, 4-byte CRC-32, MessagePack body), appended under
//! group commit and fsynced before `add` returns when the node's sync policy is `always`.
//! On start the journal is read (up to the first damaged or torn record) and written
//! again as a fresh generation, which is also how it sheds removed hints while running.
//!
//! Bounds: hints older than the hint window are dropped, and so is a hint that would take
//! the store past its byte limit; both are counted and logged. Anti-entropy repairs what a
//! dropped hint carried.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use quorumkv_client::NodeId;
use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, SyncPolicy};
use crate::env::{DataFile, Env};
use crate::versions::Versions;

/// The directory under the node's data dir that holds the journal.
pub const HINTS_DIR: &str = "hints";

/// Rewrite the journal once this many bytes of it are removed or replaced hints and they
/// outweigh the live ones: the journal then stays within about twice the live hints.
const REWRITE_DEAD_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HintError {
    #[error("hints are switched off on this node")]
    Disabled,
    #[error("hint storage is full ({limit} bytes); the hint was dropped")]
    Full { limit: u64 },
    #[error("hint journal i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One pending hint.
#[derive(Clone, Debug)]
pub struct Hint {
    /// Changes whenever the hint is replaced by a merge, so that a delivery of the old
    /// state does not delete the newer one.
    pub id: u64,
    pub state: Versions,
    /// Wall clock when the oldest write it carries was hinted, ms since the Unix epoch.
    pub created_ms: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
enum Record {
    Add {
        id: u64,
        target: NodeId,
        key: Bytes,
        state: Versions,
        created_ms: u64,
    },
    Remove {
        id: u64,
        target: NodeId,
        key: Bytes,
    },
}

#[derive(Default)]
struct Pending {
    hints: BTreeMap<(NodeId, Bytes), Hint>,
    /// How many targets hold a hint for each key, for the tombstone purge rule.
    keys: BTreeMap<Bytes, u32>,
    live_bytes: u64,
    dead_bytes: u64,
    next_id: u64,
    /// Records not yet written to the journal, and the number of the last one.
    unwritten: Vec<u8>,
    records: u64,
}

struct Journal<F> {
    file: F,
    path: PathBuf,
    generation: u64,
    len: u64,
    /// Records up to this number are written (and synced, under `always`).
    durable: u64,
}

pub struct HintStore<E: Env> {
    env: E,
    dir: PathBuf,
    enabled: bool,
    sync: SyncPolicy,
    window_ms: u64,
    limit_bytes: u64,
    pending: Mutex<Pending>,
    journal: tokio::sync::Mutex<Journal<E::File>>,
    dropped: AtomicU64,
    delivered: AtomicU64,
}

impl<E: Env> HintStore<E> {
    /// Opens the journal in `<data_dir>/hints`, recovering what it holds.
    ///
    /// The newest generation is kept and appended to, after cutting off a torn or damaged
    /// tail; older generations (left by a crash in the middle of a rewrite) and temporary
    /// files are removed. Nothing is rewritten on start, so a node whose disk is full can
    /// still start and hand its hints off.
    pub async fn open(env: E, config: &NodeConfig) -> std::io::Result<Self> {
        let dir = config.data_dir.join(HINTS_DIR);
        env.create_dir_all(&dir).await?;
        let (mut files, leftovers) = journal_files(&env, &dir).await?;
        for leftover in leftovers {
            env.remove_file(&leftover).await?;
        }
        let (generation, path) = files.pop().unwrap_or_else(|| (1, journal_path(&dir, 1)));
        let file = env.open_file(&path).await?;
        let bytes = env.read_file(&path).await?.unwrap_or_default();
        let mut pending = Pending::default();
        let (records, torn) = replay(&bytes, &mut pending);
        let len = (bytes.len() - torn) as u64;
        if torn > 0 {
            file.truncate(len).await?;
            file.sync().await?;
        }
        tracing::info!(
            records,
            torn_bytes = torn,
            hints = pending.hints.len(),
            "hints recovered"
        );
        let journal = Journal {
            file,
            path,
            generation,
            len,
            durable: 0,
        };
        let store = HintStore {
            env,
            dir,
            enabled: config.hints,
            sync: config.sync,
            window_ms: config.hint_window.as_millis() as u64,
            limit_bytes: config.hint_storage_bytes,
            pending: Mutex::new(pending),
            journal: tokio::sync::Mutex::new(journal),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        };
        for (_, old) in files {
            store.env.remove_file(&old).await?;
        }
        store.env.sync_dir(&store.dir).await?;
        Ok(store)
    }

    /// Stores a hint that `target` should merge `state` for `key`, a state taken at
    /// `stamp` (wall-clock ms); durable on return under `sync = always`. The hint's age
    /// counts from the stamp, not from its arrival here.
    pub async fn add(
        &self,
        target: &NodeId,
        key: &Bytes,
        state: &Versions,
        stamp: u64,
    ) -> Result<(), HintError> {
        if !self.enabled {
            return Err(HintError::Disabled);
        }
        let now = self.env.wall_clock_millis().min(stamp);
        let record = {
            let mut pending = self.pending.lock().expect("hints lock");
            match pending.insert(target, key, state, now, self.limit_bytes) {
                Some(record) => record,
                None => {
                    drop(pending);
                    self.drop_hint(target, "hint storage is full");
                    return Err(HintError::Full {
                        limit: self.limit_bytes,
                    });
                }
            }
        };
        self.persist(record).await?;
        Ok(())
    }

    /// Deletes the hint if it is still the one with `id` (delivered and acknowledged).
    pub fn delivered(&self, target: &NodeId, key: &Bytes, id: u64) {
        let mut pending = self.pending.lock().expect("hints lock");
        if pending.remove(target, key, Some(id)) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every hint older than the window; returns how many.
    pub fn expire(&self) -> u64 {
        let cutoff = self.env.wall_clock_millis().saturating_sub(self.window_ms);
        let mut pending = self.pending.lock().expect("hints lock");
        let expired: Vec<(NodeId, Bytes)> = pending
            .hints
            .iter()
            .filter(|(_, hint)| hint.created_ms <= cutoff)
            .map(|(at, _)| at.clone())
            .collect();
        for (target, key) in &expired {
            pending.remove(target, key, None);
        }
        drop(pending);
        for (target, _) in &expired {
            self.drop_hint(target, "older than the hint window");
        }
        expired.len() as u64
    }

    /// Up to `limit` unexpired hints for `target`, in key order.
    pub fn for_target(&self, target: &NodeId, limit: usize) -> Vec<(Bytes, Hint)> {
        let cutoff = self.env.wall_clock_millis().saturating_sub(self.window_ms);
        let pending = self.pending.lock().expect("hints lock");
        let start = (target.clone(), Bytes::new());
        pending
            .hints
            .range(start..)
            .take_while(|((to, _), _)| to == target)
            .filter(|(_, hint)| hint.created_ms > cutoff)
            .take(limit)
            .map(|((_, key), hint)| (key.clone(), hint.clone()))
            .collect()
    }

    /// Pending hints per target, targets in order.
    pub fn pending_by_target(&self) -> Vec<(NodeId, u64)> {
        let pending = self.pending.lock().expect("hints lock");
        let mut counts: BTreeMap<NodeId, u64> = BTreeMap::new();
        for (target, _) in pending.hints.keys() {
            *counts.entry(target.clone()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Whether any hint for `key` is pending, for any target.
    pub fn holds_key(&self, key: &[u8]) -> bool {
        self.pending
            .lock()
            .expect("hints lock")
            .keys
            .contains_key(key)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn delivered_count(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn drop_hint(&self, target: &NodeId, reason: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%target, reason, dropped, "hint dropped");
    }

    /// Writes removals and fsyncs under `interval`, and rewrites the journal when it is
    /// mostly dead. Called by the handoff task on every round.
    pub async fn maintain(&self) -> std::io::Result<()> {
        let last = self.pending.lock().expect("hints lock").records;
        self.persist(last).await?;
        if self.sync == SyncPolicy::Interval {
            self.journal.lock().await.file.sync().await?;
        }
        let rewrite = {
            let pending = self.pending.lock().expect("hints lock");
            pending.dead_bytes > REWRITE_DEAD_BYTES && pending.dead_bytes > pending.live_bytes
        };
        if rewrite {
            self.rewrite().await?;
        }
        Ok(())
    }

    /// Makes every record up to number `record` durable (group commit: whoever holds the
    /// journal writes everything queued so far, so one write and fsync serve many adds).
    async fn persist(&self, record: u64) -> std::io::Result<()> {
        let mut journal = self.journal.lock().await;
        if journal.durable >= record {
            return Ok(());
        }
        let (bytes, upto) = {
            let mut pending = self.pending.lock().expect("hints lock");
            (std::mem::take(&mut pending.unwritten), pending.records)
        };
        // On failure the journal's length stays, so the next batch overwrites whatever
        // part of this one reached the file; the lost records' hints stay in memory.
        let written = bytes.len() as u64;
        journal.file.write_at(journal.len, bytes).await?;
        journal.len += written;
        if self.sync == SyncPolicy::Always {
            journal.file.sync().await?;
        }
        journal.durable = upto;
        Ok(())
    }

    /// A fresh generation of the journal holding only the live hints. The records queued
    /// for the old one are dropped only once the new one is in place, so a failed rewrite
    /// (a full disk) leaves them to be written to the old journal as before.
    async fn rewrite(&self) -> std::io::Result<()> {
        let mut journal = self.journal.lock().await;
        let generation = journal.generation + 1;
        let path = journal_path(&self.dir, generation);
        let (bytes, records, queued) = snapshot(&self.pending.lock().expect("hints lock"));
        let len = bytes.len() as u64;
        self.env.write_file_durably(&path, bytes).await?;
        let file = self.env.open_file(&path).await?;
        {
            let mut pending = self.pending.lock().expect("hints lock");
            pending.unwritten.drain(..queued);
            pending.dead_bytes = 0;
        }
        let old = std::mem::replace(
            &mut *journal,
            Journal {
                file,
                path,
                generation,
                len,
                durable: records,
            },
        );
        self.env.remove_file(&old.path).await?;
        tracing::debug!(generation, bytes = len, "hint journal rewritten");
        Ok(())
    }
}

/// Every live hint as records, ready to be a new generation of the journal, with the
/// number of the last record it covers and how many queued bytes it makes unnecessary.
fn snapshot(pending: &Pending) -> (Vec<u8>, u64, usize) {
    let mut bytes = Vec::new();
    for ((target, key), hint) in &pending.hints {
        bytes.extend(encode(&add_record(target, key, hint)));
    }
    (bytes, pending.records, pending.unwritten.len())
}

impl Pending {
    /// Adds or merges a hint; returns the number of its journal record, or `None` when
    /// the result would not fit under `limit` bytes.
    fn insert(
        &mut self,
        target: &NodeId,
        key: &Bytes,
        state: &Versions,
        now_ms: u64,
        limit: u64,
    ) -> Option<u64> {
        let at = (target.clone(), key.clone());
        let mut hint = match self.hints.get(&at) {
            Some(old) => {
                let mut merged = old.clone();
                merged.state.merge(state);
                merged.created_ms = old.created_ms.min(now_ms);
                merged
            }
            None => Hint {
                id: 0,
                state: state.clone(),
                created_ms: now_ms,
                bytes: 0,
            },
        };
        hint.id = self.next_id;
        let record = encode(&add_record(target, key, &hint));
        hint.bytes = record.len() as u64;
        let replaced = self.hints.get(&at).map_or(0, |old| old.bytes);
        if self.live_bytes - replaced + hint.bytes > limit {
            return None;
        }
        self.next_id += 1;
        self.place(at, hint);
        Some(self.queue(record))
    }

    /// Puts `hint` in place of whatever the pair held, keeping the byte and key counts.
    fn place(&mut self, at: (NodeId, Bytes), hint: Hint) {
        let replaced = match self.hints.get(&at) {
            Some(old) => old.bytes,
            None => {
                *self.keys.entry(at.1.clone()).or_default() += 1;
                0
            }
        };
        self.live_bytes = self.live_bytes - replaced + hint.bytes;
        self.dead_bytes += replaced;
        self.next_id = self.next_id.max(hint.id + 1);
        self.hints.insert(at, hint);
    }

    /// Removes the hint (only if its id is `id`, when given); true when it did.
    fn remove(&mut self, target: &NodeId, key: &Bytes, id: Option<u64>) -> bool {
        let at = (target.clone(), key.clone());
        let Some(hint) = self.hints.get(&at) else {
            return false;
        };
        if id.is_some_and(|id| id != hint.id) {
            return false;
        }
        let record = encode(&Record::Remove {
            id: hint.id,
            target: target.clone(),
            key: key.clone(),
        });
        let bytes = hint.bytes;
        self.hints.remove(&at);
        self.live_bytes -= bytes;
        self.dead_bytes += bytes + record.len() as u64;
        if let Some(count) = self.keys.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.keys.remove(key);
            }
        }
        self.queue(record);
        true
    }

    fn queue(&mut self, record: Vec<u8>) -> u64 {
        self.unwritten.extend(record);
        self.records += 1;
        self.records
    }
}

fn add_record(target: &NodeId, key: &Bytes, hint: &Hint) -> Record {
    Record::Add {
        id: hint.id,
        target: target.clone(),
        key: key.clone(),
        state: hint.state.clone(),
        created_ms: hint.created_ms,
    }
}

fn encode(record: &Record) -> Vec<u8> {
    let body = rmp_serde::to_vec(record).expect("a hint record always serializes");
    let mut bytes = Vec::with_capacity(8 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Applies the journal's records to `pending`; returns how many were read and how many
/// bytes after the last good one were ignored (a torn tail or damage).
fn replay(mut bytes: &[u8], pending: &mut Pending) -> (u64, usize) {
    let mut records = 0;
    while bytes.len() >= 8 {
        let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(body) = bytes.get(8..8 + length) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(record) = rmp_serde::from_slice::<Record>(body) else {
            break;
        };
        apply(record, 8 + length as u64, pending);
        records += 1;
        bytes = &bytes[8 + length..];
    }
    if !bytes.is_empty() {
        tracing::warn!(
            bytes = bytes.len(),
            "hint journal ends in a torn or damaged record"
        );
    }
    (records, bytes.len())
}

/// Applies one journal record of `bytes` bytes (header included) to `pending`.
fn apply(record: Record, bytes: u64, pending: &mut Pending) {
    match record {
        Record::Add {
            id,
            target,
            key,
            state,
            created_ms,
        } => {
            let hint = Hint {
                id,
                state,
                created_ms,
                bytes,
            };
            pending.place((target, key), hint);
        }
        Record::Remove { id, target, key } => {
            pending.remove(&target, &key, Some(id));
        }
    }
    pending.unwritten.clear();
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("hints-{generation:010}.log"))
}

/// The journal generations in `dir`, oldest first, and the temporary files a crash in
/// the middle of a rewrite may have left.
async fn journal_files<E: Env>(
    env: &E,
    dir: &Path,
) -> std::io::Result<(Vec<(u64, PathBuf)>, Vec<PathBuf>)> {
    let (mut files, mut leftovers) = (Vec::new(), Vec::new());
    for path in env.list_dir(dir).await? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".tmp") {
            leftovers.push(path);
            continue;
        }
        let generation = name
            .strip_prefix("hints-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(generation) = generation {
            files.push((generation, path));
        }
    }
    files.sort();
    Ok((files, leftovers))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::env::TokioEnv;
    use crate::versions::VersionVector;

    fn config(dir: &Path) -> NodeConfig {
        let members = [(NodeId::from("n1"), "127.0.0.1:0".to_owned())].into();
        NodeConfig::for_member("n1", &members, dir)
    }

    fn state(value: &str) -> Versions {
        let mut state = Versions::new();
        let actor = crate::versions::Actor::new(NodeId::from("n1"), 1);
        state.write(
            &VersionVector::new(),
            Some(Bytes::from(value.to_owned())),
            &actor,
        );
        state
    }

    fn key(text: &str) -> Bytes {
        Bytes::from(text.to_owned())
    }

    #[tokio::test]
    async fn hints_survive_a_restart_and_delivered_ones_stay_gone() -> anyhow::Result<()> {
        // Goal: the journal is the truth after a restart: pending hints come back with
        // their state, delivered ones do not.
        let dir = tempfile::tempdir()?;
        let (n2, n3) = (NodeId::from("n2"), NodeId::from("n3"));
        let store = HintStore::open(TokioEnv, &config(dir.path())).await?;
        store.add(&n2, &key("a"), &state("1"), u64::MAX).await?;
        store.add(&n2, &key("b"), &state("2"), u64::MAX).await?;
        store.add(&n3, &key("a"), &state("3"), u64::MAX).await?;
        let (delivered, hint) = store.for_target(&n2, 10).remove(0);
        store.delivered(&n2, &delivered, hint.id);
        store.maintain().await?;
        drop(store);

        let store = HintStore::open(TokioEnv, &config(dir.path())).await?;
        assert_eq!(store.pending_by_target(), vec![(n2.clone(), 1), (n3, 1)]);
        let left = store.for_target(&n2, 10);
        assert_eq!(left[0].0, key("b"));
        assert_eq!(left[0].1.state, state("2"));
        assert!(store.holds_key(b"a") && store.holds_key(b"b"));
        Ok(())
    }

    #[tokio::test]
    async fn a_second_hint_for_a_key_merges_and_a_stale_delivery_keeps_it() -> anyhow::Result<()> {
        // Goal: one hint per target and key, holding both writes; delivering the first
        // version must not delete the merged one (its id changed).
        let dir = tempfile::tempdir()?;
        let n2 = NodeId::from("n2");
        let store = HintStore::open(TokioEnv, &config(dir.path())).await?;
        store.add(&n2, &key("a"), &state("1"), u64::MAX).await?;
        let first = store.for_target(&n2, 10).remove(0).1;
        let other = {
            let mut other = Versions::new();
            let actor = crate::versions::Actor::new(NodeId::from("n3"), 1);
            other.write(&VersionVector::new(), Some(Bytes::from("2")), &actor);
            other
        };
        store.add(&n2, &key("a"), &other, u64::MAX).await?;
        store.delivered(&n2, &key("a"), first.id);

        let merged = store.for_target(&n2, 10);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].1.state.values().len(), 2);
        assert_eq!(merged[0].1.created_ms, first.created_ms);
        Ok(())
    }

    #[tokio::test]
    async fn hints_over_the_limit_or_past_the_window_are_dropped_and_counted() -> anyhow::Result<()>
    {
        // Goal: hint storage is bounded in bytes and in age, and each drop is counted.
        let dir = tempfile::tempdir()?;
        let n2 = NodeId::from("n2");
        let mut settings = config(dir.path());
        settings.hint_storage_bytes = 300;
        settings.hint_window = Duration::from_millis(20);
        let store = HintStore::open(TokioEnv, &settings).await?;
        store.add(&n2, &key("a"), &state("small"), u64::MAX).await?;
        let big = state(&"x".repeat(400));
        assert!(matches!(
            store.add(&n2, &key("b"), &big, u64::MAX).await,
            Err(HintError::Full { .. })
        ));
        assert_eq!(store.dropped(), 1);

        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            store.for_target(&n2, 10).is_empty(),
            "an expired hint is never offered"
        );
        assert_eq!(store.expire(), 1);
        assert_eq!(store.dropped(), 2);
        assert!(store.pending_by_target().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn a_torn_journal_tail_costs_only_the_torn_record() -> anyhow::Result<()> {
        // Goal: a crash in the middle of an append leaves the hints before it intact.
        let dir = tempfile::tempdir()?;
        let n2 = NodeId::from("n2");
        let store = HintStore::open(TokioEnv, &config(dir.path())).await?;
        store.add(&n2, &key("a"), &state("1"), u64::MAX).await?;
        store.add(&n2, &key("b"), &state("2"), u64::MAX).await?;
        drop(store);

        let hints_dir = dir.path().join(HINTS_DIR);
        let journal = std::fs::read_dir(&hints_dir)?
            .next()
            .expect("one journal")?
            .path();
        let bytes = std::fs::read(&journal)?;
        std::fs::write(&journal, &bytes[..bytes.len() - 3])?;

        let store = HintStore::open(TokioEnv, &config(dir.path())).await?;
        let left: Vec<Bytes> = store
            .for_target(&n2, 10)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![key("a")]);
        Ok(())
    }
}
