//! The store's read view: what pulls, lookups and queries read, without the lock of the
//! task that appends and applies.
//!
//! A [`ReadView`] is a bundle of shared read handles, each of which publishes only what is
//! complete:
//! - the CommitLog through [`CommitLogReader`] (records below the published written end);
//! - each ConsumeQueue through its [`QueueReader`](crate::consumequeue::QueueReader): entries
//!   are published after dispatch wrote them, so a queue never shows an entry whose message
//!   is not applied (ConsumeQueues only ever hold applied entries);
//! - the IndexFile behind its own mutex (apply's `put` and a query's bounded lookup are the
//!   only users; the query reads the CommitLog after releasing it);
//! - the MetaStore, whose redb read transactions run beside its writes.
//!
//! Views are cheap to clone and never go stale: the store changes the objects they share in
//! place (including across a snapshot-install reset).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::commitlog::CommitLogReader;
use crate::consumequeue::{CqEntry, QueueId, QueueReader, QueueReaders};
use crate::error::{Result, StoreError};
use crate::indexfile::{IndexFiles, KeyQuery};
use crate::message::{self, Message};
use crate::meta::MetaStore;
use crate::types::{Position, QueueOffset};

/// Read handles on a store; see the module docs.
#[derive(Debug, Clone)]
pub struct ReadView {
    pub(crate) log: CommitLogReader,
    pub(crate) queues: QueueReaders,
    pub(crate) index: Arc<Mutex<IndexFiles>>,
    pub(crate) meta: Arc<MetaStore>,
}

impl ReadView {
    /// The metadata store (topics, consumer offsets, …) as applied.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The CommitLog reader.
    pub fn log(&self) -> &CommitLogReader {
        &self.log
    }

    pub(crate) fn index(&self) -> MutexGuard<'_, IndexFiles> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.index
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }

    /// A queue's reader, if the queue exists.
    pub fn queue(&self, queue: &QueueId) -> Option<QueueReader> {
        self.queues
            .read()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
            .get(queue)
            .cloned()
    }

    /// The ConsumeQueue entry at `offset` of a queue.
    pub fn cq_entry(&self, queue: &QueueId, offset: QueueOffset) -> Result<CqEntry> {
        let q = self.queue(queue).ok_or(StoreError::OutOfRange {
            what: "queue offset",
            value: offset.0,
            first: 0,
            end: 0,
        })?;
        q.get(offset)
    }

    /// The smallest and one-past-largest offsets of a queue (`(0, 0)` if it does not exist).
    pub fn queue_bounds(&self, queue: &QueueId) -> (QueueOffset, QueueOffset) {
        self.queue(queue)
            .map_or((QueueOffset(0), QueueOffset(0)), |q| {
                (q.min_offset(), q.max_offset())
            })
    }

    /// Every queue with its bounds.
    pub fn queues(&self) -> Vec<(QueueId, QueueOffset, QueueOffset)> {
        self.queues
            .read()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
            .iter()
            .map(|(k, q)| (k.clone(), q.min_offset(), q.max_offset()))
            .collect()
    }

    /// Reads and verifies the message at `position` (`size` bytes).
    pub fn read_message(&self, position: Position, size: u32) -> Result<Message> {
        let bytes = self.log.read_bytes(position, size)?;
        Message::decode(&bytes)
            .map_err(|e| StoreError::corrupt(crate::commitlog::DIR, position.0, e.to_string()))
    }

    /// Reads and verifies the message starting at `position` (its length is its first four
    /// bytes). A position where no message starts is an `InvalidArgument`, not corruption:
    /// positions come from users (`offsetMsgId`).
    pub fn read_message_at(&self, position: Position) -> Result<Message> {
        let not_here = |why: String| {
            StoreError::InvalidArgument(format!("no message starts at position {position}: {why}"))
        };
        let head = self
            .log
            .read_bytes(position, 4)
            .map_err(|e| not_here(e.to_string()))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len < 8 || len as usize > message::MESSAGE_MAX {
            return Err(not_here(format!("length field {len}")));
        }
        let bytes = self
            .log
            .read_bytes(position, len)
            .map_err(|e| not_here(e.to_string()))?;
        Message::decode(&bytes).map_err(|e| not_here(e.to_string()))
    }

    /// Reads the message at a queue offset.
    pub fn read_queue_message(&self, queue: &QueueId, offset: QueueOffset) -> Result<Message> {
        let e = self.cq_entry(queue, offset)?;
        self.read_message(e.position, e.size)
    }

    /// The first offset of `queue` whose message was stored at or after `timestamp_ms`
    /// (the queue's max offset if none).
    pub fn offset_at_time(&self, queue: &QueueId, timestamp_ms: u64) -> Result<QueueOffset> {
        let Some(q) = self.queue(queue) else {
            return Ok(QueueOffset(0));
        };
        q.partition_point(|e| {
            Ok(self.read_message(e.position, e.size)?.store_timestamp_ms >= timestamp_ms)
        })
    }

    /// Messages matching `q` by key or unique id, newest first (hash collisions removed).
    pub fn query_by_key(&self, q: &KeyQuery<'_>) -> Result<Vec<(Position, Message)>> {
        let (topic, key, max) = (q.topic, q.key, q.max);
        // Hash collisions are dropped here, so ask the index for more than `max` hits.
        let hits = self.index().query(&KeyQuery {
            max: max.saturating_mul(4).max(16),
            ..*q
        })?;
        let mut out = Vec::new();
        for hit in hits {
            if out.len() >= max || hit.position < self.log.first() {
                continue;
            }
            let m = self.read_message(hit.position, hit.size)?;
            if m.topic == topic && (m.msg_id == key || m.keys.iter().any(|k| k == key)) {
                out.push((hit.position, m));
            }
        }
        Ok(out)
    }
}
