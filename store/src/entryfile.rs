//! Fixed-width entry files: the shared engine of the Raft index and the ConsumeQueue.
//!
//! Entry `n` lives in file `<dir>/<20-digit k × per_file>` with `k = n / per_file`, at byte
//! `HEADER_LEN + (n % per_file) × ENTRY_LEN`. Which entries are valid (`[first, end)`) is
//! not stored in these files: the owner recovers it from the checkpoint and the CommitLog
//! (both structures are derived from the CommitLog), so a torn entry past the recovered end
//! is simply overwritten.
//!
//! Appends are buffered: the newest entries (at most [`PENDING_MAX`] bytes, never across a
//! file boundary) wait in memory and go out in one write when the buffer fills, before a
//! sync, a purge, a roll to the next file, or a [`publish`](EntryFiles::publish). One
//! `pwrite` per 20-byte entry cost a system call per message on the apply path; the buffer
//! makes it one per apply batch, and that write is a copy into the mapping
//! ([`DiskFile::store_at`](crate::disk::DiskFile::store_at)). The owner's reads see the buffer, and losing it in a crash
//! loses nothing the owner does not rebuild.
//!
//! # Readers off the writer's lock
//! An [`EntryReader`] reads the *published* range `[first, end)` without the owner: only
//! entries already written to their file are published (`publish` writes the buffer first,
//! then raises `end` with release ordering; a reader loads it with acquire). A purge raises
//! `first` before it removes files, a truncation lowers `end` before it does; a reader checks
//! the range again after its read, so an entry it returns was in the published range for the
//! whole read. The file map readers use is behind a `RwLock` held only to clone one `Arc`.
//!
//! # File header (version 1, little-endian)
//!
//! | offset | size | field                                      |
//! |--------|------|--------------------------------------------|
//! | 0      | 4    | `magic` (per owner: `"RMQR"` Raft index, `"RMQQ"` ConsumeQueue) |
//! | 4      | 1    | `version` = 1                               |
//! | 5      | 1    | reserved, zero                              |
//! | 6      | 2    | `entry_len` = 20                            |
//! | 8      | 8    | `first`: number of the file's first entry    |
//! | 16     | 8    | `per_file`: entries in the file              |
//! | 24     | 4    | `crc`: CRC32C of bytes `[0, 24)`             |
//! | 28     | 4    | reserved, zero                              |
//! | 32     | …    | `per_file` entries of 20 bytes               |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::codec::{PutLe, le_u32, le_u64};
use crate::disk::{Disk, DiskFile};
use crate::error::{Result, StoreError};

/// Bytes per entry.
pub const ENTRY_LEN: usize = 20;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 32;
const VERSION: u8 = 1;
/// Largest `per_file` accepted from a header (64 Mi entries, 1.25 GiB).
pub const PER_FILE_MAX: u64 = 64 * 1024 * 1024;

/// One 20-byte entry.
pub type Entry = [u8; ENTRY_LEN];
/// Bytes of appended entries held in memory before they are written out.
pub const PENDING_MAX: usize = 64 << 10;

