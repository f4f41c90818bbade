//! Answers in the v2 form: a `Status{code, message}` in the payload (the gRPC status stays OK
//! but for transport errors), with the v2 code clients act on for each raftmq refusal.

use raftmq_client::ClientError;
use raftmq_proto::ErrorCode;
use raftmq_proto::rocketmq::v2::{Code, Status};

/// A v2 answer that is not OK: its code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error {
    pub code: Code,
    pub message: String,
}

impl V2Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> Status {
        Status {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}

pub fn ok() -> Status {
    Status {
        code: Code::Ok as i32,
        message: "OK".into(),
    }
}

/// The status of a result.
pub fn status_of<T>(r: &Result<T, V2Error>) -> Status {
    match r {
        Ok(_) => ok(),
        Err(e) => e.status(),
    }
}

/// A raftmq broker's refusal as the v2 code a RocketMQ 5 client acts on.
pub fn from_wire(code: ErrorCode) -> Code {
    match code {
        ErrorCode::Ok => Code::Ok,
        ErrorCode::InvalidArgument => Code::BadRequest,
        ErrorCode::TopicNotFound => Code::TopicNotFound,
        ErrorCode::NoPermission => Code::Forbidden,
        ErrorCode::MessageTooLarge => Code::PayloadTooLarge,
        ErrorCode::DelayOutOfRange => Code::IllegalDeliveryTime,
        ErrorCode::TimerNotFound | ErrorCode::TimerNotPending => Code::NotFound,
        ErrorCode::MessageNotFound => Code::MessageNotFound,
        ErrorCode::GroupNotFound => Code::ConsumerGroupNotFound,
        ErrorCode::ReceiptStale => Code::InvalidReceiptHandle,
        ErrorCode::TxnNotFound => Code::InvalidTransactionId,
        ErrorCode::TxnAlreadyDecided => Code::Ok,
        ErrorCode::TxnDecidedOtherwise | ErrorCode::TxnGroupMismatch => Code::BadRequest,
        // Retriable on the client's side: it tries again (on the next queue for a send).
        ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::LockHeld => {
            Code::InternalServerError
        }
        ErrorCode::Internal
        | ErrorCode::OffsetOutOfRange
        | ErrorCode::StoreCorrupted
        | ErrorCode::TopicExists => Code::InternalError,
    }
}

/// An SDK error (the gateway's own calls to the broker groups) as a v2 answer.
impl From<ClientError> for V2Error {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Refused { code, .. } => from_wire(*code),
            ClientError::Timeout(_) => Code::ProxyTimeout,
            ClientError::Unavailable(_) => Code::InternalServerError,
            ClientError::InvalidArgument(_) => Code::BadRequest,
            ClientError::State(_) => Code::InternalError,
        };
        V2Error::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_codes_clients_act_on() {
        assert_eq!(from_wire(ErrorCode::TopicNotFound), Code::TopicNotFound);
        assert_eq!(from_wire(ErrorCode::MessageTooLarge), Code::PayloadTooLarge);
        let e: V2Error = ClientError::Timeout(std::time::Duration::from_secs(3)).into();
        assert_eq!(e.code, Code::ProxyTimeout);
        assert_eq!(e.status().code, 50400);
        assert_eq!(ok().code, 20000);
    }
}
