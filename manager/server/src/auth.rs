//! Per-RPC authentication and authorisation from the caller's certificate.
//!
//! The TLS layer ([`crate::tls::server_tls`]) accepts only client
//! certificates the cluster CA signed, but lets callers without a
//! certificate in (joining nodes have none yet). Each service is wrapped in
//! an interceptor that decides per call:
//!
//! - [`AnyNode`]: the caller presents a node certificate and the node is a
//!   current member of the cluster (agents' dispatcher session);
//! - [`ManagerOnly`]: as [`AnyNode`], and the node's role *in the replicated
//!   state* is manager (the operator's API): a demoted manager's certificate
//!   still says manager, the state does not;
//! - [`RaftPeer`]: manager-to-manager traffic, see there.
//!
//! The interceptor inserts the [`Caller`] into the request's extensions;
//! services read it with [`caller`].

use std::sync::PoisonError;

use rustls::pki_types::CertificateDer;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use mesh_api::node::{NodeId, Role, format_id};
use mesh_client::pki::{self, CertInfo};
use mesh_core::state::SharedState;

/// The authenticated caller of an RPC, inserted into the request's
/// extensions by the authentication interceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node named by the certificate's CN.
    pub node_id: NodeId,
    /// The node's role in the replicated state at the time of the call.
    pub role: Role,
}

/// The message of a call made without a client certificate.
pub const NO_CERTIFICATE: &str =
    "a client certificate is required for this call; join the cluster first";

/// Which callers a service admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Any current member of the cluster.
    AnyNode,
    /// Members whose role in the state is manager.
    ManagerOnly,
    /// Manager certificates; see [`RaftPeer`].
    RaftPeer,
}

/// Decides, from the TLS peer certificate and the replicated state, who
/// calls and whether they may.
#[derive(Clone, Debug)]
pub struct Authenticator {
    state: SharedState,
}

impl Authenticator {
    /// An authenticator that checks callers against `state`.
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self { state }
    }

    /// Authenticates the caller of `request` and checks it against `policy`.
    ///
    /// # Errors
    ///
    /// `UNAUTHENTICATED` without a (node) certificate; `PERMISSION_DENIED`
    /// if the node was removed, or is not a manager where `policy` wants
    /// one; `UNAVAILABLE` if this manager's copy of the state does not know
    /// the node (yet).
    pub fn authorize<T>(&self, request: &Request<T>, policy: Policy) -> Result<Caller, Status> {
        let certs = request.peer_certs();
        self.authorize_certs(certs.as_deref().map(Vec::as_slice), policy)
    }

    /// [`Authenticator::authorize`] for a peer's certificate chain (leaf
    /// first), as the TLS layer verified it.
    ///
    /// # Errors
    ///
    /// As [`Authenticator::authorize`].
    pub fn authorize_certs(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        policy: Policy,
    ) -> Result<Caller, Status> {
        let info = certificate_info(certs)?;
        let id = format_id(info.node_id);
        let not_member = || {
            Status::permission_denied(format!(
                "node {id} is not a member of the cluster (removed?)"
            ))
        };
        let worker = || {
            Status::permission_denied(format!(
                "node {id} is a worker; this call requires a manager"
            ))
        };
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if state.removed.contains(&info.node_id) {
            return Err(not_member());
        }
        let role = match (state.nodes.get(&info.node_id), policy) {
            (Some(node), _) => node.role,
            // This manager's copy of the state may not know the peer yet (a
            // manager that is joining has an empty state until the leader's
            // first entries arrive): a manager certificate the CA signed,
            // of a node not known to be removed, is a manager's.
            (None, Policy::RaftPeer) => info.role,
            // Not removed, but not known here: this copy of the state may lag
            // the commit of the node's join (a follower, a manager that just
            // joined). Refused for now, and not as a removal, which a session
            // takes as final: the caller tries again or elsewhere.
            (None, _) => {
                return Err(Status::unavailable(format!(
                    "node {id} is not known to this manager yet (its copy of the cluster state may lag): try again"
                )));
            }
        };
        let admitted = match policy {
            Policy::AnyNode => true,
            Policy::ManagerOnly => role == Role::Manager,
            Policy::RaftPeer => info.role == Role::Manager && role == Role::Manager,
        };
        if !admitted {
            return Err(worker());
        }
        Ok(Caller {
            node_id: info.node_id,
            role,
        })
    }

    fn intercept(&self, mut request: Request<()>, policy: Policy) -> Result<Request<()>, Status> {
        let caller = self.authorize(&request, policy)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// What the leaf of a verified chain says.
fn certificate_info(certs: Option<&[CertificateDer<'_>]>) -> Result<CertInfo, Status> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| Status::unauthenticated(NO_CERTIFICATE))?;
    pki::parse_cert_der(leaf).map_err(|e| {
        Status::unauthenticated(format!(
            "the client certificate is not a node certificate: {e}"
        ))
    })
}

/// The [`Caller`] an authentication interceptor put into `request`.
///
/// # Errors
///
/// `INTERNAL` if the service was not wrapped in one: a wiring bug, not the
/// caller's fault.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .ok_or_else(|| {
            Status::internal(
                "no authenticated caller: the service is not behind an auth interceptor",
            )
        })
}