/// The smallest `n` in `[lo, hi)` for which the monotonic `pred(n)` holds (false…false
/// true…true); `hi` if none.
fn partition_point(
    mut lo: u64,
    mut hi: u64,
    mut pred: impl FnMut(u64) -> Result<bool>,
) -> Result<u64> {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Both users of entry files store the same shape, `position u64 | len u32 | extra u64`
/// (the extra is a term or a tag hash): one packing for both.
pub(crate) fn pack(position: u64, len: u32, extra: u64) -> Entry {
    let mut e = [0u8; ENTRY_LEN];
    e[0..8].copy_from_slice(&position.to_le_bytes());
    e[8..12].copy_from_slice(&len.to_le_bytes());
    e[12..20].copy_from_slice(&extra.to_le_bytes());
    e
}

/// Inverse of [`pack`].
pub(crate) fn unpack(e: &Entry) -> (u64, u32, u64) {
    (le_u64(e, 0), le_u32(e, 8), le_u64(e, 12))
}

/// A set of entry files in one directory; see the module docs.
#[derive(Debug)]
pub struct EntryFiles {
    disk: Arc<dyn Disk>,
    dir: String,
    magic: u32,
    per_file: u64,
    files: BTreeMap<u64, Arc<dyn DiskFile>>,
    first: u64,
    end: u64,
    synced_end: u64,
    /// Entries `[pending_from, end)`, appended and not yet written (all in one file).
    pending: Vec<u8>,
    pending_from: u64,
    /// What readers see (see the module docs).
    published: Arc<Published>,
}

/// The range and files readers may use, published by the owner.
#[derive(Debug)]
struct Published {
    dir: String,
    per_file: u64,
    first: AtomicU64,
    end: AtomicU64,
    files: RwLock<BTreeMap<u64, Arc<dyn DiskFile>>>,
}

impl Published {
    fn files(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<dyn DiskFile>>> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.files
            .read()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    fn files_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<dyn DiskFile>>> {
        self.files
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }
}

/// A read handle on the published entries of an [`EntryFiles`] (see the module docs).
#[derive(Debug, Clone)]
pub struct EntryReader {
    published: Arc<Published>,
}

impl EntryReader {
    /// First published entry number.
    pub fn first(&self) -> u64 {
        self.published.first.load(Ordering::Acquire)
    }

    /// One past the last published entry number.
    pub fn end(&self) -> u64 {
        self.published.end.load(Ordering::Acquire)
    }

    fn out_of_range(&self, n: u64) -> StoreError {
        StoreError::OutOfRange {
            what: "entry",
            value: n,
            first: self.first(),
            end: self.end(),
        }
    }

    /// Reads entry `n`, which must be published (in `[first, end)`) before and after the read.
    pub fn get(&self, n: u64) -> Result<Entry> {
        let p = &self.published;
        if n < self.first() || n >= self.end() {
            return Err(self.out_of_range(n));
        }
        let start = n / p.per_file * p.per_file;
        let at = HEADER_LEN as u64 + (n - start) * ENTRY_LEN as u64;
        let file = p.files().get(&start).cloned();
        let mut e = [0u8; ENTRY_LEN];
        let read = match file {
            Some(f) => f.read_at(at, &mut e).map_err(StoreError::from),
            None => Err(StoreError::corrupt(
                format!("{}/{start:020}", p.dir),
                0,
                "entry file missing",
            )),
        };
        // Purged or truncated while we read: out of range, whatever the read gave.
        if n < self.first() || n >= self.end() {
            return Err(self.out_of_range(n));
        }
        read.map(|()| e)
    }

    /// The smallest published `n` for which the monotonic `pred(n)` holds; `end` if none.
    pub fn partition_point(&self, pred: impl FnMut(u64) -> Result<bool>) -> Result<u64> {
        partition_point(self.first(), self.end(), pred)
    }
}

fn encode_header(magic: u32, first: u64, per_file: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    b.put_u32(magic);
    b.put_u8(VERSION);
    b.put_u8(0);
    b.put_u16(ENTRY_LEN as u16);
    b.put_u64(first);
    b.put_u64(per_file);
    let crc = crc32c::crc32c(&b);
    b.put_u32(crc);
    b.put_u32(0);
    b
}

impl EntryFiles {
    /// Opens the files under `dir` with the valid range `[first, end)` as recovered by the
    /// owner. Files wholly past `end` are removed (they hold only entries written after the
    /// last checkpoint, which the owner rebuilds); a file whose header does not verify is
    /// corruption.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &str,
        magic: u32,
        per_file: u64,
        first: u64,
        end: u64,
    ) -> Result<Self> {
        if per_file == 0 || per_file > PER_FILE_MAX {
            return Err(StoreError::Config(format!(
                "entries per file {per_file} not in 1..={PER_FILE_MAX}"
            )));
        }
        let mut files = BTreeMap::new();
        for name in disk.list(dir)? {
            let path = format!("{dir}/{name}");
            let start: u64 = match (name.len() == 20).then(|| name.parse().ok()).flatten() {
                Some(s) => s,
                None => return Err(StoreError::corrupt(path, 0, "unexpected file")),
            };
            let file = disk.open(&path)?;
            let mut h = [0u8; HEADER_LEN];
            file.read_at(0, &mut h)
                .map_err(|e| StoreError::corrupt(&path, 0, format!("short header: {e}")))?;
            if le_u32(&h, 0) != magic || le_u32(&h, 24) != crc32c::crc32c(&h[..24]) {
                return Err(StoreError::corrupt(&path, 0, "bad entry-file header"));
            }
            if h[4] != VERSION || usize::from(u16::from_le_bytes([h[6], h[7]])) != ENTRY_LEN {
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    format!("unknown version {} / entry size", h[4]),
                ));
            }
            if le_u64(&h, 8) != start || le_u64(&h, 16) != per_file {
                return Err(StoreError::corrupt(
                    &path,
                    8,
                    "header does not match the file name or per_file",
                ));
            }
            if file.len() != HEADER_LEN as u64 + per_file * ENTRY_LEN as u64 {
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    format!("length {}", file.len()),
                ));
            }
            if start >= end && start > first {
                disk.remove(&path)?;
                continue;
            }
            files.insert(start, file);
        }
        // Files are created (header synced) before any entry is written to them, so no file
        // means no entry: the range is empty at its end.
        let first = match files.keys().next() {
            Some(&k) => first.max(k),
            None => first.max(end),
        };
        let end = end.max(first);
        let published = Arc::new(Published {
            dir: dir.to_string(),
            per_file,
            first: AtomicU64::new(first),
            end: AtomicU64::new(end),
            files: RwLock::new(files.clone()),
        });
        Ok(Self {
            disk,
            dir: dir.to_string(),
            magic,
            per_file,
            files,
            first,
            end,
            synced_end: end,
            pending: Vec::new(),
            pending_from: end,
            published,
        })
    }

    /// A read handle on the published entries.
    pub fn reader(&self) -> EntryReader {
        EntryReader {
            published: self.published.clone(),
        }
    }

    /// Makes every appended entry readable through [`EntryReader`]s: writes the buffer, then
    /// publishes the range.
    pub fn publish(&mut self) -> Result<()> {
        self.write_pending()?;
        self.published.first.store(self.first, Ordering::Release);
        self.published.end.store(self.end, Ordering::Release);
        Ok(())
    }

    /// Publishes a smaller range before files go: `first` up, `end` down (never the reverse:
    /// that is [`publish`](Self::publish), after the entries are written).
    fn unpublish(&self, first: u64, end: u64) {
        self.published.first.fetch_max(first, Ordering::AcqRel);
        self.published.end.fetch_min(end, Ordering::AcqRel);
    }

    fn forget_file(&mut self, start: u64) -> Result<()> {
        self.files.remove(&start);
        self.published.files_mut().remove(&start);
        self.disk.remove(&format!("{}/{start:020}", self.dir))?;
        Ok(())
    }

    /// First valid entry number.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// One past the last valid entry number.
    pub fn end(&self) -> u64 {
        self.end
    }

    fn locate(&self, n: u64) -> (u64, u64) {
        let start = n / self.per_file * self.per_file;
        (start, HEADER_LEN as u64 + (n - start) * ENTRY_LEN as u64)
    }

    /// Appends one entry (buffered, see the module docs); returns its number.
    pub fn append(&mut self, e: &Entry) -> Result<u64> {
        let n = self.end;
        let (start, _) = self.locate(n);
        if !self.pending.is_empty() && self.locate(self.pending_from).0 != start {
            self.write_pending()?;
        }
        if !self.files.contains_key(&start) {
            // A new file: its header is written and synced before any entry.
            {
                let path = format!("{}/{start:020}", self.dir);
                let len = HEADER_LEN as u64 + self.per_file * ENTRY_LEN as u64;
                let f = self.disk.create(&path, len)?;
                f.write_at(0, &encode_header(self.magic, start, self.per_file))?;
                f.sync_range(0, HEADER_LEN as u64)?;
                self.published.files_mut().insert(start, f.clone());
                self.files.insert(start, f);
            }
        }
        if self.pending.is_empty() {
            self.pending_from = n;
        }
        self.pending.extend_from_slice(e);
        self.end = n + 1;
        if self.pending.len() >= PENDING_MAX {
            self.write_pending()?;
        }
        Ok(n)
    }

    /// Writes the buffered entries to their file.
    pub fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (start, at) = self.locate(self.pending_from);
        let file = self.files.get(&start).ok_or_else(|| {
            StoreError::corrupt(format!("{}/{start:020}", self.dir), 0, "entry file missing")
        })?;
        file.store_at(at, &self.pending)?;
        self.pending.clear();
        self.pending_from = self.end;
        Ok(())
    }

    /// Reads entry `n`, which must be in `[first, end)`.
    pub fn get(&self, n: u64) -> Result<Entry> {
        if n < self.first || n >= self.end {
            return Err(StoreError::OutOfRange {
                what: "entry",
                value: n,
                first: self.first,
                end: self.end,
            });
        }
        let mut e = [0u8; ENTRY_LEN];
        if n >= self.pending_from {
            let at = (n - self.pending_from) as usize * ENTRY_LEN;
            e.copy_from_slice(&self.pending[at..at + ENTRY_LEN]);
            return Ok(e);
        }
        let (start, at) = self.locate(n);
        let file = self.files.get(&start).ok_or_else(|| {
            StoreError::corrupt(format!("{}/{start:020}", self.dir), 0, "entry file missing")
        })?;
        file.read_at(at, &mut e)?;
        Ok(e)
    }

    /// Drops every entry at or after `end`.
    pub fn truncate(&mut self, end: u64) -> Result<()> {
        if end >= self.end {
            return Ok(());
        }
        let end = end.max(self.first);
        self.unpublish(self.first, end);
        if end >= self.pending_from {
            self.pending
                .truncate((end - self.pending_from) as usize * ENTRY_LEN);
        } else {
            self.pending.clear();
        }
        if self.pending.is_empty() {
            self.pending_from = end;
        }
        let keep_from = self.locate(end).0;
        let doomed: Vec<u64> = self.files.range(keep_from + 1..).map(|(k, _)| *k).collect();
        for k in doomed {
            if k >= end {
                self.forget_file(k)?;
            }
        }
        self.end = end;
        self.synced_end = self.synced_end.min(end);
        Ok(())
    }

    /// Drops every entry before `first`, deleting files that hold only such entries.
    pub fn purge_before(&mut self, first: u64) -> Result<()> {
        if first <= self.first {
            return Ok(());
        }
        self.write_pending()?;
        let first = first.min(self.end);
        self.first = first;
        self.unpublish(first, u64::MAX);
        let keep_from = self.locate(first).0;
        let doomed: Vec<u64> = self.files.range(..keep_from).map(|(k, _)| *k).collect();
        for k in doomed {
            self.forget_file(k)?;
        }
        Ok(())
    }

    /// Makes every entry below `end` durable.
    pub fn sync(&mut self) -> Result<()> {
        self.write_pending()?;
        let mut n = self.synced_end.max(self.first);
        while n < self.end {
            let (start, at) = self.locate(n);
            let upto = self.end.min(start + self.per_file);
            if let Some(f) = self.files.get(&start) {
                f.sync_range(at, (upto - n) * ENTRY_LEN as u64)?;
            }
            n = upto;
        }
        self.synced_end = self.end;
        Ok(())
    }

    /// The smallest `n` in `[first, end)` for which `pred(n)` holds, given that `pred` is
    /// monotonic (false…false true…true); `end` if none.
    pub fn partition_point(&self, pred: impl FnMut(u64) -> Result<bool>) -> Result<u64> {
        partition_point(self.first, self.end, pred)
    }

    /// Removes every file and restarts the range, empty, at `at` (a snapshot install).
    pub fn reset(&mut self, at: u64) -> Result<()> {
        // Empty for readers first (first = end), then move the empty range to `at`.
        self.unpublish(u64::MAX, 0);
        self.published.files_mut().clear();
        for k in std::mem::take(&mut self.files).into_keys() {
            self.disk.remove(&format!("{}/{k:020}", self.dir))?;
        }
        self.first = at;
        self.end = at;
        self.synced_end = at;
        self.pending.clear();
        self.pending_from = at;
        self.published.first.store(at, Ordering::Release);
        self.published.end.store(at, Ordering::Release);
        Ok(())
    }

    /// Removes every file (the whole structure is being deleted).
    pub fn destroy(self) -> Result<()> {
        self.unpublish(u64::MAX, 0);
        self.published.files_mut().clear();
        for k in self.files.keys() {
            self.disk.remove(&format!("{}/{k:020}", self.dir))?;
        }
        Ok(())
    }
}

