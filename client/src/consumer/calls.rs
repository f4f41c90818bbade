//! What both consumers (push and lite pull) ask the brokers — committed offsets, queue bounds,
//! offset commits — and how pulled messages (and the half messages of transaction checks)
//! become [`ReceivedMessage`]s. The decisions are
//! [`crate::policy::offsets`]'; these only make the calls.

use std::collections::{BTreeMap, BTreeSet};

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::{
    CommitOffsetRequest, CommittedOffset, QueryOffsetRequest, QueryQueueRequest, QueueRef, Status,
    StoredMessage,
};
use raftmq_types::QueueOffset;

use super::ReceivedMessage;
use crate::error::ClientError;
use crate::policy::offsets::{ConsumeFrom, QueueBounds, Start, start, start_in_queue};
use crate::rebalance::MessageQueue;
use crate::route::Routes;

pub(crate) use crate::error::code;

/// `Ok` for an `OK` status, else the broker's refusal.
fn ok(s: &Option<Status>) -> Result<(), ClientError> {
    match code(s) {
        ErrorCode::Ok => Ok(()),
        c => Err(ClientError::Refused {
            code: c,
            message: s.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
        }),
    }
}

/// The leader of `q`'s group, from the cached route.
async fn leader(routes: &Routes, q: &MessageQueue) -> Result<String, ClientError> {
    routes
        .leader_of(&q.topic, &q.group)
        .await
        .ok_or_else(|| ClientError::Unavailable(format!("no known leader for {q:?}")))
}

/// `group`'s committed offset on `q` (`None`: it never committed there).
pub(crate) async fn query_committed(
    routes: &Routes,
    group: &str,
    q: &MessageQueue,
) -> Result<Option<QueueOffset>, ClientError> {
    let addr = leader(routes, q).await?;
    let req = QueryOffsetRequest {
        consumer_group: group.to_string(),
        topic: q.topic.clone(),
        queue_id: q.queue_id,
    };
    let r = routes
        .call(&addr, |mut c| async move { c.query_offset(req).await })
        .await?;
    ok(&r.status)?;
    Ok(r.offset.map(QueueOffset))
}

/// Where a group starts on `q`, given the progress it has stored there (on the brokers, or in
/// a local file): see [`crate::policy::offsets::start`]. Asks the queue only if needed.
pub(crate) async fn start_offset(
    routes: &Routes,
    stored: Option<QueueOffset>,
    from: ConsumeFrom,
    q: &MessageQueue,
) -> Result<QueueOffset, ClientError> {
    let timestamp_ms = match start(stored, from) {
        Start::At(o) => return Ok(o),
        Start::AskQueue { timestamp_ms } => timestamp_ms,
    };
    let addr = leader(routes, q).await?;
    let req = QueryQueueRequest {
        topic: q.topic.clone(),
        queue_id: q.queue_id,
        timestamp_ms,
    };
    let b = routes
        .call(&addr, |mut c| async move { c.query_queue(req).await })
        .await?;
    ok(&b.status)?;
    let bounds = QueueBounds {
        min: QueueOffset(b.min_offset),
        max: QueueOffset(b.max_offset),
        at_time: b.offset_at_time.map(QueueOffset),
    };
    Ok(start_in_queue(from, &bounds))
}

/// Where `group` starts on `q` when its progress is kept on the brokers.
pub(crate) async fn start_committed(
    routes: &Routes,
    group: &str,
    from: ConsumeFrom,
    q: &MessageQueue,
) -> Result<QueueOffset, ClientError> {
    let stored = query_committed(routes, group, q).await?;
    start_offset(routes, stored, from, q).await
}

/// Commits `progress` on the brokers: one request per (topic, group) to its leader. A failed
/// commit is logged and retried by the next one; false if any failed.
pub(crate) async fn commit_remote(
    routes: &Routes,
    consumer_group: &str,
    progress: BTreeMap<MessageQueue, QueueOffset>,
) -> bool {
    let mut by_group: BTreeMap<(String, String), Vec<CommittedOffset>> = BTreeMap::new();
    for (q, o) in progress {
        by_group
            .entry((q.topic.clone(), q.group.clone()))
            .or_default()
            .push(CommittedOffset {
                topic: q.topic,
                queue_id: q.queue_id,
                offset: o.0,
            });
    }
    let mut all_ok = true;
    for ((topic, group), offsets) in by_group {
        let Some(addr) = routes.leader_of(&topic, &group).await else {
            all_ok = false;
            continue;
        };
        let req = CommitOffsetRequest {
            consumer_group: consumer_group.to_string(),
            offsets,
        };
        match routes
            .call(&addr, |mut c| async move { c.commit_offset(req).await })
            .await
        {
            Ok(r) if code(&r.status) == ErrorCode::Ok => {}
            other => {
                all_ok = false;
                tracing::debug!(?other, "offset commit failed; retried at the next commit");
                let _ = routes.route(&topic, true).await;
            }
        }
    }
    all_ok
}

/// `q` on the wire.
pub(crate) fn queue_ref(q: &MessageQueue) -> QueueRef {
    QueueRef {
        topic: q.topic.clone(),
        queue_id: q.queue_id,
    }
}

/// Pulled messages as the application sees them, with the exact tag check applied.
pub(crate) fn received(
    q: &MessageQueue,
    stored: Vec<StoredMessage>,
    tags: Option<&BTreeSet<String>>,
) -> Vec<ReceivedMessage> {
    stored
        .into_iter()
        .filter_map(|m| to_received(q.clone(), m))
        .filter(|m| tags.is_none_or(|t| t.contains(&m.tags)))
        .collect()
}

/// A stored message of `q` as the application sees it (`None` if it carries no message).
pub(crate) fn to_received(q: MessageQueue, m: StoredMessage) -> Option<ReceivedMessage> {
    let inner_msg = m.message?;
    let topic = inner_msg
        .properties
        .get(super::PROPERTY_RETRY_TOPIC)
        .filter(|_| q.topic.starts_with(super::RETRY_PREFIX))
        .cloned()
        .unwrap_or_else(|| q.topic.clone());
    Some(ReceivedMessage {
        topic,
        queue: q,
        queue_offset: m.queue_offset,
        msg_id: inner_msg.msg_id,
        offset_msg_id: m.offset_msg_id,
        tags: inner_msg.tags,
        keys: inner_msg.keys,
        properties: inner_msg.properties.into_iter().collect(),
        body: inner_msg.body,
        store_timestamp_ms: m.store_timestamp_ms,
        reconsume_times: inner_msg.reconsume_times,
    })
}

/// The tags a subscription expression wants (`None`: all), for the exact check after the
/// broker's hash filter.
pub(crate) fn wanted_tags(expr: &str) -> Option<BTreeSet<String>> {
    let e = expr.trim();
    if e.is_empty() || e == "*" {
        return None;
    }
    Some(e.split("||").map(|t| t.trim().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_expressions() {
        assert_eq!(wanted_tags("*"), None);
        assert_eq!(wanted_tags("  "), None);
        let t = wanted_tags("Paid || Shipped").expect("two tags");
        assert_eq!(t, ["Paid".to_string(), "Shipped".to_string()].into());
    }
}
