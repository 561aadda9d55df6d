//! Simulated agents: many nodes in one process, for the scale benchmark
//! (`bench-scale`) and its test-sized run (`tests/scale_sim.rs`).
//!
//! Each simulated agent is a Tokio task that speaks the real agent session protocol by
//! calling the real client code: it joins with a worker token
//! ([`mesh_client::join::join_cluster`], its own identity directory), then keeps a session
//! ([`mesh_client::session::run_with_uplink`]) that announces a made-up data address and
//! the `process` runtime in `Hello`, as `lb-agent --join` does, so the leader counts it as
//! a node with a dataplane and places tasks on it. The session sends the heartbeats. It
//! loads no dataplane and starts no process: on each [`SessionEvent::Assignment`] it
//! "runs" its tasks at once, as `lb-agent`'s managed loop (`lb-agent/src/managed/run.rs`)
//! would once they started: it acknowledges the version (`Applied`), reports its dataplane
//! healthy (once), and reports each [`TaskAction::Run`] task `running` and each
//! [`TaskAction::Stop`] task `shutdown`, once each. After a reconnect it re-sends what it
//! reported, its last applied version and its dataplane status, as the real agent does.
//!
//! It consumes only [`SessionEvent`]s, so it keeps working whatever the wire under the
//! session carries (whole assignments or changes).
//!
//! Per agent it keeps little: the states it reported of its own tasks, and digests of
//! the routes it received ([`Seen`]). [`CountingProxy`] counts the bytes the managers
//! send the agents, on the wire (TLS records included), when the agents' sessions go
//! through it.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use mesh_api::assignment::{Assignment, TaskAction};
use mesh_api::resources::Resources;
use mesh_api::spec::RuntimeKind;
use mesh_api::task::{TaskId, TaskState, TaskStatus};
use mesh_client::pki::TlsDir;
use mesh_client::session::{self, SessionEvent, SessionOptions, Uplink, UplinkSender};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// How a [`Fleet`] of simulated agents joins and runs.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Simulated nodes.
    pub nodes: usize,
    /// Managers to join through, tried in order.
    pub join: Vec<String>,
    /// Managers the sessions connect to (e.g. a [`CountingProxy`] in front of the leader).
    pub session: Vec<String>,
    /// The worker join token.
    pub token: String,
    /// Each agent's identity lives in `root/<hostname>/tls`.
    pub root: PathBuf,
    /// Hostnames are `<prefix>0000`, `<prefix>0001`...
    pub hostname_prefix: String,
    /// Joins in flight at once (each is a TLS handshake and a certificate signature on
    /// the manager).
    pub join_concurrency: usize,
    /// Whether each agent digests every service's routes on every assignment
    /// ([`AgentView::routes`]); otherwise only the watched service's. With a
    /// thousand agents and ten thousand backends, digesting everything on every
    /// change costs the simulator more than the managers' work it measures.
    pub digest_every_service: bool,
}

/// What one agent saw of one service's routes, or of every service's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// An order-independent digest of the routes (service, VIP, each backend's task,
    /// address, node and draining flag).
    pub digest: u64,
    /// Backends listed (draining ones included).
    pub backends: usize,
    /// Of which draining.
    pub draining: usize,
    /// When an assignment first showed this digest (the latest change).
    pub since: Option<Instant>,
}

/// What the harness reads of one simulated agent.
#[derive(Debug, Default)]
pub struct AgentView {
    established: AtomicBool,
    assignments: AtomicU64,
    version: AtomicU64,
    running: AtomicUsize,
    lost: AtomicU64,
    seen: Mutex<(Seen, Seen)>,
}

impl AgentView {
    /// Whether a leader accepted its session (and it has not been lost since).
    #[must_use]
    pub fn established(&self) -> bool {
        self.established.load(Ordering::Relaxed)
    }

    /// Assignments received.
    #[must_use]
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Relaxed)
    }

    /// The last assignment version it applied.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Tasks its last assignment tells it to run (each reported running).
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Sessions lost.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The routes of every service in its last assignment.
    #[must_use]
    pub fn routes(&self) -> Seen {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// The watched service's routes in its last assignment ([`Fleet::watch`]).
    #[must_use]
    pub fn watched(&self) -> Seen {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

#[derive(Debug, Default)]
struct Shared {
    agents: Vec<AgentView>,
    watched: RwLock<String>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, message: String) {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }
}

/// Simulated agents, each a Tokio task; `Drop` stops them.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

/// The made-up underlay address of simulated node `i` (10.100.0.1 on).
#[must_use]
pub fn data_addr(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 100, 0, 1));
    Ipv4Addr::from(base.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX)))
}

