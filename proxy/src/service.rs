//! `apache.rocketmq.v2.MessagingService`: a thin shell over the gateway's parts (sessions,
//! routes, sends). Every answer carries its v2 `Status` in the payload.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use raftmq_client::Producer;
use raftmq_client::producer::SelectByHash;
use raftmq_proto::limits::GRPC_MESSAGE_MAX;
use raftmq_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use raftmq_proto::rocketmq::v2::{self as v2, Code, Resource, telemetry_command};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::codes::{V2Error, ok, status_of};
use crate::routes::{self, Namesrv};
use crate::send::{self, Outgoing};
use crate::sessions::Sessions;
use crate::settings;

/// The metadata header naming the client (every RPC; sessions are keyed by it).
pub const CLIENT_ID_HEADER: &str = "x-mq-client-id";
/// Most commands waiting to be written on one client's Telemetry stream.
const TELEMETRY_BUFFER: usize = 64;

/// The gateway: what it needs to answer RocketMQ 5 clients.
pub struct Gateway {
    namesrv: Namesrv,
    producer: Producer,
    pub(crate) sessions: Sessions,
}

/// What `raftmq proxy` is started with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub namesrv_addrs: Vec<String>,
}

impl Gateway {
    /// Starts the gateway's forwarding producer (it learns routes from `namesrv_addrs`).
    pub async fn start(config: ProxyConfig) -> Result<Arc<Self>, raftmq_client::ClientError> {
        let producer = Producer::builder()
            .namesrv_addrs(config.namesrv_addrs.iter().cloned())
            .group("raftmq-proxy")
            .build()?;
        producer.start().await?;
        Ok(Arc::new(Self {
            namesrv: Namesrv::new(config.namesrv_addrs),
            producer,
            sessions: Sessions::default(),
        }))
    }

    /// The gRPC service (its decode limit above the body limit: a 4 MiB body and its envelope
    /// must not be refused by the decoder before the gateway can answer PAYLOAD_TOO_LARGE).
    pub fn service(self: &Arc<Self>) -> MessagingServiceServer<Svc> {
        MessagingServiceServer::new(Svc(self.clone()))
            .max_decoding_message_size(GRPC_MESSAGE_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_MAX)
    }

    pub async fn shutdown(&self) {
        self.producer.shutdown().await;
    }

    async fn send_one(&self, o: Outgoing) -> Result<raftmq_client::SendResult, V2Error> {
        let r = match &o.message_group {
            Some(g) => {
                self.producer
                    .send_ordered(o.message, &SelectByHash, g.as_str())
                    .await
            }
            None => self.producer.send(o.message).await,
        };
        r.map_err(V2Error::from)
    }
}

/// The service shell.
pub struct Svc(Arc<Gateway>);

type Res<T> = Result<Response<T>, Status>;

/// The client id of a request, required on every RPC.
fn client_id<T>(req: &Request<T>) -> Result<String, V2Error> {
    match req
        .metadata()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() && id.len() <= raftmq_proto::limits::FIELD_MAX => {
            Ok(id.to_string())
        }
        _ => Err(V2Error::new(
            Code::ClientIdRequired,
            format!("the {CLIENT_ID_HEADER} header names the client (1 to 255 bytes)"),
        )),
    }
}

