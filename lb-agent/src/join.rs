//! The agent's side of the cluster: join with a token (once), then keep a
//! session with the leader (heartbeats up; assignments come with services).

use std::path::PathBuf;

use manager::pki::TlsDir;
use manager::session::{self, SessionError, SessionEvent, SessionOptions};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// How the agent joins a cluster.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// Manager addresses (`host:port`), tried in order.
    pub managers: Vec<String>,
    /// Join token; needed only the first time (the identity is kept).
    pub token: Option<String>,
    /// Holds the node's identity under `tls/`.
    pub state_dir: PathBuf,
    /// Reported to the managers.
    pub hostname: String,
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

/// Joins the cluster if this node has no identity yet, then runs the
/// session in the background. The returned task ends with an error only
/// if the cluster removed this node.
///
/// # Errors
/// [`JoinError`] if the node has no identity and cannot get one.
pub async fn start(
    options: JoinOptions,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), SessionError>>, JoinError> {
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
            match manager::server::join_cluster(&tls, manager, token, &options.hostname, "").await {
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
    let (events, mut rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            match event {
                SessionEvent::Established { manager, .. } => {
                    info!(%manager, "session established");
                }
                SessionEvent::RoleChanged(role) => {
                    info!(%role, "this node's role changed; its certificate was renewed");
                }
                SessionEvent::Lost(reason) => warn!(%reason, "session lost"),
            }
        }
    });
    let session = SessionOptions {
        managers: options.managers,
        tls,
        hostname: options.hostname,
        agent_version: format!("lb-agent {}", env!("CARGO_PKG_VERSION")),
    };
    Ok(tokio::spawn(session::run(session, events, stop)))
}
