//! Client channels: the broker's way to call a client.
//!
//! A broker cannot dial a client, so the client keeps a `Channel` stream open to the leader of
//! every broker group it speaks to, and the broker sends its requests down it: today
//! transaction checks ("what became of this half message?"), later consumer requests. One
//! [`ClientChannels`] per client (per producer or consumer instance) owns them.
//!
//! # The rules
//! - **One channel per group, to its leader.** A group is [registered](ClientChannels::register)
//!   after a send to it succeeds (with a topic it holds, whose route names its leader) and keeps
//!   its channel until shutdown. The client's first frame is a [`ClientHello`] (client id and
//!   groups); the broker's first frame carries a status: `OK`, or `NOT_LEADER` (with the leader's
//!   address when known) or `UNAVAILABLE`, after which it ends the stream.
//! - **Reconnect**, by `policy::channel`: at once to a named leader; after
//!   [`RECONNECT_PAUSE`](crate::policy::channel::RECONNECT_PAUSE) to the leader of a freshly fetched route when anything failed; at once
//!   when a channel that lived ends; at once when the route comes to name another leader
//!   (looked at every [`LEADER_LOOK_EVERY`]: a leader cut off from the client may never end the
//!   stream itself). Each group's channel is one task; every task ends at shutdown.
//! - **Requests never block the reader.** Each request is handled in its own task, at most
//!   `requests_max` at once; one arriving at the bound waits in its task for a slot (the
//!   broker counted it when it sent it, so it is not dropped), while the reader goes on: a
//!   reader that waited for a slow listener would hold up the channel behind it.
//!
//! # What is shared, and why
//! The group map is a `std::sync::Mutex`: [`ClientChannels::register`] runs after every send
//! (one lookup, rarely an insert) and the group tasks read a group's topic from it; nothing
//! awaits while it is held. Shutdown is a [`Shutdown`] flag every task selects on.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::v1::{ClientFrame, ClientHello, ServerFrame, TransactionCheck};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
// tonic re-exports tokio-stream (also under madsim): a stream over the client's frames
// without another dependency.
use tonic::codec::Streaming;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use crate::error::ClientError;
use crate::error::code;
use crate::policy::channel::{Connected, Event, Reconnect, Target, first_frame};
use crate::route::{CALL_TIMEOUT, Routes};
use crate::sync::lock;

/// How often an open channel compares its group's route leader with the replica it is
/// connected to (a lookup in the route cache, which fetches a route older than
/// `ROUTE_REFRESH`).
pub(crate) const LEADER_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Groups one client keeps channels to, at most (a cluster has far fewer; past this a group
/// is not registered, and logged).
pub(crate) const CHANNEL_GROUPS_MAX: usize = 1024;
/// The client's frames queued on one channel: only the hello so far. The sender is held for
/// the channel's life so that the client's side of the stream stays open (a closed side could
/// read to the broker as a client gone).
const CLIENT_FRAMES_MAX: usize = 1;

/// A transaction check, with the group and the replica whose channel brought it.
pub(crate) struct CheckFrom {
    pub group: String,
    /// The replica that sent the check (its group's leader when it sent it).
    pub addr: String,
    pub check: TransactionCheck,
}

/// Handles one transaction check (runs in its own task).
pub(crate) type CheckHandler =
    Arc<dyn Fn(CheckFrom) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a client does with each kind of broker request; a request without a handler is
/// ignored (logged).
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    pub check: Option<CheckHandler>,
}

/// A flag set once, at shutdown, that wakes every waiter — those waiting when it is set and
/// those that start waiting later. A closed semaphore without permits: `acquire` then fails at
/// once, forever. (`Notify::notify_waiters` misses a task not yet waiting; `watch` is kept out
/// of code the simulator runs: its wake order is not deterministic.)
#[derive(Clone)]
pub(crate) struct Shutdown(Arc<Semaphore>);

impl Shutdown {
    pub(crate) fn new() -> Self {
        Shutdown(Arc::new(Semaphore::new(0)))
    }

    pub(crate) fn trigger(&self) {
        self.0.close();
    }

    pub(crate) fn is_triggered(&self) -> bool {
        self.0.is_closed()
    }

