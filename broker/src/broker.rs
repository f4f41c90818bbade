//! One broker replica: its [`Replica`] (store + Raft), its gRPC server (Messaging, Admin and
//! Raft on one port), the group's formation, and registration with every name server.
//!
//! Registration happens on start, every [`REGISTER_EVERY_MS`] and within [`ROLE_POLL_MS`] of
//! a role, term or topic change, so routes follow the leader within a fraction of a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use raftmq_proto::v1::name_server_client::NameServerClient;
use raftmq_proto::v1::{RegisterBrokerRequest, Role, TopicConfig};
use raftmq_raft::{Replica, StartError};
use raftmq_store::Disk;
use tokio::sync::oneshot;

use crate::config::BrokerConfig;
use crate::managers::Managers;
use crate::shared::Shared;

/// How often a replica registers with every name server.
pub const REGISTER_EVERY_MS: u64 = 30_000;
/// How long a starting replica waits to apply its log before it registers anyway.
pub const REGISTER_CATCH_UP_MAX_MS: u64 = 5_000;
/// How soon a replica registers again after a registration failed.
pub const REGISTER_RETRY_MS: u64 = 1_000;
/// How often a replica looks for a role change to report.
pub const ROLE_POLL_MS: u64 = 100;
/// How often the server pings an idle client connection, and how long it waits for the answer.
pub const CLIENT_KEEPALIVE: Duration = Duration::from_secs(10);
/// How long one registration call may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running broker replica.
pub struct Broker {
    shared: Arc<Shared>,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Starts the replica on `disk`, serves gRPC on `config.listen`, forms the group if this
    /// replica has the lowest id of `initial_members` and its log is empty, and starts
    /// registering with the name servers.
    pub async fn start(config: BrokerConfig, disk: Arc<dyn Disk>) -> Result<Broker, BrokerError> {
        config.validate()?;
        let members = config.members()?;
        let replica_config = config.replica_config();
        let batch_max_bytes = replica_config.batch.max_bytes;
        let replica = Replica::start(disk, replica_config).await?;
        let managers = Managers::new(&config, &replica, batch_max_bytes);
        let shared = Arc::new(Shared {
            config,
            replica,
            managers,
            start: tokio::time::Instant::now(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        // HTTP/2 pings find a client that went silent (cut off, or its machine gone) within
        // CLIENT_KEEPALIVE × 2: its connection closes, and with it its client channel, so the
        // transaction checker waits for a member it can reach instead of asking into the void.
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(CLIENT_KEEPALIVE))
            .http2_keepalive_timeout(Some(CLIENT_KEEPALIVE))
            .add_service(shared.replica.raft_service())
            .add_service(crate::services::messaging::service(shared.clone()))
            .add_service(crate::services::admin::service(shared.clone()));
        let (addr, server) = serve(router, shared.config.listen, stopped)?;
        if members.keys().next() == Some(&shared.config.replica_id) {
            tokio::spawn(form_group(shared.clone(), members));
        }
        tokio::spawn(register_loop(shared.clone()));
        tokio::spawn(transaction_checker(shared.clone()));
        tokio::spawn(timer_scheduler(shared.clone()));
        Ok(Broker {
            shared,
            addr,
            stop: Some(stop),
            server,
        })
    }

    /// The address the gRPC server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The replica underneath (tests, the dev command).
    pub fn replica(&self) -> &Replica {
        &self.shared.replica
    }

    /// Stops serving, unregisters, and shuts Raft and the store down.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Client channels are long-lived streams: end them (and take no new one), or the
        // server waits for them.
        self.shared.managers.channels.close();
        // So are the group leader's append streams to this replica.
        self.shared.replica.close_streams();
        let _ = (&mut self.server).await;
        unregister(&self.shared).await;
        self.shared.replica.shutdown().await;
    }
}

/// Serves `router` on `listen` until `stopped` fires; returns the address bound (the real
/// port when `listen` asks for port 0) and the server task.
fn serve(
    router: tonic::transport::server::Router,
    listen: std::net::SocketAddr,
    stopped: oneshot::Receiver<()>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), BrokerError> {
    #[cfg(not(madsim))]
    let (addr, server) = {
        let incoming =
            raftmq_raft::network::listen(listen).map_err(|source| BrokerError::Listen {
                addr: listen,
                source,
            })?;
        let addr = incoming
            .local_addr()
            .map_err(|source| BrokerError::Listen {
                addr: listen,
                source,
            })?;
        let server = tokio::spawn(async move {
            let r = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "broker gRPC server failed");
            }
        });
        (addr, server)
    };
    #[cfg(madsim)]
    let (addr, server) = {
        let server = tokio::spawn(async move {
            let r = router
                .serve_with_shutdown(listen, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "broker gRPC server failed");
            }
        });
        (listen, server)
    };
    Ok((addr, server))
}

