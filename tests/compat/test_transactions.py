"""Transactional messages from the official Python producer (5.1.2, unchanged) through
`raftmq proxy`: a committed transaction's message is delivered once, a rolled-back one never,
and an orphan (neither committed nor rolled back) is resolved by the broker's check, relayed
to the producer's checker over its Telemetry stream."""

import threading
import time

from rocketmq import Message, Producer, TransactionChecker, TransactionResolution

from conftest import stored


class Checker(TransactionChecker):
    def __init__(self, answer):
        self.answer = answer
        self.asked = []
        self.lock = threading.Lock()

    def check(self, message):
        with self.lock:
            self.asked.append(message.message_id)
        return self.answer


def message(topic, body):
    m = Message()
    m.topic = topic
    m.body = body.encode()
    m.tag = "Tx"
    return m


def test_commit_and_rollback(config, topic):
    p = Producer(config, (topic,), checker=Checker(TransactionResolution.ROLLBACK))
    p.startup()
    try:
        tx = p.begin_transaction()
        kept = p.send(message(topic, "committed"), tx)
        tx.commit()
        tx = p.begin_transaction()
        p.send(message(topic, "rolled back"), tx)
        tx.rollback()
    finally:
        p.shutdown()
    rows = stored(topic, 2, idle_ms=3000)
    assert [(r["id"], r["body"]) for r in rows] == [(kept.message_id, "committed")]


def test_an_orphan_is_resolved_by_the_check(config, topic):
    checker = Checker(TransactionResolution.COMMIT)
    p = Producer(config, (topic,), checker=checker)
    p.startup()
    try:
        tx = p.begin_transaction()
        orphan = p.send(message(topic, "orphan"), tx)
        # Neither committed nor rolled back: the broker checks after its transaction timeout
        # (6 s), the proxy relays the check, the checker commits.
        deadline = time.time() + 40
        rows = []
        while not rows and time.time() < deadline:
            rows = stored(topic, 1, idle_ms=1000)
    finally:
        p.shutdown()
    assert [r["id"] for r in rows] == [orphan.message_id]
    with checker.lock:
        assert orphan.message_id in checker.asked
