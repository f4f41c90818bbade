//! ConsumeQueues: per topic-queue lists of where each message is, built when entries apply.
//!
//! The queue `(topic, queue_id)` lives in `consumequeue/<topic>/<queue_id>/`, as
//! [`EntryFiles`] with magic `"RMQQ"`; entry `k` is queue offset `k`:
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 8    | `position` of the message in the CommitLog        |
//! | 8      | 4    | `size` of the encoded message                    |
//! | 12     | 8    | `tag_hash` ([`crate::message::tag_hash`])         |
//!
//! Topic names are written into paths with every byte outside `[A-Za-z0-9_-]` escaped as
//! `%XX`, so no name can escape the directory. Positions grow with offsets within a queue,
//! which is what lets time lookups and retention binary-search.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use crate::disk::Disk;
use crate::entryfile::{Entry, EntryFiles, EntryReader, pack, unpack};
use crate::error::Result;
use crate::types::{Position, QueueOffset};

/// Directory of the ConsumeQueues.
pub const DIR: &str = "consumequeue";
/// `"RMQQ"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMQQ");

/// Identifies one queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId {
    pub topic: String,
    pub queue_id: u32,
}

/// One ConsumeQueue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub position: Position,
    pub size: u32,
    pub tag_hash: u64,
}

impl CqEntry {
    pub(crate) fn encode(&self) -> Entry {
        pack(self.position.0, self.size, self.tag_hash)
    }

    pub(crate) fn decode(e: &Entry) -> Self {
        let (position, size, tag_hash) = unpack(e);
        Self {
            position: Position(position),
            size,
            tag_hash,
        }
    }
}

/// Escapes a topic name into one safe path component.
pub fn escape_topic(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".to_string() } else { out }
}

