//! Raft plumbing: openraft's type configuration, the redb log store, the
//! state machine over [`ClusterState`](crate::state::ClusterState), the gRPC
//! network and service, and the [`RaftNode`] facade the manager uses.

use std::io::Cursor;

use crate::state;

pub mod log_store;
pub mod state_machine;

openraft::declare_raft_types!(
    /// The manager's openraft type configuration: log entries carry
    /// [`state::Command`]s, responses are the state machine's
    /// [`state::Response`], nodes are [`openraft::BasicNode`] with the
    /// manager's Raft address.
    pub TypeConfig:
        D = state::Command,
        R = state::Response,
        NodeId = state::NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node of the manager.
pub type MeshRaft = openraft::Raft<TypeConfig>;

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the raft tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        pub(crate) fn new(tag: &str) -> Self {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("mesh-raft-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create test dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
