//! The store under crashes and power loss, in madsim. Build with `--cfg madsim` (README.md).
#![cfg(madsim)]

use raftmq_sim::store_scenario::{ScenarioConfig, run};

/// Every seed (`MADSIM_TEST_SEED`, `MADSIM_TEST_NUM`) must pass every checker.
#[madsim::test]
async fn store_survives_crashes_and_power_loss() {
    let outcome = run(ScenarioConfig::default()).await;
    assert!(
        outcome.violations.is_empty() && outcome.store_problems.is_empty(),
        "checkers fired:\n{}",
        outcome.report()
    );
    assert!(
        !outcome.history.acked.is_empty(),
        "nothing was acknowledged: the scenario tested nothing"
    );
}

/// The checkers can fail: acknowledging before the sync must lose writes on some seed.
#[test]
fn acking_before_sync_is_caught() {
    let mut caught = 0;
    let seeds = 20u64;
    for seed in 1..=seeds {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let outcome = rt.block_on(run(ScenarioConfig {
            ack_before_sync: true,
            ..ScenarioConfig::default()
        }));
        if outcome
            .violations
            .iter()
            .any(|v| matches!(v, raftmq_sim::history::Violation::Lost { .. }))
        {
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "the lost-write checker never fired on {seeds} seeds with ack-before-sync"
    );
    eprintln!("ack-before-sync caught on {caught}/{seeds} seeds");
}
