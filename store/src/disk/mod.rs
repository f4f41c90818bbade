//! The disk seam: every byte that must survive a crash goes through [`Disk`] and [`DiskFile`].
//!
//! Two implementations:
//! - [`MmapDisk`] (production): preallocated files mapped with memmap2. `sync_range` is a
//!   synchronous `msync(MS_SYNC)` of the range — never `flush_async`, which only schedules
//!   writeback and is not a durability barrier. New files and new directories are fsynced
//!   (the file, then its parent directory) before `create` returns, so a created file is
//!   never lost to a power cut once `create` has answered.
//! - [`LazyDisk`] (the chaos harness): any disk with every write kept in memory until it is
//!   synced, so a killed process loses what a power cut would.
//! - [`SimDisk`] (tests and `sim/`): in memory, outliving the simulated process that uses it,
//!   so it survives a simulated restart unchanged; on a simulated power loss it keeps only
//!   what was synced, plus a seeded random torn prefix of the last unsynced write. It spawns
//!   no thread and reads no clock, so it runs under madsim.
//!
//! Paths are relative, `/`-separated (`commitlog/00000000000000000000`); directories are
//! implicit: they exist as soon as a file is created under them.
//!
//! # To ensure correctness
//! An implementation of [`Disk`] and [`DiskFile`] must guarantee:
//! - `create` returns only when the new file (of the requested length, zero-filled) and its
//!   directory entry are durable; `remove` and `rename` return only when the change is durable.
//! - After `sync_range(off, len)` returns `Ok`, the bytes `[off, off + len)` and the file's
//!   length are durable: a power loss cannot take them back.
//! - Bytes written and not yet synced may be lost on power loss, entirely or in part; bytes
//!   written are visible to every later `read_at` at once (as with a page cache).
//! - Reads and writes outside `[0, len)` return [`DiskError::OutOfBounds`]; nothing panics
//!   on a bad offset.
//!
//! Callers guarantee in turn that a range is not read while it is being written by another
//! thread (the stores publish a written end with release/acquire ordering and read only below it).

mod lazy;
mod mmap;
mod sim;

use std::fmt::Debug;
use std::sync::Arc;

pub use lazy::LazyDisk;
pub use mmap::MmapDisk;
pub use sim::SimDisk;

/// The page size sequential writers pad their writes to (see [`Disk::create_sequential`]).
pub const PAGE_BYTES: u64 = 4096;

/// Errors from the disk seam.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An I/O error from the operating system.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A read or write past the end of a file.
    #[error("{path}: access [{offset}, +{len}) is outside the file's {file_len} bytes")]
    OutOfBounds {
        path: String,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    /// `create` of a file that exists, or `open` of one that does not.
    #[error("{path}: {what}")]
    Exists { path: String, what: &'static str },
    /// A path that is empty, absolute, or climbs out of the root.
    #[error("invalid path {path:?}")]
    InvalidPath { path: String },
}

/// A directory of files with durable create / remove. See the module docs for the contract.
pub trait Disk: Send + Sync + Debug + 'static {
    /// Creates a new zero-filled file of `len` bytes; durable when it returns.
    fn create(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError>;
    /// [`Disk::create`] for a file its owner fills front to back with writes that each end
    /// on a [`PAGE_BYTES`] boundary (padded with zeros: the CommitLog), so a write never needs
    /// what the file held before within its pages. The zeros may then bypass the page cache.
    fn create_sequential(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        self.create(path, len)
    }
    /// Opens an existing file.
    fn open(&self, path: &str) -> Result<Arc<dyn DiskFile>, DiskError>;
    /// Whether a file exists at `path`.
    fn exists(&self, path: &str) -> bool;
    /// Removes a file; durable when it returns. Removing a missing file is an error.
    fn remove(&self, path: &str) -> Result<(), DiskError>;
    /// Renames a file, replacing nothing (the target must not exist); durable when it
    /// returns. Handles opened at the old path must not be used afterwards.
    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError>;
    /// The names (not paths) of the files directly under `dir`, sorted. A missing directory
    /// lists as empty.
    fn list(&self, dir: &str) -> Result<Vec<String>, DiskError>;
    /// The names of the directories directly under `dir` (empty string: the root), sorted.
    fn list_dirs(&self, dir: &str) -> Result<Vec<String>, DiskError>;
}

/// One open file. See the module docs for the contract.
pub trait DiskFile: Send + Sync + Debug + 'static {
    /// The path this file was opened at, for error messages.
    fn path(&self) -> &str;
    /// The current length in bytes.
    fn len(&self) -> u64;
    /// Whether the file has length zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes `data` at `offset`; `offset + data.len()` must be within the file.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Writes `data` at `offset`, as `write_at` does (same contract), for the many small
    /// writes of an index that is synced rarely (IndexFile slots and entries, ConsumeQueue
    /// and Raft-index runs): the production disk copies into the mapping, with no system
    /// call. A `pwrite` into a large page-cache folio walks every block of the folio
    /// (`ext4_block_write_begin`), which made three 4–20-byte IndexFile writes per message
    /// cost more than the message; a store into the mapping pays one page fault per page
    /// after each sync instead. Logs synced on every append keep `write_at` (see
    /// docs/storage.md), and so does the MetaStore: redb commits when it is dropped, which in a
    /// process that restarts a replica in place can come after the next incarnation shrank the
    /// file — a store into the mapping past the end of the file is a SIGBUS. A caller must
    /// never store past the end of a file another handle may shrink. The default is
    /// `write_at`.
    fn store_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.write_at(offset, data)
    }
    /// Writes the slices back to back from `offset`, as one write where the platform allows
    /// (no copy into a staging buffer). The default writes them one by one.
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<(), DiskError> {
        let mut at = offset;
        for b in bufs {
            self.write_at(at, b)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Fills `buf` from `offset`; `offset + buf.len()` must be within the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Makes `[offset, offset + len)` and the file length durable.
    fn sync_range(&self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Makes the whole file durable.
    fn sync_all(&self) -> Result<(), DiskError> {
        self.sync_range(0, self.len())
    }
    /// Truncates or extends (with zeros) the file to `len`; durable after the next sync.
    fn set_len(&self, len: u64) -> Result<(), DiskError>;
}

/// Checks a relative path: non-empty, no leading `/`, no `.` or `..` components.
pub(crate) fn check_path(path: &str) -> Result<(), DiskError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(DiskError::InvalidPath {
            path: path.to_string(),
        });
    }
    Ok(())
}

/// Checks that `[offset, offset + len)` lies within a file of `file_len` bytes.
pub(crate) fn check_bounds(
    path: &str,
    offset: u64,
    len: u64,
    file_len: u64,
) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(DiskError::OutOfBounds {
            path: path.to_string(),
            offset,
            len,
            file_len,
        }),
    }
}

#[cfg(test)]
mod tests;
