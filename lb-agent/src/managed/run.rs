//! The managed agent: acts on the leader's assignments that arrive over the
//! session (see [`crate::managed::join`]): programs the dataplane from them
//! ([`crate::managed::dataplane_config`]), runs the node's tasks through the
//! runtimes ([`crate::managed::supervisor`]), reports their states, and
//! answers log requests.
//!
//! **Restarts.** The agent's end (a stop, a crash, an upgrade) leaves the
//! tasks running; the next run adopts them ([`Runtimes::adopt`]) before it
//! acts on an assignment, so that the first assignment finds them running.
//! Only a node that leaves stops them: when the cluster removed it
//! ([`SessionError::Removed`]) the agent stops its tasks before it exits.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mesh_api::assignment::Assignment;
use mesh_api::node::format_id;
use mesh_api::task::TaskId;
use mesh_client::session::{SessionError, SessionEvent, Uplink};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::agent::Agent;
use crate::agent::AgentError;
use crate::config::Config;
use crate::dns::Dns;
use crate::managed::join::{Session, log_event};
use crate::managed::logs::{Follows, answer_logs};
use crate::managed::manager_process::ManagerProcess;
use crate::managed::supervisor::{self, Action, Supervisor};
use crate::metrics::{FilesReceived, ManagedView, SessionState};
use crate::runtime::Runtimes;
use crate::runtime::task::Started;

/// Why the managed agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The cluster removed this node, or its identity is unusable.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session task panicked or was cancelled.
    #[error("the session task: {0}")]
    SessionTask(#[from] tokio::task::JoinError),
    /// The runtimes' exit channel was taken already.
    #[error("the runtimes' exit channel was already taken")]
    Exits,
}

/// The managed agent's settings.
#[derive(Debug)]
pub struct Managed {
    /// `[node]`, `[dataplane]`, `[metrics]` and `[dns]`; no services, endpoints or
    /// peers.
    pub base: Config,
    /// The MTU of the tasks' interfaces (underlay MTU - 50).
    pub task_mtu: u32,
    /// The task runtimes.
    pub runtimes: Runtimes,
    /// The node's manager, run when the node is promoted.
    pub manager: ManagerProcess,
    /// The tasks' resolver, answering from each assignment's names.
    pub dns: Dns,
}

/// How long a stopping task's processes get between SIGTERM and SIGKILL
/// (its flows had `stop_grace` to end before).
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often the supervisor looks at health checks and draining flows.
const TICK: Duration = Duration::from_millis(200);

/// What the shell's background work reports back.
enum Done {
    Started(TaskId, Result<Started, String>),
    Stopped(TaskId),
    Checked(TaskId, bool),
    Flows(BTreeMap<TaskId, bool>),
}

