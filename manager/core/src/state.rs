//! The replicated cluster state and the commands that change it.
//!
//! This is the Raft state machine's pure core: [`ClusterState::apply`] is a
//! deterministic function of the state and a [`Command`]. Every replica
//! applies the same commands in the same order and reaches the same state;
//! a command that fails validation returns a [`StateError`] and changes
//! nothing. Time enters only through the commands (the leader stamps them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use mesh_api::cluster::{CaMaterial, JoinSecrets};
use mesh_api::file::{FileData, FileId, FileInfo, FileSpec, StoredFile};
use mesh_api::file_ref::FileKind;
use mesh_api::network::{
    INGRESS_ID, INGRESS_NAME, IngressNetwork, Network, NetworkAddr, NetworkId, NetworkSpec,
    PREDEFINED_NAMES,
};
use mesh_api::node::{Availability, Node, NodeId, NodeStatus, ParseError, Role, format_id};

use crate::allocation::{self, Allocations};
use crate::allocator::{self, AllocError, PublishedPort};
use crate::capacity;
use crate::ipam::{self, TakenSubnet};
use crate::journal::{self, Journal, Touch};
use mesh_api::service::{Service, ServiceEndpoint, ServiceId, UpdateState, UpdateStatus};
use mesh_api::spec::{EndpointMode, RuntimeKind, ServiceSpec, TaskSpec};
use mesh_api::task::{DesiredState, Task, TaskId, TaskState, TaskStatus};

/// The state every manager reads and the state machine writes.
pub type SharedState = Arc<RwLock<ClusterState>>;

/// Everything the managers replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by the bootstrap command; empty before.
    pub cluster_id: String,
    /// The cluster CA; `None` before bootstrap.
    pub ca: Option<CaMaterial>,
    /// Current join-token secrets.
    pub secrets: JoinSecrets,
    /// Members, by ID.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Nodes removed from the cluster; their certificates are refused.
    pub removed: BTreeSet<NodeId>,
    /// The ingress network and its allocation cursor.
    #[serde(default)]
    pub ingress: IngressNetwork,
    /// The user's overlay networks, by ID (the ingress network is [`Self::ingress`]).
    #[serde(default)]
    pub networks: BTreeMap<NetworkId, Network>,
    /// Secrets, by ID (see [`crate::files`]).
    #[serde(default)]
    pub stored_secrets: BTreeMap<FileId, StoredFile>,
    /// Configs, by ID.
    #[serde(default)]
    pub stored_configs: BTreeMap<FileId, StoredFile>,
    /// Services, by ID.
    #[serde(default)]
    pub services: BTreeMap<ServiceId, Service>,
    /// Tasks (live ones and history), by ID.
    #[serde(default)]
    pub tasks: BTreeMap<TaskId, Task>,
    /// Bumped by every applied command: assignments carry it, and agents
    /// report the version they applied.
    #[serde(default)]
    pub version: u64,
    /// Counter behind service and task IDs.
    #[serde(default)]
    pub next_id: u64,
    /// What the commands this copy applied touched (not replicated: see
    /// [`crate::journal`]).
    #[serde(skip)]
    pub journal: Journal,
}

/// A task to create (by the orchestrators).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Its service; the task runs the service's current task spec.
    pub service: ServiceId,
    /// Its slot (0 for global).
    pub slot: u32,
    /// Where it runs; `None` leaves it pending.
    pub node: Option<NodeId>,
    /// Why it is pending, when it is.
    pub message: String,
}

/// A change to an existing task (by the leader's loops).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChange {
    /// Which task.
    pub id: TaskId,
    /// Assigns it to a node (a pending task).
    pub node: Option<NodeId>,
    /// A new desired state.
    pub desired: Option<DesiredState>,
    /// A status set by the leader (pending, orphaned, rejected).
    pub status: Option<TaskStatus>,
}

