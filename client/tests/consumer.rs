//! The push consumer against a real in-process cluster: clustering with three members (every
//! message consumed; duplicates only around rebalances), resume from committed offsets after
//! a restart, broadcasting, and orderly consumption keeping per-key order while a member joins
//! and leaves.
#![cfg(not(madsim))]

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::local;
use raftmq_client::consumer::{ConsumeFrom, MessageModel};
use raftmq_client::producer::SelectByHash;
use raftmq_client::{ConsumeResult, Message, Producer, PushConsumer};
use raftmq_testkit::{wait_for, wait_until};

type Log = Arc<Mutex<Vec<(String, String)>>>;

fn consumer(ns: &str, group: &str, id: &str, log: &Log) -> PushConsumer {
    let (log, me) = (log.clone(), id.to_string());
    PushConsumer::builder()
        .namesrv_addrs([ns])
        .group(group)
        .client_id(id)
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(500))
        .concurrent(move |msgs| {
            let mut l = log.lock().expect("log");
            for m in msgs {
                l.push((me.clone(), String::from_utf8_lossy(&m.body).into_owned()));
            }
            ConsumeResult::Success
        })
        .build()
        .expect("valid settings")
}

async fn send_n(p: &Producer, from: u32, n: u32) -> anyhow::Result<()> {
    for i in from..from + n {
        p.send(Message::new("T", format!("m{i}"))).await?;
    }
    Ok(())
}

