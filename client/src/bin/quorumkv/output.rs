//! Everything the commands print: values, JSON, the status and ring tables, and the one-line
//! error messages on standard error.

use std::io::{self, Write};

use base64::Engine;
use bytes::Bytes;
use quorumkv_client::protocol::{
    CompactReport, ConvergenceStatus, LocalState, RingEntry, RingReport, StatusReport,
};
use quorumkv_client::GetResult;
use quorumkv_client::NodeId;
use serde::Serialize;

/// Columns of a table are separated by this many spaces.
const COLUMN_GAP: usize = 2;

/// One line on standard error, prefixed with the program's name.
pub fn complain(message: &str) {
    eprintln!("quorumkv: {message}");
}

/// Each sibling's bytes as they are, one per line, so `get` output can be piped onward.
pub fn write_values(out: &mut impl Write, values: &[Bytes]) -> io::Result<()> {
    for value in values {
        out.write_all(value)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A value in `get --json`: text when it is UTF-8, else tagged so it cannot be mistaken for
/// text that happens to look like base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum JsonValue {
    Text(String),
    Binary { base64: String },
}

#[derive(Debug, Serialize)]
struct JsonGet {
    values: Vec<JsonValue>,
    /// URL-safe base64, as `--context` takes it back.
    context: String,
}

/// `{"values": [...], "context": "..."}` on one line.
pub fn get_json(result: &GetResult) -> String {
    let values = result
        .values
        .iter()
        .map(|value| json_value(value))
        .collect();
    let document = JsonGet {
        values,
        context: result.context.to_string(),
    };
    serde_json::to_string(&document).expect("strings always serialize")
}

fn json_value(value: &[u8]) -> JsonValue {
    match std::str::from_utf8(value) {
        Ok(text) => JsonValue::Text(text.to_owned()),
        Err(_) => JsonValue::Binary {
            base64: base64::engine::general_purpose::STANDARD.encode(value),
        },
    }
}

/// Writes `text` to standard output. When the reader has gone (`quorumkv status | head
/// -1`), the command ends quietly, as Unix tools do, instead of panicking as `print!`
/// would.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result,
    }
}

/// A header naming the answering node, then one row per member.
pub fn status(report: &StatusReport) -> String {
    let (node, cluster) = (&report.node, &report.cluster);
    let (n, q) = (report.replicas, report.partitions);
    let header = format!("answered by {node} (cluster {cluster}): N = {n}, Q = {q}\n");

    let rows = report.members.iter().map(|member| {
        let state = if member.up { "up" } else { "down" };
        let owned = member.partitions_owned.to_string();
        vec![
            member.node.to_string(),
            member.address.clone(),
            state.into(),
            owned,
        ]
    });
    header + &table(&["NODE", "ADDRESS", "STATE", "PARTITIONS"], rows.collect())
}

