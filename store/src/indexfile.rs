//! IndexFile: message key → CommitLog positions, for queries by key (and by unique id).
//!
//! A file is a hash table with chained entries. The slot of a key holds the number (+1) of
//! the newest entry with that slot; each entry holds the number (+1) of the previous one. A
//! query walks the chain from the newest entry, so results come out newest first. Only hashes
//! are stored: the caller reads each message back to drop hash collisions.
//!
//! Files are `index/<20-digit sequence>`; a new file starts when one is full.
//!
//! # Layout (version 1, little-endian)
//!
//! Header, 64 bytes:
//!
//! | offset | size | field                                                    |
//! |--------|------|----------------------------------------------------------|
//! | 0      | 4    | `magic` = `"RMQX"`                                        |
//! | 4      | 1    | `version` = 1                                             |
//! | 5      | 3    | reserved, zero                                            |
//! | 8      | 4    | `slot_count` (≤ [`SLOTS_MAX`])                            |
//! | 12     | 4    | `max_entries` (≤ [`ENTRIES_MAX`])                         |
//! | 16     | 8    | `begin_timestamp_ms`: store time of the first entry       |
//! | 24     | 8    | `end_timestamp_ms`: store time of the newest entry        |
//! | 32     | 8    | `begin_position` of the first entry's message             |
//! | 40     | 8    | `end_position`: end of the newest entry's message         |
//! | 48     | 4    | `entry_count`                                             |
//! | 52     | 8    | reserved, zero                                            |
//! | 60     | 4    | `crc`: CRC32C of bytes `[0, 60)`                           |
//!
//! Then `slot_count` slots of 4 bytes (entry number + 1; 0 = empty), then `max_entries`
//! entries of 24 bytes:
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 4    | `key_hash` (CRC32C of `topic#key`)                     |
//! | 4      | 8    | `position` of the message                               |
//! | 12     | 4    | `size` of the message                                   |
//! | 16     | 4    | `time_delta_ms` from `begin_timestamp_ms`               |
//! | 20     | 4    | `prev`: previous entry in the chain (+1; 0 = none)      |
//!
//! Recovery never trusts slots written after the last checkpoint: it rebuilds the slots
//! and the header of the newest file from its first `entry_count` (checkpointed, synced)
//! entries, whose `prev` links only point backwards.

use std::sync::{Arc, Mutex};

use crate::codec::{PutLe, le_u32, le_u64};
use crate::disk::{Disk, DiskFile};
use crate::error::{Result, StoreError};
use crate::types::Position;

/// Directory of the index files.
pub const DIR: &str = "index";
/// A zero-filled index file made ahead of time (outside [`DIR`]), renamed into place at the
/// next roll: creating one of the default size (420 MB of zeros) inline stalled dispatch —
/// every replica at once — for most of a second.
const SPARE: &str = "index.spare";
const MAGIC: u32 = u32::from_le_bytes(*b"RMQX");
const VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: u64 = 64;
/// Bytes per slot.
pub const SLOT_LEN: u64 = 4;
/// Bytes per entry.
pub const ENTRY_LEN: u64 = 24;
/// Most slots per file.
pub const SLOTS_MAX: u32 = 16 * 1024 * 1024;
/// Most entries per file.
pub const ENTRIES_MAX: u32 = 256 * 1024 * 1024;

/// The hash of `topic#key` stored in entries.
pub fn key_hash(topic: &str, key: &str) -> u32 {
    let h = crc32c::crc32c(topic.as_bytes());
    let h = crc32c::crc32c_append(h, b"#");
    crc32c::crc32c_append(h, key.as_bytes())
}

/// A query by key: messages of `topic` with `key`, stored within `[begin_ms, end_ms]`, at
/// most `max`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyQuery<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub begin_ms: u64,
    pub end_ms: u64,
    pub max: usize,
}