    /// Returns once the flag is set.
    pub(crate) async fn wait(&self) {
        let r = self.0.acquire().await;
        assert!(r.is_err(), "the shutdown semaphore never has permits");
    }
}

/// The channels of one client; see the module docs. Dropping it stops them (as
/// [`ClientChannels::shutdown`] does, without waiting).
pub(crate) struct ClientChannels {
    shared: Arc<Shared>,
}

/// What the group tasks and the handle share.
struct Shared {
    routes: Routes,
    hello: ClientHello,
    handlers: Handlers,
    /// Bounds the requests being handled at once.
    requests: Arc<Semaphore>,
    requests_max: u32,
    shutdown: Shutdown,
    /// Registered groups (see the module docs for why a lock).
    groups: Mutex<BTreeMap<String, Group>>,
}

struct Group {
    /// The topic last sent to on this group: its route names the group's leader.
    topic: String,
    task: JoinHandle<()>,
}

/// A channel whose first frame said `OK`.
struct Open {
    stream: Streaming<ServerFrame>,
    conn: Connected,
    since: Instant,
    /// Keeps the client's side of the stream open (see [`CLIENT_FRAMES_MAX`]).
    _client_frames: mpsc::Sender<ClientFrame>,
}

impl ClientChannels {
    /// Channels over `routes` that introduce themselves with `hello`, hand requests to
    /// `handlers` and handle at most `requests_max` (≥ 1) at once.
    pub(crate) fn new(
        routes: Routes,
        hello: ClientHello,
        handlers: Handlers,
        requests_max: usize,
    ) -> Self {
        assert!(requests_max >= 1, "checked by the builders");
        let requests_max = u32::try_from(requests_max).unwrap_or(u32::MAX);
        ClientChannels {
            shared: Arc::new(Shared {
                routes,
                hello,
                handlers,
                requests: Arc::new(Semaphore::new(requests_max as usize)),
                requests_max,
                shutdown: Shutdown::new(),
                groups: Mutex::default(),
            }),
        }
    }

    /// Keeps a channel to `group`'s leader from now on (nothing if it has one, or after
    /// shutdown); `topic` is one the group holds (its route names the leader). Needs a runtime.
    pub(crate) fn register(&self, topic: &str, group: &str) {
        let mut groups = lock(&self.shared.groups);
        if self.shared.shutdown.is_triggered() {
            return;
        }
        if let Some(g) = groups.get_mut(group) {
            if g.topic != topic {
                g.topic = topic.to_string();
            }
            return;
        }
        if groups.len() >= CHANNEL_GROUPS_MAX {
            tracing::warn!(%group, "more than {CHANNEL_GROUPS_MAX} groups; no channel to this one");
            return;
        }
        let task = tokio::spawn(run(self.shared.clone(), group.to_string()));
        groups.insert(
            group.to_string(),
            Group {
                topic: topic.to_string(),
                task,
            },
        );
    }

    /// Whether [`ClientChannels::shutdown`] ran (channels cannot be started again).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shared.shutdown.is_triggered()
    }

    /// The groups with a channel (open or being reconnected).
    #[cfg(test)]
    fn groups(&self) -> Vec<String> {
        lock(&self.shared.groups).keys().cloned().collect()
    }

    /// Closes every channel, waits for the group tasks to end, then for the requests being
    /// handled to finish (a listener still running is waited for).
    pub(crate) async fn shutdown(&self) {
        self.shared.shutdown.trigger();
        let groups = std::mem::take(&mut *lock(&self.shared.groups));
        for (group, g) in groups {
            if let Err(e) = g.task.await {
                tracing::warn!(%group, error = %e, "client channel task failed");
            }
        }
        let all = self.shared.requests_max;
        let _ = self.shared.requests.acquire_many(all).await;
    }
}

impl Drop for ClientChannels {
    fn drop(&mut self) {
        self.shared.shutdown.trigger();
    }
}

/// One group's task: keeps its channel until shutdown.
async fn run(shared: Arc<Shared>, group: String) {
    let shutdown = shared.shutdown.clone();
    tokio::select! {
        biased;
        () = shutdown.wait() => {}
        () = shared.keep(&group) => {}
    }
    tracing::debug!(%group, "client channel stopped");
}

