//! Applying transactions: the state machine's side of `raftmq_store::txn`.
//!
//! - A half message dispatched to the half queue is recorded as a pending [`TxnRecord`].
//! - A commit message is admitted to its queue by [`ApplyGate`] only if its transaction is
//!   pending (and has its msg_id); that decides it. Any other commit is refused and the
//!   refusal recorded, in the same MetaStore transaction as the applied index.
//! - [`MetaCommand::RollbackTransaction`] decides a pending transaction the other way;
//!   [`MetaCommand::CheckTransaction`] records the checker's progress (count, next due time),
//!   so a new leader continues the count.
//! - A decision forgets decided transactions whose half lies more than
//!   [`DECIDED_KEEP_BYTES`] of log behind it: the same rule on every replica, so the table
//!   stays the same everywhere and bounded.

use raftmq_store::meta::MetaTxn;
use raftmq_store::store::Assigned;
use raftmq_store::timer::TimerKey;
use raftmq_store::txn::{
    self, Decision, DispatchGate, HALF_TOPIC, PROPERTY_PRODUCER_GROUP, TxnRecord,
};
use raftmq_store::{LogIndex, Position, Store, StoreError};

use crate::mutations::Mutations;
use crate::types::{MetaCommand, TxnOutcome};

/// How far (in CommitLog bytes) the log moves past a decided transaction's half message
/// before the record is forgotten (it only answers late decisions and `txn list` then).
pub const DECIDED_KEEP_BYTES: u64 = 1 << 30;

/// The gate of apply: decides commits (see the module docs) and timer deliveries (see
/// [`crate::timer_apply`]).
pub(crate) struct ApplyGate<'a> {
    pub txn: &'a mut MetaTxn,
    /// The entry's leader clock, recorded with a decision.
    pub decided_ms: u64,
    pub mutations: Mutations,
    pub outcome: Option<TxnOutcome>,
    pub error: Option<StoreError>,
}

impl ApplyGate<'_> {
    fn decide_commit(
        &mut self,
        index: LogIndex,
        half: Position,
        msg_id: &str,
    ) -> Result<bool, StoreError> {
        let (admit, outcome) = match self.txn.transaction(half)? {
            Some(r) if r.msg_id != msg_id => (false, TxnOutcome::Mismatch),
            Some(mut r) if r.pending() => {
                r.decision = Some(Decision {
                    commit: true,
                    index,
                    decided_ms: self.decided_ms,
                    reason: "commit".into(),
                });
                self.txn.put_transaction(&r)?;
                forget_old(self.txn, half)?;
                (true, TxnOutcome::Decided)
            }
            Some(r) => {
                let commit = r.decision.as_ref().is_some_and(|d| d.commit);
                // The deliberate bug: a second commit enters the queue again.
                (
                    self.mutations.commit_twice(),
                    TxnOutcome::AlreadyDecided { commit },
                )
            }
            None => (false, TxnOutcome::NotFound),
        };
        if !admit {
            self.txn.refuse_commit(index)?;
        }
        self.outcome = Some(outcome);
        Ok(admit)
    }
}

impl DispatchGate for ApplyGate<'_> {
    fn admit_commit(&mut self, index: LogIndex, half: Position, msg_id: &str) -> bool {
        match self.decide_commit(index, half, msg_id) {
            Ok(a) => a,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }

    fn halves_visible(&self) -> bool {
        self.mutations.halves_visible()
    }

    fn admit_timer(&mut self, copy: Position, key: TimerKey) -> bool {
        match crate::timer_apply::decide_delivery(self.txn, self.mutations, copy, key) {
            Ok(a) => a,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }

    fn timers_immediate(&self) -> bool {
        self.mutations.timers_immediate()
    }

    fn take_error(&mut self) -> Option<StoreError> {
        self.error.take()
    }
}

/// Records the half messages among `assigned` as pending transactions.
pub(crate) fn record_halves(
    txn: &mut MetaTxn,
    store: &Store,
    assigned: &[Assigned],
) -> Result<(), StoreError> {
    for a in assigned.iter().filter(|a| a.queue.topic == HALF_TOPIC) {
        if txn.transaction(a.position)?.is_some() {
            continue;
        }
        let m = store.read_message(a.position, a.size)?;
        let producer_group = m
            .properties
            .get(PROPERTY_PRODUCER_GROUP)
            .cloned()
            .unwrap_or_default();
        txn.put_transaction(&TxnRecord {
            half: a.position,
            size: a.size,
            msg_id: m.msg_id,
            producer_group,
            topic: m.topic,
            queue_id: m.queue_id,
            stored_ms: m.store_timestamp_ms,
            checks: 0,
            next_check_ms: 0,
            decision: None,
        })?;
    }
    Ok(())
}

/// Applies a transaction command; `None` for other commands.
pub(crate) fn apply_txn_command(
    txn: &mut MetaTxn,
    index: LogIndex,
    cmd: &MetaCommand,
) -> Result<Option<TxnOutcome>, StoreError> {
    match cmd {
        MetaCommand::RollbackTransaction {
            half,
            msg_id,
            producer_group,
            reason,
            decided_ms,
        } => {
            let half = Position(*half);
            let outcome = match txn.transaction(half)? {
                Some(r) if r.msg_id != *msg_id || r.producer_group != *producer_group => {
                    TxnOutcome::Mismatch
                }
                Some(mut r) if r.pending() => {
                    r.decision = Some(Decision {
                        commit: false,
                        index,
                        decided_ms: *decided_ms,
                        reason: txn::clamp(reason, txn::REASON_MAX).to_string(),
                    });
                    txn.put_transaction(&r)?;
                    forget_old(txn, half)?;
                    TxnOutcome::Decided
                }
                Some(r) => TxnOutcome::AlreadyDecided {
                    commit: r.decision.as_ref().is_some_and(|d| d.commit),
                },
                None => TxnOutcome::NotFound,
            };
            Ok(Some(outcome))
        }
        MetaCommand::CheckTransaction {
            half,
            msg_id,
            checks,
            next_check_ms,
        } => {
            let half = Position(*half);
            let outcome = match txn.transaction(half)? {
                Some(r) if r.msg_id != *msg_id => TxnOutcome::Mismatch,
                Some(mut r) if r.pending() => {
                    if *checks > r.checks {
                        r.checks = *checks;
                        r.next_check_ms = *next_check_ms;
                        txn.put_transaction(&r)?;
                        TxnOutcome::Decided
                    } else {
                        TxnOutcome::NotRaised
                    }
                }
                Some(r) => TxnOutcome::AlreadyDecided {
                    commit: r.decision.as_ref().is_some_and(|d| d.commit),
                },
                None => TxnOutcome::NotFound,
            };
            Ok(Some(outcome))
        }
        _ => Ok(None),
    }
}

fn forget_old(txn: &mut MetaTxn, half: Position) -> Result<(), StoreError> {
    if let Some(below) = half.0.checked_sub(DECIDED_KEEP_BYTES) {
        txn.forget_decided_below(Position(below))?;
    }
    Ok(())
}
