//! Listener dispatch: hands batches to the application's listener, at most `consume_threads`
//! calls at once, and hands a batch back after a growing pause when the listener asks for a
//! redelivery.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{ConsumeResult, ReceivedMessage};
use crate::policy::consume::reconsume_pause;

pub(super) type ListenerFn = Arc<dyn Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync>;

/// The application's listener, and how it is called.
#[derive(Clone)]
pub(super) enum Listener {
    /// For batches from any queues, concurrently.
    Concurrent(ListenerFn),
    /// For one queue at a time, in queue order, with the queue locked at the broker.
    Orderly(ListenerFn),
}

impl Listener {
    pub(super) fn is_orderly(&self) -> bool {
        matches!(self, Listener::Orderly(_))
    }

    /// Hands `chunk` to the listener until it succeeds, pausing longer each time it asks for
    /// a redelivery (`reconsume_times` counts them). `calls` bounds the calls running at once
    /// across every queue of the consumer.
    pub(super) async fn deliver(&self, calls: &Semaphore, chunk: &[ReceivedMessage]) {
        let f = match self {
            Listener::Concurrent(f) | Listener::Orderly(f) => f,
        };
        let mut batch = chunk.to_vec();
        let mut tries = 0u32;
        loop {
            let outcome = {
                let _permit = calls.acquire().await;
                f(&batch)
            };
            if outcome == ConsumeResult::Success {
                return;
            }
            tries += 1;
            for m in &mut batch {
                m.reconsume_times += 1;
            }
            tokio::time::sleep(reconsume_pause(tries)).await;
        }
    }
}
