//! Evictions, the first pass of a round: what becomes of the tasks whose
//! node went away or no longer suits them (swarmkit's constraint enforcer,
//! and its orchestrators' reaction to a node that goes down or drains).
//!
//! A task whose node is down or removed is orphaned: what became of it is
//! unknown, so it is marked `Orphaned` and asked to stop (its node's agent
//! stops it if it comes back), and the restart supervisor treats it as a
//! failure. A task asked to stop before it was ever placed is ended here,
//! as no agent will report it. A live task on a drained node, or on a node
//! that no longer suits the service (its constraints, or its runtime: an
//! agent restarted without docker reports so), is asked to stop:
//! its node's agent drains it, and the orchestrators replace it at once.
//! It runs before the updater, which counts orphaned new tasks as failures.
//!
//! A node without recorded runtimes (recorded before agents reported them)
//! counts as process-only for new tasks, but its running tasks are not
//! evicted for it: what it runs is unknown, not missing, until its agent's
//! next session reports its runtimes.

use crate::orchestrator::work::Work;
use crate::state::ClusterState;
use mesh_api::node::{Availability, Node, NodeStatus};
use mesh_api::task::{DesiredState, Task, TaskState, TaskStatus};

/// Orphans the tasks whose node is down or gone (status `Orphaned`,
/// desired `Shutdown`), ends stopping tasks that were never placed, and
/// stops live tasks on drained nodes or on nodes that no longer suit the
/// service: its constraints, or the runtime its agent reported.
pub fn evict(state: &ClusterState, work: &mut Work<'_>, now_ms: u64) {
    let spec = &work.service.spec;
    let suits = |n: &Node| {
        let runtime_known = n.runtimes.is_empty() || n.runtimes.contains(&spec.task.runtime);
        runtime_known && spec.constraints.iter().all(|c| c.matches(n))
    };
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
                    && (n.availability == Availability::Drain || !suits(n)) =>
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
