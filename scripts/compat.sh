#!/usr/bin/env bash
# The official RocketMQ 5 clients against raftmq, unchanged: a venv with the pinned Python
# client (tests/compat/requirements.txt, from PyPI), `raftmq dev` with its gateway on free
# local ports, then pytest over tests/compat. The dev cluster's log and the clients' logs are
# kept in target/compat/. scripts/test.sh calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/compat
VENV=target/compat-venv
rm -rf "$OUT"
mkdir -p "$OUT/home"
if ! "$VENV/bin/python" -c 'import rocketmq, pytest' >/dev/null 2>&1; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/compat/requirements.txt
fi
cargo build -p raftmq
BIN="$PWD/target/debug/raftmq"

# Free ports below the kernel's ephemeral range (outgoing connections cannot take them):
# a name server, three replicas in a row, the gateway.
read -r NS BP PP < <(python3 - <<'PY'
import random, socket
def free(n):
    while True:
        p = random.randrange(20000, 32000 - n)
        try:
            socks = []
            for i in range(n):
                s = socket.socket(); s.bind(("127.0.0.1", p + i)); socks.append(s)
            for s in socks: s.close()
            return p
        except OSError:
            for s in socks: s.close()
print(free(1), free(3), free(1))
PY
)

"$BIN" dev --data-dir "$OUT/data" --namesrv-port "$NS" --broker-port "$BP" --proxy-port "$PP" \
  > "$OUT/dev.log" 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null; wait $DEV 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  grep -q "Ctrl-C stops everything" "$OUT/dev.log" && break
  kill -0 "$DEV" 2>/dev/null || { cat "$OUT/dev.log" >&2; echo "raftmq dev died" >&2; exit 1; }
  sleep 0.5
done
grep -q "Ctrl-C stops everything" "$OUT/dev.log" || { cat "$OUT/dev.log" >&2; echo "raftmq dev did not come up" >&2; exit 1; }

# The Python client writes its logs under $HOME/logs/rocketmq_python.
HOME="$PWD/$OUT/home" RAFTMQ_BIN="$BIN" RAFTMQ_NAMESRV="127.0.0.1:$NS" RAFTMQ_PROXY="127.0.0.1:$PP" \
  timeout 900 "$VENV/bin/pytest" -q -p no:cacheprovider tests/compat "$@"
