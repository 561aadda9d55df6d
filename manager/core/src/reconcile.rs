//! The leader's loops composed: one pure, deterministic function of the
//! state and the leader's clock, [`plan`], returns the commands that move
//! the cluster toward what its services ask for. The leader commits them
//! in order (see `api::leader`).
//!
//! A round runs each loop once, as one pass over every service (in ID
//! order), each service's tasks carried from pass to pass in a
//! [`Work`]:
//! 1. evictions ([`evict`]): tasks of down or removed nodes are
//!    orphaned, tasks of drained or no longer suitable nodes are stopped;
//! 2. the rolling updater ([`update`]): a batch of replacements is
//!    planned, or a new update status or a rollback is decided (a service
//!    that rolls back sits out the rest of the round: the rollback changes
//!    the spec its new tasks get);
//! 3. the restart supervisor ([`restart`]): a verdict for every empty
//!    slot whose last task ended by itself;
//! 4. the orchestrators ([`replicated`], [`global`]): empty slots get new
//!    tasks (with the supervisor's consent), extra tasks are stopped;
//! 5. the scheduler ([`scheduler::schedule`]): every task without a node
//!    is placed, per-node totals counted across services;
//! 6. history ([`history`]): old ended tasks are forgotten, and the tasks
//!    of removed services once they have stopped.
//!
//! Then each service's changes become one [`Command::ChangeTasks`] (plus
//! [`Command::SetUpdateStatus`], or a rollback's [`Command::UpdateService`]
//! alone), and the removed services' tasks one more.
//!
//! [`plan`] repeats rounds on a copy of the state until a round has
//! nothing to do (a rollback's first batch, for example, follows the
//! rollback in the same plan), so applying a plan and planning again with
//! the same clock yields nothing: the leader never commits empty churn.

use crate::orchestrator::restart::{self, Restarts};
use crate::orchestrator::update::{self, Step};
use crate::orchestrator::work::{Planned, Work};
use crate::orchestrator::{evict, global, history, replicated};
use crate::scheduler;
use crate::state::{ClusterState, Command, NewTask, TaskChange};
use std::collections::{BTreeSet, HashMap};

use mesh_api::service::{Service, ServiceId, UpdateStatus};
use mesh_api::spec::{ServiceMode, ServiceSpec};
use mesh_api::task::Task;

/// Rounds a plan runs at most; a round that still has work after this many
/// is left for the next plan.
const MAX_ROUNDS: usize = 16;

/// The commands that bring the state closer to what its services ask for,
/// at `now_ms` (the leader's clock, ms since the epoch). Deterministic;
/// empty when there is nothing to do now (time-based work, such as a
/// restart delay, shows up in a later plan: see [`plan_with_deadline`]).
#[must_use]
pub fn plan(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    plan_with_deadline(state, now_ms).commands
}

/// A plan, and when the next one may have work without a state change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The commands, in order.
    pub commands: Vec<Command>,
    /// The earliest time (ms since the epoch) at which time-based work comes due
    /// in the state the commands leave (a restart delay, an update's delay
    /// between batches or its monitor window); `None`: none is waiting. Until
    /// then, planning again without a state change yields nothing.
    pub deadline: Option<u64>,
}

/// [`plan`], with the time at which the state it leaves has time-based work
/// due: the leader plans on every state change and at that time, not on a
/// fixed tick.
#[must_use]
pub fn plan_with_deadline(state: &ClusterState, now_ms: u64) -> Plan {
    plan_scoped(state, now_ms, None)
}

/// [`plan_with_deadline`] for what changed since version `since`: the services
/// the commands since then touched (see [`crate::journal`]), and those with a
/// task waiting for a node (a change elsewhere may have freed one); every
/// service if the journal cannot narrow the change down (a node's, a
/// network's). Its cost is in proportion to the change, not to the cluster.
///
/// Its deadline covers those services only: the caller keeps the earlier
/// deadlines of the others (a plan of every service replaces them).
#[must_use]
pub fn plan_changed(state: &ClusterState, now_ms: u64, since: u64) -> Plan {
    let touch = state.journal.since(since, state.version);
    if touch.everything {
        return plan_with_deadline(state, now_ms);
    }
    let mut scope = touch.services;
    scope.extend(
        state
            .tasks
            .values()
            .filter(|t| t.node.is_none() && t.is_live())
            .map(|t| t.service),
    );
    plan_scoped(state, now_ms, Some(&scope))
}

