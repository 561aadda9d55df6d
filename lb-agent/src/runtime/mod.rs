//! Task runtimes: what runs a task and gives it its network.
//!
//! Two runtimes share one shape: `process` (the default: a command the agent
//! runs in a network namespace of its own) and `docker` (a container created
//! through bollard with network mode `none`). Either way the agent plumbs the
//! task's network itself ([`plumb`]): a veth whose host side is the
//! TC attach point and the endpoint's interface, the task's ingress address
//! as a /32, a link-local gateway, MTU = underlay MTU - 50.
//!
//! [`Runtimes`] dispatches on the task spec's runtime kind. Its parts:
//!
//! - [`task`]: what a runtime is given and gives back for a task;
//! - [`error`]: why a runtime failed;
//! - [`lines`]: lines out of output as it grows, for follows;
//! - [`plumb`]: a task's network (veth pair, address, gateway, routes);
//! - [`netns`]: named network namespaces and running code inside one;
//! - [`record`]: the record of each task under the state directory, by which a later
//!   agent run finds it;
//! - [`procfs`]: whether a PID is a task's main process, and waiting for one that is not
//!   the agent's child;
//! - [`isolation`] and [`init`]: how a process task is confined (its own mount and PID
//!   namespaces, the agent's files hidden, docker's capabilities, a user), from the
//!   agent's side and from the task's; [`cgroup`]: its cgroup;
//! - [`process`] and [`docker`]: the two runtimes.
//!
//! The parts depend on each other, never on this module.
//!
//! **Agent restarts.** Tasks outlive their agent: a process task runs in a process group
//! and namespace of its own and writes its output to its log file directly, a container
//! belongs to the engine. A new agent run takes them over ([`Runtimes::adopt`]); only a
//! node that leaves for good stops them ([`Runtimes::stop_all`]).

pub mod cgroup;
pub mod docker;
pub mod error;
pub mod files;
pub mod init;
pub mod isolation;
pub mod lines;
pub mod mounts;
pub mod netns;
pub mod plumb;
pub mod process;
pub mod procfs;
pub mod record;
mod table;
pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::spec::RuntimeKind;
use mesh_api::task::TaskId;
use tokio::sync::mpsc;
use tracing::{info, warn};

use docker::DockerRuntime;
use error::{RuntimeError, failed};
use plumb::Netlink;
use process::ProcessRuntime;
use record::Record;
use task::{Exit, Started, TaskConfig};

/// The node's task runtimes behind one facade: process always, docker when enabled and
/// the engine answers. Cheap to clone.
#[derive(Clone)]
pub struct Runtimes {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: std::path::PathBuf,
    netlink: Netlink,
    process: ProcessRuntime,
    docker: Result<DockerRuntime, String>,
    exits: Mutex<Option<mpsc::UnboundedReceiver<(TaskId, Exit)>>>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtimes")
            .field("docker", &self.inner.docker.as_ref().map(|_| "available"))
            .finish_non_exhaustive()
    }
}