/// Interceptor admitting any current member of the cluster.
#[derive(Clone, Debug)]
pub struct AnyNode(Authenticator);

impl AnyNode {
    /// Checks callers against `state`.
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self(Authenticator::new(state))
    }
}

impl Interceptor for AnyNode {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.intercept(request, Policy::AnyNode)
    }
}

/// Interceptor admitting members whose role in the replicated state is
/// manager.
#[derive(Clone, Debug)]
pub struct ManagerOnly(Authenticator);

impl ManagerOnly {
    /// Checks callers against `state`.
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self(Authenticator::new(state))
    }
}

impl Interceptor for ManagerOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.intercept(request, Policy::ManagerOnly)
    }
}

/// Interceptor for manager-to-manager (Raft) traffic: the caller presents a
/// manager certificate, is not removed, and if the local state knows the
/// node, its role there is manager. Unlike [`ManagerOnly`] it admits a
/// manager the local state does not know yet, because a joining manager's
/// state is empty until the leader's entries arrive, and those arrive
/// through this service.
#[derive(Clone, Debug)]
pub struct RaftPeer(Authenticator);

impl RaftPeer {
    /// Checks callers against `state`.
    #[must_use]
    pub fn new(state: SharedState) -> Self {
        Self(Authenticator::new(state))
    }
}

