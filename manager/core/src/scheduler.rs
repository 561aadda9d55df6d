//! The scheduler: where new tasks run. As Swarm's scheduler: only ready,
//! active nodes that satisfy every constraint, hold a dataplane (an agent
//! that reported its data address) that works (its agent reported no
//! failure to program it: [`Node::dataplane_error`]) and run the task's runtime (the agent
//! reports its runtimes with its data address; a node without recorded
//! runtimes runs processes only: [`Node::runs`]); spread, so each new task goes
//! to the eligible node running the fewest tasks of its service (ties: the
//! fewest tasks overall, then the lowest node ID, so placement is
//! deterministic). A service with placement preferences
//! (`--placement-pref spread=node.labels.zone`) is first spread evenly over
//! the values of each label, as swarmkit's decision tree does ([`Branch`]);
//! one with a limit of replicas per node (`--replicas-max-per-node`) places no
//! task on a node already running that many of its live tasks, and what does
//! not fit stays pending with docker's "max replicas per node limit exceed".
//! A task with reservations (`--reserve-cpu`,
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

/// Chooses nodes for `count` new tasks of `spec`: spread over the values of
/// its placement preferences first ([`Branch`]), then, within a group, each to
/// the least-loaded eligible node with room for its reservations and under its
/// limit of replicas per node (counting the tasks placed before it).
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
    let mut placer = Placer {
        need: spec.task.resources.reservations,
        max_per_node: spec.max_replicas_per_node,
        service: load.service.clone(),
        total: load.total.clone(),
        reserved: load.reserved.clone(),
        placed: Vec::with_capacity(count),
    };
    let eligible_nodes = |node: &&Node| eligible(node, spec);
    if spec.preferences.is_empty() {
        let candidates: Vec<&Node> = state.nodes.values().filter(eligible_nodes).collect();
        placer.place_on(&candidates, count);
    } else {
        let mut tree = Branch::build(state, spec, &load.service);
        tree.spread(count, &mut placer);
        placer.placed = interleave(state, spec, &load.service, placer.placed);
    }
    let err = (placer.placed.len() < count).then(|| {
        ScheduleError::NoSuitableNode(why_none(state, spec, &placer.reserved, &placer.service))
    });
    (placer.placed, err)
}

/// `placed` (nodes chosen for a service with preferences, grouped by value) in an order
/// that alternates between the values of the outermost preference: each task ranked by
/// how many of the service's tasks its value holds with it (those running, `service`,
/// counted first), the lowest ranks first. The tasks go to the service's slots in this
/// order, and a scale down stops the highest slots: so a service placed in one go keeps
/// its spread when scaled down.
fn interleave(
    state: &ClusterState,
    spec: &ServiceSpec,
    service: &BTreeMap<NodeId, usize>,
    placed: Vec<NodeId>,
) -> Vec<NodeId> {
    let Some(outer) = spec.preferences.first() else {
        return placed;
    };
    let value = |id: &NodeId| state.nodes.get(id).map_or("", |node| outer.value(node));
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, tasks) in service {
        *held.entry(value(id)).or_default() += tasks;
    }
    let mut ranked: Vec<(usize, NodeId)> = placed
        .into_iter()
        .map(|id| {
            let rank = held.entry(value(&id)).or_default();
            *rank += 1;
            (*rank, id)
        })
        .collect();
    ranked.sort_by_key(|&(rank, _)| rank);
    ranked.into_iter().map(|(_, id)| id).collect()
}

/// The counts placement keeps up to date as it places a service's tasks.
struct Placer {
    /// What each task reserves.
    need: Resources,
    /// The spec's limit of its tasks per node (0: none).
    max_per_node: u64,
    /// Tasks of the service, per node.
    service: BTreeMap<NodeId, usize>,
    /// Tasks of every service, per node.
    total: BTreeMap<NodeId, usize>,
    /// Reservations of every service's tasks, per node.
    reserved: BTreeMap<NodeId, Resources>,
    /// The nodes chosen, in order.
    placed: Vec<NodeId>,
}

impl Placer {
    /// Tasks of the service on `node`.
    fn service_on(&self, node: NodeId) -> usize {
        self.service.get(&node).copied().unwrap_or(0)
    }

    /// Whether one more task fits on `node` (an eligible node): room for its
    /// reservations, and fewer than the limit of tasks per node.
    fn has_room(&self, node: &Node) -> bool {
        fits(
            node,
            &self.reserved.get(&node.id).copied().unwrap_or_default(),
            &self.need,
        ) && under_limit(self.max_per_node, self.service_on(node.id))
    }

