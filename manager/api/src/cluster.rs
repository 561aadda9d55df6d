//! The cluster's secrets that the managers replicate: the CA (so that any
//! leader can sign certificates) and the join-token secrets. They travel only
//! between managers, in Raft entries and snapshots.

use serde::{Deserialize, Serialize};

use crate::node::Role;

/// The cluster CA, replicated so that any leader can sign certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM private key (PKCS#8).
    pub key_pem: String,
}

/// The secret halves of the current join tokens, one per role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecrets {
    /// Secret of the worker token.
    pub worker: String,
    /// Secret of the manager token.
    pub manager: String,
}

impl JoinSecrets {
    /// The secret for `role`.
    #[must_use]
    pub fn for_role(&self, role: Role) -> &str {
        match role {
            Role::Worker => &self.worker,
            Role::Manager => &self.manager,
        }
    }
}
