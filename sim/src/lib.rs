//! raftmq-sim: deterministic simulation under madsim.
//!
//! Today it simulates one replica's storage engine — the store with its group-commit
//! flusher on a [`SimDisk`](raftmq_store::SimDisk) — under process crashes and power loss,
//! with clients writing through it concurrently. The replication issue extends it to a Raft
//! group, and later issues to a whole cluster; the shape stays the same: a scenario records a
//! [`history::History`], and checkers (pure functions, each with a test that makes it fire)
//! judge it.
//!
//! Build and run with `RUSTFLAGS="--cfg madsim"` in its own target dir (see README.md); a
//! failing seed prints `MADSIM_TEST_SEED=<n>`, which replays it exactly.

pub mod history;
pub mod replica_checks;

#[cfg(madsim)]
pub mod raft_scenario;

#[cfg(madsim)]
pub mod store_scenario;
