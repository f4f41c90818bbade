//! Consumer retry over a real in-process cluster: a concurrent listener's `ReconsumeLater` and
//! panic send the message back through the group's retry topic (original topic kept,
//! `reconsume_times` counting) until the maximum, then to the DLQ; an orderly listener retries
//! in place, keeps the queue's order, and dead-letters past the maximum; a message the
//! broker cannot take back (its group lost its quorum) is retried locally.
#![cfg(not(madsim))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Local, local_with};
use raftmq_client::consumer::{ConsumeFrom, ReceivedMessage};
use raftmq_client::producer::SelectByHash;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_testkit::{wait_for, wait_until};

/// What a listener saw: (body, topic, queue topic, reconsume_times).
type Seen = Arc<Mutex<Vec<(String, String, String, u32)>>>;

fn record(seen: &Seen, msgs: &[ReceivedMessage]) {
    let mut s = seen.lock().expect("log");
    for m in msgs {
        s.push((
            String::from_utf8_lossy(&m.body).into_owned(),
            m.topic.clone(),
            m.queue.topic.clone(),
            m.reconsume_times,
        ));
    }
}

/// A cluster whose retries come back after 300 ms (not RocketMQ's 10 s).
async fn cluster() -> anyhow::Result<(Local, Producer)> {
    let l = local_with(|c| c.timer.retry_backoff = "300ms".into()).await?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    Ok((l, p))
}

