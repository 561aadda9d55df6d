//! The leader's loops composed: one pure, deterministic function of the
//! state and the leader's clock, [`plan`], returns the commands that move
//! the cluster toward what its services ask for. The leader commits them
//! in order (see `api::leader`).
//!
//! One round, per service in ID order: the orchestrator orphans and evicts
//! tasks ([`orchestrator::evict`]), the updater takes its next step
//! ([`updater::step`]), the orchestrator fills empty slots with the
//! restart supervisor's consent ([`orchestrator::fill`]) and stops extras
//! ([`orchestrator::dedupe`]), the scheduler places new and pending tasks,
//! and old history is pruned ([`orchestrator::prune_history`]). Each
//! service's changes become one [`Command::ChangeTasks`] (plus
//! [`Command::SetUpdateStatus`] or a rollback's [`Command::UpdateService`]).
//! Tasks of removed services are forgotten once they have stopped.
//!
//! [`plan`] repeats rounds on a copy of the state until a round has
//! nothing to do (a rollback's first batch, for example, follows the
//! rollback in the same plan), so applying a plan and planning again with
//! the same clock yields nothing: the leader never commits empty churn.

use std::collections::BTreeMap;

use crate::orchestrator::{self, Planned, Work};
use crate::scheduler::{self, Load};
use crate::service::{Service, Task};
use crate::state::{ClusterState, Command, NewTask, NodeId, NodeStatus, TaskChange};
use crate::updater::{self, Step};

/// Rounds a plan runs at most; a round that still has work after this many
/// is left for the next plan.
const MAX_ROUNDS: usize = 16;

/// The commands that bring the state closer to what its services ask for,
/// at `now_ms` (the leader's clock, ms since the epoch). Deterministic;
/// empty when there is nothing to do now (time-based work, such as a
/// restart delay, shows up in a later plan).
#[must_use]
pub fn plan(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    let mut sim = state.clone();
    let mut commands = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let round = round(&sim, now_ms);
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
    }
    commands
}

/// One round: each service's changes computed on `state` as it is.
fn round(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut total = total_load(state);
    for service in state.services.values() {
        commands.extend(service_round(state, service, &mut total, now_ms));
    }
    if let Some(command) = forget_removed(state, now_ms) {
        commands.push(command);
    }
    commands
}

/// Non-terminal tasks per node, every service counted.
fn total_load(state: &ClusterState) -> BTreeMap<NodeId, usize> {
    let mut total = BTreeMap::new();
    for task in state.tasks.values() {
        if let (Some(node), false) = (task.node, task.status.state.is_terminal()) {
            *total.entry(node).or_default() += 1;
        }
    }
    total
}

fn service_round(
    state: &ClusterState,
    service: &Service,
    total: &mut BTreeMap<NodeId, usize>,
    now_ms: u64,
) -> Vec<Command> {
    let mut work = Work::new(state, service);
    let mut commands = Vec::new();
    orchestrator::evict(state, &mut work, now_ms);
    match updater::step(service, &work.tasks, now_ms) {
        Step::Wait => {}
        Step::Rollback => {
            // The rollback changes the spec new tasks get: this service's
            // task changes wait for the next round.
            if let Some(previous) = &service.previous_spec {
                return vec![Command::UpdateService {
                    id: service.id,
                    spec: previous.clone(),
                    rollback: true,
                    at_ms: now_ms,
                }];
            }
        }
        Step::Status(status) => commands.push(Command::SetUpdateStatus {
            id: service.id,
            status: Some(status),
            at_ms: now_ms,
        }),
        Step::Replace { tasks, order } => {
            for id in tasks {
                let Some(task) = work.tasks.iter().find(|t| t.id == id) else {
                    continue;
                };
                let (slot, node) = match service.spec.replicas() {
                    Some(_) => (task.slot, None),
                    None => (0, task.node),
                };
                if order == crate::spec::UpdateOrder::StopFirst {
                    work.shut_down(id);
                }
                work.add(slot, node);
            }
        }
    }
    orchestrator::fill(state, &mut work, now_ms);
    orchestrator::dedupe(&mut work);
    schedule(state, &mut work, total);
    orchestrator::prune_history(&mut work);
    if let Some(command) = change_tasks(state, &work, now_ms) {
        commands.insert(0, command);
    }
    commands
}

/// Places the planned tasks that have no node and the live tasks still
/// pending, spreading them with the scheduler; what does not fit stays
/// pending with the scheduler's reason.
fn schedule(state: &ClusterState, work: &mut Work<'_>, total: &mut BTreeMap<NodeId, usize>) {
    let pending_tasks: Vec<usize> = (0..work.tasks.len())
        .filter(|&i| work.tasks[i].is_live() && work.tasks[i].node.is_none())
        .collect();
    let pending_planned: Vec<usize> = (0..work.create.len())
        .filter(|&i| work.create[i].node.is_none())
        .collect();
    for planned in work.create.iter().filter_map(|p| p.node) {
        *total.entry(planned).or_default() += 1;
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
    };
    match scheduler::place(state, &load, &work.service.spec.constraints, count) {
        Ok(nodes) => {
            let mut nodes = nodes.into_iter();
            for i in pending_tasks {
                let node = nodes.next().expect("one node per task");
                work.tasks[i].node = Some(node);
                *total.entry(node).or_default() += 1;
            }
            for i in pending_planned {
                let node = nodes.next().expect("one node per task");
                work.create[i].node = Some(node);
                *total.entry(node).or_default() += 1;
            }
        }
        Err(err) => {
            for i in pending_planned {
                work.create[i].message = err.to_string();
            }
        }
    }
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

/// Forgets the tasks of removed services (their desired state is `Remove`)
/// once they have stopped, or at once when no agent will report them
/// stopped (never placed, node down or gone).
fn forget_removed(state: &ClusterState, now_ms: u64) -> Option<Command> {
    let delete: Vec<_> = state
        .tasks
        .values()
        .filter(|t| !state.services.contains_key(&t.service))
        .filter(|t| {
            let unreachable = t
                .node
                .and_then(|id| state.nodes.get(&id))
                .is_none_or(|n| n.status == NodeStatus::Down);
            t.status.state.is_terminal() || unreachable
        })
        .map(|t| t.id)
        .collect();
    (!delete.is_empty()).then_some(Command::ChangeTasks {
        create: Vec::new(),
        update: Vec::new(),
        delete,
        at_ms: now_ms,
    })
}
