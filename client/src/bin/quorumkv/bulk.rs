//! What `import` and `verify` share: running one request per record with a bounded number
//! in flight, a progress bar, and counting failures by kind.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;

use futures::{stream, StreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quorumkv_client::Error;

use crate::exit;
use crate::records::{KeyProblem, Record};

const PROGRESS_TEMPLATE: &str = "{msg} {wide_bar} {pos}/{len} ({per_sec}, {eta} left)";

/// One record that could not be stored or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `Error::kind()`, or a key problem's kind.
    pub kind: &'static str,
    /// The level was not met; the same request may succeed once replicas are back.
    pub consistency: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            kind: error.kind(),
            consistency: error.is_consistency_failure(),
        }
    }
}

impl From<KeyProblem> for Failure {
    fn from(problem: KeyProblem) -> Self {
        Failure {
            kind: problem.kind(),
            consistency: false,
        }
    }
}

/// Failures counted by kind; printed in kind order so two runs compare line by line.
#[derive(Debug, Default)]
pub struct Failures {
    by_kind: BTreeMap<&'static str, usize>,
    any_other_than_consistency: bool,
}

impl Failures {
    pub fn add(&mut self, failure: Failure) {
        *self.by_kind.entry(failure.kind).or_default() += 1;
        self.any_other_than_consistency |= !failure.consistency;
    }

    pub fn total(&self) -> usize {
        self.by_kind.values().sum()
    }

    /// 0 without failures, 3 when every one was a consistency failure, else 4.
    pub fn exit_code(&self) -> u8 {
        if self.total() == 0 {
            exit::OK
        } else if self.any_other_than_consistency {
            exit::OTHER
        } else {
            exit::CONSISTENCY
        }
    }
}

/// One indented line per kind, each starting with a newline (nothing when there are none).
impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, count) in &self.by_kind {
            write!(f, "\n  {kind}: {count}")?;
        }
        Ok(())
    }
}

/// Runs `task` on every record, at most `concurrency` at once, handing each outcome to
/// `tally` as it completes (in completion order, not file order).
pub async fn for_each_record<T, F, O>(
    records: Vec<Record>,
    concurrency: usize,
    verb: &'static str,
    task: T,
    mut tally: impl FnMut(O),
) where
    T: FnMut(Record) -> F,
    F: Future<Output = O>,
{
    let progress = progress_bar(records.len(), verb);
    let mut outcomes = stream::iter(records)
        .map(task)
        .buffer_unordered(concurrency);
    while let Some(outcome) = outcomes.next().await {
        tally(outcome);
        progress.inc(1);
    }
    progress.finish_and_clear();
}

/// A bar on standard error for a person watching; hidden when standard error is a file or
/// a pipe, where redraws would only fill a log.
fn progress_bar(total: usize, verb: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(ProgressStyle::with_template(PROGRESS_TEMPLATE).expect("template is valid"));
    bar.set_message(verb);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_three_only_when_every_failure_is_a_consistency_failure() {
        // Goal: one non-consistency failure among consistency failures makes the run a 4.
        let mut failures = Failures::default();
        assert_eq!(failures.exit_code(), exit::OK);

        failures.add(
            Error::Unavailable {
                required: 2,
                alive: 1,
            }
            .into(),
        );
        failures.add(
            Error::Timeout {
                required: 2,
                acknowledged: 1,
            }
            .into(),
        );
        assert_eq!(failures.exit_code(), exit::CONSISTENCY);

        failures.add(KeyProblem::Missing.into());
        assert_eq!(failures.exit_code(), exit::OTHER);
        assert_eq!(failures.total(), 3);
    }

    #[test]
    fn failures_print_one_line_per_kind_in_kind_order() {
        // Goal: the per-kind lines are stable, so two runs can be compared by eye or diff.
        let mut failures = Failures::default();
        failures.add(
            Error::Timeout {
                required: 2,
                acknowledged: 1,
            }
            .into(),
        );
        failures.add(KeyProblem::Missing.into());
        failures.add(KeyProblem::Missing.into());
        assert_eq!(failures.to_string(), "\n  missing-key: 2\n  timeout: 1");
    }

    #[tokio::test]
    async fn every_record_is_tallied_once_with_bounded_concurrency() {
        // Goal: all outcomes arrive, whatever order the tasks finish in.
        let records: Vec<Record> = (0..100).map(|_| Record::new()).collect();
        let mut seen = 0;
        for_each_record(records, 7, "testing", |_| async { 1 }, |one| seen += one).await;
        assert_eq!(seen, 100);
    }
}
