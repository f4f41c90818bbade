//! raftmq-broker: one replica of one broker group.
//!
//! - [`config`]: the TOML configuration, documented and validated;
//! - [`broker`]: start a replica, serve Messaging + Admin + Raft on one port, form the group,
//!   register with every name server (on start, every 30 s, at once on a role change);
//! - [`messaging`]: send, pull with long polling, offsets, heartbeats, queue locks, lookups;
//! - [`admin`]: topics, stats, consumer progress, Raft status, leader transfer, membership;
//! - [`clients`]: heartbeats and queue locks (per replica, not replicated);
//! - [`convert`]: wire ↔ store, `offsetMsgId`, error statuses.
//!
//! Writes (sends, offset commits, topic changes) go through Raft and only the leader takes
//! them; a follower answers `NOT_LEADER` with the leader's address, or `UNAVAILABLE` while no
//! leader is known or the new leader's lease is not yet established (both are retriable).

pub mod admin;
pub mod broker;
pub mod clients;
pub mod config;
pub mod convert;
pub mod messaging;

pub use broker::{Broker, BrokerError};
pub use config::BrokerConfig;
