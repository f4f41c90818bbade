"""The official RocketMQ 5 Python consumers (rocketmq-python-client 5.1.2, unchanged) against
`raftmq proxy`: POP consumption whose state is in the broker group's Raft log. A
SimpleConsumer and a PushConsumer each receive every message sent; a message not acked
comes back after its invisible time with the next attempt number; a changed invisible time
replaces the receipt (the old one is refused); an acked message never comes back; a push
listener's failures are redelivered."""

import copy
import threading
import time
import uuid

import pytest
from rocketmq import (ConsumeResult, FilterExpression, Message, MessageListener, Producer,
                      PushConsumer, SimpleConsumer)
from rocketmq.v5.exception.client_exception import BadRequestException


def send(config, topic, bodies, tag="TagA"):
    p = Producer(config, (topic,))
    p.startup()
    try:
        ids = {}
        for b in bodies:
            m = Message()
            m.topic = topic
            m.body = b.encode()
            m.tag = tag
            ids[p.send(m).message_id] = b
        return ids
    finally:
        p.shutdown()


def simple(config, topic, expression="*", await_s=2):
    c = SimpleConsumer(config, f"G{uuid.uuid4().hex[:8]}",
                       {topic: FilterExpression(expression)}, await_duration=await_s)
    c.startup()
    return c


def drain(c, want, invisible_s=20, limit_s=60):
    """Receives and acks until `want` distinct messages came or `limit_s` passed; returns
    {message_id: deliveries}."""
    seen = {}
    deadline = time.time() + limit_s
    while len(seen) < want and time.time() < deadline:
        for m in c.receive(32, invisible_s):
            seen[m.message_id] = seen.get(m.message_id, 0) + 1
            c.ack(m)
    return seen


def test_a_simple_consumer_receives_every_message_once(config, topic):
    ids = send(config, topic, [f"m-{i}" for i in range(300)])
    c = simple(config, topic)
    try:
        seen = drain(c, len(ids))
    finally:
        c.shutdown()
    assert set(seen) == set(ids)
    duplicates = sum(n - 1 for n in seen.values())
    assert duplicates == 0, f"{duplicates} duplicates"


def test_a_tag_filter_takes_only_its_tags(config, topic):
    a = send(config, topic, [f"a-{i}" for i in range(20)], tag="A")
    send(config, topic, [f"b-{i}" for i in range(20)], tag="B")
    c = simple(config, topic, "A")
    try:
        seen = drain(c, len(a), limit_s=20)
        time.sleep(1)
        assert c.receive(32, 20) == []
    finally:
        c.shutdown()
    assert set(seen) == set(a)


def test_invisibility_redelivery_and_changed_receipts(config, topic):
    (mid,) = send(config, topic, ["only"])
    c = simple(config, topic)
    try:
        got = []
        deadline = time.time() + 20
        while not got and time.time() < deadline:
            got = c.receive(1, 2)
        (m,) = got
        assert m.message_id == mid and m.delivery_attempt == 1
        first = time.time()
        # Not acked: back after its invisible time (2 s), the next attempt.
        again = []
        while not again and time.time() < first + 20:
            again = c.receive(1, 2)
        assert time.time() - first >= 1.5, "not before the invisible time"
        (m2,) = again
        assert m2.message_id == mid and m2.delivery_attempt == 2
        old = m2.receipt_handle
        c.change_invisible_duration(m2, 3)
        assert m2.receipt_handle != old, "a change answers a new receipt"
        stale = copy.copy(m2)
        stale.receipt_handle = old
        with pytest.raises(BadRequestException):
            c.ack(stale)
        c.ack(m2)
        # Acked: never again (looked at for twice its invisible time).
        end = time.time() + 6
        while time.time() < end:
            assert c.receive(1, 2) == []
    finally:
        c.shutdown()


class Listener(MessageListener):
    def __init__(self, fail_first=0):
        self.seen = {}
        self.attempts = {}
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def consume(self, message):
        with self.lock:
            n = self.attempts.get(message.message_id, 0) + 1
            self.attempts[message.message_id] = n
            if n <= self.fail_first:
                return ConsumeResult.FAILURE
            self.seen[message.message_id] = message.body.decode()
        return ConsumeResult.SUCCESS


