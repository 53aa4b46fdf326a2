//! The records `import` stores and `verify` reads back, and how each becomes a key and a
//! value.
//!
//! Four file formats: a JSON array of objects; a JSON object with exactly one field holding
//! such an array (Debian's iso-codes files wrap their list that way); JSON Lines; CSV with
//! a header row. The extension decides (.json, .jsonl or .ndjson, .csv); any other file is
//! sniffed from its content.
//!
//! The whole file is parsed before anything is sent, so a malformed file fails with nothing
//! written and the progress bar knows its total. The cost is memory in proportion to the
//! file, which suits the reference tables and demo data this command is for.

use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::{Map, Value};

/// One record: a JSON object, or a CSV row as an object of header to cell text.
pub type Record = Map<String, Value>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One JSON value: an array of records, or an object with one field holding one.
    Json,
    JsonLines,
    Csv,
}

/// Why a record has no usable key; counted like a failed write, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// The field is absent, null, or an empty string (how CSV spells a missing cell).
    Missing,
    /// The field holds a boolean, an array or an object, none of which names a key.
    Invalid,
}

impl KeyProblem {
    pub fn kind(self) -> &'static str {
        match self {
            KeyProblem::Missing => "missing-key",
            KeyProblem::Invalid => "invalid-key",
        }
    }
}

/// Reads and parses every record of `path`.
pub fn load(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;

    // Spreadsheet exports often start with a byte-order mark, which no parser expects.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);

    let format = format_of(path, text);
    parse(text, format).with_context(|| format!("{}", path.display()))
}

/// The record's key: a string as it is, a number as written in the file.
pub fn key_of(record: &Record, field: &str) -> Result<String, KeyProblem> {
    match record.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        None | Some(Value::Null) | Some(Value::String(_)) => Err(KeyProblem::Missing),
        Some(_) => Err(KeyProblem::Invalid),
    }
}

/// The value `import` stores for a record: the record as compact JSON.
pub fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("a map with string keys always serializes")
}

/// True when `stored` holds `record`. Compared as JSON rather than as bytes, so the
/// order of fields (which serde_json's `preserve_order` feature changes) does not matter.
pub fn holds(stored: &[u8], record: &Record) -> bool {
    match serde_json::from_slice::<Value>(stored) {
        Ok(Value::Object(fields)) => &fields == record,
        _ => false,
    }
}

fn format_of(path: &Path, text: &str) -> Format {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => Format::Json,
        Some("jsonl") | Some("ndjson") => Format::JsonLines,
        Some("csv") => Format::Csv,
        _ => sniff(text),
    }
}

/// A file that starts with `[` is a JSON array; one that starts with `{` is a wrapped
/// array if it parses as a single value, else JSON Lines; anything else is taken as CSV.
fn sniff(text: &str) -> Format {
    match text.trim_start().chars().next() {
        Some('[') => Format::Json,
        Some('{') if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => Format::Json,
        Some('{') => Format::JsonLines,
        _ => Format::Csv,
    }
}

fn parse(text: &str, format: Format) -> anyhow::Result<Vec<Record>> {
    match format {
        Format::Json => parse_json(text),
        Format::JsonLines => parse_json_lines(text),
        Format::Csv => parse_csv(text),
    }
}

fn parse_json(text: &str) -> anyhow::Result<Vec<Record>> {
    let document: Value = serde_json::from_str(text).context("not valid JSON")?;
    let items = match document {
        Value::Array(items) => items,
        Value::Object(fields) => the_array_field(fields)?,
        other => bail!("expected an array of objects, found {}", type_name(&other)),
    };

    let records = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| into_record(item).with_context(|| format!("record {}", index + 1)));
    records.collect()
}

/// The records of a document like `{"639-3": [...]}`: its one field that holds an array.
fn the_array_field(fields: Map<String, Value>) -> anyhow::Result<Vec<Value>> {
    let mut arrays = fields.into_iter().filter(|(_, value)| value.is_array());
    match (arrays.next(), arrays.next()) {
        (Some((_, Value::Array(items))), None) => Ok(items),
        (None, _) => bail!(
            "expected an array of objects or an object with one array field, found an \
             object without one (if this is JSON Lines, name the file .jsonl)"
        ),
        _ => bail!("the top-level object has several array fields; which holds the records?"),
    }
}

fn parse_json_lines(text: &str) -> anyhow::Result<Vec<Record>> {
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty());
    let records = lines.map(|(index, line)| {
        let line_number = index + 1;
        let value = serde_json::from_str(line)
            .with_context(|| format!("line {line_number}: not valid JSON"))?;
        into_record(value).with_context(|| format!("line {line_number}"))
    });
    records.collect()
}

fn parse_csv(text: &str) -> anyhow::Result<Vec<Record>> {
    // A row with more or fewer cells than the header is an error, not a silent shift of
    // values into the wrong fields.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader.headers().context("not valid CSV")?.clone();

    let rows = reader.records().map(|row| {
        let row = row.context("not valid CSV")?;
        let cells = headers.iter().zip(row.iter());
        let record = cells
            .map(|(name, cell)| (name.to_owned(), Value::from(cell)))
            .collect();
        Ok(record)
    });
    rows.collect()
}

