//! raftmq-sim: deterministic simulation under madsim.
//!
//! Scenarios: one replica's storage engine under crashes and power loss (`store_scenario`); a
//! three-replica Raft group under partitions, crashes, power loss, delay and retention
//! (`raft_scenario`); and the whole product — name server, two broker groups, SDK producers
//! and consumers — under a seeded mix of faults (`cluster_scenario`). The shape stays the
//! same: a scenario records a history, and checkers (pure functions, each with a test that
//! makes it fire) judge it: [`history`], [`queue_checks`], [`replica_checks`]. See
//! docs/simulation.md.
//!
//! Build and run with `RUSTFLAGS="--cfg madsim"` in its own target dir (see README.md); a
//! failing seed prints `MADSIM_TEST_SEED=<n>`, which replays it exactly.

/// Named regression seeds: `regressions! { runner; name = seed; … }` makes one `#[test]` per
/// seed, each calling `runner(seed)` (which runs the scenario on that seed and asserts it is
/// clean).
#[macro_export]
macro_rules! regressions {
    ($runner:path; $($(#[$m:meta])* $name:ident = $seed:expr;)*) => {
        $(
            $(#[$m])*
            #[test]
            fn $name() {
                $runner($seed);
            }
        )*
    };
}

// The history checkers live in `raftmq-check`, shared with the chaos harness over real
// processes; they keep their names here.
pub use raftmq_check::log as history;
pub use raftmq_check::pop as pop_checks;
pub use raftmq_check::queue as queue_checks;
pub mod replica_checks;
pub use raftmq_check::retry as retry_checks;
pub use raftmq_check::timer as timer_checks;
pub use raftmq_check::txn as txn_checks;

#[cfg(madsim)]
pub mod pop_workload;
#[cfg(madsim)]
pub mod retry_workload;
#[cfg(madsim)]
pub mod timer_workload;

#[cfg(madsim)]
pub mod txn_workload;

#[cfg(madsim)]
pub mod cluster_scenario;

#[cfg(madsim)]
pub mod raft_scenario;

#[cfg(madsim)]
pub mod store_scenario;
