//! Transactions over real gRPC on loopback (one name server, a three-replica group): half
//! messages invisible until committed, decisions taken once (also when two race), every bad
//! `EndTransaction` refused with its code, checks over the client channel, the check limit,
//! a check that waits while no producer is connected, and check counts that survive a
//! leader change.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use common::{Cluster, code, msg};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::*;
use raftmq_testkit::wait_for;
use tokio::sync::mpsc;

fn half(topic: &str, body: &str, group: &str) -> SendRequest {
    let mut m = msg(topic, Some(0), body);
    m.msg_id = format!("id-{body}");
    SendRequest {
        producer_group: group.into(),
        messages: vec![m],
        transactional: true,
    }
}

/// `EndTransaction` at replica `to`, as it answers.
async fn end_at(
    c: &Cluster,
    to: u64,
    group: &str,
    r: &SendResult,
    decision: TransactionDecision,
) -> anyhow::Result<EndTransactionResponse> {
    Ok(c.messaging(to)
        .await?
        .end_transaction(EndTransactionRequest {
            producer_group: group.into(),
            msg_id: r.msg_id.clone(),
            offset_msg_id: r.offset_msg_id.clone(),
            decision: decision as i32,
            from_check: false,
        })
        .await?
        .into_inner())
}

/// `EndTransaction` at whichever replica leads (retrying NOT_LEADER and UNAVAILABLE: three
/// clusters on two cores do elect).
async fn end(
    c: &Cluster,
    group: &str,
    r: &SendResult,
    decision: TransactionDecision,
) -> anyhow::Result<EndTransactionResponse> {
    Ok(wait_for(
        Duration::from_secs(15),
        "an answer from a leader",
        || async {
            let leader = c.wait_leader(Duration::from_secs(15)).await;
            let r = end_at(c, leader, group, r, decision).await.ok()?;
            (!matches!(
                code(&r.status),
                ErrorCode::NotLeader | ErrorCode::Unavailable
            ))
            .then_some(r)
        },
    )
    .await)
}

