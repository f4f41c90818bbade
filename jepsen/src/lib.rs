//! raftmq-jepsen: the chaos harness over real `raftmq` processes.
//!
//! Will start clusters of real processes, inject faults by real means (kill -9,
//! SIGSTOP/SIGCONT, partitions), record a history of client operations and check it.
//! Empty until its issue lands.
