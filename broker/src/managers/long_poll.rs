//! Long polling: a pull that finds nothing new is held until the replica applies more
//! entries or its deadline passes.
//!
//! A held pull registers on the replica's applied signal *before* it looks, so an apply
//! between the look and the wait is not missed; then it waits for the next apply (or the
//! deadline) and looks again.

use std::time::Duration;

use raftmq_raft::Replica;

/// Pulls held by one replica (no state of its own: the replica's applied signal wakes them).
pub struct PullHolds {
    replica: Replica,
}

impl PullHolds {
    pub fn new(replica: Replica) -> Self {
        PullHolds { replica }
    }

    /// Calls `look` until `found` holds for its answer or `hold_ms` has passed (then the last
    /// answer is returned), looking again after each apply.
    pub async fn hold<T>(
        &self,
        hold_ms: u32,
        mut look: impl FnMut() -> T,
        found: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(hold_ms));
        let signal = self.replica.store().clone();
        loop {
            let mut notified = std::pin::pin!(signal.applied_signal().notified());
            notified.as_mut().enable();
            let answer = look();
            if found(&answer) || tokio::time::Instant::now() >= deadline {
                return answer;
            }
            tokio::select! {
                biased;
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}
