//! The consumer-retry workload of the whole-cluster scenario (on with the timed workload):
//! the real `Producer` and `PushConsumer` on their own nodes, recording a [`RetryHistory`]
//! for [`crate::retry_checks`].
//!
//! - `tr1` sends `r0`, `r1`, … (plain messages) to topic `RT` through the fault window;
//! - `trc1` consumes `RT` in group `CRT` with [`MAX`] reconsume times: its listener fails
//!   message `r{i}` while `reconsume_times < i % 6` — so `r{i}` with `i % 6 ≤ MAX` succeeds
//!   on attempt `i % 6`, and the others (poison) fail every time and end in `%DLQ%CRT`.
//!   Retries come back through `%RETRY%CRT`, due after the brokers' backoff ([`BACKOFF`]).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use raftmq_client::consumer::ReceivedMessage;
use raftmq_client::{ConsumeResult, Message};
use raftmq_raft::Replica;
use raftmq_store::consumequeue::QueueId;
use raftmq_testkit::{Deadline, try_wait_for};

use crate::retry_checks::{RetryHistory, TOPIC_NAME, settled};

/// The topic and its queues per group.
pub const TOPIC: (&str, u32) = (TOPIC_NAME, 1);
/// The consumer group.
pub const GROUP: &str = "CRT";
/// The group's maximum reconsume times (set by the consumer).
pub const MAX: u32 = 3;
/// The brokers' retry backoff here (RocketMQ's starts at 10 s).
pub const BACKOFF: &str = "300ms 500ms";
/// Messages per run.
const MESSAGES: u32 = 36;

/// How many deliveries of message `i` fail (`u32::MAX`: all of them).
fn fails(i: u32) -> u32 {
    match i % 6 {
        k if k <= MAX => k,
        _ => u32::MAX,
    }
}

fn index(body: &[u8]) -> Option<u32> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix('r')?
        .parse()
        .ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("lock poisoned: a panic broke this state")
}

/// What the workload's nodes share.
#[derive(Clone)]
pub struct RetryWorld {
    pub history: Arc<Mutex<RetryHistory>>,
    start: tokio::time::Instant,
    until: Duration,
}

impl RetryWorld {
    pub fn new(start: tokio::time::Instant, until: Duration) -> Self {
        RetryWorld {
            history: Arc::new(Mutex::new(RetryHistory {
                max: MAX,
                ..Default::default()
            })),
            start,
            until,
        }
    }
}

async fn sender(world: RetryWorld, namesrv: &'static str) {
    let p = crate::cluster_scenario::new_producer(namesrv, "RTP").await;
    let mut i = 0;
    while i < MESSAGES && world.start.elapsed() < world.until {
        let body = format!("r{i}");
        let sent = p.send(Message::new(TOPIC.0, body.clone())).await;
        let mut h = lock(&world.history);
        if sent.is_ok() {
            h.sent.insert(body, fails(i));
        } else {
            h.indeterminate.insert(body);
        }
        drop(h);
        i += 1;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(50..150))).await;
    }
    std::future::pending::<()>().await;
    drop(p);
}

async fn consumer(world: RetryWorld, namesrv: &'static str) {
    let w = world.clone();
    let listener = move |msgs: &[ReceivedMessage]| {
        let mut h = lock(&w.history);
        let mut ok = true;
        for m in msgs {
            h.deliveries.push((
                String::from_utf8_lossy(&m.body).into_owned(),
                m.topic.clone(),
                m.reconsume_times,
            ));
            if index(&m.body).is_some_and(|i| m.reconsume_times < fails(i)) {
                ok = false;
            }
        }
        if ok {
            ConsumeResult::Success
        } else {
            ConsumeResult::ReconsumeLater
        }
    };
    let c = crate::cluster_scenario::workload_consumer(namesrv, GROUP, "trc1", TOPIC.0)
        .max_reconsume_times(MAX)
        .concurrent(listener)
        .build()
        .expect("a valid consumer");
    crate::cluster_scenario::run_consumer(c).await;
}

/// The sender and consumer nodes.
pub fn nodes(handle: &Handle, world: &RetryWorld, namesrv: &'static str) -> [NodeHandle; 2] {
    let (w1, w2) = (world.clone(), world.clone());
    let tr1 = handle
        .create_node()
        .name("tr1")
        .ip(IpAddr::from([10, 0, 7, 3]))
        .init(move || sender(w1.clone(), namesrv))
        .build();
    let trc1 = handle
        .create_node()
        .name("trc1")
        .ip(IpAddr::from([10, 0, 7, 4]))
        .init(move || consumer(w2.clone(), namesrv))
        .build();
    [tr1, trc1]
}

/// The DLQ's copies on `leader`: body → reconsume_times per copy (read from the store,
/// whatever the DLQ's perm).
fn dead_letters(leader: &Replica, into: &mut std::collections::BTreeMap<String, Vec<u32>>) {
    let view = leader.store().view();
    let queue = QueueId {
        topic: format!("%DLQ%{GROUP}"),
        queue_id: 0,
    };
    let (lo, hi) = view.queue_bounds(&queue);
    for o in lo.0..hi.0 {
        if let Ok(m) = view.read_queue_message(&queue, raftmq_store::QueueOffset(o)) {
            into.entry(String::from_utf8_lossy(&m.body).into_owned())
                .or_default()
                .push(m.reconsume_times);
        }
    }
}

/// After healing: waits until every acknowledged message is done (consumed where it
/// succeeds, or in the DLQ) or the bound passes, then returns the history to judge.
pub async fn settle<L, I>(
    world: &RetryWorld,
    leaders: L,
    note: impl Fn(&str),
    within: fn(u64) -> Deadline,
) -> RetryHistory
where
    L: Fn() -> I,
    I: Iterator<Item = Option<Replica>>,
{
    let read = || {
        let mut h = lock(&world.history).clone();
        h.dlq.clear();
        for l in leaders().flatten() {
            dead_letters(&l, &mut h.dlq);
        }
        h
    };
    let done = try_wait_for(within(40), || std::future::ready(settled(&read()))).await;
    if done.is_ok() {
        note("every retried message consumed or dead-lettered");
    }
    read()
}
