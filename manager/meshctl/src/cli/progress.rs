//! When a `service create`, `update`, `scale` or `rollback` is done, as
//! docker's progress output decides it: the wanted number of tasks running
//! the service's current task spec, no others live or still stopping, and for a
//! change of the task spec, the rolling update completed. A pure function of
//! the service and its tasks; `meshctl` polls and prints.
//!
//! Waiting is bounded: a slot (or, for a global service, a node) whose task
//! keeps failing is shown with its error, as docker shows it (`2/6: task:
//! non-zero exit (3)`), and once every slot that does not run has failed
//! [`GIVE_UP_FAILURES`] times the wait gives up ([`Phase::Failed`]); the
//! service stays as it is. `meshctl` also gives up when nothing progresses
//! for a while (a task that stays pending).

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::service::{Service, UpdateState};

use mesh_api::task::{DesiredState, Task, TaskState};

/// Failed runs of the current spec in every slot that does not run, after which
/// waiting for convergence gives up.
pub const GIVE_UP_FAILURES: usize = 3;

/// What the caller is waiting for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// The change replaced the task spec: a rolling update (or rollback)
    /// runs, and must complete.
    pub task_spec_changed: bool,
    /// The change is a rollback.
    pub rollback: bool,
}

/// Where the service stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Tasks are still being started, stopped or replaced.
    Converging,
    /// Done (the caller still checks that it stays so).
    Converged,
    /// The update or rollback stopped: docker's message, e.g.
    /// `service update paused: ...`. The caller gives up with it.
    Failed(String),
}

/// One look at the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Tasks running the current task spec (one per slot or node).
    pub done: u32,
    /// Tasks wanted.
    pub wanted: u32,
    /// Converged or not.
    pub phase: Phase,
    /// Why tasks wait, if some do (`no suitable node (...)`), to show.
    pub note: Option<String>,
    /// A line per slot (or node) that does not run and whose runs of the
    /// current spec failed, with the newest failure: `2/6: task: non-zero exit (3)`.
    pub failures: Vec<String>,
}

/// Where a task runs for progress: its slot, or its node for a global service.
type Place = (u32, Option<u64>);

fn place(t: &Task) -> Place {
    if t.slot > 0 {
        (t.slot, None)
    } else {
        (0, t.node)
    }
}

/// The failure lines, and whether every place that does not run has failed
/// [`GIVE_UP_FAILURES`] times (with at least one such place).
fn failures(
    service: &Service,
    wanted: u32,
    tasks: &[&Task],
    done: &BTreeSet<Place>,
) -> (Vec<String>, bool) {
    let mut by_place: BTreeMap<Place, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| *t.spec == service.spec.task) {
        by_place.entry(place(t)).or_default().push(t);
    }
    let in_range = |p: &Place| service.spec.replicas().is_none_or(|r| p.0 <= r);
    let mut lines = Vec::new();
    let mut failing = 0usize;
    let mut stuck = 0usize;
    for (p, runs) in by_place
        .iter()
        .filter(|(p, _)| in_range(p) && !done.contains(p))
    {
        stuck += 1;
        let failed: Vec<&&Task> = runs
            .iter()
            .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
            .collect();
        // The newest failure, even while a new run starts (with a short restart
        // delay a slot is rarely seen between the two).
        if let Some(t) = failed.iter().max_by_key(|t| (t.created_at_ms, t.id)) {
            let reason = if t.status.error.is_empty() {
                t.status.message.clone()
            } else {
                t.status.error.clone()
            };
            let label = match p {
                (0, Some(node)) => mesh_api::node::format_id(*node),
                (slot, _) => format!("{slot}/{wanted}"),
            };
            lines.push(format!("{label}: {reason}"));
        }
        if failed.len() >= GIVE_UP_FAILURES {
            failing += 1;
        }
    }
    (lines, stuck > 0 && failing == stuck)
}

