//! Client sessions, keyed by the `x-mq-client-id` header: the settings a client last wrote
//! (merged), its Telemetry stream (the way to push commands to it), when it was last heard.
//! A session lives in the gateway only: a gateway restart costs clients a new Telemetry
//! stream, which they open on their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftmq_proto::rocketmq::v2::{Settings, TelemetryCommand};
use tokio::sync::mpsc;
use tonic::Status;

use crate::routes::lock;

/// A session without a Telemetry stream, silent this long, is forgotten (clients heartbeat
/// every 10 s).
pub const SESSION_IDLE_MAX: Duration = Duration::from_secs(120);
/// Most sessions at once; beyond, idle ones are forgotten first.
pub const SESSIONS_MAX: usize = 100_000;

type Sender = mpsc::Sender<Result<TelemetryCommand, Status>>;

#[derive(Default)]
struct Session {
    settings: Option<Settings>,
    /// The open Telemetry stream and its number (a newer stream replaces an older one).
    telemetry: Option<(u64, Sender)>,
    last_seen: Option<Instant>,
}

/// Every client's session.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_client: HashMap<String, Session>,
    next_stream: u64,
}

impl Sessions {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut g = lock(&self.inner);
        if g.by_client.len() >= SESSIONS_MAX && !g.by_client.contains_key(id) {
            let now = Instant::now();
            g.by_client.retain(|_, s| {
                s.telemetry.is_some()
                    || s.last_seen
                        .is_some_and(|t| now.duration_since(t) < SESSION_IDLE_MAX)
            });
        }
        let s = g.by_client.entry(id.to_string()).or_default();
        s.last_seen = Some(Instant::now());
        f(s)
    }

    /// The client was heard from.
    pub fn touch(&self, id: &str) {
        self.with(id, |_| ());
    }

    /// A Telemetry stream opened; returns its number.
    pub fn open_telemetry(&self, id: &str, tx: Sender) -> u64 {
        let n = {
            let mut g = lock(&self.inner);
            g.next_stream += 1;
            g.next_stream
        };
        self.with(id, |s| s.telemetry = Some((n, tx)));
        n
    }

    /// Telemetry stream `n` ended (a newer one is kept).
    pub fn close_telemetry(&self, id: &str, n: u64) {
        let mut g = lock(&self.inner);
        if let Some(s) = g.by_client.get_mut(id)
            && s.telemetry.as_ref().is_some_and(|(m, _)| *m == n)
        {
            s.telemetry = None;
        }
    }

    pub fn set_settings(&self, id: &str, settings: Settings) {
        self.with(id, |s| s.settings = Some(settings));
    }

    /// The settings `id` last wrote (merged with the server's), if any.
    pub fn settings(&self, id: &str) -> Option<Settings> {
        lock(&self.inner)
            .by_client
            .get(id)
            .and_then(|s| s.settings.clone())
    }

    /// Writes `cmd` on the Telemetry stream of a live client whose settings publish `topic`
    /// (the most recently heard first); whether one took it.
    pub fn push_to_publisher(&self, topic: &str, cmd: TelemetryCommand) -> bool {
        let g = lock(&self.inner);
        let mut candidates: Vec<&Session> = g
            .by_client
            .values()
            .filter(|s| s.telemetry.is_some())
            .filter(|s| {
                matches!(
                    s.settings.as_ref().and_then(|x| x.pub_sub.as_ref()),
                    Some(raftmq_proto::rocketmq::v2::settings::PubSub::Publishing(p))
                        if p.topics.iter().any(|t| t.name == topic)
                )
            })
            .collect();
        candidates.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
        candidates.into_iter().any(|s| {
            s.telemetry
                .as_ref()
                .is_some_and(|(_, tx)| tx.try_send(Ok(cmd.clone())).is_ok())
        })
    }

    /// The client said it terminates.
    pub fn end(&self, id: &str) {
        lock(&self.inner).by_client.remove(id);
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        lock(&self.inner).by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_stream_survives_the_older_ones_end() {
        let s = Sessions::default();
        let (tx, _rx) = mpsc::channel(1);
        let a = s.open_telemetry("c", tx.clone());
        let b = s.open_telemetry("c", tx);
        s.close_telemetry("c", a);
        assert!(
            lock(&s.inner).by_client["c"]
                .telemetry
                .as_ref()
                .is_some_and(|(n, _)| *n == b)
        );
        s.set_settings("c", Settings::default());
        assert!(s.settings("c").is_some());
        s.end("c");
        assert!(s.is_empty());
    }
}