/// Initializes the group once (an already formed group refuses, which is fine).
async fn form_group(shared: Arc<Shared>, members: BTreeMap<u64, String>) {
    let initialized = shared.replica.raft().is_initialized().await.unwrap_or(true);
    if initialized {
        return;
    }
    match shared.replica.initialize(&members).await {
        Ok(()) => tracing::info!(group = %shared.config.group, "formed the group"),
        Err(e) => tracing::info!(error = %e, "group formation refused (already formed?)"),
    }
}

fn registration(shared: &Shared) -> RegisterBrokerRequest {
    let (role, term) = shared.role();
    RegisterBrokerRequest {
        cluster: shared.config.cluster.clone(),
        group: shared.config.group.clone(),
        replica_id: shared.config.replica_id,
        addr: shared.config.listen.to_string(),
        role: role as i32,
        term,
        topics: shared.managers.topics.list(),
        applied_index: shared.metrics().last_applied.map_or(0, |l| l.index),
    }
}

/// Registers with every name server at once (a dead one must not delay the others); true
/// if every one accepted.
async fn register_all(shared: &Shared) -> bool {
    let req = registration(shared);
    let calls = shared.config.namesrv_addrs.iter().map(|addr| {
        let req = req.clone();
        async move {
            let call = async {
                let mut c = NameServerClient::connect(format!("http://{addr}")).await?;
                c.register_broker(req).await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            };
            match tokio::time::timeout(REGISTER_TIMEOUT, call).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(namesrv = %addr, error = %e, "registration failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(namesrv = %addr, "registration timed out");
                    false
                }
            }
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .all(|ok| ok)
}

async fn unregister(shared: &Shared) {
    for addr in &shared.config.namesrv_addrs {
        let call = async {
            let mut c = NameServerClient::connect(format!("http://{addr}")).await?;
            c.unregister_broker(raftmq_proto::v1::UnregisterBrokerRequest {
                group: shared.config.group.clone(),
                replica_id: shared.config.replica_id,
            })
            .await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        let _ = tokio::time::timeout(REGISTER_TIMEOUT, call).await;
    }
}

/// The transaction checker (`managers::transactions`): a pass every `scan_interval_ms` while
/// this replica leads. Client channels are the leader's: while not leading, any are dropped
/// (so their clients reconnect to the leader).
async fn transaction_checker(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config.transaction.scan_interval_ms);
    loop {
        tokio::time::sleep(every).await;
        if shared.metrics().state == ServerState::Shutdown {
            shared.managers.channels.clear();
            return;
        }
        if !shared.is_leader() {
            shared.managers.channels.clear();
            continue;
        }
        let now = raftmq_raft::replica::now_ms();
        let pass = shared.managers.transactions.check_due(now).await;
        if pass != Default::default() {
            tracing::debug!(?pass, "transaction checker");
        }
    }
}

/// The leader's timer scheduler: every `timer.scan_interval_ms`, delivers what is due (more
/// at once while a full batch keeps coming). A new leader first applies everything committed
/// (a read barrier), so it starts from the cursor the last delivery left.
async fn timer_scheduler(shared: Arc<Shared>) {
    let every = Duration::from_millis(shared.config.timer.scan_interval_ms);
    let timers = &shared.managers.timers;
    let mut ready_term = None;
    loop {
        tokio::time::sleep(every).await;
        let m = shared.metrics();
        if m.state == ServerState::Shutdown {
            return;
        }
        if !shared.is_leader() {
            timers.step_down();
            ready_term = None;
            continue;
        }
        let term = m.current_term;
        if ready_term != Some(term) {
            if let Err(e) = shared.replica.read_barrier().await {
                tracing::debug!(error = %e, "timer scheduler: not ready to lead");
                continue;
            }
            ready_term = Some(term);
        }
        deliver_pipelined(timers, term).await;
    }
}

/// Deliveries the scheduler keeps in flight at once (each waits for a Raft commit and apply;
/// one at a time left the group idle between them).
const DELIVERIES_IN_FLIGHT: usize = 4;

/// Proposes due deliveries, up to [`DELIVERIES_IN_FLIGHT`] at once, until nothing more is
/// due or one fails (the next round starts again from the cursor in the log).
async fn deliver_pipelined(timers: &crate::managers::timers::TimerManager, term: u64) {
    use futures_util::StreamExt;
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    let mut drained = false;
    loop {
        while !drained && in_flight.len() < DELIVERIES_IN_FLIGHT {
            match timers.next_delivery(term, raftmq_raft::replica::now_ms()) {
                Ok(Some(copies)) => in_flight.push_back(timers.propose(copies)),
                Ok(None) => drained = true,
                Err(e) => {
                    tracing::debug!(error = %e, "timer scheduler: reading due timers failed");
                    drained = true;
                }
            }
        }
        match in_flight.next().await {
            None => return,
            Some(Ok(p)) => tracing::debug!(?p, "timer scheduler"),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "timer scheduler: delivery failed");
                // Let those in flight finish; propose nothing more this round.
                drained = true;
            }
        }
    }
}

