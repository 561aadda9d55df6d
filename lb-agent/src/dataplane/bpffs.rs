//! Making sure the pin directory is on a BPF file system.
//!
//! If the pin directory is not on bpffs, the agent mounts one: at `/sys/fs/bpf` when the
//! pin directory is below it (the usual case; that directory is not mounted at boot on
//! some distributions), otherwise on the pin directory itself. Mounts made inside a
//! private mount namespace (such as the one `ip netns exec` creates) vanish with it, so
//! pins that must outlive the agent need a bpffs mounted in the host's mount namespace.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use tracing::info;

/// The standard bpffs mount point.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Failures preparing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// Creating a directory failed.
    #[error("creating {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Mounting bpffs failed.
    #[error("mounting bpffs on {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        source: nix::Error,
    },
    /// The directory is still not on bpffs.
    #[error("{0} is not on a BPF file system")]
    NotBpffs(PathBuf),
}

/// Whether `path` (which exists) is on bpffs.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// The mount point the agent uses for `pin_dir`, if it has to mount one.
#[must_use]
pub fn mount_point_for(pin_dir: &Path) -> PathBuf {
    if pin_dir.starts_with(BPFFS_ROOT) {
        PathBuf::from(BPFFS_ROOT)
    } else {
        pin_dir.to_owned()
    }
}

/// Creates `pin_dir` on bpffs, mounting bpffs if needed (see the module documentation).
///
/// # Errors
/// If a directory cannot be created or bpffs cannot be mounted.
pub fn prepare(pin_dir: &Path) -> Result<(), BpffsError> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| BpffsError::Create {
            path: p.to_owned(),
            source,
        })
    };
    let mount_point = mount_point_for(pin_dir);
    mkdir(&mount_point)?;
    if !is_bpffs(&mount_point) {
        mount(
            Some("bpf"),
            &mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| BpffsError::Mount {
            path: mount_point.clone(),
            source,
        })?;
        info!(path = %mount_point.display(), "mounted bpffs");
    }
    mkdir(pin_dir)?;
    if !is_bpffs(pin_dir) {
        return Err(BpffsError::NotBpffs(pin_dir.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points() {
        assert_eq!(
            mount_point_for(Path::new("/sys/fs/bpf/mesh")),
            Path::new("/sys/fs/bpf")
        );
        assert_eq!(
            mount_point_for(Path::new("/run/mesh/bpf")),
            Path::new("/run/mesh/bpf")
        );
    }
}