impl<'a> KeyQuery<'a> {
    /// Every time, at most `max` hits.
    pub fn new(topic: &'a str, key: &'a str, max: usize) -> Self {
        Self {
            topic,
            key,
            begin_ms: 0,
            end_ms: u64::MAX,
            max,
        }
    }

    /// Only messages stored within `[begin_ms, end_ms]`.
    pub fn between(self, begin_ms: u64, end_ms: u64) -> Self {
        Self {
            begin_ms,
            end_ms,
            ..self
        }
    }
}

/// One hit of a query: where the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHit {
    pub position: Position,
    pub size: u32,
    pub timestamp_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    pub(crate) slot_count: u32,
    pub(crate) max_entries: u32,
    pub(crate) begin_ts: u64,
    pub(crate) end_ts: u64,
    pub(crate) begin_pos: u64,
    pub(crate) end_pos: u64,
    pub(crate) count: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN as usize);
        b.put_u32(MAGIC);
        b.put_u8(VERSION);
        b.extend_from_slice(&[0; 3]);
        b.put_u32(self.slot_count);
        b.put_u32(self.max_entries);
        b.put_u64(self.begin_ts);
        b.put_u64(self.end_ts);
        b.put_u64(self.begin_pos);
        b.put_u64(self.end_pos);
        b.put_u32(self.count);
        b.put_u64(0);
        let crc = crc32c::crc32c(&b);
        b.put_u32(crc);
        b
    }

    pub(crate) fn decode(b: &[u8], path: &str) -> Result<Self> {
        if le_u32(b, 0) != MAGIC {
            return Err(StoreError::corrupt(path, 0, "bad index file magic"));
        }
        if le_u32(b, 60) != crc32c::crc32c(&b[..60]) {
            return Err(StoreError::corrupt(path, 60, "bad index file header crc"));
        }
        if b[4] != VERSION {
            return Err(StoreError::corrupt(
                path,
                4,
                format!("unknown index file version {}", b[4]),
            ));
        }
        let h = Header {
            slot_count: le_u32(b, 8),
            max_entries: le_u32(b, 12),
            begin_ts: le_u64(b, 16),
            end_ts: le_u64(b, 24),
            begin_pos: le_u64(b, 32),
            end_pos: le_u64(b, 40),
            count: le_u32(b, 48),
        };
        if h.slot_count == 0
            || h.slot_count > SLOTS_MAX
            || h.max_entries == 0
            || h.max_entries > ENTRIES_MAX
        {
            return Err(StoreError::corrupt(
                path,
                8,
                format!(
                    "bad sizes {} slots / {} entries",
                    h.slot_count, h.max_entries
                ),
            ));
        }
        if h.count > h.max_entries {
            return Err(StoreError::corrupt(
                path,
                48,
                format!("entry count {} > {}", h.count, h.max_entries),
            ));
        }
        Ok(h)
    }

    fn file_len(&self) -> u64 {
        HEADER_LEN + u64::from(self.slot_count) * SLOT_LEN + u64::from(self.max_entries) * ENTRY_LEN
    }

    fn entry_at(&self, n: u32) -> u64 {
        HEADER_LEN + u64::from(self.slot_count) * SLOT_LEN + u64::from(n) * ENTRY_LEN
    }
}

#[derive(Debug, Clone, Copy)]
struct RawEntry {
    hash: u32,
    position: u64,
    size: u32,
    delta: u32,
    prev: u32,
}

/// One index file.
#[derive(Debug)]
struct IndexFile {
    seq: u64,
    file: Arc<dyn DiskFile>,
    header: Header,
}

impl IndexFile {
    fn read_entry(&self, n: u32) -> Result<RawEntry> {
        if n >= self.header.count {
            return Err(StoreError::corrupt(
                self.file.path(),
                48,
                format!("entry {n} >= count {}", self.header.count),
            ));
        }
        let mut b = [0u8; ENTRY_LEN as usize];
        self.file.read_at(self.header.entry_at(n), &mut b)?;
        Ok(RawEntry {
            hash: le_u32(&b, 0),
            position: le_u64(&b, 4),
            size: le_u32(&b, 12),
            delta: le_u32(&b, 16),
            prev: le_u32(&b, 20),
        })
    }