/// Inverse of [`escape_topic`]; `None` for a name it could not have produced.
pub fn unescape_topic(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn queue_dir(q: &QueueId) -> String {
    format!("{DIR}/{}/{}", escape_topic(&q.topic), q.queue_id)
}

/// One queue.
#[derive(Debug)]
pub struct ConsumeQueue {
    files: EntryFiles,
    /// The position of the last entry appended in this process (positions grow with
    /// offsets: time lookups and retention binary-search on it).
    last_position: Option<Position>,
}

impl ConsumeQueue {
    /// A read handle on the published entries.
    pub fn reader(&self) -> QueueReader {
        QueueReader {
            entries: self.files.reader(),
        }
    }

    /// Appends the entry for the next queue offset; returns that offset.
    pub fn append(&mut self, e: CqEntry) -> Result<QueueOffset> {
        assert!(
            self.last_position.is_none_or(|p| p < e.position),
            "queue entry at position {} after one at {:?}: positions must grow with offsets",
            e.position,
            self.last_position
        );
        let offset = QueueOffset(self.files.append(&e.encode())?);
        self.last_position = Some(e.position);
        Ok(offset)
    }

    /// The first offset whose entry satisfies the monotonic `pred` (false…true), over the
    /// owner's entries (published or not), or the end if none. Readers use [`QueueReader`].
    pub fn partition_point(
        &self,
        mut pred: impl FnMut(CqEntry) -> Result<bool>,
    ) -> Result<QueueOffset> {
        let files = &self.files;
        files
            .partition_point(|n| pred(CqEntry::decode(&files.get(n)?)))
            .map(QueueOffset)
    }
}

/// A read handle on one queue's published entries (see [`crate::entryfile`]): what pulls
/// read, without the store's lock.
#[derive(Debug, Clone)]
pub struct QueueReader {
    entries: EntryReader,
}

impl QueueReader {
    /// The entry at `offset`, if published.
    pub fn get(&self, offset: QueueOffset) -> Result<CqEntry> {
        Ok(CqEntry::decode(&self.entries.get(offset.0)?))
    }

    /// Smallest offset still held.
    pub fn min_offset(&self) -> QueueOffset {
        QueueOffset(self.entries.first())
    }

    /// One past the largest published offset.
    pub fn max_offset(&self) -> QueueOffset {
        QueueOffset(self.entries.end())
    }

    /// The first offset whose entry satisfies the monotonic `pred`, or the max offset.
    pub fn partition_point(
        &self,
        mut pred: impl FnMut(CqEntry) -> Result<bool>,
    ) -> Result<QueueOffset> {
        let entries = &self.entries;
        entries
            .partition_point(|n| pred(CqEntry::decode(&entries.get(n)?)))
            .map(QueueOffset)
    }
}

/// Every queue's reader, shared with the store's read views. The map changes only when a
/// queue is created or a reset replaces them all; its lock is held to clone one reader.
pub type QueueReaders = Arc<RwLock<BTreeMap<QueueId, QueueReader>>>;

/// Every queue of the store, opened lazily.
#[derive(Debug)]
pub struct ConsumeQueues {
    disk: Arc<dyn Disk>,
    per_file: u64,
    queues: BTreeMap<QueueId, ConsumeQueue>,
    readers: QueueReaders,
    /// Queues appended to since the last [`publish`](Self::publish).
    dirty: BTreeSet<QueueId>,
}

impl ConsumeQueues {
    /// Opens every queue on disk with the end offsets recovered from the checkpoint
    /// (`ends`); a queue absent from `ends` restarts empty (everything it holds was written
    /// after the checkpoint and is rebuilt).
    pub fn open(disk: Arc<dyn Disk>, per_file: u64, ends: &BTreeMap<QueueId, u64>) -> Result<Self> {
        let mut queues = BTreeMap::new();
        for topic_dir in list_dirs(disk.as_ref(), DIR)? {
            let Some(topic) = unescape_topic(&topic_dir) else {
                continue;
            };
            for qdir in list_dirs(disk.as_ref(), &format!("{DIR}/{topic_dir}"))? {
                let Ok(queue_id) = qdir.parse::<u32>() else {
                    continue;
                };
                let id = QueueId {
                    topic: topic.clone(),
                    queue_id,
                };
                let end = ends.get(&id).copied();
                if end.is_none() && disk.list(&queue_dir(&id))?.is_empty() {
                    // An empty directory left by a reset: not a queue.
                    continue;
                }
                let files = EntryFiles::open(
                    disk.clone(),
                    &queue_dir(&id),
                    MAGIC,
                    per_file,
                    0,
                    end.unwrap_or(0),
                )?;
                queues.insert(
                    id,
                    ConsumeQueue {
                        files,
                        last_position: None,
                    },
                );
            }
        }
        // A queue whose entries were all dropped by a reset has no files, only its end.
        for (id, &end) in ends {
            if !queues.contains_key(id) {
                let files =
                    EntryFiles::open(disk.clone(), &queue_dir(id), MAGIC, per_file, end, end)?;
                queues.insert(
                    id.clone(),
                    ConsumeQueue {
                        files,
                        last_position: None,
                    },
                );
            }
        }
        let readers = queues
            .iter()
            .map(|(k, q)| (k.clone(), q.reader()))
            .collect();
        Ok(Self {
            disk,
            per_file,
            queues,
            readers: Arc::new(RwLock::new(readers)),
            dirty: BTreeSet::new(),
        })
    }

    /// The readers of every queue (shared: later queues appear in it too).
    pub fn readers(&self) -> QueueReaders {
        self.readers.clone()
    }

    fn readers_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<QueueId, QueueReader>> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.readers
            .write()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    /// Appends the entry for `id`'s next offset (creating the queue if needed); readers see
    /// it after the next [`publish`](Self::publish).
    pub fn append(&mut self, id: &QueueId, e: CqEntry) -> Result<QueueOffset> {
        let offset = self.get_or_create(id)?.append(e)?;
        if !self.dirty.contains(id) {
            self.dirty.insert(id.clone());
        }
        Ok(offset)
    }

    /// Makes every entry appended so far readable through the readers.
    pub fn publish(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(q) = self.queues.get_mut(&id) {
                q.files.publish()?;
            }
        }
        Ok(())
    }

    /// The queue, created empty if it does not exist.
    pub fn get_or_create(&mut self, id: &QueueId) -> Result<&mut ConsumeQueue> {
        if !self.queues.contains_key(id) {
            let files = EntryFiles::open(
                self.disk.clone(),
                &queue_dir(id),
                MAGIC,
                self.per_file,
                0,
                0,
            )?;
            let q = ConsumeQueue {
                files,
                last_position: None,
            };
            self.readers_mut().insert(id.clone(), q.reader());
            self.queues.insert(id.clone(), q);
        }
        Ok(self.queues.get_mut(id).expect("inserted above"))
    }

    /// Every queue's end offset (for the checkpoint).
    pub fn ends(&self) -> BTreeMap<QueueId, u64> {
        self.queues
            .iter()
            .map(|(k, q)| (k.clone(), q.files.end()))
            .collect()
    }

    /// Makes every queue durable.
    pub fn sync(&mut self) -> Result<()> {
        for q in self.queues.values_mut() {
            q.files.sync()?;
        }
        Ok(())
    }

    /// Removes every queue's files; the queues in `ends` restart empty at their end offset
    /// (a snapshot install), the others are forgotten.
    pub fn reset(&mut self, ends: &BTreeMap<QueueId, u64>) -> Result<()> {
        self.readers_mut().clear();
        self.dirty.clear();
        for (_, q) in std::mem::take(&mut self.queues) {
            q.files.destroy()?;
        }
        for (id, &end) in ends {
            let mut files = EntryFiles::open(
                self.disk.clone(),
                &queue_dir(id),
                MAGIC,
                self.per_file,
                end,
                end,
            )?;
            files.reset(end)?;
            let q = ConsumeQueue {
                files,
                last_position: None,
            };
            self.readers_mut().insert(id.clone(), q.reader());
            self.queues.insert(id.clone(), q);
        }
        Ok(())
    }

    /// Drops, in every queue, the entries whose message lies before `first` (a CommitLog
    /// position), deleting files that hold only such entries.
    pub fn purge_before(&mut self, first: Position) -> Result<()> {
        for q in self.queues.values_mut() {
            let cut = q.partition_point(|e| Ok(e.position >= first))?;
            q.files.purge_before(cut.0)?;
        }
        Ok(())
    }

    /// Cuts every queue back to the entries whose message lies before `end` (recovery:
    /// entries at or past the dispatch checkpoint are rebuilt).
    pub fn truncate_from(&mut self, end: Position) -> Result<()> {
        for q in self.queues.values_mut() {
            let cut = q.partition_point(|e| Ok(e.position >= end))?;
            q.files.truncate(cut.0)?;
            q.last_position = None;
        }
        Ok(())
    }
}

fn list_dirs(disk: &dyn Disk, dir: &str) -> Result<Vec<String>> {
    Ok(disk.list_dirs(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_golden_bytes() {
        let e = CqEntry {
            position: Position(0x0102_0304_0506_0708),
            size: 0x0A0B_0C0D,
            tag_hash: 0x1112_1314_1516_1718,
        };
        let b = e.encode();
        let mut want = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
        want.extend_from_slice(&0x0A0B_0C0Du32.to_le_bytes());
        want.extend_from_slice(&0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(b.to_vec(), want);
        assert_eq!(CqEntry::decode(&b), e);
        assert_eq!(MAGIC.to_le_bytes(), *b"RMQQ");
    }

    #[test]
    fn topic_names_escape_to_one_safe_path_component() {
        for name in ["Topic_1-a", "%RETRY%group", "a|b", "../etc", "a/b", "", "é"] {
            let esc = escape_topic(name);
            assert!(
                !esc.contains('/') && esc != "." && esc != "..",
                "{name} -> {esc}"
            );
            assert_eq!(unescape_topic(&esc).as_deref(), Some(name));
        }
        assert_eq!(escape_topic("Topic_1-a"), "Topic_1-a");
        assert_eq!(unescape_topic("%zz"), None);
    }
}
