//! The timed-message workload of the whole-cluster scenario (on when
//! `ClusterConfig::timers` is set): the real `Producer` and `PushConsumer` on their own
//! nodes, recording a [`TimerHistory`] for [`crate::timer_checks`].
//!
//! - `tm1` sends `d0`, `d1`, … to topic `TM` through the fault window: most due 0–3 s ahead
//!   (absolute times), every fifth by delay level 1 (1 s), every tenth due in the past (a
//!   plain message); every tenth (due 2.5 s ahead) it recalls right after the send;
//! - `tc1` consumes `TM` (group `CTM`) and records when each message arrived.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use raftmq_client::consumer::ReceivedMessage;
use raftmq_client::{ConsumeResult, Message};
use raftmq_raft::Replica;
use raftmq_raft::replica::now_ms;
use raftmq_store::consumequeue::QueueId;
use raftmq_testkit::{Deadline, try_wait_for};

use crate::timer_checks::{HEALTHY_BOUND_MS, TimerHistory, TimerViolation, check_timer_history};

/// The timed topic and its queues per group.
pub const TOPIC: (&str, u32) = ("TM", 2);

/// What the workload's nodes share.
#[derive(Clone)]
pub struct TimerWorld {
    pub history: Arc<Mutex<TimerHistory>>,
    /// The consumer-retry workload run beside it.
    pub retry: crate::retry_workload::RetryWorld,
    start: tokio::time::Instant,
    max: u32,
    until: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("lock poisoned: a panic broke this state")
}

impl TimerWorld {
    pub fn new(start: tokio::time::Instant, max: u32, until: Duration) -> Self {
        TimerWorld {
            history: Arc::default(),
            retry: crate::retry_workload::RetryWorld::new(start, until),
            start,
            max,
            until,
        }
    }
}

async fn sender(world: TimerWorld, namesrv: &'static str) {
    let p = crate::cluster_scenario::new_producer(namesrv, "TMP").await;
    let mut i = 0;
    while i < world.max && world.start.elapsed() < world.until {
        let body = format!("d{i}");
        let now = now_ms();
        let m = Message::new(TOPIC.0, body.clone());
        // What was asked (the broker's due time is never earlier: its clock read later).
        let (m, asked) = match i % 10 {
            0 => (m.with_deliver_at_ms(now.saturating_sub(100)), now),
            5 => (m.with_delay_level(1), now + 1_000),
            // Recalled below: due far enough ahead for the recall to come first.
            3 => (m.with_deliver_at_ms(now + 2_500), now + 2_500),
            _ => {
                let at = now + thread_rng().gen_range(0..3_000);
                (m.with_deliver_at_ms(at), at)
            }
        };
        match p.send(m).await {
            Ok(r) => {
                let due = r.deliver_at_ms.unwrap_or(asked).max(asked);
                let mut h = lock(&world.history);
                h.sent.insert(body.clone(), due);
                h.not_before.insert(body.clone(), asked);
                drop(h);
                if i % 10 == 3 && due > now_ms() + 500 {
                    let outcome = p.recall(&r).await;
                    let mut h = lock(&world.history);
                    match (
                        outcome,
                        r.recall_handle.as_deref().and_then(timer_of_handle),
                    ) {
                        (Ok(()), Some(timer)) => {
                            h.recalled.insert(body.clone());
                            h.recalled_timer.insert(body, timer);
                        }
                        (Ok(()), None) => {
                            h.recalled.insert(body);
                        }
                        (Err(_), _) => {
                            h.recall_unknown.insert(body);
                        }
                    }
                }
            }
            Err(_) => {
                lock(&world.history).indeterminate.insert(body);
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(10..60))).await;
    }
    std::future::pending::<()>().await;
    drop(p);
}

/// The timer a recall handle names, as `group/position` (a handle is an offset msg id: 16
/// hex digits of CommitLog position, then the broker group).
fn timer_of_handle(handle: &str) -> Option<String> {
    let (hex, group) = (handle.get(..16)?, handle.get(16..)?);
    let position = u64::from_str_radix(hex, 16).ok()?;
    Some(format!("{group}/{position}"))
}

