//! `raftmq send --transaction …` and `raftmq txn list` (docs/transactions.md).
//!
//! - A transactional send goes through the SDK's `TransactionProducer`: the half message is
//!   stored, the listener's `execute_local` answers what `--transaction` says, and the SDK
//!   commits or rolls back. With `unknown` nothing is sent after the half: the command stays
//!   connected, answers the broker's check with `--check`, and waits (at most
//!   `--wait-check-secs`) until the group's table shows the transaction decided.
//! - `txn list` prints the transaction table of every group's leader (Admin.ListTransactions).
//! - `txn end` decides one pending transaction by hand, named by its half's `offset_msg_id`
//!   (which names the group): the leader's table gives its msg_id and producer group, and
//!   `Messaging.EndTransaction` decides it as its producer would (`from_check = false`, so the
//!   broker records a rollback as "rollback by producer"). For a producer group that will never
//!   come back, whose undecided halves would otherwise hold retention.
//!
//! Every line printed has a fixed shape (see [`send_line`], [`table`]), so that scripts and
//! the CLI's tests can read it. The listener answers a check only for a transaction this run
//! sent; any other half of the producer group (an earlier run's) is answered `Unknown`, which
//! decides nothing: this command cannot know how those ended.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::ValueEnum;
use raftmq_broker::convert::parse_offset_msg_id;
use raftmq_broker::managers::transactions::LIST_MAX;
use raftmq_client::transaction::{LocalTransactionState, TransactionSendResult, fn_listener};
use raftmq_client::{Message, TransactionProducer};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::{
    EndTransactionRequest, EndTransactionResponse, ListTransactionsResponse, TransactionDecision,
    TransactionInfo, TransactionState,
};
use raftmq_store::txn::PROPERTY_CHECK_TIMES;

use crate::ops;

/// Longest `--wait-check-secs`: the command never waits longer than this for checks.
pub const WAIT_CHECK_SECS_MAX: u64 = 3600;
/// How often the wait for checks looks at the broker's table.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What the local transaction answers (`--transaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LocalAnswer {
    Commit,
    Rollback,
    /// Nothing is sent after the half message: the broker's check decides.
    Unknown,
}

/// What the check of an `unknown` transaction answers (`--check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckAnswer {
    Commit,
    Rollback,
}

impl LocalAnswer {
    fn state(self) -> LocalTransactionState {
        match self {
            LocalAnswer::Commit => LocalTransactionState::Commit,
            LocalAnswer::Rollback => LocalTransactionState::Rollback,
            LocalAnswer::Unknown => LocalTransactionState::Unknown,
        }
    }
}

impl CheckAnswer {
    fn state(self) -> LocalTransactionState {
        match self {
            CheckAnswer::Commit => LocalTransactionState::Commit,
            CheckAnswer::Rollback => LocalTransactionState::Rollback,
        }
    }
}

/// A transactional `raftmq send`.
pub struct TxnSend {
    pub namesrv: String,
    pub topic: String,
    pub body: String,
    pub tag: String,
    pub key: Option<String>,
    pub count: u64,
    pub producer_group: String,
    pub local: LocalAnswer,
    pub check: CheckAnswer,
    pub wait_check: Duration,
}

/// The first check the listener saw for one of this run's transactions.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Which check it was (1 = first), as the broker numbered it.
    check_number: Option<u32>,
    /// From the half's store time (broker clock) to the check's arrival (this clock).
    after_stored_ms: i64,
}

/// What the listener and the command share: this run's transactions (msg_id → the first
/// check seen). A lock because the listener is synchronous and runs on the SDK's tasks;
/// nothing awaits while holding it.
#[derive(Default)]
struct Checks {
    ours: BTreeMap<String, Option<Seen>>,
}

fn lock(c: &Mutex<Checks>) -> std::sync::MutexGuard<'_, Checks> {
    c.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
}

/// The line printed for each transactional send.
pub fn send_line(r: &TransactionSendResult) -> String {
    let local = match r.local_state {
        LocalTransactionState::Commit => "commit",
        LocalTransactionState::Rollback => "rollback",
        LocalTransactionState::Unknown => "unknown",
    };
    let outcome = match (&r.end_error, r.local_state, &r.committed) {
        (Some(e), _, _) => format!("EndTransaction failed ({e}); left to the broker's check"),
        (None, LocalTransactionState::Commit, Some(c)) => format!(
            "committed at offset {} (offsetMsgId {})",
            c.queue_offset, c.offset_msg_id
        ),
        (None, LocalTransactionState::Commit, None) => {
            "already decided (offset not reported)".to_string()
        }
        (None, LocalTransactionState::Rollback, _) => "rolled back".to_string(),
        (None, LocalTransactionState::Unknown, _) => "left to the broker's check".to_string(),
    };
    format!(
        "sent {} in a transaction to {} queue {} (half offsetMsgId {}): local {local}, {outcome}",
        r.half.msg_id, r.half.queue.group, r.half.queue.queue_id, r.half.offset_msg_id
    )
}

