//! The transaction producer: a message published if, and only if, a local transaction commits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use raftmq_client::transaction::{LocalTransactionState, TransactionProducer, fn_listener};
//! use raftmq_client::Message;
//!
//! let producer = TransactionProducer::builder()
//!     .namesrv_addrs(["127.0.0.1:9876"])
//!     .group("orders-tx")
//!     .listener(fn_listener(
//!         // Runs the local transaction (e.g. inserts the order row) right after the half
//!         // message is stored.
//!         |_msg, _arg| LocalTransactionState::Commit,
//!         // The broker asks after a transaction it got no decision for: look the order up.
//!         |_msg| LocalTransactionState::Commit,
//!     ))
//!     .build()?;
//! producer.start().await?;
//! let msg = Message::new("Orders", "order 42 paid").with_keys(["order-42"]);
//! let r = producer.send_in_transaction(msg, &42u64).await?;
//! println!("{} ended {:?}, {:?}", r.half.msg_id, r.local_state, r.end_error);
//! producer.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How a transaction goes
//! 1. The message is stored as a *half message* (`SendRequest.transactional`): replicated like
//!    any message, invisible to consumers. It is sent like a plain send (routes, retries,
//!    `NOT_LEADER` redirects: [`crate::producer`]); a failed half send is the call's error and
//!    the local transaction never runs.
//! 2. The listener's [`TransactionListener::execute_local`] runs the local transaction, on the
//!    calling task. Its answer counts as [`LocalTransactionState::Unknown`] if it panicked
//!    (logged; the producer goes on) or took longer than `local_transaction_timeout`: the
//!    listener is synchronous and cannot be interrupted, so a late answer is not cut short, it
//!    is dropped, and the broker's checks decide (why: `policy::transaction`).
//! 3. `Commit` or `Rollback` is sent with `EndTransaction` (retried like a send, to the half's
//!    group); `Unknown` sends nothing. A failed `EndTransaction` is reported in
//!    [`TransactionSendResult::end_error`], not as the call's error: the half is stored, and the
//!    broker's check resolves it. `TXN_ALREADY_DECIDED` is no error (a check decided the same way
//!    first); `TXN_DECIDED_OTHERWISE` is (it was decided the other way).
//! 4. **Checks.** The producer keeps a client channel to the leader of each group it stored a
//!    half on (and, from [`TransactionProducer::start`], of each group holding a topic named with
//!    [`TransactionProducerBuilder::topics`]: so a restarted producer is asked about the halves
//!    its previous run left open). A broker asks there about a half left undecided; the
//!    listener's [`TransactionListener::check_local`] answers (a panic counts as `Unknown`) and
//!    the answer goes back with `EndTransaction(from_check)` to the replica that asked (following
//!    `NOT_LEADER`). `Unknown`, or an answer that is lost, sends nothing more: the broker asks
//!    again later. At most `max_checks_in_flight` checks are answered at once; a check arriving
//!    past that bound waits for one to finish. How the channels connect and reconnect:
//!    `crate::channel`.
//!
//! A transaction is decided once: the first decision the broker receives wins (from the
//! producer or from a check), so the listener's two methods must agree about a transaction's
//! outcome.
//!
//! The rules (panic and timeout → `Unknown`, what is sent, what an answer means) are pure
//! functions in `policy::transaction`, unit-tested there; this module does the calls.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::limits::check_name;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::{
    ClientHello, EndTransactionRequest, EndTransactionResponse, TransactionDecision,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::channel::{CheckFrom, CheckHandler, ClientChannels, Handlers};
use crate::consumer::ReceivedMessage;
use crate::consumer::calls::to_received;
use crate::error::ClientError;
use crate::message::Message;
use crate::options::{ClientOptions, SendOptions, client_setters, default_client_id, send_setters};
use crate::policy::transaction::{ListenerRan, decision, effective_state, end_answer};
use crate::producer::{Failure, Producer, ProducerBuilder, SendResult, leader_in};
use crate::rebalance::MessageQueue;
use crate::route::Route;

