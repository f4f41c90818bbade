//! [`LazyDisk`]: a disk that keeps every write in memory until it is synced, so that killing
//! the process loses exactly what a power cut would. For the chaos harness only: a broker
//! started with `--lazy-disk` (a hidden flag) runs on it, and its SIGKILL then stands for a
//! power loss of its machine — which a real kernel's page cache, surviving a process kill,
//! hides.
//!
//! Each file's unsynced state is an overlay on the real file: written ranges (non-overlapping,
//! the newest bytes win) and, after `set_len`, the pending length. Reads see the overlay on
//! top of the file (as a page cache would); `sync_range` writes the overlay's bytes within the
//! range — only those — and the pending length to the real file, then syncs it there, so what
//! is durable on the real disk is exactly what the store synced. Creating, removing and
//! renaming are durable at once on the real disk, as the contract says; a rename carries the
//! file's overlay along, a removal drops it.
//!
//! A write torn by the power cut: a sync killed part-way through its writes leaves part of
//! them on disk, as a torn write does. No other part of an unsynced write survives (a real
//! disk might also have written back some dirty pages early: recovery handles that as a torn
//! tail too, but this disk does not produce it).
//!
//! Overlays are shared by every handle of a path (the store opens some files more than once).
//! Memory grows with what is written between syncs; the CommitLog syncs continually, the
//! indexes at checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, DiskError, DiskFile, check_bounds};

/// A disk whose unsynced writes live only in this process's memory. See the module docs.
#[derive(Debug, Clone)]
pub struct LazyDisk {
    inner: Arc<dyn Disk>,
    overlays: Arc<Mutex<HashMap<String, Arc<Mutex<Overlay>>>>>,
}

/// The unsynced state of one file.
#[derive(Debug, Default)]
struct Overlay {
    /// Start → bytes of unsynced writes; ranges never overlap.
    writes: BTreeMap<u64, Vec<u8>>,
    /// The length readers see, if `set_len` changed it since the last sync.
    len: Option<u64>,
}

impl Overlay {
    /// Records `data` at `offset`, over whatever unsynced bytes were there.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cut(offset, end);
        self.writes.insert(offset, data.to_vec());
    }

    /// Removes `[from, to)` from the unsynced writes, keeping what lies outside it.
    fn cut(&mut self, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        let mut taken = Vec::new();
        // Every write that may overlap starts before `to`; the one starting at or before
        // `from` may reach into it.
        let first = self
            .writes
            .range(..=from)
            .next_back()
            .map_or(from, |(s, _)| *s);
        let starts: Vec<u64> = self.writes.range(first..to).map(|(s, _)| *s).collect();
        for s in starts {
            let bytes = self.writes.remove(&s).expect("listed");
            let e = s + bytes.len() as u64;
            if e <= from {
                self.writes.insert(s, bytes);
                continue;
            }
            let lo = from.max(s);
            let hi = to.min(e);
            if s < lo {
                self.writes.insert(s, bytes[..(lo - s) as usize].to_vec());
            }
            if hi < e {
                self.writes.insert(hi, bytes[(hi - s) as usize..].to_vec());
            }
            taken.push((lo, bytes[(lo - s) as usize..(hi - s) as usize].to_vec()));
        }
        taken
    }

    /// Lays the unsynced bytes within `[offset, offset + buf.len())` over `buf`.
    fn overlay_onto(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self
            .writes
            .range(..=offset)
            .next_back()
            .map_or(offset, |(s, _)| *s);
        for (&s, bytes) in self.writes.range(first..end) {
            let e = s + bytes.len() as u64;
            let lo = offset.max(s);
            let hi = end.min(e);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - s) as usize..(hi - s) as usize]);
            }
        }
    }
}

impl LazyDisk {
    /// `inner` with every write kept in memory until synced.
    pub fn new(inner: Arc<dyn Disk>) -> Self {
        LazyDisk {
            inner,
            overlays: Arc::default(),
        }
    }

