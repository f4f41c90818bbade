#!/usr/bin/env bash
# The chaos harness over real processes, as CI runs it (scripts/test.sh calls this): each
# fault kind (kill, pause, partition, loss, delay, power, and corrupt: a replica's CommitLog damaged
# and repaired from the group) for 60 s against a three-replica group in network namespaces, each run's report
# kept under target/jepsen/<kind>/ (history.jsonl, logs/, summary.txt, report.html and a
# screenshot of the page from headless Chromium); then the proof that the checkers fire on
# real processes: brokers that acknowledge before the fsync (flush = "async") on lazy disks,
# the whole group's power cut at once, must lose acknowledged messages, and the harness must
# say so. Needs root (network namespaces), nft and chromium (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

TIME="${RAFTMQ_JEPSEN_TIME:-60}"
SEED="${RAFTMQ_JEPSEN_SEED:-1}"
OUT=target/jepsen
rm -rf "$OUT"
mkdir -p "$OUT"
cargo build -p raftmq -p raftmq-jepsen
BIN=target/debug/raftmq-jepsen

screenshot() {
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1200 \
    --screenshot="$1/report.png" "file://$PWD/$1/report.html" >/dev/null 2>&1 || true
}

for kind in kill pause partition loss delay power corrupt; do
  echo "== jepsen: $kind, $TIME s"
  status=0
  "$BIN" --nemesis "$kind" --time "$TIME" --seed "$SEED" --out "$OUT/$kind" || status=$?
  screenshot "$OUT/$kind"
  if [ "$status" -ne 0 ]; then
    echo "jepsen $kind failed (exit $status): see $OUT/$kind/summary.txt and logs/" >&2
    exit 1
  fi
done

echo "== jepsen: the checkers fire on real processes (async flush, whole-group power cut)"
"$BIN" --nemesis power --all-at-once --flush async --expect-lost --time 30 --drain 20 --seed "$SEED" \
  --out "$OUT/power-async"
screenshot "$OUT/power-async"
