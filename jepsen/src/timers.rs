//! The timed-message workload, through the real SDK: a producer sends timed messages (`d<i>`)
//! due 0–3 s ahead (some by delay level, some already due, every tenth recalled before it is
//! due); a consumer records when each arrives (the host's wall clock, which the brokers share:
//! they run on this machine). At the end the topic's queues are read from the leader (which
//! timer each stored copy came from), and `raftmq_check::timer` judges: never delivered before
//! its due time, a recalled message never delivered from the recalled timer, one copy per
//! timer, nothing acknowledged and due lost, and — once healed — delivered within
//! `HEALTHY_BOUND_MS` of its due time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftmq_check::timer::{HEALTHY_BOUND_MS, TimerHistory};
use raftmq_client::consumer::ConsumeFrom;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer, ReceivedMessage};
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::*;
use raftmq_store::timer::PROPERTY_TIMER_KEY;

use crate::cluster::{leader, namesrv_addr};
use crate::history::{Op, Recorder, Type};

pub const TOPIC: &str = "JD";
const QUEUES: u32 = 4;

/// Milliseconds since the epoch (the brokers' clock: the same host).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The timer a recall handle names, as `group/position` (a handle is an offset msg id: 16
/// hex digits of CommitLog position, then the broker group).
fn timer_of_handle(handle: &str) -> Option<String> {
    let (hex, group) = (handle.get(..16)?, handle.get(16..)?);
    let position = u64::from_str_radix(hex, 16).ok()?;
    Some(format!("{group}/{position}"))
}

pub struct Timers {
    producer: Producer,
    sending: tokio::task::JoinHandle<()>,
    consumer: PushConsumer,
}

impl Timers {
    /// Starts sending `rate` timed messages a second until `stop`, and the consumer.
    pub async fn start(rec: Recorder, rate: u32, stop: Arc<AtomicBool>) -> anyhow::Result<Timers> {
        let r2 = rec.clone();
        let listener = move |msgs: &[ReceivedMessage]| {
            let wall = now_ms();
            for m in msgs {
                let mut op = Op::new(r2.now(), "tc", Type::Ok, "timer-receive")
                    .topic(TOPIC)
                    .value(String::from_utf8_lossy(&m.body).into_owned())
                    .at(m.queue.queue_id, m.queue_offset);
                op.wall = Some(wall);
                op.timer = m
                    .properties
                    .get(PROPERTY_TIMER_KEY)
                    .and_then(|k| k.split_once(':'))
                    .map(|(_, pos)| format!("{}/{pos}", m.queue.group));
                r2.record(op);
            }
            ConsumeResult::Success
        };
        let consumer = PushConsumer::builder()
            .namesrv_addrs([namesrv_addr()])
            .group("JDC")
            .client_id("tc")
            .heartbeat_every(Duration::from_secs(1))
            .consume_from(ConsumeFrom::First)
            .long_poll(Duration::from_millis(500))
            .subscribe(TOPIC, "*")
            .concurrent(listener)
            .build()?;
        consumer.start().await?;
        let producer = Producer::builder()
            .namesrv_addrs([namesrv_addr()])
            .group("JDP")
            .send_timeout(Duration::from_secs(3))
            .build()?;
        producer.start().await?;
        let p = producer.clone();
        let sending = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i: u64 = 0;
            while !stop.load(Ordering::Acquire) {
                tick.tick().await;
                let body = format!("d{i}");
                let now = now_ms();
                let m = Message::new(TOPIC, body.clone());
                // What was asked (the broker's due time is never earlier: its clock is read
                // later).
                let (m, asked) = match i % 10 {
                    0 => (m.with_deliver_at_ms(now.saturating_sub(100)), now),
                    5 => (m.with_delay_level(1), now + 1_000),
                    // Recalled below: due far enough ahead for the recall to come first.
                    3 => (m.with_deliver_at_ms(now + 2_500), now + 2_500),
                    k => {
                        let at = now + k * 300;
                        (m.with_deliver_at_ms(at), at)
                    }
                };
                let op = |k, f: &str| Op::new(rec.now(), "tp", k, f).topic(TOPIC).value(&body);
                rec.record(op(Type::Invoke, "timer-send"));
                match p.send(m).await {
                    Ok(r) => {
                        let mut o = op(Type::Ok, "timer-send");
                        o.due = Some(r.deliver_at_ms.unwrap_or(asked).max(asked));
                        o.asked = Some(asked);
                        rec.record(o);
                        if i % 10 == 3 && r.deliver_at_ms.unwrap_or(asked) > now_ms() + 500 {
                            let outcome = p.recall(&r).await;
                            let mut o = match outcome {
                                Ok(()) => op(Type::Ok, "recall"),
                                Err(e) => op(Type::Info, "recall").error(e.to_string()),
                            };
                            o.timer = r.recall_handle.as_deref().and_then(timer_of_handle);
                            rec.record(o);
                        }
                    }
                    Err(e) => rec.record(op(Type::Info, "timer-send").error(e.to_string())),
                }
                i += 1;
            }
        });
        Ok(Timers {
            producer,
            sending,
            consumer,
        })
    }

    pub async fn stop_sending(&mut self) {
        let _ = (&mut self.sending).await;
    }

    pub async fn shutdown(self) {
        self.consumer.shutdown().await;
        self.producer.shutdown().await;
    }
}

