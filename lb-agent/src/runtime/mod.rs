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
//! - [`process`] and [`docker`]: the two runtimes.
//!
//! The parts depend on each other, never on this module.

pub mod docker;
pub mod error;
pub mod lines;
pub mod netns;
pub mod plumb;
pub mod process;
mod table;
pub mod task;

use std::collections::BTreeSet;
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
    /// Process runtime always; docker when `docker` is true and the engine answers
    /// (otherwise docker tasks fail with [`RuntimeError::Unavailable`] saying why).
    ///
    /// # Errors
    /// If the agent's netlink socket cannot be opened or `state_dir` created.
    pub async fn new(state_dir: &Path, docker: bool) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(state_dir.join("tasks"))
            .map_err(failed(format!("create {}", state_dir.display())))?;
        let netlink = Netlink::here()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let docker = if docker {
            match DockerRuntime::connect(state_dir, tx.clone()).await {
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
                process: ProcessRuntime::new(state_dir, tx),
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
                write_record(&self.inner.state_dir, task.id, RuntimeKind::Process)?;
                let result = async {
                    let ns = p.create_netns(task.id).await?;
                    let started =
                        plumb::plumb(&self.inner.netlink, task.id, task.addr, task.mtu, &ns)
                            .await?;
                    p.spawn(task).await?;
                    Ok(started)
                }
                .await;
                if result.is_err() {
                    let _ = process::remove_netns(task.id).await;
                    let _ = plumb::unplumb(&self.inner.netlink, task.id).await;
                    remove_record(&self.inner.state_dir, task.id);
                }
                result
            }
            RuntimeKind::Docker => {
                let d = self.docker()?;
                write_record(&self.inner.state_dir, task.id, RuntimeKind::Docker)?;
                let result = d.start(&self.inner.netlink, task).await;
                if result.is_err() {
                    let _ = plumb::unplumb(&self.inner.netlink, task.id).await;
                    remove_record(&self.inner.state_dir, task.id);
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
        remove_record(&self.inner.state_dir, id);
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
        let records = list_records(&inner.state_dir)?;
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
        for (id, kind) in records {
            if kept.contains(&id) || p.has(id) {
                continue;
            }
            if keep.contains(&id) && kind == RuntimeKind::Process {
                p.adopt(id)?;
                kept.insert(id);
                continue;
            }
            if keep.contains(&id) {
                // A kept docker task whose container is gone (or docker is off).
                continue;
            }
            process::remove_netns(id).await?;
            plumb::unplumb(&inner.netlink, id).await?;
            remove_record(&inner.state_dir, id);
            removed.insert(id);
        }
        let running: BTreeSet<String> = keep
            .iter()
            .copied()
            .chain(p.ids())
            .chain(self.docker().map(DockerRuntime::ids).unwrap_or_default())
            .map(plumb::host_iface)
            .collect();
        for (name, _) in inner.netlink.links().await? {
            if plumb::is_host_iface(&name) && !running.contains(&name) {
                inner.netlink.delete_link(&name).await?;
            }
        }
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

/// The record of task `id` under `state_dir`: which runtime started it.
fn record_path(state_dir: &Path, id: TaskId) -> std::path::PathBuf {
    state_dir.join("tasks").join(format!("{id:016x}.task"))
}

fn write_record(state_dir: &Path, id: TaskId, kind: RuntimeKind) -> Result<(), RuntimeError> {
    let path = record_path(state_dir, id);
    std::fs::write(&path, kind.to_string()).map_err(failed(format!("write {}", path.display())))
}

fn remove_record(state_dir: &Path, id: TaskId) {
    let _ = std::fs::remove_file(record_path(state_dir, id));
}

/// The tasks recorded under `state_dir`.
fn list_records(state_dir: &Path) -> Result<Vec<(TaskId, RuntimeKind)>, RuntimeError> {
    let dir = state_dir.join("tasks");
    let entries = std::fs::read_dir(&dir).map_err(failed(format!("read {}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".task"))
            .and_then(|h| TaskId::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        let kind = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|k| k.trim().parse().ok())
            .unwrap_or_default();
        out.push((id, kind));
    }
    Ok(out)
}
