//! The rolling updater: how a service whose task spec changed moves its
//! tasks to the new spec (or back, in a rollback), batch by batch, as
//! Swarm's updater does.
//!
//! Its pass runs after the evictions and before the restart supervisor and
//! the orchestrators: [`step`] decides the service's next step from its
//! tasks as the evictions left them, and a batch ([`replace`]) plans the
//! new tasks in the slots of the old ones, so the orchestrators see those
//! slots taken. A new status or a rollback is committed by the reconciler.
//!
//! Driven by [`Service::update_status`]: `Updating` uses the spec's
//! `update` policy, `RollbackStarted` its `rollback` policy. Everything is
//! derived from the records, so a new leader resumes an update where the
//! old one left it:
//! - the update's new tasks are the tasks on the current task spec created
//!   since the update started;
//! - a batch is in flight while one of them is live and not yet running;
//!   the next batch starts once none is, and `delay_ms` has passed since
//!   the last of them changed state;
//! - a new task that ends by itself within `monitor_ms` of its creation is
//!   a failure; too many failures trigger the failure action;
//! - the update completes once every live task runs the current spec and
//!   is running, and the monitor window of the last of them has passed.

use std::collections::BTreeSet;

use crate::orchestrator::restart;
use crate::orchestrator::work::{Work, slot_key};
use mesh_api::node::format_id;
use mesh_api::service::{Service, UpdateState, UpdateStatus};
use mesh_api::spec::{FailureAction, UpdateConfig, UpdateOrder};
use mesh_api::task::{Task, TaskId, TaskState};

/// What the updater wants done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the state changes (no update in progress, or a batch in
    /// flight).
    Wait,
    /// Nothing before this time (ms since the epoch), unless the state changes:
    /// the delay between batches or the monitor window runs.
    WaitUntil(u64),
    /// Replace these live tasks with tasks on the current spec, in this
    /// order (a batch).
    Replace {
        /// The tasks to replace, at most `parallelism` of them.
        tasks: Vec<TaskId>,
        /// Stop-first or start-first.
        order: UpdateOrder,
    },
    /// Record a new update status (paused or completed).
    Status(UpdateStatus),
    /// Roll the service back to its previous spec.
    Rollback,
}

/// The message of an update paused by failures, as docker words it.
#[must_use]
pub fn pause_message(task: TaskId) -> String {
    format!(
        "update paused due to failure or early termination of task {}",
        format_id(task)
    )
}

/// The policy that drives the update in progress, if one is.
#[must_use]
pub fn config(service: &Service) -> Option<&UpdateConfig> {
    let status = service.update_status.as_ref()?;
    match status.state {
        UpdateState::Updating => Some(&service.spec.update),
        UpdateState::RollbackStarted => Some(&service.spec.rollback),
        _ => None,
    }
}

/// The updater's next step for `service`, given its tasks (history
/// included) as this round sees them.
#[must_use]
pub fn step(service: &Service, tasks: &[Task], now_ms: u64) -> Step {
    let (Some(status), Some(config)) = (service.update_status.as_ref(), config(service)) else {
        return Step::Wait;
    };
    let rollback = status.state == UpdateState::RollbackStarted;
    let current = &service.spec.task;
    let new: Vec<&Task> = tasks
        .iter()
        .filter(|t| *t.spec == *current && t.created_at_ms >= status.started_at_ms)
        .collect();

    // Failures first: they may stop the update.
    let failures: Vec<&Task> = new
        .iter()
        .copied()
        .filter(|t| {
            restart::ended_by_itself(t)
                && t.status.at_ms < t.created_at_ms.saturating_add(config.monitor_ms)
        })
        .collect();
    let too_many =
        failures.len() as u64 * 1000 > u64::from(config.max_failure_permille) * new.len() as u64;
    if !failures.is_empty() && too_many && config.failure_action != FailureAction::Continue {
        let last = failures
            .iter()
            .max_by_key(|t| (t.status.at_ms, t.id))
            .map_or(0, |t| t.id);
        let can_roll_back = !rollback
            && config.failure_action == FailureAction::Rollback
            && service
                .previous_spec
                .as_ref()
                .is_some_and(|p| p.task != *current);
        if can_roll_back {
            return Step::Rollback;
        }
        return Step::Status(UpdateStatus {
            state: if rollback {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            },
            started_at_ms: status.started_at_ms,
            completed_at_ms: None,
            message: pause_message(last),
        });
    }

    let live: Vec<&Task> = tasks.iter().filter(|t| t.is_live()).collect();
    // Slots where a live task on the current spec already exists: their
    // old task is being replaced (start-first) or is an extra.
    let covered: BTreeSet<_> = live
        .iter()
        .filter(|t| *t.spec == *current)
        .map(|t| slot_key(service, t))
        .collect();
    let mut outdated: Vec<&Task> = live
        .iter()
        .copied()
        .filter(|t| *t.spec != *current && !covered.contains(&slot_key(service, t)))
        .collect();
    let in_flight = new
        .iter()
        .any(|t| t.is_live() && t.status.state < TaskState::Running);
    if in_flight {
        return Step::Wait;
    }
    if outdated.is_empty() {
        let settled = live
            .iter()
            .all(|t| *t.spec == *current && t.status.state == TaskState::Running);
        let last_start = new
            .iter()
            .filter(|t| t.is_live())
            .map(|t| t.status.at_ms)
            .max()
            .unwrap_or(status.started_at_ms);
        let monitored = last_start.saturating_add(config.monitor_ms);
        if settled && now_ms >= monitored {
            return Step::Status(UpdateStatus {
                state: if rollback {
                    UpdateState::RollbackCompleted
                } else {
                    UpdateState::Completed
                },
                started_at_ms: status.started_at_ms,
                completed_at_ms: Some(now_ms),
                message: if rollback {
                    "rollback completed".into()
                } else {
                    "update completed".into()
                },
            });
        }
        return if settled {
            Step::WaitUntil(monitored)
        } else {
            Step::Wait
        };
    }
    if let Some(last_change) = new.iter().map(|t| t.status.at_ms).max()
        && now_ms < last_change.saturating_add(config.delay_ms)
    {
        return Step::WaitUntil(last_change.saturating_add(config.delay_ms));
    }
    outdated.sort_by_key(|t| (slot_key(service, t), t.created_at_ms, t.id));
    let size = match config.parallelism {
        0 => outdated.len(),
        n => n as usize,
    };
    Step::Replace {
        tasks: outdated.iter().take(size).map(|t| t.id).collect(),
        order: config.order,
    }
}

/// Applies a batch ([`Step::Replace`]) to the work: each task is replaced
/// by a new one in its slot (replicated) or on its node (global), the old
/// task stopped first (stop-first) or left running until the new one runs
/// (start-first: the orchestrators stop it then). Tasks no longer in the
/// work are skipped.
pub fn replace(work: &mut Work<'_>, tasks: &[TaskId], order: UpdateOrder) {
    for &id in tasks {
        let Some(task) = work.tasks.iter().find(|t| t.id == id) else {
            continue;
        };
        let (slot, node) = match work.service.spec.replicas() {
            Some(_) => (task.slot, None),
            None => (0, task.node),
        };
        if order == UpdateOrder::StopFirst {
            work.shut_down(id);
        }
        work.add(slot, node);
    }
}