/// A change to the cluster state, as committed to the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster.
    Bootstrap {
        /// New cluster's ID.
        cluster_id: String,
        /// The CA the first manager generated.
        ca: CaMaterial,
        /// Initial join-token secrets.
        secrets: JoinSecrets,
        /// The first manager's node.
        first: Node,
    },
    /// Replaces one role's join-token secret; the old token stops working.
    RotateSecret {
        /// Which token.
        role: Role,
        /// Its new secret.
        secret: String,
    },
    /// A node joined.
    AddNode {
        /// The new node.
        node: Node,
    },
    /// Operator changes to availability and labels.
    UpdateNode {
        /// Which node.
        id: NodeId,
        /// New availability, if any.
        availability: Option<Availability>,
        /// Labels to set.
        label_add: BTreeMap<String, String>,
        /// Label keys to remove.
        label_rm: Vec<String>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Promotion or demotion.
    SetRole {
        /// Which node.
        id: NodeId,
        /// The new role.
        role: Role,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Records where a manager's API listens.
    SetManagerAddr {
        /// Which node.
        id: NodeId,
        /// Its API address, `None` when it stops being a manager.
        addr: Option<String>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// The dispatcher saw a session start or heartbeats stop.
    SetStatus {
        /// Which node.
        id: NodeId,
        /// New liveness.
        status: NodeStatus,
        /// Agent version reported by the session (kept if empty).
        agent_version: String,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Removes a node; its certificate stops working.
    RemoveNode {
        /// Which node.
        id: NodeId,
        /// Remove even if it is not down.
        force: bool,
    },
    /// Records (or clears) where a node's agent dataplane is, and the
    /// runtimes its agent can run tasks of.
    SetDataAddr {
        /// Which node.
        id: NodeId,
        /// Its underlay address.
        addr: Option<Ipv4Addr>,
        /// The runtimes its agent reported (empty in entries logged before
        /// agents reported them: the node then counts as process-only, see
        /// [`Node::runs`]).
        #[serde(default)]
        runtimes: BTreeSet<RuntimeKind>,
        /// The CPUs and memory its agent reported (zero in entries logged before
        /// agents reported them).
        #[serde(default)]
        resources: mesh_api::resources::Resources,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Records whether a node's agent can program its dataplane: `error` is
    /// why it cannot (the scheduler then places no new task there), `None`
    /// once it can again.
    SetDataplane {
        /// Which node.
        id: NodeId,
        /// What the agent reported.
        error: Option<String>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// A new service (`meshctl service create`).
    CreateService {
        /// What the user asked for.
        spec: ServiceSpec,
        /// Leader's clock.
        at_ms: u64,
    },
    /// A new spec for a service (update, scale, publish, rollback).
    UpdateService {
        /// Which service.
        id: ServiceId,
        /// The new spec.
        spec: ServiceSpec,
        /// A rollback: `spec` is the previous spec.
        rollback: bool,
        /// The `spec_version` the writer based the new spec on: the update is
        /// refused if the service changed since (`None`: no check).
        #[serde(default)]
        expected_version: Option<u64>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Removes a service; its tasks are stopped and forgotten.
    RemoveService {
        /// Which service.
        id: ServiceId,
        /// Leader's clock.
        at_ms: u64,
    },
    /// A new overlay network (`meshctl network create`): its subnet, gateway and VNI
    /// are planned by [`crate::ipam`].
    CreateNetwork {
        /// What the user asked for.
        spec: NetworkSpec,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Removes a network no service or live task is attached to.
    RemoveNetwork {
        /// Which network.
        id: NetworkId,
    },
    /// A new secret or config (`meshctl secret create`, `config create`).
    CreateFile {
        /// Secret or config.
        kind: FileKind,
        /// Its name and labels.
        spec: FileSpec,
        /// Its bytes (sealed at rest with the Raft store; never in `Debug`).
        data: FileData,
        /// Leader's clock.
        at_ms: u64,
    },
    /// Removes a secret or config no service or live task references.
    RemoveFile {
        /// Secret or config.
        kind: FileKind,
        /// Which one.
        id: FileId,
    },
    /// A stack's networks, secrets, configs and services, applied all or nothing
    /// (`meshctl stack deploy`; see [`crate::stack`]).
    DeployStack {
        /// What the file describes.
        deploy: mesh_api::stack::StackDeploy,
        /// Leader's clock.
        at_ms: u64,
    },
    /// The updater's progress.
    SetUpdateStatus {
        /// Which service.
        id: ServiceId,
        /// Its update status.
        status: Option<UpdateStatus>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// The leader's loops create, change and forget tasks, all or nothing.
    ChangeTasks {
        /// Tasks to create.
        create: Vec<NewTask>,
        /// Changes to existing tasks.
        update: Vec<TaskChange>,
        /// Task records to forget (history beyond the limit, removed ones).
        delete: Vec<TaskId>,
        /// Leader's clock.
        at_ms: u64,
    },
    /// A node's agent reports its tasks' states. Reports for tasks that are
    /// not on that node, or that would move a task backwards, are ignored.
    ReportTasks {
        /// The reporting node.
        node: NodeId,
        /// Task and status.
        reports: Vec<(TaskId, TaskStatus)>,
    },
    /// Several commands committed as one log entry (the leader's proposer
    /// gathers the writes that arrive while earlier ones are in flight).
    /// Each is applied on its own, in order, exactly as if it had its own
    /// entry: a refused one changes nothing and does not affect the others.
    /// Answers [`Applied::Batch`] with each command's response, in order.
    Batch {
        /// The commands, in the order they are applied.
        commands: Vec<Command>,
    },
}

/// What a successfully applied command returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to return.
    Done,
    /// The node as it is after the command.
    Node(Node),
    /// The service as it is after the command.
    Service(Box<Service>),
    /// The IDs of the tasks created, in order.
    Tasks(Vec<TaskId>),
    /// The network as it is after the command.
    Network(Box<Network>),
    /// The secret or config as the API shows it (a secret without its data).
    File(Box<FileInfo>),
    /// What a stack deploy did to each object.
    Stack(Box<mesh_api::stack::StackDeployed>),
    /// Each command's response to a [`Command::Batch`], in order.
    Batch(Vec<Response>),
}

/// The state machine's answer to a command: every replica computes the same.
pub type Response = Result<Applied, StateError>;

/// Why a command or a lookup was refused. Refused commands change nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    /// No node matches the name.
    #[error("node {0} not found")]
    UnknownNode(String),
    /// A prefix or hostname matched more than one node.
    #[error("node {0} is ambiguous ({1} matches)")]
    AmbiguousNode(String, usize),
    /// Demoting or removing the only manager.
    #[error("node {0} is the last manager of the cluster and can't be demoted")]
    LastManager(String),
    /// Removing a manager that is still a Raft member.
    #[error(
        "node {0} is a cluster manager and is a member of the raft cluster; it must be demoted to worker before removal"
    )]
    ManagerStillMember(String),
    /// Removing a node that is still up.
    #[error("node {0} is not down and can't be removed; use --force to remove it anyway")]
    NodeNotDown(String),
    /// A second bootstrap.
    #[error("the cluster is already initialised")]
    AlreadyBootstrapped,
    /// A command before bootstrap.
    #[error("the cluster is not initialised")]
    NotBootstrapped,
    /// A node ID that is already taken.
    #[error("node {0} already exists")]
    NodeExists(String),
    /// A malformed value.
    #[error("{0}")]
    Invalid(String),
    /// More than every node's dataplane holds ([`crate::capacity`]).
    #[error("{0}")]
    Capacity(String),
    /// No service matches the name.
    #[error("service {0} not found")]
    UnknownService(String),
    /// A prefix matched more than one service.
    #[error("service {0} is ambiguous ({1} matches)")]
    AmbiguousService(String, usize),
    /// A service name that is taken.
    #[error("service {0} already exists")]
    ServiceExists(String),
    /// No task matches the name.
    #[error("task {0} not found")]
    UnknownTask(String),
    /// No network matches the name.
    #[error("network {0} not found")]
    UnknownNetwork(String),
    /// A prefix matched more than one network.
    #[error("network {0} is ambiguous ({1} matches)")]
    AmbiguousNetwork(String, usize),
    /// A network name that is taken (docker's wording).
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    /// Removing a network that a service or a task is attached to (Swarm's wording,
    /// with names).
    #[error("network {network} is in use by {user}")]
    NetworkInUse {
        /// The network's name.
        network: String,
        /// `service api` or `task api.1`.
        user: String,
    },
    /// No secret or config matches the name (docker's wording).
    #[error("{0} not found: {1}")]
    UnknownFile(FileKind, String),
    /// A prefix matched more than one secret or config.
    #[error("{0} {1} is ambiguous ({2} matches)")]
    AmbiguousFile(FileKind, String, usize),
    /// A secret or config name that is taken (swarmkit's wording).
    #[error("{0} {1} already exists")]
    FileExists(FileKind, String),
    /// Removing a secret or config that a service or a live task references
    /// (swarmkit's wording).
    #[error("{kind} '{name}' is in use by the following {user}")]
    FileInUse {
        /// Secret or config.
        kind: FileKind,
        /// Its name.
        name: String,
        /// `service api` or `task api.1`.
        user: String,
    },
    /// A stack deploy refused because of one of its objects (the object named).
    #[error("{object}: {source}")]
    InStack {
        /// `service app_web`, `network app_default`, ...
        object: String,
        /// What was refused.
        source: Box<StateError>,
    },
    /// A stack deploy would take over an object of the same name that belongs to no
    /// stack, or to another.
    #[error(
        "{object} already exists and is not part of stack {namespace}{}",
        owner.as_ref().map_or_else(String::new, |o| format!(" (it is part of stack {o})"))
    )]
    NotInStack {
        /// `service app_web`, ...
        object: String,
        /// The stack it belongs to, if any.
        owner: Option<String>,
        /// The stack being deployed.
        namespace: String,
    },
    /// A stack's secret or config whose file changed: their data is immutable.
    #[error(
        "{kind} {name} already exists with other content, and a {kind} can't change: to \
         rotate it, give it a new name (for example `name: {name}_v2` under the file's \
         top-level {kind}s) and deploy again; its services then roll to the new one, and the \
         old one can be removed once none uses it"
    )]
    FileChanged {
        /// Secret or config.
        kind: FileKind,
        /// Its name.
        name: String,
    },
    /// An external network, secret or config of a stack that does not exist (docker's
    /// words for a network).
    #[error(
        "{0} \"{1}\" is declared as external, but could not be found. You need to create a \
         swarm-scoped {0} before the stack is deployed"
    )]
    MissingExternal(mesh_api::stack::ObjectKind, String),
    /// An update made against a spec that has changed since.
    #[error(
        "update out of sequence: service {service} is at version {version}, the update was \
         made against version {expected}; inspect it again and retry"
    )]
    OutOfSequence {
        /// The service.
        service: String,
        /// Its spec version now.
        version: u64,
        /// The version the update was based on.
        expected: u64,
    },
}

impl From<AllocError> for StateError {
    fn from(err: AllocError) -> Self {
        StateError::Invalid(err.to_string())
    }
}

impl From<ParseError> for StateError {
    fn from(err: ParseError) -> Self {
        StateError::Invalid(err.0)
    }
}

impl ClusterState {
    /// Applies one committed command. Returns the error and leaves the state
    /// unchanged when the command is not valid in this state.
    ///
    /// # Errors
    /// The command's [`StateError`]; see each variant.
    pub fn apply(&mut self, command: &Command) -> Response {
        if let Command::Batch { commands } = command {
            // Never refused as a whole: each command answers for itself
            // (and bumps the version when it is applied).
            return Ok(Applied::Batch(
                commands.iter().map(|c| self.apply(c)).collect(),
            ));
        }
        let touch = journal::touch_before(self, command);
        let applied = self.apply_command(command)?;
        let touch = match (command, &applied) {
            // A new service's ID is known once it is applied.
            (Command::CreateService { .. }, Applied::Service(service)) => Touch {
                services: BTreeSet::from([service.id]),
                ..Touch::default()
            },
            _ => touch,
        };
        self.version += 1;
        self.journal.record(self.version, touch);
        Ok(applied)
    }

