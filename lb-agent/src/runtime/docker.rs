//! The docker runtime: a task is a container (bollard, the engine's local socket) with
//! network mode `none`, whose namespace (`/proc/<pid>/ns/net`) the agent plumbs like a
//! process task's.
//!
//! Containers are named `<task name>.<task id>` (`web.1.00000000000000a3`) and carry the
//! labels [`LABEL_TASK_ID`] and [`LABEL_TASK_NAME`], by which a later agent run finds
//! them (a restarted agent adopts the running ones: the engine keeps a container, its
//! namespace and output whether the agent runs or not). Exits come from the engine's wait API, logs from its logs API, health checks
//! run through exec.
//!
//! The container's program starts before its `eth0` exists: the engine offers no hook
//! between creating a container's namespace and starting its program, so plumbing
//! follows the start (a task that needs the network at its first instruction must retry).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt as _;
use mesh_api::task::TaskId;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::error::{RuntimeError, failed};
use super::files::{HOST_FILES_ROOT, HostFiles};
use super::lines::{Batcher, LineSplitter};
use super::plumb::{self, Netlink};
use super::table::TaskTable;
use super::task::{Exit, Started, TaskConfig, task_env};

/// The label holding a container's task ID (16 hex digits).
pub const LABEL_TASK_ID: &str = "mesh.task.id";
/// The label holding the state directory of the agent that owns a container.
pub const LABEL_OWNER: &str = "mesh.agent.state-dir";
/// The label holding a container's task name.
pub const LABEL_TASK_NAME: &str = "mesh.task.name";

/// The container name of a task.
#[must_use]
pub fn container_name(task: &TaskConfig) -> String {
    let clean: String = task
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}.{:016x}", task.id)
}

/// The owner label's value for an agent's state directory.
fn owner(state_dir: &Path) -> String {
    std::fs::canonicalize(state_dir)
        .unwrap_or_else(|_| state_dir.to_owned())
        .display()
        .to_string()
}

struct Ctr {
    /// The container's ID.
    id: String,
    exited: watch::Receiver<Option<Exit>>,
    /// The agent sent it SIGKILL (its stop grace ran out): an exit by SIGKILL
    /// is not asked again for an OOM kill.
    killed: Arc<AtomicBool>,
}

/// Docker tasks on this node.
pub(crate) struct DockerRuntime {
    docker: Docker,
    owner: String,
    tasks: TaskTable<Ctr>,
    exits: mpsc::UnboundedSender<(TaskId, Exit)>,
    /// The containers' DNS server, if the agent serves one.
    dns: Option<std::net::Ipv4Addr>,
    /// Where the containers' secret and config files are written for the engine.
    files: HostFiles,
}

/// A limit as the engine takes it: `None` for none (0), else the value (at most
/// `i64::MAX`).
fn limit(value: u64) -> Option<i64> {
    (value > 0).then(|| i64::try_from(value).unwrap_or(i64::MAX))
}

/// How long pulling a missing image may take before the task goes on without it.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// The repository and the tag or digest to pull for `image` as a service names it
/// (`redis:alpine`, `registry:5000/app`, `app@sha256:...`): the engine pulls every tag
/// of a repository given without one, so `latest` is made explicit, as `docker pull`
/// does.
fn pull_reference(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], &image[last + i + 1..]),
        None => (image, "latest"),
    }
}

