//! The manager daemon: set up or resume a cluster member from its data
//! directory, then serve the API, the Raft peers, the agents' sessions and
//! the metrics until asked to stop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::auth;
use crate::grpc::control::ControlService;
use crate::grpc::dispatcher::{DispatcherService, run_liveness_loop};
use crate::grpc::join::JoinService;
use crate::grpc::{Manager, ManagerOptions};
use crate::listener::ConnectionLimits;
use crate::metrics::{Metrics, RaftFigures, RpcMetricsLayer};
use crate::proto;
use crate::raft::{Connector, RaftNode, RaftService, RaftTuning};
use mesh_api::cluster::{CaMaterial, JoinSecrets};
use mesh_api::node::{Node, NodeId, Role, format_id};
use mesh_api::time::now_ms;
use mesh_client::connect;
use mesh_client::pki::{self, NodeIdentity, TlsDir};
use mesh_client::session::{self, SessionEvent, SessionOptions};
use mesh_client::state_dir;
use mesh_core::state::Command;

/// How a manager process is set up.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Holds `tls/` (identity and CA) and `raft/` (log, snapshots).
    pub data_dir: PathBuf,
    /// The storage key that seals the Raft log and snapshots, outside the
    /// data directory; `None`: beside it
    /// ([`state_dir::storage_key_file`]).
    pub storage_key_file: Option<PathBuf>,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The address other nodes reach this manager on (`host:port`).
    pub advertise: String,
    /// Where `/metrics` listens, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the cluster view ([`crate::web`]) listens, if anywhere.
    pub web_listen: Option<SocketAddr>,
    /// Interval agents heartbeat at.
    pub heartbeat: Duration,
    /// Heartbeats a node may miss before it is marked down.
    pub allowed_misses: u32,
    /// This node's hostname.
    pub hostname: String,
    /// Raft timing and snapshot policy.
    pub tuning: RaftTuning,
    /// Deadlines and bounds of connections without a client certificate.
    pub limits: ConnectionLimits,
}

/// How the member comes to be.
#[derive(Clone, Debug)]
pub enum Start {
    /// Bootstrap a new cluster with this manager as its only member.
    Init,
    /// Join an existing cluster as a manager.
    Join {
        /// A manager of that cluster.
        remote: String,
        /// A manager join token.
        token: String,
    },
    /// Resume from the data directory.
    Resume {
        /// Recover a lone survivor: make this manager the only voter.
        force_new_cluster: bool,
    },
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `init`, or `join` with a token, on a directory that already holds a
    /// member.
    #[error("{0} already holds a cluster member; start it with `mesh-manager run --data-dir {0}`")]
    AlreadyMember(String),
    /// `run` on an empty directory.
    #[error(
        "{0} holds no cluster member; create one with `mesh-manager init` or `mesh-manager join`"
    )]
    NotMember(String),
    /// The token joined this node as a worker.
    #[error(
        "the token is a worker token; managers join with the manager token (`meshctl cluster join-token manager`), workers with `lb-agent --join`"
    )]
    WorkerToken,
    /// This node is no longer a manager.
    #[error("node {0} is not a manager any more (demoted or removed); it can't run a manager")]
    NotManager(String),
    /// The Raft core stopped with a fatal error (e.g. the disk is full):
    /// this manager cannot commit any more.
    #[error("{0}; the manager cannot commit and exits (restart it once the cause is fixed)")]
    RaftStopped(String),
    /// Anything else, with context.
    #[error("{0}")]
    Failed(String),
}

/// How often the server pings an idle connection's peer, and how long it
/// waits for the answer before closing it.
const SERVER_KEEPALIVE: Duration = Duration::from_secs(30);
const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a manager whose Raft core stopped waits for its API server to
/// close its connections before it exits anyway.
const FATAL_GRACE: Duration = Duration::from_secs(3);

fn failed(context: &str) -> impl FnOnce(String) -> DaemonError + '_ {
    move |e| DaemonError::Failed(format!("{context}: {e}"))
}

