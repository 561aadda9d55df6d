//! The global orchestrator: a global service has one live task on every
//! eligible node (ready, active, with a dataplane, running the service's
//! runtime and satisfying its constraints: [`scheduler::eligible`]). An eligible node without one gets
//! a new task, placed on it here rather than by the scheduler; a task that
//! was never placed is stopped, and a node with two live tasks keeps one
//! (see [`slots::stop_extras`]). Tasks on nodes that went down, drained or
//! no longer suit the service are the evictions' business.

use crate::orchestrator::restart::Restarts;
use crate::orchestrator::slots;
use crate::orchestrator::work::{SlotKey, Work};
use crate::scheduler;
use crate::state::ClusterState;

/// The nodes the work's service wants a task on: every eligible node.
fn wanted(state: &ClusterState, work: &Work<'_>) -> Vec<SlotKey> {
    state
        .nodes
        .values()
        .filter(|n| scheduler::eligible(n, &work.service.spec))
        .map(|n| SlotKey::Node(Some(n.id)))
        .collect()
}

/// The orchestrator's pass over one global service: fills the eligible
/// nodes without a live task as the restart supervisor's verdicts
/// (`restarts`) allow, then stops what is extra.
pub fn orchestrate(state: &ClusterState, work: &mut Work<'_>, restarts: &Restarts) {
    let wanted = wanted(state, work);
    slots::fill(work, &wanted, restarts);
    slots::stop_extras(work, |key| matches!(key, SlotKey::Node(Some(_))));
}
