//! A task: one run of a service's task spec in a slot (replicated) or on a
//! node (global), with the state the leader wants for it and the state its
//! agent last reported (Swarm's task states).

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::node::{NodeId, format_id};
use crate::service::ServiceId;
use crate::spec::TaskSpec;

/// A task's identity, written as 16 hex digits like node IDs.
pub type TaskId = u64;

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
    /// The spec it runs (the service's as it was when the task was created: the
    /// service's may have moved on). Shared by the tasks created from it, so a
    /// copy of a task (the leader's plans copy thousands) does not copy its spec.
    pub spec: std::sync::Arc<TaskSpec>,
    /// The service's `spec_version` it was created from.
    pub spec_version: u64,
    /// What the leader wants.
    pub desired: DesiredState,
    /// The cluster state's version when `desired` last changed:
    /// a stopping task is stopped once every node has applied this version
    /// (so none sends it new flows any more).
    pub desired_version: u64,
    /// What its agent last reported.
    pub status: TaskStatus,
    /// Its address on the ingress network.
    pub addr: Option<Ipv4Addr>,
    /// Its addresses on the user networks its spec joins, in the spec's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::network::NetworkAddr>,
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
                self.node.map(format_id).unwrap_or_default()
            )
        }
    }
}
