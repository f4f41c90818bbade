//! The whole product (name server, a three-replica broker group, SDK producer and consumer)
//! under madsim. Build with `--cfg madsim` (README.md); a failure prints `MADSIM_TEST_SEED=<n>`.
#![cfg(madsim)]

use raftmq_sim::cluster_scenario::run;

/// Every acknowledged message is consumed, once (no faults yet: duplicates would be a bug).
#[madsim::test]
async fn cluster_delivers_every_acknowledged_message() {
    let o = run(200).await;
    assert_eq!(
        o.acked.len(),
        200,
        "without faults every send is acknowledged"
    );
    assert!(o.lost().is_empty(), "lost: {:?}", o.lost());
    assert!(
        o.consumed.values().all(|&n| n == 1),
        "duplicates without faults"
    );
    assert!(
        o.consumed.keys().all(|id| o.acked.contains(id)),
        "unexpected messages"
    );
}
