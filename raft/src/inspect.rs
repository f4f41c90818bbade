//! Read-only views of a replica's store for checkers (simulation, integration tests, the
//! chaos harness): the raw committed log and the queues' contents.

use std::collections::BTreeMap;
use std::io;

use raftmq_store::{LogIndex, QueueOffset};

use crate::log_store::{ReplicaStore, io_err};

/// One record as raw bytes, with where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub index: u64,
    pub term: u64,
    pub position: u64,
    /// The whole record (header and payload) exactly as stored.
    pub bytes: Vec<u8>,
}

/// The records `[first retained, upto]` as raw bytes (`upto` is clamped to the last entry).
pub fn raw_log(rs: &ReplicaStore, upto: u64) -> io::Result<Vec<RawRecord>> {
    let store = rs.lock();
    let (first, last) = store.log_bounds().map_err(io_err)?;
    let Some((last, _)) = last else {
        return Ok(Vec::new());
    };
    let reader = store.reader();
    let mut out = Vec::new();
    for i in first.0..=upto.min(last.0) {
        let rec = store.read_entry(LogIndex(i)).map_err(io_err)?;
        let bytes = reader
            .read_bytes(rec.position, rec.header.len)
            .map_err(io_err)?;
        out.push(RawRecord {
            index: i,
            term: rec.header.term,
            position: rec.position.0,
            bytes,
        });
    }
    Ok(out)
}

/// Every queue's messages in offset order: (topic, queue id) → [(offset, msg_id)].
pub type QueueContents = BTreeMap<(String, u32), Vec<(u64, String)>>;

/// Reads every retained message of every queue.
pub fn queue_contents(rs: &ReplicaStore) -> io::Result<QueueContents> {
    let store = rs.lock();
    let mut out = QueueContents::new();
    for (q, min, max) in store.queues() {
        let mut msgs = Vec::with_capacity((max.0 - min.0) as usize);
        for off in min.0..max.0 {
            let m = store
                .read_queue_message(&q, QueueOffset(off))
                .map_err(io_err)?;
            msgs.push((off, m.msg_id));
        }
        out.insert((q.topic.clone(), q.queue_id), msgs);
    }
    Ok(out)
}

/// The last applied (dispatched) index, if any.
pub fn applied_index(rs: &ReplicaStore) -> Option<u64> {
    rs.lock().dispatched().map(|i| i.0)
}

/// How many times the replica restarted its store from a leader's boundary snapshot.
pub fn reset_count(rs: &ReplicaStore) -> io::Result<u64> {
    let raw = rs.lock().meta().raft(crate::keys::RESETS).map_err(io_err)?;
    raw.map_or(Ok(0), |b| {
        crate::types::decode_value(&b, crate::keys::RESETS)
    })
}

/// Every committed consumer offset this replica applied: ((group, topic, queue id), offset).
pub fn consumer_offsets(
    rs: &ReplicaStore,
) -> io::Result<Vec<(raftmq_store::meta::OffsetKey, QueueOffset)>> {
    rs.lock().meta().consumer_offsets().map_err(io_err)
}
