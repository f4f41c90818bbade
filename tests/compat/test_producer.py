"""The official RocketMQ 5 Python producer (rocketmq-python-client 5.1.2, unchanged) against
`raftmq proxy`: what it sends is stored under its own message ids, FIFO message groups keep
their order in one queue, delivery times hold messages back, recalls cancel them, and bad
sends get the errors the client maps."""

import time
import uuid

import pytest
from rocketmq import Message, Producer
from rocketmq.v5.exception.client_exception import IllegalArgumentException

from conftest import create_topic, stored


def message(topic, body, tag="TagA", keys=None):
    m = Message()
    m.topic = topic
    m.body = body.encode()
    m.tag = tag
    if keys:
        m.keys = keys
    return m


def started(config, *topics):
    p = Producer(config, topics)
    p.startup()
    return p


def test_normal_sends_are_stored_under_the_clients_ids(config, topic):
    p = started(config, topic)
    try:
        sent = {}
        for i in range(200):
            r = p.send(message(topic, f"normal-{i}", keys=f"k{i}"))
            sent[r.message_id] = f"normal-{i}"
    finally:
        p.shutdown()
    rows = stored(topic, len(sent))
    got = {r["id"]: r["body"] for r in rows}
    assert len(rows) == len(got), "stored once each"
    assert got == sent
    assert all(r["tag"] == "TagA" for r in rows)
    assert len({r["queue"] for r in rows}) > 1, "spread over the queues"


def test_a_message_group_keeps_its_order_in_one_queue(config, topic):
    p = started(config, topic)
    try:
        order = []
        for i in range(30):
            m = message(topic, f"fifo-{i}")
            m.message_group = "order-7"
            order.append(p.send(m).message_id)
    finally:
        p.shutdown()
    rows = stored(topic, len(order))
    assert len({r["queue"] for r in rows}) == 1
    assert [r["id"] for r in sorted(rows, key=lambda r: r["offset"])] == order


def test_delivery_time_holds_a_message_back_and_recall_cancels_one(config, topic):
    p = started(config, topic)
    try:
        due = int(time.time()) + 4
        late = message(topic, "delayed")
        late.delivery_timestamp = due
        kept = p.send(late)
        recalled = message(topic, "recalled")
        recalled.delivery_timestamp = due
        r = p.send(recalled)
        assert r.recall_handle
        p.recall_message(topic, r.recall_handle)
        assert stored(topic, 1, idle_ms=1000) == [], "nothing before the delivery time"
        while time.time() < due + 1:
            time.sleep(0.2)
        rows = stored(topic, 2, idle_ms=3000)
    finally:
        p.shutdown()
    assert [r["id"] for r in rows] == [kept.message_id]


def test_bad_sends_get_errors(config, topic):
    p = started(config, topic)
    try:
        # The body limit comes from the server's settings: the client refuses by itself.
        with pytest.raises(IllegalArgumentException):
            p.send(message(topic, "x" * (4 * 1024 * 1024 + 1)))
        # The gateway answers TOPIC_NOT_FOUND (40402) to the route query; this client then
        # fails the send with a plain exception naming the route.
        with pytest.raises(Exception, match="CompatNoSuchTopic route"):
            p.send(message("CompatNoSuchTopic", "lost"))
    finally:
        p.shutdown()
    assert stored(topic, 1, idle_ms=1000) == []


def test_a_typed_topic_takes_only_its_type(config):
    """A FIFO topic's route accepts FIFO messages only: the client itself refuses a normal
    message (the server sets `validate_message_type`; the gateway's own refusal, code
    MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, is shown in tests/proxy_process.rs), and FIFO
    messages are taken."""
    topic = create_topic(f"CompatFifoOnly{uuid.uuid4().hex[:8]}", queues=2, message_type="FIFO")
    p = started(config, topic)
    try:
        with pytest.raises(IllegalArgumentException, match="accept message types"):
            p.send(message(topic, "normal"))
        m = message(topic, "fifo")
        m.message_group = "g"
        sent = p.send(m).message_id
    finally:
        p.shutdown()
    assert [r["id"] for r in stored(topic, 2, idle_ms=1000)] == [sent]
