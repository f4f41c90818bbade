//! The gRPC services of one replica: thin shells that take a request apart, call a manager
//! and answer with [`respond`](crate::error::respond) (a refusal becomes the response's
//! status; the mapping to error codes is in [`crate::error`]).

pub mod admin;
pub mod messaging;
