//! POP consumption state (RocketMQ 5's receive / ack / change-invisible), replicated like
//! offsets: per (consumer group, topic, queue), the next offset never handed out (the cursor)
//! and the messages handed out and not yet acknowledged (in flight), each with the time it
//! becomes visible again, the epoch of its current receipt and how often it was delivered.
//! Every change is a committed command (see `raftmq_raft::pop_apply`), so a receipt stays
//! valid across a leader change and an older receipt (an older epoch) is refused.
//!
//! # Tables (MetaStore)
//! - `pop_cursors`: (group, topic, queue) → next offset to hand out for the first time.
//! - `pop_inflight`: (group, topic, queue, offset) → record (little-endian):
//!
//! | size | field |
//! |------|-------|
//! | 1    | version = 1 |
//! | 8    | `visible_at_ms`: when it may be handed out again (leader clock at the claim) |
//! | 8    | `epoch`: the log index of the command that issued the current receipt |
//! | 4    | `attempts`: deliveries so far (1 at the first) |
//!
//! A record that does not parse is reported as malformed, never guessed at.

use redb::{ReadableTable, TableDefinition};

use crate::codec::{PutLe, Reader};
use crate::error::{Result, StoreError};
use crate::meta::{MetaStore, MetaTxn, meta_err};

const CURSORS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("pop_cursors");
const INFLIGHT: TableDefinition<(&str, &str, u32, u64), &[u8]> =
    TableDefinition::new("pop_inflight");
const VERSION: u8 = 1;
const RECORD_LEN: usize = 21;

/// One message handed out and not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    pub visible_at_ms: u64,
    pub epoch: u64,
    pub attempts: u32,
}

impl Inflight {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(RECORD_LEN);
        b.put_u8(VERSION);
        b.put_u64(self.visible_at_ms);
        b.put_u64(self.epoch);
        b.put_u32(self.attempts);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Inflight> {
        let mut r = Reader::new(b, "pop in-flight record");
        let v = r.u8()?;
        if v != VERSION {
            return Err(StoreError::malformed(
                "pop in-flight record",
                format!("unknown version {v}"),
            ));
        }
        let f = Inflight {
            visible_at_ms: r.u64()?,
            epoch: r.u64()?,
            attempts: r.u32()?,
        };
        r.finish()?;
        Ok(f)
    }
}

/// Where a queue's POP state is: (group, topic, queue).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PopQueue {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

/// The whole POP state, for snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PopState {
    pub cursors: Vec<(PopQueue, u64)>,
    pub inflight: Vec<(PopQueue, u64, Inflight)>,
}

pub(crate) fn ensure_tables(t: &mut MetaTxn) -> Result<()> {
    t.txn.open_table(CURSORS).map_err(meta_err)?;
    t.txn.open_table(INFLIGHT).map_err(meta_err)?;
    Ok(())
}

impl MetaStore {
    /// The in-flight messages of one queue, by offset.
    pub fn pop_inflight(&self, q: &PopQueue) -> Result<Vec<(u64, Inflight)>> {
        self.read(|t| {
            let table = t.open_table(INFLIGHT).map_err(meta_err)?;
            let mut out = Vec::new();
            let (g, tp) = (q.group.as_str(), q.topic.as_str());
            for row in table
                .range((g, tp, q.queue_id, 0)..=(g, tp, q.queue_id, u64::MAX))
                .map_err(meta_err)?
            {
                let (k, v) = row.map_err(meta_err)?;
                out.push((k.value().3, Inflight::decode(v.value())?));
            }
            Ok(out)
        })
    }

    /// The queue's cursor (`None`: nothing handed out yet).
    pub fn pop_cursor(&self, q: &PopQueue) -> Result<Option<u64>> {
        self.read(|t| {
            let table = t.open_table(CURSORS).map_err(meta_err)?;
            Ok(table
                .get((q.group.as_str(), q.topic.as_str(), q.queue_id))
                .map_err(meta_err)?
                .map(|v| v.value()))
        })
    }

