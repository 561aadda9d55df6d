//! The TLS configuration of a manager's gRPC server.

use mesh_client::pki::{HANDSHAKE_TIMEOUT, PkiError, first_cert_der};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The TLS configuration of a manager's gRPC server.
///
/// The server presents `cert_pem` followed by the CA certificate (so that a
/// joining node can pin the CA by its digest, see [`mesh_client::pki::fetch_ca`]), and asks
/// every client for a certificate signed by the CA. A client without a
/// certificate is let in at the TLS layer, because a joining node has none
/// yet: the per-RPC checks ([`crate::auth`]) refuse it everywhere but
/// `Join`. A client with a certificate the CA did not sign fails the
/// handshake.
///
/// # Errors
///
/// [`PkiError::InvalidCertificate`] if a PEM input holds no certificate or
/// no private key (tonic would only notice when the server starts, with a
/// vaguer message).
pub fn server_tls(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ServerTlsConfig, PkiError> {
    first_cert_der(ca_pem)
        .map_err(|e| PkiError::InvalidCertificate(format!("CA certificate: {e}")))?;
    first_cert_der(cert_pem)?;
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(format!("private key: {e}")))?;
    let chain = if cert_pem.contains(ca_pem.trim()) {
        cert_pem.to_owned()
    } else {
        format!("{}\n{}", cert_pem.trim_end(), ca_pem)
    };
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT))
}
