//! The layout of a node's state directory, which its agent (`lb-agent
//! --state-dir`) and its manager (`mesh-manager --data-dir`) share: one
//! directory is one node.

use std::path::{Path, PathBuf};

use crate::pki::TlsDir;

/// The node's identity (key, certificate, CA): [`TlsDir`].
pub const TLS_DIR: &str = "tls";
/// A manager's Raft log, snapshot and vote.
pub const RAFT_DIR: &str = "raft";
/// The database in [`RAFT_DIR`].
pub const RAFT_DB: &str = "raft.redb";

/// The identity kept in `state_dir`.
#[must_use]
pub fn tls_dir(state_dir: &Path) -> TlsDir {
    TlsDir::new(state_dir.join(TLS_DIR))
}

/// Where a manager on this node keeps its Raft data.
#[must_use]
pub fn raft_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(RAFT_DIR)
}
