//! Raft between replicas over a tonic `RaftService` (see `proto/raftmq/raft/v1/raft.proto`).
//!
//! Client side: [`NetworkFactory`] gives openraft one [`PeerClient`] per target, over a lazily
//! connected channel (a peer that is down is `Unreachable`, which makes openraft back off).
//! Replication and heartbeats go through `StreamAppend`, one bidirectional stream per
//! session ([`PeerClient`]'s `stream_append`): requests are sent without waiting, each cut into
//! chunks of at most [`APPEND_BYTES_MAX`] bytes of entries (each chunk a whole
//! `AppendEntriesRequest` continuing the one before), and the follower answers every chunk in
//! order — `SUCCESS` with `matched` = the last log id the chunk left matching, `CONFLICT` with
//! `matched` = the chunk's `prev_log_id`, or `HIGHER_VOTE` with its vote — and ends the stream
//! after an answer that is not a success. The unary `AppendEntries` sends one chunk and turns
//! the answer into `PartialSuccess` up to its last entry, so openraft continues from there.
//!
//! Server side: [`RaftServer`] decodes every request, checking each field before use (a missing
//! vote, an entry kind above 255, an undecodable payload, or a request for another group is
//! `INVALID_ARGUMENT` / `FAILED_PRECONDITION`, never a panic), then hands it to `Raft`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
pub(crate) use raftmq_proto::raft::v1 as pb;
use raftmq_proto::raft::v1::raft_service_client::RaftServiceClient;
use raftmq_store::RecordKind;
use tonic::transport::{Channel, Endpoint};

use crate::Raft;
use crate::types::{
    EncodedEntry, LogId, NodeId, SnapshotMeta, TypeConfig, Vote, decode_value, encode_value, log_id,
};

/// Bytes of entry payload in one AppendEntries request, at most (plus at least one entry).
/// Small enough that a follower writes and syncs it well within the append timeout on a busy
/// disk; at 16 MiB, requests timed out, were dropped and were sent again, over and over.
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// Largest gRPC message a replica sends or accepts (defined with the other wire limits).
pub use raftmq_proto::limits::RAFT_GRPC_MESSAGE_MAX as GRPC_MESSAGE_MAX;
/// Shortest timeout of an AppendEntries that carries entries (see `append_entries`); below
/// the shortest election timeout a replica can be configured with, so a follower that
/// stopped answering is still noticed well before anyone's election.
pub const APPEND_TIMEOUT_MIN: Duration = Duration::from_millis(250);
/// An append answered this late is logged (a warning): it is close to the leader's
/// [`APPEND_TIMEOUT_MIN`].
const SLOW_APPEND: Duration = Duration::from_millis(100);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

// ---- conversions -------------------------------------------------------------------------

fn pb_vote(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.voted_for,
        committed: v.committed,
    }
}

pub(crate) fn vote_from(v: Option<pb::Vote>) -> Result<Vote, tonic::Status> {
    let v = v.ok_or_else(|| tonic::Status::invalid_argument("missing vote"))?;
    Ok(if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    })
}

fn pb_log_id(l: &LogId) -> pb::LogId {
    pb::LogId {
        term: l.leader_id.term,
        index: l.index,
    }
}

fn log_id_from(l: Option<pb::LogId>) -> Option<LogId> {
    l.map(|l| log_id(l.term, l.index))
}

pub(crate) fn pb_entry(e: EncodedEntry) -> pb::Entry {
    pb::Entry {
        term: e.term,
        index: e.index,
        kind: u32::from(e.kind.0),
        timestamp_ms: e.timestamp_ms,
        payload: e.payload,
    }
}

pub(crate) fn entry_from(e: pb::Entry) -> Result<crate::types::Entry, tonic::Status> {
    let kind = u8::try_from(e.kind)
        .map_err(|_| tonic::Status::invalid_argument(format!("entry kind {} > 255", e.kind)))?;
    EncodedEntry {
        term: e.term,
        index: e.index,
        kind: RecordKind(kind),
        timestamp_ms: e.timestamp_ms,
        payload: e.payload,
    }
    .decode()
    .map_err(|err| tonic::Status::invalid_argument(format!("entry {}: {err}", e.index)))
}

