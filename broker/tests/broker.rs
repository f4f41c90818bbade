//! Black-box tests of a broker group over real gRPC on loopback: one name server, three
//! replicas. Topic lifecycle, send → pull round trip, per-queue order, long polling, offsets
//! across a leader failover, NOT_LEADER redirection, and every bad-input class.
#![cfg(not(madsim))]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, code, msg};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::*;
use raftmq_testkit::wait_for;

async fn pull(
    c: &Cluster,
    id: u64,
    topic: &str,
    queue: u32,
    offset: u64,
    long_poll_ms: u32,
) -> anyhow::Result<PullResponse> {
    Ok(c.messaging(id)
        .await?
        .pull(PullRequest {
            consumer_group: "G".into(),
            topic: topic.into(),
            queue_id: queue,
            offset,
            max_messages: 64,
            long_poll_ms,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// The route of `topic` if it is there and names a leader; otherwise what came back.
async fn routed(
    mut ns: NameServerClient<tonic::transport::Channel>,
    topic: &str,
) -> Result<GetRouteResponse, String> {
    let r = ns
        .get_route(GetRouteRequest {
            topic: topic.into(),
        })
        .await
        .expect("the name server answers")
        .into_inner();
    if code(&r.status) == ErrorCode::Ok && !r.groups[0].leader_addr.is_empty() {
        Ok(r)
    } else {
        Err(format!("{:?}", r.status))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_and_routes() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    c.create_topic("Orders", 4, 6).await?;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let mut admin = c.admin(leader).await?;
    let list = admin.list_topics(ListTopicsRequest {}).await?.into_inner();
    assert_eq!(
        list.topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["Orders"]
    );
    let stats = admin
        .topic_stats(TopicStatsRequest {
            topic: "Orders".into(),
        })
        .await?
        .into_inner();
    assert_eq!(stats.queues.len(), 4);
    // The route reaches the name server within a registration poll.
    let ns = NameServerClient::connect(format!("http://{}", c.namesrv)).await?;
    let route = wait_for(Duration::from_secs(5), "a route to Orders' leader", || {
        routed(ns.clone(), "Orders")
    })
    .await;
    assert_eq!(route.queues[0].write_queue_nums, 4);
    assert_eq!(route.groups[0].leader_addr, c.addr(leader));
    // The second name server, independent of the first, has the same route.
    let mut ns2 = NameServerClient::connect(format!("http://{}", c.namesrv2)).await?;
    let r2 = wait_for(
        Duration::from_secs(5),
        "a route to Orders' leader on the second name server",
        || routed(ns2.clone(), "Orders"),
    )
    .await;
    assert_eq!(r2.groups[0].leader_addr, c.addr(leader));
    let info = ns2
        .get_cluster_info(GetClusterInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.groups.len(), 1);
    assert_eq!(info.groups[0].replicas.len(), 3);
    // Update, then delete: sends are refused afterwards.
    c.create_topic("Orders", 8, 6).await?;
    let stats = admin
        .topic_stats(TopicStatsRequest {
            topic: "Orders".into(),
        })
        .await?
        .into_inner();
    assert_eq!(stats.queues.len(), 8);
    let r = admin
        .delete_topic(DeleteTopicRequest {
            topic: "Orders".into(),
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::Ok);
    let r = c.send(vec![msg("Orders", None, "x")]).await?;
    assert_eq!(code(&r.status), ErrorCode::TopicNotFound);
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_pull_round_trip_order_lookups_and_long_poll() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    c.create_topic("T", 2, 6).await?;
    // A batch to queue 1, then singles to queue 1: per-queue order and offsets.
    let batch: Vec<_> = (0..5)
        .map(|i| msg("T", Some(1), &format!("b{i}")))
        .collect();
    let r = c.send(batch).await?;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    assert_eq!(
        r.results.iter().map(|x| x.queue_offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    for i in 5..10 {
        let r = c.send(vec![msg("T", Some(1), &format!("b{i}"))]).await?;
        assert_eq!(r.results[0].queue_offset, i);
    }
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let p = pull(&c, leader, "T", 1, 0, 0).await?;
    assert_eq!(code(&p.status), ErrorCode::Ok);
    assert_eq!(p.messages.len(), 10);
    assert_eq!(p.next_offset, 10);
    for (i, m) in p.messages.iter().enumerate() {
        let body = format!("b{i}");
        let inner = m.message.as_ref().expect("message");
        assert_eq!(m.queue_offset, i as u64);
        assert_eq!(inner.body, body.as_bytes());
        assert_eq!(inner.tags, "TagA");
        assert_eq!(inner.keys, [format!("key-{body}")]);
        assert_eq!(inner.properties.get("p"), Some(&format!("v-{body}")));
        assert_eq!(inner.msg_id, format!("id-{body}"));
    }
    // offsetMsgId views the same message on every replica (a follower may lag: wait).
    let id = p.messages[3].offset_msg_id.clone();
    for r in 1..=3 {
        let what = format!("message {id} on replica {r}");
        let v = wait_for(Duration::from_secs(5), &what, || async {
            let v = c
                .messaging(r)
                .await
                .expect("connect")
                .view_message(ViewMessageRequest {
                    offset_msg_id: id.clone(),
                })
                .await
                .expect("view_message answers")
                .into_inner();
            if code(&v.status) == ErrorCode::Ok {
                Ok(v)
            } else {
                Err(format!("{:?}", v.status))
            }
        })
        .await;
        let m = v.message.expect("message");
        assert_eq!(m.message.expect("inner").body, b"b3");
        assert_eq!(m.queue_offset, 3);
    }
    let q = c
        .messaging(leader)
        .await?
        .query_by_key(QueryByKeyRequest {
            topic: "T".into(),
            key: "key-b7".into(),
            max_messages: 4,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(q.messages.len(), 1);
    // Tag filter: nothing matches TagB, and the offset still moves on.
    let filtered = c
        .messaging(leader)
        .await?
        .pull(PullRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
            queue_id: 1,
            offset: 0,
            subscription: "TagB".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(filtered.messages.is_empty());
    assert_eq!(filtered.next_offset, 10);

    // Long polling: a held pull returns soon after a send is applied.
    let mut worst = Duration::ZERO;
    for round in 0..5u64 {
        let offset = 10 + round;
        let held = {
            let mut m = c.messaging(leader).await?;
            tokio::spawn(async move {
                let r = m
                    .pull(PullRequest {
                        consumer_group: "G".into(),
                        topic: "T".into(),
                        queue_id: 1,
                        offset,
                        long_poll_ms: 10_000,
                        ..Default::default()
                    })
                    .await;
                (Instant::now(), r)
            })
        };
        // Not a wait for a condition: the pull must still be held after a while with nothing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "the pull must be held while nothing is there"
        );
        let r = c
            .send(vec![msg("T", Some(1), &format!("lp{round}"))])
            .await?;
        let acked = Instant::now();
        assert_eq!(code(&r.status), ErrorCode::Ok);
        let (returned, p) = held.await?;
        let p = p?.into_inner();
        assert_eq!(p.messages.len(), 1, "{:?}", p.status);
        // The send is acknowledged after the leader applied it; the pull wakes on that apply.
        worst = worst.max(returned.saturating_duration_since(acked));
    }
    eprintln!("long-poll wake-up after the send's ack: worst {worst:?}");
    assert!(
        worst < Duration::from_millis(50),
        "held pull returned {worst:?} after the ack"
    );
    // And times out empty when nothing comes.
    let t0 = Instant::now();
    let p = pull(&c, leader, "T", 1, 15, 300).await?;
    assert!(p.messages.is_empty() && t0.elapsed() >= Duration::from_millis(290));
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_survive_failover_and_followers_redirect() -> anyhow::Result<()> {
    let mut c = Cluster::start().await?;
    c.create_topic("T", 1, 6).await?;
    for i in 0..20 {
        c.send(vec![msg("T", Some(0), &format!("m{i}"))]).await?;
    }
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    // A follower refuses writes and names the leader.
    let r = c
        .messaging(follower)
        .await?
        .send(SendRequest {
            producer_group: "P".into(),
            messages: vec![msg("T", Some(0), "x")],
            ..Default::default()
        })
        .await?
        .into_inner();
    let s = r.status.expect("status");
    assert_eq!(ErrorCode::try_from(s.code)?, ErrorCode::NotLeader);
    assert_eq!(s.leader_addr, c.addr(leader));
    // The client retries at the hinted address, and that succeeds.
    let mut hinted = raftmq_proto::v1::messaging_client::MessagingClient::connect(format!(
        "http://{}",
        s.leader_addr
    ))
    .await?;
    let r = hinted
        .send(SendRequest {
            producer_group: "P".into(),
            messages: vec![msg("T", Some(0), "x")],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::Ok);
    assert_eq!(r.results[0].queue_offset, 20);
    let r = c
        .messaging(follower)
        .await?
        .commit_offset(CommitOffsetRequest {
            consumer_group: "G".into(),
            offsets: vec![CommittedOffset {
                topic: "T".into(),
                queue_id: 0,
                offset: 12,
            }],
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::NotLeader);
    // Commit on the leader, then kill it.
    let r = c
        .messaging(leader)
        .await?
        .commit_offset(CommitOffsetRequest {
            consumer_group: "G".into(),
            offsets: vec![CommittedOffset {
                topic: "T".into(),
                queue_id: 0,
                offset: 12,
            }],
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::Ok);
    c.stop_broker(leader).await;
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let q = c
        .messaging(new_leader)
        .await?
        .query_offset(QueryOffsetRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
            queue_id: 0,
        })
        .await?
        .into_inner();
    assert_eq!(q.offset, Some(12));
    // A stale (lower) commit — a member that lost the queue — is accepted and ignored: the
    // committed offset never moves back. (Retried while the new leader's lease settles.)
    let r = wait_for(
        Duration::from_secs(10),
        "a stale commit answered other than UNAVAILABLE",
        || async {
            let r = c
                .messaging(new_leader)
                .await
                .expect("connect")
                .commit_offset(CommitOffsetRequest {
                    consumer_group: "G".into(),
                    offsets: vec![CommittedOffset {
                        topic: "T".into(),
                        queue_id: 0,
                        offset: 7,
                    }],
                })
                .await
                .expect("commit_offset answers")
                .into_inner();
            if code(&r.status) == ErrorCode::Unavailable {
                Err(format!("{:?}", r.status))
            } else {
                Ok(r)
            }
        },
    )
    .await;
    assert_eq!(code(&r.status), ErrorCode::Ok, "{:?}", r.status);
    let q = c
        .messaging(new_leader)
        .await?
        .query_offset(QueryOffsetRequest {
            consumer_group: "G".into(),
            topic: "T".into(),
            queue_id: 0,
        })
        .await?
        .into_inner();
    assert_eq!(q.offset, Some(12), "a stale commit moved the offset back");
    // Writes go on; the old leader comes back as a follower and catches up.
    let r = c.send(vec![msg("T", Some(0), "after")]).await?;
    assert_eq!(r.results[0].queue_offset, 21);
    c.start_broker(leader).await?;
    wait_for(
        Duration::from_secs(10),
        "old leader to catch up",
        || async {
            let p = pull(&c, leader, "T", 0, 0, 0).await.expect("pull answers");
            if p.max_offset == 22 {
                Ok(())
            } else {
                Err(format!("max offset {}", p.max_offset))
            }
        },
    )
    .await;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_stores_nothing() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    c.create_topic("T", 2, 6).await?;
    c.create_topic("ReadOnly", 1, 4).await?;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let mut m = c.messaging(leader).await?;
    let mut admin = c.admin(leader).await?;
    let before = admin
        .group_status(GroupStatusRequest {})
        .await?
        .into_inner()
        .last_log_index;

    let big = |n: usize| {
        let mut x = msg("T", None, "big");
        x.body = vec![0; n];
        x
    };
    let mut props = msg("T", None, "p");
    props.properties.insert("k".into(), "v".repeat(40 * 1024));
    let mut too_many_keys = msg("T", None, "k");
    too_many_keys.keys = (0..65).map(|i| i.to_string()).collect();
    let cases: Vec<(&str, Vec<Message>, ErrorCode)> = vec![
        (
            "bad topic name",
            vec![msg("a b", None, "x")],
            ErrorCode::InvalidArgument,
        ),
        (
            "long topic name",
            vec![msg(&"t".repeat(128), None, "x")],
            ErrorCode::InvalidArgument,
        ),
        (
            "body too large",
            vec![big(4 * 1024 * 1024 + 1)],
            ErrorCode::MessageTooLarge,
        ),
        (
            "properties too large",
            vec![props],
            ErrorCode::MessageTooLarge,
        ),
        (
            "batch too large",
            vec![big(3 << 20), big(3 << 20)],
            ErrorCode::MessageTooLarge,
        ),
        (
            "mixed topics",
            vec![msg("T", None, "a"), msg("U", None, "b")],
            ErrorCode::InvalidArgument,
        ),
        ("empty batch", vec![], ErrorCode::InvalidArgument),
        (
            "too many keys",
            vec![too_many_keys],
            ErrorCode::InvalidArgument,
        ),
        (
            "unknown topic",
            vec![msg("Nope", None, "x")],
            ErrorCode::TopicNotFound,
        ),
        (
            "read-only topic",
            vec![msg("ReadOnly", None, "x")],
            ErrorCode::NoPermission,
        ),
        (
            "queue out of range",
            vec![msg("T", Some(2), "x")],
            ErrorCode::InvalidArgument,
        ),
    ];
    for (what, messages, want) in cases {
        let r = m
            .send(SendRequest {
                producer_group: "P".into(),
                messages,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(code(&r.status), want, "{what}: {:?}", r.status);
        assert!(r.results.is_empty(), "{what}");
    }
    let r = m
        .send(SendRequest {
            producer_group: "bad group".into(),
            messages: vec![msg("T", None, "x")],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::InvalidArgument);

    let pulls: Vec<(&str, PullRequest, ErrorCode)> = vec![
        (
            "offset past the end",
            PullRequest {
                consumer_group: "G".into(),
                topic: "T".into(),
                queue_id: 0,
                offset: 5,
                ..Default::default()
            },
            ErrorCode::OffsetOutOfRange,
        ),
        (
            "queue out of range",
            PullRequest {
                consumer_group: "G".into(),
                topic: "T".into(),
                queue_id: 9,
                ..Default::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "unknown topic",
            PullRequest {
                consumer_group: "G".into(),
                topic: "Nope".into(),
                ..Default::default()
            },
            ErrorCode::TopicNotFound,
        ),
        (
            "bad group",
            PullRequest {
                consumer_group: "".into(),
                topic: "T".into(),
                ..Default::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "bad subscription",
            PullRequest {
                consumer_group: "G".into(),
                topic: "T".into(),
                subscription: "A ||".into(),
                ..Default::default()
            },
            ErrorCode::InvalidArgument,
        ),
        (
            "too many messages",
            PullRequest {
                consumer_group: "G".into(),
                topic: "T".into(),
                max_messages: 5000,
                ..Default::default()
            },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (what, req, want) in pulls {
        let r = m.pull(req).await?.into_inner();
        assert_eq!(code(&r.status), want, "{what}: {:?}", r.status);
    }
    let r = m
        .commit_offset(CommitOffsetRequest {
            consumer_group: "G".into(),
            offsets: vec![CommittedOffset {
                topic: "T".into(),
                queue_id: 0,
                offset: 99,
            }],
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::OffsetOutOfRange);
    for id in ["", "zz", "00000000000000FFg1", "0000000000000000other"] {
        let r = m
            .view_message(ViewMessageRequest {
                offset_msg_id: id.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            code(&r.status),
            ErrorCode::InvalidArgument,
            "{id}: {:?}",
            r.status
        );
    }
    let bad_topics = [
        TopicConfig {
            name: "x y".into(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            perm: 6,
            ..Default::default()
        },
        TopicConfig {
            name: "Z".into(),
            read_queue_nums: 0,
            write_queue_nums: 1,
            perm: 6,
            ..Default::default()
        },
        TopicConfig {
            name: "Z".into(),
            read_queue_nums: 1,
            write_queue_nums: 5000,
            perm: 6,
            ..Default::default()
        },
        TopicConfig {
            name: "Z".into(),
            read_queue_nums: 1,
            write_queue_nums: 1,
            perm: 7,
            ..Default::default()
        },
    ];
    for t in bad_topics {
        let r = admin
            .create_topic(CreateTopicRequest {
                topic: Some(t.clone()),
            })
            .await?
            .into_inner();
        assert_eq!(code(&r.status), ErrorCode::InvalidArgument, "{t:?}");
    }
    // Nothing above reached the log.
    let after = admin
        .group_status(GroupStatusRequest {})
        .await?
        .into_inner()
        .last_log_index;
    assert_eq!(before, after, "a refused request was stored");
    let stats = admin
        .topic_stats(TopicStatsRequest { topic: "T".into() })
        .await?
        .into_inner();
    assert!(stats.queues.iter().all(|q| q.max_offset == 0));
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_consumer_lists_and_queue_locks() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    c.create_topic("T", 4, 6).await?;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let mut m = c.messaging(leader).await?;
    for id in ["client-b", "client-a"] {
        let r = m
            .heartbeat(HeartbeatRequest {
                client_id: id.into(),
                producer_groups: vec![],
                consumer_groups: vec![ConsumerGroupInfo {
                    group: "G".into(),
                    mode: ConsumeMode::Clustering as i32,
                    subscriptions: vec![Subscription {
                        topic: "T".into(),
                        expression: "*".into(),
                    }],
                }],
            })
            .await?
            .into_inner();
        assert_eq!(code(&r.status), ErrorCode::Ok);
    }
    let list = m
        .get_consumer_list(GetConsumerListRequest {
            consumer_group: "G".into(),
        })
        .await?
        .into_inner();
    assert_eq!(list.client_ids, ["client-a", "client-b"], "sorted");
    let q = |i| QueueRef {
        topic: "T".into(),
        queue_id: i,
    };
    let a = m
        .lock_queues(LockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "client-a".into(),
            queues: vec![q(0), q(1)],
        })
        .await?
        .into_inner();
    assert_eq!(a.locked, [q(0), q(1)]);
    assert!(a.lease_ms > 0);
    let b = m
        .lock_queues(LockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "client-b".into(),
            queues: vec![q(1), q(2)],
        })
        .await?
        .into_inner();
    assert_eq!(b.locked, [q(2)], "queue 1 is held by client-a");
    m.unlock_queues(UnlockQueuesRequest {
        consumer_group: "G".into(),
        client_id: "client-a".into(),
        queues: vec![q(1)],
    })
    .await?;
    let b = m
        .lock_queues(LockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "client-b".into(),
            queues: vec![q(1)],
        })
        .await?
        .into_inner();
    assert_eq!(b.locked, [q(1)]);
    // Locks live on the leader: a follower sends the client there.
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let r = c
        .messaging(follower)
        .await?
        .lock_queues(LockQueuesRequest {
            consumer_group: "G".into(),
            client_id: "client-a".into(),
            queues: vec![q(3)],
        })
        .await?
        .into_inner();
    assert_eq!(code(&r.status), ErrorCode::NotLeader);
    c.shutdown().await;
    Ok(())
}