/// Namespaces are not served yet: a resource in one is refused (an empty namespace is none).
pub fn check_namespace(r: &Resource) -> Result<(), V2Error> {
    if r.resource_namespace.is_empty() {
        Ok(())
    } else {
        Err(V2Error::new(
            Code::BadRequest,
            format!(
                "namespace {:?}: namespaces are not supported (use none)",
                r.resource_namespace
            ),
        ))
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not served by raftmq proxy"))
}

#[tonic::async_trait]
impl MessagingService for Svc {
    async fn query_route(
        &self,
        req: Request<v2::QueryRouteRequest>,
    ) -> Res<v2::QueryRouteResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let topic = req
                .topic
                .ok_or_else(|| V2Error::new(Code::IllegalTopic, "a route names its topic"))?;
            check_namespace(&topic)?;
            let endpoints = req
                .endpoints
                .filter(|e| !e.addresses.is_empty())
                .ok_or_else(|| {
                    V2Error::new(
                        Code::IllegalAccessPoint,
                        "a route request carries the endpoints the client dialled",
                    )
                })?;
            let route = self.0.namesrv.route(&topic.name).await?;
            Ok(routes::queues(&topic, &route, &endpoints))
        }
        .await;
        Ok(Response::new(v2::QueryRouteResponse {
            status: Some(status_of(&r)),
            message_queues: r.unwrap_or_default(),
        }))
    }

    async fn heartbeat(&self, req: Request<v2::HeartbeatRequest>) -> Res<v2::HeartbeatResponse> {
        let r = client_id(&req).map(|id| self.0.sessions.touch(&id));
        Ok(Response::new(v2::HeartbeatResponse {
            status: Some(status_of(&r)),
        }))
    }

    async fn send_message(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> Res<v2::SendMessageResponse> {
        if let Err(e) = client_id(&req) {
            return Ok(Response::new(v2::SendMessageResponse {
                status: Some(e.status()),
                entries: vec![],
            }));
        }
        let msgs = req.into_inner().messages;
        if msgs.is_empty() || msgs.len() > raftmq_proto::limits::BATCH_MESSAGES_MAX {
            return Ok(Response::new(v2::SendMessageResponse {
                status: Some(
                    V2Error::new(
                        Code::BadRequest,
                        format!(
                            "{} messages in one send (1 to {})",
                            msgs.len(),
                            raftmq_proto::limits::BATCH_MESSAGES_MAX
                        ),
                    )
                    .status(),
                ),
                entries: vec![],
            }));
        }
        let mut entries = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let id = m
                .system_properties
                .as_ref()
                .map(|s| s.message_id.clone())
                .unwrap_or_default();
            let r = match send::outgoing(m, send::now_ms()) {
                Ok(o) => self.0.send_one(o).await,
                Err(e) => Err(e),
            };
            entries.push(match r {
                Ok(s) => v2::SendResultEntry {
                    status: Some(ok()),
                    message_id: id,
                    transaction_id: String::new(),
                    offset: s.queue_offset as i64,
                    recall_handle: s.recall_handle.unwrap_or_default(),
                },
                Err(e) => v2::SendResultEntry {
                    status: Some(e.status()),
                    message_id: id,
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(v2::SendMessageResponse {
            status: Some(overall(&entries)),
            entries,
        }))
    }

    async fn query_assignment(
        &self,
        _req: Request<v2::QueryAssignmentRequest>,
    ) -> Res<v2::QueryAssignmentResponse> {
        Err(unimplemented("QueryAssignment (POP consumption)"))
    }

    type ReceiveMessageStream =
        Pin<Box<dyn Stream<Item = Result<v2::ReceiveMessageResponse, Status>> + Send + 'static>>;

    async fn receive_message(
        &self,
        _req: Request<v2::ReceiveMessageRequest>,
    ) -> Res<Self::ReceiveMessageStream> {
        Err(unimplemented("ReceiveMessage (POP consumption)"))
    }

    async fn ack_message(
        &self,
        _req: Request<v2::AckMessageRequest>,
    ) -> Res<v2::AckMessageResponse> {
        Err(unimplemented("AckMessage (POP consumption)"))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Res<v2::ForwardMessageToDeadLetterQueueResponse> {
        Err(unimplemented(
            "ForwardMessageToDeadLetterQueue (POP consumption)",
        ))
    }

    type PullMessageStream =
        Pin<Box<dyn Stream<Item = Result<v2::PullMessageResponse, Status>> + Send + 'static>>;

    async fn pull_message(
        &self,
        _req: Request<v2::PullMessageRequest>,
    ) -> Res<Self::PullMessageStream> {
        Err(unimplemented("PullMessage"))
    }

    async fn update_offset(
        &self,
        _req: Request<v2::UpdateOffsetRequest>,
    ) -> Res<v2::UpdateOffsetResponse> {
        Err(unimplemented("UpdateOffset"))
    }

    async fn get_offset(&self, _req: Request<v2::GetOffsetRequest>) -> Res<v2::GetOffsetResponse> {
        Err(unimplemented("GetOffset"))
    }

    async fn query_offset(
        &self,
        _req: Request<v2::QueryOffsetRequest>,
    ) -> Res<v2::QueryOffsetResponse> {
        Err(unimplemented("QueryOffset"))
    }

    async fn end_transaction(
        &self,
        _req: Request<v2::EndTransactionRequest>,
    ) -> Res<v2::EndTransactionResponse> {
        Err(unimplemented("EndTransaction (transactional messages)"))
    }

    type TelemetryStream =
        Pin<Box<dyn Stream<Item = Result<v2::TelemetryCommand, Status>> + Send + 'static>>;

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<v2::TelemetryCommand>>,
    ) -> Res<Self::TelemetryStream> {
        let id = client_id(&req).map_err(|e| Status::invalid_argument(e.message))?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<v2::TelemetryCommand, Status>>(TELEMETRY_BUFFER);
        let stream_id = self.0.sessions.open_telemetry(&id, tx.clone());
        let gateway = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(cmd)) = inbound.message().await {
                let Some(telemetry_command::Command::Settings(s)) = cmd.command else {
                    // Answers to commands the gateway never sends (stack traces, verify).
                    continue;
                };
                let Some(merged) = settings::merge(&s) else {
                    let _ = tx
                        .send(Err(Status::invalid_argument(
                            "settings name what the client publishes or subscribes to",
                        )))
                        .await;
                    break;
                };
                gateway.sessions.set_settings(&id, merged.clone());
                let echo = v2::TelemetryCommand {
                    status: Some(ok()),
                    command: Some(telemetry_command::Command::Settings(merged)),
                };
                if tx.send(Ok(echo)).await.is_err() {
                    break;
                }
            }
            gateway.sessions.close_telemetry(&id, stream_id);
        });
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }

    async fn notify_client_termination(
        &self,
        req: Request<v2::NotifyClientTerminationRequest>,
    ) -> Res<v2::NotifyClientTerminationResponse> {
        let r = client_id(&req).map(|id| self.0.sessions.end(&id));
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(status_of(&r)),
        }))
    }

    async fn change_invisible_duration(
        &self,
        _req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Res<v2::ChangeInvisibleDurationResponse> {
        Err(unimplemented("ChangeInvisibleDuration (POP consumption)"))
    }

    async fn recall_message(
        &self,
        req: Request<v2::RecallMessageRequest>,
    ) -> Res<v2::RecallMessageResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let topic = req
                .topic
                .ok_or_else(|| V2Error::new(Code::IllegalTopic, "a recall names its topic"))?;
            check_namespace(&topic)?;
            self.0
                .producer
                .recall_handle(&topic.name, &req.recall_handle)
                .await
                .map_err(V2Error::from)
        }
        .await;
        Ok(Response::new(v2::RecallMessageResponse {
            status: Some(status_of(&r)),
            message_id: String::new(),
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> Res<v2::SyncLiteSubscriptionResponse> {
        Err(unimplemented("SyncLiteSubscription (lite topics)"))
    }
}

/// A send's status: its entries' when they agree, else MULTIPLE_RESULTS.
fn overall(entries: &[v2::SendResultEntry]) -> v2::Status {
    let mut codes = entries.iter().map(|e| e.status.clone().unwrap_or_default());
    let first = codes.next().unwrap_or_else(ok);
    if codes.all(|c| c.code == first.code) {
        first
    } else {
        v2::Status {
            code: Code::MultipleResults as i32,
            message: "the messages had different outcomes: see each entry".into(),
        }
    }
}