fn status_to_rpc<E: std::error::Error>(s: tonic::Status) -> RPCError<TypeConfig, E> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

/// One wire request cut from an openraft AppendEntries: at most [`APPEND_BYTES_MAX`] bytes of
/// entry payload (and at least one entry, if any is left).
struct Chunk {
    req: pb::AppendEntriesRequest,
    /// The log id the chunk continues from, and its last one (`prev` if it carries none).
    prev: Option<LogId>,
    last: Option<LogId>,
}

/// Cuts an openraft AppendEntries into [`Chunk`]s, each continuing the one before.
struct Split {
    group: pb::GroupId,
    vote: pb::Vote,
    leader_commit: Option<pb::LogId>,
    prev: Option<LogId>,
    entries: std::iter::Peekable<std::vec::IntoIter<crate::types::Entry>>,
}

impl Split {
    fn new(group: &pb::GroupId, rpc: AppendEntriesRequest<TypeConfig>) -> Self {
        Split {
            group: group.clone(),
            vote: pb_vote(&rpc.vote),
            leader_commit: rpc.leader_commit.as_ref().map(pb_log_id),
            prev: rpc.prev_log_id,
            entries: rpc.entries.into_iter().peekable(),
        }
    }

    fn done(&mut self) -> bool {
        self.entries.peek().is_none()
    }

    /// The next chunk; an entry-less one if no entry is left (a heartbeat, or a commit).
    fn next_chunk(&mut self) -> Chunk {
        let prev = self.prev;
        let mut bytes = 0usize;
        let mut entries = Vec::new();
        while let Some(e) = self.entries.peek() {
            let enc = EncodedEntry::encode(e);
            if !entries.is_empty() && bytes + enc.payload.len() > APPEND_BYTES_MAX {
                break;
            }
            bytes += enc.payload.len();
            self.prev = Some(e.log_id);
            self.entries.next();
            entries.push(pb_entry(enc));
        }
        Chunk {
            req: pb::AppendEntriesRequest {
                group: Some(self.group.clone()),
                vote: Some(self.vote),
                prev_log_id: prev.as_ref().map(pb_log_id),
                leader_commit: self.leader_commit,
                entries,
            },
            prev,
            last: self.prev,
        }
    }

    /// Every chunk of the request (at least one).
    fn all(mut self) -> Vec<Chunk> {
        let mut out = vec![self.next_chunk()];
        while !self.done() {
            out.push(self.next_chunk());
        }
        out
    }
}

// ---- client ------------------------------------------------------------------------------

/// Makes [`PeerClient`]s for openraft.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    group: pb::GroupId,
}

impl NetworkFactory {
    pub fn new(group: &str, segment_bytes: u64) -> Self {
        NetworkFactory {
            group: pb::GroupId {
                name: group.to_string(),
                segment_bytes,
            },
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group.clone(),
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

/// One peer, seen from the leader (or a candidate).
pub struct PeerClient {
    group: pb::GroupId,
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
}

impl PeerClient {
    fn client<E: std::error::Error>(
        &mut self,
    ) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig, E>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?
            .connect_timeout(CONNECT_TIMEOUT);
        let c = RaftServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(GRPC_MESSAGE_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_MAX);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<T, E: std::error::Error>(
        &mut self,
        ttl: Duration,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RPCError<TypeConfig, E>> {
        match tokio::time::timeout(ttl, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                // Reconnect next time: the peer may have restarted, or the connection may be
                // broken in a way the channel does not notice.
                self.client = None;
                Err(status_to_rpc(s))
            }
            // A peer that does not answer in time is treated as unreachable: openraft backs
            // off instead of hammering a partitioned replica. The connection is dropped.
            Err(_) => {
                self.client = None;
                Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer from replica {} within {ttl:?}", self.target),
                    ),
                )))
            }
        }
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<TypeConfig, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        msg,
    )))
}

