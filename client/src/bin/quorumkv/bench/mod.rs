//! `quorumkv bench`: a YCSB-style load generator for quorumkv and the systems it is
//! compared with.
//!
//! Modules: [`workload`] draws each operation and its key; [`target`] turns a read or a
//! write into a request to quorumkv, Redis, etcd or [`echo`] (the loopback floor);
//! [`report`] keeps latency histograms and prints the result.
//!
//! A run: open one session per client task, check with one read that the target answers,
//! then let every task issue one operation after another (closed loop: a task waits for
//! its reply before the next request) until the operation budget or the duration runs
//! out. Each task keeps its own histograms, merged at the end, so the hot loop shares
//! nothing but two counters.

mod echo;
mod report;
mod target;
mod workload;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::args::{BenchArgs, GlobalArgs};
use crate::exit;
pub use report::Report;
use report::{RunSettings, Tally};
pub use target::TargetSpec;
use target::{Session, Settings};
pub use workload::{KeyDistribution, Workload};
use workload::{OpChooser, OpKind};

/// How often the progress line is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// With an operation count, a bar; with only a duration, a counter.
const BAR_TEMPLATE: &str = "{wide_bar} {pos}/{len} ops ({per_sec}, {eta} left)";
const SPINNER_TEMPLATE: &str = "{spinner} {pos} ops ({per_sec}) {elapsed}";

/// A run with neither `--ops` nor `--duration` lasts this long (a `load` stops earlier,
/// once every record is inserted).
pub const DEFAULT_DURATION_SECS: f64 = 10.0;

/// What every task shares: when to stop, and the counters the progress line reads.
struct Shared {
    /// At most this many operations (under `load`, never more than the records).
    limit: Option<u64>,
    deadline: Option<Instant>,
    /// Operations claimed so far; under `load`, also the next record to insert.
    claimed: AtomicU64,
    /// Operations finished, successful or not.
    done: AtomicU64,
    stop: AtomicBool,
    value: Bytes,
    prefix: String,
}

impl Shared {
    /// Claims the next operation's number, or None once the run is over.
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return None;
        }
        let number = self.claimed.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(limit) if number >= limit => None,
            _ => Some(number),
        }
    }
}

