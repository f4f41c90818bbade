//! [`MmapDisk`]: the production disk. Files are preallocated and memory-mapped (memmap2);
//! `write_at` is a `pwrite`, `store_at` and `read_at` copy into and out of the mapping,
//! `sync_range` is a synchronous `msync` of the range.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use memmap2::MmapRaw;

use super::{Disk, DiskError, DiskFile, check_bounds, check_path};

/// A directory on the real file system; see the module docs of [`crate::disk`].
#[derive(Debug)]
pub struct MmapDisk {
    root: PathBuf,
}

impl MmapDisk {
    /// Opens (creating if needed, durably) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DiskError> {
        let root = root.into();
        create_dirs_durably(&root)?;
        Ok(Self { root })
    }

    fn full(&self, path: &str) -> Result<PathBuf, DiskError> {
        check_path(path)?;
        Ok(self.root.join(path))
    }

    /// `create`; `sequential` zero-fills with direct I/O where the file system allows it.
    fn create_with(
        &self,
        path: &str,
        len: u64,
        sequential: bool,
    ) -> Result<Arc<dyn DiskFile>, DiskError> {
        let full = self.full(path)?;
        if let Some(parent) = full.parent() {
            create_dirs_durably(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&full)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    DiskError::Exists {
                        path: path.to_string(),
                        what: "already exists",
                    }
                } else {
                    io("create", &full)(e)
                }
            })?;
        file.set_len(len).map_err(io("set_len", &full))?;
        reserve(&file, len);
        let direct = sequential && zero_fill_direct(&full, len).map_err(io("zero-fill", &full))?;
        if !direct {
            zero_fill(&file, len).map_err(io("zero-fill", &full))?;
        }
        file.sync_all().map_err(io("fsync", &full))?;
        sync_parent(&full)?;
        Ok(Arc::new(MmapFile::new(path, file, len)?))
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.display().to_string();
    move |source| DiskError::Io { op, path, source }
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent so the new
/// entries survive a power loss.
fn create_dirs_durably(dir: &Path) -> Result<(), DiskError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dirs_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io("mkdir", dir)(e)),
    }
    sync_parent(dir)
}

fn sync_parent(path: &Path) -> Result<(), DiskError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync dir", parent))
}

impl Disk for MmapDisk {
    fn create(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        self.create_with(path, len, false)
    }

    fn create_sequential(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        self.create_with(path, len, true)
    }

    fn open(&self, path: &str) -> Result<Arc<dyn DiskFile>, DiskError> {
        let full = self.full(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&full)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    DiskError::Exists {
                        path: path.to_string(),
                        what: "does not exist",
                    }
                } else {
                    io("open", &full)(e)
                }
            })?;
        let len = file.metadata().map_err(io("stat", &full))?.len();
        Ok(Arc::new(MmapFile::new(path, file, len)?))
    }

    fn exists(&self, path: &str) -> bool {
        self.full(path).map(|p| p.is_file()).unwrap_or(false)
    }

    fn remove(&self, path: &str) -> Result<(), DiskError> {
        let full = self.full(path)?;
        std::fs::remove_file(&full).map_err(io("remove", &full))?;
        sync_parent(&full)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        let (src, dst) = (self.full(from)?, self.full(to)?);
        if dst.exists() {
            return Err(DiskError::Exists {
                path: to.to_string(),
                what: "already exists",
            });
        }
        if let Some(parent) = dst.parent() {
            create_dirs_durably(parent)?;
        }
        std::fs::rename(&src, &dst).map_err(io("rename", &src))?;
        sync_parent(&dst)?;
        if src.parent() != dst.parent() {
            sync_parent(&src)?;
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        self.list_kind(dir, false)
    }

    fn list_dirs(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        self.list_kind(dir, true)
    }
}