/// A plan of the services in `scope` (all of them if `None`).
fn plan_scoped(state: &ClusterState, now_ms: u64, scope: Option<&BTreeSet<ServiceId>>) -> Plan {
    // The common case, nothing to do, costs no copy of the state.
    let (mut next, mut deadline) = round(state, now_ms, scope);
    if next.is_empty() {
        return Plan {
            commands: next,
            deadline,
        };
    }
    let mut sim = state.clone();
    let mut commands = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let round = std::mem::take(&mut next);
        if round.is_empty() {
            break;
        }
        let mut refused = false;
        for command in round {
            // A command the state machine would refuse is not worth
            // committing; the next plan tries again.
            if sim.apply(&command).is_ok() {
                commands.push(command);
            } else {
                refused = true;
            }
        }
        if refused {
            break;
        }
        // The commands touch only the services in scope (and removed
        // services' tasks): the next round looks at the same ones.
        (next, deadline) = self::round(&sim, now_ms, scope);
    }
    Plan { commands, deadline }
}

/// One service's way through a round.
#[derive(Debug)]
struct ServiceRound<'a> {
    /// Its tasks as the passes change them.
    work: Work<'a>,
    /// The update status the updater records.
    status: Option<UpdateStatus>,
    /// The spec the updater rolls back to: the service sits out the rest
    /// of the round.
    rollback: Option<ServiceSpec>,
    /// The restart supervisor's verdicts on its empty slots.
    restarts: Restarts,
}

/// One round: every loop once, each a pass over every service in `scope` (all
/// if `None`) as `state` has it, then the commands, and the earliest time-based
/// work left waiting.
fn round(
    state: &ClusterState,
    now_ms: u64,
    scope: Option<&BTreeSet<ServiceId>>,
) -> (Vec<Command>, Option<u64>) {
    let in_scope = |id: &ServiceId| scope.is_none_or(|s| s.contains(id));
    // Each service's tasks, gathered in one pass over the state's tasks.
    let mut tasks: HashMap<ServiceId, Vec<Task>> = HashMap::new();
    for task in state.tasks.values().filter(|t| in_scope(&t.service)) {
        tasks.entry(task.service).or_default().push(task.clone());
    }
    let mut deadline: Option<u64> = None;
    let mut wait_until = |at: u64| deadline = Some(deadline.map_or(at, |d| d.min(at)));
    let mut services: Vec<ServiceRound<'_>> = state
        .services
        .values()
        .filter(|service| in_scope(&service.id))
        .map(|service| ServiceRound {
            work: Work::with_tasks(service, tasks.remove(&service.id).unwrap_or_default()),
            status: None,
            rollback: None,
            restarts: Restarts::new(),
        })
        .collect();

    // 1. Evictions: tasks of down, removed, drained or unsuitable nodes.
    for s in &mut services {
        evict::evict(state, &mut s.work, now_ms);
    }
    // 2. The updater, on the tasks as evicted (an orphaned new task is a
    // failure): a batch is planned into the work; a status or a rollback
    // waits for the commands, and a service rolling back sits out the rest.
    for s in &mut services {
        match update::step(s.work.service, &s.work.tasks, now_ms) {
            Step::Wait => {}
            Step::WaitUntil(at) => wait_until(at),
            Step::Replace { tasks, order } => update::replace(&mut s.work, &tasks, order),
            Step::Status(status) => s.status = Some(status),
            Step::Rollback => s.rollback = s.work.service.previous_spec.clone(),
        }
    }
    // 3. The restart supervisor: verdicts on the slots left empty.
    for s in in_round(&mut services) {
        s.restarts = restart::supervise(&s.work, now_ms);
        for verdict in s.restarts.values() {
            if let restart::Decision::At(at) = verdict.decision {
                wait_until(at);
            }
        }
    }
    // 4. The orchestrators: empty wanted slots filled, extras stopped.
    for s in in_round(&mut services) {
        match s.work.service.spec.mode {
            ServiceMode::Replicated { .. } => replicated::orchestrate(&mut s.work, &s.restarts),
            ServiceMode::Global => global::orchestrate(state, &mut s.work, &s.restarts),
        }
    }
    // 5. The scheduler: every task without a node, all services counted.
    scheduler::schedule(state, in_round(&mut services).map(|s| &mut s.work));
    // 6. History: retention per slot.
    for s in in_round(&mut services) {
        history::prune_history(&mut s.work);
    }

    // The commands: each service's, then the removed services' tasks.
    let mut commands = Vec::new();
    for s in services {
        commands.extend(service_commands(state, s, now_ms));
    }
    let removed = history::removed(state, in_scope);
    if !removed.is_empty() {
        commands.push(Command::ChangeTasks {
            create: Vec::new(),
            update: Vec::new(),
            delete: removed,
            at_ms: now_ms,
        });
    }
    (commands, deadline)
}

/// The services still in the round: all but those rolling back.
fn in_round<'s, 'a>(
    services: &'s mut [ServiceRound<'a>],
) -> impl Iterator<Item = &'s mut ServiceRound<'a>> {
    services.iter_mut().filter(|s| s.rollback.is_none())
}

