// The official RocketMQ 5 Node.js client (rocketmq-client-nodejs 1.0.8, unchanged) against
// raftmq proxy: a producer sends normal messages and a message group, a SimpleConsumer
// receives and acks every one. Prints one JSON line: what was sent and what was received.
// Usage: node smoke.js <gateway host:port> <topic> <consumer group>
'use strict';

const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

async function main() {
  const [endpoints, topic, group] = process.argv.slice(2);
  const producer = new Producer({ endpoints, topic, requestTimeout: 5000 });
  await producer.startup();
  const sent = {};
  const fifo = [];
  try {
    for (let i = 0; i < 20; i++) {
      const r = await producer.send({ topic, tag: 'node', body: Buffer.from(`node-${i}`) });
      sent[r.messageId] = `node-${i}`;
    }
    for (let i = 0; i < 10; i++) {
      const r = await producer.send({
        topic, tag: 'node', messageGroup: 'node-group', body: Buffer.from(`node-fifo-${i}`),
      });
      sent[r.messageId] = `node-fifo-${i}`;
      fifo.push(r.offset);
    }
  } finally {
    await producer.shutdown();
  }

  const consumer = new SimpleConsumer({
    endpoints,
    consumerGroup: group,
    subscriptions: new Map().set(topic, '*'),
    awaitDuration: 3000,
    requestTimeout: 5000,
  });
  await consumer.startup();
  const received = {};
  try {
    const deadline = Date.now() + 60000;
    while (Object.keys(received).length < Object.keys(sent).length && Date.now() < deadline) {
      for (const m of await consumer.receive(16, 20000)) {
        received[m.messageId] = (received[m.messageId] || 0) + 1;
        await consumer.ack(m);
      }
    }
  } finally {
    await consumer.shutdown();
  }
  console.log(JSON.stringify({ sent, received, fifo_offsets: fifo }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
