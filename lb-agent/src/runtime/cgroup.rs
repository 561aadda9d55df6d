//! A cgroup per process task, where the kernel offers a cgroup v2 hierarchy: `mesh-<task
//! id>` under the agent's own cgroup (with systemd, `Delegate=yes` leaves that subtree to
//! the agent). The task's `task-init` moves itself into it before it starts the program,
//! and enters a cgroup namespace rooted there (the task sees `0::/`, as in a container);
//! whatever the task forks stays in it. Stopping a task kills the whole cgroup
//! (`cgroup.kill`, Linux 5.14) and removes it once it is empty.
//!
//! Without a cgroup v2 hierarchy (a v1-only host, or one the agent cannot write), tasks
//! run in the agent's cgroup, as before.
//!
//! A task's limits (`--limit-memory`, `--limit-cpu`) are files of its cgroups
//! ([`plan_limits`]), written by the agent before the task's program starts. Each
//! controller is used where this node has it ([`Controllers::discover`]): in the tasks'
//! cgroup v2 when the agent's cgroup offers it (the agent enables it for its children,
//! moving itself into a leaf `agent` first if it must), else in a cgroup `mesh-<task
//! id>` of the controller's v1 hierarchy under the agent's cgroup there (a hybrid host,
//! whose memory and cpu controllers are bound to v1), which the task's process joins as
//! it starts. A task whose limit no controller can enforce fails at once: it never runs
//! unlimited. When the task ends, its memory cgroup's OOM-kill counter says whether the
//! kernel killed it for its limit ([`oom_killed`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_api::resources::{NANO_PER_CPU, Resources};
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
        remove_cgroup(&self.path(id)).await
    }
}

/// The processes in the cgroup at `path` (v1 or v2).
fn processes_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup at `path` and removes it, waiting up to 10 s for
/// them to end; `false` if there was none.
///
/// # Errors
/// If the cgroup outlives that.
pub async fn remove_cgroup(path: &Path) -> std::io::Result<bool> {
    if !path.is_dir() {
        return Ok(false);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(path) {
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
        // Busy: processes left. cgroup.kill where the kernel has it (v2), else each.
        if std::fs::write(path.join("cgroup.kill"), "1").is_err() {
            for pid in processes_in(path) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controller that enforces a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// `--limit-memory`.
    Memory,
    /// `--limit-cpu`.
    Cpu,
}

impl Controller {
    /// The kernel's name of the controller.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }

    /// The flag that asks for it.
    #[must_use]
    pub const fn flag(self) -> &'static str {
        match self {
            Controller::Memory => "--limit-memory",
            Controller::Cpu => "--limit-cpu",
        }
    }
}

/// Where a controller's limits go for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the task's own cgroup v2 ([`Cgroups::path`]): the controller is enabled
    /// for the tasks' cgroups.
    V2(Cgroups),
    /// In a cgroup `mesh-<task id>` under this directory of the controller's cgroup v1
    /// hierarchy (the agent's cgroup there).
    V1(PathBuf),
}

impl Place {
    /// Task `id`'s cgroup for this controller.
    #[must_use]
    pub fn path(&self, id: TaskId) -> PathBuf {
        match self {
            Place::V2(cgroups) => cgroups.path(id),
            Place::V1(dir) => dir.join(format!("mesh-{id:016x}")),
        }
    }

    /// Whether it is a cgroup v1 hierarchy's.
    #[must_use]
    pub fn is_v1(&self) -> bool {
        matches!(self, Place::V1(_))
    }
}

/// Where this node can enforce each kind of limit (`None`: nowhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    /// The memory controller's place.
    pub memory: Option<Place>,
    /// The cpu controller's place.
    pub cpu: Option<Place>,
}

/// One file of a task's cgroup that sets a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitFile {
    /// Whose file.
    pub controller: Controller,
    /// The file's name.
    pub name: &'static str,
    /// What is written.
    pub value: String,
    /// Written only if the kernel has it (swap accounting may be off).
    pub optional: bool,
}

