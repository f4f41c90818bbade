//! The POP consumption workload of the whole-cluster scenario (on when `ClusterConfig::pop`
//! is set): what `raftmq proxy` does for RocketMQ 5 clients, through the SDK's `PopClient`,
//! recording a [`PopHistory`] for [`crate::pop_checks`].
//!
//! - `pp1` sends `q0`, `q1`, … to topic `PP` through the fault window;
//! - `pc1` and `pc2` receive from every queue of `PP` as group `CPP` (invisible 1.5 s) and as
//!   the FIFO group `CPF` (configured `fifo` before the run: its queues are held while a
//!   message handed out is unacknowledged and invisible), and for each message handed out:
//!   ack it (most often), leave it to come back, or change its invisible time (0–1 s) and
//!   leave it. After the window they ack everything, until every acknowledged send was acked
//!   in both groups. Each group has its own [`PopHistory`]; the FIFO one is also judged for
//!   order.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{Rng, thread_rng};
use madsim::runtime::{Handle, NodeHandle};
use raftmq_client::Message;
use raftmq_client::pop::PopClient;
use raftmq_raft::replica::now_ms;
use raftmq_testkit::{Deadline, try_wait_for};

use crate::pop_checks::{PopDelivery, PopHistory, PopViolation, check_pop_history};

/// The topic and its queues per group.
pub const TOPIC: (&str, u32) = ("PP", 2);
/// The consumer group.
pub const GROUP: &str = "CPP";
/// The FIFO consumer group.
pub const FIFO_GROUP: &str = "CPF";
/// A receive's invisible time.
pub const INVISIBLE: Duration = Duration::from_millis(1_500);

/// What the workload's nodes share.
#[derive(Clone)]
pub struct PopWorld {
    pub history: Arc<Mutex<PopHistory>>,
    pub fifo_history: Arc<Mutex<PopHistory>>,
    stop: Arc<AtomicBool>,
    start: tokio::time::Instant,
    max: u32,
    until: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("lock poisoned: a panic broke this state")
}

impl PopWorld {
    pub fn new(start: tokio::time::Instant, max: u32, until: Duration) -> Self {
        PopWorld {
            history: Arc::default(),
            fifo_history: Arc::new(Mutex::new(PopHistory {
                fifo: true,
                ..PopHistory::default()
            })),
            stop: Arc::default(),
            start,
            max,
            until,
        }
    }
}

async fn sender(world: PopWorld, namesrv: &'static str) {
    let p = crate::cluster_scenario::new_producer(namesrv, "PPP").await;
    let mut i = 0;
    while i < world.max && world.start.elapsed() < world.until {
        let body = format!("q{i}");
        let ok = p.send(Message::new(TOPIC.0, body.clone())).await.is_ok();
        for h in [&world.history, &world.fifo_history] {
            let mut h = lock(h);
            if ok {
                h.sent.insert(body.clone());
            } else {
                h.indeterminate.insert(body.clone());
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(5..40))).await;
    }
    std::future::pending::<()>().await;
    drop(p);
}

async fn consumer(world: PopWorld, namesrv: &'static str) {
    let c = PopClient::new([namesrv]);
    while !world.stop.load(Ordering::Acquire) {
        let Ok(queues) = c.read_queues(TOPIC.0).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for q in queues {
            for (group, history) in [(GROUP, &world.history), (FIFO_GROUP, &world.fifo_history)] {
                consume_once(&c, &q, group, history, &world).await;
            }
        }
    }
}

/// One receive of `q` as `group`, and what is done with each message handed out.
async fn consume_once(
    c: &PopClient,
    q: &raftmq_client::rebalance::MessageQueue,
    group: &str,
    history: &Mutex<PopHistory>,
    world: &PopWorld,
) {
    let popped = match c
        .receive(q, group, 4, INVISIBLE, Duration::from_millis(200))
        .await
    {
        Ok(p) => p,
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
    };
    let settled = world.start.elapsed() >= world.until;
    for p in popped {
        let body = p
            .stored
            .message
            .as_ref()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .unwrap_or_default();
        let queue = format!("{}/{}", q.group, q.queue_id);
        lock(history).deliveries.push(PopDelivery {
            body: body.clone(),
            queue: queue.clone(),
            offset: p.offset(),
            attempt: p.attempts,
            epoch: p.epoch,
            at_ms: p.visible_at_ms.saturating_sub(INVISIBLE.as_millis() as u64),
            visible_at_ms: p.visible_at_ms,
        });
        let roll = thread_rng().gen_range(0..100);
        if settled || roll < 70 {
            let sent_at = now_ms();
            match c.ack(q, group, p.offset(), p.epoch).await {
                Ok(()) => lock(history)
                    .acks
                    .push((queue, p.offset(), p.epoch, sent_at)),
                Err(e) if !stale(&e) => {
                    let mut h = lock(history);
                    h.unknown.push((queue.clone(), p.offset(), p.epoch));
                    h.unknown_acks.push((queue, p.offset(), p.epoch));
                }
                Err(_) => {}
            }
        } else if roll < 85 {
            let d = Duration::from_millis(thread_rng().gen_range(0..1_000));
            match c.change_invisible(q, group, p.offset(), p.epoch, d).await {
                Ok((epoch, visible)) => {
                    lock(history)
                        .changes
                        .push((queue, p.offset(), p.epoch, epoch, visible))
                }
                Err(e) if !stale(&e) => lock(history).unknown.push((queue, p.offset(), p.epoch)),
                Err(_) => {}
            }
        }
    }
}

