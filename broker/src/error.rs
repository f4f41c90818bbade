//! Why the broker refuses a request: one typed error for every manager, mapped to a wire
//! [`ErrorCode`] in exactly one place ([`Refusal::code`]).
//!
//! Managers return `Result<_, Refusal>`; the services turn it into a response's `status`
//! with [`respond`] (a refusal never becomes a gRPC transport error: clients read the code).

use raftmq_proto::ErrorCode;
use raftmq_proto::limits::LimitError;
use raftmq_proto::v1::Status;
use raftmq_raft::WriteError;
use raftmq_store::StoreError;
use tonic::Response;

/// A request the broker did not carry out, and why.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The request breaks a wire limit (name charset, sizes, counts).
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("topic {topic:?} does not exist on group {group:?}")]
    TopicNotFound { topic: String, group: String },
    #[error("{0}")]
    NoPermission(String),
    #[error("{0}")]
    MessageTooLarge(String),
    #[error("{0}")]
    OffsetOutOfRange(String),
    /// Replication refused or could not finish the write (not the leader, no leader yet,
    /// shutting down).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The store could not serve a read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transaction was decided before, the same way; nothing changed.
    #[error("{0}")]
    TxnAlreadyDecided(String),
    /// The transaction was decided before, the other way; nothing changed.
    #[error("{0}")]
    TxnDecidedOtherwise(String),
    /// No such transaction (never stored, or forgotten after its decision).
    #[error("{0}")]
    TxnNotFound(String),
    /// The transaction belongs to another producer group.
    #[error("{0}")]
    TxnGroupMismatch(String),
    /// An unknown delay level, or a delivery time past the maximum delay.
    #[error("{0}")]
    DelayOutOfRange(String),
    /// No timed message with that recall handle.
    #[error("{0}")]
    TimerNotFound(String),
    /// The timed message was delivered or recalled already.
    #[error("{0}")]
    TimerNotPending(String),
    /// The message named is not held by this broker group.
    #[error("{0}")]
    MessageNotFound(String),
    /// No configuration for that consumer group.
    #[error("{0}")]
    GroupNotFound(String),
    /// A POP receipt that is not the current one.
    #[error("{0}")]
    ReceiptStale(String),
}

impl Refusal {
    /// The wire code: the one mapping from refusals to [`ErrorCode`]s.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Limit(e) => e.code(),
            Refusal::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Refusal::TopicNotFound { .. } => ErrorCode::TopicNotFound,
            Refusal::NoPermission(_) => ErrorCode::NoPermission,
            Refusal::MessageTooLarge(_) => ErrorCode::MessageTooLarge,
            Refusal::OffsetOutOfRange(_) => ErrorCode::OffsetOutOfRange,
            // A follower that knows the leader says where it is; one that does not (an
            // election, or a new leader whose lease is not established) says "retry here".
            Refusal::Write(WriteError::NotLeader {
                leader_addr: Some(_),
                ..
            }) => ErrorCode::NotLeader,
            Refusal::Write(WriteError::NotLeader { .. }) => ErrorCode::Unavailable,
            Refusal::Write(WriteError::InvalidArgument(_)) => ErrorCode::InvalidArgument,
            // Raft stopped or the store failed under it: retriable elsewhere, indeterminate.
            Refusal::Write(
                WriteError::Unavailable(_) | WriteError::Stopped(_) | WriteError::Store(_),
            ) => ErrorCode::Unavailable,
            Refusal::Store(StoreError::Corrupt { .. }) => ErrorCode::StoreCorrupted,
            Refusal::Store(StoreError::OutOfRange { .. }) => ErrorCode::OffsetOutOfRange,
            Refusal::Store(StoreError::InvalidArgument(_)) => ErrorCode::InvalidArgument,
            Refusal::Store(_) => ErrorCode::Internal,
            Refusal::TxnAlreadyDecided(_) => ErrorCode::TxnAlreadyDecided,
            Refusal::TxnDecidedOtherwise(_) => ErrorCode::TxnDecidedOtherwise,
            Refusal::TxnNotFound(_) => ErrorCode::TxnNotFound,
            Refusal::TxnGroupMismatch(_) => ErrorCode::TxnGroupMismatch,
            Refusal::DelayOutOfRange(_) => ErrorCode::DelayOutOfRange,
            Refusal::TimerNotFound(_) => ErrorCode::TimerNotFound,
            Refusal::TimerNotPending(_) => ErrorCode::TimerNotPending,
            Refusal::MessageNotFound(_) => ErrorCode::MessageNotFound,
            Refusal::GroupNotFound(_) => ErrorCode::GroupNotFound,
            Refusal::ReceiptStale(_) => ErrorCode::ReceiptStale,
        }
    }

    /// The wire status: code, message and, for `NOT_LEADER`, the leader's address.
    pub fn status(&self) -> Status {
        let code = self.code();
        let (message, leader_addr) = match self {
            Refusal::Write(WriteError::NotLeader {
                leader_addr: Some(addr),
                ..
            }) => ("not the leader".to_string(), addr.clone()),
            Refusal::Write(WriteError::NotLeader { .. }) => (
                "no leader known yet (election or lease in progress); retry".to_string(),
                String::new(),
            ),
            Refusal::Write(WriteError::InvalidArgument(m) | WriteError::Unavailable(m))
            | Refusal::InvalidArgument(m)
            | Refusal::NoPermission(m)
            | Refusal::MessageTooLarge(m)
            | Refusal::OffsetOutOfRange(m) => (m.clone(), String::new()),
            Refusal::Limit(e) => (e.message.clone(), String::new()),
            other => (other.to_string(), String::new()),
        };
        Status {
            code: code as i32,
            message,
            leader_addr,
        }
    }
}

