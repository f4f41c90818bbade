//! raftmq-testkit: the one way raftmq's tests wait for something to happen.
//!
//! A test never sleeps a fixed time hoping a condition holds by then: it
//! waits on the condition, with a deadline, and fails with what it waited for when the
//! deadline passes. [`wait_until`] checks a condition in place (a closure), [`wait_for`] one
//! that has to await (an RPC, a lock); both panic on timeout and return the value the
//! condition produced. [`try_wait_for`] is the same wait returning the timeout as an error,
//! for code that reports it instead of failing at once (the simulator's liveness checks).
//!
//! ```no_run
//! # async fn demo(log: std::sync::Mutex<Vec<u32>>) {
//! use std::time::Duration;
//! use raftmq_testkit::wait_until;
//! // `Err` means "not yet", and says what was seen instead: the timeout message quotes the last one.
//! wait_until(Duration::from_secs(10), "100 messages consumed", || {
//!     let n = log.lock().expect("log lock").len();
//!     if n >= 100 { Ok(()) } else { Err(format!("{n} consumed")) }
//! })
//! .await;
//! # }
//! ```
//!
//! What a condition returns each time it is checked ([`Check`]): `bool`; `Option<T>` (`Some`
//! ends the wait with that value); or `Result<T, String>`, where `Err` is "not yet" and says
//! what was seen instead. It is a `String` and not any error type, so that `?` on a real
//! failure cannot quietly become "not yet": a failure that should end the test panics in the
//! condition.
//!
//! Time is the workspace `tokio`'s, which is `madsim-tokio`: real time in ordinary builds;
//! simulated time under `--cfg madsim`, so in the simulator a wait is bounded in simulated
//! seconds and a run stays deterministic. The condition is checked at once, then every
//! [`POLL_INTERVAL`]; it is always checked at least once, and once more after the deadline
//! has passed, before the wait gives up.

#[cfg(not(madsim))]
pub mod fuzz;
#[cfg(not(madsim))]
mod ports;
#[cfg(not(madsim))]
pub use ports::{free_addr, free_port};

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again while it does not hold.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What one check of a condition found: done (with a value), or not yet (with, maybe, what
/// was seen instead, for the timeout message).
pub trait Check {
    /// What the wait returns once the condition holds.
    type Value;

    /// `Ok(value)` when the condition holds; otherwise `Err` with what was seen, if anything.
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl Check for bool {
    type Value = ();

    fn into_result(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Check for Option<T> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err(seen)`: not yet; `seen` is what was found instead.
impl<T> Check for Result<T, String> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// A condition that did not hold within its bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// The bound that passed.
    pub within: Duration,
    /// What the last check saw instead, if the condition says (a `Result::Err`).
    pub last: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not within {:?}", self.within)?;
        if let Some(last) = &self.last {
            write!(f, " (last seen: {last})")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}

/// How long to wait, and how often to check ([`POLL_INTERVAL`] unless said). A plain
/// `Duration` is a deadline with the default interval. The simulator's scenarios keep the
/// intervals they were written with: the interval is part of a seed's schedule, so changing
/// it would make a named regression seed replay another run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub within: Duration,
    pub every: Duration,
}

impl Deadline {
    /// Wait up to `within`, checking every `every`.
    pub fn every(within: Duration, every: Duration) -> Self {
        Deadline { within, every }
    }
}

impl From<Duration> for Deadline {
    fn from(within: Duration) -> Self {
        Deadline::every(within, POLL_INTERVAL)
    }
}

/// Checks `check` until it holds and returns its value; after `within`, returns [`TimedOut`]
/// instead. For callers that report a timeout rather than fail on it; tests use
/// [`wait_for`] or [`wait_until`].
pub async fn try_wait_for<C, F>(
    within: impl Into<Deadline>,
    mut check: impl FnMut() -> F,
) -> Result<C::Value, TimedOut>
where
    C: Check,
    F: Future<Output = C>,
{
    let Deadline { within, every } = within.into();
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await.into_result() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(TimedOut { within, last });
        }
        tokio::time::sleep(every).await;
    }
}

/// Awaits `check` until it holds and returns its value.
///
/// # Panics
/// With `"{what}: not within {within:?}"` (and the last thing seen, if the condition says)
/// once `within` has passed.
pub async fn wait_for<C, F>(
    within: impl Into<Deadline>,
    what: &str,
    check: impl FnMut() -> F,
) -> C::Value
where
    C: Check,
    F: Future<Output = C>,
{
    match try_wait_for(within, check).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{what}: {timed_out}"),
    }
}

/// Checks `cond` (which does not await) until it holds and returns its value.
///
/// # Panics
/// With `"{what}: not within {within:?}"` (and the last thing seen, if the condition says)
/// once `within` has passed.
pub async fn wait_until<C: Check>(
    within: impl Into<Deadline>,
    what: &str,
    mut cond: impl FnMut() -> C,
) -> C::Value {
    wait_for(within, what, || std::future::ready(cond())).await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn holds_after_a_few_checks() {
        let checks = Cell::new(0);
        wait_until(Duration::from_secs(5), "the third check", || {
            checks.set(checks.get() + 1);
            checks.get() == 3
        })
        .await;
        assert_eq!(checks.get(), 3);
    }

    #[tokio::test]
    async fn wait_for_returns_what_the_condition_found() {
        let checks = Cell::new(0u32);
        let found = wait_for(Duration::from_secs(5), "a value", || async {
            checks.set(checks.get() + 1);
            tokio::task::yield_now().await;
            (checks.get() >= 2).then_some(checks.get() * 10)
        })
        .await;
        assert_eq!(found, 20);
    }

    #[tokio::test]
    async fn a_condition_that_holds_is_checked_once_even_with_no_time() {
        let checks = Cell::new(0);
        wait_until(Duration::ZERO, "at once", || {
            checks.set(checks.get() + 1);
            true
        })
        .await;
        assert_eq!(checks.get(), 1);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not within 50ms")]
    async fn panics_with_what_it_waited_for() {
        wait_until(Duration::from_millis(50), "never", || false).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a count of 3: not within 30ms (last seen: count 1)")]
    async fn the_panic_quotes_what_was_seen_last() {
        wait_for(Duration::from_millis(30), "a count of 3", || async {
            Err::<(), _>("count 1".to_string())
        })
        .await;
    }

    #[tokio::test]
    async fn try_wait_for_reports_the_timeout_after_the_bound() {
        let start = Instant::now();
        let checks = Cell::new(0);
        let r = try_wait_for(Duration::from_millis(50), || {
            checks.set(checks.get() + 1);
            std::future::ready(Err::<(), _>(format!("check {}", checks.get())))
        })
        .await;
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(checks.get() >= 2, "checked again while waiting");
        assert_eq!(
            r,
            Err(TimedOut {
                within: Duration::from_millis(50),
                last: Some(format!("check {}", checks.get())),
            })
        );
    }
}
