//! The process runtime: a task is a program the agent runs in a network namespace of its
//! own (`/run/netns/mesh-<task id>`, visible to `ip netns`) and PID and mount namespaces
//! of its own, confined ([`super::isolation`]), with its output appended to
//! `<state dir>/tasks/<task id>.log`.
//!
//! The task's main process is `lb-agent task-init` ([`super::init`]), spawned from a
//! short-lived thread that entered the task's network namespace and unshared a PID
//! namespace for its children ([`netns::run_in`]): the child starts in both, as PID 1 of
//! its namespace, so no `pre_exec` (and no `unsafe`) is needed. It confines itself,
//! starts the program and passes signals on to it. Stopping signals the main process
//! (SIGTERM, then SIGKILL, which ends every process of the PID namespace), then kills
//! whatever else still runs in the network namespace, so nothing the task started
//! survives it. Health checks run through `lb-agent task-exec`, inside the task's
//! namespaces with its capabilities and user.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::task::TaskId;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::cgroup;
use super::error::{RuntimeError, failed};
use super::isolation::Isolation;
use super::lines::{Batcher, LineSplitter};
use super::netns;
use super::procfs;
use super::record::MainProcess;
use super::table::TaskTable;
use super::task::{Exit, TaskConfig, task_env};

/// How often a follow looks for output appended to a task's log.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The most a follow reads from a log at once.
const FOLLOW_READ: usize = 64 * 1024;

/// The named namespace of task `id`.
#[must_use]
pub fn netns_name(id: TaskId) -> String {
    format!("mesh-{id:016x}")
}

