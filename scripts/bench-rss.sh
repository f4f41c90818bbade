#!/usr/bin/env bash
# Runs one scripts/bench-group.sh bench and samples the brokers' memory while it runs:
# every INTERVAL seconds, per broker process, VmRSS (everything resident), RssAnon (heap and
# stacks: what a leak grows) and RssFile (mapped file pages: the CommitLog and index pages the
# broker touched, which the kernel reclaims under pressure), in MiB.
# Usage: scripts/bench-rss.sh [--interval 10] -- <bench-group.sh arguments>
#   scripts/bench-rss.sh -- -- produce --size 128 --producers 4 --in-flight 256 --duration 600
set -euo pipefail
cd "$(dirname "$0")/.."
INTERVAL=10
while [ $# -gt 0 ]; do
  case "$1" in
    --interval) INTERVAL=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "give the bench-group.sh arguments after --" >&2; exit 2; }
scripts/bench-group.sh "$@" &
bench=$!
start=$(date +%s)
mib() { awk -v k="$1:" '$1 == k { printf "%d", $2 / 1024 }' "/proc/$2/status" 2>/dev/null || true; }
printf '%6s  %s\n' "s" "per broker: VmRSS / RssAnon / RssFile (MiB)"
while kill -0 "$bench" 2>/dev/null; do
  sleep "$INTERVAL"
  line=""
  for pid in $(pgrep -f "raftmq broker --config" || true); do
    line+="$(mib VmRSS "$pid")/$(mib RssAnon "$pid")/$(mib RssFile "$pid")  "
  done
  if [ -n "$line" ]; then printf '%6d  %s\n' "$(( $(date +%s) - start ))" "$line"; fi
done
wait "$bench"
