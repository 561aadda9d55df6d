//! The assignment builder: what the dispatcher sends each node (the tasks
//! it must run and the routing tables of every service), computed from the
//! state alone.
//!
//! A pure function ([`for_node`]) of the state and of the lowest version
//! every live agent has applied, so it is tested without I/O. The
//! draining rule lives here: a task the leader wants stopped is first
//! listed as a draining backend everywhere (no new flows); its own node is
//! told to stop it only once every live node has applied a version in which
//! it drains, so no node still sends it new flows when it stops.

use mesh_api::assignment::{
    AssignedTask, Assignment, Backend, Peer, ServiceNetwork, ServiceRoutes, TaskAction,
};
use mesh_api::file_ref::FileKind;
use mesh_api::node::{NodeId, NodeStatus};
use mesh_api::service::Service;
use mesh_api::task::{DesiredState, Task, TaskState};

use crate::state::{ClusterState, parse_network_id};

/// The user networks `service` joins, in its spec's order, each with its VIP there
/// (none in `dnsrr` mode) and its aliases.
fn service_networks(service: &Service) -> Vec<ServiceNetwork> {
    service
        .spec
        .task
        .networks
        .iter()
        .filter_map(|attachment| {
            // The managers store every attachment's target as the network's ID.
            let network = parse_network_id(&attachment.target).ok()?;
            let vip = service
                .endpoint
                .vips
                .iter()
                .find(|v| v.network == network)
                .map(|v| v.addr);
            Some(ServiceNetwork {
                network,
                vip,
                aliases: attachment.aliases.clone(),
            })
        })
        .collect()
}

/// Whether `task` is a backend of its service now, and whether it drains.
/// A backend runs on a node that is up and has a dataplane, has reported
/// `running` (healthy), and has not ended.
fn backend_state(state: &ClusterState, task: &Task) -> Option<bool> {
    let node = state.nodes.get(&task.node?)?;
    if node.status == NodeStatus::Down || node.data_addr.is_none() {
        return None;
    }
    if task.status.state != TaskState::Running || task.addr.is_none() {
        return None;
    }
    Some(task.desired != DesiredState::Running)
}

/// The assignment of `node`, given the lowest version every live agent has
/// applied (`acked`): a stopping task whose `desired_version` is at most
/// `acked` is drained everywhere, so its node may stop it.
#[must_use]
pub fn for_node(state: &ClusterState, node: NodeId, acked: u64) -> Assignment {
    let peers = state
        .nodes
        .values()
        .filter(|n| n.id != node)
        .filter_map(|n| {
            n.data_addr.map(|addr| Peer {
                id: n.id,
                hostname: n.hostname.clone(),
                addr,
            })
        })
        .collect();
    let tasks = state
        .tasks
        .values()
        .filter(|t| t.node == Some(node) && !t.status.state.is_terminal())
        .filter_map(|t| {
            let service_name = state
                .services
                .get(&t.service)
                .map(|s| s.spec.name.clone())
                .unwrap_or_default();
            let action = match t.desired {
                DesiredState::Running => TaskAction::Run,
                _ if t.desired_version <= acked => TaskAction::Stop,
                _ => TaskAction::Drain,
            };
            Some(AssignedTask {
                id: t.id,
                name: t.name(&service_name),
                service_id: t.service,
                service_name,
                spec: t.spec.clone(),
                addr: t.addr?,
                networks: t.networks.clone(),
                action,
                state: t.status.state,
                slot: t.slot,
            })
        })
        .collect::<Vec<_>>();
    let secrets = state.files_for(FileKind::Secret, &tasks);
    let configs = state.files_for(FileKind::Config, &tasks);
    let services = state
        .services
        .values()
        .map(|s| ServiceRoutes {
            id: s.id,
            name: s.spec.name.clone(),
            vip: s.endpoint.vip,
            ports: s.endpoint.ports.clone(),
            backends: state
                .service_tasks(s.id)
                .filter_map(|t| {
                    let draining = backend_state(state, t)?;
                    Some(Backend {
                        task: t.id,
                        name: t.name(&s.spec.name),
                        addr: t.addr?,
                        networks: t.networks.clone(),
                        node: t.node?,
                        draining,
                    })
                })
                .collect(),
            networks: service_networks(s),
            lb_algorithm: s.spec.endpoint.lb_algorithm,
        })
        .collect();
    let history = state
        .tasks
        .values()
        .filter(|t| t.node == Some(node) && t.status.state.is_terminal())
        .map(|t| t.id)
        .collect();
    Assignment {
        version: state.version,
        node,
        ingress: state.ingress.clone(),
        networks: state.networks.values().cloned().collect(),
        peers,
        tasks,
        services,
        history,
        secrets,
        configs,
        hostname: state
            .nodes
            .get(&node)
            .map(|n| n.hostname.clone())
            .unwrap_or_default(),
    }
}