    /// Every cursor and in-flight message (snapshots).
    pub fn pop_state(&self) -> Result<PopState> {
        self.read(|t| {
            let mut s = PopState::default();
            let cursors = t.open_table(CURSORS).map_err(meta_err)?;
            for row in cursors.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                let (g, tp, q) = k.value();
                s.cursors.push((queue(g, tp, q), v.value()));
            }
            let inflight = t.open_table(INFLIGHT).map_err(meta_err)?;
            for row in inflight.iter().map_err(meta_err)? {
                let (k, v) = row.map_err(meta_err)?;
                let (g, tp, q, o) = k.value();
                s.inflight
                    .push((queue(g, tp, q), o, Inflight::decode(v.value())?));
            }
            Ok(s)
        })
    }
}

fn queue(g: &str, t: &str, q: u32) -> PopQueue {
    PopQueue {
        group: g.to_string(),
        topic: t.to_string(),
        queue_id: q,
    }
}

impl MetaTxn {
    /// The in-flight messages of one queue, by offset, as this transaction sees them.
    pub fn pop_inflight(&self, q: &PopQueue) -> Result<Vec<(u64, Inflight)>> {
        let table = self.txn.open_table(INFLIGHT).map_err(meta_err)?;
        let mut out = Vec::new();
        let (g, tp) = (q.group.as_str(), q.topic.as_str());
        for row in table
            .range((g, tp, q.queue_id, 0)..=(g, tp, q.queue_id, u64::MAX))
            .map_err(meta_err)?
        {
            let (k, v) = row.map_err(meta_err)?;
            out.push((k.value().3, Inflight::decode(v.value())?));
        }
        Ok(out)
    }

    /// One in-flight message.
    pub fn pop_inflight_at(&self, q: &PopQueue, offset: u64) -> Result<Option<Inflight>> {
        let table = self.txn.open_table(INFLIGHT).map_err(meta_err)?;
        match table
            .get((q.group.as_str(), q.topic.as_str(), q.queue_id, offset))
            .map_err(meta_err)?
        {
            Some(v) => Inflight::decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn put_pop_inflight(&mut self, q: &PopQueue, offset: u64, f: &Inflight) -> Result<()> {
        let mut table = self.txn.open_table(INFLIGHT).map_err(meta_err)?;
        table
            .insert(
                (q.group.as_str(), q.topic.as_str(), q.queue_id, offset),
                f.encode().as_slice(),
            )
            .map_err(meta_err)?;
        Ok(())
    }

    /// Removes one in-flight message; whether it was there.
    pub fn remove_pop_inflight(&mut self, q: &PopQueue, offset: u64) -> Result<bool> {
        let mut table = self.txn.open_table(INFLIGHT).map_err(meta_err)?;
        Ok(table
            .remove((q.group.as_str(), q.topic.as_str(), q.queue_id, offset))
            .map_err(meta_err)?
            .is_some())
    }

    pub fn pop_cursor(&self, q: &PopQueue) -> Result<Option<u64>> {
        let table = self.txn.open_table(CURSORS).map_err(meta_err)?;
        Ok(table
            .get((q.group.as_str(), q.topic.as_str(), q.queue_id))
            .map_err(meta_err)?
            .map(|v| v.value()))
    }

    pub fn set_pop_cursor(&mut self, q: &PopQueue, next: u64) -> Result<()> {
        let mut table = self.txn.open_table(CURSORS).map_err(meta_err)?;
        table
            .insert((q.group.as_str(), q.topic.as_str(), q.queue_id), next)
            .map_err(meta_err)?;
        Ok(())
    }

    /// Removes all POP state (a snapshot install replaces it).
    pub fn clear_pop(&mut self) -> Result<()> {
        self.txn.delete_table(CURSORS).map_err(meta_err)?;
        self.txn.delete_table(INFLIGHT).map_err(meta_err)?;
        ensure_tables(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_and_malformed_records() {
        let f = Inflight {
            visible_at_ms: 0x0102,
            epoch: 7,
            attempts: 2,
        };
        let b = f.encode();
        assert_eq!(
            b,
            [
                1, // version
                2, 1, 0, 0, 0, 0, 0, 0, // visible_at_ms
                7, 0, 0, 0, 0, 0, 0, 0, // epoch
                2, 0, 0, 0, // attempts
            ]
        );
        assert_eq!(Inflight::decode(&b).unwrap(), f);
        let mut bad = b.clone();
        bad[0] = 9;
        let mut long = b.clone();
        long.push(0);
        for x in [bad, long, b[..20].to_vec(), vec![]] {
            assert!(matches!(
                Inflight::decode(&x),
                Err(StoreError::Malformed { .. })
            ));
        }
    }
}
