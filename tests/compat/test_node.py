"""The official RocketMQ 5 Node.js client (rocketmq-client-nodejs 1.0.8, installed with `npm
ci` from tests/compat/node/package-lock.json) against `raftmq proxy`: a smoke test — normal
sends and a message group stored once each under the client's ids, the group in one queue in
order, and a SimpleConsumer receiving and acking every message once."""

import filecmp
import json
import os
import shutil
import subprocess
import uuid

from conftest import PROXY, stored

SOURCE = os.path.join(os.path.dirname(__file__), "node")
FILES = ("package.json", "package-lock.json", "smoke.js")


def installed():
    """target/compat-node with the locked packages (installed again when the lock changes)."""
    home = os.environ["HOME"]  # target/compat/home (scripts/compat.sh)
    work = os.path.join(os.path.dirname(os.path.dirname(home)), "compat-node")
    os.makedirs(work, exist_ok=True)
    lock = os.path.join(work, "package-lock.json")
    fresh = os.path.exists(os.path.join(work, "node_modules")) and os.path.exists(lock) \
        and filecmp.cmp(lock, os.path.join(SOURCE, "package-lock.json"), shallow=False)
    for f in FILES:
        shutil.copyfile(os.path.join(SOURCE, f), os.path.join(work, f))
    if not fresh:
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=work, check=True, timeout=600,
        )
    return work


def test_the_nodejs_client_sends_and_receives(topic):
    work = installed()
    out = subprocess.run(
        ["node", "smoke.js", PROXY, topic, f"N{uuid.uuid4().hex[:8]}"],
        cwd=work, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    sent, received = r["sent"], r["received"]
    assert len(sent) == 30
    assert received == {i: 1 for i in sent}, "every message received once"
    offsets = r["fifo_offsets"]
    assert offsets == list(range(offsets[0], offsets[0] + 10)), "one group, one queue, in order"
    rows = stored(topic, len(sent))
    assert {row["id"]: row["body"] for row in rows} == sent
