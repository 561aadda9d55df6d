//! The bookkeeping every pass of a round shares: where a task belongs (its
//! [`SlotKey`]: a slot of a replicated service, a node of a global one) and
//! a service's tasks as the round is changing them (its [`Work`]).
//!
//! A round of the leader's loops ([`crate::reconcile`]) builds one [`Work`]
//! per service from the state and hands it from pass to pass (evictions,
//! the updater, the restart supervisor, the orchestrators, the scheduler,
//! history), so each pass sees what the ones before it decided; the
//! reconciler turns it into one command at the end. Nothing here decides
//! anything: this module only records decisions.

use std::collections::BTreeSet;

use crate::state::ClusterState;
use mesh_api::node::NodeId;
use mesh_api::service::Service;
use mesh_api::spec::ServiceMode;
use mesh_api::task::{DesiredState, Task, TaskId};

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
    /// Its node: chosen by the orchestrator for global services, by the
    /// scheduler for replicated ones.
    pub node: Option<NodeId>,
    /// Why it is pending, when no node fits.
    pub message: String,
}

impl Planned {
    /// The slot it fills: its node for a `global` service, else its slot.
    #[must_use]
    pub fn key(&self, global: bool) -> SlotKey {
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

    /// The service with `tasks`, its tasks in `state` (in ID order), unchanged yet.
    #[must_use]
    pub fn with_tasks(service: &'a Service, tasks: Vec<Task>) -> Self {
        Self {
            service,
            tasks,
            create: Vec::new(),
            delete: BTreeSet::new(),
        }
    }

    /// Whether the service is global (one task per node).
    #[must_use]
    pub fn global(&self) -> bool {
        self.service.spec.mode == ServiceMode::Global
    }

    /// The slot of one of its tasks.
    #[must_use]
    pub fn key(&self, task: &Task) -> SlotKey {
        slot_key(self.service, task)
    }

    /// The slots that hold a live task or a task to create.
    #[must_use]
    pub fn occupied(&self) -> BTreeSet<SlotKey> {
        let global = self.global();
        let mut occupied: BTreeSet<SlotKey> = self.create.iter().map(|p| p.key(global)).collect();
        occupied.extend(
            self.tasks
                .iter()
                .filter(|t| t.is_live())
                .map(|t| self.key(t)),
        );
        occupied
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
}
