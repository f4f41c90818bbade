"""Fixtures for the official-client compatibility tests: a running `raftmq dev` (started by
scripts/compat.sh), its RocketMQ 5 gateway, and the `raftmq` CLI to set up topics and to read
back what was stored through the native API."""

import os
import re
import subprocess
import time
import uuid

import pytest

RAFTMQ = os.environ["RAFTMQ_BIN"]
NAMESRV = os.environ["RAFTMQ_NAMESRV"]
PROXY = os.environ["RAFTMQ_PROXY"]


def raftmq(*args, timeout=60):
    """Runs the raftmq CLI against the dev cluster; returns its stdout."""
    out = subprocess.run(
        [RAFTMQ, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"raftmq {' '.join(args)}: {out.stderr}")
    return out.stdout


def create_topic(name, queues=4, message_type="MIXED", namesrv=NAMESRV):
    raftmq(
        "topic", "create", "--namesrv", namesrv, "--topic", name, "--queues", str(queues),
        "--message-type", message_type,
    )
    deadline = time.time() + 20
    while True:
        try:
            raftmq("topic", "route", "--namesrv", namesrv, "--topic", name)
            return name
        except RuntimeError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


LINE = re.compile(
    r"^(?P<group>\S+) queue (?P<queue>\d+) offset (?P<offset>\d+) tags \"(?P<tag>[^\"]*)\" "
    r"keys \[(?P<keys>[^\]]*)\] msgId (?P<id>\S+) body (?P<body>.*)$"
)


def stored(topic, count, idle_ms=3000, namesrv=NAMESRV):
    """Every message of `topic` as the native consumer reads it, from the first offset: dicts
    with group, queue, offset, tag, keys, id, body (stops after `count` or when idle)."""
    out = raftmq(
        "consume", "--namesrv", namesrv, "--topic", topic,
        "--group", f"compat-check-{uuid.uuid4().hex[:8]}",
        "--count", str(count), "--idle-ms", str(idle_ms), "--from", "first",
        timeout=120,
    )
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            d = m.groupdict()
            d["queue"] = int(d["queue"])
            d["offset"] = int(d["offset"])
            rows.append(d)
    return rows


@pytest.fixture
def config():
    from rocketmq import ClientConfiguration, Credentials

    return ClientConfiguration(PROXY, Credentials(), request_timeout=5)


@pytest.fixture
def topic():
    return create_topic(f"Compat{uuid.uuid4().hex[:10]}")
