//! Joining a cluster: exchange a join token and a certificate request for the
//! node's identity (the CA pinned by the token's digest first, as Swarm does).

use crate::proto;

use crate::connect;
use crate::pki::{self, NodeIdentity, TlsDir};

/// Joins a cluster through `remote` with `token`: pins the CA the token
/// names, sends a certificate request, stores the identity in `tls`.
/// `manager_addr` is empty for workers.
///
/// # Errors
/// A message naming what failed: an unreachable manager, a CA that does
/// not match the token, a rotated token...
pub async fn join_cluster(
    tls: &TlsDir,
    remote: &str,
    token: &str,
    hostname: &str,
    manager_addr: &str,
) -> Result<NodeIdentity, String> {
    let parsed = pki::JoinToken::parse(token).map_err(|e| e.to_string())?;
    let ca_pem = pki::fetch_ca(remote, &parsed.ca_digest)
        .await
        .map_err(|e| format!("joining through {remote}: {e}"))?;
    let (key_pem, csr_pem) = pki::generate_key_and_csr().map_err(|e| e.to_string())?;
    let channel = connect::connect_with(
        &[remote.to_string()],
        &pki::client_tls(&ca_pem, None),
        connect::Deadlines::UNARY,
    )
    .await
    .map_err(|e| e.to_string())?;
    let response = proto::join_client::JoinClient::new(channel)
        .join(proto::JoinRequest {
            token: token.to_string(),
            csr_pem,
            hostname: hostname.to_string(),
            manager_addr: manager_addr.to_string(),
        })
        .await
        .map_err(|s| format!("joining through {remote}: {}", connect::status_message(&s)))?
        .into_inner();
    let identity = NodeIdentity {
        ca_pem: response.ca_pem,
        cert_pem: response.cert_pem,
        key_pem,
    };
    tls.save(&identity)
        .map_err(|e| format!("writing the identity: {e}"))?;
    tracing::info!(node = %response.node_id, role = %response.role, "joined the cluster");
    Ok(identity)
}

/// The hostname a node reports: `given`, else the system's.
///
/// # Errors
/// If the system hostname cannot be read.
pub fn node_hostname(given: Option<&str>) -> std::io::Result<String> {
    match given {
        Some(hostname) => Ok(hostname.to_string()),
        None => Ok(nix::unistd::gethostname()?.to_string_lossy().into_owned()),
    }
}
