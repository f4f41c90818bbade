//! The transactional workload of the whole-cluster scenario (on when
//! `ClusterConfig::transactions` is set): the real `TransactionProducer` and `PushConsumer`
//! on their own nodes, recording a [`TxnHistory`] for [`crate::txn_checks`].
//!
//! - `tp1` sends transactions `t0`, `t1`, … to topic `TX` ([`plan`] says how each answers);
//!   it may be killed (fault `ProducerCrash`) and restarts as a fresh producer that continues
//!   the numbering and answers checks of what its predecessor left undecided;
//! - `tp2`, of the same producer group, sends nothing and answers checks (the other member);
//! - `ct1` consumes `TX` (group `CT`) and records every delivery with the half it commits;
//! - fault `TxnLeaderKill` kills a group's leader while a local transaction runs (between
//!   the half message and the decision).
//!
//! The listeners decide by body, so any member answers a check as the sender would have.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use raftmq_client::consumer::ReceivedMessage;
use raftmq_client::transaction::{LocalTransactionState, TransactionProducer, fn_listener};
use raftmq_client::{ConsumeResult, Message};
use raftmq_raft::Replica;
use raftmq_store::txn::{PROPERTY_CHECK_TIMES, PROPERTY_HALF_POSITION};
use raftmq_testkit::{Deadline, try_wait_for};
use tokio::sync::Notify;

use crate::txn_checks::{
    Decided, Delivery, Truth, TxnHistory, TxnViolation, check_answer, check_txn_history,
    execute_answer, plan,
};

/// The transactional topic and its queues per group.
pub const TOPIC: (&str, u32) = ("TX", 2);
const PRODUCER_GROUP: &str = "TP";
const CONSUMER_GROUP: &str = "CT";

/// The broker's checker settings in the simulator (seconds, not a minute).
pub const TIMEOUT_MS: u64 = 1_000;
pub const CHECK_INTERVAL_MS: u64 = 1_000;
pub const MAX_CHECKS: u32 = 15;

/// What the workload's nodes share.
#[derive(Clone)]
pub struct TxnWorld {
    pub history: Arc<Mutex<TxnHistory>>,
    start: tokio::time::Instant,
    /// Checks asked so far, per half (offset_msg_id): `Unknown` answers count down from it.
    asked: Arc<Mutex<BTreeMap<String, u32>>>,
    /// The next transaction to send (a restarted sender continues).
    next: Arc<AtomicU32>,
    /// At most this many transactions.
    max: u32,
    /// Send until this long after the start.
    until: Duration,
    /// Set by the `TxnLeaderKill` fault; the next local transaction clears it and rings
    /// `kill_now`.
    pub arm_kill: Arc<AtomicBool>,
    pub kill_now: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("lock poisoned: a panic broke this state")
}

