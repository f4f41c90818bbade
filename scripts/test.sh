#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + property tests, the
# deterministic-simulation seeds (madsim), and the `--cfg madsim` build of every crate.
# This is the one command README.md names; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (workspace)"
cargo test --workspace

echo "== the raftmq binary carries no mutation (deliberate-bug) code"
bash scripts/check-no-mutations.sh

echo "== the official RocketMQ 5 Python client against raftmq proxy (tests/compat)"
bash scripts/compat.sh

echo "== jepsen: chaos over real processes in network namespaces"
bash scripts/jepsen.sh

# The simulation build lives in its own target dir: --cfg madsim changes every crate. It is
# optimized (-C opt-level=1, debug assertions still on): unoptimized, openraft's per-step state
# validation made a whole-cluster seed ~14x slower.
export CARGO_TARGET_DIR=target/sim
export RUSTFLAGS="--cfg madsim -C opt-level=1"
echo "== madsim build (workspace)"
cargo build --workspace
cargo test -p raftmq-sim --no-run
# Seeds are explicit so a run is reproducible; a failure prints MADSIM_TEST_SEED=<n> (and the
# cluster scenario a one-line reproduction and its fault timeline).
SEED="${MADSIM_TEST_SEED:-1}"
echo "== madsim: storage engine and Raft group, 200 seeds each (+ mutation checks)"
MADSIM_TEST_SEED="$SEED" MADSIM_TEST_NUM="${RAFTMQ_SIM_SEEDS_SMALL:-200}" MADSIM_TEST_JOBS=2 \
  cargo test -p raftmq-sim --test store_crash --test raft_group
# Runs cluster test $1 on $2 seeds from $SEED, in processes of up to 500 seeds. A finished
# run's memory is returned (the scenario kills its nodes at the end: `Sim::end`), so a process
# stays near 1 GB however many seeds it runs.
cluster_seeds() {
  local test="$1" count="$2" first n
  for ((first = SEED; first < SEED + count; first += 500)); do
    n=$((SEED + count - first < 500 ? SEED + count - first : 500))
    MADSIM_TEST_SEED="$first" MADSIM_TEST_NUM="$n" MADSIM_TEST_JOBS=2 \
      cargo test -q -p raftmq-sim --test cluster "$test" -- --exact
  done
}
SEEDS="${RAFTMQ_SIM_SEEDS:-1000}"
echo "== madsim: whole cluster, $SEEDS seeds of the mixed-fault scenario"
cluster_seeds cluster_survives_faults "$SEEDS"
TXN_SEEDS="${RAFTMQ_SIM_TXN_SEEDS:-200}"
echo "== madsim: whole cluster with the transactional workload, $TXN_SEEDS seeds"
cluster_seeds cluster_transactions_survive_faults "$TXN_SEEDS"
TIMER_SEEDS="${RAFTMQ_SIM_TIMER_SEEDS:-100}"
echo "== madsim: whole cluster with the timed workload, $TIMER_SEEDS seeds"
cluster_seeds cluster_timers_survive_faults "$TIMER_SEEDS"
POP_SEEDS="${RAFTMQ_SIM_POP_SEEDS:-200}"
echo "== madsim: whole cluster with the POP workload (RocketMQ 5 consumption), $POP_SEEDS seeds"
cluster_seeds cluster_pop_survives_faults "$POP_SEEDS"
echo "== madsim: whole cluster without faults (20 seeds), the mutation checks, named regression seeds"
MADSIM_TEST_SEED="$SEED" MADSIM_TEST_NUM=20 MADSIM_TEST_JOBS=2 \
  cargo test -p raftmq-sim --test cluster -- cluster_delivers_every_acknowledged_message serving_uncommitted_pulls_is_caught transaction_mutations_are_caught timer_mutations_are_caught pop_mutations_are_caught regression_
echo "== madsim determinism check"
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test store_crash store_survives
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test raft_group group_survives
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=5 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test cluster cluster_survives_faults -- --exact
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test cluster cluster_transactions_survive_faults -- --exact
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test cluster cluster_pop_survives_faults -- --exact
