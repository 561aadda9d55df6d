//! TLS configuration of the control plane's clients, and the CA-pinning
//! handshake a joining node starts with. (The managers' server side is
//! `mesh-manager`'s `tls` module.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncWriteExt as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::ca::MANAGER_SERVER_NAME;
use super::ca::ca_digest_der;
use super::error::PkiError;

/// How long a manager waits for a client to finish the TLS handshake, and
/// [`fetch_ca`] for the whole exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration of a client of a manager: it trusts the cluster CA
/// only and expects the server name [`MANAGER_SERVER_NAME`], which every
/// manager certificate carries. `identity` is the node's `(cert_pem,
/// key_pem)`; a node that has not joined yet has none.
///
/// Use it with an `https://` endpoint.
#[must_use]
pub fn client_tls(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_SERVER_NAME);
    match identity {
        Some((cert_pem, key_pem)) => config.identity(Identity::from_pem(cert_pem, key_pem)),
        None => config,
    }
}

/// Connects to the manager at `addr` (`host:port`, an `https://` prefix is
/// allowed) and returns the cluster CA certificate (PEM) it presents, if
/// its digest is `expected_digest` (from the join token) and the manager's
/// certificate is valid for [`MANAGER_SERVER_NAME`] under it. This is how a
/// joining node learns which CA to trust, without trusting the network.
///
/// # Errors
///
/// [`PkiError::CaMismatch`] if the manager presents another CA (the message
/// names both digests); [`PkiError::Fetch`] if it cannot be reached, the
/// handshake fails otherwise, or takes longer than [`HANDSHAKE_TIMEOUT`].
pub async fn fetch_ca(addr: &str, expected_digest: &str) -> Result<String, PkiError> {
    let host_port = addr
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let fetch_err = |reason: String| PkiError::Fetch {
        addr: host_port.to_owned(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        expected: expected_digest.to_owned(),
        provider: provider.clone(),
        outcome: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fetch_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(MANAGER_SERVER_NAME)
        .map_err(|e| fetch_err(e.to_string()))?
        .to_owned();

    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(host_port)
            .await
            .map_err(|e| fetch_err(e.to_string()))?;
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| fetch_err(format!("TLS handshake failed: {e}")))
    };
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| fetch_err(format!("no answer within {HANDSHAKE_TIMEOUT:?}")))
        .and_then(|r| r);
    let outcome = verifier
        .outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match (result, outcome) {
        (_, Some(Outcome::Mismatch { found })) => Err(PkiError::CaMismatch {
            addr: host_port.to_owned(),
            expected: expected_digest.to_owned(),
            found,
        }),
        (Ok(mut stream), Some(Outcome::Pinned(ca))) => {
            let _ = stream.shutdown().await;
            Ok(der_to_pem(&ca))
        }
        (Ok(_), None) => Err(fetch_err("the server presented no certificate".into())),
        (Err(e), _) => Err(e),
    }
}

/// Explains, in the cluster's terms, a connection to a manager that failed
/// because one side refused the other's certificate; `None` if `err` (or
/// its sources) is not such a failure. Clients put this in front of the
/// bare "transport error" tonic reports.
#[must_use]
pub fn explain_tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(alert) = text.split("received fatal alert: ").nth(1) {
            return Some(if alert.starts_with("CertificateExpired") {
                "the manager refused this node's certificate: it has expired"
            } else if alert.starts_with("CertificateRequired") {
                "the manager requires a client certificate: join the cluster first"
            } else {
                "the manager refused this node's certificate: it is not signed by the \
                 cluster's CA (is this node from another cluster?)"
            });
        }
        if let Some(what) = text.split("invalid peer certificate: ").nth(1) {
            return Some(if what.starts_with("Expired") {
                "the manager's certificate has expired"
            } else {
                "the manager's certificate is not signed by the cluster CA this node trusts \
                 (is it a manager of another cluster?)"
            });
        }
        current = e.source();
    }
    None
}

enum Outcome {
    Pinned(CertificateDer<'static>),
    Mismatch { found: String },
}

/// Accepts the server's chain if a certificate after the leaf has the
/// expected digest and the leaf is valid under it.
struct PinnedCaVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
    outcome: Mutex<Option<Outcome>>,
}

impl std::fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PinnedCaVerifier {
    fn record(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| ca_digest_der(c) == self.expected)
        else {
            let found = if intermediates.is_empty() {
                "none (the server sent no CA certificate)".to_owned()
            } else {
                intermediates
                    .iter()
                    .map(|c| ca_digest_der(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.record(Outcome::Mismatch { found });
            return Err(rustls::Error::General(
                "the server's CA does not match the join token".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.record(Outcome::Pinned(ca.clone().into_owned()));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// PEM-encodes a DER certificate (base64, 64-character lines).
fn der_to_pem(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                encoded.push(B64[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                encoded.push(b'=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::generate_ca;
    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn der_to_pem_round_trips() {
        let ca = generate_ca("c").unwrap();
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        assert_eq!(der_to_pem(&der), ca.cert_pem.replace("\r\n", "\n"));
        for len in 0..5 {
            let bytes: Vec<u8> = (0..len).map(|i| i * 37).collect();
            let pem = der_to_pem(&bytes);
            let back = CertificateDer::from_pem_slice(pem.as_bytes());
            if len > 0 {
                assert_eq!(back.unwrap().as_ref(), &bytes[..], "{pem}");
            }
        }
    }
}
