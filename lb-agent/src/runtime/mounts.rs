//! A process task's mounts (`--mount`): planned by the agent before the task starts,
//! applied by `lb-agent task-init` in the task's own mount namespace
//! ([`super::init`]), so they are private to the task and vanish with it.
//!
//! - `bind`: the node's path, which must exist (else the task fails at once, with
//!   docker's words), bound recursively (`MS_BIND|MS_REC`), then remounted read-only
//!   if asked. A source inside what the agent hides from tasks (its state directory,
//!   pin directory, configuration file) is refused.
//! - `volume`: the directory `<volumes>/<name>/_data` of the node (`<volumes>` is
//!   `<state-dir>/volumes`), created on first use (0755, root's) and kept across task
//!   restarts and the service's removal, as docker's named volumes are; bound as a
//!   bind mount is.
//! - `tmpfs`: a fresh tmpfs (`size`, `mode`, default `1777` as docker's; `nosuid`,
//!   `nodev`).
//!
//! A process task shares the node's file system: a mount's target must already exist
//! there (a directory; a file for a file bind). Nothing is created on the node's file
//! system for it: a missing target fails the task with a message naming it.
//!
//! `task-init` opens every source before it hides the agent's directories (the volumes
//! are inside the state directory) and mounts them afterwards through
//! `/proc/self/fd/N`: a bind's source that contains a hidden directory then shows
//! that directory hidden too (the recursive bind copies the hiding mounts).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use mesh_api::mount::{Mount, MountKind};
use nix::mount::MsFlags;

use super::error::RuntimeError;

/// A tmpfs's mode when the mount names none (docker's).
pub const DEFAULT_TMPFS_MODE: u32 = 0o1777;

/// One mount as `task-init` applies it: resolved on the node by [`plan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskMount {
    /// The node's path bound there (a bind's source, a volume's directory); `None`:
    /// a fresh tmpfs.
    pub source: Option<PathBuf>,
    /// Where the task sees it.
    pub target: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// A tmpfs's mount options (`mode=1777,size=N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<String>,
}

impl std::str::FromStr for TaskMount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s).map_err(|e| format!("a task mount {s:?}: {e}"))
    }
}

impl std::fmt::Display for TaskMount {
    /// Its JSON, as `task-init`'s `--mount` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

/// A tmpfs's mount options: its mode (default [`DEFAULT_TMPFS_MODE`]) and size.
#[must_use]
pub fn tmpfs_options(size: Option<u64>, mode: Option<u32>) -> String {
    let mut options = format!("mode={:o}", mode.unwrap_or(DEFAULT_TMPFS_MODE));
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    options
}

/// What the agent hides from tasks, which [`plan`] checks mounts against.
#[derive(Clone, Copy, Debug)]
pub struct Hidden<'a> {
    /// Directories hidden from tasks (absolute, canonical).
    pub dirs: &'a [PathBuf],
    /// Files hidden from tasks (absolute, canonical).
    pub files: &'a [PathBuf],
}

impl Hidden<'_> {
    /// The hidden directory or file `path` (canonical) is in, if any.
    fn containing(&self, path: &Path) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| path.starts_with(d))
            .or_else(|| self.files.iter().find(|f| path == f.as_path()))
            .map(PathBuf::as_path)
    }
}

fn refuse(kind: MountKind, why: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed(format!("invalid mount config for type \"{kind}\": {why}"))
}

/// Resolves `mounts` on this node for `task-init`: checks that each bind source
/// exists and is not something the agent hides, creates named volumes on first use
/// under `volumes`, and checks that each target exists (of the source's kind).
///
/// # Errors
/// [`RuntimeError::Failed`], with docker's words where docker has them: a bind source
/// that does not exist or is hidden from tasks, a target missing on this node or of
/// the wrong kind, a volume that cannot be created.
pub fn plan(
    mounts: &[Mount],
    hidden: Hidden<'_>,
    volumes: Option<&Path>,
) -> Result<Vec<TaskMount>, RuntimeError> {
    mounts
        .iter()
        .map(|mount| {
            mount
                .validate()
                .map_err(|e| RuntimeError::Failed(e.to_string()))?;
            let kind = mount.kind;
            let source = match kind {
                MountKind::Bind => Some(bind_source(mount, hidden)?),
                MountKind::Volume => Some(volume_dir(mount, volumes)?),
                MountKind::Tmpfs => None,
            };
            let want_dir = source.as_deref().is_none_or(Path::is_dir);
            check_target(kind, Path::new(&mount.target), want_dir, hidden)?;
            Ok(TaskMount {
                source,
                target: PathBuf::from(&mount.target),
                readonly: mount.readonly,
                tmpfs: (kind == MountKind::Tmpfs)
                    .then(|| tmpfs_options(mount.tmpfs_size, mount.tmpfs_mode)),
            })
        })
        .collect()
}

