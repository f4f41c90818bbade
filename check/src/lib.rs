//! raftmq-check: the checkers that judge a recorded history, shared by the deterministic
//! simulator (`sim/`) and the chaos harness over real processes (`jepsen/`). Pure functions
//! over plain data: a history is whatever its recorder saw (clients' invocations and answers,
//! consumers' deliveries, replicas' states), a checker returns the violations it finds, and
//! each has a test that makes it fire.
//!
//! - [`log`]: a single store's acknowledged writes against its recovered log (lost, order,
//!   shape).
//! - [`queue`]: queue semantics — nothing acknowledged lost, nothing unexpected, duplicates
//!   only where allowed, per-queue order, committed offsets that never go back.
//! - [`txn`]: transactions — each decided once, committed ones delivered, rolled-back ones not.
//! - [`timer`]: timed messages — never early, delivered within bounds, recalled ones never.
//! - [`retry`]: consumer retries — redelivery counts, the dead-letter queue.
//! - [`pop`]: POP consumption (RocketMQ 5 clients) — nothing lost, acks stick, no
//!   redelivery before the invisible time, attempts rise, FIFO queues held.

pub mod log;
pub mod pop;
pub mod queue;
pub mod retry;
pub mod timer;
pub mod txn;
