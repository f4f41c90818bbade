//! [`SimDisk`]: an in-memory disk for tests and the deterministic simulator.
//!
//! Each file keeps two images: `live` (what reads see: the page cache) and `durable` (what a
//! power loss leaves). `sync_range` copies the range, and the length, from `live` into
//! `durable`. A simulated process crash loses nothing (the `SimDisk` outlives the process and
//! the page cache survives a process crash); [`SimDisk::power_loss`] resets every file to its
//! durable image, except that a seeded random prefix of the most recent unsynced write may
//! survive (a torn write).
//!
//! No thread, no clock: the randomness comes from the seed the caller passes (under madsim,
//! from the simulation's RNG), so a run replays exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Disk, DiskError, DiskFile, check_bounds, check_path};

/// An in-memory disk that can lose power; cheap to clone (clones share the files).
///
/// A clone is a *view* bound to one process incarnation: after [`SimDisk::fence`], every
/// operation through an older view (and the files opened through it) fails, as nothing a
/// killed process does can reach the disk any more — not even its destructors, which a
/// simulator may run after the kill.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<SimState>>,
    epoch: u64,
}

/// Everything behind one lock: the disk is shared by the files of one simulated node, and
/// every operation is a short copy with no await while holding it.
#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<String, SimFileData>,
    /// Identity of each file incarnation, so a handle to a removed file cannot touch a new
    /// file created at the same path.
    next_id: u64,
    /// The most recent write not yet covered by a sync: (path, id, offset, len).
    last_unsynced_write: Option<(String, u64, u64, u64)>,
    stats: SimDiskStats,
    /// Fault injection: every sync fails with an I/O error while set.
    fail_syncs: bool,
    /// The live incarnation; views with an older epoch are fenced off.
    epoch: u64,
}

#[derive(Debug, Default)]
struct SimFileData {
    id: u64,
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// Counters for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimDiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub power_losses: u64,
}

/// What a power loss did, for test diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLossReport {
    /// The torn write that partly survived: path, offset, bytes kept of bytes written.
    pub torn: Option<(String, u64, u64, u64)>,
}

