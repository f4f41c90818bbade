//! Auto-batching: concurrent [`Producer::send`](crate::Producer::send)s of one topic share
//! requests.
//!
//! Each topic has a queue of waiting messages and at most [`REQUESTS_IN_FLIGHT`] requests in
//! flight. A message that finds a free request slot goes out at once, alone (no linger: an
//! idle producer's send is as fast as without batching); while every slot is busy, messages
//! wait, and the next free slot takes all that waited, up to [`BATCH_MESSAGES`] messages and
//! [`BATCH_BYTES`] bytes, as one request. So batches form exactly when sends pile up, as the
//! leader's group commit forms Raft entries — RocketMQ 5's auto-batch bounded by in-flight
//! requests instead of a linger time.
//!
//! Every message keeps its own id (given before it waits) and gets its own [`SendResult`]
//! with its own queue offset. A shared request is retried as one send is (on another queue
//! if it fails); if the broker refuses it for good, each of its messages is sent again
//! alone, with the same id, so a refusal fails only the messages it concerns.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::message::Message;
use crate::producer::{Producer, SendResult};

/// Requests in flight per topic before sends start to wait and coalesce.
pub const REQUESTS_IN_FLIGHT: usize = 4;
/// Most messages in one coalesced request.
pub const BATCH_MESSAGES: usize = 512;
/// Most body + property bytes in one coalesced request (a single larger message still goes,
/// alone).
pub const BATCH_BYTES: usize = 1 << 20;

type Reply = oneshot::Sender<Result<SendResult, ClientError>>;

/// One message waiting for a request: with its id, given before it waited.
pub(crate) struct Waiting {
    pub msg: Message,
    pub id: String,
    pub reply: Reply,
}

#[derive(Default)]
struct Topic {
    waiting: Vec<Waiting>,
    in_flight: usize,
}

/// The per-topic queues of one producer.
#[derive(Default)]
pub(crate) struct Coalescer {
    topics: Mutex<HashMap<String, Topic>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalescer")
    }
}

/// The size a message counts for in a batch (what the wire limits count).
pub(crate) fn message_bytes(m: &Message) -> usize {
    m.body.len()
        + m.properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Takes the next batch off the front of `waiting`: at least one message, then while the
/// limits hold.
fn take_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut n = 0;
    let mut bytes = 0;
    for w in waiting.iter() {
        let b = message_bytes(&w.msg);
        if n > 0 && (n >= BATCH_MESSAGES || bytes + b > BATCH_BYTES) {
            break;
        }
        n += 1;
        bytes += b;
    }
    waiting.drain(..n).collect()
}

impl Coalescer {
    /// Queues `w` for its topic; returns a batch to send now if a request slot was free
    /// (the caller must then [`Coalescer::finished`] it, sending what that returns).
    fn enqueue(&self, w: Waiting) -> Option<Vec<Waiting>> {
        let mut topics = self.lock();
        let t = topics.entry(w.msg.topic.clone()).or_default();
        t.waiting.push(w);
        if t.in_flight >= REQUESTS_IN_FLIGHT {
            return None;
        }
        t.in_flight += 1;
        Some(take_batch(&mut t.waiting))
    }

    /// A request of `topic` has been answered: the next batch for its slot, or none (the
    /// slot is freed).
    fn finished(&self, topic: &str) -> Option<Vec<Waiting>> {
        let mut topics = self.lock();
        let t = topics.get_mut(topic)?;
        if t.waiting.is_empty() {
            t.in_flight -= 1;
            if t.in_flight == 0 {
                topics.remove(topic);
            }
            return None;
        }
        Some(take_batch(&mut t.waiting))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Topic>> {
        // Held only to move messages in and out (no await, no I/O): never poisoned by our code.
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends `w` through `producer`'s coalescer and waits for its own result.
pub(crate) async fn send(
    producer: &Producer,
    msg: Message,
    id: String,
) -> Result<SendResult, ClientError> {
    let (reply, rx) = oneshot::channel();
    let topic = msg.topic.clone();
    if let Some(batch) = producer.coalescer().enqueue(Waiting { msg, id, reply }) {
        let p = producer.clone();
        tokio::spawn(async move { run_slot(p, topic, batch).await });
    }
    rx.await
        .unwrap_or(Err(ClientError::State("producer shut down")))
}

/// One request slot of `topic`: sends batches until none is waiting.
async fn run_slot(producer: Producer, topic: String, mut batch: Vec<Waiting>) {
    loop {
        producer.send_coalesced(batch).await;
        match producer.coalescer().finished(&topic) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(
        topic: &str,
        body: usize,
    ) -> (Waiting, oneshot::Receiver<Result<SendResult, ClientError>>) {
        let (reply, rx) = oneshot::channel();
        let w = Waiting {
            msg: Message::new(topic, vec![b'x'; body]),
            id: String::new(),
            reply,
        };
        (w, rx)
    }

    #[test]
    fn a_free_slot_sends_at_once_and_busy_slots_gather_what_waits() {
        let c = Coalescer::default();
        let mut rxs = Vec::new();
        for _ in 0..REQUESTS_IN_FLIGHT {
            let (w, rx) = waiting("T", 10);
            rxs.push(rx);
            let b = c.enqueue(w).expect("a slot is free");
            assert_eq!(b.len(), 1, "alone: nothing waited");
        }
        for _ in 0..3 {
            let (w, rx) = waiting("T", 10);
            rxs.push(rx);
            assert!(c.enqueue(w).is_none(), "every slot is busy: it waits");
        }
        // Another topic has its own slots.
        let (w, _rx) = waiting("U", 10);
        assert_eq!(c.enqueue(w).map(|b| b.len()), Some(1));
        let next = c.finished("T").expect("three waited");
        assert_eq!(
            next.len(),
            3,
            "the freed slot takes all that waited, as one request"
        );
        for _ in 0..REQUESTS_IN_FLIGHT {
            assert!(c.finished("T").is_none());
        }
        assert!(c.lock().get("T").is_none(), "an idle topic is forgotten");
        let (w, _rx) = waiting("T", 10);
        assert!(c.enqueue(w).is_some(), "slots free again");
    }

    #[test]
    fn batches_respect_the_count_and_byte_bounds() {
        let mut v: Vec<Waiting> = (0..BATCH_MESSAGES + 5).map(|_| waiting("T", 1).0).collect();
        assert_eq!(take_batch(&mut v).len(), BATCH_MESSAGES);
        assert_eq!(v.len(), 5);
        let big = BATCH_BYTES / 2 + 1;
        let mut v: Vec<Waiting> = (0..3).map(|_| waiting("T", big).0).collect();
        assert_eq!(take_batch(&mut v).len(), 1, "two would pass the byte bound");
        let mut v = vec![waiting("T", BATCH_BYTES * 2).0];
        assert_eq!(
            take_batch(&mut v).len(),
            1,
            "a single large message still goes"
        );
    }
}
