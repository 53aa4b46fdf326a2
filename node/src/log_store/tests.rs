//! The log store on the real disk (a temporary directory), through `TokioEnv`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::env::{DataFile, Env, TokioEnv};
use crate::versions::Actor;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Small segments, so a few hundred writes roll several times.
const TEST_SEGMENT_BYTES: u64 = 64 * 1024;

fn options(sync: SyncPolicy) -> LogOptions {
    LogOptions {
        sync,
        sync_interval: Duration::from_millis(5),
        segment_bytes: TEST_SEGMENT_BYTES,
        compact_dead_ratio: 0.5,
    }
}

async fn open(dir: &Path) -> Result<(LogStore<TokioEnv>, Recovery), StorageError> {
    LogStore::open(TokioEnv, dir, options(SyncPolicy::Always)).await
}

fn actor() -> Actor {
    Actor::new("n1".into(), 1)
}

/// A write that replaces whatever the key holds, as a client with a fresh context would.
fn put(value: impl Into<Bytes>) -> Change<'static> {
    let value = value.into();
    Box::new(move |state: &mut Versions| {
        let context = state.context();
        state.write(&context, Some(value), &actor());
        Ok(())
    })
}

async fn value_of(store: &impl Storage, key: &str) -> Result<Option<Bytes>, StorageError> {
    let state = store.get(key.as_bytes()).await?;
    Ok(state.and_then(|state| state.values().first().map(|value| (*value).clone())))
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

fn segment_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.sort();
    Ok(files)
}

fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for file in segment_files(dir)? {
        total += std::fs::metadata(file)?.len();
    }
    Ok(total)
}

/// The last segment file that holds anything.
fn last_written_segment(dir: &Path) -> io::Result<PathBuf> {
    let mut files = segment_files(dir)?;
    files.retain(|file| std::fs::metadata(file).is_ok_and(|m| m.len() > 0));
    files
        .pop()
        .ok_or_else(|| io::Error::other("no segment holds data"))
}

#[tokio::test]
async fn a_written_key_reads_back_and_an_overwrite_replaces_it() -> TestResult {
    // Goal: the basic contract: absent, written, overwritten, each read back as stored.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    assert_eq!(value_of(&store, "a").await?, None);

    store.update(b"a", put("one")).await?;
    assert_eq!(value_of(&store, "a").await?, Some(Bytes::from("one")));
    store.update(b"a", put("two")).await?;
    assert_eq!(value_of(&store, "a").await?, Some(Bytes::from("two")));
    assert_eq!(store.key_count(), 1);

    let refused = store.update(b"b", Box::new(|_| Err("no".into()))).await;
    assert!(matches!(refused, Err(StorageError::Refused(_))));
    assert_eq!(store.get(b"b").await?, None);
    Ok(())
}

#[tokio::test]
async fn reopening_recovers_every_key_across_many_segments() -> TestResult {
    // Goal: what was acknowledged is found again after a restart, at its latest value,
    // whichever segment it ended up in.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    for round in 0..3 {
        for i in 0..500 {
            store
                .update(key(i).as_bytes(), put(format!("{i}-{round}")))
                .await?;
        }
    }
    let segments_before = store.segment_ids().len();
    assert!(segments_before > 3, "writes should span segments");
    drop(store);

    let (store, recovery) = open(dir.path()).await?;
    assert_eq!(recovery.keys, 500);
    assert_eq!(recovery.corrupt_records, 0);
    assert_eq!(recovery.torn_bytes, 0);
    for i in 0..500 {
        let expected = Bytes::from(format!("{i}-2"));
        assert_eq!(value_of(&store, &key(i)).await?, Some(expected));
    }
    Ok(())
}

