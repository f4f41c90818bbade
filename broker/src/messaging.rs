//! The `Messaging` service: sends, pulls (with long polling), offsets, heartbeats, queue
//! locks, and message lookups.
//!
//! Every request is checked against [`raftmq_proto::limits`] before anything is stored.
//! Sends and offset commits go through Raft, so only the leader takes them (a follower
//! answers `NOT_LEADER` with the leader's address). Reads are served by any replica from
//! what it has applied (committed data is identical everywhere; a follower may lag).
//!
//! Long polling: a pull that finds nothing new registers on the replica's applied signal
//! *before* looking (so an apply between the look and the wait is not missed), then waits
//! for the next apply or its deadline, and looks again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::limits::{self, check_batch, check_name};
use raftmq_proto::v1::messaging_server::{Messaging, MessagingServer};
use raftmq_proto::v1::*;
use raftmq_raft::MetaCommand;
use raftmq_raft::types::{OffsetCommit, TopicSpec};
use raftmq_store::consumequeue::QueueId;
use raftmq_store::indexfile::KeyQuery;
use raftmq_store::meta::perm;
use raftmq_store::{Position, QueueOffset};
use tonic::{Request, Response};

use crate::broker::{GRPC_MESSAGE_MAX, Shared};
use crate::convert::{
    ok, parse_offset_msg_id, status, store_error, subscription_hashes, to_store, to_wire,
    write_error,
};

/// Messages a pull returns when the request does not say.
pub const PULL_MESSAGES_DEFAULT: u32 = 32;
/// Bytes a pull returns at most.
pub const PULL_BYTES_MAX: u32 = 8 << 20;
/// Queue entries one pull looks at, at most (tag filtering may skip many).
pub const PULL_SCAN_MAX: u64 = 16_384;
/// Most offsets one commit may carry, and most messages one key query returns.
pub const COMMIT_OFFSETS_MAX: usize = 4096;
pub const QUERY_MESSAGES_MAX: u32 = 64;

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(not(madsim))]
pub type MessagingService = MessagingServer<MessagingImpl>;
#[cfg(madsim)]
pub type MessagingService = MessagingServer<MessagingImpl, tonic::codegen::IdentityInterceptor>;

pub(crate) fn service(shared: Arc<Shared>) -> MessagingService {
    MessagingServer::new(MessagingImpl { shared })
        .max_decoding_message_size(GRPC_MESSAGE_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_MAX)
}

/// The `Messaging` service of one replica.
#[derive(Clone)]
pub struct MessagingImpl {
    shared: Arc<Shared>,
}

type Res<T> = Result<Response<T>, tonic::Status>;

/// A topic's configuration on this replica, or the status to answer with.
pub(crate) fn topic(
    shared: &Shared,
    name: &str,
) -> Result<raftmq_store::meta::TopicConfig, Option<Status>> {
    let t = shared.replica.store().lock().meta().topic(name);
    match t {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(status(
            ErrorCode::TopicNotFound,
            format!(
                "topic {name:?} does not exist on group {:?}",
                shared.group()
            ),
        )),
        Err(e) => Err(store_error(e)),
    }
}

impl MessagingImpl {
    /// The topic for a send, created with 4 queues when auto-create is on.
    async fn send_topic(
        &self,
        name: &str,
    ) -> Result<raftmq_store::meta::TopicConfig, Option<Status>> {
        match topic(&self.shared, name) {
            Err(s)
                if self.shared.config.auto_create_topics
                    && s.as_ref()
                        .is_some_and(|s| s.code == ErrorCode::TopicNotFound as i32) =>
            {
                let q = crate::config::AUTO_CREATE_QUEUES;
                self.shared
                    .replica
                    .propose(MetaCommand::PutTopic(TopicSpec {
                        name: name.to_string(),
                        read_queue_nums: q,
                        write_queue_nums: q,
                        perm: perm::READ | perm::WRITE,
                    }))
                    .await
                    .map_err(write_error)?;
                topic(&self.shared, name)
            }
            other => other,
        }
    }