    fn read_slot(&self, slot: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.file
            .read_at(HEADER_LEN + u64::from(slot) * SLOT_LEN, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_slot(&self, slot: u32, v: u32) -> Result<()> {
        self.file
            .store_at(HEADER_LEN + u64::from(slot) * SLOT_LEN, &v.to_le_bytes())?;
        Ok(())
    }

    fn has_room(&self, ts: u64) -> bool {
        self.header.count < self.header.max_entries
            && (self.header.count == 0
                || ts.saturating_sub(self.header.begin_ts) <= u64::from(u32::MAX))
    }

    fn put(&mut self, hash: u32, position: Position, size: u32, ts: u64) -> Result<()> {
        let h = &mut self.header;
        if h.count == 0 {
            h.begin_ts = ts;
            h.begin_pos = position.0;
        }
        let slot = hash % h.slot_count;
        let n = h.count;
        let prev = self.read_slot(slot)?;
        let delta = ts.saturating_sub(self.header.begin_ts) as u32;
        let mut b = [0u8; ENTRY_LEN as usize];
        b[0..4].copy_from_slice(&hash.to_le_bytes());
        b[4..12].copy_from_slice(&position.0.to_le_bytes());
        b[12..16].copy_from_slice(&size.to_le_bytes());
        b[16..20].copy_from_slice(&delta.to_le_bytes());
        b[20..24].copy_from_slice(&prev.to_le_bytes());
        self.file.store_at(self.header.entry_at(n), &b)?;
        self.write_slot(slot, n + 1)?;
        let h = &mut self.header;
        h.count = n + 1;
        h.end_ts = h.end_ts.max(ts);
        h.end_pos = h.end_pos.max(position.0 + u64::from(size));
        self.file.store_at(0, &h.encode())?;
        Ok(())
    }

    fn query(&self, hash: u32, q: &KeyQuery<'_>, out: &mut Vec<IndexHit>) -> Result<()> {
        let (begin_ts, end_ts, max) = (q.begin_ms, q.end_ms, q.max);
        let h = &self.header;
        if h.count == 0 || h.end_ts < begin_ts || h.begin_ts > end_ts {
            return Ok(());
        }
        let mut next = self.read_slot(hash % h.slot_count)?;
        let mut steps = 0u32;
        while next != 0 && out.len() < max {
            let n = next - 1;
            steps += 1;
            if n >= h.count || steps > h.count {
                // A link past the count or a cycle: never trust it, never loop on it.
                return Err(StoreError::corrupt(
                    self.file.path(),
                    h.entry_at(n.min(h.count)),
                    "broken index chain",
                ));
            }
            let e = self.read_entry(n)?;
            // Saturating: an entry read back from the file may hold anything.
            let ts = h.begin_ts.saturating_add(u64::from(e.delta));
            if e.hash == hash && ts >= begin_ts && ts <= end_ts {
                out.push(IndexHit {
                    position: Position(e.position),
                    size: e.size,
                    timestamp_ms: ts,
                });
            }
            if e.prev > n {
                return Err(StoreError::corrupt(
                    self.file.path(),
                    h.entry_at(n),
                    "index chain points forward",
                ));
            }
            next = e.prev;
        }
        Ok(())
    }

    /// Recovery: keep the first `count` entries, rebuild slots and header from them.
    fn rebuild(&mut self, count: u32, begin_ts: u64) -> Result<()> {
        if count > self.header.max_entries {
            return Err(StoreError::corrupt(
                self.file.path(),
                48,
                format!("checkpoint count {count} too large"),
            ));
        }
        let slots_len = (u64::from(self.header.slot_count) * SLOT_LEN) as usize;
        let mut slots = vec![0u8; slots_len];
        let mut h = Header {
            slot_count: self.header.slot_count,
            max_entries: self.header.max_entries,
            ..Header::default()
        };
        h.count = count;
        let old_begin = begin_ts;
        self.header = h;
        for n in 0..count {
            let e = self.read_entry(n)?;
            if e.prev > n {
                return Err(StoreError::corrupt(
                    self.file.path(),
                    self.header.entry_at(n),
                    "index chain points forward",
                ));
            }
            let s = (e.hash % h.slot_count) as usize * SLOT_LEN as usize;
            slots[s..s + 4].copy_from_slice(&(n + 1).to_le_bytes());
            let hh = &mut self.header;
            if n == 0 {
                hh.begin_pos = e.position;
                hh.begin_ts = old_begin;
            }
            // Saturating: the entries come back from the file and may be damaged (found by
            // tests/fuzz_files.rs: a position near u64::MAX overflowed here).
            hh.end_ts = hh.end_ts.max(old_begin.saturating_add(u64::from(e.delta)));
            hh.end_pos = hh.end_pos.max(e.position.saturating_add(u64::from(e.size)));
        }
        self.file.write_at(HEADER_LEN, &slots)?;
        self.file.write_at(0, &self.header.encode())?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// Sizes of new index files.
#[derive(Debug, Clone, Copy)]
pub struct IndexFileConfig {
    pub slot_count: u32,
    pub max_entries: u32,
}

/// Where the index stood at a checkpoint: the newest file and its entry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexCheckpoint {
    pub seq: u64,
    pub count: u32,
    /// The file's `begin_timestamp_ms` (its header may be torn after a crash).
    pub begin_ts: u64,
}

/// Every index file, oldest first.
#[derive(Debug)]
pub struct IndexFiles {
    disk: Arc<dyn Disk>,
    config: IndexFileConfig,
    files: Vec<IndexFile>,
    spare: Arc<SpareState>,
}

/// The state of [`SPARE`], and a signal for a roll waiting for it to be made.
#[derive(Debug, Default)]
struct SpareState {
    state: Mutex<Spare>,
    made: std::sync::Condvar,
}

/// The state of [`SPARE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Spare {
    #[default]
    Absent,
    Creating,
    Ready,
}

impl SpareState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, to: Spare) {
        *self.lock() = to;
        self.made.notify_all();
    }

