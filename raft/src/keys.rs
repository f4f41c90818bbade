//! MetaStore keys of the Raft layer (values: version byte + JSON), shared by the log
//! storage, the state machine and the inspection helpers.

pub const VOTE: &str = "vote";
pub const PURGED: &str = "purged";
pub const MEMBERSHIP: &str = "membership";
pub const SNAPSHOT: &str = "snapshot";
/// Boundary snapshots, one per CommitLog segment start (see `state_machine`).
pub const BOUNDARY_PREFIX: &str = "boundary/";
/// How many times this replica restarted its store from a leader's snapshot.
pub const RESETS: &str = "resets";

/// MetaStore key of the boundary snapshot whose last entry is `index`.
pub(crate) fn boundary_key(index: u64) -> String {
    format!("{BOUNDARY_PREFIX}{index:020}")
}
/// Set while this replica refills a log it dropped after finding it damaged: the index its log
/// must reach before it votes or campaigns again (see `repair`).
pub const REPAIR_UNTIL: &str = "repair_until";
