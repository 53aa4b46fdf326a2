//! The guarantees, checked over a run's history.
//!
//! Every checker treats a write that failed with an unknown outcome as possibly applied:
//! it may supersede what it covered, and its value may appear. A write refused before
//! anything was written (unavailable) is never applied. A value is *covered* by a write
//! whose context came from a read that returned it: that write may legitimately replace
//! it. Values are unique per write, so a value names one write.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::history::{FinalRead, Op, ReplicaState};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub key: String,
    pub ops: Vec<usize>,
    pub detail: String,
}

pub struct CheckInput<'a> {
    pub history: &'a [Op],
    pub final_reads: &'a [FinalRead],
    pub replicas: &'a [ReplicaState],
    /// Each key's home replicas, as the ring places it.
    pub homes: &'a BTreeMap<String, Vec<String>>,
    /// R + W > N with strict quorums: reads after a write must not show what it replaced.
    pub strict: bool,
    pub panics: usize,
}

pub fn check(input: &CheckInput) -> Vec<Violation> {
    let index = Index::new(input.history);
    let finals = final_values(input.final_reads);
    let mut violations = Vec::new();
    violations.extend(no_panics(input.panics));
    violations.extend(made_progress(input.history));
    violations.extend(final_reads_answered(input.final_reads));
    violations.extend(acknowledged_writes_survive(&index, &finals));
    violations.extend(covered_values_never_return(&index, &finals, input.strict));
    // Checked whatever the levels: with R + W <= N these are the stale reads such a
    // configuration is expected to show, and reporting them proves the checkers see them.
    violations.extend(reads_see_earlier_writes(&index));
    violations.extend(reads_never_go_backwards(&index));
    violations.extend(replicas_converge(input.replicas, input.homes));
    violations
}

/// The history grouped for the checkers: per key, and who covers each value.
struct Index<'a> {
    by_key: BTreeMap<&'a str, Vec<&'a Op>>,
    /// value → writes (possibly applied) whose context covered it.
    covered_by: BTreeMap<&'a str, Vec<&'a Op>>,
}

impl<'a> Index<'a> {
    fn new(history: &'a [Op]) -> Self {
        let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        let mut covered_by: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in history {
            by_key.entry(&op.key).or_default().push(op);
            if op.possibly_applied() {
                for value in &op.covers {
                    covered_by.entry(value).or_default().push(op);
                }
            }
        }
        Index { by_key, covered_by }
    }

    /// Whether some write that started before `before` may have replaced `value`.
    fn covered_before(&self, value: &str, before: Duration) -> bool {
        let writers = self
            .covered_by
            .get(value)
            .map(Vec::as_slice)
            .unwrap_or_default();
        writers.iter().any(|op| op.start < before)
    }

    fn covered(&self, value: &str) -> bool {
        self.covered_by.contains_key(value)
    }
}

fn final_values(reads: &[FinalRead]) -> BTreeMap<&str, BTreeSet<&str>> {
    // Only keys with at least one answered final read: a key no node could read is
    // reported by `final-read`, not mistaken here for one whose writes were lost.
    let mut finals: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for read in reads {
        if let Ok(values) = &read.values {
            let entry = finals.entry(&read.key).or_default();
            entry.extend(values.iter().map(String::as_str));
        }
    }
    finals
}

fn no_panics(panics: usize) -> Option<Violation> {
    (panics > 0).then(|| Violation {
        checker: "no-panic",
        key: String::new(),
        ops: Vec::new(),
        detail: format!("{panics} panics in node code"),
    })
}

/// A run in which no write was acknowledged checked nothing worth having: every other
/// checker passes vacuously on it. Faults are spread out, so some writes always get in.
fn made_progress(history: &[Op]) -> Option<Violation> {
    let acknowledged = history.iter().any(|op| op.acknowledged());
    (!acknowledged).then(|| Violation {
        checker: "progress",
        key: String::new(),
        ops: Vec::new(),
        detail: format!("none of {} operations acknowledged a write", history.len()),
    })
}

fn final_reads_answered(reads: &[FinalRead]) -> Vec<Violation> {
    let failed = reads.iter().filter_map(|read| {
        let error = read.values.as_ref().err()?;
        Some(Violation {
            checker: "final-read",
            key: read.key.clone(),
            ops: Vec::new(),
            detail: format!(
                "read at all through {} failed after heal: {error}",
                read.node
            ),
        })
    });
    failed.collect()
}

/// Every acknowledged put is in the final state, or was covered by a later write.
fn acknowledged_writes_survive(
    index: &Index,
    finals: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in &index.by_key {
        let Some(present) = finals.get(key) else {
            continue;
        };
        for op in ops.iter().filter(|op| op.acknowledged()) {
            let Some(value) = op.written_value() else {
                continue;
            };
            if !present.contains(value) && !index.covered(value) {
                violations.push(Violation {
                    checker: "lost-write",
                    key: key.to_string(),
                    ops: vec![op.id],
                    detail: format!("acknowledged {value} is gone and nothing replaced it"),
                });
            }
        }
    }
    violations
}

