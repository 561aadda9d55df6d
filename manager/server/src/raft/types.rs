//! openraft's type configuration for the managers, and the aliases built on it.

use std::io::Cursor;

use mesh_api::node::NodeId;
use mesh_core::state::{self, Command};
use openraft::BasicNode;

openraft::declare_raft_types!(
    /// The manager's openraft type configuration: log entries carry
    /// [`state::Command`]s, responses are the state machine's
    /// [`state::Response`], nodes are [`openraft::BasicNode`] with the
    /// manager's Raft address.
    pub TypeConfig:
        D = Command,
        R = state::Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of the manager.
pub type MeshRaft = openraft::Raft<TypeConfig>;

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

/// openraft's metrics for this node.
pub type Metrics = openraft::RaftMetrics<NodeId, BasicNode>;
