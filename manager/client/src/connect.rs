//! Connecting to managers: mutual TLS, failover across addresses, and
//! errors a user can act on.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use mesh_api::LEADER_ADDR_HEADER;

use crate::pki::{self, NodeIdentity};

/// How long the TCP connection to one manager may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The deadline of each unary call of a command-line client ([`Deadlines::UNARY`]):
/// well above a write's commit deadline (5 s) and a Raft membership change,
/// far below forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection may take to open, and each call on it.
///
/// Opening is bounded in two places: the TLS handshake of every connection
/// of the channel (tonic reconnects lazily) within [`pki::HANDSHAKE_TIMEOUT`],
/// and [`connect_with`] as a whole within [`Deadlines::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Opening a connection to one manager: TCP, TLS and HTTP/2 together.
    pub open: Duration,
    /// Each call, until its response headers (a unary call: its answer; a
    /// stream: its start, not its end). `None` for channels that carry
    /// long calls, such as a node's `Dispatcher.Session`, Raft's snapshots
    /// or `ServiceLogs`.
    pub call: Option<Duration>,
}

impl Deadlines {
    /// For long-lived streams and Raft: opening bounded, calls not.
    pub const STREAMS: Self = Self {
        open: CONNECT_TIMEOUT.saturating_add(pki::HANDSHAKE_TIMEOUT),
        call: None,
    };
    /// For unary calls (`meshctl`, `Join`): opening bounded, and every call
    /// within [`CALL_TIMEOUT`].
    pub const UNARY: Self = Self {
        open: CONNECT_TIMEOUT.saturating_add(pki::HANDSHAKE_TIMEOUT),
        call: Some(CALL_TIMEOUT),
    };
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::STREAMS
    }
}

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

/// A gRPC endpoint for `addr` (`host:port`) with `tls` and
/// [`Deadlines::STREAMS`].
///
/// Managers use it for their Raft peers too (as the Raft connector).
///
/// # Errors
/// If the address or TLS settings are unusable.
pub fn endpoint(addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, tonic::transport::Error> {
    endpoint_with(addr, tls, Deadlines::STREAMS)
}

/// A gRPC endpoint for `addr` (`host:port`) with `tls` and `deadlines`:
/// TCP within [`CONNECT_TIMEOUT`], the TLS handshake within
/// [`pki::HANDSHAKE_TIMEOUT`] (each time the channel connects), each call
/// within `deadlines.call`.
///
/// # Errors
/// If the address or TLS settings are unusable.
pub fn endpoint_with(
    addr: &str,
    tls: ClientTlsConfig,
    deadlines: Deadlines,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.timeout(pki::HANDSHAKE_TIMEOUT))?
        .connect_timeout(CONNECT_TIMEOUT.min(deadlines.open))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match deadlines.call {
        Some(call) => endpoint.timeout(call),
        None => endpoint,
    })
}

/// The client TLS settings for a node identity.
#[must_use]
pub fn identity_tls(identity: &NodeIdentity) -> ClientTlsConfig {
    pki::client_tls(
        &identity.ca_pem,
        Some((identity.cert_pem.as_str(), identity.key_pem.as_str())),
    )
}

/// Connects to the first manager in `addrs` that answers, with
/// [`Deadlines::STREAMS`].
///
/// # Errors
/// [`ClientError::Unreachable`] naming every address tried and the last
/// failure (refused, timed out, TLS refused...).
pub async fn connect(addrs: &[String], tls: &ClientTlsConfig) -> Result<Channel, ClientError> {
    connect_with(addrs, tls, Deadlines::STREAMS).await
}

/// Connects to the first manager in `addrs` that answers within
/// `deadlines.open`; the channel's calls have `deadlines.call`.
///
/// # Errors
/// [`ClientError::Unreachable`] naming every address tried and the last
/// failure (refused, timed out, TLS refused, no TLS answer...).
pub async fn connect_with(
    addrs: &[String],
    tls: &ClientTlsConfig,
    deadlines: Deadlines,
) -> Result<Channel, ClientError> {
    if addrs.is_empty() {
        return Err(ClientError::NoAddress);
    }
    let mut reason = String::new();
    for addr in addrs {
        let endpoint = endpoint_with(addr, tls.clone(), deadlines)
            .map_err(|e| ClientError::Tls(format!("{addr}: {}", error_chain(&e))))?;
        match tokio::time::timeout(deadlines.open, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(e)) => {
                reason = match pki::explain_tls_failure(&e) {
                    Some(explained) => format!("{addr}: {explained}"),
                    None if is_handshake_timeout(&e) => format!(
                        "{addr}: accepted the connection but did not complete TLS within {:?} \
                         (is it a manager's API port?)",
                        pki::HANDSHAKE_TIMEOUT.min(deadlines.open)
                    ),
                    None => format!("{addr}: {}", error_chain(&e)),
                };
            }
            Err(_) => {
                reason = format!(
                    "{addr}: no answer within {:?} (is it a manager's API port?)",
                    deadlines.open
                );
            }
        }
    }
    Err(ClientError::Unreachable {
        addrs: addrs.join(", "),
        reason,
    })
}

/// Whether `err` is tonic's TLS handshake timeout.
fn is_handshake_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.to_string()
            .to_lowercase()
            .contains("tls handshake timeout")
        {
            return true;
        }
        current = e.source();
    }
    false
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
        // tonic's own deadline ([`Deadlines::call`]), not the server's.
        tonic::Code::Cancelled if status.message() == "Timeout expired" => {
            format!("the manager did not answer within the call's deadline ({CALL_TIMEOUT:?})")
        }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Fault 8: a listener that accepts TCP and never speaks TLS (a wrong
    /// port, a hung manager) fails the connection with a clear error within
    /// its deadline instead of hanging: the whole opening within
    /// `Deadlines::open`, and by default the TLS handshake within
    /// `HANDSHAKE_TIMEOUT`.
    #[tokio::test]
    async fn a_listener_that_never_speaks_tls_fails_within_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ca = pki::generate_ca("c").unwrap();
        let tls = pki::client_tls(&ca.cert_pem, None);
        let addrs = std::slice::from_ref(&addr);
        let slack = Duration::from_secs(2);

        let short = Deadlines {
            open: Duration::from_millis(500),
            call: Some(Duration::from_millis(500)),
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(short.open + slack, connect_with(addrs, &tls, short))
            .await
            .expect("connect_with hangs on a listener that never speaks TLS");
        let err = outcome.unwrap_err().to_string();
        eprintln!("after {:?}: {err}", started.elapsed());
        assert!(
            err.contains(&addr) && err.contains("no answer within 500ms"),
            "{err}"
        );

        let started = Instant::now();
        let outcome = tokio::time::timeout(Deadlines::STREAMS.open + slack, connect(addrs, &tls))
            .await
            .expect("connect hangs on a listener that never speaks TLS");
        let err = outcome.unwrap_err().to_string();
        eprintln!("after {:?}: {err}", started.elapsed());
        assert!(err.contains("did not complete TLS within 10s"), "{err}");
        assert!(started.elapsed() < pki::HANDSHAKE_TIMEOUT + slack);
        drop(listener);
    }
}
