//! The `Messaging` service: sends, pulls (with long polling), offsets, heartbeats, queue
//! locks and message lookups, each handed to its manager ([`crate::managers`]).
//!
//! Member lists and queue locks are the leader's (clients heartbeat the leader): a follower
//! answers `NOT_LEADER` with the leader's address, so the client finds it.

use std::sync::Arc;

use raftmq_proto::limits::{GRPC_MESSAGE_MAX, check_name};
use raftmq_proto::v1::messaging_server::{Messaging, MessagingServer};
use raftmq_proto::v1::*;
use raftmq_store::consumequeue::QueueId;
use tonic::{Request, Response};

use crate::error::{Refusal, respond};
use crate::managers::channels::{CHANNEL_BUFFER, Frame};
use crate::shared::Shared;

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(not(madsim))]
pub type MessagingService = MessagingServer<MessagingImpl>;
#[cfg(madsim)]
pub type MessagingService = MessagingServer<MessagingImpl, tonic::codegen::IdentityInterceptor>;

pub(crate) fn service(shared: Arc<Shared>) -> MessagingService {
    MessagingServer::new(MessagingImpl { shared })
        .max_decoding_message_size(GRPC_MESSAGE_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_MAX)
}

/// The `Messaging` service of one replica.
#[derive(Clone)]
pub struct MessagingImpl {
    shared: Arc<Shared>,
}

type Res<T> = Result<Response<T>, tonic::Status>;

/// How long a new channel may take to say hello.
const HELLO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most groups one client channel speaks for.
const CHANNEL_GROUPS_MAX: usize = 64;

impl MessagingImpl {
    /// Refused on a follower: the state asked for is the leader's.
    fn leader_only(&self) -> Result<(), Refusal> {
        if self.shared.is_leader() {
            Ok(())
        } else {
            Err(self.shared.not_leader().into())
        }
    }