/// Default limit on a local transaction's run: a later answer counts as `Unknown`.
///
/// ```
/// assert_eq!(raftmq_client::transaction::LOCAL_TRANSACTION_TIMEOUT_DEFAULT.as_secs(), 3);
/// ```
pub const LOCAL_TRANSACTION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Default bound on checks answered at once.
///
/// ```
/// assert_eq!(raftmq_client::transaction::CHECKS_IN_FLIGHT_DEFAULT, 16);
/// ```
pub const CHECKS_IN_FLIGHT_DEFAULT: usize = 16;
/// The largest bound on checks answered at once.
///
/// ```
/// assert!(raftmq_client::transaction::CHECKS_IN_FLIGHT_MAX >= raftmq_client::transaction::CHECKS_IN_FLIGHT_DEFAULT);
/// ```
pub const CHECKS_IN_FLIGHT_MAX: usize = 1024;

pub use crate::policy::transaction::LocalTransactionState;

/// The application's side of a transaction.
///
/// # To ensure correctness
/// - `execute_local` and `check_local` agree: once the local transaction has committed (rolled
///   back), `check_local` of its message says `Commit` (`Rollback`), every time. The first
///   decision the broker gets wins, whichever method gave it.
/// - `check_local` finds the transaction from the message alone (its keys, properties or
///   body; `msg_id` is the half message's id), and says `Unknown` while it cannot tell yet —
///   never `Rollback` for a transaction that may still commit.
/// - `execute_local` returns within `local_transaction_timeout` (else its answer is dropped,
///   and only checks decide); it runs on the task calling `send_in_transaction`, so it
///   should not block for long.
/// - Both may run concurrently (checks of different transactions in parallel, and with
///   `execute_local`); a panic in either counts as `Unknown` (release builds abort on panic,
///   see `[profile.release]`, so a panic there ends the process instead).
pub trait TransactionListener: Send + Sync + 'static {
    /// Runs the local transaction for a half message just stored; `arg` is what the caller
    /// passed to [`TransactionProducer::send_in_transaction`].
    fn execute_local(&self, msg: &Message, arg: &(dyn Any + Send + Sync)) -> LocalTransactionState;

    /// Answers the broker's check of a transaction whose outcome it did not receive; `msg` is
    /// the half message as stored.
    fn check_local(&self, msg: &ReceivedMessage) -> LocalTransactionState;
}

/// A listener made of two closures: see [`fn_listener`].
pub struct FnListener<E, C> {
    execute: E,
    check: C,
}

/// A [`TransactionListener`] from two closures: `execute` is
/// [`TransactionListener::execute_local`], `check` is [`TransactionListener::check_local`].
///
/// ```
/// use raftmq_client::transaction::{LocalTransactionState, TransactionListener, fn_listener};
/// let l = fn_listener(
///     |_msg, arg| match arg.downcast_ref::<bool>() {
///         Some(true) => LocalTransactionState::Commit,
///         _ => LocalTransactionState::Rollback,
///     },
///     |_msg| LocalTransactionState::Unknown,
/// );
/// let m = raftmq_client::Message::new("T", "x");
/// assert_eq!(l.execute_local(&m, &true), LocalTransactionState::Commit);
/// assert_eq!(l.execute_local(&m, &"?"), LocalTransactionState::Rollback);
/// ```
pub fn fn_listener<E, C>(execute: E, check: C) -> FnListener<E, C>
where
    E: Fn(&Message, &(dyn Any + Send + Sync)) -> LocalTransactionState + Send + Sync + 'static,
    C: Fn(&ReceivedMessage) -> LocalTransactionState + Send + Sync + 'static,
{
    FnListener { execute, check }
}

impl<E, C> TransactionListener for FnListener<E, C>
where
    E: Fn(&Message, &(dyn Any + Send + Sync)) -> LocalTransactionState + Send + Sync + 'static,
    C: Fn(&ReceivedMessage) -> LocalTransactionState + Send + Sync + 'static,
{
    fn execute_local(&self, msg: &Message, arg: &(dyn Any + Send + Sync)) -> LocalTransactionState {
        (self.execute)(msg, arg)
    }

    fn check_local(&self, msg: &ReceivedMessage) -> LocalTransactionState {
        (self.check)(msg)
    }
}