/// `raftmq send --transaction …`.
pub async fn send(o: TxnSend) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.wait_check.as_secs() <= WAIT_CHECK_SECS_MAX,
        "--wait-check-secs must be ≤ {WAIT_CHECK_SECS_MAX}"
    );
    let checks: Arc<Mutex<Checks>> = Arc::default();
    let (local, check) = (o.local.state(), o.check.state());
    let seen = checks.clone();
    let listener = fn_listener(
        move |_msg, _arg| local,
        move |msg| {
            let mut c = lock(&seen);
            let Some(first) = c.ours.get_mut(&msg.msg_id) else {
                // Not this run's: we cannot tell how it ended.
                return LocalTransactionState::Unknown;
            };
            first.get_or_insert(Seen {
                check_number: msg
                    .properties
                    .get(PROPERTY_CHECK_TIMES)
                    .and_then(|n| n.parse().ok()),
                after_stored_ms: crate::now_ms() as i64 - msg.store_timestamp_ms as i64,
            });
            // A commit or rollback this run sent already: the check says the same.
            match local {
                LocalTransactionState::Unknown => check,
                decided => decided,
            }
        },
    );
    let p = TransactionProducer::builder()
        .namesrv_addrs(o.namesrv.split(','))
        .group(o.producer_group.as_str())
        .listener(listener)
        .build()?;
    p.start().await?;
    let mut failed = 0;
    let mut left: Vec<TransactionSendResult> = Vec::new();
    for i in 0..o.count {
        let body = if o.count > 1 {
            format!("{}-{i}", o.body)
        } else {
            o.body.clone()
        };
        let m = Message::new(o.topic.as_str(), body)
            .with_tags(o.tag.as_str())
            .with_keys(o.key.iter().cloned());
        let r = p.send_in_transaction(m, &()).await?;
        lock(&checks).ours.insert(r.half.msg_id.clone(), None);
        println!("{}", send_line(&r));
        if r.end_error.is_some() {
            failed += 1;
        } else if r.local_state == LocalTransactionState::Unknown {
            left.push(r);
        }
    }
    let waited = if left.is_empty() {
        Ok(())
    } else {
        wait_for_checks(&o, &checks, left).await
    };
    p.shutdown().await;
    waited?;
    if failed > 0 {
        bail!("{failed} transaction(s) not ended: the broker's check decides them");
    }
    Ok(())
}

