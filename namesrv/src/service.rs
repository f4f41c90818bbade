//! The `NameServer` gRPC service over a [`Registry`], and the task that scans it.
//!
//! The registry sits behind a `std::sync::Mutex`: every call holds it only to read or edit
//! the in-memory maps (no I/O, nothing awaits under it). Time is the runtime's monotonic clock
//! (madsim's under simulation), counted from when the service started.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raftmq_proto::ErrorCode;
use raftmq_proto::v1::name_server_server::{NameServer, NameServerServer};
use raftmq_proto::v1::{
    GetClusterInfoRequest, GetClusterInfoResponse, GetRouteRequest, GetRouteResponse,
    RegisterBrokerRequest, RegisterBrokerResponse, Status, UnregisterBrokerRequest,
    UnregisterBrokerResponse,
};
use tonic::{Request, Response};

use crate::SCAN_EVERY_MS;
use crate::registry::Registry;

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(not(madsim))]
pub type NameServerService = NameServerServer<NamesrvHandle>;
#[cfg(madsim)]
pub type NameServerService = NameServerServer<NamesrvHandle, tonic::codegen::IdentityInterceptor>;

/// A running name server; cheap to clone.
#[derive(Clone)]
pub struct NamesrvHandle {
    registry: Arc<Mutex<Registry>>,
    start: tokio::time::Instant,
}

impl Default for NamesrvHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl NamesrvHandle {
    /// A new, empty registry (must run inside a runtime: it starts the scan task, which stops
    /// when every handle is dropped).
    pub fn new() -> Self {
        let h = NamesrvHandle {
            registry: Arc::default(),
            start: tokio::time::Instant::now(),
        };
        let weak = Arc::downgrade(&h.registry);
        let start = h.start;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(SCAN_EVERY_MS)).await;
                let Some(reg) = weak.upgrade() else { return };
                let now = start.elapsed().as_millis() as u64;
                let gone = reg
                    .lock()
                    .expect("lock poisoned: a panic broke this state; see [profile.release]")
                    .scan(now);
                for (g, id) in gone {
                    tracing::info!(group = %g, replica = id, "namesrv: replica expired");
                }
            }
        });
        h
    }

    /// The gRPC service to add to a server.
    pub fn into_service(self) -> NameServerService {
        NameServerServer::new(self)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Never poisoned in a release build (panic = "abort": see the workspace Cargo.toml).
        self.registry
            .lock()
            .expect("lock poisoned: a panic broke this state; see [profile.release]")
    }
}

fn ok() -> Option<Status> {
    Some(Status {
        code: ErrorCode::Ok as i32,
        ..Default::default()
    })
}

fn err(code: ErrorCode, message: String) -> Option<Status> {
    Some(Status {
        code: code as i32,
        message,
        leader_addr: String::new(),
    })
}

#[tonic::async_trait]
impl NameServer for NamesrvHandle {
    async fn register_broker(
        &self,
        req: Request<RegisterBrokerRequest>,
    ) -> Result<Response<RegisterBrokerResponse>, tonic::Status> {
        let req = req.into_inner();
        let now = self.now_ms();
        let status = match self.lock().register(&req, now) {
            Ok(()) => ok(),
            Err(e) => err(e.code(), e.message),
        };
        Ok(Response::new(RegisterBrokerResponse { status }))
    }

    async fn unregister_broker(
        &self,
        req: Request<UnregisterBrokerRequest>,
    ) -> Result<Response<UnregisterBrokerResponse>, tonic::Status> {
        let req = req.into_inner();
        self.lock().unregister(&req.group, req.replica_id);
        Ok(Response::new(UnregisterBrokerResponse { status: ok() }))
    }

    async fn get_route(
        &self,
        req: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteResponse>, tonic::Status> {
        let topic = req.into_inner().topic;
        if let Err(e) = raftmq_proto::limits::check_name("topic", &topic) {
            return Ok(Response::new(GetRouteResponse {
                status: err(e.code(), e.message),
                ..Default::default()
            }));
        }
        let now = self.now_ms();
        let resp = match self.lock().route(&topic, now) {
            Some(r) => GetRouteResponse {
                status: ok(),
                queues: r.queues,
                groups: r.groups,
            },
            None => GetRouteResponse {
                status: err(
                    ErrorCode::TopicNotFound,
                    format!("no live broker group holds topic {topic:?}"),
                ),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn get_cluster_info(
        &self,
        _req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, tonic::Status> {
        let now = self.now_ms();
        Ok(Response::new(GetClusterInfoResponse {
            status: ok(),
            groups: self.lock().cluster_info(now),
        }))
    }
}
