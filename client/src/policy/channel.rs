//! The client channel's connection rules: where a group's channel connects next, and after
//! how long a pause.
//!
//! A client keeps one channel (the `Channel` stream) to the leader of each broker group it
//! speaks to (`crate::channel`). The events of one connection and what follows them:
//!
//! | event | next connection goes to | after |
//! |---|---|---|
//! | the first frame says OK ([`first_frame`] is `Ok`) | — (the channel is read until it ends) | — |
//! | `NOT_LEADER` naming the leader ([`Event::Redirected`]) | that address | at once (at most [`REDIRECTS_MAX`] in a row, then as a failure) |
//! | no route, no leader, no connection, no first frame in time, `UNAVAILABLE`, `NOT_LEADER` without a leader ([`Event::Failed`]) | the leader of a freshly fetched route | [`RECONNECT_PAUSE`] |
//! | an open channel ended or broke ([`Event::Ended`]) | the leader of a freshly fetched route | at once if it had been open at least [`RECONNECT_PAUSE`], else [`RECONNECT_PAUSE`] |
//! | the route names another leader ([`Event::LeaderMoved`]) | that leader | at once |
//!
//! So a failing group is tried about once a second (never in a hot loop: every event that can
//! repeat without progress pauses, and hint chains are cut at [`REDIRECTS_MAX`]), and a
//! leader change is followed at once.
//!
//! A route's leader is believed over the connected replica only when the route *changed*
//! ([`Connected::route_says`]): right after a failover the name servers may still name the
//! old leader while the replica the client followed a hint to is the new one, and a client
//! that always obeyed the route would flap between the two until the route caught up.
//!
//! No I/O here, no clock: `crate::channel` does the calls and asks these what next.

use std::time::Duration;

use raftmq_proto::ErrorCode;

use crate::policy::send::REDIRECTS_MAX;

/// The pause after a failed connection, and the shortest life of a channel after which its
/// end is followed by an immediate reconnection.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// What ended (or prevented) a group's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The first frame said `NOT_LEADER` and named the leader.
    Redirected(String),
    /// No channel: no route or leader, no connection, no first frame in time, or a first
    /// frame refusing it without naming a leader.
    Failed,
    /// An open channel ended (or broke) after being open this long.
    Ended { open_for: Duration },
    /// While the channel was open, the route came to name this other leader.
    LeaderMoved(String),
}

/// Where the next connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// This address.
    Addr(String),
    /// The group's leader in its route, fetched again from the name servers if `refresh`.
    Route { refresh: bool },
}

/// What a channel's first frame says, by its status code and the leader it names (empty if
/// none): `Ok` (the channel is open), or why not (redirected, or failed).
pub(crate) fn first_frame(code: ErrorCode, leader_hint: &str) -> Result<(), Event> {
    match code {
        ErrorCode::Ok => Ok(()),
        ErrorCode::NotLeader if !leader_hint.is_empty() => {
            Err(Event::Redirected(leader_hint.to_string()))
        }
        _ => Err(Event::Failed),
    }
}

/// One group's reconnection state: the `NOT_LEADER` hints followed in a row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reconnect {
    redirects: u32,
}

impl Reconnect {
    /// A channel opened: the hints in a row are over.
    pub(crate) fn opened(&mut self) {
        self.redirects = 0;
    }

    /// Where the next connection goes after `event`, and the pause before it (see the module
    /// docs' table).
    pub(crate) fn next(&mut self, event: Event) -> (Target, Duration) {
        let fresh_route = Target::Route { refresh: true };
        let next = match event {
            Event::Redirected(addr) if self.redirects < REDIRECTS_MAX => {
                self.redirects += 1;
                return (Target::Addr(addr), Duration::ZERO);
            }
            Event::Redirected(_) | Event::Failed => (fresh_route, RECONNECT_PAUSE),
            Event::Ended { open_for } if open_for >= RECONNECT_PAUSE => {
                (fresh_route, Duration::ZERO)
            }
            Event::Ended { .. } => (fresh_route, RECONNECT_PAUSE),
            Event::LeaderMoved(addr) => (Target::Addr(addr), Duration::ZERO),
        };
        self.redirects = 0;
        next
    }
}

/// An open channel: the replica it is connected to, and the leader its group's route named
/// when last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connected {
    addr: String,
    route_addr: Option<String>,
}

impl Connected {
    /// A channel open to `addr` while the route named `route_addr` (`None`: no leader).
    pub(crate) fn new(addr: String, route_addr: Option<String>) -> Self {
        Self { addr, route_addr }
    }

