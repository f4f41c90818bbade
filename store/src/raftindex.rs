//! The Raft index: Raft log index → (CommitLog position, record length, term), so that Raft
//! can read, truncate and purge by index without scanning the CommitLog.
//!
//! Entry `n` of the underlying [`EntryFiles`] (magic `"RMQR"`) is log index `n`:
//!
//! | offset | size | field      |
//! |--------|------|------------|
//! | 0      | 8    | `position` |
//! | 8      | 4    | `len`      |
//! | 12     | 8    | `term`     |
//!
//! The index is derived from the CommitLog: on recovery it is cut back to the checkpoint
//! and rebuilt from the records the CommitLog scan found after it.

use std::sync::Arc;

use crate::disk::Disk;
use crate::entryfile::{Entry, EntryFiles, pack, unpack};
use crate::error::{Result, StoreError};
use crate::types::{LogIndex, Position};

/// Directory of the Raft index files.
pub const DIR: &str = "raftindex";
/// `"RMQR"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQR");

/// Where one Raft entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub position: Position,
    pub len: u32,
    pub term: u64,
}

impl IndexEntry {
    fn encode(&self) -> Entry {
        pack(self.position.0, self.len, self.term)
    }

    fn decode(e: &Entry) -> Self {
        let (position, len, term) = unpack(e);
        Self {
            position: Position(position),
            len,
            term,
        }
    }
}

/// The Raft index; see the module docs.
#[derive(Debug)]
pub struct RaftIndex {
    files: EntryFiles,
}

impl RaftIndex {
    /// Opens the index holding log indexes `[first, end)`.
    pub fn open(
        disk: Arc<dyn Disk>,
        per_file: u64,
        first: LogIndex,
        end: LogIndex,
    ) -> Result<Self> {
        Ok(Self {
            files: EntryFiles::open(disk, DIR, MAGIC, per_file, first.0, end.0)?,
        })
    }

    /// Records where log index `index` lives. Indexes must be appended consecutively; the
    /// first append to an empty index may start anywhere.
    pub fn append(&mut self, index: LogIndex, entry: IndexEntry) -> Result<()> {
        if self.files.first() == self.files.end() && index.0 != self.files.end() {
            // An empty index may begin at any log index (after a purge of everything, or a
            // snapshot install).
            self.files.set_empty_at(index.0)?;
        }
        if index.0 != self.files.end() {
            return Err(StoreError::InvalidArgument(format!(
                "raft index append of {index} does not follow {}",
                self.files.end()
            )));
        }
        self.files.append(&entry.encode())?;
        Ok(())
    }

    /// Removes every file; the index restarts empty at `at` (a snapshot install).
    pub fn reset(&mut self, at: LogIndex) -> Result<()> {
        self.files.reset(at.0)
    }

    /// Where `index` lives.
    pub fn get(&self, index: LogIndex) -> Result<IndexEntry> {
        Ok(IndexEntry::decode(&self.files.get(index.0)?))
    }

    /// First index held.
    pub fn first(&self) -> LogIndex {
        LogIndex(self.files.first())
    }

    /// One past the last index held.
    pub fn end(&self) -> LogIndex {
        LogIndex(self.files.end())
    }

    /// The last index held, if any.
    pub fn last(&self) -> Option<LogIndex> {
        (self.files.end() > self.files.first()).then(|| LogIndex(self.files.end() - 1))
    }

    /// Drops every index at or after `end`.
    pub fn truncate(&mut self, end: LogIndex) -> Result<()> {
        self.files.truncate(end.0)
    }

    /// Drops every index before `first`.
    pub fn purge_before(&mut self, first: LogIndex) -> Result<()> {
        self.files.purge_before(first.0)
    }

    /// Makes every appended entry durable.
    pub fn sync(&mut self) -> Result<()> {
        self.files.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;

    #[test]
    fn entry_golden_bytes() {
        let e = IndexEntry {
            position: Position(0x0102_0304_0506_0708),
            len: 0x0A0B_0C0D,
            term: 7,
        };
        let b = e.encode();
        let mut want = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
        want.extend_from_slice(&0x0A0B_0C0Du32.to_le_bytes());
        want.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(b.to_vec(), want);
        assert_eq!(IndexEntry::decode(&b), e);
        assert_eq!(MAGIC.to_le_bytes(), *b"RMQR");
    }

    #[test]
    fn append_truncate_purge_and_start_anywhere() {
        let disk = Arc::new(SimDisk::new());
        let mut ri = RaftIndex::open(disk, 4, LogIndex(0), LogIndex(0)).unwrap();
        let e = |p| IndexEntry {
            position: Position(p),
            len: 1,
            term: 1,
        };
        // An empty index may start at any index (openraft logs start at 0 or 1, snapshots later).
        ri.append(LogIndex(5), e(50)).unwrap();
        ri.append(LogIndex(6), e(60)).unwrap();
        assert!(ri.append(LogIndex(8), e(80)).is_err(), "gaps are refused");
        assert_eq!((ri.first(), ri.last()), (LogIndex(5), Some(LogIndex(6))));
        ri.truncate(LogIndex(6)).unwrap();
        assert_eq!(ri.last(), Some(LogIndex(5)));
        ri.append(LogIndex(6), e(61)).unwrap();
        assert_eq!(ri.get(LogIndex(6)).unwrap().position, Position(61));
        ri.purge_before(LogIndex(6)).unwrap();
        assert!(ri.get(LogIndex(5)).is_err());
        assert_eq!(ri.first(), LogIndex(6));
    }
}
