//! A task's secret and config files: what they are ([`TaskFile`], built from the task's
//! references and the bytes the assignment brought, [`task_files`]), how they reach a
//! process task's `task-init` (JSON on its standard input: never on a command line, in
//! the environment or on disk), and where a docker task's are written before the
//! engine binds them in ([`HostFiles`]: a directory per task on the node's `/run`, a
//! tmpfs, removed when the task goes).
//!
//! Secrets are at `/run/secrets/<target>`, configs at their target path; each file has
//! the owner and mode its reference asks for and is read-only in the task. See
//! `docs/secrets.md`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use mesh_api::file::FileData;
use mesh_api::file_ref::{FileKind, SECRETS_DIR};
use mesh_api::spec::TaskSpec;
use mesh_api::task::TaskId;
use serde::{Deserialize, Serialize};

/// One file a task gets: a secret's or a config's bytes at a path, with an owner and a
/// mode. `Debug` never shows the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// Secret or config.
    pub kind: FileKind,
    /// Its absolute path in the task.
    pub path: String,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its permission bits.
    pub mode: u32,
    /// Its bytes.
    pub data: FileData,
}

impl TaskFile {
    /// Whether it lives on the task's secrets tmpfs (`/run/secrets/...`), rather than
    /// over a file of the node's.
    #[must_use]
    pub fn under_secrets_dir(&self) -> bool {
        self.path
            .strip_prefix(SECRETS_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The secrets and configs an agent holds for its tasks, by kind and name: the
/// assignment's, replaced by each assignment (so one no task needs any more is gone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldFiles {
    files: BTreeMap<(FileKind, String), FileData>,
}

impl HeldFiles {
    /// What an assignment brought.
    #[must_use]
    pub fn new(
        secrets: &[mesh_api::file::FileContent],
        configs: &[mesh_api::file::FileContent],
    ) -> Self {
        let files = [(FileKind::Secret, secrets), (FileKind::Config, configs)]
            .into_iter()
            .flat_map(|(kind, all)| {
                all.iter()
                    .map(move |f| ((kind, f.name.clone()), f.data.clone()))
            })
            .collect();
        Self { files }
    }

    /// How many of `kind` are held here and not in `before` (newly received).
    #[must_use]
    pub fn new_since(&self, before: &HeldFiles, kind: FileKind) -> u64 {
        let count = self
            .files
            .iter()
            .filter(|((k, name), data)| {
                *k == kind && before.files.get(&(kind, name.clone())) != Some(*data)
            })
            .count();
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// The files of the task whose spec is `spec`.
    ///
    /// # Errors
    /// The first secret or config this node did not receive (the managers send every
    /// one a task to run references: a missing one is a bug, and the task cannot run).
    pub fn task_files(&self, spec: &TaskSpec) -> Result<Vec<TaskFile>, String> {
        task_files(spec, |kind, name| self.files.get(&(kind, name.to_string())))
    }
}

/// The files of the task whose spec is `spec`, with the bytes `data` gives by kind and
/// name.
///
/// # Errors
/// The first secret or config `data` does not have.
pub fn task_files<'a>(
    spec: &TaskSpec,
    data: impl Fn(FileKind, &str) -> Option<&'a FileData>,
) -> Result<Vec<TaskFile>, String> {
    let refs = spec
        .secrets
        .iter()
        .map(|r| (FileKind::Secret, r))
        .chain(spec.configs.iter().map(|r| (FileKind::Config, r)));
    refs.map(|(kind, r)| {
        let bytes = data(kind, &r.source).ok_or_else(|| {
            format!(
                "{kind} {} is not available on this node (the managers did not send it)",
                r.source
            )
        })?;
        Ok(TaskFile {
            kind,
            path: r.path(kind),
            uid: r.uid,
            gid: r.gid,
            mode: r.mode,
            data: bytes.clone(),
        })
    })
    .collect()
}

/// The most bytes `task-init` reads from its standard input: every reference at its
/// kind's limit, base64 in JSON.
pub const MAX_ENCODED: usize = mesh_api::spec::MAX_FILE_REFS
    * (mesh_api::file_ref::MAX_SECRET_SIZE + mesh_api::file_ref::MAX_CONFIG_SIZE)
    * 4
    / 3
    + 1024 * 1024;

/// The files as `task-init` reads them.
#[must_use]
pub fn encode(files: &[TaskFile]) -> Vec<u8> {
    serde_json::to_vec(files).unwrap_or_default()
}

/// The files `task-init` was given.
///
/// # Errors
/// Malformed input.
pub fn decode(bytes: &[u8]) -> Result<Vec<TaskFile>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The size of a tmpfs that holds `files`: their bytes, a page each for their inodes
/// and directories, and some slack.
#[must_use]
pub fn tmpfs_size<'a>(files: impl IntoIterator<Item = &'a TaskFile>) -> usize {
    files
        .into_iter()
        .map(|f| f.data.len().div_ceil(4096) * 4096 + 4096)
        .sum::<usize>()
        + 64 * 1024
}

/// Where a docker task's files are written for the engine to bind them in: a directory
/// per task under `root`, which must be on a tmpfs ([`HOST_FILES_ROOT`]: the node's
/// shared-memory tmpfs, which the engine sees whatever mount namespace the agent runs
/// in; `/run` is not a tmpfs everywhere).
#[derive(Clone, Debug)]
pub struct HostFiles {
    root: PathBuf,
}

/// The default root of [`HostFiles`].
pub const HOST_FILES_ROOT: &str = "/dev/shm/lb-agent/files";

impl HostFiles {
    /// Files under `root`.
    #[must_use]
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Task `id`'s directory.
    #[must_use]
    pub fn dir(&self, id: TaskId) -> PathBuf {
        self.root.join(format!("{id:016x}"))
    }

