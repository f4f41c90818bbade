//! The push consumer: subscriptions, a listener, rebalance, long-polling pulls, offsets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use raftmq_client::consumer::{ConsumeResult, PushConsumer};
//!
//! let consumer = PushConsumer::builder()
//!     .namesrv_addrs(["127.0.0.1:9876"])
//!     .group("order-workers")
//!     .subscribe("Orders", "Paid || Shipped")
//!     .concurrent(|msgs| {
//!         for m in msgs {
//!             println!("{} {:?}", m.msg_id, String::from_utf8_lossy(&m.body));
//!         }
//!         ConsumeResult::Success
//!     })
//!     .build()?;
//! consumer.start().await?;
//! // ...
//! consumer.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How it runs
//! A control task heartbeats to the leader of every group holding a subscribed topic (with
//! the subscriptions, every [`HEARTBEAT_EVERY`]), watches the group's member list (every
//! [`MEMBERS_EVERY`]), and rebalances when it changes and every [`REBALANCE_EVERY`]: each
//! member computes its queues with the [`Strategy`] from the sorted members and queues. A
//! queue dropped by a rebalance is stopped (its task finishes the batch in hand), its broker
//! lock released (orderly), its offset committed, and its progress forgotten. Each assigned
//! queue has a task that pulls with long polling, checks tags exactly (the broker filtered by
//! hash), and hands batches to the listener; at most `consume_threads` listener calls run at
//! once, each on tokio's blocking pool (the listener may block). Offsets are committed every [`COMMIT_EVERY`] and at shutdown (clustering: on the
//! brokers; broadcasting: a local file).
//!
//! # Retry and dead letters
//! A batch the listener does not consume (`ReconsumeLater`, a panic, or a call longer than
//! `consume_timeout`) is sent back to the broker (concurrent listeners, clustering): it comes
//! back through the group's retry topic [`retry_topic`] after the backoff for its attempt,
//! with `reconsume_times` one higher and [`ReceivedMessage::topic`] its original topic; past
//! the group's maximum (16 unless the group's config or
//! [`PushConsumerBuilder::max_reconsume_times`] says otherwise) it goes to `%DLQ%<group>`.
//! Every concurrent member of a clustering group subscribes to the retry topic by itself.
//! A message the broker cannot take back is retried locally (1 s, 2 s, … 16 s), with a
//! warning. An orderly listener's queue is suspended and the batch retried in place, the
//! broker moving it to the DLQ past the maximum; broadcasting consumers retry locally. See
//! `retry` and docs/client.md.
//!
//! # Where things are
//! - `builder`: [`PushConsumerBuilder`] and its checks (shared options: `crate::options`).
//! - `state`: the state the control task, the queue tasks and [`PushConsumer::assigned`]
//!   share — one struct behind one lock (why a lock, and its invariants, are written there).
//! - `control`: the control task, which owns the queue tasks' handles and the member watch.
//! - `queue`: one queue's pull loop; `listener`: handing batches to the listener.
//! - `calls`: offset queries and commits, shared with [`crate::PullConsumer`].
//! - The rules — where to start, what to record, what to do on `OFFSET_OUT_OF_RANGE`, when a
//!   member list is believed — are pure functions in `crate::policy`.

mod builder;
pub(crate) mod calls;
mod control;
mod listener;
mod queue;
mod retry;
mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

pub use self::builder::PushConsumerBuilder;
use self::control::{Control, commit, drop_queues, heartbeat};
use self::listener::Listener;
pub use self::retry::{
    DLQ_PREFIX, ORDERLY_SUSPEND, PROPERTY_RETRY_TOPIC, RETRY_PREFIX, retry_topic,
};
use self::state::{State, Tasks};
use crate::error::ClientError;
use crate::offsets::LocalOffsets;
use crate::options::{ClientOptions, ConsumeOptions};
pub use crate::policy::offsets::ConsumeFrom;
use crate::rebalance::{MessageQueue, Strategy};
use crate::route::Routes;
use crate::sync::lock;

