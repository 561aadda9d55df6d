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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mesh_api::assignment::{
    AssignedTask, Assignment, Backend, Peer, ServiceNetwork, ServiceRoutes, TaskAction,
};
use mesh_api::assignment_delta::{NodeWork, Routing, RoutingDelta};
use mesh_api::file_ref::FileKind;
use mesh_api::node::{NodeId, NodeStatus};
use mesh_api::service::{Service, ServiceId};
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

/// The state's tasks grouped by service and by node, in one pass: the
/// assignments of every node are built from it without a pass over every task
/// per service or per node. A partial index ([`TaskIndex::partial`]) holds the
/// tasks of some services and nodes only, for a refresh of what changed.
#[derive(Debug, Default)]
pub struct TaskIndex<'a> {
    by_service: HashMap<ServiceId, Vec<&'a Task>>,
    by_node: HashMap<NodeId, Vec<&'a Task>>,
    /// The nodes whose tasks are indexed; `None`: every node's.
    nodes: Option<BTreeSet<NodeId>>,
}

impl<'a> TaskIndex<'a> {
    /// Groups `state`'s tasks (each list in task ID order).
    #[must_use]
    pub fn new(state: &'a ClusterState) -> Self {
        let mut index = Self::default();
        for task in state.tasks.values() {
            index.by_service.entry(task.service).or_default().push(task);
            if let Some(node) = task.node {
                index.by_node.entry(node).or_default().push(task);
            }
        }
        index
    }

    /// The tasks of `services` and those of `nodes` alone: enough for those
    /// services' routes ([`routing_change`]) and those nodes' own parts
    /// ([`node_work`]; more nodes with [`TaskIndex::add_node`]).
    #[must_use]
    pub fn partial(
        state: &'a ClusterState,
        services: &BTreeSet<ServiceId>,
        nodes: &BTreeSet<NodeId>,
    ) -> Self {
        let mut index = Self {
            nodes: Some(nodes.clone()),
            ..Self::default()
        };
        if services.is_empty() && nodes.is_empty() {
            return index;
        }
        for task in state.tasks.values() {
            if services.contains(&task.service) {
                index.by_service.entry(task.service).or_default().push(task);
            }
            if let Some(node) = task.node.filter(|n| nodes.contains(n)) {
                index.by_node.entry(node).or_default().push(task);
            }
        }
        index
    }

    /// Indexes `node`'s tasks too, if they are not yet (one pass over the tasks).
    pub fn add_node(&mut self, state: &'a ClusterState, node: NodeId) {
        let Some(nodes) = &mut self.nodes else {
            return;
        };
        if nodes.insert(node) {
            let tasks = state.tasks.values().filter(|t| t.node == Some(node));
            self.by_node.insert(node, tasks.collect());
        }
    }

    fn of_service(&self, service: ServiceId) -> &[&'a Task] {
        self.by_service.get(&service).map_or(&[], Vec::as_slice)
    }

    fn of_node(&self, node: NodeId) -> &[&'a Task] {
        debug_assert!(
            self.nodes.as_ref().is_none_or(|n| n.contains(&node)),
            "node {node:x} is not indexed"
        );
        self.by_node.get(&node).map_or(&[], Vec::as_slice)
    }
}

/// The part of every node's assignment that is the same for all: the networks,
/// the nodes with a dataplane and every service's routes (sorted by ID).
#[must_use]
pub fn routing(state: &ClusterState, index: &TaskIndex<'_>) -> Routing {
    let nodes = state
        .nodes
        .values()
        .filter_map(|n| {
            n.data_addr.map(|addr| Peer {
                id: n.id,
                hostname: n.hostname.clone(),
                addr,
            })
        })
        .collect();
    let services = state
        .services
        .values()
        .map(|s| Arc::new(service_routes(state, index, s)))
        .collect();
    Routing {
        ingress: state.ingress.clone(),
        networks: state.networks.values().cloned().collect(),
        nodes,
        services,
    }
}

/// One service's routes: its VIPs, ports and backends.
fn service_routes(state: &ClusterState, index: &TaskIndex<'_>, s: &Service) -> ServiceRoutes {
    ServiceRoutes {
        id: s.id,
        name: s.spec.name.clone(),
        vip: s.endpoint.vip,
        ports: s.endpoint.ports.clone(),
        backends: index
            .of_service(s.id)
            .iter()
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
    }
}