    /// Takes the spare if it is ready, first waiting for one being made (making a second
    /// file at the same time would double the writes and make neither sooner).
    fn take(&self) -> bool {
        let mut s = self.lock();
        while *s == Spare::Creating {
            s = self.made.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let ready = *s == Spare::Ready;
        *s = Spare::Absent;
        ready
    }
}

/// Ends a `Creating` spare that was never finished (see [`IndexFiles::prepare_spare`]).
struct Unmade(Arc<SpareState>);

impl Drop for Unmade {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if *s == Spare::Creating {
            *s = Spare::Absent;
            self.0.made.notify_all();
        }
    }
}

/// Runs blocking file work off the caller: on the blocking pool inside a tokio runtime;
/// inline outside one, and under madsim (no threads there; `SimDisk` is instant).
fn in_background(work: impl FnOnce() + Send + 'static) {
    #[cfg(not(madsim))]
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        drop(rt.spawn_blocking(work));
        return;
    }
    work();
}

fn path(seq: u64) -> String {
    format!("{DIR}/{seq:020}")
}

impl IndexFiles {
    /// Opens the index as it stood at `ckpt`: files after it are deleted, the checkpoint's
    /// file is rebuilt from its first `ckpt.count` entries.
    pub fn open(
        disk: Arc<dyn Disk>,
        config: IndexFileConfig,
        ckpt: IndexCheckpoint,
    ) -> Result<Self> {
        if config.slot_count == 0
            || config.slot_count > SLOTS_MAX
            || config.max_entries == 0
            || config.max_entries > ENTRIES_MAX
        {
            return Err(StoreError::Config(format!(
                "index file sizes {config:?} out of range"
            )));
        }
        let mut files = Vec::new();
        for name in disk.list(DIR)? {
            let p = format!("{DIR}/{name}");
            let Some(seq) = (name.len() == 20)
                .then(|| name.parse::<u64>().ok())
                .flatten()
            else {
                return Err(StoreError::corrupt(
                    p,
                    0,
                    "unexpected file in the index directory",
                ));
            };
            if seq > ckpt.seq || (seq == ckpt.seq && ckpt.count == 0) {
                disk.remove(&p)?;
                continue;
            }
            let file = disk.open(&p)?;
            let mut hb = [0u8; HEADER_LEN as usize];
            file.read_at(0, &mut hb)
                .map_err(|e| StoreError::corrupt(&p, 0, format!("short header: {e}")))?;
            let header = match Header::decode(&hb, &p) {
                Ok(h) => h,
                // The newest file's header is rewritten on every put and may be torn by a
                // crash; its shape comes from the configuration and its content is rebuilt.
                Err(_) if seq == ckpt.seq => Header {
                    slot_count: config.slot_count,
                    max_entries: config.max_entries,
                    ..Header::default()
                },
                Err(e) => return Err(e),
            };
            if file.len() != header.file_len() {
                return Err(StoreError::corrupt(
                    p,
                    0,
                    format!("length {} != {}", file.len(), header.file_len()),
                ));
            }
            let mut f = IndexFile { seq, file, header };
            if seq == ckpt.seq {
                f.rebuild(ckpt.count, ckpt.begin_ts)?;
            }
            files.push(f);
        }
        if disk.exists(SPARE) {
            // Possibly half made when the process died: made again when needed.
            disk.remove(SPARE)?;
        }
        let index = Self {
            disk,
            config,
            files,
            spare: Arc::default(),
        };
        if index.files.is_empty() {
            // A new index: its first file is made now, not by the first message.
            index.prepare_spare();
        }
        Ok(index)
    }