    /// Writes `files` for task `id` (each with its owner and mode, in a directory only
    /// root may enter) and returns, for each, the node's file and its path in the task.
    ///
    /// # Errors
    /// If `root` is not on a tmpfs (a secret must never reach a disk), or a write fails.
    pub fn write(&self, id: TaskId, files: &[TaskFile]) -> Result<Vec<(PathBuf, String)>, String> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        if !on_tmpfs(parent) {
            return Err(format!(
                "{} is not on a tmpfs: the task's secrets would be written to a disk",
                parent.display()
            ));
        }
        private_dir(&self.root)?;
        let dir = self.dir(id);
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir)?;
        files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let path = dir.join(i.to_string());
                write_file(&path, f)?;
                Ok((path, f.path.clone()))
            })
            .collect()
    }

    /// Removes task `id`'s files (nothing if it has none).
    pub fn remove(&self, id: TaskId) {
        let _ = std::fs::remove_dir_all(self.dir(id));
    }
}

/// Whether `path` is on a tmpfs.
fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("create {}: {e}", dir.display()))
}

/// Writes one file with its bytes, owner and mode (created 0600, so never readable by
/// anyone else before it has its owner).
///
/// # Errors
/// What failed, naming the file.
pub fn write_file(path: &Path, file: &TaskFile) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("write {} ({}): {e}", path.display(), file.path);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    out.write_all(file.data.as_bytes()).map_err(fail)?;
    drop(out);
    std::os::unix::fs::chown(path, Some(file.uid), Some(file.gid)).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(file.mode)).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::file::FileContent;
    use mesh_api::file_ref::FileRef;

    fn spec() -> TaskSpec {
        let mut spec = mesh_api::spec::ServiceSpec::new(
            "api",
            mesh_api::spec::RuntimeKind::Process,
            "/bin/true",
            vec![],
        )
        .task;
        spec.secrets = vec![
            FileRef::parse(FileKind::Secret, "pw").unwrap(),
            FileRef::parse(
                FileKind::Secret,
                "source=tls,target=certs/key,uid=7,mode=0400",
            )
            .unwrap(),
        ];
        spec.configs = vec![FileRef::parse(FileKind::Config, "app.conf").unwrap()];
        spec
    }

    fn content(name: &str, data: &[u8]) -> FileContent {
        FileContent {
            id: 1,
            name: name.into(),
            data: FileData::from(data.to_vec()),
        }
    }

    #[test]
    fn a_tasks_files_come_from_its_references_and_the_held_bytes() {
        let held = HeldFiles::new(
            &[content("pw", b"hunter2"), content("tls", b"KEY")],
            &[content("app.conf", b"port=80")],
        );
        let files = held.task_files(&spec()).unwrap();
        let summary: Vec<_> = files
            .iter()
            .map(|f| (f.path.as_str(), f.uid, f.mode, f.data.as_bytes()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/run/secrets/pw", 0, 0o444, &b"hunter2"[..]),
                ("/run/secrets/certs/key", 7, 0o400, &b"KEY"[..]),
                ("/app.conf", 0, 0o444, &b"port=80"[..]),
            ]
        );
        assert!(files[1].under_secrets_dir() && !files[2].under_secrets_dir());
        assert!(!format!("{files:?}").contains("hunter2"));
        assert_eq!(decode(&encode(&files)).unwrap(), files);
        let missing = HeldFiles::new(&[content("pw", b"x")], &[]);
        assert_eq!(
            missing.task_files(&spec()).unwrap_err(),
            "secret tls is not available on this node (the managers did not send it)"
        );
    }

    #[test]
    fn newly_received_files_are_counted_once() {
        let before = HeldFiles::new(&[content("pw", b"1")], &[]);
        let after = HeldFiles::new(
            &[content("pw", b"1"), content("tls", b"2")],
            &[content("app.conf", b"3")],
        );
        assert_eq!(after.new_since(&before, FileKind::Secret), 1);
        assert_eq!(after.new_since(&before, FileKind::Config), 1);
        assert_eq!(after.new_since(&after, FileKind::Secret), 0);
    }

    #[test]
    fn docker_tasks_files_are_written_private_and_removed() {
        // A tmpfs the test can write to: /dev/shm (the node's /run needs root).
        let root = PathBuf::from(format!(
            "/dev/shm/lb-agent-test-{}/files",
            std::process::id()
        ));
        let host = HostFiles::new(root.clone());
        let held = HeldFiles::new(
            &[content("pw", b"hunter2"), content("tls", b"KEY")],
            &[content("app.conf", b"port=80")],
        );
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let mut files = held.task_files(&spec()).unwrap();
        for f in &mut files {
            (f.uid, f.gid) = (uid, gid);
        }
        let written = host.write(9, &files).unwrap();
        assert_eq!(written.len(), 3);
        assert_eq!(std::fs::read(&written[0].0).unwrap(), b"hunter2");
        assert_eq!(written[1].1, "/run/secrets/certs/key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written[1].0), 0o400);
        assert_eq!(mode(&host.dir(9)), 0o700);
        host.remove(9);
        assert!(!host.dir(9).exists());
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
        // Not on a tmpfs (the test program's directory, in cargo's target): refused.
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        assert!(!on_tmpfs(&exe_dir), "{} is on a tmpfs", exe_dir.display());
        let disk = HostFiles::new(exe_dir.join(format!("files-{}", std::process::id())));
        assert!(
            disk.write(9, &files)
                .unwrap_err()
                .contains("not on a tmpfs")
        );
    }
}
