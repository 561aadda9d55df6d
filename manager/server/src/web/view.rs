//! What the cluster view shows, built from the state: a pure function of the cluster
//! state and what this manager knows of Raft, serialised as the page's JSON. The nodes
//! are columns with their tasks as cards; the services a legend with their ports,
//! replicas and a rolling update in progress. Only what `node ls`, `service ls` and
//! `service ps` show: no environment, labels of containers, secrets or configs.

use std::collections::BTreeMap;

use mesh_api::node::{NodeId, Role, format_id};
use mesh_api::service::{Service, UpdateState};
use mesh_api::task::{DesiredState, Task, TaskState};
use mesh_core::state::ClusterState;
use serde::Serialize;

use crate::grpc::control::all_task_counts;
use crate::raft::reachability::ManagerView;

/// The whole page's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The state's version it was built from.
    pub version: u64,
    /// This manager's clock, ms since the epoch (the page computes ages from it).
    pub now_ms: u64,
    /// The leader's hostname, if one is known.
    pub leader: Option<String>,
    /// The nodes, by hostname.
    pub nodes: Vec<NodeView>,
    /// The services, by name.
    pub services: Vec<ServiceView>,
    /// Tasks that wait for a node (no node fits them yet).
    pub unassigned: Vec<TaskView>,
}

/// A node: a column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// Its ID, as `node ls` prints it.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// Whether it leads the managers.
    pub leader: bool,
    /// `Leader`, `Reachable` or `Unreachable` for a manager; empty for a worker.
    pub manager_status: String,
    /// `ready`, `down` or `unknown`.
    pub status: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its tasks, by name.
    pub tasks: Vec<TaskView>,
}

/// A task: a card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// Its ID.
    pub id: String,
    /// `web.3` (or `web.<node>` for a global service).
    pub name: String,
    /// Its service's name.
    pub service: String,
    /// Its slot (0 for a global service's).
    pub slot: u32,
    /// Its state as its agent reported it (`running`, `starting`...).
    pub state: String,
    /// `running` or `shutdown`: a running task that is being stopped (an update
    /// replacing it, a scale down) shows as stopping.
    pub desired: String,
    /// With a health check: `healthy` (running) or `starting`; otherwise empty.
    pub health: String,
    /// When it was created, ms since the epoch.
    pub created_at_ms: u64,
    /// Its address on the ingress network.
    pub addr: String,
    /// Whether it runs the service's current spec (false: an update will replace it).
    pub current: bool,
    /// What its agent last said, or why it failed.
    pub message: String,
}

/// A service: a legend entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Its image (or program).
    pub image: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Running tasks.
    pub running: u32,
    /// Desired tasks.
    pub desired: u32,
    /// Published ports, as `service ls` prints them (`*:8080->80/tcp`).
    pub ports: Vec<String>,
    /// Its colour's hue (0-359), from its name: the same on every page and every load.
    pub hue: u16,
    /// A rolling update or rollback in progress or paused: its state and message.
    pub update: Option<UpdateView>,
}

/// A service's last update, when it is not completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpdateView {
    /// `updating`, `paused`, `rollback_started`, `rollback_paused`.
    pub state: String,
    /// What it is doing, or why it paused.
    pub message: String,
    /// Tasks already on the new spec, of the service's desired.
    pub done: u32,
}

/// A service's hue: FNV-1a of its name, over the colour wheel. Stable across
/// managers, restarts and page loads.
#[must_use]
pub fn hue(name: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u16::try_from(hash % 360).unwrap_or(0)
}

