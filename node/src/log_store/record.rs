//! The record format of the log and a reader that walks a segment record by record.
//!
//! A record is an 8-byte header, the body's length and the CRC-32 of the body (both u32
//! big-endian), then the body: MessagePack of `(sequence, key, state)`. The checksum covers
//! the whole body, so a record either reads back exactly as written or is refused.

use std::io;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Serialize, Serializer};

use crate::env::DataFile;
use crate::versions::Versions;

pub(crate) const HEADER_BYTES: usize = 8;

/// Largest body a record may have. Far above any state the coordinator accepts (a state
/// must fit in one frame, 16 MiB by default), so a larger length in a header can only be
/// damage; and low enough that every offset within a segment fits in 32 bits.
pub(crate) const MAX_BODY_BYTES: u32 = 256 * 1024 * 1024;

/// Bytes read at a time while scanning a segment: large reads keep the disk streaming,
/// and the bound keeps a scan's memory flat whatever the segment size.
const SCAN_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// A key serialized as MessagePack binary, without copying it into a `Bytes` first.
struct KeyBytes<'a>(&'a [u8]);

impl Serialize for KeyBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Header and body of one record, ready to append.
pub(crate) fn encode(sequence: u64, key: &[u8], state: &Versions) -> io::Result<Vec<u8>> {
    let body = rmp_serde::to_vec(&(sequence, KeyBytes(key), state)).map_err(io::Error::other)?;
    let length = u32::try_from(body.len())
        .ok()
        .filter(|length| *length <= MAX_BODY_BYTES)
        .ok_or_else(|| {
            let reason = format!("a record of {} bytes exceeds the limit", body.len());
            io::Error::new(io::ErrorKind::InvalidInput, reason)
        })?;

    let mut record = Vec::with_capacity(HEADER_BYTES + body.len());
    record.extend_from_slice(&length.to_be_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// The length and checksum a header announces.
fn parse_header(header: &[u8]) -> (u32, u32) {
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (length, crc)
}

/// The state in a whole record read back from its index location. Checked again here,
/// not only at recovery: a disk can damage a record after it was scanned.
pub(crate) fn decode_state(record: &[u8], key: &[u8]) -> Result<Versions, String> {
    if record.len() < HEADER_BYTES {
        return Err(format!("record of {} bytes has no header", record.len()));
    }
    let (length, crc) = parse_header(&record[..HEADER_BYTES]);
    let body = &record[HEADER_BYTES..];
    if length as usize != body.len() {
        return Err(format!(
            "header says {length} bytes, index says {}",
            body.len()
        ));
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let (_sequence, stored_key, state): (u64, Bytes, Versions) =
        rmp_serde::from_slice(body).map_err(|e| format!("undecodable body: {e}"))?;
    if stored_key != key {
        // Only a bug in the index could lead here; serving another key's state would be
        // far worse than an error.
        return Err("the record belongs to another key".into());
    }
    Ok(state)
}

/// Sequence and key of a body whose checksum passed, leaving the state undecoded.
fn decode_head(body: &[u8]) -> Result<(u64, &[u8]), String> {
    let (sequence, key, _state): (u64, &[u8], IgnoredAny) =
        rmp_serde::from_slice(body).map_err(|e| format!("undecodable body: {e}"))?;
    Ok((sequence, key))
}

/// A record that passed its checksum, as found by a scan.
pub(crate) struct Found<'s> {
    pub offset: u64,
    pub sequence: u64,
    pub key: &'s [u8],
    /// The whole record, header included, for compaction to copy as it is.
    pub bytes: &'s [u8],
}

/// One step of a scan.
pub(crate) enum Scanned<'s> {
    Record(Found<'s>),
    /// A plausible record whose checksum or body is bad; the scan can go on after it.
    Corrupt {
        offset: u64,
        length: u64,
        reason: String,
    },
    /// A header announcing an impossible length: nothing after it can be trusted.
    Implausible {
        offset: u64,
        length: u32,
    },
    /// The file ends inside a record: a write cut short.
    Torn {
        offset: u64,
    },
    End,
}

/// Reads a segment front to back in large chunks.
pub(crate) struct Scanner<'f, F> {
    file: &'f F,
    size: u64,
    buffer: Vec<u8>,
    buffer_start: u64,
    position: u64,
}

impl<'f, F: DataFile> Scanner<'f, F> {
    pub fn new(file: &'f F, size: u64) -> Self {
        Scanner {
            file,
            size,
            buffer: Vec::new(),
            buffer_start: 0,
            position: 0,
        }
    }

    pub async fn next(&mut self) -> io::Result<Scanned<'_>> {
        let offset = self.position;
        if offset == self.size {
            return Ok(Scanned::End);
        }
        if !self.fill(HEADER_BYTES).await? {
            return Ok(Scanned::Torn { offset });
        }
        let (length, crc) = parse_header(self.window(HEADER_BYTES));
        if length == 0 || length > MAX_BODY_BYTES {
            return Ok(Scanned::Implausible { offset, length });
        }
        let total = HEADER_BYTES + length as usize;
        if !self.fill(total).await? {
            return Ok(Scanned::Torn { offset });
        }

        self.position += total as u64;
        let start = (offset - self.buffer_start) as usize;
        let bytes = &self.buffer[start..start + total];
        let body = &bytes[HEADER_BYTES..];
        let corrupt = |reason: String| Scanned::Corrupt {
            offset,
            length: total as u64,
            reason,
        };
        if crc32fast::hash(body) != crc {
            return Ok(corrupt("checksum mismatch".into()));
        }
        Ok(match decode_head(body) {
            Ok((sequence, key)) => Scanned::Record(Found {
                offset,
                sequence,
                key,
                bytes,
            }),
            Err(reason) => corrupt(reason),
        })
    }

    /// Makes the buffer cover `len` bytes from the position; false if the file ends first.
    async fn fill(&mut self, len: usize) -> io::Result<bool> {
        let end = self.position + len as u64;
        if end > self.size {
            return Ok(false);
        }
        let buffered_end = self.buffer_start + self.buffer.len() as u64;
        if self.position >= self.buffer_start && end <= buffered_end {
            return Ok(true);
        }
        let want = (len as u64)
            .max(SCAN_CHUNK_BYTES)
            .min(self.size - self.position);
        self.buffer = self.file.read_at(self.position, want as usize).await?;
        self.buffer_start = self.position;
        Ok(true)
    }

    fn window(&self, len: usize) -> &[u8] {
        let start = (self.position - self.buffer_start) as usize;
        &self.buffer[start..start + len]
    }
}
