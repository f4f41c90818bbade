//! Every unary request a client can send a broker, mutated from valid requests
//! (`raftmq_testkit::fuzz`: bit flips, cuts, edge values in length and count fields) and sent
//! to a real in-process group over gRPC: each gets an answer — a status in the response or a
//! gRPC error — within the call timeout, no handler panics (a panic hook counts panics in
//! the process), and afterwards the group still serves what it stored before.
//! `RAFTMQ_FUZZ_CASES` scales the cases (a tenth of it per RPC, as each is a real call).
#![cfg(not(madsim))]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, code, msg};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::*;
use raftmq_testkit::fuzz::{self, Rng};

static PANICS: AtomicU64 = AtomicU64::new(0);

/// One call's limit: a long poll is at most 30 s; nothing else should come near.
const CALL_LIMIT: Duration = Duration::from_secs(40);

/// Fuzzes one RPC: `valid` requests mutated, each decodable result sent with `call`.
async fn rpc<Req, Resp, F, Fut>(name: &str, valid: Vec<Req>, mut call: F)
where
    Req: prost::Message + Default + std::fmt::Debug + Clone,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let encoded: Vec<Vec<u8>> = valid.iter().map(|r| r.encode_to_vec()).collect();
    let mut rng = Rng::new(fuzz::seed() ^ (name.len() as u64 * 7919 + 1));
    let cases = (fuzz::cases() / 10).max(50);
    let (mut answered, mut refused, mut undecodable) = (0u64, 0u64, 0u64);
    for case in 0..cases {
        // Mutations that break the protobuf framing (or a string's UTF-8) are refused by
        // the decoder before any handler runs: draw until one decodes.
        let req = loop {
            let bytes = fuzz::input(&mut rng, &encoded);
            match Req::decode(bytes.as_slice()) {
                Ok(r) => break r,
                Err(_) => undecodable += 1,
            }
        };
        let before = PANICS.load(Ordering::SeqCst);
        let shown = format!("{req:?}");
        match tokio::time::timeout(CALL_LIMIT, call(req)).await {
            Err(_) => panic!("{name}: case {case} got no answer within {CALL_LIMIT:?}: {shown}"),
            Ok(Ok(_)) => answered += 1,
            Ok(Err(s)) => {
                // A refusal the handler chose; a transport error would mean it died.
                assert!(
                    !matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal)
                        || !s.message().contains("transport"),
                    "{name}: case {case}: the connection broke ({s}): {shown}"
                );
                refused += 1;
            }
        }
        assert_eq!(
            PANICS.load(Ordering::SeqCst),
            before,
            "{name}: case {case} made a handler panic: {shown}"
        );
    }
    eprintln!(
        "fuzz {name}: {cases} requests, {answered} answered, {refused} refused by a gRPC status ({undecodable} mutations did not decode)"
    );
}

