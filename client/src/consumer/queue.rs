//! One queue's task: (orderly: hold the broker lock) pull with long polling, check tags,
//! hand batches to the listener, record progress — until the queue is let go.
//!
//! What to do after each pull is [`crate::policy::offsets::after_pull`]'s decision; this
//! module does the calls and the waiting.

use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::v1::{LockQueuesRequest, PullRequest, PullResponse};
use raftmq_types::QueueOffset;
use tokio::time::Instant;

use super::calls::{code, queue_ref, received, wanted_tags};
use super::{Inner, OUT_OF_RANGE_PATIENCE, ReceivedMessage};
use crate::error::ClientError;
use crate::policy::offsets::{Patience, PullAnswer, PullStep, after_batch, after_pull};
use crate::rebalance::MessageQueue;
use crate::route::CALL_TIMEOUT;

/// How long an orderly consumer's queue lock is renewed before it runs out (the broker's
/// lease is 60 s).
const LOCK_RENEW_EVERY: Duration = Duration::from_secs(20);
/// The pause after a pull that could not be made or was refused.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The pause while the replica answering is behind the consumer's offset.
const LAGGING_REPLICA_PAUSE: Duration = Duration::from_millis(100);

/// The queue's loop; it ends once the queue is let go (after the batch in hand).
pub(super) async fn consume_queue(inner: Arc<Inner>, q: MessageQueue, start: QueueOffset) {
    // The retry topic is not among the subscriptions: it takes every message.
    let expr = inner
        .cfg
        .subscriptions
        .get(&q.topic)
        .cloned()
        .unwrap_or_else(|| "*".into());
    let tags = wanted_tags(&expr);
    let mut offset = start;
    let mut locked_at: Option<Instant> = None;
    // Since when the queue has answered that `offset` is past its end.
    let mut past_end_since: Option<Instant> = None;
    while inner.state(|s| s.is_consuming(&q)) {
        if inner.listener.is_orderly() && !hold_lock(&inner, &q, &mut locked_at).await {
            // Another member still holds it (or the broker is away): do not consume.
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        let Some(resp) = pull(&inner, &q, offset, &expr).await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let answer = PullAnswer {
            code: code(&resp.status),
            requested: offset,
            min: QueueOffset(resp.min_offset),
            max: QueueOffset(resp.max_offset),
            next: QueueOffset(resp.next_offset),
        };
        let patience = Patience::Limited {
            waited: past_end_since.map_or(Duration::ZERO, |t| t.elapsed()),
            limit: OUT_OF_RANGE_PATIENCE,
        };
        match after_pull(&answer, patience) {
            PullStep::Deliver { next } => {
                past_end_since = None;
                let msgs = received(&q, resp.messages, tags.as_ref());
                if !deliver(&inner, &q, &msgs).await {
                    // Let go (or stopped) with a batch unsettled: its progress is not
                    // recorded, so the queue's next owner delivers it again.
                    break;
                }
                offset = next;
                record(&inner, &q, offset);
            }
            PullStep::MoveUp(first) => offset = first,
            PullStep::WaitForReplica => {
                past_end_since.get_or_insert_with(Instant::now);
                let _ = inner.routes.route(&q.topic, true).await;
                tokio::time::sleep(LAGGING_REPLICA_PAUSE).await;
            }
            PullStep::RestartAtEnd(end) => {
                tracing::warn!(
                    queue = ?q, %offset, %end,
                    "offset past the queue's end for too long; restarting at its end"
                );
                offset = end;
                past_end_since = None;
                inner.state(|s| s.restart_at(&q, end));
            }
            PullStep::Retry => {
                let _ = inner.routes.route(&q.topic, true).await;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Hands `msgs` to the listener in batches of `batch_size`, recording progress after each;
/// false if a batch was left unsettled (the queue let go while it was being retried).
async fn deliver(inner: &Inner, q: &MessageQueue, msgs: &[ReceivedMessage]) -> bool {
    for chunk in msgs.chunks(inner.cfg.batch_size) {
        if !super::retry::consume(inner, q, chunk).await {
            return false;
        }
        if let Some(last) = chunk.last() {
            record(inner, q, after_batch(QueueOffset(last.queue_offset)));
        }
    }
    true
}

/// Records `q`'s progress; a move back (a broker's answer behind what was consumed) is
/// refused and logged.
fn record(inner: &Inner, q: &MessageQueue, to: QueueOffset) {
    if let Err(e) = inner.state(|s| s.record(q, to)) {
        tracing::warn!(queue = ?q, error = %e, "offset not recorded");
    }
}

/// One long-polling pull at `offset` from the leader of `q`'s group. `None` if it could not
/// be made (no route or leader, no answer): the route is fetched again where it may help.
async fn pull(
    inner: &Inner,
    q: &MessageQueue,
    offset: QueueOffset,
    expr: &str,
) -> Option<PullResponse> {
    let route = inner.routes.route(&q.topic, false).await.ok()?;
    let Some(addr) = route.leaders.get(&q.group).cloned() else {
        let _ = inner.routes.route(&q.topic, true).await;
        return None;
    };
    let req = PullRequest {
        consumer_group: inner.cfg.opts.group.clone(),
        topic: q.topic.clone(),
        queue_id: q.queue_id,
        offset: offset.0,
        max_messages: inner.cfg.consume.pull_batch_size,
        max_bytes: inner.cfg.pull_max_bytes,
        subscription: expr.to_string(),
        long_poll_ms: inner.cfg.long_poll.as_millis() as u32,
    };
    let call = async {
        inner
            .routes
            .messaging(&addr)
            .await?
            .pull(req)
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))
    };
    match tokio::time::timeout(inner.cfg.long_poll + CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => {
            inner.routes.drop_channel(&addr);
            let _ = inner.routes.route(&q.topic, true).await;
            None
        }
    }
}

/// Orderly: makes sure this member holds `q`'s broker lock, renewing it every
/// [`LOCK_RENEW_EVERY`]; false if it does not.
async fn hold_lock(inner: &Inner, q: &MessageQueue, locked_at: &mut Option<Instant>) -> bool {
    if locked_at.is_some_and(|t| t.elapsed() < LOCK_RENEW_EVERY) {
        return true;
    }
    *locked_at = lock_queue(inner, q).await.then(Instant::now);
    locked_at.is_some()
}

/// Asks the broker for `q`'s lock; true if this member holds it.
async fn lock_queue(inner: &Inner, q: &MessageQueue) -> bool {
    let Some(addr) = inner.routes.leader_of(&q.topic, &q.group).await else {
        return false;
    };
    let req = LockQueuesRequest {
        consumer_group: inner.cfg.opts.group.clone(),
        client_id: inner.client_id.clone(),
        queues: vec![queue_ref(q)],
    };
    match inner
        .routes
        .call(&addr, |mut c| async move { c.lock_queues(req).await })
        .await
    {
        Ok(r) => r
            .locked
            .iter()
            .any(|l| l.queue_id == q.queue_id && l.topic == q.topic),
        Err(_) => {
            let _ = inner.routes.route(&q.topic, true).await;
            false
        }
    }
}
