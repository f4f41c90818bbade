//! The lite pull consumer: the application drives it with `poll`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use std::time::Duration;
//! use raftmq_client::PullConsumer;
//!
//! let c = PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("reports").build()?;
//! c.start().await?;
//! c.subscribe("Orders", "*").await?;
//! loop {
//!     let batch = c.poll(Duration::from_secs(1)).await?;
//!     if batch.is_empty() { break; }
//!     for m in &batch { println!("{}", m.msg_id); }
//!     c.commit().await?;
//! }
//! c.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! `subscribe` takes every readable queue of the topic for this consumer (it does not share
//! queues with other members: use [`crate::PushConsumer`] for that, or `assign` disjoint
//! queues); `assign` takes exactly the queues given. Positions start at the group's committed
//! offsets (else per `consume_from`), move as `poll` returns messages, and are committed to the
//! brokers by `commit` (and at `shutdown`); `seek` moves one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use raftmq_proto::limits::check_name;
use raftmq_proto::v1::PullRequest;
use raftmq_types::QueueOffset;
use tokio::time::Instant;

use crate::consumer::ReceivedMessage;
use crate::consumer::calls::{code, commit_remote, received, start_committed, wanted_tags};
use crate::error::ClientError;
use crate::options::{ClientOptions, ConsumeOptions, client_setters, consume_setters};
use crate::policy::offsets::{Patience, PullAnswer, PullStep, advance, after_pull};
use crate::rebalance::MessageQueue;
use crate::route::Routes;
use crate::sync::lock;

/// Builds a [`PullConsumer`].
///
/// ```
/// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build();
/// assert!(c.is_ok());
/// assert!(raftmq_client::PullConsumer::builder().group("G").build().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PullConsumerBuilder {
    opts: ClientOptions,
    consume: ConsumeOptions,
}

impl PullConsumerBuilder {
    client_setters!(
        "consumer",
        "raftmq_client::PullConsumer::builder().group(\"G\")"
    );
    consume_setters!(
        "raftmq_client::PullConsumer::builder().namesrv_addrs([\"a:1\"]).group(\"G\")"
    );

    /// Checks the settings.
    ///
    /// ```
    /// assert!(raftmq_client::PullConsumer::builder().namesrv_addrs(["a:1"]).group("G").build().is_ok());
    /// ```
    pub fn build(self) -> Result<PullConsumer, ClientError> {
        self.opts.validate("consumer")?;
        self.consume.validate()?;
        Ok(PullConsumer {
            routes: self.opts.routes(),
            cfg: self,
            running: AtomicBool::new(false),
            queues: Mutex::default(),
            next: AtomicUsize::new(0),
        })
    }
}

#[derive(Debug, Clone)]
struct Assigned {
    position: QueueOffset,
    tags: Option<BTreeSet<String>>,
    expression: String,
}

/// A lite pull consumer; see the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), raftmq_client::ClientError> {
/// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
/// c.start().await?;
/// c.subscribe("T", "*").await?;
/// # Ok(()) }
/// ```
pub struct PullConsumer {
    cfg: PullConsumerBuilder,
    routes: Routes,
    running: AtomicBool,
    /// Assigned queues and their positions; a mutex held only to read or edit the map.
    queues: Mutex<BTreeMap<MessageQueue, Assigned>>,
    /// Round-robin start for `poll`.
    next: AtomicUsize,
}

impl PullConsumer {
    /// A builder with the defaults.
    ///
    /// ```
    /// let _b = raftmq_client::PullConsumer::builder();
    /// ```
    pub fn builder() -> PullConsumerBuilder {
        PullConsumerBuilder {
            opts: ClientOptions::default(),
            consume: ConsumeOptions::default(),
        }
    }

