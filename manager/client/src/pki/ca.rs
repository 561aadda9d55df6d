//! The cluster CA: generation, the digest join tokens carry, and issuance of
//! node certificates from certificate signing requests.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use x509_parser::time::ASN1Time;

use super::error::PkiError;
use mesh_api::cluster::CaMaterial;
use mesh_api::node::{NodeId, Role, format_id};

/// The DNS name in every manager's certificate, and the name clients verify.
pub const MANAGER_SERVER_NAME: &str = "mesh-manager";

/// The certificate OU of a manager node.
pub const OU_MANAGER: &str = "mesh-manager";

/// The certificate OU of a worker node.
pub const OU_WORKER: &str = "mesh-worker";

/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "mesh-ca";

/// How long the cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// How long a node certificate is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Certificates start this long before they are issued, so that a node whose
/// clock is a little behind the issuer's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Creates a new cluster CA: an ECDSA P-256 key and a self-signed
/// certificate with CN `mesh-ca` and O `cluster_id`, valid for
/// [`CA_VALIDITY`], that may sign end-entity certificates only.
///
/// # Errors
///
/// [`PkiError::Generate`] if key generation or signing fails.
pub fn generate_ca(cluster_id: &str) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The digest a join token carries: the lower-case hex SHA-256 of the CA
/// certificate's DER encoding (64 characters).
///
/// # Errors
///
/// [`PkiError::InvalidCertificate`] if `ca_cert_pem` holds no PEM certificate.
pub fn ca_digest(ca_cert_pem: &str) -> Result<String, PkiError> {
    let der = first_cert_der(ca_cert_pem)?;
    Ok(ca_digest_der(&der))
}

/// [`ca_digest`] of a DER-encoded certificate.
#[must_use]
pub fn ca_digest_der(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The first certificate of a PEM bundle, as DER.
///
/// # Errors
/// [`PkiError::InvalidCertificate`] if `pem` holds no certificate.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(format!("no PEM certificate: {e}")))
}

/// The cluster CA, ready to sign node certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    digest: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from the replicated state's material.
    ///
    /// # Errors
    ///
    /// [`PkiError::InvalidCa`] if the certificate or key does not parse, the
    /// certificate is not a CA, or the key is not the certificate's.
    pub fn new(ca: &CaMaterial) -> Result<Self, PkiError> {
        let der = first_cert_der(&ca.cert_pem)
            .map_err(|e| PkiError::InvalidCa(format!("certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::InvalidCa(format!("certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(PkiError::InvalidCa(
                "the certificate is not a CA certificate".into(),
            ));
        }
        let key = KeyPair::from_pem(&ca.key_pem)
            .map_err(|e| PkiError::InvalidCa(format!("private key: {e}")))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::InvalidCa(
                "the private key does not belong to the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| PkiError::InvalidCa(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: ca.cert_pem.clone(),
            digest: ca_digest_der(&der),
        })
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's digest, as join tokens carry it ([`ca_digest`]).
    #[must_use]
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Issues a node certificate for the key in `csr_pem`: CN is
    /// `format_id(node_id)`, O `cluster_id`, OU `mesh-manager` or
    /// `mesh-worker`; managers get the DNS name `mesh-manager` and may act as
    /// TLS servers, workers are TLS clients only. Valid for
    /// [`NODE_CERT_VALIDITY`]. Only the CSR's public key is used: its
    /// subject, names and extensions are ignored. Returns the PEM
    /// certificate.
    ///
    /// # Errors
    ///
    /// [`PkiError::InvalidCsr`] if the CSR does not parse or its signature is
    /// wrong; [`PkiError::Generate`] if signing fails.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: NodeId,
        role: Role,
        cluster_id: &str,
    ) -> Result<String, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format_id(node_id));
        dn.push(DnType::OrganizationName, cluster_id);
        dn.push(DnType::OrganizationalUnitName, role_ou(role));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role == Role::Manager {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            params.subject_alt_names = vec![SanType::DnsName(
                MANAGER_SERVER_NAME.try_into().map_err(PkiError::Generate)?,
            )];
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, NODE_CERT_VALIDITY);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(cert.pem())
    }
}

/// The OU of a node certificate for `role`.
#[must_use]
pub fn role_ou(role: Role) -> &'static str {
    match role {
        Role::Manager => OU_MANAGER,
        Role::Worker => OU_WORKER,
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::rng().random();
    // Positive and without a leading zero byte, as RFC 5280 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = ASN1Time::now().to_datetime();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// What a node certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The node ID from the CN.
    pub node_id: NodeId,
    /// The role from the OU.
    pub role: Role,
    /// The cluster ID from the O (empty if absent).
    pub cluster_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Whether the certificate has expired at `now`.
    #[must_use]
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// Whether the certificate expires within `margin` of `now` (or has
    /// expired): time to renew.
    #[must_use]
    pub fn expires_within(&self, margin: Duration, now: SystemTime) -> bool {
        now.checked_add(margin).is_none_or(|t| t > self.not_after)
    }
}

