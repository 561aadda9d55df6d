//! A node's TLS identity on disk: the cluster CA, its certificate and key.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::ca::{CertInfo, parse_cert_pem};
use super::error::PkiError;
use super::private::create_private_dir;
use mesh_api::node::{NodeId, Role};

/// File name of the cluster CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// File name of the node certificate.
pub const CERT_FILE: &str = "node.pem";
/// File name of the node's private key (mode 0600).
pub const KEY_FILE: &str = "node-key.pem";

/// A new ECDSA P-256 key and a certificate signing request for it, both PEM.
/// The request's subject is a placeholder: the CA sets the real one.
///
/// # Errors
///
/// [`PkiError::Generate`] if key generation or signing fails.
pub fn generate_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mesh-node");
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(PkiError::Generate)?;
    Ok((key.serialize_pem(), csr))
}

/// A node's TLS material, in memory: what [`TlsDir`] stores.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("NodeIdentity");
        match self.info() {
            Ok(info) => s.field("info", &info),
            Err(e) => s.field("invalid", &e.to_string()),
        };
        s.finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// What the node certificate says.
    ///
    /// # Errors
    ///
    /// As [`parse_cert_pem`](super::ca::parse_cert_pem).
    pub fn info(&self) -> Result<CertInfo, PkiError> {
        parse_cert_pem(&self.cert_pem)
    }

    /// The node ID from the certificate's CN.
    ///
    /// # Errors
    ///
    /// As [`NodeIdentity::info`].
    pub fn node_id(&self) -> Result<NodeId, PkiError> {
        Ok(self.info()?.node_id)
    }

    /// The role from the certificate's OU (the role when it was issued).
    ///
    /// # Errors
    ///
    /// As [`NodeIdentity::info`].
    pub fn role(&self) -> Result<Role, PkiError> {
        Ok(self.info()?.role)
    }

    /// Whether the certificate has expired (or cannot be read).
    #[must_use]
    pub fn is_expired(&self) -> bool {
        self.info()
            .map_or(true, |info| info.is_expired_at(SystemTime::now()))
    }

    /// Whether the certificate expires within `margin` from now (or cannot
    /// be read): time to renew.
    #[must_use]
    pub fn expires_within(&self, margin: Duration) -> bool {
        self.info()
            .map_or(true, |info| info.expires_within(margin, SystemTime::now()))
    }

    /// Checks that the material belongs together: the certificate is a node
    /// certificate signed by the CA, and the key is the certificate's.
    /// Returns what the certificate says.
    ///
    /// # Errors
    ///
    /// [`PkiError::InvalidCertificate`] saying which check failed.
    pub fn check(&self) -> Result<CertInfo, PkiError> {
        let info = self.info()?;
        let ca_der = super::ca::first_cert_der(&self.ca_pem)?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| PkiError::InvalidCertificate(format!("CA certificate: {e}")))?;
        let der = super::ca::first_cert_der(&self.cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            PkiError::InvalidCertificate(
                "the node certificate is not signed by the cluster CA".into(),
            )
        })?;
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError::InvalidCertificate(format!("node key: {e}")))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::InvalidCertificate(
                "the node key does not belong to the node certificate".into(),
            ));
        }
        Ok(info)
    }
}

/// The directory holding a node's `ca.pem`, `node.pem` and `node-key.pem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsDir {
    path: PathBuf,
}

impl TlsDir {
    /// The TLS directory at `path` (it need not exist yet).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of `ca.pem`.
    #[must_use]
    pub fn ca_path(&self) -> PathBuf {
        self.path.join(CA_FILE)
    }

