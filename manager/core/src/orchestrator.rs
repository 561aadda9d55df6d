//! The orchestrators' pure core, on a service's real task records: the
//! changes that give a replicated service one live task in each slot
//! `1..=replicas`, and a global service one live task on every eligible
//! node. A live task is one the leader wants running that has not ended.
//!
//! The phases work on a [`Work`], the service's tasks as this round of the
//! leader's loops is changing them, so each phase sees what the ones
//! before it decided:
//! - [`evict`]: tasks on nodes that are down or gone are orphaned; tasks on
//!   drained nodes, or on nodes that no longer satisfy the constraints, are
//!   stopped (their node's agent drains them);
//! - [`fill`]: an empty slot (or eligible node) gets a new task, at once if
//!   its last task was stopped by the leader, else when the restart
//!   supervisor ([`crate::restart`]) says so;
//! - [`dedupe`]: slots beyond the replica count, and extra tasks in a slot,
//!   are stopped (highest slots first when scaling down);
//! - [`prune_history`]: Swarm's task history retention.
//!
//! The scheduler places the new tasks; the reconciler ([`crate::reconcile`])
//! turns the [`Work`] into commands.

use std::collections::{BTreeMap, BTreeSet};

use crate::restart::{self, Decision};
use crate::scheduler;
use crate::state::ClusterState;
use mesh_api::node::{Availability, NodeId, NodeStatus};
use mesh_api::service::Service;
use mesh_api::spec::ServiceMode;
use mesh_api::task::{DesiredState, Task, TaskId, TaskState, TaskStatus};

/// Terminal tasks kept per slot (per node, for global services): Swarm's
/// default task history retention.
pub const HISTORY_RETENTION: usize = 5;

/// Where a task belongs: its slot (replicated services) or its node
/// (global services).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    /// A replicated slot, from 1 (0 for a task of a service that was global).
    Slot(u32),
    /// A global service's node (`None`: never placed).
    Node(Option<NodeId>),
}

/// The slot a task of `service` belongs to.
#[must_use]
pub fn slot_key(service: &Service, task: &Task) -> SlotKey {
    match service.spec.mode {
        ServiceMode::Replicated { .. } => SlotKey::Slot(task.slot),
        ServiceMode::Global => SlotKey::Node(task.node),
    }
}

/// A task the reconciler will create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Its slot (0 for global services).
    pub slot: u32,
    /// Its node: chosen here for global services, by the scheduler for
    /// replicated ones.
    pub node: Option<NodeId>,
    /// Why it is pending, when no node fits.
    pub message: String,
}

impl Planned {
    fn key(&self, global: bool) -> SlotKey {
        if global {
            SlotKey::Node(self.node)
        } else {
            SlotKey::Slot(self.slot)
        }
    }
}

/// A service's tasks as this round is changing them.
#[derive(Clone, Debug)]
pub struct Work<'a> {
    /// The service.
    pub service: &'a Service,
    /// Its tasks (history included), changed in place, in ID order.
    pub tasks: Vec<Task>,
    /// Tasks to create.
    pub create: Vec<Planned>,
    /// Task records to forget.
    pub delete: BTreeSet<TaskId>,
}

impl<'a> Work<'a> {
    /// The service's tasks in `state`, unchanged yet.
    #[must_use]
    pub fn new(state: &ClusterState, service: &'a Service) -> Self {
        Self {
            service,
            tasks: state.service_tasks(service.id).cloned().collect(),
            create: Vec::new(),
            delete: BTreeSet::new(),
        }
    }

    fn global(&self) -> bool {
        self.service.spec.mode == ServiceMode::Global
    }

    /// The slot of one of its tasks.
    #[must_use]
    pub fn key(&self, task: &Task) -> SlotKey {
        slot_key(self.service, task)
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| t.id == id)
    }

    /// Asks for a task to stop (it keeps its record as history).
    pub fn shut_down(&mut self, id: TaskId) {
        if let Some(task) = self.task_mut(id)
            && task.desired == DesiredState::Running
        {
            task.desired = DesiredState::Shutdown;
        }
    }

    /// Plans a new task in `slot` (replicated) or on `node` (global).
    pub fn add(&mut self, slot: u32, node: Option<NodeId>) {
        self.create.push(Planned {
            slot,
            node,
            message: String::new(),
        });
    }

    /// The slots the service wants filled: `1..=replicas`, or every node
    /// eligible for the service.
    #[must_use]
    pub fn wanted(&self, state: &ClusterState) -> Vec<SlotKey> {
        match self.service.spec.mode {
            ServiceMode::Replicated { replicas } => (1..=replicas).map(SlotKey::Slot).collect(),
            ServiceMode::Global => state
                .nodes
                .values()
                .filter(|n| scheduler::eligible(n, &self.service.spec.constraints))
                .map(|n| SlotKey::Node(Some(n.id)))
                .collect(),
        }
    }
}

