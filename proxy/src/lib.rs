//! raftmq proxy: the `apache.rocketmq.v2.MessagingService` API that the official RocketMQ 5
//! clients speak (Java, Python, Node.js, Go, C#, C++, Rust), served as a gateway in front of
//! raftmq broker groups. It holds only client sessions (settings, Telemetry streams) and
//! forwards to each group's leader over `raftmq.v1` through the SDK, which follows
//! `NOT_LEADER`: a leader failover is invisible to RocketMQ 5 clients.
//!
//! Served: QueryRoute, Heartbeat, Telemetry (settings merged with the server's values and
//! echoed with status OK), SendMessage (NORMAL, FIFO by message group, DELAY by delivery
//! time, TRANSACTION as a half message), EndTransaction (and the broker's check relayed to a
//! client over Telemetry), RecallMessage, NotifyClientTermination, and POP consumption —
//! QueryAssignment, ReceiveMessage, AckMessage, ChangeInvisibleDuration,
//! ForwardMessageToDeadLetterQueue — whose state is in each broker group's Raft log. The
//! others answer gRPC `UNIMPLEMENTED`.
//! See `docs/rocketmq5.md`.

pub mod codes;
pub mod receive;
pub mod renew;
pub mod routes;
pub mod send;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod txn;

pub use service::{Gateway, ProxyConfig};