/// Reads a node certificate (the first certificate of a PEM bundle).
///
/// # Errors
///
/// [`PkiError::InvalidCertificate`] if it does not parse, or its CN is not a
/// node ID or its OU not a role.
pub fn parse_cert_pem(pem: &str) -> Result<CertInfo, PkiError> {
    parse_cert_der(&first_cert_der(pem)?)
}

/// Reads a DER node certificate; see [`parse_cert_pem`].
///
/// # Errors
///
/// As [`parse_cert_pem`].
pub fn parse_cert_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let subject = cert.subject();
    let attr = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let cn = attr(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::InvalidCertificate("no common name".into()))?;
    let node_id = parse_node_id(&cn).ok_or_else(|| {
        PkiError::InvalidCertificate(format!("common name {cn:?} is not a node ID"))
    })?;
    let ou = attr(&mut subject.iter_organizational_unit()).unwrap_or_default();
    let role = match ou.as_str() {
        OU_MANAGER => Role::Manager,
        OU_WORKER => Role::Worker,
        other => {
            return Err(PkiError::InvalidCertificate(format!(
                "organizational unit {other:?} is not a node role"
            )));
        }
    };
    let cluster_id = attr(&mut subject.iter_organization()).unwrap_or_default();
    let validity = cert.validity();
    Ok(CertInfo {
        node_id,
        role,
        cluster_id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
    })
}

/// Parses a node ID as certificates carry it: exactly 16 hex digits.
#[must_use]
pub fn parse_node_id(s: &str) -> Option<NodeId> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        NodeId::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn csr_with_subject(cn: &str, sans: Vec<String>) -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, OU_MANAGER);
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.pem().unwrap())
    }

    fn dns_names(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(d) => (*d).to_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn ca_is_a_p256_ca_named_mesh_ca() {
        let ca = generate_ca("cluster-1").unwrap();
        let der = first_cert_der(&ca.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(cert.is_ca());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "mesh-ca");
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert!(years >= 19, "{years}");
        let authority = Authority::new(&ca).unwrap();
        assert_eq!(authority.digest(), ca_digest(&ca.cert_pem).unwrap());
        assert_eq!(authority.digest().len(), 64);
    }

    #[test]
    fn authority_refuses_a_key_that_is_not_the_cas() {
        let a = generate_ca("a").unwrap();
        let b = generate_ca("b").unwrap();
        let mixed = CaMaterial {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        let err = Authority::new(&mixed).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn signing_sets_cn_o_ou_san_and_ignores_the_csrs_subject() {
        let ca = generate_ca("cluster-1").unwrap();
        let authority = Authority::new(&ca).unwrap();
        let (key, csr) = csr_with_subject("ffffffffffffffff", vec!["evil.example".into()]);

        let pem = authority
            .sign_csr(&csr, 0x1234, Role::Worker, "cluster-1")
            .unwrap();
        let info = parse_cert_pem(&pem).unwrap();
        assert_eq!(info.node_id, 0x1234);
        assert_eq!(info.role, Role::Worker);
        assert_eq!(info.cluster_id, "cluster-1");
        let der = first_cert_der(&pem).unwrap();
        assert!(dns_names(&der).is_empty(), "worker got names");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "0000000000001234"
        );
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the certificate certifies the CSR's key"
        );
        let days = (cert.validity().not_after.timestamp() - ASN1Time::now().timestamp()) / 86400;
        assert!((85..=90).contains(&days), "{days}");
        assert!(!info.is_expired_at(SystemTime::now()));
        assert!(info.expires_within(Duration::from_secs(100 * 86400), SystemTime::now()));
        assert!(!info.expires_within(Duration::from_secs(86400), SystemTime::now()));

        let pem = authority
            .sign_csr(&csr, 0xabc, Role::Manager, "cluster-1")
            .unwrap();
        let info = parse_cert_pem(&pem).unwrap();
        assert_eq!((info.node_id, info.role), (0xabc, Role::Manager));
        assert_eq!(dns_names(&first_cert_der(&pem).unwrap()), ["mesh-manager"]);
    }

    #[test]
    fn garbage_csrs_are_refused() {
        let authority = Authority::new(&generate_ca("c").unwrap()).unwrap();
        let err = authority
            .sign_csr("not a csr", 1, Role::Worker, "c")
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("invalid certificate signing request")
        );
    }

    #[test]
    fn node_ids_are_sixteen_hex_digits() {
        assert_eq!(parse_node_id("00000000000000ff"), Some(0xff));
        assert_eq!(parse_node_id("ff"), None);
        assert_eq!(parse_node_id("+000000000000000"), None);
        assert_eq!(parse_node_id("mesh-ca"), None);
    }
}
