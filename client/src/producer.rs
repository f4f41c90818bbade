//! The producer: sync, async, oneway, batch and ordered sends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use raftmq_client::{Message, Producer};
//!
//! let producer = Producer::builder()
//!     .namesrv_addrs(["127.0.0.1:9876"])
//!     .group("orders-producer")
//!     .build()?;
//! producer.start().await?;
//! let r = producer.send(Message::new("Orders", "order 42").with_keys(["order-42"])).await?;
//! println!("{} stored at {:?} offset {}", r.msg_id, r.queue, r.queue_offset);
//! producer.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How a send goes
//! The topic's route comes from the name servers (cached, fetched again after 30 s or a
//! failure). A queue is picked round-robin among the writable queues, skipping groups that just
//! failed or answered slowly (avoided for up to ten seconds, by RocketMQ's latency table scaled
//! to raftmq's fast failovers) while others are usable. The request goes to the group's leader;
//! `NOT_LEADER` is followed at once to the hinted leader and does not count as a failure. Any
//! other retriable failure (no answer, `UNAVAILABLE`, a lost connection) counts: the route is
//! fetched again and the send is retried on another queue — of another group when there is
//! one — up to `retries` times, pausing a little longer each time. Ordered sends never move to
//! another queue. A send that timed out may still have been stored: delivery is
//! at-least-once, and the msg id is the dedupe key.
//!
//! The rules (answer classes, the retry budget and pauses, the queue choice, the latency →
//! pause table) are pure functions in `policy::send`, unit-tested there; this module does the
//! calls. The retry loop (`Producer::with_retries`) and the leader redirects
//! (`Producer::follow_hints`) serve any request, not only sends: the transaction producer
//! (`crate::transaction`) sends its half messages and its `EndTransaction` calls through them.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::limits::{self, check_batch};
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::{
    EndTransactionResponse, RecallMessageRequest, RecallMessageResponse, SendRequest, SendResponse,
    Status,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::coalesce::{self, Coalescer, Waiting};
use crate::error::ClientError;
use crate::message::Message;
use crate::msg_id::new_msg_id;
use crate::options::{ClientOptions, SendOptions, client_setters, send_setters};
use crate::policy::send::{Answer, Failed, REDIRECTS_MAX, Retries, classify, pick_queue};
use crate::rebalance::MessageQueue;
use crate::route::{CALL_TIMEOUT, Route, Routes};

pub use crate::options::{RETRIES_DEFAULT, SEND_TIMEOUT_DEFAULT};
/// Default bound on async sends in flight.
///
/// ```
/// assert_eq!(raftmq_client::producer::IN_FLIGHT_DEFAULT, 1024);
/// ```
pub const IN_FLIGHT_DEFAULT: usize = 1024;
/// How often a send paused after its group's leader failed reads the route for a successor.
pub const LEADER_WATCH: Duration = Duration::from_millis(50);
/// How long a send's call runs before it also watches for its group's leader being replaced
/// ([`Producer::leader_replaced`]).
pub const SLOW_CALL: Duration = Duration::from_millis(500);

/// Where a message was stored.
///
/// ```no_run
/// # async fn demo() -> Result<(), raftmq_client::ClientError> {
/// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
/// p.start().await?;
/// let r: raftmq_client::SendResult = p.send(raftmq_client::Message::new("T", "x")).await?;
/// println!("{} {} {:?} {}", r.msg_id, r.offset_msg_id, r.queue, r.queue_offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The client-made unique id.
    pub msg_id: String,
    /// The broker's id: group + CommitLog position (one lookup on any replica).
    pub offset_msg_id: String,
    pub queue: MessageQueue,
    pub queue_offset: u64,
    /// For a timed message: the handle [`Producer::recall`] takes, and when it is due (ms
    /// since the epoch, the broker's clock). Its `queue_offset` is `u64::MAX` until then.
    pub recall_handle: Option<String>,
    pub deliver_at_ms: Option<u64>,
}