    /// Places up to `n` tasks on `nodes`, each on the one with room running the
    /// fewest tasks of the service (ties: the fewest tasks overall, then the
    /// lowest ID); returns how many were placed.
    fn place_on(&mut self, nodes: &[&Node], n: usize) -> usize {
        for done in 0..n {
            let best = nodes
                .iter()
                .filter(|node| self.has_room(node))
                .min_by_key(|node| {
                    (
                        self.service_on(node.id),
                        self.total.get(&node.id).copied().unwrap_or(0),
                        node.id,
                    )
                })
                .map(|node| node.id);
            let Some(node) = best else { return done };
            *self.service.entry(node).or_default() += 1;
            *self.total.entry(node).or_default() += 1;
            let entry = self.reserved.entry(node).or_default();
            *entry = entry.saturating_add(&self.need);
            self.placed.push(node);
        }
        n
    }
}

/// Whether a node running `running` tasks of a service may take one more under
/// a limit of `max` per node (0: no limit); swarmkit's `MaxReplicasFilter`.
fn under_limit(max: u64, running: usize) -> bool {
    max == 0 || (running as u64) < max
}

/// Swarmkit's decision tree (`nodeSet.tree`) for a service with placement
/// preferences: one level per preference, one branch per value of its label
/// (nodes without the label share the branch of the empty value), every node
/// of the cluster in it so its shape does not depend on which nodes are
/// eligible; the eligible ones are kept at the leaves. Each branch counts the
/// service's live tasks on its nodes.
#[derive(Debug, Default)]
struct Branch<'n> {
    /// Live tasks of the service on the branch's nodes.
    tasks: usize,
    /// The next level, by label value (empty at a leaf).
    next: BTreeMap<&'n str, Branch<'n>>,
    /// A leaf's eligible nodes.
    nodes: Vec<&'n Node>,
}

impl<'n> Branch<'n> {
    /// The tree of `spec`'s preferences over `state`'s nodes, the service's
    /// tasks per node being `service`.
    fn build(
        state: &'n ClusterState,
        spec: &ServiceSpec,
        service: &BTreeMap<NodeId, usize>,
    ) -> Self {
        let mut root = Branch::default();
        for node in state.nodes.values() {
            let tasks = service.get(&node.id).copied().unwrap_or(0);
            let mut branch = &mut root;
            for pref in &spec.preferences {
                branch.tasks += tasks;
                branch = branch.next.entry(pref.value(node)).or_default();
            }
            branch.tasks += tasks;
            if eligible(node, spec) {
                branch.nodes.push(node);
            }
        }
        root
    }

    /// Places up to `n` tasks in this branch (swarmkit's
    /// `scheduleNTasksOnSubtree`): at a leaf, on its nodes; else evening out
    /// the sub-branches' tasks, each brought up to the even share of what they
    /// run and what is to place (a sub-branch with fewer gets more, the first
    /// ones in order of fewest tasks, then value, take the remainder), until
    /// all are placed or every sub-branch is full (it placed fewer than
    /// asked). Returns how many were placed.
    fn spread(&mut self, n: usize, placer: &mut Placer) -> usize {
        let placed = if self.next.is_empty() {
            placer.place_on(&self.nodes, n)
        } else {
            self.spread_over_next(n, placer)
        };
        self.tasks += placed;
        placed
    }

    fn spread_over_next(&mut self, n: usize, placer: &mut Placer) -> usize {
        let mut placed = 0;
        let mut full: Vec<&'n str> = Vec::new();
        while placed < n && full.len() < self.next.len() {
            let mut open: Vec<(&'n str, usize)> = self
                .next
                .iter()
                .filter(|(value, _)| !full.contains(value))
                .map(|(value, branch)| (*value, branch.tasks))
                .collect();
            open.sort_by_key(|&(value, tasks)| (tasks, value));
            let share = open.iter().map(|(_, tasks)| tasks).sum::<usize>() + n - placed;
            let (even, mut remainder) = (share / open.len(), share % open.len());
            let progress = (placed, full.len());
            for (value, tasks) in open {
                if placed == n {
                    break;
                }
                if tasks > even || (tasks == even && remainder == 0) {
                    continue;
                }
                let want = (even - tasks + usize::from(remainder > 0)).min(n - placed);
                let got = self
                    .next
                    .get_mut(value)
                    .map_or(0, |branch| branch.spread(want, placer));
                placed += got;
                if got < want {
                    full.push(value);
                } else {
                    remainder = remainder.saturating_sub(1);
                }
            }
            if progress == (placed, full.len()) {
                break;
            }
        }
        placed
    }
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
/// tasks reserving `reserved`), at its limit of tasks per node (the service's
/// tasks being `service`), in docker's words.
fn why_none(
    state: &ClusterState,
    spec: &ServiceSpec,
    reserved: &BTreeMap<NodeId, Resources>,
    service: &BTreeMap<NodeId, usize>,
) -> String {
    let runtime = spec.task.runtime;
    let (mut down, mut unavailable, mut no_dataplane, mut no_runtime, mut unmatched) =
        (0, 0, 0, 0, 0);
    let (mut failed_dataplane, mut no_room, mut at_limit) = (0, 0, 0);
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
        } else if !under_limit(
            spec.max_replicas_per_node,
            service.get(&node.id).copied().unwrap_or(0),
        ) {
            at_limit += 1;
        }
    }
    let mut parts = Vec::new();
    if at_limit > 0 {
        // Swarmkit's `MaxReplicasFilter` names no count.
        parts.push("max replicas per node limit exceed".to_string());
    }
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