/// A chunk on an append stream, waiting for its answer.
struct Sent {
    prev: Option<LogId>,
    last: Option<LogId>,
    /// When it was handed to the connection, and how long an answer may take (see
    /// [`Answers::next`]).
    at: tokio::time::Instant,
    ttl: Duration,
    /// The last chunk of an openraft request: its answer completes the request.
    ends_request: bool,
}

/// How often a stream with nothing unanswered looks again for a chunk sent meanwhile (whose
/// deadline it then waits for), and a follower's idle stream whether its replica shut down.
const IDLE_RECHECK: Duration = Duration::from_millis(50);

/// The answers of one append stream, turned into one result per openraft request.
struct Answers<'s> {
    inbound: tonic::Streaming<pb::AppendEntriesResponse>,
    sent: Arc<Mutex<VecDeque<Sent>>>,
    target: NodeId,
    /// Dropped on a failure, so the next stream reconnects.
    client: &'s mut Option<RaftServiceClient<Channel>>,
    /// What the current request's chunks said, if other than plain success.
    outcome: Option<StreamAppendResult<TypeConfig>>,
    /// When the last answer came.
    progress: tokio::time::Instant,
    done: bool,
}

type AnswerItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl Answers<'_> {
    async fn next(&mut self) -> Option<AnswerItem> {
        use futures_util::StreamExt;
        if self.done {
            return None;
        }
        loop {
            // Chunks queue at the follower behind the ones before (each written and synced):
            // the oldest unanswered one must be answered within its timeout of being sent or
            // of the answer before it, whichever is later — a stream that stops making
            // progress is an unreachable replica, a long one that keeps answering is not.
            let deadline = lock(&self.sent)
                .front()
                .map(|s| s.at.max(self.progress) + s.ttl);
            let got = match deadline {
                Some(d) => match tokio::time::timeout(
                    d.saturating_duration_since(tokio::time::Instant::now()),
                    self.inbound.next(),
                )
                .await
                {
                    Ok(got) => got,
                    Err(_) => {
                        return self.fail(unreachable(format!(
                            "no answer from replica {} within the append timeout",
                            self.target
                        )));
                    }
                },
                None => match tokio::time::timeout(IDLE_RECHECK, self.inbound.next()).await {
                    Ok(got) => got,
                    Err(_) => continue,
                },
            };
            let resp = match got {
                Some(Ok(resp)) => resp,
                Some(Err(status)) => return self.fail(status_to_rpc(status)),
                // The follower ends the stream after an answer that is not a success.
                None => {
                    self.done = true;
                    if let Some(o) = self.outcome.take() {
                        return Some(Ok(o));
                    }
                    if lock(&self.sent).is_empty() {
                        return None;
                    }
                    *self.client = None;
                    return Some(Err(unreachable(format!(
                        "replica {} ended the append stream with appends unanswered",
                        self.target
                    ))));
                }
            };
            self.progress = tokio::time::Instant::now();
            let Some(chunk) = lock(&self.sent).pop_front() else {
                return self.fail(protocol(format!(
                    "replica {} answered an append never sent",
                    self.target
                )));
            };
            let outcome = match self.decode(resp, &chunk) {
                Ok(o) => o,
                Err(e) => return self.fail(e),
            };
            if self.outcome.is_none() {
                self.outcome = outcome;
            }
            if chunk.ends_request {
                let result = self.outcome.take().unwrap_or(Ok(chunk.last));
                self.done = result.is_err();
                return Some(Ok(result));
            }
        }
    }

    /// A chunk's answer: `None` for "matched through the chunk's last entry".
    fn decode(
        &self,
        resp: pb::AppendEntriesResponse,
        chunk: &Sent,
    ) -> Result<Option<StreamAppendResult<TypeConfig>>, RPCError<TypeConfig>> {
        use pb::append_entries_response::Kind;
        let kind = Kind::try_from(resp.kind)
            .map_err(|_| protocol("unknown append response kind".to_string()))?;
        Ok(match kind {
            Kind::Success | Kind::PartialSuccess => {
                let matched = log_id_from(resp.matched);
                (matched != chunk.last).then_some(Ok(matched))
            }
            Kind::Conflict => {
                let at = log_id_from(resp.matched)
                    .or(chunk.prev)
                    .ok_or_else(|| protocol("a conflict before the first entry".to_string()))?;
                Some(Err(StreamAppendError::Conflict(at)))
            }
            Kind::HigherVote => {
                let v =
                    vote_from(resp.vote).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
                Some(Err(StreamAppendError::HigherVote(v)))
            }
        })
    }

    fn fail(&mut self, e: RPCError<TypeConfig>) -> Option<AnswerItem> {
        self.done = true;
        *self.client = None;
        Some(Err(e))
    }
}

