//! The task supervisor: runs the tasks the leader assigns this node and
//! reports what becomes of them.
//!
//! [`Supervisor`] is the pure decision core: it takes the assignment's tasks
//! and what happened (a start's result, an exit, a health check, the live
//! flows of a stopping task, the clock) and answers with [`Action`]s for the
//! shell to carry out through the runtimes, and the status reports to send.
//! The rules:
//!
//! - `Run` a task not seen yet: report `preparing`, start it (`starting`),
//!   `running` at once without a health check, else after the first passing
//!   check. A start that fails: `rejected` with the error.
//! - Tasks a previous agent run left running are adopted before the first
//!   assignment ([`Supervisor::adopted`]): they are `Up` with their interface,
//!   so the first assignment neither restarts them nor reports them lost. The
//!   assignment fills in what the agent did not keep (name, health check,
//!   grace period) and its action applies as to any task; one it does not
//!   list is stopped. Nothing is reported for an adopted task the managers
//!   already record as running; one they record as still starting is reported
//!   `running` (after its first passing check, if it has one).
//! - A task the managers recorded as started that this agent does not know
//!   (its process ended while no agent ran, or the node lost its state):
//!   `failed` ("task lost"); `shutdown` if the assignment was stopping it.
//! - Health checks every `interval` from the start; failures in the first
//!   `start_period` do not count; `retries` failures in a row: `failed`
//!   ("unhealthy"), and stopped.
//! - An exit: `complete` (code 0) or `failed` ("task: non-zero exit (N)"),
//!   also when it arrives before the start's result (a program that ends at
//!   once is never reported `running`).
//! - `Drain`: keep running. `Stop` (sticky: desired states never go back):
//!   wait until the dataplane has no live flows to the task's address, at
//!   most `stop_grace`, then stop it and report `shutdown`.
//! - A task that left the assignment: stopped at once (its record ended or
//!   was removed), without a report.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lb_common::{Flow, FlowKey, FlowKind, IPPROTO_TCP};
use mesh_api::assignment::{AssignedTask, TaskAction};
use mesh_api::file_ref::FileKind;
use mesh_api::network::{Network, NetworkId};
use mesh_api::spec::{HealthCheck, MAX_DURATION_MS};
use mesh_api::task::{TaskId, TaskState, TaskStatus};

use crate::runtime::files::HeldFiles;
use crate::runtime::task::{Exit, Started, TaskConfig, TaskNetwork};

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a task; hand the result to [`Supervisor::started`].
    Start(Box<TaskConfig>),
    /// Stop a task (SIGTERM, a short grace, SIGKILL) and release what it
    /// holds; hand the completion to [`Supervisor::stopped`].
    Stop(TaskId),
    /// Run a task's health check; hand the result to [`Supervisor::checked`].
    Check {
        /// The task.
        id: TaskId,
        /// The shell command.
        cmd: String,
        /// A check that takes longer fails.
        timeout: Duration,
    },
}

/// Where a task stands, as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// The start was asked for; no result yet.
    Starting,
    /// It runs.
    Up,
    /// It runs, and must stop once its flows ended (or at `deadline`).
    Draining { deadline: Instant },
    /// The stop was asked for; `then` is reported once it completes.
    Stopping { then: Option<TaskStatus> },
    /// Nothing of it runs (kept until it leaves the assignment).
    Ended,
}

#[derive(Clone, Debug)]
struct Tracked {
    name: String,
    addr: Ipv4Addr,
    health: Option<HealthCheck>,
    stop_grace: Duration,
    phase: Phase,
    /// `Stop` arrived (while starting, it applies once started).
    stop: bool,
    /// The host sides of its veths (`eth0`'s first), once started.
    ifaces: Option<Vec<String>>,
    since: Instant,
    healthy: bool,
    failures: u32,
    next_check: Option<Instant>,
    checking: bool,
    status: Option<TaskStatus>,
    /// An exit that arrived while the start's result had not (a program that
    /// ends at once): applied as soon as the start is known to have succeeded.
    early_exit: Option<Exit>,
    /// Adopted from a previous agent run, not yet seen in an assignment (its
    /// name, address, health check and grace period are not known yet).
    adopted: bool,
}

/// The supervisor's decision core; see the module documentation.
#[derive(Debug)]
pub struct Supervisor {
    mtu: u32,
    tasks: BTreeMap<TaskId, Tracked>,
    /// Milliseconds since the epoch, stamped on reports.
    clock_ms: u64,
    reports: Vec<(TaskId, TaskStatus)>,
    actions: Vec<Action>,
    /// Tasks a previous agent run left whose process had ended by the time this
    /// one started (their leftovers were removed).
    ended_away: BTreeSet<TaskId>,
    /// The user networks' subnets, by network.
    subnets: BTreeMap<NetworkId, (Ipv4Addr, u8)>,
    /// The secrets and configs of the last assignment (in memory only).
    files: HeldFiles,
    /// This node's ID and hostname, for the tasks' template placeholders.
    node: (mesh_api::node::NodeId, String),
}