/// Picks the queue of an ordered send from a sharding argument.
///
/// ```
/// use raftmq_client::producer::{QueueSelector, SelectByHash};
/// use raftmq_client::Message;
///
/// let m = Message::new("T", "x");
/// let a = SelectByHash.select(8, &m, "order-42");
/// assert_eq!(a, SelectByHash.select(8, &m, "order-42"), "same key, same queue");
/// assert!(a < 8);
/// // Keys spread over the queues.
/// let used: std::collections::BTreeSet<usize> =
///     (0..64).map(|i| SelectByHash.select(4, &m, format!("order-{i}").as_str())).collect();
/// assert_eq!(used.len(), 4);
/// ```
pub trait QueueSelector<A: ?Sized>: Send + Sync {
    /// An index in `0..queue_count` (taken modulo `queue_count` if larger).
    fn select(&self, queue_count: usize, msg: &Message, arg: &A) -> usize;
}

/// Selects by a stable hash of the argument: one key, one queue (while the queue count stays).
///
/// ```
/// use raftmq_client::producer::{QueueSelector, SelectByHash};
/// let m = raftmq_client::Message::new("T", "x");
/// assert_eq!(SelectByHash.select(4, &m, &42u64), SelectByHash.select(4, &m, &42u64));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectByHash;

impl<A: Hash + ?Sized> QueueSelector<A> for SelectByHash {
    fn select(&self, queue_count: usize, _msg: &Message, arg: &A) -> usize {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        arg.hash(&mut h);
        (mix(std::hash::Hasher::finish(&h)) % queue_count.max(1) as u64) as usize
    }
}

/// Selects a random queue (order per key is then not kept: for spreading load).
///
/// ```
/// use raftmq_client::producer::{QueueSelector, SelectRandom};
/// let i = SelectRandom.select(4, &raftmq_client::Message::new("T", "x"), &());
/// assert!(i < 4);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectRandom;

impl<A: ?Sized> QueueSelector<A> for SelectRandom {
    fn select(&self, queue_count: usize, _msg: &Message, _arg: &A) -> usize {
        let r = crate::msg_id::new_msg_id();
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        std::hash::Hasher::write(&mut h, r.as_bytes());
        (std::hash::Hasher::finish(&h) % queue_count.max(1) as u64) as usize
    }
}

/// SplitMix64's finalizer: FNV's low bits mix poorly (keys ending alike share them), and the
/// queue index comes from the low bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a as a `Hasher`: stable across processes (the standard hasher is randomly seeded).
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Builds a [`Producer`].
///
/// ```
/// let p = raftmq_client::Producer::builder()
///     .namesrv_addrs(["127.0.0.1:9876"])
///     .group("G")
///     .retries(1)
///     .build();
/// assert!(p.is_ok());
/// let bad = raftmq_client::Producer::builder().group("G").build();
/// assert!(bad.is_err(), "a name server is required");
/// ```
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    opts: ClientOptions,
    send: SendOptions,
    max_in_flight: usize,
    auto_batch: bool,
}

impl ProducerBuilder {
    client_setters!(
        "producer",
        "raftmq_client::Producer::builder().group(\"P\")"
    );
    send_setters!("raftmq_client::Producer::builder().namesrv_addrs([\"x:1\"]).group(\"P\")");

    /// A builder with these options and the default bound on sends in flight (for the
    /// transaction producer, which sends through a [`Producer`]).
    pub(crate) fn from_options(opts: ClientOptions, send: SendOptions) -> Self {
        ProducerBuilder {
            opts,
            send,
            max_in_flight: IN_FLIGHT_DEFAULT,
            auto_batch: true,
        }
    }

    /// Whether concurrent [`Producer::send`]s of one topic share requests (default on): while
    /// [`coalesce::REQUESTS_IN_FLIGHT`](crate::coalesce::REQUESTS_IN_FLIGHT) requests of the
    /// topic are in flight, further sends wait and go together in the next one (each still
    /// gets its own result and queue offset). No send waits while a request slot is free.
    /// Off: one request per send.
    ///
    /// ```
    /// let b = raftmq_client::Producer::builder().namesrv_addrs(["x:1"]).group("P").auto_batch(false);
    /// assert!(b.build().is_ok());
    /// ```
    pub fn auto_batch(mut self, on: bool) -> Self {
        self.auto_batch = on;
        self
    }

