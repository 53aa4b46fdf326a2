//! `quorumkv-sim`: run one seed, or sweep many, and report what the checkers found.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use quorumkv_client::Consistency;
use quorumkv_node::config::{StorageKind, SyncPolicy};
use quorumkv_sim::faults::FaultKind;
use quorumkv_sim::{run, Report, SimConfig};

#[derive(Parser)]
#[command(
    name = "quorumkv-sim",
    version,
    about = "Deterministic simulation of quorumkv"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed; print the settings, any violations, and a last line with the trace
    Run {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        options: Options,
    },
    /// Run every seed of a range A..B (B excluded); one line per failing seed
    Sweep {
        #[arg(long, value_name = "A..B", value_parser = parse_range)]
        seeds: (u64, u64),
        /// Seeds run at once, each in its own process [default: the number of cores]
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        options: Options,
    },
}

#[derive(Args, Clone)]
struct Options {
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// N
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Operations in all, over every client
    #[arg(long, default_value_t = 500)]
    ops: usize,
    /// Size of the key space; small, so that writers collide
    #[arg(long, default_value_t = 8)]
    keys: usize,
    #[arg(long, default_value = "quorum")]
    read: Consistency,
    #[arg(long, default_value = "quorum")]
    write: Consistency,
    #[arg(long)]
    sloppy: bool,
    /// Fault kinds, comma-separated: partition, crash, loss, latency, disk, full; `none`
    #[arg(long, default_value = "partition,crash,loss,latency,disk", value_parser = parse_faults)]
    faults: BTreeSet<FaultKind>,
    /// Turn read repair off (to watch the convergence checker fail)
    #[arg(long)]
    no_read_repair: bool,
    /// Turn hinted handoff off (anti-entropy must then repair alone)
    #[arg(long)]
    no_hints: bool,
    /// Turn anti-entropy off
    #[arg(long)]
    no_anti_entropy: bool,
    /// Where nodes keep data: log (durable) or memory (lost in every crash)
    #[arg(long, value_enum, default_value = "log")]
    storage: StorageKind,
    /// When the log fsyncs: always, interval or never (the last two can lose writes)
    #[arg(long, value_enum, default_value = "always")]
    sync: SyncPolicy,
}

impl Options {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: self.nodes,
            replicas: self.replicas,
            clients: self.clients.max(1),
            ops: self.ops,
            keys: self.keys.max(1),
            read: self.read,
            write: self.write,
            sloppy: self.sloppy,
            faults: self.faults.clone(),
            read_repair: !self.no_read_repair,
            hints: !self.no_hints,
            anti_entropy: !self.no_anti_entropy,
            storage: self.storage,
            sync: self.sync,
        }
    }

    /// The flags that reproduce these options, for the replay line.
    fn flags(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        let faults = if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join(",")
        };
        let mut flags = format!(
            "--nodes {} --replicas {} --clients {} --ops {} --keys {} --read {} --write {} \
             --faults {faults}",
            self.nodes, self.replicas, self.clients, self.ops, self.keys, self.read, self.write
        );
        if self.sloppy {
            flags.push_str(" --sloppy");
        }
        if self.no_read_repair {
            flags.push_str(" --no-read-repair");
        }
        if self.no_hints {
            flags.push_str(" --no-hints");
        }
        if self.no_anti_entropy {
            flags.push_str(" --no-anti-entropy");
        }
        if self.storage != StorageKind::Log {
            flags.push_str(" --storage memory");
        }
        if self.sync != SyncPolicy::Always {
            let name = format!("{:?}", self.sync).to_lowercase();
            flags.push_str(&format!(" --sync {name}"));
        }
        flags
    }
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text.split_once("..").ok_or("expected A..B, e.g. 1..200")?;
    let a: u64 = a.parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok((a, b))
}

fn parse_faults(text: &str) -> Result<BTreeSet<FaultKind>, String> {
    if text == "none" || text.is_empty() {
        return Ok(BTreeSet::new());
    }
    text.split(',').map(|kind| kind.trim().parse()).collect()
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUORUMKV_LOG")
        .unwrap_or_else(|_| "off".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { seed, options } => run_one(seed, &options),
        Command::Sweep {
            seeds,
            jobs,
            options,
        } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            sweep(seeds, &options, jobs.unwrap_or(cores))
        }
    }
}