/// A value covered by an acknowledged write (a delete or an overwrite) never comes back:
/// not in the final state, and under strict quorums not in reads that began after.
fn covered_values_never_return(
    index: &Index,
    finals: &BTreeMap<&str, BTreeSet<&str>>,
    strict: bool,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in &index.by_key {
        let present = finals.get(key);
        for writer in ops.iter().filter(|op| op.acknowledged()) {
            for value in &writer.covers {
                if present.is_some_and(|p| p.contains(value.as_str())) {
                    violations.push(resurrected(key, writer, None, value));
                }
                if !strict {
                    continue;
                }
                let later_reads = ops.iter().filter(|op| op.start > writer.end);
                for read in later_reads {
                    let Some(values) = read.read_values() else {
                        continue;
                    };
                    if values.contains(value) {
                        violations.push(resurrected(key, writer, Some(read), value));
                    }
                }
            }
        }
    }
    violations
}

fn resurrected(key: &str, writer: &Op, read: Option<&Op>, value: &str) -> Violation {
    let (ops, seen) = match read {
        Some(read) => (vec![writer.id, read.id], format!("op {}", read.id)),
        None => (vec![writer.id], "the final state".to_owned()),
    };
    Violation {
        checker: "no-resurrection",
        key: key.to_owned(),
        ops,
        detail: format!(
            "{value} was replaced by op {} yet {seen} returned it",
            writer.id
        ),
    }
}

/// A strict-quorum read sees every write acknowledged before it began (or what replaced it).
fn reads_see_earlier_writes(index: &Index) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in &index.by_key {
        let acknowledged: Vec<&&Op> = ops.iter().filter(|op| op.acknowledged()).collect();
        for read in ops.iter() {
            let Some(values) = read.read_values() else {
                continue;
            };
            for write in acknowledged.iter().filter(|w| w.end < read.start) {
                let Some(value) = write.written_value() else {
                    continue;
                };
                let seen = values.iter().any(|v| v == value);
                if !seen && !index.covered_before(value, read.end) {
                    violations.push(Violation {
                        checker: "stale-read",
                        key: key.to_string(),
                        ops: vec![write.id, read.id],
                        detail: format!(
                            "op {} missed {value}, acknowledged by op {} before it began",
                            read.id, write.id
                        ),
                    });
                }
            }
        }
    }
    violations
}

/// One client's successive strict-quorum reads of a key never lose a value, unless a
/// write that may have replaced it began before the later read ended.
fn reads_never_go_backwards(index: &Index) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, ops) in &index.by_key {
        let mut last: BTreeMap<usize, &Op> = BTreeMap::new();
        for read in ops.iter().filter(|op| op.read_values().is_some()) {
            if let Some(previous) = last.get(&read.client) {
                let now: &[String] = read.read_values().unwrap_or_default();
                for value in previous.read_values().unwrap_or_default() {
                    if !now.contains(value) && !index.covered_before(value, read.end) {
                        violations.push(Violation {
                            checker: "monotonic-read",
                            key: key.to_string(),
                            ops: vec![previous.id, read.id],
                            detail: format!(
                                "op {} saw {value}, the same client's later op {} did not",
                                previous.id, read.id
                            ),
                        });
                    }
                }
            }
            last.insert(read.client, read);
        }
    }
    violations
}

