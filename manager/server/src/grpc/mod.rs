//! The gRPC services, thin shells over the Raft node and the pure state.
//!
//! Reads come from the local replica of the state, once this manager knows
//! a leader that a quorum acknowledges; writes go through Raft (followers
//! forward them to the leader) and answer only after they are committed.

pub mod agents;
pub mod control;
pub mod dispatcher;
pub mod join;
pub mod logs;

use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;

use crate::health::{CommitView, Unhealthy};
use crate::metrics::Metrics;
use crate::proto::control_client::ControlClient;
use crate::raft::{RaftNode, WriteError};
use mesh_api::cluster::CaMaterial;
use mesh_api::node::{NodeId, Role};
use mesh_client::connect;
use mesh_client::pki;
use mesh_client::pki::TlsDir;
use mesh_core::liveness::Liveness;
use mesh_core::state::{Applied, ClusterState, Command, StateError};

/// Everything a manager's services share.
#[derive(Clone, Debug)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    raft: RaftNode,
    state: mesh_core::state::SharedState,
    id: NodeId,
    addr: String,
    tls: TlsDir,
    heartbeat: Duration,
    allowed_misses: u32,
    liveness: Mutex<Option<Liveness>>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Set when the stop is because this node was demoted.
    demoted: std::sync::atomic::AtomicBool,
    agents: agents::AgentRegistry,
}

/// How a manager is set up.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// This manager's node.
    pub id: NodeId,
    /// The API address other nodes reach it on.
    pub addr: String,
    /// Its TLS identity and the cluster CA.
    pub tls: TlsDir,
    /// The interval agents heartbeat at.
    pub heartbeat: Duration,
    /// Heartbeats a node may miss before it is marked down.
    pub allowed_misses: u32,
}

impl Manager {
    /// Wraps a running Raft node.
    #[must_use]
    pub fn new(raft: RaftNode, options: ManagerOptions, metrics: Arc<Metrics>) -> Self {
        let (stop, _) = tokio::sync::watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                state: raft.shared_state(),
                raft,
                id: options.id,
                addr: options.addr,
                tls: options.tls,
                heartbeat: options.heartbeat,
                allowed_misses: options.allowed_misses,
                liveness: Mutex::new(None),
                metrics,
                stop,
                demoted: std::sync::atomic::AtomicBool::new(false),
                agents: agents::AgentRegistry::default(),
            }),
        }
    }

    /// The Raft node.
    #[must_use]
    pub fn raft(&self) -> &RaftNode {
        &self.inner.raft
    }

    /// This manager's node ID.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This manager's advertised API address.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// This manager's TLS directory.
    #[must_use]
    pub fn tls(&self) -> &TlsDir {
        &self.inner.tls
    }

    /// A `Control` client of the leader, as this manager (for calls a
    /// follower passes on); `no_leader` is the `UNAVAILABLE` message when no
    /// leader is known.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or when it cannot be reached;
    /// `INTERNAL` if this manager's identity cannot be read.
    pub async fn leader_control(&self, no_leader: &str) -> Result<ControlClient<Channel>, Status> {
        let (_, addr) = self
            .raft()
            .leader()
            .ok_or_else(|| Status::unavailable(no_leader))?;
        let identity = self
            .tls()
            .load()
            .map_err(|e| Status::internal(format!("reading this manager's identity: {e}")))?;
        let channel = connect::connect(&[addr], &connect::identity_tls(&identity))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(ControlClient::new(channel))
    }

    /// The manager's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Asks the process to stop (after `Leave`).
    pub fn request_stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Stops the process because this node was demoted: it exits cleanly
    /// and removes its Raft data ([`Manager::was_demoted`]).
    pub fn stop_demoted(&self) {
        self.inner
            .demoted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.request_stop();
    }

    /// Whether the stop is because this node was demoted.
    #[must_use]
    pub fn was_demoted(&self) -> bool {
        self.inner.demoted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when a stop was requested.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// The local replica, if this manager is in contact with a quorum.
    ///
    /// # Errors
    /// `UNAVAILABLE` saying there is no quorum.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, ClusterState>, Status> {
        self.quorum_check()?;
        Ok(self.read_unchecked())
    }

    /// The local replica, whatever the quorum.
    ///
    /// # Panics
    /// If the state lock was poisoned by a panicking writer.
    pub fn read_unchecked(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.inner.state.read().expect("state lock poisoned")
    }

    /// Succeeds if this manager is in contact with a quorum.
    ///
    /// # Errors
    /// `UNAVAILABLE` saying there is no quorum.
    pub fn require_quorum(&self) -> Result<(), Status> {
        self.quorum_check()
    }

    fn quorum_check(&self) -> Result<(), Status> {
        self.can_commit().map_err(|e| match e {
            Unhealthy::RaftStopped(_) => Status::unavailable(format!(
                "manager {} cannot serve: {e}",
                mesh_api::node::format_id(self.inner.id)
            )),
            Unhealthy::NoLeader(_) | Unhealthy::StaleQuorum { .. } => no_quorum(self.inner.id),
        })
    }

    /// Whether this manager can commit (see [`CommitView::check`]): what
    /// `/healthz` answers and reads require.
    ///
    /// # Errors
    /// [`Unhealthy`] saying why not.
    pub fn can_commit(&self) -> Result<(), Unhealthy> {
        self.commit_view().check()
    }

    /// What [`Manager::can_commit`] decides on, from openraft's metrics.
    #[must_use]
    pub fn commit_view(&self) -> CommitView {
        let raft = &self.inner.raft;
        CommitView::from_metrics(self.inner.id, &raft.metrics(), raft.tuning().election_max)
    }

    /// Commits a command and returns what the state machine answered.
    ///
    /// # Errors
    /// The state machine's refusal, or `UNAVAILABLE` without quorum.
    pub async fn commit(&self, command: Command) -> Result<Applied, Status> {
        let started = std::time::Instant::now();
        let result = self.inner.raft.write(command).await;
        self.inner.metrics.observe_write(started.elapsed());
        result.map_err(write_status)?.map_err(state_status)
    }

    /// Announces the replicated state's version whenever it changes.
    #[must_use]
    pub fn state_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.raft.state_changes()
    }

    /// Heartbeat bookkeeping; `None` unless this manager leads.
    pub(crate) fn liveness(&self) -> std::sync::MutexGuard<'_, Option<Liveness>> {
        self.inner.liveness.lock().expect("liveness lock poisoned")
    }

    /// The leader's agent sessions.
    #[must_use]
    pub fn agents(&self) -> &agents::AgentRegistry {
        &self.inner.agents
    }

    /// The heartbeat period agents are given.
    #[must_use]
    pub fn heartbeat(&self) -> Duration {
        self.inner.heartbeat
    }

    /// Heartbeats a node may miss.
    #[must_use]
    pub fn allowed_misses(&self) -> u32 {
        self.inner.allowed_misses
    }

    /// Every manager's API address, this one first.
    #[must_use]
    pub fn manager_addrs(&self) -> Vec<String> {
        let state = self.read_unchecked();
        let mut addrs = vec![self.inner.addr.clone()];
        addrs.extend(
            state
                .managers()
                .filter_map(|n| n.manager_addr.clone())
                .filter(|a| *a != self.inner.addr),
        );
        addrs
    }
}