#[tokio::test]
async fn a_torn_tail_is_cut_on_recovery_and_earlier_records_survive() -> TestResult {
    // Goal: a crash in the middle of the last write leaves a partial record or garbage at
    // the end of the last segment; recovery cuts it off and keeps everything before it.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    for i in 0..10 {
        store
            .update(key(i).as_bytes(), put(format!("v{i}")))
            .await?;
    }
    drop(store);

    // The last record loses its last three bytes.
    let last = last_written_segment(dir.path())?;
    let size = std::fs::metadata(&last)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)?
        .set_len(size - 3)?;
    let (store, recovery) = open(dir.path()).await?;
    assert!(recovery.torn_bytes > 0);
    assert_eq!(
        std::fs::metadata(&last)?.len() + recovery.torn_bytes,
        size - 3
    );
    assert_eq!(value_of(&store, &key(9)).await?, None);
    for i in 0..9 {
        assert_eq!(
            value_of(&store, &key(i)).await?,
            Some(format!("v{i}").into())
        );
    }
    store.update(key(9).as_bytes(), put("again")).await?;
    drop(store);

    // Garbage after the last good record.
    let last = last_written_segment(dir.path())?;
    let mut bytes = std::fs::read(&last)?;
    bytes.extend_from_slice(b"\x00\x00\x00\x10garbage that is no record");
    std::fs::write(&last, &bytes)?;
    let (store, recovery) = open(dir.path()).await?;
    assert!(recovery.torn_bytes > 0);
    assert_eq!(recovery.corrupt_records, 0);
    assert_eq!(value_of(&store, &key(9)).await?, Some("again".into()));
    assert_eq!(value_of(&store, &key(0)).await?, Some("v0".into()));
    Ok(())
}

#[tokio::test]
async fn a_flipped_byte_in_a_middle_record_is_reported_and_never_served() -> TestResult {
    // Goal: damage inside the log is detected by the checksum; the damaged record is
    // skipped (not served, not fatal) and the records around it are served.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    for i in 0..10 {
        store
            .update(key(i).as_bytes(), put(format!("value-{i}")))
            .await?;
    }
    drop(store);

    let last = last_written_segment(dir.path())?;
    let mut bytes = std::fs::read(&last)?;
    let position = bytes
        .windows(7)
        .position(|window| window == b"value-4")
        .ok_or("value-4 not found in the segment")?;
    bytes[position] ^= 0x20;
    std::fs::write(&last, &bytes)?;

    let (store, recovery) = open(dir.path()).await?;
    assert_eq!(recovery.corrupt_records, 1);
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(value_of(&store, &key(4)).await?, None);
    for i in (0..10).filter(|i| *i != 4) {
        let expected = Bytes::from(format!("value-{i}"));
        assert_eq!(value_of(&store, &key(i)).await?, Some(expected));
    }
    Ok(())
}

/// 200 keys of 1 KiB values, each written `rounds` times; the last round's value is
/// `"{round}"` followed by padding.
async fn overwrite(store: &impl Storage, rounds: usize) -> Result<(), StorageError> {
    for round in 0..rounds {
        for i in 0..200 {
            let mut value = format!("{round}:").into_bytes();
            value.resize(1024, b'.');
            store.update(key(i).as_bytes(), put(value)).await?;
        }
    }
    Ok(())
}

async fn assert_last_round(store: &impl Storage, round: usize) -> TestResult {
    for i in 0..200 {
        let value = value_of(store, &key(i)).await?.ok_or("key lost")?;
        assert!(
            value.starts_with(format!("{round}:").as_bytes()),
            "{}",
            key(i)
        );
    }
    Ok(())
}

#[tokio::test]
async fn compaction_after_ten_overwrites_leaves_under_twice_the_live_data() -> TestResult {
    // Goal: compaction gives back the space of overwritten records, and every key still
    // reads back its latest value, before and after a restart.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    overwrite(&store, 10).await?;
    let before = dir_bytes(dir.path())?;

    let stats = store.compact().await?;
    assert!(stats.segments_removed > 0);
    let live: u64 = store
        .shared
        .table
        .all()
        .iter()
        .map(|s| s.live.load(Ordering::Relaxed))
        .sum();
    let after = dir_bytes(dir.path())?;
    assert!(
        after < 2 * live,
        "{after} bytes on disk for {live} live (was {before})"
    );
    assert_last_round(&store, 9).await?;
    drop(store);

    let (store, recovery) = open(dir.path()).await?;
    assert_eq!(recovery.keys, 200);
    assert_last_round(&store, 9).await?;
    assert!(dir_bytes(dir.path())? < 2 * live);
    Ok(())
}

#[tokio::test]
async fn the_compactor_reclaims_space_by_itself_once_the_dead_ratio_passes() -> TestResult {
    // Goal: without anyone asking, overwriting keys over and over does not grow the
    // directory without bound: each roll prompts a look at the dead ratio.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    overwrite(&store, 12).await?;
    let written: u64 = 12 * 200 * 1024;

    // The compactor runs on its own task; give it a moment to catch up.
    let mut on_disk = dir_bytes(dir.path())?;
    for _ in 0..100 {
        if on_disk < written / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        on_disk = dir_bytes(dir.path())?;
    }
    assert!(
        on_disk < written / 3,
        "{on_disk} bytes on disk after {written} written"
    );
    assert_last_round(&store, 11).await?;
    Ok(())
}

