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
//! [`format_id`]: mesh_api::node::format_id

mod ca;
mod error;
mod identity;
mod private;
mod tls;
mod token;

pub use ca::{
    Authority, CA_COMMON_NAME, CA_VALIDITY, CertInfo, MANAGER_SERVER_NAME, NODE_CERT_VALIDITY,
    OU_MANAGER, OU_WORKER, ca_digest, ca_digest_der, first_cert_der, generate_ca, parse_cert_der,
    parse_cert_pem, parse_node_id, role_ou,
};
pub use error::PkiError;
pub use identity::{CA_FILE, CERT_FILE, KEY_FILE, NodeIdentity, TlsDir, generate_key_and_csr};
pub use private::{create_private_dir, create_private_file};
pub use tls::{HANDSHAKE_TIMEOUT, client_tls, explain_tls_failure, fetch_ca};
pub use token::{JoinToken, SECRET_LEN, TokenError, generate_secret, role_for};