    async fn send_inner(&self, req: SendRequest) -> SendResponse {
        let fail = |s: Option<Status>| SendResponse {
            status: s,
            ..Default::default()
        };
        if let Err(e) = check_batch(&req.messages) {
            return fail(status(e.code(), e.message));
        }
        if !req.producer_group.is_empty()
            && let Err(e) = check_name("producer group", &req.producer_group)
        {
            return fail(status(e.code(), e.message));
        }
        let name = req.messages[0].topic.clone();
        let t = match self.send_topic(&name).await {
            Ok(t) => t,
            Err(s) => return fail(s),
        };
        if t.perm & perm::WRITE == 0 {
            return fail(status(
                ErrorCode::NoPermission,
                format!("topic {name:?} is not writable (perm {})", t.perm),
            ));
        }
        if t.write_queue_nums == 0 {
            return fail(status(
                ErrorCode::NoPermission,
                format!("topic {name:?} has no write queues"),
            ));
        }
        let queue_id = match req.messages[0].queue_id {
            Some(q) if q >= t.write_queue_nums => {
                return fail(status(
                    ErrorCode::InvalidArgument,
                    format!(
                        "queue {q} of topic {name:?}: it has {} write queues",
                        t.write_queue_nums
                    ),
                ));
            }
            Some(q) => q,
            None => self.shared.next_queue.fetch_add(1, Ordering::Relaxed) % t.write_queue_nums,
        };
        let msgs: Vec<_> = req
            .messages
            .into_iter()
            .map(|m| to_store(m, queue_id))
            .collect();
        let bytes: usize = msgs.iter().map(|m| m.encoded_len()).sum();
        let max = self.shared.batch_max_bytes;
        if bytes > max {
            return fail(status(
                ErrorCode::MessageTooLarge,
                format!("batch encodes to {bytes} bytes, more than {max}"),
            ));
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.msg_id.clone()).collect();
        match self.shared.replica.write(msgs).await {
            Ok(assigned) => SendResponse {
                status: ok(),
                group: self.shared.group().to_string(),
                results: assigned
                    .into_iter()
                    .zip(ids)
                    .map(|(a, msg_id)| SendResult {
                        msg_id,
                        offset_msg_id: crate::convert::offset_msg_id(
                            self.shared.group(),
                            a.position,
                        ),
                        queue_id: a.queue_id,
                        queue_offset: a.queue_offset,
                    })
                    .collect(),
            },
            Err(e) => fail(write_error(e)),
        }
    }