impl SimDisk {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        self.inner
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    /// The state, if this view belongs to the live incarnation.
    fn live_state(&self, path: &str) -> Result<MutexGuard<'_, SimState>, DiskError> {
        let st = self.state();
        if st.epoch != self.epoch {
            return Err(DiskError::Io {
                op: "access",
                path: path.to_string(),
                source: std::io::Error::other(
                    "fenced: the process incarnation that opened this disk is dead",
                ),
            });
        }
        Ok(st)
    }

    /// Ends the current incarnation: every existing view and file handle stops working.
    /// Call it when the simulated process is killed, before restarting it.
    pub fn fence(&self) {
        self.state().epoch += 1;
    }

    /// A view for the current incarnation (what a restarted process opens).
    pub fn incarnation(&self) -> SimDisk {
        let epoch = self.state().epoch;
        SimDisk {
            inner: self.inner.clone(),
            epoch,
        }
    }

    /// Simulates a power cut: every file goes back to what was synced, and a prefix of random
    /// length (chosen from `seed`) of the last unsynced write survives on top of it.
    pub fn power_loss(&self, seed: u64) -> PowerLossReport {
        let mut st = self.state();
        st.stats.power_losses += 1;
        let last = st.last_unsynced_write.take();
        let mut torn = None;
        // Keep the torn prefix before the live images are thrown away.
        let kept = last.and_then(|(path, id, offset, len)| {
            let f = st.files.get(&path).filter(|f| f.id == id)?;
            let keep = splitmix64(seed) % (len + 1);
            let end = ((offset + keep) as usize).min(f.live.len());
            let bytes = f.live.get(offset as usize..end)?.to_vec();
            torn = Some((path.clone(), offset, bytes.len() as u64, len));
            Some((path, offset, bytes))
        });
        for f in st.files.values_mut() {
            f.live = f.durable.clone();
        }
        if let Some((path, offset, bytes)) = kept
            && let Some(f) = st.files.get_mut(&path)
        {
            let start = offset as usize;
            let end = (start + bytes.len()).min(f.live.len());
            if start < end {
                f.live[start..end].copy_from_slice(&bytes[..end - start]);
                // What survived a power loss is on the platter now.
                f.durable[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
        PowerLossReport { torn }
    }

    /// Flips one bit of a file, in both its live and durable images (media corruption).
    pub fn flip_bit(&self, path: &str, byte: u64, bit: u8) -> Result<(), DiskError> {
        let mut st = self.state();
        let f = st.files.get_mut(path).ok_or_else(|| DiskError::Exists {
            path: path.to_string(),
            what: "does not exist",
        })?;
        check_bounds(path, byte, 1, f.live.len() as u64)?;
        f.live[byte as usize] ^= 1 << (bit % 8);
        if (byte as usize) < f.durable.len() {
            f.durable[byte as usize] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// A new disk holding what this one holds durably (what a machine restarted after a power
    /// loss would find, without a torn write): a copy to damage and open, leaving this one
    /// as it was.
    pub fn durable_copy(&self) -> SimDisk {
        let st = self.state();
        let mut files = BTreeMap::new();
        for (path, f) in &st.files {
            files.insert(
                path.clone(),
                SimFileData {
                    id: f.id,
                    live: f.durable.clone(),
                    durable: f.durable.clone(),
                },
            );
        }
        SimDisk {
            inner: Arc::new(Mutex::new(SimState {
                files,
                next_id: st.next_id,
                ..SimState::default()
            })),
            epoch: 0,
        }
    }

    /// A file's durable bytes, if it exists.
    pub fn durable_bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.state().files.get(path).map(|f| f.durable.clone())
    }

    /// Replaces a file's content, live and durable, with `bytes` (media corruption, a cut
    /// tail, a file rewritten by something else).
    pub fn replace_file(&self, path: &str, bytes: &[u8]) -> Result<(), DiskError> {
        let mut st = self.state();
        let f = st.files.get_mut(path).ok_or_else(|| DiskError::Exists {
            path: path.to_string(),
            what: "does not exist",
        })?;
        f.live = bytes.to_vec();
        f.durable = bytes.to_vec();
        Ok(())
    }

    /// Makes every later sync fail with an I/O error (like EIO from fsync) until cleared.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.state().fail_syncs = fail;
    }

    /// Operation counters.
    pub fn stats(&self) -> SimDiskStats {
        self.state().stats
    }

    /// Every path on the disk, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.state().files.keys().cloned().collect()
    }
}

/// splitmix64: a tiny, well-mixed PRNG step; enough to pick a torn length from a seed.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Disk for SimDisk {
    fn create(&self, path: &str, len: u64) -> Result<Arc<dyn DiskFile>, DiskError> {
        check_path(path)?;
        let mut st = self.live_state(path)?;
        if st.files.contains_key(path) {
            return Err(DiskError::Exists {
                path: path.to_string(),
                what: "already exists",
            });
        }
        st.next_id += 1;
        let id = st.next_id;
        // `create` is durable: the zero-filled file exists in both images.
        let data = SimFileData {
            id,
            live: vec![0; len as usize],
            durable: vec![0; len as usize],
        };
        st.files.insert(path.to_string(), data);
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            path: path.to_string(),
            id,
        }))
    }

    fn open(&self, path: &str) -> Result<Arc<dyn DiskFile>, DiskError> {
        check_path(path)?;
        let st = self.live_state(path)?;
        let f = st.files.get(path).ok_or_else(|| DiskError::Exists {
            path: path.to_string(),
            what: "does not exist",
        })?;
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            path: path.to_string(),
            id: f.id,
        }))
    }

    fn exists(&self, path: &str) -> bool {
        self.state().files.contains_key(path)
    }

    fn remove(&self, path: &str) -> Result<(), DiskError> {
        check_path(path)?;
        let mut st = self.live_state(path)?;
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| DiskError::Exists {
                path: path.to_string(),
                what: "does not exist",
            })
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), DiskError> {
        check_path(from)?;
        check_path(to)?;
        let mut st = self.live_state(from)?;
        if st.files.contains_key(to) {
            return Err(DiskError::Exists {
                path: to.to_string(),
                what: "already exists",
            });
        }
        let f = st.files.remove(from).ok_or_else(|| DiskError::Exists {
            path: from.to_string(),
            what: "does not exist",
        })?;
        // A rename is durable at once (the directory is synced), like create and remove.
        st.files.insert(to.to_string(), f);
        if let Some(w) = st.last_unsynced_write.as_mut().filter(|w| w.0 == from) {
            w.0 = to.to_string();
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let st = self.live_state(dir)?;
        Ok(st
            .files
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(p, _)| {
                let rest = &p[prefix.len()..];
                (!rest.contains('/')).then(|| rest.to_string())
            })
            .collect())
    }

    fn list_dirs(&self, dir: &str) -> Result<Vec<String>, DiskError> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let st = self.live_state(dir)?;
        let mut out: Vec<String> = st
            .files
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(p, _)| {
                p[prefix.len()..]
                    .split_once('/')
                    .map(|(d, _)| d.to_string())
            })
            .collect();
        out.dedup();
        Ok(out)
    }
}

