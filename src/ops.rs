//! What the admin, `send` and `consume` commands do, over the wire contract (the SDK of the
//! client issue will take `send` and `consume` over).
//!
//! Every call goes to a group's leader as the name server reports it, follows a `NOT_LEADER`
//! hint at once, and retries `UNAVAILABLE` (election or lease in progress) for a bounded time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use raftmq_proto::ErrorCode;
use raftmq_proto::v1::admin_client::AdminClient;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::*;
use tonic::transport::Channel;

/// How long one command keeps retrying a group without a usable leader.
const RETRY_FOR: Duration = Duration::from_secs(15);

pub fn code(s: &Option<Status>) -> ErrorCode {
    s.as_ref()
        .and_then(|s| ErrorCode::try_from(s.code).ok())
        .unwrap_or(ErrorCode::Internal)
}

pub fn check(s: &Option<Status>, what: &str) -> anyhow::Result<()> {
    match code(s) {
        ErrorCode::Ok => Ok(()),
        c => bail!(
            "{what}: {c:?}: {}",
            s.as_ref().map(|s| s.message.as_str()).unwrap_or("")
        ),
    }
}

/// A view of the cluster through one name server.
pub struct Cluster {
    namesrv: String,
}

impl Cluster {
    pub fn new(namesrv: &str) -> Self {
        Self {
            namesrv: namesrv.to_string(),
        }
    }

    async fn ns(&self) -> anyhow::Result<NameServerClient<Channel>> {
        NameServerClient::connect(format!("http://{}", self.namesrv))
            .await
            .with_context(|| format!("connecting to the name server at {}", self.namesrv))
    }

    pub async fn groups(&self) -> anyhow::Result<Vec<GroupRoute>> {
        let r = self
            .ns()
            .await?
            .get_cluster_info(GetClusterInfoRequest {})
            .await?
            .into_inner();
        check(&r.status, "cluster info")?;
        Ok(r.groups)
    }

    pub async fn route(&self, topic: &str) -> anyhow::Result<GetRouteResponse> {
        let r = self
            .ns()
            .await?
            .get_route(GetRouteRequest {
                topic: topic.into(),
            })
            .await?
            .into_inner();
        check(&r.status, &format!("route of {topic}"))?;
        Ok(r)
    }

    /// The route to send to: the topic's, or, for a topic no group holds yet, every group
    /// with the auto-create queue count (a broker with auto-create on creates it on the first
    /// send; one without answers TOPIC_NOT_FOUND).
    pub async fn route_for_send(&self, topic: &str) -> anyhow::Result<GetRouteResponse> {
        let r = self
            .ns()
            .await?
            .get_route(GetRouteRequest {
                topic: topic.into(),
            })
            .await?
            .into_inner();
        if code(&r.status) != ErrorCode::TopicNotFound {
            check(&r.status, &format!("route of {topic}"))?;
            return Ok(r);
        }
        let groups = self.groups().await?;
        anyhow::ensure!(!groups.is_empty(), "no broker group is registered");
        Ok(GetRouteResponse {
            status: r.status,
            queues: groups
                .iter()
                .map(|g| QueueData {
                    group: g.group.clone(),
                    read_queue_nums: raftmq_broker::config::AUTO_CREATE_QUEUES,
                    write_queue_nums: raftmq_broker::config::AUTO_CREATE_QUEUES,
                    perm: 6,
                })
                .collect(),
            groups,
        })
    }

