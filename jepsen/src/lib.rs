//! raftmq-jepsen: the chaos harness over real `raftmq` processes (see `docs/chaos.md`).
//!
//! It starts a name server and one broker group as real processes, each in its own network
//! namespace ([`net`]), drives workloads through the real SDK (queue and ordered:
//! [`workload`]; transactions: [`txn`]; timed messages: [`timers`]),
//! injects faults by real means ([`nemesis`]), records every operation as JSONL
//! ([`history`]), checks the history with the checkers the simulator uses
//! (`raftmq-check`), and writes a report ([`report`]).
//!
//! It drives real processes and the real kernel, so it has nothing to simulate: under
//! `--cfg madsim` the crate is empty.
#![cfg(not(madsim))]

pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod relay;
pub mod report;
pub mod run;
pub mod timers;
pub mod txn;
pub mod workload;