/// Waits until every transaction in `left` is decided, printing each check this run answered
/// and each decision; fails if some is still undecided after `o.wait_check`.
async fn wait_for_checks(
    o: &TxnSend,
    checks: &Mutex<Checks>,
    left: Vec<TransactionSendResult>,
) -> anyhow::Result<()> {
    let answer = match o.check {
        CheckAnswer::Commit => "commit",
        CheckAnswer::Rollback => "rollback",
    };
    println!(
        "waiting up to {} s for the broker's check of {} transaction(s)",
        o.wait_check.as_secs(),
        left.len()
    );
    let cluster = ops::Cluster::new(&o.namesrv);
    let end = Instant::now() + o.wait_check;
    let mut left: BTreeMap<String, TransactionSendResult> = left
        .into_iter()
        .map(|r| (r.half.msg_id.clone(), r))
        .collect();
    let mut printed: Vec<String> = Vec::new();
    while !left.is_empty() && Instant::now() < end {
        tokio::time::sleep(LOOK_EVERY).await;
        let arrived: Vec<(String, Seen)> = lock(checks)
            .ours
            .iter()
            .filter_map(|(id, s)| s.map(|s| (id.clone(), s)))
            .filter(|(id, _)| !printed.contains(id))
            .collect();
        for (id, s) in arrived {
            let n = s.check_number.map_or("?".to_string(), |n| n.to_string());
            println!(
                "checked {id}: check {n} arrived {} ms after the half was stored; answered {answer}",
                s.after_stored_ms
            );
            printed.push(id);
        }
        let groups: Vec<String> = left.values().map(|r| r.half.queue.group.clone()).collect();
        for group in dedup(groups) {
            // A group without an answer now is asked again at the next look.
            let Ok(listed) = ops::list_transactions(&cluster, &group, true, 0).await else {
                continue;
            };
            for t in listed
                .transactions
                .iter()
                .filter(|t| t.state != TransactionState::TxnPending as i32)
            {
                let Some(r) = left.remove(&t.msg_id) else {
                    continue;
                };
                if !printed.contains(&t.msg_id) {
                    println!(
                        "checked {}: the check went to another member of {}",
                        t.msg_id, o.producer_group
                    );
                }
                println!("{}", decided_line(&cluster, &r, t).await);
            }
        }
    }
    if !left.is_empty() {
        let ids: Vec<&str> = left.keys().map(String::as_str).collect();
        bail!(
            "{} transaction(s) still undecided after {} s: {}",
            ids.len(),
            o.wait_check.as_secs(),
            ids.join(", ")
        );
    }
    Ok(())
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// `decided <msg_id>: committed|rolled back at index <i> (<reason>)`, and for a commit where
/// the message now is (found by its msg_id; its queue offset is not indexed).
async fn decided_line(
    cluster: &ops::Cluster,
    r: &TransactionSendResult,
    t: &TransactionInfo,
) -> String {
    let head = format!(
        "decided {}: {} at index {} ({})",
        t.msg_id,
        state_name(t.state),
        t.decided_index,
        t.reason
    );
    if t.state != TransactionState::TxnCommitted as i32 {
        return head;
    }
    match ops::find_by_key(cluster, &r.half.queue.group, &r.half.queue.topic, &t.msg_id).await {
        Ok(Some(m)) => format!(
            "{head}; in queue {} (offsetMsgId {})",
            m.queue_id, m.offset_msg_id
        ),
        Ok(None) | Err(_) => format!("{head}; not found by its msg_id yet"),
    }
}

/// A transaction state as `txn list` prints it (one word).
pub fn state_name(state: i32) -> &'static str {
    match TransactionState::try_from(state) {
        Ok(TransactionState::TxnPending) => "pending",
        Ok(TransactionState::TxnCommitted) => "committed",
        Ok(TransactionState::TxnRolledBack) => "rolled_back",
        Err(_) => "unknown",
    }
}

/// The columns of `txn list`, in order.
pub const COLUMNS: [&str; 11] = [
    "GROUP",
    "MSG_ID",
    "OFFSET_MSG_ID",
    "PRODUCER_GROUP",
    "TOPIC#QUEUE",
    "AGE_MS",
    "CHECKS",
    "NEXT_CHECK_IN_MS",
    "STATE",
    "DECIDED_INDEX",
    "REASON",
];

/// The cells of one row (`-` for an empty cell; every cell but the reason, which is last,
/// is one word).
fn row(group: &str, now_ms: u64, t: &TransactionInfo) -> Vec<String> {
    let pending = t.state == TransactionState::TxnPending as i32;
    let dash = || "-".to_string();
    vec![
        group.to_string(),
        t.msg_id.clone(),
        t.offset_msg_id.clone(),
        t.producer_group.clone(),
        format!("{}#{}", t.topic, t.queue_id),
        now_ms.saturating_sub(t.stored_ms).to_string(),
        t.checks.to_string(),
        if pending {
            (t.next_check_ms as i64)
                .saturating_sub(now_ms as i64)
                .to_string()
        } else {
            dash()
        },
        state_name(t.state).to_string(),
        if pending {
            dash()
        } else {
            t.decided_index.to_string()
        },
        if t.reason.is_empty() {
            dash()
        } else {
            t.reason.clone()
        },
    ]
}

/// The lines of `txn list`: a header, one row per transaction (columns padded to line up),
/// then per group `<group>: <n> pending, <m> listed`.
pub fn table(groups: &[(String, ListTransactionsResponse)]) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
    for (g, r) in groups {
        rows.extend(r.transactions.iter().map(|t| row(g, r.now_ms, t)));
    }
    let mut widths = [0usize; COLUMNS.len()];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i + 1 == COLUMNS.len() {
                        c.clone()
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            cells.join("  ")
        })
        .collect();
    for (g, r) in groups {
        out.push(format!(
            "{g}: {} pending, {} listed",
            r.pending,
            r.transactions.len()
        ));
    }
    out
}