/// How long a queue may answer that the consumer's offset is past its end before the
/// consumer believes it and restarts at the end (normally a lagging replica, which catches up).
pub const OUT_OF_RANGE_PATIENCE: Duration = Duration::from_secs(30);
/// How often offsets are committed.
///
/// ```
/// assert_eq!(raftmq_client::consumer::COMMIT_EVERY.as_secs(), 5);
/// ```
pub const COMMIT_EVERY: Duration = Duration::from_secs(5);
/// How often a rebalance runs even without a membership change.
///
/// ```
/// assert_eq!(raftmq_client::consumer::REBALANCE_EVERY.as_secs(), 20);
/// ```
pub const REBALANCE_EVERY: Duration = Duration::from_secs(20);
/// How often the member list is checked.
///
/// ```
/// assert!(raftmq_client::consumer::MEMBERS_EVERY.as_millis() <= 1000);
/// ```
pub const MEMBERS_EVERY: Duration = Duration::from_millis(500);
/// How often a member heartbeats (brokers drop a client silent for 120 s).
///
/// ```
/// assert!(raftmq_client::consumer::HEARTBEAT_EVERY.as_secs() * 3 <= 30, "brokers drop clients after 30 s");
/// ```
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// How long a listener call may run before its answer is not trusted and the batch counts
/// as failed (RocketMQ's `consumeTimeout`).
///
/// ```
/// assert_eq!(raftmq_client::consumer::CONSUME_TIMEOUT.as_secs(), 15 * 60);
/// ```
pub const CONSUME_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A message as the listener receives it.
///
/// ```
/// use raftmq_client::{ConsumeResult, ReceivedMessage};
/// fn listener(msgs: &[ReceivedMessage]) -> ConsumeResult {
///     for m in msgs {
///         println!("{} at {:?}#{}", m.msg_id, m.queue, m.queue_offset);
///     }
///     ConsumeResult::Success
/// }
/// assert_eq!(listener(&[]), ConsumeResult::Success);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The topic the message was sent to: its queue's topic, or for a message that came back
    /// through the group's retry topic, its original topic.
    pub topic: String,
    /// The queue it was pulled from (for a retried message, a queue of the retry topic).
    pub queue: MessageQueue,
    pub queue_offset: u64,
    pub msg_id: String,
    pub offset_msg_id: String,
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub store_timestamp_ms: u64,
    /// How many deliveries of this message failed before this one.
    pub reconsume_times: u32,
}

/// What the listener says about a batch.
///
/// ```
/// use raftmq_client::ConsumeResult;
/// let r = if 1 + 1 == 2 { ConsumeResult::Success } else { ConsumeResult::ReconsumeLater };
/// assert_eq!(r, ConsumeResult::Success);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Done: the offset moves past the batch.
    Success,
    /// Deliver the batch again later.
    ReconsumeLater,
}

/// Every member gets every message (broadcasting) or members share the queues (clustering).
///
/// ```
/// assert_eq!(raftmq_client::consumer::MessageModel::default(), raftmq_client::consumer::MessageModel::Clustering);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageModel {
    #[default]
    Clustering,
    Broadcasting,
}

/// A push consumer; see the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), raftmq_client::ClientError> {
/// let c = raftmq_client::PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").subscribe("T", "*").concurrent(|_| raftmq_client::ConsumeResult::Success).build()?;
/// c.start().await?;
/// c.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PushConsumer {
    inner: Arc<Inner>,
}

/// What the consumer's handles and tasks share.
struct Inner {
    cfg: PushConsumerBuilder,
    routes: Routes,
    client_id: String,
    listener: Listener,
    /// Bounds the listener calls running at once (`consume_threads`), across all queues.
    listener_calls: Semaphore,
    local: LocalOffsets,
    /// Set by `start`, cleared by `shutdown`; the control task runs while it is set. An atomic
    /// flag, not part of `state`: it is only ever read or swapped on its own.
    running: AtomicBool,
    /// The group's retry topic, if this member consumes it (concurrent, clustering).
    retry_topic: Option<String>,
    /// Whether the retry topic's route is known (it exists once a first message was sent
    /// back); until then it is left out of heartbeats' leader set and rebalances, and looked
    /// up now and then by the control task.
    retry_routed: AtomicBool,
    /// Set by a send-back, so the control task looks the retry topic up at once.
    retry_wanted: AtomicBool,
    /// The maximum reconsume times the broker last applied to a send-back (0: none yet).
    broker_max: AtomicU32,
    /// The one lock over the shared state; see `state` for why a lock and what it guards.
    /// Taken only through [`Inner::state`].
    state: Mutex<State>,
}