#[tokio::test]
async fn a_crash_in_the_middle_of_compaction_loses_nothing() -> TestResult {
    // Goal: whatever step a compaction reached, recovery finds every key at its latest
    // value. Simulated by putting the deleted segments back after a compaction (copies
    // written, old ones not yet deleted), once with the copies intact and once with the
    // last copy torn.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    overwrite(&store, 4).await?;
    store.close().await?;

    let old: Vec<(PathBuf, Vec<u8>)> = segment_files(dir.path())?
        .into_iter()
        .map(|path| std::fs::read(&path).map(|bytes| (path, bytes)))
        .collect::<io::Result<_>>()?;
    let (store, _) = open(dir.path()).await?;
    store.compact().await?;
    // A write after the compaction must outrank every copy.
    store.update(key(7).as_bytes(), put("newest")).await?;
    store.close().await?;
    let outputs = segment_files(dir.path())?;
    for (path, bytes) in &old {
        std::fs::write(path, bytes)?;
    }

    let (store, recovery) = open(dir.path()).await?;
    assert_eq!(recovery.corrupt_records, 0);
    assert_eq!(value_of(&store, &key(7)).await?, Some("newest".into()));
    assert_eq!(
        value_of(&store, &key(8))
            .await?
            .map(|v| v.starts_with(b"3:")),
        Some(true)
    );
    drop(store);

    // Now also tear the compaction output in the middle of a record.
    let output = outputs
        .iter()
        .find(|path| !old.iter().any(|(old, _)| old == *path))
        .ok_or("compaction wrote no new segment")?;
    let size = std::fs::metadata(output)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(output)?
        .set_len(size / 2 + 1)?;
    let (store, _) = open(dir.path()).await?;
    for i in (0..200).filter(|i| *i != 7) {
        let value = value_of(&store, &key(i)).await?.ok_or("key lost")?;
        assert!(value.starts_with(b"3:"), "{}", key(i));
    }
    assert_eq!(value_of(&store, &key(7)).await?, Some("newest".into()));
    Ok(())
}

/// Adds one to a counter kept as the key's value.
fn increment() -> Change<'static> {
    Box::new(|state: &mut Versions| {
        let current = match state.values().first() {
            Some(value) => std::str::from_utf8(value)
                .map_err(|e| e.to_string())?
                .parse::<u64>()
                .map_err(|e| e.to_string())?,
            None => 0,
        };
        let context = state.context();
        state.write(&context, Some((current + 1).to_string().into()), &actor());
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_to_one_key_from_many_tasks_are_all_applied() -> TestResult {
    // Goal: read, change and append of one key are one step: 64 tasks incrementing one
    // counter 20 times each lose no increment.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                store.update(b"counter", increment()).await?;
            }
            Ok::<_, StorageError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(value_of(&*store, "counter").await?, Some("1280".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_fsyncs_under_sync_always() -> TestResult {
    // Goal: group commit: 64 writers waiting on fsyncs make each fsync cover many
    // records, instead of one fsync per write.
    let dir = tempfile::tempdir()?;
    let (store, _) = open(dir.path()).await?;
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for writer in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let key = format!("{writer}-{i}");
                store.update(key.as_bytes(), put("v")).await?;
            }
            Ok::<_, StorageError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let counters = store.counters();
    assert_eq!(counters.records, 64 * 20);
    assert!(counters.fsyncs * 4 < counters.records, "{counters:?}");
    Ok(())
}

#[tokio::test]
async fn every_sync_policy_stores_and_recovers_writes() -> TestResult {
    // Goal: always, interval and never all acknowledge writes that read back, and a
    // closed store recovers them all.
    for sync in [SyncPolicy::Always, SyncPolicy::Interval, SyncPolicy::Never] {
        let dir = tempfile::tempdir()?;
        let (store, _) = LogStore::open(TokioEnv, dir.path(), options(sync)).await?;
        for i in 0..300 {
            store
                .update(key(i).as_bytes(), put(format!("{sync:?}")))
                .await?;
        }
        assert_eq!(
            value_of(&store, &key(0)).await?,
            Some(format!("{sync:?}").into())
        );
        // Long enough for the periodic fsync to have run under `interval`.
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.close().await?;

        let (store, recovery) = LogStore::open(TokioEnv, dir.path(), options(sync)).await?;
        assert_eq!(recovery.keys, 300, "{sync:?}");
        assert_eq!(
            value_of(&store, &key(299)).await?,
            Some(format!("{sync:?}").into())
        );
    }
    Ok(())
}

/// The real disk, except that writes (and fsyncs) fail while `failing` is set, or only
/// fsyncs while `failing_sync` is: a full or a broken disk.
#[derive(Clone, Default)]
struct FailingEnv {
    failing: Arc<AtomicBool>,
    failing_sync: Arc<AtomicBool>,
}

struct FailingFile {
    inner: crate::env::TokioFile,
    failing: Arc<AtomicBool>,
    failing_sync: Arc<AtomicBool>,
}

impl FailingFile {
    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("no space left on device (simulated)"));
        }
        Ok(())
    }
}

