//! Joining: a join token and a certificate request in, a certificate out.

use tonic::{Request, Response, Status};

use super::{Manager, ca_digest, cluster_ca, sign_certificate};
use crate::proto::{self, join_server::Join};
use mesh_api::node::{Node, Role, format_id};
use mesh_api::time::now_ms;
use mesh_client::pki;
use mesh_core::state::Command;

/// The `Join` service; the only one callers without a certificate reach.
#[derive(Clone, Debug)]
pub struct JoinService {
    manager: Manager,
}

impl JoinService {
    /// Admits nodes into `manager`'s cluster.
    #[must_use]
    pub fn new(manager: Manager) -> Self {
        Self { manager }
    }
}

/// Checks a hostname the way the kernel limits one: 1 to 64 printable,
/// non-space ASCII characters.
fn validate_hostname(hostname: &str) -> Result<(), Status> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid hostname {hostname:?}: 1 to 64 printable characters without spaces"
        )))
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinResponse>, Status> {
        let request = request.into_inner();
        validate_hostname(&request.hostname)?;
        let (role, id, cert_pem, ca_pem) = {
            let state = self.manager.read()?;
            let ca = cluster_ca(&state)?;
            let role = pki::role_for(&request.token, &state.secrets, &ca_digest(ca)?)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            if role == Role::Manager && request.manager_addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a manager joins with the address its API listens on (manager_addr)",
                ));
            }
            let id = loop {
                let id: u64 = rand::random();
                if id != 0 && !state.nodes.contains_key(&id) && !state.removed.contains(&id) {
                    break id;
                }
            };
            // Sign before committing: a malformed request changes nothing.
            let cert_pem = sign_certificate(&state, &request.csr_pem, id, role)?;
            (role, id, cert_pem, ca.cert_pem.clone())
        };
        let mut node = Node::new(id, request.hostname, role, now_ms());
        if role == Role::Manager {
            node.manager_addr = Some(request.manager_addr);
        }
        self.manager.commit(Command::AddNode { node }).await?;
        tracing::info!(node = %format_id(id), %role, "node joined");
        Ok(Response::new(proto::JoinResponse {
            node_id: format_id(id),
            role: role.to_string(),
            cert_pem,
            ca_pem,
        }))
    }
}
