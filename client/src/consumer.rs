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
//! [`MEMBERS_EVERY`]), and
//! rebalances when it changes and every [`REBALANCE_EVERY`]: each member computes its queues
//! with the [`Strategy`] from the sorted members and queues. A queue dropped by a rebalance is
//! stopped (its task finishes the message in hand) and its offset committed before the queue
//! is released; in orderly mode the broker lock is released only then, so the next owner —
//! which must lock the queue before consuming it — never overlaps. Each assigned queue has a
//! task that pulls with long polling, checks tags exactly (the broker filtered by hash), and
//! hands batches to the listener; at most `consume_threads` listener calls run at once.
//! Offsets are committed every [`COMMIT_EVERY`] and at shutdown (clustering: on the brokers;
//! broadcasting: a local file). `ReconsumeLater` redelivers the batch to the listener after a
//! growing delay (1 s, 2 s, … 16 s) — until retry topics exist, a message is never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::limits::check_name;
use raftmq_proto::v1::{
    CommitOffsetRequest, CommittedOffset, ConsumeMode, ConsumerGroupInfo, GetConsumerListRequest,
    HeartbeatRequest, LockQueuesRequest, PullRequest, QueryOffsetRequest, QueryQueueRequest,
    QueueRef, Subscription, UnlockQueuesRequest,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::offsets::LocalOffsets;
use crate::rebalance::{MessageQueue, Strategy, allocate};
use crate::route::{CALL_TIMEOUT, Routes};

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
/// How long an orderly consumer's queue lock is renewed before it runs out.
const LOCK_RENEW_EVERY: Duration = Duration::from_secs(20);

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
    pub queue: MessageQueue,
    pub queue_offset: u64,
    pub msg_id: String,
    pub offset_msg_id: String,
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub store_timestamp_ms: u64,
    /// How many times this message was handed back with `ReconsumeLater`.
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

/// Where a group that never committed on a queue starts.
///
/// ```
/// use raftmq_client::consumer::ConsumeFrom;
/// assert_eq!(ConsumeFrom::default(), ConsumeFrom::Last);
/// let _yesterday = ConsumeFrom::Timestamp(1_700_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFrom {
    /// The oldest retained message.
    First,
    /// Only messages arriving from now on.
    #[default]
    Last,
    /// The first message stored at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

type ListenerFn = Arc<dyn Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync>;

#[derive(Clone)]
enum Listener {
    Concurrent(ListenerFn),
    Orderly(ListenerFn),
}

/// Builds a [`PushConsumer`].
///
/// ```
/// use raftmq_client::consumer::{ConsumeResult, PushConsumer};
/// let c = PushConsumer::builder()
///     .namesrv_addrs(["127.0.0.1:9876"])
///     .group("G")
///     .subscribe("T", "*")
///     .concurrent(|_| ConsumeResult::Success)
///     .build();
/// assert!(c.is_ok());
/// let no_listener = PushConsumer::builder().namesrv_addrs(["x:1"]).group("G").subscribe("T", "*").build();
/// assert!(no_listener.is_err());
/// ```
#[derive(Clone)]
pub struct PushConsumerBuilder {
    namesrv_addrs: Vec<String>,
    group: String,
    subscriptions: BTreeMap<String, String>,
    listener: Option<Listener>,
    model: MessageModel,
    strategy: Strategy,
    from: ConsumeFrom,
    consume_threads: usize,
    batch_size: usize,
    pull_batch_size: u32,
    pull_max_bytes: u32,
    long_poll: Duration,
    offset_file: Option<PathBuf>,
    client_id: Option<String>,
    heartbeat_every: Duration,
}

impl PushConsumerBuilder {
    /// The name servers.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).namesrv_addrs(["10.0.0.1:9876", "10.0.0.2:9876"]);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn namesrv_addrs<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namesrv_addrs = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// The consumer group.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).group("order-workers");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Subscribes to `topic` with a tag expression: `*`, or `TagA || TagB`.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).subscribe("Orders", "Paid || Shipped");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn subscribe(mut self, topic: impl Into<String>, expression: impl Into<String>) -> Self {
        self.subscriptions.insert(topic.into(), expression.into());
        self
    }

    /// A listener called for batches from any queues concurrently.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn concurrent(
        mut self,
        f: impl Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Listener::Concurrent(Arc::new(f)));
        self
    }

    /// A listener called for one queue at a time, in queue order, with the queue locked at
    /// the broker (no other member consumes it meanwhile).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["x:1"]).group("G").subscribe("T", "*")
    ///     .orderly(|_| ConsumeResult::Success);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn orderly(
        mut self,
        f: impl Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Listener::Orderly(Arc::new(f)));
        self
    }

    /// Clustering (default) or broadcasting.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).model(MessageModel::Broadcasting);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn model(mut self, m: MessageModel) -> Self {
        self.model = m;
        self
    }

    /// The rebalance strategy (default: average).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).strategy(raftmq_client::rebalance::Strategy::ConsistentHash { virtual_nodes: 16 });
    /// assert!(b.build().is_ok());
    /// ```
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }

    /// Where a new group starts (default: last).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).consume_from(ConsumeFrom::First);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn consume_from(mut self, f: ConsumeFrom) -> Self {
        self.from = f;
        self
    }

    /// Listener calls running at once, at most (default 20).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).consume_threads(4);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn consume_threads(mut self, n: usize) -> Self {
        self.consume_threads = n;
        self
    }

    /// Messages per listener call, at most (default 1).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).batch_size(16);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Messages per pull, at most (default 32); also the most cached per queue.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).pull_batch_size(64);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn pull_batch_size(mut self, n: u32) -> Self {
        self.pull_batch_size = n;
        self
    }

    /// Bytes per pull, at most (default 4 MiB): with `pull_batch_size`, what one queue holds
    /// in memory at once (a queue pulls again only after the listener took the last pull).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeResult, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["x:1"]).group("G").subscribe("T", "*")
    ///     .concurrent(|_| ConsumeResult::Success).pull_max_bytes(1 << 20);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn pull_max_bytes(mut self, n: u32) -> Self {
        self.pull_max_bytes = n;
        self
    }

    /// How long a pull waits at the broker for new messages (default 2 s).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).long_poll(std::time::Duration::from_secs(5));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn long_poll(mut self, d: Duration) -> Self {
        self.long_poll = d;
        self
    }

    /// How often the member heartbeats every group's leader (default [`HEARTBEAT_EVERY`]).
    /// Brokers drop a member silent for their `client_expire_ms` (default 30 s), which is how
    /// soon a crashed member's queues go to the others: keep it several heartbeats long.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).heartbeat_every(std::time::Duration::from_secs(3));
    /// assert!(b.build().is_ok());
    /// ```
    pub fn heartbeat_every(mut self, d: Duration) -> Self {
        self.heartbeat_every = d;
        self
    }

    /// Broadcasting: the local offset file (default `./raftmq-offsets/<group>@<client id>`).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).model(MessageModel::Broadcasting).offset_file("/var/lib/app/offsets");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn offset_file(mut self, p: impl Into<PathBuf>) -> Self {
        self.offset_file = Some(p.into());
        self
    }

    /// The client id (default: address@pid@random); tests run several in one process.
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let b = PushConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G")
    ///     .subscribe("T", "*").concurrent(|_| ConsumeResult::Success).client_id("worker-1");
    /// assert!(b.build().is_ok());
    /// ```
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Checks the settings and makes the consumer (not started).
    ///
    /// ```
    /// use raftmq_client::consumer::{ConsumeFrom, ConsumeResult, MessageModel, PushConsumer};
    /// let missing_group = PushConsumer::builder().namesrv_addrs(["x:1"]).subscribe("T", "*").concurrent(|_| ConsumeResult::Success).build();
    /// assert!(missing_group.is_err());
    /// ```
    pub fn build(self) -> Result<PushConsumer, ClientError> {
        let bad = |m: String| Err(ClientError::InvalidArgument(m));
        if self.namesrv_addrs.is_empty() {
            return bad("at least one name server address".into());
        }
        check_name("consumer group", &self.group)
            .map_err(|e| ClientError::InvalidArgument(e.message))?;
        if self.subscriptions.is_empty() {
            return bad("subscribe to at least one topic".into());
        }
        for t in self.subscriptions.keys() {
            check_name("topic", t).map_err(|e| ClientError::InvalidArgument(e.message))?;
        }
        let Some(listener) = self.listener.clone() else {
            return bad("a listener (concurrent or orderly) is required".into());
        };
        if self.consume_threads == 0
            || self.batch_size == 0
            || self.pull_batch_size == 0
            || self.pull_batch_size > 1024
        {
            return bad("consume_threads, batch_size ≥ 1 and pull_batch_size in 1..=1024".into());
        }
        if self.heartbeat_every.is_zero() {
            return bad("heartbeat_every must be positive".into());
        }
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}@{}", std::process::id(), crate::msg_id::new_msg_id()));
        let offset_file = self.offset_file.clone().unwrap_or_else(|| {
            PathBuf::from("raftmq-offsets").join(format!("{}@{client_id}", self.group))
        });
        let start = std::process::id() as usize % self.namesrv_addrs.len();
        Ok(PushConsumer {
            inner: Arc::new(Inner {
                routes: Routes::new(self.namesrv_addrs.clone(), start),
                sem: Arc::new(Semaphore::new(self.consume_threads)),
                local: LocalOffsets::new(offset_file),
                client_id,
                listener,
                cfg: self,
                running: AtomicBool::new(false),
                queues: Mutex::default(),
                progress: Mutex::default(),
                releasing: Mutex::default(),
                control: Mutex::default(),
            }),
        })
    }
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