impl MmapDisk {
    fn list_kind(&self, dir: &str, dirs: bool) -> Result<Vec<String>, DiskError> {
        let full = if dir.is_empty() {
            self.root.clone()
        } else {
            self.full(dir)?
        };
        let entries = match std::fs::read_dir(&full) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("readdir", &full)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("readdir", &full))?;
            let is_dir = entry.file_type().map_err(io("stat", &full))?.is_dir();
            if is_dir != dirs {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Reserves a new file's blocks (`fallocate`, best effort). Blocks that `fallocate` merely
/// reserves are "unwritten extents": the first write to each turns it into a written one, a
/// metadata change that makes every `msync` commit the file-system journal (a full fsync's
/// cost). So every new file is then zero-filled: later writes are pure overwrites, and a
/// sync is a data-only flush.
fn reserve(file: &File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if len > 0 {
            // SAFETY: plain syscall on an fd we own; no memory is passed.
            let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

/// Writes zeros over a new file through the page cache.
fn zero_fill(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    // Zeros go out in chunks, each written back before the next, so a segment prepared in
    // the background never queues a gigabyte of writeback in front of a foreground sync.
    const CHUNK: u64 = 8 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut at = 0;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        write_back(file, at, n as u64)?;
        at += n as u64;
    }
    Ok(())
}

/// Writes zeros over a new file with direct I/O (`O_DIRECT`), leaving nothing in the page
/// cache. Through the page cache, zero-filling a 256 MiB segment cost as much CPU as writing
/// the messages into it (every page allocated, copied into and written back twice); direct
/// I/O hands the device a zero buffer and costs about a tenth. The price: the file's pages
/// are not cached, so a write that covers only part of a page makes the kernel read the page
/// first — hence only for files whose writes end on page boundaries
/// ([`Disk::create_sequential`]). `Ok(false)`: the file system refuses direct I/O (tmpfs);
/// the caller zero-fills through the page cache.
fn zero_fill_direct(path: &Path, len: u64) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        // Small chunks: a sync of the live segment waits behind at most one of them.
        const CHUNK: usize = 1 << 20;
        const ALIGN: usize = 4096;
        if !len.is_multiple_of(ALIGN as u64) {
            return Ok(false);
        }
        let file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(e),
        };
        // Direct I/O needs a buffer aligned to the device's block: take an aligned window
        // of a larger zeroed vector.
        let backing = vec![0u8; CHUNK + ALIGN];
        let skip = backing.as_ptr().align_offset(ALIGN);
        let zeros = &backing[skip..skip + CHUNK];
        let mut at = 0u64;
        while at < len {
            let n = CHUNK.min((len - at) as usize);
            match file.write_all_at(&zeros[..n], at) {
                Ok(()) => {}
                Err(e) if at == 0 && e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
                Err(e) => return Err(e),
            }
            at += n as u64;
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, len);
        Ok(false)
    }
}

/// Starts and waits for the writeback of a range (no metadata, no cache flush: `fsync`
/// afterwards makes it durable).
fn write_back(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: plain syscall on an fd we own; no memory is passed.
        let r = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                flags,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    Ok(())
}

#[derive(Debug)]
struct MmapFile {
    path: String,
    file: File,
    /// The mapping; `None` while the file is empty (a zero-length map is not allowed).
    /// A lock because `set_len` replaces the mapping: readers and writers hold the read side
    /// only for the copy (no await, no I/O while holding it), `set_len` takes the write side.
    map: RwLock<Option<MmapRaw>>,
    len: AtomicU64,
    /// Set by `set_len`: the next sync must also persist the file size (fdatasync).
    len_dirty: AtomicBool,
}

impl MmapFile {
    fn new(path: &str, file: File, len: u64) -> Result<Self, DiskError> {
        let map = Self::map(path, &file, len)?;
        Ok(Self {
            path: path.to_string(),
            file,
            map: RwLock::new(map),
            len: AtomicU64::new(len),
            len_dirty: AtomicBool::new(false),
        })
    }

