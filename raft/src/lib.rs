//! raftmq-raft: openraft 0.10 over the raftmq store.
//!
//! This crate will hold the openraft `TypeConfig`, the `RaftLogStorage` implemented directly
//! over the store's CommitLog and Raft index (the CommitLog *is* the Raft log: nothing is
//! written twice), the state machine that applies committed entries into ConsumeQueue,
//! IndexFile and MetaStore, and the tonic `RaftService` network.
//!
//! It is intentionally empty until the replication issue lands; it exists now so that the
//! workspace pins and builds openraft (`=0.10.0-alpha.37`) in both the normal and the
//! `--cfg madsim` builds.
