//! The node's manager, run by its agent once the node is promoted.
//!
//! In Swarm one daemon is both agent and manager, so `docker node promote`
//! is all it takes. Here the manager is its own program (`mesh-manager`,
//! which the agent does not link): when the leader tells the agent's
//! session that the node became a manager (and the session has renewed the
//! node's certificate), the agent starts `mesh-manager join --data-dir
//! <state dir> <leader>` as its child. The child shares the node's identity
//! and needs no token; it joins the Raft voters, or, if it ran here before,
//! resumes its log. The agent restarts it when it fails (with a backoff) and
//! stops it when its own stop comes; the manager stops by itself, and
//! removes its Raft data, when the node is demoted (the agent then stops
//! whatever is left and removes the data of a manager that was not running).
//!
//! The agent only runs managers it started: it records that in
//! [`OWNED_MARKER`], so that after a restart it starts the manager again,
//! and leaves alone a manager someone runs by hand (or by its own unit) on
//! the same state directory. The child's process ID is kept in [`PID_FILE`]
//! so that a manager left behind by an agent that was killed is stopped
//! before a new one starts on the same data.
//!
//! The decisions ([`ManagerCommand::args`], [`Restarts`], [`wanted_at_start`])
//! are pure and unit-tested; [`ManagerProcess`] is the thin shell.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use mesh_api::node::Role;
use mesh_client::session::SessionEvent;
use mesh_client::state_dir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// In the state directory: present while the agent runs the node's manager.
pub const OWNED_MARKER: &str = "manager-run-by-agent";
/// In the state directory: the process ID of the manager the agent runs.
pub const PID_FILE: &str = "manager.pid";

/// How long the manager gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How the agent starts the node's manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerCommand {
    /// The `mesh-manager` program.
    pub program: PathBuf,
    /// The node's state directory (the manager's `--data-dir`).
    pub state_dir: PathBuf,
    /// Where the manager's API listens (`--listen-addr`); also the address
    /// other nodes reach it on.
    pub listen: SocketAddr,
    /// Where its `/metrics` listens (`--metrics-addr`), or `off`.
    pub metrics: String,
    /// The node's hostname.
    pub hostname: String,
}

impl ManagerCommand {
    /// The arguments of `mesh-manager` that join the cluster through
    /// `remote` (or resume the node's log).
    #[must_use]
    pub fn args(&self, remote: &str) -> Vec<OsString> {
        vec![
            "join".into(),
            "--data-dir".into(),
            self.state_dir.clone().into_os_string(),
            "--listen-addr".into(),
            self.listen.to_string().into(),
            "--metrics-addr".into(),
            self.metrics.clone().into(),
            "--hostname".into(),
            self.hostname.clone().into(),
            // The token comes from the environment otherwise; this node
            // joins with its certificate.
            "--token".into(),
            "".into(),
            remote.into(),
        ]
    }
}

/// Whether the agent starts the manager when it starts: only a manager it
/// started before (`owned`), and only while the node's certificate is a
/// manager's.
#[must_use]
pub fn wanted_at_start(owned: bool, certificate_role: Option<Role>) -> bool {
    owned && certificate_role == Some(Role::Manager)
}

/// The restart policy: a manager that fails is started again after a delay
/// that doubles from [`Restarts::MIN`] to [`Restarts::MAX`], and starts
/// over once a run lasted [`Restarts::STABLE`]. A manager that exits with
/// status 0 stopped on purpose (it was demoted, or signalled) and is not
/// restarted, as `Restart=on-failure` would do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restarts {
    failures: u32,
}

impl Restarts {
    /// The first delay.
    pub const MIN: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(30);
    /// A run this long resets the delay.
    pub const STABLE: Duration = Duration::from_secs(60);

    /// After a run of `ran_for` that ended with `success`: the delay before
    /// the next start, or `None` not to restart.
    pub fn exited(&mut self, ran_for: Duration, success: bool) -> Option<Duration> {
        if success {
            self.failures = 0;
            return None;
        }
        if ran_for >= Self::STABLE {
            self.failures = 0;
        }
        let delay = Self::MIN
            .saturating_mul(1 << self.failures.min(5))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        Some(delay)
    }
}

/// What the shell is told.
#[derive(Debug)]
enum Input {
    Role(Role),
    Leader(String),
    Stop,
}

/// The node's manager process, run by the agent (see the module's header).
#[derive(Debug)]
pub struct ManagerProcess {
    tx: mpsc::UnboundedSender<Input>,
    task: tokio::task::JoinHandle<()>,
}