/// A bind mount's source on this node, canonical: it must exist and not be inside
/// what the agent hides from tasks. Both runtimes check it before starting a task.
///
/// # Errors
/// [`RuntimeError::Failed`]: docker's `bind source path does not exist: /x`, or the
/// hidden directory or file it is in.
pub fn bind_source(mount: &Mount, hidden: Hidden<'_>) -> Result<PathBuf, RuntimeError> {
    let source = Path::new(&mount.source);
    let canonical = std::fs::canonicalize(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            refuse(
                mount.kind,
                format!("bind source path does not exist: {}", mount.source),
            )
        } else {
            refuse(
                mount.kind,
                format!("bind source path {}: {e}", mount.source),
            )
        }
    })?;
    if let Some(hidden) = hidden.containing(&canonical) {
        return Err(refuse(
            mount.kind,
            format!(
                "bind source path {} is inside {}, which the agent hides from tasks",
                mount.source,
                hidden.display()
            ),
        ));
    }
    Ok(canonical)
}

/// The directory of named volume `mount.source` on this node, created if it is new.
fn volume_dir(mount: &Mount, volumes: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let volumes = volumes.ok_or_else(|| {
        refuse(
            mount.kind,
            "this agent keeps no named volumes (no volumes directory)",
        )
    })?;
    let dir = volumes.join(&mount.source).join("_data");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(|e| {
            refuse(
                mount.kind,
                format!("create volume {} at {}: {e}", mount.source, dir.display()),
            )
        })?;
    Ok(dir)
}

fn check_target(
    kind: MountKind,
    target: &Path,
    want_dir: bool,
    hidden: Hidden<'_>,
) -> Result<(), RuntimeError> {
    let shown = target.display();
    let meta = std::fs::metadata(target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            refuse(
                kind,
                format!(
                    "mount target {shown} does not exist on this node (a process task shares \
                     the node's file system: the target must exist there)"
                ),
            )
        } else {
            refuse(kind, format!("mount target {shown}: {e}"))
        }
    })?;
    if meta.is_dir() != want_dir {
        return Err(refuse(
            kind,
            format!(
                "mount target {shown} is {} on this node, the source {}",
                if meta.is_dir() {
                    "a directory"
                } else {
                    "not a directory"
                },
                if want_dir {
                    "is a directory"
                } else {
                    "is not a directory"
                }
            ),
        ));
    }
    if let Ok(canonical) = std::fs::canonicalize(target)
        && let Some(hidden) = hidden.containing(&canonical)
    {
        return Err(refuse(
            kind,
            format!(
                "mount target {shown} is inside {}, which the agent hides from tasks",
                hidden.display()
            ),
        ));
    }
    Ok(())
}

/// A mount with its source opened: made by [`open`] before the agent's directories
/// are hidden, applied by [`apply`] after.
#[derive(Debug)]
pub struct Opened<'a> {
    mount: &'a TaskMount,
    source: Option<OwnedFd>,
}

/// Opens the source of each of `mounts` (`O_PATH`), in `task-init`.
///
/// # Errors
/// A source that cannot be opened, named.
pub fn open(mounts: &[TaskMount]) -> Result<Vec<Opened<'_>>, String> {
    use nix::fcntl::OFlag;
    mounts
        .iter()
        .map(|mount| {
            let source = mount
                .source
                .as_deref()
                .map(|path| {
                    nix::fcntl::open(
                        path,
                        OFlag::O_PATH | OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(|e| format!("open the mount source {}: {e}", path.display()))
                })
                .transpose()?;
            Ok(Opened { mount, source })
        })
        .collect()
}