impl Fleet {
    /// Spawns `options.nodes` simulated agents on the current Tokio runtime; they join
    /// (at most `join_concurrency` at once) and run their sessions in the background.
    #[must_use]
    pub fn start(options: FleetOptions) -> Self {
        let shared = Arc::new(Shared {
            agents: (0..options.nodes).map(|_| AgentView::default()).collect(),
            ..Shared::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let joins = Arc::new(Semaphore::new(options.join_concurrency.max(1)));
        let options = Arc::new(options);
        let handles = (0..options.nodes)
            .map(|i| {
                tokio::spawn(run_agent(
                    i,
                    options.clone(),
                    shared.clone(),
                    joins.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        Self {
            shared,
            stop,
            handles,
        }
    }

    /// The agents.
    #[must_use]
    pub fn agents(&self) -> &[AgentView] {
        &self.shared.agents
    }

    /// Agents whose session is established.
    #[must_use]
    pub fn established(&self) -> usize {
        self.agents().iter().filter(|a| a.established()).count()
    }

    /// Agents that received at least one assignment.
    #[must_use]
    pub fn assigned(&self) -> usize {
        self.agents().iter().filter(|a| a.assignments() > 0).count()
    }

    /// Tasks the agents run, all together.
    #[must_use]
    pub fn running(&self) -> usize {
        self.agents().iter().map(AgentView::running).sum()
    }

    /// Sessions lost, all together.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.agents().iter().map(AgentView::lost).sum()
    }

    /// What went wrong so far (failed joins, ended sessions).
    #[must_use]
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Watches service `name`: from the next assignment on, each agent records its
    /// routes ([`AgentView::watched`]); what was recorded before is cleared.
    pub fn watch(&self, name: &str) {
        name.clone_into(
            &mut self
                .shared
                .watched
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for agent in self.agents() {
            agent.seen.lock().unwrap_or_else(PoisonError::into_inner).1 = Seen::default();
        }
    }

    /// When every agent lists `backends` backends of the watched service, none
    /// draining, with one digest: the latest time one of them got that view (the time
    /// the last agent got the change), and each agent's time. `None` until then.
    #[must_use]
    pub fn watched_converged(&self, backends: usize) -> Option<(Instant, Vec<Instant>)> {
        let mut digest = None;
        let mut times = Vec::with_capacity(self.agents().len());
        for agent in self.agents() {
            let seen = agent.watched();
            if seen.backends != backends || seen.draining != 0 {
                return None;
            }
            if *digest.get_or_insert(seen.digest) != seen.digest {
                return None;
            }
            times.push(seen.since?);
        }
        Some((times.iter().copied().max()?, times))
    }

    /// Whether every agent's last assignment routes every service the same way.
    #[must_use]
    pub fn routes_agree(&self) -> bool {
        let mut digests = self.agents().iter().map(|a| a.routes().digest);
        let first = digests.next();
        digests.all(|d| Some(d) == first)
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for handle in self.handles.drain(..) {
            let _ = handle.await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for handle in &self.handles {
            handle.abort();
        }
    }
}

/// One agent's own bookkeeping.
#[derive(Debug, Default)]
struct AgentState {
    /// What it reported of each task of its last assignment.
    reported: HashMap<TaskId, TaskStatus>,
    applied: Option<u64>,
    dataplane_sent: bool,
}

async fn run_agent(
    i: usize,
    options: Arc<FleetOptions>,
    shared: Arc<Shared>,
    joins: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let hostname = format!("{}{i:04}", options.hostname_prefix);
    let dir = options.root.join(&hostname);
    let tls = TlsDir::new(dir.join("tls"));
    if !tls.exists() {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            shared.error(format!("{hostname}: creating {}: {e}", dir.display()));
            return;
        }
        let Ok(_permit) = joins.acquire().await else {
            return;
        };
        let mut last = String::from("no manager to join through");
        let mut joined = false;
        // An overloaded leader refuses joins (no quorum for the write): retried for
        // about two and a half minutes.
        'attempts: for attempt in 0..32u32 {
            for manager in &options.join {
                match mesh_client::join::join_cluster(&tls, manager, &options.token, &hostname, "")
                    .await
                {
                    Ok(_) => {
                        joined = true;
                        break 'attempts;
                    }
                    Err(e) => last = e,
                }
            }
            let backoff = Duration::from_millis(200) * 2u32.pow(attempt.min(5));
            tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
        }
        if !joined {
            shared.error(format!("{hostname}: joining: {last}"));
            return;
        }
    }
    let session_options = SessionOptions {
        managers: options.session.clone(),
        known_managers: None,
        tls,
        hostname: hostname.clone(),
        agent_version: format!("mesh-sim {}", env!("CARGO_PKG_VERSION")),
        data_addr: Some(data_addr(i)),
        runtimes: BTreeSet::from([RuntimeKind::Process]),
        resources: Resources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 4 << 30,
        },
        renew_certificate: true,
    };
    // Small: a slow agent holds its session back, as a real one would.
    let (events_tx, mut events) = mpsc::channel(4);
    let (uplink, uplink_rx) = session::uplink();
    let session = tokio::spawn(session::run_with_uplink(
        session_options,
        events_tx,
        uplink_rx,
        stop,
    ));
    let view = &shared.agents[i];
    let mut state = AgentState::default();
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Established { .. } => {
                view.established.store(true, Ordering::Relaxed);
                let statuses: Vec<_> = state
                    .reported
                    .iter()
                    .map(|(id, s)| (*id, s.clone()))
                    .collect();
                if !statuses.is_empty() {
                    let _ = uplink.send(Uplink::Reports(statuses));
                }
                if let Some(version) = state.applied {
                    let _ = uplink.send(Uplink::Applied(version));
                }
                if state.dataplane_sent {
                    let _ = uplink.send(Uplink::Dataplane(None));
                }
            }
            SessionEvent::Lost(_) => {
                view.established.store(false, Ordering::Relaxed);
                view.lost.fetch_add(1, Ordering::Relaxed);
            }
            SessionEvent::Assignment(assignment) => {
                let watched = shared
                    .watched
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                apply(
                    &assignment,
                    &mut state,
                    &uplink,
                    view,
                    &watched,
                    options.digest_every_service,
                );
                // Not held past its use: the session's follower then applies the
                // next change in place instead of copying the assignment.
                drop(assignment);
            }
            // No task runs, so no task has output: nothing to answer.
            SessionEvent::RoleChanged(_)
            | SessionEvent::LogsRequest { .. }
            | SessionEvent::LogsCancel { .. } => {}
        }
    }
    match session.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.error(format!("{hostname}: session: {e}")),
        Err(e) if e.is_cancelled() => {}
        Err(e) => shared.error(format!("{hostname}: session task: {e}")),
    }
}

/// "Runs" one assignment: acknowledges it, then reports the task changes it asks for,
/// as the real agent does once its dataplane follows.
fn apply(
    assignment: &Assignment,
    state: &mut AgentState,
    uplink: &UplinkSender,
    view: &AgentView,
    watched: &str,
    every_service: bool,
) {
    let now_ms = mesh_api::time::now_ms();
    let mut reports = Vec::new();
    let mut reported = HashMap::with_capacity(assignment.tasks.len());
    let mut running = 0;
    for task in &assignment.tasks {
        let previous = state.reported.remove(&task.id);
        let want = match task.action {
            TaskAction::Run => {
                running += 1;
                Some((TaskState::Running, "started"))
            }
            TaskAction::Stop => Some((TaskState::Shutdown, "shutdown")),
            TaskAction::Drain => None,
        };
        let status = match want {
            // A task the managers already record as ended stays so.
            Some((wanted, message))
                if !task.state.is_terminal()
                    && previous.as_ref().map(|s| s.state) != Some(wanted) =>
            {
                let status = TaskStatus::new(wanted, message, now_ms);
                reports.push((task.id, status.clone()));
                Some(status)
            }
            _ => previous,
        };
        if let Some(status) = status {
            reported.insert(task.id, status);
        }
    }
    state.reported = reported;
    if state.applied != Some(assignment.version) {
        state.applied = Some(assignment.version);
        let _ = uplink.send(Uplink::Applied(assignment.version));
    }
    if !state.dataplane_sent {
        state.dataplane_sent = true;
        let _ = uplink.send(Uplink::Dataplane(None));
    }
    if !reports.is_empty() {
        let _ = uplink.send(Uplink::Reports(reports));
    }
    let now = Instant::now();
    let (all, one) = digests(assignment, watched, every_service);
    {
        let mut guard = view.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = &mut *guard;
        for (slot, new) in [(&mut seen.0, all), (&mut seen.1, one)] {
            if slot.since.is_none() || slot.digest != new.digest {
                *slot = Seen {
                    since: Some(now),
                    ..new
                };
            }
        }
    }
    view.running.store(running, Ordering::Relaxed);
    view.version.store(assignment.version, Ordering::Relaxed);
    view.assignments.fetch_add(1, Ordering::Relaxed);
}

/// Digests of every service's routes (if `every_service`, else left empty), and
/// of service `watched`'s (its name).
fn digests(assignment: &Assignment, watched: &str, every_service: bool) -> (Seen, Seen) {
    let mut all = Seen::default();
    let mut one = Seen::default();
    for service in &assignment.services {
        let is_watched = service.name == watched;
        if !every_service && !is_watched {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (service.id, &service.name, service.vip).hash(&mut h);
        let head = h.finish();
        all.digest = all.digest.wrapping_add(head);
        if is_watched {
            one.digest = one.digest.wrapping_add(head);
        }
        for backend in &service.backends {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                service.id,
                backend.task,
                backend.addr,
                backend.node,
                backend.draining,
            )
                .hash(&mut h);
            let d = h.finish();
            all.digest = all.digest.wrapping_add(d);
            all.backends += 1;
            all.draining += usize::from(backend.draining);
            if is_watched {
                one.digest = one.digest.wrapping_add(d);
                one.backends += 1;
                one.draining += usize::from(backend.draining);
            }
        }
    }
    (all, one)
}

/// A TCP forwarder that counts the bytes each way: put in front of the leader, it
/// counts what the managers send the agents whose sessions go through it, on the wire
/// (TLS records, HTTP/2 frames, keep-alive answers included).
#[derive(Debug)]
pub struct CountingProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on `bind` (port 0: any) and forwards every connection to `target`.
    ///
    /// # Errors
    /// If it cannot listen.
    pub async fn start(bind: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let task = {
            let (down, up, connections) = (down.clone(), up.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::Relaxed);
                    let (down, up) = (down.clone(), up.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let upward = tokio::spawn(pipe(cr, sw, up));
                        pipe(sr, cw, down).await;
                        upward.abort();
                    });
                }
            })
        };
        Ok(Self {
            addr,
            down,
            up,
            connections,
            task,
        })
    }

    /// Bytes sent from the managers to the agents so far.
    #[must_use]
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    /// Bytes sent from the agents to the managers so far.
    #[must_use]
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The gRPC `Control` client the simulator's drivers use.
pub type Control = mesh_client::proto::control_client::ControlClient<tonic::transport::Channel>;

