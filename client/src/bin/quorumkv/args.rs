//! The command line: global options, subcommands and how their values parse.
//!
//! Values that can be wrong (a consistency level, a context) are parsed here by clap
//! value parsers, so a typo is a usage error (exit 2) before any node is contacted.

use std::path::PathBuf;
use std::str::FromStr;

#[cfg(feature = "bench")]
use crate::bench::{KeyDistribution, TargetSpec, Workload};
use clap::{Args, Parser, Subcommand};
use quorumkv_client::protocol::DEFAULT_CLUSTER;
use quorumkv_client::{Consistency, Context, Error, WriteOptions};

/// The three nodes `scripts/cluster.sh` starts by default.
const DEFAULT_NODES: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Longer than a node's own replica timeout, so a slow quorum comes back as the node's
/// `timeout` error with its numbers rather than as a lost connection (see `ClientConfig`).
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Writes in flight during `import` and `verify`: enough to keep every node of a small
/// cluster busy over one multiplexed connection each.
const DEFAULT_CONCURRENCY: usize = 64;

/// `bench` defaults, YCSB-sized for a small machine: 100-byte values (as the comparison
/// in `scripts/bench.sh` uses), 50 client tasks, 10,000 records.
#[cfg(feature = "bench")]
const DEFAULT_RECORDS: u64 = 10_000;
#[cfg(feature = "bench")]
const DEFAULT_VALUE_BYTES: usize = 100;
#[cfg(feature = "bench")]
const DEFAULT_BENCH_CONCURRENCY: usize = 50;

/// Beyond the client connection's outgoing queue (1024 frames), more requests in flight
/// would only wait in that queue.
const MAX_CONCURRENCY: usize = 1024;

#[derive(Debug, Parser)]
#[command(
    name = "quorumkv",
    version,
    about = "Client for the quorumkv replicated key-value store"
)]
#[command(after_help = "Exit codes: 0 ok, 1 not found, 2 usage error, \
                        3 consistency level not met, 4 other error.")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Nodes to contact (host:port, comma-separated); any node serves any request
    #[arg(
        long,
        global = true,
        env = "QUORUMKV_NODES",
        value_delimiter = ',',
        default_value = DEFAULT_NODES
    )]
    pub nodes: Vec<String>,

    /// Cluster name; nodes refuse clients of another cluster
    #[arg(long, global = true, env = "QUORUMKV_CLUSTER", default_value = DEFAULT_CLUSTER)]
    pub cluster: String,

    /// How long to wait for each request's answer, in milliseconds
    #[arg(
        long,
        global = true,
        default_value_t = DEFAULT_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a key's value; concurrent versions (siblings) one per line
    Get(GetArgs),
    /// Store a value under a key
    Put(PutArgs),
    /// Delete a key (writes a tombstone)
    Delete(DeleteArgs),
    /// Show the cluster's members as one node sees them
    Status,
    /// Show where a key lives, or without a key the whole partition table
    Ring {
        /// The key to place
        key: Option<String>,
    },
    /// Store every record of a JSON, JSON Lines or CSV file under one of its fields
    Import(ImportArgs),
    /// Read back every record of a file and check it is stored as `import` wrote it
    Verify(VerifyArgs),
    /// Show one node's own copy of a key (siblings, tombstones, context), asking no other
    Inspect {
        /// The key to look at
        key: String,
        /// The node whose copy to show, by id (e.g. n2), as `status` names it
        #[arg(long)]
        node: String,
    },
    /// Make one node compact its storage now (copy live records, delete old segments);
    /// waits up to 10 minutes, or --timeout-ms if longer
    Compact {
        /// The node to compact, by id (e.g. n2), as `status` names it
        #[arg(long)]
        node: String,
    },
    /// Load-test quorumkv, Redis, etcd or the loopback floor with a YCSB-style workload
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key to read
    pub key: String,

    /// Read level: one, two, three, quorum, all, or a number of replicas
    #[arg(short = 'c', long = "consistency", value_name = "LEVEL",
          default_value_t = Consistency::Quorum, value_parser = parse_read_level)]
    pub consistency: Consistency,

    /// Print {"values": [...], "context": "..."}; a value is a JSON string when it is
    /// valid UTF-8, else an object {"base64": "..."} (standard alphabet, padded)
    #[arg(long)]
    pub json: bool,

    /// Also print the context (to pass to a later put or delete) on standard error
    #[arg(long)]
    pub show_context: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key to write
    pub key: String,

    /// The value; `-` reads it from standard input
    pub value: String,

    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key to delete
    pub key: String,

    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Write level: one, two, three, quorum, all, any, or a number of replicas
    #[arg(short = 'c', long = "consistency", value_name = "LEVEL",
          default_value_t = Consistency::Quorum, value_parser = parse_write_level)]
    pub consistency: Consistency,

    /// Context from an earlier get: replaces exactly the versions that get returned.
    /// Without it, put adds a concurrent version (sibling) and delete first reads the key
    /// at the same level and deletes what that read saw.
    #[arg(long, value_name = "CTX", value_parser = parse_context)]
    pub context: Option<Context>,

    /// Sloppy quorum: fallback nodes that take the write for a missing home replica (and
    /// keep it as a hint for it) count toward the level. Without it only home replicas do.
    #[arg(long)]
    pub sloppy: bool,
}

