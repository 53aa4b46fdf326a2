//! The simulator's promises about itself: a sweep with every fault passes at quorum, a seed
//! replays exactly, and the checkers catch violations planted on purpose.
//!
//! Each run goes through the `quorumkv-sim` binary, one process per seed, exactly as a user
//! replays a failure (see `sweep` in main.rs for why a process per seed).

use std::process::{Command, Output};

/// Seeds in the CI sweep; each is a full run of 500 operations under faults.
const SWEEP_SEEDS: &str = "1..101";
/// Faults that never take a node's data away, for the planted repair check below.
const NETWORK_FAULTS: &str = "partition,loss,latency";
/// Seeds in which a planted violation must show up at least once.
const PLANTED_SEEDS: &str = "1..11";

fn sim(args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(env!("CARGO_BIN_EXE_quorumkv-sim"))
        .args(args)
        .output()?;
    Ok(output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `trace=` field of a run's last line.
fn trace(output: &Output) -> anyhow::Result<String> {
    let text = stdout(output);
    let last = text.lines().last().unwrap_or_default();
    let trace = last
        .split_whitespace()
        .find_map(|w| w.strip_prefix("trace="));
    trace
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no trace in: {text}"))
}

#[test]
fn a_sweep_with_every_default_fault_passes_at_quorum() -> anyhow::Result<()> {
    // Goal: the guarantees hold for quorum reads and writes under partitions, crashes that
    // lose unsynced data, message loss, latency spikes and failing disks, over a hundred
    // seeds, with the log store syncing every acknowledged write.
    let output = sim(&["sweep", "--seeds", SWEEP_SEEDS])?;
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("100 passed, 0 failed"), "{text}");
    Ok(())
}

#[test]
fn crashes_are_caught_losing_acknowledged_writes_that_were_never_synced() -> anyhow::Result<()> {
    // Goal: the lost-write checker catches real losses. With `sync = never` a write is
    // acknowledged before it reaches the disk; when every home replica of a key crashes
    // before the page cache is flushed, the write is gone, and the sweep must say so.
    // Hints and anti-entropy are off: they copy a crashed node's data back from its peers
    // within a second, so that crashes of every replica in between become rare (40 seeds
    // with them on lost nothing).
    let args = ["sweep", "--seeds", "1..21", "--faults", "crash"];
    let planted = ["--sync", "never", "--no-hints", "--no-anti-entropy"];
    let output = sim(&[&args[..], &planted].concat())?;
    let text = stdout(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("lost-write"), "{text}");
    Ok(())
}

#[test]
fn a_full_disk_costs_availability_and_never_an_acknowledged_write() -> anyhow::Result<()> {
    // Goal: a disk that fills up turns writes into errors. Some seeds end with a node full
    // for good and so fail a liveness check (convergence, final-read): that is the proof
    // the disk really filled. No safety checker may ever fire.
    let args = [
        "sweep",
        "--seeds",
        "1..21",
        "--faults",
        "full,crash,partition",
    ];
    let output = sim(&args)?;
    let text = stdout(&output);
    for checker in [
        "lost-write",
        "stale-read",
        "monotonic-read",
        "no-resurrection",
        "no-panic",
    ] {
        assert!(!text.contains(checker), "{checker} fired:\n{text}");
    }
    assert!(
        text.contains("(convergence,final-read)"),
        "the disk never filled: {text}"
    );
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_does_not() -> anyhow::Result<()> {
    // Goal: a run is a function of its seed, event for event.
    let first = trace(&sim(&["run", "--seed", "42"])?)?;
    let again = trace(&sim(&["run", "--seed", "42"])?)?;
    let other = trace(&sim(&["run", "--seed", "43"])?)?;
    assert_eq!(first, again);
    assert_ne!(first, other);
    Ok(())
}

#[test]
fn reads_and_writes_at_one_under_partitions_are_caught_reading_stale_data() -> anyhow::Result<()> {
    // Goal: the stale-read checker is not vacuous: with R + W <= N and partitions, some
    // seed shows reads that missed acknowledged writes, and the sweep fails naming it.
    let args = [
        "sweep",
        "--seeds",
        PLANTED_SEEDS,
        "--read",
        "one",
        "--write",
        "one",
    ];
    let output = sim(&[&args[..], &["--faults", "partition"]].concat())?;
    let text = stdout(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("stale-read"), "{text}");
    assert!(
        text.contains("quorumkv-sim run --seed"),
        "no replay line: {text}"
    );
    Ok(())
}

#[test]
fn a_cluster_without_any_repair_fails_the_convergence_check() -> anyhow::Result<()> {
    // Goal: the convergence checker is not vacuous: with read repair, hints and
    // anti-entropy all off, replicas missed by writes stay behind.
    let args = [
        "sweep",
        "--seeds",
        PLANTED_SEEDS,
        "--no-read-repair",
        "--no-hints",
        "--no-anti-entropy",
    ];
    let output = sim(&[&args[..], &["--faults", NETWORK_FAULTS]].concat())?;
    let text = stdout(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("convergence"), "{text}");
    Ok(())
}

#[test]
fn a_failing_run_names_the_checker_the_operations_and_the_replay_command() -> anyhow::Result<()> {
    // Goal: one failing seed explains itself: checker, key, operations, replay line.
    let args = [
        "run",
        "--seed",
        "4",
        "--read",
        "one",
        "--write",
        "one",
        "--faults",
        "partition",
    ];
    let output = sim(&args)?;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("violation stale-read: key k")),
        "{text}"
    );
    assert!(text.contains("replay: quorumkv-sim run --seed 4"), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .starts_with("seed=4 ops="),
        "{text}"
    );
    Ok(())
}
