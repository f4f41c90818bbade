//! raftmq-client: the client SDK (producers, push and pull consumers, admin).
//!
//! Depends on `raftmq-proto` only. Built so far (the client issue is in progress):
//! - [`rebalance`]: how a clustering consumer group shares a topic's queues (average,
//!   average-by-circle, consistent hash, manual) — pure functions;
//! - [`msg_id`]: client-made unique message ids.

pub mod msg_id;
pub mod rebalance;
