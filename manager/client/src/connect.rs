//! Connecting to managers: mutual TLS, failover across addresses, and
//! errors a user can act on.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use mesh_api::LEADER_ADDR_HEADER;

use crate::pki::{self, NodeIdentity};

/// How long a connection attempt to one manager may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no manager could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No address was given.
    #[error("no manager address given")]
    NoAddress,
    /// Every address failed; the last failure is shown.
    #[error("cannot reach a manager at {addrs}: {reason}")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The last error, with its causes.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A gRPC endpoint for `addr` (`host:port`) with `tls`.
///
/// Managers use it for their Raft peers too (as the Raft connector).
///
/// # Errors
/// If the address or TLS settings are unusable.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// The client TLS settings for a node identity.
#[must_use]
pub fn identity_tls(identity: &NodeIdentity) -> ClientTlsConfig {
    pki::client_tls(
        &identity.ca_pem,
        Some((identity.cert_pem.as_str(), identity.key_pem.as_str())),
    )
}

/// Connects to the first manager in `addrs` that answers.
///
/// # Errors
/// [`ClientError::Unreachable`] naming every address tried and the last
/// failure (refused, timed out, TLS refused...).
pub async fn connect(addrs: &[String], tls: &ClientTlsConfig) -> Result<Channel, ClientError> {
    if addrs.is_empty() {
        return Err(ClientError::NoAddress);
    }
    let mut reason = String::new();
    for addr in addrs {
        let endpoint = endpoint(addr, tls.clone())
            .map_err(|e| ClientError::Tls(format!("{addr}: {}", error_chain(&e))))?;
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                reason = match pki::explain_tls_failure(&e) {
                    Some(explained) => format!("{addr}: {explained}"),
                    None => format!("{addr}: {}", error_chain(&e)),
                };
            }
        }
    }
    Err(ClientError::Unreachable {
        addrs: addrs.join(", "),
        reason,
    })
}

/// An error and its causes on one line, de-duplicated (tonic and hyper
/// often repeat the same message down the chain).
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// A gRPC status as a user reads it: the message, plus a hint for
/// transport failures.
#[must_use]
pub fn status_message(status: &tonic::Status) -> String {
    use std::error::Error as _;
    if let Some(explained) = pki::explain_tls_failure(status) {
        return explained.to_string();
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if status.source().is_some() =>
        {
            format!("{} ({})", status.message(), error_chain(status))
        }
        _ => status.message().to_string(),
    }
}

/// The leader's API address, as a follower names it when it refuses a call
/// only the leader serves (in the [`LEADER_ADDR_HEADER`] metadata).
#[must_use]
pub fn leader_addr(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