/// The view of `state` as this manager sees it (`raft`), at `now_ms`.
#[must_use]
pub fn build(state: &ClusterState, raft: &ManagerView, now_ms: u64) -> ClusterView {
    let mut by_node: BTreeMap<NodeId, Vec<TaskView>> = BTreeMap::new();
    let mut unassigned = Vec::new();
    for task in state.tasks.values().filter(|t| shown(t)) {
        let Some(service) = state.services.get(&task.service) else {
            continue;
        };
        let card = task_view(task, service);
        match task.node {
            Some(node) => by_node.entry(node).or_default().push(card),
            None => unassigned.push(card),
        }
    }
    let mut nodes: Vec<NodeView> = state
        .nodes
        .values()
        .map(|node| {
            let mut tasks = by_node.remove(&node.id).unwrap_or_default();
            tasks.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            NodeView {
                id: format_id(node.id),
                hostname: node.hostname.clone(),
                role: node.role.to_string(),
                leader: raft.leader == Some(node.id),
                manager_status: match node.role {
                    Role::Manager => raft.status(node.id).to_string(),
                    Role::Worker => String::new(),
                },
                status: node.status.to_string(),
                availability: node.availability.to_string(),
                labels: node.labels.clone().into_iter().collect(),
                tasks,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    unassigned.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services: Vec<ServiceView> = all_task_counts(state)
        .into_iter()
        .map(|(service, (running, desired))| service_view(state, service, running, desired))
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterView {
        version: state.version,
        now_ms,
        leader: raft
            .leader
            .and_then(|id| state.nodes.get(&id))
            .map(|n| n.hostname.clone()),
        nodes,
        services,
        unassigned,
    }
}

/// A task is shown while it is wanted, and while a stopping one has not ended.
fn shown(task: &Task) -> bool {
    !task.status.state.is_terminal()
}

fn task_view(task: &Task, service: &Service) -> TaskView {
    let service_name = service.spec.name.as_str();
    let health = match (&task.spec.health, task.status.state) {
        (None, _) => "",
        (Some(_), TaskState::Running) => "healthy",
        (Some(_), _) => "starting",
    };
    TaskView {
        id: format_id(task.id),
        name: task.name(service_name),
        service: service_name.to_owned(),
        slot: task.slot,
        state: task.status.state.to_string(),
        desired: match task.desired {
            DesiredState::Running => "running",
            _ => "shutdown",
        }
        .to_owned(),
        health: health.to_owned(),
        created_at_ms: task.created_at_ms,
        addr: task.addr.map(|a| a.to_string()).unwrap_or_default(),
        current: task.spec_version == service.spec_version,
        message: if task.status.error.is_empty() {
            task.status.message.clone()
        } else {
            task.status.error.clone()
        },
    }
}

fn service_view(
    state: &ClusterState,
    service: &Service,
    running: u32,
    desired: u32,
) -> ServiceView {
    let update = service
        .update_status
        .as_ref()
        .filter(|u| {
            !matches!(
                u.state,
                UpdateState::Completed | UpdateState::RollbackCompleted
            )
        })
        .map(|u| UpdateView {
            state: u.state.to_string(),
            message: u.message.clone(),
            done: u32::try_from(
                state
                    .service_tasks(service.id)
                    .filter(|t| {
                        t.is_live()
                            && t.spec_version == service.spec_version
                            && t.status.state == TaskState::Running
                    })
                    .count(),
            )
            .unwrap_or(u32::MAX),
        });
    ServiceView {
        name: service.spec.name.clone(),
        image: service.spec.task.image.clone(),
        mode: match service.spec.replicas() {
            Some(_) => "replicated",
            None => "global",
        }
        .to_owned(),
        running,
        desired,
        ports: service
            .published_ports()
            .iter()
            .map(ToString::to_string)
            .collect(),
        hue: hue(&service.spec.name),
        update,
    }
}

#[cfg(test)]
mod tests {
    use super::hue;

    /// A service keeps its colour on every manager, restart and page load, and
    /// services of a stack get different ones.
    #[test]
    fn a_service_hue_is_stable_and_services_differ() {
        assert_eq!(hue("web"), hue("web"));
        assert_eq!(
            hue("web"),
            145,
            "the hue of a name changed: every page's colours move"
        );
        let hues: std::collections::BTreeSet<u16> = ["web", "api", "db", "cache", "worker"]
            .into_iter()
            .map(hue)
            .collect();
        assert_eq!(hues.len(), 5);
        assert!(hues.iter().all(|h| *h < 360));
    }
}
