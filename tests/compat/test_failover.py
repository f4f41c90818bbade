"""The official RocketMQ 5 Python clients (rocketmq-python-client 5.1.2, unchanged) through a
leader failover: the broker group runs as separate processes (a name server, three brokers,
the gateway), and the leader is SIGKILLed while a producer and a consumer run. No message
whose send the client saw succeed is lost (stored, and consumed), and receipt handles taken
before the failover still acknowledge their messages afterwards."""

import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
from rocketmq import ClientConfiguration, Credentials, Message, Producer, SimpleConsumer
from rocketmq import FilterExpression

from conftest import RAFTMQ, create_topic, raftmq, stored


def free_port():
    """A free local port below the kernel's ephemeral range (outgoing connections cannot
    take it while the test runs)."""
    while True:
        p = random.randrange(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()


class Cluster:
    """A name server, broker group g1 of three replicas and a gateway, each its own
    process, logging under `dir`."""

    def __init__(self, dir):
        self.dir = dir
        self.ns = f"127.0.0.1:{free_port()}"
        self.proxy = f"127.0.0.1:{free_port()}"
        self.brokers = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
        self.procs = {}
        members = "".join(f'{i} = "{a}"\n' for i, a in self.brokers.items())
        for i, addr in self.brokers.items():
            with open(self.config(addr), "w") as f:
                f.write(
                    f'group = "g1"\nreplica_id = {i}\nlisten = "{addr}"\n'
                    f'data_dir = "{dir}/g1-{i}"\nnamesrv_addrs = ["{self.ns}"]\n'
                    f"segment_mib = 16\n[initial_members]\n{members}"
                )
        self.spawn(self.ns, "namesrv", "--listen", self.ns)
        for addr in self.brokers.values():
            self.start_broker(addr)
        self.spawn(self.proxy, "proxy", "--listen", self.proxy, "--namesrv", self.ns)

    def config(self, addr):
        return os.path.join(self.dir, addr.replace(":", "_") + ".toml")

    def spawn(self, key, *args):
        log = open(os.path.join(self.dir, key.replace(":", "_") + ".log"), "a")
        self.procs[key] = subprocess.Popen([RAFTMQ, *args], stdout=log, stderr=log)

    def start_broker(self, addr):
        self.spawn(addr, "broker", "--config", self.config(addr))

    def kill(self, addr):
        p = self.procs.pop(addr)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def leader(self, topic):
        """The group's leader as the name server routes `topic`, or None."""
        try:
            out = raftmq("topic", "route", "--namesrv", self.ns, "--topic", topic)
        except RuntimeError:
            return None
        for line in out.splitlines():
            if line.startswith("g1 leader ") and "(none)" not in line:
                return line.split()[-1]
        return None

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def cluster():
    base = os.path.dirname(os.environ["HOME"])  # target/compat (scripts/compat.sh)
    c = Cluster(tempfile.mkdtemp(prefix="failover-", dir=base))
    try:
        yield c
    finally:
        c.stop()


def wait(what, check, limit_s):
    deadline = time.time() + limit_s
    while True:
        v = check()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {limit_s} s")
        time.sleep(0.2)


def test_a_leader_killed_under_load_loses_no_acknowledged_message(cluster):
    topic = f"Failover{uuid.uuid4().hex[:8]}"
    wait("the group up and the topic made",
         lambda: _try(lambda: create_topic(topic, namesrv=cluster.ns)), 60)
    config = ClientConfiguration(cluster.proxy, Credentials(), request_timeout=5)
    group = f"G{uuid.uuid4().hex[:8]}"
    raftmq("group", "create", "--namesrv", cluster.ns, "--group", group,
           "--consume-from", "first")
    producer = Producer(config, (topic,))
    producer.startup()
    consumer = SimpleConsumer(config, group, {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()

    acked_sends, send_failures, consumed = set(), [0], set()
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            m = Message()
            m.topic = topic
            m.body = f"f-{i}".encode()
            i += 1
            try:
                acked_sends.add(producer.send(m).message_id)
            except Exception:
                send_failures[0] += 1
                time.sleep(0.1)
            time.sleep(0.01)

    def consume():
        while not stop.is_set():
            try:
                for m in consumer.receive(16, 20):
                    try:
                        consumer.ack(m)
                        consumed.add(m.message_id)
                    except Exception:
                        pass  # redelivered after its invisible time
            except Exception:
                time.sleep(0.2)

    try:
        # Handles taken before the failover, held for 60 s.
        wait("first sends", lambda: _try(lambda: acked_sends.add(
            producer.send(_message(topic, "before")).message_id) or True), 30)
        before = wait("messages received before the failover",
                      lambda: _try(lambda: consumer.receive(16, 60)), 30)
        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        time.sleep(3)
        old = wait("a leader", lambda: cluster.leader(topic), 30)
        sent_before_kill = len(acked_sends)
        cluster.kill(old)
        new = wait("a new leader", lambda: (lambda l: l if l and l != old else None)(
            cluster.leader(topic)), 40)
        assert new != old
        # Receipts from before the failover still acknowledge (retried while the new
        # leader settles: an unknown outcome may be retried, a refusal is final).
        for m in before:
            wait("an old handle acked", lambda: _try(lambda: consumer.ack(m) or True), 30)
            consumed.add(m.message_id)
        time.sleep(3)
        cluster.start_broker(old)
        wait("sends after the failover", lambda: len(acked_sends) > sent_before_kill + 50, 60)
        stop.set()
        for t in threads:
            t.join(30)
        # Everything acknowledged is stored ...
        ids = {r["id"] for r in stored(topic, len(acked_sends) + 1000, idle_ms=3000,
                                       namesrv=cluster.ns)}
        assert acked_sends <= ids, f"lost: {sorted(acked_sends - ids)[:10]}"
        # ... and consumed through the gateway.
        deadline = time.time() + 90
        while not acked_sends <= consumed and time.time() < deadline:
            for m in _try(lambda: consumer.receive(32, 20)) or []:
                if _try(lambda: consumer.ack(m) or True):
                    consumed.add(m.message_id)
        assert acked_sends <= consumed, f"never consumed: {sorted(acked_sends - consumed)[:10]}"
        print(f"sent {len(acked_sends)} acknowledged, {send_failures[0]} failed sends, "
              f"{len(before)} handles from before the failover acked")
    finally:
        stop.set()
        producer.shutdown()
        consumer.shutdown()


def _message(topic, body):
    m = Message()
    m.topic = topic
    m.body = body.encode()
    return m


def _try(f):
    try:
        return f()
    except Exception:
        return None
