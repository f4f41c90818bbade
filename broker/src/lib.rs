//! raftmq-broker: one replica of one broker group.
//!
//! Will hold the `Messaging` and `Admin` gRPC services and the managers behind them (topics,
//! consumer offsets, long-poll holds, queue locks). Empty until the broker issue lands.
