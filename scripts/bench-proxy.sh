#!/usr/bin/env bash
# The RocketMQ 5 gateway's overhead against the native path, on one `raftmq dev` (release
# build): RUNS rounds of, each on fresh topics,
#   bench proxy   — v2 SendMessage of 1 message per request from 16 senders, then
#                   ReceiveMessage (batches of 32) + one AckMessage per message, 4 receivers;
#   bench produce — native sends, 1 message per request (--no-auto-batch), 16 producers with
#                   one send in flight each (the same concurrency as the 16 v2 senders);
#   bench consume — the native push consumer reading what that stored (--from-first).
# Usage: scripts/bench-proxy.sh [RUNS] (default 3). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
cargo build --release -q -p raftmq
BIN="$PWD/target/release/raftmq"
DATA=$(mktemp -d)
NS=29876 BP=30911 PP=28081
"$BIN" dev --data-dir "$DATA" --namesrv-port $NS --broker-port $BP --proxy-port $PP \
  > "$DATA/dev.log" 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null; wait $DEV 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 120); do
  grep -q "Ctrl-C stops everything" "$DATA/dev.log" && break
  sleep 0.5
done
grep -q "Ctrl-C stops everything" "$DATA/dev.log" || { cat "$DATA/dev.log" >&2; exit 1; }
for i in $(seq 1 "$RUNS"); do
  echo "== round $i"
  "$BIN" topic create --namesrv 127.0.0.1:$NS --topic "BenchProxy$i" --queues 4 >/dev/null
  "$BIN" topic create --namesrv 127.0.0.1:$NS --topic "BenchNative$i" --queues 4 >/dev/null
  sleep 2  # the topics reach the name server with the next registration
  "$BIN" bench proxy --proxy 127.0.0.1:$PP --topic "BenchProxy$i" --group "bench-proxy-$i" \
    --senders 16 --receivers 4 --batch 32 --duration 10
  "$BIN" bench produce --namesrv 127.0.0.1:$NS --topic "BenchNative$i" --no-auto-batch \
    --producers 16 --in-flight 1 --duration 10 2>/dev/null | grep -E " = |server CPU" || true
  "$BIN" bench consume --namesrv 127.0.0.1:$NS --topic "BenchNative$i" \
    --group "bench-native-$i" --from-first --duration 10 2>/dev/null | grep -E " = |server CPU" || true
done