impl WriteArgs {
    pub fn options(&self) -> WriteOptions {
        WriteOptions {
            consistency: self.consistency,
            sloppy: self.sloppy,
        }
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Write level of every record: one, two, three, quorum, all, any, or a number
    #[arg(short = 'c', long = "consistency", value_name = "LEVEL",
          default_value_t = Consistency::Quorum, value_parser = parse_write_level)]
    pub consistency: Consistency,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Read level of every record: one, two, three, quorum, all, or a number
    #[arg(short = 'c', long = "consistency", value_name = "LEVEL",
          default_value_t = Consistency::Quorum, value_parser = parse_read_level)]
    pub consistency: Consistency,
}

/// The records `import` and `verify` work through, and how many at once.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A JSON array of objects, an object with one such array field, JSON Lines, or CSV
    /// with a header row; the format comes from the extension (.json, .jsonl, .ndjson,
    /// .csv), else from the content
    pub file: PathBuf,

    /// The field whose value is each record's key (numbers are used as written)
    #[arg(long, value_name = "FIELD")]
    pub key: String,

    /// Requests in flight at once
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY,
          value_parser = parse_concurrency)]
    pub concurrency: usize,
}

#[cfg(feature = "bench")]
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to load: quorumkv (the --nodes cluster), echo (an in-process loopback server
    /// that does no work: the floor), redis://HOST:PORT, or etcd://HOST:PORT (v3 JSON
    /// gateway)
    #[arg(long, default_value = "quorumkv", value_parser = clap::value_parser!(TargetSpec))]
    pub target: TargetSpec,

    /// load (insert every record), a (50% reads), b (95% reads), c (reads), w (writes)
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,

    /// Records in the key space
    #[arg(long, default_value_t = DEFAULT_RECORDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,

    /// Bytes in each value written
    #[arg(long, default_value_t = DEFAULT_VALUE_BYTES)]
    pub value_bytes: usize,

    /// How keys are chosen; zipfian (YCSB's, scrambled) makes a few keys hot
    #[arg(long, value_enum, default_value_t = KeyDistribution::Zipfian)]
    pub distribution: KeyDistribution,

    /// Client tasks, each waiting for its reply before sending the next request
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BENCH_CONCURRENCY,
          value_parser = parse_concurrency)]
    pub concurrency: usize,

    /// Stop after this many seconds (default 10, or when a load has inserted every record)
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<f64>,

    /// Stop after this many operations (with --duration, whichever comes first)
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,

    /// Level of reads and writes alike, unless one is given below
    #[arg(short = 'c', long = "consistency", value_name = "LEVEL",
          value_parser = parse_read_level)]
    pub consistency: Option<Consistency>,

    /// Read level (quorumkv); for etcd, `one` makes reads serializable, any other level
    /// linearizable [default: quorum]
    #[arg(long, value_name = "LEVEL", value_parser = parse_read_level)]
    pub read_consistency: Option<Consistency>,

    /// Write level (quorumkv) [default: quorum]
    #[arg(long, value_name = "LEVEL", value_parser = parse_write_level)]
    pub write_consistency: Option<Consistency>,

    /// Redis: send `WAIT N 0` with each write, so it returns once N replicas have it
    #[arg(long, value_name = "N")]
    pub redis_wait: Option<u32>,

    /// Keys are this prefix and a 12-digit record number
    #[arg(long, default_value = "user")]
    pub key_prefix: String,

    /// Seed of the key and operation choices (task i uses seed + i)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Print the result as one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[cfg(feature = "bench")]
impl BenchArgs {
    pub fn read_level(&self) -> Consistency {
        self.read_consistency
            .or(self.consistency)
            .unwrap_or(Consistency::Quorum)
    }

    pub fn write_level(&self) -> Consistency {
        self.write_consistency
            .or(self.consistency)
            .unwrap_or(Consistency::Quorum)
    }
}

/// Any level a write accepts.
fn parse_write_level(text: &str) -> Result<Consistency, String> {
    Consistency::from_str(text).map_err(|error| reason(&error))
}

/// `any` counts a stored hint as success, which means nothing for a read; refuse it here
/// rather than let the node refuse it after a round trip.
fn parse_read_level(text: &str) -> Result<Consistency, String> {
    match parse_write_level(text)? {
        Consistency::Any => Err("`any` applies to writes only".to_owned()),
        level => Ok(level),
    }
}

