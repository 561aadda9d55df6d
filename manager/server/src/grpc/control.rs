//! The operator's API (`meshctl`): cluster info, join tokens, nodes,
//! services and their tasks, overlay networks.

use std::collections::BTreeMap;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{Manager, ca_digest, cluster_ca, state_status};
use crate::proto::{self, control_client::ControlClient, control_server::Control};
use crate::raft::ManagerView;
use mesh_api::node::{Availability, Node, NodeId, Role, format_id, parse_label};
use mesh_api::service::Service;
use mesh_api::task::{DesiredState, Task, TaskState};
use mesh_api::time::{now_ms, rfc3339};
use mesh_api::wire::WireError;
use mesh_client::{connect, pki};
use mesh_core::network_info;
use mesh_core::scheduler;
use mesh_core::state::{Applied, ClusterState, Command};

/// The `Control` service.
#[derive(Clone, Debug)]
pub struct ControlService {
    manager: Manager,
}

impl ControlService {
    /// Serves `manager`'s state.
    #[must_use]
    pub fn new(manager: Manager) -> Self {
        Self { manager }
    }

    /// The API's view of `node`, with this manager's view of Raft.
    fn node_info(&self, node: &Node) -> proto::NodeInfo {
        node_info(node, &self.manager.raft().manager_view())
    }

    /// On a follower, the leader's `Control` service for a read whose
    /// answer holds MANAGER STATUS (only the leader hears from every voter);
    /// `None` on the leader, for a call a follower already forwarded, or
    /// when the leader cannot be reached (the follower then answers with
    /// what it knows).
    async fn leader_for_read<T>(&self, request: &Request<T>) -> Option<ControlClient<Channel>> {
        if self.manager.raft().is_leader() || request.metadata().contains_key(FORWARDED_HEADER) {
            return None;
        }
        match self.leader_control().await {
            Ok(leader) => Some(leader),
            Err(status) => {
                tracing::debug!(error = %status.message(), "answering a node read locally");
                None
            }
        }
    }

    /// The leader's `Control` service, for calls that only the leader can
    /// carry out (Raft membership changes).
    async fn leader_control(&self) -> Result<ControlClient<Channel>, Status> {
        self.manager
            .leader_control("no quorum: no leader to carry out a membership change")
            .await
    }

    async fn set_role(&self, name: &str, role: Role) -> Result<proto::NodeInfo, Status> {
        if !self.manager.raft().is_leader() {
            let mut leader = self.leader_control().await?;
            let request = proto::NodeRef {
                name: name.to_string(),
            };
            let response = match role {
                Role::Manager => leader.promote_node(request).await?,
                Role::Worker => leader.demote_node(request).await?,
            };
            return Ok(response.into_inner());
        }
        // A demotion's check, voter removal and role change happen under the
        // membership lock, so a promoted node's join in flight either
        // completes first (and is removed here) or sees the worker role.
        let membership = self.manager.raft().membership_lock().await;
        let (id, current) = {
            let state = self.manager.read()?;
            let id = state.resolve(name).map_err(state_status)?;
            state.check_role_change(id, role).map_err(state_status)?;
            (id, state.node(id).map_err(state_status)?.role)
        };
        // A demoted node leaves the Raft membership first: a node that is a
        // worker in the state but still votes would be a manager in all but
        // name. (A `demote` run again finishes what a failure left half done.)
        if role == Role::Worker && self.manager.raft().is_voter(id) {
            self.manager.raft().remove_voter(id).await.map_err(|e| {
                Status::unavailable(format!("removing {} from raft: {e}", format_id(id)))
            })?;
            if id == self.manager.id() {
                // The leader demoted itself: out of the membership, it can
                // commit nothing, and hears from no new leader.
                drop(membership);
                return self.hand_over_demotion(name).await;
            }
        }
        if current != role {
            self.manager
                .commit(Command::SetRole {
                    id,
                    role,
                    at_ms: now_ms(),
                })
                .await?;
        }
        let state = self.manager.read_unchecked();
        let node = state.node(id).map_err(state_status)?;
        Ok(self.node_info(node))
    }
}

