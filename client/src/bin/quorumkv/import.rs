//! `quorumkv import`: store every record of a file under the value of one of its fields.
//!
//! Each record is read first and written with the context of that read, so it replaces
//! what the key held (importing a file twice leaves one value per key, and a later record
//! with the same key replaces an earlier one). That costs a read per record; a blind write
//! would add a sibling next to every existing value instead.

use std::fmt;

use quorumkv_client::{Client, Consistency};

use crate::args::ImportArgs;
use crate::bulk::{self, Failure, Failures};
use crate::records::{self, Record};

#[derive(Debug, Default)]
pub struct ImportSummary {
    pub records: usize,
    pub stored: usize,
    pub failures: Failures,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (records, stored) = (self.records, self.stored);
        let failed = self.failures.total();
        write!(
            f,
            "imported {records} records: {stored} stored, {failed} failed"
        )?;
        write!(f, "{}", self.failures)
    }
}

/// Loads the file, stores its records, prints the summary; returns the exit code.
pub async fn run(client: &Client, args: &ImportArgs) -> anyhow::Result<u8> {
    let source = &args.source;
    let records = records::load(&source.file)?;
    let summary = import(
        client,
        records,
        &source.key,
        args.consistency,
        source.concurrency,
    );
    let summary = summary.await;
    crate::output::print(&format!("{summary}\n"))?;
    Ok(summary.failures.exit_code())
}

pub async fn import(
    client: &Client,
    records: Vec<Record>,
    field: &str,
    level: Consistency,
    concurrency: usize,
) -> ImportSummary {
    let mut summary = ImportSummary {
        records: records.len(),
        ..ImportSummary::default()
    };
    let store = |record| store(client, field, level, record);
    let tally = |outcome: Result<(), Failure>| match outcome {
        Ok(()) => summary.stored += 1,
        Err(failure) => summary.failures.add(failure),
    };
    bulk::for_each_record(records, concurrency, "importing", store, tally).await;
    summary
}

async fn store(
    client: &Client,
    field: &str,
    level: Consistency,
    record: Record,
) -> Result<(), Failure> {
    let key = records::key_of(&record, field)?;
    let value = records::encode(&record);
    let current = client.get(key.clone(), read_level(level)).await?;
    client
        .put(key, value, Some(&current.context), level)
        .await?;
    Ok(())
}

/// The level of the read that fetches a record's context: the write's own, except that
/// `any` has no meaning for reads.
pub fn read_level(write: Consistency) -> Consistency {
    match write {
        Consistency::Any => Consistency::One,
        level => level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;
    use crate::fake_node::{self, Store};
    use serde_json::json;

    fn record(value: serde_json::Value) -> Record {
        value.as_object().expect("an object").clone()
    }

    #[tokio::test]
    async fn every_record_is_stored_as_compact_json_under_its_key() {
        // Goal: import writes each record once, under its field's value, as compact JSON.
        let store = Store::default();
        let client = fake_node::client(&store);
        let records = vec![record(json!({"id": "a", "n": 1})), record(json!({"id": 2}))];

        let summary = import(&client, records, "id", Consistency::Quorum, 4).await;

        assert_eq!(
            summary.to_string(),
            "imported 2 records: 2 stored, 0 failed"
        );
        assert_eq!(summary.failures.exit_code(), exit::OK);
        let stored = store.lock().expect("store lock");
        assert_eq!(stored[&b"a"[..]], [&br#"{"id":"a","n":1}"#[..]]);
        assert_eq!(stored[&b"2"[..]], [&br#"{"id":2}"#[..]]);
    }

    #[tokio::test]
    async fn importing_twice_replaces_instead_of_adding_siblings() {
        // Goal: a second import of the same records leaves one value per key.
        let store = Store::default();
        let client = fake_node::client(&store);
        for _ in 0..2 {
            let records = vec![record(json!({"id": "a"}))];
            import(&client, records, "id", Consistency::Quorum, 4).await;
        }
        assert_eq!(store.lock().expect("store lock")[&b"a"[..]].len(), 1);
    }

    #[tokio::test]
    async fn failures_are_counted_by_kind_and_decide_the_exit_code() {
        // Goal: refused writes exit 3; a record without its key makes the run exit 4.
        let client = fake_node::client(&Store::default());
        let down = record(json!({"id": format!("{}x", fake_node::UNAVAILABLE_PREFIX)}));
        let keyless = record(json!({"name": "no id"}));

        let summary = import(&client, vec![down.clone()], "id", Consistency::All, 4).await;
        assert_eq!(summary.failures.exit_code(), exit::CONSISTENCY);

        let summary = import(&client, vec![down, keyless], "id", Consistency::All, 4).await;
        let expected = "imported 2 records: 0 stored, 2 failed\n  missing-key: 1\n  unavailable: 1";
        assert_eq!(summary.to_string(), expected);
        assert_eq!(summary.failures.exit_code(), exit::OTHER);
    }
}
