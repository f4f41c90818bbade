//! Transactions: half messages, `EndTransaction`, and the leader's checker
//! (docs/transactions.md).
//!
//! Every piece of a transaction's state is Raft state (the table of `raftmq_store::txn`,
//! applied by `raftmq_raft::txn_apply`): this manager only proposes.
//! - A transactional send stores the message as a half message (flagged, with its producer
//!   group): apply puts it in the half queue and records it as pending.
//! - `EndTransaction(commit)` proposes a copy of the half message flagged as its commit, as an
//!   entry of its own; apply admits it to its queue only if the transaction is still pending,
//!   so the decision is taken once even when the producer's answer and a check's answer race
//!   (or a new leader re-proposes). `EndTransaction(rollback)` proposes a rollback command.
//! - The checker (leader only, every `scan_interval_ms`) finds pending transactions whose
//!   check is due — `timeout_ms` after the half message, then every `check_interval_ms` — and
//!   for each: past `max_checks` checks, proposes a rollback ("check limit"); otherwise, if a
//!   member of the producer group is connected, first commits the new count and next due time
//!   ([`MetaCommand::CheckTransaction`]) and then asks that member. With no member connected
//!   the check waits and uses up nothing: a transaction is never rolled back because its
//!   producers were unreachable, only because they did not answer.
//! - A new leader reads the same table, so it continues every count; a check that was in
//!   flight when the leader died is asked again when its next due time comes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use raftmq_proto::limits::check_name;
use raftmq_proto::v1::{
    EndTransactionRequest, ListTransactionsRequest, ListTransactionsResponse, SendResult,
    ServerFrame, TransactionCheck, TransactionDecision, TransactionInfo, TransactionState,
};
use raftmq_raft::replica::now_ms;
use raftmq_raft::{MetaCommand, Replica, TxnOutcome};
use raftmq_store::txn::{
    PROPERTY_CHECK_TIMES, PROPERTY_HALF_POSITION, PROPERTY_PRODUCER_GROUP, SYS_FLAG_TXN_COMMIT,
    SYS_FLAG_TXN_PREPARED, TxnRecord,
};
use raftmq_store::{Message, Position};

use crate::config::TransactionSection;
use crate::convert::{offset_msg_id, parse_offset_msg_id, to_wire};
use crate::error::Refusal;
use crate::managers::channels::ClientChannels;

/// Most pending transactions one checker pass looks at.
pub const CHECK_SCAN_MAX: usize = 4096;
/// Most due transactions the checker works on at once (each a Raft round trip).
pub const CHECKS_AT_ONCE: usize = 32;
/// Most transactions listed by default, and at most.
pub const LIST_DEFAULT: usize = 1000;
pub const LIST_MAX: usize = 10_000;

/// What one checker pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckPass {
    pub checked: u32,
    pub rolled_back: u32,
    /// Due, but no member of the producer group was connected.
    pub waiting: u32,
}