/// The CFS period of a task's CPU limit, µs (docker's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel takes, µs.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The CFS quota per [`CPU_PERIOD_US`] of a limit of `nano_cpus` (docker's
/// `NanoCPUs * period / 10^9`), at least the kernel's 1 ms.
#[must_use]
pub fn cpu_quota_us(nano_cpus: u64) -> u64 {
    let quota = u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / u128::from(NANO_PER_CPU);
    u64::try_from(quota)
        .unwrap_or(u64::MAX)
        .max(MIN_CPU_QUOTA_US)
}

/// The files that set `limits` in a task's cgroups, in the order they are written,
/// for a memory and a cpu controller of cgroup v1 (`true`) or v2 (`false`). Memory: the
/// limit, and no swap beyond it (`memory.swap.max` 0; v1: memory+swap equal to the
/// limit). CPU: a CFS quota per 100 ms period.
#[must_use]
pub fn plan_limits(limits: &Resources, memory_v1: bool, cpu_v1: bool) -> Vec<LimitFile> {
    let file = |controller, name, value: String, optional| LimitFile {
        controller,
        name,
        value,
        optional,
    };
    let mut files = Vec::new();
    if limits.memory_bytes > 0 {
        let bytes = limits.memory_bytes.to_string();
        if memory_v1 {
            files.push(file(
                Controller::Memory,
                "memory.limit_in_bytes",
                bytes.clone(),
                false,
            ));
            files.push(file(
                Controller::Memory,
                "memory.memsw.limit_in_bytes",
                bytes,
                true,
            ));
        } else {
            files.push(file(Controller::Memory, "memory.max", bytes, false));
            files.push(file(
                Controller::Memory,
                "memory.swap.max",
                "0".into(),
                true,
            ));
        }
    }
    if limits.nano_cpus > 0 {
        let quota = cpu_quota_us(limits.nano_cpus);
        if cpu_v1 {
            let period = CPU_PERIOD_US.to_string();
            files.push(file(Controller::Cpu, "cpu.cfs_period_us", period, false));
            files.push(file(
                Controller::Cpu,
                "cpu.cfs_quota_us",
                quota.to_string(),
                false,
            ));
        } else {
            let max = format!("{quota} {CPU_PERIOD_US}");
            files.push(file(Controller::Cpu, "cpu.max", max, false));
        }
    }
    files
}

/// The v1 hierarchies' mount points of `controller` among `/proc/self/mountinfo`'s
/// lines (`cpu` is often mounted with `cpuacct`).
#[must_use]
pub fn cgroup1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fields = right.split_whitespace();
        if fields.next()? != "cgroup" {
            return None;
        }
        let options = fields.nth(1)?;
        options
            .split(',')
            .any(|o| o == controller)
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The v1 cgroup path of `controller` in `/proc/self/cgroup`'s text
/// (`4:memory:/x` → `/x`; `1:cpu,cpuacct:/` → `/`).
#[must_use]
pub fn own_cgroup1<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        names.split(',').any(|n| n == controller).then_some(path)
    })
}

/// Whether `controller` is among a `cgroup.controllers`/`cgroup.subtree_control` text's.
fn listed(text: &str, controller: &str) -> bool {
    text.split_whitespace().any(|c| c == controller)
}

