//! Timed messages through real processes: a name server and a three-replica group of
//! `raftmq` processes on loopback. 10 000 timed messages, each due 1–20 s after its send,
//! from concurrent SDK producers; the leader is SIGKILLed twice (once while sending, once
//! while timers fall due), each time started again once a new leader leads. Afterwards:
//! every acknowledged message was delivered, and none before its due time.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftmq_client::consumer::{ConsumeFrom, ReceivedMessage};
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_testkit::{wait_for, wait_until};

use common::{create_topic, leader, restart, sigkill, start_group, wait_leader};

const MESSAGES: u64 = 10_000;
const PRODUCERS: u64 = 8;
const QUEUES: u32 = 4;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Message `i`'s delay: 1 s to 20 s, spread over the messages.
fn delay_ms(i: u64) -> u64 {
    1_000 + (i * 7_919) % 19_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timed_messages_through_two_sigkilled_leaders() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut procs, ns) = start_group(tmp.path(), "[timer]\nscan_interval_ms = 50\n");
    wait_leader(&ns, None, Duration::from_secs(30)).await;
    create_topic(&ns, "TT", QUEUES).await;

    // The consumer runs throughout: when each message arrives (first arrival).
    let arrived: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let a2 = arrived.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addrs([ns.as_str()])
        .group("TC")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .subscribe("TT", "*")
        .concurrent(move |msgs: &[ReceivedMessage]| {
            let at = now_ms();
            let mut a = a2.lock().expect("arrived");
            for m in msgs {
                a.entry(String::from_utf8_lossy(&m.body).into_owned())
                    .or_insert(at);
            }
            ConsumeResult::Success
        })
        .build()?;
    wait_for(Duration::from_secs(15), "the consumer started", || async {
        consumer.start().await.map_err(|e| e.to_string())
    })
    .await;

    // Producers: each message due `delay_ms(i)` after the clock read just before its send
    // (so never earlier than that); a send the SDK gave up on is left out (indeterminate).
    let due: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let producer = Producer::builder()
        .namesrv_addrs([ns.as_str()])
        .group("TP")
        .send_timeout(Duration::from_secs(20))
        .build()?;
    producer.start().await?;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (producer, due, sent) = (producer.clone(), due.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for i in (p..MESSAGES).step_by(PRODUCERS as usize) {
                let body = format!("m{i}");
                let at = now_ms() + delay_ms(i);
                let m = Message::new("TT", body.clone()).with_deliver_at_ms(at);
                match producer.send(m).await {
                    Ok(_) => {
                        due.lock().expect("due").insert(body, at);
                    }
                    Err(_) => failed += 1,
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failed
        }));
    }

    // First kill: while sending.
    wait_until(Duration::from_secs(120), "a third sent", || {
        let n = sent.load(Ordering::Relaxed);
        if n >= MESSAGES / 3 {
            Ok(())
        } else {
            Err(format!("only {n}"))
        }
    })
    .await;
    let first = leader(&ns).await.expect("a leader");
    sigkill(&mut procs, &first);
    let second = wait_leader(&ns, Some(&first), Duration::from_secs(30)).await;
    restart(&mut procs, tmp.path(), &first);
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let sent_at = now_ms();
    // Second kill: while timers fall due (the last are due up to 20 s after their send).
    wait_until(Duration::from_secs(60), "some timers delivered", || {
        let n = arrived.lock().expect("arrived").len();
        if n >= 2_000 {
            Ok(())
        } else {
            Err(format!("only {n} delivered"))
        }
    })
    .await;
    let second_now = leader(&ns).await.expect("a leader");
    sigkill(&mut procs, &second_now);
    let third = wait_leader(&ns, Some(&second_now), Duration::from_secs(30)).await;
    restart(&mut procs, tmp.path(), &second_now);
    eprintln!(
        "killed {first} (new leader {second}), then {second_now} (new leader {third}); \
         {failed} sends given up"
    );

    let due = due.lock().expect("due").clone();
    assert!(
        due.len() as u64 >= MESSAGES * 9 / 10,
        "most sends acknowledged: {} of {MESSAGES}",
        due.len()
    );
    // Everything due by then, plus a bound for the failover, the scan and the long poll.
    let limit = Duration::from_millis(20_000 + 60_000) - Duration::from_millis(now_ms() - sent_at);
    wait_until(limit, "every acknowledged timed message delivered", || {
        let a = arrived.lock().expect("arrived");
        let missing: Vec<&String> = due.keys().filter(|b| !a.contains_key(*b)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} not delivered yet, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    })
    .await;
    let arrived = arrived.lock().expect("arrived").clone();
    let early: Vec<(&String, u64, u64)> = due
        .iter()
        .filter_map(|(b, &d)| arrived.get(b).filter(|&&at| at < d).map(|&at| (b, d, at)))
        .collect();
    assert!(
        early.is_empty(),
        "{} delivered before due, e.g. {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );
    let late: Vec<u64> = due.iter().map(|(b, d)| arrived[b] - d).collect();
    eprintln!(
        "{} delivered, none early; lateness max {} ms, median {} ms",
        due.len(),
        late.iter().max().copied().unwrap_or(0),
        {
            let mut l = late.clone();
            l.sort_unstable();
            l.get(l.len() / 2).copied().unwrap_or(0)
        }
    );
    consumer.shutdown().await;
    producer.shutdown().await;
    Ok(())
}
