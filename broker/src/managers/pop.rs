//! POP consumption (RocketMQ 5's receive / ack / change-invisible): every claim, ack and
//! change is a committed command (`raftmq_raft::pop_apply`), so what a consumer was handed and
//! under which receipt survives a leader change. A receive is held (long polling) while
//! nothing can be handed out, without writing anything: a claim is proposed only when the
//! read view shows a message to hand out (or the group has no cursor on the queue yet).

use raftmq_proto::limits::{self, check_name};
use raftmq_proto::v1::{PopAckRequest, PopChangeInvisibleRequest, PopRequest, PoppedMessage};
use raftmq_raft::{MetaCommand, PopOutcome, Replica};
use raftmq_store::QueueOffset;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::groups::GroupConsumeFrom;
use raftmq_store::pop::PopQueue;

use crate::convert::to_wire;
use crate::error::Refusal;
use crate::managers::group_configs::GroupConfigs;
use crate::managers::topics::TopicManager;

/// Most messages one receive hands out.
pub const POP_MESSAGES_MAX: u32 = 1024;
/// The longest invisible time a receive or a change may ask for (12 h).
pub const INVISIBLE_MS_MAX: u64 = 12 * 3600 * 1000;

/// A checked receive.
#[derive(Debug, Clone)]
pub struct PopSpec {
    pub queue: PopQueue,
    pub max: u32,
    pub invisible_ms: u64,
    pub hold_ms: u32,
    pub from_first: bool,
    pub fifo: bool,
}

pub struct PopManager {
    replica: Replica,
    group: String,
    topics: TopicManager,
}

impl PopManager {
    pub fn new(replica: Replica, group: &str, topics: TopicManager) -> Self {
        PopManager {
            replica,
            group: group.to_string(),
            topics,
        }
    }

    /// A receive checked against the limits, the topic and its queue.
    pub fn spec(&self, req: &PopRequest, configs: &GroupConfigs) -> Result<PopSpec, Refusal> {
        check_name("consumer group", &req.consumer_group)?;
        check_name("topic", &req.topic)?;
        crate::managers::topics::refuse_system(&req.topic)?;
        if req.max_messages == 0
            || req.max_messages > POP_MESSAGES_MAX
            || req.invisible_ms > INVISIBLE_MS_MAX
            || req.long_poll_ms > limits::LONG_POLL_MS_MAX
        {
            return Err(Refusal::InvalidArgument(format!(
                "max_messages {} (1 to {POP_MESSAGES_MAX}) / invisible_ms {} (≤ {INVISIBLE_MS_MAX}) / long_poll_ms {} (≤ {})",
                req.max_messages,
                req.invisible_ms,
                req.long_poll_ms,
                limits::LONG_POLL_MS_MAX
            )));
        }
        self.topics.for_pull(&req.topic, req.queue_id)?;
        let config = configs.get(&req.consumer_group)?;
        let from_first = config
            .as_ref()
            .is_none_or(|g| g.consume_from == GroupConsumeFrom::First);
        let fifo = config.is_some_and(|g| g.fifo);
        Ok(PopSpec {
            queue: PopQueue {
                group: req.consumer_group.clone(),
                topic: req.topic.clone(),
                queue_id: req.queue_id,
            },
            max: req.max_messages,
            invisible_ms: req.invisible_ms,
            hold_ms: req.long_poll_ms,
            from_first,
            fifo,
        })
    }

    /// Whether a claim at `now_ms` would hand something out (or set the group's cursor),
    /// by the read view.
    pub fn claimable(&self, spec: &PopSpec, now_ms: u64) -> Result<bool, Refusal> {
        let view = self.replica.store().view();
        let meta = view.meta();
        let Some(cursor) = meta.pop_cursor(&spec.queue)? else {
            return Ok(true);
        };
        let inflight = meta.pop_inflight(&spec.queue)?;
        if spec.fifo && inflight.iter().any(|(_, f)| f.visible_at_ms > now_ms) {
            return Ok(false);
        }
        let (_, end) = view.queue_bounds(&QueueId {
            topic: spec.queue.topic.clone(),
            queue_id: spec.queue.queue_id,
        });
        if cursor < end.0 {
            return Ok(true);
        }
        Ok(inflight.iter().any(|(_, f)| f.visible_at_ms <= now_ms))
    }

