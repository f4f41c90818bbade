#!/usr/bin/env bash
# Long runs of the whole-cluster simulation: `bash scripts/sim-seeds.sh 10000 [first-seed]`
# (`SIM_TEST=cluster_transactions_survive_faults` for the transactional runs).
# Seeds run in processes of 500 (memory stays near 1 GB a process), 2 at a time.
# A failing seed prints its one-line reproduction and fault timeline; the script stops there.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${1:-10000}"
FIRST="${2:-1}"
TEST="${SIM_TEST:-cluster_survives_faults}"
export CARGO_TARGET_DIR=target/sim
export RUSTFLAGS="--cfg madsim -C opt-level=1"
cargo test -q -p raftmq-sim --test cluster --no-run
for ((first = FIRST; first < FIRST + SEEDS; first += 500)); do
  n=$((FIRST + SEEDS - first < 500 ? FIRST + SEEDS - first : 500))
  MADSIM_TEST_SEED="$first" MADSIM_TEST_NUM="$n" MADSIM_TEST_JOBS=2 \
    cargo test -q -p raftmq-sim --test cluster "$TEST" -- --exact
done
echo "$TEST: seeds $FIRST..$((FIRST + SEEDS - 1)) passed"
