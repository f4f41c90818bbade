//! raftmq-namesrv: the route registry.
//!
//! Brokers register with every namesrv; clients ask any of them for routes. Empty until the
//! broker issue lands.