pub async fn run(global: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<u8> {
    let report = measure(global, args).await?;
    if args.json {
        crate::output::print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::output::print(&report.text())?;
    }
    Ok(if report.error_total() == 0 {
        exit::OK
    } else {
        exit::OTHER
    })
}

/// Connects, runs the workload, and returns what it measured.
async fn measure(global: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<Report> {
    let settings = Settings {
        read: args.read_level(),
        write: args.write_level(),
        redis_wait: args.redis_wait,
        request_timeout: Duration::from_millis(global.timeout_ms),
    };
    let config = crate::client_config(global);
    let mut sessions = target::connect(
        &args.target,
        config,
        &settings,
        args.concurrency,
        args.value_bytes,
    )
    .await?;

    // One read before the clock starts: it fails fast on a target that is not there,
    // and opens the connections a lazy client would otherwise open inside the run.
    let probe = workload::key(&args.key_prefix, 0);
    for session in &mut sessions {
        if let Err(kind) = session.read(&probe).await {
            bail!("{} does not answer a read: {kind}", args.target);
        }
    }

    let (tally, elapsed) = drive(args, sessions).await?;
    Ok(Report::new(run_settings(args, &settings), &tally, elapsed))
}

/// Runs one task per session until the budget is spent; returns the merged tally and
/// how long the run took.
async fn drive(args: &BenchArgs, sessions: Vec<Session>) -> anyhow::Result<(Tally, Duration)> {
    let started = Instant::now();
    let load_limit = (args.workload == Workload::Load).then_some(args.records);
    let limit = match (args.ops, load_limit) {
        (Some(ops), Some(records)) => Some(ops.min(records)),
        (ops, records) => ops.or(records),
    };
    // Without --ops or --duration a load runs until every record is in, anything else
    // for the default duration.
    let secs = match (args.duration, limit) {
        (None, None) => Some(DEFAULT_DURATION_SECS),
        (duration, _) => duration,
    };
    let shared = Arc::new(Shared {
        limit,
        deadline: secs.map(|secs| started + Duration::from_secs_f64(secs)),
        claimed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        value: Bytes::from(vec![b'v'; args.value_bytes]),
        prefix: args.key_prefix.clone(),
    });

    let progress = tokio::spawn(show_progress(shared.clone()));
    let mut tasks = Vec::with_capacity(sessions.len());
    for (index, session) in sessions.into_iter().enumerate() {
        let chooser = OpChooser::new(args.workload, args.records, args.distribution);
        let rng = StdRng::seed_from_u64(args.seed.wrapping_add(index as u64));
        tasks.push(tokio::spawn(client_task(
            session,
            chooser,
            rng,
            shared.clone(),
        )));
    }

    let mut tally = Tally::new();
    for task in tasks {
        let task_tally = task
            .await
            .map_err(|error| anyhow!("a client task failed: {error}"))?;
        tally.merge(&task_tally);
    }
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    progress.await?;
    Ok((tally, elapsed))
}

/// One closed-loop client: an operation, its reply, the next operation.
async fn client_task(
    mut session: Session,
    chooser: OpChooser,
    mut rng: StdRng,
    shared: Arc<Shared>,
) -> Tally {
    let mut tally = Tally::new();
    while let Some(number) = shared.claim() {
        let (kind, record) = chooser.next(&mut rng, number);
        let key = workload::key(&shared.prefix, record);
        let started = Instant::now();
        match kind {
            OpKind::Read => match session.read(&key).await {
                Ok(found) => {
                    Tally::record(&mut tally.reads, started.elapsed());
                    tally.misses += u64::from(!found);
                }
                Err(failure) => tally.fail(failure),
            },
            OpKind::Write => match session.write(&key, &shared.value).await {
                Ok(()) => Tally::record(&mut tally.writes, started.elapsed()),
                Err(failure) => tally.fail(failure),
            },
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// A live line on standard error for a person watching; nothing when it is not a
/// terminal, where redraws would only fill a log.
async fn show_progress(shared: Arc<Shared>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let (bar, template) = match shared.limit {
        Some(total) => (ProgressBar::new(total), BAR_TEMPLATE),
        None => (ProgressBar::new_spinner(), SPINNER_TEMPLATE),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("template is valid"));
    while !shared.stop.load(Ordering::Relaxed) {
        bar.set_position(shared.done.load(Ordering::Relaxed));
        tokio::time::sleep(PROGRESS_TICK).await;
    }
    bar.finish_and_clear();
}

fn run_settings(args: &BenchArgs, settings: &Settings) -> RunSettings {
    RunSettings {
        target: args.target.to_string(),
        workload: args.workload,
        records: args.records,
        value_bytes: args.value_bytes,
        distribution: args.distribution,
        concurrency: args.concurrency,
        read_consistency: settings.read.to_string(),
        write_consistency: settings.write.to_string(),
        redis_wait: args.redis_wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    #[tokio::test]
    async fn an_echo_run_of_a_thousand_ops_reports_them_all_in_json() -> anyhow::Result<()> {
        // Goal: a run against the in-process floor does exactly the operations asked for,
        // splits them into reads and writes, and its JSON carries the fields scripts read.
        let argv = [
            "quorumkv", "bench", "--target", "echo", "--ops", "1000", "--json",
        ];
        let cli = Cli::try_parse_from(argv)?;
        let Command::Bench(args) = &cli.command else {
            panic!("parsed as another command")
        };
        let report = measure(&cli.global, args).await?;
        let json = serde_json::to_value(&report)?;

        assert_eq!(json["target"], "echo");
        assert_eq!(json["workload"], "a");
        assert_eq!(json["ops"], 1000);
        assert_eq!(json["errors"], serde_json::json!({}));
        let reads = json["read"]["ops"].as_u64().expect("reads were made");
        let writes = json["write"]["ops"].as_u64().expect("writes were made");
        assert_eq!(reads + writes, 1000);
        for side in ["read", "write"] {
            let latency = &json[side];
            let at = |field: &str| latency[field].as_u64().expect("a latency field");
            assert!(at("p50_us") <= at("p99_us") && at("p99_us") <= at("max_us"));
            assert!(latency["ops_per_sec"]
                .as_f64()
                .is_some_and(|rate| rate > 0.0));
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_load_inserts_each_record_once() -> anyhow::Result<()> {
        // Goal: `load` stops after `--records` inserts even when more ops are allowed.
        let argv = [
            "quorumkv",
            "bench",
            "--target",
            "echo",
            "--workload",
            "load",
            "--records",
            "300",
            "--ops",
            "5000",
        ];
        let cli = Cli::try_parse_from(argv)?;
        let Command::Bench(args) = &cli.command else {
            panic!("parsed as another command")
        };
        let report = measure(&cli.global, args).await?;
        assert_eq!(report.ops, 300);
        assert!(report.read.is_none());
        Ok(())
    }
}
