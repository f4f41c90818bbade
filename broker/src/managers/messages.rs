//! Messages: sends (topic check, queue choice, the batch limit, the write through Raft) and
//! reads of what this replica applied (one look at a queue for a pull, a message by
//! `offsetMsgId`, messages by key).
//!
//! Sends go through Raft, so only the leader takes them. Reads are served by any replica
//! from what it has applied (committed data is identical everywhere; a follower may lag),
//! through the store's read view: a pull scanning [`PULL_SCAN_MAX`] entries never holds
//! the lock that appends and applies take.

use std::sync::atomic::{AtomicU32, Ordering};

use raftmq_proto::limits::{
    self, FIELD_MAX, PULL_BYTES_MAX, PULL_MESSAGES_DEFAULT, PULL_SCAN_MAX, QUERY_MESSAGES_MAX,
    check_batch, check_name,
};
use raftmq_proto::v1::{
    BrowseQueueRequest, PullRequest, PullResponse, QueryByKeyRequest, QueryQueueResponse,
    SendRequest, SendResult, StoredMessage,
};
use raftmq_raft::Replica;
use raftmq_store::consumequeue::QueueId;
use raftmq_store::indexfile::KeyQuery;
use raftmq_store::{Position, QueueOffset, ReadView};

use crate::convert::{offset_msg_id, parse_offset_msg_id, subscription_hashes, to_store, to_wire};
use crate::error::Refusal;
use crate::managers::timers::TimerManager;
use crate::managers::topics::TopicManager;
use crate::managers::transactions::{TransactionManager, half_result};
use raftmq_store::timer::TIMER_TOPIC;

/// A pull, checked: which queue, from where, how much, which tags.
#[derive(Debug, Clone)]
pub struct PullSpec {
    pub queue: QueueId,
    pub offset: QueueOffset,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// Tag hashes to keep (`None`: every message).
    pub tag_hashes: Option<Vec<u64>>,
    /// How long to hold the pull when nothing is there (long polling).
    pub hold_ms: u32,
}

/// The messages of one replica.
pub struct MessageManager {
    replica: Replica,
    group: String,
    topics: TopicManager,
    /// Most encoded bytes one write may carry (the replica's batch limit).
    batch_max_bytes: usize,
    /// Round-robin queue choice for sends that name no queue.
    next_queue: AtomicU32,
    /// The `serve_uncommitted_pulls` mutation (checker tests only).
    #[cfg_attr(not(feature = "mutations"), allow(dead_code))]
    serve_uncommitted: bool,
}

impl MessageManager {
    pub fn new(
        replica: Replica,
        group: &str,
        topics: TopicManager,
        batch_max_bytes: usize,
        serve_uncommitted: bool,
    ) -> Self {
        MessageManager {
            replica,
            group: group.to_string(),
            topics,
            batch_max_bytes,
            next_queue: AtomicU32::new(0),
            serve_uncommitted,
        }
    }

    fn group(&self) -> &str {
        &self.group
    }

