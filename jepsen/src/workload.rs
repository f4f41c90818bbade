//! The workloads, through the real SDK. Each is a topic with producers and a consumer group:
//! producers send unique values (`p3-1234`) at a bounded total rate; push consumers of the
//! group record every delivery with its queue and offset, and the queues they let go; one
//! consumer at a time leaves the group and comes back as a new incarnation (`c1#0`, then
//! `c1#1`): consumer-group churn, so rebalancing runs while faults do.
//!
//! - [`QUEUE`]: plain sends, a concurrent consumer group.
//! - [`ORDERED`]: ordered sends (`send_ordered`, one key → one queue; each producer owns its
//!   keys and sends one at a time) to an orderly consumer group, so the checkers also check
//!   order: per queue, no offset delivered before an earlier one, and each producer's
//!   acknowledged sends in increasing offsets.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::producer::SelectByHash;
use raftmq_client::rebalance::MessageQueue;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer, ReceivedMessage};

use crate::cluster::namesrv_addr;
use crate::history::{Op, Recorder, Type};

pub const QUEUES: u32 = 4;

/// One workload: its topic, groups and kind.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub topic: &'static str,
    pub producer_group: &'static str,
    pub consumer_group: &'static str,
    /// Process name prefixes: producers, consumers.
    pub names: (&'static str, &'static str),
    /// Ordered sends and an orderly consumer group.
    pub ordered: bool,
}

pub const QUEUE: Spec = Spec {
    topic: "JT",
    producer_group: "JP",
    consumer_group: "JC",
    names: ("p", "c"),
    ordered: false,
};

pub const ORDERED: Spec = Spec {
    topic: "JO",
    producer_group: "JOP",
    consumer_group: "JOC",
    names: ("o", "oc"),
    ordered: true,
};

/// How hard the producers push.
#[derive(Debug, Clone)]
pub struct Load {
    /// Sends per second, all producers together.
    pub rate: u32,
    /// Producer tasks (each sends one message at a time).
    pub producers: u32,
    /// Consumers in the group.
    pub consumers: u32,
    /// One consumer leaves and rejoins this often (`None`: no churn).
    pub churn: Option<Duration>,
}

