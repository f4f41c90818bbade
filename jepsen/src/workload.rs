//! The queue workload, through the real SDK: producers send unique values (`p3-1234`) at a
//! bounded total rate; push consumers of one group record every delivery with its queue and
//! offset, and the queues they let go; one consumer at a time leaves the group and comes
//! back as a new incarnation (`c1#0`, then `c1#1`): consumer-group churn, so rebalancing runs
//! while faults do.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::rebalance::MessageQueue;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer, ReceivedMessage};

use crate::cluster::namesrv_addr;
use crate::history::{Op, Recorder, Type};

pub const TOPIC: &str = "JT";
pub const CONSUMER_GROUP: &str = "JC";
pub const QUEUES: u32 = 4;

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

/// Runs the producers until `stop` is set. Returns how many sends were invoked.
pub async fn produce(load: &Load, rec: Recorder, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let producer = Producer::builder()
        .namesrv_addrs([namesrv_addr()])
        .group("JP")
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
            let name = format!("p{p}");
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let value = format!("{name}-{n}");
                n += 1;
                invoked.fetch_add(1, Ordering::Relaxed);
                rec.record(Op::new(rec.now(), &name, Type::Invoke, "send").value(&value));
                let r = producer
                    .send(Message::new(TOPIC, value.clone().into_bytes()))
                    .await;
                let now = rec.now();
                match r {
                    Ok(r) => rec.record(
                        Op::new(now, &name, Type::Ok, "send")
                            .value(&value)
                            .at(r.queue.queue_id, r.queue_offset),
                    ),
                    // Unknown: it may be stored (its answer lost) or not.
                    Err(e) => rec.record(
                        Op::new(now, &name, Type::Info, "send")
                            .value(&value)
                            .error(e.to_string()),
                    ),
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
    pub fn start(load: &Load, rec: Recorder) -> Consumers {
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
                        let name = format!("c{k}#{incarnation}");
                        let leave = member(&name, &rec, &stop, churn, &turn, k, n).await;
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
async fn member(
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
                    .value(value)
                    .at(m.queue.queue_id, m.queue_offset),
            );
            lock(&t2).insert(m.queue.clone());
        }
        ConsumeResult::Success
    };
    let consumer = match PushConsumer::builder()
        .namesrv_addrs([namesrv_addr()])
        .group(CONSUMER_GROUP)
        .client_id(name)
        .heartbeat_every(Duration::from_secs(1))
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .subscribe(TOPIC, "*")
        .concurrent(listener)
        .build()
    {
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
            rec.record(Op::new(rec.now(), name, Type::Ok, "release").at(q.queue_id, 0));
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