impl Controllers {
    /// Where this node can enforce limits: in the tasks' cgroup v2 (`cgroups`) for a
    /// controller their parent offers, else in the controller's v1 hierarchy where one
    /// is mounted and the agent's cgroup there is writable. With `enable`, a controller
    /// the parent has but does not pass on is enabled for its children, the calling
    /// process first moving into a leaf `agent` if the parent holds it (cgroup v2 lets
    /// a cgroup with processes pass on no controller); only the agent does this.
    #[must_use]
    pub fn discover(cgroups: Option<&Cgroups>, enable: bool) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let place = |controller: Controller| -> Option<Place> {
            let name = controller.name();
            if let Some(cgroups) = cgroups
                && v2_controller(cgroups.parent(), name, enable)
            {
                return Some(Place::V2(cgroups.clone()));
            }
            let mount = cgroup1_mount(&mountinfo, name)?;
            let dir = mount.join(own_cgroup1(&own, name)?.trim_start_matches('/'));
            let writable = nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok();
            (writable && dir.join("cgroup.procs").is_file()).then_some(Place::V1(dir))
        };
        Self {
            memory: place(Controller::Memory),
            cpu: place(Controller::Cpu),
        }
    }

    /// The place of `controller`.
    #[must_use]
    pub fn place(&self, controller: Controller) -> Option<&Place> {
        match controller {
            Controller::Memory => self.memory.as_ref(),
            Controller::Cpu => self.cpu.as_ref(),
        }
    }

    /// The files that set task `id`'s `limits`, with their paths.
    ///
    /// # Errors
    /// The flag of a limit no controller here can enforce, and why.
    pub fn plan(
        &self,
        id: TaskId,
        limits: &Resources,
    ) -> Result<Vec<(PathBuf, LimitFile)>, String> {
        let v1 = |c| self.place(c).is_some_and(Place::is_v1);
        plan_limits(limits, v1(Controller::Memory), v1(Controller::Cpu))
            .into_iter()
            .map(|file| match self.place(file.controller) {
                Some(place) => Ok((place.path(id).join(file.name), file)),
                None => Err(format!(
                    "{} cannot be enforced on this node: it has no {} controller the agent \
                     can use (cgroup v2 with the controller delegated to the agent, or a \
                     cgroup v1 {} hierarchy); the task is not run without its limit",
                    file.controller.flag(),
                    file.controller.name(),
                    file.controller.name()
                )),
            })
            .collect()
    }

    /// The v1 cgroups of task `id` (those the task's process must join itself).
    #[must_use]
    pub fn v1_paths(&self, id: TaskId) -> Vec<PathBuf> {
        [&self.memory, &self.cpu]
            .into_iter()
            .flatten()
            .filter(|p| p.is_v1())
            .map(|p| p.path(id))
            .collect()
    }

    /// The file whose `oom_kill` count says whether task `id` was killed for its memory
    /// limit: `memory.events` (v2) or `memory.oom_control` (v1).
    #[must_use]
    pub fn oom_file(&self, id: TaskId) -> Option<PathBuf> {
        self.memory.as_ref().map(|place| {
            let file = if place.is_v1() {
                "memory.oom_control"
            } else {
                "memory.events"
            };
            place.path(id).join(file)
        })
    }
}

/// Whether the cgroup v2 `parent` passes `controller` on to its children, enabling it
/// there first if `enable` (see [`Controllers::discover`]).
fn v2_controller(parent: &Path, controller: &str, enable: bool) -> bool {
    let read = |file: &str| std::fs::read_to_string(parent.join(file)).unwrap_or_default();
    if listed(&read("cgroup.subtree_control"), controller) {
        return true;
    }
    if !enable || !listed(&read("cgroup.controllers"), controller) {
        return false;
    }
    let control = parent.join("cgroup.subtree_control");
    let on = format!("+{controller}");
    if std::fs::write(&control, &on).is_ok() {
        return true;
    }
    // Busy: the parent holds processes (this agent). Move into a leaf of its own.
    let leaf = parent.join("agent");
    let moved = (std::fs::create_dir(&leaf).is_ok() || leaf.is_dir())
        && std::fs::write(leaf.join("cgroup.procs"), "0").is_ok();
    moved && std::fs::write(&control, &on).is_ok()
}

/// Whether the kernel killed a process of the task for its memory limit, from the
/// text of its memory cgroup's `memory.events` (v2) or `memory.oom_control` (v1):
/// an `oom_kill` count above 0.
#[must_use]
pub fn oom_killed(events: &str) -> bool {
    events.lines().any(|line| {
        line.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// Writes task `id`'s limit files, creating its v1 cgroups (its v2 cgroup exists
/// already).
///
/// # Errors
/// A file that cannot be written, named.
pub fn write_limits(files: &[(PathBuf, LimitFile)]) -> std::io::Result<()> {
    for (path, file) in files {
        if let Some(dir) = path.parent()
            && !dir.is_dir()
        {
            std::fs::create_dir(dir).map_err(|e| {
                std::io::Error::new(e.kind(), format!("create {}: {e}", dir.display()))
            })?;
        }
        if file.optional && !path.exists() {
            continue;
        }
        std::fs::write(path, &file.value).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("write {:?} to {}: {e}", file.value, path.display()),
            )
        })?;
    }
    Ok(())
}

