//! POP consumption calls (RocketMQ 5's receive / ack / change-invisible) to a queue's broker
//! group, following its leader: the building block of `raftmq proxy`, which serves them to
//! RocketMQ 5 clients. A receipt is (queue, offset, epoch); the broker group keeps the state
//! in its Raft log, so a receipt outlives a leader change.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use std::time::Duration;
//! use raftmq_client::pop::PopClient;
//! use raftmq_client::rebalance::MessageQueue;
//! let c = PopClient::new(["127.0.0.1:9876"]);
//! let q = MessageQueue::new("T", "g1", 0);
//! for m in c.receive(&q, "G", 16, Duration::from_secs(30), Duration::from_secs(5)).await? {
//!     c.ack(&q, "G", m.offset(), m.epoch).await?;
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::{
    PopAckRequest, PopChangeInvisibleRequest, PopRequest, PoppedMessage, StoredMessage,
};

use crate::error::{ClientError, code};
use crate::rebalance::MessageQueue;
use crate::route::{CALL_TIMEOUT, Routes};

/// How many times a call is tried while the group's leader moves.
const ATTEMPTS: usize = 5;
/// The pause before trying again after `NOT_LEADER` or an unreachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Whether a call whose outcome is unknown (no answer, `UNAVAILABLE`) is tried again: a
/// receive is (a claim whose answer was lost only hides its messages for their invisible
/// time); an ack or a change is not (tried again, it would answer `RECEIPT_STALE` for what
/// the first try did), and its caller learns the outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Unsure,
    NotLeaderOnly,
}

/// One message handed out by a receive.
#[derive(Debug, Clone, PartialEq)]
pub struct Popped {
    pub stored: StoredMessage,
    pub epoch: u64,
    pub attempts: u32,
    pub visible_at_ms: u64,
}

impl Popped {
    /// The message's offset in its queue.
    pub fn offset(&self) -> u64 {
        self.stored.queue_offset
    }
}

/// POP calls to broker groups; see the module docs.
#[derive(Clone)]
pub struct PopClient {
    routes: Routes,
}

impl PopClient {
    pub fn new<I, S>(namesrv_addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PopClient {
            routes: Routes::new(namesrv_addrs.into_iter().map(Into::into).collect(), 0),
        }
    }

    /// The readable queues of `topic`, by broker group.
    pub async fn read_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, ClientError> {
        let r = self.routes.route(topic, false).await?;
        Ok(r.read_queues
            .iter()
            .map(|(g, q)| MessageQueue::new(topic, g, *q))
            .collect())
    }