/// Waits until the leader's queue 0 of `topic` holds exactly `want`.
async fn assert_bodies(c: &Cluster, topic: &str, want: &[&str]) {
    wait_for(
        Duration::from_secs(10),
        &format!("{topic} holds {want:?}"),
        || async {
            let leader = c.wait_leader(Duration::from_secs(15)).await;
            match bodies(c, leader, topic).await {
                Ok(got) if got == want => Ok(()),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// The bodies in queue 0 of `topic`, read from `id`; an error while the replica cannot
/// answer (a follower that has not applied the topic's creation yet answers TOPIC_NOT_FOUND:
/// the callers wait on it, within their deadline).
async fn bodies(c: &Cluster, id: u64, topic: &str) -> anyhow::Result<Vec<String>> {
    let r = c
        .messaging(id)
        .await?
        .pull(PullRequest {
            consumer_group: "C".into(),
            topic: topic.into(),
            queue_id: 0,
            offset: 0,
            max_messages: 64,
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        code(&r.status) == ErrorCode::Ok,
        "replica {id}: {:?}",
        r.status
    );
    Ok(r.messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.message.as_ref().unwrap().body).into_owned())
        .collect())
}

async fn list(c: &Cluster, id: u64) -> anyhow::Result<ListTransactionsResponse> {
    Ok(c.admin(id)
        .await?
        .list_transactions(ListTransactionsRequest {
            include_decided: true,
            limit: 0,
        })
        .await?
        .into_inner())
}

async fn stored_half(
    c: &Cluster,
    topic: &str,
    body: &str,
    group: &str,
) -> anyhow::Result<SendResult> {
    let r = c.send_request(half(topic, body, group)).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    Ok(r.results[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_taken_once_and_bad_ones_refused() -> anyhow::Result<()> {
    // No checks during this test.
    let c = Cluster::start_with(|b| b.transaction.timeout_ms = 600_000).await?;
    c.create_topic("T", 1, 6).await?;
    let leader = c.wait_leader(Duration::from_secs(5)).await;

    let h1 = stored_half(&c, "T", "one", "P").await?;
    assert_bodies(&c, "T", &[]).await;
    // Not by its offsetMsgId either.
    let v = c
        .messaging(leader)
        .await?
        .view_message(ViewMessageRequest {
            offset_msg_id: h1.offset_msg_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        code(&v.status),
        ErrorCode::OffsetOutOfRange,
        "a half is not viewable"
    );
    let l = list(&c, leader).await?;
    assert_eq!(l.pending, 1);
    assert_eq!(l.transactions[0].msg_id, "id-one");
    assert_eq!(l.transactions[0].state, TransactionState::TxnPending as i32);

    let r = end(&c, "P", &h1, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    assert_eq!(r.committed.as_ref().unwrap().queue_offset, 0);
    assert_bodies(&c, "T", &["one"]).await;
    // The same decision again, and the other one: each told how it stands.
    let r = end(&c, "P", &h1, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnAlreadyDecided);
    let r = end(&c, "P", &h1, TransactionDecision::Rollback).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnDecidedOtherwise);

    let h2 = stored_half(&c, "T", "two", "P").await?;
    let r = end(&c, "P", &h2, TransactionDecision::Rollback).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    let r = end(&c, "P", &h2, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnDecidedOtherwise);

    // Bad requests: each refused with its code, none changes anything.
    let h3 = stored_half(&c, "T", "three", "P").await?;
    let r = end(&c, "Q", &h3, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnGroupMismatch);
    let mut wrong_id = h3.clone();
    wrong_id.msg_id = "nope".into();
    let r = end(&c, "P", &wrong_id, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnNotFound);
    let mut unknown = h3.clone();
    unknown.offset_msg_id = format!("{:016X}g1", 12_345_678u64);
    let r = end(&c, "P", &unknown, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::TxnNotFound);
    for bad in ["", "xyz", "0000000000000000other"] {
        let mut b = h3.clone();
        b.offset_msg_id = bad.into();
        let r = end(&c, "P", &b, TransactionDecision::Commit).await?;
        assert_eq!(code(&r.status), ErrorCode::InvalidArgument, "{bad:?}");
    }
    let r = end(&c, "P", &h3, TransactionDecision::DecisionUnspecified).await?;
    assert_eq!(code(&r.status), ErrorCode::InvalidArgument);
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let r = end_at(&c, follower, "P", &h3, TransactionDecision::Commit).await?;
    assert_eq!(code(&r.status), ErrorCode::NotLeader);
    let mut two = half("T", "four", "P");
    two.messages.push(msg("T", Some(0), "five"));
    let r = c.send_request(two).await?;
    assert_eq!(code(&r.status), ErrorCode::InvalidArgument);
    let r = c.send_request(half("T", "six", "")).await?;
    assert_eq!(code(&r.status), ErrorCode::InvalidArgument);
    let mut no_id = half("T", "seven", "P");
    no_id.messages[0].msg_id.clear();
    let r = c.send_request(no_id).await?;
    assert_eq!(
        code(&r.status),
        ErrorCode::InvalidArgument,
        "a transaction needs an id"
    );
    assert_bodies(&c, "T", &["one"]).await;

    // The half queue is the broker's own.
    let r = c
        .messaging(leader)
        .await?
        .pull(PullRequest {
            consumer_group: "C".into(),
            topic: raftmq_store::txn::HALF_TOPIC.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::NoPermission);
    assert!(
        c.create_topic(raftmq_store::txn::HALF_TOPIC, 1, 6)
            .await
            .is_err()
    );

    // Two commits racing: one decides, the other is told; one copy in the queue.
    let (a, b) = tokio::join!(
        end(&c, "P", &h3, TransactionDecision::Commit),
        end(&c, "P", &h3, TransactionDecision::Commit)
    );
    let mut codes = [code(&a?.status), code(&b?.status)];
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(codes, [ErrorCode::Ok, ErrorCode::TxnAlreadyDecided]);
    assert_bodies(&c, "T", &["one", "three"]).await;
    // Every replica holds the same.
    for id in 1..=3 {
        wait_for(
            Duration::from_secs(5),
            "a replica applies the commits",
            || async {
                match bodies(&c, id, "T").await {
                    Ok(b) if b == ["one", "three"] => Ok(()),
                    Ok(b) => Err(format!("replica {id}: {b:?}")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }
    c.shutdown().await;
    Ok(())
}

/// A client channel to replica `id` speaking for producer group `group`: its first frame,
/// and the receiver of the rest.
async fn channel(
    c: &Cluster,
    id: u64,
    group: &str,
) -> anyhow::Result<(
    ServerFrame,
    tonic::Streaming<ServerFrame>,
    mpsc::Sender<ClientFrame>,
)> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(ClientFrame {
        hello: Some(ClientHello {
            client_id: format!("client-{group}"),
            producer_groups: vec![group.into()],
            consumer_groups: vec![],
        }),
    })
    .await?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut inbound = c.messaging(id).await?.channel(outbound).await?.into_inner();
    let first = inbound.message().await?.expect("a first frame");
    Ok((first, inbound, tx))
}

/// A producer's side of the client channel that follows the leader: when its channel ends
/// (the leader changed: three clusters on two cores do elect), it connects to the new one.
struct Checks<'a> {
    c: &'a Cluster,
    group: &'static str,
    open: Option<(tonic::Streaming<ServerFrame>, mpsc::Sender<ClientFrame>)>,
}

impl<'a> Checks<'a> {
    fn new(c: &'a Cluster, group: &'static str) -> Self {
        Checks {
            c,
            group,
            open: None,
        }
    }

    /// The next check within `within`, across reconnects.
    async fn next(&mut self, within: Duration) -> Option<TransactionCheck> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let Some((stream, _)) = self.open.as_mut() else {
                let leader = self.c.wait_leader(Duration::from_secs(15)).await;
                match channel(self.c, leader, self.group).await {
                    Ok((first, s, tx)) if code(&first.status) == ErrorCode::Ok => {
                        self.open = Some((s, tx))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(f))) if f.check.is_some() => return f.check,
                Ok(Ok(Some(_))) => {}
                Ok(_) => self.open = None,
                Err(_) => return None,
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_reach_a_connected_producer_and_stop_at_the_limit() -> anyhow::Result<()> {
    let c = Cluster::start_with(|b| {
        b.transaction.timeout_ms = 300;
        b.transaction.check_interval_ms = 400;
        b.transaction.max_checks = 3;
        b.transaction.scan_interval_ms = 50;
    })
    .await?;
    c.create_topic("T", 1, 6).await?;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // A follower refuses a channel and names the leader.
    let (first, _, _) = channel(&c, follower, "P").await?;
    assert_eq!(code(&first.status), ErrorCode::NotLeader);
    assert_eq!(first.status.unwrap().leader_addr, c.addr(leader));

    // No producer connected: due checks wait and use up nothing.
    let waiting = stored_half(&c, "T", "waits", "W").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l = list(&c, leader).await?;
    let w = l
        .transactions
        .iter()
        .find(|t| t.msg_id == waiting.msg_id)
        .unwrap();
    assert_eq!(
        (w.checks, w.state),
        (0, TransactionState::TxnPending as i32)
    );

    let mut checks = Checks::new(&c, "P");
    assert!(checks.next(Duration::from_millis(200)).await.is_none());

    // Answered: the check decides it.
    let h1 = stored_half(&c, "T", "answered", "P").await?;
    let check = checks.next(Duration::from_secs(10)).await.expect("a check");
    let m = check.message.unwrap();
    assert_eq!(m.offset_msg_id, h1.offset_msg_id);
    assert_eq!(m.message.unwrap().msg_id, h1.msg_id);
    let answer = EndTransactionRequest {
        producer_group: "P".into(),
        msg_id: h1.msg_id.clone(),
        offset_msg_id: h1.offset_msg_id.clone(),
        decision: TransactionDecision::Commit as i32,
        from_check: true,
    };
    let r = c
        .on_leader(
            "the answer reaches a leader",
            |r: &EndTransactionResponse| &r.status,
            |mut m| {
                let answer = answer.clone();
                async move { m.end_transaction(answer).await }
            },
        )
        .await;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    assert_bodies(&c, "T", &["answered"]).await;

    // Unanswered: checks numbered up to 3 (one asked while the leader changed may be lost,
    // never asked twice under one number), then a rollback at the limit and no fourth check.
    let h2 = stored_half(&c, "T", "ignored", "P").await?;
    let mut numbers = Vec::new();
    while let Some(ch) = checks.next(Duration::from_secs(3)).await {
        if ch.message.as_ref().unwrap().offset_msg_id == h1.offset_msg_id {
            continue; // asked again before the commit applied everywhere
        }
        assert_eq!(ch.message.unwrap().offset_msg_id, h2.offset_msg_id);
        numbers.push(ch.check_number);
    }
    assert!(
        !numbers.is_empty()
            && numbers.windows(2).all(|w| w[0] < w[1])
            && numbers.iter().all(|&n| n <= 3),
        "{numbers:?}"
    );
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let l = list(&c, leader).await?;
    let t = l
        .transactions
        .iter()
        .find(|t| t.msg_id == h2.msg_id)
        .unwrap();
    assert_eq!(t.state, TransactionState::TxnRolledBack as i32);
    assert_eq!(t.checks, 3);
    assert!(t.reason.contains("check limit"), "{}", t.reason);
    assert_bodies(&c, "T", &["answered"]).await;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_the_check_count() -> anyhow::Result<()> {
    let mut c = Cluster::start_with(|b| {
        b.transaction.timeout_ms = 200;
        b.transaction.check_interval_ms = 60_000;
        b.transaction.scan_interval_ms = 50;
    })
    .await?;
    c.create_topic("T", 1, 6).await?;
    let mut checks = Checks::new(&c, "P");
    assert!(checks.next(Duration::from_millis(200)).await.is_none());
    let h = stored_half(&c, "T", "x", "P").await?;
    let ch = checks.next(Duration::from_secs(10)).await.expect("a check");
    let ch_number = ch.check_number;
    assert_eq!(ch.message.unwrap().offset_msg_id, h.offset_msg_id);
    drop(checks);
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    c.stop_broker(leader).await;
    let next = c.wait_leader(Duration::from_secs(15)).await;
    assert_ne!(next, leader);
    // The new leader has the count and the next due time (a minute away): it neither
    // restarts the count nor checks again now.
    let mut checks = Checks::new(&c, "P");
    assert!(checks.next(Duration::from_secs(2)).await.is_none());
    let next = c.wait_leader(Duration::from_secs(15)).await;
    let l = list(&c, next).await?;
    let t = l
        .transactions
        .iter()
        .find(|t| t.msg_id == h.msg_id)
        .unwrap();
    assert_eq!(
        (t.checks, t.state),
        (ch_number, TransactionState::TxnPending as i32)
    );
    assert!(t.next_check_ms >= t.stored_ms + 60_000);
    c.shutdown().await;
    Ok(())
}