struct QueueTask {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    cfg: PushConsumerBuilder,
    routes: Routes,
    client_id: String,
    listener: Listener,
    sem: Arc<Semaphore>,
    local: LocalOffsets,
    running: AtomicBool,
    /// Queues this member consumes now. A mutex held only to edit the map.
    queues: Mutex<BTreeMap<MessageQueue, QueueTask>>,
    /// Queues being let go: their tasks are finishing the batch in hand.
    releasing: Mutex<BTreeSet<MessageQueue>>,
    /// Next offset to consume per queue (what a commit records). A mutex held only to edit.
    progress: Mutex<BTreeMap<MessageQueue, u64>>,
    control: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
}

fn code(s: &Option<raftmq_proto::v1::Status>) -> ErrorCode {
    s.as_ref()
        .and_then(|s| ErrorCode::try_from(s.code).ok())
        .unwrap_or(ErrorCode::Internal)
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
            namesrv_addrs: Vec::new(),
            group: String::new(),
            subscriptions: BTreeMap::new(),
            listener: None,
            model: MessageModel::default(),
            strategy: Strategy::default(),
            from: ConsumeFrom::default(),
            consume_threads: 20,
            batch_size: 1,
            pull_batch_size: 32,
            pull_max_bytes: 4 << 20,
            long_poll: Duration::from_secs(2),
            heartbeat_every: HEARTBEAT_EVERY,
            offset_file: None,
            client_id: None,
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
            self.inner.routes.route(t, true).await?;
        }
        let inner = self.inner.clone();
        *lock(&self.inner.control) = Some(tokio::spawn(control(inner)));
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
        let mut all: BTreeSet<MessageQueue> = lock(&self.inner.queues).keys().cloned().collect();
        all.extend(lock(&self.inner.releasing).iter().cloned());
        all.into_iter().collect()
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
        let control = lock(&self.inner.control).take();
        if let Some(c) = control {
            let _ = c.await;
        }
        let all: Vec<MessageQueue> = lock(&self.inner.queues).keys().cloned().collect();
        drop_queues(&self.inner, &all).await;
        commit(&self.inner).await;
        // Leave: a heartbeat without the group removes this member from its list.
        heartbeat(&self.inner, false).await;
    }
}

