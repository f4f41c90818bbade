//! raftmq-client: the client SDK (producers, push and pull consumers, admin).
//!
//! Depends on `raftmq-proto` only. Empty until the client issue lands.