/// Waits (up to `limit`) until every acknowledged message due by now and not recalled was
/// delivered; then reads the topic's queues from the leader into the history
/// (`timer-stored`: body, timer, copies) and marks the end (`timer-end`, wall clock).
pub async fn settle(rec: &Recorder, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let h = timer_history(&rec.ops());
        let got: std::collections::BTreeSet<&str> =
            h.deliveries.iter().map(|(b, _)| b.as_str()).collect();
        let now = now_ms();
        let missing = h
            .sent
            .iter()
            .filter(|(b, due)| {
                **due + HEALTHY_BOUND_MS <= now
                    && !h.recalled.contains(*b)
                    && !h.recall_unknown.contains(*b)
                    && !got.contains(b.as_str())
            })
            .count();
        let last_due = h.sent.values().max().copied().unwrap_or(0);
        if (missing == 0 && now > last_due + HEALTHY_BOUND_MS)
            || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, addr) = leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let mut m = MessagingClient::connect(format!("http://{addr}")).await?;
    let mut stored: BTreeMap<(String, String), u32> = BTreeMap::new();
    for q in 0..QUEUES {
        let mut offset = 0;
        loop {
            let r = m
                .pull(PullRequest {
                    consumer_group: "JD-read".into(),
                    topic: TOPIC.into(),
                    queue_id: q,
                    offset,
                    max_messages: 1024,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if let Some(s) = r
                .status
                .as_ref()
                .filter(|s| s.code != raftmq_proto::ErrorCode::Ok as i32)
            {
                anyhow::bail!("reading {TOPIC}:{q} at {offset}: {s:?}");
            }
            for sm in &r.messages {
                let Some(msg) = &sm.message else { continue };
                let timer = msg
                    .properties
                    .get(PROPERTY_TIMER_KEY)
                    .cloned()
                    .unwrap_or_default();
                *stored
                    .entry((String::from_utf8_lossy(&msg.body).into_owned(), timer))
                    .or_default() += 1;
            }
            if r.next_offset == offset {
                break;
            }
            offset = r.next_offset;
        }
    }
    for ((body, timer), copies) in stored {
        let mut op = Op::new(rec.now(), "harness", Type::Info, "timer-stored")
            .topic(TOPIC)
            .value(body);
        op.timer = Some(timer);
        op.number = Some(copies);
        rec.record(op);
    }
    let mut end = Op::new(rec.now(), "harness", Type::Info, "timer-end").topic(TOPIC);
    end.wall = Some(now_ms());
    rec.record(end);
    Ok(())
}

/// The history `raftmq_check::timer` reads, from the operations. `healed_ms` comes from the
/// final heal's wall clock; `end_ms` from `timer-end`.
pub fn timer_history(ops: &[Op]) -> TimerHistory {
    let mut h = TimerHistory::default();
    for op in ops {
        if op.f == "final-heal" {
            h.healed_ms = op.wall.unwrap_or(0);
        }
        if op.topic.as_deref() != Some(TOPIC) {
            continue;
        }
        let body = op.value.clone().unwrap_or_default();
        match (op.f.as_str(), op.kind) {
            ("timer-send", Type::Ok) => {
                h.sent.insert(body.clone(), op.due.unwrap_or(0));
                if let Some(a) = op.asked {
                    h.not_before.insert(body, a);
                }
            }
            ("timer-send", Type::Info) => {
                h.indeterminate.insert(body);
            }
            ("recall", Type::Ok) => {
                if let Some(t) = &op.timer {
                    h.recalled_timer.insert(body.clone(), t.clone());
                }
                h.recalled.insert(body);
            }
            ("recall", _) => {
                h.recall_unknown.insert(body);
            }
            ("timer-receive", _) => {
                if let Some(t) = &op.timer {
                    h.delivered_from
                        .entry(body.clone())
                        .or_default()
                        .insert(t.clone());
                }
                h.deliveries.push((body, op.wall.unwrap_or(0)));
            }
            ("timer-stored", _) => {
                h.stored.insert(
                    (body, op.timer.clone().unwrap_or_default()),
                    op.number.unwrap_or(1),
                );
            }
            ("timer-end", _) => h.end_ms = op.wall.unwrap_or(0),
            _ => {}
        }
    }
    h
}