/// The control loop: heartbeats, member watch, rebalance, periodic commits.
async fn control(inner: Arc<Inner>) {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // A new member list is acted on once seen twice in a row: members starting together see
    // each other before taking queues (fewer needless moves and duplicates).
    let mut seen_once: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last_rebalance: Option<Instant> = None;
    let mut incomplete = false;
    let mut last_commit = Instant::now();
    let mut last_heartbeat: Option<(Instant, BTreeSet<String>)> = None;
    while inner.running.load(Ordering::Acquire) {
        // Heartbeat on schedule, and at once when a group's leader changed (a new leader knows
        // no clients: its member list would be empty until then).
        let leaders = leaders(&inner).await;
        if last_heartbeat
            .as_ref()
            .is_none_or(|(t, l)| t.elapsed() >= inner.cfg.heartbeat_every || *l != leaders)
        {
            heartbeat(&inner, true).await;
            last_heartbeat = Some((Instant::now(), leaders));
        }
        let mut changed = false;
        for topic in inner.cfg.subscriptions.keys() {
            let now = match inner.cfg.model {
                MessageModel::Broadcasting => vec![inner.client_id.clone()],
                MessageModel::Clustering => group_members(&inner, topic).await.unwrap_or_default(),
            };
            if now.is_empty() || members.get(topic) == Some(&now) {
                continue;
            }
            if seen_once.get(topic) == Some(&now) {
                members.insert(topic.clone(), now);
                changed = true;
            } else {
                seen_once.insert(topic.clone(), now);
            }
        }
        if changed || incomplete || last_rebalance.is_some_and(|t| t.elapsed() >= REBALANCE_EVERY) {
            // A queue that could not be started (its group unreachable) is tried again at
            // the next round, not at the next periodic rebalance.
            incomplete = !rebalance(&inner, &members).await;
            last_rebalance = Some(Instant::now());
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            commit(&inner).await;
            last_commit = Instant::now();
        }
        tokio::time::sleep(MEMBERS_EVERY).await;
    }
}

