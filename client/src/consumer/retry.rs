//! What happens to a batch the listener did not consume (it asked to reconsume later,
//! panicked, or ran past `consume_timeout`):
//!
//! - **concurrent, clustering**: each message is sent back to the broker group holding it
//!   (`SendBack`): the broker stores it in the group's retry topic `%RETRY%<group>`, due after
//!   the backoff for its attempt, with `reconsume_times + 1` and its original topic and msg id
//!   — or, past the group's maximum, in `%DLQ%<group>`. A message sent back counts as consumed
//!   here (the queue's offset moves past it); every member subscribes to the retry topic, so
//!   the copy comes back to some member. A message the broker could not take back (no leader
//!   reachable, a refusal) is retried locally after a pause, and a warning says so — as
//!   RocketMQ's consumers do — except one whose attempts are spent (its `reconsume_times`
//!   at the maximum, the consumer's own or the one the broker last reported): delivering it
//!   again would be an attempt past the maximum, so its send-back is retried instead until
//!   the broker moves it to the DLQ.
//! - A batch still being retried when its queue is let go (a rebalance, shutdown) is left
//!   unsettled: its progress is not recorded, and the queue's next owner delivers it again.
//! - **orderly**: the queue is suspended for [`ORDERLY_SUSPEND`] and the batch retried in
//!   place (order never breaks); after each failed attempt the broker is told
//!   (`SendBack` with `orderly`): past the group's maximum it moves the message to the DLQ
//!   and the queue goes on, before it nothing is stored.
//! - **broadcasting**: retried locally (there is no retry topic per member).

use std::sync::atomic::Ordering;
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::SendBackRequest;

use super::calls::code;
use super::listener::Failure;
use super::{Inner, MessageModel, ReceivedMessage};
use crate::error::ClientError;
use crate::policy::consume::reconsume_pause;
use crate::rebalance::MessageQueue;

/// Prefix of a consumer group's retry topic.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Property of a retried message: the topic it was first sent to.
pub const PROPERTY_RETRY_TOPIC: &str = "RETRY_TOPIC";
/// How long an orderly queue is suspended after a failed batch (RocketMQ's default).
pub const ORDERLY_SUSPEND: Duration = Duration::from_secs(1);
/// How many times a send-back is tried before the message is retried locally: pauses of
/// 100 ms doubling, about 3 s in all — an election's length.
const SEND_BACK_TRIES: u32 = 5;

/// The retry topic of consumer group `group`.
///
/// ```
/// assert_eq!(raftmq_client::consumer::retry_topic("G"), "%RETRY%G");
/// ```
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// Hands `chunk` (of queue `q`) to the listener until each of its messages is consumed,
/// taken back by the broker (concurrent) or moved to the DLQ (orderly). False if it gave up
/// because `q` was let go or the consumer stopped meanwhile (nothing of the chunk may then
/// count as consumed).
pub(super) async fn consume(inner: &Inner, q: &MessageQueue, chunk: &[ReceivedMessage]) -> bool {
    let mut batch = chunk.to_vec();
    let mut tries = 0u32;
    loop {
        let Some((given_back, outcome)) = inner
            .listener
            .call(&inner.listener_calls, batch, inner.cfg.consume_timeout)
            .await
        else {
            return false;
        };
        batch = given_back;
        let Err(why) = outcome else {
            return true;
        };
        tries += 1;
        let pause = match (inner.listener.is_orderly(), inner.cfg.model) {
            (false, MessageModel::Clustering) => {
                let Some(kept) = send_back_all(inner, q, batch, why).await else {
                    return false;
                };
                batch = kept;
                if batch.is_empty() {
                    return true;
                }
                reconsume_pause(tries)
            }
            (true, MessageModel::Clustering) => {
                let Some(kept) = dead_letter_spent(inner, q, batch).await else {
                    return false;
                };
                batch = kept;
                if batch.is_empty() {
                    return true;
                }
                ORDERLY_SUSPEND
            }
            (_, MessageModel::Broadcasting) => reconsume_pause(tries),
        };
        for m in &mut batch {
            m.reconsume_times += 1;
        }
        tokio::time::sleep(pause).await;
        if !still_ours(inner, q) {
            return false;
        }
    }
}

/// Whether this member still consumes `q` (not let go, not stopped).
fn still_ours(inner: &Inner, q: &MessageQueue) -> bool {
    inner.running() && inner.state(|s| s.is_consuming(q))
}