fn huge(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_without_a_panic_and_stored_data_survives() -> anyhow::Result<()>
{
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let cluster = Cluster::start().await?;
    cluster.create_topic("T", 4, 6).await?;
    let before = cluster.send(vec![msg("T", Some(0), "kept")]).await?;
    assert_eq!(code(&before.status), ErrorCode::Ok);
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let m = cluster.messaging(leader).await?;
    let a = cluster.admin(leader).await?;
    let stored = before.results[0].clone();

    let send = |messages| SendRequest {
        producer_group: "P".into(),
        messages,
        transactional: false,
    };
    let mut big = msg("T", None, "b");
    big.properties.insert(huge(300), huge(40_000));
    big.keys = (0..100).map(|i| format!("k{i}")).collect();
    rpc(
        "Send",
        vec![
            send(vec![msg("T", Some(1), "a"), msg("T", None, "b")]),
            send(vec![big]),
            SendRequest {
                transactional: true,
                ..send(vec![msg("T", Some(2), "half")])
            },
        ],
        |r| {
            let mut m = m.clone();
            async move { m.send(r).await }
        },
    )
    .await;
    rpc(
        "Pull",
        vec![PullRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            max_messages: 32,
            max_bytes: 1 << 20,
            subscription: "TagA || TagB".into(),
            long_poll_ms: 0,
        }],
        |mut r| {
            // Long polls are bounded, but a thousand of them would take the test's time.
            r.long_poll_ms = r.long_poll_ms.min(50);
            let mut m = m.clone();
            async move { m.pull(r).await }
        },
    )
    .await;
    rpc(
        "QueryQueue",
        vec![QueryQueueRequest {
            topic: "T".into(),
            queue_id: 1,
            timestamp_ms: Some(5),
        }],
        |r| {
            let mut m = m.clone();
            async move { m.query_queue(r).await }
        },
    )
    .await;
    rpc(
        "QueryOffset",
        vec![QueryOffsetRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
            queue_id: 1,
        }],
        |r| {
            let mut m = m.clone();
            async move { m.query_offset(r).await }
        },
    )
    .await;
    rpc(
        "CommitOffset",
        vec![CommitOffsetRequest {
            consumer_group: "G".into(),
            offsets: vec![
                CommittedOffset {
                    topic: "T".into(),
                    queue_id: 0,
                    offset: 1,
                },
                CommittedOffset {
                    topic: "T".into(),
                    queue_id: 3,
                    offset: u64::MAX,
                },
            ],
        }],
        |r| {
            let mut m = m.clone();
            async move { m.commit_offset(r).await }
        },
    )
    .await;
    rpc(
        "Heartbeat",
        vec![HeartbeatRequest {
            client_id: "c1".into(),
            producer_groups: vec!["P".into()],
            consumer_groups: vec![ConsumerGroupInfo {
                group: "G".into(),
                mode: ConsumeMode::Clustering as i32,
                subscriptions: vec![Subscription {
                    topic: "T".into(),
                    expression: "*".into(),
                }],
            }],
        }],
        |r| {
            let mut m = m.clone();
            async move { m.heartbeat(r).await }
        },
    )
    .await;
    rpc(
        "GetConsumerList",
        vec![GetConsumerListRequest {
            consumer_group: "G".into(),
        }],
        |r| {
            let mut m = m.clone();
            async move { m.get_consumer_list(r).await }
        },
    )
    .await;
    let queues = vec![
        QueueRef {
            topic: "T".into(),
            queue_id: 0,
        },
        QueueRef {
            topic: "T".into(),
            queue_id: 9,
        },
    ];
    rpc(
        "LockQueues",
        vec![LockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "c1".into(),
            queues: queues.clone(),
        }],
        |r| {
            let mut m = m.clone();
            async move { m.lock_queues(r).await }
        },
    )
    .await;
    rpc(
        "UnlockQueues",
        vec![UnlockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "c1".into(),
            queues,
        }],
        |r| {
            let mut m = m.clone();
            async move { m.unlock_queues(r).await }
        },
    )
    .await;
    rpc(
        "ViewMessage",
        vec![ViewMessageRequest {
            offset_msg_id: stored.offset_msg_id.clone(),
        }],
        |r| {
            let mut m = m.clone();
            async move { m.view_message(r).await }
        },
    )
    .await;
    rpc(
        "QueryByKey",
        vec![QueryByKeyRequest {
            topic: "T".into(),
            key: "key-kept".into(),
            max_messages: 32,
            begin_ms: 0,
            end_ms: u64::MAX,
        }],
        |r| {
            let mut m = m.clone();
            async move { m.query_by_key(r).await }
        },
    )
    .await;
    rpc(
        "EndTransaction",
        vec![EndTransactionRequest {
            producer_group: "P".into(),
            msg_id: "id-half".into(),
            offset_msg_id: stored.offset_msg_id.clone(),
            decision: TransactionDecision::Rollback as i32,
            from_check: false,
        }],
        |r| {
            let mut m = m.clone();
            async move { m.end_transaction(r).await }
        },
    )
    .await;
    rpc(
        "RecallMessage",
        vec![RecallMessageRequest {
            recall_handle: format!("T:{}", stored.offset_msg_id),
        }],
        |r| {
            let mut m = m.clone();
            async move { m.recall_message(r).await }
        },
    )
    .await;
    rpc(
        "SendBack",
        vec![SendBackRequest {
            consumer_group: "G".into(),
            offset_msg_id: stored.offset_msg_id.clone(),
            reconsume_times: 0,
            max_reconsume_times: 2,
            delay_level: 3,
            orderly: false,
        }],
        |r| {
            let mut m = m.clone();
            async move { m.send_back(r).await }
        },
    )
    .await;
    rpc(
        "CreateTopic",
        vec![CreateTopicRequest {
            topic: Some(TopicConfig {
                name: "F".into(),
                read_queue_nums: 2,
                write_queue_nums: 2,
                perm: 6,
                ..Default::default()
            }),
        }],
        |r| {
            let mut a = a.clone();
            async move { a.create_topic(r).await }
        },
    )
    .await;
    rpc(
        "TopicStats",
        vec![TopicStatsRequest { topic: "T".into() }],
        |r| {
            let mut a = a.clone();
            async move { a.topic_stats(r).await }
        },
    )
    .await;
    rpc(
        "ConsumerProgress",
        vec![ConsumerProgressRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
        }],
        |r| {
            let mut a = a.clone();
            async move { a.consumer_progress(r).await }
        },
    )
    .await;
    rpc(
        "BrowseQueue",
        vec![BrowseQueueRequest {
            topic: "T".into(),
            queue_id: 0,
            offset: 0,
            max_messages: 8,
        }],
        |r| {
            let mut a = a.clone();
            async move { a.browse_queue(r).await }
        },
    )
    .await;
    rpc(
        "ListTransactions",
        vec![ListTransactionsRequest {
            include_decided: true,
            limit: 10,
        }],
        |r| {
            let mut a = a.clone();
            async move { a.list_transactions(r).await }
        },
    )
    .await;

    // What was stored before is still there, unchanged, and the group still takes writes.
    let view = m
        .clone()
        .view_message(ViewMessageRequest {
            offset_msg_id: stored.offset_msg_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(code(&view.status), ErrorCode::Ok);
    let kept = view.message.and_then(|s| s.message).expect("the message");
    assert_eq!(kept.body, b"kept");
    let after = cluster.send(vec![msg("T", Some(0), "after")]).await?;
    assert_eq!(code(&after.status), ErrorCode::Ok);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no panic anywhere");
    cluster.shutdown().await;
    Ok(())
}
