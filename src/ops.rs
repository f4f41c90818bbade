//! What the admin commands do, over the wire contract (`send`, `consume` and `bench` use the
//! SDK; a transactional `send` that waits for its check also reads the transaction table and
//! finds the committed message by its msg_id here; `txn end` decides a transaction here).
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
    // Routable once the leaders' next registration reaches the name server (≤ 100 ms).
    let end = Instant::now() + RETRY_FOR;
    loop {
        if let Ok(r) = cluster.route(&topic.name).await
            && targets.iter().all(|g| {
                r.queues
                    .iter()
                    .any(|q| &q.group == g && q.write_queue_nums == topic.write_queue_nums)
            })
        {
            return Ok(targets);
        }
        if Instant::now() > end {
            bail!(
                "topic {} was created but the name server does not route it yet",
                topic.name
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// The transaction table of `group`'s leader: pending transactions first (by half message
/// position), then, with `include_decided`, the decided ones still on record; at most `limit`
/// (0: the broker's default).
pub async fn list_transactions(
    cluster: &Cluster,
    group: &str,
    include_decided: bool,
    limit: u32,
) -> anyhow::Result<ListTransactionsResponse> {
    on_leader(cluster, group, |addr| async move {
        let r = admin(&addr)
            .await?
            .list_transactions(ListTransactionsRequest {
                include_decided,
                limit,
            })
            .await?
            .into_inner();
        Ok((r.status.clone(), r))
    })
    .await
}

/// Asks `group`'s leader to decide a transaction (`Messaging.EndTransaction`). NOT_LEADER and
/// UNAVAILABLE are followed and retried like every call here; any other answer, a refusal
/// (`TXN_ALREADY_DECIDED`, `TXN_NOT_FOUND`, …) included, is returned as the broker gave it, for
/// the caller to explain. A try whose answer was lost is retried: if the first try was applied,
/// the retry is answered `TXN_ALREADY_DECIDED`.
pub async fn end_transaction(
    cluster: &Cluster,
    group: &str,
    req: &EndTransactionRequest,
) -> anyhow::Result<EndTransactionResponse> {
    on_leader(cluster, group, |addr| {
        let req = req.clone();
        async move {
            let mut m = MessagingClient::connect(format!("http://{addr}"))
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let r = m.end_transaction(req).await?.into_inner();
            let route = match code(&r.status) {
                ErrorCode::NotLeader | ErrorCode::Unavailable => r.status.clone(),
                // The broker's final answer: `on_leader` returns it (a default status is OK).
                _ => Some(Status::default()),
            };
            Ok((route, r))
        }
    })
    .await
}

/// The newest message of `topic` on `group` indexed under `key` (a key or a msg_id), read on
/// the group's leader.
pub async fn find_by_key(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    key: &str,
) -> anyhow::Result<Option<StoredMessage>> {
    on_leader(cluster, group, |addr| async move {
        let mut m = MessagingClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let r = m
            .query_by_key(QueryByKeyRequest {
                topic: topic.into(),
                key: key.into(),
                max_messages: 1,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((r.status, r.messages.into_iter().next()))
    })
    .await
}