    /// Stores a batch (one topic, one queue) through Raft; the results carry the queue
    /// offsets apply assigned.
    pub async fn send(
        &self,
        req: SendRequest,
        timers: &TimerManager,
    ) -> Result<Vec<SendResult>, Refusal> {
        check_batch(&req.messages)?;
        if !req.producer_group.is_empty() {
            check_name("producer group", &req.producer_group)?;
        }
        let name = req.messages[0].topic.clone();
        let t = self.topics.for_send(&name).await?;
        let queue_id = match req.messages[0].queue_id {
            Some(q) if q >= t.write_queue_nums => {
                return Err(Refusal::InvalidArgument(format!(
                    "queue {q} of topic {name:?}: it has {} write queues",
                    t.write_queue_nums
                )));
            }
            Some(q) => q,
            None => self.next_queue.fetch_add(1, Ordering::Relaxed) % t.write_queue_nums,
        };
        if req.transactional && (req.producer_group.is_empty() || req.messages.len() != 1) {
            return Err(Refusal::InvalidArgument(
                "a transactional send needs a producer group and exactly one message".into(),
            ));
        }
        let mut msgs: Vec<_> = req
            .messages
            .into_iter()
            .map(|m| to_store(m, queue_id))
            .collect();
        let now = raftmq_raft::replica::now_ms();
        let mut due = Vec::with_capacity(msgs.len());
        for m in &mut msgs {
            due.push(timers.prepare(m, now)?);
        }
        if req.transactional && due.iter().any(Option::is_some) {
            return Err(Refusal::InvalidArgument(
                "a transactional message cannot be timed".into(),
            ));
        }
        if req.transactional {
            for m in &mut msgs {
                TransactionManager::make_half(&req.producer_group, m);
                TransactionManager::check_half(m, self.batch_max_bytes)?;
            }
        }
        let bytes: usize = msgs.iter().map(|m| m.encoded_len()).sum();
        if bytes > self.batch_max_bytes {
            return Err(Refusal::MessageTooLarge(format!(
                "batch encodes to {bytes} bytes, more than {}",
                self.batch_max_bytes
            )));
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.msg_id.clone()).collect();
        let assigned = self.replica.write(msgs).await?;
        if req.transactional {
            return Ok(assigned
                .into_iter()
                .zip(ids)
                .map(|(a, msg_id)| half_result(self.group(), msg_id, queue_id, a.position))
                .collect());
        }
        Ok(assigned
            .into_iter()
            .zip(ids)
            .zip(due)
            .map(|((a, msg_id), due)| match due {
                // A timed message: its queue offset comes with its delivery.
                Some(at) if a.topic == TIMER_TOPIC => SendResult {
                    msg_id,
                    offset_msg_id: offset_msg_id(self.group(), a.position),
                    queue_id,
                    queue_offset: u64::MAX,
                    recall_handle: offset_msg_id(self.group(), a.position),
                    deliver_at_ms: at,
                },
                _ => SendResult {
                    msg_id,
                    offset_msg_id: offset_msg_id(self.group(), a.position),
                    queue_id: a.queue_id,
                    queue_offset: a.queue_offset.0,
                    ..Default::default()
                },
            })
            .collect())
    }

    /// A pull request checked against the limits and the topic.
    pub fn pull_spec(&self, req: &PullRequest) -> Result<PullSpec, Refusal> {
        check_name("consumer group", &req.consumer_group)?;
        check_name("topic", &req.topic)?;
        crate::managers::topics::refuse_system(&req.topic)?;
        let tag_hashes =
            subscription_hashes(&req.subscription).map_err(Refusal::InvalidArgument)?;
        if req.max_messages > limits::PULL_MESSAGES_MAX
            || req.long_poll_ms > limits::LONG_POLL_MS_MAX
        {
            return Err(Refusal::InvalidArgument(format!(
                "max_messages {} (≤ {}) / long_poll_ms {} (≤ {})",
                req.max_messages,
                limits::PULL_MESSAGES_MAX,
                req.long_poll_ms,
                limits::LONG_POLL_MS_MAX
            )));
        }
        self.topics.for_pull(&req.topic, req.queue_id)?;
        Ok(PullSpec {
            queue: QueueId {
                topic: req.topic.clone(),
                queue_id: req.queue_id,
            },
            offset: QueueOffset(req.offset),
            max_messages: if req.max_messages == 0 {
                PULL_MESSAGES_DEFAULT
            } else {
                req.max_messages
            },
            max_bytes: if req.max_bytes == 0 {
                PULL_BYTES_MAX
            } else {
                req.max_bytes.min(PULL_BYTES_MAX)
            },
            tag_hashes,
            hold_ms: req.long_poll_ms,
        })
    }

    /// An operator's read of a queue, whatever its topic's perm (no long polling, no tag
    /// filter).
    pub fn browse(&self, req: &BrowseQueueRequest) -> Result<PullResponse, Refusal> {
        check_name("topic", &req.topic)?;
        let t = self.topics.get(&req.topic)?;
        if req.queue_id >= t.read_queue_nums.max(t.write_queue_nums) {
            return Err(Refusal::InvalidArgument(format!(
                "queue {} of topic {:?}: it has {} queues",
                req.queue_id,
                req.topic,
                t.read_queue_nums.max(t.write_queue_nums)
            )));
        }
        if req.max_messages > limits::PULL_MESSAGES_MAX {
            return Err(Refusal::InvalidArgument(format!(
                "max_messages {} (≤ {})",
                req.max_messages,
                limits::PULL_MESSAGES_MAX
            )));
        }
        Ok(self.look(&PullSpec {
            queue: QueueId {
                topic: req.topic.clone(),
                queue_id: req.queue_id,
            },
            offset: QueueOffset(req.offset),
            max_messages: if req.max_messages == 0 {
                PULL_MESSAGES_DEFAULT
            } else {
                req.max_messages
            },
            max_bytes: PULL_BYTES_MAX,
            tag_hashes: None,
            hold_ms: 0,
        }))
    }