    /// A spec spreading over `prefs` (label keys, outermost first), with a
    /// limit of `max` tasks per node.
    fn spreading(prefs: &[&str], max: u64) -> ServiceSpec {
        let mut spec = any();
        spec.preferences = prefs
            .iter()
            .map(|key| format!("spread=node.labels.{key}").parse().unwrap())
            .collect();
        spec.max_replicas_per_node = max;
        spec
    }

    /// Tasks per value of the node label `key` (`-` for nodes without it).
    fn per_label(state: &ClusterState, placed: &[NodeId], key: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for id in placed {
            let value = state.nodes[id]
                .labels
                .get(key)
                .cloned()
                .unwrap_or("-".into());
            *out.entry(value).or_default() += 1;
        }
        out
    }

    /// The service's load after `placed` (from nothing).
    fn load_of(placed: &[NodeId]) -> Load {
        let c = counts(placed);
        Load {
            service: c.clone(),
            total: c,
            reserved: BTreeMap::new(),
        }
    }

    #[test]
    fn a_preference_spreads_evenly_over_the_values_not_the_nodes() {
        // Zone a has two nodes, zone b one: 4 tasks go 2 and 2, not 3 and 1.
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
        ]);
        let spec = spreading(&["zone"], 0);
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(
            per_label(&state, &placed, "zone"),
            BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
        );
        // Within zone a, the usual least-loaded choice: one each.
        assert_eq!(counts(&placed), BTreeMap::from([(1, 1), (2, 1), (3, 2)]));
        // Without the preference, the nodes are evened out instead.
        let placed = place(&state, &Load::default(), &any(), 4).unwrap();
        assert_eq!(
            per_label(&state, &placed, "zone"),
            BTreeMap::from([("a".into(), 3), ("b".into(), 1)])
        );
    }

    #[test]
    fn the_tasks_already_running_count_toward_a_value_s_share() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
        ]);
        let spec = spreading(&["zone"], 0);
        // Zone a runs 3: the next 3 go to zone b (3 and 3); of 4, the odd one
        // goes to the zone that ran fewer (4 and 3).
        let load = load_of(&[1, 1, 2]);
        let placed = place(&state, &load, &spec, 3).unwrap();
        assert_eq!(placed, vec![3, 3, 3]);
        let placed = place(&state, &load, &spec, 4).unwrap();
        assert_eq!(placed, vec![3, 3, 3, 3]);
        // Zone b ahead: zone a catches up, its two nodes evened out.
        let placed = place(&state, &load_of(&[3, 3, 3]), &spec, 3).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn nodes_without_the_label_form_a_group_of_their_own() {
        let mut state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "b"),
            (3, Ready, Active, "b"),
            (4, Ready, Active, "b"),
        ]);
        state.nodes.get_mut(&3).unwrap().labels.clear();
        state.nodes.get_mut(&4).unwrap().labels.clear();
        let placed = place(&state, &Load::default(), &spreading(&["zone"], 0), 6).unwrap();
        assert_eq!(
            per_label(&state, &placed, "zone"),
            BTreeMap::from([("-".into(), 2), ("a".into(), 2), ("b".into(), 2)])
        );
        assert_eq!(
            counts(&placed),
            BTreeMap::from([(1, 2), (2, 2), (3, 1), (4, 1)])
        );
    }

    #[test]
    fn preferences_nest_outermost_first() {
        // Two regions; region r1 has racks x and y, region r2 only rack x.
        let mut state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "a"),
            (4, Ready, Active, "a"),
        ]);
        for (id, region, rack) in [
            (1, "r1", "x"),
            (2, "r1", "y"),
            (3, "r2", "x"),
            (4, "r2", "x"),
        ] {
            let labels = &mut state.nodes.get_mut(&id).unwrap().labels;
            labels.insert("region".into(), region.into());
            labels.insert("rack".into(), rack.into());
        }
        let spec = spreading(&["region", "rack"], 0);
        let placed = place(&state, &Load::default(), &spec, 8).unwrap();
        // 4 per region; in r1, 2 per rack; in r2 (one rack), 2 per node.
        assert_eq!(
            counts(&placed),
            BTreeMap::from([(1, 2), (2, 2), (3, 2), (4, 2)])
        );
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(
            counts(&placed),
            BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
        );
        // The inner preference first: 4 per rack; rack y has one node.
        let inner = spreading(&["rack", "region"], 0);
        let placed = place(&state, &Load::default(), &inner, 8).unwrap();
        assert_eq!(per_label(&state, &placed, "rack")["y"], 4);
    }

    #[test]
    fn a_value_without_room_leaves_its_share_to_the_others() {
        // Zone b's only node is drained; zone c's is down: zone a takes all.
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Drain, "b"),
            (4, Down, Active, "c"),
        ]);
        let placed = place(&state, &Load::default(), &spreading(&["zone"], 0), 4).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(1, 2), (2, 2)]));
        // Zone b's node has room for one task's reservation only: the rest of
        // its share goes to zone a.
        let mut state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "b")]);
        state.nodes.get_mut(&2).unwrap().resources = Resources {
            nano_cpus: CPU,
            memory_bytes: GIB,
        };
        state.nodes.get_mut(&1).unwrap().resources = Resources {
            nano_cpus: 8 * CPU,
            memory_bytes: 8 * GIB,
        };
        let mut spec = spreading(&["zone"], 0);
        spec.task.resources.reservations.nano_cpus = CPU;
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(1, 3), (2, 1)]));
    }

    #[test]
    fn constraints_and_preferences_together() {
        let mut state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
            (4, Ready, Active, "b"),
        ]);
        state
            .nodes
            .get_mut(&2)
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
        state
            .nodes
            .get_mut(&3)
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
        state
            .nodes
            .get_mut(&4)
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
        let mut spec = spreading(&["zone"], 0);
        spec.constraints = vec!["node.labels.disk==ssd".parse().unwrap()];
        // Half per zone, only on the ssd nodes: node 2 alone holds zone a's half.
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(2, 2), (3, 1), (4, 1)]));
        // A constraint that excludes a zone: the other takes everything.
        spec.constraints = vec!["node.labels.zone==b".parse().unwrap()];
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(counts(&placed), BTreeMap::from([(3, 2), (4, 2)]));
    }

    #[test]
    fn a_node_joining_later_gets_the_new_tasks_of_its_zone() {
        let mut state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        let spec = spreading(&["zone"], 0);
        // One zone only: the 4 tasks spread over its nodes.
        let first = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(counts(&first), BTreeMap::from([(1, 2), (2, 2)]));
        // Node 3 joins in zone b. Running tasks stay (Swarm never moves them);
        // new ones (a scale up from 4 to 8) go to zone b until it has as many.
        state
            .nodes
            .extend(cluster(&[(3, Ready, Active, "b")]).nodes);
        let more = place(&state, &load_of(&first), &spec, 4).unwrap();
        assert_eq!(more, vec![3, 3, 3, 3]);
    }

    #[test]
    fn tasks_placed_in_one_go_alternate_zones_so_a_scale_down_keeps_the_spread() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
        ]);
        let spec = spreading(&["zone"], 0);
        // Slots 1 to 4 in this order: a, b, a, b.
        let placed = place(&state, &Load::default(), &spec, 4).unwrap();
        assert_eq!(placed, vec![1, 3, 2, 3]);
        // The orchestrator stops the highest slots on a scale down: to 2, slots 1
        // and 2 stay, one per zone; to 3, zone a keeps 2.
        assert_eq!(per_label(&state, &placed[..2], "zone").len(), 2);
        // Running tasks count: zone a runs 1 (slot 1, say), so zone b's first
        // comes first: slots 1 and 2 hold a and b.
        let placed = place(&state, &load_of(&[1]), &spec, 3).unwrap();
        assert_eq!(placed, vec![3, 3, 2]);
        // Through the scheduler's pass and the replicated orchestrator.
        let mut web = service(4);
        web.spec.preferences = spec.preferences.clone();
        let mut work = Work {
            service: &web,
            tasks: Vec::new(),
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        for slot in 1..=4 {
            work.add(slot, None);
        }
        schedule(&state, std::iter::once(&mut work));
        let tasks: Vec<_> = work
            .create
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut t = task(&web, 10 + i as u64, p.slot, "v2", TaskState::Running);
                t.node = p.node;
                t
            })
            .collect();
        let mut smaller = web.clone();
        smaller.spec.mode = mesh_api::spec::ServiceMode::Replicated { replicas: 2 };
        let mut work = Work {
            service: &smaller,
            tasks,
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        crate::orchestrator::replicated::dedupe(&mut work);
        let kept: Vec<NodeId> = work
            .tasks
            .iter()
            .filter(|t| t.is_live())
            .filter_map(|t| t.node)
            .collect();
        assert_eq!(
            per_label(&state, &kept, "zone"),
            BTreeMap::from([("a".into(), 1), ("b".into(), 1)])
        );
    }

    #[test]
    fn a_scale_back_up_restores_the_spread() {
        // Swarmkit's scale down does not look at preferences (it removes tasks
        // from the nodes running the most of the service; this orchestrator,
        // the highest slots): after tasks placed at different times, zone a may
        // be left with all 2 of 4. Scaling up again fills zone b first.
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
        ]);
        let spec = spreading(&["zone"], 0);
        let after_scale_down = load_of(&[1, 2]);
        let placed = place(&state, &after_scale_down, &spec, 2).unwrap();
        assert_eq!(placed, vec![3, 3]);
    }

    #[test]
    fn max_replicas_per_node_leaves_the_rest_pending_with_docker_s_message() {
        let state = cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "a"),
            (3, Ready, Active, "b"),
        ]);
        let spec = spreading(&[], 1);
        let (placed, err) = place_some(&state, &Load::default(), &spec, 5);
        assert_eq!(placed, vec![1, 2, 3]);
        assert_eq!(
            err.unwrap().to_string(),
            "no suitable node (max replicas per node limit exceed)"
        );
        // The tasks already running count: node 1 runs 2 of a limit of 2.
        let spec = spreading(&[], 2);
        let (placed, err) = place_some(&state, &load_of(&[1, 1]), &spec, 5);
        assert_eq!(counts(&placed), BTreeMap::from([(2, 2), (3, 2)]));
        assert!(err.is_some());
        // With a preference: zone b's one node takes 1, zone a's two take 2.
        let spec = spreading(&["zone"], 1);
        let (placed, err) = place_some(&state, &Load::default(), &spec, 4);
        assert_eq!(counts(&placed), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        assert_eq!(
            err.unwrap().to_string(),
            "no suitable node (max replicas per node limit exceed)"
        );
        // Other reasons are added: a drained node, a constraint.
        let mut spec = spreading(&[], 1);
        spec.constraints = vec!["node.labels.zone==a".parse().unwrap()];
        let mut drained = state.clone();
        drained.nodes.get_mut(&2).unwrap().availability = Drain;
        assert_eq!(
            place(&drained, &Load::default(), &spec, 2)
                .unwrap_err()
                .to_string(),
            "no suitable node (max replicas per node limit exceed; \
             scheduling constraints not satisfied on 1 nodes; 1 nodes paused or drained)"
        );
        // No limit (0): everything fits.
        assert_eq!(
            place(&state, &Load::default(), &spreading(&[], 0), 5)
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn the_pass_keeps_tasks_pending_at_the_limit_and_places_them_once_lifted() {
        let state = cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "b")]);
        let mut web = service(3);
        web.spec.max_replicas_per_node = 1;
        let mut running = Vec::new();
        for (id, slot, node) in [(10, 1, 1), (11, 2, 2)] {
            let mut t = task(&web, id, slot, "v2", TaskState::Running);
            t.node = Some(node);
            running.push(t);
        }
        let mut work = Work {
            service: &web,
            tasks: running.clone(),
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        work.add(3, None);
        schedule(&state, std::iter::once(&mut work));
        assert_eq!(work.create[0].node, None);
        assert_eq!(
            work.create[0].message,
            "no suitable node (max replicas per node limit exceed)"
        );
        // Lifted (0): the pending task is placed.
        web.spec.max_replicas_per_node = 0;
        let mut pending = task(&web, 12, 3, "v2", TaskState::Pending);
        pending.node = None;
        let mut tasks = running;
        tasks.push(pending);
        let mut work = Work {
            service: &web,
            tasks,
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        schedule(&state, std::iter::once(&mut work));
        assert_eq!(work.tasks[2].node, Some(1));
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