impl Runtimes {
    /// Process runtime always, its tasks confined by `isolation`; docker when `docker`
    /// is true and the engine answers (otherwise docker tasks fail with
    /// [`RuntimeError::Unavailable`] saying why).
    ///
    /// # Errors
    /// If the agent's netlink socket cannot be opened or `state_dir` created.
    pub async fn new(
        state_dir: &Path,
        docker: bool,
        isolation: isolation::Isolation,
    ) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(state_dir.join("tasks"))
            .map_err(failed(format!("create {}", state_dir.display())))?;
        let netlink = Netlink::here()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let docker = if docker {
            match DockerRuntime::connect(state_dir, tx.clone(), isolation.dns()).await {
                Ok(d) => Ok(d),
                Err(why) => {
                    warn!(error = %why, "the docker runtime is not available");
                    Err(why)
                }
            }
        } else {
            Err("disabled in the agent's configuration".into())
        };
        Ok(Self {
            inner: Arc::new(Inner {
                state_dir: state_dir.to_owned(),
                netlink,
                process: ProcessRuntime::new(state_dir, tx, isolation),
                docker,
                exits: Mutex::new(Some(rx)),
            }),
        })
    }

    /// The runtimes this agent can run tasks of, as its session reports
    /// them: the process runtime always, docker when its engine answered at
    /// start.
    #[must_use]
    pub fn kinds(&self) -> BTreeSet<RuntimeKind> {
        let mut kinds = BTreeSet::from([RuntimeKind::Process]);
        if self.inner.docker.is_ok() {
            kinds.insert(RuntimeKind::Docker);
        }
        kinds
    }

    fn docker(&self) -> Result<&DockerRuntime, RuntimeError> {
        self.inner
            .docker
            .as_ref()
            .map_err(|why| RuntimeError::Unavailable(RuntimeKind::Docker, why.clone()))
    }

    /// Creates the sandbox (netns / container), plumbs the network, starts the task;
    /// returns once its main process runs.
    ///
    /// # Errors
    /// [`RuntimeError::Unavailable`] for a docker task without docker;
    /// [`RuntimeError::Failed`] if a step fails (what was created is removed).
    pub async fn start(&self, task: &TaskConfig) -> Result<Started, RuntimeError> {
        match task.spec.runtime {
            RuntimeKind::Process => {
                let p = &self.inner.process;
                // The record first: a crash after this point leaves something cleanup finds.
                let mut rec = Record {
                    kind: RuntimeKind::Process,
                    main: None,
                };
                record::write(&self.inner.state_dir, task.id, &rec)?;
                let result = async {
                    let ns = p.create_netns(task.id).await?;
                    let started = plumb::plumb(&self.inner.netlink, task, &ns).await?;
                    rec.main = Some(p.spawn(task).await?);
                    // Names the main process, for a later run to recognise it.
                    record::write(&self.inner.state_dir, task.id, &rec)?;
                    Ok(started)
                }
                .await;
                if result.is_err() {
                    let _ = self.inner.process.remove(task.id).await;
                    let _ = plumb::unplumb(&self.inner.netlink, task.id).await;
                    record::remove(&self.inner.state_dir, task.id);
                }
                result
            }
            RuntimeKind::Docker => {
                let d = self.docker()?;
                let rec = Record {
                    kind: RuntimeKind::Docker,
                    main: None,
                };
                record::write(&self.inner.state_dir, task.id, &rec)?;
                let result = d.start(&self.inner.netlink, task).await;
                if result.is_err() {
                    let _ = plumb::unplumb(&self.inner.netlink, task.id).await;
                    record::remove(&self.inner.state_dir, task.id);
                }
                result
            }
        }
    }

    /// Exits of started tasks, as they happen. Call once; later calls get `None`.
    #[must_use]
    pub fn take_exits(&self) -> Option<mpsc::UnboundedReceiver<(TaskId, Exit)>> {
        self.inner.exits.lock().expect("poisoned").take()
    }

    /// SIGTERM, SIGKILL after `grace`, then removes sandbox, veth and netns. Idempotent.
    ///
    /// # Errors
    /// [`RuntimeError::Failed`] if the sandbox or veth cannot be removed.
    pub async fn stop(&self, id: TaskId, grace: Duration) -> Result<(), RuntimeError> {
        match self.docker() {
            Ok(d) if d.has(id) => d.stop(id, grace).await?,
            Ok(d) if !self.inner.process.has(id) => {
                // Not known to this run: remove a labelled container of this agent's
                // as well as a process task's namespace.
                d.stop(id, grace).await?;
                self.inner.process.stop(id, grace).await?;
            }
            _ => self.inner.process.stop(id, grace).await?,
        }
        plumb::unplumb(&self.inner.netlink, id).await?;
        record::remove(&self.inner.state_dir, id);
        Ok(())
    }

    /// Runs `cmd` with `/bin/sh -c` inside the task (its netns + env; docker: exec in
    /// the container); `Ok(true)` if it exits 0 within `timeout`.
    ///
    /// # Errors
    /// [`RuntimeError::Unknown`] for a task not running here; [`RuntimeError::Failed`]
    /// if the check cannot be started.
    pub async fn health_check(
        &self,
        id: TaskId,
        cmd: &str,
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        if let Ok(d) = self.docker()
            && d.has(id)
        {
            return d.health_check(id, cmd, timeout).await;
        }
        self.inner.process.health_check(id, cmd, timeout).await
    }

    /// Deletes the host-side task veths in the agent's namespace that belong to
    /// no task in `keep`, nor to one either runtime runs.
    async fn remove_stray_ifaces(
        &self,
        keep: impl Iterator<Item = TaskId>,
    ) -> Result<(), RuntimeError> {
        let inner = &*self.inner;
        let running: BTreeSet<u64> = keep
            .chain(inner.process.ids())
            .chain(self.docker().map(DockerRuntime::ids).unwrap_or_default())
            .map(plumb::id_bits)
            .collect();
        for (name, _) in inner.netlink.links().await? {
            if plumb::host_iface_owner(&name).is_some_and(|owner| !running.contains(&owner)) {
                inner.netlink.delete_link(&name).await?;
            }
        }
        Ok(())
    }

    /// Removes the process tasks' logs that neither a task here nor `keep` (the
    /// node's tasks the managers still keep) needs; returns how many tasks' went.
    #[must_use]
    pub fn prune_logs(&self, keep: &BTreeSet<TaskId>) -> usize {
        self.inner.process.prune_logs(keep)
    }

    /// Rotates the process tasks' logs that grew past their bound (docker rotates
    /// its containers' logs itself: each is created with `max-size` and `max-file`).
    pub fn rotate_logs(&self) {
        self.inner.process.rotate_logs();
    }

    /// The last `tail` lines of the task's stdout+stderr (0: all).
    ///
    /// # Errors
    /// [`RuntimeError::Unknown`] if there is no such task (nor its process log).
    pub async fn logs(&self, id: TaskId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        if let Ok(d) = self.docker()
            && d.has(id)
        {
            return d.logs(id, tail).await;
        }
        self.inner.process.logs(id, tail)
    }

    /// Sends the task's output to `out` in batches of lines as it is written
    /// (`service logs -f`): the last `tail` lines (0: all), then new output,
    /// until the task's output is complete (it ended, or does not run here)
    /// or `out` is closed. A full `out` holds the reading back.
    ///
    /// # Errors
    /// [`RuntimeError::Unknown`] if there is no such task (nor its process log);
    /// [`RuntimeError::Failed`] if reading the output fails.
    pub async fn follow(
        &self,
        id: TaskId,
        tail: usize,
        out: &mpsc::Sender<Vec<String>>,
    ) -> Result<(), RuntimeError> {
        if let Ok(d) = self.docker()
            && d.has(id)
        {
            return d.follow(id, tail, out).await;
        }
        self.inner.process.follow(id, tail, out).await
    }

    /// Removes what a previous agent run left behind (netns, veths, processes,
    /// containers labelled as ours) except tasks in `keep`, which are adopted (stop,
    /// logs, health checks and exits work for them; one whose main process is gone is
    /// reported as exited); returns the removed task IDs.
    ///
    /// "Ours" means recorded under this agent's state directory (and, for containers,
    /// labelled with it), so agents of several namespace-nodes on one machine never
    /// remove each other's tasks; stray host-side veths in the agent's namespace go too.
    ///
    /// # Errors
    /// If listing or removing fails.
    pub async fn cleanup(&self, keep: &BTreeSet<TaskId>) -> Result<Vec<TaskId>, RuntimeError> {
        let inner = &*self.inner;
        let mut removed = BTreeSet::new();
        let mut kept = BTreeSet::new();
        let records = record::list(&inner.state_dir)?;
        if let Ok(d) = self.docker() {
            for (id, container) in d.ours().await? {
                if keep.contains(&id) {
                    if d.adopt(id, &container).await? {
                        kept.insert(id);
                    }
                } else if !d.has(id) {
                    d.remove(&container).await?;
                    removed.insert(id);
                }
            }
        }
        let p = &inner.process;
        for (id, rec) in records {
            let kind = rec.kind;
            if kept.contains(&id) || p.has(id) {
                continue;
            }
            if keep.contains(&id) && kind == RuntimeKind::Process {
                if !p.adopt(id, rec.main) {
                    // Its main process is gone: reported as exited.
                    p.adopt_ended(id);
                }
                kept.insert(id);
                continue;
            }
            if keep.contains(&id) {
                // A kept docker task whose container is gone (or docker is off).
                continue;
            }
            p.remove(id).await?;
            plumb::unplumb(&inner.netlink, id).await?;
            record::remove(&inner.state_dir, id);
            removed.insert(id);
        }
        self.remove_stray_ifaces(keep.iter().copied()).await?;
        if !removed.is_empty() || !kept.is_empty() {
            info!(
                ?removed,
                ?kept,
                "took stock of what a previous agent run left"
            );
        }
        Ok(removed.into_iter().collect())
    }
}