/// The task ID a namespace name of ours encodes.
#[must_use]
pub fn parse_netns_name(name: &str) -> Option<TaskId> {
    let hex = name.strip_prefix("mesh-")?;
    (hex.len() == 16)
        .then(|| TaskId::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The log file of task `id`.
#[must_use]
pub fn log_path(state_dir: &Path, id: TaskId) -> PathBuf {
    state_dir.join("tasks").join(format!("{id:016x}.log"))
}

/// Where [`rotate_log`] keeps the older part of task `id`'s log.
#[must_use]
pub fn rotated_log_path(state_dir: &Path, id: TaskId) -> PathBuf {
    state_dir.join("tasks").join(format!("{id:016x}.log.1"))
}

/// A running task's log is rotated once it holds this much, so that a task's output
/// takes at most about twice this on disk.
pub const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// Rotates the log at `path` if it holds at least `max` bytes: its contents are copied
/// to `rotated` (replacing the part rotated before) and it is emptied. The task writes
/// it through a descriptor in append mode, so it goes on writing at the new end; a
/// follow sees the file shrink and reads it from the start. (Copy and truncate: the
/// task's descriptor cannot be made to point at a new file.) Returns whether it
/// rotated.
///
/// # Errors
/// If the log cannot be read, copied or truncated.
pub fn rotate_log(path: &Path, rotated: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len < max {
        return Ok(false);
    }
    let tmp = rotated.with_extension("1.tmp");
    std::fs::copy(path, &tmp)?;
    std::fs::rename(&tmp, rotated)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The exit of a status: its code, or 128 + the signal that killed it.
#[must_use]
pub fn exit_of(status: std::process::ExitStatus) -> Exit {
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    Exit::code(code)
}

struct Proc {
    pid: i32,
    /// Whether `pid` is a `task-init` ([`procfs::is_task_init`]): false for a task an
    /// agent before confinement started.
    confined: bool,
    env: Vec<(String, String)>,
    /// `Some` once the main process ended.
    exited: watch::Receiver<Option<Exit>>,
}

/// Process tasks on this node.
pub(crate) struct ProcessRuntime {
    state_dir: PathBuf,
    tasks: TaskTable<Proc>,
    exits: mpsc::UnboundedSender<(TaskId, Exit)>,
    /// How many times each task's log was rotated. Held while a log is rotated, and
    /// while a follow reads it, so that a follow never reads a log mid-rotation and
    /// knows when to go on in the rotated part.
    rotations: tokio::sync::Mutex<std::collections::BTreeMap<TaskId, u64>>,
    isolation: Isolation,
}

impl ProcessRuntime {
    pub(crate) fn new(
        state_dir: &Path,
        exits: mpsc::UnboundedSender<(TaskId, Exit)>,
        isolation: Isolation,
    ) -> Self {
        Self {
            isolation,
            state_dir: state_dir.to_owned(),
            tasks: TaskTable::new(),
            exits,
            rotations: tokio::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    fn get(&self, id: TaskId) -> Option<Arc<Proc>> {
        self.tasks.get(id)
    }

    pub(crate) fn ids(&self) -> Vec<TaskId> {
        self.tasks.ids()
    }

    pub(crate) fn has(&self, id: TaskId) -> bool {
        self.tasks.has(id)
    }

    /// Records task `id`'s main process; its watcher reports the exit through the
    /// returned sender.
    fn track(
        &self,
        id: TaskId,
        pid: i32,
        confined: bool,
        env: Vec<(String, String)>,
    ) -> watch::Sender<Option<Exit>> {
        let (tx, rx) = watch::channel(None);
        self.tasks.insert(
            id,
            Proc {
                pid,
                confined,
                env,
                exited: rx,
            },
        );
        tx
    }

    /// Creates the namespace; the caller plumbs it, then calls [`Self::spawn`].
    pub(crate) async fn create_netns(&self, id: TaskId) -> Result<PathBuf, RuntimeError> {
        netns::create(&netns_name(id))
            .await
            .map_err(failed(format!("create the namespace of task {id:016x}")))
    }

    /// Starts the task's program in its (plumbed) namespace; returns its main process
    /// (for the task's record).
    pub(crate) async fn spawn(&self, task: &TaskConfig) -> Result<MainProcess, RuntimeError> {
        let id = task.id;
        let log = log_path(&self.state_dir, id);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(failed(format!("create {}", dir.display())))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(failed(format!("open {}", log.display())))?;
        let env = task_env(task);
        // Its hostname's address: on its first user network, else on ingress.
        let own = task.networks.first().map_or(task.addr, |n| n.addr);
        let (init, mut args) = self.isolation.init_command(id, &task.spec, &env, own)?;
        // The task's secrets and configs go to its task-init through a pipe.
        let given = if task.files.is_empty() {
            None
        } else {
            check_config_targets(&task.files)?;
            args.insert(1, "--files".into());
            Some(super::files::encode(&task.files))
        };
        // Its limits, or why they cannot be enforced here (it never runs without them).
        let controllers = self.isolation.controllers();
        let limits = &task.spec.resources.limits;
        let files = controllers.plan(id, limits).map_err(RuntimeError::Failed)?;
        if let Some(cgroups) = self.isolation.cgroups() {
            cgroups
                .create(id)
                .map_err(failed(format!("create the cgroup of task {}", task.name)))?;
        }
        cgroup::write_limits(&files)
            .map_err(failed(format!("set the limits of task {}", task.name)))?;
        let v1: Vec<PathBuf> = controllers
            .v1_paths(id)
            .into_iter()
            .filter(|dir| files.iter().any(|(file, _)| file.starts_with(dir)))
            .collect();
        let oom_file = (limits.memory_bytes > 0)
            .then(|| controllers.oom_file(id))
            .flatten();
        let program = task.spec.image.clone();
        let env2 = env.clone();
        let has_files = given.is_some();
        let rt = tokio::runtime::Handle::current();
        let mut child = netns::run_in(&netns::path(&netns_name(id)), move || {
            // The child registers with this runtime's SIGCHLD handling.
            let _guard = rt.enter();
            // This thread's next child is PID 1 of a new PID namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| std::io::Error::other(format!("unshare the PID namespace: {e}")))?;
            // Its v1 cgroups (limits on a hybrid host): joined by this thread, so that
            // task-init starts in them.
            cgroup::join_v1_thread(&v1)?;
            let err = out.try_clone()?;
            tokio::process::Command::new(&init)
                .args(&args)
                .env_clear()
                .envs(env2)
                .process_group(0)
                .stdin(if has_files {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(out)
                .stderr(err)
                .kill_on_drop(false)
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("run {program:?} through {init:?}: {e}"))
                })
        })
        .await
        .map_err(failed(format!("start task {}", task.name)))?;
        if let (Some(given), Some(mut stdin)) = (given, child.stdin.take()) {
            // A task-init that failed before reading closes the pipe: its exit says why.
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut stdin, &given).await {
                warn!(task = task.name, error = %e, "the task did not take its files");
            }
        }
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| RuntimeError::Failed("the task ended at once".into()))?;
        // task-init sets the task up (its files, mounts, /proc) before it starts the
        // program: the task runs, and is routed to, once the program does.
        program_started(pid, PROGRAM_START_LIMIT).await;
        // Its start time, for a later run to recognise it (0 if it ended already: its
        // exit is reported below anyway).
        let start = procfs::stat(pid).map_or(0, |s| s.start);
        let tx = self.track(id, pid, true, env);
        let exits = self.exits.clone();
        let name = task.name.clone();
        tokio::spawn(async move {
            let mut exit = match child.wait().await {
                Ok(status) => exit_of(status),
                Err(e) => {
                    warn!(task = name, error = %e, "cannot wait for the task");
                    Exit::code(-1)
                }
            };
            // Its memory cgroup counts the kernel's kills for its limit.
            exit.oom_killed = oom_file
                .and_then(|file| std::fs::read_to_string(file).ok())
                .is_some_and(|events| cgroup::oom_killed(&events));
            info!(
                task = name,
                code = exit.code,
                oom_killed = exit.oom_killed,
                "task exited"
            );
            let _ = tx.send(Some(exit));
            let _ = exits.send((id, exit));
        });
        info!(task = task.name, pid, "process task started");
        Ok(MainProcess { pid, start })
    }

    /// Signals the task's process group: SIGTERM, SIGKILL after `grace`; then kills
    /// anything left in its namespace and deletes the namespace.
    pub(crate) async fn stop(&self, id: TaskId, grace: Duration) -> Result<(), RuntimeError> {
        if let Some(p) = self.get(id) {
            let mut exited = p.exited.clone();
            if exited.borrow().is_none() {
                let _ = killpg(Pid::from_raw(p.pid), Signal::SIGTERM);
                let overran = tokio::time::timeout(grace, exited.wait_for(Option::is_some))
                    .await
                    .is_err();
                if overran {
                    debug!(task = format!("{id:016x}"), "grace period over: SIGKILL");
                    let _ = killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        exited.wait_for(Option::is_some),
                    )
                    .await;
                }
            }
        }
        self.remove(id).await?;
        self.tasks.remove(id);
        Ok(())
    }

    /// Kills every process left of task `id` and removes its namespace
    /// ([`remove_netns`]) and its cgroup.
    pub(crate) async fn remove(&self, id: TaskId) -> Result<(), RuntimeError> {
        remove_netns(id).await?;
        if let Some(cgroups) = self.isolation.cgroups() {
            cgroups
                .remove(id)
                .await
                .map_err(failed(format!("remove the cgroup of task {id:016x}")))?;
        }
        for dir in self.isolation.controllers().v1_paths(id) {
            cgroup::remove_cgroup(&dir)
                .await
                .map_err(failed(format!("remove the cgroup of task {id:016x}")))?;
        }
        Ok(())
    }

    /// Runs `/bin/sh -c cmd` inside the task with its environment: in its namespaces,
    /// with its capabilities and user (`lb-agent task-exec`); for a task an agent
    /// before confinement started, in its network namespace alone.
    pub(crate) async fn health_check(
        &self,
        id: TaskId,
        cmd: &str,
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let p = self.get(id).ok_or(RuntimeError::Unknown(id))?;
        let env = p.env.clone();
        let (program, args) = if p.confined {
            self.isolation.exec_command(p.pid, &["/bin/sh", "-c", cmd])
        } else {
            ("/bin/sh".into(), vec!["-c".into(), cmd.into()])
        };
        let rt = tokio::runtime::Handle::current();
        let mut child = netns::run_in(&netns::path(&netns_name(id)), move || {
            let _guard = rt.enter();
            // One process group: a check that overruns is killed whole.
            tokio::process::Command::new(&program)
                .args(&args)
                .env_clear()
                .envs(env)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
        })
        .await
        .map_err(failed("start the health check"))?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status.success()),
            Ok(Err(e)) => Err(RuntimeError::Failed(format!("health check: {e}"))),
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.wait().await;
                Ok(false)
            }
        }
    }

    /// Rotates the logs of the tasks running here that passed
    /// [`LOG_ROTATE_BYTES`] ([`rotate_log`]); a failure is logged.
    /// Removes the logs (both parts) of the tasks that neither run here nor are in
    /// `keep` (the node's tasks the managers still keep, ended ones included): what
    /// `service logs` can no longer ask for. Returns how many tasks' logs went; a
    /// failure is logged.
    pub(crate) fn prune_logs(&self, keep: &std::collections::BTreeSet<TaskId>) -> usize {
        let dir = self.state_dir.join("tasks");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut pruned = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log").or_else(|| n.strip_suffix(".log.1")))
                .filter(|hex| hex.len() == 16)
                .and_then(|hex| TaskId::from_str_radix(hex, 16).ok())
            else {
                continue;
            };
            if keep.contains(&id) || self.tasks.has(id) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    pruned.insert(id);
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "removing a task's log")
                }
            }
        }
        pruned.len()
    }

    /// Call it off the async runtime's threads (it blocks on the follows' lock).
    pub(crate) fn rotate_logs(&self) {
        self.rotate_logs_past(LOG_ROTATE_BYTES);
    }

    /// As [`ProcessRuntime::rotate_logs`], with bound `max`.
    fn rotate_logs_past(&self, max: u64) {
        for id in self.tasks.ids() {
            let path = log_path(&self.state_dir, id);
            let mut rotations = self.rotations.blocking_lock();
            match rotate_log(&path, &rotated_log_path(&self.state_dir, id), max) {
                Ok(true) => {
                    *rotations.entry(id).or_default() += 1;
                    tracing::info!(task = %format!("{id:016x}"), "rotated the task's log");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "rotating a task's log")
                }
            }
        }
    }

    /// The last `tail` lines of the task's log (0: all), its rotated part first; the
    /// log outlives the task.
    pub(crate) fn logs(&self, id: TaskId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let path = log_path(&self.state_dir, id);
        let older = std::fs::read(rotated_log_path(&self.state_dir, id)).unwrap_or_default();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(super::task::tail_lines(
                &String::from_utf8_lossy(&[older, bytes].concat()),
                tail,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.has(id) {
                    Ok(Vec::new())
                } else {
                    Err(RuntimeError::Unknown(id))
                }
            }
            Err(e) => Err(RuntimeError::Failed(format!("{}: {e}", path.display()))),
        }
    }

    /// Sends the task's output to `out` in batches as it is written: the last
    /// `tail` lines of what the log holds (0: all), then what is appended,
    /// polling the file every [`FOLLOW_POLL`]. Returns once the output is
    /// complete (the task's main process ended, or the task does not run
    /// here: its log is whole), with the partial last line sent, or when
    /// `out` is closed. A full `out` holds the reading back (the bytes wait
    /// in the file).
    ///
    /// Polling rather than inotify (the `notify` crate): a follow costs one
    /// open file and a `read` per interval, without an inotify instance per
    /// follow (128 per user by default, shared with everything else on the
    /// host) or a watcher thread, and works on any filesystem the state
    /// directory is on; a quarter of a second is prompt for logs.
    pub(crate) async fn follow(
        &self,
        id: TaskId,
        tail: usize,
        out: &mpsc::Sender<Vec<String>>,
    ) -> Result<(), RuntimeError> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let path = log_path(&self.state_dir, id);
        // `None`: not running here, the log is complete.
        let mut exited = self.get(id).map(|p| p.exited.clone());
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if exited.is_some() {
                    // Running, nothing written (and no log created) yet.
                    Ok(())
                } else {
                    Err(RuntimeError::Unknown(id))
                };
            }
            Err(e) => return Err(RuntimeError::Failed(format!("{}: {e}", path.display()))),
        };
        let mut splitter = LineSplitter::default();
        let mut batcher = Batcher::new(tail);
        let mut buf = vec![0u8; FOLLOW_READ];
        let mut seen_rotations = self.rotations.lock().await.get(&id).copied().unwrap_or(0);
        loop {
            // Looked at before reading: what the task wrote before it ended is
            // all read in this round.
            let ended = exited.as_ref().is_none_or(|e| e.borrow().is_some());
            let mut pending = Vec::new();
            {
                let rotations = self.rotations.lock().await;
                let now = rotations.get(&id).copied().unwrap_or(0);
                if now != seen_rotations {
                    // Rotated since the last read: what was written after it is at
                    // the end of the rotated part; the log itself starts over.
                    let at = file
                        .stream_position()
                        .await
                        .map_err(failed(format!("seek {}", path.display())))?;
                    let rotated = rotated_log_path(&self.state_dir, id);
                    if let Ok(mut older) = tokio::fs::File::open(&rotated).await
                        && older.seek(std::io::SeekFrom::Start(at)).await.is_ok()
                    {
                        let mut missed = Vec::new();
                        if older.read_to_end(&mut missed).await.is_ok() {
                            pending.extend(batcher.push(splitter.push(&missed)));
                        }
                    }
                    file.seek(std::io::SeekFrom::Start(0))
                        .await
                        .map_err(failed(format!("seek {}", path.display())))?;
                    seen_rotations = now;
                }
                loop {
                    let n = file
                        .read(&mut buf)
                        .await
                        .map_err(failed(format!("read {}", path.display())))?;
                    if n == 0 {
                        break;
                    }
                    pending.extend(batcher.push(splitter.push(&buf[..n])));
                }
            }
            for batch in pending {
                if out.send(batch).await.is_err() {
                    return Ok(());
                }
            }
            let mut batches = batcher.caught_up();
            if ended {
                batches.extend(splitter.finish().map(|line| vec![line]));
            }
            for batch in batches {
                if out.send(batch).await.is_err() {
                    return Ok(());
                }
            }
            if ended {
                return Ok(());
            }
            let exit = async {
                match exited.as_mut() {
                    Some(e) => {
                        let _ = e.wait_for(Option::is_some).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                () = exit => {}
                () = out.closed() => return Ok(()),
            }
            if exited.as_ref().is_some_and(|e| e.has_changed().is_err()) {
                // The watcher is gone (the task was removed): nothing more comes.
                exited = None;
            }
        }
    }

    /// Takes over a task a previous agent run started, if its main process still runs:
    /// the process `main` names (its record), else the process-group leader in the
    /// task's namespace (a record written before the spawn completed), provided it
    /// really is the task's ([`procfs::is_task_process`]). Its end is watched through a
    /// pidfd ([`procfs::wait_exit`]) and reported with code -1: it is not our child,
    /// so its exit code cannot be known. `false` (nothing taken over) if no such
    /// process runs.
    pub(crate) fn adopt(&self, id: TaskId, main: Option<MainProcess>) -> bool {
        if self.has(id) {
            return true;
        }
        let candidate = match main {
            Some(m) => Some((m.pid, Some(m.start))),
            None => self.group_leader(id).map(|pid| (pid, None)),
        };
        let Some((pid, start)) = candidate else {
            return false;
        };
        // The pidfd first: the process the check below recognises is the one it names.
        let pidfd = procfs::pidfd(pid)
            .inspect_err(|e| debug!(pid, error = %e, "no pidfd: /proc is polled instead"))
            .ok();
        if !procfs::is_task_process(pid, id, start) {
            return false;
        }
        let Some(start) = start.or_else(|| procfs::stat(pid).map(|s| s.start)) else {
            return false;
        };
        let tx = self.track(id, pid, procfs::is_task_init(pid), procfs::environ(pid));
        let exits = self.exits.clone();
        tokio::spawn(async move {
            procfs::wait_exit(pid, start, pidfd).await;
            let exit = Exit::code(-1);
            info!(task = format!("{id:016x}"), pid, "adopted task exited");
            let _ = tx.send(Some(exit));
            let _ = exits.send((id, exit));
        });
        info!(task = format!("{id:016x}"), pid, "adopted a process task");
        true
    }

    /// Records a task whose main process is gone, as ended (code -1) and reports its
    /// exit: its namespace stays until it is stopped.
    pub(crate) fn adopt_ended(&self, id: TaskId) {
        let exit = Exit::code(-1);
        let (_tx, rx) = watch::channel(Some(exit));
        self.tasks.insert(
            id,
            Proc {
                pid: 0,
                confined: false,
                env: Vec::new(),
                exited: rx,
            },
        );
        let _ = self.exits.send((id, exit));
    }

    /// Task `id`'s main process among the processes in its network namespace: its
    /// `task-init` ([`procfs::is_task_init`]), else (a task an agent before confinement
    /// started) the process-group leader with the lowest PID.
    fn group_leader(&self, id: TaskId) -> Option<i32> {
        let ns = netns::path(&netns_name(id));
        let pids = netns::processes_in(&ns).ok()?;
        pids.iter()
            .copied()
            .find(|&p| procfs::is_task_init(p))
            .or_else(|| {
                pids.iter()
                    .copied()
                    .filter(|&p| {
                        nix::unistd::getpgid(Some(Pid::from_raw(p))).is_ok_and(|g| g.as_raw() == p)
                    })
                    .min()
            })
    }
}