/// What [`TransactionProducer::send_in_transaction`] did.
///
/// `local_state` says what was sent: `Commit` or `Rollback` with `EndTransaction`, nothing
/// for `Unknown`. `end_error` is `Some` if that call failed: the transaction is then left to
/// the broker's check (or to [`TransactionProducer::end_transaction`]).
///
/// ```no_run
/// # async fn demo(p: raftmq_client::TransactionProducer) -> Result<(), raftmq_client::ClientError> {
/// use raftmq_client::transaction::LocalTransactionState;
/// let r = p.send_in_transaction(raftmq_client::Message::new("T", "x"), &()).await?;
/// match (r.local_state, &r.end_error) {
///     (LocalTransactionState::Commit, None) => println!("published: {:?}", r.committed),
///     (LocalTransactionState::Rollback, None) => println!("discarded"),
///     _ => println!("left to the broker's check: {:?}", r.end_error),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// The half message: `msg_id` (the transaction's id), `offset_msg_id`, and in `queue` the
    /// topic and group holding it (its `queue_offset` means nothing).
    pub half: SendResult,
    /// The local transaction's outcome as it counted: `Unknown` also for a panic or a late
    /// answer (both logged).
    pub local_state: LocalTransactionState,
    /// For a commit the broker acknowledged: where the message now is, if it said.
    pub committed: Option<SendResult>,
    /// Why `EndTransaction` failed, if it did.
    pub end_error: Option<ClientError>,
}

/// Builds a [`TransactionProducer`]: a producer group and a listener are required.
///
/// ```
/// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
/// let b = TransactionProducer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G");
/// assert!(b.clone().build().is_err(), "a listener is required");
/// assert!(b.listener(fn_listener(|_, _| S::Commit, |_| S::Unknown)).build().is_ok());
/// ```
#[derive(Clone)]
pub struct TransactionProducerBuilder {
    opts: ClientOptions,
    send: SendOptions,
    listener: Option<Arc<dyn TransactionListener>>,
    local_transaction_timeout: Duration,
    max_checks_in_flight: usize,
    topics: Vec<String>,
    client_id: Option<String>,
}