/// What [`Runtimes::adopt`] found of a previous agent run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Tasks that still run, taken over, with their network.
    pub running: BTreeMap<TaskId, Started>,
    /// Tasks recorded whose process or container had ended (or that had lost their
    /// network): removed.
    pub gone: BTreeSet<TaskId>,
}

impl Runtimes {
    /// Takes over what a previous agent run of this state directory left: every
    /// recorded task whose main process (verified by [`procfs::is_task_process`]) or
    /// container still runs, and whose host-side veth is still there, is adopted as it
    /// is (namespace, veth, address, process, log untouched; stop, logs, follows, health
    /// checks and its exit work as for a task this run started). Recorded tasks that
    /// ended are removed (what is left of their sandbox, veth and record), as are our
    /// labelled containers without a record and stray host-side veths.
    ///
    /// A task that cannot be looked at (docker does not answer, a netlink error) is
    /// neither adopted nor removed: it is left as it is, with its record, for a later
    /// run (logged).
    ///
    /// # Errors
    /// If the records cannot be read, or removing our unrecorded containers or stray
    /// veths fails (tasks adopted before the failure stay adopted).
    pub async fn adopt(&self) -> Result<Adopted, RuntimeError> {
        let inner = &*self.inner;
        let mut out = Adopted::default();
        let records = record::list(&inner.state_dir)?;
        // `None`: the engine did not answer; docker tasks are left as they are.
        let mut containers: Option<BTreeMap<TaskId, String>> = match self.docker() {
            Ok(d) => match d.ours().await {
                Ok(list) => Some(list.into_iter().collect()),
                Err(e) => {
                    warn!(error = %e, "listing this agent's containers failed: docker tasks left as they are");
                    None
                }
            },
            Err(_) => Some(BTreeMap::new()),
        };
        // Tasks that could not be looked at: neither adopted nor removed (their
        // record stays for a later run; their veth stays too).
        let mut skipped = BTreeSet::new();
        for (id, rec) in records {
            let container = match (&mut containers, rec.kind) {
                (Some(list), _) => list.remove(&id),
                (None, RuntimeKind::Docker) => {
                    skipped.insert(id);
                    continue;
                }
                (None, RuntimeKind::Process) => None,
            };
            match self.adopt_one(id, rec, container.as_deref()).await {
                Ok(Some(started)) => {
                    out.running.insert(id, started);
                }
                Ok(None) => {
                    out.gone.insert(id);
                }
                Err(e) => {
                    warn!(task = format!("{id:016x}"), error = %e, "taking over a task failed: left as it is");
                    skipped.insert(id);
                }
            }
        }
        if let (Ok(d), Some(containers)) = (self.docker(), containers) {
            // Labelled as ours, but without a record: nothing knows them.
            for (id, container) in containers {
                if !d.has(id) {
                    d.remove(&container).await?;
                    out.gone.insert(id);
                }
            }
        }
        self.remove_stray_ifaces(out.running.keys().copied().chain(skipped.iter().copied()))
            .await?;
        if !out.running.is_empty() || !out.gone.is_empty() {
            info!(
                adopted = ?out.running.keys().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
                removed = ?out.gone.iter().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
                "took over the tasks of the previous agent run"
            );
        }
        Ok(out)
    }