/// A refusal that says the receipt was not current: certainly nothing changed.
fn stale(e: &raftmq_client::ClientError) -> bool {
    e.code() == Some(raftmq_proto::ErrorCode::ReceiptStale)
}

/// The sender and the two consumer nodes.
pub fn nodes(handle: &Handle, world: &PopWorld, namesrv: &'static str) -> [NodeHandle; 3] {
    let (w1, w2, w3) = (world.clone(), world.clone(), world.clone());
    let pp1 = handle
        .create_node()
        .name("pp1")
        .ip(IpAddr::from([10, 0, 8, 1]))
        .init(move || sender(w1.clone(), namesrv))
        .build();
    let pc1 = handle
        .create_node()
        .name("pc1")
        .ip(IpAddr::from([10, 0, 8, 2]))
        .init(move || consumer(w2.clone(), namesrv))
        .build();
    let pc2 = handle
        .create_node()
        .name("pc2")
        .ip(IpAddr::from([10, 0, 8, 3]))
        .init(move || consumer(w3.clone(), namesrv))
        .build();
    [pp1, pc1, pc2]
}

/// What settling judged, for each group.
pub struct PopSettled {
    pub history: PopHistory,
    pub violations: Vec<PopViolation>,
    pub fifo_history: PopHistory,
    pub fifo_violations: Vec<PopViolation>,
}

/// After healing: waits until every acknowledged send was acked in both groups (or the bound
/// passes), stops the consumers, and judges.
pub async fn settle(
    world: &PopWorld,
    note: impl Fn(&str),
    within: fn(u64) -> Deadline,
    liveness: &mut Vec<String>,
) -> PopSettled {
    let done = try_wait_for(within(30), || {
        let all = [&world.history, &world.fifo_history]
            .iter()
            .all(|h| unacked(&lock(h)).next().is_none());
        std::future::ready(all)
    })
    .await;
    match done {
        Ok(()) => note("every POP message acked"),
        Err(_) => {
            for (group, h) in [(GROUP, &world.history), (FIFO_GROUP, &world.fifo_history)] {
                let h = lock(h);
                let missing: Vec<String> = unacked(&h)
                    .map(|b| {
                        let ds: Vec<String> = h
                            .deliveries
                            .iter()
                            .filter(|d| &d.body == b)
                            .map(|d| {
                                format!("{}@{} a{} e{}", d.queue, d.offset, d.attempt, d.epoch)
                            })
                            .collect();
                        format!("{b} [{}]", ds.join(", "))
                    })
                    .take(5)
                    .collect();
                if !missing.is_empty() {
                    liveness.push(format!(
                        "POP group {group}: not every acknowledged send was acked within 30 s: {}",
                        missing.join("; ")
                    ));
                }
            }
        }
    }
    // Receiving on past the invisible time: a redelivery after an ack would show by now.
    tokio::time::sleep(INVISIBLE * 2).await;
    world.stop.store(true, Ordering::Release);
    let history = lock(&world.history).clone();
    let fifo_history = lock(&world.fifo_history).clone();
    PopSettled {
        violations: check_pop_history(&history),
        fifo_violations: check_pop_history(&fifo_history),
        history,
        fifo_history,
    }
}

/// The acknowledged sends no delivery of which was acked (or possibly acked).
fn unacked(h: &PopHistory) -> impl Iterator<Item = &String> {
    let acked: BTreeSet<(&String, u64)> = h
        .acks
        .iter()
        .map(|(q, o, _, _)| (q, *o))
        .chain(h.unknown_acks.iter().map(|(q, o, _)| (q, *o)))
        .collect();
    let acked_bodies: BTreeSet<&String> = h
        .deliveries
        .iter()
        .filter(|d| acked.contains(&(&d.queue, d.offset)))
        .map(|d| &d.body)
        .collect();
    h.sent.iter().filter(move |b| !acked_bodies.contains(b))
}
