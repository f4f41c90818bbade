//! Deliberate bugs that prove the simulator's checkers fire (a checker never seen failing
//! proves nothing). Compiled in only with the cargo feature `mutations`, which `raftmq-sim`
//! enables; without it [`Mutations`] has no fields and every switch is a constant `false`,
//! so the code behind them is dead and the release `raftmq` binary carries none of it
//! (`cargo build --release` builds the root package alone, so no other member's features
//! are unified into it).

/// Which deliberate bugs are switched on (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Signal `IOFlushed` right after the write, before the sync, even in `Sync` mode.
    #[cfg(feature = "mutations")]
    pub ack_before_sync: bool,
    /// `save_vote` returns without storing the vote: a restarted replica forgets whom it
    /// voted for (and its term).
    #[cfg(feature = "mutations")]
    pub skip_vote: bool,
    /// The broker serves pulls from entries in the local log that are not committed yet,
    /// numbering them after the queue's applied end (used by `raftmq-broker`).
    #[cfg(feature = "mutations")]
    pub serve_uncommitted_pulls: bool,
    /// Apply admits a commit of an already decided transaction: the message enters its
    /// queue once per commit entry.
    #[cfg(feature = "mutations")]
    pub commit_twice: bool,
    /// Half messages are dispatched straight to their topic's queue at send time.
    #[cfg(feature = "mutations")]
    pub halves_visible: bool,
    /// The broker's transaction checker keeps its check counts in leader memory and never
    /// records them in the log (used by `raftmq-broker`).
    #[cfg(feature = "mutations")]
    pub checks_in_memory: bool,
    /// Timed messages are dispatched straight to their topic's queue at send time.
    #[cfg(feature = "mutations")]
    pub timers_immediate: bool,
    /// Apply admits every timer delivery copy and leaves the cursor and the index alone: the
    /// scheduler's progress lives in the leader's memory only (used by `raftmq-broker` too).
    #[cfg(feature = "mutations")]
    pub timer_cursor_in_memory: bool,
    /// The broker's send-back counts an attempt one short: `reconsume_times` is not raised,
    /// so the DLQ comes one attempt late (used by `raftmq-broker`).
    #[cfg(feature = "mutations")]
    pub retry_count_off_by_one: bool,
    /// A POP claim hands in-flight messages out again whatever their invisible time.
    #[cfg(feature = "mutations")]
    pub pop_ignores_invisible: bool,
    /// A FIFO group's claim does not hold the queue: it hands out new messages while earlier
    /// ones are invisible and unacknowledged, as for a normal group.
    #[cfg(feature = "mutations")]
    pub pop_ignores_fifo_hold: bool,
}

macro_rules! switches {
    ($($name:ident),*) => {
        impl Mutations {
            $(
                #[cfg(feature = "mutations")]
                #[inline]
                pub fn $name(&self) -> bool {
                    self.$name
                }
                #[cfg(not(feature = "mutations"))]
                #[inline]
                pub const fn $name(&self) -> bool {
                    false
                }
            )*
        }
    };
}

switches!(
    ack_before_sync,
    skip_vote,
    serve_uncommitted_pulls,
    commit_twice,
    halves_visible,
    checks_in_memory,
    timers_immediate,
    timer_cursor_in_memory,
    retry_count_off_by_one,
    pop_ignores_invisible,
    pop_ignores_fifo_hold
);
