//! The leader's loops, as a thin shell over [`mesh_core::reconcile::plan`]:
//! while this manager leads, it plans on every change of the replicated
//! state and on a short tick (restart delays, update delays and monitor
//! windows are time-based), and commits the plan's commands in order.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

use mesh_api::time::now_ms;

use crate::grpc::Manager;
use mesh_api::node::format_id;
use mesh_core::reconcile;
use mesh_core::state::Command;

/// How often the loops wake up without a state change.
pub const TICK: Duration = Duration::from_millis(200);

/// Runs the orchestrators, scheduler, restart supervisor and updater while
/// this manager is the leader; idles while it follows. A commit that fails
/// is logged and the rest of the plan dropped: the next wake-up plans again
/// from the state as it is then. Returns when the manager stops.
pub async fn run_leader_loops(manager: Manager) {
    let mut changes = manager.state_changes();
    let mut changes_open = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = manager.stopped() => return,
            changed = changes.changed(), if changes_open => {
                changes_open = changed.is_ok();
            }
            _ = tick.tick() => {}
        }
        if !manager.raft().is_leader() || !caught_up(&manager) {
            continue;
        }
        let commands = {
            let state = manager.read_unchecked();
            if state.ca.is_none() {
                continue;
            }
            reconcile::plan(&state, now_ms())
        };
        for command in commands {
            log(&command);
            if let Err(status) = manager.commit(command).await {
                tracing::warn!(error = %status.message(), "committing the leader's plan failed; planning again");
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