/// Sets up or resumes the member, then serves until SIGINT, SIGTERM or a
/// `Leave`.
///
/// # Errors
/// [`DaemonError`] if setup fails or serving stops with an error.
pub async fn run(options: DaemonOptions, start: Start) -> Result<(), DaemonError> {
    let tls = state_dir::tls_dir(&options.data_dir);
    restrict_data_dir(&options.data_dir, &tls)?;
    let raft_dir = state_dir::raft_dir(&options.data_dir);
    let key_file = storage_key_path(&options)?;
    let data_dir = options.data_dir.display().to_string();
    let has_identity = tls.exists();
    let mut new_ca = None;
    let (identity, force_new_cluster) = match &start {
        // A worker promoted by `meshctl node promote` already holds a
        // manager certificate (renewed through its session): it joins the
        // Raft membership without a token. With a log of its own (started
        // before), it resumes it, and makes sure it is a voter.
        Start::Join { token, .. } if has_identity && token.is_empty() => (
            tls.load()
                .map_err(|e| failed("reading the identity")(e.to_string()))?,
            false,
        ),
        Start::Init | Start::Join { .. } if has_identity => {
            return Err(DaemonError::AlreadyMember(data_dir));
        }
        Start::Resume { .. } if !has_identity => return Err(DaemonError::NotMember(data_dir)),
        Start::Resume { force_new_cluster } => (
            tls.load()
                .map_err(|e| failed("reading the identity")(e.to_string()))?,
            *force_new_cluster,
        ),
        Start::Init => {
            let (identity, ca) = create_first_identity(&tls)?;
            new_ca = Some(ca);
            (identity, false)
        }
        Start::Join { token, .. } if token.is_empty() => {
            return Err(DaemonError::Failed(
                "--token is required to join (`meshctl cluster join-token manager`)".into(),
            ));
        }
        Start::Join { remote, token } => {
            (join_as_manager(&tls, remote, token, &options).await?, false)
        }
    };
    let info = pki::parse_cert_pem(&identity.cert_pem)
        .map_err(|e| failed("reading the node certificate")(e.to_string()))?;
    let id = info.node_id;
    if info.role != Role::Manager {
        return Err(DaemonError::NotManager(format_id(id)));
    }

    let client_tls = connect::identity_tls(&identity);
    let connector: Connector =
        Arc::new(move |addr: &str| connect::endpoint(addr, client_tls.clone()));
    let raft = if force_new_cluster {
        RaftNode::force_new_cluster(
            &raft_dir,
            &key_file,
            id,
            options.advertise.clone(),
            connector,
            options.tuning.clone(),
        )
        .await
    } else {
        RaftNode::open(&raft_dir, &key_file, id, connector, options.tuning.clone()).await
    }
    .map_err(|e| failed("opening the raft log")(e.to_string()))?;
    let metrics = Arc::new(Metrics::new());
    let manager = Manager::new(
        raft.clone(),
        ManagerOptions {
            id,
            addr: options.advertise.clone(),
            tls: tls.clone(),
            heartbeat: options.heartbeat,
            allowed_misses: options.allowed_misses,
        },
        Arc::clone(&metrics),
    );

    if let Some(ca) = new_ca {
        bootstrap(&manager, &identity, ca, &options).await?;
    } else if manager.read_unchecked().ca.is_none() && matches!(start, Start::Resume { .. }) {
        return Err(DaemonError::Failed(format!(
            "{data_dir} holds an identity but no cluster state: `init` did not finish; \
             remove the directory and run `mesh-manager init` again"
        )));
    }

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| failed(&format!("listening on {}", options.listen))(e.to_string()))?;
    let web_listener = match options.web_listen {
        // A daemon asked for the page that cannot serve it does not start.
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            failed(&format!("listening on {addr} for the cluster view"))(e.to_string())
        })?),
        None => None,
    };
    let server_tls =
        crate::tls::server_tls(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)
            .map_err(|e| failed("TLS setup")(e.to_string()))?;
    let state = raft.shared_state();
    // Members ping every 5 s; these pings find the members that vanished
    // (a dead host leaves its TCP connection open otherwise).
    let router = Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
        .layer(RpcMetricsLayer::new(Arc::clone(&metrics)))
        .add_service(proto::join_server::JoinServer::new(JoinService::new(
            manager.clone(),
        )))
        .add_service(proto::control_server::ControlServer::with_interceptor(
            ControlService::new(manager.clone()),
            auth::ManagerOnly::new(state.clone()),
        ))
        .add_service(
            proto::dispatcher_server::DispatcherServer::with_interceptor(
                DispatcherService::new(manager.clone()),
                auth::AnyNode::new(state.clone()),
            ),
        )
        .add_service(InterceptedService::new(
            RaftService::new(raft.clone()).into_server(),
            auth::RaftPeer::new(state.clone()),
        ));
    // TLS is done by the listener, which bounds handshakes and connections
    // without a certificate (and sets TCP_NODELAY).
    let incoming = crate::listener::incoming(listener, server_tls, options.limits);
    let stop = {
        let manager = manager.clone();
        async move {
            tokio::select! {
                () = manager.stopped() => {}
                () = shutdown_signal() => {}
            }
            // The server's graceful shutdown waits for every open stream: end the
            // agents' sessions (and this manager's own) too.
            manager.request_stop();
        }
    };
    let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop));

    if let Start::Join { remote, .. } = &start {
        become_voter(&manager, &identity, remote).await?;
    }
    tokio::spawn(run_liveness_loop(manager.clone()));
    tokio::spawn(crate::leader::run_leader_loops(manager.clone()));
    tokio::spawn(record_manager_addr(manager.clone()));
    let (session_stop_tx, session_stop) = watch::channel(false);
    tokio::spawn(own_session(
        manager.clone(),
        options.hostname.clone(),
        session_stop,
    ));
    if let Some(addr) = options.metrics_listen {
        let figures_manager = manager.clone();
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            refresh_metrics(&figures_manager);
        });
        let health_manager = manager.clone();
        let health: crate::metrics::HealthCheck =
            Arc::new(move || health_manager.can_commit().map_err(|e| e.to_string()));
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, refresh, health).await {
                tracing::error!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    if let Some(web) = web_listener {
        let addr = web.local_addr().ok();
        let web_manager = manager.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::web::serve(web, web_manager).await {
                tracing::error!(error = %e, ?addr, "cluster view failed");
            }
        });
        tracing::info!(?addr, "cluster view served");
    }
    tracing::info!(node = %format_id(id), listen = %options.listen, "mesh-manager ready");

    // A Raft core that stopped (a storage error such as a full disk, a
    // panic in it) ends the process with an error, so that the supervisor
    // restarts it, rather than leaving a manager that answers but cannot
    // commit.
    let mut serve = serve;
    let served = tokio::select! {
        served = &mut serve => served.map_err(|e| failed("the API server")(e.to_string()))?,
        stopped = raft.core_stopped() => {
            tracing::error!(error = %stopped, "the raft core stopped: the manager exits");
            manager.request_stop();
            session_stop_tx.send_replace(true);
            if tokio::time::timeout(FATAL_GRACE, serve).await.is_err() {
                tracing::warn!("the API server did not stop within {FATAL_GRACE:?}");
            }
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
            return Err(DaemonError::RaftStopped(stopped.to_string()));
        }
    };
    session_stop_tx.send_replace(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    served.map_err(|e| failed("the API server")(connect::error_chain(&e)))?;
    if manager.was_demoted() {
        // No longer a member: its log (which holds the CA key) is of no use
        // and must not stay behind; a later promotion joins afresh.
        std::fs::remove_dir_all(&raft_dir)
            .map_err(|e| failed(&format!("removing {}", raft_dir.display()))(e.to_string()))?;
        // The key sealed nothing else; a later promotion makes a new one.
        match std::fs::remove_file(&key_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(key_file = %key_file.display(), error = %e, "removing the storage key");
            }
        }
        tracing::info!(dir = %raft_dir.display(), key_file = %key_file.display(), "this node was demoted: its manager data and storage key are removed");
    }
    tracing::info!("mesh-manager stopped");
    Ok(())
}

