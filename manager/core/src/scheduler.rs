//! The scheduler: where new tasks run. As Swarm's scheduler: only ready,
//! active nodes that satisfy every constraint, hold a dataplane (an agent
//! that reported its data address) that works (its agent reported no
//! failure to program it: [`Node::dataplane_error`]) and run the task's runtime (the agent
//! reports its runtimes with its data address; a node without recorded
//! runtimes runs processes only: [`Node::runs`]); spread, so each new task goes
//! to the eligible node running the fewest tasks of its service (ties: the
//! fewest tasks overall, then the lowest node ID, so placement is
//! deterministic). A task with reservations (`--reserve-cpu`,
//! `--reserve-memory`) goes only to a node whose unreserved resources cover
//! them: the resources its agent reported ([`Node::resources`]) less the
//! reservations of the node's tasks that have not ended, as Swarm's
//! resource filter does; limits play no part in placement.
//!
//! [`place`] is the pure placement of a service's new tasks given the
//! load; [`schedule`] is the scheduler's pass of a round of the leader's
//! loops, after the orchestrators: one loop over every service's work, in
//! service order, placing each task that has no node (live tasks still
//! pending, and the tasks the updater and the orchestrators plan), with
//! the per-node totals of every service counted as it goes. What does not
//! fit stays pending, with the reason.

use std::collections::BTreeMap;

use crate::orchestrator::work::Work;
use crate::state::ClusterState;
use mesh_api::node::{Availability, Node, NodeId, NodeStatus};
use mesh_api::resources::Resources;
use mesh_api::spec::ServiceSpec;

/// Why tasks could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No node is ready, active, has a dataplane, runs the task's runtime
    /// and satisfies the constraints.
    #[error("no suitable node ({0})")]
    NoSuitableNode(String),
}

/// Whether the scheduler may place a new task of `spec` on `node`: ready,
/// active, with a dataplane (a node without one cannot plumb a task into
/// the mesh) that its agent can program (requests through a node whose
/// dataplane failed fail), and [`suits`] it.
#[must_use]
pub fn eligible(node: &Node, spec: &ServiceSpec) -> bool {
    node.status == NodeStatus::Ready
        && node.availability == Availability::Active
        && node.data_addr.is_some()
        && node.dataplane_error.is_none()
        && suits(node, spec)
}

/// Whether `node` can run the tasks of `spec` at all, whatever its status:
/// its agent runs the task's runtime ([`Node::runs`]) and it satisfies every
/// constraint.
#[must_use]
pub fn suits(node: &Node, spec: &ServiceSpec) -> bool {
    node.runs(spec.task.runtime) && spec.constraints.iter().all(|c| c.matches(node))
}

/// How many tasks each node runs now: of the service being placed, and in
/// all.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Tasks of the service being placed, per node.
    pub service: BTreeMap<NodeId, usize>,
    /// Tasks of every service, per node.
    pub total: BTreeMap<NodeId, usize>,
    /// The reservations of every service's tasks, per node.
    pub reserved: BTreeMap<NodeId, Resources>,
}

/// Whether `node`, whose tasks reserve `reserved`, has room for one more task
/// reserving `need`: its reported resources less `reserved` cover it (a task
/// without reservations fits anywhere).
#[must_use]
pub fn fits(node: &Node, reserved: &Resources, need: &Resources) -> bool {
    need.is_zero() || node.resources.saturating_sub(reserved).covers(need)
}

/// Chooses nodes for `count` new tasks of `spec`, one at a time, each to the
/// least-loaded eligible node with room for its reservations (counting the
/// tasks placed before it).
///
/// # Errors
/// [`ScheduleError::NoSuitableNode`] when not all fit, saying why the nodes
/// were passed over (as `docker service ps` does).
pub fn place(
    state: &ClusterState,
    load: &Load,
    spec: &ServiceSpec,
    count: usize,
) -> Result<Vec<NodeId>, ScheduleError> {
    match place_some(state, load, spec, count) {
        (placed, None) => Ok(placed),
        (_, Some(err)) => Err(err),
    }
}