async fn wait_distinct(log: &Log, want: usize, limit: Duration) {
    let what = format!("{want} distinct messages consumed");
    wait_until(limit, &what, || {
        let n = log
            .lock()
            .expect("log")
            .iter()
            .map(|(_, b)| b.clone())
            .collect::<BTreeSet<_>>()
            .len();
        if n >= want {
            Ok(())
        } else {
            Err(format!("consumed {n} of {want}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_three_members_consume_everything_and_resume_after_restart() -> anyhow::Result<()>
{
    let l = local().await?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    send_n(&p, 0, 200).await?;
    let log: Log = Arc::default();
    let cs: Vec<PushConsumer> = (1..=3)
        .map(|i| consumer(&l.namesrv, "G", &format!("c{i}"), &log))
        .collect();
    for c in &cs {
        c.start().await?;
    }
    wait_distinct(&log, 200, Duration::from_secs(20)).await;
    // Once settled, every queue has exactly one owner.
    wait_until(Duration::from_secs(10), "each queue owned once", || {
        let owned: Vec<_> = cs.iter().flat_map(|c| c.assigned()).collect();
        let set: BTreeSet<_> = owned.iter().collect();
        if owned.len() == 4 && set.len() == 4 {
            Ok(())
        } else {
            Err(format!("queues not settled: {owned:?}"))
        }
    })
    .await;
    // One member leaves; the rest take its queues; more messages all arrive.
    cs[2].shutdown().await;
    send_n(&p, 200, 100).await?;
    wait_distinct(&log, 300, Duration::from_secs(20)).await;
    for c in &cs[..2] {
        c.shutdown().await;
    }
    let all = log.lock().expect("log").clone();
    let mut count: BTreeMap<String, u32> = BTreeMap::new();
    for (_, b) in &all {
        *count.entry(b.clone()).or_default() += 1;
    }
    let dups = count.values().filter(|&&n| n > 1).count();
    eprintln!(
        "clustering: {} deliveries of 300 messages, {dups} duplicated (rebalances)",
        all.len()
    );
    assert_eq!(count.len(), 300, "every message consumed");

    // A member of the same group started afresh resumes from the committed offsets: it sees
    // only what was sent after the shutdown commit.
    send_n(&p, 300, 50).await?;
    let log2: Log = Arc::default();
    let c = consumer(&l.namesrv, "G", "c9", &log2);
    c.start().await?;
    wait_distinct(&log2, 50, Duration::from_secs(20)).await;
    // Not a wait for a condition: a window in which anything it should not get (a message
    // below the committed offsets) would arrive, before checking that nothing did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shutdown().await;
    let seen: BTreeSet<String> = log2
        .lock()
        .expect("log")
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    let expected: BTreeSet<String> = (300..350).map(|i| format!("m{i}")).collect();
    assert_eq!(
        seen, expected,
        "resumed exactly after the committed offsets"
    );
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_and_orderly() -> anyhow::Result<()> {
    let l = local().await?;
    let tmp = tempfile::tempdir()?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    // Broadcasting: both members get everything; offsets live in local files.
    let log: Log = Arc::default();
    let mut bs = Vec::new();
    for i in 0..2 {
        let (log, me) = (log.clone(), format!("b{i}"));
        let c = PushConsumer::builder()
            .namesrv_addrs([l.namesrv.as_str()])
            .group("B")
            .client_id(&me)
            .model(MessageModel::Broadcasting)
            .offset_file(tmp.path().join(format!("b{i}")))
            .subscribe("T", "*")
            .consume_from(ConsumeFrom::First)
            .long_poll(Duration::from_millis(500))
            .concurrent(move |msgs| {
                let mut l = log.lock().expect("log");
                for m in msgs {
                    l.push((me.clone(), String::from_utf8_lossy(&m.body).into_owned()));
                }
                ConsumeResult::Success
            })
            .build()?;
        c.start().await?;
        bs.push(c);
    }
    send_n(&p, 0, 40).await?;
    wait_until(
        Duration::from_secs(20),
        "40 messages to each member",
        || {
            let per: BTreeMap<String, BTreeSet<String>> =
                log.lock()
                    .expect("log")
                    .iter()
                    .fold(BTreeMap::new(), |mut m, (c, b)| {
                        m.entry(c.clone()).or_default().insert(b.clone());
                        m
                    });
            if per.len() == 2 && per.values().all(|s| s.len() == 40) {
                Ok(())
            } else {
                Err(format!(
                    "broadcast incomplete: {:?}",
                    per.values().map(BTreeSet::len).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    for c in &bs {
        c.shutdown().await;
    }
    assert!(
        tmp.path().join("b0").exists(),
        "broadcasting offsets stored locally"
    );

    // Orderly: per-key order kept, never two members on one queue, through a join and a leave.
    let order: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    let busy: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let overlap = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let orderly = |id: &str| {
        let (order, busy, overlap) = (order.clone(), busy.clone(), overlap.clone());
        PushConsumer::builder()
            .namesrv_addrs([l.namesrv.as_str()])
            .group("O")
            .client_id(id)
            .subscribe("T", "*")
            .consume_from(ConsumeFrom::Last)
            .long_poll(Duration::from_millis(300))
            .orderly(move |msgs| {
                let q = msgs[0].queue.queue_id;
                if !busy.lock().expect("busy").insert(q) {
                    overlap.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                for m in msgs {
                    let (key, n) = String::from_utf8_lossy(&m.body)
                        .split_once(':')
                        .map(|(k, n)| (k.to_string(), n.parse().unwrap_or(0)))
                        .unwrap_or_default();
                    order.lock().expect("order").entry(key).or_default().push(n);
                }
                std::thread::sleep(Duration::from_millis(2));
                busy.lock().expect("busy").remove(&q);
                ConsumeResult::Success
            })
            .build()
            .expect("valid settings")
    };
    let o1 = orderly("o1");
    o1.start().await?;
    // It consumes from the last offset it finds when it takes a queue: what is sent before it
    // holds all four would be skipped.
    wait_until(Duration::from_secs(10), "o1 to hold all 4 queues", || {
        let held = o1.assigned();
        if held.len() == 4 {
            Ok(())
        } else {
            Err(format!("holds {held:?}"))
        }
    })
    .await;
    let mut sent = 0u32;
    let send_keys = |from: u32, to: u32| {
        let p = p.clone();
        async move {
            for i in from..to {
                let key = format!("k{}", i % 6);
                p.send_ordered(
                    Message::new("T", format!("{key}:{i}")),
                    &SelectByHash,
                    key.as_str(),
                )
                .await?;
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    send_keys(0, 60).await?;
    sent += 60;
    let o2 = orderly("o2");
    o2.start().await?;
    send_keys(60, 120).await?;
    sent += 60;
    o2.shutdown().await;
    send_keys(120, 180).await?;
    sent += 60;
    let what = format!("orderly consumed all {sent}");
    wait_until(Duration::from_secs(30), &what, || {
        let n: usize = order
            .lock()
            .expect("order")
            .values()
            .map(|v| v.iter().collect::<BTreeSet<_>>().len())
            .sum();
        if n == sent as usize {
            Ok(())
        } else {
            Err(format!("orderly consumed {n} of {sent}"))
        }
    })
    .await;
    o1.shutdown().await;
    assert!(
        !overlap.load(std::sync::atomic::Ordering::SeqCst),
        "two members consumed one queue at once"
    );
    for (k, seq) in order.lock().expect("order").iter() {
        // First deliveries in send order; a redelivery (after a queue moved) only repeats a
        // suffix that restarts from a committed offset, never skips ahead.
        let mut firsts = Vec::new();
        let mut seen = BTreeSet::new();
        for n in seq {
            if seen.insert(*n) {
                firsts.push(*n);
            }
        }
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{k}: {seq:?}");
    }
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_pull_poll_commit_seek() -> anyhow::Result<()> {
    use raftmq_client::PullConsumer;
    let l = local().await?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    send_n(&p, 0, 30).await?;
    let c = PullConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("L")
        .consume_from(ConsumeFrom::First)
        .build()?;
    assert!(
        c.poll(Duration::from_millis(10)).await.is_err(),
        "not started"
    );
    c.start().await?;
    c.subscribe("T", "*").await?;
    assert_eq!(c.assignment().len(), 4);
    let got = RefCell::new(BTreeSet::new());
    wait_for(Duration::from_secs(10), "30 messages polled", || async {
        for m in c.poll(Duration::from_millis(500)).await.expect("poll") {
            got.borrow_mut()
                .insert(String::from_utf8_lossy(&m.body).into_owned());
        }
        let n = got.borrow().len();
        if n >= 30 {
            Ok(())
        } else {
            Err(format!("polled {n}"))
        }
    })
    .await;
    assert!(
        c.poll(Duration::from_millis(200)).await?.is_empty(),
        "nothing more"
    );
    c.commit().await?;
    c.shutdown().await;
    // The same group resumes at the committed end; seek replays one queue.
    let c2 = PullConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("L")
        .consume_from(ConsumeFrom::First)
        .build()?;
    c2.start().await?;
    let q0 = raftmq_client::rebalance::MessageQueue::new("T", "g1", 0);
    c2.assign(vec![q0.clone()]).await?;
    let end_offset = c2.position(&q0).expect("assigned");
    assert!(end_offset > 0);
    assert!(c2.poll(Duration::from_millis(200)).await?.is_empty());
    c2.seek(&q0, 0)?;
    let again = c2.poll(Duration::from_secs(2)).await?;
    assert_eq!(again.len() as u64, end_offset, "queue 0 replayed from 0");
    assert!(again.iter().all(|m| m.queue == q0));
    c2.shutdown().await;
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconsume_later_redelivers_after_a_delay() -> anyhow::Result<()> {
    // Back through the retry topic after the broker's first backoff step (1 s here).
    let l = common::local_with(|c| c.timer.retry_backoff = "1s".into()).await?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    let deliveries: Arc<Mutex<Vec<(String, u32, Instant)>>> = Arc::default();
    let d = deliveries.clone();
    let c = PushConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("R")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(300))
        .concurrent(move |msgs| {
            let mut d = d.lock().expect("log");
            for m in msgs {
                d.push((
                    String::from_utf8_lossy(&m.body).into_owned(),
                    m.reconsume_times,
                    Instant::now(),
                ));
            }
            // Ask for the first delivery of "retry-me" to come again.
            if msgs
                .iter()
                .any(|m| m.body == b"retry-me" && m.reconsume_times == 0)
            {
                ConsumeResult::ReconsumeLater
            } else {
                ConsumeResult::Success
            }
        })
        .build()?;
    c.start().await?;
    p.send(Message::new("T", "retry-me")).await?;
    let mine = wait_until(Duration::from_secs(15), "retry-me redelivered", || {
        let d = deliveries.lock().expect("log").clone();
        let mine: Vec<_> = d
            .iter()
            .filter(|(b, _, _)| b == "retry-me")
            .cloned()
            .collect();
        if mine.len() >= 2 {
            Ok(mine)
        } else {
            Err(format!("not redelivered: {d:?}"))
        }
    })
    .await;
    assert_eq!(
        (mine[0].1, mine[1].1),
        (0, 1),
        "reconsume_times counts the redeliveries"
    );
    let gap = mine[1].2.duration_since(mine[0].2);
    assert!(
        gap >= Duration::from_millis(900),
        "redelivered after a delay, got {gap:?}"
    );
    c.shutdown().await;
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

/// The listener is the application's code and may block; it runs off the runtime's workers.
/// Here the runtime has one worker, and the listener blocks on its first message until a
/// second send — made by the test on that same runtime — is acknowledged: a listener called
/// on the worker would hold up the send (and the in-process brokers) until it gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_blocking_listener_does_not_hold_up_the_runtime() -> anyhow::Result<()> {
    let l = local().await?;
    let p = Producer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("P")
        .build()?;
    p.start().await?;
    let (acked, wait_acked) = std::sync::mpsc::channel::<()>();
    let wait_acked = Mutex::new(wait_acked);
    let (got_first, wait_first) = std::sync::mpsc::channel::<()>();
    let got_first = Mutex::new(got_first);
    let unblocked: Arc<Mutex<Option<bool>>> = Arc::default();
    let u = unblocked.clone();
    let c = PushConsumer::builder()
        .namesrv_addrs([l.namesrv.as_str()])
        .group("B")
        .subscribe("T", "*")
        .consume_from(ConsumeFrom::First)
        .long_poll(Duration::from_millis(300))
        .concurrent(move |msgs| {
            if msgs.iter().any(|m| m.body == b"first") {
                let _ = got_first.lock().expect("tx").send(());
                let ok = wait_acked
                    .lock()
                    .expect("rx")
                    .recv_timeout(Duration::from_secs(20))
                    .is_ok();
                *u.lock().expect("flag") = Some(ok);
            }
            ConsumeResult::Success
        })
        .build()?;
    c.start().await?;
    p.send(Message::new("T", "first")).await?;
    tokio::task::spawn_blocking(move || wait_first.recv_timeout(Duration::from_secs(20)))
        .await?
        .map_err(|_| anyhow::anyhow!("the listener never got the first message"))?;
    // The listener is blocked now; this send must still be acknowledged.
    p.send(Message::new("T", "second")).await?;
    acked.send(())?;
    wait_until(Duration::from_secs(25), "the listener unblocked", || {
        unblocked
            .lock()
            .expect("flag")
            .ok_or_else(|| "still blocked".to_string())
    })
    .await;
    assert_eq!(
        *unblocked.lock().expect("flag"),
        Some(true),
        "the second send was acknowledged while the listener blocked"
    );
    c.shutdown().await;
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}