/// The exit status after a panic anywhere in the process (Rust's own).
pub const PANIC_EXIT: i32 = 101;

/// Makes a panic anywhere (the main task, a spawned task such as the
/// leader's loops, a Raft or blocking thread) end the process with status
/// [`PANIC_EXIT`] once it is logged (with its location and thread) and
/// reported by the hook that was installed before. Tokio catches a task's
/// panic and keeps the process up without that task: a manager with a dead
/// loop or a poisoned lock would keep answering while it cannot do its
/// job, and `Restart=on-failure` would never fire. For the binary's `main`,
/// once logging is set up.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let thread = std::thread::current();
        tracing::error!(
            %location,
            thread = thread.name().unwrap_or("unnamed"),
            panic = message,
            "panic: mesh-manager exits"
        );
        report(info);
        std::process::exit(PANIC_EXIT);
    }));
}

/// The storage key's path: `--storage-key-file`, or beside the data
/// directory. Refused inside the data directory: the key must be kept
/// apart from the data it seals.
fn storage_key_path(options: &DaemonOptions) -> Result<PathBuf, DaemonError> {
    let Some(path) = &options.storage_key_file else {
        return Ok(state_dir::storage_key_file(&options.data_dir));
    };
    let data_dir = std::fs::canonicalize(&options.data_dir)
        .map_err(|e| failed(&format!("resolving {}", options.data_dir.display()))(e.to_string()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent).map_err(|e| {
        failed(&format!(
            "the storage key {}: its directory {}",
            path.display(),
            parent.display()
        ))(e.to_string())
    })?;
    if parent.starts_with(&data_dir) {
        return Err(DaemonError::Failed(format!(
            "--storage-key-file {} is inside the data directory {}: keep the key apart from the data it encrypts",
            path.display(),
            options.data_dir.display()
        )));
    }
    Ok(path.clone())
}

/// Makes the data directory private however it was made (by hand, by
/// `meshctl cluster init`, by an older version): the directory and `tls/`
/// 0700, the node key 0600. `raft/` and its database are made so when they
/// are opened ([`crate::raft::RaftNode::open`]).
fn restrict_data_dir(data_dir: &Path, tls: &TlsDir) -> Result<(), DaemonError> {
    let private = |path: &Path, made: std::io::Result<()>| {
        made.map_err(|e| failed(&format!("making {} private", path.display()))(e.to_string()))
    };
    private(data_dir, pki::create_private_dir(data_dir))?;
    if tls.path().exists() {
        private(tls.path(), pki::create_private_dir(tls.path()))?;
    }
    if tls.key_path().exists() {
        private(&tls.key_path(), pki::create_private_file(&tls.key_path()))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn refresh_metrics(manager: &Manager) {
    let metrics = manager.raft().metrics();
    let figures = RaftFigures {
        // A stopped Raft core keeps its last leader in the metrics.
        is_leader: manager.commit_view().is_running_leader(),
        term: metrics.current_term,
        commit_index: manager.raft().committed_index(),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        voters: u64::try_from(metrics.membership_config.membership().voter_ids().count())
            .unwrap_or(0),
        snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
        purged_index: metrics.purged.map_or(0, |l| l.index),
    };
    let state = manager.read_unchecked();
    manager.metrics().refresh(figures, &state);
}

/// The first manager's identity: a new CA, a node ID, and its certificate.
fn create_first_identity(tls: &TlsDir) -> Result<(NodeIdentity, CaMaterial), DaemonError> {
    let id: NodeId = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let cluster_id = format!("{:016x}", rand::random::<u64>());
    let ca = pki::generate_ca(&cluster_id)
        .map_err(|e| failed("creating the cluster CA")(e.to_string()))?;
    let authority =
        pki::Authority::new(&ca).map_err(|e| failed("loading the cluster CA")(e.to_string()))?;
    let (key_pem, csr_pem) =
        pki::generate_key_and_csr().map_err(|e| failed("creating a key")(e.to_string()))?;
    let cert_pem = authority
        .sign_csr(&csr_pem, id, Role::Manager, &cluster_id)
        .map_err(|e| failed("signing the first certificate")(e.to_string()))?;
    let identity = NodeIdentity {
        ca_pem: ca.cert_pem.clone(),
        cert_pem,
        key_pem,
    };
    tls.save(&identity)
        .map_err(|e| failed("writing the identity")(e.to_string()))?;
    Ok((identity, ca))
}

/// Commits the cluster's first entry: the CA, the join secrets and this node.
async fn bootstrap(
    manager: &Manager,
    identity: &NodeIdentity,
    ca: CaMaterial,
    options: &DaemonOptions,
) -> Result<(), DaemonError> {
    let info = pki::parse_cert_pem(&identity.cert_pem)
        .map_err(|e| failed("reading the node certificate")(e.to_string()))?;
    manager
        .raft()
        .initialize(options.advertise.clone())
        .await
        .map_err(|e| failed("initialising raft")(e.to_string()))?;
    let mut first = Node::new(
        info.node_id,
        options.hostname.clone(),
        Role::Manager,
        now_ms(),
    );
    first.manager_addr = Some(options.advertise.clone());
    manager
        .commit(Command::Bootstrap {
            cluster_id: info.cluster_id.clone(),
            ca,
            secrets: JoinSecrets {
                worker: pki::generate_secret(),
                manager: pki::generate_secret(),
            },
            first,
        })
        .await
        .map_err(|s| failed("bootstrapping the cluster")(s.message().to_string()))?;
    Ok(())
}

/// Exchanges a manager token for an identity.
async fn join_as_manager(
    tls: &TlsDir,
    remote: &str,
    token: &str,
    options: &DaemonOptions,
) -> Result<NodeIdentity, DaemonError> {
    let identity =
        mesh_client::join::join_cluster(tls, remote, token, &options.hostname, &options.advertise)
            .await
            .map_err(DaemonError::Failed)?;
    let info = pki::parse_cert_pem(&identity.cert_pem)
        .map_err(|e| failed("reading the node certificate")(e.to_string()))?;
    if info.role != Role::Manager {
        return Err(DaemonError::WorkerToken);
    }
    Ok(identity)
}

/// Asks the leader to add this manager to the Raft membership, following
/// redirects, until it is a voter.
async fn become_voter(
    manager: &Manager,
    identity: &NodeIdentity,
    remote: &str,
) -> Result<(), DaemonError> {
    let tls = connect::identity_tls(identity);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut targets: Vec<String> = vec![remote.to_string()];
    while tokio::time::Instant::now() < deadline {
        if manager.raft().is_voter(manager.id()) {
            return Ok(());
        }
        for target in targets.clone() {
            if target == manager.addr() {
                continue;
            }
            let Ok(channel) = connect::connect(std::slice::from_ref(&target), &tls).await else {
                continue;
            };
            match proto::raft_client::RaftClient::new(channel)
                .add_manager(proto::AddManagerRequest {
                    addr: manager.addr().to_string(),
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => {
                    last = status.message().to_string();
                    if let Some(leader) = connect::leader_addr(&status)
                        && !targets.contains(&leader)
                    {
                        targets.insert(0, leader);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(DaemonError::Failed(format!(
        "could not join the raft membership: {last}"
    )))
}

/// Keeps the state's record of this manager's address current (it changes
/// when a manager restarts with another `--advertise-addr`).
async fn record_manager_addr(manager: Manager) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = manager.stopped() => return,
            _ = tick.tick() => {}
        }
        let current = {
            let state = manager.read_unchecked();
            match state.node(manager.id()) {
                Ok(node) if node.role == Role::Manager => node.manager_addr.clone(),
                _ => continue,
            }
        };
        if current.as_deref() == Some(manager.addr()) {
            return;
        }
        if manager.read().is_err() {
            continue;
        }
        let command = Command::SetManagerAddr {
            id: manager.id(),
            addr: Some(manager.addr().to_string()),
            at_ms: now_ms(),
        };
        if manager.commit(command).await.is_ok() {
            return;
        }
    }
}

/// The manager's own node keeps a session like any agent's, so its status
/// reads `ready` while it runs. It starts from the managers this one's
/// replica knows and follows the leader over those its sessions name.
/// Keeps this manager's own session with the leader (which keeps its node
/// ready when no agent runs there). When the leader says the node was
/// demoted, stops the manager ([`Manager::stop_demoted`]): it exits cleanly
/// (status 0, so `Restart=on-failure` leaves it stopped) and removes its
/// Raft data.
async fn own_session(manager: Manager, hostname: String, stop: watch::Receiver<bool>) {
    let (events, mut rx) = mpsc::channel(8);
    let watcher = manager.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if event == SessionEvent::RoleChanged(Role::Worker) {
                tracing::info!("this node was demoted to a worker: the manager stops");
                watcher.stop_demoted();
            }
        }
    });
    let options = SessionOptions {
        managers: manager.manager_addrs(),
        known_managers: None,
        tls: manager.tls().clone(),
        hostname,
        agent_version: format!("mesh-manager {}", env!("CARGO_PKG_VERSION")),
        data_addr: None,
        // Without a dataplane the manager's own session runs no tasks.
        runtimes: BTreeSet::new(),
        resources: mesh_api::resources::Resources::default(),
        // The node's agent renews the certificate: two processes writing
        // the identity they share would race.
        renew_certificate: false,
    };
    if let Err(e) = session::run(options, events, stop).await {
        tracing::warn!(error = %e, "the manager's own session ended");
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;
    use crate::raft::test_support::TestDir;

    /// How long the daemon may take to start and answer.
    const READY: Duration = Duration::from_secs(20);

    fn free_addr() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    fn options(data_dir: &Path, listen: SocketAddr) -> DaemonOptions {
        DaemonOptions {
            data_dir: data_dir.to_owned(),
            storage_key_file: None,
            listen,
            advertise: listen.to_string(),
            metrics_listen: None,
            web_listen: None,
            heartbeat: Duration::from_millis(500),
            allowed_misses: 3,
            hostname: "test-manager".into(),
            tuning: RaftTuning::default(),
            limits: ConnectionLimits::DEFAULT,
        }
    }

    /// Starts `mesh-manager init` on `options` and waits until it answers
    /// `Control.Info` to its own identity.
    async fn init(options: DaemonOptions) -> (JoinHandle<Result<(), DaemonError>>, NodeIdentity) {
        let tls = TlsDir::new(options.data_dir.join("tls"));
        let addr = options.listen.to_string();
        let daemon = tokio::spawn(run(options, Start::Init));
        let deadline = Instant::now() + READY;
        let mut last = String::new();
        while Instant::now() < deadline {
            assert!(!daemon.is_finished(), "the daemon stopped: {daemon:?}");
            if let Ok(identity) = tls.load() {
                match info(&addr, &identity).await {
                    Ok(_) => return (daemon, identity),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the daemon did not answer within {READY:?}: {last}");
    }

    async fn info(addr: &str, identity: &NodeIdentity) -> Result<proto::InfoResponse, String> {
        let channel = connect::connect(&[addr.to_string()], &connect::identity_tls(identity))
            .await
            .map_err(|e| e.to_string())?;
        proto::control_client::ControlClient::new(channel)
            .info(proto::InfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| connect::status_message(&s))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    }

    /// Set in the child process of [`a_panicking_task_ends_the_process`].
    const PANIC_CHILD: &str = "MESH_MANAGER_TEST_PANIC_CHILD";

    /// Fault 7: a panic in a spawned task (as in the leader's loops) ends
    /// the process with status 101; tokio alone would catch it and keep
    /// the process up without that task. The test runs itself as a child
    /// process that installs the hook, panics in a task and then idles.
    #[test]
    fn a_panicking_task_ends_the_process() {
        if std::env::var_os(PANIC_CHILD).is_some() {
            exit_on_panic();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                drop(tokio::spawn(async { panic!("a bug in a leader loop") }));
                // The process is expected to end before this.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            std::process::exit(0);
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::tests::a_panicking_task_ends_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PANIC_CHILD, "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                panic!("the process still runs 30 s after a task panicked");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(PANIC_EXIT), "{status}");
    }

    /// Fault 9: whatever created the data directory (here: by hand, 0755,
    /// as `mkdir` does under umask 022), the daemon keeps its secrets
    /// (the CA key in the Raft log, the join secrets, the node key) in 0700
    /// directories and 0600 files; the storage key too, beside the
    /// directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_keeps_the_data_dir_private() {
        let root = TestDir::new("daemon-modes");
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (daemon, _) = init(options(&data, free_addr())).await;

        let tls = data.join("tls");
        let raft = data.join("raft");
        let db = raft.join(crate::raft::DB_FILE);
        let found = [
            (data.clone(), mode(&data)),
            (raft.clone(), mode(&raft)),
            (db.clone(), mode(&db)),
            (tls.clone(), mode(&tls)),
            (tls.join(pki::KEY_FILE), mode(&tls.join(pki::KEY_FILE))),
            (
                root.path().join("data.key"),
                mode(&root.path().join("data.key")),
            ),
        ];
        let wanted = [0o700, 0o700, 0o600, 0o700, 0o600, 0o600];
        for ((path, found), wanted) in found.iter().zip(wanted) {
            assert_eq!(
                *found,
                wanted,
                "{} is {found:o}, wanted {wanted:o}",
                path.display()
            );
        }
        daemon.abort();
    }

    /// A `--storage-key-file` inside the data directory is refused before
    /// anything is written; one outside it is taken as given.
    #[test]
    fn a_storage_key_inside_the_data_dir_is_refused() {
        let root = TestDir::new("daemon-keypath");
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        for inside in [data.join("k"), data.join("sub/k"), data.join("./k")] {
            let opts = DaemonOptions {
                storage_key_file: Some(inside.clone()),
                ..options(&data, free_addr())
            };
            let err = storage_key_path(&opts).unwrap_err().to_string();
            assert!(
                err.contains("is inside the data directory"),
                "{inside:?}: {err}"
            );
        }
        let outside = root.path().join("elsewhere.key");
        let opts = DaemonOptions {
            storage_key_file: Some(outside.clone()),
            ..options(&data, free_addr())
        };
        assert_eq!(storage_key_path(&opts).unwrap(), outside);
        let opts = options(&data, free_addr());
        assert_eq!(
            storage_key_path(&opts).unwrap(),
            root.path().join("data.key")
        );
    }

    /// Opens a TLS connection that trusts the cluster CA, as a joining node
    /// does (no client certificate) or as `member` does, and leaves it idle.
    async fn idle_tls(
        addr: SocketAddr,
        ca_pem: &str,
        member: Option<&NodeIdentity>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{PrivateKeyDer, ServerName};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki::first_cert_der(ca_pem).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match member {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(
                    vec![pki::first_cert_der(&identity.cert_pem).unwrap()],
                    PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("mesh-manager").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Resolves once the peer closed the connection (EOF or an error).
    async fn closed<S: tokio::io::AsyncRead + Unpin>(mut stream: S) {
        let mut buf = [0u8; 256];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    }

    /// Fault 8: idle connections that never speak TLS, and TLS connections
    /// without a client certificate that stay idle, are closed by the
    /// manager after their deadlines; an authenticated call succeeds while
    /// they are open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unauthenticated_idle_connections_are_closed() {
        const N: usize = 200;
        let root = TestDir::new("daemon-idle");
        let listen = free_addr();
        let limits = ConnectionLimits {
            handshake_timeout: Duration::from_secs(2),
            unauthenticated_lifetime: Duration::from_secs(3),
            ..ConnectionLimits::DEFAULT
        };
        let options = DaemonOptions {
            limits,
            ..options(&root.path().join("data"), listen)
        };
        let (daemon, identity) = init(options).await;

        let mut raw = Vec::with_capacity(N);
        for _ in 0..N {
            raw.push(TcpStream::connect(listen).await.unwrap());
        }
        let mut tls = Vec::with_capacity(N);
        for _ in 0..N {
            tls.push(idle_tls(listen, &identity.ca_pem, None).await);
        }
        let member = idle_tls(listen, &identity.ca_pem, Some(&identity)).await;
        // The manager still serves its members meanwhile.
        let answer = info(&listen.to_string(), &identity).await.unwrap();
        assert!(answer.is_leader);

        // Each connection within its deadline, and a second for the
        // scheduler.
        let deadline = limits.unauthenticated_lifetime + Duration::from_secs(1);
        let started = Instant::now();
        let raw_closed = futures::future::join_all(raw.into_iter().map(closed));
        tokio::time::timeout(deadline, raw_closed)
            .await
            .expect("connections that never spoke TLS are still open");
        eprintln!(
            "{N} silent connections closed after {:?}",
            started.elapsed()
        );
        let tls_closed = futures::future::join_all(tls.into_iter().map(closed));
        tokio::time::timeout(deadline, tls_closed)
            .await
            .expect("idle TLS connections without a certificate are still open");
        eprintln!(
            "{N} idle TLS connections closed after {:?}",
            started.elapsed()
        );
        let answer = info(&listen.to_string(), &identity).await.unwrap();
        assert!(answer.is_leader);
        // A member's connection is not bound by the unauthenticated limits.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), closed(member))
                .await
                .is_err(),
            "the manager closed a member's idle connection"
        );
        daemon.abort();
    }
}