/// After heal, every home replica of a key holds the same state.
fn replicas_converge(
    replicas: &[ReplicaState],
    homes: &BTreeMap<String, Vec<String>>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, nodes) in homes {
        let states: Vec<&ReplicaState> = replicas
            .iter()
            .filter(|state| state.key == *key && nodes.contains(&state.node))
            .collect();
        // A purged tombstone and one still waiting for its purge both read as deleted and
        // merge to the same visible state, so they agree; anything else must be equal.
        let deleted = |state: &ReplicaState| state.siblings.iter().all(|(_, v)| v.is_none());
        let differ = states.windows(2).any(|pair| {
            let both_deleted = deleted(pair[0]) && deleted(pair[1]);
            let equal = pair[0].siblings == pair[1].siblings && pair[0].context == pair[1].context;
            !equal && !both_deleted
        });
        if differ || states.len() != nodes.len() {
            let summary: Vec<String> = states
                .iter()
                .map(|s| format!("{}: {:?}", s.node, s.siblings))
                .collect();
            violations.push(Violation {
                checker: "convergence",
                key: key.clone(),
                ops: Vec::new(),
                detail: format!("home replicas differ after heal: {}", summary.join("; ")),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, Outcome};
    use quorumkv_client::Consistency;

    fn op(id: usize, kind: OpKind, span: (u64, u64), outcome: Outcome, covers: &[&str]) -> Op {
        Op {
            id,
            client: id % 2,
            key: "k".into(),
            kind,
            level: Consistency::Quorum,
            start: Duration::from_millis(span.0),
            end: Duration::from_millis(span.1),
            outcome,
            covers: covers.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn put(id: usize, value: &str, span: (u64, u64), covers: &[&str]) -> Op {
        let kind = OpKind::Put {
            value: value.into(),
        };
        op(id, kind, span, Outcome::Written, covers)
    }

    fn read(id: usize, values: &[&str], span: (u64, u64)) -> Op {
        let values = values.iter().map(|v| v.to_string()).collect();
        op(id, OpKind::Get, span, Outcome::Read { values }, &[])
    }

    fn run(history: &[Op], finals: &[&str]) -> Vec<&'static str> {
        let final_reads = vec![FinalRead {
            node: "n1".into(),
            key: "k".into(),
            values: Ok(finals.iter().map(|v| v.to_string()).collect()),
        }];
        let homes = BTreeMap::new();
        let input = CheckInput {
            history,
            final_reads: &final_reads,
            replicas: &[],
            homes: &homes,
            strict: true,
            panics: 0,
        };
        check(&input).into_iter().map(|v| v.checker).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        // Goal: read-modify-write cycles that see each other raise nothing.
        let history = [
            put(0, "a", (0, 10), &[]),
            read(1, &["a"], (20, 30)),
            put(2, "b", (40, 50), &["a"]),
            read(3, &["b"], (60, 70)),
        ];
        assert!(run(&history, &["b"]).is_empty());
    }

    #[test]
    fn a_run_that_acknowledged_nothing_is_reported() {
        // Goal: a history without one acknowledged write fails instead of passing vacuously.
        let history = [read(0, &[], (0, 10))];
        assert_eq!(run(&history, &[]), vec!["progress"]);
    }

    #[test]
    fn a_missing_acknowledged_write_is_reported_lost() {
        // Goal: an acknowledged value absent at the end with nothing covering it is lost.
        let history = [put(0, "a", (0, 10), &[])];
        assert_eq!(run(&history, &[]), vec!["lost-write"]);
    }

    #[test]
    fn a_stale_quorum_read_is_reported() {
        // Goal: a read beginning after an acknowledged write that misses it is stale.
        let history = [put(0, "a", (0, 10), &[]), read(1, &[], (20, 30))];
        assert_eq!(run(&history, &["a"]), vec!["stale-read"]);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_miss_it() {
        // Goal: only writes acknowledged before the read began are required.
        let history = [put(0, "a", (0, 25), &[]), read(1, &[], (20, 30))];
        assert!(run(&history, &["a"]).is_empty());
    }

    #[test]
    fn a_deleted_value_that_comes_back_is_reported() {
        // Goal: a value covered by an acknowledged delete must not reappear.
        let delete = op(2, OpKind::Delete, (20, 30), Outcome::Written, &["a"]);
        let history = [put(0, "a", (0, 10), &[]), read(1, &["a"], (12, 15)), delete];
        assert_eq!(run(&history, &["a"]), vec!["no-resurrection"]);
    }

    #[test]
    fn an_indeterminate_write_may_replace_what_it_covered() {
        // Goal: a timed-out overwrite may have applied, so the old value may be gone.
        let kind = OpKind::Put { value: "b".into() };
        let timeout = Outcome::Indeterminate { kind: "timeout" };
        let history = [
            put(0, "a", (0, 10), &[]),
            read(1, &["a"], (12, 15)),
            op(2, kind, (20, 30), timeout, &["a"]),
        ];
        assert!(run(&history, &["b"]).is_empty());
    }

    #[test]
    fn a_client_whose_reads_go_backwards_is_reported() {
        // Goal: the same client losing a value between two reads, with no writer, fails.
        let mut second = read(3, &[], (40, 50));
        second.client = 1;
        let mut first = read(1, &["a"], (20, 30));
        first.client = 1;
        let history = [put(0, "a", (0, 25), &[]), first, second];
        let found = run(&history, &["a"]);
        assert!(found.contains(&"monotonic-read"), "{found:?}");
    }

    #[test]
    fn replicas_that_differ_after_heal_are_reported() {
        // Goal: two home replicas with different siblings fail convergence.
        let state = |node: &str, value: &str| ReplicaState {
            node: node.into(),
            key: "k".into(),
            siblings: vec![("n1.1:1".into(), Some(value.into()))],
            context: "c".into(),
        };
        let replicas = [state("n1", "a"), state("n2", "b")];
        let homes = BTreeMap::from([("k".to_string(), vec!["n1".into(), "n2".into()])]);
        assert_eq!(replicas_converge(&replicas, &homes).len(), 1);
        assert!(
            replicas_converge(&replicas[..1], &homes).len() == 1,
            "a missing replica"
        );
    }
}