impl Shared {
    /// Opens, reads and reopens `group`'s channel, for ever (the caller stops it).
    async fn keep(&self, group: &str) {
        let mut reconnect = Reconnect::default();
        let mut target = Target::Route { refresh: false };
        loop {
            let event = match self.open(group, &target).await {
                Err(event) => event,
                Ok(open) => {
                    reconnect.opened();
                    self.serve(group, open).await
                }
            };
            tracing::debug!(%group, ?event, "client channel lost; reconnecting");
            let (next, pause) = reconnect.next(event);
            target = next;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Opens a channel to `target` and reads its first frame, within [`CALL_TIMEOUT`].
    async fn open(&self, group: &str, target: &Target) -> Result<Open, Event> {
        let route_addr = match target {
            Target::Addr(_) => self.leader(group, false).await,
            Target::Route { refresh } => self.leader(group, *refresh).await,
        };
        let addr = match target {
            Target::Addr(a) => a.clone(),
            Target::Route { .. } => match &route_addr {
                Some(a) => a.clone(),
                None => {
                    tracing::debug!(%group, "no known leader");
                    return Err(Event::Failed);
                }
            },
        };
        let (frames, rx) = mpsc::channel(CLIENT_FRAMES_MAX);
        let hello = ClientFrame {
            hello: Some(self.hello.clone()),
        };
        frames
            .try_send(hello)
            .expect("a new channel has room for the hello");
        let call = async {
            let mut client = self.routes.messaging(&addr).await?;
            let unavailable = |e: tonic::Status| ClientError::Unavailable(format!("{addr}: {e}"));
            let mut stream = client
                .channel(ReceiverStream::new(rx))
                .await
                .map_err(unavailable)?
                .into_inner();
            match stream.message().await.map_err(unavailable)? {
                Some(first) => Ok((stream, first)),
                None => Err(ClientError::Unavailable(format!(
                    "{addr}: the channel ended before its first frame"
                ))),
            }
        };
        let opened = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or(Err(ClientError::Timeout(CALL_TIMEOUT)));
        let (stream, first) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::debug!(%group, %addr, %error, "client channel not opened");
                self.routes.drop_channel(&addr);
                return Err(Event::Failed);
            }
        };
        let status = first.status.clone().unwrap_or_default();
        if let Err(event) = first_frame(code(&first.status), &status.leader_addr) {
            let message = status.message;
            tracing::debug!(%group, %addr, ?event, %message, "client channel refused");
            return Err(event);
        }
        tracing::debug!(%group, %addr, "client channel open");
        if first.check.is_some() {
            self.dispatch(group, &addr, first);
        }
        Ok(Open {
            stream,
            conn: Connected::new(addr, route_addr),
            since: Instant::now(),
            _client_frames: frames,
        })
    }

    /// Reads an open channel until it ends, or the route names another leader.
    async fn serve(&self, group: &str, mut open: Open) -> Event {
        let mut next_look = Instant::now() + LEADER_LOOK_EVERY;
        loop {
            tokio::select! {
                biased;
                // First, so that a busy channel cannot starve the look at the route.
                () = tokio::time::sleep_until(next_look) => {
                    next_look = Instant::now() + LEADER_LOOK_EVERY;
                    let now = self.leader(group, false).await;
                    if let Some(to) = open.conn.route_says(now.as_deref()) {
                        return Event::LeaderMoved(to);
                    }
                }
                frame = open.stream.message() => match frame {
                    Ok(Some(frame)) => self.dispatch(group, open.conn.addr(), frame),
                    Ok(None) => return Event::Ended { open_for: open.since.elapsed() },
                    Err(e) => {
                        tracing::debug!(%group, addr = open.conn.addr(), error = %e, "client channel broke");
                        self.routes.drop_channel(open.conn.addr());
                        return Event::Ended { open_for: open.since.elapsed() };
                    }
                },
            }
        }
    }