    fn overlays(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Overlay>>>> {
        self.overlays
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    fn wrap(&self, path: &str, file: Arc<dyn DiskFile>, fresh: bool) -> Arc<dyn DiskFile> {
        let overlay = {
            let mut all = self.overlays();
            if fresh {
                all.remove(path);
            }
            all.entry(path.to_string()).or_default().clone()
        };
        Arc::new(LazyFile { file, overlay })
    }
}

impl Disk for LazyDisk {
    fn create(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        let f = self.inner.create(path, len)?;
        Ok(self.wrap(path, f, true))
    }

    fn create_sequential(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        let f = self.inner.create_sequential(path, len)?;
        Ok(self.wrap(path, f, true))
    }

    fn open(&self, path: &str) -> Result<Arc<dyn DiskFile>, DiskError> {
        let f = self.inner.open(path)?;
        Ok(self.wrap(path, f, false))
    }

    fn exists(&self, path: &str) -> bool {
        self.inner.exists(path)
    }

    fn remove(&self, path: &str) -> Result<(), DiskError> {
        self.inner.remove(path)?;
        self.overlays().remove(path);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        self.inner.rename(from, to)?;
        let mut all = self.overlays();
        if let Some(o) = all.remove(from) {
            all.insert(to.to_string(), o);
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        self.inner.list(dir)
    }

    fn list_dirs(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        self.inner.list_dirs(dir)
    }
}

/// A file of a [`LazyDisk`].
#[derive(Debug)]
struct LazyFile {
    file: Arc<dyn DiskFile>,
    overlay: Arc<Mutex<Overlay>>,
}

impl LazyFile {
    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }
}

impl DiskFile for LazyFile {
    fn path(&self) -> &str {
        self.file.path()
    }

    fn len(&self) -> u64 {
        self.overlay().len.unwrap_or_else(|| self.file.len())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let mut o = self.overlay();
        let len = o.len.unwrap_or_else(|| self.file.len());
        check_bounds(self.path(), offset, data.len() as u64, len)?;
        o.write(offset, data);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let o = self.overlay();
        let len = o.len.unwrap_or_else(|| self.file.len());
        check_bounds(self.path(), offset, buf.len() as u64, len)?;
        // What the real file holds under the range (zeros past its end: a pending extension).
        let on_disk = self.file.len();
        let end = offset + buf.len() as u64;
        let real_end = end.min(on_disk);
        if offset < real_end {
            self.file
                .read_at(offset, &mut buf[..(real_end - offset) as usize])?;
        }
        if real_end < end {
            let from = real_end.saturating_sub(offset) as usize;
            buf[from..].fill(0);
        }
        o.overlay_onto(offset, buf);
        Ok(())
    }

    fn sync_range(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let mut o = self.overlay();
        let file_len = o.len.unwrap_or_else(|| self.file.len());
        check_bounds(self.path(), offset, len, file_len)?;
        if let Some(new_len) = o.len.take() {
            self.file.set_len(new_len)?;
        }
        for (at, bytes) in o.cut(offset, offset + len) {
            self.file.write_at(at, &bytes)?;
        }
        self.file.sync_range(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        let mut o = self.overlay();
        let current = o.len.unwrap_or_else(|| self.file.len());
        if len < current {
            // Unsynced bytes past the new end are gone.
            o.cut(len, u64::MAX);
        }
        o.len = Some(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_writes_replace_older_bytes_and_cuts_split_them() {
        let mut o = Overlay::default();
        o.write(10, b"aaaaaaaaaa"); // [10, 20)
        o.write(15, b"bbbbbbbbbb"); // [15, 25)
        o.write(5, b"cc"); // [5, 7)
        let mut buf = [b'.'; 22];
        o.overlay_onto(4, &mut buf);
        assert_eq!(&buf, b".cc...aaaaabbbbbbbbbb.");
        let taken = o.cut(12, 17);
        assert_eq!(
            taken,
            vec![(12, b"aaa".to_vec()), (15, b"bb".to_vec())],
            "the cut range, in order"
        );
        let mut buf = [b'.'; 22];
        o.overlay_onto(4, &mut buf);
        assert_eq!(&buf, b".cc...aa.....bbbbbbbb.");
    }
}