    fn new_header(&self) -> Header {
        Header {
            slot_count: self.config.slot_count,
            max_entries: self.config.max_entries,
            ..Header::default()
        }
    }

    /// Starts making the spare in the background if there is none.
    fn prepare_spare(&self) {
        {
            let mut spare = self.spare.lock();
            if *spare != Spare::Absent {
                return;
            }
            *spare = Spare::Creating;
        }
        let (disk, len) = (self.disk.clone(), self.new_header().file_len());
        // Should the work be dropped unrun (a runtime shutting down), the guard still ends
        // `Creating`, so no roll waits for it forever.
        let spare = Unmade(self.spare.clone());
        in_background(move || {
            let made = if disk.exists(SPARE) {
                disk.remove(SPARE)
            } else {
                Ok(())
            }
            .and_then(|()| disk.create(SPARE, len).map(drop));
            match made {
                Ok(()) => spare.0.set(Spare::Ready),
                Err(e) => {
                    tracing::warn!(error = %e, "could not prepare the next index file; the roll will create it");
                    spare.0.set(Spare::Absent);
                }
            }
        });
    }

    /// Indexes `key` of a message of `topic` at `position`.
    pub fn put(
        &mut self,
        topic: &str,
        key: &str,
        position: Position,
        size: u32,
        ts: u64,
    ) -> Result<()> {
        let hash = key_hash(topic, key);
        if !self.files.last().is_some_and(|f| f.has_room(ts)) {
            self.roll()?;
        }
        let last = self.files.last_mut().expect("roll added a file");
        last.put(hash, position, size, ts)?;
        if last.header.count >= last.header.max_entries / 2 {
            self.prepare_spare();
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        if let Some(f) = self.files.last() {
            f.file.sync_all()?;
        }
        let seq = self.files.last().map_or(0, |f| f.seq + 1);
        let header = self.new_header();
        let ready = self.spare.take();
        let file = if ready && self.disk.open(SPARE)?.len() == header.file_len() {
            self.disk.rename(SPARE, &path(seq))?;
            self.disk.open(&path(seq))?
        } else {
            self.disk.create(&path(seq), header.file_len())?
        };
        file.write_at(0, &header.encode())?;
        file.sync_range(0, HEADER_LEN)?;
        self.files.push(IndexFile { seq, file, header });
        Ok(())
    }

    /// Positions of messages of `q.topic` whose key hashes like `q.key`, stored within
    /// `[q.begin_ms, q.end_ms]`, newest first, at most `q.max`.
    pub fn query(&self, q: &KeyQuery<'_>) -> Result<Vec<IndexHit>> {
        let hash = key_hash(q.topic, q.key);
        let mut out = Vec::new();
        for f in self.files.iter().rev() {
            if out.len() >= q.max {
                break;
            }
            f.query(hash, q, &mut out)?;
        }
        Ok(out)
    }

    /// Makes the newest file durable; returns the checkpoint it now supports.
    pub fn sync(&mut self) -> Result<IndexCheckpoint> {
        match self.files.last() {
            Some(f) => {
                f.file.sync_all()?;
                Ok(IndexCheckpoint {
                    seq: f.seq,
                    count: f.header.count,
                    begin_ts: f.header.begin_ts,
                })
            }
            None => Ok(IndexCheckpoint::default()),
        }
    }

    /// Removes every file (a snapshot install); the index starts again empty.
    pub fn reset(&mut self) -> Result<()> {
        for f in std::mem::take(&mut self.files) {
            self.disk.remove(&path(f.seq))?;
        }
        Ok(())
    }

    /// Deletes files whose every message lies before `first` (never the newest file).
    pub fn purge_before(&mut self, first: Position) -> Result<()> {
        while self.files.len() > 1 && self.files[0].header.end_pos <= first.0 {
            let f = self.files.remove(0);
            self.disk.remove(&path(f.seq))?;
        }
        Ok(())
    }

    /// Number of files (for tests and stats).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;

    #[test]
    fn header_and_entry_golden_bytes() {
        let h = Header {
            slot_count: 8,
            max_entries: 16,
            begin_ts: 1,
            end_ts: 2,
            begin_pos: 3,
            end_pos: 4,
            count: 5,
        };
        let b = h.encode();
        let mut expected = b"RMQX".to_vec();
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&8u32.to_le_bytes());
        expected.extend_from_slice(&16u32.to_le_bytes());
        for v in [1u64, 2, 3, 4] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        expected.extend_from_slice(&5u32.to_le_bytes());
        expected.extend_from_slice(&[0; 8]);
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b, expected);
        assert_eq!(Header::decode(&b, "x").unwrap(), h);
        assert_eq!(h.file_len(), 64 + 8 * 4 + 16 * 24);