async fn stop(l: Local, p: Producer, c: PushConsumer) {
    c.shutdown().await;
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconsume_later_and_panics_go_through_the_retry_topic_then_the_dlq() -> anyhow::Result<()>
{
    let (l, p) = cluster().await?;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let c = PushConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("R")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(300))
        .max_reconsume_times(2)
        .concurrent(move |msgs| {
            record(&s, msgs);
            let m = &msgs[0];
            match m.body.as_slice() {
                // Fails once by panicking, then succeeds.
                b"panics-once" if m.reconsume_times == 0 => panic!("listener bug (on purpose)"),
                // Never succeeds: deliveries 0, 1, 2, then the DLQ.
                b"always-fails" => ConsumeResult::ReconsumeLater,
                _ => ConsumeResult::Success,
            }
        })
        .build()?;
    c.start().await?;
    for b in ["panics-once", "always-fails", "fine"] {
        p.send(Message::new("T", b)).await?;
    }
    let of = |body: &str| -> Vec<(String, String, u32)> {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|m| m.0 == body)
            .map(|m| (m.1.clone(), m.2.clone(), m.3))
            .collect()
    };
    wait_until(Duration::from_secs(30), "retries delivered", || {
        if of("panics-once").len() >= 2 && of("always-fails").len() >= 3 {
            Ok(())
        } else {
            Err(format!("{:?}", seen.lock().expect("log")))
        }
    })
    .await;
    let retry = "%RETRY%R".to_string();
    assert_eq!(
        of("panics-once"),
        vec![
            ("T".to_string(), "T".to_string(), 0),
            ("T".to_string(), retry.clone(), 1)
        ],
        "a panic is a failed delivery; the retry copy keeps its original topic"
    );
    assert_eq!(
        of("always-fails"),
        vec![
            ("T".to_string(), "T".to_string(), 0),
            ("T".to_string(), retry.clone(), 1),
            ("T".to_string(), retry.clone(), 2)
        ]
    );
    assert_eq!(of("fine").len(), 1, "a consumed message is not retried");
    // The third failure went to the DLQ, which neither reads nor writes until opened.
    assert!(l.queue0("%DLQ%R").await.is_err(), "the DLQ is closed");
    l.put_topic("%DLQ%R", 6).await?;
    let dlq = wait_for(
        Duration::from_secs(10),
        "the DLQ holds the message",
        || async { l.queue0("%DLQ%R").await.ok().filter(|d| !d.is_empty()) },
    )
    .await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!((dlq[0].0.as_str(), dlq[0].1), ("always-fails", 3));
    assert_eq!(
        dlq[0].2.get("RETRY_TOPIC").map(String::as_str),
        Some("T"),
        "the original topic is kept"
    );
    // Nothing more comes: the DLQ copy is not delivered to the group.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(of("always-fails").len(), 3);
    stop(l, p, c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_retries_in_place_then_dead_letters_and_keeps_order() -> anyhow::Result<()> {
    let (l, p) = cluster().await?;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let c = PushConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("O")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(300))
        .max_reconsume_times(2)
        .orderly(move |msgs| {
            record(&s, msgs);
            match msgs[0].body.as_slice() {
                b"k-1" if msgs[0].reconsume_times < 1 => ConsumeResult::ReconsumeLater,
                b"k-3" => ConsumeResult::ReconsumeLater,
                _ => ConsumeResult::Success,
            }
        })
        .build()?;
    c.start().await?;
    // One key: one queue, in order.
    for i in 0..5 {
        p.send_ordered(Message::new("T", format!("k-{i}")), &SelectByHash, "key")
            .await?;
    }
    wait_until(Duration::from_secs(30), "k-4 consumed", || {
        let s = seen.lock().expect("log");
        if s.iter().any(|m| m.0 == "k-4") {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Each attempt in order of its first delivery (a redelivery after a leader change may
    // repeat one: at-least-once; it may not come out of order).
    let mut order: Vec<(String, u32)> = Vec::new();
    for m in seen.lock().expect("log").iter() {
        let a = (m.0.clone(), m.3);
        if !order.contains(&a) {
            order.push(a);
        }
    }
    let want: Vec<(String, u32)> = [
        ("k-0", 0),
        ("k-1", 0),
        ("k-1", 1),
        ("k-2", 0),
        ("k-3", 0),
        ("k-3", 1),
        ("k-3", 2),
        ("k-4", 0),
    ]
    .iter()
    .map(|(b, n)| (b.to_string(), *n))
    .collect();
    assert_eq!(order, want, "retried in place, in order; k-3 dead-lettered");
    assert!(
        seen.lock().expect("log").iter().all(|m| m.2 == "T"),
        "an orderly consumer never reads a retry topic"
    );
    l.put_topic("%DLQ%O", 6).await?;
    let dlq = l.queue0("%DLQ%O").await?;
    assert_eq!(
        dlq.iter().map(|d| (d.0.as_str(), d.1)).collect::<Vec<_>>(),
        vec![("k-3", 3)]
    );
    stop(l, p, c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_cannot_take_back_is_retried_locally() -> anyhow::Result<()> {
    let (mut l, p) = cluster().await?;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    // The first delivery fails after the group has lost its quorum (the test stops two
    // replicas while the listener holds the message), so the send-back cannot be made.
    let (failing, failed) = std::sync::mpsc::channel::<()>();
    let (quorum_gone, wait_quorum_gone) = std::sync::mpsc::channel::<()>();
    let failing = Mutex::new(Some(failing));
    let wait_quorum_gone = Mutex::new(wait_quorum_gone);
    let c = PushConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("L")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(300))
        .concurrent(move |msgs| {
            record(&s, msgs);
            if msgs[0].reconsume_times > 0 {
                return ConsumeResult::Success;
            }
            if let Some(tx) = failing.lock().expect("once").take() {
                let _ = tx.send(());
                let _ = wait_quorum_gone
                    .lock()
                    .expect("rx")
                    .recv_timeout(Duration::from_secs(20));
            }
            ConsumeResult::ReconsumeLater
        })
        .build()?;
    c.start().await?;
    p.send(Message::new("T", "stranded")).await?;
    tokio::task::spawn_blocking(move || failed.recv_timeout(Duration::from_secs(20)))
        .await?
        .map_err(|_| anyhow::anyhow!("the listener never got the message"))?;
    let ids: Vec<u64> = l.brokers.keys().copied().take(2).collect();
    for id in ids {
        if let Some(b) = l.brokers.remove(&id) {
            b.shutdown().await;
        }
    }
    quorum_gone.send(())?;
    // Delivered again from the same queue (not the retry topic), one attempt later.
    wait_until(Duration::from_secs(30), "a local redelivery", || {
        let s = seen.lock().expect("log");
        if s.iter().any(|m| m.0 == "stranded" && m.3 == 1) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let s = seen.lock().expect("log").clone();
    assert_eq!(
        s.iter()
            .filter(|m| m.0 == "stranded")
            .map(|m| (m.2.as_str(), m.3))
            .collect::<Vec<_>>(),
        vec![("T", 0), ("T", 1)],
        "retried locally, from queue T"
    );
    c.shutdown().await;
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}