/// Kills every process in task `id`'s namespace and deletes the namespace.
pub(crate) async fn remove_netns(id: TaskId) -> Result<bool, RuntimeError> {
    let name = netns_name(id);
    let ns = netns::path(&name);
    if !ns.exists() {
        return Ok(false);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pids = netns::processes_in(&ns).unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if tokio::time::Instant::now() > deadline {
            warn!(netns = name, ?pids, "processes survive SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    netns::delete(&name).map_err(failed(format!("delete namespace {name}")))
}

/// How long [`ProcessRuntime::spawn`] waits for `task-init` to start the program.
const PROGRAM_START_LIMIT: Duration = Duration::from_secs(10);

/// Waits until `task-init` (`pid`) has started the task's program (it has a child), has
/// ended, or `limit` has passed. `/proc/PID/task/PID/children` needs a kernel with
/// `CONFIG_PROC_CHILDREN`; without it this returns at once.
async fn program_started(pid: i32, limit: Duration) {
    let children = PathBuf::from(format!("/proc/{pid}/task/{pid}/children"));
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::read_to_string(&children) {
            Ok(list) if list.trim().is_empty() => {}
            // A child, or no way to tell.
            _ => return,
        }
        if procfs::stat(pid).is_none_or(|s| s.ended()) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Refuses, before anything starts, a config whose target is not a file of the node's:
/// a process task sees the node's file system, and its config is bound over that file
/// (files under `/run/secrets` are on the task's own tmpfs and need nothing).
fn check_config_targets(files: &[super::files::TaskFile]) -> Result<(), RuntimeError> {
    for file in files.iter().filter(|f| !f.under_secrets_dir()) {
        if !Path::new(&file.path).is_file() {
            return Err(RuntimeError::Failed(format!(
                "config target {} is not a file on this node: a process task sees the \
                 node's file system, and a config is mounted over a file there",
                file.path
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory of its own under the system's temporary directory.
    fn state_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tasks")).unwrap();
        dir
    }

    fn isolation() -> Isolation {
        Isolation::new("/nonexistent/lb-agent".into())
    }

    async fn next(rx: &mut mpsc::Receiver<Vec<String>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a batch within 10 s")
            .expect("the follow is still running")
    }

    #[test]
    fn a_log_past_its_bound_is_rotated_and_the_writer_goes_on_at_its_start() {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("mesh-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.log");
        let rotated = dir.join("t.log.1");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"one\ntwo\n").unwrap();
        assert!(
            !rotate_log(&path, &rotated, 100).unwrap(),
            "under the bound"
        );
        assert!(rotate_log(&path, &rotated, 8).unwrap());
        assert_eq!(std::fs::read(&rotated).unwrap(), b"one\ntwo\n");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The task's descriptor (append mode) writes at the new end, not after a hole.
        writer.write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
        assert!(!rotate_log(&dir.join("none.log"), &rotated, 1).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_follow_sends_the_tail_then_appended_lines_until_the_task_exits() {
        use std::io::Write as _;
        let dir = state_dir("follow");
        let (exits, _) = mpsc::unbounded_channel();
        let runtime = Arc::new(ProcessRuntime::new(&dir, exits, isolation()));
        let path = log_path(&dir, 7);
        let mut log = std::fs::File::create(&path).unwrap();
        log.write_all(b"one\ntwo\nthree\npart").unwrap();
        // A running task (no real process: its exit is sent by hand).
        let exited = runtime.track(7, 0, false, Vec::new());
        let (tx, mut rx) = mpsc::channel(4);
        let follower = tokio::spawn({
            let runtime = Arc::clone(&runtime);
            async move { runtime.follow(7, 2, &tx).await }
        });
        assert_eq!(
            next(&mut rx).await,
            ["two", "three"],
            "the tail, without the partial line"
        );
        log.write_all(b"ial\nfour\n").unwrap();
        assert_eq!(next(&mut rx).await, ["partial", "four"]);
        log.write_all(b"last words").unwrap();
        exited.send_replace(Some(Exit::code(0)));
        assert_eq!(
            next(&mut rx).await,
            ["last words"],
            "the end flushes the partial line"
        );
        follower.await.unwrap().unwrap();
        assert!(rx.recv().await.is_none(), "the follow ended with the task");

        // A task that does not run here: its log is complete.
        let (tx, mut rx) = mpsc::channel(4);
        runtime.follow(8, 0, &tx).await.unwrap_err();
        std::fs::write(log_path(&dir, 8), "a\nb").unwrap();
        runtime.follow(8, 0, &tx).await.unwrap();
        drop(tx);
        assert_eq!(next(&mut rx).await, ["a"]);
        assert_eq!(next(&mut rx).await, ["b"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_follow_goes_on_across_a_rotation_without_losing_lines() {
        use std::io::Write as _;
        let dir = state_dir("follow-rotate");
        let (exits, _) = mpsc::unbounded_channel();
        let runtime = Arc::new(ProcessRuntime::new(&dir, exits, isolation()));
        let path = log_path(&dir, 9);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        log.write_all(b"one\n").unwrap();
        let exited = runtime.track(9, 0, false, Vec::new());
        let (tx, mut rx) = mpsc::channel(4);
        let follower = tokio::spawn({
            let runtime = Arc::clone(&runtime);
            async move { runtime.follow(9, 0, &tx).await }
        });
        assert_eq!(next(&mut rx).await, ["one"]);
        // Written and rotated away, maybe before the follow read it; then more.
        log.write_all(b"two\n").unwrap();
        tokio::task::spawn_blocking({
            let runtime = Arc::clone(&runtime);
            move || runtime.rotate_logs_past(1)
        })
        .await
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "rotated");
        log.write_all(b"three\n").unwrap();
        let mut lines = Vec::new();
        while lines.len() < 2 {
            lines.extend(next(&mut rx).await);
        }
        assert_eq!(lines, ["two", "three"]);
        exited.send_replace(Some(Exit::code(0)));
        follower.await.unwrap().unwrap();
        // Both parts make the task's logs.
        assert_eq!(runtime.logs(9, 0).unwrap(), ["one", "two", "three"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_logs_of_forgotten_tasks_go_and_the_others_stay() {
        let dir = state_dir("prune");
        let (exits, _) = mpsc::unbounded_channel();
        let runtime = ProcessRuntime::new(&dir, exits, isolation());
        let tasks = dir.join("tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        for id in [1u64, 2, 3] {
            std::fs::write(log_path(&dir, id), "x\n").unwrap();
            std::fs::write(rotated_log_path(&dir, id), "y\n").unwrap();
        }
        std::fs::write(tasks.join("0000000000000003.task"), "process\n").unwrap();
        std::fs::write(tasks.join("notes.log"), "not a task's\n").unwrap();
        let _running = runtime.track(2, 0, false, Vec::new());
        // 1 is kept by the managers, 2 runs here, 3 is forgotten.
        let keep = std::collections::BTreeSet::from([1]);
        assert_eq!(runtime.prune_logs(&keep), 1);
        for id in [1, 2] {
            assert!(log_path(&dir, id).exists() && rotated_log_path(&dir, id).exists());
        }
        assert!(!log_path(&dir, 3).exists() && !rotated_log_path(&dir, 3).exists());
        assert!(
            tasks.join("0000000000000003.task").exists(),
            "records are the runtime's"
        );
        assert!(tasks.join("notes.log").exists());
        assert_eq!(runtime.prune_logs(&keep), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn netns_names_round_trip() {
        assert_eq!(netns_name(0xabc), "mesh-0000000000000abc");
        assert_eq!(parse_netns_name(&netns_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_netns_name("mesh-xyz"), None);
        assert_eq!(parse_netns_name("other"), None);
    }

    #[test]
    fn exit_codes() {
        use std::process::ExitStatus;
        assert_eq!(exit_of(ExitStatus::from_raw(3 << 8)).code, 3);
        // Killed by SIGKILL (9).
        assert_eq!(exit_of(ExitStatus::from_raw(9)).code, 137);
    }
}
