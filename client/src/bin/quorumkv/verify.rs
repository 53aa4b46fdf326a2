//! `quorumkv verify`: read back every record of a file and check it is stored exactly as
//! `import` wrote it.
//!
//! A key matches when every sibling it holds is the record: importing a file twice
//! leaves equal siblings, which are not a difference in data.

use std::fmt;

use bytes::Bytes;
use quorumkv_client::{Client, Consistency};

use crate::args::VerifyArgs;
use crate::bulk::{self, Failure, Failures};
use crate::exit;
use crate::output;
use crate::records::{self, Record};

/// Keys named on standard error when records are missing or differ: enough to start
/// looking, few enough not to bury the summary.
const MAX_REPORTED_KEYS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Match,
    Missing,
    Differs,
}

#[derive(Debug, Default)]
pub struct VerifySummary {
    pub records: usize,
    pub matched: usize,
    pub missing: usize,
    pub differ: usize,
    pub failures: Failures,
    /// The first few keys found missing or different, to name on standard error.
    pub reported: Vec<(Check, String)>,
}

impl VerifySummary {
    /// Missing or different data comes first: it is a finding even when some reads failed.
    pub fn exit_code(&self) -> u8 {
        if self.missing + self.differ > 0 {
            exit::NOT_FOUND
        } else {
            self.failures.exit_code()
        }
    }

    fn count(&mut self, outcome: Result<(Check, String), Failure>) {
        let (check, key) = match outcome {
            Ok(found) => found,
            Err(failure) => return self.failures.add(failure),
        };
        match check {
            Check::Match => self.matched += 1,
            Check::Missing => self.missing += 1,
            Check::Differs => self.differ += 1,
        }
        if check != Check::Match && self.reported.len() < MAX_REPORTED_KEYS {
            self.reported.push((check, key));
        }
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (records, matched) = (self.records, self.matched);
        let (missing, differ) = (self.missing, self.differ);
        let failed = self.failures.total();
        write!(
            f,
            "verified {records} records: {matched} match, {missing} missing, "
        )?;
        write!(f, "{differ} differ, {failed} failed{}", self.failures)
    }
}

/// Loads the file, reads every record back, prints the summary; returns the exit code.
pub async fn run(client: &Client, args: &VerifyArgs) -> anyhow::Result<u8> {
    let source = &args.source;
    let records = records::load(&source.file)?;
    let summary = verify(
        client,
        records,
        &source.key,
        args.consistency,
        source.concurrency,
    );
    let summary = summary.await;

    crate::output::print(&format!("{summary}\n"))?;
    for (check, key) in &summary.reported {
        let what = if *check == Check::Missing {
            "missing"
        } else {
            "differs"
        };
        output::complain(&format!("{what}: {key}"));
    }
    Ok(summary.exit_code())
}

pub async fn verify(
    client: &Client,
    records: Vec<Record>,
    field: &str,
    level: Consistency,
    concurrency: usize,
) -> VerifySummary {
    let mut summary = VerifySummary {
        records: records.len(),
        ..VerifySummary::default()
    };
    let check = |record| check(client, field, level, record);
    let tally = |outcome| summary.count(outcome);
    bulk::for_each_record(records, concurrency, "verifying", check, tally).await;
    summary
}

async fn check(
    client: &Client,
    field: &str,
    level: Consistency,
    record: Record,
) -> Result<(Check, String), Failure> {
    let key = records::key_of(&record, field)?;
    let found = client.get(key.clone(), level).await?;
    Ok((compare(&found.values, &record), key))
}

fn compare(values: &[Bytes], record: &Record) -> Check {
    if values.is_empty() {
        Check::Missing
    } else if values.iter().all(|value| records::holds(value, record)) {
        Check::Match
    } else {
        Check::Differs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_node::{self, Store};
    use crate::import::import;
    use serde_json::json;

    fn records(count: usize) -> Vec<Record> {
        let record = |i: usize| json!({"id": i, "name": format!("record {i}")});
        (0..count)
            .map(|i| record(i).as_object().expect("an object").clone())
            .collect()
    }

    #[tokio::test]
    async fn what_import_wrote_verifies_as_matching() {
        // Goal: import followed by verify is the round trip the demo relies on.
        let store = Store::default();
        let client = fake_node::client(&store);
        import(&client, records(50), "id", Consistency::Quorum, 8).await;

        let summary = verify(&client, records(50), "id", Consistency::Quorum, 8).await;

        let expected = "verified 50 records: 50 match, 0 missing, 0 differ, 0 failed";
        assert_eq!(summary.to_string(), expected);
        assert_eq!(summary.exit_code(), exit::OK);
    }

    #[tokio::test]
    async fn missing_and_changed_records_are_counted_and_named() {
        // Goal: a lost key and a key holding other data both make verify exit 1.
        let store = Store::default();
        let client = fake_node::client(&store);
        import(&client, records(3), "id", Consistency::Quorum, 8).await;
        {
            let mut stored = store.lock().expect("store lock");
            stored.remove(&b"0"[..]);
            stored.insert(Bytes::from_static(b"1"), vec![Bytes::from_static(b"{}")]);
        }

        let summary = verify(&client, records(3), "id", Consistency::Quorum, 8).await;

        let expected = "verified 3 records: 1 match, 1 missing, 1 differ, 0 failed";
        assert_eq!(summary.to_string(), expected);
        assert_eq!(summary.exit_code(), exit::NOT_FOUND);
        assert_eq!(summary.reported.len(), 2);
    }

    #[tokio::test]
    async fn equal_siblings_from_a_second_import_still_match() {
        // Goal: importing twice (two equal siblings per key) is not reported as a difference.
        let client = fake_node::client(&Store::default());
        import(&client, records(2), "id", Consistency::Quorum, 8).await;
        import(&client, records(2), "id", Consistency::Quorum, 8).await;

        let summary = verify(&client, records(2), "id", Consistency::Quorum, 8).await;

        assert_eq!(summary.matched, 2);
    }
}