    /// Hands out up to `max` messages of `queue` to `group`, invisible for `invisible`;
    /// waits up to `long_poll` while there is none.
    pub async fn receive(
        &self,
        queue: &MessageQueue,
        group: &str,
        max: u32,
        invisible: Duration,
        long_poll: Duration,
    ) -> Result<Vec<Popped>, ClientError> {
        let req = PopRequest {
            consumer_group: group.to_string(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            max_messages: max,
            invisible_ms: invisible.as_millis() as u64,
            long_poll_ms: long_poll.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let r = self
            .leader_call(queue, Retry::Unsure, |addr| {
                let req = req.clone();
                let routes = self.routes.clone();
                async move {
                    routes
                        .call_within(&addr, long_poll + CALL_TIMEOUT, |mut c| async move {
                            c.pop(req).await
                        })
                        .await
                        .map(|r| (r.status.clone(), r))
                }
            })
            .await?;
        Ok(r.messages.into_iter().filter_map(popped).collect())
    }

    /// Finishes the message at `offset` under receipt `epoch` (`RECEIPT_STALE` if the receipt
    /// is not the current one).
    pub async fn ack(
        &self,
        queue: &MessageQueue,
        group: &str,
        offset: u64,
        epoch: u64,
    ) -> Result<(), ClientError> {
        let req = PopAckRequest {
            consumer_group: group.to_string(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
            epoch,
        };
        self.leader_call(queue, Retry::NotLeaderOnly, |addr| {
            let req = req.clone();
            let routes = self.routes.clone();
            async move {
                routes
                    .call(&addr, |mut c| async move { c.pop_ack(req).await })
                    .await
                    .map(|r| (r.status.clone(), ()))
            }
        })
        .await
    }

    /// Makes the message visible again `invisible` from now; the new receipt's epoch and
    /// visible time.
    pub async fn change_invisible(
        &self,
        queue: &MessageQueue,
        group: &str,
        offset: u64,
        epoch: u64,
        invisible: Duration,
    ) -> Result<(u64, u64), ClientError> {
        let req = PopChangeInvisibleRequest {
            consumer_group: group.to_string(),
            topic: queue.topic.clone(),
            queue_id: queue.queue_id,
            offset,
            epoch,
            invisible_ms: invisible.as_millis() as u64,
        };
        self.leader_call(queue, Retry::NotLeaderOnly, |addr| {
            let req = req.clone();
            let routes = self.routes.clone();
            async move {
                routes
                    .call(
                        &addr,
                        |mut c| async move { c.pop_change_invisible(req).await },
                    )
                    .await
                    .map(|r| (r.status.clone(), (r.epoch, r.visible_at_ms)))
            }
        })
        .await
    }

    /// Moves the message `offset_msg_id` (of `queue`'s broker group) to `group`'s dead-letter
    /// queue, `%DLQ%group` (the broker makes the topic if needed). Ack it afterwards.
    pub async fn to_dead_letter_queue(
        &self,
        queue: &MessageQueue,
        group: &str,
        offset_msg_id: &str,
        attempts: u32,
    ) -> Result<(), ClientError> {
        let req = raftmq_proto::v1::SendBackRequest {
            consumer_group: group.to_string(),
            offset_msg_id: offset_msg_id.to_string(),
            reconsume_times: attempts.max(1),
            max_reconsume_times: attempts.max(1),
            delay_level: 0,
            orderly: true,
        };
        self.leader_call(queue, Retry::NotLeaderOnly, |addr| {
            let req = req.clone();
            let routes = self.routes.clone();
            async move {
                routes
                    .call(&addr, |mut c| async move { c.send_back(req).await })
                    .await
                    .map(|r| (r.status.clone(), ()))
            }
        })
        .await
    }

    /// Calls the leader of `queue`'s broker group, following it while it moves: a refusal
    /// other than `NOT_LEADER` / `UNAVAILABLE` is answered as is.
    async fn leader_call<T, F, Fut>(
        &self,
        queue: &MessageQueue,
        unsure: Retry,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(Option<raftmq_proto::v1::Status>, T), ClientError>>,
    {
        let mut last = ClientError::Unavailable(format!(
            "no leader known for group {} of topic {}",
            queue.group, queue.topic
        ));
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY_PAUSE).await;
                let _ = self.routes.route(&queue.topic, true).await;
            }
            let Some(addr) = self.routes.leader_of(&queue.topic, &queue.group).await else {
                continue;
            };
            match f(addr).await {
                Ok((status, t)) => match code(&status) {
                    ErrorCode::Ok => return Ok(t),
                    // Not the leader: nothing was done; try the leader.
                    c @ ErrorCode::NotLeader => {
                        last = ClientError::Refused {
                            code: c,
                            message: status.map(|s| s.message).unwrap_or_default(),
                        };
                    }
                    // May or may not have been done: tried again only if that is harmless.
                    c @ ErrorCode::Unavailable if unsure == Retry::Unsure => {
                        last = ClientError::Refused {
                            code: c,
                            message: status.map(|s| s.message).unwrap_or_default(),
                        };
                    }
                    // A receipt gone stale on a second try may be the first try's doing (a
                    // leader that answered NOT_LEADER after appending it): unknown.
                    ErrorCode::ReceiptStale if attempt > 0 => {
                        return Err(ClientError::Unavailable(format!(
                            "outcome unknown: an earlier try may have done it ({})",
                            status.map(|s| s.message).unwrap_or_default()
                        )));
                    }
                    c => {
                        return Err(ClientError::Refused {
                            code: c,
                            message: status.map(|s| s.message).unwrap_or_default(),
                        });
                    }
                },
                Err(e) if unsure == Retry::Unsure => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

fn popped(p: PoppedMessage) -> Option<Popped> {
    Some(Popped {
        stored: p.stored?,
        epoch: p.epoch,
        attempts: p.attempts,
        visible_at_ms: p.visible_at_ms,
    })
}
