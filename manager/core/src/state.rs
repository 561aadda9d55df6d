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
use mesh_api::network::IngressNetwork;
use mesh_api::node::{Availability, Node, NodeId, NodeStatus, ParseError, Role, format_id};

use crate::allocator::{self, AllocError, PublishedPort};
use crate::capacity;
use mesh_api::service::{Service, ServiceEndpoint, ServiceId, UpdateState, UpdateStatus};
use mesh_api::spec::{EndpointMode, RuntimeKind, ServiceSpec};
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
        let applied = self.apply_command(command)?;
        self.version += 1;
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
                at_ms,
            } => {
                let node = self.node_mut(*id)?;
                if node.data_addr != *addr || node.runtimes != *runtimes {
                    node.data_addr = *addr;
                    node.runtimes.clone_from(runtimes);
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
            Command::RemoveService { id, at_ms: _ } => {
                self.service(*id)?;
                self.services.remove(id);
                let version = self.version + 1;
                for task in self.tasks.values_mut().filter(|t| t.service == *id) {
                    task.desired = DesiredState::Remove;
                    task.desired_version = version;
                }
                Ok(Applied::Done)
            }
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
        }
    }

    /// A fresh service or task ID: deterministic (every replica computes the
    /// same), but spread over the whole range like a random one.
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        let seed = self
            .cluster_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        // splitmix64
        let mut z = seed.wrapping_add(self.next_id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn create_service(&mut self, spec: &ServiceSpec, at_ms: u64) -> Response {
        spec.validate()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if self.services.values().any(|s| s.spec.name == spec.name) {
            return Err(StateError::ServiceExists(spec.name.clone()));
        }
        let ports =
            allocator::allocate_ports(&self.published_ports(None), &spec.endpoint.ports, &[])?;
        // Allocate on a copy: a refusal changes nothing.
        let mut next = self.clone();
        let vip = match spec.endpoint.mode {
            EndpointMode::Vip => Some(next.allocate_addr()?),
            EndpointMode::Dnsrr => None,
        };
        let id = next.fresh_id();
        let service = Service {
            id,
            spec: spec.clone(),
            previous_spec: None,
            spec_version: 1,
            endpoint: ServiceEndpoint {
                vip,
                ports,
                vips: Vec::new(),
            },
            update_status: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
        };
        next.services.insert(id, service.clone());
        capacity::check(next.services.values(), next.nodes.len(), &service)
            .map_err(|e| StateError::Capacity(e.to_string()))?;
        *self = next;
        Ok(Applied::Service(Box::new(service)))
    }

    fn update_service(
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
        let ports = allocator::allocate_ports(
            &self.published_ports(Some(id)),
            &spec.endpoint.ports,
            &current.endpoint.ports,
        )?;
        let mut next = self.clone();
        let vip = match (spec.endpoint.mode, current.endpoint.vip) {
            (EndpointMode::Vip, Some(vip)) => Some(vip),
            (EndpointMode::Vip, None) => Some(next.allocate_addr()?),
            (EndpointMode::Dnsrr, _) => None,
        };
        let tasks_change = spec.task != current.spec.task;
        let service = next.services.get_mut(&id).expect("checked above");
        service.previous_spec = Some(current.spec.clone());
        service.spec = spec.clone();
        service.spec_version += 1;
        service.endpoint = ServiceEndpoint {
            vip,
            ports,
            vips: Vec::new(),
        };
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
        let service = service.clone();
        capacity::check(next.services.values(), next.nodes.len(), &service)
            .map_err(|e| StateError::Capacity(e.to_string()))?;
        *self = next;
        Ok(Applied::Service(Box::new(service)))
    }

    fn change_tasks(
        &mut self,
        create: &[NewTask],
        update: &[TaskChange],
        delete: &[TaskId],
        at_ms: u64,
    ) -> Response {
        // Work on a copy: one refused item refuses the whole batch.
        let mut next = self.clone();
        // The version this command will have once applied.
        let version = self.version + 1;
        let mut created = Vec::with_capacity(create.len());
        for new in create {
            let service = next.service(new.service)?;
            let (spec, spec_version) = (service.spec.task.clone(), service.spec_version);
            if let Some(node) = new.node {
                next.node(node)?;
            }
            let addr = next.allocate_addr()?;
            let id = next.fresh_id();
            let status = match new.node {
                Some(_) => TaskStatus::new(TaskState::Assigned, "scheduled", at_ms),
                None => TaskStatus::new(TaskState::Pending, new.message.clone(), at_ms),
            };
            next.tasks.insert(
                id,
                Task {
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
                    networks: Vec::new(),
                    created_at_ms: at_ms,
                },
            );
            created.push(id);
        }
        for change in update {
            if let Some(node) = change.node {
                next.node(node)?;
            }
            let task = next
                .tasks
                .get_mut(&change.id)
                .ok_or_else(|| StateError::UnknownTask(format_id(change.id)))?;
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
            next.tasks
                .remove(id)
                .ok_or_else(|| StateError::UnknownTask(format_id(*id)))?;
        }
        *self = next;
        Ok(Applied::Tasks(created))
    }

    /// Every ingress address in use: task addresses (while the task's record
    /// exists) and VIPs.
    fn used_addrs(&self) -> BTreeSet<Ipv4Addr> {
        self.tasks
            .values()
            .filter_map(|t| t.addr)
            .chain(self.services.values().filter_map(|s| s.endpoint.vip))
            .collect()
    }

    /// Takes a free ingress address (see [`allocator::allocate_addr`]).
    fn allocate_addr(&mut self) -> Result<Ipv4Addr, AllocError> {
        let used = self.used_addrs();
        allocator::allocate_addr(&mut self.ingress, &used)
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
}