/// Mounts each of `opened` at its target, in order, in this (the task's) mount
/// namespace.
///
/// # Errors
/// The first mount that fails, named.
pub fn apply(opened: &[Opened<'_>]) -> Result<(), String> {
    for Opened { mount, source } in opened {
        let target = &mount.target;
        let fail =
            |what: &str, e: nix::errno::Errno| format!("{what} on {}: {e}", target.display());
        match source {
            Some(fd) => {
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                nix::mount::mount(
                    Some(path.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| {
                    fail(
                        &format!(
                            "bind {}",
                            mount.source.as_deref().unwrap_or(Path::new("?")).display()
                        ),
                        e,
                    )
                })?;
                if mount.readonly {
                    read_only(target).map_err(|e| fail("make the bind mount read-only", e))?;
                }
            }
            None => {
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if mount.readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                nix::mount::mount(
                    Some("tmpfs"),
                    target,
                    Some("tmpfs"),
                    flags,
                    mount.tmpfs.as_deref(),
                )
                .map_err(|e| fail("mount a tmpfs", e))?;
            }
        }
    }
    Ok(())
}

/// Remounts the bind mount at `target` read-only, keeping the flags a remount must
/// keep (`nosuid`, `nodev`, `noexec` of the file system it shows).
fn read_only(target: &Path) -> nix::Result<()> {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let now = statvfs(target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (has, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if now.contains(has) {
            flags |= keep;
        }
    }
    nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-mounts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mount(text: &str) -> Mount {
        text.parse().unwrap()
    }

    fn none() -> Hidden<'static> {
        Hidden {
            dirs: &[],
            files: &[],
        }
    }

    #[test]
    fn tmpfs_options_default_to_dockers_mode() {
        assert_eq!(tmpfs_options(None, None), "mode=1777");
        assert_eq!(
            tmpfs_options(Some(1 << 20), Some(0o700)),
            "mode=700,size=1048576"
        );
    }

    #[test]
    fn a_plan_resolves_each_kind_on_the_node() {
        let dir = scratch("plan");
        let src = dir.join("site");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        let target = dir.join("target");
        std::fs::create_dir(&target).unwrap();
        let volumes = dir.join("volumes");
        let t = target.display();
        let mounts = [
            mount(&format!(
                "type=bind,source={},target={t},readonly",
                src.display()
            )),
            mount(&format!("type=volume,source=cache,target={t}/")),
            mount("type=tmpfs,target=/tmp,tmpfs-size=1m"),
            mount(&format!(
                "type=bind,source={}/file,target={}/file",
                dir.display(),
                dir.display()
            )),
        ];
        let planned = plan(&mounts, none(), Some(&volumes)).unwrap();
        assert_eq!(planned[0].source.as_deref(), Some(src.as_path()));
        assert!(planned[0].readonly);
        let data = volumes.join("cache/_data");
        assert_eq!(planned[1].source.as_deref(), Some(data.as_path()));
        assert!(data.is_dir(), "created on first use");
        std::fs::write(data.join("kept"), "1").unwrap();
        plan(&mounts, none(), Some(&volumes)).unwrap();
        assert!(data.join("kept").is_file(), "kept on later use");
        assert_eq!(planned[2].source, None);
        assert_eq!(planned[2].tmpfs.as_deref(), Some("mode=1777,size=1048576"));
        let text = planned[0].to_string();
        assert_eq!(text.parse::<TaskMount>().unwrap(), planned[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_cannot_be_mounted_here_is_refused_with_the_reason() {
        let dir = scratch("refuse");
        let d = dir.display();
        let state = dir.join("state");
        std::fs::create_dir_all(state.join("keys")).unwrap();
        std::fs::write(dir.join("agent.toml"), "").unwrap();
        std::fs::write(dir.join("file"), "").unwrap();
        std::fs::create_dir(dir.join("target")).unwrap();
        let dirs = [state.canonicalize().unwrap()];
        let files = [dir.join("agent.toml").canonicalize().unwrap()];
        let hidden = Hidden {
            dirs: &dirs,
            files: &files,
        };
        let cases = [
            (
                format!("type=bind,source={d}/missing,target={d}/target"),
                format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: \
                     {d}/missing"
                ),
            ),
            (
                format!("type=bind,source={d}/state/keys,target={d}/target"),
                "which the agent hides from tasks".into(),
            ),
            (
                format!("type=bind,source={d}/agent.toml,target={d}/file"),
                "which the agent hides from tasks".into(),
            ),
            (
                format!("type=tmpfs,target={d}/no-such-dir"),
                format!(
                    "invalid mount config for type \"tmpfs\": mount target {d}/no-such-dir does \
                     not exist on this node"
                ),
            ),
            (
                format!("type=bind,source={d}/file,target={d}/target"),
                "is a directory on this node, the source is not a directory".into(),
            ),
            (
                format!("type=tmpfs,target={d}/file"),
                "is not a directory on this node".into(),
            ),
            (
                format!("type=tmpfs,target={d}/state/keys"),
                "which the agent hides from tasks".into(),
            ),
        ];
        for (text, want) in cases {
            let err = plan(&[mount(&text)], hidden, Some(&dir.join("volumes")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&want), "{text}: {err}");
        }
        let err = plan(
            &[mount(&format!("type=volume,source=v1,target={d}/target"))],
            hidden,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("no volumes directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
