//! The control task: heartbeats, the member watch, rebalance, periodic commits — and the
//! steps `shutdown` shares with it (let queues go, commit, leave the group).
//!
//! The control task owns what only it needs ([`Control`]: the queue tasks' join handles, the
//! member lists, its timers) and passes it by `&mut`; what it shares with the queue tasks and
//! the application is in `Inner::state` (see `state`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::{
    ConsumeMode, ConsumerGroupInfo, GetConsumerListRequest, HeartbeatRequest, Subscription,
    UnlockQueuesRequest,
};
use raftmq_types::QueueOffset;
use tokio::time::Instant;

use super::calls::{code, commit_remote, queue_ref, start_committed, start_offset};
use super::queue::consume_queue;
use super::state::Tasks;
use super::{COMMIT_EVERY, Inner, MEMBERS_EVERY, MessageModel, REBALANCE_EVERY};
use crate::policy::consume::MemberWatch;
use crate::rebalance::{MessageQueue, allocate};

/// What only the control task holds.
pub(super) struct Control {
    inner: Arc<Inner>,
    /// The tasks of the queues this member consumes or is letting go.
    tasks: Tasks,
    members: MemberWatch,
    last_rebalance: Option<Instant>,
    /// The last rebalance could not start every queue it should have (or fetch a route).
    incomplete: bool,
    last_commit: Instant,
    /// When it last heartbeat, and the leaders it heartbeat to.
    last_heartbeat: Option<(Instant, BTreeSet<String>)>,
    /// When the retry topic was last looked up (until it is routed).
    retry_checked: Option<Instant>,
}

impl Control {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        Control {
            inner,
            tasks: Tasks::new(),
            members: MemberWatch::default(),
            last_rebalance: None,
            incomplete: false,
            last_commit: Instant::now(),
            last_heartbeat: None,
            retry_checked: None,
        }
    }

    /// Runs until the consumer stops; hands back the queue tasks (for `shutdown` to finish).
    pub(super) async fn run(mut self) -> Tasks {
        while self.inner.running() {
            self.round().await;
            tokio::time::sleep(MEMBERS_EVERY).await;
        }
        self.tasks
    }

    async fn round(&mut self) {
        let inner = self.inner.clone();
        // Heartbeat on schedule, and at once when a group's leader changed (a new leader knows
        // no clients: its member list would be empty until then).
        let leaders = leaders(&inner).await;
        if self
            .last_heartbeat
            .as_ref()
            .is_none_or(|(t, l)| t.elapsed() >= inner.cfg.heartbeat_every || *l != leaders)
        {
            heartbeat(&inner, true).await;
            self.last_heartbeat = Some((Instant::now(), leaders));
        }
        let mut changed = false;
        self.look_up_retry_topic().await;
        for topic in inner.topics() {
            let now = match inner.cfg.model {
                MessageModel::Broadcasting => vec![inner.client_id.clone()],
                MessageModel::Clustering => group_members(&inner, &topic).await.unwrap_or_default(),
            };
            changed |= self.members.observe(&topic, now);
        }
        let periodic = self
            .last_rebalance
            .is_some_and(|t| t.elapsed() >= REBALANCE_EVERY);
        if changed || self.incomplete || periodic {
            // A queue that could not be started (its group unreachable) is tried again at
            // the next round, not at the next periodic rebalance.
            self.incomplete = !rebalance(&inner, &mut self.tasks, self.members.believed()).await;
            self.last_rebalance = Some(Instant::now());
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            commit(&inner, None).await;
            self.last_commit = Instant::now();
        }
    }
}

impl Control {
    /// Until the group's retry topic is routed: looks it up when a message was just sent
    /// back, and otherwise every [`REBALANCE_EVERY`] (another member may have sent one back).
    async fn look_up_retry_topic(&mut self) {
        let inner = &self.inner;
        let Some(topic) = &inner.retry_topic else {
            return;
        };
        if inner.retry_routed.load(Ordering::Acquire) {
            return;
        }
        // Asked stays set until the route is found (the name server learns a new topic at
        // the broker's next registration, shortly after the send-back created it).
        let asked = inner.retry_wanted.load(Ordering::Acquire);
        let due = self
            .retry_checked
            .is_none_or(|t| t.elapsed() >= REBALANCE_EVERY);
        if !(asked || due) {
            return;
        }
        self.retry_checked = Some(Instant::now());
        if inner
            .routes
            .route(topic, true)
            .await
            .is_ok_and(|r| !r.read_queues.is_empty())
        {
            inner.retry_routed.store(true, Ordering::Release);
            inner.retry_wanted.store(false, Ordering::Release);
        }
    }
}

