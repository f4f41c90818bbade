//! Applying POP commands: the state machine's side of `raftmq_store::pop`.
//!
//! - [`MetaCommand::PopClaim`] hands out, in offset order, first the in-flight messages whose
//!   invisible time ran out at the command's `now_ms` (attempts + 1), then new ones from the
//!   cursor up to the queue's end as this entry sees it (every earlier entry is dispatched
//!   before it applies, so every replica sees the same end). Each gets the claim's log index
//!   as its epoch. At most [`INFLIGHT_MAX`] messages are in flight per queue. In-flight
//!   messages below the queue's first retained offset as the leader saw it (purged by
//!   retention) are dropped. Nothing is read from the applying replica's retention.
//! - A FIFO group's claim (`fifo`) hands out nothing while any message of the queue is in
//!   flight and invisible; once all their times ran out, the unacknowledged ones go again, in
//!   offset order, before anything new.
//! - [`MetaCommand::PopAck`] removes the message if its epoch matches; else `Stale`.
//! - [`MetaCommand::PopChangeInvisible`] sets a new visible time and the command's index as
//!   the new epoch if the epoch matches; else `Stale`.
//!
//! After each, the group's committed offset for the queue (what the native consumers and
//! the admin tools see) advances to the lowest offset still in flight, or the cursor.
//!
//! Nothing is written when a message's time runs out: being visible again is a function of
//! (`visible_at_ms`, the next claim's `now_ms`), so redelivery needs no timer.

use raftmq_store::consumequeue::QueueId;
use raftmq_store::meta::MetaTxn;
use raftmq_store::pop::{Inflight, PopQueue};
use raftmq_store::{QueueOffset, Store, StoreError};

use crate::mutations::Mutations;
use crate::types::{MetaCommand, PopClaimed, PopOutcome};

/// Most messages in flight per (group, topic, queue): a claim past it hands out fewer.
pub const INFLIGHT_MAX: usize = 10_000;

/// Applies `m` if it is a POP command (entry `index`); `None` otherwise.
pub fn apply_pop_command(
    txn: &mut MetaTxn,
    store: &Store,
    index: u64,
    m: &MetaCommand,
    mutations: Mutations,
) -> Result<Option<PopOutcome>, StoreError> {
    let outcome = match m {
        MetaCommand::PopClaim {
            group,
            topic,
            queue_id,
            max,
            now_ms,
            invisible_ms,
            start_offset,
            retained_from,
            fifo,
        } => {
            let q = pop_queue(group, topic, *queue_id);
            // The end is the same on every replica (every earlier entry is dispatched); the
            // first retained offset is not (retention, snapshot installs): the leader's.
            let (_, end) = store.queue_bounds(&QueueId {
                topic: topic.clone(),
                queue_id: *queue_id,
            });
            let first = QueueOffset(*retained_from);
            let visible_at_ms = now_ms.saturating_add(*invisible_ms);
            let mut claimed = Vec::new();
            let mut inflight = txn.pop_inflight(&q)?;
            // Retention purged these: nothing left to hand out or acknowledge.
            for (o, _) in inflight.iter().filter(|(o, _)| *o < first.0) {
                txn.remove_pop_inflight(&q, *o)?;
            }
            inflight.retain(|(o, _)| *o >= first.0);
            let max = *max as usize;
            // FIFO: held while a message handed out is invisible and unacknowledged; once
            // their time ran out, the unacknowledged ones go again, in order, alone.
            // (The deliberate bug: no hold.)
            if *fifo && !mutations.pop_ignores_fifo_hold() {
                if inflight.iter().any(|(_, f)| f.visible_at_ms > *now_ms) {
                    return Ok(Some(PopOutcome::Claimed(Vec::new())));
                }
                if !inflight.is_empty() {
                    for (offset, f) in inflight.iter().take(max) {
                        let n = Inflight {
                            visible_at_ms,
                            epoch: index,
                            attempts: f.attempts.saturating_add(1),
                        };
                        txn.put_pop_inflight(&q, *offset, &n)?;
                        claimed.push(claimed_of(*offset, &n));
                    }
                    commit_progress(txn, &q)?;
                    return Ok(Some(PopOutcome::Claimed(claimed)));
                }
            }
            for (offset, f) in &inflight {
                if claimed.len() >= max {
                    break;
                }
                // The deliberate bug: handed out again while still invisible.
                if f.visible_at_ms <= *now_ms || mutations.pop_ignores_invisible() {
                    let n = Inflight {
                        visible_at_ms,
                        epoch: index,
                        attempts: f.attempts.saturating_add(1),
                    };
                    txn.put_pop_inflight(&q, *offset, &n)?;
                    claimed.push(claimed_of(*offset, &n));
                }
            }
            let cursor = txn
                .pop_cursor(&q)?
                .unwrap_or(*start_offset)
                .max(first.0)
                .min(end.0);
            let room = INFLIGHT_MAX.saturating_sub(inflight.len());
            let n = (max.saturating_sub(claimed.len()))
                .min(room)
                .min(end.0.saturating_sub(cursor) as usize) as u64;
            for offset in cursor..cursor + n {
                let f = Inflight {
                    visible_at_ms,
                    epoch: index,
                    attempts: 1,
                };
                txn.put_pop_inflight(&q, offset, &f)?;
                claimed.push(claimed_of(offset, &f));
            }
            txn.set_pop_cursor(&q, cursor + n)?;
            commit_progress(txn, &q)?;
            PopOutcome::Claimed(claimed)
        }
        MetaCommand::PopAck {
            group,
            topic,
            queue_id,
            offset,
            epoch,
        } => {
            let q = pop_queue(group, topic, *queue_id);
            match txn.pop_inflight_at(&q, *offset)? {
                Some(f) if f.epoch == *epoch => {
                    txn.remove_pop_inflight(&q, *offset)?;
                    commit_progress(txn, &q)?;
                    PopOutcome::Acked
                }
                _ => PopOutcome::Stale,
            }
        }
        MetaCommand::PopChangeInvisible {
            group,
            topic,
            queue_id,
            offset,
            epoch,
            visible_at_ms,
        } => {
            let q = pop_queue(group, topic, *queue_id);
            match txn.pop_inflight_at(&q, *offset)? {
                Some(f) if f.epoch == *epoch => {
                    let n = Inflight {
                        visible_at_ms: *visible_at_ms,
                        epoch: index,
                        attempts: f.attempts,
                    };
                    txn.put_pop_inflight(&q, *offset, &n)?;
                    PopOutcome::Changed { epoch: index }
                }
                _ => PopOutcome::Stale,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(outcome))
}

fn pop_queue(group: &str, topic: &str, queue_id: u32) -> PopQueue {
    PopQueue {
        group: group.to_string(),
        topic: topic.to_string(),
        queue_id,
    }
}

fn claimed_of(offset: u64, f: &Inflight) -> PopClaimed {
    PopClaimed {
        offset,
        epoch: f.epoch,
        attempts: f.attempts,
        visible_at_ms: f.visible_at_ms,
    }
}

/// The group's committed offset: the lowest in flight, else the cursor (only forward).
fn commit_progress(txn: &mut MetaTxn, q: &PopQueue) -> Result<(), StoreError> {
    let low = txn.pop_inflight(q)?.first().map(|(o, _)| *o);
    if let Some(o) = low.or(txn.pop_cursor(q)?) {
        txn.advance_consumer_offset(&q.group, &q.topic, q.queue_id, QueueOffset(o))?;
    }
    Ok(())
}