/// `raftmq txn list`.
pub async fn list(namesrv: &str, group: Option<&str>, all: bool, limit: u32) -> anyhow::Result<()> {
    let cluster = ops::Cluster::new(namesrv);
    let mut out = Vec::new();
    for g in cluster.groups().await? {
        if group.is_some_and(|want| want != g.group) {
            continue;
        }
        let r = ops::list_transactions(&cluster, &g.group, all, limit).await?;
        out.push((g.group, r));
    }
    if let Some(want) = group
        && out.is_empty()
    {
        bail!("no group {want} is registered");
    }
    for line in table(&out) {
        println!("{line}");
    }
    Ok(())
}

/// The record of the pending transaction at `offset_msg_id` (half `position`) in a listing of
/// a group's pending transactions (`include_decided = false`): `Ok(None)` when the listing
/// shows it is not pending; `Err` when the listing was cut at its limit before that position
/// (pending transactions are listed by half position), so it cannot tell.
fn pending_record<'a>(
    listed: &'a ListTransactionsResponse,
    offset_msg_id: &str,
    position: u64,
) -> anyhow::Result<Option<&'a TransactionInfo>> {
    let pending = TransactionState::TxnPending as i32;
    if let Some(t) = listed
        .transactions
        .iter()
        .find(|t| t.offset_msg_id == offset_msg_id && t.state == pending)
    {
        return Ok(Some(t));
    }
    let cut = listed.pending > listed.transactions.len() as u64;
    let last_listed = listed
        .transactions
        .iter()
        .filter(|t| t.state == pending)
        .filter_map(|t| parse_offset_msg_id(&t.offset_msg_id))
        .map(|(_, p)| p.0)
        .max();
    if cut && last_listed.is_none_or(|last| position > last) {
        bail!(
            "{offset_msg_id}: its group has {} pending transactions and lists only the first {} \
             (by position); this one is past them: end older ones first",
            listed.pending,
            listed.transactions.len()
        );
    }
    Ok(None)
}

/// Why the transaction at `offset_msg_id` is not pending, from a listing with the decided
/// records (`include_decided = true`): the code `EndTransaction` would answer, and the state.
fn not_pending(all: &ListTransactionsResponse, offset_msg_id: &str) -> String {
    match all
        .transactions
        .iter()
        .find(|t| t.offset_msg_id == offset_msg_id)
    {
        Some(t) if t.state == TransactionState::TxnPending as i32 => format!(
            "{offset_msg_id}: transaction {} was not listed pending, then was: try again",
            t.msg_id
        ),
        Some(t) => format!(
            "{offset_msg_id}: {}: transaction {} was already {} at index {} ({}); nothing changed",
            ErrorCode::TxnAlreadyDecided.as_str_name(),
            t.msg_id,
            decision_words(t.state),
            t.decided_index,
            t.reason
        ),
        None => format!(
            "{offset_msg_id}: {}: no transaction on record there among the {} listed \
             (never stored, or forgotten after its decision)",
            ErrorCode::TxnNotFound.as_str_name(),
            all.transactions.len()
        ),
    }
}

fn decision_words(state: i32) -> &'static str {
    match TransactionState::try_from(state) {
        Ok(TransactionState::TxnCommitted) => "committed",
        Ok(TransactionState::TxnRolledBack) => "rolled back",
        Ok(TransactionState::TxnPending) | Err(_) => "undecided",
    }
}

/// The line `txn end` prints for the broker's answer `r` to ending `t`:
/// `ended <msg_id> (<offset_msg_id>): committed at queue <q> offset <o>` or `…: rolled back`;
/// an error naming the code for a refusal.
pub fn ended_line(
    t: &TransactionInfo,
    decision: TransactionDecision,
    r: &EndTransactionResponse,
) -> anyhow::Result<String> {
    let head = format!("ended {} ({})", t.msg_id, t.offset_msg_id);
    match ops::code(&r.status) {
        ErrorCode::Ok => {}
        c => bail!(
            "{}: {}: {}",
            t.offset_msg_id,
            c.as_str_name(),
            r.status.as_ref().map_or("", |s| s.message.as_str())
        ),
    }
    Ok(match (decision, &r.committed) {
        (TransactionDecision::Commit, Some(c)) => format!(
            "{head}: committed at queue {} offset {}",
            c.queue_id, c.queue_offset
        ),
        (TransactionDecision::Commit, None) => format!("{head}: committed (offset not reported)"),
        _ => format!("{head}: rolled back"),
    })
}