impl Interceptor for RaftPeer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.intercept(request, Policy::RaftPeer)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::sync::{Arc, RwLock};

    use rustls::pki_types::pem::PemObject as _;
    use tonic::transport::{Channel, Endpoint, Server};
    use tonic::{Code, Response};

    use super::*;
    use crate::proto;
    use crate::tls::server_tls;
    use mesh_api::cluster::CaMaterial;
    use mesh_api::node::Node;
    use mesh_client::pki::{
        Authority, client_tls, explain_tls_failure, fetch_ca, generate_ca, generate_key_and_csr,
    };
    use mesh_core::state::ClusterState;

    const MANAGER: NodeId = 0xa1;
    const WORKER: NodeId = 0xb2;
    const REMOVED: NodeId = 0xc3;
    /// A manager certificate of a node the state does not know (yet).
    const UNKNOWN: NodeId = 0xd4;
    /// A certificate issued to a manager that has since been demoted.
    const DEMOTED: NodeId = 0xe5;

    struct Fixture {
        ca: CaMaterial,
        authority: Authority,
        state: SharedState,
    }

    /// `(cert_pem, key_pem)`
    type Pair = (String, String);

    impl Fixture {
        fn new() -> Self {
            Self::for_cluster("cluster-1")
        }

        fn for_cluster(cluster_id: &str) -> Self {
            let ca = generate_ca(cluster_id).unwrap();
            let authority = Authority::new(&ca).unwrap();
            let nodes: BTreeMap<NodeId, Node> = [
                (MANAGER, Role::Manager),
                (WORKER, Role::Worker),
                (DEMOTED, Role::Worker),
            ]
            .into_iter()
            .map(|(id, role)| (id, Node::new(id, format!("host-{id:x}"), role, 1)))
            .collect();
            let state = ClusterState {
                cluster_id: cluster_id.into(),
                ca: Some(ca.clone()),
                nodes,
                removed: BTreeSet::from([REMOVED]),
                ..ClusterState::default()
            };
            Self {
                ca,
                authority,
                state: Arc::new(RwLock::new(state)),
            }
        }

        fn issue(&self, id: NodeId, role: Role) -> Pair {
            let (key, csr) = generate_key_and_csr().unwrap();
            let cert = self
                .authority
                .sign_csr(&csr, id, role, "cluster-1")
                .unwrap();
            (cert, key)
        }

        fn authorize(&self, id: NodeId, cert_role: Role, policy: Policy) -> Result<Caller, Status> {
            let (cert, _) = self.issue(id, cert_role);
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
            Authenticator::new(self.state.clone()).authorize_certs(Some(&[der]), policy)
        }
    }

    fn denied(result: Result<Caller, Status>) -> (Code, String) {
        let status = result.unwrap_err();
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn policies_decide_from_the_state_not_the_certificate() {
        let f = Fixture::new();
        let manager = Caller {
            node_id: MANAGER,
            role: Role::Manager,
        };
        let worker = Caller {
            node_id: WORKER,
            role: Role::Worker,
        };
        for policy in [Policy::AnyNode, Policy::ManagerOnly, Policy::RaftPeer] {
            assert_eq!(
                f.authorize(MANAGER, Role::Manager, policy).unwrap(),
                manager
            );
            assert_eq!(
                denied(f.authorize(REMOVED, Role::Manager, policy)),
                (
                    Code::PermissionDenied,
                    "node 00000000000000c3 is not a member of the cluster (removed?)".into()
                )
            );
        }
        assert_eq!(
            f.authorize(WORKER, Role::Worker, Policy::AnyNode).unwrap(),
            worker
        );
        let worker_denied = (
            Code::PermissionDenied,
            "node 00000000000000b2 is a worker; this call requires a manager".to_owned(),
        );
        for policy in [Policy::ManagerOnly, Policy::RaftPeer] {
            assert_eq!(
                denied(f.authorize(WORKER, Role::Worker, policy)),
                worker_denied
            );
        }
        // A demoted manager's certificate still says manager; the state wins.
        for policy in [Policy::ManagerOnly, Policy::RaftPeer] {
            let (code, msg) = denied(f.authorize(DEMOTED, Role::Manager, policy));
            assert_eq!(code, Code::PermissionDenied);
            assert!(msg.contains("is a worker"), "{msg}");
        }
        // A node the state does not know: refused for now (this replica may be
        // behind the commit of its join; a session must not take that as a
        // removal), except a manager certificate on Raft traffic.
        for policy in [Policy::AnyNode, Policy::ManagerOnly] {
            let (code, msg) = denied(f.authorize(UNKNOWN, Role::Manager, policy));
            assert_eq!(code, Code::Unavailable);
            assert!(msg.contains("not known to this manager yet"), "{msg}");
        }
        assert_eq!(
            f.authorize(UNKNOWN, Role::Manager, Policy::RaftPeer)
                .unwrap(),
            Caller {
                node_id: UNKNOWN,
                role: Role::Manager
            }
        );
        let (code, _) = denied(f.authorize(UNKNOWN, Role::Worker, Policy::RaftPeer));
        assert_eq!(code, Code::PermissionDenied);
        // No certificate at all.
        let auth = Authenticator::new(f.state.clone());
        for certs in [None, Some(&[][..])] {
            let status = auth.authorize_certs(certs, Policy::AnyNode).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(status.message(), NO_CERTIFICATE);
        }
    }

    /// Answers with the caller the interceptor found.
    struct Stub;

    #[tonic::async_trait]
    impl proto::join_server::Join for Stub {
        async fn join(
            &self,
            request: Request<proto::JoinRequest>,
        ) -> Result<Response<proto::JoinResponse>, Status> {
            let caller = caller(&request)?;
            Ok(Response::new(proto::JoinResponse {
                node_id: format_id(caller.node_id),
                role: caller.role.to_string(),
                ..Default::default()
            }))
        }
    }

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in the test"))
    }

    #[tonic::async_trait]
    impl proto::control_server::Control for Stub {
        async fn info(
            &self,
            request: Request<proto::InfoRequest>,
        ) -> Result<Response<proto::InfoResponse>, Status> {
            let caller = caller(&request)?;
            Ok(Response::new(proto::InfoResponse {
                node_id: format_id(caller.node_id),
                is_leader: caller.role == Role::Manager,
                ..Default::default()
            }))
        }
        async fn join_tokens(
            &self,
            _: Request<proto::JoinTokensRequest>,
        ) -> Result<Response<proto::JoinTokensResponse>, Status> {
            unimplemented()
        }
        async fn list_nodes(
            &self,
            _: Request<proto::ListNodesRequest>,
        ) -> Result<Response<proto::ListNodesResponse>, Status> {
            unimplemented()
        }
        async fn inspect_node(
            &self,
            _: Request<proto::NodeRef>,
        ) -> Result<Response<proto::NodeInfo>, Status> {
            unimplemented()
        }
        async fn update_node(
            &self,
            _: Request<proto::UpdateNodeRequest>,
        ) -> Result<Response<proto::NodeInfo>, Status> {
            unimplemented()
        }
        async fn promote_node(
            &self,
            _: Request<proto::NodeRef>,
        ) -> Result<Response<proto::NodeInfo>, Status> {
            unimplemented()
        }
        async fn demote_node(
            &self,
            _: Request<proto::NodeRef>,
        ) -> Result<Response<proto::NodeInfo>, Status> {
            unimplemented()
        }
        async fn remove_node(
            &self,
            _: Request<proto::RemoveNodeRequest>,
        ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
            unimplemented()
        }
        async fn leave(
            &self,
            _: Request<proto::LeaveRequest>,
        ) -> Result<Response<proto::LeaveResponse>, Status> {
            unimplemented()
        }
        type ServiceLogsStream = futures::stream::Empty<Result<proto::LogLine, Status>>;
        async fn create_service(
            &self,
            _: Request<proto::CreateServiceRequest>,
        ) -> Result<Response<proto::ServiceReply>, Status> {
            unimplemented()
        }
        async fn update_service(
            &self,
            _: Request<proto::UpdateServiceRequest>,
        ) -> Result<Response<proto::ServiceReply>, Status> {
            unimplemented()
        }
        async fn remove_service(
            &self,
            _: Request<proto::ServiceRef>,
        ) -> Result<Response<proto::RemoveServiceResponse>, Status> {
            unimplemented()
        }
        async fn inspect_service(
            &self,
            _: Request<proto::ServiceRef>,
        ) -> Result<Response<proto::ServiceReply>, Status> {
            unimplemented()
        }
        async fn list_services(
            &self,
            _: Request<proto::ListServicesRequest>,
        ) -> Result<Response<proto::ListServicesResponse>, Status> {
            unimplemented()
        }
        async fn list_tasks(
            &self,
            _: Request<proto::ListTasksRequest>,
        ) -> Result<Response<proto::ListTasksResponse>, Status> {
            unimplemented()
        }
        async fn service_logs(
            &self,
            _: Request<proto::ServiceLogsRequest>,
        ) -> Result<Response<Self::ServiceLogsStream>, Status> {
            unimplemented()
        }
        async fn create_network(
            &self,
            _: Request<proto::CreateNetworkRequest>,
        ) -> Result<Response<proto::NetworkReply>, Status> {
            unimplemented()
        }
        async fn list_networks(
            &self,
            _: Request<proto::ListNetworksRequest>,
        ) -> Result<Response<proto::ListNetworksResponse>, Status> {
            unimplemented()
        }
        async fn inspect_network(
            &self,
            _: Request<proto::NetworkRef>,
        ) -> Result<Response<proto::NetworkReply>, Status> {
            unimplemented()
        }
        async fn remove_network(
            &self,
            _: Request<proto::NetworkRef>,
        ) -> Result<Response<proto::RemoveNetworkResponse>, Status> {
            unimplemented()
        }
        async fn prune_networks(
            &self,
            _: Request<proto::PruneNetworksRequest>,
        ) -> Result<Response<proto::PruneNetworksResponse>, Status> {
            unimplemented()
        }
        async fn create_file(
            &self,
            _: Request<proto::CreateFileRequest>,
        ) -> Result<Response<proto::FileReply>, Status> {
            unimplemented()
        }
        async fn list_files(
            &self,
            _: Request<proto::ListFilesRequest>,
        ) -> Result<Response<proto::ListFilesResponse>, Status> {
            unimplemented()
        }
        async fn inspect_file(
            &self,
            _: Request<proto::FileName>,
        ) -> Result<Response<proto::FileReply>, Status> {
            unimplemented()
        }
        async fn remove_file(
            &self,
            _: Request<proto::FileName>,
        ) -> Result<Response<proto::RemoveFileResponse>, Status> {
            unimplemented()
        }
        async fn deploy_stack(
            &self,
            _: Request<proto::DeployStackRequest>,
        ) -> Result<Response<proto::DeployStackReply>, Status> {
            unimplemented()
        }
    }

    /// Serves `Join` behind [`AnyNode`] and `Control` behind [`ManagerOnly`]
    /// with the manager's certificate, as a manager does.
    async fn serve(f: &Fixture) -> SocketAddr {
        let (cert, key) = f.issue(MANAGER, Role::Manager);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder()
            .add_service(proto::join_server::JoinServer::with_interceptor(
                Stub,
                AnyNode::new(f.state.clone()),
            ))
            .add_service(proto::control_server::ControlServer::with_interceptor(
                Stub,
                ManagerOnly::new(f.state.clone()),
            ));
        let incoming = crate::listener::incoming(
            listener,
            server_tls(&f.ca.cert_pem, &cert, &key).unwrap(),
            crate::listener::ConnectionLimits::DEFAULT,
        );
        tokio::spawn(router.serve_with_incoming(incoming));
        addr
    }

    async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&Pair>,
    ) -> Result<Channel, String> {
        let tls = client_tls(ca_pem, identity.map(|(c, k)| (c.as_str(), k.as_str())));
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
    }

    async fn info(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&Pair>,
    ) -> Result<proto::InfoResponse, Status> {
        let channel = connect(addr, ca_pem, identity)
            .await
            .map_err(Status::unavailable)?;
        proto::control_client::ControlClient::new(channel)
            .info(proto::InfoRequest {})
            .await
            .map(Response::into_inner)
    }

    async fn join(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&Pair>,
    ) -> Result<proto::JoinResponse, Status> {
        let channel = connect(addr, ca_pem, identity)
            .await
            .map_err(Status::unavailable)?;
        proto::join_client::JoinClient::new(channel)
            .join(proto::JoinRequest::default())
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn interceptors_see_the_tls_peer_certificate() {
        let f = Fixture::new();
        let addr = serve(&f).await;
        let ca = f.ca.cert_pem.clone();

        // A manager passes both; the service sees the Caller the interceptor
        // built from the TLS peer certificate.
        let manager = f.issue(MANAGER, Role::Manager);
        let answer = info(addr, &ca, Some(&manager)).await.unwrap();
        assert_eq!(answer.node_id, "00000000000000a1");
        assert!(answer.is_leader);
        let answer = join(addr, &ca, Some(&manager)).await.unwrap();
        assert_eq!(
            (answer.node_id.as_str(), answer.role.as_str()),
            ("00000000000000a1", "manager")
        );

        // A worker: any-node calls pass, manager-only calls do not.
        let worker = f.issue(WORKER, Role::Worker);
        let answer = join(addr, &ca, Some(&worker)).await.unwrap();
        assert_eq!(
            (answer.node_id.as_str(), answer.role.as_str()),
            ("00000000000000b2", "worker")
        );
        let status = info(addr, &ca, Some(&worker)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            "node 00000000000000b2 is a worker; this call requires a manager"
        );
        // The network calls are `Control`'s: a worker may not create or remove one; a
        // manager's call reaches the service (a stub here).
        for (identity, code) in [
            (&worker, Code::PermissionDenied),
            (&manager, Code::Unimplemented),
        ] {
            let channel = connect(addr, &ca, Some(identity)).await.unwrap();
            let mut control = proto::control_client::ControlClient::new(channel);
            let spec = mesh_api::network::NetworkSpec::new("back");
            let created = control
                .create_network(proto::CreateNetworkRequest::new(&spec))
                .await
                .unwrap_err();
            assert_eq!(created.code(), code, "{created:?}");
            let removed = control
                .prune_networks(proto::PruneNetworksRequest {})
                .await
                .unwrap_err();
            assert_eq!(removed.code(), code, "{removed:?}");
            // Nor list, create or inspect secrets.
            let listed = control
                .list_files(proto::ListFilesRequest {
                    kind: "secret".into(),
                })
                .await
                .unwrap_err();
            assert_eq!(listed.code(), code, "{listed:?}");
            let file = mesh_api::file::FileSpec {
                name: "pw".into(),
                labels: Default::default(),
            };
            let created = control
                .create_file(proto::CreateFileRequest::new(
                    mesh_api::file_ref::FileKind::Secret,
                    &file,
                    b"x".to_vec(),
                ))
                .await
                .unwrap_err();
            assert_eq!(created.code(), code, "{created:?}");
            // Nor deploy a stack.
            let deployed = control
                .deploy_stack(proto::DeployStackRequest::new(
                    &mesh_api::stack::StackDeploy {
                        namespace: "app".into(),
                        networks: Vec::new(),
                        files: Vec::new(),
                        external: Vec::new(),
                        services: Vec::new(),
                        prune: false,
                    },
                ))
                .await
                .unwrap_err();
            assert_eq!(deployed.code(), code, "{deployed:?}");
        }

        // No certificate: in at the TLS layer, refused per call.
        for status in [
            info(addr, &ca, None).await.unwrap_err(),
            join(addr, &ca, None).await.unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert_eq!(status.message(), NO_CERTIFICATE);
        }

        // A removed node's certificate is still signed by the CA, but refused.
        let removed = f.issue(REMOVED, Role::Manager);
        for status in [
            info(addr, &ca, Some(&removed)).await.unwrap_err(),
            join(addr, &ca, Some(&removed)).await.unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert_eq!(
                status.message(),
                "node 00000000000000c3 is not a member of the cluster (removed?)"
            );
        }
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_fails_the_handshake() {
        let f = Fixture::new();
        let addr = serve(&f).await;
        // Another cluster's CA, with another name (the usual case: cluster
        // IDs are random) and with the same name (the issuer matches, the
        // signature does not).
        for other in [Fixture::for_cluster("cluster-2"), Fixture::new()] {
            let stranger = other.issue(MANAGER, Role::Manager);
            // The stranger trusts our CA (it got our ca.pem somehow), so only
            // its own certificate is wrong. With TLS 1.3 the client learns of
            // the refusal when it first reads, as the call's transport error.
            let status = info(addr, &f.ca.cert_pem, Some(&stranger))
                .await
                .unwrap_err();
            eprintln!("certificate of another CA: {status:?}");
            assert_eq!(status.code(), Code::Unknown, "{status:?}");
            assert_eq!(status.message(), "transport error");
            assert_eq!(
                explain_tls_failure(&status),
                Some(
                    "the manager refused this node's certificate: it is not signed by the \
                     cluster's CA (is this node from another cluster?)"
                )
            );

            // A client that trusts another CA refuses our server.
            let tls = client_tls(&other.ca.cert_pem, None);
            let err = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap_err();
            eprintln!("client trusting another CA: {err:?}");
            assert_eq!(
                explain_tls_failure(&err),
                Some(
                    "the manager's certificate is not signed by the cluster CA this node trusts \
                     (is it a manager of another cluster?)"
                )
            );
        }
        // Failures that are not about certificates are not explained away.
        assert_eq!(
            explain_tls_failure(&Status::unavailable("connection refused")),
            None
        );
    }

    #[tokio::test]
    async fn fetch_ca_pins_the_ca_by_digest() {
        let f = Fixture::new();
        let addr = serve(&f).await;
        let digest = pki::ca_digest(&f.ca.cert_pem).unwrap();
        let pem = fetch_ca(&addr.to_string(), &digest).await.unwrap();
        assert_eq!(pki::ca_digest(&pem).unwrap(), digest);
        assert_eq!(pem.trim(), f.ca.cert_pem.trim());
        // An https:// address works too.
        fetch_ca(&format!("https://{addr}"), &digest).await.unwrap();

        let wrong = pki::ca_digest(&generate_ca("other").unwrap().cert_pem).unwrap();
        let err = fetch_ca(&addr.to_string(), &wrong).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, pki::PkiError::CaMismatch { .. }), "{msg}");
        assert!(msg.contains(&wrong) && msg.contains(&digest), "{msg}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let err = fetch_ca(&closed_addr.to_string(), &digest)
            .await
            .unwrap_err();
        assert!(matches!(err, pki::PkiError::Fetch { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot fetch the cluster CA"),
            "{err}"
        );
    }
}