/// A service's commands after a round: its rollback alone, else its task
/// changes (if any) and its new update status (if any).
fn service_commands(state: &ClusterState, s: ServiceRound<'_>, now_ms: u64) -> Vec<Command> {
    let service: &Service = s.work.service;
    if let Some(previous) = s.rollback {
        return vec![Command::UpdateService {
            id: service.id,
            spec: previous,
            rollback: true,
            // Refused if a user updated the service meanwhile.
            expected_version: Some(service.spec_version),
            at_ms: now_ms,
        }];
    }
    let mut commands: Vec<Command> = change_tasks(state, &s.work, now_ms).into_iter().collect();
    if let Some(status) = s.status {
        commands.push(Command::SetUpdateStatus {
            id: service.id,
            status: Some(status),
            at_ms: now_ms,
        });
    }
    commands
}

/// The service's changes as one command, if there are any.
fn change_tasks(state: &ClusterState, work: &Work<'_>, now_ms: u64) -> Option<Command> {
    let mut update = Vec::new();
    for task in &work.tasks {
        if work.delete.contains(&task.id) {
            continue;
        }
        let Some(before) = state.tasks.get(&task.id) else {
            continue;
        };
        if let Some(change) = diff(before, task) {
            update.push(change);
        }
    }
    let create: Vec<NewTask> = work
        .create
        .iter()
        .map(
            |Planned {
                 slot,
                 node,
                 message,
             }| NewTask {
                service: work.service.id,
                slot: *slot,
                node: *node,
                message: message.clone(),
            },
        )
        .collect();
    let delete: Vec<_> = work.delete.iter().copied().collect();
    if create.is_empty() && update.is_empty() && delete.is_empty() {
        return None;
    }
    Some(Command::ChangeTasks {
        create,
        update,
        delete,
        at_ms: now_ms,
    })
}

