//! What the log store keeps in memory: where each key's latest record is, and the
//! segments with their live bytes.
//!
//! The index holds only locations, never values, so memory grows with the number of keys
//! and not with their size: per key, the key's bytes plus a 24-byte [`Location`] and the
//! hash table's own overhead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Index shards: enough that two cores rarely wait on one lock.
const INDEX_SHARDS: usize = 64;

/// Where a key's latest record lies. 32-bit segment ids and offsets keep it at 24 bytes:
/// segments stay well below 4 GiB (config caps their size) and ids grow by one per roll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// The store-wide write number of the record: the higher one wins at recovery.
    pub sequence: u64,
    pub segment: u32,
    pub offset: u32,
    /// The whole record, header included.
    pub length: u32,
}

type Shard = Mutex<HashMap<Box<[u8]>, Location>>;

/// Key → location, sharded by key hash. A `HashMap` is fine here: it is only ever used
/// for point lookups, never iterated, so its order reaches nothing.
pub(crate) struct Index {
    shards: Box<[Shard]>,
}

impl Index {
    pub fn new() -> Self {
        let shards = (0..INDEX_SHARDS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        Index { shards }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash % INDEX_SHARDS as u64) as usize]
    }

    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Location> {
        self.shard(hash)
            .lock()
            .expect("index lock")
            .get(key)
            .copied()
    }

    /// Points the key at `location`; returns what it pointed at before.
    pub fn insert(&self, hash: u64, key: &[u8], location: Location) -> Option<Location> {
        let mut shard = self.shard(hash).lock().expect("index lock");
        match shard.get_mut(key) {
            Some(entry) => Some(std::mem::replace(entry, location)),
            None => {
                shard.insert(key.into(), location);
                None
            }
        }
    }

    /// Recovery's rule: the record with the higher sequence wins. Returns `None` when the
    /// key already has one at least as new, else what it pointed at before.
    pub fn insert_if_newer(
        &self,
        hash: u64,
        key: &[u8],
        location: Location,
    ) -> Option<Option<Location>> {
        let mut shard = self.shard(hash).lock().expect("index lock");
        match shard.get_mut(key) {
            Some(entry) if entry.sequence >= location.sequence => None,
            Some(entry) => Some(Some(std::mem::replace(entry, location))),
            None => {
                shard.insert(key.into(), location);
                Some(None)
            }
        }
    }

    /// Moves the key to `to` only if it still points at `from` (compaction's move must
    /// not undo a write that happened while it copied).
    pub fn replace_if(&self, hash: u64, key: &[u8], from: Location, to: Location) -> bool {
        let mut shard = self.shard(hash).lock().expect("index lock");
        match shard.get_mut(key) {
            Some(entry) if *entry == from => {
                *entry = to;
                true
            }
            _ => false,
        }
    }

    /// Every key, sorted: the hash map's own order never leaves this function.
    pub fn keys(&self) -> Vec<bytes::Bytes> {
        let mut keys: Vec<bytes::Bytes> = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("index lock");
            keys.extend(shard.keys().map(|key| bytes::Bytes::copy_from_slice(key)));
        }
        keys.sort();
        keys
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().expect("index lock").len())
            .sum()
    }
}

/// One segment file.
pub(crate) struct Segment<F> {
    pub id: u32,
    pub path: PathBuf,
    pub file: F,
    /// Bytes of records in the file (for the active segment, where the next write goes).
    pub size: AtomicU64,
    /// Bytes of the records the index points at; the rest of `size` is dead.
    pub live: AtomicU64,
}

impl<F> Segment<F> {
    pub fn new(id: u32, path: PathBuf, file: F, size: u64) -> Self {
        Segment {
            id,
            path,
            file,
            size: AtomicU64::new(size),
            live: AtomicU64::new(0),
        }
    }

    pub fn dead(&self) -> u64 {
        let size = self.size.load(Ordering::Relaxed);
        size.saturating_sub(self.live.load(Ordering::Relaxed))
    }
}

pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("segment-{id:010}.log"))
}

/// The id in a segment file's name, or `None` for any other file.
pub(crate) fn segment_id(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Every segment by id (ordered, so scans and compaction walk them in one order), the
/// active one's id, and the next id to hand out.
pub(crate) struct SegmentTable<F> {
    segments: RwLock<BTreeMap<u32, Arc<Segment<F>>>>,
    active: AtomicU32,
    next_id: AtomicU32,
}

impl<F> SegmentTable<F> {
    pub fn new(next_id: u32) -> Self {
        SegmentTable {
            segments: RwLock::new(BTreeMap::new()),
            active: AtomicU32::new(0),
            next_id: AtomicU32::new(next_id),
        }
    }

    pub fn get(&self, id: u32) -> Option<Arc<Segment<F>>> {
        self.segments
            .read()
            .expect("segments lock")
            .get(&id)
            .cloned()
    }

    pub fn insert(&self, segment: Arc<Segment<F>>) {
        let mut segments = self.segments.write().expect("segments lock");
        segments.insert(segment.id, segment);
    }

    pub fn remove(&self, id: u32) {
        self.segments.write().expect("segments lock").remove(&id);
    }

    pub fn all(&self) -> Vec<Arc<Segment<F>>> {
        let segments = self.segments.read().expect("segments lock");
        segments.values().cloned().collect()
    }

    /// Every segment but the active one, in id order.
    pub fn sealed(&self) -> Vec<Arc<Segment<F>>> {
        let active = self.active();
        let mut sealed = self.all();
        sealed.retain(|segment| segment.id != active);
        sealed
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    pub fn set_active(&self, id: u32) {
        self.active.store(id, Ordering::Release);
    }

    /// A fresh id, higher than every id handed out before. Ids run out after four
    /// billion rolls; an error then beats wrapping onto an existing file.
    pub fn allocate_id(&self) -> std::io::Result<u32> {
        let next = |id: u32| id.checked_add(1);
        self.next_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, next)
            .map_err(|_| std::io::Error::other("segment ids are exhausted"))
    }

    pub fn total_bytes(&self) -> u64 {
        let segments = self.segments.read().expect("segments lock");
        segments
            .values()
            .map(|segment| segment.size.load(Ordering::Relaxed))
            .sum()
    }

    /// Moves a record's bytes from the segment it left to the one it now lives in.
    pub fn account(&self, before: Option<Location>, after: Option<Location>) {
        let segments = self.segments.read().expect("segments lock");
        if let Some(before) = before {
            if let Some(segment) = segments.get(&before.segment) {
                segment
                    .live
                    .fetch_sub(u64::from(before.length), Ordering::Relaxed);
            }
        }
        if let Some(after) = after {
            if let Some(segment) = segments.get(&after.segment) {
                segment
                    .live
                    .fetch_add(u64::from(after.length), Ordering::Relaxed);
            }
        }
    }
}
