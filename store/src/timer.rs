//! Timed messages in the store: the properties that mark a timed message and its delivery, the
//! system queue timed messages wait in, the on-disk index of pending timers ordered by due
//! time, and the scheduler's cursor.
//!
//! # How a timer lives in the log
//! - A **timed message** carries [`PROPERTY_DELIVER_MS`] (the absolute due time, leader clock;
//!   the broker turns a delay level or a relative delay into it when it accepts the send). It
//!   is an ordinary `Messages` record. Dispatch puts it in the system queue [`TIMER_TOPIC`]/0,
//!   never in its own topic's queue, and the Raft layer records it in the pending index under
//!   its [`TimerKey`] `(due, position)`.
//! - A **delivery** is a `Messages` entry the leader's scheduler proposes: a copy of each due
//!   message (same msg_id, body and properties), with the key it delivers in
//!   [`PROPERTY_TIMER_KEY`], addressed to its real topic and queue. Dispatch asks a
//!   [`DispatchGate`](crate::txn::DispatchGate) whether each copy enters its queue. The state
//!   machine admits a copy only if its key lies past the **cursor** (the greatest key ever
//!   delivered) and was not recalled; admitting it moves the cursor to it and removes the
//!   timer from the index. So the scheduler's progress is in the log: a new leader starts
//!   where the last committed delivery left the cursor, and a stale or repeated proposal is
//!   refused copy by copy. Refusals are recorded (table `timer_refused_copies`, by the copy's
//!   position) in the same MetaStore transaction as the applied index, so a replay of
//!   `(checkpoint, applied]` after a crash admits exactly what apply admitted.
//! - Keys only grow past the cursor: a timer recorded while the cursor is already past its
//!   due time is keyed at the cursor's due time (its position is past every delivered key's
//!   position), and a timer a delivery skipped (recorded after the leader read the index but
//!   before its delivery applied) is re-keyed the same way by that delivery. So no pending
//!   timer ever sits behind the cursor.
//! - A **recall** is a metadata command naming a key: if the key is past the cursor it is
//!   remembered as recalled (and any copy of it refused) and the timer leaves the index.
//!
//! Everything apply decides depends only on the cursor and the recalled set, never on whether
//! the index holds a key, so a replica that installed a snapshot (which carries the cursor and
//! the recalled keys, not the pending timers: see `raftmq_raft`'s state machine docs) decides
//! every later entry exactly as the replicas that applied the whole log.
//!
//! # The index (MetaStore tables; keys big-endian-ordered tuples, values little-endian)
//! - `timers`: `(due_ms u64, position u64)` → record (version 1):
//!
//!   | size | field |
//!   |------|-------|
//!   | 1    | version = 1 |
//!   | 4    | `size` of the timed message in the CommitLog |
//!   | 4    | CRC32C of the key's 16 bytes (due, position; little-endian) and `size` |
//!
//! - `timers_by_position`: position → due_ms (retention finds the oldest pending message);
//! - `timers_recalled`: `(due_ms, position)` → 0, recalled keys past the cursor;
//! - `timer_refused_copies`: copy position → 0, until a checkpoint passes it;
//! - state key `timer_cursor`: version u8 = 1, due_ms u64, position u64 (absent: nothing
//!   delivered yet).
//!
//! Memory: the tables are redb B-trees on the disk seam; the broker holds only redb's page
//! cache, whatever the number of pending timers. The tables commit with the applied index
//! (one redb transaction per apply call), which a separate timer file could not.
//!
//! # Retention
//! A pending timer's message keeps its CommitLog segment (and every later one) from
//! retention (see [`crate::Store::expired_before`]), like an undecided transaction's half:
//! the longest delay the broker accepts bounds how long.

use std::fmt;
use std::str::FromStr;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::codec::{PutLe, Reader};
use crate::error::{Result, StoreError};
use crate::message::MessageView;
use crate::meta::{MetaStore, MetaTxn, meta_err};
use crate::types::Position;

/// Property of a timed message: its due time, in ms since the epoch (leader clock).
/// RocketMQ 5 stores the same name.
pub const PROPERTY_DELIVER_MS: &str = "TIMER_DELIVER_MS";
/// Property of a timed message sent with a delay level: the level (RocketMQ's `DELAY`).
pub const PROPERTY_DELAY_LEVEL: &str = "DELAY";
/// Property of a delivery copy: the [`TimerKey`] it delivers, as `due:position`.
pub const PROPERTY_TIMER_KEY: &str = "RAFTMQ_TIMER";
/// The system queue (queue 0) timed messages wait in; never consumer-visible.
pub const TIMER_TOPIC: &str = "RMQ_SYS_TIMER_TOPIC";
/// Version byte of the timer record and the cursor.
const VERSION: u8 = 1;
/// The encoded record's length.
pub const RECORD_LEN: usize = 9;

