//! `apache.rocketmq.v2.MessagingService`: a thin shell over the gateway's parts (sessions,
//! routes, sends). Every answer carries its v2 `Status` in the payload.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::Stream;
use raftmq_client::Producer;
use raftmq_client::pop::{PopClient, Popped};
use raftmq_client::producer::SelectByHash;
use raftmq_client::rebalance::MessageQueue as Queue;
use raftmq_proto::limits::GRPC_MESSAGE_MAX;
use raftmq_proto::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use raftmq_proto::rocketmq::v2::{self as v2, Code, Resource, telemetry_command};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::codes::{V2Error, ok, status_of};
use crate::receive::{self, Receipt, TagFilter};
use crate::renew::{Held, RenewPolicy, Renewals};
use crate::routes::{self, GroupPolicy, Namesrv};
use crate::send::{self, Outgoing};
use crate::sessions::Sessions;
use crate::settings;
use crate::txn::Transactions;

/// The metadata header naming the client (every RPC; sessions are keyed by it).
pub const CLIENT_ID_HEADER: &str = "x-mq-client-id";
/// How soon messages a terminated client held under auto-renew become visible again.
const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// How often the renewal table is looked at.
const RENEW_EVERY: Duration = Duration::from_millis(200);

/// Renews what is due until the gateway is dropped.
async fn renew_loop(gw: std::sync::Weak<Gateway>) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let Some(gw) = gw.upgrade() else {
            return;
        };
        gw.renew_due().await;
    }
}

/// How long a receive waits on one queue before looking at the next, while long polling
/// every queue of a broker group.
const RECEIVE_SLICE: Duration = Duration::from_millis(300);
/// Most commands waiting to be written on one client's Telemetry stream.
const TELEMETRY_BUFFER: usize = 64;

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(not(madsim))]
pub type ProxyService = MessagingServiceServer<Svc>;
#[cfg(madsim)]
pub type ProxyService = MessagingServiceServer<Svc, tonic::codegen::IdentityInterceptor>;

/// The gateway: what it needs to answer RocketMQ 5 clients.
pub struct Gateway {
    namesrv: Namesrv,
    producer: Producer,
    pop: PopClient,
    /// Rotates where a receive of "any queue of the broker" starts.
    next_queue: AtomicUsize,
    renewals: Renewals,
    renew: RenewPolicy,
    pub(crate) sessions: Arc<Sessions>,
    txn: Transactions,
}

/// What `raftmq proxy` is started with.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub namesrv_addrs: Vec<String>,
    /// Auto-renew timing (tests shorten it).
    pub renew: RenewPolicy,
}

impl Gateway {
    /// Starts the gateway's forwarding producer (it learns routes from `namesrv_addrs`).
    pub async fn start(config: ProxyConfig) -> Result<Arc<Self>, raftmq_client::ClientError> {
        let producer = Producer::builder()
            .namesrv_addrs(config.namesrv_addrs.iter().cloned())
            .group("raftmq-proxy")
            .build()?;
        producer.start().await?;
        let sessions = Arc::new(Sessions::default());
        let gw = Arc::new(Self {
            txn: Transactions::new(config.namesrv_addrs.clone(), sessions.clone()),
            pop: PopClient::new(config.namesrv_addrs.iter().cloned()),
            namesrv: Namesrv::new(config.namesrv_addrs),
            producer,
            next_queue: AtomicUsize::new(0),
            renewals: Renewals::default(),
            renew: config.renew,
            sessions,
        });
        tokio::spawn(renew_loop(Arc::downgrade(&gw)));
        Ok(gw)
    }

    /// The gRPC service (its decode limit above the body limit: a 4 MiB body and its envelope
    /// must not be refused by the decoder before the gateway can answer PAYLOAD_TOO_LARGE).
    pub fn service(self: &Arc<Self>) -> ProxyService {
        MessagingServiceServer::new(Svc(self.clone()))
            .max_decoding_message_size(GRPC_MESSAGE_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_MAX)
    }

    pub async fn shutdown(&self) {
        self.producer.shutdown().await;
        self.txn.shutdown().await;
    }