    /// Most async and oneway sends in flight; more wait (default 1024).
    ///
    /// ```
    /// let b = raftmq_client::Producer::builder().namesrv_addrs(["x:1"]).group("P").max_in_flight(0);
    /// assert!(b.build().is_err(), "must be positive");
    /// ```
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Checks the settings and makes the producer (not started).
    ///
    /// ```
    /// assert!(raftmq_client::Producer::builder().namesrv_addrs(["x:1"]).group("P").build().is_ok());
    /// ```
    pub fn build(self) -> Result<Producer, ClientError> {
        self.opts.validate("producer")?;
        self.send.validate()?;
        if self.max_in_flight == 0 {
            return Err(ClientError::InvalidArgument(
                "max_in_flight must be positive".into(),
            ));
        }
        Ok(Producer {
            inner: Arc::new(Inner {
                routes: self.opts.routes(),
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                coalescer: Coalescer::default(),
                cfg: self,
                started: AtomicBool::new(false),
                next: AtomicU64::new(0),
            }),
        })
    }
}

/// A producer; cheap to clone (clones share routes, connections and the in-flight bound).
///
/// ```no_run
/// # async fn demo() -> Result<(), raftmq_client::ClientError> {
/// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
/// p.start().await?;
/// let p2 = p.clone(); // shares routes and connections
/// p2.send(raftmq_client::Message::new("T", "x")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ProducerBuilder,
    routes: Routes,
    /// Auto-batching of concurrent sends (see [`crate::coalesce`]).
    coalescer: Coalescer,
    started: AtomicBool,
    /// Round-robin position over the writable queues.
    next: AtomicU64,
    in_flight: Arc<Semaphore>,
}

/// Why one try failed (what the retry budget then does: [`Failed`]).
pub(crate) enum Failure {
    /// The group has no known leader (an election is under way): wait, fetch the route
    /// again, and try the same way ([`Failed::NoLeader`]: not counted).
    NoLeader(ClientError),
    /// Worth trying again (elsewhere).
    Retry(ClientError),
    /// Not worth it.
    Fatal(ClientError),
}

impl Failure {
    /// The error, whatever the retry budget would make of it.
    pub(crate) fn into_error(self) -> ClientError {
        match self {
            Failure::NoLeader(e) | Failure::Retry(e) | Failure::Fatal(e) => e,
        }
    }
}