        let disk = SimDisk::new();
        let cfg = IndexFileConfig {
            slot_count: 8,
            max_entries: 16,
        };
        let mut idx =
            IndexFiles::open(Arc::new(disk.clone()), cfg, IndexCheckpoint::default()).unwrap();
        idx.put("T", "k", Position(0x10), 0x20, 1000).unwrap();
        idx.put("T", "k", Position(0x30), 0x20, 1005).unwrap();
        let f = disk.open("index/00000000000000000000").unwrap();
        let mut e = [0u8; 24];
        f.read_at(64 + 8 * 4 + 24, &mut e).unwrap();
        let hash = key_hash("T", "k");
        let mut want = hash.to_le_bytes().to_vec();
        want.extend_from_slice(&0x30u64.to_le_bytes());
        want.extend_from_slice(&0x20u32.to_le_bytes());
        want.extend_from_slice(&5u32.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes()); // prev = entry 0, stored +1
        assert_eq!(e.to_vec(), want);
        let mut slot = [0u8; 4];
        f.read_at(64 + u64::from(hash % 8) * 4, &mut slot).unwrap();
        assert_eq!(u32::from_le_bytes(slot), 2);
    }

    #[test]
    fn a_roll_waits_for_the_spare_being_made_and_an_unrun_job_ends_the_wait() {
        let spare = Arc::new(SpareState::default());
        *spare.lock() = Spare::Creating;
        let maker = {
            let spare = spare.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                spare.set(Spare::Ready);
            })
        };
        assert!(spare.take(), "took the spare once made, not none");
        assert_eq!(*spare.lock(), Spare::Absent);
        maker.join().expect("maker");
        // A job dropped before it ran leaves no roll waiting.
        *spare.lock() = Spare::Creating;
        drop(Unmade(spare.clone()));
        assert!(!spare.take());
    }

    #[test]
    fn the_next_file_is_made_ahead_and_renamed_into_place() {
        let disk = SimDisk::new();
        // A leftover spare (a crash while making it) is removed at open.
        disk.create(SPARE, 3).unwrap();
        let cfg = IndexFileConfig {
            slot_count: 8,
            max_entries: 4,
        };
        let mut idx =
            IndexFiles::open(Arc::new(disk.clone()), cfg, IndexCheckpoint::default()).unwrap();
        // A new index makes its first file ahead (outside a runtime: at once).
        assert_eq!(disk.open(SPARE).unwrap().len(), idx.new_header().file_len());
        idx.put("T", "a", Position(0), 1, 1).unwrap();
        assert!(!disk.exists(SPARE), "the first file was the spare");
        idx.put("T", "b", Position(1), 1, 2).unwrap();
        // Half full: the next one is made.
        assert!(disk.exists(SPARE));
        for (i, k) in ["c", "d", "e"].into_iter().enumerate() {
            idx.put("T", k, Position(2 + i as u64), 1, 3).unwrap();
        }
        assert_eq!(idx.file_count(), 2);
        assert!(!disk.exists(SPARE), "the roll took the spare");
        assert_eq!(
            disk.list(DIR).unwrap(),
            vec![
                "00000000000000000000".to_string(),
                "00000000000000000001".to_string()
            ]
        );
        // Every key is still found, across both files.
        for k in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                idx.query(&KeyQuery::new("T", k, 10)).unwrap().len(),
                1,
                "{k}"
            );
        }
    }

    #[test]
    fn header_checks_reject_bad_sizes_and_versions() {
        let mut h = Header {
            slot_count: 8,
            max_entries: 16,
            ..Header::default()
        }
        .encode();
        h[4] = 9;
        let crc = crc32c::crc32c(&h[..60]);
        h[60..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            Header::decode(&h, "x")
                .unwrap_err()
                .to_string()
                .contains("unknown index file version")
        );
        let big = Header {
            slot_count: SLOTS_MAX + 1,
            max_entries: 16,
            ..Header::default()
        }
        .encode();
        assert!(Header::decode(&big, "x").is_err());
        let over = Header {
            slot_count: 8,
            max_entries: 16,
            count: 17,
            ..Header::default()
        }
        .encode();
        assert!(Header::decode(&over, "x").is_err());
    }

    #[test]
    fn a_cycle_or_forward_link_is_corruption_not_a_hang() {
        let disk = SimDisk::new();
        let cfg = IndexFileConfig {
            slot_count: 1,
            max_entries: 8,
        };
        let mut idx =
            IndexFiles::open(Arc::new(disk.clone()), cfg, IndexCheckpoint::default()).unwrap();
        for i in 0..3 {
            idx.put("T", "k", Position(i), 1, 1).unwrap();
        }
        // Point entry 0's prev at entry 2 (+1 = 3): a cycle.
        let f = disk.open("index/00000000000000000000").unwrap();
        f.write_at(64 + 4 + 20, &3u32.to_le_bytes()).unwrap();
        assert!(matches!(
            idx.query(&KeyQuery::new("T", "k", 100)),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