    /// When, after `now_ms`, the in-flight messages of the queue next make a claim possible
    /// without a write: the first to become visible again, or for a FIFO group the last (it
    /// holds the queue until every one is). `None` if none is invisible. Times already past
    /// are not answered: waiting for them would not wait (a FIFO queue held by one message
    /// while another is visible again spun here, found by the simulator).
    pub fn next_visible_ms(&self, spec: &PopSpec, now_ms: u64) -> Result<Option<u64>, Refusal> {
        let view = self.replica.store().view();
        let inflight = view.meta().pop_inflight(&spec.queue)?;
        let ahead = inflight
            .iter()
            .map(|(_, f)| f.visible_at_ms)
            .filter(|v| *v > now_ms);
        Ok(if spec.fifo { ahead.max() } else { ahead.min() })
    }

    /// Claims through Raft at `now_ms` and reads what was handed out.
    pub async fn claim(&self, spec: &PopSpec, now_ms: u64) -> Result<Vec<PoppedMessage>, Refusal> {
        let (first, end) = self.replica.store().view().queue_bounds(&QueueId {
            topic: spec.queue.topic.clone(),
            queue_id: spec.queue.queue_id,
        });
        let r = self
            .replica
            .propose(MetaCommand::PopClaim {
                group: spec.queue.group.clone(),
                topic: spec.queue.topic.clone(),
                queue_id: spec.queue.queue_id,
                max: spec.max,
                now_ms,
                invisible_ms: spec.invisible_ms,
                start_offset: if spec.from_first { first.0 } else { end.0 },
                retained_from: first.0,
                fifo: spec.fifo,
            })
            .await?;
        let Some(PopOutcome::Claimed(claimed)) = r.pop else {
            return Err(Refusal::InvalidArgument(format!(
                "a claim answered {:?}",
                r.pop
            )));
        };
        let view = self.replica.store().view();
        let queue = QueueId {
            topic: spec.queue.topic.clone(),
            queue_id: spec.queue.queue_id,
        };
        let mut out = Vec::with_capacity(claimed.len());
        for c in claimed {
            let e = view.cq_entry(&queue, QueueOffset(c.offset))?;
            let m = view.read_message(e.position, e.size)?;
            out.push(PoppedMessage {
                stored: Some(to_wire(
                    m,
                    Some(QueueOffset(c.offset)),
                    e.position,
                    &self.group,
                )),
                epoch: c.epoch,
                attempts: c.attempts,
                visible_at_ms: c.visible_at_ms,
            });
        }
        Ok(out)
    }

    pub async fn ack(&self, req: &PopAckRequest) -> Result<(), Refusal> {
        check_name("consumer group", &req.consumer_group)?;
        check_name("topic", &req.topic)?;
        let r = self
            .replica
            .propose(MetaCommand::PopAck {
                group: req.consumer_group.clone(),
                topic: req.topic.clone(),
                queue_id: req.queue_id,
                offset: req.offset,
                epoch: req.epoch,
            })
            .await?;
        match r.pop {
            Some(PopOutcome::Acked) => Ok(()),
            _ => Err(stale(&req.topic, req.queue_id, req.offset, req.epoch)),
        }
    }

    /// The new receipt's epoch and visible time.
    pub async fn change(
        &self,
        req: &PopChangeInvisibleRequest,
        now_ms: u64,
    ) -> Result<(u64, u64), Refusal> {
        check_name("consumer group", &req.consumer_group)?;
        check_name("topic", &req.topic)?;
        if req.invisible_ms > INVISIBLE_MS_MAX {
            return Err(Refusal::InvalidArgument(format!(
                "invisible_ms {} (≤ {INVISIBLE_MS_MAX})",
                req.invisible_ms
            )));
        }
        let visible_at_ms = now_ms.saturating_add(req.invisible_ms);
        let r = self
            .replica
            .propose(MetaCommand::PopChangeInvisible {
                group: req.consumer_group.clone(),
                topic: req.topic.clone(),
                queue_id: req.queue_id,
                offset: req.offset,
                epoch: req.epoch,
                visible_at_ms,
            })
            .await?;
        match r.pop {
            Some(PopOutcome::Changed { epoch }) => Ok((epoch, visible_at_ms)),
            _ => Err(stale(&req.topic, req.queue_id, req.offset, req.epoch)),
        }
    }
}

fn stale(topic: &str, queue_id: u32, offset: u64, epoch: u64) -> Refusal {
    Refusal::ReceiptStale(format!(
        "receipt {topic}:{queue_id}:{offset} epoch {epoch} is not current (acknowledged already, or replaced)"
    ))
}
