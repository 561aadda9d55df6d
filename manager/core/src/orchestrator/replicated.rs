//! The replicated orchestrator: a replicated service has one live task in
//! each slot `1..=replicas`. An empty slot is filled (a new task, placed
//! later by the scheduler), slots above the replica count are stopped (the
//! highest slots go on a scale down), and a slot with two live tasks keeps
//! one (see [`slots::stop_extras`]).

use crate::orchestrator::restart::Restarts;
use crate::orchestrator::slots;
use crate::orchestrator::work::{SlotKey, Work};

/// The replica count of the work's service (0 if it is not replicated).
fn replicas(work: &Work<'_>) -> u32 {
    work.service.spec.replicas().unwrap_or(0)
}

/// Whether `key` is one of the slots `1..=replicas`.
fn in_range(key: SlotKey, replicas: u32) -> bool {
    matches!(key, SlotKey::Slot(slot) if (1..=replicas).contains(&slot))
}

/// The orchestrator's pass over one replicated service: fills the empty
/// slots `1..=replicas` as the restart supervisor's verdicts (`restarts`)
/// allow, then stops what is extra ([`dedupe`]).
pub fn orchestrate(work: &mut Work<'_>, restarts: &Restarts) {
    let wanted: Vec<SlotKey> = (1..=replicas(work)).map(SlotKey::Slot).collect();
    slots::fill(work, &wanted, restarts);
    dedupe(work);
}

/// Stops the live tasks of slots above the replica count (the highest
/// slots on a scale down) and the extra live tasks of a slot: the task on
/// the current spec wins, the oldest if several are (see
/// [`slots::stop_extras`]).
pub fn dedupe(work: &mut Work<'_>) {
    let replicas = replicas(work);
    slots::stop_extras(work, |key| in_range(key, replicas));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::orchestrator::testing::{service, task};
    use mesh_api::task::{DesiredState, TaskId, TaskState};

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
}