/// The status of a request that succeeded.
pub fn ok() -> Option<Status> {
    Some(Status {
        code: ErrorCode::Ok as i32,
        ..Default::default()
    })
}

/// A response type with a `status` field.
pub(crate) trait Reply: Default {
    fn status_mut(&mut self) -> &mut Option<Status>;
}

macro_rules! replies {
    ($($t:ident),* $(,)?) => {
        $(impl Reply for raftmq_proto::v1::$t {
            fn status_mut(&mut self) -> &mut Option<Status> {
                &mut self.status
            }
        })*
    };
}

replies!(
    SendResponse,
    PullResponse,
    QueryQueueResponse,
    QueryOffsetResponse,
    CommitOffsetResponse,
    HeartbeatResponse,
    GetConsumerListResponse,
    LockQueuesResponse,
    UnlockQueuesResponse,
    ViewMessageResponse,
    QueryByKeyResponse,
    CreateTopicResponse,
    DeleteTopicResponse,
    ListTopicsResponse,
    PutGroupResponse,
    ListGroupsResponse,
    BrowseQueueResponse,
    ProcessStatsResponse,
    TopicStatsResponse,
    ConsumerProgressResponse,
    GroupStatusResponse,
    TransferLeaderResponse,
    AddReplicaResponse,
    ChangeVotersResponse,
    RemoveReplicaResponse,
    EndTransactionResponse,
    RecallMessageResponse,
    SendBackResponse,
    ListTransactionsResponse,
    PopResponse,
    PopAckResponse,
    PopChangeInvisibleResponse,
);

/// A manager's answer as a gRPC response: `OK` unless the response already carries a status
/// (a pull past the queue's end answers `OFFSET_OUT_OF_RANGE` with the queue's bounds), or
/// the refusal's status on an otherwise empty response.
pub(crate) fn respond<T: Reply>(r: Result<T, Refusal>) -> Result<Response<T>, tonic::Status> {
    let reply = match r {
        Ok(mut t) => {
            if t.status_mut().is_none() {
                *t.status_mut() = ok();
            }
            t
        }
        Err(refusal) => {
            let mut t = T::default();
            *t.status_mut() = Some(refusal.status());
            t
        }
    };
    Ok(Response::new(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader_or_asks_to_retry() {
        let known = Refusal::from(WriteError::NotLeader {
            leader_id: Some(2),
            leader_addr: Some("10.0.0.2:1".into()),
        });
        assert_eq!(known.code(), ErrorCode::NotLeader);
        assert_eq!(known.status().leader_addr, "10.0.0.2:1");
        let unknown = Refusal::from(WriteError::NotLeader {
            leader_id: None,
            leader_addr: None,
        });
        assert_eq!(unknown.code(), ErrorCode::Unavailable);
        assert!(unknown.status().leader_addr.is_empty());
    }

    #[test]
    fn store_errors_keep_their_source() {
        let r = Refusal::from(StoreError::InvalidArgument("bad".into()));
        assert_eq!(r.code(), ErrorCode::InvalidArgument);
        assert!(matches!(r, Refusal::Store(StoreError::InvalidArgument(ref m)) if m == "bad"));
        assert_eq!(
            r.to_string(),
            StoreError::InvalidArgument("bad".into()).to_string()
        );
        let out = Refusal::from(StoreError::OutOfRange {
            what: "offset",
            value: 9,
            first: 0,
            end: 3,
        });
        assert_eq!(out.code(), ErrorCode::OffsetOutOfRange);
    }

    #[test]
    fn respond_keeps_a_status_already_set() {
        let pre = raftmq_proto::v1::PullResponse {
            status: Some(Refusal::OffsetOutOfRange("past".into()).status()),
            ..Default::default()
        };
        let r = respond(Ok(pre)).unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, ErrorCode::OffsetOutOfRange as i32);
        let r = respond::<raftmq_proto::v1::PullResponse>(Ok(Default::default()))
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, ErrorCode::Ok as i32);
    }
}
