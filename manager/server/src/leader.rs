//! The leader's loops, as a thin shell over [`mesh_core::reconcile`]: while this
//! manager leads, it plans what changed when the replicated state changes
//! ([`reconcile::plan_changed`]: the services the commands since its last plan
//! touched), and every service when time-based work it was told of comes due (a
//! restart delay, an update's delay or monitor window), when it becomes leader
//! and, as a safety net, at least every [`SAFETY_NET`]; it commits the plan's
//! commands in order. Each plan's time is measured
//! (`mesh_manager_leader_plan_duration_seconds`, by what triggered it).

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use mesh_api::time::now_ms;

use crate::grpc::Manager;
use crate::metrics::PlanTrigger;
use mesh_api::node::format_id;
use mesh_core::reconcile;
use mesh_core::state::Command;

/// How often the loop looks at leadership and its clock without a state change.
/// A manager that becomes leader plans within this; nothing is planned on this
/// tick alone.
pub const TICK: Duration = Duration::from_millis(200);

/// The longest the leader goes without a plan (a full pass over the state),
/// whatever happens.
pub const SAFETY_NET: Duration = Duration::from_secs(2);

/// Runs the orchestrators, scheduler, restart supervisor and updater while
/// this manager is the leader; idles while it follows. A commit that fails
/// is logged and the rest of the plan dropped: the next wake-up plans again
/// from the state as it is then. Returns when the manager stops.
pub async fn run_leader_loops(manager: Manager) {
    let mut changes = manager.state_changes();
    let mut changes_open = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Whether the state changed since the last plan (or leadership began).
    let mut changed = true;
    let mut leading = false;
    // When time-based work comes due (the leader's clock, ms).
    let mut deadline: Option<u64> = None;
    // The state version the last plan looked at (`None`: plan everything next).
    let mut planned_at: Option<u64> = None;
    let mut last_plan = Instant::now();
    loop {
        let sleep = deadline.map_or(Duration::MAX, |at| {
            Duration::from_millis(at.saturating_sub(now_ms()))
        });
        tokio::select! {
            () = manager.stopped() => return,
            result = changes.changed(), if changes_open => {
                changes_open = result.is_ok();
                changed = true;
            }
            () = tokio::time::sleep(sleep), if deadline.is_some() => {}
            _ = tick.tick() => {}
        }
        if !manager.raft().is_leader() || !caught_up(&manager) {
            leading = false;
            continue;
        }
        if !leading {
            leading = true;
            changed = true;
            planned_at = None;
        }
        let now = now_ms();
        let trigger = if changed {
            PlanTrigger::Change
        } else if deadline.is_some_and(|at| at <= now) {
            PlanTrigger::Deadline
        } else if last_plan.elapsed() >= SAFETY_NET {
            PlanTrigger::SafetyNet
        } else {
            continue;
        };
        changed = false;
        let started = Instant::now();
        last_plan = started;
        let (plan, everything) = {
            let state = manager.read_unchecked();
            if state.ca.is_none() {
                continue;
            }
            let since = planned_at.replace(state.version);
            match since {
                Some(since) if trigger == PlanTrigger::Change => {
                    (reconcile::plan_changed(&state, now, since), false)
                }
                _ => (reconcile::plan_with_deadline(&state, now), true),
            }
        };
        manager.metrics().observe_plan(trigger, started.elapsed());
        if trigger == PlanTrigger::SafetyNet && !plan.commands.is_empty() {
            // Work that no event announced: a rule of time the plan did not
            // report, or a change missed. The safety net caught it.
            tracing::warn!(
                commands = plan.commands.len(),
                "the periodic pass found work no event announced"
            );
        }
        // A plan of what changed knows only its services' deadlines.
        deadline = match (everything, deadline, plan.deadline) {
            (false, Some(held), Some(new)) => Some(held.min(new)),
            (false, held, new) => held.or(new),
            (true, _, new) => new,
        };
        for command in plan.commands {
            log(&command);
            if let Err(status) = manager.commit(command).await {
                tracing::warn!(error = %status.message(), "committing the leader's plan failed; planning again");
                changed = true;
                // What was not committed is not in the journal: plan everything.
                planned_at = None;
                break;
            }
        }
    }
}

/// Whether the local state machine applied everything known committed: a
/// new leader plans only on a state that includes its predecessor's work.
fn caught_up(manager: &Manager) -> bool {
    let applied = manager
        .raft()
        .metrics()
        .last_applied
        .map_or(0, |log_id| log_id.index);
    applied >= manager.raft().committed_index()
}

fn log(command: &Command) {
    match command {
        Command::ChangeTasks {
            create,
            update,
            delete,
            ..
        } => tracing::debug!(
            create = create.len(),
            update = update.len(),
            delete = delete.len(),
            "changing tasks"
        ),
        Command::SetUpdateStatus {
            id,
            status: Some(status),
            ..
        } => {
            tracing::info!(service = %format_id(*id), state = %status.state, message = %status.message, "update status")
        }
        Command::UpdateService { id, .. } => {
            tracing::info!(service = %format_id(*id), "rolling back after failures");
        }
        _ => {}
    }
}