fn protocol<E: std::error::Error>(msg: String) -> RPCError<TypeConfig, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // One chunk only: a longer run is answered as a partial success (see the module docs).
        let mut split = Split::new(&self.group, rpc);
        let Chunk {
            req,
            last: last_sent,
            ..
        } = split.next_chunk();
        let cut = !split.done();
        let mut c = self.client()?;
        // openraft gives every append the heartbeat interval. An append that carries entries
        // also waits for the follower's fsync, which a busy disk can stretch past that: give
        // it at least APPEND_TIMEOUT_MIN, so a slow-but-working follower is not declared
        // unreachable, its connection torn down and the same entries sent again.
        let ttl = if req.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(APPEND_TIMEOUT_MIN)
        };
        let resp = self.call(ttl, c.append_entries(req)).await?;
        use pb::append_entries_response::Kind;
        let kind = Kind::try_from(resp.kind).map_err(|_| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(
                "unknown append response kind",
            )))
        })?;
        Ok(match kind {
            Kind::Success if cut => AppendEntriesResponse::PartialSuccess(last_sent),
            Kind::Success => AppendEntriesResponse::Success,
            Kind::PartialSuccess => {
                AppendEntriesResponse::PartialSuccess(log_id_from(resp.matched))
            }
            Kind::Conflict => AppendEntriesResponse::Conflict,
            Kind::HigherVote => {
                let v =
                    vote_from(resp.vote).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
                AppendEntriesResponse::HigherVote(v)
            }
        })
    }

    /// Pipelined appends over one bidirectional stream (`StreamAppend`): openraft's requests
    /// go out as they come, each cut into chunks of at most [`APPEND_BYTES_MAX`] bytes, without
    /// waiting for answers; the follower answers every chunk in order, and a request's result
    /// is its last chunk's (or the first chunk that did not simply succeed). A stream that
    /// stops answering for the append timeout (see `append_entries` and [`Answers::next`])
    /// makes the replica unreachable, as a single append does.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            use futures_util::StreamExt;
            let mut client = self.client()?;
            let sent = Arc::new(Mutex::new(VecDeque::<Sent>::new()));
            let outbound = {
                let (group, sent) = (self.group.clone(), sent.clone());
                let heartbeat_ttl = option.hard_ttl();
                input.flat_map(move |rpc| {
                    let chunks = Split::new(&group, rpc).all();
                    let now = tokio::time::Instant::now();
                    let n = chunks.len();
                    let mut queue = lock(&sent);
                    let mut wire = Vec::with_capacity(n);
                    for (k, c) in chunks.into_iter().enumerate() {
                        let ttl = if c.req.entries.is_empty() {
                            heartbeat_ttl
                        } else {
                            heartbeat_ttl.max(APPEND_TIMEOUT_MIN)
                        };
                        queue.push_back(Sent {
                            prev: c.prev,
                            last: c.last,
                            at: now,
                            ttl,
                            ends_request: k + 1 == n,
                        });
                        wire.push(c.req);
                    }
                    futures_util::stream::iter(wire)
                })
            };
            let target = self.target;
            let opened = tokio::time::timeout(
                CONNECT_TIMEOUT.max(option.hard_ttl()),
                client.stream_append(outbound),
            )
            .await;
            let inbound = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    self.client = None;
                    return Err(status_to_rpc(status));
                }
                Err(_) => {
                    self.client = None;
                    return Err(unreachable(format!(
                        "replica {target} did not open an append stream"
                    )));
                }
            };
            let answers = Answers {
                inbound,
                sent,
                target,
                client: &mut self.client,
                outcome: None,
                progress: tokio::time::Instant::now(),
                done: false,
            };
            let stream = futures_util::stream::unfold(answers, |mut a| async move {
                let next = a.next().await?;
                Some((next, a))
            });
            let stream: BoxStream<'s, _> = Box::pin(stream);
            Ok(stream)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = pb::VoteRequest {
            group: Some(self.group.clone()),
            vote: Some(pb_vote(&rpc.vote)),
            last_log_id: rpc.last_log_id.as_ref().map(pb_log_id),
            leadership_transfer: rpc.leadership_transfer,
        };
        let mut c = self.client()?;
        let resp = self.call(option.hard_ttl(), c.vote(req)).await?;
        let vote = vote_from(resp.vote).map_err(|s| RPCError::Network(NetworkError::new(&s)))?;
        Ok(VoteResponse {
            vote,
            vote_granted: resp.vote_granted,
            last_log_id: log_id_from(resp.last_log_id),
        })
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = pb::InstallSnapshotRequest {
            group: Some(self.group.clone()),
            vote: Some(pb_vote(&vote)),
            meta: encode_value(&snapshot.meta),
            data: snapshot.snapshot,
        };
        let mut c = self.client().map_err(rpc_to_streaming)?;
        let resp = self
            .call(option.hard_ttl(), c.install_snapshot(req))
            .await
            .map_err(rpc_to_streaming)?;
        let vote =
            vote_from(resp.vote).map_err(|s| StreamingError::Network(NetworkError::new(&s)))?;
        Ok(SnapshotResponse { vote })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = pb::TransferLeaderRequest {
            group: Some(self.group.clone()),
            from_leader: Some(pb_vote(req.from_leader())),
            to: *req.to_node_id(),
            last_log_id: req.last_log_id().map(pb_log_id),
        };
        let mut c = self.client()?;
        let resp = self.call(option.hard_ttl(), c.transfer_leader(r)).await?;
        if resp.rejected.is_empty() {
            Ok(Ok(()))
        } else {
            Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(resp.rejected),
            )))
        }
    }
}

