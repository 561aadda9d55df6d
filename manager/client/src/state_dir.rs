//! The layout of a node's state directory, which its agent (`lb-agent
//! --state-dir`) and its manager (`mesh-manager --data-dir`) share: one
//! directory is one node. The manager's storage key, which seals its Raft
//! data, is kept apart, beside the directory ([`storage_key_file`]).

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

/// Where a manager on this node keeps its storage key by default: beside
/// the state directory, not in it (the directory's path with `.key`
/// appended: `/var/lib/mesh/manager.key` for `/var/lib/mesh/manager`), so
/// that a copy of the directory alone does not hold the key. A path without
/// a last name (`.`, `..`, `dir/..`) is resolved first, if it exists.
#[must_use]
pub fn storage_key_file(state_dir: &Path) -> PathBuf {
    let lexical: PathBuf = state_dir.components().collect();
    let dir = match lexical.file_name() {
        Some(_) => lexical,
        None => std::fs::canonicalize(&lexical).unwrap_or(lexical),
    };
    let mut key = dir.into_os_string();
    key.push(".key");
    PathBuf::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_key_is_beside_the_state_dir() {
        for (dir, key) in [
            ("/var/lib/mesh/manager", "/var/lib/mesh/manager.key"),
            ("/var/lib/mesh/manager/", "/var/lib/mesh/manager.key"),
            ("/var/lib/mesh/./agent/.", "/var/lib/mesh/agent.key"),
            ("data", "data.key"),
        ] {
            assert_eq!(storage_key_file(Path::new(dir)), Path::new(key), "{dir}");
        }
        let cwd = std::fs::canonicalize(".").unwrap();
        let mut wanted = cwd.clone().into_os_string();
        wanted.push(".key");
        assert_eq!(storage_key_file(Path::new(".")), PathBuf::from(wanted));
        assert!(!storage_key_file(Path::new(".")).starts_with(&cwd));
    }
}
