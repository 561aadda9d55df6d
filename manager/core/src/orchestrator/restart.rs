//! The restart supervisor: whether a task that ended by itself is
//! replaced, and when, per its service's [`RestartPolicy`] (docker's
//! `--restart-condition`, `--restart-delay`, `--restart-max-attempts`,
//! `--restart-window`).
//!
//! Its pass ([`supervise`]) runs after the updater and before the
//! orchestrators: for every slot of a service that has neither a live task
//! nor a task to create, and whose newest task ended by itself, it
//! [`decide`]s now, later or never. The orchestrators act on the verdicts
//! of the slots they want filled. A decision depends only on the records:
//! the task that ended (its state, exit code and the time it ended) and
//! the history of its slot, so every leader computes the same answer and a
//! new leader picks up a pending restart where the old one left it.

use std::collections::BTreeMap;

use crate::orchestrator::work::{SlotKey, Work};
use mesh_api::spec::{RestartCondition, RestartPolicy};
use mesh_api::task::{DesiredState, Task, TaskId, TaskState};

/// What becomes of an ended task's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Replace it now.
    Now,
    /// Replace it at this time (ms since the epoch): the restart delay runs.
    At(u64),
    /// Leave the slot empty: the condition says no, or the attempts are
    /// used up (as in Swarm, the slot stays empty until the service is
    /// updated or scaled).
    Never,
}

/// Whether `task` ended without the leader asking: it is terminal, and
/// not a stop the leader asked for (`Shutdown` with a desired state other
/// than running).
#[must_use]
pub fn ended_by_itself(task: &Task) -> bool {
    task.status.state.is_terminal()
        && !(task.status.state == TaskState::Shutdown && task.desired != DesiredState::Running)
}

/// Whether an ended task failed: a non-zero exit code, or it failed, was
/// rejected, or its node was lost.
#[must_use]
pub fn failed(task: &Task) -> bool {
    matches!(
        task.status.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Orphaned
    ) || task.status.exit_code.is_some_and(|code| code != 0)
}

/// Decides whether the slot of `ended` (the newest task of its slot, ended
/// by itself) gets a replacement. `history` is every task of the slot
/// (`ended` included); the restarts already made are the tasks of the slot
/// that ended by themselves within `window_ms` before `ended` did (or
/// since the service was created, for a window of 0). The window is
/// anchored on the end of `ended`, not on `now_ms`, so a decision never
/// changes as time passes except for the delay.
#[must_use]
pub fn decide(policy: &RestartPolicy, ended: &Task, history: &[&Task], now_ms: u64) -> Decision {
    let wanted = match policy.condition {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => failed(ended),
        RestartCondition::None => false,
    };
    if !wanted {
        return Decision::Never;
    }
    if policy.max_attempts > 0 {
        let end = ended.status.at_ms;
        let ends = history
            .iter()
            .filter(|t| ended_by_itself(t) && t.status.at_ms <= end)
            .filter(|t| {
                policy.window_ms == 0 || t.status.at_ms.saturating_add(policy.window_ms) > end
            })
            .count();
        // The first end is not a restart: `ends - 1` restarts were made.
        if ends > policy.max_attempts as usize {
            return Decision::Never;
        }
    }
    let at = ended.status.at_ms.saturating_add(policy.delay_ms);
    if at <= now_ms {
        Decision::Now
    } else {
        Decision::At(at)
    }
}

/// The supervisor's verdict on an empty slot whose newest task ended by
/// itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    /// The slot's newest task, the one that ended.
    pub task: TaskId,
    /// The state it ended in.
    pub ended: TaskState,
    /// Whether, and when, the slot gets a replacement.
    pub decision: Decision,
}

/// The supervisor's verdicts on one service's slots.
pub type Restarts = BTreeMap<SlotKey, Restart>;

