//! Store configuration, validated before anything is opened.

use crate::commitlog::record::{HEADER_LEN, RECORD_MAX};
use crate::entryfile::PER_FILE_MAX;
use crate::error::{Result, StoreError};
use crate::indexfile::{ENTRIES_MAX, SLOTS_MAX};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// After the appended range is synced (group commit: one sync covers every append that
    /// arrived while the previous sync ran). RocketMQ's `SYNC_FLUSH`.
    Sync,
    /// After the write; a background sync runs every `flush_interval_ms`. A power loss can
    /// lose the unsynced tail. RocketMQ's `ASYNC_FLUSH`.
    Async,
}

/// Everything the store needs to know. Every replica of a group must use the same
/// `segment_bytes` (positions must agree); the other fields are local.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes per CommitLog segment (default 1 GiB).
    pub segment_bytes: u64,
    /// Largest record the CommitLog accepts (default 8 MiB); a record must fit in a segment
    /// with room for the closing blank.
    pub max_record_bytes: u64,
    /// Raft index entries per file (default 1 Mi).
    pub raft_index_per_file: u64,
    /// ConsumeQueue entries per file (default 300 000, as RocketMQ).
    pub cq_per_file: u64,
    /// IndexFile hash slots per file (default 5 M).
    pub index_slots: u32,
    /// IndexFile entries per file (default 20 M).
    pub index_max_entries: u32,
    /// When appends are acknowledged.
    pub flush_mode: FlushMode,
    /// Background sync period in `Async` mode (default 500 ms).
    pub flush_interval_ms: u64,
    /// Segments older than this are deleted once applied (default 72 h).
    pub file_reserved_time_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            max_record_bytes: 8 << 20,
            raft_index_per_file: 1 << 20,
            cq_per_file: 300_000,
            index_slots: 5_000_000,
            index_max_entries: 20_000_000,
            flush_mode: FlushMode::Sync,
            flush_interval_ms: 500,
            file_reserved_time_ms: 72 * 3600 * 1000,
        }
    }
}

impl StoreConfig {
    /// Small files for tests: 64 KiB segments, tiny index files.
    pub fn for_tests() -> Self {
        Self {
            segment_bytes: 64 * 1024,
            max_record_bytes: 16 * 1024,
            raft_index_per_file: 256,
            cq_per_file: 128,
            index_slots: 64,
            index_max_entries: 512,
            ..Self::default()
        }
    }

    /// Checks that the configuration can work; errors carry the numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(StoreError::Config(msg));
        if self.max_record_bytes < HEADER_LEN as u64 || self.max_record_bytes > RECORD_MAX as u64 {
            return bad(format!(
                "max_record_bytes {} not in {HEADER_LEN}..={RECORD_MAX}",
                self.max_record_bytes
            ));
        }
        if self.segment_bytes < self.max_record_bytes + HEADER_LEN as u64 {
            return bad(format!(
                "segment_bytes {} must hold max_record_bytes {} plus a {HEADER_LEN}-byte blank",
                self.segment_bytes, self.max_record_bytes
            ));
        }
        for (name, v) in [
            ("raft_index_per_file", self.raft_index_per_file),
            ("cq_per_file", self.cq_per_file),
        ] {
            if v == 0 || v > PER_FILE_MAX {
                return bad(format!("{name} {v} not in 1..={PER_FILE_MAX}"));
            }
        }
        if self.index_slots == 0 || self.index_slots > SLOTS_MAX {
            return bad(format!(
                "index_slots {} not in 1..={SLOTS_MAX}",
                self.index_slots
            ));
        }
        if self.index_max_entries == 0 || self.index_max_entries > ENTRIES_MAX {
            return bad(format!(
                "index_max_entries {} not in 1..={ENTRIES_MAX}",
                self.index_max_entries
            ));
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms must be positive".into());
        }
        Ok(())
    }
}