/// The leaders of every group holding a subscribed topic, from the cached routes.
async fn leaders(inner: &Inner) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in inner.topics() {
        if let Ok(r) = inner.routes.route(&t, false).await {
            out.extend(r.leaders.values().cloned());
        }
    }
    out
}

/// Heartbeats every group's leader: as a member of the consumer group, or (`member` false)
/// to leave it.
pub(super) async fn heartbeat(inner: &Inner, member: bool) {
    let groups = if member {
        vec![ConsumerGroupInfo {
            group: inner.cfg.opts.group.clone(),
            mode: match inner.cfg.model {
                MessageModel::Clustering => ConsumeMode::Clustering,
                MessageModel::Broadcasting => ConsumeMode::Broadcasting,
            } as i32,
            subscriptions: inner
                .cfg
                .subscriptions
                .iter()
                .map(|(t, e)| (t, e.as_str()))
                .chain(inner.retry_topic.iter().map(|r| (r, "*")))
                .map(|(t, e)| Subscription {
                    topic: t.clone(),
                    expression: e.to_string(),
                })
                .collect(),
        }]
    } else {
        Vec::new()
    };
    let mut stale = false;
    for addr in leaders(inner).await {
        let req = HeartbeatRequest {
            client_id: inner.client_id.clone(),
            producer_groups: vec![],
            consumer_groups: groups.clone(),
        };
        let r = inner
            .routes
            .call(&addr, |mut c| async move { c.heartbeat(req).await })
            .await;
        stale |= !matches!(r, Ok(r) if code(&r.status) == ErrorCode::Ok);
    }
    // A replica that no longer leads (or none reached): refresh the routes, so the next round
    // sees the new leaders and heartbeats them at once.
    if stale {
        for t in inner.topics() {
            let _ = inner.routes.route(&t, true).await;
        }
    }
}

/// The group's members as the leader of the first group (by name) holding `topic` knows them.
async fn group_members(inner: &Inner, topic: &str) -> Option<Vec<String>> {
    let route = inner.routes.route(topic, false).await.ok()?;
    // Always the same group's leader (the first group holding the topic): members asking
    // different groups would see different lists and hold queues twice or not at all.
    let Some(addr) = route
        .first_group()
        .and_then(|g| route.leaders.get(g))
        .cloned()
    else {
        let _ = inner.routes.route(topic, true).await;
        return None;
    };
    let req = GetConsumerListRequest {
        consumer_group: inner.cfg.opts.group.clone(),
    };
    match inner
        .routes
        .call(&addr, |mut c| async move { c.get_consumer_list(req).await })
        .await
    {
        Ok(r) if code(&r.status) == ErrorCode::Ok => Some(r.client_ids),
        _ => {
            let _ = inner.routes.route(topic, true).await;
            None
        }
    }
}

/// Takes and lets go of queues as `members` dictates; false if a queue it should take could
/// not be started (or a route not fetched), so the caller tries again soon.
async fn rebalance(
    inner: &Arc<Inner>,
    tasks: &mut Tasks,
    members: &BTreeMap<String, Vec<String>>,
) -> bool {
    let (wanted, mut complete) = wanted_queues(inner, members).await;
    let current = inner.state(|s| s.consuming());
    let gone: Vec<MessageQueue> = current.difference(&wanted).cloned().collect();
    if !gone.is_empty() {
        drop_queues(inner, tasks, &gone).await;
        commit(inner, Some(&gone)).await;
        inner.state(|s| s.forget(&gone));
    }
    for q in wanted.difference(&current) {
        let Some(start) = queue_start(inner, q).await else {
            complete = false;
            continue;
        };
        // The slot first, so the task finds itself consuming.
        inner.state(|s| s.begin(q.clone(), start));
        let task = tokio::spawn(consume_queue(inner.clone(), q.clone(), start));
        tasks.insert(q.clone(), task);
    }
    complete
}