fn dk(what: impl Into<String>) -> impl FnOnce(DockerError) -> RuntimeError {
    failed(what)
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A task's mounts as the engine takes them (`HostConfig.Mounts`): a bind's source
/// checked here first (it must exist, and not be in the agent's state directory
/// `state_dir`), so that the task fails with the process runtime's words; a named
/// volume is created by the engine on first use (local driver), kept as docker keeps
/// volumes; a tmpfs with its size and mode.
///
/// # Errors
/// [`RuntimeError::Failed`] for a bind source that does not exist or is hidden.
fn engine_mounts(
    mounts: &[mesh_api::mount::Mount],
    state_dir: &Path,
) -> Result<Vec<Mount>, RuntimeError> {
    use bollard::models::{MountTmpfsOptions, MountVolumeOptions};
    use mesh_api::mount::MountKind;
    let dirs = [state_dir.to_owned()];
    let hidden = super::mounts::Hidden {
        dirs: &dirs,
        files: &[],
    };
    mounts
        .iter()
        .map(|m| {
            m.validate()
                .map_err(|e| RuntimeError::Failed(e.to_string()))?;
            let (typ, source) = match m.kind {
                MountKind::Bind => (
                    MountType::BIND,
                    Some(
                        super::mounts::bind_source(m, hidden)?
                            .to_string_lossy()
                            .into_owned(),
                    ),
                ),
                MountKind::Volume => (MountType::VOLUME, Some(m.source.clone())),
                MountKind::Tmpfs => (MountType::TMPFS, None),
            };
            Ok(Mount {
                typ: Some(typ),
                source,
                target: Some(m.target.clone()),
                read_only: m.readonly.then_some(true),
                volume_options: (m.kind == MountKind::Volume).then(|| MountVolumeOptions {
                    no_copy: m.volume_nocopy.then_some(true),
                    ..Default::default()
                }),
                tmpfs_options: (m.kind == MountKind::Tmpfs).then(|| MountTmpfsOptions {
                    size_bytes: m.tmpfs_size.and_then(|s| i64::try_from(s).ok()),
                    mode: m.tmpfs_mode.map(i64::from),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect()
}

impl DockerRuntime {
    /// Connects to the local engine and checks that it answers.
    pub(crate) async fn connect(
        state_dir: &Path,
        exits: mpsc::UnboundedSender<(TaskId, Exit)>,
        dns: Option<std::net::Ipv4Addr>,
    ) -> Result<Self, String> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot connect to the docker engine: {e}"))?;
        // Speak the engine's API version (Debian's engine is older than bollard's default).
        let docker =
            match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return Err(format!("the docker engine does not answer: {e}")),
                Err(_) => return Err("the docker engine does not answer within 5 s".into()),
            };
        Ok(Self {
            docker,
            owner: owner(state_dir),
            tasks: TaskTable::new(),
            exits,
            dns,
            files: HostFiles::new(HOST_FILES_ROOT.into()),
        })
    }

    fn get(&self, id: TaskId) -> Option<Arc<Ctr>> {
        self.tasks.get(id)
    }

    pub(crate) fn ids(&self) -> Vec<TaskId> {
        self.tasks.ids()
    }

    pub(crate) fn has(&self, id: TaskId) -> bool {
        self.tasks.has(id)
    }

    /// Creates and starts the container, plumbs its namespace.
    pub(crate) async fn start(
        &self,
        netlink: &Netlink,
        task: &TaskConfig,
    ) -> Result<Started, RuntimeError> {
        let name = container_name(task);
        // A container of the same task left by a failed attempt.
        self.remove(&name).await?;
        self.pull_if_missing(&task.spec.image).await;
        // Its mounts, checked first: a task that cannot run writes nothing.
        let mut mounts = engine_mounts(&task.spec.mounts, Path::new(&self.owner))?;
        // Its secrets and configs: files on a tmpfs, each bound read-only at its path.
        let files = self
            .files
            .write(task.id, &task.files)
            .map_err(RuntimeError::Failed)?;
        mounts.extend(files.into_iter().map(|(source, target)| Mount {
            typ: Some(MountType::BIND),
            source: Some(source.display().to_string()),
            target: Some(target),
            read_only: Some(true),
            ..Default::default()
        }));
        let spec = &task.spec;
        // The container's labels, then the agent's (which win).
        let mut labels: HashMap<String, String> = spec
            .container_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend([
            (LABEL_TASK_ID.to_owned(), format!("{:016x}", task.id)),
            (LABEL_TASK_NAME.to_owned(), task.name.clone()),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
        ]);
        // Its /etc/hosts: its hostname at its own address (on its first user network,
        // else on ingress), as docker's; the engine knows no address of a container
        // without a network of its own. Then the extra hosts.
        let own = task.networks.first().map_or(task.addr, |n| n.addr);
        let mut extra_hosts: Vec<String> =
            spec.hostname.iter().map(|h| format!("{h}:{own}")).collect();
        extra_hosts.extend(spec.hosts.iter().map(|h| {
            mesh_api::container::ExtraHost::parse(h).map_or_else(
                |_| h.clone(),
                |e| {
                    // The engine wants brackets around an IPv6 address.
                    if e.ip.is_ipv6() {
                        format!("{}:[{}]", e.host, e.ip)
                    } else {
                        e.to_string()
                    }
                },
            )
        }));
        let dns_servers: Vec<String> = match self.dns {
            Some(ip) => vec![ip.to_string()],
            None => spec
                .dns
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        let mut dns_options: Vec<String> = Vec::new();
        if self.dns.is_some() && !spec.dns.options.iter().any(|o| o.starts_with("ndots:")) {
            dns_options.push("ndots:0".to_owned());
        }
        dns_options.extend(spec.dns.options.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
            hostname: spec.hostname.clone(),
            working_dir: spec.workdir.clone(),
            env: Some(
                task_env(task)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            user: task.spec.user.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: (!mounts.is_empty()).then_some(mounts),
                // The node's resolver at the tasks' gateway (the engine writes the
                // container's resolv.conf from these), as process tasks get it.
                // The task's own servers are where that resolver forwards for it.
                dns: (!dns_servers.is_empty()).then_some(dns_servers),
                dns_options: (!dns_options.is_empty()).then_some(dns_options),
                dns_search: (!spec.dns.search.is_empty()).then(|| spec.dns.search.clone()),
                extra_hosts: (!extra_hosts.is_empty()).then_some(extra_hosts),
                // The engine applies docker's rules to its default set, as
                // `mesh_api::capability::resolve` does for process tasks.
                cap_add: (!task.spec.cap_add.is_empty()).then(|| task.spec.cap_add.clone()),
                cap_drop: (!task.spec.cap_drop.is_empty()).then(|| task.spec.cap_drop.clone()),
                // The limits, enforced by the engine; no swap beyond the memory limit
                // (`MemorySwap` = `Memory`), as process tasks get.
                memory: limit(task.spec.resources.limits.memory_bytes),
                memory_swap: limit(task.spec.resources.limits.memory_bytes),
                nano_cpus: limit(task.spec.resources.limits.nano_cpus),
                // Rotated by size, as the process runtime rotates its tasks' logs.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), "16m".to_owned()),
                        ("max-file".to_owned(), "2".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| match e {
                // The engine's own words, as Swarm reports them: `No such image: x:1`.
                DockerError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => RuntimeError::Failed(message),
                e => dk(format!("create container {name} from {}", task.spec.image))(e),
            });
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                self.files.remove(task.id);
                return Err(e);
            }
        };
        let result = async {
            self.docker
                .start_container(&created.id, None)
                .await
                .map_err(dk(format!("start container {name}")))?;
            let pid = self.pid(&created.id).await?;
            self.watch(task.id, created.id.clone());
            let ns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
            let started = plumb::plumb(netlink, task, &ns).await?;
            info!(
                task = task.name,
                container = name,
                pid,
                "docker task started"
            );
            Ok(started)
        }
        .await;
        if result.is_err() {
            self.tasks.remove(task.id);
            let _ = self.remove(&created.id).await;
            self.files.remove(task.id);
        }
        result
    }

    /// Pulls `image` unless the engine has it (docker's `--pull missing`: an image on the
    /// node is never replaced under its services; a new version is a new tag). A pull
    /// that fails is logged, not fatal: creating the container then fails with the
    /// engine's `No such image: ...`, the reason the task is rejected with, as in Swarm.
    async fn pull_if_missing(&self, image: &str) {
        match self.docker.inspect_image(image).await {
            Ok(_) => return,
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                warn!(image, error = %e, "inspecting the image failed; not pulling it");
                return;
            }
        }
        let (repo, tag) = pull_reference(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        info!(image, "pulling a missing image");
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), DockerError>(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => info!(image, "pulled"),
            Ok(Err(e)) => warn!(image, error = %e, "pulling the image failed"),
            Err(_) => warn!(
                image,
                timeout_s = PULL_TIMEOUT.as_secs(),
                "pulling the image timed out"
            ),
        }
    }

    /// The PID of the container's main process.
    async fn pid(&self, container: &str) -> Result<i64, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(container, None)
            .await
            .map_err(dk(format!("inspect {container}")))?;
        let state = inspect.state.unwrap_or_default();
        match state.pid {
            Some(pid) if pid > 0 && state.running == Some(true) => Ok(pid),
            _ => Err(RuntimeError::Failed(format!(
                "container {container} is not running (exit code {})",
                state.exit_code.unwrap_or(-1)
            ))),
        }
    }

    /// Registers the container and reports its exit through the wait API.
    fn watch(&self, id: TaskId, container: String) {
        let (tx, rx) = watch::channel(None);
        let killed = Arc::new(AtomicBool::new(false));
        self.tasks.insert(
            id,
            Ctr {
                id: container.clone(),
                exited: rx,
                killed: Arc::clone(&killed),
            },
        );
        let docker = self.docker.clone();
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let mut wait = docker.wait_container(&container, None);
            let code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                // bollard reports a non-zero exit as this error.
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
                other => {
                    if let Some(Err(e)) = other {
                        warn!(container, error = %e, "waiting for the container failed");
                    }
                    docker
                        .inspect_container(&container, None)
                        .await
                        .ok()
                        .and_then(|i| i.state)
                        .and_then(|s| s.exit_code)
                        .unwrap_or(-1)
                }
            };
            let by_sigkill = code == 137 && !killed.load(Ordering::Relaxed);
            let oom_killed = oom_killed(&docker, &container, by_sigkill).await;
            let exit = Exit {
                code: i32::try_from(code).unwrap_or(-1),
                oom_killed,
            };
            info!(container, code = exit.code, oom_killed, "container exited");
            let _ = tx.send(Some(exit));
            let _ = exits.send((id, exit));
        });
    }

    async fn kill(&self, container: &str, signal: &str) {
        let opts = KillContainerOptionsBuilder::new().signal(signal).build();
        if let Err(e) = self.docker.kill_container(container, Some(opts)).await {
            // 409: not running any more.
            info!(container, signal, error = %e, "kill");
        }
    }

    /// SIGTERM, SIGKILL after `grace`, then removes the container (and with it its
    /// namespace). A labelled container this run does not know is removed too.
    pub(crate) async fn stop(&self, id: TaskId, grace: Duration) -> Result<(), RuntimeError> {
        let Some(c) = self.get(id) else {
            for (task, container) in self.ours().await? {
                if task == id {
                    self.remove(&container).await?;
                }
            }
            self.files.remove(id);
            return Ok(());
        };
        let mut exited = c.exited.clone();
        if exited.borrow().is_none() {
            self.kill(&c.id, "SIGTERM").await;
            if tokio::time::timeout(grace, exited.wait_for(Option::is_some))
                .await
                .is_err()
            {
                c.killed.store(true, Ordering::Relaxed);
                self.kill(&c.id, "SIGKILL").await;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some))
                        .await;
            }
        }
        self.remove(&c.id).await?;
        self.tasks.remove(id);
        self.files.remove(id);
        Ok(())
    }

    /// Removes a container (forcibly); a missing one is fine.
    pub(crate) async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(container, Some(opts)).await {
            Err(e) if !is_not_found(&e) => Err(dk(format!("remove container {container}"))(e)),
            _ => Ok(()),
        }
    }

    /// Runs `/bin/sh -c cmd` in the container through exec.
    pub(crate) async fn health_check(
        &self,
        id: TaskId,
        cmd: &str,
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let c = self.get(id).ok_or(RuntimeError::Unknown(id))?;
        let exec = self
            .docker
            .create_exec(
                &c.id,
                CreateExecOptions {
                    cmd: Some(vec!["/bin/sh", "-c", cmd]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(dk("create the health check"))?;
        let run = async {
            match self
                .docker
                .start_exec(&exec.id, Some(StartExecOptions::default()))
                .await
                .map_err(dk("start the health check"))?
            {
                StartExecResults::Attached { mut output, .. } => {
                    while output.next().await.is_some() {}
                }
                StartExecResults::Detached => {}
            }
            // The output ends when the command does; its exit code may lag a moment.
            loop {
                let inspect = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(dk("inspect the health check"))?;
                if inspect.running != Some(true) {
                    return Ok::<_, RuntimeError>(inspect.exit_code == Some(0));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                // Kill the check that overran, so checks do not pile up.
                if let Ok(i) = self.docker.inspect_exec(&exec.id).await
                    && let Some(pid) = i.pid.and_then(|p| i32::try_from(p).ok())
                    && pid > 0
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Ok(false)
            }
        }
    }

    /// The last `tail` lines of the container's output (0: all).
    pub(crate) async fn logs(&self, id: TaskId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let c = self.get(id).ok_or(RuntimeError::Unknown(id))?;
        let tail_s = if tail == 0 {
            "all".to_owned()
        } else {
            tail.to_string()
        };
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail_s)
            .build();
        let mut text = String::new();
        let mut stream = self.docker.logs(&c.id, Some(opts));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(dk(format!("logs of {}", c.id)))?;
            text.push_str(&chunk.to_string());
        }
        Ok(super::task::tail_lines(&text, tail))
    }

    /// Sends the container's output to `out` in batches as it is written
    /// (the engine's logs API with `follow`): the last `tail` lines (0: all),
    /// then new output, until the container stops (the engine ends the
    /// stream; its output is complete) or `out` is closed. A full `out`
    /// holds the stream back (the engine keeps the output).
    pub(crate) async fn follow(
        &self,
        id: TaskId,
        tail: usize,
        out: &mpsc::Sender<Vec<String>>,
    ) -> Result<(), RuntimeError> {
        let c = self.get(id).ok_or(RuntimeError::Unknown(id))?;
        let tail_s = if tail == 0 {
            "all".to_owned()
        } else {
            tail.to_string()
        };
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .tail(&tail_s)
            .build();
        // The engine applies the tail itself: every line it sends goes out.
        let mut splitter = LineSplitter::default();
        let mut batcher = Batcher::new(0);
        let mut stream = self.docker.logs(&c.id, Some(opts));
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = out.closed() => return Ok(()),
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(dk(format!("logs of {}", c.id)))?;
            let mut batches = batcher.push(splitter.push(&frame.into_bytes()));
            batches.extend(batcher.caught_up());
            for batch in batches {
                if out.send(batch).await.is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(line) = splitter.finish()
            && out.send(vec![line]).await.is_err()
        {
            return Ok(());
        }
        Ok(())
    }

    /// The containers labelled as this agent's: (task ID, container ID).
    pub(crate) async fn ours(&self) -> Result<Vec<(TaskId, String)>, RuntimeError> {
        let owner = format!("{LABEL_OWNER}={}", self.owner);
        let filters = HashMap::from([("label", vec![LABEL_TASK_ID, owner.as_str()])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(dk("list containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let task = c
                    .labels
                    .as_ref()?
                    .get(LABEL_TASK_ID)
                    .and_then(|h| TaskId::from_str_radix(h, 16).ok())?;
                Some((task, c.id?))
            })
            .collect())
    }

    /// Takes over a container a previous agent run started (its exit, even a past one,
    /// is reported).
    pub(crate) async fn adopt(&self, id: TaskId, container: &str) -> Result<bool, RuntimeError> {
        self.take_over(id, container, false).await
    }

    /// Takes over a container a previous agent run started if it still runs (its end is
    /// then watched through the wait API, as for a container this run started); `false`
    /// (nothing taken over) if it is gone or has stopped.
    pub(crate) async fn adopt_running(
        &self,
        id: TaskId,
        container: &str,
    ) -> Result<bool, RuntimeError> {
        self.take_over(id, container, true).await
    }

    /// [`DockerRuntime::adopt`] and [`DockerRuntime::adopt_running`]: watches
    /// `container` as task `id` if it exists (and, with `only_running`, runs).
    async fn take_over(
        &self,
        id: TaskId,
        container: &str,
        only_running: bool,
    ) -> Result<bool, RuntimeError> {
        if self.has(id) {
            return Ok(true);
        }
        let inspect = match self.docker.inspect_container(container, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(dk(format!("inspect {container}"))(e)),
        };
        let running = inspect
            .state
            .is_some_and(|s| s.running == Some(true) && s.pid.is_some_and(|p| p > 0));
        if only_running && !running {
            return Ok(false);
        }
        self.watch(id, container.to_owned());
        info!(
            task = format!("{id:016x}"),
            container, running, "adopted a container"
        );
        Ok(true)
    }
}

/// How long an exit by SIGKILL waits for the engine to record an OOM kill:
/// containerd's OOM event may arrive after its exit event
/// (containerd/containerd#12260), and an inspect between the two says the
/// container was not OOM-killed.
const OOM_SETTLE: Duration = Duration::from_secs(1);

/// Whether the kernel killed `container` for its memory limit, as the engine
/// knows it. An exit by a SIGKILL the agent did not send is asked again until
/// the engine says so or [`OOM_SETTLE`] has passed.
async fn oom_killed(docker: &Docker, container: &str, by_sigkill: bool) -> bool {
    let settle = if by_sigkill {
        OOM_SETTLE
    } else {
        Duration::ZERO
    };
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let oom = docker
            .inspect_container(container, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        if oom || tokio::time::Instant::now() >= deadline {
            return oom;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_names_its_tag_or_digest() {
        assert_eq!(pull_reference("redis:alpine"), ("redis", "alpine"));
        assert_eq!(pull_reference("nginx"), ("nginx", "latest"));
        assert_eq!(
            pull_reference("registry:5000/team/app"),
            ("registry:5000/team/app", "latest")
        );
        assert_eq!(
            pull_reference("registry:5000/team/app:1.2"),
            ("registry:5000/team/app", "1.2")
        );
        assert_eq!(
            pull_reference("app@sha256:0123abcd"),
            ("app", "sha256:0123abcd")
        );
    }
    use std::net::Ipv4Addr;

    #[test]
    fn names() {
        let t = TaskConfig {
            id: 0xa3,
            name: "web app.1".into(),
            spec: mesh_api::spec::ServiceSpec::new(
                "web app",
                mesh_api::spec::RuntimeKind::Docker,
                "x",
                vec![],
            )
            .task,
            addr: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1450,
            networks: Vec::new(),
            files: Vec::new(),
        };
        assert_eq!(container_name(&t), "web_app.1.00000000000000a3");
    }

    #[test]
    fn mounts_reach_the_engine_as_dockers_api_has_them() {
        let parse = |t: &str| t.parse::<mesh_api::mount::Mount>().unwrap();
        let state = Path::new("/no/such/state");
        let mounts = engine_mounts(
            &[
                parse("type=bind,source=/etc,target=/host-etc,readonly"),
                parse("type=volume,source=cache,target=/cache,volume-nocopy"),
                parse("type=tmpfs,target=/scratch,tmpfs-size=1m,tmpfs-mode=700"),
            ],
            state,
        )
        .unwrap();
        let json = serde_json::to_value(&mounts).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"Type": "bind", "Source": "/etc", "Target": "/host-etc", "ReadOnly": true},
                {"Type": "volume", "Source": "cache", "Target": "/cache", "VolumeOptions": {"NoCopy": true}},
                {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1_048_576, "Mode": 0o700}},
            ])
        );
        let err = engine_mounts(&[parse("type=bind,source=/no/such/dir,target=/x")], state)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/dir"
        );
        let err = engine_mounts(
            &[parse("type=bind,source=/etc/ssl,target=/x")],
            Path::new("/etc"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("which the agent hides from tasks"), "{err}");
    }
}
