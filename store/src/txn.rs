//! Transactional messages in the store: the flags that mark a half message and its commit,
//! the system queue half messages are dispatched to, the transaction table's record, and the
//! gate that decides at dispatch whether a commit enters its queue.
//!
//! # How a transaction lives in the log
//! - A **half message** is a message with [`SYS_FLAG_TXN_PREPARED`] in an ordinary `Messages`
//!   record. Dispatch puts it in the queue [`HALF_TOPIC`]/0, never in its own topic's queue,
//!   so no consumer sees it; its own `topic` and `queue_id` say where a commit will put it.
//!   The Raft layer records it in the transaction table ([`TxnRecord`], MetaStore tables
//!   `txn_pending` and `txn_decided`, keyed by the half's CommitLog position).
//! - A **commit** is a copy of the half message with [`SYS_FLAG_TXN_COMMIT`] instead, and the
//!   half's position in the property [`PROPERTY_HALF_POSITION`], in its own `Messages` record.
//!   Dispatch asks a [`DispatchGate`] whether it enters its queue: the state machine admits
//!   exactly one commit per undecided half (the first decision applied) and records every
//!   refusal in the MetaStore in the same transaction as the applied index, so a replay of
//!   `(checkpoint, applied]` after a crash (`ReplayGate` in [`crate::store`]) admits exactly
//!   what apply did.
//! - A **rollback** is a metadata command: it only changes the table.
//!
//! # Record layout (version 1, little-endian; the value in `txn_pending` / `txn_decided`)
//!
//! | size | field |
//! |------|-------|
//! | 1    | version = 1 |
//! | 8    | `half`: CommitLog position of the half message (also the key) |
//! | 4    | `size` of the half message |
//! | 2+n  | `msg_id` |
//! | 2+n  | `producer_group` |
//! | 2+n  | `topic` |
//! | 4    | `queue_id` |
//! | 8    | `stored_ms`: the half's store time (leader clock) |
//! | 4    | `checks` sent so far |
//! | 8    | `next_check_ms`: when the next check is due (leader clock) |
//! | 1    | state: 0 pending, 1 committed, 2 rolled back |
//! | 8    | decision's log index (0 while pending) |
//! | 8    | decision time (leader clock; 0 while pending) |
//! | 2+n  | reason (empty while pending) |

use crate::codec::{PutLe, Reader};
use crate::error::{Result, StoreError};
use crate::message::{ID_MAX, MessageView, TOPIC_MAX};
use crate::timer::TimerKey;
use crate::types::{LogIndex, Position};

/// `sys_flag` bit of a half message (RocketMQ's `TRANSACTION_PREPARED_TYPE`).
pub const SYS_FLAG_TXN_PREPARED: u32 = 0x4;
/// `sys_flag` bit of a committed transaction's message (RocketMQ's `TRANSACTION_COMMIT_TYPE`).
pub const SYS_FLAG_TXN_COMMIT: u32 = 0x8;
/// The system queue (queue 0) half messages are dispatched to; never consumer-visible.
pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// Property of a commit message: the decimal CommitLog position of the half it commits.
pub const PROPERTY_HALF_POSITION: &str = "RAFTMQ_TXN_HALF";
/// Property of a half message: its producer group (RocketMQ's `PGROUP`).
pub const PROPERTY_PRODUCER_GROUP: &str = "PGROUP";
/// Property of a check's copy of the half message: which check it is (1 = first;
/// RocketMQ's `TRANSACTION_CHECK_TIMES`). Never stored.
pub const PROPERTY_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
/// Longest reason recorded with a decision.
pub const REASON_MAX: usize = 255;
/// Version byte of [`TxnRecord`].
const RECORD_VERSION: u8 = 1;

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub commit: bool,
    /// The log index of the entry that decided it.
    pub index: LogIndex,
    /// The deciding leader's clock.
    pub decided_ms: u64,
    /// Who decided and why ("producer", "check", "check limit", ...).
    pub reason: String,
}

/// One transaction as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub half: Position,
    pub size: u32,
    pub msg_id: String,
    pub producer_group: String,
    pub topic: String,
    pub queue_id: u32,
    pub stored_ms: u64,
    pub checks: u32,
    pub next_check_ms: u64,
    /// `None` while undecided.
    pub decision: Option<Decision>,
}

