//! Measures the log store: write throughput with 64 concurrent writers under
//! `sync = always` and `sync = never`, recovery time, and index memory per key.
//!
//! Run with `cargo run --release -p quorumkv-node --example log_store_bench [KEYS [WRITERS]]`
//! (KEYS, default 200000, is the number of keys recovery and memory are measured on;
//! WRITERS, default 64, the concurrent writers). It writes into a temporary directory
//! under `$TMPDIR`, so it measures that disk.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_node::config::SyncPolicy;
use quorumkv_node::env::Env;
use quorumkv_node::log_store::{LogOptions, LogStore};
use quorumkv_node::storage::{Change, Storage};
use quorumkv_node::versions::{Actor, Versions};
use quorumkv_node::TokioEnv;

/// Counts the bytes currently allocated, to weigh the index.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// As many writers as a busy node has updates in flight.
const DEFAULT_WRITERS: usize = 64;
/// Writes per run in the throughput runs: a few seconds under `sync = always`.
const THROUGHPUT_WRITES: usize = 100_000;
/// Runs per policy; the median is reported, as a shared machine's load comes and goes.
const RUNS: usize = 3;
/// A typical small value.
const VALUE_BYTES: usize = 100;

fn options(sync: SyncPolicy) -> LogOptions {
    LogOptions {
        sync,
        sync_interval: Duration::from_millis(10),
        segment_bytes: 64 * 1024 * 1024,
        compact_dead_ratio: 0.5,
    }
}

fn put(value: Bytes) -> Change<'static> {
    Box::new(move |state: &mut Versions| {
        let context = state.context();
        state.write(&context, Some(value), &Actor::new("n1".into(), 1));
        Ok(())
    })
}

/// Writes `count` distinct keys from `WRITERS` tasks; returns writes per second.
async fn write_keys(
    store: Arc<LogStore<TokioEnv>>,
    count: usize,
    writers: usize,
) -> anyhow::Result<f64> {
    let started = TokioEnv.now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
            for i in (writer..count).step_by(writers) {
                let key = format!("key-{i:010}");
                store.update(key.as_bytes(), put(value.clone())).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(count as f64 / TokioEnv.now().duration_since(started).as_secs_f64())
}

/// One run: writes per second, and records per fsync.
async fn throughput_once(sync: SyncPolicy, writers: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let (store, _) = LogStore::open(TokioEnv, dir.path(), options(sync)).await?;
    let store = Arc::new(store);
    let rate = write_keys(store.clone(), THROUGHPUT_WRITES, writers).await?;
    let counters = store.counters();
    Ok((
        rate,
        counters.records as f64 / counters.fsyncs.max(1) as f64,
    ))
}

/// The median of `RUNS` runs.
async fn throughput(sync: SyncPolicy, writers: usize) -> anyhow::Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(throughput_once(sync, writers).await?);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, per_fsync) = runs[RUNS / 2];
    let all: Vec<String> = runs.iter().map(|(rate, _)| format!("{rate:.0}")).collect();
    println!(
        "sync={sync:?}: median {rate:.0} writes/s of [{}], {per_fsync:.1} records per fsync \
         ({writers} writers, {VALUE_BYTES}-byte values)",
        all.join(", ")
    );
    Ok(rate)
}

async fn recovery(keys: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, _) = LogStore::open(TokioEnv, dir.path(), options(SyncPolicy::Never)).await?;
    let store = Arc::new(store);
    write_keys(store.clone(), keys, DEFAULT_WRITERS).await?;
    let disk = store.disk_bytes();
    Arc::into_inner(store)
        .ok_or_else(|| anyhow::anyhow!("a writer still holds the store"))?
        .close()
        .await?;

    let before = ALLOCATED.load(Ordering::Relaxed);
    let (store, report) = LogStore::open(TokioEnv, dir.path(), options(SyncPolicy::Never)).await?;
    let per_key = (ALLOCATED.load(Ordering::Relaxed) - before) as f64 / keys as f64;
    let elapsed = report.elapsed.as_secs_f64();
    println!(
        "recovery: {} keys, {} segments, {disk} bytes in {elapsed:.3} s \
         ({:.2} s per million keys)",
        report.keys,
        report.segments,
        elapsed * 1e6 / keys as f64
    );
    println!("memory: {per_key:.0} bytes per key (index and store, 12-byte keys)");
    drop(store);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let keys = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 200_000,
    };
    let writers = match std::env::args().nth(2) {
        Some(text) => text.parse()?,
        None => DEFAULT_WRITERS,
    };
    let always = throughput(SyncPolicy::Always, writers).await?;
    let never = throughput(SyncPolicy::Never, writers).await?;
    println!("never / always: {:.2}x", never / always);
    recovery(keys).await
}