/// Runs the managed agent until `stop` turns true: the first assignment
/// starts the dataplane, every assignment reprograms it and drives the
/// supervisor, and every change is reported up the session.
///
/// # Errors
/// [`ManagedError`] when the session ends for good. A dataplane that cannot
/// be programmed is logged and retried with the next change (the leader
/// sees no acknowledgement meanwhile).
pub async fn run_managed(
    mut session: Session,
    managed: Managed,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ManagedError> {
    let Managed {
        base,
        task_mtu,
        runtimes,
        manager,
        dns,
    } = managed;
    let result = drive(
        &mut session,
        base,
        task_mtu,
        runtimes,
        (&manager, &dns),
        &mut stop,
    )
    .await;
    manager.stop().await;
    dns.stop().await;
    result
}

/// [`run_managed`]'s loop.
async fn drive(
    session: &mut Session,
    base: Config,
    task_mtu: u32,
    runtimes: Runtimes,
    (manager, dns): (&ManagerProcess, &Dns),
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ManagedError> {
    let mut supervisor = Supervisor::new(task_mtu);
    // Before any assignment: the first one must find the tasks of the
    // previous run running, not restart them.
    match runtimes.adopt().await {
        Ok(adopted) => {
            let now = Instant::now();
            for (id, started) in adopted.running {
                supervisor.adopted(id, started, now);
            }
            for id in adopted.gone {
                supervisor.ended_while_away(id);
            }
        }
        Err(e) => warn!(error = %e, "taking over the tasks of the previous run failed"),
    }
    let mut exits = runtimes.take_exits().ok_or(ManagedError::Exits)?;
    let mut agent: Option<Agent> = None;
    let mut current: Option<std::sync::Arc<Assignment>> = None;
    let mut applied_config: Option<Config> = None;
    let mut applied_version: Option<u64> = None;
    // The tasks whose logs stay (the last assignment's, and its history).
    let mut keep_logs: Option<std::collections::BTreeSet<TaskId>> = None;
    // Whether the dataplane could be programmed the last time it was tried
    // (`Some(None)`: yes), as reported to the leader.
    let mut dataplane_status: Option<Option<String>> = None;
    // The services `fit` left out of the last configuration, and why.
    let mut unrouted: Vec<String> = Vec::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut neigh_tick = tokio::time::interval(Duration::from_secs(10));
    let mut probing = false;
    let mut follows = Follows::default();
    let mut session_state = SessionState::Connecting;
    let mut files_received = FilesReceived::default();
    info!("lb-agent ready (managed: waiting for the leader's assignment)");
    loop {
        let now = Instant::now();
        supervisor.set_clock_ms(mesh_api::time::now_ms());
        let mut reprogram = false;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            event = session.events.recv() => {
                let Some(event) = event else {
                    let result = (&mut session.task).await?;
                    if let Err(SessionError::Removed(why)) = &result {
                        leave(&runtimes, why).await;
                    }
                    result?;
                    return Ok(());
                };
                log_event(&event);
                manager.observe(&event);
                match event {
                    SessionEvent::Established { .. } => {
                        session_state = SessionState::Established;
                        // Follows still running came with an earlier session
                        // (one redirected away says no `Lost`).
                        follows.cancel_all("new session");
                        let statuses = supervisor.statuses();
                        if !statuses.is_empty() {
                            let _ = session.uplink.send(Uplink::Reports(statuses));
                        }
                        if let Some(version) = applied_version {
                            let _ = session.uplink.send(Uplink::Applied(version));
                        }
                        if let Some(status) = &dataplane_status {
                            let _ = session.uplink.send(Uplink::Dataplane(status.clone()));
                        }
                    }
                    SessionEvent::Assignment(assignment) => {
                        // The logs of tasks the managers forgot go too (now, and on
                        // the periodic tick: a task still stopping keeps its log
                        // until it is gone).
                        keep_logs = Some(
                            assignment
                                .tasks
                                .iter()
                                .map(|t| t.id)
                                .chain(assignment.history.iter().copied())
                                .collect(),
                        );
                        prune_logs(&runtimes, keep_logs.clone());
                        supervisor.set_networks(&assignment.networks);
                        let (secrets, configs) =
                            supervisor.set_files(&assignment.secrets, &assignment.configs);
                        files_received.secrets += secrets;
                        files_received.configs += configs;
                        supervisor.set_node(assignment.node, &assignment.hostname);
                        supervisor.assign(&assignment.tasks, now);
                        // The names follow at once (the dataplane may lag a retry).
                        dns.set_view(crate::dns::View::new(&assignment));
                        current = Some(assignment);
                        reprogram = true;
                    }
                    SessionEvent::LogsRequest { request_id, task_ids, tail, follow: false } => {
                        tokio::spawn(answer_logs(
                            runtimes.clone(),
                            session.uplink.clone(),
                            request_id,
                            task_ids,
                            tail,
                        ));
                    }
                    SessionEvent::LogsRequest { request_id, task_ids, tail, follow: true } => {
                        follows.start(&runtimes, &session.uplink, request_id, task_ids, tail);
                    }
                    SessionEvent::LogsCancel { request_id } => follows.cancel(request_id),
                    // The requests came with the lost session; a new leader knows none.
                    SessionEvent::Lost(_) => {
                        session_state = SessionState::Lost;
                        follows.cancel_all("session lost");
                    }
                    SessionEvent::RoleChanged(_) => {}
                }
            }
            Some((id, exit)) = exits.recv() => supervisor.exited(id, exit),
            Some(event) = done.recv() => match event {
                Done::Started(id, result) => {
                    if let Err(e) = &result {
                        warn!(task = %format_id(id), error = %e, "a task could not start");
                    }
                    // Exits already delivered go first (`select!` picks among
                    // ready branches at random): a program that ended before
                    // its start was reported is never reported running.
                    while let Ok((id, exit)) = exits.try_recv() {
                        supervisor.exited(id, exit);
                    }
                    supervisor.started(id, result, now);
                }
                Done::Stopped(id) => supervisor.stopped(id),
                Done::Checked(id, healthy) => supervisor.checked(id, healthy, now),
                Done::Flows(live) => {
                    probing = false;
                    for (id, live) in live {
                        supervisor.flows(id, live, now);
                    }
                }
            },
            _ = tick.tick() => {
                supervisor.tick(now);
                let draining = supervisor.draining();
                if !draining.is_empty() && !probing {
                    if let Some(agent) = &agent {
                        probing = true;
                        let table = agent.flow_table();
                        let tx = done_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.send(Done::Flows(live_flows(&table, &draining)));
                        });
                    } else {
                        let idle = draining.keys().map(|id| (*id, false)).collect();
                        let _ = done_tx.send(Done::Flows(idle));
                    }
                }
            }
            _ = neigh_tick.tick() => {
                if let Some(agent) = &agent {
                    agent.ensure_neighbours().await;
                }
                // Task logs past their bound are rotated (a copy of up to 16 MiB each:
                // off the loop), and those of forgotten tasks removed.
                let rotator = runtimes.clone();
                tokio::task::spawn_blocking(move || rotator.rotate_logs());
                prune_logs(&runtimes, keep_logs.clone());
            }
        }
        let (actions, reports) = supervisor.take();
        for action in actions {
            execute(&runtimes, &done_tx, action);
        }
        if let Some(agent) = &agent {
            let states = supervisor.statuses().into_iter().map(|(_, s)| s.state);
            agent.metrics().set_managed(
                ManagedView::new(session_state, states).with_files_received(files_received),
            );
        }
        // Interfaces came or went: the dataplane follows.
        let Some(assignment) = &current else {
            if !reports.is_empty() {
                let _ = session.uplink.send(Uplink::Reports(reports));
            }
            continue;
        };
        let mut config = crate::managed::dataplane_config::config(
            &base,
            assignment,
            &supervisor.running_ifaces(),
        );
        let left_out = crate::managed::dataplane_config::fit(&mut config);
        if left_out != unrouted {
            for reason in &left_out {
                error!(%reason, "a service is not routed: the dataplane cannot hold it");
            }
            unrouted = left_out;
        }
        if applied_config.as_ref() != Some(&config) || reprogram {
            let started = agent.is_none();
            let status = match program(&mut agent, &config).await {
                Ok(()) => {
                    if started && let Some(agent) = &agent {
                        agent.metrics().set_dns(dns.counters());
                    }
                    applied_config = Some(config);
                    if applied_version != Some(assignment.version) {
                        applied_version = Some(assignment.version);
                        let _ = session.uplink.send(Uplink::Applied(assignment.version));
                    }
                    None
                }
                Err(e) => {
                    error!(
                        version = assignment.version,
                        "programming the dataplane failed: {e}"
                    );
                    Some(format!("programming the dataplane failed: {e}"))
                }
            };
            // The leader places no new task on a node whose dataplane fails.
            if dataplane_status.as_ref() != Some(&status) {
                let _ = session.uplink.send(Uplink::Dataplane(status.clone()));
                dataplane_status = Some(status);
            }
        }
        // Reported after the dataplane follows: a task is `running` (and
        // becomes a backend) once its endpoint is programmed here.
        if !reports.is_empty() {
            let _ = session.uplink.send(Uplink::Reports(reports));
        }
    }
}