/// What changed in a task during the round, if anything.
fn diff(before: &Task, after: &Task) -> Option<TaskChange> {
    let change = TaskChange {
        id: after.id,
        node: (after.node != before.node).then_some(after.node).flatten(),
        desired: (after.desired != before.desired).then_some(after.desired),
        status: (after.status != before.status).then(|| after.status.clone()),
    };
    (change
        != TaskChange {
            id: after.id,
            ..TaskChange::default()
        })
    .then_some(change)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::assignment;
    use crate::state::Applied;
    use crate::state::testing;
    use mesh_api::node::Availability;
    use mesh_api::node::{NodeId, NodeStatus};
    use mesh_api::service::{ServiceId, UpdateState};
    use mesh_api::spec::{
        FailureAction, RestartCondition, RuntimeKind, ServiceMode, ServiceSpec, UpdateOrder,
    };
    use mesh_api::task::{DesiredState, TaskId, TaskState, TaskStatus};

    /// The image fake agents fail to run.
    const BAD: &str = "bad-image";

    /// A cluster driven as the leader drives it ([`plan_changed`] on a change,
    /// [`plan_with_deadline`] when time-based work comes due), with fake agents
    /// that report what the real ones would.
    struct Sim {
        state: ClusterState,
        now: u64,
        /// The version the last plan looked at.
        planned_at: Option<u64>,
        /// When time-based work comes due.
        deadline: Option<u64>,
    }

    impl Sim {
        /// `n` ready, active worker nodes with dataplanes, zone `a`.
        fn new(n: u64) -> Self {
            let nodes: Vec<_> = (1..=n)
                .map(|id| (id, NodeStatus::Ready, Availability::Active, "a"))
                .collect();
            let state = testing::cluster(&nodes);
            Self {
                state,
                now: 1_000_000,
                planned_at: None,
                deadline: None,
            }
        }

        fn apply(&mut self, command: Command) -> Applied {
            self.state.apply(&command).expect("command applies")
        }

        fn create(&mut self, spec: ServiceSpec) -> ServiceId {
            let Applied::Service(service) = self.apply(Command::CreateService {
                spec,
                at_ms: self.now,
            }) else {
                panic!("expected the service back")
            };
            service.id
        }

        fn update(&mut self, id: ServiceId, change: impl FnOnce(&mut ServiceSpec)) {
            let mut spec = self.state.services[&id].spec.clone();
            change(&mut spec);
            self.apply(Command::UpdateService {
                id,
                spec,
                rollback: false,
                expected_version: None,
                at_ms: self.now,
            });
        }

        fn node(&mut self, id: NodeId, availability: Availability) {
            self.apply(Command::UpdateNode {
                id,
                availability: Some(availability),
                label_add: BTreeMap::new(),
                label_rm: Vec::new(),
                at_ms: self.now,
            });
        }

        fn label(&mut self, id: NodeId, zone: &str) {
            self.apply(Command::UpdateNode {
                id,
                availability: None,
                label_add: BTreeMap::from([("zone".to_string(), zone.to_string())]),
                label_rm: Vec::new(),
                at_ms: self.now,
            });
        }

        fn status(&mut self, id: NodeId, status: NodeStatus) {
            self.apply(Command::SetStatus {
                id,
                status,
                agent_version: String::new(),
                at_ms: self.now,
            });
        }

        /// Plans (what changed since the last plan, or everything when time-based
        /// work is due, as the leader does) and commits; checks that a plan of
        /// every service then has nothing left: a plan of what changed missed
        /// nothing. Returns how many commands were committed.
        fn lead(&mut self) -> usize {
            let due = self.deadline.is_some_and(|at| at <= self.now);
            let planned = match self.planned_at {
                Some(since) if !due => {
                    let changed = plan_changed(&self.state, self.now, since);
                    self.deadline = match (self.deadline, changed.deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    changed
                }
                _ => {
                    let all = plan_with_deadline(&self.state, self.now);
                    self.deadline = all.deadline;
                    all
                }
            };
            self.planned_at = Some(self.state.version);
            let commands = planned.commands;
            for command in &commands {
                self.state.apply(command).expect("planned commands apply");
            }
            let again = plan(&self.state, self.now);
            assert!(again.is_empty(), "not a fixed point: {again:#?}");
            commands.len()
        }

        /// Every reachable agent moves its tasks on: tasks to run start
        /// (and run, or fail for [`BAD`]), tasks to stop stop.
        fn agents(&mut self) {
            let mut reports: BTreeMap<NodeId, Vec<(TaskId, TaskStatus)>> = BTreeMap::new();
            for task in self.state.tasks.values() {
                let Some(node) = task.node else { continue };
                if self.state.nodes.get(&node).map(|n| n.status) != Some(NodeStatus::Ready)
                    || task.status.state.is_terminal()
                {
                    continue;
                }
                let status = if task.desired != DesiredState::Running {
                    TaskStatus::new(TaskState::Shutdown, "stopped", self.now)
                } else if task.spec.image == BAD {
                    TaskStatus {
                        exit_code: Some(1),
                        ..TaskStatus::new(TaskState::Failed, "exited", self.now)
                    }
                } else if task.status.state < TaskState::Running {
                    TaskStatus::new(TaskState::Running, "started", self.now)
                } else {
                    continue;
                };
                reports.entry(node).or_default().push((task.id, status));
            }
            for (node, reports) in reports {
                self.apply(Command::ReportTasks { node, reports });
            }
        }

        /// One task's agent reports it ended.
        fn end(&mut self, task: TaskId, state: TaskState, exit_code: Option<i32>) {
            let node = self.state.tasks[&task].node.expect("placed");
            let status = TaskStatus {
                exit_code,
                ..TaskStatus::new(state, "exited", self.now)
            };
            self.apply(Command::ReportTasks {
                node,
                reports: vec![(task, status)],
            });
        }

        /// Leads and lets the agents work, 100 ms apart, until nothing
        /// changes for a while (long enough for restart delays and monitor
        /// windows), checking `invariant` after every step.
        fn settle_with(&mut self, mut invariant: impl FnMut(&Self)) {
            let mut quiet = 0;
            for _ in 0..2_000 {
                let version = self.state.version;
                self.lead();
                invariant(self);
                self.agents();
                invariant(self);
                self.now += 100;
                if self.state.version == version {
                    quiet += 1;
                    if quiet > 120 {
                        return;
                    }
                } else {
                    quiet = 0;
                }
            }
            panic!("the cluster did not settle");
        }

        fn settle(&mut self) {
            self.settle_with(|_| {});
        }

        fn tasks(&self, service: ServiceId) -> Vec<&Task> {
            self.state.service_tasks(service).collect()
        }

        fn live(&self, service: ServiceId) -> Vec<&Task> {
            let mut live: Vec<&Task> = self
                .state
                .service_tasks(service)
                .filter(|t| t.is_live())
                .collect();
            live.sort_by_key(|t| t.slot);
            live
        }

        fn running(&self, service: ServiceId) -> usize {
            self.live(service)
                .iter()
                .filter(|t| t.status.state == TaskState::Running)
                .count()
        }

        fn per_node(&self, service: ServiceId) -> BTreeMap<NodeId, usize> {
            let mut out = BTreeMap::new();
            for task in self.live(service) {
                *out.entry(task.node.expect("placed")).or_default() += 1;
            }
            out
        }

        fn update_state(&self, service: ServiceId) -> Option<UpdateState> {
            self.state.services[&service]
                .update_status
                .as_ref()
                .map(|s| s.state)
        }
    }

    fn spec(replicas: u32) -> ServiceSpec {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        spec.mode = ServiceMode::Replicated { replicas };
        spec
    }

    fn scale(replicas: u32) -> impl FnOnce(&mut ServiceSpec) {
        move |spec| spec.mode = ServiceMode::Replicated { replicas }
    }

    #[test]
    fn replicas_spread_over_the_nodes_and_follow_the_scale() {
        let mut sim = Sim::new(3);
        let web = sim.create(spec(3));
        sim.settle();
        assert_eq!(sim.running(web), 3);
        assert_eq!(sim.per_node(web), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        let slots: Vec<u32> = sim.live(web).iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![1, 2, 3]);

        sim.update(web, scale(10));
        assert_eq!(
            sim.update_state(web),
            None,
            "a scale is not a rolling update"
        );
        sim.settle();
        assert_eq!(sim.running(web), 10);
        let mut spread: Vec<usize> = sim.per_node(web).into_values().collect();
        spread.sort_unstable();
        assert_eq!(spread, vec![3, 3, 4]);

        sim.update(web, scale(1));
        sim.lead();
        // The highest slots are asked to stop; the agents drain them.
        let mut stopping: Vec<u32> = sim
            .tasks(web)
            .iter()
            .filter(|t| t.desired == DesiredState::Shutdown)
            .map(|t| t.slot)
            .collect();
        stopping.sort_unstable();
        assert_eq!(stopping, (2..=10).collect::<Vec<u32>>());
        sim.settle();
        assert_eq!(sim.running(web), 1);
        assert_eq!(sim.live(web)[0].slot, 1);
        // The removed slots' records are forgotten once they stopped.
        assert_eq!(sim.tasks(web).len(), 1);
    }

    #[test]
    fn tasks_of_a_down_node_are_orphaned_and_replaced_in_their_slot() {
        let mut sim = Sim::new(3);
        let web = sim.create(spec(3));
        sim.settle();
        let lost = sim
            .live(web)
            .into_iter()
            .find(|t| t.node == Some(3))
            .unwrap();
        let (lost_id, slot) = (lost.id, lost.slot);

        sim.status(3, NodeStatus::Down);
        sim.lead();
        let lost = &sim.state.tasks[&lost_id];
        assert_eq!(lost.status.state, TaskState::Orphaned);
        assert_eq!(lost.status.message, "node down");
        assert_eq!(lost.desired, DesiredState::Shutdown);
        assert_eq!(sim.live(web).len(), 2, "the restart delay runs first");

        sim.now += 5_000;
        sim.lead();
        let replacement = sim
            .live(web)
            .into_iter()
            .find(|t| t.slot == slot)
            .expect("replaced in its slot");
        assert_ne!(replacement.node, Some(3));
        sim.settle();
        assert_eq!(sim.running(web), 3);

        // Back, the node's agent is given nothing of the old task: it stops it.
        sim.status(3, NodeStatus::Ready);
        sim.settle();
        let assignment = assignment::for_node(&sim.state, 3, sim.state.version);
        assert!(assignment.tasks.iter().all(|t| t.id != lost_id));
        assert_eq!(sim.running(web), 3);
    }

    #[test]
    fn a_drained_node_hands_its_tasks_over_at_once() {
        let mut sim = Sim::new(3);
        let web = sim.create(spec(6));
        sim.settle();
        let on_2: Vec<TaskId> = sim
            .live(web)
            .iter()
            .filter(|t| t.node == Some(2))
            .map(|t| t.id)
            .collect();
        assert_eq!(on_2.len(), 2);

        sim.node(2, Availability::Drain);
        sim.lead();
        for id in &on_2 {
            let task = &sim.state.tasks[id];
            assert_eq!(task.desired, DesiredState::Shutdown);
            // Still running: its agent drains its flows before stopping it.
            assert_eq!(task.status.state, TaskState::Running);
        }
        assert_eq!(sim.live(web).len(), 6, "replacements are created at once");
        sim.settle();
        assert_eq!(sim.per_node(web), BTreeMap::from([(1, 3), (3, 3)]));
        assert!(
            on_2.iter()
                .all(|id| sim.state.tasks[id].status.state == TaskState::Shutdown)
        );
    }

    #[test]
    fn ended_tasks_restart_after_the_delay_until_the_attempts_run_out() {
        let mut sim = Sim::new(1);
        let mut s = spec(1);
        s.task.restart.delay_ms = 1_000;
        s.task.restart.max_attempts = 2;
        let web = sim.create(s);
        sim.settle();
        for attempt in 0..3 {
            let task = sim.live(web)[0].id;
            sim.end(task, TaskState::Failed, Some(2));
            sim.lead();
            assert!(sim.live(web).is_empty());
            if attempt < 2 {
                // The leader sleeps until then: nothing to do before.
                let due = plan_with_deadline(&sim.state, sim.now);
                assert_eq!(
                    due,
                    Plan {
                        commands: vec![],
                        deadline: Some(sim.now + 1_000)
                    }
                );
            }
            sim.now += 999;
            sim.lead();
            assert!(sim.live(web).is_empty(), "the delay is respected");
            sim.now += 1;
            sim.lead();
            if attempt < 2 {
                assert_eq!(sim.state.tasks[&task].desired, DesiredState::Shutdown);
                assert_eq!(sim.live(web).len(), 1, "restart {}", attempt + 1);
                assert_eq!(sim.live(web)[0].slot, 1);
                sim.settle();
            } else {
                // Two restarts were allowed: the slot stays empty.
                assert_eq!(sim.state.tasks[&task].desired, DesiredState::Shutdown);
                sim.settle();
                assert!(sim.live(web).is_empty());
            }
        }
    }

    #[test]
    fn on_failure_restarts_failures_only_and_none_never() {
        let mut sim = Sim::new(2);
        let mut s = spec(2);
        s.task.restart.condition = RestartCondition::OnFailure;
        s.task.restart.delay_ms = 0;
        let web = sim.create(s);
        let mut s = spec(1);
        s.name = "once".into();
        s.task.restart.condition = RestartCondition::None;
        let once = sim.create(s);
        sim.settle();

        let (done, crashed) = (sim.live(web)[0].id, sim.live(web)[1].id);
        sim.end(done, TaskState::Complete, Some(0));
        sim.end(crashed, TaskState::Failed, Some(1));
        let task = sim.live(once)[0].id;
        sim.end(task, TaskState::Failed, Some(1));
        sim.settle();
        let slots: Vec<u32> = sim.live(web).iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![2], "exit 0 is not restarted, exit 1 is");
        assert_eq!(sim.state.tasks[&done].desired, DesiredState::Shutdown);
        assert!(sim.live(once).is_empty());
        assert_eq!(sim.state.tasks[&task].desired, DesiredState::Shutdown);
    }

    #[test]
    fn history_keeps_five_ended_tasks_per_slot() {
        let mut sim = Sim::new(1);
        let mut s = spec(1);
        s.task.restart.delay_ms = 0;
        let web = sim.create(s);
        sim.settle();
        for _ in 0..9 {
            let task = sim.live(web)[0].id;
            sim.end(task, TaskState::Failed, Some(1));
            sim.settle();
        }
        let tasks = sim.tasks(web);
        assert_eq!(tasks.len(), 6, "one running and five ended");
        assert_eq!(
            tasks
                .iter()
                .filter(|t| t.status.state == TaskState::Failed)
                .count(),
            5
        );
    }

    #[test]
    fn stop_first_update_replaces_five_at_a_time_and_completes() {
        let mut sim = Sim::new(4);
        let mut s = spec(20);
        s.update.parallelism = 5;
        s.update.monitor_ms = 1_000;
        let web = sim.create(s);
        sim.settle();
        assert_eq!(sim.running(web), 20);

        sim.update(web, |s| s.task.image = "task-echo-v2".into());
        assert_eq!(sim.update_state(web), Some(UpdateState::Updating));
        let mut most_in_flight = 0;
        sim.settle_with(|sim| {
            let current = &sim.state.services[&web].spec.task;
            let in_flight = sim
                .live(web)
                .iter()
                .filter(|t| *t.spec == *current && t.status.state < TaskState::Running)
                .count();
            most_in_flight = most_in_flight.max(in_flight);
            assert!(in_flight <= 5, "{in_flight} tasks replaced at once");
            assert!(sim.running(web) >= 15, "stop-first keeps 15 running");
        });
        assert_eq!(most_in_flight, 5);
        let status = sim.state.services[&web].update_status.clone().unwrap();
        assert_eq!(status.state, UpdateState::Completed);
        assert!(status.completed_at_ms.is_some());
        assert_eq!(sim.running(web), 20);
        assert!(sim.live(web).iter().all(|t| t.spec.image == "task-echo-v2"));
    }

    #[test]
    fn start_first_update_stops_the_old_task_once_the_new_one_runs() {
        let mut sim = Sim::new(2);
        let mut s = spec(2);
        s.update.order = UpdateOrder::StartFirst;
        s.update.monitor_ms = 500;
        let web = sim.create(s);
        sim.settle();
        let old: Vec<TaskId> = sim.live(web).iter().map(|t| t.id).collect();

        sim.update(web, |s| s.task.image = "task-echo-v2".into());
        sim.lead();
        // A new task in slot 1 beside the old one, which runs on.
        assert_eq!(sim.live(web).len(), 3);
        assert_eq!(sim.state.tasks[&old[0]].desired, DesiredState::Running);
        sim.agents();
        sim.lead();
        assert_eq!(sim.state.tasks[&old[0]].desired, DesiredState::Shutdown);
        sim.settle_with(|sim| assert!(sim.running(web) >= 2));
        assert_eq!(sim.update_state(web), Some(UpdateState::Completed));
        assert_eq!(sim.running(web), 2);
        assert!(sim.live(web).iter().all(|t| t.spec.image == "task-echo-v2"));
    }

    #[test]
    fn the_next_batch_waits_for_the_update_delay() {
        let mut sim = Sim::new(2);
        let mut s = spec(2);
        s.update.delay_ms = 2_000;
        let web = sim.create(s);
        sim.settle();
        sim.update(web, |s| s.task.image = "task-echo-v2".into());
        let v2 = |sim: &Sim| {
            sim.live(web)
                .iter()
                .filter(|t| t.spec.image == "task-echo-v2")
                .count()
        };
        sim.lead();
        assert_eq!(v2(&sim), 1);
        sim.agents();
        sim.lead();
        sim.agents();
        let due = plan_with_deadline(&sim.state, sim.now);
        assert_eq!(
            due,
            Plan {
                commands: vec![],
                deadline: Some(sim.now + 2_000)
            }
        );
        sim.now += 1_999;
        sim.lead();
        assert_eq!(v2(&sim), 1, "the delay runs");
        sim.now += 1;
        sim.lead();
        assert_eq!(v2(&sim), 2);
    }

    #[test]
    fn slots_added_during_an_update_get_the_new_spec() {
        let mut sim = Sim::new(3);
        let mut s = spec(3);
        s.update.monitor_ms = 1_000;
        let web = sim.create(s);
        sim.settle();
        sim.update(web, |s| s.task.image = "task-echo-v2".into());
        sim.lead();
        sim.update(web, scale(5));
        assert_eq!(sim.update_state(web), Some(UpdateState::Updating));
        sim.lead();
        let added: Vec<&str> = sim
            .live(web)
            .iter()
            .filter(|t| t.slot > 3)
            .map(|t| t.spec.image.as_str())
            .collect();
        assert_eq!(added, vec!["task-echo-v2", "task-echo-v2"]);
        sim.settle();
        assert_eq!(sim.update_state(web), Some(UpdateState::Completed));
        assert_eq!(sim.running(web), 5);
        assert!(sim.live(web).iter().all(|t| t.spec.image == "task-echo-v2"));
    }

    #[test]
    fn a_failing_update_pauses() {
        let mut sim = Sim::new(3);
        let mut s = spec(3);
        s.update.monitor_ms = 10_000;
        // The failed slot is restarted (on the new spec) twice, then left.
        s.task.restart.max_attempts = 2;
        let web = sim.create(s);
        sim.settle();

        sim.update(web, |s| s.task.image = BAD.into());
        sim.settle();
        let status = sim.state.services[&web].update_status.clone().unwrap();
        assert_eq!(status.state, UpdateState::Paused);
        // The first new task failed; the update stopped there.
        let first = sim
            .tasks(web)
            .into_iter()
            .filter(|t| t.spec.image == BAD)
            .min_by_key(|t| t.created_at_ms)
            .unwrap();
        assert_eq!(first.status.state, TaskState::Failed);
        assert_eq!(
            status.message,
            format!(
                "update paused due to failure or early termination of task {}",
                mesh_api::node::format_id(first.id)
            )
        );
        // Nothing else was replaced: two slots still run the old spec.
        let old = sim
            .live(web)
            .iter()
            .filter(|t| t.spec.image == "task-echo" && t.status.state == TaskState::Running)
            .count();
        assert_eq!(old, 2);
    }

    #[test]
    fn a_failing_update_rolls_back_when_asked() {
        let mut sim = Sim::new(3);
        let mut s = spec(4);
        s.update.monitor_ms = 10_000;
        s.update.parallelism = 2;
        s.update.failure_action = FailureAction::Rollback;
        s.rollback.parallelism = 0;
        let web = sim.create(s);
        sim.settle();

        sim.update(web, |s| s.task.image = BAD.into());
        sim.settle();
        let service = &sim.state.services[&web];
        assert_eq!(
            service.update_status.as_ref().map(|s| s.state),
            Some(UpdateState::RollbackCompleted)
        );
        assert_eq!(service.spec.task.image, "task-echo");
        assert_eq!(sim.running(web), 4);
        assert!(sim.live(web).iter().all(|t| t.spec.image == "task-echo"));
    }

    #[test]
    fn a_global_service_follows_node_eligibility() {
        let mut sim = Sim::new(3);
        sim.label(3, "b");
        let mut s = spec(1);
        s.mode = ServiceMode::Global;
        s.constraints = vec!["node.labels.zone==a".parse().unwrap()];
        s.task.restart.delay_ms = 0;
        let agent = sim.create(s);
        sim.settle();
        assert_eq!(sim.per_node(agent), BTreeMap::from([(1, 1), (2, 1)]));

        sim.label(3, "a");
        sim.settle();
        assert_eq!(
            sim.per_node(agent),
            BTreeMap::from([(1, 1), (2, 1), (3, 1)])
        );

        sim.node(1, Availability::Drain);
        sim.status(2, NodeStatus::Down);
        sim.settle();
        assert_eq!(sim.per_node(agent), BTreeMap::from([(3, 1)]));

        // A node joins; it runs nothing until its agent has a dataplane.
        let mut node = mesh_api::node::Node::new(4, "n4".into(), mesh_api::node::Role::Worker, 0);
        node.labels.insert("zone".into(), "a".into());
        sim.apply(Command::AddNode { node });
        sim.status(4, NodeStatus::Ready);
        sim.settle();
        assert_eq!(sim.per_node(agent), BTreeMap::from([(3, 1)]));
        sim.apply(Command::SetDataAddr {
            id: 4,
            addr: Some(Ipv4Addr::new(10, 99, 0, 4)),
            runtimes: [RuntimeKind::Process].into(),
            resources: Default::default(),
            at_ms: sim.now,
        });
        sim.node(1, Availability::Active);
        sim.status(2, NodeStatus::Ready);
        sim.settle();
        assert_eq!(
            sim.per_node(agent),
            BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
        );
    }

    #[test]
    fn tasks_wait_pending_until_a_node_fits() {
        let mut sim = Sim::new(2);
        let mut s = spec(2);
        s.constraints = vec!["node.labels.zone==c".parse().unwrap()];
        let web = sim.create(s);
        sim.settle();
        let pending = sim.live(web);
        assert_eq!(pending.len(), 2);
        assert!(pending.iter().all(|t| t.status.state == TaskState::Pending
            && t.node.is_none()
            && t.status.message
                == "no suitable node (scheduling constraints not satisfied on 2 nodes)"));

        sim.label(2, "c");
        sim.settle();
        assert_eq!(sim.per_node(web), BTreeMap::from([(2, 2)]));
        assert_eq!(sim.running(web), 2);
    }

    #[test]
    fn docker_tasks_wait_for_a_docker_node_and_leave_a_node_that_lost_docker() {
        use mesh_api::spec::RuntimeKind::{Docker, Process};
        fn report(sim: &mut Sim, id: NodeId, runtimes: &[RuntimeKind]) {
            let addr = sim.state.nodes[&id].data_addr;
            sim.apply(Command::SetDataAddr {
                id,
                addr,
                runtimes: runtimes.iter().copied().collect(),
                resources: Default::default(),
                at_ms: sim.now,
            });
        }
        let mut sim = Sim::new(3);
        let mut s = spec(2);
        s.task.runtime = Docker;
        s.task.restart.delay_ms = 0;
        let dk = sim.create(s);
        sim.settle();
        let pending = sim.live(dk);
        assert_eq!(pending.len(), 2);
        assert!(pending.iter().all(|t| t.status.state == TaskState::Pending
            && t.node.is_none()
            && t.status.message == "no suitable node (docker runtime not available on 3 nodes)"));

        report(&mut sim, 2, &[Process, Docker]);
        sim.settle();
        assert_eq!(sim.per_node(dk), BTreeMap::from([(2, 2)]));
        assert_eq!(sim.running(dk), 2);

        // Node 3's agent runs docker too; then node 2's restarts without it:
        // its tasks move to node 3.
        report(&mut sim, 3, &[Process, Docker]);
        report(&mut sim, 2, &[Process]);
        sim.settle();
        assert_eq!(sim.per_node(dk), BTreeMap::from([(3, 2)]));
        assert_eq!(sim.running(dk), 2);

        // A node without recorded runtimes (state from before agents reported
        // them) gets no new docker task but keeps those it runs.
        sim.state.nodes.get_mut(&3).unwrap().runtimes.clear();
        sim.settle();
        assert_eq!(sim.per_node(dk), BTreeMap::from([(3, 2)]));
    }

    #[test]
    fn a_removed_service_s_tasks_are_forgotten_once_stopped() {
        let mut sim = Sim::new(2);
        let web = sim.create(spec(4));
        sim.settle();
        sim.status(2, NodeStatus::Down);
        sim.apply(Command::RemoveService {
            id: web,
            at_ms: sim.now,
        });
        sim.lead();
        // Those of the down node at once; the others once their agent stopped them.
        assert_eq!(sim.tasks(web).len(), 2);
        assert!(
            sim.tasks(web)
                .iter()
                .all(|t| t.desired == DesiredState::Remove && t.node == Some(1))
        );
        sim.settle();
        assert!(sim.state.tasks.is_empty());
    }
}