fn into_record(value: Value) -> anyhow::Result<Record> {
    match value {
        Value::Object(fields) => Ok(fields),
        other => bail!("expected an object, found {}", type_name(&other)),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Result;

    fn keys(records: &[Record], field: &str) -> Vec<String> {
        records
            .iter()
            .filter_map(|record| key_of(record, field).ok())
            .collect()
    }

    #[test]
    fn a_json_array_of_objects_gives_one_record_each() -> Result<()> {
        // Goal: the plainest format parses, with string and numeric keys.
        let records = parse(r#"[{"id": "a", "n": 1}, {"id": 7}]"#, Format::Json)?;
        assert_eq!(keys(&records, "id"), ["a", "7"]);
        Ok(())
    }

    #[test]
    fn an_object_with_one_array_field_gives_that_arrays_records() -> Result<()> {
        // Goal: the iso-codes shape `{"639-3": [...]}` is unwrapped, by extension or sniffing.
        let text = r#"{"639-3": [{"alpha_3": "aaa"}, {"alpha_3": "aab"}], "version": 1}"#;
        assert_eq!(sniff(text), Format::Json);
        let records = parse(text, Format::Json)?;
        assert_eq!(keys(&records, "alpha_3"), ["aaa", "aab"]);
        Ok(())
    }

    #[test]
    fn json_lines_give_one_record_per_non_blank_line() -> Result<()> {
        // Goal: JSON Lines are recognised without an extension and blank lines are skipped.
        let text = "{\"id\": \"a\"}\n\n{\"id\": \"b\"}\n";
        assert_eq!(sniff(text), Format::JsonLines);
        assert_eq!(keys(&parse(text, Format::JsonLines)?, "id"), ["a", "b"]);
        Ok(())
    }

    #[test]
    fn csv_rows_become_objects_of_header_to_text() -> Result<()> {
        // Goal: a CSV row is stored as {"header": "cell", ...}, every cell a string.
        let text = "id,name\n1,one\n2,\"two, too\"\n";
        assert_eq!(sniff(text), Format::Csv);
        let records = parse(text, Format::Csv)?;
        assert_eq!(keys(&records, "id"), ["1", "2"]);
        assert_eq!(records[1]["name"], Value::from("two, too"));
        assert_eq!(encode(&records[0]), br#"{"id":"1","name":"one"}"#);
        Ok(())
    }

    #[test]
    fn a_record_without_its_key_field_has_a_missing_key() -> Result<()> {
        // Goal: absent, null and empty keys are counted as "missing-key", not stored.
        let text = r#"[{"name": "x"}, {"id": null}, {"id": ""}, {"id": [1]}]"#;
        let records = parse(text, Format::Json)?;
        let problems: Vec<_> = records
            .iter()
            .map(|r| key_of(r, "id").unwrap_err())
            .collect();
        let missing = KeyProblem::Missing;
        assert_eq!(problems, [missing, missing, missing, KeyProblem::Invalid]);
        assert_eq!(missing.kind(), "missing-key");
        Ok(())
    }

    #[test]
    fn a_malformed_file_gives_an_error_that_says_where() {
        // Goal: each format points at what is wrong: the line, the record or the shape.
        let cases = [
            ("{\"id\": 1}\n{\"id\": \n", Format::JsonLines, "line 2"),
            (r#"[{"id": 1}, 5]"#, Format::Json, "record 2"),
            (
                r#"{"a": [], "b": []}"#,
                Format::Json,
                "several array fields",
            ),
            ("[{\"id\": 1}", Format::Json, "not valid JSON"),
            ("id,name\n1,one,extra\n", Format::Csv, "not valid CSV"),
        ];
        for (text, format, expected) in cases {
            let error = format!("{:#}", parse(text, format).unwrap_err());
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(
                !error.contains('\n'),
                "{text:?}: error spans lines: {error}"
            );
        }
    }

    #[test]
    fn a_file_is_loaded_by_extension_after_its_byte_order_mark() -> Result<()> {
        // Goal: load reads a real file, honours .csv and skips a spreadsheet's BOM.
        let path = std::env::temp_dir().join(format!("quorumkv-{}-bom.csv", std::process::id()));
        std::fs::write(&path, "\u{feff}code,name\nfr,French\n")?;
        let loaded = load(&path);
        std::fs::remove_file(&path)?;
        assert_eq!(keys(&loaded?, "code"), ["fr"]);
        Ok(())
    }

    #[test]
    fn stored_json_matches_its_record_whatever_the_field_order() -> Result<()> {
        // Goal: verify accepts what import wrote even if another build orders fields apart.
        let records = parse(r#"[{"a": 1, "b": "x"}]"#, Format::Json)?;
        assert!(holds(br#"{"b":"x","a":1}"#, &records[0]));
        assert!(!holds(br#"{"a":1,"b":"y"}"#, &records[0]));
        assert!(!holds(b"not json", &records[0]));
        Ok(())
    }
}