/// [`place`], keeping the nodes of the tasks that fit: those placed, in order,
/// and why the others (if any) fit nowhere.
#[must_use]
pub fn place_some(
    state: &ClusterState,
    load: &Load,
    spec: &ServiceSpec,
    count: usize,
) -> (Vec<NodeId>, Option<ScheduleError>) {
    let candidates: Vec<&Node> = state.nodes.values().filter(|n| eligible(n, spec)).collect();
    let need = spec.task.resources.reservations;
    let mut service = load.service.clone();
    let mut total = load.total.clone();
    let mut reserved = load.reserved.clone();
    let mut placed = Vec::with_capacity(count);
    for _ in 0..count {
        let node = candidates
            .iter()
            .filter(|n| fits(n, &reserved.get(&n.id).copied().unwrap_or_default(), &need))
            .min_by_key(|n| {
                (
                    service.get(&n.id).copied().unwrap_or(0),
                    total.get(&n.id).copied().unwrap_or(0),
                    n.id,
                )
            })
            .map(|n| n.id);
        let Some(node) = node else {
            let why = why_none(state, spec, &reserved);
            return (placed, Some(ScheduleError::NoSuitableNode(why)));
        };
        *service.entry(node).or_default() += 1;
        *total.entry(node).or_default() += 1;
        let entry = reserved.entry(node).or_default();
        *entry = entry.saturating_add(&need);
        placed.push(node);
    }
    (placed, None)
}

/// Non-terminal tasks per node, every service counted.
#[must_use]
pub fn total_load(state: &ClusterState) -> BTreeMap<NodeId, usize> {
    let mut total = BTreeMap::new();
    for task in state.tasks.values() {
        if let (Some(node), false) = (task.node, task.status.state.is_terminal()) {
            *total.entry(node).or_default() += 1;
        }
    }
    total
}

/// The reservations of the non-terminal tasks per node, every service counted
/// (a task being stopped holds its reservation until it has ended).
#[must_use]
pub fn reserved_load(state: &ClusterState) -> BTreeMap<NodeId, Resources> {
    let mut reserved: BTreeMap<NodeId, Resources> = BTreeMap::new();
    for task in state.tasks.values() {
        if let (Some(node), false) = (task.node, task.status.state.is_terminal()) {
            let entry = reserved.entry(node).or_default();
            *entry = entry.saturating_add(&task.spec.resources.reservations);
        }
    }
    reserved
}

/// The scheduler's pass over `works` (each service's work, in service
/// order): places every live task still pending and every planned task
/// without a node, service by service, spreading them with [`place`]; the
/// per-node totals start from [`total_load`] and count each service's
/// placements (and the global services' planned tasks) for the services
/// after it. Where no node fits, the planned tasks stay pending with the
/// scheduler's reason (pending tasks keep theirs).
pub fn schedule<'w, 'a: 'w>(
    state: &ClusterState,
    works: impl IntoIterator<Item = &'w mut Work<'a>>,
) {
    let mut total = total_load(state);
    let mut reserved = reserved_load(state);
    for work in works {
        schedule_service(state, work, &mut total, &mut reserved);
    }
}

