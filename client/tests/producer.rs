//! The producer against a real in-process cluster (a name server and a three-replica group
//! over loopback gRPC).
#![cfg(not(madsim))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::local;
use raftmq_client::producer::SelectByHash;
use raftmq_client::{ClientError, Message, Producer};
use raftmq_proto::ErrorCode;
use raftmq_testkit::wait_for;

fn producer(ns: &str) -> Producer {
    Producer::builder()
        .namesrv_addrs([ns])
        .group("P")
        .build()
        .expect("valid settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_send() -> anyhow::Result<()> {
    let l = local().await?;
    let p = producer(&l.namesrv);
    assert!(matches!(
        p.send(Message::new("T", "early")).await,
        Err(ClientError::State(_))
    ));
    p.start().await?;
    // Sync sends spread round-robin over the queues.
    let mut queues = BTreeSet::new();
    for i in 0..8 {
        let r = p
            .send(
                Message::new("T", format!("s{i}"))
                    .with_tags("A")
                    .with_keys([format!("k{i}")]),
            )
            .await?;
        assert_eq!(r.msg_id.len(), 40);
        assert!(r.offset_msg_id.ends_with("g1"));
        queues.insert(r.queue.queue_id);
    }
    assert_eq!(queues.len(), 4);
    // A batch bigger than one request is split (2 × 3 MiB > 4 MiB).
    let big = vec![
        Message::new("T", vec![7u8; 3 << 20]),
        Message::new("T", vec![8u8; 3 << 20]),
    ];
    let rs = p.send_batch(big).await?;
    assert_eq!(rs.len(), 2);
    // Async sends, bounded in flight.
    let mut handles = Vec::new();
    for i in 0..50 {
        handles.push(p.send_async(Message::new("T", format!("a{i}"))).await?);
    }
    for h in handles {
        h.await??;
    }
    p.send_oneway(Message::new("T", "oneway")).await?;
    // Ordered: one key, one queue, offsets increasing in send order.
    let mut by_key: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for i in 0..40 {
        let key = format!("order-{}", i % 5);
        let r = p
            .send_ordered(
                Message::new("T", format!("o{i}")),
                &SelectByHash,
                key.as_str(),
            )
            .await?;
        by_key
            .entry(key)
            .or_default()
            .push((r.queue.queue_id, r.queue_offset));
    }
    for (k, v) in &by_key {
        assert!(v.iter().all(|(q, _)| *q == v[0].0), "{k} changed queue");
        assert!(v.windows(2).all(|w| w[0].1 < w[1].1), "{k} out of order");
    }
    // Refusals: too large, bad topic, unknown topic.
    let e = p
        .send(Message::new("T", vec![0u8; (4 << 20) + 1]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge), "{e}");
    assert!(matches!(
        p.send(Message::new("bad topic", "x")).await,
        Err(ClientError::InvalidArgument(_))
    ));
    let e = p.send(Message::new("Nope", "x")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TopicNotFound), "{e}");
    p.shutdown().await;
    assert!(matches!(
        p.send(Message::new("T", "late")).await,
        Err(ClientError::State(_))
    ));
    // Everything acknowledged is there (the oneway one too, once it landed).
    let leader = l.leader().await.expect("leader");
    let want = 8 + 2 + 50 + 1 + 40;
    let what = format!("{want} distinct messages stored");
    wait_for(Duration::from_secs(5), &what, || async {
        // A send whose answer timed out is retried and may be stored twice (at-least-once):
        // count distinct ids.
        let ids: BTreeSet<String> = l
            .contents(&leader)
            .await
            .expect("read the queues")
            .into_iter()
            .map(|(_, _, id)| id)
            .collect();
        let n = ids.len();
        if n == want {
            Ok(())
        } else {
            Err(format!("{n} distinct messages stored"))
        }
    })
    .await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_ride_through_a_leader_stop() -> anyhow::Result<()> {
    let mut l = local().await?;
    let p = producer(&l.namesrv);
    p.start().await?;
    let mut acked = BTreeSet::new();
    let mut failed = 0;
    for i in 0..300 {
        if i == 100 {
            let leader = l.leader().await.expect("leader");
            let id = *l
                .brokers
                .iter()
                .find(|(_, b)| b.addr().to_string() == leader)
                .expect("ours")
                .0;
            l.brokers.remove(&id).expect("present").shutdown().await;
        }
        match p.send(Message::new("T", format!("m{i}"))).await {
            Ok(r) => {
                acked.insert(r.msg_id);
            }
            Err(e) => {
                failed += 1;
                eprintln!("send {i} failed: {e}");
            }
        }
    }
    eprintln!(
        "{} acked, {failed} failed through the leader stop",
        acked.len()
    );
    assert!(
        acked.len() >= 295,
        "the producer should ride through a failover: {} acked",
        acked.len()
    );
    let leader = wait_for(Duration::from_secs(10), "a leader", || l.leader()).await;
    let stored: BTreeSet<String> = l
        .contents(&leader)
        .await?
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_requests_and_a_refusal_fails_only_its_message() -> anyhow::Result<()>
{
    let l = local().await?;
    let p = producer(&l.namesrv);
    p.start().await?;
    // Many sends at once: past the free request slots they wait and go together. One message
    // the broker refuses (a delay level that is not a number: only the broker checks it)
    // rides among them, and one of an unknown topic beside them.
    let mut good = Vec::new();
    for i in 0..300 {
        let p = p.clone();
        good.push(tokio::spawn(async move {
            p.send(Message::new("T", format!("c{i}"))).await
        }));
    }
    let bad = {
        let p = p.clone();
        tokio::spawn(async move {
            p.send(Message::new("T", "bad").with_property("DELAY", "soon"))
                .await
        })
    };
    let unknown = {
        let p = p.clone();
        tokio::spawn(async move { p.send(Message::new("Nope", "x")).await })
    };
    let mut stored_at = BTreeMap::new();
    for h in good {
        let r = h.await??;
        let at = (r.queue.queue_id, r.queue_offset);
        assert!(
            stored_at.insert(at, r.msg_id).is_none(),
            "two results at {at:?}"
        );
    }
    let e = bad.await?.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let e = unknown.await?.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TopicNotFound), "{e}");
    // Each result names where its own message is: the message stored at that queue offset
    // has the id the result gave.
    let leader = l.leader().await.expect("leader");
    wait_for(Duration::from_secs(5), "300 messages stored", || async {
        let n = l.contents(&leader).await.expect("read the queues").len();
        if n >= 300 {
            Ok(())
        } else {
            Err(format!("{n} stored"))
        }
    })
    .await;
    let stored: BTreeMap<(u32, u64), String> = l
        .contents(&leader)
        .await?
        .into_iter()
        .map(|(q, o, id)| ((q, o), id))
        .collect();
    for (at, id) in &stored_at {
        assert_eq!(stored.get(at), Some(id), "the message at {at:?}");
    }
    p.shutdown().await;
    for (_, b) in l.brokers {
        b.shutdown().await;
    }
    Ok(())
}