impl std::fmt::Debug for TransactionProducerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionProducerBuilder")
            .field("opts", &self.opts)
            .field("send", &self.send)
            .field("listener", &self.listener.as_ref().map(|_| "…"))
            .field("local_transaction_timeout", &self.local_transaction_timeout)
            .field("max_checks_in_flight", &self.max_checks_in_flight)
            .field("topics", &self.topics)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl TransactionProducerBuilder {
    client_setters!(
        "producer",
        "raftmq_client::TransactionProducer::builder().group(\"P\").listener(raftmq_client::transaction::fn_listener(|_, _| raftmq_client::transaction::LocalTransactionState::Commit, |_| raftmq_client::transaction::LocalTransactionState::Unknown))"
    );
    send_setters!(
        "raftmq_client::TransactionProducer::builder().namesrv_addrs([\"x:1\"]).group(\"P\").listener(raftmq_client::transaction::fn_listener(|_, _| raftmq_client::transaction::LocalTransactionState::Commit, |_| raftmq_client::transaction::LocalTransactionState::Unknown))"
    );

    /// The listener: runs local transactions and answers checks (required).
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let b = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P");
    /// assert!(b.listener(fn_listener(|_, _| S::Commit, |_| S::Commit)).build().is_ok());
    /// ```
    pub fn listener(mut self, listener: impl TransactionListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// How long `execute_local` may run before its answer counts as `Unknown` (default 3 s).
    /// Keep it well below the broker's wait before its first check, so that an answer in time
    /// is never one a check may contradict.
    ///
    /// ```
    /// use std::time::Duration;
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let b = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit));
    /// assert!(b.clone().local_transaction_timeout(Duration::from_secs(1)).build().is_ok());
    /// assert!(b.local_transaction_timeout(Duration::ZERO).build().is_err());
    /// ```
    pub fn local_transaction_timeout(mut self, t: Duration) -> Self {
        self.local_transaction_timeout = t;
        self
    }

    /// Checks answered at once, at most (default 16, at most 1024); a check arriving past the
    /// bound waits for one to finish.
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let b = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit));
    /// assert!(b.clone().max_checks_in_flight(4).build().is_ok());
    /// assert!(b.clone().max_checks_in_flight(0).build().is_err());
    /// assert!(b.max_checks_in_flight(5000).build().is_err());
    /// ```
    pub fn max_checks_in_flight(mut self, n: usize) -> Self {
        self.max_checks_in_flight = n;
        self
    }

    /// Topics this producer sends to: [`TransactionProducer::start`] opens a channel to every
    /// group holding them, so that the brokers can check transactions an earlier run of this
    /// producer group left open before this run sends anything. (Without it, a group gets its
    /// channel at the first half message stored on it.)
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let b = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit));
    /// assert!(b.clone().topics(["Orders"]).build().is_ok());
    /// assert!(b.topics(["bad topic"]).build().is_err());
    /// ```
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// This client's id on its channels (`[A-Za-z0-9_%|-]`, 1 to 127 bytes; default: the
    /// process id and a unique id).
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let p = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit)).client_id("tx-1").build().unwrap();
    /// assert_eq!(p.client_id(), "tx-1");
    /// let bad = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit)).client_id("tx 1").build();
    /// assert!(bad.is_err());
    /// ```
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Checks the settings and makes the producer (not started).
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let b = TransactionProducer::builder().namesrv_addrs(["x:1"])
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit));
    /// assert!(b.clone().build().is_err(), "a producer group is required");
    /// assert!(b.group("P").build().is_ok());
    /// ```
    pub fn build(self) -> Result<TransactionProducer, ClientError> {
        let bad = |m: String| Err(ClientError::InvalidArgument(m));
        self.opts.validate("producer")?;
        let Some(listener) = self.listener.clone() else {
            return bad("a transaction listener is required".into());
        };
        if self.local_transaction_timeout.is_zero() {
            return bad("local_transaction_timeout must be positive".into());
        }
        if !(1..=CHECKS_IN_FLIGHT_MAX).contains(&self.max_checks_in_flight) {
            return bad(format!(
                "max_checks_in_flight {} is not in 1..={CHECKS_IN_FLIGHT_MAX}",
                self.max_checks_in_flight
            ));
        }
        let names = self.topics.iter().map(|t| ("topic", t));
        for (what, name) in names.chain(self.client_id.iter().map(|c| ("client id", c))) {
            check_name(what, name).map_err(|e| ClientError::InvalidArgument(e.message))?;
        }
        let producer =
            ProducerBuilder::from_options(self.opts.clone(), self.send.clone()).build()?;
        let client_id = self.client_id.clone().unwrap_or_else(default_client_id);
        let hello = ClientHello {
            client_id: client_id.clone(),
            producer_groups: vec![self.opts.group.clone()],
            consumer_groups: Vec::new(),
        };
        let check: CheckHandler = {
            let (producer, listener) = (producer.clone(), listener.clone());
            Arc::new(move |from| Box::pin(answer_check(producer.clone(), listener.clone(), from)))
        };
        let handlers = Handlers { check: Some(check) };
        let channels = ClientChannels::new(
            producer.routes().clone(),
            hello,
            handlers,
            self.max_checks_in_flight,
        );
        Ok(TransactionProducer {
            inner: Arc::new(Inner {
                producer,
                listener,
                channels,
                client_id,
                cfg: self,
            }),
        })
    }
}

