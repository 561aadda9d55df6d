//! The orchestrators' pure core: given a service's wanted shape and its
//! tasks, the changes that bring them together. Replicated services keep
//! one live task per slot `1..=replicas`; global services one per eligible
//! node. Tasks on nodes that are down or drained are replaced (replicated)
//! or stopped (global, drained or no longer eligible). The leader's shell
//! commits the changes; the scheduler picks nodes for new replicated tasks.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::scheduler;
use crate::spec::Constraint;
use crate::state::{Availability, ClusterState, NodeId, NodeStatus};

/// A task's identity.
pub type TaskId = u64;

/// What the orchestrator needs of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Its slot (replicated services; 0 for global).
    pub slot: u32,
    /// Where it runs, once scheduled.
    pub node: Option<NodeId>,
    /// Whether it should be running (false once it is being stopped).
    pub live: bool,
}

/// One change to commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Start a task: in `slot` (replicated, node chosen by the scheduler)
    /// or on `node` (global).
    Create {
        /// The slot (0 for global).
        slot: u32,
        /// The node, for global services.
        node: Option<NodeId>,
    },
    /// Stop a task.
    Shutdown {
        /// The task.
        task: TaskId,
    },
}

fn node_usable(state: &ClusterState, node: Option<NodeId>) -> bool {
    node.and_then(|id| state.nodes.get(&id))
        .is_some_and(|n| n.status != NodeStatus::Down && n.availability != Availability::Drain)
}

/// The changes that give a replicated service exactly one live task in
/// each slot `1..=replicas`, on a node that is up and not drained.
#[must_use]
pub fn reconcile_replicated(
    state: &ClusterState,
    replicas: u32,
    tasks: &[TaskView],
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut by_slot: BTreeMap<u32, Vec<&TaskView>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| t.live) {
        by_slot.entry(task.slot).or_default().push(task);
    }
    for (slot, slot_tasks) in &by_slot {
        if *slot == 0 || *slot > replicas {
            changes.extend(slot_tasks.iter().map(|t| Change::Shutdown { task: t.id }));
            continue;
        }
        // Keep the oldest usable task of the slot; stop the rest.
        let keep = slot_tasks
            .iter()
            .filter(|t| t.node.is_none() || node_usable(state, t.node))
            .min_by_key(|t| t.id)
            .map(|t| t.id);
        for task in slot_tasks.iter().filter(|t| Some(t.id) != keep) {
            changes.push(Change::Shutdown { task: task.id });
        }
        if keep.is_none() {
            changes.push(Change::Create {
                slot: *slot,
                node: None,
            });
        }
    }
    for slot in 1..=replicas {
        if !by_slot.contains_key(&slot) {
            changes.push(Change::Create { slot, node: None });
        }
    }
    changes
}

/// The changes that give a global service one live task on every eligible
/// node, and none elsewhere (tasks on down nodes are left alone: the node
/// may come back).
#[must_use]
pub fn reconcile_global(
    state: &ClusterState,
    constraints: &[Constraint],
    tasks: &[TaskView],
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut covered = BTreeSet::new();
    for task in tasks.iter().filter(|t| t.live) {
        let Some(node) = task.node.and_then(|id| state.nodes.get(&id)) else {
            changes.push(Change::Shutdown { task: task.id });
            continue;
        };
        let wanted = node.status == NodeStatus::Down
            || (node.availability != Availability::Drain
                && constraints.iter().all(|c| c.matches(node)));
        if wanted && covered.insert(node.id) {
            continue;
        }
        changes.push(Change::Shutdown { task: task.id });
    }
    for node in state.nodes.values() {
        if scheduler::eligible(node, constraints) && !covered.contains(&node.id) {
            changes.push(Change::Create {
                slot: 0,
                node: Some(node.id),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_cluster;

    fn task(id: TaskId, slot: u32, node: NodeId) -> TaskView {
        TaskView {
            id,
            slot,
            node: Some(node),
            live: true,
        }
    }

    use Availability::{Active, Drain};
    use NodeStatus::{Down, Ready};

    #[test]
    fn scaling_up_creates_the_missing_slots_and_down_removes_the_highest() {
        let state = test_cluster(&[(1, Ready, Active, "a"), (2, Ready, Active, "a")]);
        let tasks = [task(10, 1, 1), task(11, 2, 2)];
        assert_eq!(
            reconcile_replicated(&state, 4, &tasks),
            vec![
                Change::Create {
                    slot: 3,
                    node: None
                },
                Change::Create {
                    slot: 4,
                    node: None
                }
            ]
        );
        assert_eq!(
            reconcile_replicated(&state, 1, &tasks),
            vec![Change::Shutdown { task: 11 }]
        );
        assert!(reconcile_replicated(&state, 2, &tasks).is_empty());
    }

    #[test]
    fn tasks_on_down_or_drained_nodes_are_replaced_in_their_slot() {
        let state = test_cluster(&[
            (1, Ready, Active, "a"),
            (2, Down, Active, "a"),
            (3, Ready, Drain, "a"),
        ]);
        let tasks = [task(10, 1, 1), task(11, 2, 2), task(12, 3, 3)];
        assert_eq!(
            reconcile_replicated(&state, 3, &tasks),
            vec![
                Change::Shutdown { task: 11 },
                Change::Create {
                    slot: 2,
                    node: None
                },
                Change::Shutdown { task: 12 },
                Change::Create {
                    slot: 3,
                    node: None
                }
            ]
        );
    }

    #[test]
    fn a_slot_with_two_live_tasks_keeps_the_oldest() {
        let state = test_cluster(&[(1, Ready, Active, "a")]);
        let tasks = [task(21, 1, 1), task(20, 1, 1)];
        assert_eq!(
            reconcile_replicated(&state, 1, &tasks),
            vec![Change::Shutdown { task: 21 }]
        );
    }

    #[test]
    fn global_runs_one_task_per_eligible_node() {
        let state = test_cluster(&[
            (1, Ready, Active, "a"),
            (2, Ready, Active, "b"),
            (3, Down, Active, "a"),
            (4, Ready, Drain, "a"),
        ]);
        let zone_a: Vec<Constraint> = vec!["node.labels.zone==a".parse().unwrap()];
        let tasks = [task(30, 0, 2), task(31, 0, 3), task(32, 0, 4)];
        assert_eq!(
            reconcile_global(&state, &zone_a, &tasks),
            vec![
                // On node 2: the constraint no longer holds.
                Change::Shutdown { task: 30 },
                // Node 3 is down: its task is left for when it returns.
                // Node 4 is drained.
                Change::Shutdown { task: 32 },
                Change::Create {
                    slot: 0,
                    node: Some(1)
                },
            ]
        );
        let all = reconcile_global(&state, &[], &[]);
        assert_eq!(
            all,
            vec![
                Change::Create {
                    slot: 0,
                    node: Some(1)
                },
                Change::Create {
                    slot: 0,
                    node: Some(2)
                }
            ]
        );
    }
}