/// The change from `held` (the routing part as it was built for an earlier
/// version) to `state`'s, given the services changed since (`touched`; nodes
/// unchanged): the routes of those services alone are rebuilt, so the cost is
/// in proportion to the change. The ingress network and the user networks
/// (whose allocation cursors move with every new task) are compared whole.
#[must_use]
pub fn routing_change(
    state: &ClusterState,
    index: &TaskIndex<'_>,
    touched: &BTreeSet<ServiceId>,
    held: &Routing,
) -> RoutingDelta {
    let mut delta = RoutingDelta::default();
    if held.ingress != state.ingress {
        delta.ingress = Some(state.ingress.clone());
    }
    if !held.networks.iter().eq(state.networks.values()) {
        delta.networks = Some(state.networks.values().cloned().collect());
    }
    for id in touched {
        let before = held
            .services
            .binary_search_by_key(id, |s| s.id)
            .ok()
            .map(|at| &held.services[at]);
        match (state.services.get(id), before) {
            (Some(service), before) => {
                let routes = service_routes(state, index, service);
                delta.service_changed(before.map(|b| &**b), Arc::new(routes));
            }
            (None, Some(_)) => delta.services_removed.push(*id),
            (None, None) => {}
        }
    }
    delta
}

/// The nodes whose own part changes when the lowest acknowledged version moves
/// from `before` to `after` (either way): those holding a task to stop whose
/// `desired_version` lies between, which turns from `Drain` into `Stop` (or back).
#[must_use]
pub fn nodes_with_drains_between(
    state: &ClusterState,
    before: u64,
    after: u64,
) -> BTreeSet<NodeId> {
    let (low, high) = (before.min(after), before.max(after));
    if low == high {
        return BTreeSet::new();
    }
    state
        .tasks
        .values()
        .filter(|t| {
            t.desired != DesiredState::Running
                && !t.status.state.is_terminal()
                && t.desired_version > low
                && t.desired_version <= high
        })
        .filter_map(|t| t.node)
        .collect()
}

/// `node`'s own part of its assignment, given the lowest version every live agent
/// has applied (`acked`): a stopping task whose `desired_version` is at most `acked`
/// is drained everywhere, so its node may stop it.
#[must_use]
pub fn node_work(
    state: &ClusterState,
    index: &TaskIndex<'_>,
    node: NodeId,
    acked: u64,
) -> NodeWork {
    let mine = index.of_node(node);
    let tasks = mine
        .iter()
        .filter(|t| !t.status.state.is_terminal())
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
                spec: mesh_api::spec::TaskSpec::clone(&t.spec),
                addr: t.addr?,
                networks: t.networks.clone(),
                action,
                state: t.status.state,
                slot: t.slot,
            })
        })
        .collect::<Vec<_>>();
    NodeWork {
        node,
        hostname: state
            .nodes
            .get(&node)
            .map(|n| n.hostname.clone())
            .unwrap_or_default(),
        secrets: state.files_for(FileKind::Secret, &tasks),
        configs: state.files_for(FileKind::Config, &tasks),
        history: mine
            .iter()
            .filter(|t| t.status.state.is_terminal())
            .map(|t| t.id)
            .collect(),
        tasks,
    }
}

