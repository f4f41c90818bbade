//! Applying timers: the state machine's side of `raftmq_store::timer`.
//!
//! - A timed message dispatched to the timer queue is recorded in the pending index under
//!   `(due, position)`, its due time raised to the cursor's if the cursor is already past it.
//! - A delivery copy is admitted by [`decide_delivery`] only if its key lies past the cursor
//!   and was not recalled; the cursor then moves to it. Every refusal is recorded with the
//!   applied index, so a crash replay admits exactly the same copies.
//! - After an entry that moved the cursor, pending timers it left behind (recorded after the
//!   leader read the index, before the delivery applied) are re-keyed just past it
//!   ([`rekey_skipped`]), so no pending timer ever sits behind the cursor.
//! - [`MetaCommand::RecallTimer`] remembers a key past the cursor as recalled.
//!
//! What is decided depends on the cursor and the recalled keys alone, which a snapshot
//! carries, never on the pending index, which it does not (see the state machine's docs).

use raftmq_store::meta::MetaTxn;
use raftmq_store::store::Assigned;
use raftmq_store::timer::{self, TIMER_TOPIC, Timer, TimerKey};
use raftmq_store::{Position, Store, StoreError};

use crate::mutations::Mutations;
use crate::types::{MetaCommand, TimerOutcome};

/// Whether the delivery copy at `copy` of timer `key` enters its queue; records the outcome.
pub(crate) fn decide_delivery(
    txn: &mut MetaTxn,
    mutations: Mutations,
    copy: Position,
    key: TimerKey,
) -> Result<bool, StoreError> {
    // The deliberate bug: progress is not in the log; every copy enters its queue.
    if mutations.timer_cursor_in_memory() {
        return Ok(true);
    }
    let cursor = txn.timer_cursor()?;
    if cursor.is_some_and(|c| key <= c) || txn.timer_recalled(key)? {
        txn.refuse_timer_copy(copy)?;
        return Ok(false);
    }
    txn.take_timer(key)?;
    txn.set_timer_cursor(key)?;
    Ok(true)
}

/// The key just past `cursor` for a timer due at `due_ms` whose message is at `position`.
fn key_past(cursor: Option<TimerKey>, due_ms: u64, position: Position) -> TimerKey {
    let Some(c) = cursor else {
        return TimerKey { due_ms, position };
    };
    let key = TimerKey {
        due_ms: due_ms.max(c.due_ms),
        position,
    };
    if key > c {
        key
    } else {
        TimerKey {
            due_ms: c.due_ms + 1,
            position,
        }
    }
}

/// After an entry that moved the cursor from `before`: re-keys pending timers now behind it.
pub(crate) fn rekey_skipped(txn: &mut MetaTxn, before: Option<TimerKey>) -> Result<(), StoreError> {
    let cursor = txn.timer_cursor()?;
    if cursor == before {
        return Ok(());
    }
    let Some(c) = cursor else { return Ok(()) };
    for t in txn.take_timers_upto(c)? {
        tracing::debug!(key = %t.key, cursor = %c, "timer behind the cursor re-keyed");
        txn.put_timer(Timer {
            key: key_past(cursor, t.key.due_ms, t.key.position),
            size: t.size,
        })?;
    }
    txn.forget_recalled_upto(c)
}

/// Records the timed messages among `assigned` in the pending index.
pub(crate) fn record_timers(
    txn: &mut MetaTxn,
    store: &Store,
    assigned: &[Assigned],
) -> Result<(), StoreError> {
    let mut cursor = None;
    for a in assigned.iter().filter(|a| a.queue.topic == TIMER_TOPIC) {
        if cursor.is_none() {
            cursor = Some(txn.timer_cursor()?);
        }
        let m = store.read_message(a.position, a.size)?;
        let due_ms = m
            .properties
            .get(timer::PROPERTY_DELIVER_MS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        txn.put_timer(Timer {
            key: key_past(cursor.flatten(), due_ms, a.position),
            size: a.size,
        })?;
    }
    Ok(())
}

/// Applies a timer command; `None` for other commands.
pub(crate) fn apply_timer_command(
    txn: &mut MetaTxn,
    cmd: &MetaCommand,
) -> Result<Option<TimerOutcome>, StoreError> {
    let MetaCommand::RecallTimer { due_ms, position } = cmd else {
        return Ok(None);
    };
    let key = TimerKey {
        due_ms: *due_ms,
        position: Position(*position),
    };
    // Recalling twice is recalling once (a client retries a recall whose answer it lost).
    if txn.timer_recalled(key)? {
        return Ok(Some(TimerOutcome::Recalled));
    }
    if txn.timer_cursor()?.is_some_and(|c| key <= c) {
        return Ok(Some(TimerOutcome::NotPending));
    }
    txn.recall_timer(key)?;
    txn.take_timer(key)?;
    Ok(Some(TimerOutcome::Recalled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(d: u64, p: u64) -> TimerKey {
        TimerKey {
            due_ms: d,
            position: Position(p),
        }
    }

    #[test]
    fn keys_land_past_the_cursor() {
        assert_eq!(key_past(None, 5, Position(1)), k(5, 1));
        assert_eq!(key_past(Some(k(10, 4)), 5, Position(9)), k(10, 9));
        assert_eq!(key_past(Some(k(10, 4)), 50, Position(9)), k(50, 9));
        // A position behind the cursor's (never from the log; kept safe anyway).
        assert_eq!(key_past(Some(k(10, 40)), 5, Position(9)), k(11, 9));
    }
}