/// A transaction producer; see the module docs. Cheap to clone (clones share everything);
/// dropping the last clone closes its channels.
///
/// ```no_run
/// # async fn demo() -> Result<(), raftmq_client::ClientError> {
/// use raftmq_client::transaction::{LocalTransactionState, fn_listener};
/// use raftmq_client::{Message, TransactionProducer};
///
/// let p = TransactionProducer::builder()
///     .namesrv_addrs(["127.0.0.1:9876"])
///     .group("payments-tx")
///     .topics(["Payments"])
///     .listener(fn_listener(
///         |_msg, arg| {
///             let amount = arg.downcast_ref::<u64>().copied().unwrap_or(0);
///             if amount > 0 { LocalTransactionState::Commit } else { LocalTransactionState::Rollback }
///         },
///         |_msg| LocalTransactionState::Unknown,
///     ))
///     .build()?;
/// p.start().await?;
/// let r = p.send_in_transaction(Message::new("Payments", "pay 10"), &10u64).await?;
/// assert_eq!(r.local_state, LocalTransactionState::Commit);
/// p.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TransactionProducer {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: TransactionProducerBuilder,
    /// Sends the half messages and the `EndTransaction` calls.
    producer: Producer,
    listener: Arc<dyn TransactionListener>,
    channels: ClientChannels,
    client_id: String,
}

impl TransactionProducer {
    /// A builder with the defaults.
    ///
    /// ```
    /// let _b = raftmq_client::TransactionProducer::builder();
    /// ```
    pub fn builder() -> TransactionProducerBuilder {
        TransactionProducerBuilder {
            opts: ClientOptions::default(),
            send: SendOptions::default(),
            listener: None,
            local_transaction_timeout: LOCAL_TRANSACTION_TIMEOUT_DEFAULT,
            max_checks_in_flight: CHECKS_IN_FLIGHT_DEFAULT,
            topics: Vec::new(),
            client_id: None,
        }
    }

