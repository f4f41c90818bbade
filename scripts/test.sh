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

# The simulation build lives in its own target dir: --cfg madsim changes every crate.
export CARGO_TARGET_DIR=target/sim
export RUSTFLAGS="--cfg madsim"
echo "== madsim build (workspace)"
cargo build --workspace
# Seeds are explicit so a run is reproducible; a failure prints MADSIM_TEST_SEED=<n>.
echo "== madsim simulation seeds"
MADSIM_TEST_SEED="${MADSIM_TEST_SEED:-1}" MADSIM_TEST_NUM="${MADSIM_TEST_NUM:-200}" MADSIM_TEST_JOBS=2 \
  cargo test -p raftmq-sim
echo "== madsim determinism check"
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test store_crash store_survives
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=3 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test raft_group group_survives
MADSIM_TEST_SEED=1000 MADSIM_TEST_NUM=2 MADSIM_TEST_CHECK_DETERMINISM=1 \
  cargo test -p raftmq-sim --test cluster cluster_delivers
