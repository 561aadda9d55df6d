//! The replicated records of services and tasks, as Swarm keeps them: a
//! service holds its spec (and the previous one, for rollback) and what the
//! allocator gave it; a task is one run of a service's task spec in a slot
//! (replicated) or on a node (global), with the state the leader wants for
//! it and the state its agent last reported.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::spec::{PortSpec, ServiceSpec, TaskSpec};
use crate::state::NodeId;

/// A service's identity, written as 16 hex digits like node IDs.
pub type ServiceId = u64;
/// A task's identity, written as 16 hex digits like node IDs.
pub type TaskId = u64;

/// What the allocator gave a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The service's virtual IP on the ingress network (endpoint mode `vip`).
    pub vip: Option<Ipv4Addr>,
    /// The spec's ports with every published port filled in.
    pub ports: Vec<PortSpec>,
}

/// Where a rolling update (or rollback) stands, as `docker service inspect`
/// shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Replacing tasks with the new spec.
    Updating,
    /// Stopped after failures (failure action `pause`).
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Replacing tasks with the previous spec.
    RollbackStarted,
    /// A rollback stopped after failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Whether tasks are being replaced now.
    #[must_use]
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// Docker's word for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service's update status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// Leader's clock when it started, ms since the epoch.
    pub started_at_ms: u64,
    /// When it completed or paused.
    pub completed_at_ms: Option<u64>,
    /// Why it paused, or what it is doing.
    pub message: String,
}

/// A service as the managers keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Identity.
    pub id: ServiceId,
    /// The spec in force.
    pub spec: ServiceSpec,
    /// The spec before the last update (what `rollback` returns to).
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped by every update of the spec; tasks record the version they run.
    pub spec_version: u64,
    /// VIP and published ports.
    pub endpoint: ServiceEndpoint,
    /// The last rolling update, if any.
    pub update_status: Option<UpdateStatus>,
    /// Ms since the epoch.
    pub created_at_ms: u64,
    /// Ms since the epoch.
    pub updated_at_ms: u64,
}

/// The state the leader wants a task in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Run it.
    Running,
    /// Stop it (drain its flows first); keep its record as history.
    Shutdown,
    /// Stop it and forget it (its service was removed).
    Remove,
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DesiredState::Running => "Running",
            DesiredState::Shutdown => "Shutdown",
            DesiredState::Remove => "Remove",
        })
    }
}

/// A task's observed state, in the order a task goes through them (Swarm's
/// states). Reports never move a task backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created, not yet placed.
    New,
    /// Waiting for a node that satisfies it.
    Pending,
    /// Given to a node; its agent has not picked it up yet.
    Assigned,
    /// The agent is preparing it (network, image).
    Preparing,
    /// Started, not yet healthy.
    Starting,
    /// Running (and healthy, if it has a health check).
    Running,
    /// Ended with exit code 0.
    Complete,
    /// Stopped because the leader asked.
    Shutdown,
    /// Ended with an error, or unhealthy.
    Failed,
    /// The agent could not start it.
    Rejected,
    /// Its node went down; what became of it is unknown.
    Orphaned,
}

impl TaskState {
    /// Whether the task has ended (nothing of it runs any more).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Docker's word for it (`Running`, `Shutdown`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Pending => "Pending",
            TaskState::Assigned => "Assigned",
            TaskState::Preparing => "Preparing",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Orphaned => "Orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's observed state with its details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The state.
    pub state: TaskState,
    /// What happened (`started`, `no suitable node (...)`).
    pub message: String,
    /// Why it failed, if it did.
    pub error: String,
    /// The process's exit code, once it ended.
    pub exit_code: Option<i32>,
    /// Ms since the epoch, of the change.
    pub at_ms: u64,
}

impl TaskStatus {
    /// A status without error or exit code.
    #[must_use]
    pub fn new(state: TaskState, message: impl Into<String>, at_ms: u64) -> Self {
        Self {
            state,
            message: message.into(),
            error: String::new(),
            exit_code: None,
            at_ms,
        }
    }
}

/// One run of a service's task spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Identity.
    pub id: TaskId,
    /// Its service.
    pub service: ServiceId,
    /// Replicated: its slot, from 1. Global: 0.
    pub slot: u32,
    /// Where it runs, once scheduled.
    pub node: Option<NodeId>,
    /// The spec it runs (a copy: the service's may have moved on).
    pub spec: TaskSpec,
    /// The service's `spec_version` it was created from.
    pub spec_version: u64,
    /// What the leader wants.
    pub desired: DesiredState,
    /// [`crate::state::ClusterState::version`] when `desired` last changed:
    /// a stopping task is stopped once every node has applied this version
    /// (so none sends it new flows any more).
    pub desired_version: u64,
    /// What its agent last reported.
    pub status: TaskStatus,
    /// Its address on the ingress network.
    pub addr: Option<Ipv4Addr>,
    /// Ms since the epoch.
    pub created_at_ms: u64,
}

impl Task {
    /// Whether the leader wants it running and it has not ended.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.desired == DesiredState::Running && !self.status.state.is_terminal()
    }

    /// Docker's task name: `web.3` (replicated) or `web.<node id>` (global).
    #[must_use]
    pub fn name(&self, service_name: &str) -> String {
        if self.slot > 0 {
            format!("{service_name}.{}", self.slot)
        } else {
            format!(
                "{service_name}.{}",
                self.node.map(crate::state::format_id).unwrap_or_default()
            )
        }
    }
}
