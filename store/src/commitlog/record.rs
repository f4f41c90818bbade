//! The CommitLog record: one Raft entry, or a blank that fills the end of a segment.
//!
//! # Layout (version 1, little-endian)
//!
//! | offset | size | field                                                                  |
//! |--------|------|------------------------------------------------------------------------|
//! | 0      | 4    | `magic` = [`RECORD_MAGIC`]                                              |
//! | 4      | 4    | `len`: bytes of the record including this header; [`HEADER_LEN`]..=[`RECORD_MAX`] (a blank: to the segment's end) |
//! | 8      | 4    | `crc`: CRC32C of bytes `[12, len)` (a blank: of `[12, HEADER_LEN)` only) |
//! | 12     | 4    | `prev_crc`: the `crc` of the record before this one in the log (0 for the first record) |
//! | 16     | 1    | `version` = 1                                                            |
//! | 17     | 1    | `kind`: 0 blank, 1 messages, 2.. opaque to the store (Raft commands)      |
//! | 18     | 2    | reserved, zero                                                           |
//! | 20     | 8    | `term`                                                                   |
//! | 28     | 8    | `index` (a blank: 0)                                                     |
//! | 36     | 8    | `timestamp_ms`: when the leader proposed the entry (0 if unknown)        |
//! | 44     | …    | payload                                                                  |
//!
//! `prev_crc` chains every record to its predecessor. Recovery follows the chain, so a
//! well-formed record left behind by a truncation or a lost write (stale bytes at a record
//! boundary) is never mistaken for part of the log: it does not chain to the new predecessor.

use crate::codec::{PutLe, le_u32, le_u64};
use crate::error::{Result, StoreError};
use crate::types::LogIndex;

/// `"RMQC"` read as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RMQC");
/// Record format version written by this code.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of the record header.
pub const HEADER_LEN: usize = 44;
/// Largest record (header + payload) the store accepts or reads back.
pub const RECORD_MAX: usize = 64 * 1024 * 1024;

/// What a record holds. The store interprets [`RecordKind::BLANK`] and
/// [`RecordKind::MESSAGES`]; every other value is the Raft layer's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKind(pub u8);

impl RecordKind {
    /// Fill at the end of a segment; not a Raft entry.
    pub const BLANK: RecordKind = RecordKind(0);
    /// A batch of messages (see [`crate::message`]).
    pub const MESSAGES: RecordKind = RecordKind(1);
}

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub prev_crc: u32,
    pub kind: RecordKind,
    pub term: u64,
    pub index: LogIndex,
    pub timestamp_ms: u64,
}

/// An entry as handed to the CommitLog for appending.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub term: u64,
    pub index: LogIndex,
    pub kind: RecordKind,
    pub timestamp_ms: u64,
    pub payload: &'a [u8],
}

/// Appends the header of `entry`'s record, chained to `prev_crc`, with the crc over the
/// header's tail and the payload (which is not copied: the writer hands both to one
/// vectored write); returns the record's crc.
pub(crate) fn encode_header(out: &mut Vec<u8>, entry: &EntryRef<'_>, prev_crc: u32) -> u32 {
    let start = out.len();
    let len = HEADER_LEN + entry.payload.len();
    put_header(
        out,
        len as u32,
        prev_crc,
        entry.kind,
        entry.term,
        entry.index.0,
        entry.timestamp_ms,
    );
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + 12..]), entry.payload);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Appends a full record (header + payload) for `entry`; returns its crc.
#[cfg(test)]
pub(crate) fn encode_record(out: &mut Vec<u8>, entry: &EntryRef<'_>, prev_crc: u32) -> u32 {
    let crc = encode_header(out, entry, prev_crc);
    out.extend_from_slice(entry.payload);
    crc
}

/// Encodes the header of a blank record of `len` bytes (the payload is not written: blank
/// content is never read); returns its crc.
pub(crate) fn encode_blank(out: &mut Vec<u8>, len: u32, prev_crc: u32) -> u32 {
    let start = out.len();
    put_header(out, len, prev_crc, RecordKind::BLANK, 0, 0, 0);
    let crc = crc32c::crc32c(&out[start + 12..start + HEADER_LEN]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    crc
}

fn put_header(
    out: &mut Vec<u8>,
    len: u32,
    prev_crc: u32,
    kind: RecordKind,
    term: u64,
    index: u64,
    ts: u64,
) {
    out.put_u32(RECORD_MAGIC);
    out.put_u32(len);
    out.put_u32(0);
    out.put_u32(prev_crc);
    out.put_u8(RECORD_VERSION);
    out.put_u8(kind.0);
    out.put_u16(0);
    out.put_u64(term);
    out.put_u64(index);
    out.put_u64(ts);
}

/// Why bytes at a position are not a valid record. Recovery treats any of these at the tail
/// as the end of the log; before the synced position, as corruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Magic(u32),
    Length(u32),
    Crc { stored: u32, computed: u32 },
    Chain { prev_crc: u32, expected: u32 },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Magic(m) => write!(f, "bad magic {m:#010x}"),
            Invalid::Length(l) => write!(f, "bad length {l}"),
            Invalid::Crc { stored, computed } => {
                write!(f, "crc {stored:#010x} != computed {computed:#010x}")
            }
            Invalid::Chain { prev_crc, expected } => {
                write!(
                    f,
                    "prev_crc {prev_crc:#010x} does not chain to {expected:#010x}"
                )
            }
        }
    }
}

/// Parses a header from `b` (at least [`HEADER_LEN`] bytes). `room` is how many bytes remain
/// in the segment from this record's start, bounding `len`. An unknown version on a header
/// whose magic matches is a hard error (never guessed), reported by the caller.
pub(crate) fn parse_header(b: &[u8], room: u64) -> std::result::Result<RecordHeader, Invalid> {
    let magic = le_u32(b, 0);
    if magic != RECORD_MAGIC {
        return Err(Invalid::Magic(magic));
    }
    let len = le_u32(b, 4);
    if (len as usize) < HEADER_LEN || u64::from(len) > room {
        return Err(Invalid::Length(len));
    }
    let kind = RecordKind(b[17]);
    if kind != RecordKind::BLANK && len as usize > RECORD_MAX {
        return Err(Invalid::Length(len));
    }
    Ok(RecordHeader {
        len,
        crc: le_u32(b, 8),
        prev_crc: le_u32(b, 12),
        kind,
        term: le_u64(b, 20),
        index: LogIndex(le_u64(b, 28)),
        timestamp_ms: le_u64(b, 36),
    })
}

/// The version byte of a header (checked separately so that an unknown version is reported,
/// not skipped).
pub(crate) fn header_version(b: &[u8]) -> u8 {
    b[16]
}

/// Verifies the crc of a whole record (`b` = header + payload; for a blank, the header).
pub(crate) fn check_crc(h: &RecordHeader, b: &[u8]) -> std::result::Result<(), Invalid> {
    let computed = crc32c::crc32c(&b[12..]);
    if computed != h.crc {
        return Err(Invalid::Crc {
            stored: h.crc,
            computed,
        });
    }
    Ok(())
}

/// Rejects an unknown version.
pub(crate) fn check_version(b: &[u8], file: &str, position: u64) -> Result<()> {
    let v = header_version(b);
    if v != RECORD_VERSION {
        return Err(StoreError::corrupt(
            file,
            position,
            format!("unknown record version {v}"),
        ));
    }
    Ok(())
}