    /// This client's id on its channels.
    ///
    /// ```
    /// use raftmq_client::transaction::{LocalTransactionState as S, TransactionProducer, fn_listener};
    /// let p = TransactionProducer::builder().namesrv_addrs(["x:1"]).group("P")
    ///     .listener(fn_listener(|_, _| S::Commit, |_| S::Commit)).build().unwrap();
    /// assert!(!p.client_id().is_empty());
    /// ```
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Starts the producer (sends before `start` are refused) and opens channels to the groups
    /// of its [`TransactionProducerBuilder::topics`]: fails if a route cannot be had. A
    /// producer that was shut down cannot start again.
    ///
    /// ```no_run
    /// # async fn demo(p: raftmq_client::TransactionProducer) -> Result<(), raftmq_client::ClientError> {
    /// p.start().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), ClientError> {
        if self.inner.channels.is_shut_down() {
            return Err(ClientError::State(
                "transaction producer shut down; build a new one",
            ));
        }
        let routes = self.inner.producer.routes();
        for topic in &self.inner.cfg.topics {
            let route = routes.route(topic, true).await?;
            for (group, _) in route.write_queues.iter().chain(&route.read_queues) {
                self.inner.channels.register(topic, group);
            }
        }
        self.inner.producer.start().await
    }

    /// Stops: later sends are refused, the channels close (no more checks), and the checks
    /// being answered finish.
    ///
    /// ```no_run
    /// # async fn demo(p: raftmq_client::TransactionProducer) {
    /// p.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.inner.producer.shutdown().await;
        self.inner.channels.shutdown().await;
    }

    /// Stores `msg` as a half message, runs the listener's `execute_local(msg, arg)`, and
    /// commits or rolls back by its answer (see the module docs). An error means the half
    /// message was not stored (as far as the client knows: a send that timed out may have
    /// been, and is then checked like any other).
    ///
    /// ```no_run
    /// # async fn demo(p: raftmq_client::TransactionProducer) -> Result<(), raftmq_client::ClientError> {
    /// let r = p.send_in_transaction(raftmq_client::Message::new("T", "x"), &"order-42").await?;
    /// println!("transaction {}: {:?}", r.half.msg_id, r.local_state);
    /// # Ok(()) }
    /// ```
    pub async fn send_in_transaction(
        &self,
        msg: Message,
        arg: &(dyn Any + Send + Sync),
    ) -> Result<TransactionSendResult, ClientError> {
        let inner = &self.inner;
        let half = inner.producer.send_half(&msg).await?;
        inner
            .channels
            .register(&half.queue.topic, &half.queue.group);
        let started = Instant::now();
        let ran = run_listener(|| inner.listener.execute_local(&msg, arg));
        let took = started.elapsed();
        let limit = inner.cfg.local_transaction_timeout;
        let local_state = effective_state(&ran, took, Some(limit));
        match &ran {
            ListenerRan::Panicked(panic) => {
                tracing::warn!(msg_id = %half.msg_id, %panic, "execute_local panicked: counted as Unknown; the broker's check decides");
            }
            ListenerRan::Answered(s) if *s != local_state => {
                tracing::warn!(msg_id = %half.msg_id, ?took, ?limit, "execute_local answered after local_transaction_timeout: answer dropped; the broker's check decides");
            }
            ListenerRan::Answered(_) => {}
        }
        let (committed, end_error) = match decision(local_state) {
            None => (None, None),
            Some(d) => match self.end(&half, d).await {
                Ok(committed) => (committed, None),
                Err(e) => {
                    tracing::warn!(msg_id = %half.msg_id, error = %e, "EndTransaction failed; the broker's check decides");
                    (None, Some(e))
                }
            },
        };
        Ok(TransactionSendResult {
            half,
            local_state,
            committed,
            end_error,
        })
    }

    /// Commits (`commit`) or rolls back the transaction of `half` (a result of
    /// [`TransactionProducer::send_in_transaction`]) by hand, e.g. after its `end_error`:
    /// retried like a send. `Ok(None)` also when the transaction was already decided (by a
    /// check, or an earlier call) — whichever way it went.
    ///
    /// ```no_run
    /// # async fn demo(p: raftmq_client::TransactionProducer) -> Result<(), raftmq_client::ClientError> {
    /// let r = p.send_in_transaction(raftmq_client::Message::new("T", "x"), &()).await?;
    /// if r.end_error.is_some() {
    ///     p.end_transaction(&r.half, true).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn end_transaction(
        &self,
        half: &SendResult,
        commit: bool,
    ) -> Result<Option<SendResult>, ClientError> {
        self.inner.producer.check_started()?;
        let d = if commit {
            TransactionDecision::Commit
        } else {
            TransactionDecision::Rollback
        };
        self.end(half, d).await
    }

    /// Sends `decision` for `half` to its group's leader, with a send's retries.
    async fn end(
        &self,
        half: &SendResult,
        decision: TransactionDecision,
    ) -> Result<Option<SendResult>, ClientError> {
        let p = &self.inner.producer;
        let req = &EndTransactionRequest {
            msg_id: half.msg_id.clone(),
            offset_msg_id: half.offset_msg_id.clone(),
            ..end_request(p, decision, false)
        };
        let group = half.queue.group.as_str();
        let one_try = move |route: Arc<Route>, _avoid, deadline| async move {
            let call = move |c| call_end(c, req.clone());
            let r = match leader_in(&route.leaders, group) {
                Ok(addr) => p.follow_hints(addr, deadline, call).await,
                Err(e) => Err(e),
            };
            (group.to_string(), r)
        };
        let r = p.with_retries(&half.queue.topic, false, one_try).await;
        Ok(end_answer(decision, r)?.map(|c| SendResult {
            msg_id: c.msg_id,
            offset_msg_id: c.offset_msg_id,
            queue: MessageQueue::new(&half.queue.topic, group, c.queue_id),
            queue_offset: c.queue_offset,
            recall_handle: None,
            deliver_at_ms: None,
        }))
    }
}

/// An `EndTransaction` request of `producer`'s group, without the half message's ids.
fn end_request(
    producer: &Producer,
    decision: TransactionDecision,
    from_check: bool,
) -> EndTransactionRequest {
    EndTransactionRequest {
        producer_group: producer.group().to_string(),
        decision: decision as i32,
        from_check,
        ..EndTransactionRequest::default()
    }
}

/// One `EndTransaction` call.
async fn call_end(
    mut c: MessagingClient<Channel>,
    req: EndTransactionRequest,
) -> Result<tonic::Response<EndTransactionResponse>, tonic::Status> {
    c.end_transaction(req).await
}