impl ControlService {
    /// The leader demoted itself and has left the voters: the managers that
    /// remain elect a new leader, which commits the role change. This one
    /// cannot name it (it hears from no one now), so it asks each of the
    /// others (a follower forwards to the leader) until one has, for up to
    /// [`HANDOVER_TIMEOUT`].
    async fn hand_over_demotion(&self, name: &str) -> Result<proto::NodeInfo, Status> {
        let others: Vec<String> = self
            .manager
            .read_unchecked()
            .managers()
            .filter(|n| n.id != self.manager.id())
            .filter_map(|n| n.manager_addr.clone())
            .collect();
        let identity = self
            .manager
            .tls()
            .load()
            .map_err(|e| Status::internal(format!("reading this manager's identity: {e}")))?;
        let tls = connect::identity_tls(&identity);
        let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
        let mut last = Status::unavailable("no other manager is known");
        while tokio::time::Instant::now() < deadline {
            for addr in &others {
                let channel = match connect::connect(std::slice::from_ref(addr), &tls).await {
                    Ok(channel) => channel,
                    Err(e) => {
                        last = Status::unavailable(e.to_string());
                        continue;
                    }
                };
                let request = proto::NodeRef {
                    name: name.to_owned(),
                };
                match ControlClient::new(channel).demote_node(request).await {
                    Ok(response) => {
                        // Answered (a graceful stop finishes this call), it
                        // stops as a demoted manager does.
                        tracing::info!("this manager was demoted: it stops");
                        self.manager.stop_demoted();
                        return Ok(response.into_inner());
                    }
                    Err(status) => last = status,
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Err(Status::unavailable(format!(
            "this manager left the voters, but no other manager recorded the demotion: {}; \
             run `meshctl node demote {name}` again",
            last.message()
        )))
    }
}

/// How long a leader that demoted itself waits for the new leader to
/// record it.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Marks a read a follower forwarded to the leader, which answers it
/// itself (a leader that just lost its place does not forward it on).
const FORWARDED_HEADER: &str = "x-mesh-forwarded";

/// How long a follower waits for the leader's answer to a forwarded read.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `inner` as a request forwarded to the leader.
fn forwarded<T>(inner: T) -> Request<T> {
    let mut request = Request::new(inner);
    request.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request.set_timeout(FORWARD_TIMEOUT);
    request
}

/// The API's view of a node, given what this manager knows of Raft: a
/// manager's status is Raft's (Leader, Reachable, Unreachable), not its
/// node's heartbeat status.
#[must_use]
pub fn node_info(node: &Node, raft: &ManagerView) -> proto::NodeInfo {
    let manager_status = match node.role {
        Role::Worker => String::new(),
        Role::Manager => raft.status(node.id).to_string(),
    };
    proto::NodeInfo {
        id: format_id(node.id),
        hostname: node.hostname.clone(),
        role: node.role.to_string(),
        availability: node.availability.to_string(),
        status: node.status.to_string(),
        manager_status,
        manager_addr: node.manager_addr.clone().unwrap_or_default(),
        labels: node.labels.clone().into_iter().collect(),
        created_at: rfc3339(node.created_at_ms),
        updated_at: rfc3339(node.updated_at_ms),
        last_heartbeat: String::new(),
        agent_version: node.agent_version.clone(),
        // As the scheduler counts them: none without a dataplane (no task runs
        // there), the process runtime alone for a node that reported none.
        runtimes: if node.data_addr.is_some() {
            node.effective_runtimes()
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            Vec::new()
        },
        status_message: node.dataplane_error.clone().unwrap_or_default(),
        nano_cpus: node.resources.nano_cpus,
        memory_bytes: node.resources.memory_bytes,
    }
}

fn expect_node(applied: Applied) -> Result<Node, Status> {
    match applied {
        Applied::Node(node) => Ok(node),
        _ => Err(Status::internal("the state machine returned no node")),
    }
}

/// A spec that does not decode, as the caller should read it.
fn invalid_spec(err: &WireError) -> Status {
    Status::invalid_argument(format!("invalid service spec: {}", err.source))
}

/// Refuses an update based on a spec that has changed since it was read.
fn expect_service(applied: Applied) -> Result<Service, Status> {
    match applied {
        Applied::Service(service) => Ok(*service),
        _ => Err(Status::internal("the state machine returned no service")),
    }
}

fn expect_network(applied: Applied) -> Result<mesh_api::network::Network, Status> {
    match applied {
        Applied::Network(network) => Ok(*network),
        _ => Err(Status::internal("the state machine returned no network")),
    }
}

/// The kind a secret or config request names.
fn file_kind(kind: &str) -> Result<mesh_api::file_ref::FileKind, Status> {
    mesh_api::wire::file_kind(kind).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The API's view of network `id` (user or ingress).
fn network_reply(
    state: &ClusterState,
    id: mesh_api::network::NetworkId,
) -> Result<proto::NetworkReply, Status> {
    let info = network_info::network_info(state, id).map_err(state_status)?;
    Ok(proto::NetworkReply::new(&info))
}

/// Tasks of `service` running now, and tasks it wants: its replicas, or for
/// a global service its live tasks or its eligible nodes, whichever is more.
#[must_use]
pub fn task_counts(state: &ClusterState, service: &Service) -> (u32, u32) {
    let mut counts = TaskCounts::default();
    state.service_tasks(service.id).for_each(|t| counts.add(t));
    counts.of(state, service)
}

/// [`task_counts`] of every service, in one pass over the tasks.
#[must_use]
pub fn all_task_counts(state: &ClusterState) -> Vec<(&Service, (u32, u32))> {
    let mut counts: BTreeMap<mesh_api::service::ServiceId, TaskCounts> = BTreeMap::new();
    for task in state.tasks.values() {
        counts.entry(task.service).or_default().add(task);
    }
    state
        .services
        .values()
        .map(|s| {
            let of = counts.get(&s.id).copied().unwrap_or_default();
            (s, of.of(state, s))
        })
        .collect()
}

/// A service's running and live tasks, counted task by task.
#[derive(Clone, Copy, Debug, Default)]
struct TaskCounts {
    running: usize,
    live: usize,
}

impl TaskCounts {
    fn add(&mut self, task: &Task) {
        if task.desired == DesiredState::Running && task.status.state == TaskState::Running {
            self.running += 1;
        }
        if task.is_live() {
            self.live += 1;
        }
    }

    /// (running, desired) of `service`, whose tasks these are.
    fn of(self, state: &ClusterState, service: &Service) -> (u32, u32) {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let desired = match service.spec.replicas() {
            Some(replicas) => replicas,
            None => {
                let eligible = state
                    .nodes
                    .values()
                    .filter(|n| scheduler::eligible(n, &service.spec))
                    .count();
                count(self.live.max(eligible))
            }
        };
        (count(self.running), desired)
    }
}

/// The API's view of a service.
///
#[must_use]
pub fn service_reply(state: &ClusterState, service: &Service) -> proto::ServiceReply {
    let (running, desired) = task_counts(state, service);
    proto::ServiceReply::new(service, running, desired)
}

/// The API's view of a task: its record with its service's and node's names.
#[must_use]
pub fn task_info(state: &ClusterState, task: &Task) -> proto::TaskInfo {
    // A removed service's tasks live on until they are stopped: name them
    // by the service's ID.
    let service_name = state
        .services
        .get(&task.service)
        .map_or_else(|| format_id(task.service), |s| s.spec.name.clone());
    let node_hostname = task
        .node
        .map(|id| {
            state
                .nodes
                .get(&id)
                .map_or_else(|| format_id(id), |n| n.hostname.clone())
        })
        .unwrap_or_default();
    proto::TaskInfo::new(task, task.name(&service_name), service_name, node_hostname)
}

#[tonic::async_trait]
impl Control for ControlService {
    type ServiceLogsStream = super::logs::LogStream;

    async fn create_service(
        &self,
        request: Request<proto::CreateServiceRequest>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        let spec = request.get_ref().spec().map_err(|e| invalid_spec(&e))?;
        self.manager.require_quorum()?;
        let service = expect_service(
            self.manager
                .commit(Command::CreateService {
                    spec,
                    at_ms: now_ms(),
                })
                .await?,
        )?;
        let state = self.manager.read_unchecked();
        Ok(Response::new(service_reply(&state, &service)))
    }

    async fn update_service(
        &self,
        request: Request<proto::UpdateServiceRequest>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        let request = request.into_inner();
        let new_spec = if request.rollback {
            None
        } else {
            Some(
                request
                    .spec()
                    .map_err(|e| invalid_spec(&e))?
                    .ok_or_else(|| Status::invalid_argument("an update needs a spec"))?,
            )
        };
        let (id, spec, expected_version) = {
            let state = self.manager.read()?;
            let id = state.resolve_service(&request.name).map_err(state_status)?;
            let current = state.service(id).map_err(state_status)?;
            // The state machine checks the version the update was based on: a
            // rollback is based on what was read here.
            let expected_version = if request.rollback {
                Some(current.spec_version)
            } else {
                (request.expected_version != 0).then_some(request.expected_version)
            };
            let spec = match new_spec {
                Some(spec) => spec,
                None => current.previous_spec.clone().ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "service {} does not have a previous spec",
                        current.spec.name
                    ))
                })?,
            };
            (id, spec, expected_version)
        };
        let service = expect_service(
            self.manager
                .commit(Command::UpdateService {
                    id,
                    spec,
                    rollback: request.rollback,
                    expected_version,
                    at_ms: now_ms(),
                })
                .await?,
        )?;
        let state = self.manager.read_unchecked();
        Ok(Response::new(service_reply(&state, &service)))
    }

