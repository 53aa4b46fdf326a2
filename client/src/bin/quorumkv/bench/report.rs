//! What a run measured, and how it is printed: a few lines for a person, or one JSON
//! object for a script (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are kept in microseconds, from 1 µs to 100 s, to three significant digits.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 100_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// One task's (or, merged, the whole run's) tally.
pub struct Tally {
    pub reads: Histogram<u64>,
    pub writes: Histogram<u64>,
    /// Failed operations by kind; their latencies are not in the histograms.
    pub errors: BTreeMap<String, u64>,
    /// Reads that succeeded but found no value (the record was never loaded).
    pub misses: u64,
}

impl Tally {
    pub fn new() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("the bounds are valid")
        };
        Tally {
            reads: histogram(),
            writes: histogram(),
            errors: BTreeMap::new(),
            misses: 0,
        }
    }

    pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(LOWEST_US));
    }

    pub fn fail(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, so adding cannot fail.
        self.reads.add(&other.reads).expect("same bounds");
        self.writes.add(&other.writes).expect("same bounds");
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.misses += other.misses;
    }
}

/// The settings a run was made with, repeated in its result.
#[derive(Debug, Serialize)]
pub struct RunSettings {
    pub target: String,
    pub workload: super::Workload,
    pub records: u64,
    pub value_bytes: usize,
    pub distribution: super::KeyDistribution,
    pub concurrency: usize,
    pub read_consistency: String,
    pub write_consistency: String,
    pub redis_wait: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>, elapsed: Duration) -> Option<Self> {
        let ops = histogram.len();
        (ops > 0).then(|| Latency {
            ops,
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p95_us: histogram.value_at_quantile(0.95),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        })
    }
}

/// The result of one run, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub settings: RunSettings,
    pub elapsed_secs: f64,
    /// Operations that succeeded (reads and writes).
    pub ops: u64,
    pub ops_per_sec: f64,
    pub read: Option<Latency>,
    pub write: Option<Latency>,
    pub errors: BTreeMap<String, u64>,
    pub misses: u64,
}

impl Report {
    pub fn new(settings: RunSettings, tally: &Tally, elapsed: Duration) -> Self {
        let ops = tally.reads.len() + tally.writes.len();
        Report {
            settings,
            elapsed_secs: elapsed.as_secs_f64(),
            ops,
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            read: Latency::of(&tally.reads, elapsed),
            write: Latency::of(&tally.writes, elapsed),
            errors: tally.errors.clone(),
            misses: tally.misses,
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A few aligned lines: settings, totals, one latency line per operation, errors.
    pub fn text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let wait = s
            .redis_wait
            .map(|n| format!(", WAIT {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} workload {}: {} records of {} B, {}, {} tasks, read {} write {}{wait}",
            s.target,
            format!("{:?}", s.workload).to_lowercase(),
            s.records,
            s.value_bytes,
            format!("{:?}", s.distribution).to_lowercase(),
            s.concurrency,
            s.read_consistency,
            s.write_consistency,
        );
        let _ = writeln!(
            out,
            "{} ops in {:.2} s: {:.0} ops/s",
            self.ops, self.elapsed_secs, self.ops_per_sec
        );
        let _ = writeln!(
            out,
            "{:<6}{:>10}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}  (latency in µs)",
            "op", "ops", "ops/s", "p50", "p95", "p99", "p99.9", "max"
        );
        for (name, latency) in [("read", &self.read), ("write", &self.write)] {
            if let Some(l) = latency {
                let _ = writeln!(
                    out,
                    "{name:<6}{:>10}{:>10.0}{:>9}{:>9}{:>9}{:>9}{:>9}",
                    l.ops, l.ops_per_sec, l.p50_us, l.p95_us, l.p99_us, l.p999_us, l.max_us
                );
            }
        }
        if self.misses > 0 {
            let _ = writeln!(out, "reads that found nothing: {}", self.misses);
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let _ = writeln!(out, "errors: {}", self.error_total());
            for (kind, count) in &self.errors {
                let _ = writeln!(out, "  {kind}: {count}");
            }
        }
        out
    }
}