/// The maximum in force: the consumer's own, else the one the broker last applied
/// (`None` before any send-back answered).
fn known_max(inner: &Inner) -> Option<u32> {
    match inner.cfg.max_reconsume_times {
        0 => match inner.broker_max.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        },
        n => Some(n),
    }
}

/// Sends each message of `batch` back; returns those the broker did not take, to retry
/// locally. A message whose attempts are spent (bound for the DLQ) is not delivered again:
/// its send-back is retried until the broker takes it — `None` if `q` is let go first.
async fn send_back_all(
    inner: &Inner,
    q: &MessageQueue,
    batch: Vec<ReceivedMessage>,
    why: Failure,
) -> Option<Vec<ReceivedMessage>> {
    let mut kept = Vec::new();
    for m in batch {
        match send_back_spent(inner, q, &m, false).await? {
            Ok(topic) => {
                tracing::debug!(msg_id = %m.msg_id, %topic, reason = why.as_str(), "sent back");
                inner.sent_back();
            }
            Err(e) => {
                tracing::warn!(
                    msg_id = %m.msg_id, error = %e, reason = why.as_str(),
                    "the broker could not take the message back; retrying it locally"
                );
                kept.push(m);
            }
        }
    }
    Some(kept)
}

/// [`send_back`], repeated until the broker answers while `m`'s attempts are spent (it must
/// not be delivered again); `None` if `q` is let go first.
async fn send_back_spent(
    inner: &Inner,
    q: &MessageQueue,
    m: &ReceivedMessage,
    orderly: bool,
) -> Option<Result<String, ClientError>> {
    let mut waits = 0u32;
    loop {
        match send_back(inner, m, orderly).await {
            Err(e) if known_max(inner).is_some_and(|max| m.reconsume_times >= max) => {
                tracing::warn!(
                    msg_id = %m.msg_id, error = %e,
                    "the broker could not take back a message bound for the DLQ; trying again"
                );
                waits += 1;
                tokio::time::sleep(reconsume_pause(waits)).await;
                if !still_ours(inner, q) {
                    return None;
                }
            }
            r => return Some(r),
        }
    }
}

/// Orderly: tells the broker of each failed attempt; returns the messages still to retry in
/// place (those the broker did not move to the DLQ).
async fn dead_letter_spent(
    inner: &Inner,
    q: &MessageQueue,
    batch: Vec<ReceivedMessage>,
) -> Option<Vec<ReceivedMessage>> {
    let mut kept = Vec::new();
    for m in batch {
        match send_back_spent(inner, q, &m, true).await? {
            Ok(topic) if !topic.is_empty() => {
                tracing::warn!(
                    msg_id = %m.msg_id, %topic, attempts = m.reconsume_times + 1,
                    "orderly message failed too often; moved to the dead-letter queue"
                );
            }
            // Before the maximum, or the broker away: retried in place.
            _ => kept.push(m),
        }
    }
    Some(kept)
}

/// One send-back of `m` to the leader of the broker group holding it; the topic it went to
/// (empty: retried in place, orderly).
async fn send_back(
    inner: &Inner,
    m: &ReceivedMessage,
    orderly: bool,
) -> Result<String, ClientError> {
    let req = SendBackRequest {
        consumer_group: inner.cfg.opts.group.clone(),
        offset_msg_id: m.offset_msg_id.clone(),
        reconsume_times: m.reconsume_times,
        max_reconsume_times: inner.cfg.max_reconsume_times,
        delay_level: 0,
        orderly,
    };
    let mut last = ClientError::Unavailable(format!("no leader of group {}", m.queue.group));
    for attempt in 0..SEND_BACK_TRIES {
        let refresh = attempt > 0;
        let leader = match inner.routes.route(&m.queue.topic, refresh).await {
            Ok(r) => r.leaders.get(&m.queue.group).cloned(),
            Err(e) => {
                last = e;
                None
            }
        };
        if let Some(addr) = leader {
            let req = req.clone();
            match inner
                .routes
                .call(&addr, |mut c| async move { c.send_back(req).await })
                .await
            {
                Ok(r) => match code(&r.status) {
                    ErrorCode::Ok => {
                        inner
                            .broker_max
                            .store(r.max_reconsume_times, Ordering::Release);
                        return Ok(r.topic);
                    }
                    ErrorCode::NotLeader | ErrorCode::Unavailable => {
                        last = ClientError::Unavailable(format!("{:?}", r.status));
                    }
                    c => {
                        return Err(ClientError::Refused {
                            code: c,
                            message: r.status.map(|s| s.message).unwrap_or_default(),
                        });
                    }
                },
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    Err(last)
}