impl TxnRecord {
    /// The encoding described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(80 + self.msg_id.len() + self.topic.len());
        b.put_u8(RECORD_VERSION);
        b.put_u64(self.half.0);
        b.put_u32(self.size);
        for s in [&self.msg_id, &self.producer_group, &self.topic] {
            put_str16(&mut b, s);
        }
        b.put_u32(self.queue_id);
        b.put_u64(self.stored_ms);
        b.put_u32(self.checks);
        b.put_u64(self.next_check_ms);
        match &self.decision {
            None => {
                b.put_u8(0);
                b.put_u64(0);
                b.put_u64(0);
                put_str16(&mut b, "");
            }
            Some(d) => {
                b.put_u8(if d.commit { 1 } else { 2 });
                b.put_u64(d.index.0);
                b.put_u64(d.decided_ms);
                put_str16(&mut b, &d.reason);
            }
        }
        b
    }

    /// Inverse of [`TxnRecord::encode`]; a malformed record is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<TxnRecord> {
        let mut r = Reader::new(b, "transaction record");
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(StoreError::malformed(
                "transaction record",
                format!("unknown version {version}"),
            ));
        }
        let half = Position(r.u64()?);
        let size = r.u32()?;
        let msg_id = r.str16("msg_id", ID_MAX)?.to_string();
        let producer_group = r.str16("producer_group", ID_MAX)?.to_string();
        let topic = r.str16("topic", TOPIC_MAX)?.to_string();
        let queue_id = r.u32()?;
        let stored_ms = r.u64()?;
        let checks = r.u32()?;
        let next_check_ms = r.u64()?;
        let state = r.u8()?;
        let index = LogIndex(r.u64()?);
        let decided_ms = r.u64()?;
        let reason = r.str16("reason", REASON_MAX)?.to_string();
        r.finish()?;
        let decision = match state {
            0 => None,
            1 | 2 => Some(Decision {
                commit: state == 1,
                index,
                decided_ms,
                reason,
            }),
            s => {
                return Err(StoreError::malformed(
                    "transaction record",
                    format!("unknown state {s}"),
                ));
            }
        };
        Ok(TxnRecord {
            half,
            size,
            msg_id,
            producer_group,
            topic,
            queue_id,
            stored_ms,
            checks,
            next_check_ms,
            decision,
        })
    }

    /// Whether it is still undecided.
    pub fn pending(&self) -> bool {
        self.decision.is_none()
    }
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    // Every string here was checked against a limit below u16::MAX when it was stored.
    let s = clamp(s, u16::MAX as usize);
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s.as_bytes());
}

/// Whether `m` is a half message.
pub fn is_half(m: &MessageView<'_>) -> bool {
    m.sys_flag & SYS_FLAG_TXN_PREPARED != 0
}

/// The half position a commit message names, if `m` is a commit message (a commit message
/// without a readable position names none, and is refused by every gate).
pub fn commit_of(m: &MessageView<'_>) -> Option<Option<Position>> {
    if m.sys_flag & SYS_FLAG_TXN_COMMIT == 0 {
        return None;
    }
    let pos = m
        .properties()
        .filter_map(|p| p.ok())
        .find(|(k, _)| *k == PROPERTY_HALF_POSITION)
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map(Position);
    Some(pos)
}

/// Decides at dispatch what transactional messages and timer deliveries do.
pub trait DispatchGate {
    /// Whether the commit message in entry `index`, committing the half (with `msg_id`) at
    /// `half`, enters its queue.
    fn admit_commit(&mut self, index: LogIndex, half: Position, msg_id: &str) -> bool;

    /// Whether half messages go straight to their target queue (only ever true in a
    /// deliberate mutation that proves the simulator's checkers see it).
    fn halves_visible(&self) -> bool {
        false
    }

    /// Whether the delivery copy at `copy` (of the timer `key`) enters its queue (see
    /// [`crate::timer`]).
    fn admit_timer(&mut self, copy: Position, key: TimerKey) -> bool;

    /// Whether timed messages go straight to their queue at send (only ever true in a
    /// deliberate mutation that proves the simulator's checkers see it).
    fn timers_immediate(&self) -> bool {
        false
    }

    /// An error the gate met while deciding (dispatch stops at the entry, before counting it
    /// dispatched).
    fn take_error(&mut self) -> Option<StoreError> {
        None
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn clamp(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(decision: Option<Decision>) -> TxnRecord {
        TxnRecord {
            half: Position(0x0102),
            size: 77,
            msg_id: "M".into(),
            producer_group: "G".into(),
            topic: "T".into(),
            queue_id: 3,
            stored_ms: 5,
            checks: 2,
            next_check_ms: 9,
            decision,
        }
    }

    #[test]
    fn record_golden_bytes() {
        let got = record(None).encode();
        let mut want = vec![1];
        want.extend_from_slice(&0x0102u64.to_le_bytes());
        want.extend_from_slice(&77u32.to_le_bytes());
        for s in ["M", "G", "T"] {
            want.extend_from_slice(&1u16.to_le_bytes());
            want.extend_from_slice(s.as_bytes());
        }
        want.extend_from_slice(&3u32.to_le_bytes());
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&9u64.to_le_bytes());
        want.push(0);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(got, want);
    }

    #[test]
    fn records_round_trip() {
        for d in [
            None,
            Some(Decision {
                commit: true,
                index: LogIndex(12),
                decided_ms: 40,
                reason: "producer".into(),
            }),
            Some(Decision {
                commit: false,
                index: LogIndex(13),
                decided_ms: 41,
                reason: "check limit".into(),
            }),
        ] {
            let r = record(d);
            assert_eq!(TxnRecord::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = record(None).encode();
        for cut in 0..good.len() {
            assert!(TxnRecord::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        assert!(TxnRecord::decode(&bad_version).is_err());
        let mut bad_state = good.clone();
        let state_at = good.len() - 2 - 16 - 1;
        bad_state[state_at] = 7;
        assert!(TxnRecord::decode(&bad_state).is_err());
        let mut long = good;
        long.push(0);
        assert!(TxnRecord::decode(&long).is_err());
    }
}
