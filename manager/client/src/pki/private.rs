//! Files that hold secrets (keys, the Raft log with the CA key and join
//! secrets): directories 0700, files 0600, whoever made them and whatever
//! the umask.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700, and sets 0700 on
/// `dir` if it existed (made by hand, or by an older version).
///
/// # Errors
/// If the directory cannot be created or its mode set.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates `path` empty with mode 0600 if it is missing, and sets 0600 on
/// it if it existed.
///
/// # Errors
/// If the file cannot be created or its mode set.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