/// Orphans the tasks whose node is down or gone (status `Orphaned`,
/// desired `Shutdown`: what became of them is unknown, and their node's
/// agent stops them if it comes back), ends stopping tasks that were never
/// placed, and stops live tasks on drained nodes or on nodes that no longer
/// satisfy the service's constraints.
pub fn evict(state: &ClusterState, work: &mut Work<'_>, now_ms: u64) {
    let constraints = &work.service.spec.constraints;
    for task in &mut work.tasks {
        if task.status.state.is_terminal() {
            continue;
        }
        let node = task.node.map(|id| state.nodes.get(&id));
        match node {
            Some(None) => orphan(task, "node removed", now_ms),
            Some(Some(n)) if n.status == NodeStatus::Down => orphan(task, "node down", now_ms),
            None if task.desired != DesiredState::Running => {
                task.status =
                    TaskStatus::new(TaskState::Shutdown, "stopped before it was placed", now_ms);
            }
            Some(Some(n))
                if task.desired == DesiredState::Running
                    && (n.availability == Availability::Drain
                        || !constraints.iter().all(|c| c.matches(n))) =>
            {
                task.desired = DesiredState::Shutdown;
            }
            _ => {}
        }
    }
}

fn orphan(task: &mut Task, message: &str, now_ms: u64) {
    task.status = TaskStatus::new(TaskState::Orphaned, message, now_ms);
    if task.desired == DesiredState::Running {
        task.desired = DesiredState::Shutdown;
    }
}

/// Gives every wanted slot without a live task a new one: at once when its
/// last task was stopped by the leader (or it never had one), else as the
/// restart supervisor decides for the task that ended. Tasks that ended by
/// themselves are marked desired `Shutdown` once their fate is settled
/// (replaced, or never), except a `Shutdown` the leader did not ask for
/// that is not restarted: it keeps desired `Running`, which is what tells
/// it apart from a stop the leader asked for.
pub fn fill(state: &ClusterState, work: &mut Work<'_>, now_ms: u64) {
    let policy = work.service.spec.task.restart;
    let global = work.global();
    let wanted = work.wanted(state);
    // One pass over the tasks: a service may have a thousand slots.
    let mut by_key: BTreeMap<SlotKey, Vec<usize>> = BTreeMap::new();
    let mut occupied: BTreeSet<SlotKey> = work.create.iter().map(|p| p.key(global)).collect();
    for (i, task) in work.tasks.iter().enumerate() {
        let key = work.key(task);
        by_key.entry(key).or_default().push(i);
        if task.is_live() {
            occupied.insert(key);
        }
    }
    let mut waiting = BTreeSet::new();
    for key in &wanted {
        if occupied.contains(key) {
            continue;
        }
        let (slot, node) = match key {
            SlotKey::Slot(slot) => (*slot, None),
            SlotKey::Node(node) => (0, *node),
        };
        let history: Vec<&Task> = by_key
            .get(key)
            .map(|ids| ids.iter().map(|&i| &work.tasks[i]).collect())
            .unwrap_or_default();
        let Some(latest) = history
            .iter()
            .copied()
            .max_by_key(|t| (t.created_at_ms, t.id))
        else {
            work.add(slot, node);
            continue;
        };
        if !restart::ended_by_itself(latest) {
            // Stopping or stopped by the leader (an update, a drain, a
            // scale down): the slot is refilled now.
            work.add(slot, node);
            continue;
        }
        let (id, state_now) = (latest.id, latest.status.state);
        match restart::decide(&policy, latest, &history, now_ms) {
            Decision::Now => {
                work.shut_down(id);
                work.add(slot, node);
            }
            Decision::At(_) => {
                waiting.insert(id);
            }
            Decision::Never => {
                if state_now == TaskState::Shutdown {
                    waiting.insert(id);
                } else {
                    work.shut_down(id);
                }
            }
        }
    }
    // Every other task that ended by itself: its slot is taken or no
    // longer wanted.
    let settled: Vec<TaskId> = work
        .tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Running && t.status.state.is_terminal())
        .filter(|t| !waiting.contains(&t.id))
        .map(|t| t.id)
        .collect();
    for id in settled {
        work.shut_down(id);
    }
}