fn no_quorum(id: NodeId) -> Status {
    Status::unavailable(format!(
        "no quorum: manager {} is not in contact with a majority of managers; \
         the cluster is electing a leader or has lost quorum",
        mesh_api::node::format_id(id)
    ))
}

/// The cluster CA held in `state`.
///
/// # Errors
/// `FAILED_PRECONDITION` before bootstrap.
pub(crate) fn cluster_ca(state: &ClusterState) -> Result<&CaMaterial, Status> {
    state
        .ca
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("the cluster is not initialised"))
}

/// The digest join tokens carry for `ca`.
///
/// # Errors
/// `INTERNAL` if the stored CA certificate does not parse.
pub(crate) fn ca_digest(ca: &CaMaterial) -> Result<String, Status> {
    pki::ca_digest(&ca.cert_pem)
        .map_err(|e| Status::internal(format!("reading the cluster CA: {e}")))
}

/// Signs a node's certificate request with the cluster CA in `state`.
///
/// # Errors
/// `INVALID_ARGUMENT` for a malformed request; `INTERNAL` or
/// `FAILED_PRECONDITION` if the CA is unusable or missing.
pub(crate) fn sign_certificate(
    state: &ClusterState,
    csr_pem: &str,
    id: NodeId,
    role: Role,
) -> Result<String, Status> {
    pki::Authority::new(cluster_ca(state)?)
        .map_err(|e| Status::internal(format!("loading the cluster CA: {e}")))?
        .sign_csr(csr_pem, id, role, &state.cluster_id)
        .map_err(|e| Status::invalid_argument(format!("invalid certificate request: {e}")))
}

/// The gRPC status for a refused command.
#[must_use]
pub fn state_status(err: impl Into<StateError>) -> Status {
    let err = err.into();
    let message = err.to_string();
    match err {
        StateError::UnknownNode(_)
        | StateError::UnknownService(_)
        | StateError::UnknownTask(_)
        | StateError::UnknownNetwork(_)
        | StateError::UnknownFile(..) => Status::not_found(message),
        StateError::AmbiguousNode(..)
        | StateError::AmbiguousFile(..)
        | StateError::AmbiguousService(..)
        | StateError::AmbiguousNetwork(..)
        | StateError::Invalid(_) => Status::invalid_argument(message),
        StateError::LastManager(_)
        | StateError::ManagerStillMember(_)
        | StateError::NodeNotDown(_)
        | StateError::OutOfSequence { .. }
        | StateError::NetworkInUse { .. }
        | StateError::FileInUse { .. }
        | StateError::NotBootstrapped => Status::failed_precondition(message),
        StateError::AlreadyBootstrapped
        | StateError::NodeExists(_)
        | StateError::ServiceExists(_)
        | StateError::NetworkExists(_)
        | StateError::FileExists(..) => Status::already_exists(message),
        StateError::Capacity(_) => Status::resource_exhausted(message),
        StateError::MissingExternal(..) => Status::not_found(message),
        StateError::NotInStack { .. } => Status::already_exists(message),
        StateError::FileChanged { .. } => Status::failed_precondition(message),
        StateError::InStack { source, .. } => Status::new(state_status(*source).code(), message),
    }
}

/// The gRPC status for a write that did not commit.
#[must_use]
pub fn write_status(err: WriteError) -> Status {
    match err {
        WriteError::NoLeader | WriteError::NoQuorum => {
            Status::unavailable(format!("no quorum: {err}; the write was not committed"))
        }
        other => Status::unavailable(other.to_string()),
    }
}