/// One service's share of [`schedule`].
fn schedule_service(
    state: &ClusterState,
    work: &mut Work<'_>,
    total: &mut BTreeMap<NodeId, usize>,
    reserved: &mut BTreeMap<NodeId, Resources>,
) {
    let need = work.service.spec.task.resources.reservations;
    let reserve = |reserved: &mut BTreeMap<NodeId, Resources>, node: NodeId| {
        let entry = reserved.entry(node).or_default();
        *entry = entry.saturating_add(&need);
    };
    let pending_tasks: Vec<usize> = (0..work.tasks.len())
        .filter(|&i| work.tasks[i].is_live() && work.tasks[i].node.is_none())
        .collect();
    let pending_planned: Vec<usize> = (0..work.create.len())
        .filter(|&i| work.create[i].node.is_none())
        .collect();
    for planned in work.create.iter().filter_map(|p| p.node) {
        *total.entry(planned).or_default() += 1;
        reserve(reserved, planned);
    }
    let count = pending_tasks.len() + pending_planned.len();
    if count == 0 {
        return;
    }
    let mut service_load = BTreeMap::new();
    for node in work
        .tasks
        .iter()
        .filter(|t| t.is_live())
        .filter_map(|t| t.node)
        .chain(work.create.iter().filter_map(|p| p.node))
    {
        *service_load.entry(node).or_default() += 1;
    }
    let load = Load {
        service: service_load,
        total: total.clone(),
        reserved: reserved.clone(),
    };
    let (nodes, err) = place_some(state, &load, &work.service.spec, count);
    let mut nodes = nodes.into_iter();
    for i in pending_tasks {
        let Some(node) = nodes.next() else { break };
        work.tasks[i].node = Some(node);
        *total.entry(node).or_default() += 1;
        reserve(reserved, node);
    }
    for i in pending_planned {
        if let Some(node) = nodes.next() {
            work.create[i].node = Some(node);
            *total.entry(node).or_default() += 1;
            reserve(reserved, node);
        } else if let Some(err) = &err {
            work.create[i].message = err.to_string();
        }
    }
}

