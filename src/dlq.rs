//! Consumer group configurations (`raftmq group create|update|list`), dead-letter queues
//! (`raftmq dlq list|resend`) and `raftmq topic update`, over the Admin contract.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use raftmq_proto::v1::*;

use crate::ops::{Cluster, admin, on_leader, topic_create, topic_list};

/// Properties the broker sets on a retried or dead-lettered message that a resend drops.
const INTERNAL_PROPERTIES: [&str; 5] = [
    "RETRY_TOPIC",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_MS",
    "DELAY",
    "RAFTMQ_TIMER",
];
/// How many DLQ messages one browse call reads.
const BROWSE_BATCH: u32 = 256;

/// The broker groups to act on: those named, or every registered group.
async fn targets(cluster: &Cluster, named: &[String]) -> anyhow::Result<Vec<String>> {
    if !named.is_empty() {
        return Ok(named.to_vec());
    }
    let all: Vec<String> = cluster
        .groups()
        .await?
        .into_iter()
        .map(|g| g.group)
        .collect();
    anyhow::ensure!(!all.is_empty(), "no broker group is registered");
    Ok(all)
}

/// Parses "10s 1m 500ms" into milliseconds.
pub fn parse_backoff(s: &str) -> anyhow::Result<Vec<u64>> {
    raftmq_broker::config::parse_durations(s).map_err(|e| anyhow::anyhow!("--retry-backoff: {e}"))
}

/// What `group create|update` sets; `None`: keep (update) or the broker's default (create).
pub struct GroupEdit {
    pub name: String,
    pub max_reconsume_times: Option<u32>,
    pub retry_backoff_ms: Option<Vec<u64>>,
    pub consume_first: Option<bool>,
    pub fifo: Option<bool>,
}

/// Puts a consumer group's configuration on every target broker group (`update`: each must
/// know the group already; unset fields keep their values there).
pub async fn group_put(
    cluster: &Cluster,
    edit: &GroupEdit,
    update: bool,
    broker_groups: &[String],
) -> anyhow::Result<Vec<String>> {
    let current = if update {
        group_list(cluster).await?
    } else {
        BTreeMap::new()
    };
    let targets = targets(cluster, broker_groups).await?;
    for g in &targets {
        let old = current
            .get(g)
            .and_then(|gs| gs.iter().find(|c| c.name == edit.name))
            .cloned()
            .unwrap_or_default();
        let cfg = ConsumerGroupConfig {
            name: edit.name.clone(),
            max_reconsume_times: edit.max_reconsume_times.unwrap_or(old.max_reconsume_times),
            retry_backoff_ms: edit
                .retry_backoff_ms
                .clone()
                .unwrap_or(old.retry_backoff_ms),
            consume_first: edit.consume_first.unwrap_or(old.consume_first),
            fifo: edit.fifo.unwrap_or(old.fifo),
        };
        on_leader(cluster, g, |addr| {
            let req = PutGroupRequest {
                group: Some(cfg.clone()),
                must_exist: update,
            };
            async move {
                let r = admin(&addr).await?.put_group(req).await?.into_inner();
                Ok((r.status, ()))
            }
        })
        .await
        .with_context(|| format!("broker group {g}"))?;
    }
    Ok(targets)
}

/// Consumer group configurations per broker group.
pub async fn group_list(
    cluster: &Cluster,
) -> anyhow::Result<BTreeMap<String, Vec<ConsumerGroupConfig>>> {
    let mut out = BTreeMap::new();
    for g in cluster.groups().await? {
        let groups = on_leader(cluster, &g.group, |addr| async move {
            let r = admin(&addr)
                .await?
                .list_groups(ListGroupsRequest {})
                .await?
                .into_inner();
            Ok((r.status, r.groups))
        })
        .await?;
        out.insert(g.group, groups);
    }
    Ok(out)
}

