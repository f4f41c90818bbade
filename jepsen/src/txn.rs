//! The transactional workload, through the real `TransactionProducer`: transaction `t<i>`
//! follows `raftmq_check::txn::plan(i)` — committed or rolled back, answered at once or left
//! `Unknown` for the broker's checks (some checks answered `Unknown` first), and some ended
//! twice at once (two racing commits). A consumer group records what becomes visible. At the
//! end the group's transaction table is read (Admin `ListTransactions`, bodies by
//! the acknowledgements and checks) into the history, and `raftmq_check::txn` judges it: decided as the local
//! transaction said, committed ⇒ consumed, rolled back ⇒ never, never visible before a commit
//! was requested, one copy per half, no check repeated or past the limit, nothing left
//! undecided.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_check::txn::{Decided, Delivery, Truth, TxnHistory, check_answer, execute_answer, plan};
use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::transaction::{LocalTransactionState, TransactionProducer, fn_listener};
use raftmq_client::{ConsumeResult, Message, PushConsumer, ReceivedMessage};
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::*;
// The wire names of the transaction properties (the store defines them; the sim uses the same).
use raftmq_store::txn::{PROPERTY_CHECK_TIMES, PROPERTY_HALF_POSITION};

use crate::cluster::{GROUP, leader, namesrv_addr};
use crate::history::{Op, Recorder, Type};

pub const TOPIC: &str = "JX";
const PRODUCER_GROUP: &str = "JXP";
const CONSUMER_GROUP: &str = "JXC";
/// The brokers' `[transaction]` settings for this workload (fast checks).
pub const TIMEOUT_MS: u64 = 2_000;
pub const CHECK_INTERVAL_MS: u64 = 1_000;
pub const MAX_CHECKS: u32 = 15;

