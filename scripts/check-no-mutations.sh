#!/usr/bin/env bash
# The deliberate bugs of the simulator's checker tests (raftmq-raft's src/mutations.rs) are
# compiled only with the cargo feature `mutations`, which only raftmq-sim enables. This
# checks that the `raftmq` binary built on its own (as `cargo build --release` builds it)
# carries none of their code, and that the check would see it if it did.
#
# Marker: the broker's mutation function (`serve_uncommitted`). Raft's mutations are
# branches on `Mutations` switches, which without the feature are constant `false` (the
# struct has no fields), so the branches are dead and an optimized build drops them.

markers() {
  # How many mutation functions target/debug/raftmq contains.
  local syms
  syms=$(nm -C target/debug/raftmq)
  grep -c 'raftmq_broker::managers::messages::serve_uncommitted$' <<<"$syms" || true
}

cargo build -q -p raftmq --features raftmq-broker/mutations
with=$(markers)
cargo build -q -p raftmq
without=$(markers)
echo "mutation markers in raftmq: with the feature $with, without it $without"
if [ "$with" -eq 0 ]; then
  echo "the check cannot see the mutations even when they are compiled in" >&2
  exit 1
fi
if [ "$without" -ne 0 ]; then
  echo "the raftmq binary contains mutation code" >&2
  exit 1
fi