fn rpc_to_streaming(e: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
    }
}

// ---- server ------------------------------------------------------------------------------

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(not(madsim))]
pub type RaftService = pb::raft_service_server::RaftServiceServer<RaftServer>;
/// Binds a gRPC listener for a replica's server with `TCP_NODELAY` on every accepted
/// connection. Without it a reply split into several small writes (HTTP/2 headers, data,
/// trailers) waits on Nagle's algorithm for the peer's delayed ACK: about 40 ms per
/// AppendEntries round trip, which caps a group at a few thousand messages per second.
#[cfg(not(madsim))]
pub fn listen(
    addr: std::net::SocketAddr,
) -> std::io::Result<tonic::transport::server::TcpIncoming> {
    Ok(tonic::transport::server::TcpIncoming::bind(addr)?.with_nodelay(Some(true)))
}

/// The tonic service type (the simulated build's server type carries an interceptor).
#[cfg(madsim)]
pub type RaftService =
    pb::raft_service_server::RaftServiceServer<RaftServer, tonic::codegen::IdentityInterceptor>;

/// The `RaftService` of one replica.
#[derive(Clone)]
pub struct RaftServer {
    group: pb::GroupId,
    raft: Raft,
    /// Set when the server is about to stop: open append streams end.
    closing: Arc<AtomicBool>,
    /// While set, vote requests are refused (see [`crate::repair`]).
    repairing: crate::repair::Repairing,
}

impl RaftServer {
    /// `closing`: once set, open append streams end (see [`RaftServer::shut_down`]).
    pub fn new(group: &str, segment_bytes: u64, raft: Raft, closing: Arc<AtomicBool>) -> Self {
        RaftServer {
            group: pb::GroupId {
                name: group.to_string(),
                segment_bytes,
            },
            raft,
            closing,
            repairing: crate::repair::Repairing::default(),
        }
    }

