//! The SDK's error type.

use std::time::Duration;

use raftmq_proto::ErrorCode;

/// Why a client call failed.
///
/// ```
/// use raftmq_client::ClientError;
/// let e = raftmq_client::Producer::builder().group("G").build().err().unwrap();
/// assert!(matches!(e, ClientError::InvalidArgument(_)));
/// ```
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The broker refused the request for a reason retrying will not fix (bad input, unknown
    /// topic, no permission, message too large, …).
    #[error("{code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// No answer in time; the request may or may not have taken effect.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Every attempt failed to reach a usable broker; the last reason is given.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The client is not started, or was shut down.
    #[error("{0}")]
    State(&'static str),
}

impl ClientError {
    /// The wire code, for a broker's refusal.
    ///
    /// ```
    /// use raftmq_client::ClientError;
    /// let e = ClientError::Refused { code: raftmq_proto::ErrorCode::TopicNotFound, message: "no such topic".into() };
    /// assert_eq!(e.code(), Some(raftmq_proto::ErrorCode::TopicNotFound));
    /// assert_eq!(ClientError::State("stopped").code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A response's code; a missing or unknown one counts as `INTERNAL`.
pub(crate) fn code(s: &Option<raftmq_proto::v1::Status>) -> raftmq_proto::ErrorCode {
    s.as_ref()
        .and_then(|s| raftmq_proto::ErrorCode::try_from(s.code).ok())
        .unwrap_or(raftmq_proto::ErrorCode::Internal)
}