const TIMERS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("timers");
const BY_POSITION: TableDefinition<u64, u64> = TableDefinition::new("timers_by_position");
const RECALLED: TableDefinition<(u64, u64), u8> = TableDefinition::new("timers_recalled");
const REFUSED: TableDefinition<u64, u8> = TableDefinition::new("timer_refused_copies");
const CURSOR: &str = "timer_cursor";

/// Where a pending timer sits in the index: due time first, then the timed message's
/// CommitLog position (unique, and growing in log order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    pub due_ms: u64,
    pub position: Position,
}

impl TimerKey {
    fn tuple(self) -> (u64, u64) {
        (self.due_ms, self.position.0)
    }

    fn of((due_ms, position): (u64, u64)) -> Self {
        TimerKey {
            due_ms,
            position: Position(position),
        }
    }
}

impl fmt::Display for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.due_ms, self.position.0)
    }
}

impl FromStr for TimerKey {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || StoreError::malformed("timer key", format!("{s:?} is not due:position"));
        let (due, pos) = s.split_once(':').ok_or_else(bad)?;
        Ok(TimerKey {
            due_ms: due.parse().map_err(|_| bad())?,
            position: Position(pos.parse().map_err(|_| bad())?),
        })
    }
}

/// A pending timer as the index holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub key: TimerKey,
    /// The timed message's size in the CommitLog.
    pub size: u32,
}

fn crc_of(key: TimerKey, size: u32) -> u32 {
    let mut b = Vec::with_capacity(20);
    b.put_u64(key.due_ms);
    b.put_u64(key.position.0);
    b.put_u32(size);
    crc32c::crc32c(&b)
}

impl Timer {
    /// The record (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.put_u8(VERSION);
        out.put_u32(self.size);
        out.put_u32(crc_of(self.key, self.size));
        out
    }

    /// Decodes the record stored under `key`; a wrong version, length or CRC is an error.
    pub fn decode(key: TimerKey, b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b, "timer record");
        let v = r.u8()?;
        if v != VERSION {
            return Err(StoreError::malformed(
                "timer record",
                format!("version {v}, expected {VERSION}"),
            ));
        }
        let size = r.u32()?;
        let crc = r.u32()?;
        if r.remaining() != 0 {
            return Err(StoreError::malformed(
                "timer record",
                format!("{} trailing bytes", r.remaining()),
            ));
        }
        if crc != crc_of(key, size) {
            return Err(StoreError::malformed(
                "timer record",
                format!("crc mismatch for key {key}"),
            ));
        }
        Ok(Timer { key, size })
    }
}

pub(crate) fn encode_cursor(k: TimerKey) -> Vec<u8> {
    let mut b = Vec::with_capacity(17);
    b.put_u8(VERSION);
    b.put_u64(k.due_ms);
    b.put_u64(k.position.0);
    b
}

pub(crate) fn decode_cursor(b: &[u8]) -> Result<TimerKey> {
    let mut r = Reader::new(b, "timer cursor");
    let v = r.u8()?;
    if v != VERSION || r.remaining() != 16 {
        return Err(StoreError::malformed(
            "timer cursor",
            format!("version {v} with {} bytes", r.remaining()),
        ));
    }
    Ok(TimerKey {
        due_ms: r.u64()?,
        position: Position(r.u64()?),
    })
}

/// The due time of `m` if it is a timed message waiting for its time (not a delivery copy).
/// A timed message whose property does not parse is delivered at once (`Some(0)`): the
/// broker validated it, so only a hand-made entry can carry one.
pub fn deliver_ms_of(m: &MessageView<'_>) -> Option<u64> {
    let mut due = None;
    for (k, v) in m.properties().filter_map(|p| p.ok()) {
        if k == PROPERTY_TIMER_KEY {
            return None;
        }
        if k == PROPERTY_DELIVER_MS {
            due = Some(v.parse::<u64>().unwrap_or(0));
        }
    }
    due
}

/// The key a delivery copy delivers, if `m` is one (`Some(None)`: a copy whose key does not
/// parse, refused by every gate).
pub fn delivery_of(m: &MessageView<'_>) -> Option<Option<TimerKey>> {
    m.properties()
        .filter_map(|p| p.ok())
        .find(|(k, _)| *k == PROPERTY_TIMER_KEY)
        .map(|(_, v)| v.parse().ok())
}