fn status(clock_ms: u64, state: TaskState, message: &str) -> TaskStatus {
    TaskStatus::new(state, message, clock_ms)
}

/// A spec's duration, at most [`MAX_DURATION_MS`] (what the managers accept),
/// so that `Instant + ms(..)` cannot overflow whatever an assignment says.
fn ms(d: u64) -> Duration {
    Duration::from_millis(d.min(MAX_DURATION_MS))
}

impl Supervisor {
    /// A supervisor that gives tasks interfaces of `mtu`.
    #[must_use]
    pub fn new(mtu: u32) -> Self {
        Self {
            mtu,
            tasks: BTreeMap::new(),
            clock_ms: 0,
            reports: Vec::new(),
            actions: Vec::new(),
            ended_away: BTreeSet::new(),
            subnets: BTreeMap::new(),
            files: HeldFiles::default(),
            node: (0, String::new()),
        }
    }

    /// This node's ID and hostname (from the assignment), which `{{.Node.ID}}` and
    /// `{{.Node.Hostname}}` stand for in the specs of the tasks started next.
    pub fn set_node(&mut self, id: mesh_api::node::NodeId, hostname: &str) {
        self.node = (id, hostname.to_owned());
    }

    /// `task`'s spec with its placeholders filled in ([`mesh_api::template::expand_task`]).
    fn expanded(&self, task: &AssignedTask) -> Result<mesh_api::spec::TaskSpec, String> {
        use mesh_api::node::format_id;
        let hostname = if self.node.1.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            self.node.1.clone()
        };
        let cx = mesh_api::template::Context {
            service_id: format_id(task.service_id),
            service_name: task.service_name.clone(),
            task_id: format_id(task.id),
            task_name: task.name.clone(),
            task_slot: task.slot,
            node_id: format_id(self.node.0),
            node_hostname: hostname,
        };
        mesh_api::template::expand_task(&task.spec, &cx)
    }

    /// A task a previous agent run left running, taken over by the runtimes
    /// (call before the first assignment): it is `Up` with `started`'s
    /// interface, and reports nothing until something happens to it.
    pub fn adopted(&mut self, id: TaskId, started: Started, now: Instant) {
        self.tasks.insert(
            id,
            Tracked {
                name: String::new(),
                addr: Ipv4Addr::UNSPECIFIED,
                health: None,
                stop_grace: Duration::ZERO,
                phase: Phase::Up,
                stop: false,
                ifaces: Some(started.host_ifaces()),
                since: now,
                healthy: true,
                failures: 0,
                next_check: None,
                checking: false,
                status: None,
                early_exit: None,
                adopted: true,
            },
        );
    }

    /// A task a previous agent run left whose process had ended meanwhile (the
    /// runtimes removed what was left of it): if the managers still record it
    /// as started, it is reported `failed` saying so.
    pub fn ended_while_away(&mut self, id: TaskId) {
        self.ended_away.insert(id);
    }

    /// Sets the wall clock stamped on the next reports (ms since the epoch).
    pub fn set_clock_ms(&mut self, now_ms: u64) {
        self.clock_ms = now_ms;
    }

    fn report(&mut self, id: TaskId, status: TaskStatus) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.status = Some(status.clone());
        }
        self.reports.push((id, status));
    }

    /// Takes the actions and reports decided since the last call.
    pub fn take(&mut self) -> (Vec<Action>, Vec<(TaskId, TaskStatus)>) {
        (
            std::mem::take(&mut self.actions),
            std::mem::take(&mut self.reports),
        )
    }

    /// The last status reported for every task known (to re-send after a
    /// reconnect).
    #[must_use]
    pub fn statuses(&self) -> Vec<(TaskId, TaskStatus)> {
        self.tasks
            .iter()
            .filter_map(|(id, t)| Some((*id, t.status.clone()?)))
            .collect()
    }

    /// The host-side interfaces of every task that runs (the dataplane's
    /// local endpoints): `eth0`'s, then those of its networks in order.
    #[must_use]
    pub fn running_ifaces(&self) -> BTreeMap<TaskId, Vec<String>> {
        self.tasks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Up | Phase::Draining { .. }))
            .filter_map(|(id, t)| Some((*id, t.ifaces.clone()?)))
            .collect()
    }

    /// Takes in the user networks of the assignment (before [`Supervisor::assign`]):
    /// the subnets that tasks starting from now on route through their interfaces.
    pub fn set_networks(&mut self, networks: &[Network]) {
        self.subnets = networks
            .iter()
            .map(|n| (n.id, (n.subnet.network(), n.subnet.prefix())))
            .collect();
    }

    /// Takes in the secrets and configs of the assignment (before
    /// [`Supervisor::assign`]), replacing the previous ones: tasks starting from now on
    /// get their files from them. Returns how many secrets and configs are new.
    pub fn set_files(
        &mut self,
        secrets: &[mesh_api::file::FileContent],
        configs: &[mesh_api::file::FileContent],
    ) -> (u64, u64) {
        let files = HeldFiles::new(secrets, configs);
        let new = (
            files.new_since(&self.files, FileKind::Secret),
            files.new_since(&self.files, FileKind::Config),
        );
        self.files = files;
        new
    }

    /// The tasks that wait for their flows to end, with their addresses.
    #[must_use]
    pub fn draining(&self) -> BTreeMap<TaskId, Ipv4Addr> {
        self.tasks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Draining { .. }))
            .map(|(id, t)| (*id, t.addr))
            .collect()
    }

    /// Takes in the assignment's tasks.
    pub fn assign(&mut self, tasks: &[AssignedTask], now: Instant) {
        let assigned: BTreeSet<TaskId> = tasks.iter().map(|t| t.id).collect();
        for task in tasks {
            match self.tasks.get_mut(&task.id) {
                Some(t) if t.adopted => self.resume(task, now),
                Some(t) => {
                    if task.action == TaskAction::Stop {
                        t.stop = true;
                    }
                }
                None => self.take_in(task, now),
            }
            self.advance_stop(task.id, now);
        }
        let gone: Vec<TaskId> = self
            .tasks
            .keys()
            .filter(|id| !assigned.contains(id))
            .copied()
            .collect();
        for id in gone {
            let t = self.tasks.get_mut(&id).expect("known task");
            match t.phase {
                Phase::Starting => t.stop = true,
                Phase::Up | Phase::Draining { .. } => {
                    t.phase = Phase::Stopping { then: None };
                    self.actions.push(Action::Stop(id));
                }
                Phase::Stopping { .. } => {}
                Phase::Ended => {
                    // Release what the runtime still holds of it.
                    self.tasks.remove(&id);
                    self.actions.push(Action::Stop(id));
                }
            }
        }
    }

    /// The first assignment that lists an adopted task: what the assignment
    /// says of it completes what the supervisor knows.
    fn resume(&mut self, task: &AssignedTask, now: Instant) {
        let clock_ms = self.clock_ms;
        let Some(t) = self.tasks.get_mut(&task.id) else {
            return;
        };
        t.adopted = false;
        t.name.clone_from(&task.name);
        t.addr = task.addr;
        t.health.clone_from(&task.spec.health);
        t.stop_grace = ms(task.spec.stop_grace_ms);
        t.stop = task.action == TaskAction::Stop;
        if t.phase != Phase::Up {
            // It ended meanwhile (and was reported).
            return;
        }
        if let Some(h) = &t.health {
            t.next_check = Some(now + ms(h.interval_ms).max(ms(100)));
        }
        if task.state >= TaskState::Running {
            t.healthy = true;
            return;
        }
        // The managers saw it starting: it is `running` once healthy.
        t.healthy = t.health.is_none();
        if t.healthy {
            self.report(task.id, status(clock_ms, TaskState::Running, "started"));
        }
    }

    /// A task of the assignment this supervisor does not know yet.
    fn take_in(&mut self, task: &AssignedTask, now: Instant) {
        let mut tracked = Tracked {
            name: task.name.clone(),
            addr: task.addr,
            health: task.spec.health.clone(),
            stop_grace: ms(task.spec.stop_grace_ms),
            phase: Phase::Ended,
            stop: task.action == TaskAction::Stop,
            ifaces: None,
            since: now,
            healthy: false,
            failures: 0,
            next_check: None,
            checking: false,
            status: None,
            early_exit: None,
            adopted: false,
        };
        if task.state >= TaskState::Preparing {
            // Recorded as started, but nothing of it runs here.
            self.tasks.insert(task.id, tracked);
            let ended_away = self.ended_away.remove(&task.id);
            if task.action == TaskAction::Stop {
                // It was being stopped: it is.
                self.report(
                    task.id,
                    status(self.clock_ms, TaskState::Shutdown, "shutdown"),
                );
                return;
            }
            let mut status = status(self.clock_ms, TaskState::Failed, "task lost");
            status.error = if ended_away {
                "task lost: it ended while its node's agent was not running".into()
            } else {
                "task lost: the agent restarted".into()
            };
            self.report(task.id, status);
            return;
        }
        match task.action {
            TaskAction::Run => {
                let files = match self
                    .files
                    .task_files(&task.spec)
                    .and_then(|files| Ok((files, self.expanded(task)?)))
                {
                    Ok(files) => files,
                    Err(error) => {
                        tracked.phase = Phase::Ended;
                        self.tasks.insert(task.id, tracked);
                        let mut status =
                            status(self.clock_ms, TaskState::Rejected, "starting failed");
                        status.error = error;
                        self.report(task.id, status);
                        return;
                    }
                };
                let (files, spec) = files;
                tracked.phase = Phase::Starting;
                self.tasks.insert(task.id, tracked);
                self.report(
                    task.id,
                    status(self.clock_ms, TaskState::Preparing, "preparing"),
                );
                self.actions.push(Action::Start(Box::new(TaskConfig {
                    id: task.id,
                    name: task.name.clone(),
                    spec,
                    addr: task.addr,
                    mtu: self.mtu,
                    networks: task
                        .networks
                        .iter()
                        .map(|n| TaskNetwork {
                            addr: n.addr,
                            subnet: self.subnets.get(&n.network).copied(),
                        })
                        .collect(),
                    files,
                })));
            }
            // Never started and on its way out: nothing to do until Stop.
            TaskAction::Drain => {}
            TaskAction::Stop => {
                self.tasks.insert(task.id, tracked);
                self.report(
                    task.id,
                    status(self.clock_ms, TaskState::Shutdown, "shutdown"),
                );
            }
        }
    }

    /// Moves a running task that must stop into `Draining`.
    fn advance_stop(&mut self, id: TaskId, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.stop && t.phase == Phase::Up {
            t.phase = Phase::Draining {
                deadline: now + t.stop_grace,
            };
        }
    }

    /// The result of a start.
    pub fn started(&mut self, id: TaskId, result: Result<Started, String>, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.phase != Phase::Starting {
            return;
        }
        match result {
            Err(error) => {
                t.phase = Phase::Ended;
                let mut status = status(self.clock_ms, TaskState::Rejected, "starting failed");
                status.error = error;
                self.report(id, status);
                // Release whatever the failed start left behind.
                self.actions.push(Action::Stop(id));
            }
            Ok(started) => {
                t.ifaces = Some(started.host_ifaces());
                t.since = now;
                t.phase = Phase::Up;
                if let Some(exit) = t.early_exit.take() {
                    // It ran, and has already ended: never report it running.
                    self.report(id, status(self.clock_ms, TaskState::Starting, "starting"));
                    self.exited(id, exit);
                    return;
                }
                let health = t.health.clone();
                match health {
                    Some(h) => {
                        t.next_check = Some(now + ms(h.interval_ms).max(ms(100)));
                        self.report(id, status(self.clock_ms, TaskState::Starting, "starting"));
                    }
                    None => {
                        t.healthy = true;
                        self.report(id, status(self.clock_ms, TaskState::Starting, "starting"));
                        self.report(id, status(self.clock_ms, TaskState::Running, "started"));
                    }
                }
                self.advance_stop(id, now);
            }
        }
    }

    /// A task's main process ended. An exit that arrives before the start's
    /// result (a program that ends at once) is kept until that result.
    pub fn exited(&mut self, id: TaskId, exit: Exit) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if t.phase == Phase::Starting {
            t.early_exit = Some(exit);
            return;
        }
        if !matches!(t.phase, Phase::Up | Phase::Draining { .. }) {
            return;
        }
        t.phase = Phase::Ended;
        let mut status = if exit.code == 0 {
            status(self.clock_ms, TaskState::Complete, "finished")
        } else if exit.oom_killed {
            // Killed by the kernel for its memory limit: say so (docker's `OOMKilled`).
            let mut s = status(self.clock_ms, TaskState::Failed, "task: OOMKilled");
            s.error = format!(
                "task: non-zero exit ({}): OOMKilled: the task reached its memory limit",
                exit.code
            );
            s
        } else {
            let mut s = status(self.clock_ms, TaskState::Failed, "task: non-zero exit");
            s.error = format!("task: non-zero exit ({})", exit.code);
            s
        };
        status.exit_code = Some(exit.code);
        self.report(id, status);
    }

    /// The result of a health check (`false` for a check that failed, timed
    /// out, or could not run).
    pub fn checked(&mut self, id: TaskId, healthy: bool, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        t.checking = false;
        if !matches!(t.phase, Phase::Up | Phase::Draining { .. }) {
            return;
        }
        let Some(h) = t.health.clone() else { return };
        if healthy {
            t.failures = 0;
            if !t.healthy {
                t.healthy = true;
                self.report(id, status(self.clock_ms, TaskState::Running, "started"));
            }
            return;
        }
        if now < t.since + ms(h.start_period_ms) {
            return;
        }
        t.failures += 1;
        if t.failures >= h.retries.max(1) {
            let mut status = status(self.clock_ms, TaskState::Failed, "unhealthy");
            status.error = "unhealthy".into();
            t.phase = Phase::Stopping {
                then: Some(status.clone()),
            };
            self.actions.push(Action::Stop(id));
        }
    }

    /// Whether a draining task still has live flows.
    pub fn flows(&mut self, id: TaskId, live: bool, now: Instant) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        let Phase::Draining { deadline } = t.phase else {
            return;
        };
        if !live || now >= deadline {
            t.phase = Phase::Stopping {
                then: Some(status(self.clock_ms, TaskState::Shutdown, "shutdown")),
            };
            self.actions.push(Action::Stop(id));
        }
    }

    /// A stop completed.
    pub fn stopped(&mut self, id: TaskId) {
        let Some(t) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Phase::Stopping { then } = &mut t.phase {
            let then = then.take();
            t.phase = Phase::Ended;
            if let Some(status) = then {
                self.report(id, status);
            }
        }
    }

    /// Time passes: health checks that are due, and draining tasks past
    /// their grace period.
    pub fn tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (id, t) in &mut self.tasks {
            if !matches!(t.phase, Phase::Up | Phase::Draining { .. }) || t.checking {
                continue;
            }
            let (Some(h), Some(next)) = (&t.health, t.next_check) else {
                continue;
            };
            if now >= next {
                t.checking = true;
                t.next_check = Some(now + ms(h.interval_ms).max(ms(100)));
                due.push(Action::Check {
                    id: *id,
                    cmd: h.cmd.clone(),
                    timeout: ms(h.timeout_ms).max(ms(100)),
                });
            }
        }
        self.actions.extend(due);
        let overdue: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Draining { deadline } if now >= deadline))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.flows(id, true, now);
        }
    }

    /// The task's name, if known.
    #[must_use]
    pub fn name(&self, id: TaskId) -> Option<&str> {
        self.tasks.get(&id).map(|t| t.name.as_str())
    }
}