    /// A receive: held while nothing can be handed out (no write until something can), then
    /// one claim through Raft at the leader's clock.
    async fn pop_inner(&self, req: PopRequest) -> Result<Vec<PoppedMessage>, Refusal> {
        self.leader_only()?;
        let m = &self.shared.managers;
        let spec = m.pop.spec(&req, &m.group_configs)?;
        let now = raftmq_raft::replica::now_ms;
        let deadline = now().saturating_add(u64::from(spec.hold_ms));
        loop {
            // Woken by an apply (new messages), or when an in-flight message's invisible
            // time runs out (nothing is written then), or at the deadline.
            let until = m
                .pop
                .next_visible_ms(&spec, now())?
                .map_or(deadline, |v| v.min(deadline));
            let hold = until.saturating_sub(now()).min(u64::from(u32::MAX)) as u32;
            let claimable = m
                .long_poll
                .hold(
                    hold,
                    || m.pop.claimable(&spec, now()),
                    |r| !matches!(r, Ok(false)),
                )
                .await?;
            if claimable {
                self.leader_only()?;
                return m.pop.claim(&spec, now()).await;
            }
            if now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn pull_inner(&self, req: PullRequest) -> Result<PullResponse, Refusal> {
        let m = &self.shared.managers;
        let spec = m.messages.pull_spec(&req)?;
        // Held while the answer is "nothing new yet": OK, no messages, same offset.
        let nothing = |r: &PullResponse| {
            r.status.is_none() && r.messages.is_empty() && r.next_offset == spec.offset.0
        };
        Ok(m.long_poll
            .hold(spec.hold_ms, || m.messages.look(&spec), |r| !nothing(r))
            .await)
    }
}

#[tonic::async_trait]
impl Messaging for MessagingImpl {
    async fn send(&self, req: Request<SendRequest>) -> Res<SendResponse> {
        let m = &self.shared.managers;
        let r = m.messages.send(req.into_inner(), &m.timers).await;
        respond(r.map(|results| SendResponse {
            status: None,
            group: self.shared.group().to_string(),
            results,
        }))
    }

    async fn end_transaction(
        &self,
        req: Request<EndTransactionRequest>,
    ) -> Res<EndTransactionResponse> {
        let r = match self.leader_only() {
            Ok(()) => {
                self.shared
                    .managers
                    .transactions
                    .end(req.into_inner())
                    .await
            }
            Err(e) => Err(e),
        };
        respond(r.map(|committed| EndTransactionResponse {
            status: None,
            committed: Some(committed),
        }))
    }

    async fn recall_message(
        &self,
        req: Request<RecallMessageRequest>,
    ) -> Res<RecallMessageResponse> {
        let r = match self.leader_only() {
            Ok(()) => {
                let handle = req.into_inner().recall_handle;
                self.shared.managers.timers.recall(&handle).await
            }
            Err(e) => Err(e),
        };
        respond(r.map(|()| RecallMessageResponse { status: None }))
    }

    async fn send_back(&self, req: Request<SendBackRequest>) -> Res<SendBackResponse> {
        let now = raftmq_raft::replica::now_ms();
        let req = req.into_inner();
        let r = match self.leader_only() {
            Ok(()) => self.shared.managers.timers.send_back(&req, now).await,
            Err(e) => Err(e),
        };
        respond(r.map(|(topic, max_reconsume_times)| SendBackResponse {
            status: None,
            topic,
            max_reconsume_times,
        }))
    }

    async fn pop(&self, req: Request<PopRequest>) -> Res<PopResponse> {
        respond(
            self.pop_inner(req.into_inner())
                .await
                .map(|messages| PopResponse {
                    status: None,
                    messages,
                }),
        )
    }

    async fn pop_ack(&self, req: Request<PopAckRequest>) -> Res<PopAckResponse> {
        let req = req.into_inner();
        let r = match self.leader_only() {
            Ok(()) => self.shared.managers.pop.ack(&req).await,
            Err(e) => Err(e),
        };
        respond(r.map(|()| PopAckResponse { status: None }))
    }

    async fn pop_change_invisible(
        &self,
        req: Request<PopChangeInvisibleRequest>,
    ) -> Res<PopChangeInvisibleResponse> {
        let req = req.into_inner();
        let now = raftmq_raft::replica::now_ms();
        let r = match self.leader_only() {
            Ok(()) => self.shared.managers.pop.change(&req, now).await,
            Err(e) => Err(e),
        };
        respond(r.map(|(epoch, visible_at_ms)| PopChangeInvisibleResponse {
            status: None,
            epoch,
            visible_at_ms,
        }))
    }

    type ChannelStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Frame> + Send + 'static>>;

    async fn channel(
        &self,
        req: Request<tonic::Streaming<ClientFrame>>,
    ) -> Res<Self::ChannelStream> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(CHANNEL_BUFFER);
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (f, rx))
        }));
        let refuse = |r: Refusal| ServerFrame {
            status: Some(r.status()),
            check: None,
        };
        let hello = tokio::time::timeout(HELLO_WAIT, inbound.message()).await;
        let hello = match hello {
            Ok(Ok(Some(ClientFrame { hello: Some(h) }))) => h,
            _ => {
                let r = Refusal::InvalidArgument("a channel starts with a hello".into());
                let _ = tx.try_send(Ok(refuse(r)));
                return Ok(Response::new(stream));
            }
        };
        let groups: Vec<String> = hello
            .producer_groups
            .iter()
            .chain(&hello.consumer_groups)
            .cloned()
            .collect();
        let checked = check_name("client id", &hello.client_id)
            .map_err(Refusal::from)
            .and_then(|()| {
                if groups.len() > CHANNEL_GROUPS_MAX {
                    return Err(Refusal::InvalidArgument(format!(
                        "{} groups in one hello, more than {CHANNEL_GROUPS_MAX}",
                        groups.len()
                    )));
                }
                for g in &groups {
                    check_name("group", g)?;
                }
                self.leader_only()
            });
        if let Err(r) = checked {
            let _ = tx.try_send(Ok(refuse(r)));
            return Ok(Response::new(stream));
        }
        let channels = self.shared.managers.channels.clone();
        let ok = ServerFrame {
            status: crate::error::ok(),
            check: None,
        };
        let _ = tx.try_send(Ok(ok));
        let Some((id, dropped)) = channels.add(&hello.client_id, &groups, tx) else {
            // Shutting down: the stream ends after its first frame; the client reconnects.
            return Ok(Response::new(stream));
        };
        // The channel lives until the client ends its side or this replica drops it (then
        // the client's side is let go, which closes the stream).
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = dropped.notified() => break,
                    m = inbound.message() => match m {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            channels.remove(id);
        });
        Ok(Response::new(stream))
    }

    async fn pull(&self, req: Request<PullRequest>) -> Res<PullResponse> {
        respond(self.pull_inner(req.into_inner()).await)
    }

    async fn query_queue(&self, req: Request<QueryQueueRequest>) -> Res<QueryQueueResponse> {
        let req = req.into_inner();
        let queue = QueueId {
            topic: req.topic,
            queue_id: req.queue_id,
        };
        respond(
            self.shared
                .managers
                .messages
                .query_queue(&queue, req.timestamp_ms),
        )
    }

    async fn query_offset(&self, req: Request<QueryOffsetRequest>) -> Res<QueryOffsetResponse> {
        let req = req.into_inner();
        let r = self
            .shared
            .managers
            .offsets
            .query(&req.consumer_group, &req.topic, req.queue_id);
        respond(r.map(|o| QueryOffsetResponse {
            status: None,
            offset: o.map(|o| o.0),
        }))
    }

    async fn commit_offset(&self, req: Request<CommitOffsetRequest>) -> Res<CommitOffsetResponse> {
        let req = req.into_inner();
        let r = self
            .shared
            .managers
            .offsets
            .commit(req.consumer_group, req.offsets)
            .await;
        respond(r.map(|()| CommitOffsetResponse::default()))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        let req = req.into_inner();
        let now = self.shared.now_ms();
        let r = self
            .shared
            .managers
            .consumer_groups
            .heartbeat(&req.client_id, req.consumer_groups, now)
            // Kept on a follower too (harmless), but the client is told, so it finds the
            // leader (a new leader knows no client until it is heartbeated).
            .and_then(|()| self.leader_only());
        respond(r.map(|()| HeartbeatResponse::default()))
    }

    async fn get_consumer_list(
        &self,
        req: Request<GetConsumerListRequest>,
    ) -> Res<GetConsumerListResponse> {
        let req = req.into_inner();
        let groups = &self.shared.managers.consumer_groups;
        let r = raftmq_proto::limits::check_name("consumer group", &req.consumer_group)
            .map_err(Refusal::from)
            .and_then(|()| self.leader_only())
            .and_then(|()| groups.members(&req.consumer_group, self.shared.now_ms()));
        respond(r.map(|client_ids| GetConsumerListResponse {
            status: None,
            client_ids,
        }))
    }

    async fn lock_queues(&self, req: Request<LockQueuesRequest>) -> Res<LockQueuesResponse> {
        let req = req.into_inner();
        let groups = &self.shared.managers.consumer_groups;
        let r = crate::managers::consumer_groups::check_lock_request(
            &req.consumer_group,
            &req.client_id,
            &req.queues,
        )
        .and_then(|()| self.leader_only())
        .and_then(|()| {
            groups.lock(
                &req.consumer_group,
                &req.client_id,
                &req.queues,
                self.shared.now_ms(),
            )
        });
        respond(r.map(|locked| LockQueuesResponse {
            status: None,
            locked,
            lease_ms: crate::managers::consumer_groups::LOCK_LEASE_MS,
        }))
    }

    async fn unlock_queues(&self, req: Request<UnlockQueuesRequest>) -> Res<UnlockQueuesResponse> {
        let req = req.into_inner();
        let r = self.shared.managers.consumer_groups.unlock(
            &req.consumer_group,
            &req.client_id,
            &req.queues,
        );
        respond(r.map(|()| UnlockQueuesResponse::default()))
    }

    async fn view_message(&self, req: Request<ViewMessageRequest>) -> Res<ViewMessageResponse> {
        let id = req.into_inner().offset_msg_id;
        let r = self.shared.managers.messages.view(&id);
        respond(r.map(|m| ViewMessageResponse {
            status: None,
            message: Some(m),
        }))
    }

    async fn query_by_key(&self, req: Request<QueryByKeyRequest>) -> Res<QueryByKeyResponse> {
        let r = self
            .shared
            .managers
            .messages
            .query_by_key(&req.into_inner());
        respond(r.map(|messages| QueryByKeyResponse {
            status: None,
            messages,
        }))
    }
}
