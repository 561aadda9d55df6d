//! The PKI's errors.

use std::io;
use std::path::PathBuf;

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
    pub(super) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