fn run_one(seed: u64, options: &Options) -> ExitCode {
    println!("seed={seed} {}", options.flags());
    let started = Instant::now();
    let report = match run(&options.config(seed)) {
        Ok(report) => report,
        Err(error) => {
            println!("replay: {}", replay(seed, options));
            println!("seed={seed} error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    for fault in &report.faults {
        println!("fault at {:?}: {:?}", fault.at, fault.action);
    }
    for violation in &report.violations {
        println!(
            "violation {}: key {} ops {:?}: {}",
            violation.checker, violation.key, violation.ops, violation.detail
        );
        for id in &violation.ops {
            println!("  {}", report.history[*id]);
        }
    }
    println!(
        "simulated {:.1}s in {:.2}s wall, {} fault events",
        report.simulated.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        report.faults.len()
    );
    if !report.violations.is_empty() {
        println!("replay: {}", replay(seed, options));
    }
    println!("{}", summary(&report));
    exit(report.violations.is_empty())
}

/// Runs each seed in a fresh process of this same binary.
///
/// One process per seed is what makes a sweep's verdict replayable: tokio numbers tasks
/// from a process-wide counter, and the order in which a crashed host's tasks are dropped
/// follows those numbers, so a seed run after others in one process can diverge from the
/// same seed run alone. Every seed here is run exactly as its replay command runs it.
fn sweep((first, end): (u64, u64), options: &Options, jobs: usize) -> ExitCode {
    println!("seeds={first}..{end} {}", options.flags());
    let started = Instant::now();
    let (mut failed, mut ops) = (0, 0);
    let seeds: Vec<u64> = (first..end).collect();
    for batch in seeds.chunks(jobs.max(1)) {
        let children: Vec<_> = batch
            .iter()
            .map(|seed| (*seed, spawn_run(*seed, options)))
            .collect();
        for (seed, child) in children {
            let outcome = child.and_then(|child| child.wait_with_output());
            match outcome {
                Ok(output) => {
                    let text = String::from_utf8_lossy(&output.stdout);
                    let last = text.lines().last().unwrap_or_default().to_owned();
                    ops += field(&last, "ops").unwrap_or(0);
                    if !output.status.success() {
                        failed += 1;
                        let checkers = violated_checkers(&text);
                        println!("FAIL {last} ({checkers}): {}", replay(seed, options));
                    }
                }
                Err(error) => {
                    failed += 1;
                    println!("FAIL seed={seed} cannot run: {error}");
                }
            }
        }
    }
    let seeds = end - first;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} passed, {failed} failed ({seeds} seeds, {ops} ops, {wall:.1}s wall, {:.0} ops/s, \
         {:.1} seeds/min)",
        seeds - failed,
        ops as f64 / wall,
        seeds as f64 * 60.0 / wall
    );
    exit(failed == 0)
}

fn spawn_run(seed: u64, options: &Options) -> std::io::Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    let seed = seed.to_string();
    let mut command = std::process::Command::new(exe);
    command.args(["run", "--seed", &seed]);
    command.args(options.flags().split_whitespace());
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    command.spawn()
}

/// A number from a `name=value` field of a summary line.
fn field(line: &str, name: &str) -> Option<usize> {
    let prefix = format!("{name}=");
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))?;
    value.parse().ok()
}

fn violated_checkers(output: &str) -> String {
    let names: BTreeSet<&str> = output
        .lines()
        .filter_map(|line| line.strip_prefix("violation "))
        .filter_map(|rest| rest.split(':').next())
        .collect();
    if names.is_empty() {
        return "error".to_owned();
    }
    names.into_iter().collect::<Vec<_>>().join(",")
}

fn summary(report: &Report) -> String {
    format!(
        "seed={} ops={} acknowledged={} violations={} trace={:016x}",
        report.seed,
        report.ops,
        report.acknowledged,
        report.violations.len(),
        report.trace
    )
}

fn replay(seed: u64, options: &Options) -> String {
    format!("quorumkv-sim run --seed {seed} {}", options.flags())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
