//! The cluster PKI: the CA, certificate issuance, node identities on disk,
//! join tokens and the TLS configuration of every control-plane connection.
//!
//! The model is Docker Swarm's:
//!
//! - the first manager creates a cluster CA ([`generate_ca`]); the CA's key is
//!   part of the replicated state so that any leader can sign;
//! - a join token `MESHTKN-1-<CA digest>-<secret>` ([`JoinToken`]) names the
//!   CA by its SHA-256 digest, so a joining node can pin the CA
//!   ([`fetch_ca`]) before trusting anything the manager says, and carries a
//!   secret that decides the role the node joins with ([`role_for`]);
//! - a node's certificate names it: CN is the node ID ([`format_id`]), O the
//!   cluster ID, OU its role (`mesh-manager` or `mesh-worker`); managers are
//!   also TLS servers under the name [`MANAGER_SERVER_NAME`];
//! - every connection is mutual TLS (the managers' server side in
//!   `mesh-manager`, [`client_tls`] here), except
//!   that a joining node has no certificate yet: the server lets it in at the
//!   TLS layer and the managers' per-RPC checks decide.
//!
//! [`format_id`]: crate::state::format_id

mod ca;
mod identity;
mod tls;
mod token;

use std::io;
use std::path::PathBuf;

pub use ca::{
    Authority, CA_VALIDITY, CertInfo, NODE_CERT_VALIDITY, ca_digest, ca_digest_der, first_cert_der,
    generate_ca, parse_cert_der, parse_cert_pem, parse_node_id, role_ou,
};
pub use identity::{CA_FILE, CERT_FILE, KEY_FILE, NodeIdentity, TlsDir, generate_key_and_csr};
pub use tls::{HANDSHAKE_TIMEOUT, client_tls, explain_tls_failure, fetch_ca};
pub use token::{JoinToken, SECRET_LEN, TokenError, generate_secret, role_for};

/// The DNS name in every manager's certificate, and the name clients verify.
pub const MANAGER_SERVER_NAME: &str = "mesh-manager";

/// The certificate OU of a manager node.
pub const OU_MANAGER: &str = "mesh-manager";

/// The certificate OU of a worker node.
pub const OU_WORKER: &str = "mesh-worker";

/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "mesh-ca";

/// Errors of the PKI: generating, signing, parsing, storing and fetching
/// certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate a key or build a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    /// The CA material (certificate or key) could not be loaded.
    #[error("invalid cluster CA: {0}")]
    InvalidCa(String),
    /// A certificate signing request was malformed or its signature wrong.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    /// A certificate could not be parsed, or lacks what a node certificate
    /// must carry (CN, OU).
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A file of a node's TLS directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The manager could not be reached, or the TLS handshake failed for a
    /// reason other than the CA check.
    #[error("cannot fetch the cluster CA from {addr}: {reason}")]
    Fetch {
        /// The manager's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The manager presented a CA other than the one the join token names.
    #[error(
        "the manager at {addr} presented a CA with digest {found}, but the join token expects \
         {expected}: wrong cluster, stale token, or someone in between"
    )]
    CaMismatch {
        /// The manager's address.
        addr: String,
        /// The digest from the join token.
        expected: String,
        /// The digest(s) of what the manager presented.
        found: String,
    },
}

impl PkiError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