    /// A receive: every readable queue of the broker group named — whatever queue id the
    /// request gives, as Apache's proxy does (a receive selects a broker; the Node.js client
    /// names queue 0 of each broker only, others -1) — first without waiting, then long polling them in turn in short slices until
    /// `wait` is over. Messages the filter does not take are acknowledged here; those past
    /// the maximum attempts go to the group's dead-letter queue.
    async fn receive(
        &self,
        client: &str,
        req: &v2::ReceiveMessageRequest,
        deadline: Option<Duration>,
    ) -> Result<Vec<v2::Message>, V2Error> {
        let group = req
            .group
            .as_ref()
            .filter(|g| !g.name.is_empty())
            .ok_or_else(|| V2Error::new(Code::IllegalConsumerGroup, "a receive names its group"))?;
        check_namespace(group)?;
        let mq = req
            .message_queue
            .as_ref()
            .ok_or_else(|| V2Error::new(Code::BadRequest, "a receive names its queue"))?;
        let topic = mq
            .topic
            .as_ref()
            .filter(|t| !t.name.is_empty())
            .ok_or_else(|| V2Error::new(Code::IllegalTopic, "a receive names its topic"))?;
        check_namespace(topic)?;
        let broker = mq
            .broker
            .as_ref()
            .map(|b| b.name.clone())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| V2Error::new(Code::BadRequest, "a receive names the queue's broker"))?;
        let filter = TagFilter::parse(req.filter_expression.as_ref())?;
        let invisible = receive::invisible(req, self.renew.invisible)?;
        // Renewed by the gateway: a push consumer that names no invisible time.
        let renewed = req.auto_renew && req.invisible_duration.is_none();
        if req.batch_size <= 0 || req.batch_size > receive::BATCH_MAX {
            return Err(V2Error::new(
                Code::BadRequest,
                format!(
                    "batch size {} (1 to {})",
                    req.batch_size,
                    receive::BATCH_MAX
                ),
            ));
        }
        let wait = receive::long_poll(req, deadline);
        let queues: Vec<Queue> = self
            .pop
            .read_queues(&topic.name)
            .await
            .map_err(V2Error::from)?
            .into_iter()
            .filter(|q| q.group == broker)
            .collect();
        if queues.is_empty() {
            return Err(V2Error::new(
                Code::TopicNotFound,
                format!(
                    "broker group {broker:?} holds no readable queue of {:?}",
                    topic.name
                ),
            ));
        }
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + wait;
        let mut round = 0;
        loop {
            for i in 0..queues.len() {
                let q = &queues[(start + i) % queues.len()];
                let hold = if round == 0 {
                    Duration::ZERO
                } else {
                    until
                        .saturating_duration_since(Instant::now())
                        .min(RECEIVE_SLICE)
                };
                let popped = self
                    .pop
                    .receive(q, &group.name, req.batch_size as u32, invisible, hold)
                    .await
                    .map_err(V2Error::from)?;
                let out = self
                    .hand_out(q, &group.name, topic, &filter, invisible, popped)
                    .await;
                if !out.is_empty() {
                    if renewed {
                        self.hold_for_renewal(client, &group.name, &topic.name, &out);
                    }
                    return Ok(out);
                }
            }
            round += 1;
            if Instant::now() >= until {
                return Ok(Vec::new());
            }
        }
    }

    /// What a claim handed out, as the client receives it: messages the filter does not
    /// take are acknowledged; those past the group's maximum attempts go to the dead-letter
    /// queue.
    async fn hand_out(
        &self,
        q: &Queue,
        group: &str,
        topic: &Resource,
        filter: &TagFilter,
        invisible: Duration,
        popped: Vec<Popped>,
    ) -> Vec<v2::Message> {
        let mut out = Vec::new();
        let max_attempts = self.namesrv.group_policy(group).await.max_attempts;
        for p in popped {
            let tag = p.stored.message.as_ref().map_or("", |m| m.tags.as_str());
            let dead = p.attempts > max_attempts;
            if dead {
                let id = p.stored.offset_msg_id.clone();
                if let Err(e) = self
                    .pop
                    .to_dead_letter_queue(q, group, &id, p.attempts)
                    .await
                {
                    // Left in flight: handed out again (and tried again) later.
                    tracing::warn!(error = %e, msg = %id, "moving to the dead-letter queue failed");
                    continue;
                }
            }
            if dead || !filter.matches(tag) {
                let _ = self.pop.ack(q, group, p.offset(), p.epoch).await;
                continue;
            }
            out.push(receive::to_v2(&p, topic, &q.group, invisible));
        }
        out
    }

    /// Renews `msgs` (just handed to `client`) until acked, changed or the session ends.
    fn hold_for_renewal(&self, client: &str, group: &str, topic: &str, msgs: &[v2::Message]) {
        let now = Instant::now();
        for m in msgs {
            let Some(r) = m
                .system_properties
                .as_ref()
                .and_then(|s| s.receipt_handle.as_deref())
                .and_then(|h| Receipt::parse(h).ok())
            else {
                continue;
            };
            self.renewals.hold(
                (
                    r.broker_group.clone(),
                    topic.to_string(),
                    r.queue_id,
                    r.offset,
                ),
                Held {
                    client: client.to_string(),
                    group: group.to_string(),
                    handed_epoch: r.epoch,
                    epoch: r.epoch,
                    position: r.position,
                    due: now + self.renew.invisible.saturating_sub(self.renew.before),
                    since: now,
                },
            );
        }
    }

    /// One round of renewals: those due get another invisible time; those renewed for the
    /// maximum are left to come back.
    async fn renew_due(&self) {
        let now = Instant::now();
        let (renew, _expired) = self.renewals.due(now, &self.renew);
        for (key, held) in renew {
            let q = Queue::new(&key.1, &key.0, key.2);
            match self
                .pop
                .change_invisible(&q, &held.group, key.3, held.epoch, self.renew.invisible)
                .await
            {
                Ok((epoch, _)) => self.renewals.renewed(key, held, epoch, now, &self.renew),
                // Acked or changed meanwhile (stale), or unknown: it is not held any more, or
                // comes back after its invisible time.
                Err(e) => tracing::debug!(error = %e, "renewal not done"),
            }
        }
    }

    /// `client` ended its session: what it held under auto-renew becomes visible again soon.
    async fn release_client(&self, client: &str) {
        for (key, held) in self.renewals.of_client(client) {
            let q = Queue::new(&key.1, &key.0, key.2);
            let _ = self
                .pop
                .change_invisible(&q, &held.group, key.3, held.epoch, RELEASE_AFTER)
                .await;
        }
    }

    async fn ack(&self, group: &str, topic: &str, handle: &str) -> Result<(), V2Error> {
        let r = self.renewals.current(topic, &Receipt::parse(handle)?, true);
        let q = Queue::new(topic, &r.broker_group, r.queue_id);
        self.pop
            .ack(&q, group, r.offset, r.epoch)
            .await
            .map_err(V2Error::from)
    }

    /// A transactional message: its half stored; the transaction id.
    async fn send_half(&self, o: Outgoing) -> Result<String, V2Error> {
        self.txn.send_half(o.message).await
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
            let checked = async {
                let o = send::outgoing(m, send::now_ms())?;
                let t = self.0.namesrv.topic_type(o.message.topic()).await?;
                send::check_topic_type(t, &o)?;
                Ok::<_, V2Error>(o)
            };
            let o = match checked.await {
                Ok(o) => o,
                Err(e) => {
                    entries.push(v2::SendResultEntry {
                        status: Some(e.status()),
                        message_id: id,
                        ..Default::default()
                    });
                    continue;
                }
            };
            if o.message_type == v2::MessageType::Transaction {
                entries.push(match self.0.send_half(o).await {
                    Ok(transaction_id) => v2::SendResultEntry {
                        status: Some(ok()),
                        message_id: id,
                        transaction_id,
                        ..Default::default()
                    },
                    Err(e) => v2::SendResultEntry {
                        status: Some(e.status()),
                        message_id: id,
                        ..Default::default()
                    },
                });
                continue;
            }
            let r = self.0.send_one(o).await;
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
        let statuses: Vec<v2::Status> = entries
            .iter()
            .map(|e| e.status.clone().unwrap_or_default())
            .collect();
        Ok(Response::new(v2::SendMessageResponse {
            status: Some(overall(&statuses)),
            entries,
        }))
    }

    async fn query_assignment(
        &self,
        req: Request<v2::QueryAssignmentRequest>,
    ) -> Res<v2::QueryAssignmentResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let topic = req
                .topic
                .ok_or_else(|| V2Error::new(Code::IllegalTopic, "an assignment names its topic"))?;
            check_namespace(&topic)?;
            if let Some(g) = &req.group {
                check_namespace(g)?;
            }
            let endpoints = req.endpoints.unwrap_or_default();
            let route = self.0.namesrv.route(&topic.name).await?;
            // One assignment per broker group, queue -1: any of its queues (POP spreads the
            // messages; every consumer of the group gets every broker group).
            let mut seen = std::collections::BTreeSet::new();
            let out: Vec<v2::Assignment> = routes::queues(&topic, &route, &endpoints)
                .into_iter()
                .filter(|q| {
                    q.permission == v2::Permission::Read as i32
                        || q.permission == v2::Permission::ReadWrite as i32
                })
                .filter(|q| seen.insert(q.broker.as_ref().map(|b| b.name.clone())))
                .map(|mut q| {
                    q.id = -1;
                    v2::Assignment {
                        message_queue: Some(q),
                    }
                })
                .collect();
            if out.is_empty() {
                return Err(V2Error::new(
                    Code::Forbidden,
                    format!("topic {:?} has no readable queue", topic.name),
                ));
            }
            Ok(out)
        }
        .await;
        Ok(Response::new(v2::QueryAssignmentResponse {
            status: Some(status_of(&r)),
            assignments: r.unwrap_or_default(),
        }))
    }

    type ReceiveMessageStream =
        Pin<Box<dyn Stream<Item = Result<v2::ReceiveMessageResponse, Status>> + Send + 'static>>;

    async fn receive_message(
        &self,
        req: Request<v2::ReceiveMessageRequest>,
    ) -> Res<Self::ReceiveMessageStream> {
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(receive::grpc_timeout);
        let id = client_id(&req);
        let req = req.into_inner();
        let r = match id {
            Ok(client) => self.0.receive(&client, &req, deadline).await,
            Err(e) => Err(e),
        };
        use v2::receive_message_response::Content;
        let content = |c| v2::ReceiveMessageResponse { content: Some(c) };
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        let out: Vec<v2::ReceiveMessageResponse> = match r {
            Ok(msgs) if msgs.is_empty() => vec![
                content(Content::Status(
                    V2Error::new(Code::MessageNotFound, "no new message").status(),
                )),
                content(Content::DeliveryTimestamp(now)),
            ],
            Ok(msgs) => std::iter::once(content(Content::Status(ok())))
                .chain(msgs.into_iter().map(|m| content(Content::Message(m))))
                .chain(std::iter::once(content(Content::DeliveryTimestamp(now))))
                .collect(),
            Err(e) => vec![content(Content::Status(e.status()))],
        };
        Ok(Response::new(Box::pin(futures_util::stream::iter(
            out.into_iter().map(Ok),
        ))))
    }

    async fn ack_message(
        &self,
        req: Request<v2::AckMessageRequest>,
    ) -> Res<v2::AckMessageResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let head = (|| {
            id?;
            let group = req
                .group
                .as_ref()
                .filter(|g| !g.name.is_empty())
                .ok_or_else(|| {
                    V2Error::new(Code::IllegalConsumerGroup, "an ack names its group")
                })?;
            check_namespace(group)?;
            let topic = req
                .topic
                .as_ref()
                .filter(|t| !t.name.is_empty())
                .ok_or_else(|| V2Error::new(Code::IllegalTopic, "an ack names its topic"))?;
            check_namespace(topic)?;
            Ok::<_, V2Error>((group.name.clone(), topic.name.clone()))
        })();
        let (group, topic) = match head {
            Ok(x) => x,
            Err(e) => {
                return Ok(Response::new(v2::AckMessageResponse {
                    status: Some(e.status()),
                    entries: vec![],
                }));
            }
        };
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let r = self.0.ack(&group, &topic, &e.receipt_handle).await;
            entries.push(v2::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(status_of(&r)),
            });
        }
        let statuses: Vec<v2::Status> = entries
            .iter()
            .map(|e| e.status.clone().unwrap_or_default())
            .collect();
        Ok(Response::new(v2::AckMessageResponse {
            status: Some(overall(&statuses)),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Res<v2::ForwardMessageToDeadLetterQueueResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let group = req.group.clone().unwrap_or_default();
            let topic = req.topic.clone().unwrap_or_default();
            check_namespace(&group)?;
            check_namespace(&topic)?;
            let receipt =
                self.0
                    .renewals
                    .current(&topic.name, &Receipt::parse(&req.receipt_handle)?, true);
            let q = Queue::new(&topic.name, &receipt.broker_group, receipt.queue_id);
            self.0
                .pop
                .to_dead_letter_queue(
                    &q,
                    &group.name,
                    &receipt.offset_msg_id(),
                    req.delivery_attempt.max(1) as u32,
                )
                .await
                .map_err(V2Error::from)?;
            self.0
                .pop
                .ack(&q, &group.name, receipt.offset, receipt.epoch)
                .await
                .map_err(V2Error::from)
        }
        .await;
        Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse {
            status: Some(status_of(&r)),
        }))
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
        req: Request<v2::EndTransactionRequest>,
    ) -> Res<v2::EndTransactionResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let topic = req
                .topic
                .as_ref()
                .filter(|t| !t.name.is_empty())
                .ok_or_else(|| V2Error::new(Code::IllegalTopic, "an end names its topic"))?;
            check_namespace(topic)?;
            if req.transaction_id.is_empty() {
                return Err(V2Error::new(
                    Code::InvalidTransactionId,
                    "an end names its transaction",
                ));
            }
            let commit = match v2::TransactionResolution::try_from(req.resolution) {
                Ok(v2::TransactionResolution::Commit) => true,
                Ok(v2::TransactionResolution::Rollback) => false,
                // Unknown: the broker's check asks again later.
                _ => return Ok(()),
            };
            self.0
                .txn
                .end(&topic.name, &req.message_id, &req.transaction_id, commit)
                .await
        }
        .await;
        Ok(Response::new(v2::EndTransactionResponse {
            status: Some(status_of(&r)),
        }))
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
                let policy = match &s.pub_sub {
                    Some(v2::settings::PubSub::Subscription(sub)) => match &sub.group {
                        Some(g) => gateway.namesrv.group_policy(&g.name).await,
                        None => GroupPolicy::default(),
                    },
                    _ => GroupPolicy::default(),
                };
                let Some(merged) = settings::merge(&s, policy) else {
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
        let r = client_id(&req);
        if let Ok(id) = &r {
            self.0.sessions.end(id);
            self.0.release_client(id).await;
        }
        let r = r.map(|_| ());
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(status_of(&r)),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Res<v2::ChangeInvisibleDurationResponse> {
        let id = client_id(&req);
        let req = req.into_inner();
        let r = async {
            id?;
            let group = req.group.clone().unwrap_or_default();
            let topic = req.topic.clone().unwrap_or_default();
            check_namespace(&group)?;
            check_namespace(&topic)?;
            let d = req
                .invisible_duration
                .as_ref()
                .map(receive::to_duration)
                .ok_or_else(|| {
                    V2Error::new(
                        Code::IllegalInvisibleTime,
                        "a change names the invisible duration",
                    )
                })?;
            if d > receive::INVISIBLE_MAX {
                return Err(V2Error::new(
                    Code::IllegalInvisibleTime,
                    format!(
                        "invisible duration {d:?}: at most {:?}",
                        receive::INVISIBLE_MAX
                    ),
                ));
            }
            let mut receipt =
                self.0
                    .renewals
                    .current(&topic.name, &Receipt::parse(&req.receipt_handle)?, true);
            let q = Queue::new(&topic.name, &receipt.broker_group, receipt.queue_id);
            let (epoch, _) = self
                .0
                .pop
                .change_invisible(&q, &group.name, receipt.offset, receipt.epoch, d)
                .await
                .map_err(V2Error::from)?;
            receipt.epoch = epoch;
            Ok(receipt.encode())
        }
        .await;
        Ok(Response::new(v2::ChangeInvisibleDurationResponse {
            status: Some(status_of(&r)),
            receipt_handle: r.unwrap_or_default(),
        }))
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

/// A batch's status: its entries' when they agree, else MULTIPLE_RESULTS.
fn overall(statuses: &[v2::Status]) -> v2::Status {
    let mut codes = statuses.iter().cloned();
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