/// One line of `group list`.
pub fn describe(broker_group: &str, c: &ConsumerGroupConfig) -> String {
    let or_default = |n: u32| {
        if n == 0 {
            "default".to_string()
        } else {
            n.to_string()
        }
    };
    let backoff = if c.retry_backoff_ms.is_empty() {
        "default".to_string()
    } else {
        c.retry_backoff_ms
            .iter()
            .map(|ms| format!("{ms}ms"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{broker_group}\t{}\tmax_reconsume_times {}\tretry_backoff {backoff}\tconsume_from {}{}",
        c.name,
        or_default(c.max_reconsume_times),
        if c.consume_first { "first" } else { "last" },
        if c.fifo { "\tfifo" } else { "" }
    )
}

/// What `raftmq topic update` changes (what is `None` stays).
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicChange {
    pub perm: Option<u32>,
    pub queues: Option<u32>,
    pub message_type: Option<i32>,
}

/// Changes an existing topic's perm, queue counts or message type on every group holding it.
pub async fn topic_update(
    cluster: &Cluster,
    topic: &str,
    change: TopicChange,
) -> anyhow::Result<Vec<String>> {
    let TopicChange {
        perm,
        queues,
        message_type,
    } = change;
    let mut done = Vec::new();
    for (g, topics) in topic_list(cluster).await? {
        let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
            continue;
        };
        let cfg = TopicConfig {
            name: t.name,
            read_queue_nums: queues.unwrap_or(t.read_queue_nums),
            write_queue_nums: queues.unwrap_or(t.write_queue_nums),
            perm: perm.unwrap_or(t.perm),
            message_type: message_type.unwrap_or(t.message_type),
        };
        topic_create(cluster, &cfg, std::slice::from_ref(&g)).await?;
        done.push(g);
    }
    if done.is_empty() {
        bail!("topic {topic} exists on no broker group");
    }
    Ok(done)
}

/// A dead-lettered message and where it lies.
pub struct DeadLetter {
    pub broker_group: String,
    pub stored: StoredMessage,
}

/// Every message in `%DLQ%<group>` on every broker group holding it, read whatever the
/// DLQ's perm.
pub async fn dlq_list(cluster: &Cluster, group: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let dlq = format!("%DLQ%{group}");
    let mut out = Vec::new();
    for (g, topics) in topic_list(cluster).await? {
        let Some(t) = topics.into_iter().find(|t| t.name == dlq) else {
            continue;
        };
        for q in 0..t.read_queue_nums.max(t.write_queue_nums) {
            let mut offset = 0;
            loop {
                let r = on_leader(cluster, &g, |addr| {
                    let req = BrowseQueueRequest {
                        topic: dlq.clone(),
                        queue_id: q,
                        offset,
                        max_messages: BROWSE_BATCH,
                    };
                    async move {
                        let r = admin(&addr).await?.browse_queue(req).await?.into_inner();
                        Ok((r.status.clone(), r))
                    }
                })
                .await?;
                if r.messages.is_empty() || r.next_offset <= offset {
                    break;
                }
                offset = r.next_offset;
                out.extend(r.messages.into_iter().map(|stored| DeadLetter {
                    broker_group: g.clone(),
                    stored,
                }));
            }
        }
    }
    Ok(out)
}

/// Sends the dead letters of `group` (those named by offset msg id, or all) back to their
/// original topics as new messages (same body, tags, keys and properties; `reconsume_times`
/// 0; `ORIGIN_MESSAGE_ID` kept). The DLQ keeps its copies. Returns (dead letter id, new
/// msg id, topic) per message.
pub async fn dlq_resend(
    cluster: &Cluster,
    namesrv: &str,
    group: &str,
    only: &[String],
) -> anyhow::Result<Vec<(String, String, String)>> {
    let letters = dlq_list(cluster, group).await?;
    let p = raftmq_client::Producer::builder()
        .namesrv_addrs(namesrv.split(','))
        .group("raftmq-dlq-resend")
        .build()?;
    p.start().await?;
    let mut out = Vec::new();
    for d in letters {
        if !only.is_empty() && !only.contains(&d.stored.offset_msg_id) {
            continue;
        }
        let Some(m) = d.stored.message else { continue };
        let Some(topic) = m.properties.get("RETRY_TOPIC").cloned() else {
            tracing::warn!(id = %d.stored.offset_msg_id, "no original topic recorded; skipped");
            continue;
        };
        let mut msg = raftmq_client::Message::new(topic.as_str(), m.body)
            .with_tags(m.tags)
            .with_keys(m.keys);
        for (k, v) in m.properties {
            if !INTERNAL_PROPERTIES.contains(&k.as_str()) {
                msg = msg.with_property(k, v);
            }
        }
        let r = p
            .send(msg)
            .await
            .with_context(|| format!("resending {}", d.stored.offset_msg_id))?;
        out.push((d.stored.offset_msg_id, r.msg_id, topic));
    }
    p.shutdown().await;
    if !only.is_empty() && out.len() < only.len() {
        bail!(
            "resent {} of the {} messages named (the others are not in %DLQ%{group})",
            out.len(),
            only.len()
        );
    }
    Ok(out)
}