    async fn remove_service(
        &self,
        request: Request<proto::ServiceRef>,
    ) -> Result<Response<proto::RemoveServiceResponse>, Status> {
        let id = self
            .manager
            .read()?
            .resolve_service(&request.get_ref().name)
            .map_err(state_status)?;
        self.manager
            .commit(Command::RemoveService {
                id,
                at_ms: now_ms(),
            })
            .await?;
        Ok(Response::new(proto::RemoveServiceResponse {
            id: format_id(id),
        }))
    }

    async fn inspect_service(
        &self,
        request: Request<proto::ServiceRef>,
    ) -> Result<Response<proto::ServiceReply>, Status> {
        let state = self.manager.read()?;
        let id = state
            .resolve_service(&request.get_ref().name)
            .map_err(state_status)?;
        let service = state.service(id).map_err(state_status)?;
        Ok(Response::new(service_reply(&state, service)))
    }

    async fn list_services(
        &self,
        _request: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::ListServicesResponse>, Status> {
        let state = self.manager.read()?;
        let services = state
            .services
            .values()
            .map(|s| service_reply(&state, s))
            .collect();
        Ok(Response::new(proto::ListServicesResponse { services }))
    }

    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let request = request.into_inner();
        let state = self.manager.read()?;
        let service = match request.service.trim() {
            "" => None,
            name => Some(state.resolve_service(name).map_err(state_status)?),
        };
        let node = match request.node.trim() {
            "" => None,
            name => Some(state.resolve(name).map_err(state_status)?),
        };
        let tasks = state
            .tasks
            .values()
            .filter(|t| service.is_none_or(|s| t.service == s))
            .filter(|t| node.is_none_or(|n| t.node == Some(n)))
            .map(|t| task_info(&state, t))
            .collect();
        Ok(Response::new(proto::ListTasksResponse { tasks }))
    }

