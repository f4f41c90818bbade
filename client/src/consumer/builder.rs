//! The push consumer's builder: subscriptions, the listener, and every setting, checked by
//! [`PushConsumerBuilder::build`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::limits::check_name;
use tokio::sync::Semaphore;

use super::listener::Listener;
use super::{ConsumeResult, Inner, MessageModel, PushConsumer, ReceivedMessage};
use crate::error::ClientError;
use crate::offsets::LocalOffsets;
use crate::options::{ClientOptions, ConsumeOptions, client_setters, consume_setters};
use crate::rebalance::Strategy;

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
    pub(super) opts: ClientOptions,
    pub(super) consume: ConsumeOptions,
    pub(super) subscriptions: BTreeMap<String, String>,
    pub(super) listener: Option<Listener>,
    pub(super) model: MessageModel,
    pub(super) strategy: Strategy,
    pub(super) consume_threads: usize,
    pub(super) batch_size: usize,
    pub(super) pull_max_bytes: u32,
    pub(super) long_poll: Duration,
    pub(super) offset_file: Option<PathBuf>,
    pub(super) client_id: Option<String>,
    pub(super) heartbeat_every: Duration,
    pub(super) max_reconsume_times: u32,
    pub(super) consume_timeout: Duration,
}

impl PushConsumerBuilder {
    client_setters!(
        "consumer",
        "raftmq_client::PushConsumer::builder().group(\"G\").subscribe(\"T\", \"*\").concurrent(|_| raftmq_client::ConsumeResult::Success)"
    );
    consume_setters!(
        "raftmq_client::PushConsumer::builder().namesrv_addrs([\"x:1\"]).group(\"G\").subscribe(\"T\", \"*\").concurrent(|_| raftmq_client::ConsumeResult::Success)"
    );

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

    /// How often the member heartbeats every group's leader (default
    /// [`HEARTBEAT_EVERY`](super::HEARTBEAT_EVERY)). Brokers drop a member silent for their
    /// `client_expire_ms` (default 30 s), which is how soon a crashed member's queues go to the
    /// others: keep it several heartbeats long.
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
    /// Failed deliveries after which a message goes to the group's DLQ (0, the default: the
    /// group's replicated config, else the broker's default of 16).
    ///
    /// ```
    /// let b = raftmq_client::PushConsumer::builder().max_reconsume_times(3);
    /// ```
    pub fn max_reconsume_times(mut self, n: u32) -> Self {
        self.max_reconsume_times = n;
        self
    }

    /// How long a listener call may run before the batch counts as failed (default
    /// [`super::CONSUME_TIMEOUT`], 15 minutes).
    ///
    /// ```
    /// let b = raftmq_client::PushConsumer::builder().consume_timeout(std::time::Duration::from_secs(60));
    /// ```
    pub fn consume_timeout(mut self, d: std::time::Duration) -> Self {
        self.consume_timeout = d;
        self
    }

    pub fn build(self) -> Result<PushConsumer, ClientError> {
        let bad = |m: String| Err(ClientError::InvalidArgument(m));
        self.opts.validate("consumer")?;
        self.consume.validate()?;
        if self.subscriptions.is_empty() {
            return bad("subscribe to at least one topic".into());
        }
        for t in self.subscriptions.keys() {
            check_name("topic", t).map_err(|e| ClientError::InvalidArgument(e.message))?;
        }
        if self.consume_timeout.is_zero() {
            return bad("consume_timeout must be positive".into());
        }
        let Some(listener) = self.listener.clone() else {
            return bad("a listener (concurrent or orderly) is required".into());
        };
        if self.consume_threads == 0 || self.batch_size == 0 {
            return bad(format!(
                "consume_threads ({}) and batch_size ({}) must be at least 1",
                self.consume_threads, self.batch_size
            ));
        }
        if self.heartbeat_every.is_zero() {
            return bad("heartbeat_every must be positive".into());
        }
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(crate::options::default_client_id);
        let offset_file = self.offset_file.clone().unwrap_or_else(|| {
            PathBuf::from("raftmq-offsets").join(format!("{}@{client_id}", self.opts.group))
        });
        // Concurrent members of a clustering group consume the group's retry topic too
        // (unless the application subscribed to it itself).
        let retry_topic = (!listener.is_orderly() && self.model == MessageModel::Clustering)
            .then(|| super::retry_topic(&self.opts.group))
            .filter(|r| !self.subscriptions.contains_key(r));
        Ok(PushConsumer {
            inner: Arc::new(Inner {
                retry_topic,
                retry_routed: AtomicBool::new(false),
                retry_wanted: AtomicBool::new(false),
                broker_max: AtomicU32::new(0),
                routes: self.opts.routes(),
                listener_calls: Semaphore::new(self.consume_threads),
                local: LocalOffsets::new(offset_file),
                client_id,
                listener,
                cfg: self,
                running: AtomicBool::new(false),
                state: Mutex::default(),
            }),
        })
    }
}