    /// Refuses votes while `r` says the replica is refilling a damaged log.
    pub fn repairing(mut self, r: crate::repair::Repairing) -> Self {
        self.repairing = r;
        self
    }

    /// The tonic service, with message size limits.
    pub fn into_service(self) -> RaftService {
        pb::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(GRPC_MESSAGE_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_MAX)
    }

    fn check_group(&self, group: &Option<pb::GroupId>) -> Result<(), tonic::Status> {
        let Some(g) = group else {
            return Err(tonic::Status::invalid_argument("missing group"));
        };
        if *g != self.group {
            return Err(tonic::Status::failed_precondition(format!(
                "this replica is group {:?} with {}-byte segments; the request is for {:?} with {}-byte segments",
                self.group.name, self.group.segment_bytes, g.name, g.segment_bytes
            )));
        }
        Ok(())
    }
}

impl RaftServer {
    /// Whether open append streams must end: the server is stopping (a graceful stop waits
    /// for every open stream, and the leader never closes its own), or Raft is shut down.
    fn shut_down(&self) -> bool {
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let m = openraft::async_runtime::WatchReceiver::borrow_watched(&self.raft.metrics()).state;
        m == openraft::ServerState::Shutdown
    }

    /// Checks and decodes an AppendEntries (both RPCs).
    fn decode_append(
        &self,
        r: pb::AppendEntriesRequest,
    ) -> Result<AppendEntriesRequest<TypeConfig>, tonic::Status> {
        self.check_group(&r.group)?;
        let vote = vote_from(r.vote)?;
        let entries = r
            .entries
            .into_iter()
            .map(entry_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id: log_id_from(r.prev_log_id),
            leader_commit: log_id_from(r.leader_commit),
            entries,
        })
    }
}

