//! raftmq-client: the client SDK.
//!
//! Depends on `raftmq-proto` (the wire) and `raftmq-types` (the shared number types) only; the
//! broker and name server are test dependencies.
//! - [`Producer`]: sync, async, oneway, batch and ordered sends with route caching, fault
//!   avoidance, retries and `NOT_LEADER` redirection;
//! - [`PushConsumer`]: subscriptions, concurrent or orderly listeners, clustering or
//!   broadcasting, rebalance, long-polling pulls, offsets (brokers or a local file);
//! - [`PullConsumer`]: lite pull — subscribe or assign, `poll`, `commit`, `seek`;
//! - [`TransactionProducer`]: transactional messages — a half message, the local transaction,
//!   then commit or rollback, and answers to the brokers' checks ([`transaction`]);
//! - [`rebalance`]: how a clustering consumer group shares a topic's queues (average,
//!   average-by-circle, consistent hash, manual) — pure functions;
//! - [`msg_id`]: client-made unique message ids.
//!
//! Inside: `policy` holds the protocol rules as pure, unit-tested functions (offsets, the
//! producer's retries and fault avoidance, the member-list rule, client channel reconnection,
//! transaction outcomes); `options` the settings every builder shares; `route` the routes and
//! connections; `channel` the client channels (the streams brokers call clients on: transaction
//! checks); `offsets` the broadcasting offset file; `sync` the one lock helper. Not built yet:
//! the admin client (docs/client.md).
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! let producer = raftmq_client::Producer::builder()
//!     .namesrv_addrs(["127.0.0.1:9876"])
//!     .group("my-producers")
//!     .build()?;
//! producer.start().await?;
//! producer.send(raftmq_client::Message::new("Demo", "hello")).await?;
//! # Ok(()) }
//! ```

pub(crate) mod channel;
pub mod coalesce;
pub mod consumer;
pub mod error;
pub mod message;
pub mod msg_id;
pub(crate) mod offsets;
pub(crate) mod options;
pub(crate) mod policy;
pub mod pop;
pub mod producer;
pub mod pull_consumer;
pub mod rebalance;
pub(crate) mod route;
pub(crate) mod sync;
pub mod transaction;

pub use consumer::{ConsumeResult, PushConsumer, ReceivedMessage};
pub use error::ClientError;
pub use message::Message;
pub use producer::{Producer, ProducerBuilder, SendResult};
pub use pull_consumer::PullConsumer;
pub use transaction::{
    LocalTransactionState, TransactionListener, TransactionProducer, TransactionProducerBuilder,
    TransactionSendResult,
};