impl ManagerProcess {
    /// Starts the shell: it starts the manager at once if the agent ran it
    /// before and the node is still a manager, otherwise when the node is
    /// promoted. `managers` are the addresses to join through until a
    /// session names the leader.
    #[must_use]
    pub fn start(command: ManagerCommand, managers: Vec<String>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(command, managers, rx));
        Self { tx, task }
    }

    /// Acts on a session event: a role change starts or stops the manager;
    /// an established session names the leader to join through.
    pub fn observe(&self, event: &SessionEvent) {
        let input = match event {
            SessionEvent::RoleChanged(role) => Input::Role(*role),
            SessionEvent::Established { manager, .. } => Input::Leader(manager.clone()),
            _ => return,
        };
        let _ = self.tx.send(input);
    }

    /// Stops the manager (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and
    /// waits for it; the agent is stopping.
    pub async fn stop(self) {
        let _ = self.tx.send(Input::Stop);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the manager's supervisor ended abnormally");
        }
    }
}

/// The shell's state: the child, if one runs, and when it started.
struct Running {
    child: Child,
    since: Instant,
}

async fn run(
    command: ManagerCommand,
    managers: Vec<String>,
    mut rx: mpsc::UnboundedReceiver<Input>,
) {
    let dir = command.state_dir.clone();
    let marker = dir.join(OWNED_MARKER);
    let pid_file = dir.join(PID_FILE);
    stop_leftover(&pid_file).await;
    let owned = marker.exists();
    let role = certificate_role(&dir);
    let mut wanted = wanted_at_start(owned, role);
    if owned && !wanted {
        // Demoted while the agent was away.
        forget(&dir);
    }
    let mut leader: Option<String> = None;
    let mut running: Option<Running> = None;
    let mut restarts = Restarts::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        if wanted && running.is_none() && retry_at.is_none() {
            let remote = leader
                .clone()
                .or_else(|| managers.first().cloned())
                .unwrap_or_default();
            match spawn(&command, &remote, &pid_file) {
                Ok(child) => {
                    running = Some(Running {
                        child,
                        since: Instant::now(),
                    });
                }
                Err(e) => {
                    error!(program = %command.program.display(), error = %e, "starting the node's manager failed");
                    let delay = restarts
                        .exited(Duration::ZERO, false)
                        .unwrap_or(Restarts::MAX);
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
        tokio::select! {
            input = rx.recv() => match input {
                Some(Input::Leader(addr)) => leader = Some(addr),
                Some(Input::Role(Role::Manager)) => {
                    if let Err(e) = std::fs::write(&marker, "lb-agent runs this node's manager\n") {
                        warn!(path = %marker.display(), error = %e, "recording that the agent runs the manager");
                    }
                    if !wanted {
                        info!("this node was promoted: starting its manager");
                    }
                    wanted = true;
                    retry_at = None;
                    restarts = Restarts::default();
                }
                Some(Input::Role(Role::Worker)) => {
                    let was_owned = marker.exists();
                    wanted = false;
                    retry_at = None;
                    if let Some(r) = running.take() {
                        info!("this node was demoted: stopping its manager");
                        terminate(r.child, &pid_file).await;
                    }
                    if was_owned {
                        forget(&dir);
                    }
                }
                Some(Input::Stop) | None => {
                    if let Some(r) = running.take() {
                        terminate(r.child, &pid_file).await;
                    }
                    return;
                }
            },
            status = wait(running.as_mut()) => {
                let ran_for = running.take().map_or(Duration::ZERO, |r| r.since.elapsed());
                let _ = std::fs::remove_file(&pid_file);
                match status {
                    Ok(status) => {
                        let delay = restarts.exited(ran_for, status.success());
                        match delay {
                            Some(delay) if wanted => {
                                error!(%status, retry_in = ?delay, "the node's manager failed; it will be restarted");
                                retry_at = Some(Instant::now() + delay);
                            }
                            _ => {
                                info!(%status, "the node's manager stopped");
                                wanted = false;
                            }
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "waiting for the node's manager");
                        retry_at = Some(Instant::now() + Restarts::MAX);
                    }
                }
            }
            () = sleep_until(retry_at) => retry_at = None,
        }
    }
}

/// The role the node's certificate names, if it can be read.
fn certificate_role(state_dir: &Path) -> Option<Role> {
    let identity = state_dir::tls_dir(state_dir).load().ok()?;
    mesh_client::pki::parse_cert_pem(&identity.cert_pem)
        .ok()
        .map(|info| info.role)
}

/// The node is a worker: the agent runs no manager here any more, and a
/// manager's data (which holds the CA key) must not stay behind; nor its
/// storage key (beside the state directory, where the manager the agent
/// runs keeps it), once the data it sealed is gone.
fn forget(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(OWNED_MARKER));
    let raft = state_dir::raft_dir(state_dir);
    match std::fs::remove_dir_all(&raft) {
        Ok(()) => info!(dir = %raft.display(), "removed the demoted manager's data"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(dir = %raft.display(), error = %e, "removing the demoted manager's data");
            return;
        }
    }
    let key = state_dir::storage_key_file(state_dir);
    match std::fs::remove_file(&key) {
        Ok(()) => info!(key_file = %key.display(), "removed the demoted manager's storage key"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(key_file = %key.display(), error = %e, "removing the demoted manager's storage key")
        }
    }
}

fn spawn(command: &ManagerCommand, remote: &str, pid_file: &Path) -> std::io::Result<Child> {
    info!(program = %command.program.display(), listen = %command.listen, %remote, "starting the node's manager");
    let child = Command::new(&command.program)
        .args(command.args(remote))
        .stdin(Stdio::null())
        // Its output goes where the agent's goes (the journal, under systemd).
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(pid) = child.id() {
        std::fs::write(pid_file, format!("{pid}\n"))?;
    }
    Ok(child)
}

async fn wait(running: Option<&mut Running>) -> std::io::Result<ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn terminate(mut child: Child, pid_file: &Path) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => info!(%status, "the node's manager stopped"),
        Ok(Err(e)) => warn!(error = %e, "waiting for the node's manager"),
        Err(_) => {
            warn!("the node's manager did not stop within {STOP_GRACE:?}: killing it");
            let _ = child.kill().await;
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Stops a manager that an earlier run of the agent started and left
/// behind (the agent was killed): its process ID is in `pid_file`, and it
/// is still `mesh-manager` on this state directory.
async fn stop_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    let _ = std::fs::remove_file(pid_file);
    let data_dir = pid_file.parent().map(Path::as_os_str).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !is_manager_on(&cmdline, data_dir.as_encoded_bytes()) {
        return;
    }
    warn!(
        pid,
        "stopping the manager an earlier run of the agent left behind"
    );
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    let alive = || crate::runtime::procfs::stat(pid.as_raw()).is_some_and(|s| !s.ended());
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Whether a `/proc/<pid>/cmdline` (NUL-separated) is a `mesh-manager`
/// whose `--data-dir` is `data_dir`.
fn is_manager_on(cmdline: &[u8], data_dir: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_manager = args
        .first()
        .is_some_and(|program| program.ends_with(b"mesh-manager"));
    is_manager
        && args
            .windows(2)
            .any(|pair| pair[0] == b"--data-dir" && pair[1] == data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> ManagerCommand {
        ManagerCommand {
            program: "/usr/bin/mesh-manager".into(),
            state_dir: "/var/lib/mesh/agent".into(),
            listen: "10.0.0.2:4242".parse().unwrap(),
            metrics: "off".into(),
            hostname: "w1".into(),
        }
    }

    #[test]
    fn the_manager_joins_through_the_leader_with_the_nodes_state() {
        let args: Vec<String> = command()
            .args("10.0.0.1:4242")
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "join",
                "--data-dir",
                "/var/lib/mesh/agent",
                "--listen-addr",
                "10.0.0.2:4242",
                "--metrics-addr",
                "off",
                "--hostname",
                "w1",
                "--token",
                "",
                "10.0.0.1:4242"
            ]
        );
    }

    #[test]
    fn only_a_manager_the_agent_started_is_started_again() {
        assert!(wanted_at_start(true, Some(Role::Manager)));
        // Run by hand (or its own unit) on the same state directory.
        assert!(!wanted_at_start(false, Some(Role::Manager)));
        // Demoted while the agent was away.
        assert!(!wanted_at_start(true, Some(Role::Worker)));
        assert!(!wanted_at_start(true, None));
    }

    #[test]
    fn failures_back_off_and_a_clean_exit_is_not_restarted() {
        let mut r = Restarts::default();
        let short = Duration::from_millis(300);
        let delays: Vec<_> = (0..8).map(|_| r.exited(short, false).unwrap()).collect();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        // A long run starts over.
        assert_eq!(r.exited(Restarts::STABLE, false), Some(Restarts::MIN));
        // Status 0: stopped on purpose.
        assert_eq!(r.exited(short, true), None);
        assert_eq!(r.exited(short, false), Some(Restarts::MIN));
    }

    #[test]
    fn a_leftover_is_recognised_by_program_and_data_dir() {
        let cmd = b"/usr/bin/mesh-manager\0join\0--data-dir\0/var/lib/mesh/agent\0x:1\0";
        assert!(is_manager_on(cmd, b"/var/lib/mesh/agent"));
        assert!(!is_manager_on(cmd, b"/var/lib/mesh/other"));
        let other = b"/usr/bin/sleep\0--data-dir\0/var/lib/mesh/agent\0";
        assert!(!is_manager_on(other, b"/var/lib/mesh/agent"));
        assert!(!is_manager_on(b"", b"/var/lib/mesh/agent"));
    }
}