/// How far `service` (wanting `wanted` tasks) is, given its `tasks`
/// (history included; other services' tasks are ignored).
#[must_use]
pub fn progress(service: &Service, wanted: u32, tasks: &[Task], watch: Watch) -> Progress {
    let tasks: Vec<&Task> = tasks.iter().filter(|t| t.service == service.id).collect();
    let current = |t: &&&Task| *t.spec == service.spec.task;
    // One per slot (replicated) or node (global): a start-first update
    // briefly runs two tasks in a slot.
    let done_places: BTreeSet<(u32, Option<u64>)> = tasks
        .iter()
        .filter(current)
        .filter(|t| t.desired == DesiredState::Running && t.status.state == TaskState::Running)
        .map(|t| place(t))
        .filter(|(slot, _)| service.spec.replicas().is_none_or(|r| *slot <= r))
        .collect();
    let done = u32::try_from(done_places.len()).unwrap_or(u32::MAX);
    let live = tasks.iter().filter(|t| t.is_live()).count();
    // Tasks told to stop that a node may still run.
    let stopping = tasks
        .iter()
        .filter(|t| t.desired != DesiredState::Running)
        .filter(|t| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal())
        .count();
    let note = tasks
        .iter()
        .filter(current)
        .filter(|t| t.is_live() && t.status.state == TaskState::Pending)
        .map(|t| t.status.message.clone())
        .find(|m| !m.is_empty());
    let (failures, give_up) = failures(service, wanted, &tasks, &done_places);

    let mut update_done = !watch.task_spec_changed;
    if watch.task_spec_changed
        && let Some(status) = &service.update_status
    {
        let failed = |what: &str| Phase::Failed(format!("{what}: {}", status.message));
        match status.state {
            UpdateState::Paused if !watch.rollback => {
                return Progress {
                    done,
                    wanted,
                    phase: failed("service update paused"),
                    note,
                    failures,
                };
            }
            UpdateState::RollbackPaused => {
                return Progress {
                    done,
                    wanted,
                    phase: failed("service rollback paused"),
                    note,
                    failures,
                };
            }
            UpdateState::RollbackCompleted if !watch.rollback => {
                return Progress {
                    done,
                    wanted,
                    phase: failed("service rolled back"),
                    note,
                    failures,
                };
            }
            UpdateState::Completed => update_done = !watch.rollback,
            UpdateState::RollbackCompleted => update_done = watch.rollback,
            _ => {}
        }
    }
    let converged = done >= wanted && live == wanted as usize && stopping == 0 && update_done;
    let phase = if converged {
        Phase::Converged
    } else if give_up {
        Phase::Failed(format!(
            "tasks keep failing: every slot that does not run failed {GIVE_UP_FAILURES} times \
             (last: {}); the service stays as it is: see `meshctl service ps {} --no-trunc`",
            failures.first().map_or("", String::as_str),
            service.spec.name
        ))
    } else {
        Phase::Converging
    };
    Progress {
        done,
        wanted,
        phase,
        note,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::service::{ServiceEndpoint, UpdateStatus};
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskStatus;

    fn service(replicas: u32) -> Service {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/sleep", vec![]);
        spec.mode = mesh_api::spec::ServiceMode::Replicated { replicas };
        Service {
            id: 7,
            spec,
            previous_spec: None,
            spec_version: 1,
            endpoint: ServiceEndpoint::default(),
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn task(id: u64, service: &Service, slot: u32, state: TaskState) -> Task {
        Task {
            id,
            service: service.id,
            slot,
            node: Some(1),
            spec: service.spec.task.clone().into(),
            spec_version: service.spec_version,
            desired: DesiredState::Running,
            desired_version: 1,
            status: TaskStatus::new(state, "", 0),
            addr: None,
            networks: Vec::new(),
            created_at_ms: 0,
        }
    }

    fn updated(mut s: Service, state: UpdateState, message: &str) -> Service {
        s.previous_spec = Some(s.spec.clone());
        s.spec.task.image = "/bin/true".into();
        s.spec_version += 1;
        s.update_status = Some(UpdateStatus {
            state,
            started_at_ms: 0,
            completed_at_ms: None,
            message: message.into(),
        });
        s
    }

    #[test]
    fn a_new_service_converges_once_every_slot_runs() {
        let s = service(3);
        let mut tasks = vec![
            task(1, &s, 1, TaskState::Running),
            task(2, &s, 2, TaskState::Starting),
            task(3, &s, 3, TaskState::Pending),
        ];
        tasks[2].status.message = "no suitable node (1 node not available)".into();
        let p = progress(&s, 3, &tasks, Watch::default());
        assert_eq!((p.done, p.wanted, &p.phase), (1, 3, &Phase::Converging));
        assert_eq!(
            p.note.as_deref(),
            Some("no suitable node (1 node not available)")
        );
        for t in &mut tasks {
            t.status.state = TaskState::Running;
        }
        let p = progress(&s, 3, &tasks, Watch::default());
        assert_eq!((p.done, p.phase, p.note), (3, Phase::Converged, None));
    }

    #[test]
    fn scaling_down_waits_for_the_extra_tasks_to_stop() {
        let s = service(1);
        let mut tasks = vec![
            task(1, &s, 1, TaskState::Running),
            task(2, &s, 2, TaskState::Running),
        ];
        tasks[1].desired = DesiredState::Shutdown;
        let p = progress(&s, 1, &tasks, Watch::default());
        assert_eq!((p.done, p.phase.clone()), (1, Phase::Converging));
        tasks[1].status.state = TaskState::Shutdown;
        assert_eq!(
            progress(&s, 1, &tasks, Watch::default()).phase,
            Phase::Converged
        );
        let none = service(0);
        assert_eq!(
            progress(&none, 0, &[], Watch::default()).phase,
            Phase::Converged
        );
    }

    #[test]
    fn an_update_converges_when_new_tasks_run_and_the_update_completed() {
        let old = service(2);
        let watch = Watch {
            task_spec_changed: true,
            rollback: false,
        };
        let s = updated(old.clone(), UpdateState::Updating, "update in progress");
        let mut tasks = vec![
            task(1, &old, 1, TaskState::Running),
            task(2, &s, 2, TaskState::Running),
        ];
        tasks[0].desired = DesiredState::Shutdown;
        tasks.push(task(3, &s, 1, TaskState::Running));
        tasks[0].status.state = TaskState::Shutdown;
        let p = progress(&s, 2, &tasks, watch);
        assert_eq!((p.done, p.phase), (2, Phase::Converging), "still updating");
        let s = updated(old.clone(), UpdateState::Completed, "update completed");
        assert_eq!(progress(&s, 2, &tasks, watch).phase, Phase::Converged);
        // Old tasks do not count, even running.
        let s_tasks = vec![task(1, &old, 1, TaskState::Running)];
        let p = progress(&s, 1, &s_tasks, watch);
        assert_eq!((p.done, p.phase), (0, Phase::Converging));
    }

    #[test]
    fn a_paused_or_rolled_back_update_fails_with_dockers_words() {
        let watch = Watch {
            task_spec_changed: true,
            rollback: false,
        };
        let s = updated(
            service(1),
            UpdateState::Paused,
            "update paused due to failure",
        );
        assert_eq!(
            progress(&s, 1, &[], watch).phase,
            Phase::Failed("service update paused: update paused due to failure".into())
        );
        let s = updated(
            service(1),
            UpdateState::RollbackCompleted,
            "rollback completed",
        );
        assert_eq!(
            progress(&s, 1, &[], watch).phase,
            Phase::Failed("service rolled back: rollback completed".into())
        );
        let rollback = Watch {
            task_spec_changed: true,
            rollback: true,
        };
        let s = updated(service(1), UpdateState::RollbackPaused, "stuck");
        assert_eq!(
            progress(&s, 1, &[], rollback).phase,
            Phase::Failed("service rollback paused: stuck".into())
        );
        let s = updated(service(1), UpdateState::RollbackCompleted, "done");
        let tasks = vec![task(1, &s, 1, TaskState::Running)];
        assert_eq!(progress(&s, 1, &tasks, rollback).phase, Phase::Converged);
    }

    #[test]
    fn a_stale_update_status_does_not_matter_to_a_scale() {
        let s = updated(service(2), UpdateState::Paused, "old news");
        let tasks = vec![
            task(1, &s, 1, TaskState::Running),
            task(2, &s, 2, TaskState::Running),
        ];
        assert_eq!(
            progress(&s, 2, &tasks, Watch::default()).phase,
            Phase::Converged
        );
    }

    #[test]
    fn failing_slots_show_their_error_and_waiting_gives_up_after_three_failures() {
        // Issue 11, fault 6: `service create -- /nonexistent/prog` waited forever at
        // "0 out of 1 tasks" and showed no reason.
        let s = service(2);
        let failed = |id, slot, created| {
            let mut t = task(id, &s, slot, TaskState::Rejected);
            t.created_at_ms = created;
            t.desired = DesiredState::Shutdown;
            t.status.error = format!("starting failed: no such file (run {id})");
            t
        };
        let mut tasks = vec![failed(1, 1, 1), task(2, &s, 2, TaskState::Running)];
        let p = progress(&s, 2, &tasks, Watch::default());
        assert_eq!(p.phase, Phase::Converging);
        assert_eq!(p.failures, ["1/2: starting failed: no such file (run 1)"]);
        tasks.push(failed(3, 1, 3));
        let mut starting = task(4, &s, 1, TaskState::Starting);
        starting.created_at_ms = 4;
        tasks.push(starting);
        let p = progress(&s, 2, &tasks, Watch::default());
        assert_eq!(
            p.failures,
            ["1/2: starting failed: no such file (run 3)"],
            "the last failure stays shown while a new run starts"
        );
        assert_eq!(p.phase, Phase::Converging);
        tasks.pop();
        tasks.push(failed(4, 1, 4));
        let Phase::Failed(message) = progress(&s, 2, &tasks, Watch::default()).phase else {
            panic!("three failures in the only slot that does not run: give up");
        };
        assert!(
            message.contains("failed 3 times (last: 1/2: starting failed: no such file (run 4))"),
            "{message}"
        );
        // A slot still pending (never failed) keeps the wait going.
        let mut pending = task(5, &s, 3, TaskState::Pending);
        pending.spec = s.spec.task.clone().into();
        let s3 = service(3);
        let p = progress(
            &s3,
            3,
            &[tasks.clone(), vec![pending]].concat(),
            Watch::default(),
        );
        assert_eq!(p.phase, Phase::Converging);
    }
}