/// Moves the calling thread into each v1 cgroup of `paths` (its `tasks` file): the
/// process it forks next starts there.
///
/// # Errors
/// If a cgroup cannot be joined.
pub fn join_v1_thread(paths: &[PathBuf]) -> std::io::Result<()> {
    let tid = nix::unistd::gettid().to_string();
    for path in paths {
        std::fs::write(path.join("tasks"), &tid)
            .map_err(|e| std::io::Error::new(e.kind(), format!("join {}: {e}", path.display())))?;
    }
    Ok(())
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
    fn limits_are_planned_as_cgroup_files() {
        let limits = Resources {
            nano_cpus: 500_000_000,
            memory_bytes: 32 << 20,
        };
        let plan = |v1| -> Vec<(&str, String, bool)> {
            plan_limits(&limits, v1, v1)
                .into_iter()
                .map(|f| (f.name, f.value, f.optional))
                .collect()
        };
        assert_eq!(
            plan(false),
            [
                ("memory.max", "33554432".to_string(), false),
                ("memory.swap.max", "0".to_string(), true),
                ("cpu.max", "50000 100000".to_string(), false),
            ]
        );
        assert_eq!(
            plan(true),
            [
                ("memory.limit_in_bytes", "33554432".to_string(), false),
                ("memory.memsw.limit_in_bytes", "33554432".to_string(), true),
                ("cpu.cfs_period_us", "100000".to_string(), false),
                ("cpu.cfs_quota_us", "50000".to_string(), false),
            ]
        );
        assert!(plan_limits(&Resources::default(), false, false).is_empty());
        // 2.5 CPUs: 2.5 periods; 0.001 CPU: the kernel's minimum of 1 ms.
        assert_eq!(cpu_quota_us(2_500_000_000), 250_000);
        assert_eq!(cpu_quota_us(1_000_000), 1_000);
        assert_eq!(cpu_quota_us(u64::MAX), 1_844_674_407_370_955);

        // Where no controller enforces a limit, the task is refused, naming the flag.
        let v2 = Controllers {
            memory: Some(Place::V2(Cgroups::new("/sys/fs/cgroup/a".into()))),
            cpu: None,
        };
        let memory_only = Resources {
            nano_cpus: 0,
            memory_bytes: 32 << 20,
        };
        let files = v2.plan(7, &memory_only).unwrap();
        assert_eq!(
            files[0].0,
            Path::new("/sys/fs/cgroup/a/mesh-0000000000000007/memory.max")
        );
        let err = v2.plan(7, &limits).unwrap_err();
        assert!(
            err.starts_with("--limit-cpu cannot be enforced on this node"),
            "{err}"
        );
        assert!(v2.v1_paths(7).is_empty());
        let v1 = Controllers {
            memory: Some(Place::V1("/sys/fs/cgroup/memory/x".into())),
            cpu: Some(Place::V1("/sys/fs/cgroup/cpu".into())),
        };
        let files = v1.plan(7, &limits).unwrap();
        assert_eq!(
            files[3].0,
            Path::new("/sys/fs/cgroup/cpu/mesh-0000000000000007/cpu.cfs_quota_us")
        );
        assert_eq!(v1.v1_paths(7).len(), 2);
        assert_eq!(
            v1.oom_file(7).unwrap(),
            Path::new("/sys/fs/cgroup/memory/x/mesh-0000000000000007/memory.oom_control")
        );
        assert_eq!(
            Controllers::default().plan(7, &Resources::default()),
            Ok(vec![])
        );
    }

    #[test]
    fn an_oom_kill_is_read_from_the_memory_cgroup() {
        assert!(oom_killed(
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"
        ));
        assert!(!oom_killed("low 0\nmax 0\noom 0\noom_kill 0\n"));
        assert!(oom_killed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"));
        assert!(!oom_killed("oom_kill_disable 1\nunder_oom 0\noom_kill 0\n"));
    }

    #[test]
    fn v1_hierarchies_and_the_agent_s_place_in_them() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                         31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup1_mount(mountinfo, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            cgroup1_mount(mountinfo, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(cgroup1_mount(mountinfo, "pids"), None);
        let own = "4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(own_cgroup1(own, "memory"), Some("/process_api/x"));
        assert_eq!(own_cgroup1(own, "cpu"), Some("/"));
        assert_eq!(own_cgroup1(own, "pids"), None);
    }

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