/// Why no node is eligible for `spec`, each node counted once, for its
/// first reason in this order: not ready, paused or drained, without a
/// dataplane, with a failed dataplane, without the task's runtime,
/// constraints not satisfied, no room for its reservations (the nodes'
/// tasks reserving `reserved`).
fn why_none(
    state: &ClusterState,
    spec: &ServiceSpec,
    reserved: &BTreeMap<NodeId, Resources>,
) -> String {
    let runtime = spec.task.runtime;
    let (mut down, mut unavailable, mut no_dataplane, mut no_runtime, mut unmatched) =
        (0, 0, 0, 0, 0);
    let (mut failed_dataplane, mut no_room) = (0, 0);
    let need = spec.task.resources.reservations;
    for node in state.nodes.values() {
        if node.status != NodeStatus::Ready {
            down += 1;
        } else if node.availability != Availability::Active {
            unavailable += 1;
        } else if node.data_addr.is_none() {
            no_dataplane += 1;
        } else if node.dataplane_error.is_some() {
            failed_dataplane += 1;
        } else if !node.runs(runtime) {
            no_runtime += 1;
        } else if !spec.constraints.iter().all(|c| c.matches(node)) {
            unmatched += 1;
        } else if !fits(
            node,
            &reserved.get(&node.id).copied().unwrap_or_default(),
            &need,
        ) {
            no_room += 1;
        }
    }
    let mut parts = Vec::new();
    if no_runtime > 0 {
        parts.push(format!(
            "{runtime} runtime not available on {no_runtime} nodes"
        ));
    }
    if unmatched > 0 {
        parts.push(format!(
            "scheduling constraints not satisfied on {unmatched} nodes"
        ));
    }
    if no_room > 0 {
        parts.push(format!("insufficient resources on {no_room} nodes"));
    }
    if unavailable > 0 {
        parts.push(format!("{unavailable} nodes paused or drained"));
    }
    if no_dataplane > 0 {
        parts.push(format!("{no_dataplane} nodes without a dataplane"));
    }
    if failed_dataplane > 0 {
        parts.push(format!("{failed_dataplane} nodes whose dataplane failed"));
    }
    if down > 0 {
        parts.push(format!("{down} nodes not ready"));
    }
    if parts.is_empty() {
        parts.push("the cluster has no nodes".to_string());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::orchestrator::testing::{service, task};
    use crate::state::testing::cluster;
    use mesh_api::service::Service;
    use mesh_api::spec::RuntimeKind;
    use mesh_api::task::TaskState;

    use Availability::{Active, Drain, Pause};
    use NodeStatus::{Down, Ready};

    /// A service spec of `runtime` with `constraints`.
    fn spec(runtime: RuntimeKind, constraints: &[&str]) -> ServiceSpec {
        let mut spec = ServiceSpec::new("web", runtime, "task-echo", vec![]);
        spec.constraints = constraints.iter().map(|c| c.parse().unwrap()).collect();
        spec
    }

    fn any() -> ServiceSpec {
        spec(RuntimeKind::Process, &[])
    }

    fn counts(placed: &[NodeId]) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for id in placed {
            *out.entry(*id).or_default() += 1;
        }
        out
    }

    #[test]
    fn tasks_spread_evenly_over_ready_active_nodes() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
            (4, Down, Active, "b"),
            (5, Ready, Drain, "b"),
            (6, Ready, Pause, "b"),
        ]);
        let placed = place(&state, &Load::default(), &any(), 10).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(1, 4), (2, 3), (3, 3)]));
    }

    /// Issue 12, fault 7: a node whose agent cannot program its dataplane
    /// stayed eligible, and requests through the tasks placed there failed.
    #[test]
    fn no_new_task_goes_to_a_node_whose_dataplane_failed() {
        let mut state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        state.nodes.get_mut(&2).unwrap().dataplane_error =
            Some("attaching XDP to eth0: Operation not supported".into());
        assert!(eligible(&state.nodes[&1], &any()));
        assert!(!eligible(&state.nodes[&2], &any()));
        let placed = place(&state, &Load::default(), &any(), 4).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(1, 4)]));
        state.nodes.get_mut(&1).unwrap().dataplane_error = Some("map update failed".into());
        assert_eq!(
            place(&state, &Load::default(), &any(), 1),
            Err(ScheduleError::NoSuitableNode(
                "2 nodes whose dataplane failed".into()
            ))
        );
        // Recovered: used again.
        state.nodes.get_mut(&2).unwrap().dataplane_error = None;
        let placed = place(&state, &Load::default(), &any(), 2).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(2, 2)]));
    }

    #[test]
    fn new_tasks_fill_the_least_loaded_nodes_first() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "a"),
        ]);
        let load = Load {
            service: BTreeMap::from([(1, 3), (2, 1)]),
            total: BTreeMap::from([(1, 3), (2, 1), (3, 5)]),
            reserved: BTreeMap::new(),
        };
        let placed = place(&state, &load, &any(), 3).unwrap();
        // Node 3 has no task of this service: it gets the first; then 2 and 3 tie
        // on the service at 1, and 2 runs fewer tasks overall.
        assert_eq!(placed, vec![3, 2, 3]);
    }

    #[test]
    fn constraints_restrict_placement_and_explain_a_refusal() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "b"),
            (3, Down, Active, "b"),
        ]);
        let zone_b = spec(RuntimeKind::Process, &["node.labels.zone==b"]);
        assert_eq!(
            place(&state, &Load::default(), &zone_b, 2).unwrap(),
            vec![2, 2]
        );
        let zone_c = spec(RuntimeKind::Process, &["node.labels.zone==c"]);
        let err = place(&state, &Load::default(), &zone_c, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 nodes not ready)"
        );
        // A ready, active node without a dataplane runs nothing.
        let mut bare = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        bare.nodes.get_mut(&1).unwrap().data_addr = None;
        assert_eq!(
            place(&bare, &Load::default(), &any(), 2).unwrap(),
            vec![2, 2]
        );
        bare.nodes.get_mut(&2).unwrap().data_addr = None;
        assert_eq!(
            place(&bare, &Load::default(), &any(), 1)
                .unwrap_err()
                .to_string(),
            "no suitable node (2 nodes without a dataplane)"
        );
        assert!(
            place(&ClusterState::default(), &Load::default(), &any(), 1)
                .unwrap_err()
                .to_string()
                .contains("no nodes")
        );
    }

    #[test]
    fn docker_tasks_go_only_to_nodes_whose_agent_runs_docker() {
        let mut state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "a"),
        ]);
        let docker = spec(RuntimeKind::Docker, &[]);
        // Every agent runs processes only: a docker task fits nowhere, and
        // the reason names the runtime as docker does.
        assert_eq!(
            place(&state, &Load::default(), &docker, 1)
                .unwrap_err()
                .to_string(),
            "no suitable node (docker runtime not available on 3 nodes)"
        );
        // Node 2's agent runs docker: every docker task goes there, process
        // tasks still spread over all three.
        state.nodes.get_mut(&2).unwrap().runtimes =
            BTreeSet::from([RuntimeKind::Process, RuntimeKind::Docker]);
        assert_eq!(
            place(&state, &Load::default(), &docker, 3).unwrap(),
            vec![2, 2, 2]
        );
        assert_eq!(
            place(&state, &Load::default(), &any(), 3).unwrap(),
            vec![1, 2, 3]
        );
        // A node recorded before agents reported runtimes runs processes only.
        let node = state.nodes.get_mut(&1).unwrap();
        node.runtimes.clear();
        assert!(eligible(node, &any()));
        assert!(!eligible(node, &docker));
        // Reasons add up: one node lacks docker, one the constraint.
        let docker_in_a = spec(RuntimeKind::Docker, &["node.labels.zone==b"]);
        assert_eq!(
            place(&state, &Load::default(), &docker_in_a, 1)
                .unwrap_err()
                .to_string(),
            "no suitable node (docker runtime not available on 2 nodes; \
             scheduling constraints not satisfied on 1 nodes)"
        );
    }

    #[test]
    fn a_docker_service_without_a_docker_node_stays_pending_with_the_reason() {
        let state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        let mut dk = service(1);
        dk.spec.task.runtime = RuntimeKind::Docker;
        let mut works = vec![Work {
            service: &dk,
            tasks: Vec::new(),
            create: Vec::new(),
            delete: BTreeSet::new(),
        }];
        works[0].add(1, None);
        schedule(&state, &mut works);
        assert_eq!(works[0].create[0].node, None);
        assert_eq!(
            works[0].create[0].message,
            "no suitable node (docker runtime not available on 2 nodes)"
        );
    }

    #[test]
    fn state_from_before_runtimes_were_reported_loads_as_process_only() {
        let mut state = cluster(&[(1, Ready, Active, "a")]);
        let mut json = serde_json::to_value(&state).unwrap();
        let node = &mut json["nodes"]["1"];
        assert!(node.as_object_mut().unwrap().remove("runtimes").is_some());
        let old: ClusterState = serde_json::from_value(json).unwrap();
        assert!(old.nodes[&1].runtimes.is_empty());
        assert_eq!(place(&old, &Load::default(), &any(), 1).unwrap(), vec![1]);
        assert_eq!(
            place(&old, &Load::default(), &spec(RuntimeKind::Docker, &[]), 1)
                .unwrap_err()
                .to_string(),
            "no suitable node (docker runtime not available on 1 nodes)"
        );
        // A docker-capable node's record survives the round trip.
        state.nodes.get_mut(&1).unwrap().runtimes =
            BTreeSet::from([RuntimeKind::Process, RuntimeKind::Docker]);
        let back: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn the_pass_places_every_service_s_pending_tasks_counting_all_services() {
        let state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        let a = service(1);
        let b = Service {
            id: 2,
            ..service(2)
        };
        let mut c = Service {
            id: 3,
            ..service(2)
        };
        c.spec.constraints = vec!["node.labels.zone==c".parse().unwrap()];
        let mut works: Vec<Work<'_>> = [&a, &b, &c]
            .map(|service| Work {
                service,
                tasks: Vec::new(),
                create: Vec::new(),
                delete: BTreeSet::new(),
            })
            .into();
        works[0].add(1, None);
        works[1].add(1, None);
        works[1].add(2, None);
        let mut pending = task(&c, 30, 1, "v2", TaskState::Pending);
        pending.node = None;
        pending.status.message = "waiting".into();
        works[2].tasks.push(pending);
        works[2].add(2, None);

        schedule(&state, &mut works);
        let nodes = |work: &Work<'_>| -> Vec<Option<NodeId>> {
            work.create.iter().map(|p| p.node).collect()
        };
        assert_eq!(nodes(&works[0]), vec![Some(1)]);
        // Node 1 has service 1's task: service 2's first goes to node 2.
        assert_eq!(nodes(&works[1]), vec![Some(2), Some(1)]);
        // No node fits service 3: its new task says why, its pending task
        // keeps its message.
        assert_eq!(nodes(&works[2]), vec![None]);
        assert_eq!(
            works[2].create[0].message,
            "no suitable node (scheduling constraints not satisfied on 2 nodes)"
        );
        assert_eq!(works[2].tasks[0].node, None);
        assert_eq!(works[2].tasks[0].status.message, "waiting");
    }

    const GIB: u64 = 1 << 30;
    const CPU: u64 = 1_000_000_000;

    /// Nodes 1 and 2 with 2 CPUs and 4 GiB each; node 3 reported nothing.
    fn sized() -> ClusterState {
        let mut state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "a"),
        ]);
        for id in [1, 2] {
            state.nodes.get_mut(&id).unwrap().resources = Resources {
                nano_cpus: 2 * CPU,
                memory_bytes: 4 * GIB,
            };
        }
        state
    }

    fn reserving(cpus: u64, memory: u64) -> ServiceSpec {
        let mut spec = any();
        spec.task.resources.reservations = Resources {
            nano_cpus: cpus,
            memory_bytes: memory,
        };
        spec
    }

    #[test]
    fn a_task_goes_only_where_unreserved_resources_cover_its_reservations() {
        let state = sized();
        // 3 GiB each: one per node that reported 4 GiB; node 3 reported nothing.
        let big = reserving(0, 3 * GIB);
        assert_eq!(
            place(&state, &Load::default(), &big, 2).unwrap(),
            vec![1, 2]
        );
        let (placed, err) = place_some(&state, &Load::default(), &big, 3);
        assert_eq!(placed, vec![1, 2]);
        assert_eq!(
            err.unwrap().to_string(),
            "no suitable node (insufficient resources on 3 nodes)"
        );
        // What is reserved already counts: node 1 has 1.5 CPUs reserved.
        let load = Load {
            reserved: BTreeMap::from([(
                1,
                Resources {
                    nano_cpus: 1_500_000_000,
                    memory_bytes: 0,
                },
            )]),
            ..Load::default()
        };
        let one_cpu = reserving(CPU, 0);
        assert_eq!(place(&state, &load, &one_cpu, 2).unwrap(), vec![2, 2]);
        // Exactly what is left fits.
        assert_eq!(
            place(&state, &load, &reserving(500_000_000, 4 * GIB), 1).unwrap(),
            vec![1]
        );
        // More memory than any node has: pending, with docker's reason.
        assert_eq!(
            place(&state, &Load::default(), &reserving(0, 1 << 50), 1)
                .unwrap_err()
                .to_string(),
            "no suitable node (insufficient resources on 3 nodes)"
        );
        // Without reservations, resources do not matter (node 3 too).
        assert_eq!(place(&state, &load, &any(), 3).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn the_pass_counts_reservations_of_unfinished_tasks_and_of_its_placements() {
        let state = sized();
        let mut a = service(1);
        a.spec.task.resources.reservations.memory_bytes = 3 * GIB;
        let mut state = state;
        // A running task of service 1 on node 1 reserves 3 GiB there; a finished
        // one on node 2 reserves nothing.
        let mut running = task(&a, 10, 1, "v2", TaskState::Running);
        running.node = Some(1);
        let mut done = task(&a, 11, 2, "v2", TaskState::Complete);
        done.node = Some(2);
        state.tasks.insert(10, running);
        state.tasks.insert(11, done);
        assert_eq!(
            reserved_load(&state),
            BTreeMap::from([(
                1,
                Resources {
                    nano_cpus: 0,
                    memory_bytes: 3 * GIB
                }
            )])
        );
        let b = Service { id: 2, ..a.clone() };
        let mut works: Vec<Work<'_>> = [&a, &b]
            .map(|service| Work {
                service,
                tasks: Vec::new(),
                create: Vec::new(),
                delete: BTreeSet::new(),
            })
            .into();
        works[0].add(2, None);
        works[1].add(1, None);
        schedule(&state, &mut works);
        // Service 1's new task takes node 2, the last room: service 2's fits nowhere.
        assert_eq!(works[0].create[0].node, Some(2));
        assert_eq!(works[1].create[0].node, None);
        assert_eq!(
            works[1].create[0].message,
            "no suitable node (insufficient resources on 3 nodes)"
        );
    }
}