    /// Path of `node.pem`.
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.path.join(CERT_FILE)
    }

    /// Path of `node-key.pem`.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.path.join(KEY_FILE)
    }

    /// Whether a certificate has been saved here (the node has joined).
    #[must_use]
    pub fn exists(&self) -> bool {
        self.ca_path().is_file() && self.cert_path().is_file() && self.key_path().is_file()
    }

    /// Reads the node's material and checks it ([`NodeIdentity::check`]).
    ///
    /// # Errors
    ///
    /// [`PkiError::Io`] if a file cannot be read; as
    /// [`NodeIdentity::check`] if the material is not valid.
    pub fn load(&self) -> Result<NodeIdentity, PkiError> {
        let read = |p: PathBuf| fs::read_to_string(&p).map_err(|e| PkiError::io(p, e));
        let identity = NodeIdentity {
            ca_pem: read(self.ca_path())?,
            cert_pem: read(self.cert_path())?,
            key_pem: read(self.key_path())?,
        };
        identity.check()?;
        Ok(identity)
    }

    /// Writes the node's material, creating the directory (mode 0700). Each
    /// file is replaced atomically (written beside, synced, renamed); the key
    /// is created with mode 0600. The key is written first and the
    /// certificate last, so a crash never leaves a certificate without its
    /// key.
    ///
    /// # Errors
    ///
    /// [`PkiError::Io`] if the directory or a file cannot be written.
    pub fn save(&self, identity: &NodeIdentity) -> Result<(), PkiError> {
        create_private_dir(&self.path).map_err(|e| PkiError::io(&self.path, e))?;
        write_atomic(&self.key_path(), identity.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.ca_path(), identity.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&self.cert_path(), identity.cert_pem.as_bytes(), 0o644)?;
        // Make the renames durable.
        fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| PkiError::io(&self.path, e))
    }
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PkiError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{Authority, generate_ca};
    use std::os::unix::fs::PermissionsExt as _;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mesh-pki-test-{}-{}",
            std::process::id(),
            crate::pki::token::generate_secret()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_and_load_round_trip_with_a_private_key_file() {
        let ca = generate_ca("c").unwrap();
        let authority = Authority::new(&ca).unwrap();
        let (key, csr) = generate_key_and_csr().unwrap();
        let cert = authority.sign_csr(&csr, 0x42, Role::Manager, "c").unwrap();
        let identity = NodeIdentity {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert,
            key_pem: key,
        };
        identity.check().unwrap();

        let root = temp_dir();
        let dir = TlsDir::new(root.join("tls"));
        assert!(!dir.exists());
        dir.save(&identity).unwrap();
        assert!(dir.exists());
        let mode = fs::metadata(dir.key_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = dir.load().unwrap();
        assert_eq!(loaded, identity);
        assert_eq!(loaded.node_id().unwrap(), 0x42);
        assert_eq!(loaded.role().unwrap(), Role::Manager);
        assert!(!loaded.is_expired());
        assert!(!loaded.expires_within(Duration::from_secs(30 * 86400)));
        // Saving again replaces the files.
        dir.save(&identity).unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let ca = generate_ca("c").unwrap();
        let authority = Authority::new(&ca).unwrap();
        let (_, csr) = generate_key_and_csr().unwrap();
        let (other_key, _) = generate_key_and_csr().unwrap();
        let cert = authority.sign_csr(&csr, 1, Role::Worker, "c").unwrap();
        let identity = NodeIdentity {
            ca_pem: ca.cert_pem,
            cert_pem: cert,
            key_pem: other_key,
        };
        let err = identity.check().unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let ca = generate_ca("c").unwrap();
        let other = generate_ca("d").unwrap();
        let (key, csr) = generate_key_and_csr().unwrap();
        let cert = Authority::new(&other)
            .unwrap()
            .sign_csr(&csr, 1, Role::Worker, "d")
            .unwrap();
        let identity = NodeIdentity {
            ca_pem: ca.cert_pem,
            cert_pem: cert,
            key_pem: key,
        };
        let err = identity.check().unwrap_err();
        assert!(
            err.to_string().contains("not signed by the cluster CA"),
            "{err}"
        );
    }

    #[test]
    fn loading_a_missing_directory_names_the_file() {
        let err = TlsDir::new("/nonexistent/mesh-tls").load().unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/mesh-tls/ca.pem"),
            "{err}"
        );
    }
}