/// Stops the live tasks of slots the service no longer wants (replicated:
/// slots above the replica count, i.e. the highest slots on a scale down)
/// and the extra live tasks of a slot. A slot with two live tasks keeps
/// the one running the service's current task spec (the newest spec wins a
/// start-first update), the oldest if several do; a task on an older spec
/// is kept beside a current one that is not running yet, and stopped once
/// it runs (start-first).
pub fn dedupe(work: &mut Work<'_>) {
    let replicas = work.service.spec.replicas();
    let current = &work.service.spec.task;
    let mut by_key: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for task in work.tasks.iter().filter(|t| t.is_live()) {
        by_key.entry(work.key(task)).or_default().push(task);
    }
    let mut stop = Vec::new();
    for (key, mut tasks) in by_key {
        let out_of_range = match (key, replicas) {
            (SlotKey::Slot(slot), Some(replicas)) => slot == 0 || slot > replicas,
            (SlotKey::Node(node), None) => node.is_none(),
            _ => true,
        };
        if out_of_range {
            stop.extend(tasks.iter().map(|t| t.id));
            continue;
        }
        tasks.sort_by_key(|t| (t.created_at_ms, t.id));
        let (new, old): (Vec<&Task>, Vec<&Task>) =
            tasks.into_iter().partition(|t| t.spec == *current);
        let keep_new = new
            .iter()
            .find(|t| t.status.state == TaskState::Running)
            .or_else(|| new.first())
            .map(|t| t.id);
        stop.extend(new.iter().map(|t| t.id).filter(|id| Some(*id) != keep_new));
        let new_runs = new
            .iter()
            .any(|t| Some(t.id) == keep_new && t.status.state == TaskState::Running);
        let keep_old = if new_runs {
            None
        } else {
            old.first().map(|t| t.id)
        };
        stop.extend(old.iter().map(|t| t.id).filter(|id| Some(*id) != keep_old));
    }
    for id in stop {
        work.shut_down(id);
    }
}

/// Forgets history: keeps the newest `retention` terminal tasks per slot
/// (at least [`HISTORY_RETENTION`], more when the restart policy's
/// `max_attempts` needs them counted), and none in slots the service no
/// longer has (after a scale down). Tasks the restart supervisor still
/// waits on (desired `Running`) are kept.
pub fn prune_history(work: &mut Work<'_>) {
    let retention = HISTORY_RETENTION.max(work.service.spec.task.restart.max_attempts as usize + 1);
    let replicas = work.service.spec.replicas();
    let mut by_key: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for task in work
        .tasks
        .iter()
        .filter(|t| t.status.state.is_terminal() && t.desired != DesiredState::Running)
    {
        by_key.entry(work.key(task)).or_default().push(task);
    }
    for (key, mut tasks) in by_key {
        let keep = match (key, replicas) {
            (SlotKey::Slot(slot), Some(replicas)) if slot == 0 || slot > replicas => 0,
            _ => retention,
        };
        tasks.sort_by_key(|t| std::cmp::Reverse((t.status.at_ms, t.created_at_ms, t.id)));
        work.delete.extend(tasks.iter().skip(keep).map(|t| t.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::service::ServiceEndpoint;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};

    fn service(replicas: u32) -> Service {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "v2", vec![]);
        spec.mode = ServiceMode::Replicated { replicas };
        Service {
            id: 1,
            spec,
            previous_spec: None,
            spec_version: 2,
            endpoint: ServiceEndpoint::default(),
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn task(service: &Service, id: TaskId, slot: u32, image: &str, state: TaskState) -> Task {
        let mut spec = service.spec.task.clone();
        spec.image = image.into();
        Task {
            id,
            service: service.id,
            slot,
            node: Some(1),
            spec,
            spec_version: 1,
            desired: DesiredState::Running,
            desired_version: 1,
            status: TaskStatus::new(state, "", id),
            addr: None,
            created_at_ms: id,
        }
    }

    fn stopped(work: &Work<'_>) -> Vec<TaskId> {
        work.tasks
            .iter()
            .filter(|t| t.desired == DesiredState::Shutdown)
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn a_slot_keeps_its_current_spec_task_else_its_oldest() {
        let web = service(3);
        let mut work = Work {
            service: &web,
            tasks: vec![
                // Slot 1: two old tasks: the oldest stays.
                task(&web, 10, 1, "v1", TaskState::Running),
                task(&web, 11, 1, "v1", TaskState::Running),
                // Slot 2: the new task is not running yet: both stay.
                task(&web, 20, 2, "v1", TaskState::Running),
                task(&web, 21, 2, "v2", TaskState::Starting),
                // Slot 3: the new task runs: the old one stops.
                task(&web, 30, 3, "v1", TaskState::Running),
                task(&web, 31, 3, "v2", TaskState::Running),
                // Slot 4 is beyond the replica count.
                task(&web, 40, 4, "v2", TaskState::Running),
            ],
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        dedupe(&mut work);
        assert_eq!(stopped(&work), vec![11, 30, 40]);
    }

    #[test]
    fn history_beyond_five_per_slot_is_forgotten() {
        let web = service(1);
        let mut tasks: Vec<Task> = (1..=8)
            .map(|id| {
                let mut t = task(&web, id, 1, "v2", TaskState::Failed);
                t.desired = DesiredState::Shutdown;
                t
            })
            .collect();
        tasks.push(task(&web, 9, 1, "v2", TaskState::Running));
        let mut gone = task(&web, 20, 2, "v2", TaskState::Shutdown);
        gone.desired = DesiredState::Shutdown;
        tasks.push(gone);
        let mut work = Work {
            service: &web,
            tasks,
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        prune_history(&mut work);
        assert_eq!(work.delete, BTreeSet::from([1, 2, 3, 20]));
    }
}