impl Producer {
    /// A builder with the defaults.
    ///
    /// ```
    /// let _b = raftmq_client::Producer::builder();
    /// ```
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::from_options(ClientOptions::default(), SendOptions::default())
    }

    /// The routes and connections (shared with the transaction producer's client channels).
    pub(crate) fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    pub(crate) fn coalescer(&self) -> &Coalescer {
        &self.inner.coalescer
    }

    /// Sends messages that waited together (one topic, within the request limits) as one
    /// request with a send's retries, and answers each. A refusal of the whole request sends
    /// each message again alone (same id), so it fails only the messages it concerns.
    pub(crate) async fn send_coalesced(&self, batch: Vec<Waiting>) {
        let mut msgs = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for w in batch {
            msgs.push(w.msg);
            ids.push(w.id);
            replies.push(w.reply);
        }
        let together = Batch {
            topic: msgs[0].topic.clone(),
            msgs: &msgs,
            ids,
            transactional: false,
        };
        match self.send_prepared(&together, None).await {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e @ (ClientError::Refused { .. } | ClientError::InvalidArgument(_)))
                if msgs.len() > 1 =>
            {
                tracing::debug!(error = %e, n = msgs.len(), "coalesced send refused; sending each alone");
                for ((m, id), reply) in msgs.iter().zip(together.ids.clone()).zip(replies) {
                    let alone = Batch {
                        topic: m.topic.clone(),
                        msgs: std::slice::from_ref(m),
                        ids: vec![id],
                        transactional: false,
                    };
                    let r = self
                        .send_prepared(&alone, None)
                        .await
                        .map(|mut v| v.remove(0));
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The producer group.
    pub(crate) fn group(&self) -> &str {
        &self.inner.cfg.opts.group
    }

    /// When a request started now must be done: one send timeout from now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.inner.cfg.send.send_timeout
    }

    /// Starts the producer (sends before `start` are refused).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), ClientError> {
        self.inner.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops: later sends are refused; sends in flight finish.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// p.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.inner.started.store(false, Ordering::Release);
        // Wait for async sends in flight to finish.
        let all = self.inner.cfg.max_in_flight as u32;
        let _ = self.inner.in_flight.acquire_many(all).await;
    }

    pub(crate) fn check_started(&self) -> Result<(), ClientError> {
        if self.inner.started.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ClientError::State("producer not started (or shut down)"))
        }
    }

    /// Recalls a timed message before it is due (`sent` is its send result): it is then never
    /// delivered. Errors: `TIMER_NOT_PENDING` (already delivered or recalled),
    /// `TIMER_NOT_FOUND` (no timed message with that handle), `INVALID_ARGUMENT` (not a
    /// timed message's result).
    pub async fn recall(&self, sent: &SendResult) -> Result<(), ClientError> {
        let Some(handle) = sent.recall_handle.as_deref() else {
            return Err(ClientError::InvalidArgument(format!(
                "message {} was not sent as a timed message",
                sent.msg_id
            )));
        };
        self.recall_handle(&sent.queue.topic, handle).await
    }

    /// [`Producer::recall`] by the handle alone (kept from an earlier send result) and the
    /// topic the message was sent to.
    ///
    /// ```no_run
    /// # async fn demo(p: raftmq_client::Producer) -> Result<(), raftmq_client::ClientError> {
    /// p.recall_handle("Orders", "0000000000001A2Bg1").await?;
    /// # Ok(()) }
    /// ```
    pub async fn recall_handle(&self, topic: &str, handle: &str) -> Result<(), ClientError> {
        // A handle is an offset msg id: 16 hex digits of position, then the broker group.
        let group = match handle.get(16..) {
            Some(g) if !g.is_empty() && handle[..16].bytes().all(|b| b.is_ascii_hexdigit()) => g,
            _ => {
                return Err(ClientError::InvalidArgument(format!(
                    "{handle:?} is not a recall handle"
                )));
            }
        };
        let req = &RecallMessageRequest {
            recall_handle: handle.to_string(),
        };
        let one_try = move |route: Arc<Route>, _avoid, deadline| async move {
            let call = move |mut c: MessagingClient<Channel>| async move {
                c.recall_message(req.clone()).await
            };
            let r = match leader_in(&route.leaders, group) {
                Ok(addr) => self.follow_hints(addr, deadline, call).await,
                Err(e) => Err(e),
            };
            (group.to_string(), r)
        };
        self.with_retries::<RecallMessageResponse, _, _>(topic, false, one_try)
            .await
            .map(|_| ())
    }

    /// Sends one message and waits for the broker's acknowledgement (the message is then
    /// replicated to a quorum of its group).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// let r = p.send(raftmq_client::Message::new("T", "x")).await?;
    /// println!("offset {}", r.queue_offset);
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, msg: Message) -> Result<SendResult, ClientError> {
        self.check_started()?;
        if self.inner.cfg.auto_batch {
            // Checked alone (a bad message is refused here, never joins a batch), and given
            // its id before it waits.
            let id = Batch::new(std::slice::from_ref(&msg), false)?.ids.remove(0);
            return coalesce::send(self, msg, id).await;
        }
        let mut r = self
            .send_batch_once(std::slice::from_ref(&msg), None)
            .await?;
        Ok(r.remove(0))
    }

    /// Starts a send and returns its handle at once; at most `max_in_flight` run together
    /// (this waits while the bound is reached).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// let h = p.send_async(raftmq_client::Message::new("T", "x")).await?;
    /// let _r = h.await.expect("task")?;
    /// # Ok(()) }
    /// ```
    pub async fn send_async(
        &self,
        msg: Message,
    ) -> Result<tokio::task::JoinHandle<Result<SendResult, ClientError>>, ClientError> {
        self.check_started()?;
        let permit = self
            .inner
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::State("producer shut down"))?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            let r = me.send(msg).await;
            drop(permit);
            r
        }))
    }

    /// Sends without waiting for, or reporting, the outcome (it may be lost: for logs).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// p.send_oneway(raftmq_client::Message::new("Logs", "line")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_oneway(&self, msg: Message) -> Result<(), ClientError> {
        self.send_async(msg).await.map(|_| ())
    }

    /// Sends messages of one topic, split into requests within the wire limits (4 MiB, 1024
    /// messages); each request goes to one queue. Results in order.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// let msgs = (0..100).map(|i| raftmq_client::Message::new("T", format!("m{i}"))).collect();
    /// assert_eq!(p.send_batch(msgs).await?.len(), 100);
    /// # Ok(()) }
    /// ```
    pub async fn send_batch(&self, msgs: Vec<Message>) -> Result<Vec<SendResult>, ClientError> {
        self.check_started()?;
        let Some(first) = msgs.first() else {
            return Ok(Vec::new());
        };
        if msgs.iter().any(|m| m.topic != first.topic) {
            return Err(ClientError::InvalidArgument(
                "a batch holds one topic".into(),
            ));
        }
        let mut out = Vec::with_capacity(msgs.len());
        let mut chunk: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        for m in msgs {
            let size = m.body.len()
                + m.properties
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if !chunk.is_empty()
                && (bytes + size > limits::BATCH_BYTES_MAX
                    || chunk.len() >= limits::BATCH_MESSAGES_MAX)
            {
                out.extend(self.send_batch_once(&chunk, None).await?);
                chunk.clear();
                bytes = 0;
            }
            bytes += size;
            chunk.push(m);
        }
        if !chunk.is_empty() {
            out.extend(self.send_batch_once(&chunk, None).await?);
        }
        Ok(out)
    }

    /// Sends to the queue `selector` picks from `arg` (e.g. an order id with
    /// [`SelectByHash`]): messages with the same argument land in one queue, in send order.
    /// Never retried on another queue.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let p = raftmq_client::Producer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("P").build()?;
    /// p.start().await?;
    /// use raftmq_client::producer::SelectByHash;
    /// p.send_ordered(raftmq_client::Message::new("T", "paid"), &SelectByHash, "order-42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_ordered<A: ?Sized>(
        &self,
        msg: Message,
        selector: &dyn QueueSelector<A>,
        arg: &A,
    ) -> Result<SendResult, ClientError> {
        self.check_started()?;
        let route = self.inner.routes.route(&msg.topic, false).await?;
        let n = route.write_queues.len();
        if n == 0 {
            return Err(ClientError::Refused {
                code: ErrorCode::NoPermission,
                message: format!("topic {} has no writable queue", msg.topic),
            });
        }
        let q = route.write_queues[selector.select(n, &msg, arg) % n].clone();
        let mut r = self
            .send_batch_once(std::slice::from_ref(&msg), Some(q))
            .await?;
        Ok(r.remove(0))
    }

    /// One request (≤ the wire limits) with retries; `fixed` pins the queue (ordered sends).
    async fn send_batch_once(
        &self,
        msgs: &[Message],
        fixed: Option<(String, u32)>,
    ) -> Result<Vec<SendResult>, ClientError> {
        self.send_prepared(&Batch::new(msgs, false)?, fixed.as_ref())
            .await
    }

    /// Stores `msg` as a transaction's half message (kept from consumers until
    /// `EndTransaction` commits it), with a plain send's retries and redirects. The result's
    /// `queue_offset` means nothing for a half message; its `queue` names the topic and group.
    pub(crate) async fn send_half(&self, msg: &Message) -> Result<SendResult, ClientError> {
        self.check_started()?;
        let batch = Batch::new(std::slice::from_ref(msg), true)?;
        let mut r = self.send_prepared(&batch, None).await?;
        Ok(r.remove(0))
    }

    /// Sends `batch` with retries, on the queue `fixed` or one [`Producer::choose`] picks;
    /// one result per message, in order.
    async fn send_prepared(
        &self,
        batch: &Batch<'_>,
        fixed: Option<&(String, u32)>,
    ) -> Result<Vec<SendResult>, ClientError> {
        let topic = batch.topic.as_str();
        let one_try = move |route: Arc<Route>, avoid: Option<String>, deadline| async move {
            let (group, queue_id) =
                match self.choose(topic, &route.write_queues, fixed, avoid.as_deref()) {
                    Ok(q) => q,
                    Err(e) => return (String::new(), Err(Failure::Fatal(e))),
                };
            let req = batch.request(&self.inner.cfg.opts.group, queue_id);
            let started = Instant::now();
            let send = move |mut c: MessagingClient<Channel>| {
                let req = req.clone();
                async move { c.send(req).await }
            };
            let sent = match leader_in(&route.leaders, &group) {
                Ok(addr) => {
                    tokio::select! {
                        biased;
                        r = self.follow_hints(addr.clone(), deadline, send) => r,
                        () = self.leader_replaced(topic, &group, &addr) => {
                            Err(Failure::Retry(ClientError::Unavailable(format!(
                                "{addr} did not answer and the name server names another leader of {group}; the send's outcome is unknown"
                            ))))
                        }
                    }
                }
                Err(e) => Err(e),
            };
            let r = match sent {
                Ok(resp) => {
                    self.inner.routes.record(&group, started.elapsed(), false);
                    batch.results(&group, resp).map_err(Failure::Fatal)
                }
                Err(Failure::Retry(e)) => {
                    self.inner.routes.record(&group, started.elapsed(), true);
                    Err(Failure::Retry(e))
                }
                Err(e) => Err(e),
            };
            (group, r)
        };
        self.with_retries(topic, fixed.is_some(), one_try).await
    }

    /// Runs `one_try` until it succeeds, fails for good, or [`Retries`] gives up (or the send
    /// timeout passes). Each try gets `topic`'s route (fetched again after any failure), the
    /// group of the last retriable failure (to avoid) and the deadline; it returns the group
    /// it tried and its outcome. `pinned`: the request cannot move to another queue (ordered
    /// sends), so it keeps trying until the deadline.
    pub(crate) async fn with_retries<R, F, Fut>(
        &self,
        topic: &str,
        pinned: bool,
        mut one_try: F,
    ) -> Result<R, ClientError>
    where
        F: FnMut(Arc<Route>, Option<String>, Instant) -> Fut,
        Fut: Future<Output = (String, Result<R, Failure>)>,
    {
        let deadline = self.deadline();
        let mut retries = Retries::new(self.inner.cfg.send.retries, pinned);
        let mut last_group: Option<String> = None;
        let mut last_err = ClientError::Unavailable("no attempt made".into());
        let mut refresh = false;
        while retries.may_try() && Instant::now() < deadline {
            // The group and leader of a retriable failure: the pause ends early once the
            // name server knows another leader of that group.
            let mut lost_leader = None;
            let failed = match self.inner.routes.route(topic, refresh).await {
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => {
                    last_err = e;
                    Failed::Route
                }
                Ok(route) => match one_try(route.clone(), last_group.clone(), deadline).await {
                    (_, Ok(r)) => return Ok(r),
                    (_, Err(Failure::Fatal(e))) => return Err(e),
                    (_, Err(Failure::NoLeader(e))) => {
                        last_err = e;
                        Failed::NoLeader
                    }
                    (group, Err(Failure::Retry(e))) => {
                        let attempt = retries.failed();
                        tracing::debug!(%group, error = %e, attempt, "request failed; retrying");
                        last_err = e;
                        lost_leader = route
                            .leaders
                            .get(&group)
                            .map(|l| (group.clone(), l.clone()));
                        last_group = Some(group);
                        Failed::Retriable
                    }
                },
            };
            // Whatever failed, the next try fetches the route again first.
            refresh = true;
            let left = deadline.saturating_duration_since(Instant::now());
            let pause = retries.after(failed, left);
            match lost_leader {
                Some((group, leader)) => {
                    self.pause_or_new_leader(topic, &group, &leader, pause)
                        .await;
                }
                None => tokio::time::sleep(pause).await,
            }
        }
        Err(last_err)
    }

    /// Sleeps `pause`, cut short once `topic`'s route names a leader of `group` other than
    /// `failed` (the route is read at most every [`LEADER_WATCH`], one fetch shared by every
    /// send waiting): after a leader is lost, sends go to its successor as soon as the name
    /// server knows it (within [`LEADER_WATCH`] of the new leader's registration) rather than
    /// after a fixed back-off, which had the first acknowledgement after a leader's SIGKILL
    /// land at 2.1 s whatever the election took.
    async fn pause_or_new_leader(&self, topic: &str, group: &str, failed: &str, pause: Duration) {
        let end = Instant::now() + pause;
        loop {
            let now = Instant::now();
            if now >= end {
                return;
            }
            tokio::time::sleep(LEADER_WATCH.min(end - now)).await;
            if let Ok(r) = self.inner.routes.route_fresh(topic, LEADER_WATCH).await
                && r.leaders.get(group).is_some_and(|l| l != failed)
            {
                return;
            }
        }
    }

    /// Resolves once the name server names a leader of `group` other than `leader`: looked
    /// at from [`SLOW_CALL`] into a call on, every [`LEADER_WATCH`] (one fetch shared by every
    /// call watching). A leader that stopped (SIGSTOP, a hung disk) holds a call until the
    /// call times out, while the rest of its group has elected a successor within a second:
    /// the call is given up (its outcome unknown: at-least-once) and retried there. Found by
    /// the chaos harness: a paused leader held every send for as long as it was paused.
    async fn leader_replaced(&self, topic: &str, group: &str, leader: &str) {
        tokio::time::sleep(SLOW_CALL).await;
        loop {
            if let Ok(r) = self.inner.routes.route_fresh(topic, LEADER_WATCH).await
                && r.leaders.get(group).is_some_and(|l| l != leader)
            {
                return;
            }
            tokio::time::sleep(LEADER_WATCH).await;
        }
    }

    /// The queue of the next try: the pinned one, else the next by [`pick_queue`] (in turn,
    /// avoiding groups in their fault pause and `avoid`, the group that just failed).
    fn choose(
        &self,
        topic: &str,
        queues: &[(String, u32)],
        fixed: Option<&(String, u32)>,
        avoid: Option<&str>,
    ) -> Result<(String, u32), ClientError> {
        if let Some(q) = fixed {
            return Ok(q.clone());
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) as usize;
        pick_queue(queues, start, avoid, |g| self.inner.routes.available(g))
            .cloned()
            .ok_or_else(|| ClientError::Refused {
                code: ErrorCode::NoPermission,
                message: format!("topic {topic} has no writable queue"),
            })
    }

    /// One try of `call` at `addr`, following `NOT_LEADER` hints (at most [`REDIRECTS_MAX`]);
    /// the answer's status decides ([`classify`]). Each call within [`CALL_TIMEOUT`] and
    /// `deadline`; a failed or silent call drops the cached channel (the next reconnects).
    pub(crate) async fn follow_hints<R, F, Fut>(
        &self,
        mut addr: String,
        deadline: Instant,
        call: F,
    ) -> Result<R, Failure>
    where
        R: Answered,
        F: Fn(MessagingClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        for _ in 0..=REDIRECTS_MAX {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(CALL_TIMEOUT);
            if left.is_zero() {
                return Err(Failure::Retry(ClientError::Timeout(
                    self.inner.cfg.send.send_timeout,
                )));
            }
            let resp = self
                .inner
                .routes
                .call_within(&addr, left, &call)
                .await
                .map_err(Failure::Retry)?;
            let status = resp.status().cloned().unwrap_or_default();
            let code = ErrorCode::try_from(status.code).unwrap_or(ErrorCode::Internal);
            match classify(code, &status.leader_addr) {
                Answer::Stored => return Ok(resp),
                Answer::FollowHint => addr = status.leader_addr,
                Answer::Retry => {
                    return Err(Failure::Retry(ClientError::Unavailable(format!(
                        "{addr}: {code:?}: {}",
                        status.message
                    ))));
                }
                Answer::Refused => {
                    return Err(Failure::Fatal(ClientError::Refused {
                        code,
                        message: status.message,
                    }));
                }
            }
        }
        Err(Failure::Retry(ClientError::Unavailable(format!(
            "more than {REDIRECTS_MAX} leader redirects"
        ))))
    }
}