/// Each node's own view of convergence: hints it holds per target, hints it dropped and
/// delivered, when it last finished an anti-entropy exchange, and tombstones it purged.
/// `None` for a node that did not answer.
pub fn convergence(nodes: &[(NodeId, Option<ConvergenceStatus>)]) -> String {
    let rows = nodes.iter().map(|(node, status)| {
        let Some(status) = status else {
            let unknown = || "-".to_owned();
            return vec![
                node.to_string(),
                "unreachable".into(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
            ];
        };
        let pending = if status.hints_pending.is_empty() {
            "none".to_owned()
        } else {
            let each = status
                .hints_pending
                .iter()
                .map(|(to, n)| format!("{to}:{n}"));
            each.collect::<Vec<_>>().join(" ")
        };
        let last = status.anti_entropy.iter().map(|(_, at)| *at).max();
        let last = match last {
            Some(at) => format!(
                "{:.1}s ago",
                status.now_ms.saturating_sub(at) as f64 / 1000.0
            ),
            None => "never".to_owned(),
        };
        vec![
            node.to_string(),
            pending,
            status.hints_dropped.to_string(),
            status.hints_delivered.to_string(),
            last,
            status.tombstones_purged.to_string(),
        ]
    });
    let header = [
        "NODE",
        "HINTS PENDING",
        "DROPPED",
        "DELIVERED",
        "LAST ANTI-ENTROPY",
        "PURGED",
    ];
    table(&header, rows.collect())
}

/// One key's place: its hash, partition, home replicas and fallbacks.
pub fn ring_for_key(key: &str, report: &RingReport) -> Option<String> {
    let entry = report.entries.first()?;
    let hash = report.key_hash?;
    let (partition, partitions) = (entry.partition, report.partitions);
    let fallbacks = if entry.fallbacks.is_empty() {
        "(none)".to_owned()
    } else {
        names(&entry.fallbacks, " ")
    };
    let lines = [
        format!("key        {key}"),
        format!("hash       {hash:#018x}"),
        format!("partition  {partition} of {partitions}"),
        format!(
            "home       {} (N = {})",
            names(&entry.home, " "),
            report.replicas
        ),
        format!("fallbacks  {fallbacks}"),
    ];
    Some(lines.join("\n") + "\n")
}

/// The partition table: one row per partition with its home replicas, owner first.
pub fn ring_table(report: &RingReport) -> String {
    let rows = report
        .entries
        .iter()
        .map(|entry: &RingEntry| vec![entry.partition.to_string(), names(&entry.home, ",")]);
    table(&["PARTITION", "HOME"], rows.collect())
}

/// One node's copy of a key: each sibling with its dot, tombstones marked.
pub fn local_state(key: &str, state: &LocalState) -> String {
    let mut text = format!("{key} on {}:", state.node);
    if !state.exists {
        text.push_str(" nothing stored\n");
        return text;
    }
    let count = state.siblings.len();
    let noun = if count == 1 { "sibling" } else { "siblings" };
    text.push_str(&format!(" {count} {noun}\n"));
    let rows = state
        .siblings
        .iter()
        .map(|sibling| {
            let value = match &sibling.value {
                Some(value) => String::from_utf8_lossy(value).into_owned(),
                None => "(tombstone)".to_owned(),
            };
            vec![sibling.dot.clone(), value]
        })
        .collect();
    text.push_str(&table(&["DOT", "VALUE"], rows));
    text.push_str(&format!("context: {}\n", state.context));
    text
}

/// One line: what went, what came, and the disk used before and after.
pub fn compact_report(report: &CompactReport) -> String {
    format!(
        "{}: {} segments removed, {} written, {} records copied; {} -> {} bytes",
        report.node,
        report.segments_removed,
        report.segments_written,
        report.records_copied,
        report.bytes_before,
        report.bytes_after
    )
}

fn names(nodes: &[quorumkv_client::NodeId], separator: &str) -> String {
    let names: Vec<&str> = nodes.iter().map(|node| node.0.as_str()).collect();
    names.join(separator)
}

/// Left-aligned columns as wide as their widest cell; the last column is not padded, so
/// lines carry no trailing spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let header: Vec<String> = header.iter().map(|title| title.to_string()).collect();
    let lines: Vec<Vec<String>> = std::iter::once(header).chain(rows).collect();
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            lines
                .iter()
                .map(|line| line[column].len())
                .max()
                .unwrap_or(0)
        })
        .collect();

    let mut text = String::new();
    for line in &lines {
        for (column, cell) in line.iter().enumerate() {
            if column + 1 == columns {
                text.push_str(cell);
            } else {
                let width = widths[column] + COLUMN_GAP;
                text.push_str(&format!("{cell:<width$}"));
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_client::protocol::MemberStatus;
    use quorumkv_client::{Context, NodeId};

    #[test]
    fn json_output_keeps_text_as_text_and_tags_binary_values() {
        // Goal: UTF-8 values read naturally; other bytes come back losslessly as base64.
        let result = GetResult {
            values: vec![
                Bytes::from_static(b"hello"),
                Bytes::from_static(b"\xff\x00"),
            ],
            context: Context(Bytes::from_static(b"\x01\x02")),
        };
        let expected = r#"{"values":["hello",{"base64":"/wA="}],"context":"AQI"}"#;
        assert_eq!(get_json(&result), expected);
    }

    #[test]
    fn a_compaction_report_is_one_line_with_its_numbers() {
        // Goal: `compact` says in one line what it removed, wrote and copied, and the
        // disk used before and after.
        let report = CompactReport {
            node: NodeId::from("n2"),
            segments_removed: 3,
            segments_written: 1,
            records_copied: 120,
            bytes_before: 4096,
            bytes_after: 1024,
        };
        let expected = "n2: 3 segments removed, 1 written, 120 records copied; 4096 -> 1024 bytes";
        assert_eq!(compact_report(&report), expected);
    }

    #[test]
    fn plain_output_is_one_sibling_per_line() -> io::Result<()> {
        // Goal: siblings are printed as raw bytes, each on its own line, and nothing else.
        let mut out = Vec::new();
        write_values(
            &mut out,
            &[Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        )?;
        assert_eq!(out, b"a\nb\n");
        Ok(())
    }

    #[test]
    fn status_table_has_a_header_line_and_aligned_rows() {
        // Goal: the answering node, N and Q come first, then one aligned row per member.
        let member = |name: &str, up: bool| MemberStatus {
            node: NodeId::from(name),
            address: format!("127.0.0.1:710{}", &name[1..]),
            up,
            partitions_owned: 128,
        };
        let report = StatusReport {
            node: NodeId::from("n1"),
            cluster: "quorumkv".into(),
            replicas: 3,
            partitions: 256,
            members: vec![member("n1", true), member("n2", false)],
            convergence: ConvergenceStatus::default(),
        };
        let expected = "answered by n1 (cluster quorumkv): N = 3, Q = 256\n\
                        NODE  ADDRESS         STATE  PARTITIONS\n\
                        n1    127.0.0.1:7101  up     128\n\
                        n2    127.0.0.1:7102  down   128\n";
        assert_eq!(status(&report), expected);
    }

    #[test]
    fn convergence_rows_show_hints_by_target_and_the_last_exchange_age() {
        // Goal: an operator sees, per node, what waits for whom and how fresh
        // anti-entropy is; a node that did not answer is marked, not skipped.
        let status = ConvergenceStatus {
            now_ms: 10_000,
            hints_pending: vec![(NodeId::from("n3"), 12)],
            hints_dropped: 1,
            hints_delivered: 5,
            anti_entropy: vec![(NodeId::from("n2"), 7_500), (NodeId::from("n3"), 9_000)],
            anti_entropy_repaired: 0,
            tombstones_purged: 2,
        };
        let text = convergence(&[
            (NodeId::from("n1"), Some(status)),
            (NodeId::from("n3"), None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{text}");
        let n1: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(n1, ["n1", "n3:12", "1", "5", "1.0s", "ago", "2"]);
        assert!(lines[2].contains("unreachable"), "{text}");
    }

    #[test]
    fn ring_for_a_key_names_home_replicas_and_fallbacks() {
        // Goal: a key's report shows where it lives and where writes go when homes are down.
        let report = RingReport {
            partitions: 256,
            replicas: 2,
            key_hash: Some(0xab),
            entries: vec![RingEntry {
                partition: 17,
                owner: NodeId::from("n2"),
                home: vec![NodeId::from("n2"), NodeId::from("n3")],
                fallbacks: vec![NodeId::from("n1")],
            }],
        };
        let text = ring_for_key("k", &report).expect("a key report");
        assert!(text.contains("hash       0x00000000000000ab\n"), "{text}");
        assert!(text.contains("partition  17 of 256\n"), "{text}");
        assert!(text.contains("home       n2 n3 (N = 2)\n"), "{text}");
        assert!(text.contains("fallbacks  n1\n"), "{text}");
        let table = ring_table(&report);
        assert_eq!(table, "PARTITION  HOME\n17         n2,n3\n");
    }
}