/// Answers one check: the listener's `check_local`, then `EndTransaction(from_check)` to the
/// replica that asked (following `NOT_LEADER`), once. Nothing is sent for `Unknown`; a failure
/// is logged: the broker asks again either way.
async fn answer_check(producer: Producer, listener: Arc<dyn TransactionListener>, from: CheckFrom) {
    let CheckFrom { group, addr, check } = from;
    if check.producer_group != producer.group() {
        tracing::warn!(%group, asked = %check.producer_group, "a check for another producer group; ignored");
        return;
    }
    let Some(stored) = check.message else {
        tracing::warn!(%group, "a check without its message; ignored");
        return;
    };
    let holder = if stored.group.is_empty() {
        group
    } else {
        stored.group.clone()
    };
    let topic = stored
        .message
        .as_ref()
        .map(|m| m.topic.clone())
        .unwrap_or_default();
    let queue = MessageQueue::new(&topic, &holder, stored.queue_id);
    let offset_msg_id = stored.offset_msg_id.clone();
    let Some(msg) = to_received(queue, stored) else {
        tracing::warn!(group = %holder, "a check without its message; ignored");
        return;
    };
    let ran = run_listener(|| listener.check_local(&msg));
    if let ListenerRan::Panicked(panic) = &ran {
        tracing::warn!(msg_id = %msg.msg_id, %panic, "check_local panicked: counted as Unknown");
    }
    let Some(d) = decision(effective_state(&ran, Duration::ZERO, None)) else {
        tracing::debug!(msg_id = %msg.msg_id, n = check.check_number, "check answered Unknown");
        return;
    };
    let req = EndTransactionRequest {
        msg_id: msg.msg_id.clone(),
        offset_msg_id,
        ..end_request(&producer, d, true)
    };
    let call = move |c| call_end(c, req.clone());
    let r = producer
        .follow_hints(addr, producer.deadline(), call)
        .await
        .map_err(Failure::into_error);
    if let Err(e) = end_answer(d, r) {
        tracing::debug!(msg_id = %msg.msg_id, error = %e, "check answer not delivered; asked again");
    }
}

/// Runs a listener method; a panic is caught (and reported, with its message) rather than
/// unwinding into the producer.
fn run_listener(f: impl FnOnce() -> LocalTransactionState) -> ListenerRan {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(state) => ListenerRan::Answered(state),
        Err(payload) => ListenerRan::Panicked(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LocalTransactionState::{Commit, Rollback};

    #[test]
    fn a_panicking_listener_is_caught() {
        assert_eq!(run_listener(|| Commit), ListenerRan::Answered(Commit));
        assert_eq!(
            run_listener(|| panic!("boom")),
            ListenerRan::Panicked("boom".into())
        );
        let n = 7;
        assert_eq!(
            run_listener(|| panic!("boom {n}")),
            ListenerRan::Panicked("boom 7".into())
        );
        assert_eq!(
            run_listener(|| std::panic::panic_any(42u8)),
            ListenerRan::Panicked("a panic without a message".into())
        );
    }

    fn builder() -> TransactionProducerBuilder {
        TransactionProducer::builder()
            .namesrv_addrs(["127.0.0.1:1"])
            .group("P")
            .listener(fn_listener(|_, _| Commit, |_| Rollback))
    }

    #[test]
    fn settings_are_checked() {
        assert!(builder().build().is_ok());
        assert!(builder().group("").build().is_err());
        let Err(ClientError::InvalidArgument(m)) = builder().max_checks_in_flight(2000).build()
        else {
            panic!("too many checks");
        };
        assert!(m.contains("2000"), "the error carries the number: {m}");
        assert!(
            builder()
                .local_transaction_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(builder().send_timeout(Duration::ZERO).build().is_err());
    }

    #[tokio::test]
    async fn sends_need_start_and_a_shut_down_producer_stays_down() {
        let p = builder().build().expect("valid");
        let Err(ClientError::State(_)) = p.send_in_transaction(Message::new("T", "x"), &()).await
        else {
            panic!("not started");
        };
        p.start().await.expect("no topics to look up");
        p.shutdown().await;
        assert!(matches!(p.start().await, Err(ClientError::State(_))));
    }
}
