//! The manager daemon: set up or resume a cluster member from its data
//! directory, then serve the API, the Raft peers, the agents' sessions and
//! the metrics until asked to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
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
use crate::metrics::{Metrics, RaftFigures, RpcMetricsLayer};
use crate::proto;
use crate::raft::{Connector, RaftNode, RaftService, RaftTuning};
use mesh_api::cluster::{CaMaterial, JoinSecrets};
use mesh_api::node::{Node, NodeId, Role, format_id};
use mesh_api::time::now_ms;
use mesh_client::connect;
use mesh_client::pki::{self, NodeIdentity, TlsDir};
use mesh_client::session::{self, SessionOptions};
use mesh_core::state::Command;

/// How a manager process is set up.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// Holds `tls/` (identity and CA) and `raft/` (log, snapshots).
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The address other nodes reach this manager on (`host:port`).
    pub advertise: String,
    /// Where `/metrics` listens, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Interval agents heartbeat at.
    pub heartbeat: Duration,
    /// Heartbeats a node may miss before it is marked down.
    pub allowed_misses: u32,
    /// This node's hostname.
    pub hostname: String,
    /// Raft timing and snapshot policy.
    pub tuning: RaftTuning,
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
    /// `init` or `join` on a directory that already holds a member.
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
    /// Anything else, with context.
    #[error("{0}")]
    Failed(String),
}

fn failed(context: &str) -> impl FnOnce(String) -> DaemonError + '_ {
    move |e| DaemonError::Failed(format!("{context}: {e}"))
}

/// Sets up or resumes the member, then serves until SIGINT, SIGTERM or a
/// `Leave`.
///
/// # Errors
/// [`DaemonError`] if setup fails or serving stops with an error.
pub async fn run(options: DaemonOptions, start: Start) -> Result<(), DaemonError> {
    let tls = TlsDir::new(options.data_dir.join("tls"));
    let raft_dir = options.data_dir.join("raft");
    let data_dir = options.data_dir.display().to_string();
    let has_identity = tls.exists();
    let mut new_ca = None;
    let promoted = has_identity && !raft_dir.join(crate::raft::DB_FILE).exists();
    let (identity, force_new_cluster) = match &start {
        // A worker promoted by `meshctl node promote` already holds a
        // manager certificate (renewed through its session): it joins the
        // Raft membership without a token.
        Start::Join { .. } if promoted => (
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
            id,
            options.advertise.clone(),
            connector,
            options.tuning.clone(),
        )
        .await
    } else {
        RaftNode::open(&raft_dir, id, connector, options.tuning.clone()).await
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
    let server_tls =
        crate::tls::server_tls(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)
            .map_err(|e| failed("TLS setup")(e.to_string()))?;
    let state = raft.shared_state();
    let router = Server::builder()
        .tls_config(server_tls)
        .map_err(|e| failed("TLS setup")(e.to_string()))?
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
    // Without TCP_NODELAY, small gRPC replies wait for the peer's delayed
    // ACK (~40 ms each): writes ran at ~20 per second per client.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
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
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, refresh).await {
                tracing::error!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    tracing::info!(node = %format_id(id), listen = %options.listen, "mesh-manager ready");

    let served = serve
        .await
        .map_err(|e| failed("the API server")(e.to_string()))?;
    session_stop_tx.send_replace(true);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    served.map_err(|e| failed("the API server")(connect::error_chain(&e)))?;
    tracing::info!("mesh-manager stopped");
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
        is_leader: metrics.current_leader == Some(manager.id()),
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
async fn own_session(manager: Manager, hostname: String, stop: watch::Receiver<bool>) {
    let (events, mut rx) = mpsc::channel(8);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let options = SessionOptions {
        managers: manager.manager_addrs(),
        known_managers: None,
        tls: manager.tls().clone(),
        hostname,
        agent_version: format!("mesh-manager {}", env!("CARGO_PKG_VERSION")),
        data_addr: None,
    };
    if let Err(e) = session::run(options, events, stop).await {
        tracing::warn!(error = %e, "the manager's own session ended");
    }
}