/// A replicated service of `replicas` tasks of the process runtime running
/// `task-echo` (which no simulated agent starts), every policy at its default.
#[must_use]
pub fn service_spec(name: &str, replicas: u32) -> mesh_api::spec::ServiceSpec {
    let mut spec =
        mesh_api::spec::ServiceSpec::new(name, RuntimeKind::Process, "task-echo", vec![]);
    spec.mode = mesh_api::spec::ServiceMode::Replicated { replicas };
    spec
}

/// Creates service `name` of `replicas` tasks with one `CreateService`, as `meshctl
/// service create --detach` does.
///
/// # Errors
/// The call's failure.
pub async fn create_service(
    control: &mut Control,
    name: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    let spec = service_spec(name, replicas);
    control
        .create_service(mesh_client::proto::CreateServiceRequest::new(&spec))
        .await
        .map_err(|s| anyhow::anyhow!("CreateService {name}: {}", s.message()))?;
    Ok(())
}

/// Sets service `name`'s replicas with one `UpdateService` (`meshctl service scale
/// --detach`); returns the time the call returned (the change is committed).
///
/// # Errors
/// A failed call or an unreadable reply.
pub async fn scale(control: &mut Control, name: &str, replicas: u32) -> anyhow::Result<Instant> {
    let reply = control
        .inspect_service(mesh_client::proto::ServiceRef { name: name.into() })
        .await
        .map_err(|s| anyhow::anyhow!("InspectService {name}: {}", s.message()))?
        .into_inner();
    let service = reply.service()?;
    let mut spec = service.spec.clone();
    spec.mode = mesh_api::spec::ServiceMode::Replicated { replicas };
    let request =
        mesh_client::proto::UpdateServiceRequest::update(name, &spec, service.spec_version);
    control
        .update_service(request)
        .await
        .map_err(|s| anyhow::anyhow!("UpdateService {name} (to {replicas}): {}", s.message()))?;
    Ok(Instant::now())
}

/// Tasks running and tasks desired over every service, as `ListServices` reports them.
///
/// # Errors
/// The call's failure.
pub async fn running_desired(control: &mut Control) -> anyhow::Result<(u64, u64)> {
    let mut request = tonic::Request::new(mesh_client::proto::ListServicesRequest {});
    request.set_timeout(Duration::from_secs(60));
    let services = control
        .list_services(request)
        .await
        .map_err(|s| anyhow::anyhow!("ListServices: {}", s.message()))?
        .into_inner()
        .services;
    Ok(services.iter().fold((0, 0), |(r, d), s| {
        (r + u64::from(s.running), d + u64::from(s.desired))
    }))
}

/// Waits, polling every 100 ms until `deadline`, until `f` returns `Some`.
///
/// # Errors
/// On timeout (naming `what`), or `f`'s error.
pub async fn wait_for<T, F, Fut>(deadline: Instant, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
