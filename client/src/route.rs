//! Routes and connections shared by producers and consumers of one client.
//!
//! - Name servers: the first is picked at random, the next on failure (round-robin).
//! - Routes are cached per topic and fetched again when older than [`ROUTE_REFRESH`] or when
//!   a send fails.
//! - gRPC channels are cached per broker address.
//! - Fault avoidance: the outcome of each send is recorded in a [`Faults`] table
//!   (`policy::send`), so a group that just failed, or answered slowly, is avoided for a while.
//!
//! Each lock here is a `std::sync::Mutex` over one map, taken only to read or edit it (no I/O,
//! nothing awaited under it): the maps are shared by every task of one client and each edit is
//! a single insert or lookup, so a lock is cheaper and simpler than a task owning them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::messaging_client::MessagingClient;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{GetRouteRequest, GetRouteResponse};
use tokio::time::Instant;
use tonic::transport::Channel;

use raftmq_proto::limits::GRPC_MESSAGE_MAX;

use crate::error::ClientError;
use crate::policy::send::Faults;
use crate::sync::lock;

/// A cached route older than this is fetched again.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(30);
/// A route naming a group without a known leader (an election was under way) is fetched again
/// when older than this: otherwise a client would ignore that group for a whole
/// [`ROUTE_REFRESH`] (no heartbeats to it, no pulls from it).
pub const ROUTE_REFRESH_INCOMPLETE: Duration = Duration::from_secs(1);
/// How long a name server or broker call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A topic's route as the client uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Writable queues: (group, queue id), sorted.
    pub write_queues: Vec<(String, u32)>,
    /// Readable queues: (group, queue id), sorted.
    pub read_queues: Vec<(String, u32)>,
    /// Group → leader address (groups without a known leader are absent).
    pub leaders: BTreeMap<String, String>,
}

impl Route {
    /// Whether every group holding the topic has a known leader.
    pub fn complete(&self) -> bool {
        self.read_queues
            .iter()
            .chain(&self.write_queues)
            .all(|(g, _)| self.leaders.contains_key(g))
    }

    /// The first group (by name) holding the topic: the one whose leader every member of a
    /// consumer group asks for the member list, so that all see the same list.
    pub fn first_group(&self) -> Option<&str> {
        self.read_queues
            .iter()
            .chain(&self.write_queues)
            .map(|(g, _)| g.as_str())
            .min()
    }

    fn from_wire(r: GetRouteResponse) -> Route {
        let mut write_queues = Vec::new();
        let mut read_queues = Vec::new();
        for q in &r.queues {
            if q.perm & 2 != 0 {
                write_queues.extend((0..q.write_queue_nums).map(|i| (q.group.clone(), i)));
            }
            if q.perm & 4 != 0 {
                read_queues.extend((0..q.read_queue_nums).map(|i| (q.group.clone(), i)));
            }
        }
        write_queues.sort();
        read_queues.sort();
        Route {
            write_queues,
            read_queues,
            leaders: r
                .groups
                .into_iter()
                .filter(|g| !g.leader_addr.is_empty())
                .map(|g| (g.group, g.leader_addr))
                .collect(),
        }
    }
}

/// Name servers, routes, channels and faults of one client; cheap to clone.
#[derive(Clone)]
pub(crate) struct Routes {
    inner: Arc<Inner>,
}

struct Inner {
    namesrvs: Vec<String>,
    next_ns: AtomicUsize,
    cache: Mutex<HashMap<String, (Arc<Route>, Instant)>>,
    channels: Mutex<HashMap<String, Channel>>,
    faults: Mutex<Faults>,
}

impl Routes {
    pub fn new(namesrvs: Vec<String>, start_at: usize) -> Self {
        let n = namesrvs.len().max(1);
        Routes {
            inner: Arc::new(Inner {
                namesrvs,
                next_ns: AtomicUsize::new(start_at % n),
                cache: Mutex::default(),
                channels: Mutex::default(),
                faults: Mutex::default(),
            }),
        }
    }

