//! The whole product (name server, a three-replica broker group, SDK producer and consumer)
//! under madsim. Build with `--cfg madsim` (README.md); a failure prints `MADSIM_TEST_SEED=<n>`
//! and the fault timeline.
#![cfg(madsim)]

use raftmq_sim::cluster_scenario::{ClusterConfig, run};

/// Without faults: every message acknowledged and consumed exactly once.
#[madsim::test]
async fn cluster_delivers_every_acknowledged_message() {
    let o = run(ClusterConfig {
        crashes: false,
        ..ClusterConfig::default()
    })
    .await;
    assert_eq!(
        o.history.acked.len(),
        200,
        "without faults every send is acknowledged:\n{}",
        o.report()
    );
    assert!(o.violations.is_empty(), "checkers fired:\n{}", o.report());
}

/// Broker replicas killed and restarted while the producer sends: nothing acknowledged is
/// lost, nothing moves, nothing unexpected (duplicates allowed and reported).
#[madsim::test]
async fn cluster_survives_broker_crashes() {
    let o = run(ClusterConfig::default()).await;
    assert!(o.violations.is_empty(), "checkers fired:\n{}", o.report());
    assert!(
        o.history.acked.len() > 100,
        "too little acknowledged:\n{}",
        o.report()
    );
}