    fn apply_command(&mut self, command: &Command) -> Response {
        if !matches!(command, Command::Bootstrap { .. }) && self.ca.is_none() {
            return Err(StateError::NotBootstrapped);
        }
        match command {
            Command::Bootstrap {
                cluster_id,
                ca,
                secrets,
                first,
            } => {
                if self.ca.is_some() {
                    return Err(StateError::AlreadyBootstrapped);
                }
                self.cluster_id.clone_from(cluster_id);
                self.ca = Some(ca.clone());
                self.secrets = secrets.clone();
                self.nodes.insert(first.id, first.clone());
                Ok(Applied::Node(first.clone()))
            }
            Command::RotateSecret { role, secret } => {
                match role {
                    Role::Worker => self.secrets.worker.clone_from(secret),
                    Role::Manager => self.secrets.manager.clone_from(secret),
                }
                Ok(Applied::Done)
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) || self.removed.contains(&node.id) {
                    return Err(StateError::NodeExists(format_id(node.id)));
                }
                self.nodes.insert(node.id, node.clone());
                Ok(Applied::Node(node.clone()))
            }
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                at_ms,
            } => {
                for key in label_add.keys().chain(label_rm) {
                    mesh_api::node::validate_label_key(key)?;
                }
                let node = self.node_mut(*id)?;
                if let Some(availability) = availability {
                    node.availability = *availability;
                }
                for key in label_rm {
                    node.labels.remove(key);
                }
                node.labels
                    .extend(label_add.iter().map(|(k, v)| (k.clone(), v.clone())));
                node.updated_at_ms = *at_ms;
                Ok(Applied::Node(node.clone()))
            }
            Command::SetRole { id, role, at_ms } => {
                self.check_role_change(*id, *role)?;
                let node = self.node_mut(*id)?;
                node.role = *role;
                if *role == Role::Worker {
                    // A worker runs no manager API.
                    node.manager_addr = None;
                }
                node.updated_at_ms = *at_ms;
                Ok(Applied::Node(node.clone()))
            }
            Command::SetManagerAddr { id, addr, at_ms } => {
                let node = self.node_mut(*id)?;
                // A manager that records its address as it is demoted (the
                // command decided before the demotion, applied after) must
                // not leave a worker with one.
                if addr.is_some() && node.role != Role::Manager {
                    return Err(StateError::Invalid(format!(
                        "node {} is not a manager: it has no manager address",
                        format_id(*id)
                    )));
                }
                node.manager_addr.clone_from(addr);
                node.updated_at_ms = *at_ms;
                Ok(Applied::Node(node.clone()))
            }
            Command::SetStatus {
                id,
                status,
                agent_version,
                at_ms,
            } => {
                let node = self.node_mut(*id)?;
                node.status = *status;
                if !agent_version.is_empty() {
                    node.agent_version.clone_from(agent_version);
                }
                node.updated_at_ms = *at_ms;
                Ok(Applied::Node(node.clone()))
            }
            Command::RemoveNode { id, force } => {
                self.check_remove(*id, *force)?;
                self.nodes.remove(id);
                self.removed.insert(*id);
                Ok(Applied::Done)
            }
            Command::SetDataAddr {
                id,
                addr,
                runtimes,
                resources,
                at_ms,
            } => {
                let node = self.node_mut(*id)?;
                if node.data_addr != *addr
                    || node.runtimes != *runtimes
                    || node.resources != *resources
                {
                    node.data_addr = *addr;
                    node.runtimes.clone_from(runtimes);
                    node.resources = *resources;
                    node.updated_at_ms = *at_ms;
                }
                Ok(Applied::Done)
            }
            Command::SetDataplane { id, error, at_ms } => {
                let node = self.node_mut(*id)?;
                if node.dataplane_error != *error {
                    node.dataplane_error.clone_from(error);
                    node.updated_at_ms = *at_ms;
                }
                Ok(Applied::Node(node.clone()))
            }
            Command::CreateService { spec, at_ms } => self.create_service(spec, *at_ms),
            Command::UpdateService {
                id,
                spec,
                rollback,
                expected_version,
                at_ms,
            } => self.update_service(*id, spec, *rollback, *expected_version, *at_ms),
            Command::RemoveService { id, at_ms: _ } => self.remove_service(*id),
            Command::CreateNetwork { spec, at_ms } => self.create_network(spec, *at_ms),
            Command::RemoveNetwork { id } => {
                let network = self.network(*id)?;
                if let Some(user) = self.network_user(*id) {
                    return Err(StateError::NetworkInUse {
                        network: network.spec.name.clone(),
                        user,
                    });
                }
                self.networks.remove(id);
                Ok(Applied::Done)
            }
            Command::CreateFile {
                kind,
                spec,
                data,
                at_ms,
            } => self.create_file(*kind, spec, data, *at_ms),
            Command::RemoveFile { kind, id } => self.remove_file(*kind, *id),
            Command::DeployStack { deploy, at_ms } => self.deploy_stack(deploy, *at_ms),
            Command::SetUpdateStatus { id, status, at_ms } => {
                let service = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| StateError::UnknownService(format_id(*id)))?;
                service.update_status.clone_from(status);
                service.updated_at_ms = *at_ms;
                Ok(Applied::Service(Box::new(service.clone())))
            }
            Command::ChangeTasks {
                create,
                update,
                delete,
                at_ms,
            } => self.change_tasks(create, update, delete, *at_ms),
            Command::ReportTasks { node, reports } => {
                for (id, status) in reports {
                    let Some(task) = self.tasks.get_mut(id) else {
                        continue;
                    };
                    if task.node != Some(*node) || status.state < task.status.state {
                        continue;
                    }
                    task.status.clone_from(status);
                }
                Ok(Applied::Done)
            }
            // `apply` answers batches before they get here.
            Command::Batch { commands } => Ok(Applied::Batch(
                commands.iter().map(|c| self.apply(c)).collect(),
            )),
        }
    }

    /// A fresh service, task or network ID: deterministic (every replica computes the
    /// same), but spread over the whole range like a random one.
    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        allocation::fresh_id(&self.cluster_id, self.next_id)
    }

    pub(crate) fn create_service(&mut self, spec: &ServiceSpec, at_ms: u64) -> Response {
        spec.validate()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if self.services.values().any(|s| s.spec.name == spec.name) {
            return Err(StateError::ServiceExists(spec.name.clone()));
        }
        let spec = &self.resolve_attachments(spec)?;
        self.check_file_refs(spec)?;
        let ports =
            allocator::allocate_ports(&self.published_ports(None), &spec.endpoint.ports, &[])?;
        // Allocate on copies of the cursors: a refusal changes nothing.
        let mut allocations = Allocations::new(self);
        let (vip, vips) = self.allocate_vips(&mut allocations, spec, None)?;
        let id = allocations.fresh_id(self);
        let service = Service {
            id,
            spec: spec.clone(),
            previous_spec: None,
            spec_version: 1,
            endpoint: ServiceEndpoint { vip, ports, vips },
            update_status: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
        };
        capacity::check(
            self.services.values().chain([&service]),
            self.nodes.len(),
            &service,
        )
        .map_err(|e| StateError::Capacity(e.to_string()))?;
        allocations.commit(self);
        self.services.insert(id, service.clone());
        Ok(Applied::Service(Box::new(service)))
    }

    pub(crate) fn update_service(
        &mut self,
        id: ServiceId,
        spec: &ServiceSpec,
        rollback: bool,
        expected_version: Option<u64>,
        at_ms: u64,
    ) -> Response {
        spec.validate()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let current = self.service(id)?.clone();
        if let Some(expected) = expected_version
            && expected != current.spec_version
        {
            return Err(StateError::OutOfSequence {
                service: current.spec.name,
                version: current.spec_version,
                expected,
            });
        }
        if spec.name != current.spec.name {
            return Err(StateError::Invalid(format!(
                "service {} can't be renamed",
                current.spec.name
            )));
        }
        let spec = &self.resolve_attachments(spec)?;
        self.check_file_refs(spec)?;
        let ports = allocator::allocate_ports(
            &self.published_ports(Some(id)),
            &spec.endpoint.ports,
            &current.endpoint.ports,
        )?;
        let mut allocations = Allocations::new(self);
        let (vip, vips) = self.allocate_vips(&mut allocations, spec, Some(&current.endpoint))?;
        let tasks_change = spec.task != current.spec.task;
        let mut service = current.clone();
        service.previous_spec = Some(current.spec.clone());
        service.spec = spec.clone();
        service.spec_version += 1;
        service.endpoint = ServiceEndpoint { vip, ports, vips };
        service.updated_at_ms = at_ms;
        if tasks_change {
            service.update_status = Some(UpdateStatus {
                state: if rollback {
                    UpdateState::RollbackStarted
                } else {
                    UpdateState::Updating
                },
                started_at_ms: at_ms,
                completed_at_ms: None,
                message: if rollback {
                    "rollback started".into()
                } else {
                    "update in progress".into()
                },
            });
        }
        capacity::check(
            self.services
                .values()
                .filter(|s| s.id != id)
                .chain([&service]),
            self.nodes.len(),
            &service,
        )
        .map_err(|e| StateError::Capacity(e.to_string()))?;
        allocations.commit(self);
        self.services.insert(id, service.clone());
        Ok(Applied::Service(Box::new(service)))
    }

    /// Removes a service; its tasks are told to stop and are forgotten once they have.
    pub(crate) fn remove_service(&mut self, id: ServiceId) -> Response {
        self.service(id)?;
        self.services.remove(&id);
        let version = self.version + 1;
        for task in self.tasks.values_mut().filter(|t| t.service == id) {
            task.desired = DesiredState::Remove;
            task.desired_version = version;
        }
        Ok(Applied::Done)
    }

    /// `spec` with each network attachment's target resolved (a name, an ID or a unique
    /// ID prefix, as docker resolves them) to the network's ID in 16 hex digits, so that
    /// a renamed or recreated network never captures the service by name.
    ///
    /// # Errors
    /// [`StateError::UnknownNetwork`] or [`StateError::AmbiguousNetwork`]; attaching to
    /// `ingress` explicitly is refused, as Swarm does.
    pub(crate) fn resolve_attachments(
        &self,
        spec: &ServiceSpec,
    ) -> Result<ServiceSpec, StateError> {
        let mut spec = spec.clone();
        for attachment in &mut spec.task.networks {
            let id = self.resolve_network(&attachment.target)?;
            if id == INGRESS_ID {
                return Err(StateError::Invalid(format!(
                    "service cannot be explicitly attached to the ingress network \"{INGRESS_NAME}\""
                )));
            }
            attachment.target = format_id(id);
        }
        let networks = &spec.task.networks;
        for (i, a) in networks.iter().enumerate() {
            if networks[..i].iter().any(|b| b.target == a.target) {
                return Err(StateError::Invalid(format!(
                    "network {} is given twice",
                    self.network_name(parse_network_id(&a.target)?)
                )));
            }
        }
        Ok(spec)
    }

    /// The VIPs a service with (resolved) `spec` has: on ingress when it joins no user
    /// network, one on each network it joins otherwise; none in `dnsrr` mode. An update
    /// (`current`) keeps the VIPs it had on the networks it stays on.
    fn allocate_vips(
        &self,
        allocations: &mut Allocations,
        spec: &ServiceSpec,
        current: Option<&ServiceEndpoint>,
    ) -> Result<(Option<Ipv4Addr>, Vec<NetworkAddr>), StateError> {
        if spec.endpoint.mode == EndpointMode::Dnsrr {
            return Ok((None, Vec::new()));
        }
        if spec.task.networks.is_empty() {
            let vip = match current.and_then(|c| c.vip) {
                Some(vip) => vip,
                None => allocations.addr(self)?,
            };
            return Ok((Some(vip), Vec::new()));
        }
        let mut vips = Vec::with_capacity(spec.task.networks.len());
        for attachment in &spec.task.networks {
            let network = parse_network_id(&attachment.target)?;
            let kept = current.and_then(|c| c.vips.iter().find(|v| v.network == network));
            let vip = match kept {
                Some(vip) => *vip,
                None => allocations.network_addr(self, network)?,
            };
            vips.push(vip);
        }
        Ok((None, vips))
    }

    pub(crate) fn create_network(&mut self, spec: &NetworkSpec, at_ms: u64) -> Response {
        spec.validate()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if PREDEFINED_NAMES.contains(&spec.name.as_str()) {
            return Err(StateError::Invalid(format!(
                "{} is a pre-defined network and cannot be created",
                spec.name
            )));
        }
        if self.networks.values().any(|n| n.spec.name == spec.name) {
            return Err(StateError::NetworkExists(spec.name.clone()));
        }
        let ingress_subnet = ipnetwork::Ipv4Network::new(self.ingress.subnet, self.ingress.prefix)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let taken: Vec<TakenSubnet<'_>> = std::iter::once(TakenSubnet {
            network: INGRESS_NAME,
            subnet: ingress_subnet,
        })
        .chain(self.networks.values().map(|n| TakenSubnet {
            network: n.spec.name.as_str(),
            subnet: n.subnet,
        }))
        .collect();
        let vnis: BTreeSet<u32> = std::iter::once(self.ingress.vni)
            .chain(self.networks.values().map(|n| n.vni))
            .collect();
        let plan = ipam::plan(spec.subnet, spec.gateway, &taken, &vnis)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        // Nothing fails past the plan: no copy to apply on.
        // An ID no network has (the ingress one included), drawn again on the rare clash.
        let mut id = self.fresh_id();
        while id == INGRESS_ID || self.networks.contains_key(&id) {
            id = self.fresh_id();
        }
        let network = Network {
            id,
            spec: spec.clone(),
            subnet: plan.subnet,
            gateway: plan.gateway,
            vni: plan.vni,
            cursor: 1,
            created_at_ms: at_ms,
        };
        self.networks.insert(id, network.clone());
        Ok(Applied::Network(Box::new(network)))
    }

    /// What keeps network `id` from being removed, worded for the user (`service api`,
    /// `task api.1`): a service whose spec (or previous spec, which a rollback returns
    /// to) joins it, or a task that has not ended on it.
    #[must_use]
    pub fn network_user(&self, id: NetworkId) -> Option<String> {
        let target = format_id(id);
        self.user_of(
            " ",
            |spec| spec.networks.iter().any(|a| a.target == target),
            |t| t.networks.iter().any(|a| a.network == id),
        )
    }

    /// What keeps an object (a network, a secret, a config) from being removed, worded
    /// for the user as `service{sep}api` or `task{sep}api.1`: a service whose spec uses it
    /// (`spec_uses`), one whose previous spec does (a rollback returns to it), or a task
    /// that has not ended and uses it (`task_uses`).
    pub(crate) fn user_of(
        &self,
        sep: &str,
        spec_uses: impl Fn(&TaskSpec) -> bool,
        task_uses: impl Fn(&Task) -> bool,
    ) -> Option<String> {
        if let Some(s) = self.services.values().find(|s| spec_uses(&s.spec.task)) {
            return Some(format!("service{sep}{}", s.spec.name));
        }
        if let Some(s) = self
            .services
            .values()
            .find(|s| s.previous_spec.as_ref().is_some_and(|p| spec_uses(&p.task)))
        {
            return Some(format!(
                "service{sep}{} (its previous spec, which a rollback returns to)",
                s.spec.name
            ));
        }
        self.tasks
            .values()
            .find(|t| !t.status.state.is_terminal() && task_uses(t))
            .map(|t| {
                let service = self
                    .services
                    .get(&t.service)
                    .map_or_else(|| format_id(t.service), |s| s.spec.name.clone());
                format!("task{sep}{}", t.name(&service))
            })
    }

    /// The network with this ID.
    ///
    /// # Errors
    /// [`StateError::UnknownNetwork`].
    pub fn network(&self, id: NetworkId) -> Result<&Network, StateError> {
        self.networks
            .get(&id)
            .ok_or_else(|| StateError::UnknownNetwork(format_id(id)))
    }

    /// A network's name (`ingress` for the built-in one, the ID for one that is gone).
    #[must_use]
    pub fn network_name(&self, id: NetworkId) -> String {
        if id == INGRESS_ID {
            return INGRESS_NAME.to_string();
        }
        self.networks
            .get(&id)
            .map_or_else(|| format_id(id), |n| n.spec.name.clone())
    }

    /// Resolves what a user typed: a network's full ID, its name, or a unique ID prefix
    /// (in that order, as docker does). The built-in `ingress` network resolves to
    /// [`INGRESS_ID`].
    ///
    /// # Errors
    /// [`StateError::UnknownNetwork`] or [`StateError::AmbiguousNetwork`].
    pub fn resolve_network(&self, name: &str) -> Result<NetworkId, StateError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StateError::Invalid("a network name is required".into()));
        }
        let all = || {
            std::iter::once((INGRESS_ID, INGRESS_NAME))
                .chain(self.networks.values().map(|n| (n.id, n.spec.name.as_str())))
        };
        if let Some((id, _)) = all().find(|(id, _)| format_id(*id) == name) {
            return Ok(id);
        }
        if let Some((id, _)) = all().find(|(_, n)| *n == name) {
            return Ok(id);
        }
        let by_prefix: Vec<NetworkId> = all()
            .filter(|(id, _)| format_id(*id).starts_with(name))
            .map(|(id, _)| id)
            .collect();
        match by_prefix.as_slice() {
            [id] => Ok(*id),
            [] => Err(StateError::UnknownNetwork(name.to_string())),
            many => Err(StateError::AmbiguousNetwork(name.to_string(), many.len())),
        }
    }

    fn change_tasks(
        &mut self,
        create: &[NewTask],
        update: &[TaskChange],
        delete: &[TaskId],
        at_ms: u64,
    ) -> Response {
        // Checked and allocated before anything changes: one refused item
        // refuses the whole batch (without a copy of the state).
        let mut allocations = Allocations::new(self);
        // The version this command will have once applied.
        let version = self.version + 1;
        let mut created = Vec::with_capacity(create.len());
        // The tasks of a service created together share its spec.
        let mut specs: BTreeMap<ServiceId, Arc<TaskSpec>> = BTreeMap::new();
        for new in create {
            let service = self.service(new.service)?;
            let spec = specs
                .entry(new.service)
                .or_insert_with(|| Arc::new(service.spec.task.clone()))
                .clone();
            let spec_version = service.spec_version;
            if let Some(node) = new.node {
                self.node(node)?;
            }
            let addr = allocations.addr(self)?;
            let mut networks = Vec::with_capacity(spec.networks.len());
            for attachment in &spec.networks {
                let network = parse_network_id(&attachment.target)?;
                networks.push(allocations.network_addr(self, network)?);
            }
            let id = allocations.fresh_id(self);
            let status = match new.node {
                Some(_) => TaskStatus::new(TaskState::Assigned, "scheduled", at_ms),
                None => TaskStatus::new(TaskState::Pending, new.message.clone(), at_ms),
            };
            created.push(Task {
                id,
                service: new.service,
                slot: new.slot,
                node: new.node,
                spec,
                spec_version,
                desired: DesiredState::Running,
                desired_version: version,
                status,
                addr: Some(addr),
                networks,
                created_at_ms: at_ms,
            });
        }
        for change in update {
            if let Some(node) = change.node {
                self.node(node)?;
            }
            if !self.tasks.contains_key(&change.id) {
                return Err(StateError::UnknownTask(format_id(change.id)));
            }
        }
        let mut deleted = BTreeSet::new();
        for id in delete {
            if !self.tasks.contains_key(id) || !deleted.insert(*id) {
                return Err(StateError::UnknownTask(format_id(*id)));
            }
        }
        allocations.commit(self);
        let ids = created.iter().map(|t| t.id).collect();
        self.tasks.extend(created.into_iter().map(|t| (t.id, t)));
        for change in update {
            let task = self.tasks.get_mut(&change.id).expect("checked above");
            if let Some(node) = change.node {
                task.node = Some(node);
                if task.status.state < TaskState::Assigned {
                    task.status = TaskStatus::new(TaskState::Assigned, "scheduled", at_ms);
                }
            }
            if let Some(desired) = change.desired
                && desired != task.desired
            {
                task.desired = desired;
                task.desired_version = version;
            }
            if let Some(status) = &change.status {
                task.status = status.clone();
            }
        }
        for id in delete {
            self.tasks.remove(id);
        }
        Ok(Applied::Tasks(ids))
    }

    /// Every address in use on user network `id`: its tasks' (while the task's record
    /// exists, as on ingress) and its VIPs.
    pub(crate) fn used_network_addrs(&self, id: NetworkId) -> BTreeSet<Ipv4Addr> {
        self.tasks
            .values()
            .flat_map(|t| &t.networks)
            .chain(self.services.values().flat_map(|s| &s.endpoint.vips))
            .filter(|a| a.network == id)
            .map(|a| a.addr)
            .collect()
    }

    /// The ports every service but `except` publishes.
    fn published_ports(&self, except: Option<ServiceId>) -> Vec<PublishedPort<'_>> {
        self.services
            .values()
            .filter(|s| Some(s.id) != except)
            .flat_map(|s| {
                s.endpoint.ports.iter().filter_map(|p| {
                    p.published.map(|port| PublishedPort {
                        port,
                        protocol: p.protocol,
                        service: s.spec.name.as_str(),
                    })
                })
            })
            .collect()
    }

    /// The service with this ID.
    ///
    /// # Errors
    /// [`StateError::UnknownService`].
    pub fn service(&self, id: ServiceId) -> Result<&Service, StateError> {
        self.services
            .get(&id)
            .ok_or_else(|| StateError::UnknownService(format_id(id)))
    }

    /// Resolves what a user typed: a service's full ID, its name, or a
    /// unique ID prefix (in that order, as docker does).
    ///
    /// # Errors
    /// [`StateError::UnknownService`] or [`StateError::AmbiguousService`].
    pub fn resolve_service(&self, name: &str) -> Result<ServiceId, StateError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StateError::Invalid("a service name is required".into()));
        }
        if let Some(s) = self
            .services
            .values()
            .find(|s| format_id(s.id) == name || s.spec.name == name)
        {
            return Ok(s.id);
        }
        let by_prefix: Vec<ServiceId> = self
            .services
            .values()
            .filter(|s| format_id(s.id).starts_with(name))
            .map(|s| s.id)
            .collect();
        match by_prefix.as_slice() {
            [id] => Ok(*id),
            [] => Err(StateError::UnknownService(name.to_string())),
            many => Err(StateError::AmbiguousService(name.to_string(), many.len())),
        }
    }

    /// The tasks of a service, history included, in ID order.
    pub fn service_tasks(&self, service: ServiceId) -> impl Iterator<Item = &Task> {
        self.tasks.values().filter(move |t| t.service == service)
    }

    /// Checks a promotion or demotion without applying it.
    ///
    /// # Errors
    /// [`StateError::UnknownNode`], or [`StateError::LastManager`] when the
    /// change would leave no manager.
    pub fn check_role_change(&self, id: NodeId, role: Role) -> Result<(), StateError> {
        let node = self.node(id)?;
        if node.role == Role::Manager && role == Role::Worker && self.managers().count() <= 1 {
            return Err(StateError::LastManager(format_id(id)));
        }
        Ok(())
    }

    /// Checks a removal without applying it.
    ///
    /// # Errors
    /// [`StateError::ManagerStillMember`] for a manager,
    /// [`StateError::NodeNotDown`] for a live node without `force`.
    pub fn check_remove(&self, id: NodeId, force: bool) -> Result<(), StateError> {
        let node = self.node(id)?;
        if node.role == Role::Manager {
            return Err(StateError::ManagerStillMember(format_id(id)));
        }
        if node.status == NodeStatus::Ready && !force {
            return Err(StateError::NodeNotDown(format_id(id)));
        }
        Ok(())
    }

    /// The node with this ID.
    ///
    /// # Errors
    /// [`StateError::UnknownNode`].
    pub fn node(&self, id: NodeId) -> Result<&Node, StateError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| StateError::UnknownNode(format_id(id)))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, StateError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| StateError::UnknownNode(format_id(id)))
    }

    /// Nodes with the manager role.
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }

    /// Resolves what a user typed: a full ID, a unique ID prefix, or a
    /// unique hostname (in that order of preference, as docker does).
    ///
    /// # Errors
    /// [`StateError::UnknownNode`] or [`StateError::AmbiguousNode`].
    pub fn resolve(&self, name: &str) -> Result<NodeId, StateError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StateError::Invalid("a node name is required".into()));
        }
        if let Some(node) = self.nodes.values().find(|n| format_id(n.id) == name) {
            return Ok(node.id);
        }
        let by_prefix: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| format_id(n.id).starts_with(name))
            .map(|n| n.id)
            .collect();
        let by_hostname: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.hostname == name)
            .map(|n| n.id)
            .collect();
        match (by_prefix.as_slice(), by_hostname.as_slice()) {
            ([id], _) | ([], [id]) => Ok(*id),
            ([], []) => Err(StateError::UnknownNode(name.to_string())),
            ([], many) | (many, _) => Err(StateError::AmbiguousNode(name.to_string(), many.len())),
        }
    }
}