    async fn service_logs(
        &self,
        request: Request<proto::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        super::logs::service_logs(&self.manager, request.into_inner()).await
    }

    async fn create_network(
        &self,
        request: Request<proto::CreateNetworkRequest>,
    ) -> Result<Response<proto::NetworkReply>, Status> {
        let spec = request
            .get_ref()
            .spec()
            .map_err(|e| Status::invalid_argument(format!("invalid network spec: {}", e.source)))?;
        self.manager.require_quorum()?;
        let network = expect_network(
            self.manager
                .commit(Command::CreateNetwork {
                    spec,
                    at_ms: now_ms(),
                })
                .await?,
        )?;
        let state = self.manager.read_unchecked();
        Ok(Response::new(network_reply(&state, network.id)?))
    }

    async fn list_networks(
        &self,
        _request: Request<proto::ListNetworksRequest>,
    ) -> Result<Response<proto::ListNetworksResponse>, Status> {
        let state = self.manager.read()?;
        let networks = network_info::all(&state)
            .iter()
            .map(proto::NetworkReply::new)
            .collect();
        Ok(Response::new(proto::ListNetworksResponse { networks }))
    }

    async fn inspect_network(
        &self,
        request: Request<proto::NetworkRef>,
    ) -> Result<Response<proto::NetworkReply>, Status> {
        let state = self.manager.read()?;
        let id = state
            .resolve_network(&request.get_ref().name)
            .map_err(state_status)?;
        Ok(Response::new(network_reply(&state, id)?))
    }

