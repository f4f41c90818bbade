//! raftmq-proto: the wire contract of raftmq (`raftmq.v1`).
//!
//! The `.proto` files under `proto/` are the source of truth; this crate compiles them at build
//! time (protox + madsim-tonic-build, no system `protoc`) and re-exports the generated types.
//! Services: `NameServer` (route registry), `Messaging` (producers and consumers), `Admin`
//! (operating a broker group); Raft's own service is internal (`raft::v1`). [`limits`] holds
//! the limits every server checks before anything is stored, shared with the client.

#![allow(clippy::all)]

/// Generated from `raftmq/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

/// Generated from `raftmq/raft/v1/raft.proto`: Raft's internal service between replicas.
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("raftmq.raft.v1");
    }
}

/// Generated from the vendored `apache/rocketmq/v2/*.proto` (apache/rocketmq-apis v2.1.2,
/// Apache-2.0; see NOTICE): the API of the official RocketMQ 5 clients.
pub mod rocketmq {
    pub mod v2 {
        tonic::include_proto!("apache.rocketmq.v2");
    }
}

pub use v1::ErrorCode;

pub mod limits;

#[cfg(test)]
mod tests {
    use super::*;

    /// Error codes are part of the wire contract: their numbers must never change.
    #[test]
    fn error_codes_are_stable() {
        assert_eq!(ErrorCode::Ok as i32, 0);
        assert_eq!(ErrorCode::Internal as i32, 1);
        assert_eq!(ErrorCode::InvalidArgument as i32, 2);
        assert_eq!(ErrorCode::NotLeader as i32, 3);
        assert_eq!(ErrorCode::TopicNotFound as i32, 4);
        assert_eq!(ErrorCode::NoPermission as i32, 5);
        assert_eq!(ErrorCode::MessageTooLarge as i32, 6);
        assert_eq!(ErrorCode::OffsetOutOfRange as i32, 7);
        assert_eq!(ErrorCode::StoreCorrupted as i32, 8);
        assert_eq!(ErrorCode::Unavailable as i32, 9);
        assert_eq!(ErrorCode::LockHeld as i32, 10);
        assert_eq!(ErrorCode::TopicExists as i32, 11);
        assert_eq!(ErrorCode::TxnAlreadyDecided as i32, 12);
        assert_eq!(ErrorCode::TxnNotFound as i32, 13);
        assert_eq!(ErrorCode::TxnGroupMismatch as i32, 14);
        assert_eq!(ErrorCode::TxnDecidedOtherwise as i32, 15);
    }

    #[test]
    fn status_round_trips_through_protobuf() {
        use prost::Message;
        let s = v1::Status {
            code: ErrorCode::NotLeader as i32,
            message: "not the leader".into(),
            leader_addr: "127.0.0.1:9876".into(),
        };
        let bytes = s.encode_to_vec();
        let back = v1::Status::decode(bytes.as_slice()).expect("valid encoding");
        assert_eq!(back, s);
    }
}