/// Registers every [`REGISTER_EVERY_MS`] and whenever the role, term or topics change; after
/// a failed registration (a name server down or cut off) again within [`REGISTER_RETRY_MS`],
/// so that a change made while it was unreachable reaches it soon after it is back.
async fn register_loop(shared: Arc<Shared>) {
    // A restarted replica rebuilds its applied state (topics among it) by applying its log
    // again; registered before that, it would tell the name servers its group holds no
    // topics, and clients would drop the group from their routes. So the first registration
    // waits until what the log held at start is applied (bounded: entries past the commit
    // point may never be).
    let at_start = shared.metrics().last_log_index;
    let waited = tokio::time::Instant::now();
    while shared.metrics().last_applied.map(|l| l.index) < at_start
        && waited.elapsed() < Duration::from_millis(REGISTER_CATCH_UP_MAX_MS)
    {
        tokio::time::sleep(Duration::from_millis(ROLE_POLL_MS / 2)).await;
    }
    let mut last: Option<(Role, u64, Vec<TopicConfig>)> = None;
    let mut due_ms = 0;
    loop {
        let (role, term) = shared.role();
        if shared.metrics().state == ServerState::Shutdown {
            return;
        }
        let now = (role, term, shared.managers.topics.list());
        if last.as_ref() != Some(&now) || shared.now_ms() >= due_ms {
            let all_ok = register_all(&shared).await;
            last = Some(now);
            due_ms = next_registration_ms(shared.now_ms(), all_ok);
        }
        tokio::time::sleep(Duration::from_millis(ROLE_POLL_MS)).await;
    }
}

/// When to register next (ms on the replica's clock) after a registration at `at_ms` that
/// every name server accepted (`all_ok`) or not: [`REGISTER_EVERY_MS`] later, or
/// [`REGISTER_RETRY_MS`] later after a failure. (It used to subtract from the registration
/// time, which saturated at 0 on a replica younger than 29 s: a failed registration right
/// after a restart then waited until the replica was 30 s old — seen in simulation, seed
/// 300621: a restarted leader's registration lost to packet loss left its group without a
/// leader in the routes for 6 s.)
fn next_registration_ms(at_ms: u64, all_ok: bool) -> u64 {
    at_ms
        + if all_ok {
            REGISTER_EVERY_MS
        } else {
            REGISTER_RETRY_MS
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_registration_is_retried_soon_even_on_a_young_replica() {
        assert_eq!(next_registration_ms(100, false), 100 + REGISTER_RETRY_MS);
        assert_eq!(next_registration_ms(100, true), 100 + REGISTER_EVERY_MS);
        assert_eq!(
            next_registration_ms(60_000, false),
            60_000 + REGISTER_RETRY_MS
        );
    }
}
