//! raftmq-raft: openraft 0.10 over the raftmq store. The CommitLog **is** the Raft log:
//! an entry is written once, as a CommitLog record, and everything else (Raft index,
//! ConsumeQueues, IndexFile, metadata) is derived from it.
//!
//! - [`types`]: the `TypeConfig`, the replicated [`types::Command`]s, entry ↔ record;
//! - [`log_store`]: `RaftLogStorage`/`RaftLogReader` over the store (durability contract);
//! - [`state_machine`]: apply (queue offsets in log order), snapshots;
//! - [`txn_apply`]: what apply does with transactions (half messages, decisions, checks);
//! - [`network`]: the tonic `RaftService`, client and server;
//! - [`rt`]: the `AsyncRuntime` on the workspace tokio (real or madsim);
//! - [`replica`]: one replica: start, group-commit writer, membership.

#[cfg(all(test, not(madsim)))]
mod fuzz_tests;
pub mod inspect;
mod keys;
pub mod log_store;
pub mod mutations;
pub mod network;
pub mod pop_apply;
pub mod repair;
pub mod replica;
pub mod rt;
pub mod state_machine;
pub mod timer_apply;
pub mod txn_apply;
pub mod types;

/// The generated `RaftService` types.
pub use raftmq_proto::raft::v1 as proto;

pub use log_store::ReplicaStore;
pub use mutations::Mutations;
pub use replica::{
    BatchLimits, RaftTimeouts, Replica, ReplicaConfig, RetentionOutcome, StartError, WriteError,
};
pub use types::{
    AssignedOffset, Command, CommandResult, GroupSpec, MetaCommand, NodeId, PopClaimed, PopOutcome,
    TimerOutcome, TxnOutcome, TypeConfig,
};

/// The openraft handle of one replica.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