/// How recently a UDP (or other connectionless) flow must have seen a
/// packet to count as live while its task drains. `last_seen` is refreshed
/// at most once a second.
pub const CONNECTIONLESS_ACTIVE_NS: u64 = 3_000_000_000;

/// The task address a flow table entry keeps busy, if the flow is live: a
/// forward entry's backend, or the task whose answers a reply or return
/// entry carries. TCP flows are live until closed; others while recently
/// active.
#[must_use]
pub fn live_flow_task(key: &FlowKey, flow: &Flow, now_ns: u64) -> Option<Ipv4Addr> {
    let live = if key.proto == IPPROTO_TCP {
        !flow.tcp_closed()
    } else {
        now_ns.saturating_sub(flow.last_seen_ns) < CONNECTIONLESS_ACTIVE_NS
    };
    if !live {
        return None;
    }
    let addr = match FlowKind::from_u8(flow.kind)? {
        FlowKind::Forward => flow.nat_addr,
        FlowKind::Reply | FlowKind::Return => key.src_addr,
    };
    Some(Ipv4Addr::from(u32::from_be(addr)))
}

#[cfg(test)]
mod tests {
    use mesh_api::spec::{RuntimeKind, ServiceSpec};

    use super::*;

    fn task(id: TaskId, action: TaskAction, health: Option<HealthCheck>) -> AssignedTask {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]).task;
        spec.health = health;
        spec.stop_grace_ms = 10_000;
        AssignedTask {
            id,
            name: format!("web.{id}"),
            service_id: 1,
            service_name: "web".into(),
            spec,
            addr: Ipv4Addr::new(10, 255, 0, id as u8),
            networks: Vec::new(),
            action,
            state: TaskState::Assigned,
            slot: 1,
        }
    }

    fn started(iface: &str) -> Result<Started, String> {
        Ok(Started {
            host_iface: iface.into(),
            ifindex: 9,
            networks: Vec::new(),
        })
    }

    fn states(reports: &[(TaskId, TaskStatus)]) -> Vec<TaskState> {
        reports.iter().map(|(_, s)| s.state).collect()
    }

    fn check(cmd: &str, retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            cmd: cmd.into(),
            interval_ms: 1_000,
            timeout_ms: 500,
            retries,
            start_period_ms,
        }
    }

    #[test]
    fn a_task_without_health_check_runs_as_soon_as_it_started() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        let (actions, reports) = s.take();
        assert_eq!(states(&reports), vec![TaskState::Preparing]);
        let [Action::Start(config)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!((config.id, config.mtu), (1, 1450));
        // The same assignment again starts nothing more.
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        assert_eq!(s.take(), (vec![], vec![]));
        s.started(1, started("veth1"), t0);
        let (_, reports) = s.take();
        assert_eq!(
            states(&reports),
            vec![TaskState::Starting, TaskState::Running]
        );
        assert_eq!(s.running_ifaces()[&1], ["veth1"]);
    }

    #[test]
    fn a_task_on_networks_is_started_with_their_subnets_and_runs_with_all_its_veths() {
        use mesh_api::network::{NetworkAddr, NetworkSpec};
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        let front = Network {
            id: 0xf1,
            spec: NetworkSpec::new("front"),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            vni: 4097,
            cursor: 2,
            created_at_ms: 0,
        };
        s.set_networks(std::slice::from_ref(&front));
        let mut t = task(1, TaskAction::Run, None);
        t.networks = vec![
            NetworkAddr {
                network: 0xf1,
                addr: Ipv4Addr::new(10, 0, 1, 5),
            },
            // A network the assignment does not describe: an address, no route.
            NetworkAddr {
                network: 0xf9,
                addr: Ipv4Addr::new(10, 0, 9, 5),
            },
        ];
        s.assign(&[t], t0);
        let (actions, _) = s.take();
        let [Action::Start(config)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(
            config.networks,
            [
                TaskNetwork {
                    addr: Ipv4Addr::new(10, 0, 1, 5),
                    subnet: Some((Ipv4Addr::new(10, 0, 1, 0), 24)),
                },
                TaskNetwork {
                    addr: Ipv4Addr::new(10, 0, 9, 5),
                    subnet: None,
                },
            ]
        );
        let mut up = started("veth1").unwrap();
        up.networks = vec!["m1".into(), "m2".into()];
        s.started(1, Ok(up), t0);
        assert_eq!(s.running_ifaces()[&1], ["veth1", "m1", "m2"]);
    }

    #[test]
    fn a_task_starts_with_its_placeholders_expanded_or_is_rejected_saying_why() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.set_node(0xcc, "n1");
        let mut t = task(1, TaskAction::Run, None);
        t.slot = 3;
        t.spec.hostname = Some("{{.Service.Name}}-{{.Task.Slot}}".into());
        t.spec.env = vec!["NODE={{.Node.ID}}@{{.Node.Hostname}}".into()];
        s.assign(&[t], t0);
        let (actions, _) = s.take();
        let [Action::Start(config)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(config.spec.hostname.as_deref(), Some("web-3"));
        assert_eq!(config.spec.env, ["NODE=00000000000000cc@n1"]);
        // No hostname: the task ID's first 12 hex digits.
        s.assign(&[task(2, TaskAction::Run, None)], t0);
        let (actions, _) = s.take();
        let [Action::Start(config)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(config.spec.hostname.as_deref(), Some("000000000000"));
        // A node hostname that makes no valid hostname fails the task, saying why.
        s.set_node(0xcc, "bad name");
        let mut t = task(4, TaskAction::Run, None);
        t.spec.hostname = Some("{{.Node.Hostname}}".into());
        s.assign(&[t], t0);
        let (actions, reports) = s.take();
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(reports[0].1.state, TaskState::Rejected);
        assert!(
            reports[0].1.error.contains("invalid hostname \"bad name\""),
            "{:?}",
            reports[0].1
        );
    }

    #[test]
    fn a_start_that_fails_is_rejected_with_the_error() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        s.take();
        s.started(1, Err("no such program".into()), t0);
        let (_, reports) = s.take();
        assert_eq!(reports[0].1.state, TaskState::Rejected);
        assert_eq!(reports[0].1.error, "no such program");
        assert!(s.running_ifaces().is_empty());
    }

    #[test]
    fn exits_complete_or_fail_with_the_code() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(
            &[
                task(1, TaskAction::Run, None),
                task(2, TaskAction::Run, None),
            ],
            t0,
        );
        s.started(1, started("a"), t0);
        s.started(2, started("b"), t0);
        s.take();
        s.exited(1, Exit::code(0));
        s.exited(2, Exit::code(3));
        let (_, reports) = s.take();
        assert_eq!(reports[0].1.state, TaskState::Complete);
        assert_eq!(reports[0].1.exit_code, Some(0));
        assert_eq!(reports[1].1.state, TaskState::Failed);
        assert_eq!(reports[1].1.error, "task: non-zero exit (3)");
        assert_eq!(reports[1].1.exit_code, Some(3));
    }

    #[test]
    fn a_task_killed_for_its_memory_limit_says_so() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        s.started(1, started("a"), t0);
        s.take();
        s.exited(
            1,
            Exit {
                code: 137,
                oom_killed: true,
            },
        );
        let (_, reports) = s.take();
        assert_eq!(reports[0].1.state, TaskState::Failed);
        assert_eq!(reports[0].1.message, "task: OOMKilled");
        assert_eq!(
            reports[0].1.error,
            "task: non-zero exit (137): OOMKilled: the task reached its memory limit"
        );
        assert_eq!(reports[0].1.exit_code, Some(137));
    }

    #[test]
    fn an_exit_that_arrives_before_the_start_result_is_not_lost() {
        // `sh -c "exit 3"`: the process is gone before the shell hands the
        // supervisor the start's result.
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(
            &[
                task(1, TaskAction::Run, None),
                task(2, TaskAction::Run, Some(check("true", 3, 0))),
            ],
            t0,
        );
        s.take();
        s.exited(1, Exit::code(3));
        s.exited(2, Exit::code(0));
        s.started(1, started("a"), t0);
        s.started(2, started("b"), t0);
        let (_, reports) = s.take();
        let of = |id| -> Vec<TaskState> {
            reports
                .iter()
                .filter(|(t, _)| *t == id)
                .map(|(_, st)| st.state)
                .collect()
        };
        // Never reported running: it did not stay up.
        assert_eq!(of(1), vec![TaskState::Starting, TaskState::Failed]);
        assert_eq!(of(2), vec![TaskState::Starting, TaskState::Complete]);
        let last = reports.iter().rev().find(|(t, _)| *t == 1).unwrap();
        assert_eq!(last.1.error, "task: non-zero exit (3)");
        assert_eq!(last.1.exit_code, Some(3));
        // No health check is scheduled for a task that has ended.
        s.tick(t0 + Duration::from_secs(60));
        let (actions, _) = s.take();
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Check { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn health_decides_running_and_repeated_failures_stop_the_task() {
        let t0 = Instant::now();
        let s1 = Duration::from_secs(1);
        let mut s = Supervisor::new(1450);
        let spec = Some(check("true", 2, 1_500));
        s.assign(&[task(1, TaskAction::Run, spec)], t0);
        s.started(1, started("a"), t0);
        let (_, reports) = s.take();
        assert_eq!(
            states(&reports),
            vec![TaskState::Preparing, TaskState::Starting]
        );
        s.tick(t0);
        assert!(s.take().0.is_empty(), "not due yet");
        s.tick(t0 + s1);
        let (actions, _) = s.take();
        assert!(matches!(actions.as_slice(), [Action::Check { id: 1, .. }]));
        // A failure within the start period does not count.
        s.checked(1, false, t0 + s1);
        s.tick(t0 + s1 * 2);
        s.take();
        s.checked(1, true, t0 + s1 * 2);
        assert_eq!(states(&s.take().1), vec![TaskState::Running]);
        for k in 3..=4 {
            s.tick(t0 + s1 * k);
            s.take();
            s.checked(1, false, t0 + s1 * k);
        }
        let (actions, reports) = s.take();
        assert_eq!(actions, vec![Action::Stop(1)]);
        assert!(reports.is_empty(), "reported once stopped");
        s.stopped(1);
        let (_, reports) = s.take();
        assert_eq!(reports[0].1.state, TaskState::Failed);
        assert_eq!(reports[0].1.error, "unhealthy");
    }

    #[test]
    fn a_stopping_task_waits_for_its_flows_within_its_grace_period() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        s.started(1, started("a"), t0);
        s.take();
        s.assign(&[task(1, TaskAction::Drain, None)], t0);
        assert!(s.draining().is_empty(), "drain keeps it running");
        s.assign(&[task(1, TaskAction::Stop, None)], t0);
        assert_eq!(s.draining().len(), 1);
        // Back to Drain (a new agent joined): the stop goes on.
        s.assign(&[task(1, TaskAction::Drain, None)], t0);
        s.flows(1, true, t0 + Duration::from_secs(1));
        assert!(s.take().0.is_empty(), "flows still live");
        s.flows(1, false, t0 + Duration::from_secs(2));
        assert_eq!(s.take().0, vec![Action::Stop(1)]);
        s.exited(1, Exit::code(143));
        s.stopped(1);
        let (_, reports) = s.take();
        assert_eq!(states(&reports), vec![TaskState::Shutdown]);
        assert!(s.running_ifaces().is_empty());

        // A task whose flows never end is stopped at its grace period.
        s.assign(&[task(2, TaskAction::Run, None)], t0);
        s.started(2, started("b"), t0);
        s.assign(&[task(2, TaskAction::Stop, None)], t0);
        s.take();
        s.tick(t0 + Duration::from_secs(10));
        assert_eq!(s.take().0, vec![Action::Stop(2)]);
    }

    #[test]
    fn tasks_that_leave_the_assignment_are_stopped_and_lost_ones_fail() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.assign(&[task(1, TaskAction::Run, None)], t0);
        s.started(1, started("a"), t0);
        s.take();
        let mut lost = task(2, TaskAction::Run, None);
        lost.state = TaskState::Running;
        s.assign(&[lost], t0);
        let (actions, reports) = s.take();
        assert_eq!(actions, vec![Action::Stop(1)]);
        assert_eq!(reports[0].0, 2);
        assert_eq!(reports[0].1.state, TaskState::Failed);
        s.stopped(1);
        assert!(
            s.take().1.is_empty(),
            "no report for a task the leader dropped"
        );
        // Never started and told to stop: shut down without running.
        s.assign(&[task(3, TaskAction::Stop, None)], t0);
        assert_eq!(states(&s.take().1), vec![TaskState::Shutdown]);
    }

    fn recorded(id: TaskId, action: TaskAction, state: TaskState) -> AssignedTask {
        let mut t = task(id, action, None);
        t.state = state;
        t
    }

    #[test]
    fn adopted_tasks_run_on_without_a_restart_or_a_report() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.adopted(1, started("veth1").unwrap(), t0);
        s.adopted(2, started("veth2").unwrap(), t0);
        // Before any assignment: their interfaces are known, nothing is reported.
        assert_eq!(s.running_ifaces().len(), 2);
        assert!(s.statuses().is_empty(), "nothing to re-send on reconnect");
        assert_eq!(s.take(), (vec![], vec![]));
        // The first assignment lists both as running: nothing starts, nothing is lost.
        s.assign(
            &[
                recorded(1, TaskAction::Run, TaskState::Running),
                recorded(2, TaskAction::Run, TaskState::Running),
            ],
            t0,
        );
        assert_eq!(s.take(), (vec![], vec![]));
        assert_eq!(s.running_ifaces()[&1], ["veth1"]);
        assert_eq!(s.name(1), Some("web.1"));
        // From then on they are tasks like any other: an exit is reported...
        s.exited(2, Exit::code(-1));
        let (_, reports) = s.take();
        assert_eq!(reports[0].0, 2);
        assert_eq!(reports[0].1.state, TaskState::Failed);
        assert_eq!(reports[0].1.exit_code, Some(-1));
        // ...and a stop drains with the grace period the assignment gave.
        s.assign(
            &[
                recorded(1, TaskAction::Stop, TaskState::Running),
                recorded(2, TaskAction::Stop, TaskState::Failed),
            ],
            t0,
        );
        assert_eq!(s.draining().get(&1), Some(&Ipv4Addr::new(10, 255, 0, 1)));
        s.tick(t0 + Duration::from_secs(9));
        assert!(s.take().0.is_empty(), "within its 10 s grace period");
        s.tick(t0 + Duration::from_secs(10));
        assert_eq!(s.take().0, vec![Action::Stop(1)]);
    }

    #[test]
    fn adopted_tasks_the_assignment_drops_are_stopped() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.adopted(1, started("veth1").unwrap(), t0);
        s.adopted(2, started("veth2").unwrap(), t0);
        s.assign(&[recorded(2, TaskAction::Run, TaskState::Running)], t0);
        let (actions, reports) = s.take();
        assert_eq!(actions, vec![Action::Stop(1)]);
        assert!(reports.is_empty());
        assert_eq!(s.running_ifaces().keys().copied().collect::<Vec<_>>(), [2]);
        s.stopped(1);
        assert!(s.take().1.is_empty(), "the leader dropped it: no report");
    }

    #[test]
    fn adopted_tasks_still_starting_report_running_once_healthy() {
        let t0 = Instant::now();
        let s1 = Duration::from_secs(1);
        let mut s = Supervisor::new(1450);
        s.adopted(1, started("veth1").unwrap(), t0);
        s.adopted(2, started("veth2").unwrap(), t0);
        let mut checked = recorded(2, TaskAction::Run, TaskState::Starting);
        checked.spec.health = Some(check("true", 3, 0));
        s.assign(
            &[recorded(1, TaskAction::Run, TaskState::Starting), checked],
            t0,
        );
        let (actions, reports) = s.take();
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(
            reports
                .iter()
                .map(|(id, st)| (*id, st.state))
                .collect::<Vec<_>>(),
            [(1, TaskState::Running)],
            "without a health check: running at once"
        );
        s.tick(t0 + s1);
        let (actions, _) = s.take();
        assert!(matches!(actions.as_slice(), [Action::Check { id: 2, .. }]));
        s.checked(2, true, t0 + s1);
        assert_eq!(states(&s.take().1), vec![TaskState::Running]);
    }

    #[test]
    fn adopted_tasks_that_end_before_the_first_assignment_fail() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.adopted(1, started("veth1").unwrap(), t0);
        s.exited(1, Exit::code(-1));
        let (_, reports) = s.take();
        assert_eq!(states(&reports), vec![TaskState::Failed]);
        s.assign(&[recorded(1, TaskAction::Run, TaskState::Running)], t0);
        assert_eq!(s.take(), (vec![], vec![]), "reported once, not restarted");
        assert!(s.running_ifaces().is_empty());
        // Once the leader drops it, what the runtime holds is released.
        s.assign(&[], t0);
        assert_eq!(s.take().0, vec![Action::Stop(1)]);
    }

    #[test]
    fn tasks_that_ended_while_the_agent_was_away_are_lost_saying_so() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.ended_while_away(1);
        s.assign(
            &[
                recorded(1, TaskAction::Run, TaskState::Running),
                recorded(2, TaskAction::Run, TaskState::Running),
            ],
            t0,
        );
        let (actions, reports) = s.take();
        assert!(actions.is_empty(), "lost tasks are replaced by the leader");
        let errors: Vec<(TaskId, TaskState, &str)> = reports
            .iter()
            .map(|(id, st)| (*id, st.state, st.error.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (
                    1,
                    TaskState::Failed,
                    "task lost: it ended while its node's agent was not running"
                ),
                (2, TaskState::Failed, "task lost: the agent restarted"),
            ]
        );
    }

    #[test]
    fn a_task_being_stopped_that_no_longer_runs_is_shut_down_not_lost() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1450);
        s.ended_while_away(1);
        s.assign(&[recorded(1, TaskAction::Stop, TaskState::Running)], t0);
        let (actions, reports) = s.take();
        assert!(actions.is_empty());
        assert_eq!(states(&reports), vec![TaskState::Shutdown]);
        assert!(reports[0].1.error.is_empty());
    }

    #[test]
    fn live_flows_name_the_task_they_keep_busy() {
        let task = Ipv4Addr::new(10, 255, 0, 5);
        let be = u32::from(task).to_be();
        let forward = Flow {
            kind: FlowKind::Forward as u8,
            nat_addr: be,
            last_seen_ns: 0,
            ..Flow::default()
        };
        let tcp = FlowKey {
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        };
        assert_eq!(live_flow_task(&tcp, &forward, 1 << 40), Some(task));
        let closed = Flow {
            tcp: Flow::SEEN_RST,
            ..forward
        };
        assert_eq!(live_flow_task(&tcp, &closed, 0), None);
        let udp_return = FlowKey {
            proto: lb_common::IPPROTO_UDP,
            src_addr: be,
            ..FlowKey::default()
        };
        let ret = Flow {
            kind: FlowKind::Return as u8,
            last_seen_ns: 10,
            ..Flow::default()
        };
        assert_eq!(live_flow_task(&udp_return, &ret, 20), Some(task));
        assert_eq!(
            live_flow_task(&udp_return, &ret, 10 + CONNECTIONLESS_ACTIVE_NS),
            None
        );
    }
}
