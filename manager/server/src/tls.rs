//! The TLS configuration of a manager's gRPC server.

use std::sync::Arc;

use mesh_client::pki::{PkiError, first_cert_der};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The TLS configuration of a manager's gRPC server, for
/// [`crate::listener::incoming`] (which bounds the handshake's time).
///
/// The server presents `cert_pem` followed by the CA certificate (so that a
/// joining node can pin the CA by its digest, see [`mesh_client::pki::fetch_ca`]), and asks
/// every client for a certificate signed by the CA. A client without a
/// certificate is let in at the TLS layer, because a joining node has none
/// yet: the per-RPC checks ([`crate::auth`]) refuse it everywhere but
/// `Join`, and the listener closes its connection soon. A client with a
/// certificate the CA did not sign fails the handshake. The only ALPN
/// protocol is `h2`.
///
/// # Errors
///
/// [`PkiError::InvalidCertificate`] if a PEM input holds no certificate or
/// no private key, or rustls refuses them.
pub fn server_tls(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        PkiError::InvalidCertificate(format!("{what}: {e}"))
    };
    let ca = first_cert_der(ca_pem).map_err(|e| invalid("CA certificate", &e))?;
    first_cert_der(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| invalid("private key", &e))?;
    let mut chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate", &e))?;
    if !chain.contains(&ca) {
        chain.push(ca.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| invalid("CA certificate", &e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid("client verifier", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