    fn map(path: &str, file: &File, len: u64) -> Result<Option<MmapRaw>, DiskError> {
        if len == 0 {
            return Ok(None);
        }
        MmapRaw::map_raw(file)
            .map(Some)
            .map_err(|source| DiskError::Io {
                op: "mmap",
                path: path.to_string(),
                source,
            })
    }

    /// The mapping, read-locked, once `[offset, offset + len)` is checked to lie within it
    /// (the lock keeps `set_len` from replacing it meanwhile).
    fn mapped(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<std::sync::RwLockReadGuard<'_, Option<MmapRaw>>, DiskError> {
        let map = self
            .map
            .read()
            .expect("lock poisoned: a panic broke this state; see [profile.release]");
        let file_len = map.as_ref().map_or(0, |m| m.len() as u64);
        check_bounds(&self.path, offset, len, file_len)?;
        Ok(map)
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
        move |source| DiskError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

impl DiskFile for MmapFile {
    fn path(&self) -> &str {
        &self.path
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        use std::os::unix::fs::FileExt;
        let _map = self.mapped(offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(self.io_err("pwrite"))
    }

    fn store_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let map = self.mapped(offset, data.len() as u64)?;
        if let Some(m) = map.as_ref() {
            // SAFETY: bounds checked above against the live mapping, which cannot be replaced
            // while we hold the read lock; callers never read a range while another thread
            // writes it (module contract), and `data` is a separate borrow, so the ranges
            // cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    m.as_mut_ptr().add(offset as usize),
                    data.len(),
                );
            }
        }
        Ok(())
    }

    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<(), DiskError> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        drop(self.mapped(offset, total)?);
        pwritev_all(&self.file, offset, bufs).map_err(self.io_err("pwritev"))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let map = self.mapped(offset, buf.len() as u64)?;
        if let Some(m) = map.as_ref() {
            // SAFETY: as in `store_at`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    m.as_ptr().add(offset as usize),
                    buf.as_mut_ptr(),
                    buf.len(),
                );
            }
        }
        Ok(())
    }

    fn sync_range(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.len_dirty.swap(false, Ordering::AcqRel) {
            // The size changed: msync does not persist metadata, fdatasync does (and it also
            // covers every dirty page of the file).
            if let Err(e) = self.file.sync_data() {
                self.len_dirty.store(true, Ordering::Release);
                return Err(self.io_err("fdatasync")(e));
            }
            return Ok(());
        }
        let map = self.mapped(offset, len)?;
        match map.as_ref() {
            // Synchronous msync(MS_SYNC): a durability barrier for the range.
            Some(m) if len > 0 => m
                .flush_range(offset as usize, len as usize)
                .map_err(self.io_err("msync")),
            _ => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        let mut map = self
            .map
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]");
        *map = None;
        self.file.set_len(len).map_err(self.io_err("set_len"))?;
        *map = Self::map(&self.path, &self.file, len)?;
        self.len.store(len, Ordering::Release);
        self.len_dirty.store(true, Ordering::Release);
        Ok(())
    }
}

/// `pwritev` until every byte is written (short writes continue where they stopped), at
/// most `IOV_MAX` slices per call.
fn pwritev_all(file: &File, mut offset: u64, bufs: &[&[u8]]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const IOV_MAX: usize = 1024;
    let mut bufs: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut first = 0;
    while first < bufs.len() {
        let batch = &bufs[first..bufs.len().min(first + IOV_MAX)];
        let iov: Vec<libc::iovec> = batch
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: every iovec points into a live slice borrowed for this call; the kernel only
        // reads from them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut left = n as usize;
        offset += left as u64;
        // Skip what was written: whole slices, then the written prefix of a partial one.
        while left > 0 {
            let len = bufs[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                bufs[first] = &bufs[first][left..];
                left = 0;
            }
        }
    }
    Ok(())
}