/// The restart supervisor's pass over one service: a verdict for every
/// slot with neither a live task nor a task to create whose newest task
/// (by creation) ended by itself. Slots the service no longer wants get
/// one too; the orchestrators ignore those.
#[must_use]
pub fn supervise(work: &Work<'_>, now_ms: u64) -> Restarts {
    let policy = &work.service.spec.task.restart;
    let occupied = work.occupied();
    // One pass over the tasks: a service may have a thousand slots.
    let mut by_key: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for task in &work.tasks {
        let key = work.key(task);
        if !occupied.contains(&key) {
            by_key.entry(key).or_default().push(task);
        }
    }
    let mut restarts = Restarts::new();
    for (key, history) in by_key {
        let Some(latest) = history
            .iter()
            .copied()
            .max_by_key(|t| (t.created_at_ms, t.id))
        else {
            continue;
        };
        if ended_by_itself(latest) {
            let restart = Restart {
                task: latest.id,
                ended: latest.status.state,
                decision: decide(policy, latest, &history, now_ms),
            };
            restarts.insert(key, restart);
        }
    }
    restarts
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskStatus;

    fn task(id: u64, state: TaskState, exit_code: Option<i32>, at_ms: u64) -> Task {
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "x", vec![]).task;
        Task {
            id,
            service: 1,
            slot: 1,
            node: Some(1),
            spec: spec.into(),
            spec_version: 1,
            desired: DesiredState::Running,
            desired_version: 1,
            status: TaskStatus {
                exit_code,
                ..TaskStatus::new(state, "", at_ms)
            },
            addr: None,
            networks: Vec::new(),
            created_at_ms: at_ms.saturating_sub(10),
        }
    }

    fn policy(condition: RestartCondition, max_attempts: u32, window_ms: u64) -> RestartPolicy {
        RestartPolicy {
            condition,
            delay_ms: 100,
            max_attempts,
            window_ms,
        }
    }

    #[test]
    fn the_condition_decides_which_ends_restart() {
        let ok = task(1, TaskState::Complete, Some(0), 1_000);
        let crashed = task(2, TaskState::Failed, Some(1), 1_000);
        let lost = task(3, TaskState::Orphaned, None, 1_000);
        let any = policy(RestartCondition::Any, 0, 0);
        let on_failure = policy(RestartCondition::OnFailure, 0, 0);
        let none = policy(RestartCondition::None, 0, 0);
        assert_eq!(decide(&any, &ok, &[&ok], 2_000), Decision::Now);
        assert_eq!(decide(&on_failure, &ok, &[&ok], 2_000), Decision::Never);
        assert_eq!(
            decide(&on_failure, &crashed, &[&crashed], 2_000),
            Decision::Now
        );
        assert_eq!(decide(&on_failure, &lost, &[&lost], 2_000), Decision::Now);
        assert_eq!(decide(&none, &crashed, &[&crashed], 2_000), Decision::Never);
    }

    #[test]
    fn the_delay_runs_from_the_end() {
        let crashed = task(2, TaskState::Failed, Some(1), 1_000);
        let any = policy(RestartCondition::Any, 0, 0);
        assert_eq!(
            decide(&any, &crashed, &[&crashed], 1_050),
            Decision::At(1_100)
        );
        assert_eq!(decide(&any, &crashed, &[&crashed], 1_100), Decision::Now);
    }

    #[test]
    fn attempts_are_counted_in_the_window_before_the_last_end() {
        let first = task(1, TaskState::Failed, Some(1), 1_000);
        let second = task(2, TaskState::Failed, Some(1), 2_000);
        let third = task(3, TaskState::Failed, Some(1), 3_000);
        let mut stopped = task(4, TaskState::Shutdown, None, 2_500);
        stopped.desired = DesiredState::Shutdown;
        let history = [&first, &second, &stopped, &third];
        // Two restarts were made (for the first and second end).
        let two = policy(RestartCondition::Any, 2, 0);
        assert_eq!(decide(&two, &third, &history, 9_000), Decision::Never);
        let three = policy(RestartCondition::Any, 3, 0);
        assert_eq!(decide(&three, &third, &history, 9_000), Decision::Now);
        // In a 1.5 s window only the second and third ends count.
        let windowed = policy(RestartCondition::Any, 2, 1_500);
        assert_eq!(decide(&windowed, &third, &history, 9_000), Decision::Now);
        // A stop the leader asked for is not an end.
        assert!(!ended_by_itself(&stopped));
        // A window as long as time itself (a spec the managers stored before
        // specs were range-checked) counts every end, and overflows nothing.
        let forever = policy(RestartCondition::Any, 2, u64::MAX);
        assert_eq!(decide(&forever, &third, &history, 9_000), Decision::Never);
    }

    #[test]
    fn the_pass_judges_the_empty_slots_whose_last_task_ended_by_itself() {
        use crate::orchestrator::testing::{service, task};
        use crate::orchestrator::work::{SlotKey, Work};
        use std::collections::BTreeSet;

        let web = service(4);
        let mut stopped = task(&web, 30, 3, "v2", TaskState::Shutdown);
        stopped.desired = DesiredState::Shutdown;
        let mut work = Work {
            service: &web,
            tasks: vec![
                // Slot 1 has a live task beside its failed one.
                task(&web, 10, 1, "v2", TaskState::Failed),
                task(&web, 11, 1, "v2", TaskState::Running),
                // Slot 2's last task failed.
                task(&web, 20, 2, "v2", TaskState::Complete),
                task(&web, 21, 2, "v2", TaskState::Failed),
                // Slot 3's was stopped by the leader.
                stopped,
                // Slot 4's failed, but a new task is planned.
                task(&web, 40, 4, "v2", TaskState::Failed),
            ],
            create: Vec::new(),
            delete: BTreeSet::new(),
        };
        work.add(4, None);
        let restarts = supervise(&work, 1_000_000);
        assert_eq!(
            restarts,
            Restarts::from([(
                SlotKey::Slot(2),
                Restart {
                    task: 21,
                    ended: TaskState::Failed,
                    decision: Decision::Now,
                }
            )])
        );
    }
}
