//! The message a producer sends.

use std::collections::BTreeMap;

/// A message to send: a topic, a body, and optionally one tag, keys and user properties.
///
/// ```
/// use raftmq_client::Message;
///
/// let m = Message::new("Orders", b"order 42".to_vec())
///     .with_tags("Paid")
///     .with_keys(["order-42"])
///     .with_property("region", "eu");
/// assert_eq!(m.topic(), "Orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) body: Vec<u8>,
    pub(crate) tags: String,
    pub(crate) keys: Vec<String>,
    pub(crate) properties: BTreeMap<String, String>,
    /// The message id to send under (else the producer makes one).
    pub(crate) msg_id: Option<String>,
}

impl Message {
    /// A message of `topic` carrying `body`.
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "hello");
    /// assert_eq!(m.body(), b"hello");
    /// ```
    pub fn new(topic: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            body: body.into(),
            tags: String::new(),
            keys: Vec::new(),
            properties: BTreeMap::new(),
            msg_id: None,
        }
    }

    /// Sends it under `id` instead of an id the producer makes: a gateway relaying a client's
    /// own message id (RocketMQ 5 clients make theirs). Ids should be unique; the broker does
    /// not check.
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_msg_id("0102FC");
    /// assert_eq!(m.msg_id(), Some("0102FC"));
    /// ```
    pub fn with_msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// The id set with [`Message::with_msg_id`], if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.msg_id.as_deref()
    }

    /// Sets the tag (consumers filter on it: `TagA || TagB`).
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_tags("TagA");
    /// assert_eq!(m.tags(), "TagA");
    /// ```
    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = tags.into();
        self
    }

    /// Sets the business keys (indexed by the broker for queries by key).
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_keys(["k1", "k2"]);
    /// assert_eq!(m.keys(), ["k1", "k2"]);
    /// ```
    pub fn with_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a user property.
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_property("a", "1");
    /// assert_eq!(m.property("a"), Some("1"));
    /// ```
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Delivers the message after delay level `level` (1-based; the broker's levels, by
    /// default 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h). An unknown level
    /// is refused with `DELAY_OUT_OF_RANGE`.
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_delay_level(3);
    /// assert_eq!(m.property("DELAY"), Some("3"));
    /// ```
    pub fn with_delay_level(self, level: u32) -> Self {
        self.with_property("DELAY", level.to_string())
    }

    /// Delivers the message `delay` after the broker receives it (precision: the broker's
    /// scheduler interval, 100 ms by default; at most its maximum delay, 3 days by default).
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x")
    ///     .with_delay(std::time::Duration::from_secs(90));
    /// assert_eq!(m.property("TIMER_DELAY_MS"), Some("90000"));
    /// ```
    pub fn with_delay(self, delay: std::time::Duration) -> Self {
        self.with_property("TIMER_DELAY_MS", delay.as_millis().to_string())
    }

    /// Delivers the message at `at_ms` (ms since the epoch, by the broker's clock); a time
    /// already past delivers it at once.
    ///
    /// ```
    /// let m = raftmq_client::Message::new("T", "x").with_deliver_at_ms(1_900_000_000_000);
    /// assert_eq!(m.property("TIMER_DELIVER_MS"), Some("1900000000000"));
    /// ```
    pub fn with_deliver_at_ms(self, at_ms: u64) -> Self {
        self.with_property("TIMER_DELIVER_MS", at_ms.to_string())
    }

    /// The topic.
    ///
    /// ```
    /// assert_eq!(raftmq_client::Message::new("T", "x").topic(), "T");
    /// ```
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The body.
    ///
    /// ```
    /// assert_eq!(raftmq_client::Message::new("T", "x").body(), b"x");
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The tag (empty: none).
    ///
    /// ```
    /// assert_eq!(raftmq_client::Message::new("T", "x").tags(), "");
    /// ```
    pub fn tags(&self) -> &str {
        &self.tags
    }

    /// The keys.
    ///
    /// ```
    /// assert!(raftmq_client::Message::new("T", "x").keys().is_empty());
    /// ```
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// A user property.
    ///
    /// ```
    /// assert_eq!(raftmq_client::Message::new("T", "x").property("a"), None);
    /// ```
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The wire form with a client-made id.
    pub(crate) fn to_wire(
        &self,
        msg_id: String,
        queue_id: u32,
        born_host: &str,
    ) -> raftmq_proto::v1::Message {
        raftmq_proto::v1::Message {
            topic: self.topic.clone(),
            queue_id: Some(queue_id),
            tags: self.tags.clone(),
            keys: self.keys.clone(),
            properties: self.properties.clone().into_iter().collect(),
            flag: 0,
            body: self.body.clone(),
            born_timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            born_host: born_host.to_string(),
            msg_id,
            reconsume_times: 0,
        }
    }
}