/// The transactions of one replica.
pub struct TransactionManager {
    replica: Replica,
    group: String,
    config: TransactionSection,
    channels: Arc<ClientChannels>,
    /// The `checks_in_memory` mutation: counts kept here instead of in the log.
    memory_checks: Option<Mutex<HashMap<u64, (u32, u64)>>>,
    /// Where the checker's next pass starts (after this half; `None`: the beginning).
    cursor: Mutex<Option<Position>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each guarded value is replaced whole, so a poisoned lock still holds a sound one.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TransactionManager {
    pub fn new(
        replica: Replica,
        group: &str,
        config: TransactionSection,
        channels: Arc<ClientChannels>,
        checks_in_memory: bool,
    ) -> Self {
        TransactionManager {
            replica,
            group: group.to_string(),
            config,
            channels,
            memory_checks: checks_in_memory.then(Default::default),
            cursor: Mutex::new(None),
        }
    }

    /// Checks that a transactional send's message can be a half message and that its commit
    /// copy (the half plus the property naming its position) will fit `max_bytes` and every
    /// message limit: otherwise the transaction could be stored but never committed.
    pub fn check_half(m: &Message, max_bytes: usize) -> Result<(), Refusal> {
        if m.msg_id.is_empty() {
            return Err(Refusal::InvalidArgument(
                "a transactional message needs a msg_id (its transaction id)".into(),
            ));
        }
        let mut copy = m.clone();
        copy.properties
            .insert(PROPERTY_HALF_POSITION.into(), u64::MAX.to_string());
        copy.validate()
            .map_err(|e| Refusal::MessageTooLarge(format!("with room for its commit: {e}")))?;
        if copy.encoded_len() > max_bytes {
            return Err(Refusal::MessageTooLarge(format!(
                "with room for its commit it encodes to {} bytes, more than {max_bytes}",
                copy.encoded_len()
            )));
        }
        Ok(())
    }

    /// Makes `m` a half message of `producer_group`.
    pub fn make_half(producer_group: &str, m: &mut Message) {
        m.sys_flag = (m.sys_flag | SYS_FLAG_TXN_PREPARED) & !SYS_FLAG_TXN_COMMIT;
        m.properties
            .insert(PROPERTY_PRODUCER_GROUP.into(), producer_group.to_string());
        m.properties.remove(PROPERTY_HALF_POSITION);
    }

    /// The pending or decided transaction `offset_msg_id` names, checked against the request.
    fn find(&self, producer_group: &str, msg_id: &str, id: &str) -> Result<TxnRecord, Refusal> {
        let Some((group, half)) = parse_offset_msg_id(id) else {
            return Err(Refusal::InvalidArgument(format!(
                "offset_msg_id {id:?} is malformed"
            )));
        };
        if group != self.group {
            return Err(Refusal::InvalidArgument(format!(
                "offset_msg_id {id:?} names group {group:?}, not {:?}",
                self.group
            )));
        }
        let view = self.replica.store().view();
        let record = view.meta().transaction(half)?;
        match record {
            Some(r) if r.msg_id == msg_id && r.producer_group == producer_group => Ok(r),
            Some(r) if r.msg_id == msg_id => Err(Refusal::TxnGroupMismatch(format!(
                "transaction {msg_id} belongs to producer group {:?}",
                r.producer_group
            ))),
            _ => Err(Refusal::TxnNotFound(format!(
                "no transaction {msg_id} at {id} (never stored, or forgotten after its decision)"
            ))),
        }
    }

    /// Commits or rolls back a transaction (leader only: the proposal says so).
    pub async fn end(&self, req: EndTransactionRequest) -> Result<SendResult, Refusal> {
        check_name("producer group", &req.producer_group)?;
        if req.msg_id.is_empty() || req.msg_id.len() > raftmq_store::message::ID_MAX {
            return Err(Refusal::InvalidArgument("msg_id: 1..=255 bytes".into()));
        }
        let r = match self.find(&req.producer_group, &req.msg_id, &req.offset_msg_id) {
            // A new leader may not have applied the half yet: wait until it has applied
            // everything committed, then look again.
            Err(Refusal::TxnNotFound(_)) => {
                self.replica.read_barrier().await?;
                self.find(&req.producer_group, &req.msg_id, &req.offset_msg_id)?
            }
            other => other?,
        };
        let asked = TransactionDecision::try_from(req.decision);
        if let (Some(d), Ok(a)) = (&r.decision, asked) {
            return Err(already(
                &r.msg_id,
                d.commit,
                a == TransactionDecision::Commit,
            ));
        }
        let by = if req.from_check { "check" } else { "producer" };
        match asked {
            Ok(TransactionDecision::Commit) => self.commit(&r).await,
            Ok(TransactionDecision::Rollback) => {
                self.rollback(&r, format!("rollback by {by}")).await?;
                Ok(SendResult {
                    msg_id: r.msg_id.clone(),
                    offset_msg_id: req.offset_msg_id,
                    queue_id: r.queue_id,
                    queue_offset: u64::MAX,
                    ..Default::default()
                })
            }
            _ => Err(Refusal::InvalidArgument(
                "decision must be COMMIT or ROLLBACK".into(),
            )),
        }
    }

    async fn commit(&self, r: &TxnRecord) -> Result<SendResult, Refusal> {
        let mut m = self.replica.store().view().read_message(r.half, r.size)?;
        m.sys_flag = (m.sys_flag & !SYS_FLAG_TXN_PREPARED) | SYS_FLAG_TXN_COMMIT;
        m.properties
            .insert(PROPERTY_HALF_POSITION.into(), r.half.0.to_string());
        let result = self.replica.write_alone(m).await?;
        outcome(r, result.txn, true)?;
        let a = result.assigned.first().ok_or_else(|| {
            Refusal::InvalidArgument("the commit was applied but assigned no offset".into())
        })?;
        Ok(SendResult {
            msg_id: r.msg_id.clone(),
            offset_msg_id: offset_msg_id(&self.group, a.position),
            queue_id: a.queue_id,
            queue_offset: a.queue_offset.0,
            ..Default::default()
        })
    }

    async fn rollback(&self, r: &TxnRecord, reason: String) -> Result<(), Refusal> {
        let result = self
            .replica
            .propose(MetaCommand::RollbackTransaction {
                half: r.half.0,
                msg_id: r.msg_id.clone(),
                producer_group: r.producer_group.clone(),
                reason,
                decided_ms: now_ms(),
            })
            .await?;
        outcome(r, result.txn, false)
    }

    /// The group's transactions for `raftmq txn list`.
    pub fn list(&self, req: &ListTransactionsRequest) -> Result<ListTransactionsResponse, Refusal> {
        let limit = match req.limit {
            0 => LIST_DEFAULT,
            n => (n as usize).min(LIST_MAX),
        };
        let view = self.replica.store().view();
        let (mut records, pending) = view.meta().transactions(false, limit)?;
        if req.include_decided && records.len() < limit {
            let (decided, _) = view.meta().transactions(true, limit - records.len())?;
            records.extend(decided);
        }
        Ok(ListTransactionsResponse {
            status: None,
            transactions: records.iter().map(|r| self.info(r)).collect(),
            pending,
            now_ms: now_ms(),
        })
    }

    fn info(&self, r: &TxnRecord) -> TransactionInfo {
        let (state, decided_index, reason) = match &r.decision {
            None => (TransactionState::TxnPending, 0, String::new()),
            Some(d) if d.commit => (TransactionState::TxnCommitted, d.index.0, d.reason.clone()),
            Some(d) => (TransactionState::TxnRolledBack, d.index.0, d.reason.clone()),
        };
        TransactionInfo {
            producer_group: r.producer_group.clone(),
            msg_id: r.msg_id.clone(),
            offset_msg_id: offset_msg_id(&self.group, r.half),
            topic: r.topic.clone(),
            queue_id: r.queue_id,
            stored_ms: r.stored_ms,
            state: state as i32,
            checks: r.checks,
            next_check_ms: self.due_ms(r),
            decided_index,
            reason,
        }
    }

    /// When `r`'s next check is due (leader clock).
    fn due_ms(&self, r: &TxnRecord) -> u64 {
        if let Some(mem) = &self.memory_checks {
            let mem = mem.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, next)) = mem.get(&r.half.0) {
                return *next;
            }
            return r.stored_ms.saturating_add(self.config.timeout_ms);
        }
        if r.checks == 0 {
            r.stored_ms.saturating_add(self.config.timeout_ms)
        } else {
            r.next_check_ms
        }
    }

    fn checks_of(&self, r: &TxnRecord) -> u32 {
        match &self.memory_checks {
            Some(mem) => mem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.half.0)
                .map_or(0, |(c, _)| *c),
            None => r.checks,
        }
    }

    /// One pass of the checker at `now` (leader clock); see the module docs. A pass looks at
    /// up to [`CHECK_SCAN_MAX`] pending transactions after where the last one stopped (so a
    /// backlog of transactions nobody answers for never hides the ones after it), and works
    /// on up to [`CHECKS_AT_ONCE`] due ones at a time.
    pub async fn check_due(&self, now: u64) -> CheckPass {
        let view = self.replica.store().view();
        let after = *lock(&self.cursor);
        let records = match view.meta().transactions_after(false, after, CHECK_SCAN_MAX) {
            Ok((r, _)) => r,
            Err(e) => {
                tracing::warn!(error = %e, "transaction checker: reading the table failed");
                return CheckPass::default();
            }
        };
        *lock(&self.cursor) = match records.last() {
            Some(r) if records.len() == CHECK_SCAN_MAX => Some(r.half),
            _ => None,
        };
        let due: Vec<TxnRecord> = records
            .into_iter()
            .filter(|r| self.due_ms(r) <= now)
            .collect();
        let done: Vec<CheckPass> = futures_util::stream::iter(due)
            .map(|r| async move { self.check_one(&r, now).await })
            .buffer_unordered(CHECKS_AT_ONCE)
            .collect()
            .await;
        done.into_iter()
            .fold(CheckPass::default(), |a, b| CheckPass {
                checked: a.checked + b.checked,
                rolled_back: a.rolled_back + b.rolled_back,
                waiting: a.waiting + b.waiting,
            })
    }

    /// What the checker does with one due transaction.
    async fn check_one(&self, r: &TxnRecord, now: u64) -> CheckPass {
        let mut pass = CheckPass::default();
        let checks = self.checks_of(r);
        if checks >= self.config.max_checks {
            let reason = format!("check limit: {checks} checks unanswered");
            match self.rollback(r, reason).await {
                Ok(()) => pass.rolled_back += 1,
                Err(e) => {
                    tracing::debug!(msg_id = %r.msg_id, error = %e, "rollback at the check limit failed")
                }
            }
            return pass;
        }
        if !self.channels.connected(&r.producer_group) {
            pass.waiting += 1;
            return pass;
        }
        match self.record_check(r, checks + 1, now).await {
            Ok(true) => {}
            // This check number is already on record: the table read above was older than
            // the log (a new leader still applying its predecessor's entries). Asking would
            // repeat a check; the next pass reads the count as it is.
            Ok(false) => {
                tracing::debug!(msg_id = %r.msg_id, check = checks + 1, "check already recorded");
                return pass;
            }
            Err(e) => {
                tracing::debug!(msg_id = %r.msg_id, error = %e, "recording a check failed");
                return pass;
            }
        }
        match self.ask(r, checks + 1) {
            Ok(true) => pass.checked += 1,
            // The member left between the look and the ask: this check is spent (asked
            // again after the interval).
            Ok(false) => pass.waiting += 1,
            Err(e) => {
                tracing::warn!(msg_id = %r.msg_id, error = %e, "reading a half message for its check failed")
            }
        }
        pass
    }

    /// Commits the check's count and next due time before the check is asked; false if that
    /// count was already on record (the check must not be asked again).
    async fn record_check(&self, r: &TxnRecord, checks: u32, now: u64) -> Result<bool, Refusal> {
        let next = now.saturating_add(self.config.check_interval_ms);
        if let Some(mem) = &self.memory_checks {
            mem.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.half.0, (checks, next));
            return Ok(true);
        }
        let result = self
            .replica
            .propose(MetaCommand::CheckTransaction {
                half: r.half.0,
                msg_id: r.msg_id.clone(),
                checks,
                next_check_ms: next,
            })
            .await?;
        match result.txn {
            Some(TxnOutcome::Decided) => Ok(true),
            Some(TxnOutcome::NotRaised) => Ok(false),
            // A check of a decided transaction: the checker drops it either way.
            other => outcome(r, other, false).map(|()| true),
        }
    }

    /// Sends the check to one connected member; whether one took it.
    fn ask(&self, r: &TxnRecord, check_number: u32) -> Result<bool, Refusal> {
        let mut m = self.replica.store().view().read_message(r.half, r.size)?;
        m.properties
            .insert(PROPERTY_CHECK_TIMES.into(), check_number.to_string());
        let frame = ServerFrame {
            status: None,
            check: Some(TransactionCheck {
                producer_group: r.producer_group.clone(),
                message: Some(to_wire(m, None, r.half, &self.group)),
                check_number,
            }),
        };
        Ok(self
            .channels
            .send_to_one(&r.producer_group, frame)
            .is_some())
    }
}