    /// One look at a queue: the messages from `spec.offset` on (at most
    /// [`PULL_SCAN_MAX`] entries looked at), and the queue's bounds. An offset outside the
    /// queue answers `OFFSET_OUT_OF_RANGE` with the bounds, so the consumer can correct it.
    pub fn look(&self, spec: &PullSpec) -> PullResponse {
        let view = self.replica.store().view();
        let (min, max) = view.queue_bounds(&spec.queue);
        let mut resp = PullResponse {
            status: None,
            min_offset: min.0,
            max_offset: max.0,
            next_offset: spec.offset.0,
            messages: Vec::new(),
        };
        #[cfg(feature = "mutations")]
        if self.serve_uncommitted && spec.offset >= max {
            let store = self.replica.store().lock();
            serve_uncommitted(&store, spec, max, &mut resp, self.group());
            return resp;
        }
        if spec.offset < min || spec.offset > max {
            resp.status = Some(
                Refusal::OffsetOutOfRange(format!(
                    "offset {} outside [{min}, {max}] of {}:{}",
                    spec.offset, spec.queue.topic, spec.queue.queue_id
                ))
                .status(),
            );
            return resp;
        }
        match scan(view, spec, max, self.group(), &mut resp.messages) {
            Ok(next) => resp.next_offset = next.0,
            Err(e) => resp.status = Some(Refusal::from(e).status()),
        }
        resp
    }

    /// The queue's bounds, and the first offset stored at or after `timestamp_ms` if asked.
    pub fn query_queue(
        &self,
        queue: &QueueId,
        timestamp_ms: Option<u64>,
    ) -> Result<QueryQueueResponse, Refusal> {
        check_name("topic", &queue.topic)?;
        let view = self.replica.store().view();
        let (min, max) = view.queue_bounds(queue);
        let offset_at_time = match timestamp_ms {
            Some(ts) => Some(view.offset_at_time(queue, ts)?.0),
            None => None,
        };
        Ok(QueryQueueResponse {
            status: None,
            min_offset: min.0,
            max_offset: max.0,
            offset_at_time,
        })
    }

    /// The message an `offsetMsgId` names, with its queue offset.
    pub fn view(&self, id: &str) -> Result<StoredMessage, Refusal> {
        let Some((group, position)) = parse_offset_msg_id(id) else {
            return Err(Refusal::InvalidArgument(format!(
                "{id:?} is not an offsetMsgId"
            )));
        };
        if group != self.group() {
            return Err(Refusal::InvalidArgument(format!(
                "{id:?} belongs to group {group:?}, this is {:?}",
                self.group()
            )));
        }
        let view = self.replica.store().view();
        let m = view.read_message_at(position)?;
        // The queue offset is not stored in the message; find it in the ConsumeQueue.
        let queue = QueueId {
            topic: m.topic.clone(),
            queue_id: m.queue_id,
        };
        // A message whose queue entry was purged still shows, with no offset. One that is not
        // in its queue otherwise is not shown: this replica has not applied it yet (it may
        // not be committed), or it is a transaction's half message (never consumer-visible).
        let offset = offset_of(view, &queue, position);
        let purged = || {
            let (min, _) = view.queue_bounds(&queue);
            view.cq_entry(&queue, min)
                .map_or(min.0 > 0, |first| position < first.position)
        };
        if offset.is_none() && !purged() {
            return Err(Refusal::OffsetOutOfRange(format!(
                "no message at {id:?} in its queue on this replica (not applied here yet, or not a visible message)"
            )));
        }
        Ok(to_wire(m, offset, position, self.group()))
    }