    /// Starts the consumer.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), ClientError> {
        self.running.store(true, Ordering::Release);
        Ok(())
    }

    fn check(&self) -> Result<(), ClientError> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ClientError::State(
                "pull consumer not started (or shut down)",
            ))
        }
    }

    /// Takes every readable queue of `topic`, filtered by a tag expression.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.subscribe("Orders", "Paid || Shipped").await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, topic: &str, expression: &str) -> Result<(), ClientError> {
        self.check()?;
        check_name("topic", topic).map_err(|e| ClientError::InvalidArgument(e.message))?;
        let route = self.routes.route(topic, true).await?;
        let queues: Vec<MessageQueue> = route
            .read_queues
            .iter()
            .map(|(g, q)| MessageQueue::new(topic, g, *q))
            .collect();
        self.add(queues, expression).await
    }

    /// Takes exactly these queues (all of them; no tag filter).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.assign(vec![raftmq_client::rebalance::MessageQueue::new("T", "g1", 0)]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn assign(&self, queues: Vec<MessageQueue>) -> Result<(), ClientError> {
        self.check()?;
        lock(&self.queues).clear();
        self.add(queues, "*").await
    }

    async fn add(&self, queues: Vec<MessageQueue>, expression: &str) -> Result<(), ClientError> {
        for q in queues {
            let start = start_committed(
                &self.routes,
                &self.cfg.opts.group,
                self.cfg.consume.from,
                &q,
            )
            .await
            .map_err(|e| ClientError::Unavailable(format!("no start offset for {q:?}: {e}")))?;
            lock(&self.queues).insert(
                q,
                Assigned {
                    position: start,
                    tags: wanted_tags(expression),
                    expression: expression.to_string(),
                },
            );
        }
        Ok(())
    }

    /// The queues taken.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.subscribe("T", "*").await?;
    /// println!("{} queues", c.assignment().len());
    /// # Ok(()) }
    /// ```
    pub fn assignment(&self) -> Vec<MessageQueue> {
        lock(&self.queues).keys().cloned().collect()
    }

    /// The next offset `poll` reads from `queue`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// let q = raftmq_client::rebalance::MessageQueue::new("T", "g1", 0);
    /// c.assign(vec![q.clone()]).await?;
    /// println!("next offset {:?}", c.position(&q));
    /// # Ok(()) }
    /// ```
    pub fn position(&self, queue: &MessageQueue) -> Option<u64> {
        lock(&self.queues).get(queue).map(|a| a.position.0)
    }

    /// Moves `queue`'s position, back if asked (the next `commit` records it): the one way a
    /// lite pull consumer's offset moves back.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// let q = raftmq_client::rebalance::MessageQueue::new("T", "g1", 0);
    /// c.assign(vec![q.clone()]).await?;
    /// c.seek(&q, 0)?; // replay from the start
    /// # Ok(()) }
    /// ```
    pub fn seek(&self, queue: &MessageQueue, offset: u64) -> Result<(), ClientError> {
        match lock(&self.queues).get_mut(queue) {
            Some(a) => {
                a.position = QueueOffset(offset);
                Ok(())
            }
            None => Err(ClientError::InvalidArgument(format!(
                "{queue:?} is not assigned"
            ))),
        }
    }

    /// Messages from the assigned queues, waiting up to `timeout` for some. Positions move
    /// past what is returned.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.subscribe("T", "*").await?;
    /// let batch = c.poll(std::time::Duration::from_secs(1)).await?;
    /// println!("{} messages", batch.len());
    /// # Ok(()) }
    /// ```
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ReceivedMessage>, ClientError> {
        self.check()?;
        let deadline = Instant::now() + timeout;
        loop {
            let queues: Vec<(MessageQueue, Assigned)> = lock(&self.queues)
                .iter()
                .map(|(q, a)| (q.clone(), a.clone()))
                .collect();
            if queues.is_empty() {
                return Err(ClientError::InvalidArgument(
                    "nothing subscribed or assigned".into(),
                ));
            }
            let n = queues.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let (q, a) = &queues[(start + i) % n];
                let got = self.pull_once(q, a).await;
                if let Some(msgs) = got
                    && !msgs.is_empty()
                {
                    return Ok(msgs);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// One pull from `q`; moves its position (see [`after_pull`]: a lagging replica never
    /// moves it back, and there is no limit to waiting for one — the application may `seek`).
    /// `None` when the broker could not be reached or refused.
    async fn pull_once(&self, q: &MessageQueue, a: &Assigned) -> Option<Vec<ReceivedMessage>> {
        let addr = self.routes.leader_of(&q.topic, &q.group).await?;
        let req = PullRequest {
            consumer_group: self.cfg.opts.group.clone(),
            topic: q.topic.clone(),
            queue_id: q.queue_id,
            offset: a.position.0,
            max_messages: self.cfg.consume.pull_batch_size,
            max_bytes: 0,
            subscription: a.expression.clone(),
            long_poll_ms: 0,
        };
        let resp = self
            .routes
            .call(&addr, |mut c| async move { c.pull(req).await })
            .await;
        let Ok(resp) = resp else {
            let _ = self.routes.route(&q.topic, true).await;
            return None;
        };
        let answer = PullAnswer {
            code: code(&resp.status),
            requested: a.position,
            min: QueueOffset(resp.min_offset),
            max: QueueOffset(resp.max_offset),
            next: QueueOffset(resp.next_offset),
        };
        let next = match after_pull(&answer, Patience::Forever) {
            PullStep::Deliver { next } => next,
            PullStep::MoveUp(first) => first,
            PullStep::RestartAtEnd(end) => end,
            PullStep::WaitForReplica => {
                let _ = self.routes.route(&q.topic, true).await;
                a.position
            }
            PullStep::Retry => {
                let _ = self.routes.route(&q.topic, true).await;
                return None;
            }
        };
        let msgs = received(q, resp.messages, a.tags.as_ref());
        self.move_position(q, a.position, next);
        Some(msgs)
    }

    /// Moves `q` from `from` to `to` — unless a `seek` moved it meanwhile, or `to` is behind
    /// (a broker's answer never moves a position back).
    fn move_position(&self, q: &MessageQueue, from: QueueOffset, to: QueueOffset) {
        let to = match advance(from, to) {
            Ok(to) => to,
            Err(e) => {
                tracing::warn!(queue = ?q, error = %e, "position not moved");
                return;
            }
        };
        if let Some(cur) = lock(&self.queues).get_mut(q)
            && cur.position == from
        {
            cur.position = to;
        }
    }

    /// Commits every queue's position to the brokers.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.subscribe("T", "*").await?;
    /// let _ = c.poll(std::time::Duration::from_secs(1)).await?;
    /// c.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.check()?;
        let progress: BTreeMap<MessageQueue, QueueOffset> = lock(&self.queues)
            .iter()
            .map(|(q, a)| (q.clone(), a.position))
            .collect();
        if commit_remote(&self.routes, &self.cfg.opts.group, progress).await {
            Ok(())
        } else {
            Err(ClientError::Unavailable(
                "some offsets were not committed".into(),
            ))
        }
    }

    /// Commits and stops.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), raftmq_client::ClientError> {
    /// let c = raftmq_client::PullConsumer::builder().namesrv_addrs(["127.0.0.1:9876"]).group("G").build()?;
    /// c.start().await?;
    /// c.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        if self.running.load(Ordering::Acquire) {
            let _ = self.commit().await;
        }
        self.running.store(false, Ordering::Release);
    }
}
