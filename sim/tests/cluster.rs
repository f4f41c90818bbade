//! The whole product (name server, two three-replica broker groups, SDK producers and
//! consumers) under madsim with a seeded mix of faults. Build with `--cfg madsim` (README.md).
//! A failing seed prints a one-line reproduction and the fault timeline.
//!
//! Seeds: `MADSIM_TEST_SEED` (first) and `MADSIM_TEST_NUM` (how many) — scripts/test.sh runs
//! 500 of `cluster_survives_faults`; a long run is e.g. `MADSIM_TEST_NUM=10000`.
#![cfg(madsim)]

use raftmq_raft::Mutations;
use raftmq_sim::cluster_scenario::{ClusterConfig, Fault, Outcome, run};
use raftmq_sim::queue_checks::QueueViolation;

fn log_if_asked() {
    if let Ok(level) = std::env::var("RAFTMQ_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_max_level(if level == "debug" {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            })
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The fault kinds to draw: all, or `RAFTMQ_SIM_FAULTS=KillRestart,Split` (triage aid).
fn faults() -> Vec<Fault> {
    match std::env::var("RAFTMQ_SIM_FAULTS") {
        Ok(list) => Fault::ALL
            .into_iter()
            .filter(|f| list.split(',').any(|n| n == format!("{f:?}")))
            .collect(),
        Err(_) => Fault::ALL.to_vec(),
    }
}

/// Without faults: every send acknowledged, every message consumed exactly once.
#[madsim::test]
async fn cluster_delivers_every_acknowledged_message() {
    log_if_asked();
    let o = run(ClusterConfig {
        faults: vec![],
        ..ClusterConfig::default()
    })
    .await;
    let report = o.report("cluster_delivers_every_acknowledged_message");
    assert!(o.is_clean(), "checkers fired:\n{report}");
    assert!(
        o.history.indeterminate.is_empty(),
        "without faults every send is acknowledged:\n{report}"
    );
    let (redelivered, stored_twice) = raftmq_sim::queue_checks::duplicate_counts(&o.history);
    assert_eq!(
        (redelivered, stored_twice),
        (0, 0),
        "without faults nothing is delivered twice:\n{report}"
    );
}

/// The mixed scenario: every checker must pass on every seed.
#[madsim::test]
async fn cluster_survives_faults() {
    log_if_asked();
    let o = run(ClusterConfig {
        faults: faults(),
        ..ClusterConfig::default()
    })
    .await;
    let report = o.report("cluster_survives_faults");
    if std::env::var("RAFTMQ_SIM_REPORT").is_ok() {
        eprintln!("{report}");
    }
    assert!(o.is_clean(), "checkers fired:\n{report}");
    assert!(
        o.history.acked.len() > 50,
        "too little acknowledged to test anything:\n{report}"
    );
}

/// Runs `cfg` on seeds `1..=seeds` (each its own runtime); a panic inside a run (an assertion
/// of openraft tripped by the bug) counts as caught too, reported apart.
fn caught_on(
    seeds: u64,
    cfg: ClusterConfig,
    caught: impl Fn(&Outcome) -> bool,
) -> (u64, u64, Vec<u64>) {
    let (mut n, mut panicked, mut which) = (0, 0, Vec::new());
    for seed in 1..=seeds {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let cfg = cfg.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(cfg))));
        match r {
            Ok(o) if caught(&o) => {
                n += 1;
                which.push(seed);
            }
            Ok(_) => {}
            Err(_) => panicked += 1,
        }
    }
    (n, panicked, which)
}

/// The checkers can fail: a broker that hands out entries it holds but has not seen committed
/// lets a consumer read messages that a partition then erases, and the offsets they had are
/// given to other messages. Some seed must trip a checker (offset reused, lost, order), or an
/// assertion, counted apart.
#[test]
fn serving_uncommitted_pulls_is_caught() {
    log_if_asked();
    let seeds = 12u64;
    let cfg = ClusterConfig {
        mutations: Mutations {
            serve_uncommitted_pulls: true,
            ..Mutations::default()
        },
        // Cut long enough for the followers to elect another leader (elections take ≤ 600 ms)
        // while clients still reach the old one.
        faults: vec![Fault::LeaderCutOff],
        hold_ms: 1500..3000,
        ..ClusterConfig::default()
    };
    let (caught, panicked, which) = caught_on(seeds, cfg, |o| {
        if std::env::var("RAFTMQ_SIM_REPORT").is_ok() && !o.violations.is_empty() {
            eprintln!("{}", o.report("serving_uncommitted_pulls_is_caught"));
        }
        o.violations.iter().any(|v| {
            matches!(
                v,
                QueueViolation::OffsetReused { .. }
                    | QueueViolation::Lost { .. }
                    | QueueViolation::Moved { .. }
                    | QueueViolation::Skipped { .. }
                    | QueueViolation::OutOfOrder { .. }
            )
        })
    });
    eprintln!(
        "serve-uncommitted-pulls: caught on {caught}/{seeds} seeds {which:?}; a panic on {panicked}"
    );
    assert!(
        caught + panicked > 0,
        "no checker fired on {seeds} seeds with pulls served from uncommitted entries"
    );
}