    /// A channel to `addr` (cached).
    pub async fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(c) = lock(&self.inner.channels).get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ClientError::InvalidArgument(format!("address {addr:?}: {e}")))?;
        let ch = match tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => {
                return Err(ClientError::Unavailable(format!(
                    "connecting to {addr}: {e}"
                )));
            }
            Err(_) => return Err(ClientError::Timeout(CALL_TIMEOUT)),
        };
        lock(&self.inner.channels).insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Forgets a channel that failed (the next call reconnects).
    pub fn drop_channel(&self, addr: &str) {
        lock(&self.inner.channels).remove(addr);
    }

    pub async fn messaging(&self, addr: &str) -> Result<MessagingClient<Channel>, ClientError> {
        Ok(MessagingClient::new(self.channel(addr).await?)
            .max_decoding_message_size(GRPC_MESSAGE_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_MAX))
    }

    /// One call to the broker at `addr` within [`CALL_TIMEOUT`]: `f` gets a client and makes
    /// the request. A failed or silent call drops the cached channel (the next reconnects).
    pub async fn call<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(MessagingClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(addr, CALL_TIMEOUT, f).await
    }

    /// [`Routes::call`] within `limit` (connecting included) rather than [`CALL_TIMEOUT`].
    pub async fn call_within<T, F, Fut>(
        &self,
        addr: &str,
        limit: Duration,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(MessagingClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let call = async {
            let c = self.messaging(addr).await?;
            f(c).await
                .map(tonic::Response::into_inner)
                .map_err(|e| ClientError::Unavailable(format!("{addr}: {e}")))
        };
        let r = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(limit)),
        };
        if r.is_err() {
            self.drop_channel(addr);
        }
        r
    }

    /// The leader address of the group holding `q`, from the cached route.
    pub async fn leader_of(&self, topic: &str, group: &str) -> Option<String> {
        self.route(topic, false)
            .await
            .ok()?
            .leaders
            .get(group)
            .cloned()
    }

    /// The route of `topic`, from the cache unless stale or `refresh`.
    pub async fn route(&self, topic: &str, refresh: bool) -> Result<Arc<Route>, ClientError> {
        if !refresh
            && let Some((r, at)) = lock(&self.inner.cache).get(topic)
            && at.elapsed()
                < if r.complete() {
                    ROUTE_REFRESH
                } else {
                    ROUTE_REFRESH_INCOMPLETE
                }
        {
            return Ok(r.clone());
        }
        self.fetch_route(topic).await
    }

    /// The route of `topic` fetched at most `max_age` ago: callers polling for a change
    /// (many sends waiting out a leader's loss) share one fetch per `max_age`.
    pub async fn route_fresh(
        &self,
        topic: &str,
        max_age: Duration,
    ) -> Result<Arc<Route>, ClientError> {
        if let Some((r, at)) = lock(&self.inner.cache).get(topic)
            && at.elapsed() < max_age
        {
            return Ok(r.clone());
        }
        self.fetch_route(topic).await
    }

    /// Fetches `topic`'s route and caches it.
    async fn fetch_route(&self, topic: &str) -> Result<Arc<Route>, ClientError> {
        let r = Arc::new(Route::from_wire(self.fetch(topic).await?));
        lock(&self.inner.cache).insert(topic.to_string(), (r.clone(), Instant::now()));
        Ok(r)
    }

    /// Asks the name servers, starting with the current one and moving on at each failure.
    async fn fetch(&self, topic: &str) -> Result<GetRouteResponse, ClientError> {
        let n = self.inner.namesrvs.len();
        if n == 0 {
            return Err(ClientError::InvalidArgument(
                "no name server address".into(),
            ));
        }
        let mut last = String::new();
        for _ in 0..n {
            let i = self.inner.next_ns.load(Ordering::Relaxed) % n;
            let addr = &self.inner.namesrvs[i];
            let call = async {
                let ch = self.channel(addr).await?;
                NameServerClient::new(ch)
                    .get_route(GetRouteRequest {
                        topic: topic.to_string(),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| ClientError::Unavailable(e.to_string()))
            };
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(r)) => {
                    let code = r
                        .status
                        .as_ref()
                        .and_then(|s| ErrorCode::try_from(s.code).ok());
                    return match code {
                        Some(ErrorCode::Ok) => Ok(r),
                        Some(c) => Err(ClientError::Refused {
                            code: c,
                            message: r.status.map(|s| s.message).unwrap_or_default(),
                        }),
                        None => Err(ClientError::Unavailable(
                            "name server answered without a status".into(),
                        )),
                    };
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {CALL_TIMEOUT:?}"),
            }
            self.drop_channel(addr);
            self.inner.next_ns.store((i + 1) % n, Ordering::Relaxed);
        }
        Err(ClientError::Unavailable(format!(
            "no name server answered: {last}"
        )))
    }

    /// Records the outcome of a call to `group` for fault avoidance.
    pub fn record(&self, group: &str, latency: Duration, failed: bool) {
        lock(&self.inner.faults).record(group, latency, failed, Instant::now());
    }

    /// Whether `group` is out of its fault pause.
    pub fn available(&self, group: &str) -> bool {
        lock(&self.inner.faults).available(group, Instant::now())
    }
}