/// The assignment of `node`, given the lowest version every live agent has
/// applied (`acked`; see [`node_work`]). The leader builds the two parts apart
/// ([`routing`] once for every node); this is both at once.
#[must_use]
pub fn for_node(state: &ClusterState, node: NodeId, acked: u64) -> Assignment {
    let index = TaskIndex::new(state);
    Assignment::compose(
        state.version,
        &routing(state, &index),
        &node_work(state, &index, node, acked),
    )
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
    use mesh_api::assignment_delta::{AssignmentFollower, Followed, NodeDelta, RoutingDelta};
    use mesh_api::codec;
    use mesh_api::proto::assignment::Body;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskId;
    use prost::Message as _;

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

    /// The leader's side of one node's session, as the dispatcher runs it: the
    /// whole assignment first, then each change as a delta against what was sent.
    struct Sender {
        node: NodeId,
        sent: Option<(u64, Routing, NodeWork)>,
    }

    impl Sender {
        /// Nothing sent yet to `node`.
        fn new(node: NodeId) -> Self {
            Self { node, sent: None }
        }

        fn next(&mut self, state: &ClusterState) -> Option<mesh_api::proto::Assignment> {
            let index = TaskIndex::new(state);
            let routing = routing(state, &index);
            let work = node_work(state, &index, self.node, 0);
            let message = match &self.sent {
                None => mesh_api::proto::Assignment::whole(
                    state.version,
                    codec::encode(&routing).unwrap().into(),
                    &work,
                )
                .unwrap(),
                Some((version, old_routing, old_work)) => {
                    let r = RoutingDelta::between(old_routing, &routing);
                    let w = NodeDelta::between(old_work, &work);
                    if r.is_empty() && w.is_empty() {
                        return None;
                    }
                    mesh_api::proto::Assignment::delta(
                        *version,
                        state.version,
                        codec::encode(&r).unwrap().into(),
                        &w,
                    )
                    .unwrap()
                }
            };
            self.sent = Some((state.version, routing, work));
            Some(message)
        }
    }

    fn held(
        follower: &mut AssignmentFollower,
        message: &mesh_api::proto::Assignment,
    ) -> Assignment {
        match follower.receive(message).unwrap() {
            Followed::Assignment(a) => (*a).clone(),
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    /// Scales `service` by one task on `node`, running.
    fn add_running(state: &mut ClusterState, service: ServiceId, node: NodeId) -> TaskId {
        let id = testing::create_tasks(state, service, &[Some(node)])[0];
        report(state, node, id, TaskState::Running);
        id
    }

    #[test]
    fn deltas_applied_in_turn_give_exactly_the_whole_assignment() {
        let (mut state, ids) = cluster();
        let web = state.tasks[&ids[0]].service;
        let mut sender = Sender::new(1);
        let mut follower = AssignmentFollower::new();
        let first = sender.next(&state).unwrap();
        assert_eq!(held(&mut follower, &first), for_node(&state, 1, 0));
        type Step<'a> = Box<dyn Fn(&mut ClusterState) + 'a>;
        let mut steps: Vec<Step<'_>> = vec![
            Box::new(|s| report(s, 2, ids[1], TaskState::Running)),
            Box::new(|s| report(s, 1, ids[0], TaskState::Running)),
            Box::new(move |s| {
                add_running(s, web, 3);
            }),
            Box::new(|s| testing::shut_down(s, ids[1])),
            Box::new(|s| report(s, 2, ids[1], TaskState::Shutdown)),
            Box::new(|s| {
                let api = ServiceSpec::new("api", RuntimeKind::Process, "task-echo", vec![]);
                let api = testing::create_service(s, api);
                add_running(s, api.id, 1);
            }),
            Box::new(|s| s.nodes.get_mut(&3).unwrap().status = NodeStatus::Down),
            Box::new(|s| {
                s.nodes.get_mut(&2).unwrap().data_addr = None;
            }),
        ];
        for (n, step) in steps.drain(..).enumerate() {
            step(&mut state);
            state.version += 1;
            let message = sender
                .next(&state)
                .expect("every step changes node 1's assignment");
            assert!(
                matches!(message.body, Some(Body::Delta(_))),
                "step {n} is sent as a change"
            );
            assert_eq!(
                held(&mut follower, &message),
                for_node(&state, 1, 0),
                "step {n}"
            );
        }
        state.version += 1;
        assert!(sender.next(&state).is_none(), "no change, nothing sent");
    }

    #[test]
    fn a_change_to_one_service_sends_that_service_alone() {
        let mut state = testing::ready(&[1, 2]);
        let mut services = Vec::new();
        for n in 0..50 {
            let spec =
                ServiceSpec::new(&format!("s{n}"), RuntimeKind::Process, "task-echo", vec![]);
            let service = testing::create_service(&mut state, spec);
            add_running(&mut state, service.id, 2);
            services.push(service.id);
        }
        let mut sender = Sender::new(1);
        let whole = sender.next(&state).unwrap().encoded_len();
        add_running(&mut state, services[7], 2);
        state.version += 1;
        let message = sender.next(&state).unwrap();
        let Some(Body::Delta(delta)) = &message.body else {
            panic!("not a delta")
        };
        let routing: RoutingDelta = codec::decode(&delta.routing).unwrap();
        assert!(routing.services.is_empty(), "only its backends changed");
        assert_eq!(routing.backends.len(), 1);
        assert_eq!(routing.backends[0].service, services[7]);
        assert_eq!(routing.backends[0].changed.len(), 1, "the new task alone");
        assert!(routing.nodes.is_empty() && routing.services_removed.is_empty());
        let w: NodeDelta = codec::decode(&delta.node).unwrap();
        assert!(w.is_empty(), "node 1's own work did not change: {w:?}");
        assert!(
            message.encoded_len() * 20 < whole,
            "{} bytes for the change, {whole} for the whole",
            message.encoded_len()
        );
    }

    #[test]
    fn one_task_more_in_a_big_service_sends_that_task_alone() {
        let mut state = testing::ready(&[1, 2]);
        let spec = ServiceSpec::new("big", RuntimeKind::Process, "task-echo", vec![]);
        let big = testing::create_service(&mut state, spec);
        for id in testing::create_tasks(&mut state, big.id, &[Some(2); 1000]) {
            report(&mut state, 2, id, TaskState::Running);
        }
        let mut sender = Sender::new(1);
        let mut follower = AssignmentFollower::new();
        held(&mut follower, &sender.next(&state).unwrap());
        let more = add_running(&mut state, big.id, 2);
        let gone = state.service_tasks(big.id).next().unwrap().id;
        testing::shut_down(&mut state, gone);
        report(&mut state, 2, gone, TaskState::Shutdown);
        state.version += 1;
        let message = sender.next(&state).unwrap();
        let Some(Body::Delta(delta)) = &message.body else {
            panic!("not a delta")
        };
        let routing: RoutingDelta = codec::decode(&delta.routing).unwrap();
        assert!(routing.services.is_empty());
        let changed: Vec<_> = routing.backends[0].changed.iter().map(|b| b.task).collect();
        assert_eq!(changed, [more]);
        assert_eq!(routing.backends[0].removed, [gone]);
        assert!(
            message.encoded_len() < 1024,
            "{} bytes for one backend in and one out",
            message.encoded_len()
        );
        let got = held(&mut follower, &message);
        assert_eq!(got, for_node(&state, 1, 0));
        assert_eq!(got.services[0].backends.len(), 1000);
    }

    #[test]
    fn a_change_to_the_backends_of_a_service_not_held_is_refused_whole() {
        let (state, _) = cluster();
        let mut a = for_node(&state, 1, 0);
        let before = a.clone();
        let routing = RoutingDelta {
            services_removed: vec![a.services[0].id],
            backends: vec![mesh_api::assignment_delta::BackendsDelta {
                service: a.services[0].id,
                ..Default::default()
            }],
            ..RoutingDelta::default()
        };
        let err = a
            .apply_delta(a.version, a.version + 1, &routing, &NodeDelta::default())
            .unwrap_err();
        assert!(err.to_string().contains("unknown service"), "{err}");
        assert_eq!(a, before, "nothing applied");
    }

    #[test]
    fn a_change_to_one_of_a_nodes_many_tasks_sends_that_task_alone() {
        let mut state = testing::ready(&[1]);
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        let web = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, web.id, &[Some(1); 200]);
        let mut sender = Sender::new(1);
        let mut follower = AssignmentFollower::new();
        held(&mut follower, &sender.next(&state).unwrap());
        report(&mut state, 1, ids[150], TaskState::Running);
        report(&mut state, 1, ids[3], TaskState::Complete);
        state.version += 1;
        let message = sender.next(&state).unwrap();
        let Some(Body::Delta(delta)) = &message.body else {
            panic!("not a delta")
        };
        let w: NodeDelta = codec::decode(&delta.node).unwrap();
        assert_eq!(w.tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[150]]);
        assert_eq!(w.tasks_removed, [ids[3]], "an ended task leaves the tasks");
        assert_eq!(w.history_added, [ids[3]].into(), "and joins the history");
        assert_eq!(held(&mut follower, &message), for_node(&state, 1, 0));
    }

    #[test]
    fn a_missed_change_asks_for_the_whole_assignment_and_then_follows_again() {
        let (mut state, ids) = cluster();
        let mut sender = Sender::new(1);
        let mut follower = AssignmentFollower::new();
        held(&mut follower, &sender.next(&state).unwrap());
        report(&mut state, 2, ids[1], TaskState::Running);
        state.version += 1;
        let _lost = sender.next(&state).unwrap();
        report(&mut state, 3, ids[2], TaskState::Running);
        state.version += 1;
        let after_gap = sender.next(&state).unwrap();
        let before = follower.held().cloned();
        match follower.receive(&after_gap).unwrap() {
            Followed::Resync(e) => assert!(e.to_string().contains("while version"), "{e}"),
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_ne!(before.as_deref(), Some(&for_node(&state, 1, 0)));
        // Further changes are ignored until the whole assignment comes.
        report(&mut state, 1, ids[0], TaskState::Running);
        state.version += 1;
        let ignored = sender.next(&state).unwrap();
        assert!(matches!(
            follower.receive(&ignored).unwrap(),
            Followed::Ignored
        ));
        // The leader answers the resync with the whole assignment.
        sender.sent = None;
        let whole = sender.next(&state).unwrap();
        assert_eq!(held(&mut follower, &whole), for_node(&state, 1, 0));
        report(&mut state, 1, ids[0], TaskState::Failed);
        state.version += 1;
        let next = sender.next(&state).unwrap();
        assert_eq!(held(&mut follower, &next), for_node(&state, 1, 0));
    }

    #[test]
    fn a_whole_assignment_as_json_from_an_older_manager_is_followed() {
        let (state, _) = cluster();
        let mut follower = AssignmentFollower::new();
        let whole = for_node(&state, 2, 0);
        let json = mesh_api::proto::Assignment::json(&whole);
        assert_eq!(held(&mut follower, &json), whole);
    }
}
