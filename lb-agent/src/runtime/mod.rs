//! Task runtimes: what runs a task and gives it its network.
//!
//! Two runtimes share one shape: `process` (the default: a command the agent
//! runs in a network namespace of its own) and `docker` (a container created
//! through bollard with network mode `none`). Either way the agent plumbs the
//! task's network itself ([`crate::plumb`]): a veth whose host side is the
//! TC attach point and the endpoint's interface, the task's ingress address
//! as a /32, a link-local gateway, MTU = underlay MTU - 50.
//!
//! [`Runtimes`] dispatches on the task spec's runtime kind.

use std::net::Ipv4Addr;

use manager::service::TaskId;
use manager::spec::{RuntimeKind, TaskSpec};

/// What a runtime needs to start a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// The task.
    pub id: TaskId,
    /// `web.1`: for logs and container names.
    pub name: String,
    /// What it runs.
    pub spec: TaskSpec,
    /// Its address on the ingress network (a /32 on its interface).
    pub addr: Ipv4Addr,
    /// The MTU of its interface.
    pub mtu: u32,
}

/// A started task's network, as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The host side of the task's veth, in the agent's namespace.
    pub host_iface: String,
    /// Its ifindex.
    pub ifindex: u32,
}

/// How a task's main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code; 128 + the signal's number if a signal killed it.
    pub code: i32,
}

/// Why a runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec asks for a runtime this agent does not have.
    #[error("the {0} runtime is not available on this node: {1}")]
    Unavailable(RuntimeKind, String),
    /// No task with this ID runs here.
    #[error("task {0:016x} is not running on this node")]
    Unknown(TaskId),
    /// Starting, stopping or plumbing failed.
    #[error("{0}")]
    Failed(String),
}

// PLACEHOLDER (dropped at merge): the real runtimes replace this.
mod placeholder;
pub use placeholder::Runtimes;