    async fn pull_inner(&self, req: PullRequest) -> PullResponse {
        let fail = |s: Option<Status>| PullResponse {
            status: s,
            ..Default::default()
        };
        for (what, name) in [
            ("consumer group", &req.consumer_group),
            ("topic", &req.topic),
        ] {
            if let Err(e) = check_name(what, name) {
                return fail(status(e.code(), e.message));
            }
        }
        let hashes = match subscription_hashes(&req.subscription) {
            Ok(h) => h,
            Err(m) => return fail(status(ErrorCode::InvalidArgument, m)),
        };
        if req.max_messages > limits::PULL_MESSAGES_MAX
            || req.long_poll_ms > limits::LONG_POLL_MS_MAX
        {
            return fail(status(
                ErrorCode::InvalidArgument,
                format!(
                    "max_messages {} (≤ {}) / long_poll_ms {} (≤ {})",
                    req.max_messages,
                    limits::PULL_MESSAGES_MAX,
                    req.long_poll_ms,
                    limits::LONG_POLL_MS_MAX
                ),
            ));
        }
        let t = match topic(&self.shared, &req.topic) {
            Ok(t) => t,
            Err(s) => return fail(s),
        };
        if t.perm & perm::READ == 0 {
            return fail(status(
                ErrorCode::NoPermission,
                format!("topic {:?} is not readable (perm {})", req.topic, t.perm),
            ));
        }
        if req.queue_id >= t.read_queue_nums {
            return fail(status(
                ErrorCode::InvalidArgument,
                format!(
                    "queue {} of topic {:?}: it has {} read queues",
                    req.queue_id, req.topic, t.read_queue_nums
                ),
            ));
        }
        let max_messages = if req.max_messages == 0 {
            PULL_MESSAGES_DEFAULT
        } else {
            req.max_messages
        };
        let max_bytes = if req.max_bytes == 0 {
            PULL_BYTES_MAX
        } else {
            req.max_bytes.min(PULL_BYTES_MAX)
        };
        let queue = QueueId {
            topic: req.topic.clone(),
            queue_id: req.queue_id,
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(u64::from(req.long_poll_ms));
        let signal = self.shared.replica.store().clone();
        loop {
            let mut notified = std::pin::pin!(signal.applied_signal().notified());
            notified.as_mut().enable();
            let r = self.read_queue(
                &queue,
                req.offset,
                max_messages,
                max_bytes,
                hashes.as_deref(),
            );
            let nothing = r
                .status
                .as_ref()
                .is_some_and(|s| s.code == ErrorCode::Ok as i32)
                && r.messages.is_empty()
                && r.next_offset == req.offset;
            if !nothing || tokio::time::Instant::now() >= deadline {
                return r;
            }
            tokio::select! {
                biased;
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// One look at a queue from `offset`.
    fn read_queue(
        &self,
        queue: &QueueId,
        offset: u64,
        max_messages: u32,
        max_bytes: u32,
        hashes: Option<&[u64]>,
    ) -> PullResponse {
        let store = self.shared.replica.store().lock();
        let (min, max) = store.queue_bounds(queue);
        let mut resp = PullResponse {
            status: ok(),
            min_offset: min.0,
            max_offset: max.0,
            next_offset: offset,
            messages: Vec::new(),
        };
        if self.shared.config.mutations.serve_uncommitted_pulls && offset >= max.0 {
            serve_uncommitted(
                &store,
                queue,
                offset,
                max.0,
                max_messages,
                &mut resp,
                self.shared.group(),
            );
            return resp;
        }
        if offset < min.0 || offset > max.0 {
            resp.status = status(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {offset} outside [{}, {}] of {}:{}",
                    min.0, max.0, queue.topic, queue.queue_id
                ),
            );
            return resp;
        }
        let mut bytes = 0u64;
        let mut next = offset;
        let end = max.0.min(offset.saturating_add(PULL_SCAN_MAX));
        while next < end && resp.messages.len() < max_messages as usize {
            let e = match store.cq_entry(queue, QueueOffset(next)) {
                Ok(e) => e,
                Err(e) => {
                    resp.status = store_error(e);
                    return resp;
                }
            };
            if hashes.is_some_and(|h| !h.contains(&e.tag_hash)) {
                next += 1;
                continue;
            }
            if !resp.messages.is_empty() && bytes + u64::from(e.size) > u64::from(max_bytes) {
                break;
            }
            match store.read_message(e.position, e.size) {
                Ok(m) => {
                    bytes += u64::from(e.size);
                    resp.messages
                        .push(to_wire(m, next, e.position.0, self.shared.group()));
                }
                Err(e) => {
                    resp.status = store_error(e);
                    return resp;
                }
            }
            next += 1;
        }
        resp.next_offset = next;
        resp
    }
}

/// A deliberate bug for the simulator's mutation check (`Mutations::serve_uncommitted_pulls`):
/// hands out the messages of entries this replica holds but has not applied (so not known to
/// be committed), numbering them after the queue's applied end `max`.
fn serve_uncommitted(
    store: &raftmq_store::Store,
    queue: &QueueId,
    offset: u64,
    max: u64,
    max_messages: u32,
    resp: &mut PullResponse,
    group: &str,
) {
    let Ok((first, Some((last, _)))) = store.log_bounds() else {
        return;
    };
    let from = store.dispatched().map_or(first.0, |i| i.0 + 1);
    let mut n = max;
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
            if m.topic != queue.topic || m.queue_id != queue.queue_id {
                continue;
            }
            if n >= offset && resp.messages.len() < max_messages as usize {
                resp.messages.push(to_wire(m, n, rec.position.0, group));
                resp.next_offset = n + 1;
            }
            n += 1;
        }
    }
    resp.max_offset = resp.max_offset.max(n);
}

fn check_names(pairs: &[(&str, &str)]) -> Result<(), Option<Status>> {
    for (what, name) in pairs {
        check_name(what, name).map_err(|e| status(e.code(), e.message))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Messaging for MessagingImpl {
    async fn send(&self, req: Request<SendRequest>) -> Res<SendResponse> {
        Ok(Response::new(self.send_inner(req.into_inner()).await))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Res<PullResponse> {
        Ok(Response::new(self.pull_inner(req.into_inner()).await))
    }

    async fn query_queue(&self, req: Request<QueryQueueRequest>) -> Res<QueryQueueResponse> {
        let req = req.into_inner();
        if let Err(s) = check_names(&[("topic", &req.topic)]) {
            return Ok(Response::new(QueryQueueResponse {
                status: s,
                ..Default::default()
            }));
        }
        let queue = QueueId {
            topic: req.topic,
            queue_id: req.queue_id,
        };
        let store = self.shared.replica.store().lock();
        let (min, max) = store.queue_bounds(&queue);
        let mut resp = QueryQueueResponse {
            status: ok(),
            min_offset: min.0,
            max_offset: max.0,
            offset_at_time: None,
        };
        if let Some(ts) = req.timestamp_ms {
            match store.offset_at_time(&queue, ts) {
                Ok(o) => resp.offset_at_time = Some(o.0),
                Err(e) => resp.status = store_error(e),
            }
        }
        Ok(Response::new(resp))
    }

    async fn query_offset(&self, req: Request<QueryOffsetRequest>) -> Res<QueryOffsetResponse> {
        let req = req.into_inner();
        if let Err(s) = check_names(&[
            ("consumer group", &req.consumer_group),
            ("topic", &req.topic),
        ]) {
            return Ok(Response::new(QueryOffsetResponse {
                status: s,
                offset: None,
            }));
        }
        let r = self.shared.replica.store().lock().meta().consumer_offset(
            &req.consumer_group,
            &req.topic,
            req.queue_id,
        );
        Ok(Response::new(match r {
            Ok(offset) => QueryOffsetResponse {
                status: ok(),
                offset,
            },
            Err(e) => QueryOffsetResponse {
                status: store_error(e),
                offset: None,
            },
        }))
    }

    async fn commit_offset(&self, req: Request<CommitOffsetRequest>) -> Res<CommitOffsetResponse> {
        let req = req.into_inner();
        let fail = |s| Ok(Response::new(CommitOffsetResponse { status: s }));
        if let Err(s) = check_names(&[("consumer group", &req.consumer_group)]) {
            return fail(s);
        }
        if req.offsets.is_empty() || req.offsets.len() > COMMIT_OFFSETS_MAX {
            return fail(status(
                ErrorCode::InvalidArgument,
                format!(
                    "1..={COMMIT_OFFSETS_MAX} offsets per commit, got {}",
                    req.offsets.len()
                ),
            ));
        }
        for o in &req.offsets {
            if let Err(s) = check_names(&[("topic", &o.topic)]) {
                return fail(s);
            }
            let (_, max) = self.shared.replica.store().lock().queue_bounds(&QueueId {
                topic: o.topic.clone(),
                queue_id: o.queue_id,
            });
            if o.offset > max.0 {
                return fail(status(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {} of {}:{} is past the queue's end {}",
                        o.offset, o.topic, o.queue_id, max.0
                    ),
                ));
            }
        }
        let cmd = MetaCommand::CommitOffsets {
            group: req.consumer_group,
            offsets: req
                .offsets
                .into_iter()
                .map(|o| OffsetCommit {
                    topic: o.topic,
                    queue_id: o.queue_id,
                    offset: o.offset,
                })
                .collect(),
        };
        let s = match self.shared.replica.propose(cmd).await {
            Ok(_) => ok(),
            Err(e) => write_error(e),
        };
        fail(s)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        let req = req.into_inner();
        for g in &req.consumer_groups {
            if let Err(s) = check_names(&[("consumer group", &g.group)]) {
                return Ok(Response::new(HeartbeatResponse { status: s }));
            }
        }
        let now = self.shared.now_ms();
        let s = match self
            .shared
            .clients()
            .heartbeat(&req.client_id, req.consumer_groups, now)
        {
            // Kept here too (harmless), but member lists are the leader's: a client that
            // heartbeats a follower is told, so it finds the leader (a new leader knows no
            // client until it is heartbeated).
            Ok(()) if self.shared.role().0 != Role::Leader => self.not_leader(),
            Ok(()) => ok(),
            Err(m) => status(ErrorCode::InvalidArgument, m),
        };
        Ok(Response::new(HeartbeatResponse { status: s }))
    }

    async fn get_consumer_list(
        &self,
        req: Request<GetConsumerListRequest>,
    ) -> Res<GetConsumerListResponse> {
        let req = req.into_inner();
        if let Err(s) = check_names(&[("consumer group", &req.consumer_group)]) {
            return Ok(Response::new(GetConsumerListResponse {
                status: s,
                client_ids: vec![],
            }));
        }
        // Only the leader's list is current (clients heartbeat the leader).
        if self.shared.role().0 != Role::Leader {
            return Ok(Response::new(GetConsumerListResponse {
                status: self.not_leader(),
                client_ids: vec![],
            }));
        }
        let now = self.shared.now_ms();
        let ids = self.shared.clients().consumers(&req.consumer_group, now);
        Ok(Response::new(GetConsumerListResponse {
            status: ok(),
            client_ids: ids,
        }))
    }

    async fn lock_queues(&self, req: Request<LockQueuesRequest>) -> Res<LockQueuesResponse> {
        let req = req.into_inner();
        let fail = |s| {
            Ok(Response::new(LockQueuesResponse {
                status: s,
                ..Default::default()
            }))
        };
        if let Err(s) = check_names(&[("consumer group", &req.consumer_group)]) {
            return fail(s);
        }
        if req.client_id.is_empty() || req.queues.len() > crate::clients::LOCK_QUEUES_MAX {
            return fail(status(
                ErrorCode::InvalidArgument,
                "a client id and at most 4096 queues",
            ));
        }
        // Locks are kept by the leader: a follower's would not be seen by the others.
        if self.shared.role().0 != Role::Leader {
            return fail(self.not_leader());
        }
        let now = self.shared.now_ms();
        let locked =
            self.shared
                .clients()
                .lock(&req.consumer_group, &req.client_id, &req.queues, now);
        Ok(Response::new(LockQueuesResponse {
            status: ok(),
            locked,
            lease_ms: crate::clients::LOCK_LEASE_MS,
        }))
    }

    async fn unlock_queues(&self, req: Request<UnlockQueuesRequest>) -> Res<UnlockQueuesResponse> {
        let req = req.into_inner();
        if let Err(s) = check_names(&[("consumer group", &req.consumer_group)]) {
            return Ok(Response::new(UnlockQueuesResponse { status: s }));
        }
        self.shared
            .clients()
            .unlock(&req.consumer_group, &req.client_id, &req.queues);
        Ok(Response::new(UnlockQueuesResponse { status: ok() }))
    }

    async fn view_message(&self, req: Request<ViewMessageRequest>) -> Res<ViewMessageResponse> {
        let id = req.into_inner().offset_msg_id;
        let fail = |s| {
            Ok(Response::new(ViewMessageResponse {
                status: s,
                message: None,
            }))
        };
        let Some((group, position)) = parse_offset_msg_id(&id) else {
            return fail(status(
                ErrorCode::InvalidArgument,
                format!("{id:?} is not an offsetMsgId"),
            ));
        };
        if group != self.shared.group() {
            return fail(status(
                ErrorCode::InvalidArgument,
                format!(
                    "{id:?} belongs to group {group:?}, this is {:?}",
                    self.shared.group()
                ),
            ));
        }
        let r = self
            .shared
            .replica
            .store()
            .lock()
            .read_message_at(Position(position));
        match r {
            Ok(m) => {
                // The queue offset is not stored in the message; find it from the CQ.
                let store = self.shared.replica.store().lock();
                let queue = QueueId {
                    topic: m.topic.clone(),
                    queue_id: m.queue_id,
                };
                let (min, max) = store.queue_bounds(&queue);
                let off = first_at_or_after(&store, &queue, min.0, max.0, position);
                drop(store);
                Ok(Response::new(ViewMessageResponse {
                    status: ok(),
                    message: Some(to_wire(m, off, position, self.shared.group())),
                }))
            }
            Err(e) => fail(store_error(e)),
        }
    }

    async fn query_by_key(&self, req: Request<QueryByKeyRequest>) -> Res<QueryByKeyResponse> {
        let req = req.into_inner();
        let fail = |s| {
            Ok(Response::new(QueryByKeyResponse {
                status: s,
                messages: vec![],
            }))
        };
        if let Err(s) = check_names(&[("topic", &req.topic)]) {
            return fail(s);
        }
        if req.key.is_empty() || req.key.len() > limits::FIELD_MAX {
            return fail(status(
                ErrorCode::InvalidArgument,
                "key must be 1..=255 bytes",
            ));
        }
        let max = req.max_messages.clamp(1, QUERY_MESSAGES_MAX) as usize;
        let end = if req.end_ms == 0 {
            u64::MAX
        } else {
            req.end_ms
        };
        let q = KeyQuery::new(&req.topic, &req.key, max).between(req.begin_ms, end);
        let r = self.shared.replica.store().lock().query_by_key(&q);
        match r {
            Ok(hits) => Ok(Response::new(QueryByKeyResponse {
                status: ok(),
                messages: hits
                    .into_iter()
                    .map(|(p, m)| to_wire(m, u64::MAX, p.0, self.shared.group()))
                    .collect(),
            })),
            Err(e) => fail(store_error(e)),
        }
    }
}

impl MessagingImpl {
    fn leader_addr(&self) -> Option<String> {
        let m = self.shared.metrics();
        let id = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// `NOT_LEADER` with the leader's address (or `UNAVAILABLE` when none is known).
    fn not_leader(&self) -> Option<Status> {
        write_error(raftmq_raft::WriteError::NotLeader {
            leader_id: None,
            leader_addr: self.leader_addr(),
        })
    }
}

/// The queue offset of the message at `position` (binary search on the ConsumeQueue), or
/// `u64::MAX` if it is not found (purged).
fn first_at_or_after(
    store: &raftmq_store::Store,
    queue: &QueueId,
    min: u64,
    max: u64,
    position: u64,
) -> u64 {
    let (mut lo, mut hi) = (min, max);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match store.cq_entry(queue, QueueOffset(mid)) {
            Ok(e) if e.position.0 < position => lo = mid + 1,
            Ok(_) => hi = mid,
            Err(_) => return u64::MAX,
        }
    }
    match store.cq_entry(queue, QueueOffset(lo)) {
        Ok(e) if e.position.0 == position => lo,
        _ => u64::MAX,
    }
}
