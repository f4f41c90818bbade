//! The client's protocol rules as plain functions from state and event to a decision: no I/O,
//! no clock (times are passed in), each with unit tests. The producer and the consumers are
//! thin shells that do the calls and ask these what to do next.
//!
//! - [`offsets`]: where a consumer starts on a queue, what it records and commits, what it
//!   does on `OFFSET_OUT_OF_RANGE`.
//! - [`send`]: the producer's retries, `NOT_LEADER` redirects, queue choice and fault
//!   avoidance.
//! - [`consume`]: the push consumer's member-list rule and redelivery pauses.
//! - [`channel`]: where a client channel connects next after each event, and when.
//! - [`transaction`]: what a transaction listener's answer counts as (a panic or a late
//!   answer is `Unknown`), and what an `EndTransaction` answer means.
//!
//! Queue allocation among a group's members is pure too, and public: [`crate::rebalance`].

pub(crate) mod channel;
pub(crate) mod consume;
pub(crate) mod offsets;
pub(crate) mod send;
pub(crate) mod transaction;