pub(crate) fn ensure_tables(t: &mut MetaTxn) -> Result<()> {
    t.txn.open_table(TIMERS).map_err(meta_err)?;
    t.txn.open_table(BY_POSITION).map_err(meta_err)?;
    t.txn.open_table(RECALLED).map_err(meta_err)?;
    t.txn.open_table(REFUSED).map_err(meta_err)?;
    Ok(())
}

impl MetaStore {
    /// The greatest key delivered so far.
    pub fn timer_cursor(&self) -> Result<Option<TimerKey>> {
        self.state(CURSOR)?.map(|b| decode_cursor(&b)).transpose()
    }

    /// Up to `limit` pending timers with a key past `after`, due at or before `due_by`, in key
    /// order.
    pub fn timers_due(
        &self,
        after: Option<TimerKey>,
        due_by: u64,
        limit: usize,
    ) -> Result<Vec<Timer>> {
        self.timers_range(after, due_by, limit)
    }

    /// Up to `limit` pending timers past `after` (any due time), in key order, and how many
    /// are pending in all.
    pub fn timers(&self, after: Option<TimerKey>, limit: usize) -> Result<(Vec<Timer>, u64)> {
        let list = self.timers_range(after, u64::MAX, limit)?;
        let total = self.read(|t| {
            let table = t.open_table(BY_POSITION).map_err(meta_err)?;
            table.len().map_err(meta_err)
        })?;
        Ok((list, total))
    }

    fn timers_range(
        &self,
        after: Option<TimerKey>,
        due_by: u64,
        limit: usize,
    ) -> Result<Vec<Timer>> {
        self.read(|t| {
            let table = t.open_table(TIMERS).map_err(meta_err)?;
            let rows = match after {
                Some(k) => table.range((k.due_ms, k.position.0)..),
                None => table.range((0, 0)..),
            }
            .map_err(meta_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (k, v) = row.map_err(meta_err)?;
                let key = TimerKey::of(k.value());
                if Some(key) == after {
                    continue;
                }
                if key.due_ms > due_by || out.len() >= limit {
                    break;
                }
                out.push(Timer::decode(key, v.value())?);
            }
            Ok(out)
        })
    }

    /// The pending timer of the timed message at `position`, if any.
    pub fn timer_at(&self, position: Position) -> Result<Option<Timer>> {
        self.read(|t| {
            let by_pos = t.open_table(BY_POSITION).map_err(meta_err)?;
            let Some(due) = by_pos.get(position.0).map_err(meta_err)? else {
                return Ok(None);
            };
            let key = TimerKey {
                due_ms: due.value(),
                position,
            };
            let table = t.open_table(TIMERS).map_err(meta_err)?;
            match table.get(key.tuple()).map_err(meta_err)? {
                Some(v) => Timer::decode(key, v.value()).map(Some),
                None => Err(StoreError::malformed(
                    "timer index",
                    format!("timers_by_position names {key}, which timers lacks"),
                )),
            }
        })
    }

    /// Every recalled key still past the cursor.
    pub fn timers_recalled(&self) -> Result<Vec<TimerKey>> {
        self.read(|t| {
            let table = t.open_table(RECALLED).map_err(meta_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(meta_err)? {
                out.push(TimerKey::of(row.map_err(meta_err)?.0.value()));
            }
            Ok(out)
        })
    }

    /// The lowest CommitLog position of a pending timer (retention keeps its segment).
    pub fn oldest_pending_timer(&self) -> Result<Option<Position>> {
        self.read(|t| {
            let table = t.open_table(BY_POSITION).map_err(meta_err)?;
            Ok(table
                .first()
                .map_err(meta_err)?
                .map(|(k, _)| Position(k.value())))
        })
    }

    /// Whether apply refused the delivery copy at `position`.
    pub fn timer_copy_refused(&self, position: Position) -> Result<bool> {
        self.read(|t| {
            let table = t.open_table(REFUSED).map_err(meta_err)?;
            Ok(table.get(position.0).map_err(meta_err)?.is_some())
        })
    }
}

impl MetaTxn {
    /// The greatest key delivered so far, as this transaction sees it.
    pub fn timer_cursor(&self) -> Result<Option<TimerKey>> {
        let table = self.txn.open_table(crate::meta::STATE).map_err(meta_err)?;
        let v = table.get(CURSOR).map_err(meta_err)?;
        v.map(|b| decode_cursor(b.value())).transpose()
    }

    /// Sets the cursor (a delivery, or a snapshot install).
    pub fn set_timer_cursor(&mut self, k: TimerKey) -> Result<()> {
        self.put_state(CURSOR, &encode_cursor(k))
    }