/// A handle to one file of a [`SimDisk`].
#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    path: String,
    id: u64,
}

impl SimFile {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut SimState) -> Result<R, DiskError>,
    ) -> Result<R, DiskError> {
        let mut st = self.disk.live_state(&self.path)?;
        match st.files.get(&self.path) {
            Some(d) if d.id == self.id => f(&mut st),
            _ => Err(DiskError::Exists {
                path: self.path.clone(),
                what: "was removed",
            }),
        }
    }
}

impl DiskFile for SimFile {
    fn path(&self) -> &str {
        &self.path
    }

    fn len(&self) -> u64 {
        self.with(|st| Ok(st.files[&self.path].live.len() as u64))
            .unwrap_or(0)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.with(|st| {
            let f = st.files.get_mut(&self.path).expect("checked by with()");
            check_bounds(&self.path, offset, data.len() as u64, f.live.len() as u64)?;
            f.live[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            st.stats.writes += 1;
            st.last_unsynced_write = Some((self.path.clone(), self.id, offset, data.len() as u64));
            Ok(())
        })
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.with(|st| {
            let f = &st.files[&self.path];
            check_bounds(&self.path, offset, buf.len() as u64, f.live.len() as u64)?;
            buf.copy_from_slice(&f.live[offset as usize..offset as usize + buf.len()]);
            Ok(())
        })
    }

    fn sync_range(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.with(|st| {
            if st.fail_syncs {
                return Err(DiskError::Io {
                    op: "sync",
                    path: self.path.clone(),
                    source: std::io::Error::other("injected sync failure"),
                });
            }
            let f = st.files.get_mut(&self.path).expect("checked by with()");
            check_bounds(&self.path, offset, len, f.live.len() as u64)?;
            // The length is metadata that any sync persists.
            f.durable.resize(f.live.len(), 0);
            let (s, e) = (offset as usize, (offset + len) as usize);
            f.durable[s..e].copy_from_slice(&f.live[s..e]);
            st.stats.syncs += 1;
            if let Some((p, id, w_off, w_len)) = &st.last_unsynced_write
                && *p == self.path
                && *id == self.id
                && *w_off >= offset
                && w_off + w_len <= offset + len
            {
                st.last_unsynced_write = None;
            }
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.with(|st| {
            let f = st.files.get_mut(&self.path).expect("checked by with()");
            f.live.resize(len as usize, 0);
            Ok(())
        })
    }
}