impl EntryFiles {
    /// Moves an empty range to start at `at` (used when a log starts past zero).
    pub fn set_empty_at(&mut self, at: u64) -> Result<()> {
        if self.first != self.end {
            return Err(StoreError::InvalidArgument(format!(
                "cannot restart a non-empty entry range [{}, {}) at {at}",
                self.first, self.end
            )));
        }
        self.unpublish(u64::MAX, 0);
        let keep = self.locate(at).0;
        let doomed: Vec<u64> = self.files.keys().copied().filter(|&k| k != keep).collect();
        for k in doomed {
            self.forget_file(k)?;
        }
        self.first = at;
        self.end = at;
        self.synced_end = at;
        self.pending.clear();
        self.pending_from = at;
        self.published.first.store(at, Ordering::Release);
        self.published.end.store(at, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;

    #[test]
    fn header_golden_bytes() {
        let h = encode_header(u32::from_le_bytes(*b"RMQQ"), 256, 128);
        let mut expected = b"RMQQ".to_vec();
        expected.extend_from_slice(&[1, 0]);
        expected.extend_from_slice(&20u16.to_le_bytes());
        expected.extend_from_slice(&256u64.to_le_bytes());
        expected.extend_from_slice(&128u64.to_le_bytes());
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.extend_from_slice(&[0; 4]);
        assert_eq!(h, expected);
        assert_eq!(h.len(), HEADER_LEN);
    }

    #[test]
    fn files_roll_truncate_purge_and_reject_bad_headers() {
        let disk = Arc::new(SimDisk::new());
        let magic = u32::from_le_bytes(*b"TEST");
        let mut f = EntryFiles::open(disk.clone(), "q", magic, 4, 0, 0).unwrap();
        for i in 0..10u8 {
            assert_eq!(f.append(&[i; ENTRY_LEN]).unwrap(), u64::from(i));
        }
        assert_eq!(disk.list("q").unwrap().len(), 3);
        assert_eq!(f.get(9).unwrap(), [9; ENTRY_LEN]);
        f.truncate(5).unwrap();
        assert_eq!(f.end(), 5);
        assert_eq!(disk.list("q").unwrap().len(), 2);
        assert!(f.get(5).is_err());
        assert_eq!(f.append(&[50; ENTRY_LEN]).unwrap(), 5);
        f.purge_before(4).unwrap();
        assert_eq!(f.first(), 4);
        assert_eq!(disk.list("q").unwrap().len(), 1);
        assert!(f.get(3).is_err());
        assert_eq!(f.partition_point(|n| Ok(f.get(n)?[0] >= 50)).unwrap(), 5);
        f.sync().unwrap();
        drop(f);
        // A damaged header is corruption, named with its file.
        disk.flip_bit("q/00000000000000000004", 9, 0).unwrap();
        let err = EntryFiles::open(disk.clone(), "q", magic, 4, 4, 6).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { ref file, .. } if file == "q/00000000000000000004"),
            "{err}"
        );
        // A wrong magic (another structure's files) is refused too.
        disk.flip_bit("q/00000000000000000004", 9, 0).unwrap();
        assert!(
            EntryFiles::open(disk.clone(), "q", u32::from_le_bytes(*b"OTHR"), 4, 4, 6).is_err()
        );
        // A per_file out of range is a configuration error.
        assert!(matches!(
            EntryFiles::open(disk, "q", magic, 0, 0, 0),
            Err(StoreError::Config(_))
        ));
    }