    /// Messages of a topic with a key, stored between two times.
    pub fn query_by_key(&self, req: &QueryByKeyRequest) -> Result<Vec<StoredMessage>, Refusal> {
        check_name("topic", &req.topic)?;
        if req.key.is_empty() || req.key.len() > FIELD_MAX {
            return Err(Refusal::InvalidArgument(format!(
                "key must be 1..={FIELD_MAX} bytes"
            )));
        }
        let max = req.max_messages.clamp(1, QUERY_MESSAGES_MAX) as usize;
        let end = if req.end_ms == 0 {
            u64::MAX
        } else {
            req.end_ms
        };
        let q = KeyQuery::new(&req.topic, &req.key, max).between(req.begin_ms, end);
        let hits = self.replica.store().view().query_by_key(&q)?;
        Ok(hits
            .into_iter()
            .map(|(p, m)| to_wire(m, None, p, self.group()))
            .collect())
    }
}

/// Reads the messages a pull returns from `spec.offset` (inside the queue's bounds, below
/// `max`) into `out`; returns the offset the next pull starts at.
fn scan(
    store: &ReadView,
    spec: &PullSpec,
    max: QueueOffset,
    group: &str,
    out: &mut Vec<StoredMessage>,
) -> Result<QueueOffset, raftmq_store::StoreError> {
    let mut bytes = 0u64;
    let mut next = spec.offset;
    let end = QueueOffset(max.0.min(spec.offset.0.saturating_add(PULL_SCAN_MAX)));
    while next < end && out.len() < spec.max_messages as usize {
        let e = store.cq_entry(&spec.queue, next)?;
        let wanted = spec
            .tag_hashes
            .as_deref()
            .is_none_or(|h| h.contains(&e.tag_hash));
        if wanted {
            if !out.is_empty() && bytes + u64::from(e.size) > u64::from(spec.max_bytes) {
                break;
            }
            let m = store.read_message(e.position, e.size)?;
            bytes += u64::from(e.size);
            out.push(to_wire(m, Some(next), e.position, group));
        }
        next = QueueOffset(next.0 + 1);
    }
    Ok(next)
}

/// The queue offset of the message at `position` (a binary search of the ConsumeQueue,
/// whose positions grow with offsets), or `None` if the queue no longer holds it.
fn offset_of(store: &ReadView, queue: &QueueId, position: Position) -> Option<QueueOffset> {
    let (min, max) = store.queue_bounds(queue);
    let (mut lo, mut hi) = (min.0, max.0);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match store.cq_entry(queue, QueueOffset(mid)) {
            Ok(e) if e.position < position => lo = mid + 1,
            Ok(_) => hi = mid,
            Err(_) => return None,
        }
    }
    match store.cq_entry(queue, QueueOffset(lo)) {
        Ok(e) if e.position == position => Some(QueueOffset(lo)),
        _ => None,
    }
}

#[cfg(feature = "mutations")]
/// A deliberate bug for the simulator's mutation check (`Mutations::serve_uncommitted_pulls`):
/// hands out the messages of entries this replica holds but has not applied (so not known to
/// be committed), numbering them after the queue's applied end `max`.
fn serve_uncommitted(
    store: &raftmq_store::Store,
    spec: &PullSpec,
    max: QueueOffset,
    resp: &mut PullResponse,
    group: &str,
) {
    let Ok((first, Some((last, _)))) = store.log_bounds() else {
        return;
    };
    let from = store.dispatched().map_or(first.0, |i| i.0 + 1);
    let mut n = max.0;
    for i in from..=last.0 {
        let Ok(rec) = store.read_entry(raftmq_store::LogIndex(i)) else {
            return;
        };
        if rec.header.kind != raftmq_store::RecordKind::MESSAGES {
            continue;
        }
        let Ok(msgs) = raftmq_store::message::decode_batch(&rec.payload) else {
            return;
        };
        for m in msgs {
            if m.topic != spec.queue.topic || m.queue_id != spec.queue.queue_id {
                continue;
            }
            if n >= spec.offset.0 && resp.messages.len() < spec.max_messages as usize {
                resp.messages
                    .push(to_wire(m, Some(QueueOffset(n)), rec.position, group));
                resp.next_offset = n + 1;
            }
            n += 1;
        }
    }
    resp.max_offset = resp.max_offset.max(n);
}