    /// The replica connected to.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Records the route's leader now (`None`: none known); returns the leader to move to if
    /// the route changed to name a replica other than the one connected to. A route that still
    /// names what it named before is not believed over the connected replica (it may be stale;
    /// see the module docs), nor is a route without a leader.
    pub(crate) fn route_says(&mut self, now: Option<&str>) -> Option<String> {
        let now = now?;
        let changed = self.route_addr.as_deref() != Some(now);
        self.route_addr = Some(now.to_string());
        (changed && now != self.addr).then(|| now.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn route(refresh: bool) -> Target {
        Target::Route { refresh }
    }

    #[test]
    fn the_first_frame_opens_redirects_or_fails() {
        assert_eq!(first_frame(ErrorCode::Ok, ""), Ok(()));
        assert_eq!(
            first_frame(ErrorCode::NotLeader, "10.0.0.2:1"),
            Err(Event::Redirected("10.0.0.2:1".into()))
        );
        assert_eq!(first_frame(ErrorCode::NotLeader, ""), Err(Event::Failed));
        assert_eq!(
            first_frame(ErrorCode::Unavailable, "10.0.0.2:1"),
            Err(Event::Failed)
        );
        assert_eq!(first_frame(ErrorCode::Internal, ""), Err(Event::Failed));
    }

    #[test]
    fn a_hint_is_followed_at_once_but_not_forever() {
        let mut r = Reconnect::default();
        for _ in 0..REDIRECTS_MAX {
            assert_eq!(
                r.next(Event::Redirected("b:1".into())),
                (Target::Addr("b:1".into()), Duration::ZERO)
            );
        }
        assert_eq!(
            r.next(Event::Redirected("b:1".into())),
            (route(true), RECONNECT_PAUSE),
            "two replicas naming each other do not make a hot loop"
        );
        assert_eq!(
            r.next(Event::Redirected("b:1".into())),
            (Target::Addr("b:1".into()), Duration::ZERO),
            "the count starts again after the pause"
        );
    }

    #[test]
    fn an_open_channel_resets_the_hint_count() {
        let mut r = Reconnect::default();
        for _ in 0..REDIRECTS_MAX {
            r.next(Event::Redirected("b:1".into()));
        }
        r.opened();
        assert_eq!(
            r.next(Event::Redirected("c:1".into())),
            (Target::Addr("c:1".into()), Duration::ZERO)
        );
    }

    #[test]
    fn failures_pause_and_fetch_the_route_again() {
        let mut r = Reconnect::default();
        for _ in 0..5 {
            assert_eq!(r.next(Event::Failed), (route(true), RECONNECT_PAUSE));
        }
    }

    #[test]
    fn a_channel_that_lived_reconnects_at_once_a_short_one_pauses() {
        let mut r = Reconnect::default();
        assert_eq!(
            r.next(Event::Ended {
                open_for: Duration::from_secs(60)
            }),
            (route(true), Duration::ZERO)
        );
        assert_eq!(
            r.next(Event::Ended {
                open_for: RECONNECT_PAUSE
            }),
            (route(true), Duration::ZERO)
        );
        assert_eq!(
            r.next(Event::Ended { open_for: MS(10) }),
            (route(true), RECONNECT_PAUSE),
            "a broker closing every channel at once is not hammered"
        );
    }

    #[test]
    fn a_moved_leader_is_followed_at_once() {
        let mut r = Reconnect::default();
        assert_eq!(
            r.next(Event::LeaderMoved("n:1".into())),
            (Target::Addr("n:1".into()), Duration::ZERO)
        );
    }

    #[test]
    fn the_route_is_believed_only_when_it_changes() {
        // Connected to b (a hint) while the route still named a.
        let mut c = Connected::new("b:1".into(), Some("a:1".into()));
        assert_eq!(c.addr(), "b:1");
        assert_eq!(c.route_says(Some("a:1")), None, "a stale route, unchanged");
        assert_eq!(c.route_says(None), None, "no leader known: stay");
        assert_eq!(c.route_says(Some("b:1")), None, "the route caught up");
        assert_eq!(
            c.route_says(Some("c:1")),
            Some("c:1".into()),
            "a new leader"
        );
        let mut fresh = Connected::new("a:1".into(), None);
        assert_eq!(fresh.route_says(Some("a:1")), None);
        assert_eq!(fresh.route_says(Some("d:1")), Some("d:1".into()));
    }
}