/// The nodes whose agents must have applied a version before a stopping
/// task is stopped: those that are up and have a dataplane.
pub fn routing_nodes(state: &ClusterState) -> impl Iterator<Item = NodeId> + '_ {
    state
        .nodes
        .values()
        .filter(|n| n.status != NodeStatus::Down && n.data_addr.is_some())
        .map(|n| n.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{self, report};
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskId;

    /// Three ready nodes with dataplanes and a service `web` publishing
    /// 8080:80, with one task on each node.
    fn cluster() -> (ClusterState, Vec<TaskId>) {
        let mut state = testing::ready(&[1, 2, 3]);
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        spec.endpoint.ports = vec!["8080:80".parse().unwrap()];
        let service = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, service.id, &[Some(1), Some(2), Some(3)]);
        (state, ids)
    }

    #[test]
    fn only_running_tasks_are_backends_and_each_node_gets_its_own_tasks() {
        let (mut state, ids) = cluster();
        let a = for_node(&state, 1, 0);
        assert_eq!(a.peers.len(), 2);
        assert_eq!(a.tasks.len(), 1);
        assert_eq!(a.tasks[0].name, "web.1");
        assert_eq!(a.tasks[0].action, TaskAction::Run);
        assert!(a.services[0].backends.is_empty(), "nothing runs yet");
        assert_eq!(a.services[0].ports[0].published, Some(8080));
        report(&mut state, 2, ids[1], TaskState::Running);
        // A report from the wrong node changes nothing.
        report(&mut state, 1, ids[2], TaskState::Running);
        let a = for_node(&state, 1, 0);
        let backends = &a.services[0].backends;
        assert_eq!(backends.len(), 1);
        assert_eq!((backends[0].node, backends[0].draining), (2, false));
        assert_eq!(a.version, state.version);
    }

    #[test]
    fn a_stopping_task_drains_until_every_node_applied_it() {
        let (mut state, ids) = cluster();
        report(&mut state, 2, ids[1], TaskState::Running);
        testing::shut_down(&mut state, ids[1]);
        let v = state.tasks[&ids[1]].desired_version;
        let on_2 = for_node(&state, 2, v - 1);
        assert_eq!(on_2.tasks[0].action, TaskAction::Drain);
        assert!(on_2.services[0].backends[0].draining);
        assert_eq!(for_node(&state, 2, v).tasks[0].action, TaskAction::Stop);
        // Once it reports shutdown it is gone from both lists.
        report(&mut state, 2, ids[1], TaskState::Shutdown);
        let on_2 = for_node(&state, 2, v);
        assert!(on_2.tasks.is_empty());
        assert!(on_2.services[0].backends.is_empty());
    }

    #[test]
    fn networks_their_vips_aliases_and_task_addresses_are_in_every_assignment() {
        let mut state = testing::ready(&[1, 2]);
        let back = testing::create_network(&mut state, "back");
        let front = testing::create_network(&mut state, "front");
        let mut spec = ServiceSpec::new("api", RuntimeKind::Process, "task-echo", vec![]);
        spec.task.networks = vec![
            mesh_api::spec::NetworkAttachmentSpec {
                target: "back".into(),
                aliases: vec!["db".into()],
            },
            mesh_api::spec::NetworkAttachmentSpec {
                target: mesh_api::node::format_id(front.id),
                aliases: vec![],
            },
        ];
        let api = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, api.id, &[Some(1), Some(2)]);
        report(&mut state, 2, ids[1], TaskState::Running);
        let a = for_node(&state, 1, 0);
        let mut names: Vec<_> = a.networks.iter().map(|n| n.spec.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["back", "front"], "every user network, by ID");
        let routes = &a.services[0];
        assert_eq!(
            routes.vip, None,
            "a service on user networks has no ingress VIP"
        );
        assert_eq!(routes.networks.len(), 2);
        assert_eq!(routes.networks[0].network, back.id);
        assert_eq!(routes.networks[0].aliases, ["db"]);
        assert_eq!(routes.networks[1].network, front.id);
        for (n, net) in routes.networks.iter().zip([&back, &front]) {
            let vip = n.vip.expect("a VIP on each network");
            assert!(net.subnet.contains(vip) && vip != net.gateway);
        }
        // The task on node 1 is assigned there with an address on each network, in
        // the spec's order; the running one on node 2 is a backend with its own.
        assert_eq!(a.tasks.len(), 1);
        let nets: Vec<_> = a.tasks[0].networks.iter().map(|n| n.network).collect();
        assert_eq!(nets, [back.id, front.id]);
        assert_eq!(routes.backends.len(), 1);
        assert_eq!(routes.backends[0].networks, state.tasks[&ids[1]].networks);
        assert_ne!(a.tasks[0].networks, routes.backends[0].networks);
    }

    #[test]
    fn tasks_on_down_nodes_are_not_backends() {
        let (mut state, ids) = cluster();
        report(&mut state, 3, ids[2], TaskState::Running);
        assert_eq!(for_node(&state, 1, 0).services[0].backends.len(), 1);
        state.nodes.get_mut(&3).unwrap().status = NodeStatus::Down;
        assert!(for_node(&state, 1, 0).services[0].backends.is_empty());
        assert_eq!(routing_nodes(&state).collect::<Vec<_>>(), vec![1, 2]);
    }
}
