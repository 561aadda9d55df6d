//! What the dispatcher sends each node: the tasks it must run and the
//! routing tables of every service. The leader builds it (`mesh-core`'s
//! assignment builder); the agent turns it into its dataplane configuration
//! and its task supervisor's work.
//!
//! The draining rule: a task the leader wants stopped is first listed as a
//! draining backend everywhere (no new flows); its own node is told to stop
//! it ([`TaskAction::Stop`]) only once every live node has applied a version
//! in which it drains.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::file::FileContent;
use crate::network::{IngressNetwork, Network, NetworkAddr, NetworkId};
use crate::node::NodeId;
use crate::service::ServiceId;
use crate::spec::{LbAlgorithm, PortSpec, TaskSpec};
use crate::task::{TaskId, TaskState};

/// What a node's agent must do with one of its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskAction {
    /// Start it if it is not running; keep it running.
    Run,
    /// Keep it running: it takes no new flows, its flows go on; the stop
    /// comes later.
    Drain,
    /// Stop it: let its remaining flows end (up to its stop grace period),
    /// then SIGTERM, then SIGKILL.
    Stop,
}

/// One of the node's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTask {
    /// The task.
    pub id: TaskId,
    /// `web.1`.
    pub name: String,
    /// Its service.
    pub service_id: ServiceId,
    /// Its service's name.
    pub service_name: String,
    /// What it runs.
    pub spec: TaskSpec,
    /// Its address on the ingress network.
    pub addr: Ipv4Addr,
    /// Its addresses on the user networks it joins (one interface each), in its spec's
    /// order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAddr>,
    /// Run, drain or stop.
    pub action: TaskAction,
    /// The state the managers last recorded (the agent resumes from it
    /// after a restart).
    pub state: TaskState,
    /// Its slot (replicated: from 1; global: 0), for `{{.Task.Slot}}`.
    #[serde(default)]
    pub slot: u32,
}

/// A task as a backend of its service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The task.
    pub task: TaskId,
    /// `web.1`.
    pub name: String,
    /// Its ingress address.
    pub addr: Ipv4Addr,
    /// Its addresses on the user networks its service joins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAddr>,
    /// The node that runs it.
    pub node: NodeId,
    /// Takes no new flows.
    pub draining: bool,
}

/// A service as every node routes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoutes {
    /// The service.
    pub id: ServiceId,
    /// Its name.
    pub name: String,
    /// Its VIP on the ingress network (endpoint mode `vip`, and no user network).
    pub vip: Option<Ipv4Addr>,
    /// Its published ports, each with its published port filled in.
    pub ports: Vec<PortSpec>,
    /// Its running tasks.
    pub backends: Vec<Backend>,
    /// The user networks it joins. Empty: its east-west network is `ingress` (its
    /// tasks' ingress addresses and [`ServiceRoutes::vip`]); otherwise it is reached
    /// only on these, and its ingress addresses carry the routing mesh alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<ServiceNetwork>,
    /// How its new connections choose a task ([`EndpointSpec::lb_algorithm`](crate::spec::EndpointSpec)).
    #[serde(default, skip_serializing_if = "LbAlgorithm::is_default")]
    pub lb_algorithm: LbAlgorithm,
}

/// A service on one of the user networks it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// The network.
    pub network: NetworkId,
    /// Its VIP there (endpoint mode `vip`); `None`: DNS round robin.
    pub vip: Option<Ipv4Addr>,
    /// Further names it answers to there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Another node whose tasks this node may reach through the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The node.
    pub id: NodeId,
    /// Its hostname.
    pub hostname: String,
    /// Its underlay (data path) address.
    pub addr: Ipv4Addr,
}

/// Everything one node's agent needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The cluster state's version it was computed from.
    pub version: u64,
    /// The node it is for.
    pub node: NodeId,
    /// The ingress network.
    pub ingress: IngressNetwork,
    /// The user networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// The other nodes with a dataplane (shared, as the routes are: a copy of the
    /// assignment does not copy them).
    pub peers: Arc<Vec<Peer>>,
    /// The node's tasks that exist on it (or must).
    pub tasks: Vec<AssignedTask>,
    /// Every service's routing table, each shared (reference-counted): a copy of
    /// the assignment shares the routes it did not change, so following a change
    /// costs in proportion to the change (on the wire, each is the routes alone).
    pub services: Vec<Arc<ServiceRoutes>>,
    /// The node's ended tasks that the managers still keep (`service ps` lists
    /// them, `service logs` reads them): the agent keeps their logs, and removes
    /// those of tasks neither here nor in `tasks`.
    #[serde(default)]
    pub history: std::collections::BTreeSet<TaskId>,
    /// The secrets the node's tasks to run reference, and only those (Swarm's rule: a
    /// node gets a secret only while a task of its needs it). The agent keeps them in
    /// memory and on the tasks' own tmpfs, nowhere else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileContent>,
    /// The configs the node's tasks to run reference, and only those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileContent>,
    /// The node's hostname as the managers know it, for `{{.Node.Hostname}}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
}