/// The cluster removed this node: its tasks (replaced elsewhere by now) are
/// stopped, as `lb-agent leave` would.
async fn leave(runtimes: &Runtimes, why: &str) {
    warn!(
        reason = why,
        "this node was removed from the cluster: stopping its tasks"
    );
    match runtimes.stop_all(KILL_GRACE).await {
        Ok(stopped) => info!(tasks = stopped.len(), "stopped the node's tasks"),
        Err(e) => error!(error = %e, "stopping the node's tasks"),
    }
}

/// Removes, off the loop, the logs of the tasks neither running here nor in `keep`
/// (the last assignment's tasks and history); nothing before a first assignment.
fn prune_logs(runtimes: &Runtimes, keep: Option<std::collections::BTreeSet<TaskId>>) {
    let Some(keep) = keep else {
        return;
    };
    let runtimes = runtimes.clone();
    tokio::task::spawn_blocking(move || {
        let pruned = runtimes.prune_logs(&keep);
        if pruned > 0 {
            info!(
                tasks = pruned,
                "removed the logs of tasks the managers forgot"
            );
        }
    });
}

/// Applies `config`, starting the dataplane on the first call.
async fn program(agent: &mut Option<Agent>, config: &Config) -> Result<(), AgentError> {
    match agent {
        Some(agent) => {
            let done = agent.apply(config.clone()).await?;
            if done.ops > 0 || done.tc_attached > 0 || done.tc_detached > 0 {
                info!(
                    ops = done.ops,
                    tc_attached = done.tc_attached,
                    tc_detached = done.tc_detached,
                    "dataplane reprogrammed"
                );
            }
        }
        None => {
            let mut started = Agent::start_config(config.clone()).await?;
            started.serve().await?;
            info!(
                underlay = %config.node.underlay,
                metrics = %config.metrics.listen,
                "dataplane started from the first assignment"
            );
            *agent = Some(started);
        }
    }
    Ok(())
}