/// The queues this member should consume (every readable queue of each subscribed topic when
/// broadcasting; its share by the strategy when clustering), and whether every route was
/// fetched.
async fn wanted_queues(
    inner: &Inner,
    members: &BTreeMap<String, Vec<String>>,
) -> (BTreeSet<MessageQueue>, bool) {
    let mut complete = true;
    let mut wanted = BTreeSet::new();
    for topic in inner.topics() {
        let topic = topic.as_str();
        let Ok(route) = inner.routes.route(topic, false).await else {
            complete = false;
            continue;
        };
        let queues: Vec<MessageQueue> = route
            .read_queues
            .iter()
            .map(|(g, q)| MessageQueue::new(topic, g, *q))
            .collect();
        match inner.cfg.model {
            MessageModel::Broadcasting => wanted.extend(queues),
            MessageModel::Clustering => {
                if let Some(ms) = members.get(topic) {
                    wanted.extend(allocate(&inner.cfg.strategy, &inner.client_id, ms, &queues));
                }
            }
        }
    }
    (wanted, complete)
}

/// Lets `gone` go: their tasks stop after the batch in hand, and are waited for; orderly, each
/// queue's broker lock is given back after its task ended.
pub(super) async fn drop_queues(inner: &Inner, tasks: &mut Tasks, gone: &[MessageQueue]) {
    let releasing = inner.state(|s| s.release(gone));
    for q in releasing {
        if let Some(task) = tasks.remove(&q) {
            let _ = task.await;
        }
        if inner.listener.is_orderly() {
            unlock(inner, &q).await;
        }
        inner.state(|s| s.released(&q));
    }
}

async fn unlock(inner: &Inner, q: &MessageQueue) {
    let Some(addr) = inner.routes.leader_of(&q.topic, &q.group).await else {
        return;
    };
    let req = UnlockQueuesRequest {
        consumer_group: inner.cfg.opts.group.clone(),
        client_id: inner.client_id.clone(),
        queues: vec![queue_ref(q)],
    };
    let _ = inner
        .routes
        .call(&addr, |mut c| async move { c.unlock_queues(req).await })
        .await;
}

/// The offset a newly assigned queue starts at: the group's progress (broadcasting: in the
/// local file; clustering: on the brokers), else per `consume_from`. `None` if it could not
/// be found out (an unreadable offset file, a broker away): the queue is tried again later.
async fn queue_start(inner: &Inner, q: &MessageQueue) -> Option<QueueOffset> {
    // A retry queue is read from its first message whatever `consume_from` says: what is in
    // it was sent back by this group (RocketMQ does the same).
    let from = if q.topic.starts_with(super::RETRY_PREFIX) {
        crate::policy::offsets::ConsumeFrom::First
    } else {
        inner.cfg.consume.from
    };
    let start = match inner.cfg.model {
        MessageModel::Broadcasting => {
            let stored = inner.local.load().ok()?.get(q).copied();
            start_offset(&inner.routes, stored, from, q).await
        }
        MessageModel::Clustering => {
            start_committed(&inner.routes, &inner.cfg.opts.group, from, q).await
        }
    };
    start.ok()
}

/// Commits the progress of `queues` (of every queue held, if `None`): clustering on the
/// brokers, broadcasting in the local file. A failure is logged; the next commit retries.
pub(super) async fn commit(inner: &Inner, queues: Option<&[MessageQueue]>) {
    let progress = inner.state(|s| s.progress(queues));
    if progress.is_empty() {
        return;
    }
    match inner.cfg.model {
        MessageModel::Broadcasting => {
            let mut all = inner.local.load().unwrap_or_default();
            all.extend(progress);
            if let Err(e) = inner.local.store(&all) {
                tracing::warn!(error = %e, "storing local offsets failed");
            }
        }
        MessageModel::Clustering => {
            commit_remote(&inner.routes, &inner.cfg.opts.group, progress).await;
        }
    }
}