async fn consumer(world: TimerWorld, namesrv: &'static str) {
    let w = world.clone();
    let listener = move |msgs: &[ReceivedMessage]| {
        let at = now_ms();
        let mut h = lock(&w.history);
        for m in msgs {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            if let Some(timer) = m
                .properties
                .get(raftmq_store::timer::PROPERTY_TIMER_KEY)
                .and_then(|k| k.split_once(':'))
                .map(|(_, pos)| format!("{}/{pos}", m.queue.group))
            {
                h.delivered_from
                    .entry(body.clone())
                    .or_default()
                    .insert(timer);
            }
            h.deliveries.push((body, at));
        }
        ConsumeResult::Success
    };
    let c = crate::cluster_scenario::workload_consumer(namesrv, "CTM", "tc1", TOPIC.0)
        .concurrent(listener)
        .build()
        .expect("a valid consumer");
    crate::cluster_scenario::run_consumer(c).await;
}

/// The sender and consumer nodes (and the retry workload's two).
pub fn nodes(handle: &Handle, world: &TimerWorld, namesrv: &'static str) -> [NodeHandle; 4] {
    let [tr1, trc1] = crate::retry_workload::nodes(handle, &world.retry, namesrv);
    let (w1, w2) = (world.clone(), world.clone());
    let tm1 = handle
        .create_node()
        .name("tm1")
        .ip(IpAddr::from([10, 0, 7, 1]))
        .init(move || sender(w1.clone(), namesrv))
        .build();
    let tc1 = handle
        .create_node()
        .name("tc1")
        .ip(IpAddr::from([10, 0, 7, 2]))
        .init(move || consumer(w2.clone(), namesrv))
        .build();
    [tm1, tc1, tr1, trc1]
}

/// Bodies in `TM`'s queues on `leader`, by the timer each came from, each as often as stored.
fn stored_on(leader: &Replica, into: &mut std::collections::BTreeMap<(String, String), u32>) {
    let view = leader.store().view();
    for q in 0..TOPIC.1 {
        let queue = QueueId {
            topic: TOPIC.0.into(),
            queue_id: q,
        };
        let (lo, hi) = view.queue_bounds(&queue);
        for o in lo.0..hi.0 {
            if let Ok(m) = view.read_queue_message(&queue, raftmq_store::QueueOffset(o)) {
                let timer = m
                    .properties
                    .get(raftmq_store::timer::PROPERTY_TIMER_KEY)
                    .cloned()
                    .unwrap_or_default();
                *into
                    .entry((String::from_utf8_lossy(&m.body).into_owned(), timer))
                    .or_default() += 1;
            }
        }
    }
}

/// After healing (at `healed_ms`): waits until every acknowledged, not recalled message is
/// consumed (or the bound passes), reads the queues from the leaders, and judges.
pub async fn settle<L, I>(
    world: &TimerWorld,
    healed_ms: u64,
    leaders: L,
    note: impl Fn(&str),
    within: fn(u64) -> Deadline,
) -> (TimerHistory, Vec<TimerViolation>)
where
    L: Fn() -> I,
    I: Iterator<Item = Option<Replica>>,
{
    let done = try_wait_for(within(30), || {
        let h = lock(&world.history);
        let got: BTreeSet<&String> = h.deliveries.iter().map(|(b, _)| b).collect();
        let all = h
            .sent
            .keys()
            .filter(|b| !h.recalled.contains(*b))
            .all(|b| got.contains(b));
        std::future::ready(all)
    })
    .await;
    if done.is_ok() {
        note("every timed message consumed");
    }
    let retry = crate::retry_workload::settle(&world.retry, &leaders, &note, within).await;
    // Past every bound, so a late delivery counts as lost, not as not-yet.
    tokio::time::sleep(Duration::from_millis(HEALTHY_BOUND_MS)).await;
    let mut h = lock(&world.history).clone();
    h.retry = retry;
    for l in leaders().flatten() {
        stored_on(&l, &mut h.stored);
    }
    h.healed_ms = healed_ms;
    h.end_ms = now_ms();
    let v = check_timer_history(&h);
    (h, v)
}