/// The leaders of every group holding a subscribed topic, from the cached routes.
async fn leaders(inner: &Inner) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in inner.cfg.subscriptions.keys() {
        if let Ok(r) = inner.routes.route(t, false).await {
            out.extend(r.leaders.values().cloned());
        }
    }
    out
}

async fn heartbeat(inner: &Inner, member: bool) {
    let groups = if member {
        vec![ConsumerGroupInfo {
            group: inner.cfg.group.clone(),
            mode: match inner.cfg.model {
                MessageModel::Clustering => ConsumeMode::Clustering,
                MessageModel::Broadcasting => ConsumeMode::Broadcasting,
            } as i32,
            subscriptions: inner
                .cfg
                .subscriptions
                .iter()
                .map(|(t, e)| Subscription {
                    topic: t.clone(),
                    expression: e.clone(),
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
        for t in inner.cfg.subscriptions.keys() {
            let _ = inner.routes.route(t, true).await;
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
        consumer_group: inner.cfg.group.clone(),
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
async fn rebalance(inner: &Arc<Inner>, members: &BTreeMap<String, Vec<String>>) -> bool {
    let mut complete = true;
    let mut wanted = BTreeSet::new();
    for topic in inner.cfg.subscriptions.keys() {
        let Ok(route) = inner.routes.route(topic, false).await else {
            complete = false;
            continue;
        };
        let queues: Vec<MessageQueue> = route
            .read_queues
            .iter()
            .map(|(g, q)| MessageQueue::new(topic, g, *q))
            .collect();
        let mine = match inner.cfg.model {
            MessageModel::Broadcasting => queues,
            MessageModel::Clustering => {
                let Some(ms) = members.get(topic) else {
                    continue;
                };
                allocate(&inner.cfg.strategy, &inner.client_id, ms, &queues)
            }
        };
        wanted.extend(mine);
    }
    let current: BTreeSet<MessageQueue> = lock(&inner.queues).keys().cloned().collect();
    let gone: Vec<MessageQueue> = current.difference(&wanted).cloned().collect();
    if !gone.is_empty() {
        drop_queues(inner, &gone).await;
        commit_queues(inner, &gone).await;
        // Forget them: a later periodic commit must not write this member's old position
        // over the progress of the member that took the queue.
        let mut p = lock(&inner.progress);
        for q in &gone {
            p.remove(q);
        }
    }
    for q in wanted.difference(&current) {
        let Some(start) = start_offset(inner, q).await else {
            complete = false;
            continue;
        };
        lock(&inner.progress).insert(q.clone(), start);
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consume_queue(inner.clone(), q.clone(), start, stop.clone()));
        lock(&inner.queues).insert(q.clone(), QueueTask { stop, task });
    }
    complete
}

/// Stops the tasks of `gone` and waits for them (each finishes the batch in hand).
async fn drop_queues(inner: &Inner, gone: &[MessageQueue]) {
    let tasks: Vec<(MessageQueue, QueueTask)> = {
        let mut qs = lock(&inner.queues);
        let mut releasing = lock(&inner.releasing);
        gone.iter()
            .filter_map(|q| {
                let t = qs.remove(q)?;
                releasing.insert(q.clone());
                Some((q.clone(), t))
            })
            .collect()
    };
    for (_, t) in &tasks {
        t.stop.store(true, Ordering::Release);
    }
    for (q, t) in tasks {
        let _ = t.task.await;
        if matches!(inner.listener, Listener::Orderly(_)) {
            unlock(inner, &q).await;
        }
        lock(&inner.releasing).remove(&q);
    }
}

/// The offset a newly assigned queue starts at.
async fn start_offset(inner: &Inner, q: &MessageQueue) -> Option<u64> {
    if inner.cfg.model == MessageModel::Broadcasting
        && let Some(o) = inner.local.load().ok()?.get(q)
    {
        return Some(*o);
    }
    query_start(
        &inner.routes,
        &inner.cfg.group,
        inner.cfg.model == MessageModel::Clustering,
        inner.cfg.from,
        q,
    )
    .await
}

/// Where `group` starts on `q`: its committed offset (if `committed` is asked and there is
/// one), else the queue's first, last, or first-at-time offset.
pub(crate) async fn query_start(
    routes: &Routes,
    group: &str,
    committed: bool,
    from: ConsumeFrom,
    q: &MessageQueue,
) -> Option<u64> {
    let addr = routes.leader_of(&q.topic, &q.group).await?;
    if committed {
        let req = QueryOffsetRequest {
            consumer_group: group.to_string(),
            topic: q.topic.clone(),
            queue_id: q.queue_id,
        };
        let r = routes
            .call(&addr, |mut c| async move { c.query_offset(req).await })
            .await
            .ok()?;
        if code(&r.status) != ErrorCode::Ok {
            return None;
        }
        if let Some(o) = r.offset {
            return Some(o);
        }
    }
    let ts = match from {
        ConsumeFrom::Timestamp(t) => Some(t),
        _ => None,
    };
    let req = QueryQueueRequest {
        topic: q.topic.clone(),
        queue_id: q.queue_id,
        timestamp_ms: ts,
    };
    let b = routes
        .call(&addr, |mut c| async move { c.query_queue(req).await })
        .await
        .ok()?;
    if code(&b.status) != ErrorCode::Ok {
        return None;
    }
    Some(match from {
        ConsumeFrom::First => b.min_offset,
        ConsumeFrom::Last => b.max_offset,
        ConsumeFrom::Timestamp(_) => b.offset_at_time.unwrap_or(b.max_offset),
    })
}

async fn lock_queue(inner: &Inner, q: &MessageQueue) -> bool {
    let Some(addr) = inner.routes.leader_of(&q.topic, &q.group).await else {
        return false;
    };
    let req = LockQueuesRequest {
        consumer_group: inner.cfg.group.clone(),
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

async fn unlock(inner: &Inner, q: &MessageQueue) {
    let Some(addr) = inner.routes.leader_of(&q.topic, &q.group).await else {
        return;
    };
    let req = UnlockQueuesRequest {
        consumer_group: inner.cfg.group.clone(),
        client_id: inner.client_id.clone(),
        queues: vec![queue_ref(q)],
    };
    let _ = inner
        .routes
        .call(&addr, |mut c| async move { c.unlock_queues(req).await })
        .await;
}

fn queue_ref(q: &MessageQueue) -> QueueRef {
    QueueRef {
        topic: q.topic.clone(),
        queue_id: q.queue_id,
    }
}

/// Pulled messages as the application sees them, with the exact tag check applied.
pub(crate) fn received(
    q: &MessageQueue,
    stored: Vec<raftmq_proto::v1::StoredMessage>,
    tags: Option<&BTreeSet<String>>,
) -> Vec<ReceivedMessage> {
    stored
        .into_iter()
        .filter_map(|m| {
            let inner_msg = m.message?;
            Some(ReceivedMessage {
                queue: q.clone(),
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
        })
        .filter(|m| tags.is_none_or(|t| t.contains(&m.tags)))
        .collect()
}

/// Exact tag check after the broker's hash filter.
pub(crate) fn wanted_tags(expr: &str) -> Option<BTreeSet<String>> {
    let e = expr.trim();
    if e.is_empty() || e == "*" {
        return None;
    }
    Some(e.split("||").map(|t| t.trim().to_string()).collect())
}

/// One queue's loop: (orderly: hold the lock) pull, filter, hand to the listener, move on.
async fn consume_queue(inner: Arc<Inner>, q: MessageQueue, mut offset: u64, stop: Arc<AtomicBool>) {
    let expr = inner
        .cfg
        .subscriptions
        .get(&q.topic)
        .cloned()
        .unwrap_or_default();
    let tags = wanted_tags(&expr);
    let orderly = matches!(inner.listener, Listener::Orderly(_));
    let mut locked_at: Option<Instant> = None;
    let mut ahead_since: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if orderly && locked_at.is_none_or(|t| t.elapsed() >= LOCK_RENEW_EVERY) {
            if lock_queue(&inner, &q).await {
                locked_at = Some(Instant::now());
            } else {
                // Another member still holds it (or the broker is away): do not consume.
                locked_at = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let Ok(route) = inner.routes.route(&q.topic, false).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(addr) = route.leaders.get(&q.group).cloned() else {
            let _ = inner.routes.route(&q.topic, true).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let req = PullRequest {
            consumer_group: inner.cfg.group.clone(),
            topic: q.topic.clone(),
            queue_id: q.queue_id,
            offset,
            max_messages: inner.cfg.pull_batch_size,
            max_bytes: inner.cfg.pull_max_bytes,
            subscription: expr.clone(),
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
        let resp = match tokio::time::timeout(inner.cfg.long_poll + CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                inner.routes.drop_channel(&addr);
                let _ = inner.routes.route(&q.topic, true).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match code(&resp.status) {
            ErrorCode::Ok => ahead_since = None,
            // Below the first retained message (purged): move up to it.
            ErrorCode::OffsetOutOfRange if offset < resp.min_offset => {
                offset = resp.min_offset;
                continue;
            }
            // Past the end: the replica answering is behind (a follower, or a new leader still
            // applying). Moving back would hand out messages again, so wait for it — unless it
            // stays so for OUT_OF_RANGE_PATIENCE (the queue was recreated): then restart at
            // its end.
            ErrorCode::OffsetOutOfRange => {
                let since = *ahead_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= OUT_OF_RANGE_PATIENCE {
                    tracing::warn!(queue = ?q, offset, max = resp.max_offset, "offset past the queue's end for too long; restarting at its end");
                    offset = resp.max_offset;
                    ahead_since = None;
                } else {
                    let _ = inner.routes.route(&q.topic, true).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
            _ => {
                let _ = inner.routes.route(&q.topic, true).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let msgs = received(&q, resp.messages, tags.as_ref());
        for chunk in msgs.chunks(inner.cfg.batch_size) {
            deliver(&inner, chunk).await;
            let next = chunk.last().map_or(offset, |m| m.queue_offset + 1);
            lock(&inner.progress).insert(q.clone(), next);
        }
        offset = resp.next_offset;
        lock(&inner.progress).insert(q.clone(), offset);
    }
}

/// Hands a batch to the listener until it succeeds, pausing longer each time it asks for a
/// redelivery.
async fn deliver(inner: &Inner, chunk: &[ReceivedMessage]) {
    let f = match &inner.listener {
        Listener::Concurrent(f) | Listener::Orderly(f) => f.clone(),
    };
    let mut batch = chunk.to_vec();
    let mut tries = 0u32;
    loop {
        let outcome = {
            let _permit = inner.sem.acquire().await;
            f(&batch)
        };
        if outcome == ConsumeResult::Success {
            return;
        }
        tries += 1;
        for m in &mut batch {
            m.reconsume_times += 1;
        }
        tokio::time::sleep(Duration::from_secs(u64::from(tries.min(16)))).await;
    }
}

/// Commits the progress of every queue.
async fn commit(inner: &Inner) {
    let all: Vec<MessageQueue> = lock(&inner.progress).keys().cloned().collect();
    commit_queues(inner, &all).await;
}

async fn commit_queues(inner: &Inner, queues: &[MessageQueue]) {
    let progress: BTreeMap<MessageQueue, u64> = {
        let p = lock(&inner.progress);
        queues
            .iter()
            .filter_map(|q| p.get(q).map(|o| (q.clone(), *o)))
            .collect()
    };
    if progress.is_empty() {
        return;
    }
    if inner.cfg.model == MessageModel::Broadcasting {
        let mut all = inner.local.load().unwrap_or_default();
        all.extend(progress);
        if let Err(e) = inner.local.store(&all) {
            tracing::warn!(error = %e, "storing local offsets failed");
        }
        return;
    }
    commit_remote(&inner.routes, &inner.cfg.group, progress).await;
}

/// Commits `progress` on the brokers: one request per (topic, group) to its leader. A failed
/// commit is logged and retried by the next one.
pub(crate) async fn commit_remote(
    routes: &Routes,
    consumer_group: &str,
    progress: BTreeMap<MessageQueue, u64>,
) -> bool {
    let mut by_group: BTreeMap<(String, String), Vec<CommittedOffset>> = BTreeMap::new();
    for (q, o) in progress {
        by_group
            .entry((q.topic.clone(), q.group.clone()))
            .or_default()
            .push(CommittedOffset {
                topic: q.topic,
                queue_id: q.queue_id,
                offset: o,
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