impl TxnWorld {
    pub fn new(start: tokio::time::Instant, max: u32, until: Duration) -> Self {
        TxnWorld {
            history: Arc::default(),
            start,
            asked: Arc::default(),
            next: Arc::default(),
            max,
            until,
            arm_kill: Arc::default(),
            kill_now: Arc::new(Notify::new()),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn execute(&self, body: &str) -> LocalTransactionState {
        if self.arm_kill.swap(false, Ordering::AcqRel) {
            self.kill_now.notify_one();
        }
        self.answer(body, execute_answer(body), self.now())
    }

    fn check(&self, m: &ReceivedMessage) -> LocalTransactionState {
        let body = String::from_utf8_lossy(&m.body).into_owned();
        let number = m
            .properties
            .get(PROPERTY_CHECK_TIMES)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let at = self.now();
        lock(&self.history)
            .checks
            .push((body.clone(), m.offset_msg_id.clone(), number, at));
        let asked = {
            let mut a = lock(&self.asked);
            let n = a.entry(m.offset_msg_id.clone()).or_default();
            *n += 1;
            *n
        };
        self.answer(&body, check_answer(&body, asked), at)
    }

    /// The listener's answer for `body`: a commit is recorded as requested at `at`.
    fn answer(&self, body: &str, truth: Option<Truth>, at: u64) -> LocalTransactionState {
        match truth {
            None => LocalTransactionState::Unknown,
            Some(Truth::Commit) => {
                lock(&self.history).commit_requested(body, at);
                LocalTransactionState::Commit
            }
            Some(Truth::Rollback) => LocalTransactionState::Rollback,
        }
    }
}

async fn producer(world: &TxnWorld, name: &str, namesrv: &str) -> TransactionProducer {
    let (w1, w2) = (world.clone(), world.clone());
    let listener = fn_listener(
        move |m: &Message, _| w1.execute(&String::from_utf8_lossy(m.body())),
        move |m: &ReceivedMessage| w2.check(m),
    );
    let p = TransactionProducer::builder()
        .namesrv_addrs([namesrv])
        .group(PRODUCER_GROUP)
        .client_id(name)
        .topics([TOPIC.0])
        .listener(listener)
        .build()
        .expect("a valid transaction producer");
    while p.start().await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p
}

/// One incarnation of a producer node: `sends` sends transactions until the window closes;
/// then (and otherwise) it only answers checks, for the node's lifetime.
pub async fn producer_node(world: TxnWorld, name: String, namesrv: &'static str, sends: bool) {
    let p = producer(&world, &name, namesrv).await;
    while sends && world.start.elapsed() < world.until {
        let i = world.next.fetch_add(1, Ordering::AcqRel);
        if i >= world.max {
            break;
        }
        let body = format!("t{i}");
        let r = p
            .send_in_transaction(Message::new(TOPIC.0, body.clone()), &())
            .await;
        match r {
            Ok(r) => {
                lock(&world.history)
                    .halves
                    .insert(body.clone(), world.now());
                if plan(i).end_twice {
                    // Two commits racing: the broker must take the decision once.
                    lock(&world.history).commit_requested(&body, world.now());
                    let _ = tokio::join!(
                        p.end_transaction(&r.half, true),
                        p.end_transaction(&r.half, true)
                    );
                }
            }
            Err(_) => {
                lock(&world.history).indeterminate.insert(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(10..60))).await;
    }
    std::future::pending::<()>().await;
    drop(p);
}

/// The consumer of `TX`: records every delivery.
pub async fn consumer_node(world: TxnWorld, namesrv: &'static str) {
    let w = world.clone();
    let listener = move |msgs: &[ReceivedMessage]| {
        let at = w.now();
        let mut h = lock(&w.history);
        for m in msgs {
            h.deliveries.push(Delivery {
                body: String::from_utf8_lossy(&m.body).into_owned(),
                half: m
                    .properties
                    .get(PROPERTY_HALF_POSITION)
                    .and_then(|p| p.parse().ok()),
                queue: format!("{}@{}:{}", m.queue.topic, m.queue.group, m.queue.queue_id),
                offset: m.queue_offset,
                at,
            });
        }
        ConsumeResult::Success
    };
    let c = crate::cluster_scenario::workload_consumer(namesrv, CONSUMER_GROUP, "ct1", TOPIC.0)
        .concurrent(listener)
        .build()
        .expect("a valid consumer");
    crate::cluster_scenario::run_consumer(c).await;
}

/// Halves of `TX` still undecided on `leader` (the group's table as applied there).
pub fn pending_on(leader: &Replica) -> usize {
    let view = leader.store().view();
    view.meta()
        .transactions(false, usize::MAX)
        .map_or(usize::MAX, |(r, _)| {
            r.iter().filter(|r| r.topic == TOPIC.0).count()
        })
}

/// Records the group's table (as applied on `leader`) into the history: every decided half
/// and every undecided one, by body.
pub fn record_table(leader: &Replica, h: &mut TxnHistory) {
    let view = leader.store().view();
    for decided in [false, true] {
        let Ok((records, _)) = view.meta().transactions(decided, usize::MAX) else {
            continue;
        };
        for r in records.into_iter().filter(|r| r.topic == TOPIC.0) {
            let body = view
                .read_message(r.half, r.size)
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .unwrap_or_else(|e| format!("<unreadable half {}: {e}>", r.half));
            match r.decision {
                Some(d) => h.decided.entry(body).or_default().push(Decided {
                    half: r.half.0,
                    commit: d.commit,
                    reason: d.reason,
                }),
                None => h.pending.entry(body).or_default().push(r.half.0),
            }
        }
    }
}

/// A node of the transactional workload; a restart is a fresh producer (`tp1#1`, …).
pub fn node(
    handle: &Handle,
    name: &'static str,
    ip: [u8; 4],
    world: &TxnWorld,
    namesrv: &'static str,
    sends: bool,
) -> NodeHandle {
    let incarnation = Arc::new(AtomicU32::new(0));
    let world = world.clone();
    handle
        .create_node()
        .name(name)
        .ip(IpAddr::from(ip))
        .init(move || {
            let n = incarnation.fetch_add(1, Ordering::Relaxed);
            producer_node(world.clone(), format!("{name}-{n}"), namesrv, sends)
        })
        .build()
}

/// After healing: waits until no transaction is undecided on any group's leader (`leaders`;
/// a live member answers every check), and every committed one was consumed; then judges
/// the history. `within(secs)` makes the waits (the scenario's poll interval); what is not
/// reached in time goes to `liveness`.
pub async fn settle<L, I>(
    world: &TxnWorld,
    leaders: L,
    note: impl Fn(&str),
    within: fn(u64) -> Deadline,
    liveness: &mut Vec<String>,
) -> (TxnHistory, Vec<TxnViolation>)
where
    L: Fn() -> I,
    I: Iterator<Item = Option<Replica>>,
{
    let bound = TIMEOUT_MS + u64::from(MAX_CHECKS) * CHECK_INTERVAL_MS;
    let decided = try_wait_for(within(bound / 1000 + 10), || {
        std::future::ready(leaders().all(|l| l.is_some_and(|l| pending_on(&l) == 0)))
    })
    .await;
    if decided.is_ok() {
        note("every transaction decided");
    } else {
        liveness.push(format!(
            "transactions still undecided {bound} ms after healing"
        ));
    }
    let mut h = TxnHistory::default();
    for l in leaders().flatten() {
        record_table(&l, &mut h);
    }
    let committed: BTreeSet<String> = h
        .decided
        .iter()
        .filter(|(_, d)| d.iter().any(|d| d.commit))
        .map(|(b, _)| b.clone())
        .collect();
    let consumed = try_wait_for(within(30), || {
        let got: BTreeSet<String> = lock(&world.history)
            .deliveries
            .iter()
            .map(|d| d.body.clone())
            .collect();
        std::future::ready(committed.is_subset(&got))
    })
    .await;
    if consumed.is_ok() {
        note("every committed transaction consumed");
    }
    let seen = lock(&world.history).clone();
    h.halves = seen.halves;
    h.indeterminate = seen.indeterminate;
    h.commit_requested = seen.commit_requested;
    h.checks = seen.checks;
    h.deliveries = seen.deliveries;
    let violations = check_txn_history(&h, MAX_CHECKS);
    (h, violations)
}
