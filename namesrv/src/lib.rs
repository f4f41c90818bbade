//! raftmq-namesrv: the route registry.
//!
//! Stateless in the RocketMQ sense: everything it knows comes from broker registrations and is
//! forgotten when a broker stops registering. Brokers register with **every** namesrv on
//! start, every [`REGISTER_EVERY_MS`] and at once on a role change; the namesrv drops a replica
//! not heard from for [`EXPIRE_MS`] (checked every [`SCAN_EVERY_MS`], and on every read).
//! Namesrvs never talk to each other.
//!
//! - [`registry`]: the registry as a plain struct (register, scan, route) — no I/O;
//! - [`service`]: the `NameServer` gRPC service over it, and the scan task.

pub mod registry;
pub mod service;

/// How often a broker registers.
pub const REGISTER_EVERY_MS: u64 = 30_000;
/// How often the namesrv drops silent replicas.
pub const SCAN_EVERY_MS: u64 = 10_000;
/// A replica not heard from this long is dropped.
pub const EXPIRE_MS: u64 = 120_000;

pub use registry::Registry;
pub use service::{NameServerService, NamesrvHandle};
