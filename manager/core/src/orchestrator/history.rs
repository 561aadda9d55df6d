//! History, the last pass of a round (swarmkit's task reaper): which
//! records of ended tasks are forgotten. Per service, [`prune_history`]
//! keeps Swarm's task history retention per slot (per node, for global
//! services) and nothing of slots the service no longer has; over the
//! whole state, [`removed`] finds the tasks of removed services that can
//! go.

use std::collections::BTreeMap;

use crate::orchestrator::work::{SlotKey, Work};
use crate::state::ClusterState;
use mesh_api::node::NodeStatus;
use mesh_api::service::ServiceId;
use mesh_api::task::{DesiredState, Task, TaskId};

/// Terminal tasks kept per slot (per node, for global services): Swarm's
/// default task history retention.
pub const HISTORY_RETENTION: usize = 5;

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

/// The tasks of removed services (their desired state is `Remove`) that
/// can be forgotten: those that have stopped, and at once those no agent
/// will report stopped (never placed, node down or gone); of the services
/// `in_scope` says to look at (a plan of what changed looks at those it touched).
#[must_use]
pub fn removed(state: &ClusterState, in_scope: impl Fn(&ServiceId) -> bool) -> Vec<TaskId> {
    state
        .tasks
        .values()
        .filter(|t| in_scope(&t.service) && !state.services.contains_key(&t.service))
        .filter(|t| {
            let unreachable = t
                .node
                .and_then(|id| state.nodes.get(&id))
                .is_none_or(|n| n.status == NodeStatus::Down);
            t.status.state.is_terminal() || unreachable
        })
        .map(|t| t.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::orchestrator::testing::{service, task};
    use mesh_api::task::TaskState;

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