    /// Adds a pending timer.
    pub fn put_timer(&mut self, t: Timer) -> Result<()> {
        self.txn
            .open_table(TIMERS)
            .map_err(meta_err)?
            .insert(t.key.tuple(), t.encode().as_slice())
            .map_err(meta_err)?;
        self.txn
            .open_table(BY_POSITION)
            .map_err(meta_err)?
            .insert(t.key.position.0, t.key.due_ms)
            .map_err(meta_err)?;
        Ok(())
    }

    /// Removes a pending timer; returns it if it was pending.
    pub fn take_timer(&mut self, key: TimerKey) -> Result<Option<Timer>> {
        let raw = self
            .txn
            .open_table(TIMERS)
            .map_err(meta_err)?
            .remove(key.tuple())
            .map_err(meta_err)?
            .map(|v| v.value().to_vec());
        let Some(raw) = raw else {
            return Ok(None);
        };
        self.txn
            .open_table(BY_POSITION)
            .map_err(meta_err)?
            .remove(key.position.0)
            .map_err(meta_err)?;
        Timer::decode(key, &raw).map(Some)
    }

    /// Pending timers at or behind `upto` (ones a delivery skipped), removed from the index.
    pub fn take_timers_upto(&mut self, upto: TimerKey) -> Result<Vec<Timer>> {
        let mut table = self.txn.open_table(TIMERS).map_err(meta_err)?;
        let mut out = Vec::new();
        for row in table
            .extract_from_if(..=upto.tuple(), |_, _| true)
            .map_err(meta_err)?
        {
            let (k, v) = row.map_err(meta_err)?;
            out.push(Timer::decode(TimerKey::of(k.value()), v.value())?);
        }
        drop(table);
        let mut by_pos = self.txn.open_table(BY_POSITION).map_err(meta_err)?;
        for t in &out {
            by_pos.remove(t.key.position.0).map_err(meta_err)?;
        }
        Ok(out)
    }

    /// The pending timer of the timed message at `position`, as this transaction sees it.
    pub fn timer_at(&self, position: Position) -> Result<Option<TimerKey>> {
        let by_pos = self.txn.open_table(BY_POSITION).map_err(meta_err)?;
        Ok(by_pos.get(position.0).map_err(meta_err)?.map(|d| TimerKey {
            due_ms: d.value(),
            position,
        }))
    }

    /// Whether `key` was recalled.
    pub fn timer_recalled(&self, key: TimerKey) -> Result<bool> {
        let table = self.txn.open_table(RECALLED).map_err(meta_err)?;
        Ok(table.get(key.tuple()).map_err(meta_err)?.is_some())
    }

    /// Remembers `key` as recalled.
    pub fn recall_timer(&mut self, key: TimerKey) -> Result<()> {
        let mut table = self.txn.open_table(RECALLED).map_err(meta_err)?;
        table.insert(key.tuple(), 0).map_err(meta_err)?;
        Ok(())
    }

    /// Forgets recalled keys at or behind `upto` (the cursor refuses them anyway).
    pub fn forget_recalled_upto(&mut self, upto: TimerKey) -> Result<()> {
        let mut table = self.txn.open_table(RECALLED).map_err(meta_err)?;
        for row in table
            .extract_from_if(..=upto.tuple(), |_, _| true)
            .map_err(meta_err)?
        {
            row.map_err(meta_err)?;
        }
        Ok(())
    }

    /// Records that apply refused the delivery copy at `position`.
    pub fn refuse_timer_copy(&mut self, position: Position) -> Result<()> {
        let mut table = self.txn.open_table(REFUSED).map_err(meta_err)?;
        table.insert(position.0, 0).map_err(meta_err)?;
        Ok(())
    }

    /// Forgets refused copies below `below` (a checkpoint has passed them).
    pub fn forget_refused_copies_below(&mut self, below: Position) -> Result<()> {
        let mut table = self.txn.open_table(REFUSED).map_err(meta_err)?;
        for row in table
            .extract_from_if(..below.0, |_, _| true)
            .map_err(meta_err)?
        {
            row.map_err(meta_err)?;
        }
        Ok(())
    }

    /// Removes every timer, recalled key and the cursor (a snapshot install replaces them).
    pub fn clear_timers(&mut self) -> Result<()> {
        self.txn.delete_table(TIMERS).map_err(meta_err)?;
        self.txn.open_table(TIMERS).map_err(meta_err)?;
        self.txn.delete_table(RECALLED).map_err(meta_err)?;
        self.txn.open_table(RECALLED).map_err(meta_err)?;
        self.txn.delete_table(BY_POSITION).map_err(meta_err)?;
        self.txn.open_table(BY_POSITION).map_err(meta_err)?;
        let mut state = self.txn.open_table(crate::meta::STATE).map_err(meta_err)?;
        state.remove(CURSOR).map_err(meta_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
