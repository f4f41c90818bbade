//! Routes and connections shared by producers and consumers of one client.
//!
//! - Name servers: the first is picked at random, the next on failure (round-robin).
//! - Routes are cached per topic and fetched again when older than [`ROUTE_REFRESH`] or when
//!   a send fails.
//! - gRPC channels are cached per broker address.
//! - Fault avoidance ([`Faults`]): a group that just failed, or answered slowly, is avoided
//!   for a while, with RocketMQ's latency → pause table.
//!
//! Every lock here is a `std::sync::Mutex` held only to read or edit a map (no I/O, nothing
//! awaits under it).

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

/// Latency-based fault avoidance: after a call to a group, how long to avoid it.
///
/// Failures count as the slowest latency. RocketMQ's table (550 ms → 30 s … failure → 600 s)
/// assumes a broker that fails stays down for minutes; a raftmq group fails over in about
/// two seconds, and a producer that avoided it for ten minutes after one timeout would send
/// everything to the other groups long after the group is back (found by the cluster
/// simulation). So the same latency steps pause for seconds: up to 100 ms → no pause,
/// 550 ms → 1 s, 1 s → 2 s, 2 s → 4 s, 3 s → 6 s, 15 s and more (or a failure) → 10 s.
pub fn pause_after(latency: Duration, failed: bool) -> Duration {
    const TABLE: [(u64, u64); 7] = [
        (50, 0),
        (100, 0),
        (550, 1_000),
        (1_000, 2_000),
        (2_000, 4_000),
        (3_000, 6_000),
        (15_000, 10_000),
    ];
    let ms = if failed {
        30_000
    } else {
        latency.as_millis() as u64
    };
    let pause = TABLE
        .iter()
        .rev()
        .find(|(lat, _)| ms >= *lat)
        .map_or(0, |(_, p)| *p);
    Duration::from_millis(pause)
}

/// Groups to avoid, until when.
#[derive(Debug, Default)]
pub struct Faults {
    until: BTreeMap<String, Instant>,
}

impl Faults {
    /// Records the outcome of a call to `group`.
    pub fn record(&mut self, group: &str, latency: Duration, failed: bool, now: Instant) {
        let pause = pause_after(latency, failed);
        if pause.is_zero() {
            self.until.remove(group);
        } else {
            self.until.insert(group.to_string(), now + pause);
        }
    }

    /// Whether `group` is usable at `now`.
    pub fn available(&self, group: &str, now: Instant) -> bool {
        self.until.get(group).is_none_or(|u| *u <= now)
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock()
        .expect("lock poisoned: a panic broke this state; see [profile.release]")
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
        let call = async {
            let c = self.messaging(addr).await?;
            f(c).await
                .map(tonic::Response::into_inner)
                .map_err(|e| ClientError::Unavailable(format!("{addr}: {e}")))
        };
        let r = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(CALL_TIMEOUT)),
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

    pub fn record(&self, group: &str, latency: Duration, failed: bool) {
        lock(&self.inner.faults).record(group, latency, failed, Instant::now());
    }

    pub fn available(&self, group: &str) -> bool {
        lock(&self.inner.faults).available(group, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_follow_the_latency_table() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(ms(10), false), Duration::ZERO);
        assert_eq!(pause_after(ms(120), false), Duration::ZERO);
        assert_eq!(pause_after(ms(600), false), ms(1_000));
        assert_eq!(pause_after(ms(2_500), false), ms(4_000));
        assert_eq!(pause_after(ms(10), true), ms(10_000));
    }

    #[tokio::test]
    async fn a_failed_group_is_avoided_then_forgiven() {
        let mut f = Faults::default();
        let t0 = Instant::now();
        f.record("g1", Duration::ZERO, true, t0);
        assert!(!f.available("g1", t0));
        assert!(f.available("g2", t0));
        assert!(f.available("g1", t0 + Duration::from_secs(601)));
        f.record("g1", Duration::from_millis(5), false, t0);
        assert!(f.available("g1", t0), "a fast success clears the pause");
    }
}