/// The network ID a resolved attachment's target holds (16 hex digits).
///
/// # Errors
/// [`StateError::UnknownNetwork`] for a target that is not an ID.
pub fn parse_network_id(target: &str) -> Result<NetworkId, StateError> {
    if target.len() == 16
        && let Ok(id) = u64::from_str_radix(target, 16)
    {
        return Ok(id);
    }
    Err(StateError::UnknownNetwork(target.to_string()))
}

/// Fixtures for the pure cores' tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;
    use mesh_api::service::Service;
    use mesh_api::spec::ServiceSpec;
    use mesh_api::task::{TaskId, TaskState, TaskStatus};

    /// A bootstrapped state (commands apply) holding worker nodes `n<id>` with the
    /// given status, availability and `zone` label, each with a dataplane
    /// (`10.99.0.<id>`) whose agent runs the process runtime only.
    pub fn cluster(nodes: &[(NodeId, NodeStatus, Availability, &str)]) -> ClusterState {
        let mut state = ClusterState {
            ca: Some(CaMaterial {
                cert_pem: String::new(),
                key_pem: String::new(),
            }),
            ..ClusterState::default()
        };
        for (id, status, availability, zone) in nodes {
            let mut node = Node::new(*id, format!("n{id}"), Role::Worker, 0);
            node.status = *status;
            node.availability = *availability;
            node.labels.insert("zone".into(), (*zone).into());
            node.data_addr = Some(Ipv4Addr::new(10, 99, 0, u8::try_from(*id).unwrap_or(0)));
            node.runtimes = BTreeSet::from([RuntimeKind::Process]);
            state.nodes.insert(*id, node);
        }
        state
    }

    /// [`cluster`] of ready, active nodes in zone `a`.
    pub fn ready(ids: &[NodeId]) -> ClusterState {
        let nodes: Vec<_> = ids
            .iter()
            .map(|id| (*id, NodeStatus::Ready, Availability::Active, "a"))
            .collect();
        cluster(&nodes)
    }

    /// Creates the service; panics if the state refuses it.
    pub fn create_service(state: &mut ClusterState, spec: ServiceSpec) -> Service {
        match state.apply(&Command::CreateService { spec, at_ms: 1 }) {
            Ok(Applied::Service(service)) => *service,
            other => panic!("creating a service: {other:?}"),
        }
    }

    /// Creates the overlay network `name` with the defaults; panics if the state
    /// refuses it.
    pub fn create_network(state: &mut ClusterState, name: &str) -> Network {
        match state.apply(&Command::CreateNetwork {
            spec: NetworkSpec::new(name),
            at_ms: 1,
        }) {
            Ok(Applied::Network(network)) => *network,
            other => panic!("creating a network: {other:?}"),
        }
    }

    /// Creates one task of `service` per entry, in slots 1, 2, ..., on the given
    /// node (or pending); returns their IDs.
    pub fn create_tasks(
        state: &mut ClusterState,
        service: ServiceId,
        nodes: &[Option<NodeId>],
    ) -> Vec<TaskId> {
        let create = (1..)
            .zip(nodes)
            .map(|(slot, node)| NewTask {
                service,
                slot,
                node: *node,
                message: String::new(),
            })
            .collect();
        match state.apply(&Command::ChangeTasks {
            create,
            update: vec![],
            delete: vec![],
            at_ms: 2,
        }) {
            Ok(Applied::Tasks(ids)) => ids,
            other => panic!("creating tasks: {other:?}"),
        }
    }

    /// `node`'s agent reports `task` in `state`.
    pub fn report(state: &mut ClusterState, node: NodeId, task: TaskId, s: TaskState) {
        state
            .apply(&Command::ReportTasks {
                node,
                reports: vec![(task, TaskStatus::new(s, "", 3))],
            })
            .expect("reports always apply");
    }

    /// The leader asks `task` to stop.
    pub fn shut_down(state: &mut ClusterState, task: TaskId) {
        state
            .apply(&Command::ChangeTasks {
                create: vec![],
                update: vec![TaskChange {
                    id: task,
                    desired: Some(DesiredState::Shutdown),
                    ..TaskChange::default()
                }],
                delete: vec![],
                at_ms: 4,
            })
            .expect("the task exists");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrapped() -> ClusterState {
        let mut state = ClusterState::default();
        let first = Node::new(0xaa00, "m1".into(), Role::Manager, 1);
        state
            .apply(&Command::Bootstrap {
                cluster_id: "c".into(),
                ca: CaMaterial {
                    cert_pem: "cert".into(),
                    key_pem: "key".into(),
                },
                secrets: JoinSecrets {
                    worker: "w".into(),
                    manager: "m".into(),
                },
                first,
            })
            .unwrap();
        state
    }

    fn add(state: &mut ClusterState, id: NodeId, host: &str, role: Role) {
        state
            .apply(&Command::AddNode {
                node: Node::new(id, host.into(), role, 2),
            })
            .unwrap();
    }

    fn label(id: NodeId, key: &str, value: &str) -> Command {
        Command::UpdateNode {
            id,
            availability: None,
            label_add: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            label_rm: Vec::new(),
            at_ms: 7,
        }
    }

    #[test]
    fn a_batch_applies_each_command_on_its_own_in_order() {
        let mut state = bootstrapped();
        let version = state.version;
        let response = state
            .apply(&Command::Batch {
                commands: vec![
                    label(0xaa00, "k", "1"),
                    // Refused: no such node. It changes nothing and the
                    // others still apply.
                    label(0xdead, "k", "x"),
                    label(0xaa00, "bad key!", "x"),
                    // Applied after the first: its value wins.
                    label(0xaa00, "k", "2"),
                ],
            })
            .unwrap();
        let Applied::Batch(responses) = response else {
            panic!("a batch answers a batch: {response:?}");
        };
        assert_eq!(responses.len(), 4);
        assert!(matches!(&responses[0], Ok(Applied::Node(n)) if n.labels["k"] == "1"));
        assert_eq!(
            responses[1],
            Err(StateError::UnknownNode(format_id(0xdead)))
        );
        assert!(matches!(responses[2], Err(StateError::Invalid(_))));
        assert!(matches!(&responses[3], Ok(Applied::Node(n)) if n.labels["k"] == "2"));
        assert_eq!(state.node(0xaa00).unwrap().labels["k"], "2");
        // One version per applied command, as with one entry each.
        assert_eq!(state.version, version + 2);

        // The same commands one by one reach the same state.
        let mut one_by_one = bootstrapped();
        for c in [
            label(0xaa00, "k", "1"),
            label(0xdead, "k", "x"),
            label(0xaa00, "bad key!", "x"),
            label(0xaa00, "k", "2"),
        ] {
            let _ = one_by_one.apply(&c);
        }
        assert_eq!(one_by_one, state);
    }

    #[test]
    fn commands_before_bootstrap_are_refused() {
        let mut state = ClusterState::default();
        let err = state
            .apply(&Command::RemoveNode { id: 1, force: true })
            .unwrap_err();
        assert_eq!(err, StateError::NotBootstrapped);
        assert_eq!(state, ClusterState::default());
    }

    #[test]
    fn second_bootstrap_is_refused_and_changes_nothing() {
        let mut state = bootstrapped();
        let before = state.clone();
        let err = state
            .apply(&Command::Bootstrap {
                cluster_id: "other".into(),
                ca: CaMaterial {
                    cert_pem: String::new(),
                    key_pem: String::new(),
                },
                secrets: JoinSecrets::default(),
                first: Node::new(1, "x".into(), Role::Manager, 0),
            })
            .unwrap_err();
        assert_eq!(err, StateError::AlreadyBootstrapped);
        assert_eq!(state, before);
    }

    #[test]
    fn the_last_manager_cannot_be_demoted() {
        let mut state = bootstrapped();
        let before = state.clone();
        let err = state
            .apply(&Command::SetRole {
                id: 0xaa00,
                role: Role::Worker,
                at_ms: 5,
            })
            .unwrap_err();
        assert!(matches!(err, StateError::LastManager(_)));
        assert_eq!(state, before);

        add(&mut state, 0xbb00, "m2", Role::Manager);
        state
            .apply(&Command::SetRole {
                id: 0xaa00,
                role: Role::Worker,
                at_ms: 6,
            })
            .unwrap();
        assert_eq!(state.node(0xaa00).unwrap().role, Role::Worker);
    }

    #[test]
    fn a_worker_gets_no_manager_address() {
        let mut state = bootstrapped();
        add(&mut state, 0xbb00, "w1", Role::Worker);
        let before = state.clone();
        let err = state
            .apply(&Command::SetManagerAddr {
                id: 0xbb00,
                addr: Some("10.0.0.2:4242".into()),
                at_ms: 5,
            })
            .unwrap_err();
        assert!(err.to_string().contains("not a manager"), "{err}");
        assert_eq!(state, before);
        state
            .apply(&Command::SetManagerAddr {
                id: 0xbb00,
                addr: None,
                at_ms: 6,
            })
            .unwrap();
    }

    #[test]
    fn removal_refuses_managers_and_live_nodes() {
        let mut state = bootstrapped();
        add(&mut state, 0xbb00, "w1", Role::Worker);
        let before = state.clone();
        assert!(matches!(
            state.apply(&Command::RemoveNode {
                id: 0xaa00,
                force: true
            }),
            Err(StateError::ManagerStillMember(_))
        ));
        state
            .apply(&Command::SetStatus {
                id: 0xbb00,
                status: NodeStatus::Ready,
                agent_version: "v".into(),
                at_ms: 3,
            })
            .unwrap();
        let ready = state.clone();
        assert!(matches!(
            state.apply(&Command::RemoveNode {
                id: 0xbb00,
                force: false
            }),
            Err(StateError::NodeNotDown(_))
        ));
        assert_eq!(state, ready);
        state
            .apply(&Command::RemoveNode {
                id: 0xbb00,
                force: true,
            })
            .unwrap();
        assert_eq!(state.nodes.len(), before.nodes.len() - 1);
    }

    #[test]
    fn names_resolve_by_id_prefix_and_hostname() {
        let mut state = bootstrapped();
        add(&mut state, 0xbb00, "w1", Role::Worker);
        add(&mut state, 0xbb01, "w2", Role::Worker);
        assert_eq!(state.resolve("000000000000bb00").unwrap(), 0xbb00);
        assert_eq!(state.resolve("000000000000aa").unwrap(), 0xaa00);
        assert_eq!(state.resolve("w2").unwrap(), 0xbb01);
        assert_eq!(
            state.resolve("000000000000bb").unwrap_err(),
            StateError::AmbiguousNode("000000000000bb".into(), 2)
        );
        assert!(matches!(
            state.resolve("nope"),
            Err(StateError::UnknownNode(_))
        ));
        assert!(matches!(state.resolve(" "), Err(StateError::Invalid(_))));
    }

    #[test]
    fn labels_are_validated_before_anything_changes() {
        let mut state = bootstrapped();
        let before = state.clone();
        let err = state
            .apply(&Command::UpdateNode {
                id: 0xaa00,
                availability: Some(Availability::Drain),
                label_add: BTreeMap::from([("bad key".to_string(), "v".to_string())]),
                label_rm: vec![],
                at_ms: 9,
            })
            .unwrap_err();
        assert!(matches!(err, StateError::Invalid(_)));
        assert_eq!(state, before);

        let Applied::Node(node) = state
            .apply(&Command::UpdateNode {
                id: 0xaa00,
                availability: Some(Availability::Drain),
                label_add: BTreeMap::from([("zone".to_string(), "a".to_string())]),
                label_rm: vec![],
                at_ms: 9,
            })
            .unwrap()
        else {
            panic!("expected the node back");
        };
        assert_eq!(node.availability, Availability::Drain);
        assert_eq!(node.labels["zone"], "a");
    }

    mod services {
        use super::*;
        use mesh_api::spec::{RuntimeKind, ServiceSpec};

        fn spec(name: &str, publish: &[&str]) -> ServiceSpec {
            let mut spec = ServiceSpec::new(name, RuntimeKind::Process, "task-echo", vec![]);
            spec.endpoint.ports = publish.iter().map(|p| p.parse().unwrap()).collect();
            spec
        }

        fn create(state: &mut ClusterState, spec: ServiceSpec) -> Result<Service, StateError> {
            match state.apply(&Command::CreateService { spec, at_ms: 10 })? {
                Applied::Service(service) => Ok(*service),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn tasks(state: &mut ClusterState, service: ServiceId, n: u32) -> Vec<TaskId> {
            let create = (1..=n)
                .map(|slot| NewTask {
                    service,
                    slot,
                    node: Some(0xaa00),
                    message: String::new(),
                })
                .collect();
            match state
                .apply(&Command::ChangeTasks {
                    create,
                    update: vec![],
                    delete: vec![],
                    at_ms: 11,
                })
                .unwrap()
            {
                Applied::Tasks(ids) => ids,
                other => panic!("unexpected {other:?}"),
            }
        }

        #[test]
        fn a_service_gets_a_vip_and_its_ports_and_refusals_change_nothing() {
            let mut state = bootstrapped();
            let web = create(&mut state, spec("web", &["8080:80", "90"])).unwrap();
            assert!(web.endpoint.vip.is_some());
            assert_eq!(web.endpoint.ports[1].published, Some(30_000));
            assert_eq!(state.resolve_service("web").unwrap(), web.id);
            assert_eq!(
                state.resolve_service(&format_id(web.id)[..6]).unwrap(),
                web.id
            );
            let before = state.clone();
            for (bad, reason) in [
                (spec("web", &[]), "already exists"),
                (spec("api", &["8080:81"]), "already in use by service 'web'"),
                (spec("bad name", &[]), "invalid name"),
            ] {
                let err = create(&mut state, bad).unwrap_err().to_string();
                assert!(err.contains(reason), "{err}");
                assert_eq!(state, before);
            }
            assert!(matches!(
                state.resolve_service("nope"),
                Err(StateError::UnknownService(_))
            ));
        }

        #[test]
        fn a_service_may_publish_again_the_ports_it_holds() {
            let mut state = bootstrapped();
            let web = create(&mut state, spec("web", &["8080:80"])).unwrap();
            let mut v2 = web.spec.clone();
            v2.task.args = vec!["v2".into()];
            state
                .apply(&Command::UpdateService {
                    id: web.id,
                    spec: v2,
                    rollback: false,
                    expected_version: Some(1),
                    at_ms: 12,
                })
                .expect("its own port is no conflict");
        }

        #[test]
        fn updates_keep_allocations_and_mark_task_changes() {
            let mut state = bootstrapped();
            let web = create(&mut state, spec("web", &["80"])).unwrap();
            let mut scaled = web.spec.clone();
            scaled.mode = mesh_api::spec::ServiceMode::Replicated { replicas: 5 };
            let Applied::Service(after) = state
                .apply(&Command::UpdateService {
                    id: web.id,
                    spec: scaled.clone(),
                    rollback: false,
                    expected_version: Some(1),
                    at_ms: 12,
                })
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(after.endpoint, web.endpoint, "VIP and ports are kept");
            assert_eq!(after.spec_version, 2);
            assert_eq!(after.update_status, None, "scaling replaces no task");
            assert_eq!(after.previous_spec.as_ref(), Some(&web.spec));
            let mut v2 = scaled;
            v2.task.args = vec!["--tag".into(), "v2".into()];
            let Applied::Service(after) = state
                .apply(&Command::UpdateService {
                    id: web.id,
                    spec: v2,
                    rollback: false,
                    expected_version: None,
                    at_ms: 13,
                })
                .unwrap()
            else {
                panic!()
            };
            let status = after.update_status.unwrap();
            assert_eq!(status.state, UpdateState::Updating);
            let mut renamed = web.spec.clone();
            renamed.name = "other".into();
            let before = state.clone();
            assert!(
                state
                    .apply(&Command::UpdateService {
                        id: web.id,
                        spec: renamed,
                        rollback: false,
                        expected_version: None,
                        at_ms: 14,
                    })
                    .is_err()
            );
            assert_eq!(state, before);
            // An update based on an old version changes nothing.
            let err = state
                .apply(&Command::UpdateService {
                    id: web.id,
                    spec: web.spec.clone(),
                    rollback: true,
                    expected_version: Some(1),
                    at_ms: 15,
                })
                .unwrap_err();
            assert!(matches!(err, StateError::OutOfSequence { .. }), "{err}");
            assert_eq!(state, before);
        }

        #[test]
        fn task_batches_are_all_or_nothing_and_replicas_agree() {
            let mut a = bootstrapped();
            let web = create(&mut a, spec("web", &[])).unwrap();
            let mut b = a.clone();
            let ids = tasks(&mut a, web.id, 3);
            assert_eq!(ids, tasks(&mut b, web.id, 3), "IDs are deterministic");
            assert_eq!(a, b);
            let addrs: BTreeSet<_> = ids.iter().map(|id| a.tasks[id].addr).collect();
            assert_eq!(addrs.len(), 3, "every task has its own address");
            let before = a.clone();
            let err = a
                .apply(&Command::ChangeTasks {
                    create: vec![NewTask {
                        service: web.id,
                        slot: 4,
                        node: None,
                        message: "pending".into(),
                    }],
                    update: vec![TaskChange {
                        id: 12345,
                        ..TaskChange::default()
                    }],
                    delete: vec![],
                    at_ms: 15,
                })
                .unwrap_err();
            assert!(matches!(err, StateError::UnknownTask(_)));
            assert_eq!(a, before);
        }

        #[test]
        fn reports_come_from_the_tasks_node_and_never_go_backwards() {
            let mut state = bootstrapped();
            let web = create(&mut state, spec("web", &[])).unwrap();
            let id = tasks(&mut state, web.id, 1)[0];
            let report = |state: &mut ClusterState, node, s| {
                state
                    .apply(&Command::ReportTasks {
                        node,
                        reports: vec![(id, TaskStatus::new(s, "", 20))],
                    })
                    .unwrap();
            };
            report(&mut state, 0xbb00, TaskState::Running);
            assert_eq!(state.tasks[&id].status.state, TaskState::Assigned);
            report(&mut state, 0xaa00, TaskState::Running);
            report(&mut state, 0xaa00, TaskState::Starting);
            assert_eq!(state.tasks[&id].status.state, TaskState::Running);
            state
                .apply(&Command::RemoveService {
                    id: web.id,
                    at_ms: 21,
                })
                .unwrap();
            let task = &state.tasks[&id];
            assert_eq!(task.desired, DesiredState::Remove);
            assert_eq!(task.desired_version, state.version);
            assert!(state.services.is_empty());
        }
    }

    mod networks {
        use super::*;
        use mesh_api::spec::{NetworkAttachmentSpec, RuntimeKind, ServiceSpec};

        fn net(state: &mut ClusterState, spec: NetworkSpec) -> Result<Network, StateError> {
            match state.apply(&Command::CreateNetwork { spec, at_ms: 5 })? {
                Applied::Network(n) => Ok(*n),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn on(name: &str, targets: &[&str]) -> ServiceSpec {
            let mut spec = ServiceSpec::new(name, RuntimeKind::Process, "task-echo", vec![]);
            spec.task.networks = targets
                .iter()
                .map(|t| NetworkAttachmentSpec {
                    target: (*t).to_string(),
                    aliases: vec![],
                })
                .collect();
            spec
        }

        fn service(state: &mut ClusterState, spec: ServiceSpec) -> Result<Service, StateError> {
            match state.apply(&Command::CreateService { spec, at_ms: 10 })? {
                Applied::Service(s) => Ok(*s),
                other => panic!("unexpected {other:?}"),
            }
        }

        #[test]
        fn a_batch_that_fills_a_network_part_way_changes_nothing() {
            let mut state = bootstrapped();
            // A /29: six hosts, the gateway and the service's VIP: four for tasks.
            let mut small = NetworkSpec::new("small");
            small.subnet = Some("10.9.9.0/29".parse().unwrap());
            net(&mut state, small).unwrap();
            let api = service(&mut state, on("api", &["small"])).unwrap();
            let create = |slots: std::ops::Range<u32>| Command::ChangeTasks {
                create: slots
                    .map(|slot| NewTask {
                        service: api.id,
                        slot,
                        node: None,
                        message: "pending".into(),
                    })
                    .collect(),
                update: vec![],
                delete: vec![],
                at_ms: 15,
            };
            let before = state.clone();
            let err = state.apply(&create(1..6)).unwrap_err();
            assert!(err.to_string().contains("no free address"), "{err}");
            assert_eq!(state, before, "cursors, IDs and tasks as they were");
            let Ok(Applied::Tasks(ids)) = state.apply(&create(1..5)) else {
                panic!("four tasks fit");
            };
            let addrs: BTreeSet<_> = ids
                .iter()
                .map(|id| state.tasks[id].networks[0].addr)
                .chain([api.endpoint.vips[0].addr])
                .collect();
            assert_eq!(addrs.len(), 5, "distinct addresses: {addrs:?}");
            // A delete named twice is refused whole, as an unknown task is.
            let before = state.clone();
            let twice = Command::ChangeTasks {
                create: vec![],
                update: vec![],
                delete: vec![ids[0], ids[0]],
                at_ms: 16,
            };
            assert!(matches!(
                state.apply(&twice),
                Err(StateError::UnknownTask(_))
            ));
            assert_eq!(state, before);
        }

        fn update(state: &mut ClusterState, id: ServiceId, spec: ServiceSpec) -> Service {
            match state.apply(&Command::UpdateService {
                id,
                spec,
                rollback: false,
                expected_version: None,
                at_ms: 12,
            }) {
                Ok(Applied::Service(s)) => *s,
                other => panic!("unexpected {other:?}"),
            }
        }

        #[test]
        fn networks_get_distinct_subnets_and_vnis_and_refusals_change_nothing() {
            let mut state = bootstrapped();
            let front = net(&mut state, NetworkSpec::new("front")).unwrap();
            let mut spec = NetworkSpec::new("back");
            spec.subnet = Some("192.168.50.0/24".parse().unwrap());
            let back = net(&mut state, spec).unwrap();
            let third = net(&mut state, NetworkSpec::new("third")).unwrap();
            assert_eq!(front.subnet.to_string(), "10.0.0.0/24");
            assert_eq!(front.gateway, Ipv4Addr::new(10, 0, 0, 1));
            assert_eq!(back.subnet.to_string(), "192.168.50.0/24");
            assert_eq!(third.subnet.to_string(), "10.0.1.0/24");
            assert_eq!([front.vni, back.vni, third.vni], [4097, 4098, 4099]);
            assert_ne!(front.id, back.id);
            assert_eq!(state.resolve_network("back").unwrap(), back.id);
            assert_eq!(state.resolve_network(&format_id(back.id)).unwrap(), back.id);
            assert_eq!(
                state.resolve_network(&format_id(back.id)[..5]).unwrap(),
                back.id
            );
            assert_eq!(state.resolve_network("ingress").unwrap(), INGRESS_ID);
            let before = state.clone();
            let overlapping = |subnet: &str| {
                let mut spec = NetworkSpec::new("other");
                spec.subnet = Some(subnet.parse().unwrap());
                spec
            };
            for (bad, reason) in [
                (
                    NetworkSpec::new("back"),
                    "network with name back already exists",
                ),
                (
                    NetworkSpec::new("ingress"),
                    "ingress is a pre-defined network and cannot be created",
                ),
                (
                    NetworkSpec::new("host"),
                    "host is a pre-defined network and cannot be created",
                ),
                (
                    overlapping("192.168.50.128/25"),
                    "subnet 192.168.50.128/25 overlaps network back's subnet 192.168.50.0/24",
                ),
                (
                    overlapping("10.255.7.0/24"),
                    "overlaps network ingress's subnet 10.255.0.0/16",
                ),
                (NetworkSpec::new("bad name"), "invalid network name"),
            ] {
                let err = net(&mut state, bad).unwrap_err().to_string();
                assert!(err.contains(reason), "{err}");
                assert_eq!(state, before);
            }
            // A freed VNI and subnet are taken again.
            state
                .apply(&Command::RemoveNetwork { id: front.id })
                .unwrap();
            let again = net(&mut state, NetworkSpec::new("again")).unwrap();
            assert_eq!((again.subnet, again.vni), (front.subnet, front.vni));
        }

        #[test]
        fn a_service_on_networks_gets_a_vip_on_each_and_its_tasks_an_address() {
            let mut state = bootstrapped();
            let back = net(&mut state, NetworkSpec::new("back")).unwrap();
            let front = net(&mut state, NetworkSpec::new("front")).unwrap();
            let api = service(&mut state, on("api", &["back", &format_id(front.id)[..6]])).unwrap();
            let targets: Vec<_> = api.spec.task.networks.iter().map(|a| &a.target).collect();
            assert_eq!(targets, [&format_id(back.id), &format_id(front.id)]);
            assert_eq!(api.endpoint.vip, None);
            assert_eq!(api.endpoint.vips.len(), 2);
            assert_eq!(api.endpoint.vips[0].network, back.id);
            assert_eq!(api.endpoint.vips[0].addr, Ipv4Addr::new(10, 0, 0, 2));
            assert_eq!(api.endpoint.vips[1].addr, Ipv4Addr::new(10, 0, 1, 2));
            let mut dnsrr = on("rr", &["back"]);
            dnsrr.endpoint.mode = EndpointMode::Dnsrr;
            let rr = service(&mut state, dnsrr).unwrap();
            assert_eq!((rr.endpoint.vip, rr.endpoint.vips.len()), (None, 0));
            // Tasks: one address per network, in the spec's order, all distinct.
            let create = (1..=2)
                .map(|slot| NewTask {
                    service: api.id,
                    slot,
                    node: Some(0xaa00),
                    message: String::new(),
                })
                .collect();
            let Applied::Tasks(ids) = state
                .apply(&Command::ChangeTasks {
                    create,
                    update: vec![],
                    delete: vec![],
                    at_ms: 11,
                })
                .unwrap()
            else {
                panic!()
            };
            let t1 = &state.tasks[&ids[0]];
            let t2 = &state.tasks[&ids[1]];
            assert_eq!(t1.networks[0].network, back.id);
            assert_eq!(t1.networks[1].network, front.id);
            assert_eq!(t1.networks[0].addr, Ipv4Addr::new(10, 0, 0, 3));
            assert_eq!(t2.networks[0].addr, Ipv4Addr::new(10, 0, 0, 4));
            assert!(t1.addr.is_some(), "every task keeps its ingress address");
            // Bad attachments are refused and change nothing.
            let before = state.clone();
            for (bad, reason) in [
                (on("x", &["nope"]), "network nope not found"),
                (
                    on("x", &["ingress"]),
                    "service cannot be explicitly attached to the ingress network",
                ),
                (
                    on("x", &["back", &format_id(back.id)]),
                    "network back is given twice",
                ),
            ] {
                let err = service(&mut state, bad).unwrap_err().to_string();
                assert!(err.contains(reason), "{err}");
                assert_eq!(state, before);
            }
        }

        #[test]
        fn updates_keep_allocate_and_free_vips() {
            let mut state = bootstrapped();
            let back = net(&mut state, NetworkSpec::new("back")).unwrap();
            let front = net(&mut state, NetworkSpec::new("front")).unwrap();
            let plain = service(&mut state, on("api", &[])).unwrap();
            assert!(plain.endpoint.vip.is_some());
            // Joining a network: the ingress VIP goes, one on back comes.
            let joined = update(&mut state, plain.id, on("api", &["back"]));
            assert_eq!(joined.endpoint.vip, None);
            assert_eq!(joined.endpoint.vips[0].network, back.id);
            assert!(joined.update_status.is_some(), "a rolling update");
            // Adding front keeps back's VIP (the stored spec holds the ID).
            let mut both = joined.spec.clone();
            both.task.networks.push(NetworkAttachmentSpec {
                target: "front".into(),
                aliases: vec!["web".into()],
            });
            let both = update(&mut state, plain.id, both);
            assert_eq!(both.endpoint.vips[0], joined.endpoint.vips[0]);
            assert_eq!(both.endpoint.vips[1].network, front.id);
            // Removing back frees its VIP; dnsrr frees them all, vip gets them back.
            let mut only_front = both.spec.clone();
            only_front.task.networks.remove(0);
            let only_front = update(&mut state, plain.id, only_front);
            assert_eq!(only_front.endpoint.vips, vec![both.endpoint.vips[1]]);
            assert!(
                !state
                    .used_network_addrs(back.id)
                    .contains(&joined.endpoint.vips[0].addr)
            );
            let mut rr = only_front.spec.clone();
            rr.endpoint.mode = EndpointMode::Dnsrr;
            let rr = update(&mut state, plain.id, rr);
            assert!(rr.endpoint.vips.is_empty() && rr.endpoint.vip.is_none());
            assert!(state.used_network_addrs(front.id).is_empty());
            let mut vip = rr.spec.clone();
            vip.endpoint.mode = EndpointMode::Vip;
            assert_eq!(update(&mut state, plain.id, vip).endpoint.vips.len(), 1);
        }

        #[test]
        fn a_network_in_use_is_not_removed() {
            let mut state = bootstrapped();
            let back = net(&mut state, NetworkSpec::new("back")).unwrap();
            let api = service(&mut state, on("api", &["back"])).unwrap();
            let before = state.clone();
            let remove = Command::RemoveNetwork { id: back.id };
            assert_eq!(
                state.apply(&remove).unwrap_err().to_string(),
                "network back is in use by service api"
            );
            assert_eq!(state, before);
            // Leaving it: the previous spec (a rollback's target) still holds it.
            update(&mut state, api.id, on("api", &[]));
            assert_eq!(
                state.apply(&remove).unwrap_err().to_string(),
                "network back is in use by service api (its previous spec, which a rollback \
                 returns to)"
            );
            update(&mut state, api.id, on("api", &["back"]));
            let Applied::Tasks(ids) = state
                .apply(&Command::ChangeTasks {
                    create: vec![NewTask {
                        service: api.id,
                        slot: 1,
                        node: Some(0xaa00),
                        message: String::new(),
                    }],
                    update: vec![],
                    delete: vec![],
                    at_ms: 13,
                })
                .unwrap()
            else {
                panic!()
            };
            state
                .apply(&Command::RemoveService {
                    id: api.id,
                    at_ms: 14,
                })
                .unwrap();
            // Its task has not stopped yet.
            assert_eq!(
                state.apply(&remove).unwrap_err().to_string(),
                "network back is in use by task 0000000000000000.1"
                    .replace("0000000000000000", &format_id(api.id))
            );
            state
                .apply(&Command::ReportTasks {
                    node: 0xaa00,
                    reports: vec![(ids[0], TaskStatus::new(TaskState::Shutdown, "", 15))],
                })
                .unwrap();
            state.apply(&remove).unwrap();
            assert!(state.networks.is_empty());
            assert!(matches!(
                state.apply(&remove),
                Err(StateError::UnknownNetwork(_))
            ));
        }

        #[test]
        fn a_snapshot_from_before_networks_loads() {
            let state = bootstrapped();
            let mut json = serde_json::to_value(&state).unwrap();
            json.as_object_mut().unwrap().remove("networks");
            let loaded: ClusterState = serde_json::from_value(json).unwrap();
            assert_eq!(loaded, state);
        }
    }
}