/// `raftmq txn end`: decides the pending transaction whose half message is at
/// `offset_msg_id`, as its producer would; fails, naming the state, if it is not pending.
pub async fn end(
    namesrv: &str,
    offset_msg_id: &str,
    decision: TransactionDecision,
) -> anyhow::Result<()> {
    let Some((group, position)) = parse_offset_msg_id(offset_msg_id) else {
        bail!(
            "--offset-msg-id {offset_msg_id:?} is malformed: 16 upper-case hex digits of the \
             half's position, then its group (txn list's OFFSET_MSG_ID)"
        );
    };
    let cluster = ops::Cluster::new(namesrv);
    if !cluster.groups().await?.iter().any(|g| g.group == group) {
        bail!("{offset_msg_id}: no group {group} is registered");
    }
    let limit = LIST_MAX as u32;
    let listed = ops::list_transactions(&cluster, group, false, limit).await?;
    let Some(t) = pending_record(&listed, offset_msg_id, position.0)? else {
        let all = ops::list_transactions(&cluster, group, true, limit).await?;
        bail!("{}", not_pending(&all, offset_msg_id));
    };
    let req = EndTransactionRequest {
        producer_group: t.producer_group.clone(),
        msg_id: t.msg_id.clone(),
        offset_msg_id: offset_msg_id.to_string(),
        decision: decision as i32,
        from_check: false,
    };
    let r = ops::end_transaction(&cluster, group, &req).await?;
    println!("{}", ended_line(t, decision, &r)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_client::SendResult;
    use raftmq_client::rebalance::MessageQueue;

    fn info(state: TransactionState, reason: &str) -> TransactionInfo {
        TransactionInfo {
            producer_group: "P".into(),
            msg_id: "M1".into(),
            offset_msg_id: "0000000000000100g1".into(),
            topic: "T".into(),
            queue_id: 2,
            stored_ms: 1_000,
            state: state as i32,
            checks: 1,
            next_check_ms: 1_500,
            decided_index: if state == TransactionState::TxnPending {
                0
            } else {
                42
            },
            reason: reason.into(),
        }
    }

    #[test]
    fn the_table_has_one_word_cells_but_the_last() {
        let r = ListTransactionsResponse {
            status: None,
            transactions: vec![
                info(TransactionState::TxnPending, ""),
                info(
                    TransactionState::TxnRolledBack,
                    "check limit: 15 checks unanswered",
                ),
            ],
            pending: 1,
            now_ms: 1_200,
        };
        let lines = table(&[("g1".into(), r)]);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cells(&lines[0]), COLUMNS);
        assert_eq!(
            cells(&lines[1]),
            [
                "g1",
                "M1",
                "0000000000000100g1",
                "P",
                "T#2",
                "200",
                "1",
                "300",
                "pending",
                "-",
                "-"
            ]
        );
        let decided = cells(&lines[2]);
        assert_eq!(&decided[7..10], ["-", "rolled_back", "42"]);
        assert_eq!(decided[10..].join(" "), "check limit: 15 checks unanswered");
        assert_eq!(lines[3], "g1: 1 pending, 2 listed");
        // Columns line up: every row's state starts where the header's does.
        let at = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("pending"), Some(at));
        assert_eq!(lines[2].find("rolled_back"), Some(at));
    }

    #[test]
    fn an_overdue_check_is_negative_and_an_empty_table_has_its_header() {
        let mut t = info(TransactionState::TxnPending, "");
        t.next_check_ms = 900;
        assert_eq!(row("g1", 1_000, &t)[7], "-100");
        assert_eq!(table(&[]), [table(&[])[0].clone()]);
    }

    fn listing(transactions: Vec<TransactionInfo>, pending: u64) -> ListTransactionsResponse {
        ListTransactionsResponse {
            status: None,
            transactions,
            pending,
            now_ms: 2_000,
        }
    }

    fn at(position: u64, state: TransactionState, reason: &str) -> TransactionInfo {
        TransactionInfo {
            msg_id: format!("M{position:X}"),
            offset_msg_id: format!("{position:016X}g1"),
            ..info(state, reason)
        }
    }

    #[test]
    fn a_pending_record_is_found_by_offset_msg_id_unless_the_listing_stops_before_it() {
        let id = |p: u64| format!("{p:016X}g1");
        let pending = TransactionState::TxnPending;
        let full = listing(vec![at(0x100, pending, ""), at(0x300, pending, "")], 2);
        let t = pending_record(&full, &id(0x300), 0x300).unwrap().unwrap();
        assert_eq!(t.msg_id, "M300");
        // A complete listing without it: not pending.
        assert!(pending_record(&full, &id(0x200), 0x200).unwrap().is_none());
        assert!(pending_record(&full, &id(0x900), 0x900).unwrap().is_none());
        // Cut at its limit (5 pending, 2 listed, by position): before the last listed one it
        // would have been listed; past it, nothing can be said.
        let cut = listing(full.transactions.clone(), 5);
        assert!(pending_record(&cut, &id(0x200), 0x200).unwrap().is_none());
        let e = pending_record(&cut, &id(0x900), 0x900).unwrap_err();
        assert!(
            e.to_string()
                .contains("has 5 pending transactions and lists only the first 2"),
            "{e}"
        );
        assert!(pending_record(&listing(vec![], 1), &id(0x10), 0x10).is_err());
    }

    #[test]
    fn not_pending_names_the_state_or_not_found() {
        let all = listing(
            vec![at(
                0x100,
                TransactionState::TxnRolledBack,
                "rollback by producer",
            )],
            0,
        );
        assert_eq!(
            not_pending(&all, "0000000000000100g1"),
            "0000000000000100g1: TXN_ALREADY_DECIDED: transaction M100 was already rolled back at index 42 (rollback by producer); nothing changed"
        );
        let gone = not_pending(&all, "0000000000000200g1");
        assert!(
            gone.starts_with("0000000000000200g1: TXN_NOT_FOUND: no transaction on record"),
            "{gone}"
        );
    }

    #[test]
    fn ended_lines_say_what_the_broker_did() {
        let t = at(0x100, TransactionState::TxnPending, "");
        let committed = EndTransactionResponse {
            status: None,
            committed: Some(raftmq_proto::v1::SendResult {
                msg_id: "M100".into(),
                offset_msg_id: "0000000000000500g1".into(),
                queue_id: 2,
                queue_offset: 7,
                ..Default::default()
            }),
        };
        // The broker always sets a status; OK is code 0, the default.
        let ok = |r: &EndTransactionResponse| EndTransactionResponse {
            status: Some(raftmq_proto::v1::Status::default()),
            ..r.clone()
        };
        assert_eq!(
            ended_line(&t, TransactionDecision::Commit, &ok(&committed)).unwrap(),
            "ended M100 (0000000000000100g1): committed at queue 2 offset 7"
        );
        let rolled_back = ok(&EndTransactionResponse::default());
        assert_eq!(
            ended_line(&t, TransactionDecision::Rollback, &rolled_back).unwrap(),
            "ended M100 (0000000000000100g1): rolled back"
        );
        let refused = EndTransactionResponse {
            status: Some(raftmq_proto::v1::Status {
                code: ErrorCode::TxnAlreadyDecided as i32,
                message: "transaction M100 was already committed".into(),
                leader_addr: String::new(),
            }),
            committed: None,
        };
        let e = ended_line(&t, TransactionDecision::Rollback, &refused).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0000000000000100g1: TXN_ALREADY_DECIDED: transaction M100 was already committed"
        );
    }

    #[test]
    fn send_lines_say_what_happened() {
        let half = SendResult {
            msg_id: "M".into(),
            offset_msg_id: "00000000000000A0g1".into(),
            queue: MessageQueue::new("T", "g1", 3),
            queue_offset: u64::MAX,
            recall_handle: None,
            deliver_at_ms: None,
        };
        let mut r = TransactionSendResult {
            half: half.clone(),
            local_state: LocalTransactionState::Commit,
            committed: Some(SendResult {
                queue_offset: 7,
                offset_msg_id: "00000000000000F0g1".into(),
                ..half
            }),
            end_error: None,
        };
        assert_eq!(
            send_line(&r),
            "sent M in a transaction to g1 queue 3 (half offsetMsgId 00000000000000A0g1): local commit, committed at offset 7 (offsetMsgId 00000000000000F0g1)"
        );
        r.local_state = LocalTransactionState::Rollback;
        r.committed = None;
        assert!(send_line(&r).ends_with("local rollback, rolled back"));
        r.local_state = LocalTransactionState::Unknown;
        assert!(send_line(&r).ends_with("local unknown, left to the broker's check"));
        r.local_state = LocalTransactionState::Commit;
        r.end_error = Some(raftmq_client::ClientError::State("stopped"));
        assert!(send_line(&r).contains("EndTransaction failed (stopped)"));
    }
}
