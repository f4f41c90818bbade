//! Listener dispatch: one call of the application's listener on a batch, at most
//! `consume_threads` calls at once. A call fails when the listener asks for a redelivery,
//! panics, or runs longer than `consume_timeout` (its answer is then not trusted, as
//! RocketMQ's consumers treat a timed-out consumption); what happens to a failed batch is
//! `retry`'s business.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{ConsumeResult, ReceivedMessage};

pub(super) type ListenerFn = Arc<dyn Fn(&[ReceivedMessage]) -> ConsumeResult + Send + Sync>;

/// The application's listener, and how it is called.
#[derive(Clone)]
pub(super) enum Listener {
    /// For batches from any queues, concurrently.
    Concurrent(ListenerFn),
    /// For one queue at a time, in queue order, with the queue locked at the broker.
    Orderly(ListenerFn),
}

/// Why a call did not consume its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    ReconsumeLater,
    Panicked,
    TimedOut,
}

impl Failure {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Failure::ReconsumeLater => "the listener asked to reconsume later",
            Failure::Panicked => "the listener panicked",
            Failure::TimedOut => "the listener ran past consume_timeout",
        }
    }
}

impl Listener {
    pub(super) fn is_orderly(&self) -> bool {
        matches!(self, Listener::Orderly(_))
    }

    /// Calls the listener once on `batch`, counted against `calls` (which bounds the calls
    /// running at once across every queue of the consumer); gives the batch back with the
    /// outcome — `None` if the call could not run to its end (the runtime is stopping), so
    /// nothing of the batch may count as consumed.
    ///
    /// The listener is the application's code and may block (a database write, a remote
    /// call), so it runs on the blocking pool, never on a runtime worker: a worker held by it
    /// would stall every task queued behind it — in-process, the broker's own (a test saw a
    /// broker's graceful stop wait 20 s on a listener asleep on a worker).
    pub(super) async fn call(
        &self,
        calls: &Semaphore,
        batch: Vec<ReceivedMessage>,
        timeout: Duration,
    ) -> Option<(Vec<ReceivedMessage>, Result<(), Failure>)> {
        let f = match self {
            Listener::Concurrent(f) | Listener::Orderly(f) => f.clone(),
        };
        let _permit = calls.acquire().await;
        let started = Instant::now();
        // A panic in the listener fails the batch, never the queue's task.
        let call = move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| f(&batch)));
            (batch, outcome)
        };
        // The closure catches the listener's panics: the task fails only when cancelled.
        #[cfg(not(madsim))]
        let (batch, outcome) = tokio::task::spawn_blocking(call).await.ok()?;
        // The simulator has no threads (its listeners never block): called in place.
        #[cfg(madsim)]
        let (batch, outcome) = call();
        let result = match outcome {
            Err(_) => Err(Failure::Panicked),
            Ok(_) if started.elapsed() > timeout => Err(Failure::TimedOut),
            Ok(ConsumeResult::Success) => Ok(()),
            Ok(ConsumeResult::ReconsumeLater) => Err(Failure::ReconsumeLater),
        };
        Some((batch, result))
    }
}