/// The configuration section the brokers run with.
pub fn broker_section() -> String {
    format!(
        "[transaction]\ntimeout_ms = {TIMEOUT_MS}\ncheck_interval_ms = {CHECK_INTERVAL_MS}\nmax_checks = {MAX_CHECKS}\n"
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn half_position(offset_msg_id: &str) -> Option<u64> {
    offset_msg_id
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// The listener's side: what each transaction answers, and the checks it was asked.
#[derive(Clone)]
struct Listener {
    rec: Recorder,
    /// Checks answered so far, per half.
    asked: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Listener {
    fn commit_requested(&self, body: &str) {
        self.rec.record(
            Op::new(self.rec.now(), "txn", Type::Info, "commit-requested")
                .topic(TOPIC)
                .value(body),
        );
    }

    fn execute(&self, body: &str) -> LocalTransactionState {
        self.answer(body, execute_answer(body))
    }

    fn check(&self, m: &ReceivedMessage) -> LocalTransactionState {
        let body = String::from_utf8_lossy(&m.body).into_owned();
        let number: u32 = m
            .properties
            .get(PROPERTY_CHECK_TIMES)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut op = Op::new(self.rec.now(), "txn", Type::Info, "check")
            .topic(TOPIC)
            .value(&body)
            .error(&m.offset_msg_id);
        op.number = Some(number);
        self.rec.record(op);
        let asked = {
            let mut a = lock(&self.asked);
            let n = a.entry(m.offset_msg_id.clone()).or_default();
            *n += 1;
            *n
        };
        self.answer(&body, check_answer(&body, asked))
    }

    /// The listener's answer for `body`: a commit is recorded as requested.
    fn answer(&self, body: &str, truth: Option<Truth>) -> LocalTransactionState {
        match truth {
            None => LocalTransactionState::Unknown,
            Some(Truth::Commit) => {
                self.commit_requested(body);
                LocalTransactionState::Commit
            }
            Some(Truth::Rollback) => LocalTransactionState::Rollback,
        }
    }
}

/// Producers and the consumer of the transactional workload.
pub struct Txns {
    producers: Vec<TransactionProducer>,
    sending: Vec<tokio::task::JoinHandle<()>>,
    consumer: PushConsumer,
}

impl Txns {
    /// Starts `producers` transaction producers sending `rate` transactions a second in all
    /// until `stop`, and the consumer.
    pub async fn start(
        rec: Recorder,
        producers: u32,
        rate: u32,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Txns> {
        let listener = Listener {
            rec: rec.clone(),
            asked: Arc::default(),
        };
        let next = Arc::new(AtomicU32::new(0));
        let mut out = Txns {
            producers: Vec::new(),
            sending: Vec::new(),
            consumer: consumer(rec.clone())?,
        };
        out.consumer.start().await?;
        let period = Duration::from_secs_f64(f64::from(producers) / f64::from(rate.max(1)));
        for k in 0..producers {
            let (l1, l2) = (listener.clone(), listener.clone());
            let p = TransactionProducer::builder()
                .namesrv_addrs([namesrv_addr()])
                .group(PRODUCER_GROUP)
                .client_id(format!("tp{k}"))
                .topics([TOPIC])
                .listener(fn_listener(
                    move |m: &Message, _| l1.execute(&String::from_utf8_lossy(m.body())),
                    move |m: &ReceivedMessage| l2.check(m),
                ))
                .build()?;
            p.start().await?;
            let (p2, rec, stop, next, listener) = (
                p.clone(),
                rec.clone(),
                stop.clone(),
                next.clone(),
                listener.clone(),
            );
            out.sending.push(tokio::spawn(async move {
                let name = format!("tp{k}");
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    let body = format!("t{i}");
                    let op = |k, f: &str| Op::new(rec.now(), &name, k, f).topic(TOPIC).value(&body);
                    rec.record(op(Type::Invoke, "txn-send"));
                    match p2
                        .send_in_transaction(Message::new(TOPIC, body.clone()), &())
                        .await
                    {
                        Ok(r) => {
                            rec.record(op(Type::Ok, "txn-send").error(&r.half.offset_msg_id));
                            if plan(i).end_twice {
                                // Two commits racing: the broker must take the decision once.
                                listener.commit_requested(&body);
                                let _ = tokio::join!(
                                    p2.end_transaction(&r.half, true),
                                    p2.end_transaction(&r.half, true)
                                );
                            }
                        }
                        Err(e) => rec.record(op(Type::Info, "txn-send").error(e.to_string())),
                    }
                }
            }));
            out.producers.push(p);
        }
        Ok(out)
    }

    /// Stops sending (the producers stay, to answer checks).
    pub async fn stop_sending(&mut self) {
        for t in self.sending.drain(..) {
            let _ = t.await;
        }
    }

    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
        for p in self.producers {
            p.shutdown().await;
        }
    }
}

fn consumer(rec: Recorder) -> anyhow::Result<PushConsumer> {
    let listener = move |msgs: &[ReceivedMessage]| {
        for m in msgs {
            let mut op = Op::new(rec.now(), "txc", Type::Ok, "txn-receive")
                .topic(TOPIC)
                .value(String::from_utf8_lossy(&m.body).into_owned())
                .at(m.queue.queue_id, m.queue_offset);
            op.half = m
                .properties
                .get(PROPERTY_HALF_POSITION)
                .and_then(|p| p.parse().ok());
            rec.record(op);
        }
        ConsumeResult::Success
    };
    Ok(PushConsumer::builder()
        .namesrv_addrs([namesrv_addr()])
        .group(CONSUMER_GROUP)
        .client_id("txc")
        .heartbeat_every(Duration::from_secs(1))
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .subscribe(TOPIC, "*")
        .concurrent(listener)
        .build()?)
}

/// The group's transaction table for [`TOPIC`], as the leader has it: (half offset_msg_id,
/// state, reason).
async fn table() -> anyhow::Result<Vec<TransactionInfo>> {
    let (_, addr) = leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let r = AdminClient::connect(format!("http://{addr}"))
        .await?
        .list_transactions(ListTransactionsRequest {
            include_decided: true,
            limit: 1_000_000,
        })
        .await?
        .into_inner();
    Ok(r.transactions
        .into_iter()
        .filter(|t| t.topic == TOPIC)
        .collect())
}

/// Waits (up to `limit`) until no transaction of the workload is undecided and every
/// committed one was delivered; then records the table into the history
/// (`txn-table` operations: value = body, half, outcome).
pub async fn settle(rec: &Recorder, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: Vec<TransactionInfo> = Vec::new();
    loop {
        if let Ok(t) = table().await {
            last = t;
            let pending = last
                .iter()
                .filter(|t| t.state() == TransactionState::TxnPending)
                .count();
            let h = txn_history(&rec.ops());
            let delivered: std::collections::BTreeSet<&str> =
                h.deliveries.iter().map(|d| d.body.as_str()).collect();
            let committed_missing = h
                .commit_requested
                .keys()
                .filter(|b| !delivered.contains(b.as_str()))
                .count();
            if pending == 0 && committed_missing == 0 {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Bodies by the halves' ids: every half a send stored was acknowledged with its id, or
    // (its send failed) checked with its body; a half message is never consumer-visible, so
    // the broker does not show it (ViewMessage refuses).
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    for op in rec.ops() {
        if op.topic.as_deref() == Some(TOPIC)
            && ((op.f == "txn-send" && op.kind == Type::Ok) || op.f == "check")
            && let (Some(id), Some(body)) = (op.error, op.value)
        {
            bodies.insert(id, body);
        }
    }
    for t in last {
        let body = bodies
            .get(&t.offset_msg_id)
            .cloned()
            .unwrap_or_else(|| format!("<a half no send or check named: {}>", t.offset_msg_id));
        let outcome = match t.state() {
            TransactionState::TxnPending => "pending",
            TransactionState::TxnCommitted => "commit",
            TransactionState::TxnRolledBack => "rollback",
        };
        let mut op = Op::new(rec.now(), "txn", Type::Info, "txn-table")
            .topic(TOPIC)
            .value(body)
            .error(format!("{outcome} {}", t.reason));
        op.half = half_position(&t.offset_msg_id);
        rec.record(op);
    }
    Ok(())
}

/// The history `raftmq_check::txn` reads, from the operations.
pub fn txn_history(ops: &[Op]) -> TxnHistory {
    let mut h = TxnHistory::default();
    for op in ops.iter().filter(|o| o.topic.as_deref() == Some(TOPIC)) {
        let body = op.value.clone().unwrap_or_default();
        match (op.f.as_str(), op.kind) {
            ("txn-send", Type::Ok) => {
                h.halves.insert(body, op.time);
            }
            ("txn-send", Type::Info) => {
                h.indeterminate.insert(body);
            }
            ("commit-requested", _) => h.commit_requested(&body, op.time),
            ("check", _) => h.checks.push((
                body,
                op.error.clone().unwrap_or_default(),
                op.number.unwrap_or(0),
                op.time,
            )),
            ("txn-receive", _) => h.deliveries.push(Delivery {
                body,
                half: op.half,
                queue: format!("{TOPIC}@{GROUP}:{}", op.queue.unwrap_or(0)),
                offset: op.offset.unwrap_or(0),
                at: op.time,
            }),
            ("txn-table", _) => {
                let text = op.error.clone().unwrap_or_default();
                let (outcome, reason) = text.split_once(' ').unwrap_or((text.as_str(), ""));
                let half = op.half.unwrap_or(u64::MAX);
                match outcome {
                    "pending" => h.pending.entry(body).or_default().push(half),
                    o => h.decided.entry(body).or_default().push(Decided {
                        half,
                        commit: o == "commit",
                        reason: reason.to_string(),
                    }),
                }
            }
            _ => {}
        }
    }
    h
}
