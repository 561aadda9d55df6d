//! Raft plumbing: openraft's type configuration, the redb log store, the
//! state machine over [`ClusterState`](mesh_core::state::ClusterState), the gRPC
//! network and service, the [`RaftNode`] facade the manager uses, and the
//! managers' status as Raft sees it ([`reachability`]).
//!
//! A manager's Raft data lives in one redb file, `raft.redb`, in its data
//! directory: the log, the vote, the committed and purged markers and the
//! latest snapshot. The log entries and the snapshot are sealed with the
//! manager's storage key, kept in a file outside the data directory
//! ([`seal`], [`storage_key`]). The state machine itself is in memory and
//! is rebuilt on start from the snapshot and the committed log tail.

pub mod failover;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod reachability;
pub mod seal;
pub mod service;
pub mod state_machine;
pub mod storage_key;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
pub mod types;

pub use log_store::{DbError, LogStore};
pub use network::{Connector, Network};
pub use node::{
    DB_FILE, MembershipError, RaftError, RaftNode, RaftTuning, WriteError, current_leader,
};
pub use proposer::BatchLimits;
pub use reachability::{ManagerStatus, ManagerView};
pub use service::RaftService;
pub use state_machine::StateMachineStore;
pub use storage_key::KeyError;
pub use types::{Entry, MeshRaft, Metrics, TypeConfig};