fn warn_if_slow(started: tokio::time::Instant, entries: usize) {
    let took = started.elapsed();
    if took >= SLOW_APPEND {
        // Near the leader's append timeout: it may soon call this replica unreachable.
        tracing::warn!(
            entries,
            ms = took.as_millis() as u64,
            "slow append: written and synced this late"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn raft_err(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<pb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
        let started = tokio::time::Instant::now();
        let req = self.decode_append(request.into_inner())?;
        let n = req.entries.len();
        let resp = self.raft.append_entries(req).await.map_err(raft_err)?;
        warn_if_slow(started, n);
        use pb::append_entries_response::Kind;
        let out = match resp {
            AppendEntriesResponse::Success => pb::AppendEntriesResponse {
                kind: Kind::Success as i32,
                ..Default::default()
            },
            AppendEntriesResponse::PartialSuccess(m) => pb::AppendEntriesResponse {
                kind: Kind::PartialSuccess as i32,
                matched: m.as_ref().map(pb_log_id),
                vote: None,
            },
            AppendEntriesResponse::Conflict => pb::AppendEntriesResponse {
                kind: Kind::Conflict as i32,
                ..Default::default()
            },
            AppendEntriesResponse::HigherVote(v) => pb::AppendEntriesResponse {
                kind: Kind::HigherVote as i32,
                matched: None,
                vote: Some(pb_vote(&v)),
            },
        };
        Ok(tonic::Response::new(out))
    }

    type StreamAppendStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = Result<pb::AppendEntriesResponse, tonic::Status>>
                + Send
                + 'static,
        >,
    >;

    /// Hands the leader's stream to openraft's pipelined `stream_append` (which appends each
    /// request without waiting for the one before to be synced, and answers in order). A
    /// request that does not decode ends the stream with its error, after the answers to the
    /// requests before it.
    async fn stream_append(
        &self,
        request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
        use futures_util::StreamExt;
        if self.shut_down() {
            return Err(tonic::Status::unavailable("this replica is stopping"));
        }
        let inbound = request.into_inner();
        let failure = Arc::new(Mutex::new(None::<tonic::Status>));
        let arrivals = Arc::new(Mutex::new(VecDeque::new()));
        let input = {
            let (this, failure, arrivals) = (self.clone(), failure.clone(), arrivals.clone());
            futures_util::stream::unfold(inbound, move |mut inbound| {
                let (this, failure, arrivals) = (this.clone(), failure.clone(), arrivals.clone());
                async move {
                    // The leader keeps its stream open; the stream ends when this replica
                    // shuts down, or the server's graceful shutdown would wait for it forever.
                    let next = loop {
                        if this.shut_down() {
                            return None;
                        }
                        if let Ok(next) = tokio::time::timeout(IDLE_RECHECK, inbound.next()).await {
                            break next?;
                        }
                    };
                    let decoded = match next {
                        Ok(r) => this.decode_append(r),
                        Err(status) => Err(status),
                    };
                    match decoded {
                        Ok(req) => {
                            lock(&arrivals)
                                .push_back((tokio::time::Instant::now(), req.entries.len()));
                            Some((req, inbound))
                        }
                        Err(status) => {
                            *lock(&failure) = Some(status);
                            None
                        }
                    }
                }
            })
        };
        use pb::append_entries_response::Kind;
        let answers = self.raft.stream_append(input).map(move |r| {
            if let Some((started, n)) = lock(&arrivals).pop_front() {
                warn_if_slow(started, n);
            }
            match r {
                Ok(Ok(matched)) => Ok(pb::AppendEntriesResponse {
                    kind: Kind::Success as i32,
                    matched: matched.as_ref().map(pb_log_id),
                    vote: None,
                }),
                Ok(Err(StreamAppendError::Conflict(at))) => Ok(pb::AppendEntriesResponse {
                    kind: Kind::Conflict as i32,
                    matched: Some(pb_log_id(&at)),
                    vote: None,
                }),
                Ok(Err(StreamAppendError::HigherVote(v))) => Ok(pb::AppendEntriesResponse {
                    kind: Kind::HigherVote as i32,
                    matched: None,
                    vote: Some(pb_vote(&v)),
                }),
                Err(fatal) => Err(raft_err(fatal)),
            }
        });
        let failed = futures_util::stream::once(async move { lock(&failure).take() })
            .filter_map(|f| async move { f.map(Err) });
        Ok(tonic::Response::new(Box::pin(answers.chain(failed))))
    }

    async fn vote(
        &self,
        request: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        let r = request.into_inner();
        self.check_group(&r.group)?;
        if let Some(until) = self.repairing.until() {
            // Its log lost entries it may have acknowledged: counting its vote could elect a
            // leader missing one of them. To a candidate this is a replica that is down.
            return Err(tonic::Status::unavailable(format!(
                "repairing a damaged log: no votes until it holds entry {until}"
            )));
        }
        let req = VoteRequest {
            vote: vote_from(r.vote)?,
            last_log_id: log_id_from(r.last_log_id),
            leadership_transfer: r.leadership_transfer,
        };
        let resp = self.raft.vote(req).await.map_err(raft_err)?;
        Ok(tonic::Response::new(pb::VoteResponse {
            vote: Some(pb_vote(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.as_ref().map(pb_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<pb::InstallSnapshotRequest>,
    ) -> Result<tonic::Response<pb::InstallSnapshotResponse>, tonic::Status> {
        let r = request.into_inner();
        self.check_group(&r.group)?;
        let vote = vote_from(r.vote)?;
        let meta: SnapshotMeta = decode_value(&r.meta, "snapshot meta")
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let snapshot = openraft::storage::Snapshot {
            meta,
            snapshot: r.data,
        };
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_err)?;
        Ok(tonic::Response::new(pb::InstallSnapshotResponse {
            vote: Some(pb_vote(&resp.vote)),
        }))
    }

    async fn transfer_leader(
        &self,
        request: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
        let r = request.into_inner();
        self.check_group(&r.group)?;
        let req =
            TransferLeaderRequest::new(vote_from(r.from_leader)?, r.to, log_id_from(r.last_log_id));
        let resp = self
            .raft
            .handle_transfer_leader(req)
            .await
            .map_err(raft_err)?;
        Ok(tonic::Response::new(pb::TransferLeaderResponse {
            rejected: resp.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }
}
