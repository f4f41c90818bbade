//! The transaction producer's rules: what a listener's answer counts as, what is sent for it,
//! and what a broker's answer to `EndTransaction` means.
//!
//! - [`effective_state`]: a listener call that panicked, or a local transaction that took
//!   longer than its limit, counts as [`LocalTransactionState::Unknown`]. The listener is
//!   synchronous and cannot be interrupted, so a late answer is not cut short: it is dropped.
//!   Why drop it: a half message left undecided is checked by the broker after a while; an
//!   answer arriving after the checks may have begun could contradict what a check already
//!   decided (a check run before the local transaction committed answers `Rollback`, the late
//!   execution then says `Commit`). Dropping late answers leaves the decision to the checks
//!   alone, which see the local transaction's final outcome.
//! - [`decision`]: `Commit` and `Rollback` are sent; `Unknown` sends nothing (the broker asks
//!   again later).
//! - [`end_answer`]: `OK` is done; `TXN_ALREADY_DECIDED` is done too (a check's answer, or an
//!   earlier try whose answer was lost, decided the same way first); `TXN_DECIDED_OTHERWISE`
//!   (decided the other way: this decision lost) and anything else is an error.
//!
//! No I/O here, no clock (durations are passed in); `crate::transaction` does the calls.

use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::{EndTransactionResponse, TransactionDecision};

use crate::error::ClientError;

/// A local transaction's outcome, as the listener reports it.
///
/// ```
/// use raftmq_client::transaction::LocalTransactionState;
/// let committed = true;
/// let s = if committed { LocalTransactionState::Commit } else { LocalTransactionState::Unknown };
/// assert_eq!(s, LocalTransactionState::Commit);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransactionState {
    /// It committed: publish the message.
    Commit,
    /// It rolled back (or never will commit): discard the message.
    Rollback,
    /// Not known yet: the broker asks again later.
    Unknown,
}

/// What one call of a listener did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerRan {
    /// It returned this state.
    Answered(LocalTransactionState),
    /// It panicked, with this message.
    Panicked(String),
}

/// The state a listener call counts as: its answer, unless it panicked or took longer than
/// `limit` (if any), which count as `Unknown`.
pub(crate) fn effective_state(
    ran: &ListenerRan,
    took: Duration,
    limit: Option<Duration>,
) -> LocalTransactionState {
    match ran {
        ListenerRan::Panicked(_) => LocalTransactionState::Unknown,
        ListenerRan::Answered(_) if limit.is_some_and(|l| took > l) => {
            LocalTransactionState::Unknown
        }
        ListenerRan::Answered(s) => *s,
    }
}

/// The decision sent for `state` (`None`: nothing is sent).
pub(crate) fn decision(state: LocalTransactionState) -> Option<TransactionDecision> {
    match state {
        LocalTransactionState::Commit => Some(TransactionDecision::Commit),
        LocalTransactionState::Rollback => Some(TransactionDecision::Rollback),
        LocalTransactionState::Unknown => None,
    }
}

/// What an `EndTransaction` call sending `decision` came to: for a commit answered `OK`,
/// where the committed message is (the wire result, if the broker gave it); `None` when there
/// is no such place to report (a rollback — whatever the answer carries — or a decision
/// already taken).
pub(crate) fn end_answer(
    decision: TransactionDecision,
    r: Result<EndTransactionResponse, ClientError>,
) -> Result<Option<raftmq_proto::v1::SendResult>, ClientError> {
    match r {
        Ok(resp) if decision == TransactionDecision::Commit => Ok(resp.committed),
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some(ErrorCode::TxnAlreadyDecided) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LocalTransactionState::{Commit, Rollback, Unknown};

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_panic_counts_as_unknown() {
        let ran = ListenerRan::Panicked("boom".into());
        assert_eq!(effective_state(&ran, Duration::ZERO, None), Unknown);
        assert_eq!(effective_state(&ran, Duration::ZERO, Some(S(3))), Unknown);
    }

    #[test]
    fn a_late_answer_counts_as_unknown() {
        let commit = ListenerRan::Answered(Commit);
        assert_eq!(effective_state(&commit, S(2), Some(S(3))), Commit);
        assert_eq!(
            effective_state(&commit, S(3), Some(S(3))),
            Commit,
            "at the limit is in time"
        );
        assert_eq!(
            effective_state(&commit, S(3) + Duration::from_millis(1), Some(S(3))),
            Unknown
        );
        let rollback = ListenerRan::Answered(Rollback);
        assert_eq!(effective_state(&rollback, S(10), Some(S(3))), Unknown);
        assert_eq!(
            effective_state(&rollback, S(10), None),
            Rollback,
            "a check has no limit"
        );
    }

    #[test]
    fn only_commit_and_rollback_are_sent() {
        assert_eq!(decision(Commit), Some(TransactionDecision::Commit));
        assert_eq!(decision(Rollback), Some(TransactionDecision::Rollback));
        assert_eq!(decision(Unknown), None);
    }

    #[test]
    fn an_already_taken_decision_is_not_an_error() {
        let committed = raftmq_proto::v1::SendResult {
            msg_id: "M".into(),
            offset_msg_id: "O".into(),
            queue_id: 1,
            queue_offset: 7,
            ..Default::default()
        };
        let ok = EndTransactionResponse {
            status: None,
            committed: Some(committed.clone()),
        };
        let commit = TransactionDecision::Commit;
        assert_eq!(end_answer(commit, Ok(ok.clone())), Ok(Some(committed)));
        assert_eq!(
            end_answer(TransactionDecision::Rollback, Ok(ok)),
            Ok(None),
            "a rollback stores nothing to report"
        );
        let decided = ClientError::Refused {
            code: ErrorCode::TxnAlreadyDecided,
            message: "committed by a check".into(),
        };
        assert_eq!(end_answer(commit, Err(decided)), Ok(None));
        // Decided the other way: the caller must hear it (its commit was not published).
        for code in [
            ErrorCode::TxnDecidedOtherwise,
            ErrorCode::TxnNotFound,
            ErrorCode::TxnGroupMismatch,
        ] {
            let e = ClientError::Refused {
                code,
                message: String::new(),
            };
            assert_eq!(end_answer(commit, Err(e.clone())), Err(e), "{code:?}");
        }
        let lost = ClientError::Unavailable("no leader".into());
        assert_eq!(end_answer(commit, Err(lost.clone())), Err(lost));
    }
}