    /// [`Runtimes::adopt`] of one recorded task (`container`: its labelled container,
    /// if any): its network if it is taken over, `None` if it had ended (and what was
    /// left of it is removed).
    async fn adopt_one(
        &self,
        id: TaskId,
        rec: Record,
        container: Option<&str>,
    ) -> Result<Option<Started>, RuntimeError> {
        let inner = &*self.inner;
        let iface = plumb::host_iface(id);
        if let Some(ifindex) = inner.netlink.index_of(&iface).await? {
            let alive = match rec.kind {
                RuntimeKind::Process => inner.process.adopt(id, rec.main),
                RuntimeKind::Docker => match (self.docker(), container) {
                    (Ok(d), Some(c)) => d.adopt_running(id, c).await?,
                    _ => false,
                },
            };
            if alive {
                // Its networks' veths, as many as are there (the assignment says which
                // networks it joins; the dataplane routes those it finds).
                let links = inner.netlink.links().await?;
                return Ok(Some(Started {
                    host_iface: iface,
                    ifindex,
                    networks: plumb::network_ifaces_of(id, &links),
                }));
            }
        }
        info!(
            task = format!("{id:016x}"),
            runtime = %rec.kind,
            "a task of the previous run has ended: removing what is left of it"
        );
        if let (Ok(d), Some(c)) = (self.docker(), container) {
            d.remove(c).await?;
        }
        inner.process.remove(id).await?;
        plumb::unplumb(&inner.netlink, id).await?;
        record::remove(&inner.state_dir, id);
        Ok(None)
    }