    /// The current leader address of `group` (waits for one, bounded).
    pub async fn leader(&self, group: &str) -> anyhow::Result<String> {
        let end = Instant::now() + RETRY_FOR;
        loop {
            if let Some(g) = self.groups().await?.into_iter().find(|g| g.group == group)
                && !g.leader_addr.is_empty()
            {
                return Ok(g.leader_addr);
            }
            if Instant::now() > end {
                bail!("group {group} has no leader registered");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn messaging(addr: &str) -> anyhow::Result<MessagingClient<Channel>> {
    Ok(MessagingClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to {addr}"))?
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20))
}

pub async fn admin(addr: &str) -> anyhow::Result<AdminClient<Channel>> {
    AdminClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Runs `call` against the leader of `group`, following NOT_LEADER and retrying UNAVAILABLE
/// or a lost connection for a bounded time. `call` returns the response's status with it.
pub async fn on_leader<T, F, Fut>(cluster: &Cluster, group: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Option<Status>, T)>>,
{
    let end = Instant::now() + RETRY_FOR;
    let mut addr = cluster.leader(group).await?;
    loop {
        let retry_on = match call(addr.clone()).await {
            Ok((s, v)) => match code(&s) {
                ErrorCode::Ok => return Ok(v),
                ErrorCode::NotLeader => s.map(|s| s.leader_addr).filter(|a| !a.is_empty()),
                ErrorCode::Unavailable => None,
                _ => {
                    check(&s, group)?;
                    unreachable!("check failed above")
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, %addr, "call failed; retrying");
                None
            }
        };
        if Instant::now() > end {
            bail!("group {group}: no leader took the request within {RETRY_FOR:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        addr = match retry_on {
            Some(a) => a,
            None => cluster.leader(group).await?,
        };
    }
}

/// Creates (or updates) a topic on every group named, or on every group if none is.
pub async fn topic_create(
    cluster: &Cluster,
    topic: &TopicConfig,
    groups: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut targets: Vec<String> = groups.to_vec();
    if targets.is_empty() {
        targets = cluster
            .groups()
            .await?
            .into_iter()
            .map(|g| g.group)
            .collect();
    }
    anyhow::ensure!(!targets.is_empty(), "no broker group is registered");
    for g in &targets {
        on_leader(cluster, g, |addr| {
            let t = topic.clone();
            async move {
                let r = admin(&addr)
                    .await?
                    .create_topic(CreateTopicRequest { topic: Some(t) })
                    .await?
                    .into_inner();
                Ok((r.status, ()))
            }
        })
        .await?;
    }
    Ok(targets)
}

/// Topics per group.
pub async fn topic_list(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, Vec<TopicConfig>>> {
    let mut out = BTreeMap::new();
    for g in cluster.groups().await? {
        let topics = on_leader(cluster, &g.group, |addr| async move {
            let r = admin(&addr)
                .await?
                .list_topics(ListTopicsRequest {})
                .await?
                .into_inner();
            Ok((r.status, r.topics))
        })
        .await?;
        out.insert(g.group, topics);
    }
    Ok(out)
}

/// Queue bounds per group for a topic.
pub async fn topic_stats(
    cluster: &Cluster,
    topic: &str,
) -> anyhow::Result<Vec<TopicStatsResponse>> {
    let route = cluster.route(topic).await?;
    let mut out = Vec::new();
    for q in &route.queues {
        let r = on_leader(cluster, &q.group, |addr| async move {
            let r = admin(&addr)
                .await?
                .topic_stats(TopicStatsRequest {
                    topic: topic.into(),
                })
                .await?
                .into_inner();
            Ok((r.status.clone(), r))
        })
        .await?;
        out.push(r);
    }
    Ok(out)
}

/// Every replica's view of its group.
pub async fn group_status(
    cluster: &Cluster,
    group: Option<&str>,
) -> anyhow::Result<Vec<Result<GroupStatusResponse, String>>> {
    let mut out = Vec::new();
    for g in cluster.groups().await? {
        if group.is_some_and(|want| want != g.group) {
            continue;
        }
        for r in g.replicas {
            let got = async {
                let r = admin(&r.addr)
                    .await?
                    .group_status(GroupStatusRequest {})
                    .await?
                    .into_inner();
                Ok::<_, anyhow::Error>(r)
            }
            .await
            .map_err(|e| format!("{} (replica {}): {e:#}", r.addr, r.replica_id));
            out.push(got);
        }
    }
    Ok(out)
}

/// Sends `messages` (one topic) to the next queue of the route (round-robin over groups and
/// their write queues, counted by `turn`); returns the group and the results.
pub async fn send(
    cluster: &Cluster,
    route: &GetRouteResponse,
    messages: Vec<Message>,
    turn: u64,
) -> anyhow::Result<(String, Vec<SendResult>)> {
    let slots: Vec<(String, u32)> = route
        .queues
        .iter()
        .filter(|q| q.perm & 2 != 0)
        .flat_map(|q| (0..q.write_queue_nums).map(move |i| (q.group.clone(), i)))
        .collect();
    anyhow::ensure!(!slots.is_empty(), "the topic has no writable queue");
    let (group, queue) = slots[(turn % slots.len() as u64) as usize].clone();
    let results = on_leader(cluster, &group, |addr| {
        let msgs: Vec<Message> = messages
            .iter()
            .cloned()
            .map(|mut m| {
                m.queue_id = Some(queue);
                m
            })
            .collect();
        async move {
            let r = messaging(&addr)
                .await?
                .send(SendRequest {
                    producer_group: "raftmq-cli".into(),
                    messages: msgs,
                })
                .await?
                .into_inner();
            Ok((r.status, r.results))
        }
    })
    .await?;
    Ok((group, results))
}

/// Where a consumer group starts on a queue it never committed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    First,
    Last,
}

/// One queue being consumed.
#[derive(Debug, Clone)]
pub struct QueueCursor {
    pub group: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// The committed (or starting) offset of each queue of `topic` for `consumer_group`.
pub async fn cursors(
    cluster: &Cluster,
    route: &GetRouteResponse,
    topic: &str,
    consumer_group: &str,
    from: From,
) -> anyhow::Result<Vec<QueueCursor>> {
    let mut out = Vec::new();
    for q in route.queues.iter().filter(|q| q.perm & 4 != 0) {
        for queue_id in 0..q.read_queue_nums {
            let offset = on_leader(cluster, &q.group, |addr| async move {
                let mut m = messaging(&addr).await?;
                let committed = m
                    .query_offset(QueryOffsetRequest {
                        consumer_group: consumer_group.into(),
                        topic: topic.into(),
                        queue_id,
                    })
                    .await?
                    .into_inner();
                if code(&committed.status) != ErrorCode::Ok {
                    return Ok((committed.status, 0));
                }
                if let Some(o) = committed.offset {
                    return Ok((committed.status, o));
                }
                let b = m
                    .query_queue(QueryQueueRequest {
                        topic: topic.into(),
                        queue_id,
                        timestamp_ms: None,
                    })
                    .await?
                    .into_inner();
                let o = match from {
                    From::First => b.min_offset,
                    From::Last => b.max_offset,
                };
                Ok((b.status, o))
            })
            .await?;
            out.push(QueueCursor {
                group: q.group.clone(),
                queue_id,
                offset,
            });
        }
    }
    Ok(out)
}

/// One pull from a queue's leader (long polling up to `long_poll_ms`); moves the cursor past
/// what it returns (an offset out of range moves it to the queue's nearest end).
pub async fn pull(
    cluster: &Cluster,
    topic: &str,
    consumer_group: &str,
    cur: &mut QueueCursor,
    long_poll_ms: u32,
) -> anyhow::Result<Vec<StoredMessage>> {
    let offset = cur.offset;
    let queue_id = cur.queue_id;
    let r = on_leader(cluster, &cur.group, |addr| async move {
        let r = messaging(&addr)
            .await?
            .pull(PullRequest {
                consumer_group: consumer_group.into(),
                topic: topic.into(),
                queue_id,
                offset,
                max_messages: 256,
                max_bytes: 4 << 20,
                subscription: "*".into(),
                long_poll_ms,
            })
            .await?
            .into_inner();
        // Out of range is an answer here, not a failure: jump to the nearest end.
        let s = if code(&r.status) == ErrorCode::OffsetOutOfRange {
            None
        } else {
            r.status.clone()
        };
        Ok((s.or_else(|| Some(Status::default())), r))
    })
    .await?;
    if code(&r.status) == ErrorCode::OffsetOutOfRange {
        cur.offset = cur.offset.clamp(r.min_offset, r.max_offset);
        return Ok(Vec::new());
    }
    cur.offset = r.next_offset;
    Ok(r.messages)
}

/// Commits the cursors of one group's queues.
pub async fn commit(
    cluster: &Cluster,
    topic: &str,
    consumer_group: &str,
    cursors: &[QueueCursor],
) -> anyhow::Result<()> {
    let mut by_group: BTreeMap<&str, Vec<QueueOffset>> = BTreeMap::new();
    for c in cursors {
        by_group.entry(&c.group).or_default().push(QueueOffset {
            topic: topic.into(),
            queue_id: c.queue_id,
            offset: c.offset,
        });
    }
    for (group, offsets) in by_group {
        on_leader(cluster, group, |addr| {
            let offsets = offsets.clone();
            async move {
                let r = messaging(&addr)
                    .await?
                    .commit_offset(CommitOffsetRequest {
                        consumer_group: consumer_group.into(),
                        offsets,
                    })
                    .await?
                    .into_inner();
                Ok((r.status, ()))
            }
        })
        .await?;
    }
    Ok(())
}