    /// Hands a broker request to its handler in a task of its own, within the bound.
    fn dispatch(&self, group: &str, addr: &str, frame: ServerFrame) {
        // A frame with nothing this client knows (a newer broker's request) is passed over.
        let Some(check) = frame.check else {
            return;
        };
        let Some(handler) = &self.handlers.check else {
            tracing::debug!(%group, "a transaction check, but no listener here; ignored");
            return;
        };
        // A check the broker sent is counted there: it waits for a slot rather than being
        // dropped (the broker sends at most one check per transaction per interval, so the
        // waiting ones are bounded by the transactions in hand).
        let requests = self.requests.clone();
        let work = handler(CheckFrom {
            group: group.to_string(),
            addr: addr.to_string(),
            check,
        });
        tokio::spawn(async move {
            let Ok(_permit) = requests.acquire_owned().await else {
                return; // shutting down
            };
            work.await;
        });
    }

    /// `group`'s leader in the route of its topic (fetched again if `refresh`).
    async fn leader(&self, group: &str, refresh: bool) -> Option<String> {
        let topic = lock(&self.groups).get(group).map(|g| g.topic.clone())?;
        match self.routes.route(&topic, refresh).await {
            Ok(r) => r.leaders.get(group).cloned(),
            Err(e) => {
                tracing::debug!(%group, %topic, error = %e, "no route");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn channels(handlers: Handlers, requests_max: usize) -> ClientChannels {
        // An address nothing listens on: the group tasks fail and pause, which is all these
        // tests need from them.
        let routes = Routes::new(vec!["127.0.0.1:1".into()], 0);
        let hello = ClientHello {
            client_id: "c".into(),
            producer_groups: vec!["P".into()],
            consumer_groups: Vec::new(),
        };
        ClientChannels::new(routes, hello, handlers, requests_max)
    }

    fn check_frame() -> ServerFrame {
        ServerFrame {
            status: None,
            check: Some(TransactionCheck {
                producer_group: "P".into(),
                message: None,
                check_number: 1,
            }),
        }
    }

    #[tokio::test]
    async fn shutdown_wakes_present_and_later_waiters() {
        let s = Shutdown::new();
        let early = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!s.is_triggered());
        s.trigger();
        early.await.expect("the early waiter wakes");
        // A waiter arriving after the trigger returns at once.
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .expect("the late waiter does not wait");
    }

    #[tokio::test]
    async fn requests_past_the_bound_wait_for_a_slot() {
        let running = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let handler: CheckHandler = {
            let (running, release) = (running.clone(), release.clone());
            Arc::new(move |_| {
                let (running, release) = (running.clone(), release.clone());
                Box::pin(async move {
                    running.fetch_add(1, Ordering::SeqCst);
                    let _ = release.acquire().await.map(|p| p.forget());
                })
            })
        };
        let ch = channels(
            Handlers {
                check: Some(handler),
            },
            2,
        );
        for _ in 0..5 {
            ch.shared.dispatch("g1", "a:1", check_frame());
        }
        let settle = || async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            2,
            "two at once, the rest wait"
        );
        release.add_permits(2);
        settle().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            4,
            "the waiting ones run as slots free"
        );
        release.add_permits(3);
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 5, "none dropped");
        tokio::time::timeout(Duration::from_secs(5), ch.shutdown())
            .await
            .expect("shutdown returns once the requests in hand are done");
        assert_eq!(ch.shared.requests.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_check_without_a_handler_is_ignored() {
        let ch = channels(Handlers::default(), 1);
        ch.shared.dispatch("g1", "a:1", check_frame());
        assert_eq!(ch.shared.requests.available_permits(), 1);
    }

    #[tokio::test]
    async fn groups_are_kept_once_and_stop_at_shutdown() {
        let ch = channels(Handlers::default(), 1);
        ch.register("T", "g1");
        ch.register("T2", "g1");
        ch.register("T", "g2");
        assert_eq!(ch.groups(), ["g1", "g2"]);
        assert_eq!(
            lock(&ch.shared.groups)["g1"].topic,
            "T2",
            "the last topic names the route"
        );
        tokio::time::timeout(Duration::from_secs(10), ch.shutdown())
            .await
            .expect("the group tasks end at shutdown");
        assert!(ch.is_shut_down());
        assert!(ch.groups().is_empty());
        ch.register("T", "g3");
        assert!(ch.groups().is_empty(), "no channel after shutdown");
    }
}