/// `group`'s leader in `leaders` (a route's); none known: [`Failure::NoLeader`].
pub(crate) fn leader_in(
    leaders: &BTreeMap<String, String>,
    group: &str,
) -> Result<String, Failure> {
    leaders.get(group).cloned().ok_or_else(|| {
        Failure::NoLeader(ClientError::Unavailable(format!(
            "group {group} has no known leader"
        )))
    })
}

/// A broker's answer, classified by its status ([`classify`]).
pub(crate) trait Answered {
    /// The answer's status (absent: `OK`).
    fn status(&self) -> Option<&Status>;
}

impl Answered for SendResponse {
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}

impl Answered for RecallMessageResponse {
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}

impl Answered for EndTransactionResponse {
    fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }
}

/// One request's messages with their client-made ids, checked against the wire limits.
struct Batch<'m> {
    topic: String,
    msgs: &'m [Message],
    ids: Vec<String>,
    /// A transaction's half message (exactly one message).
    transactional: bool,
}

impl<'m> Batch<'m> {
    /// Gives `msgs` (one topic, at least one message; exactly one if `transactional`) their
    /// ids and checks them.
    fn new(msgs: &'m [Message], transactional: bool) -> Result<Self, ClientError> {
        assert!(
            !transactional || msgs.len() == 1,
            "a half message is sent alone"
        );
        let batch = Batch {
            topic: msgs[0].topic.clone(),
            msgs,
            ids: msgs
                .iter()
                .map(|m| m.msg_id.clone().unwrap_or_else(new_msg_id))
                .collect(),
            transactional,
        };
        check_batch(&batch.wire(0)).map_err(|e| match e.code() {
            ErrorCode::MessageTooLarge => ClientError::Refused {
                code: e.code(),
                message: e.message.clone(),
            },
            _ => ClientError::InvalidArgument(e.message.clone()),
        })?;
        Ok(batch)
    }

