//! raftmq-broker: one replica of one broker group.
//!
//! - [`config`]: the TOML configuration, documented and validated;
//! - [`broker`]: start a replica, serve Messaging + Admin + Raft on one port, form the group,
//!   register with every name server (on start, every 30 s, at once on a role change);
//! - [`managers`]: one module per capability, each owning its state and operations (topics,
//!   messages, long polling, consumer offsets, consumer groups and queue locks), and the
//!   place where the next ones go (transactions, timers, retry/DLQ, POP);
//! - [`services`]: the gRPC services, thin shells over the managers;
//! - [`error`]: [`Refusal`], the typed reason a request was refused, mapped to a wire error
//!   code in one place;
//! - [`convert`]: wire ↔ store, `offsetMsgId`.
//!
//! Dependencies inside the crate point one way: `broker` → `services` → `managers` →
//! `error`/`convert`; `shared` holds what services share (config, replica, managers).
//!
//! Writes (sends, offset commits, topic changes) go through Raft and only the leader takes
//! them; a follower answers `NOT_LEADER` with the leader's address, or `UNAVAILABLE` while no
//! leader is known or the new leader's lease is not yet established (both are retriable).

pub mod broker;
pub mod config;
pub mod convert;
pub mod error;
pub mod managers;
pub mod process;
pub mod services;
mod shared;

pub use broker::{Broker, BrokerError};
pub use config::BrokerConfig;
pub use error::Refusal;
