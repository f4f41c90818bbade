#!/usr/bin/env bash
# Starts a name server and a three-replica group as separate `raftmq` processes on 127.0.0.1
# (release build), creates a topic of 8 queues, runs one `raftmq bench …` against it, stops
# everything. Usage:
#   scripts/bench-group.sh [--flush sync|async] [--dir D] -- produce --size 1024 --producers 4 --in-flight 256 --duration 12
# --restart runs each broker under a loop that starts it again RESTART_DELAY (3) s after it
# dies (for `bench failover`, which SIGKILLs leaders).
# --dir keeps the data and logs there; otherwise they go to a temporary folder removed at exit.
# Everything after `--` is passed to `raftmq bench` (the name server and topic are added).
# The bench starts SETTLE_SECONDS (5) after the topic exists.
# Keep the machine otherwise quiet: the figures include everything the brokers do.
set -euo pipefail
cd "$(dirname "$0")/.."
FLUSH=sync
DIR=
KEEP=0
RESTART=0
while [ $# -gt 0 ]; do
  case "$1" in
    --flush) FLUSH=$2; shift 2 ;;
    --dir) DIR=$2; KEEP=1; shift 2 ;;
    --restart) RESTART=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "give the bench after --, e.g. -- produce --duration 12" >&2; exit 2; }
[ -n "$DIR" ] || DIR=$(mktemp -d /tmp/raftmq-bench.XXXXXX)
cargo build --release -q --bin raftmq
B=$PWD/target/release/raftmq
NS=127.0.0.1:19876
mkdir -p "$DIR"
pids=()
# The data (gigabytes after a long run) is removed unless --dir named the folder.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "broker --config $DIR/" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$KEEP" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT
$B namesrv --listen $NS >"$DIR/ns.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do
  cat >"$DIR/b$i.toml" <<EOT
group = "bench"
replica_id = $i
listen = "127.0.0.1:1991$i"
data_dir = "$DIR/b$i"
namesrv_addrs = ["$NS"]
segment_mib = 256
flush = "$FLUSH"
[initial_members]
1 = "127.0.0.1:19911"
2 = "127.0.0.1:19912"
3 = "127.0.0.1:19913"
EOT
  if [ "$RESTART" = 1 ]; then
    # A supervisor: a killed broker starts again (bench failover kills leaders).
    # It waits RESTART_DELAY (3 s, well past the detection of a dead leader) before starting the
    # broker again: a leader back sooner resumes its old term (openraft's leader restore) and
    # the followers never elect — that is a restart, not the failover `bench failover` times.
    ( set +e; while :; do $B broker --config "$DIR/b$i.toml" >>"$DIR/b$i.log" 2>&1; sleep "${RESTART_DELAY:-3}"; done ) &
  else
    $B broker --config "$DIR/b$i.toml" >"$DIR/b$i.log" 2>&1 &
  fi
  pids+=($!)
done
echo "brokers: ${pids[*]:1} (logs in $DIR)" >&2
for _ in $(seq 60); do
  $B topic create --namesrv $NS --topic BenchTopic --queues 8 >/dev/null 2>&1 && break
  sleep 0.5
done
# A new broker prepares its first files in the background (the next CommitLog segment, a
# 420 MB IndexFile): let that finish, so the run measures the steady state, not the start.
sleep "${SETTLE_SECONDS:-5}"
$B bench "$@" --namesrv $NS --topic BenchTopic
