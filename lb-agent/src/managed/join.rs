//! Joining the cluster with a token (once), then keeping a session with the
//! leader in the background. Its events go to the agent: an agent without a
//! dataplane logs them and runs the node's manager when the node is promoted
//! (`managed::manager_process`); the managed agent also acts on the
//! assignments (`managed::run`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use mesh_api::spec::RuntimeKind;
use mesh_client::pki::TlsDir;
use mesh_client::session::{self, SessionError, SessionEvent, SessionOptions, UplinkSender};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// The file in the state directory that keeps every manager's address, as
/// the last session named them: a restarted agent fails over to any of them,
/// not only to its `--join` addresses.
pub const KNOWN_MANAGERS: &str = "managers";

/// How the agent joins a cluster.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// Manager addresses (`host:port`), tried in order to join; the session
    /// tries them after the managers it learns from the cluster.
    pub managers: Vec<String>,
    /// Join token; needed only the first time (the identity is kept).
    pub token: Option<String>,
    /// Holds the node's identity under `tls/`.
    pub state_dir: PathBuf,
    /// Reported to the managers.
    pub hostname: String,
    /// The underlay address of the node's dataplane (managed mode only).
    pub data_addr: Option<Ipv4Addr>,
    /// The runtimes the node's agent can run tasks of (managed mode only;
    /// empty without a dataplane).
    pub runtimes: BTreeSet<RuntimeKind>,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No identity yet and no token to get one.
    #[error("{0} holds no cluster identity yet: pass --token (or LB_AGENT_JOIN_TOKEN) to join")]
    NeedToken(String),
    /// The managers refused or could not be reached.
    #[error("joining the cluster: {0}")]
    Join(String),
}

/// A running session.
#[derive(Debug)]
pub struct Session {
    /// What the session reports.
    pub events: mpsc::Receiver<SessionEvent>,
    /// Messages up the current session.
    pub uplink: UplinkSender,
    /// Ends with an error only if the cluster removed this node.
    pub task: tokio::task::JoinHandle<Result<(), SessionError>>,
}

/// Joins the cluster if this node has no identity yet, then runs the
/// session in the background.
///
/// # Errors
/// [`JoinError`] if the node has no identity and cannot get one.
pub async fn start(
    options: JoinOptions,
    stop: watch::Receiver<bool>,
) -> Result<Session, JoinError> {
    let tls = TlsDir::new(options.state_dir.join("tls"));
    if tls.exists() {
        info!(dir = %options.state_dir.display(), "reusing the node's cluster identity");
    } else {
        let token = options
            .token
            .as_deref()
            .ok_or_else(|| JoinError::NeedToken(options.state_dir.display().to_string()))?;
        std::fs::create_dir_all(&options.state_dir).map_err(|e| {
            JoinError::Join(format!("creating {}: {e}", options.state_dir.display()))
        })?;
        let mut last = String::new();
        let mut joined = false;
        for manager in &options.managers {
            match mesh_client::join::join_cluster(&tls, manager, token, &options.hostname, "").await
            {
                Ok(_) => {
                    joined = true;
                    break;
                }
                Err(e) => last = e,
            }
        }
        if !joined {
            return Err(JoinError::Join(last));
        }
    }
    let (events, rx) = mpsc::channel(64);
    let (uplink, uplink_rx) = session::uplink();
    let session = SessionOptions {
        managers: options.managers,
        known_managers: Some(options.state_dir.join(KNOWN_MANAGERS)),
        tls,
        hostname: options.hostname,
        agent_version: format!("lb-agent {}", env!("CARGO_PKG_VERSION")),
        data_addr: options.data_addr,
        // Only a session that runs tasks reports what the scheduler may reserve.
        resources: if options.data_addr.is_some() {
            crate::host::capacity::node_resources()
        } else {
            mesh_api::resources::Resources::default()
        },
        runtimes: options.runtimes,
        renew_certificate: true,
    };
    let task = tokio::spawn(session::run_with_uplink(session, events, uplink_rx, stop));
    Ok(Session {
        events: rx,
        uplink,
        task,
    })
}

/// Logs one event of the session.
pub fn log_event(event: &SessionEvent) {
    match event {
        SessionEvent::Established { manager, .. } => info!(%manager, "session established"),
        SessionEvent::RoleChanged(role) => {
            info!(%role, "this node's role changed; its certificate was renewed");
        }
        SessionEvent::Lost(reason) => warn!(%reason, "session lost"),
        SessionEvent::Assignment(_)
        | SessionEvent::LogsRequest { .. }
        | SessionEvent::LogsCancel { .. } => {}
    }
}