fn execute(runtimes: &Runtimes, done: &mpsc::UnboundedSender<Done>, action: Action) {
    let (runtimes, done) = (runtimes.clone(), done.clone());
    match action {
        Action::Start(config) => {
            info!(task = %format_id(config.id), name = %config.name, "starting a task");
            tokio::spawn(async move {
                let result = runtimes.start(&config).await.map_err(|e| e.to_string());
                let _ = done.send(Done::Started(config.id, result));
            });
        }
        Action::Stop(id) => {
            info!(task = %format_id(id), "stopping a task");
            tokio::spawn(async move {
                if let Err(e) = runtimes.stop(id, KILL_GRACE).await {
                    warn!(task = %format_id(id), error = %e, "stopping a task");
                }
                let _ = done.send(Done::Stopped(id));
            });
        }
        Action::Check { id, cmd, timeout } => {
            tokio::spawn(async move {
                let healthy = runtimes
                    .health_check(id, &cmd, timeout)
                    .await
                    .unwrap_or(false);
                let _ = done.send(Done::Checked(id, healthy));
            });
        }
    }
}

/// Whether each draining task still has live flows in the flow table.
fn live_flows(
    table: &std::sync::Mutex<Option<crate::dataplane::loader::FlowTable>>,
    draining: &BTreeMap<TaskId, Ipv4Addr>,
) -> BTreeMap<TaskId, bool> {
    let now = crate::dataplane::flows::monotonic_now_ns().unwrap_or(0);
    let mut busy = std::collections::BTreeSet::new();
    if let Some(table) = table.lock().expect("flow table lock poisoned").as_ref() {
        table.for_each(|key, flow| {
            if let Some(addr) = supervisor::live_flow_task(key, flow, now) {
                busy.insert(addr);
            }
        });
    }
    draining
        .iter()
        .map(|(id, addr)| (*id, busy.contains(addr)))
        .collect()
}
