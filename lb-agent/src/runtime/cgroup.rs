//! A cgroup per process task, where the kernel offers a cgroup v2 hierarchy: `mesh-<task
//! id>` under the agent's own cgroup (with systemd, `Delegate=yes` leaves that subtree to
//! the agent). The task's `task-init` moves itself into it before it starts the program,
//! and enters a cgroup namespace rooted there (the task sees `0::/`, as in a container);
//! whatever the task forks stays in it. Stopping a task kills the whole cgroup
//! (`cgroup.kill`, Linux 5.14) and removes it once it is empty.
//!
//! No controller is enabled: the cgroup groups and accounts (`cgroup.procs`, `cpu.stat`,
//! `memory.current` where the memory controller is delegated), it limits nothing yet.
//! Without a cgroup v2 hierarchy (a v1-only host, or one the agent cannot write), tasks
//! run in the agent's cgroup, as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_api::task::TaskId;

/// The parent of the tasks' cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroups {
    parent: PathBuf,
}

/// The cgroup v2 mount point among `/proc/self/mountinfo`'s lines.
#[must_use]
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The cgroup v2 path (`/system.slice/lb-agent.service`) in `/proc/self/cgroup`'s text.
#[must_use]
pub fn own_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)"))
}

impl Cgroups {
    /// The tasks' cgroups under `parent` (a directory of a cgroup v2 hierarchy).
    #[must_use]
    pub fn new(parent: PathBuf) -> Self {
        Self { parent }
    }

    /// The agent's own cgroup v2 as the tasks' parent, if the kernel has a v2 hierarchy
    /// mounted and the agent may create cgroups there.
    #[must_use]
    pub fn discover() -> Option<Self> {
        let mount = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let parent = mount.join(own_cgroup(&cgroup)?.trim_start_matches('/'));
        let writable = nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_ok();
        (parent.join("cgroup.procs").is_file() && writable).then_some(Self { parent })
    }

    /// The parent of the tasks' cgroups.
    #[must_use]
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Task `id`'s cgroup.
    #[must_use]
    pub fn path(&self, id: TaskId) -> PathBuf {
        self.parent.join(format!("mesh-{id:016x}"))
    }

    /// Creates task `id`'s cgroup (an existing one is kept).
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn create(&self, id: TaskId) -> std::io::Result<PathBuf> {
        let path = self.path(id);
        match std::fs::create_dir(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
            Err(e) => Err(e),
        }
    }

    /// The processes in task `id`'s cgroup.
    #[must_use]
    pub fn processes(&self, id: TaskId) -> Vec<i32> {
        std::fs::read_to_string(self.path(id).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in task `id`'s cgroup and removes it, waiting up to 10 s for
    /// them to end; `false` if it had none.
    ///
    /// # Errors
    /// If the cgroup outlives that.
    pub async fn remove(&self, id: TaskId) -> std::io::Result<bool> {
        let path = self.path(id);
        if !path.is_dir() {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("remove {}: {e}", path.display()),
                    ));
                }
                Err(_) => {}
            }
            // Busy: processes left. cgroup.kill where the kernel has it, else each.
            if std::fs::write(path.join("cgroup.kill"), "1").is_err() {
                for pid in self.processes(id) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Moves the calling process into the cgroup at `path`, then enters a cgroup namespace
/// rooted there (what `task-init` does first).
///
/// # Errors
/// If either step fails.
pub fn join(path: &Path) -> std::io::Result<()> {
    std::fs::write(path.join("cgroup.procs"), "0")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hierarchy_and_the_agent_s_place_in_it() {
        let hybrid = "24 31 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
                      42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw"),
            None
        );
        assert_eq!(
            own_cgroup("12:memory:/x\n0::/system.slice/lb-agent.service\n"),
            Some("/system.slice/lb-agent.service")
        );
        assert_eq!(own_cgroup("12:memory:/x\n"), None);
        let cgroups = Cgroups::new("/sys/fs/cgroup/system.slice/lb-agent.service".into());
        assert_eq!(
            cgroups.path(0xab),
            Path::new("/sys/fs/cgroup/system.slice/lb-agent.service/mesh-00000000000000ab")
        );
    }
}
