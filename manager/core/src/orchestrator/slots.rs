//! What the replicated and the global orchestrator share, given the slots
//! each wants filled: [`fill`] gives every wanted slot without a live task
//! a new one (with the restart supervisor's consent when its last task
//! ended by itself), and [`stop_extras`] stops the live tasks of slots no
//! longer wanted and the extra live tasks of a slot.

use std::collections::{BTreeMap, BTreeSet};

use crate::orchestrator::restart::{Decision, Restarts};
use crate::orchestrator::work::{SlotKey, Work};
use mesh_api::task::{DesiredState, Task, TaskId, TaskState};

/// Gives every slot in `wanted` without a live task (or a task to create)
/// a new one: at once when its last task was stopped by the leader (or it
/// never had one), else as the restart supervisor decided (`restarts`, from
/// [`crate::orchestrator::restart::supervise`] on this work) for the task
/// that ended. Tasks that ended by themselves are marked desired `Shutdown`
/// once their fate is settled (replaced, or never), except a `Shutdown` the
/// leader did not ask for that is not restarted: it keeps desired
/// `Running`, which is what tells it apart from a stop the leader asked
/// for.
pub fn fill(work: &mut Work<'_>, wanted: &[SlotKey], restarts: &Restarts) {
    let occupied = work.occupied();
    let mut waiting = BTreeSet::new();
    for key in wanted {
        if occupied.contains(key) {
            continue;
        }
        let (slot, node) = match key {
            SlotKey::Slot(slot) => (*slot, None),
            SlotKey::Node(node) => (0, *node),
        };
        let Some(restart) = restarts.get(key) else {
            // No task yet, or the last one was stopped (or is stopping) at
            // the leader's request (an update, a drain, a scale down): the
            // slot is refilled now.
            work.add(slot, node);
            continue;
        };
        match restart.decision {
            Decision::Now => {
                work.shut_down(restart.task);
                work.add(slot, node);
            }
            Decision::At(_) => {
                waiting.insert(restart.task);
            }
            Decision::Never => {
                if restart.ended == TaskState::Shutdown {
                    waiting.insert(restart.task);
                } else {
                    work.shut_down(restart.task);
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

/// Stops the live tasks of slots for which `in_range` is false and the
/// extra live tasks of a slot. A slot with two live tasks keeps the one
/// running the service's current task spec (the newest spec wins a
/// start-first update), the oldest if several do; a task on an older spec
/// is kept beside a current one that is not running yet, and stopped once
/// it runs (start-first).
pub fn stop_extras(work: &mut Work<'_>, in_range: impl Fn(SlotKey) -> bool) {
    let current = &work.service.spec.task;
    let mut by_key: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for task in work.tasks.iter().filter(|t| t.is_live()) {
        by_key.entry(work.key(task)).or_default().push(task);
    }
    let mut stop = Vec::new();
    for (key, mut tasks) in by_key {
        if !in_range(key) {
            stop.extend(tasks.iter().map(|t| t.id));
            continue;
        }
        tasks.sort_by_key(|t| (t.created_at_ms, t.id));
        let (new, old): (Vec<&Task>, Vec<&Task>) =
            tasks.into_iter().partition(|t| *t.spec == *current);
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