/// Runs `spec`'s producers until `stop` is set. Returns how many sends were invoked.
pub async fn produce(
    spec: Spec,
    load: &Load,
    rec: Recorder,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let producer = Producer::builder()
        .namesrv_addrs([namesrv_addr()])
        .group(spec.producer_group)
        .send_timeout(Duration::from_secs(3))
        .build()?;
    producer.start().await?;
    let invoked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(f64::from(load.producers) / f64::from(load.rate.max(1)));
    for p in 0..load.producers {
        let (producer, rec, stop, invoked) =
            (producer.clone(), rec.clone(), stop.clone(), invoked.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("{}{p}", spec.names.0);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let value = format!("{name}-{n}");
                n += 1;
                invoked.fetch_add(1, Ordering::Relaxed);
                let op = |t, k, f: &str| Op::new(t, &name, k, f).topic(spec.topic).value(&value);
                rec.record(op(rec.now(), Type::Invoke, "send"));
                let msg = Message::new(spec.topic, value.clone().into_bytes());
                let r = if spec.ordered {
                    // This producer's keys: its sends to one key go one after another.
                    let key = format!("{name}-k{}", n % 4);
                    producer
                        .send_ordered(msg, &SelectByHash, key.as_str())
                        .await
                } else {
                    producer.send(msg).await
                };
                let now = rec.now();
                match r {
                    Ok(r) => {
                        rec.record(op(now, Type::Ok, "send").at(r.queue.queue_id, r.queue_offset))
                    }
                    // Unknown: it may be stored (its answer lost) or not.
                    Err(e) => rec.record(op(now, Type::Info, "send").error(e.to_string())),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    producer.shutdown().await;
    Ok(invoked.load(Ordering::Relaxed))
}

/// The consumers of the group; [`Consumers::stop`] ends them, recording what they let go.
pub struct Consumers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumers {
    pub fn start(spec: Spec, load: &Load, rec: Recorder) -> Consumers {
        let stop = Arc::new(AtomicBool::new(false));
        // Whose turn it is to leave and come back, and when the last one did.
        let turn = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let tasks = (0..load.consumers)
            .map(|k| {
                let (rec, stop, turn, churn, n) = (
                    rec.clone(),
                    stop.clone(),
                    turn.clone(),
                    load.churn,
                    u64::from(load.consumers),
                );
                tokio::spawn(async move {
                    let mut incarnation = 0;
                    loop {
                        let name = format!("{}{k}#{incarnation}", spec.names.1);
                        let leave = member(spec, &name, &rec, &stop, churn, &turn, k, n).await;
                        if !leave {
                            return;
                        }
                        incarnation += 1;
                    }
                })
            })
            .collect();
        Consumers { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One consumer incarnation: consumes until the run stops (returns false) or its turn to
/// churn comes (returns true, after leaving the group).
#[allow(clippy::too_many_arguments)]
async fn member(
    spec: Spec,
    name: &str,
    rec: &Recorder,
    stop: &AtomicBool,
    churn: Option<Duration>,
    turn: &(AtomicU64, AtomicU64),
    k: u32,
    n: u64,
) -> bool {
    let touched: Arc<Mutex<BTreeSet<MessageQueue>>> = Arc::default();
    let (r2, n2, t2) = (rec.clone(), name.to_string(), touched.clone());
    let listener = move |msgs: &[ReceivedMessage]| {
        for m in msgs {
            let value = String::from_utf8_lossy(&m.body).into_owned();
            r2.record(
                Op::new(r2.now(), &n2, Type::Ok, "receive")
                    .topic(spec.topic)
                    .value(value)
                    .at(m.queue.queue_id, m.queue_offset),
            );
            lock(&t2).insert(m.queue.clone());
        }
        ConsumeResult::Success
    };
    let b = PushConsumer::builder()
        .namesrv_addrs([namesrv_addr()])
        .group(spec.consumer_group)
        .client_id(name)
        .heartbeat_every(Duration::from_secs(1))
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .subscribe(spec.topic, "*");
    let b = if spec.ordered {
        b.orderly(listener)
    } else {
        b.concurrent(listener)
    };
    let consumer = match b.build() {
        Ok(c) => c,
        Err(e) => {
            rec.record(Op::new(rec.now(), name, Type::Fail, "start").error(e.to_string()));
            return false;
        }
    };
    while consumer.start().await.is_err() {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut held: BTreeSet<MessageQueue> = BTreeSet::new();
    let release = |held: &BTreeSet<MessageQueue>, now: &BTreeSet<MessageQueue>| {
        for q in held.difference(now) {
            rec.record(
                Op::new(rec.now(), name, Type::Ok, "release")
                    .topic(spec.topic)
                    .at(q.queue_id, 0),
            );
        }
    };
    loop {
        let ending = stop.load(Ordering::Acquire);
        let my_turn = churn.is_some_and(|every| {
            rec.now().saturating_sub(turn.1.load(Ordering::Acquire)) >= every.as_millis() as u64
                && turn.0.load(Ordering::Acquire) % n == u64::from(k)
        });
        if ending || my_turn {
            // It holds its queues until shutdown returns; then it holds none of them.
            consumer.shutdown().await;
            held.extend(std::mem::take(&mut *lock(&touched)));
            release(&held, &BTreeSet::new());
            if my_turn && !ending {
                turn.1.store(rec.now(), Ordering::Release);
                turn.0.fetch_add(1, Ordering::AcqRel);
                rec.record(Op::new(rec.now(), name, Type::Info, "leave"));
                return true;
            }
            return false;
        }
        let now: BTreeSet<MessageQueue> = consumer.assigned().into_iter().collect();
        held.extend(std::mem::take(&mut *lock(&touched)));
        release(&held, &now);
        held = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