fn parse_context(text: &str) -> Result<Context, String> {
    Context::from_str(text).map_err(|error| reason(&error))
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    let count: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !(1..=MAX_CONCURRENCY).contains(&count) {
        return Err(format!("must be between 1 and {MAX_CONCURRENCY}"));
    }
    Ok(count)
}

#[cfg(feature = "bench")]
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("'{text}' is not a positive number of seconds")),
    }
}

/// The library's reason without its prefix: clap already says which value was invalid.
fn reason(error: &Error) -> String {
    match error {
        Error::InvalidConsistency { reason } | Error::Rejected { reason } => reason.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Goal: clap's own checks (duplicate flags, bad defaults) pass for every subcommand.
        Cli::command().debug_assert();
    }

    #[test]
    fn default_nodes_are_three_local_addresses() -> anyhow::Result<()> {
        // Goal: the comma-separated default splits into one address per node. Skipped
        // when the developer's shell sets QUORUMKV_NODES, which rightly overrides it.
        if std::env::var_os("QUORUMKV_NODES").is_some() {
            return Ok(());
        }
        let cli = Cli::try_parse_from(["quorumkv", "status"])?;
        assert_eq!(cli.global.nodes.len(), 3);
        assert_eq!(cli.global.nodes[0], "127.0.0.1:7101");
        Ok(())
    }

    #[test]
    fn global_options_are_accepted_after_the_subcommand() -> anyhow::Result<()> {
        // Goal: `quorumkv get k --nodes a,b` works as well as `quorumkv --nodes a,b get k`.
        let cli = Cli::try_parse_from(["quorumkv", "get", "k", "--nodes", "a:1,b:2"])?;
        assert_eq!(cli.global.nodes, ["a:1", "b:2"]);
        Ok(())
    }

    #[test]
    fn an_unknown_level_is_a_usage_error_that_names_the_choices() {
        // Goal: a typo in -c stops before any request, with exit code 2 and the choices.
        let error = Cli::try_parse_from(["quorumkv", "get", "k", "-c", "bogus"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("expected one, two"), "{error}");
    }

    #[test]
    fn any_is_refused_for_reads_but_accepted_for_writes() -> anyhow::Result<()> {
        // Goal: `any` only parses where a hint can count (writes).
        assert!(Cli::try_parse_from(["quorumkv", "get", "k", "-c", "any"]).is_err());
        let cli = Cli::try_parse_from(["quorumkv", "put", "k", "v", "-c", "any"])?;
        let Command::Put(put) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(put.write.consistency, Consistency::Any);
        assert!(!put.write.sloppy);
        Ok(())
    }

    #[test]
    fn a_malformed_context_is_a_usage_error() {
        // Goal: a context that is not base64 is refused before it reaches a node.
        let args = ["quorumkv", "delete", "k", "--context", "not base64!"];
        let error = Cli::try_parse_from(args).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn verify_refuses_any_because_it_reads() {
        // Goal: verify's level is a read level, unlike import's.
        let args = ["quorumkv", "verify", "f.json", "--key", "id", "-c", "any"];
        assert!(Cli::try_parse_from(args).is_err());
        let args = ["quorumkv", "import", "f.json", "--key", "id", "-c", "any"];
        assert!(Cli::try_parse_from(args).is_ok());
    }

    #[cfg(feature = "bench")]
    #[test]
    fn bench_levels_default_to_quorum_and_specific_flags_win_over_c() -> anyhow::Result<()> {
        // Goal: -c sets both levels, --read/--write-consistency override it one side each.
        let bench = |extra: &[&str]| -> anyhow::Result<BenchArgs> {
            let args = ["quorumkv", "bench"].iter().chain(extra).copied();
            match Cli::try_parse_from(args)?.command {
                Command::Bench(bench) => Ok(bench),
                _ => panic!("parsed as another command"),
            }
        };
        let plain = bench(&[])?;
        assert_eq!(plain.read_level(), Consistency::Quorum);
        assert_eq!(plain.write_level(), Consistency::Quorum);
        assert_eq!(plain.target, TargetSpec::Quorumkv);

        let mixed = bench(&[
            "-c",
            "one",
            "--write-consistency",
            "all",
            "--target",
            "echo",
        ])?;
        assert_eq!(mixed.read_level(), Consistency::One);
        assert_eq!(mixed.write_level(), Consistency::All);
        assert_eq!(mixed.target, TargetSpec::Echo);

        assert!(bench(&["--read-consistency", "any"]).is_err());
        assert!(bench(&["--duration", "0"]).is_err());
        assert!(bench(&["--target", "mysql://x:1"]).is_err());
        Ok(())
    }

    #[test]
    fn concurrency_must_be_positive_and_bounded() {
        // Goal: zero would never finish and a huge number only queues; both are refused.
        for bad in ["0", "100000", "many"] {
            let args = [
                "quorumkv",
                "import",
                "f.json",
                "--key",
                "id",
                "--concurrency",
                bad,
            ];
            assert!(Cli::try_parse_from(args).is_err(), "{bad}");
        }
    }
}