    fn entry(n: u64) -> Entry {
        pack(n * 100, n as u32, n)
    }

    #[test]
    fn buffered_appends_are_read_truncated_and_written_at_sync() {
        let disk = Arc::new(SimDisk::new());
        let magic = u32::from_le_bytes(*b"TEST");
        let per_file = 10_000;
        let mut f = EntryFiles::open(disk.clone(), "q", magic, per_file, 0, 0).unwrap();
        // More than a buffer's worth, across a file boundary.
        let n = per_file + (PENDING_MAX / ENTRY_LEN) as u64 + 7;
        for i in 0..n {
            assert_eq!(f.append(&entry(i)).unwrap(), i);
        }
        for i in (0..n).step_by(97).chain([n - 1]) {
            assert_eq!(f.get(i).unwrap(), entry(i), "entry {i}");
        }
        // Truncate inside the buffer, then inside the files; appends continue from there.
        f.truncate(n - 3).unwrap();
        assert!(f.get(n - 3).is_err());
        assert_eq!(f.append(&entry(1_000_000)).unwrap(), n - 3);
        assert_eq!(f.get(n - 3).unwrap(), entry(1_000_000));
        f.truncate(per_file - 5).unwrap();
        assert_eq!(f.end(), per_file - 5);
        for i in per_file - 5..per_file + 3 {
            assert_eq!(f.append(&entry(i)).unwrap(), i);
        }
        f.sync().unwrap();
        // After a power loss only synced data remains: every entry is there.
        disk.power_loss(7);
        let f = EntryFiles::open(disk, "q", magic, per_file, 0, per_file + 3).unwrap();
        for i in (0..per_file + 3).step_by(13).chain([per_file + 2]) {
            assert_eq!(f.get(i).unwrap(), entry(i), "entry {i} after reopen");
        }
    }
}