    /// The messages as sent to `queue_id`.
    fn wire(&self, queue_id: u32) -> Vec<raftmq_proto::v1::Message> {
        self.msgs
            .iter()
            .zip(&self.ids)
            .map(|(m, id)| m.to_wire(id.clone(), queue_id, "client"))
            .collect()
    }

    /// The request to `queue_id` for `producer_group`.
    fn request(&self, producer_group: &str, queue_id: u32) -> SendRequest {
        SendRequest {
            producer_group: producer_group.to_string(),
            messages: self.wire(queue_id),
            transactional: self.transactional,
        }
    }

    /// Where each message was stored, in order: one result per message, or the answer is
    /// refused (a broker bug; never indexed blindly).
    fn results(&self, group: &str, resp: SendResponse) -> Result<Vec<SendResult>, ClientError> {
        if resp.results.len() != self.msgs.len() {
            return Err(ClientError::Refused {
                code: ErrorCode::Internal,
                message: format!(
                    "{group} answered {} results for {} messages",
                    resp.results.len(),
                    self.msgs.len()
                ),
            });
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| SendResult {
                msg_id: r.msg_id,
                offset_msg_id: r.offset_msg_id,
                queue: MessageQueue::new(&self.topic, group, r.queue_id),
                queue_offset: r.queue_offset,
                recall_handle: (!r.recall_handle.is_empty()).then_some(r.recall_handle),
                deliver_at_ms: (r.deliver_at_ms > 0).then_some(r.deliver_at_ms),
            })
            .collect())
    }
}