def test_a_push_consumer_consumes_every_message(config, topic):
    listener = Listener()
    c = PushConsumer(config, f"G{uuid.uuid4().hex[:8]}", listener,
                     {topic: FilterExpression("*")})
    c.startup()
    try:
        ids = send(config, topic, [f"p-{i}" for i in range(200)])
        deadline = time.time() + 60
        while time.time() < deadline:
            with listener.lock:
                if len(listener.seen) >= len(ids):
                    break
            time.sleep(0.2)
    finally:
        c.shutdown()
    assert listener.seen == ids


def test_a_push_listeners_failure_is_redelivered(config, topic):
    listener = Listener(fail_first=1)
    c = PushConsumer(config, f"G{uuid.uuid4().hex[:8]}", listener,
                     {topic: FilterExpression("*")})
    c.startup()
    try:
        ids = send(config, topic, [f"r-{i}" for i in range(5)])
        deadline = time.time() + 60
        while time.time() < deadline:
            with listener.lock:
                if len(listener.seen) >= len(ids):
                    break
            time.sleep(0.2)
    finally:
        c.shutdown()
    assert listener.seen == ids
    assert all(n >= 2 for n in listener.attempts.values())


def test_failures_past_the_groups_max_attempts_go_to_the_dlq(config, topic):
    """A group configured for 2 reconsumptions (3 attempts): a listener that always fails
    sees each message 3 times, each nack redelivered after the backoff; then the gateway
    moves it to %DLQ%<group> and it is not delivered again."""
    from conftest import NAMESRV, raftmq

    group = f"D{uuid.uuid4().hex[:8]}"
    raftmq("group", "create", "--namesrv", NAMESRV, "--group", group,
           "--max-reconsume-times", "2", "--consume-from", "first")
    ids = send(config, topic, ["dead-0", "dead-1"])
    listener = Listener(fail_first=1000)
    c = PushConsumer(config, group, listener, {topic: FilterExpression("*")})
    c.startup()

    def dead_letters():
        try:
            out = raftmq("dlq", "list", "--namesrv", NAMESRV, "--group", group)
        except RuntimeError:  # no DLQ yet
            return set()
        return {line.split("msgId ")[1].split("\t")[0]
                for line in out.splitlines() if "msgId " in line}

    try:
        deadline = time.time() + 90
        while dead_letters() != set(ids) and time.time() < deadline:
            time.sleep(1)
        assert dead_letters() == set(ids)
        time.sleep(3)  # nothing delivered after the move
    finally:
        c.shutdown()
    assert listener.attempts == {i: 3 for i in ids}
    assert listener.seen == {}


class FifoListener(MessageListener):
    """Records, per message group, the bodies consumed successfully in order; fails the
    message `fail_body` once."""

    def __init__(self, fail_body=None):
        self.order = {}
        self.failed = set()
        self.fail_body = fail_body
        self.lock = threading.Lock()

    def consume(self, message):
        body = message.body.decode()
        time.sleep(0.002)
        with self.lock:
            if body == self.fail_body and body not in self.failed:
                self.failed.add(body)
                return ConsumeResult.FAILURE
            self.order.setdefault(message.message_group, []).append(body)
        return ConsumeResult.SUCCESS

    def count(self):
        with self.lock:
            return sum(len(v) for v in self.order.values())


def test_fifo_message_groups_are_consumed_in_order(config, topic):
    from conftest import NAMESRV, raftmq

    group = f"F{uuid.uuid4().hex[:8]}"
    raftmq("group", "create", "--namesrv", NAMESRV, "--group", group, "--fifo", "true",
           "--consume-from", "first")
    p = Producer(config, (topic,))
    p.startup()
    sent = {}
    try:
        # More per group than one receive hands out (32), so that the two consumers would
        # interleave a queue without the server holding it.
        for i in range(100):
            for g in ("A", "B", "C"):
                m = Message()
                m.topic = topic
                m.body = f"{g}-{i}".encode()
                m.message_group = g
                p.send(m)
                sent.setdefault(g, []).append(f"{g}-{i}")
    finally:
        p.shutdown()
    listener = FifoListener(fail_body="A-5")
    consumers = [PushConsumer(config, group, listener, {topic: FilterExpression("*")})
                 for _ in range(2)]
    for c in consumers:
        c.startup()
    try:
        deadline = time.time() + 90
        while listener.count() < 300 and time.time() < deadline:
            time.sleep(0.2)
    finally:
        for c in consumers:
            c.shutdown()
    assert listener.failed == {"A-5"}
    with listener.lock:
        assert listener.order == sent