    async fn remove_network(
        &self,
        request: Request<proto::NetworkRef>,
    ) -> Result<Response<proto::RemoveNetworkResponse>, Status> {
        let (id, name) = {
            let state = self.manager.read()?;
            let id = state
                .resolve_network(&request.get_ref().name)
                .map_err(state_status)?;
            if id == mesh_api::network::INGRESS_ID {
                return Err(Status::failed_precondition(
                    "ingress is a pre-defined network and cannot be removed",
                ));
            }
            (id, state.network_name(id))
        };
        self.manager.commit(Command::RemoveNetwork { id }).await?;
        Ok(Response::new(proto::RemoveNetworkResponse {
            id: format_id(id),
            name,
        }))
    }

    async fn prune_networks(
        &self,
        _request: Request<proto::PruneNetworksRequest>,
    ) -> Result<Response<proto::PruneNetworksResponse>, Status> {
        self.manager.require_quorum()?;
        let unused: Vec<(mesh_api::network::NetworkId, String)> = {
            let state = self.manager.read()?;
            let mut unused: Vec<_> = state
                .networks
                .values()
                .filter(|n| state.network_user(n.id).is_none())
                .map(|n| (n.id, n.spec.name.clone()))
                .collect();
            unused.sort_by(|a, b| a.1.cmp(&b.1));
            unused
        };
        let mut removed = Vec::with_capacity(unused.len());
        for (id, name) in unused {
            // A network a service joined since it was read stays: the state machine
            // refuses its removal, and prune moves on.
            match self.manager.commit(Command::RemoveNetwork { id }).await {
                Ok(_) => removed.push(name),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::NotFound
                    ) => {}
                Err(status) => return Err(status),
            }
        }
        Ok(Response::new(proto::PruneNetworksResponse { removed }))
    }

    async fn create_file(
        &self,
        request: Request<proto::CreateFileRequest>,
    ) -> Result<Response<proto::FileReply>, Status> {
        let request = request.into_inner();
        let kind = file_kind(&request.kind)?;
        let spec = request
            .spec()
            .map_err(|e| Status::invalid_argument(format!("invalid {kind} spec: {}", e.source)))?;
        self.manager.require_quorum()?;
        let applied = self
            .manager
            .commit(Command::CreateFile {
                kind,
                spec,
                data: request.data.into(),
                at_ms: now_ms(),
            })
            .await?;
        match applied {
            Applied::File(info) => Ok(Response::new(proto::FileReply::new(&info))),
            _ => Err(Status::internal(
                "the state machine returned no secret or config",
            )),
        }
    }

    async fn list_files(
        &self,
        request: Request<proto::ListFilesRequest>,
    ) -> Result<Response<proto::ListFilesResponse>, Status> {
        let kind = file_kind(&request.get_ref().kind)?;
        let state = self.manager.read()?;
        let files = state
            .file_infos(kind)
            .iter()
            .map(proto::FileReply::new)
            .collect();
        Ok(Response::new(proto::ListFilesResponse { files }))
    }

    async fn inspect_file(
        &self,
        request: Request<proto::FileName>,
    ) -> Result<Response<proto::FileReply>, Status> {
        let kind = file_kind(&request.get_ref().kind)?;
        let state = self.manager.read()?;
        let id = state
            .resolve_file(kind, &request.get_ref().name)
            .map_err(state_status)?;
        let info = state.files(kind)[&id].info(kind);
        Ok(Response::new(proto::FileReply::new(&info)))
    }

    async fn remove_file(
        &self,
        request: Request<proto::FileName>,
    ) -> Result<Response<proto::RemoveFileResponse>, Status> {
        let kind = file_kind(&request.get_ref().kind)?;
        let (id, name) = {
            let state = self.manager.read()?;
            let id = state
                .resolve_file(kind, &request.get_ref().name)
                .map_err(state_status)?;
            (id, state.files(kind)[&id].spec.name.clone())
        };
        self.manager
            .commit(Command::RemoveFile { kind, id })
            .await?;
        Ok(Response::new(proto::RemoveFileResponse {
            id: format_id(id),
            name,
        }))
    }

    async fn deploy_stack(
        &self,
        request: Request<proto::DeployStackRequest>,
    ) -> Result<Response<proto::DeployStackReply>, Status> {
        let deploy = request
            .get_ref()
            .deploy()
            .map_err(|e| Status::invalid_argument(format!("invalid stack deploy: {}", e.source)))?;
        self.manager.require_quorum()?;
        let applied = self
            .manager
            .commit(Command::DeployStack {
                deploy,
                at_ms: now_ms(),
            })
            .await?;
        match applied {
            Applied::Stack(deployed) => Ok(Response::new(proto::DeployStackReply::new(&deployed))),
            _ => Err(Status::internal(
                "the state machine returned no stack deploy",
            )),
        }
    }

    async fn info(
        &self,
        _request: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        let metrics = self.manager.raft().metrics();
        let state = self.manager.read_unchecked();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let managers = membership
            .nodes()
            .map(|(id, node)| proto::ManagerInfo {
                node_id: format_id(*id),
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader = crate::raft::current_leader(self.manager.id(), &metrics);
        let leader_addr = leader
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(proto::InfoResponse {
            cluster_id: state.cluster_id.clone(),
            node_id: format_id(self.manager.id()),
            leader_id: leader.map(format_id).unwrap_or_default(),
            leader_addr,
            term: metrics.current_term,
            commit_index: self.manager.raft().committed_index(),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            managers,
            is_leader: leader == Some(self.manager.id()),
        }))
    }

    async fn join_tokens(
        &self,
        request: Request<proto::JoinTokensRequest>,
    ) -> Result<Response<proto::JoinTokensResponse>, Status> {
        let request = request.into_inner();
        self.manager.require_quorum()?;
        for (rotate, role) in [
            (request.rotate_worker, Role::Worker),
            (request.rotate_manager, Role::Manager),
        ] {
            if rotate {
                self.manager
                    .commit(Command::RotateSecret {
                        role,
                        secret: pki::generate_secret(),
                    })
                    .await?;
            }
        }
        let state = self.manager.read_unchecked();
        let digest = ca_digest(cluster_ca(&state)?)?;
        let token = |role: Role| {
            pki::JoinToken {
                ca_digest: digest.clone(),
                secret: state.secrets.for_role(role).to_string(),
            }
            .to_string()
        };
        Ok(Response::new(proto::JoinTokensResponse {
            worker: token(Role::Worker),
            manager: token(Role::Manager),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        self.manager.require_quorum()?;
        if let Some(mut leader) = self.leader_for_read(&request).await {
            match leader.list_nodes(forwarded(request.into_inner())).await {
                Ok(response) => return Ok(response),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "answering node ls locally");
                }
            }
        }
        let view = self.manager.raft().manager_view();
        let state = self.manager.read()?;
        let nodes = state.nodes.values().map(|n| node_info(n, &view)).collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn inspect_node(
        &self,
        request: Request<proto::NodeRef>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        self.manager.require_quorum()?;
        if let Some(mut leader) = self.leader_for_read(&request).await {
            match leader
                .inspect_node(forwarded(request.get_ref().clone()))
                .await
            {
                Ok(response) => return Ok(response),
                // The leader's answer to a name it does not know is final.
                Err(status) if status.code() == tonic::Code::NotFound => return Err(status),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "answering node inspect locally");
                }
            }
        }
        let state = self.manager.read()?;
        let id = state
            .resolve(&request.get_ref().name)
            .map_err(state_status)?;
        let node = state.node(id).map_err(state_status)?;
        Ok(Response::new(self.node_info(node)))
    }

    async fn update_node(
        &self,
        request: Request<proto::UpdateNodeRequest>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        let request = request.into_inner();
        // Parse everything before touching the state.
        let availability = match request.availability.as_str() {
            "" => None,
            value => Some(value.parse::<Availability>().map_err(state_status)?),
        };
        let label_add = request
            .label_add
            .iter()
            .map(|spec| parse_label(spec))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(state_status)?;
        let id = self
            .manager
            .read()?
            .resolve(&request.name)
            .map_err(state_status)?;
        let node = expect_node(
            self.manager
                .commit(Command::UpdateNode {
                    id,
                    availability,
                    label_add,
                    label_rm: request.label_rm,
                    at_ms: now_ms(),
                })
                .await?,
        )?;
        Ok(Response::new(self.node_info(&node)))
    }

    async fn promote_node(
        &self,
        request: Request<proto::NodeRef>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        self.set_role(&request.get_ref().name, Role::Manager)
            .await
            .map(Response::new)
    }

    async fn demote_node(
        &self,
        request: Request<proto::NodeRef>,
    ) -> Result<Response<proto::NodeInfo>, Status> {
        self.set_role(&request.get_ref().name, Role::Worker)
            .await
            .map(Response::new)
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        let request = request.into_inner();
        let id = {
            let state = self.manager.read()?;
            let id = state.resolve(&request.name).map_err(state_status)?;
            state
                .check_remove(id, request.force)
                .map_err(state_status)?;
            id
        };
        self.manager
            .commit(Command::RemoveNode {
                id,
                force: request.force,
            })
            .await?;
        if let Some(live) = self.manager.liveness().as_mut() {
            live.forget(id);
        }
        Ok(Response::new(proto::RemoveNodeResponse {
            id: format_id(id),
        }))
    }

    async fn leave(
        &self,
        request: Request<proto::LeaveRequest>,
    ) -> Result<Response<proto::LeaveResponse>, Status> {
        let id = self.manager.id();
        {
            let state = self.manager.read()?;
            if state.managers().count() <= 1 {
                return Err(Status::failed_precondition(
                    "this is the last manager: leaving would destroy the cluster; \
                     stop the manager instead",
                ));
            }
            if !request.get_ref().force {
                return Err(Status::failed_precondition(
                    "this node is a manager: leaving reduces the cluster's fault tolerance; \
                     use --force to leave anyway",
                ));
            }
        }
        self.set_role(&format_id(id), Role::Worker).await?;
        self.manager
            .commit(Command::RemoveNode { id, force: true })
            .await?;
        self.manager.request_stop();
        Ok(Response::new(proto::LeaveResponse {}))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_api::cluster::{CaMaterial, JoinSecrets};
    use mesh_api::node::NodeStatus;
    use mesh_api::spec::{RuntimeKind, ServiceMode, ServiceSpec};
    use mesh_api::task::TaskStatus;
    use mesh_core::state::{NewTask, TaskChange};

    /// A bootstrapped state of one ready manager node, `0xaa`.
    pub(crate) fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        let mut first = Node::new(0xaa, "m1".into(), Role::Manager, 0);
        first.status = NodeStatus::Ready;
        first.data_addr = Some("192.168.1.1".parse().unwrap());
        state
            .apply(&Command::Bootstrap {
                cluster_id: "c".into(),
                ca: CaMaterial {
                    cert_pem: String::new(),
                    key_pem: String::new(),
                },
                secrets: JoinSecrets::default(),
                first,
            })
            .unwrap();
        state
    }

    fn create(state: &mut ClusterState, spec: ServiceSpec) -> Service {
        expect_service(
            state
                .apply(&Command::CreateService { spec, at_ms: 1 })
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn counts_are_running_tasks_and_replicas_or_eligible_nodes() {
        let mut state = cluster();
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/sleep", vec![]);
        spec.mode = ServiceMode::Replicated { replicas: 3 };
        let web = create(&mut state, spec);
        let Applied::Tasks(ids) = state
            .apply(&Command::ChangeTasks {
                create: (1..=2)
                    .map(|slot| NewTask {
                        service: web.id,
                        slot,
                        node: Some(0xaa),
                        message: String::new(),
                    })
                    .collect(),
                update: vec![],
                delete: vec![],
                at_ms: 2,
            })
            .unwrap()
        else {
            panic!("expected tasks");
        };
        state
            .apply(&Command::ReportTasks {
                node: 0xaa,
                reports: vec![(ids[0], TaskStatus::new(TaskState::Running, "started", 3))],
            })
            .unwrap();
        assert_eq!(task_counts(&state, &web), (1, 3));
        // A running task told to stop no longer counts.
        state
            .apply(&Command::ChangeTasks {
                create: vec![],
                update: vec![TaskChange {
                    id: ids[0],
                    desired: Some(DesiredState::Shutdown),
                    ..TaskChange::default()
                }],
                delete: vec![],
                at_ms: 4,
            })
            .unwrap();
        assert_eq!(task_counts(&state, &web), (0, 3));

        let mut spec = ServiceSpec::new("agent", RuntimeKind::Process, "/bin/true", vec![]);
        spec.mode = ServiceMode::Global;
        let global = create(&mut state, spec);
        assert_eq!(task_counts(&state, &global), (0, 1), "one eligible node");

        let info = task_info(&state, &state.tasks[&ids[1]]);
        assert_eq!(
            (
                info.name.as_str(),
                info.service_name.as_str(),
                info.node_hostname.as_str()
            ),
            ("web.2", "web", "m1")
        );
    }

    #[test]
    fn updates_against_a_stale_version_are_refused() {
        let mut state = cluster();
        let web = create(
            &mut state,
            ServiceSpec::new("web", RuntimeKind::Process, "/bin/sleep", vec![]),
        );
        let update = |expected_version| Command::UpdateService {
            id: web.id,
            spec: web.spec.clone(),
            rollback: false,
            expected_version,
            at_ms: 2,
        };
        let err = state
            .apply(&update(Some(web.spec_version + 1)))
            .unwrap_err();
        let err = state_status(err);
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        state.apply(&update(Some(web.spec_version))).unwrap();
        state.apply(&update(None)).unwrap();
        assert!(err.message().contains("update out of sequence"), "{err}");
    }

    #[test]
    fn a_malformed_spec_is_an_invalid_argument_with_serdes_reason() {
        let request = proto::CreateServiceRequest {
            spec_json: b"{\"name\": 3}".to_vec(),
        };
        let err = invalid_spec(&request.spec().unwrap_err());
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("invalid service spec: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn manager_status_is_rafts_not_the_heartbeats() {
        use std::collections::{BTreeMap, BTreeSet};
        use std::time::Duration;
        let view = ManagerView {
            this: 1,
            leader: Some(1),
            voters: BTreeSet::from([1, 2]),
            last_contact: Some(BTreeMap::from([(2, Duration::from_millis(100))])),
            stale_after: Duration::from_secs(2),
        };
        let node = |id, role, status| {
            let mut n = Node::new(id, format!("n{id}"), role, 0);
            n.status = status;
            n
        };
        let status = |n: &Node| node_info(n, &view).manager_status;
        assert_eq!(status(&node(1, Role::Manager, NodeStatus::Ready)), "Leader");
        // Its node is down (no session), but Raft hears from it.
        assert_eq!(
            status(&node(2, Role::Manager, NodeStatus::Down)),
            "Reachable"
        );
        // Promoted, its agent's heartbeats keep it ready, but no manager runs.
        assert_eq!(
            status(&node(3, Role::Manager, NodeStatus::Ready)),
            "Unreachable"
        );
        assert_eq!(status(&node(4, Role::Worker, NodeStatus::Ready)), "");
    }
}