/// The answer to a decision (`asked_commit`) for a transaction already decided (`commit`):
/// the same way, or the other.
fn already(msg_id: &str, commit: bool, asked_commit: bool) -> Refusal {
    let message = format!(
        "transaction {msg_id} was already {}",
        if commit { "committed" } else { "rolled back" }
    );
    if commit == asked_commit {
        Refusal::TxnAlreadyDecided(message)
    } else {
        Refusal::TxnDecidedOtherwise(message)
    }
}

/// A decision's (`asked_commit`) apply outcome as the answer to its request.
fn outcome(r: &TxnRecord, o: Option<TxnOutcome>, asked_commit: bool) -> Result<(), Refusal> {
    match o {
        Some(TxnOutcome::Decided) => Ok(()),
        Some(TxnOutcome::AlreadyDecided { commit }) => {
            Err(already(&r.msg_id, commit, asked_commit))
        }
        Some(TxnOutcome::Mismatch) => Err(Refusal::TxnGroupMismatch(format!(
            "transaction {} does not match the record at {}",
            r.msg_id, r.half
        ))),
        // Only a check's apply says so (a decision never does).
        Some(TxnOutcome::NotRaised) => Err(Refusal::TxnNotFound(format!(
            "transaction {} at {}: check count not raised",
            r.msg_id, r.half
        ))),
        Some(TxnOutcome::NotFound) | None => Err(Refusal::TxnNotFound(format!(
            "transaction {} at {} is not on record",
            r.msg_id, r.half
        ))),
    }
}

/// Where a half message is, for its send result.
pub fn half_result(group: &str, msg_id: String, queue_id: u32, half: Position) -> SendResult {
    SendResult {
        msg_id,
        offset_msg_id: offset_msg_id(group, half),
        queue_id,
        queue_offset: u64::MAX,
        ..Default::default()
    }
}