    /// Stops every task of this state directory, this run's and any recorded (each
    /// with SIGTERM, SIGKILL after `grace`, as [`Runtimes::stop`]), all at once: the
    /// node leaves for good. Returns the tasks stopped.
    ///
    /// # Errors
    /// If the records cannot be read, or a task cannot be stopped (the others still
    /// are).
    pub async fn stop_all(&self, grace: Duration) -> Result<Vec<TaskId>, RuntimeError> {
        let ids: BTreeSet<TaskId> = record::list(&self.inner.state_dir)?
            .into_iter()
            .map(|(id, _)| id)
            .chain(self.inner.process.ids())
            .chain(self.docker().map(DockerRuntime::ids).unwrap_or_default())
            .collect();
        let results = futures::future::join_all(ids.iter().map(|&id| self.stop(id, grace))).await;
        let mut first_error = None;
        for (id, result) in ids.iter().zip(results) {
            if let Err(e) = result {
                warn!(task = format!("{id:016x}"), error = %e, "stopping a task");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(ids.into_iter().collect()),
        }
    }
}

/// The lock an agent holds on its state directory while it runs tasks
/// (`<state dir>/tasks/agent.lock`, `flock(2)`): two agents never manage one node's
/// tasks, and `lb-agent leave` refuses while the agent runs. Released when dropped
/// (or when the process ends, however it ends).
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the [`StateLock`] of `state_dir`.
///
/// # Errors
/// [`RuntimeError::Failed`] if another process holds it (an agent runs on this state
/// directory) or the file cannot be opened.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, RuntimeError> {
    let dir = state_dir.join("tasks");
    std::fs::create_dir_all(&dir).map_err(failed(format!("create {}", dir.display())))?;
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(failed(format!("open {}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(StateLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(RuntimeError::Failed(format!(
            "another lb-agent runs on {} (it holds {})",
            state_dir.display(),
            path.display()
        ))),
        Err((_, e)) => Err(RuntimeError::Failed(format!(
            "lock {}: {e}",
            path.display()
        ))),
    }
}