impl Inner {
    /// Runs `f` on the shared state under its lock. `f` is a plain closure, so nothing awaits
    /// while the lock is held; keep it to a lookup or an edit.
    fn state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.state))
    }

    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// The topics whose queues this member may consume now: the subscriptions, and the retry
    /// topic once it is routed.
    fn topics(&self) -> Vec<String> {
        let mut out: Vec<String> = self.cfg.subscriptions.keys().cloned().collect();
        if let Some(r) = &self.retry_topic
            && self.retry_routed.load(Ordering::Acquire)
        {
            out.push(r.clone());
        }
        out
    }

    /// A message was sent back: its retry topic exists now.
    fn sent_back(&self) {
        if !self.retry_routed.load(Ordering::Acquire) {
            self.retry_wanted.store(true, Ordering::Release);
        }
    }
}

impl PushConsumer {
    /// A builder with the defaults.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let _b = PushConsumer::builder();
    /// ```
    pub fn builder() -> PushConsumerBuilder {
        PushConsumerBuilder {
            opts: ClientOptions::default(),
            consume: ConsumeOptions::default(),
            subscriptions: BTreeMap::new(),
            listener: None,
            model: MessageModel::default(),
            strategy: Strategy::default(),
            consume_threads: 20,
            batch_size: 1,
            pull_max_bytes: 4 << 20,
            long_poll: Duration::from_secs(2),
            heartbeat_every: HEARTBEAT_EVERY,
            offset_file: None,
            client_id: None,
            max_reconsume_times: 0,
            consume_timeout: CONSUME_TIMEOUT,
        }
    }

    /// This member's client id.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let c = PushConsumer::builder().namesrv_addrs(["x:1"]).group("G").subscribe("T", "*").client_id("w1").concurrent(|_| ConsumeResult::Success).build().unwrap();
    /// assert_eq!(c.client_id(), "w1");
    /// ```
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Starts heartbeating, rebalancing and consuming.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").subscribe("T", "*").concurrent(|_| raftmq_client::ConsumeResult::Success).build()?;
    /// c.start().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), ClientError> {
        if self.inner.running.swap(true, Ordering::AcqRel) {
            return Err(ClientError::State("already started"));
        }
        for t in self.inner.cfg.subscriptions.keys() {
            if let Err(e) = self.inner.routes.route(t, true).await {
                // Not started: a later `start` may try again.
                self.inner.running.store(false, Ordering::Release);
                return Err(e);
            }
        }
        // The retry topic exists only once a message was sent back.
        if let Some(r) = &self.inner.retry_topic
            && self
                .inner
                .routes
                .route(r, true)
                .await
                .is_ok_and(|r| !r.read_queues.is_empty())
        {
            self.inner.retry_routed.store(true, Ordering::Release);
        }
        let control = tokio::spawn(Control::new(self.inner.clone()).run());
        self.inner.state(|s| s.control = Some(control));
        Ok(())
    }

    /// The queues this member consumes now.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").subscribe("T", "*").concurrent(|_| raftmq_client::ConsumeResult::Success).build()?;
    /// c.start().await?;
    /// for q in c.assigned() { println!("consuming {q:?}"); }
    /// # Ok(()) }
    /// ```
    pub fn assigned(&self) -> Vec<MessageQueue> {
        // A queue being let go still counts until its last batch is handed out.
        self.inner.state(|s| s.assigned())
    }

    /// Stops pulling, lets every queue finish the batch in hand, commits offsets, releases
    /// orderly locks and leaves the group (the others rebalance at once).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").subscribe("T", "*").concurrent(|_| raftmq_client::ConsumeResult::Success).build()?;
    /// c.start().await?;
    /// c.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        if !self.inner.running.swap(false, Ordering::AcqRel) {
            return;
        }
        let control = self.inner.state(|s| s.control.take());
        // The control task ends within a round and hands back the queue tasks (none if it
        // never ran, or panicked: then the tasks still stop, as their queues are let go).
        let mut tasks = match control {
            Some(c) => c.await.unwrap_or_default(),
            None => Tasks::new(),
        };
        let all: Vec<MessageQueue> = self.inner.state(|s| s.consuming()).into_iter().collect();
        drop_queues(&self.inner, &mut tasks, &all).await;
        commit(&self.inner, None).await;
        // Leave: a heartbeat without the group removes this member from its list.
        heartbeat(&self.inner, false).await;
    }
}