impl DataFile for FailingFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(offset, len).await
    }

    async fn write_at(&self, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
        // Half the bytes reach the file before the failure, as on a disk that fills up.
        if self.failing.load(Ordering::SeqCst) {
            let half = bytes[..bytes.len() / 2].to_vec();
            self.inner.write_at(offset, half).await?;
        }
        self.check()?;
        self.inner.write_at(offset, bytes).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.check()?;
        if self.failing_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("input/output error (simulated)"));
        }
        self.inner.sync().await
    }

    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len).await
    }
}

impl Env for FailingEnv {
    type Stream = <TokioEnv as Env>::Stream;
    type Listener = <TokioEnv as Env>::Listener;
    type File = FailingFile;

    async fn bind(&self, address: &str) -> io::Result<Self::Listener> {
        TokioEnv.bind(address).await
    }

    async fn connect(&self, address: &str) -> io::Result<Self::Stream> {
        TokioEnv.connect(address).await
    }

    fn now(&self) -> tokio::time::Instant {
        TokioEnv.now()
    }

    fn wall_clock_millis(&self) -> u64 {
        TokioEnv.wall_clock_millis()
    }

    fn rng_seed(&self) -> u64 {
        0
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        TokioEnv.read_file(path).await
    }

    async fn write_file_durably(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        TokioEnv.write_file_durably(path, bytes).await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        TokioEnv.create_dir_all(path).await
    }

    async fn open_file(&self, path: &Path) -> io::Result<FailingFile> {
        let inner = TokioEnv.open_file(path).await?;
        Ok(FailingFile {
            inner,
            failing: self.failing.clone(),
            failing_sync: self.failing_sync.clone(),
        })
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        TokioEnv.list_dir(path).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        TokioEnv.remove_file(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        TokioEnv.sync_dir(path).await
    }
}

#[tokio::test]
async fn a_failed_write_returns_an_error_and_the_key_keeps_its_previous_value() -> TestResult {
    // Goal: a disk that refuses writes or fsyncs fails those writes only: the caller gets
    // an I/O error, reads keep serving the previous value, the store takes writes again
    // once the disk does, and no failed write comes back after a restart.
    let dir = tempfile::tempdir()?;
    let env = FailingEnv::default();
    let (store, _) = LogStore::open(env.clone(), dir.path(), options(SyncPolicy::Always)).await?;
    store.update(b"k", put("before")).await?;

    env.failing.store(true, Ordering::SeqCst);
    let failed = store.update(b"k", put("lost")).await;
    assert!(matches!(failed, Err(StorageError::Io(_))), "{failed:?}");
    let failed = store.update(b"other", put("lost")).await;
    assert!(matches!(failed, Err(StorageError::Io(_))), "{failed:?}");
    assert_eq!(value_of(&store, "k").await?, Some("before".into()));
    assert_eq!(store.get(b"other").await?, None);

    env.failing.store(false, Ordering::SeqCst);
    store.update(b"k2", put("after")).await?;
    assert_eq!(value_of(&store, "k2").await?, Some("after".into()));

    // The write reaches the file but the fsync fails: the caller must hear of it too.
    env.failing_sync.store(true, Ordering::SeqCst);
    let failed = store.update(b"k", put("unsynced")).await;
    assert!(matches!(failed, Err(StorageError::Io(_))), "{failed:?}");
    assert_eq!(value_of(&store, "k").await?, Some("before".into()));
    env.failing_sync.store(false, Ordering::SeqCst);
    store.update(b"k3", put("last")).await?;
    drop(store);

    let (store, recovery) = open(dir.path()).await?;
    assert_eq!(recovery.corrupt_records, 0);
    assert_eq!(value_of(&store, "k").await?, Some("before".into()));
    assert_eq!(store.get(b"other").await?, None);
    assert_eq!(value_of(&store, "k2").await?, Some("after".into()));
    assert_eq!(value_of(&store, "k3").await?, Some("last".into()));
    Ok(())
}
