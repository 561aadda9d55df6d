//! Control-plane clusters as real processes: `mesh-manager` daemons on loopback, `meshctl`
//! against any of them, `lb-agent --join` workers, kill -9 and restarts.
//!
//! Each [`Cluster`] gets its own loopback network, `127.A.B.0/24` with `A.B` drawn at
//! random and checked free, so clusters of parallel tests (and of other test processes)
//! never share an address: manager `i` listens on `127.A.B.(i+1)`, its API on
//! [`API_PORT`] and its `/metrics` on [`METRICS_PORT`]. Data directories and logs live
//! in a temporary directory that `Drop` removes after killing every process it started;
//! when the test is panicking, `Drop` first prints the tail of every log.
//!
//! Every wait polls with a deadline ([`crate::poll_until`]); nothing sleeps to
//! synchronise.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use mesh_client::pki::TlsDir;
use mesh_client::proto::{self, control_client::ControlClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tonic::transport::Channel;

use crate::{bin, poll_until};

/// The port every manager's API listens on (each manager has its own address).
pub const API_PORT: u16 = 4242;
/// The port every manager's `/metrics` listens on.
pub const METRICS_PORT: u16 = 9465;
/// The port every manager serves the cluster view on (`--web-addr`; on its own
/// address, or on the loopback of its node's namespace).
pub const WEB_PORT: u16 = 9466;
/// How long a `meshctl` run may take before the harness kills it.
pub const MESHCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a manager may take to answer after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Cluster`]'s managers are started.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Managers to start (1, 3 or 5).
    pub managers: usize,
    /// `--heartbeat-ms`: the agents' heartbeat period.
    pub heartbeat_ms: u64,
    /// `--heartbeat-misses`: heartbeats missed before a node is down.
    pub heartbeat_misses: u32,
    /// `--snapshot-interval`: entries between snapshots (and log compactions).
    pub snapshot_interval: u64,
    /// Name used in the temporary directory and in printed logs.
    pub name: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            managers: 3,
            heartbeat_ms: 500,
            heartbeat_misses: 3,
            snapshot_interval: 5000,
            name: "cluster".into(),
        }
    }
}

/// One `mesh-manager` process (running or not).
#[derive(Debug)]
pub struct ManagerProcess {
    /// `--hostname`: `m0`, `m1`...
    pub hostname: String,
    /// The API address.
    pub addr: SocketAddr,
    /// The `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// The cluster view's address (`--web-addr`).
    pub web_addr: SocketAddr,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// Its node ID, as `meshctl` prints it.
    pub node_id: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ManagerProcess {
    /// The manager's TLS directory (`MESH_TLS_DIR` for `meshctl`).
    #[must_use]
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The process ID, while the harness has the process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the harness believes the process runs (started and not seen exiting).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// One `lb-agent --join` process.
#[derive(Debug)]
pub struct AgentProcess {
    /// `--hostname`.
    pub hostname: String,
    /// `--state-dir`; the identity is under `tls/`.
    pub state_dir: PathBuf,
    /// `--join`: the manager addresses it was started with, comma-separated.
    pub join: String,
    /// `--manager-listen-addr`: where the node's manager listens once it is promoted.
    pub manager_addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// The agent's TLS directory.
    #[must_use]
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }

    /// The process ID of the manager the agent runs (the node was promoted), if any.
    #[must_use]
    pub fn manager_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state_dir.join("manager.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `lb-agent --join` with this agent's state directory, hostname and manager
    /// address (no token).
    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(bin("lb-agent")?);
        cmd.args(["--join", &self.join])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--hostname", &self.hostname])
            .args(["--manager-listen-addr", &self.manager_addr.to_string()])
            .args(["--manager-metrics-addr", "off"]);
        Ok(cmd)
    }

    /// Kills the agent, and the manager it runs: a killed agent leaves it behind.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        if let Some(pid) = self.manager_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// What a `meshctl` run printed and how it exited.
#[derive(Clone, Debug)]
pub struct CtlOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// Whether it exited 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails unless it exited non-zero with `needle` (case-insensitive) on stderr.
    ///
    /// # Errors
    /// If it succeeded, or stderr does not mention `needle`.
    pub fn expect_failure(&self, needle: &str) -> Result<()> {
        ensure!(
            !self.success(),
            "expected a failure mentioning {needle:?}, but it succeeded:\n{}",
            self.stdout
        );
        ensure!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected stderr to mention {needle:?}; it says:\n{}",
            self.stderr
        );
        Ok(())
    }
}

/// Raft status as `meshctl cluster inspect --format json` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The manager's node ID.
    pub node_id: String,
    /// Whether it leads.
    pub is_leader: bool,
    /// The leader it knows, empty without one.
    pub leader_id: String,
    /// Raft term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Voting members.
    pub voters: usize,
}

impl Info {
    fn from_json(v: &Value) -> Result<Self> {
        let s = |k: &str| v[k].as_str().map(str::to_owned).context(k.to_owned());
        let n = |k: &str| v[k].as_u64().context(k.to_owned());
        let voters = v["Managers"]
            .as_array()
            .context("Managers")?
            .iter()
            .filter(|m| m["Voter"].as_bool() == Some(true))
            .count();
        Ok(Self {
            node_id: s("NodeID")?,
            is_leader: v["IsLeader"].as_bool().context("IsLeader")?,
            leader_id: s("LeaderID")?,
            term: n("Term")?,
            commit_index: n("CommitIndex")?,
            applied_index: n("AppliedIndex")?,
            voters,
        })
    }
}

/// A control-plane cluster of `mesh-manager` processes, with workers.
#[derive(Debug)]
pub struct Cluster {
    /// How the managers are started.
    pub options: ClusterOptions,
    root: PathBuf,
    net: (u8, u8),
    managers: Vec<ManagerProcess>,
    agents: Vec<AgentProcess>,
}

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// A loopback `/24` (`127.A.B.0`) whose first addresses are free on both ports.
fn free_net(managers: usize) -> Result<(u8, u8)> {
    let random = RandomState::new();
    for attempt in 0..64u64 {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let h = random.hash_one((std::process::id(), n, attempt));
        // 127.16.0.0 - 127.239.255.0: clear of 127.0.0.x, which other things use.
        let a = 16 + u8::try_from(h % 224).unwrap_or(0);
        let b = u8::try_from((h >> 8) & 0xff).unwrap_or(0);
        let free = (1..=managers + 1).all(|i| {
            let ip = Ipv4Addr::new(127, a, b, u8::try_from(i).unwrap_or(1));
            [API_PORT, METRICS_PORT]
                .iter()
                .all(|p| TcpListener::bind(SocketAddrV4::new(ip, *p)).is_ok())
        });
        if free {
            return Ok((a, b));
        }
    }
    bail!("no free loopback network found")
}

fn temp_root(name: &str) -> Result<PathBuf> {
    let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("mesh-cp-{name}-{}-{n}", std::process::id()));
    if root.exists() {
        std::fs::remove_dir_all(&root).ok();
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// Runs `cmd` to completion, killing it after `timeout`; captures its output.
///
/// # Errors
/// If it cannot be started or does not finish in time.
pub fn run_captured(cmd: Command, timeout: Duration) -> Result<CtlOutput> {
    run_captured_with_input(cmd, &[], timeout)
}

/// [`run_captured`] with `input` written to the command's standard input (then closed).
///
/// # Errors
/// As [`run_captured`].
pub fn run_captured_with_input(
    mut cmd: Command,
    input: &[u8],
    timeout: Duration,
) -> Result<CtlOutput> {
    cmd.stdin(if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        // A writer of its own: a command that reads nothing must not block the caller.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            child.wait().ok();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(CtlOutput {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Runs `meshctl` with `MESH_HOST=hosts` and `MESH_TLS_DIR=tls_dir`.
///
/// # Errors
/// If it cannot be started or does not finish within [`MESHCTL_TIMEOUT`]; its own
/// failures are in the returned [`CtlOutput`].
pub fn meshctl_with(hosts: &str, tls_dir: &Path, args: &[&str]) -> Result<CtlOutput> {
    let mut cmd = Command::new(bin("meshctl")?);
    cmd.args(args)
        .env("MESH_HOST", hosts)
        .env("MESH_TLS_DIR", tls_dir)
        .env("NO_COLOR", "1");
    run_captured(cmd, MESHCTL_TIMEOUT)
}

fn open_log(path: &Path, banner: &str) -> Result<File> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(log, "=== harness: {banner}")?;
    Ok(log)
}

fn spawn_logged(mut cmd: Command, log_path: &Path, banner: &str) -> Result<Child> {
    let log = open_log(log_path, banner)?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("MESH_TEST_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        );
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

fn stop_child(child: &mut Child, signal: Signal, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        kill(Pid::from_raw(pid), signal).ok();
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts `options.managers` managers: the first with `init`, the others one at a time
    /// with `join` and a manager token, each waited for until it votes; then waits until
    /// every manager's own node is ready.
    ///
    /// # Errors
    /// If a binary is missing, a manager exits, or the cluster does not form in time.
    pub fn start(options: ClusterOptions) -> Result<Self> {
        ensure!(options.managers >= 1, "a cluster needs a manager");
        let net = free_net(options.managers)?;
        let root = temp_root(&options.name)?;
        let mut cluster = Self {
            options,
            root,
            net,
            managers: Vec::new(),
            agents: Vec::new(),
        };
        let result = cluster.form();
        if let Err(e) = result {
            cluster.print_logs();
            return Err(e);
        }
        Ok(cluster)
    }

    fn form(&mut self) -> Result<()> {
        for i in 0..self.options.managers {
            let ip = Ipv4Addr::new(127, self.net.0, self.net.1, u8::try_from(i + 1)?);
            self.managers.push(ManagerProcess {
                hostname: format!("m{i}"),
                addr: SocketAddr::V4(SocketAddrV4::new(ip, API_PORT)),
                metrics_addr: SocketAddr::V4(SocketAddrV4::new(ip, METRICS_PORT)),
                web_addr: SocketAddr::V4(SocketAddrV4::new(ip, WEB_PORT)),
                data_dir: self.root.join(format!("m{i}")),
                node_id: String::new(),
                log: self.root.join(format!("m{i}.log")),
                child: None,
            });
        }
        self.spawn_manager(0, &["init"], &[])?;
        self.wait_until(START_TIMEOUT, "m0 to lead its new cluster", |c| {
            Ok(c.info(0).ok().filter(|i| i.is_leader).map(|_| ()))
        })?;
        let token = self.ctl(0, &["cluster", "join-token", "manager", "-q"])?;
        let token = token.trim().to_owned();
        let first = self.managers[0].addr.to_string();
        for i in 1..self.options.managers {
            self.spawn_manager(i, &["join", "--token", &token], &[&first])?;
            let want = i + 1;
            self.wait_until(START_TIMEOUT, &format!("m{i} to join as a voter"), |c| {
                let mine = c.info(i).ok();
                let leader = c.info(0).ok();
                Ok(match (mine, leader) {
                    (Some(m), Some(l)) if m.voters == want && l.voters == want => Some(()),
                    _ => None,
                })
            })?;
        }
        for i in 0..self.managers.len() {
            let info = self.info(i)?;
            self.managers[i].node_id = info.node_id;
        }
        let n = self.managers.len();
        self.wait_until(START_TIMEOUT, "every manager's node to be ready", |c| {
            let Ok(nodes) = c.nodes(0) else {
                return Ok(None);
            };
            let ready = nodes
                .iter()
                .filter(|n| n["Status"].as_str() == Some("ready"))
                .count();
            Ok((ready == n).then_some(()))
        })
    }

    fn spawn_manager(&mut self, i: usize, command: &[&str], trailing: &[&str]) -> Result<()> {
        let o = &self.options;
        let m = &self.managers[i];
        let mut cmd = Command::new(bin("mesh-manager")?);
        cmd.args(command)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-addr", &m.addr.to_string()])
            .args(["--metrics-addr", &m.metrics_addr.to_string()])
            .args(["--web-addr", &m.web_addr.to_string()])
            .args(["--hostname", &m.hostname])
            .args(["--heartbeat-ms", &o.heartbeat_ms.to_string()])
            .args(["--heartbeat-misses", &o.heartbeat_misses.to_string()])
            .args(["--snapshot-interval", &o.snapshot_interval.to_string()])
            .args(trailing);
        let banner = format!("mesh-manager {}", command.join(" "));
        let child = spawn_logged(cmd, &m.log, &banner)?;
        self.managers[i].child = Some(child);
        Ok(())
    }

    /// The temporary directory everything lives in.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Manager `i`.
    #[must_use]
    pub fn manager(&self, i: usize) -> &ManagerProcess {
        &self.managers[i]
    }

    /// How many managers the cluster was started with (running or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.managers.len()
    }

    /// Whether the cluster has no manager (never: [`Cluster::start`] refuses that).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.managers.is_empty()
    }

    /// Indexes of the managers whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.managers.len())
            .filter(|&i| self.managers[i].is_running())
            .collect()
    }

    /// Every manager's API address, comma-separated (`MESH_HOST`, `lb-agent --join`).
    #[must_use]
    pub fn hosts(&self) -> String {
        self.managers
            .iter()
            .map(|m| m.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Calls `f` until it returns `Ok(Some(_))` or `timeout` passes; on timeout the error
    /// carries the last error `f` saw, if any.
    ///
    /// # Errors
    /// On timeout, or an `Err` from `f`, which is final.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<Option<T>>,
    ) -> Result<T> {
        poll_until(timeout, what, || f(self))
    }

    /// Runs `meshctl` against manager `i` with its identity.
    ///
    /// # Errors
    /// As [`meshctl_with`].
    pub fn meshctl(&self, i: usize, args: &[&str]) -> Result<CtlOutput> {
        let m = &self.managers[i];
        meshctl_with(&m.addr.to_string(), &m.tls_dir(), args)
    }

    /// Runs `meshctl` against manager `i` and returns its standard output.
    ///
    /// # Errors
    /// If it fails; the error holds its stderr.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.meshctl(i, args)?;
        ensure!(
            out.success(),
            "meshctl {} (via m{i}) failed: {}",
            args.join(" "),
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    /// Runs `meshctl` against manager `i` and parses its JSON output.
    ///
    /// # Errors
    /// If it fails or does not print JSON.
    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Result<Value> {
        let out = self.ctl(i, args)?;
        serde_json::from_str(&out).with_context(|| format!("meshctl printed no JSON: {out}"))
    }

    /// `cluster inspect` as manager `i` sees it.
    ///
    /// # Errors
    /// If `meshctl` fails.
    pub fn info(&self, i: usize) -> Result<Info> {
        Info::from_json(&self.ctl_json(i, &["cluster", "inspect", "--format", "json"])?)
    }

    /// `node ls --format json` through manager `i`.
    ///
    /// # Errors
    /// If `meshctl` fails.
    pub fn nodes(&self, i: usize) -> Result<Vec<Value>> {
        match self.ctl_json(i, &["node", "ls", "--format", "json"])? {
            Value::Array(nodes) => Ok(nodes),
            other => bail!("node ls printed {other}"),
        }
    }

    /// `node inspect NAME` through manager `i`: the node's JSON object.
    ///
    /// # Errors
    /// If `meshctl` fails.
    pub fn node(&self, i: usize, name: &str) -> Result<Value> {
        let v = self.ctl_json(i, &["node", "inspect", name])?;
        v.get(0).cloned().context("node inspect printed no node")
    }

    /// A node's labels as seen through manager `i`.
    ///
    /// # Errors
    /// If `meshctl` fails.
    pub fn labels(&self, i: usize, name: &str) -> Result<BTreeMap<String, String>> {
        let node = self.node(i, name)?;
        Ok(node["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The leader, once a manager says it leads and every other running manager names
    /// it.
    ///
    /// # Errors
    /// If no leader is agreed on within `timeout`.
    pub fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        self.wait_until(timeout, "an agreed leader", |c| {
            let running = c.running();
            let infos: Vec<(usize, Info)> = running
                .iter()
                .filter_map(|&i| c.info(i).ok().map(|info| (i, info)))
                .collect();
            if infos.len() < running.len() {
                return Ok(None);
            }
            let Some((leader, info)) = infos.iter().find(|(_, i)| i.is_leader) else {
                return Ok(None);
            };
            let agreed = infos.iter().all(|(_, i)| i.leader_id == info.node_id);
            Ok(agreed.then_some(*leader))
        })
    }

    /// Manager `i`'s `/metrics`, as `name{labels}` to value.
    ///
    /// # Errors
    /// If it cannot be scraped.
    pub fn metrics(&self, i: usize) -> Result<BTreeMap<String, f64>> {
        let body = crate::client::http_get(self.managers[i].metrics_addr, "/metrics")?;
        Ok(parse_metrics(&body))
    }

    /// Sends SIGKILL to manager `i` and reaps it.
    ///
    /// # Errors
    /// If it was not running.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.managers[i].child.as_mut().context("not running")?;
        child.kill().ok();
        child.wait()?;
        self.managers[i].child = None;
        Ok(())
    }

    /// Sends SIGTERM to manager `i` and waits for it to exit (SIGKILL after 15 s, and
    /// then the status says so).
    ///
    /// # Errors
    /// If it was not running.
    pub fn stop(&mut self, i: usize) -> Result<Option<ExitStatus>> {
        let mut child = self.managers[i].child.take().context("not running")?;
        Ok(stop_child(
            &mut child,
            Signal::SIGTERM,
            Duration::from_secs(15),
        ))
    }

    /// Starts manager `i` again from its data directory (`mesh-manager run`, plus
    /// `extra`, e.g. `--force-new-cluster`), and waits until it answers `cluster inspect`.
    ///
    /// # Errors
    /// If it is running, exits, or does not answer within [`START_TIMEOUT`].
    pub fn restart(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        ensure!(!self.managers[i].is_running(), "m{i} is running");
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        self.spawn_manager(i, &args, &[])?;
        self.wait_until(START_TIMEOUT, &format!("m{i} to answer"), |c| {
            if !c.managers[i].is_running() {
                bail!("m{i} exited:\n{}", tail(&c.managers[i].log, 20));
            }
            Ok(c.info(i).ok().map(|_| ()))
        })?;
        Ok(())
    }

    /// Manager `i`'s exit status, if it has exited by itself.
    ///
    /// # Errors
    /// If the harness stopped or killed it, or waiting fails.
    pub fn manager_exit(&mut self, i: usize) -> Result<Option<ExitStatus>> {
        match &mut self.managers[i].child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("m{i} was stopped by the harness"),
        }
    }

    /// Waits for manager `i` to exit by itself.
    ///
    /// # Errors
    /// If it still runs after `timeout`.
    pub fn wait_manager_exit(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus> {
        let status = self.wait_until(timeout, &format!("m{i} to exit"), |c| c.manager_exit(i))?;
        self.managers[i].child = None;
        Ok(status)
    }

    /// Manager `i`'s `/healthz`: its HTTP status code and body.
    ///
    /// # Errors
    /// If it cannot be reached or does not answer HTTP.
    pub fn healthz(&self, i: usize) -> Result<(u16, String)> {
        crate::client::http_get_status(self.managers[i].metrics_addr, "/healthz")
    }

    /// Manager `i`'s log so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.managers[i].log).unwrap_or_default()
    }

    /// Starts `lb-agent --join` (session only, no dataplane) with `token` against every
    /// manager, as `hostname`, with its own state directory. Returns its index.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn spawn_agent(&mut self, hostname: &str, token: Option<&str>) -> Result<usize> {
        let join = self.hosts();
        self.spawn_agent_via(hostname, token, &join)
    }

    /// As [`Cluster::spawn_agent`], with `--join join` (comma-separated addresses), e.g.
    /// one manager only: what it learns of the others comes from its session.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn spawn_agent_via(
        &mut self,
        hostname: &str,
        token: Option<&str>,
        join: &str,
    ) -> Result<usize> {
        let index = u8::try_from(self.agents.len()).context("too many agents")?;
        let mut agent = AgentProcess {
            hostname: hostname.to_owned(),
            state_dir: self.root.join(format!("agent-{hostname}")),
            join: join.to_owned(),
            // Clear of the managers' addresses (127.A.B.1...).
            manager_addr: SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(127, self.net.0, self.net.1, 101_u8.saturating_add(index)),
                API_PORT,
            )),
            log: self.root.join(format!("agent-{hostname}.log")),
            child: None,
        };
        let mut cmd = agent.command()?;
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        agent.child = Some(spawn_logged(cmd, &agent.log, "lb-agent --join")?);
        self.agents.push(agent);
        Ok(self.agents.len() - 1)
    }

    /// Starts a worker with `token` and waits until `node ls` shows it ready.
    ///
    /// # Errors
    /// If the agent exits or the node is not ready in time.
    pub fn join_worker(&mut self, hostname: &str, token: &str) -> Result<usize> {
        let join = self.hosts();
        self.join_worker_via(hostname, token, &join)
    }

    /// As [`Cluster::join_worker`], with `--join join` (comma-separated addresses).
    ///
    /// # Errors
    /// If the agent exits or the node is not ready in time.
    pub fn join_worker_via(&mut self, hostname: &str, token: &str, join: &str) -> Result<usize> {
        let a = self.spawn_agent_via(hostname, Some(token), join)?;
        let timeout = START_TIMEOUT;
        self.wait_until(timeout, &format!("worker {hostname} to be ready"), |c| {
            if let Some(status) = c.agent_exit(a)? {
                bail!("lb-agent {hostname} exited ({status}):\n{}", c.agent_log(a));
            }
            let leader = c.running().first().copied().context("no manager runs")?;
            let Ok(nodes) = c.nodes(leader) else {
                return Ok(None);
            };
            Ok(nodes
                .iter()
                .any(|n| n["Hostname"] == hostname && n["Status"] == "ready")
                .then_some(()))
        })?;
        Ok(a)
    }

    /// Agent `a`.
    #[must_use]
    pub fn agent(&self, a: usize) -> &AgentProcess {
        &self.agents[a]
    }

    /// Agent `a`'s exit status, if it has exited.
    ///
    /// # Errors
    /// If waiting fails.
    pub fn agent_exit(&mut self, a: usize) -> Result<Option<ExitStatus>> {
        match &mut self.agents[a].child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("agent {a} was killed by the harness"),
        }
    }

    /// Waits for agent `a` to exit by itself.
    ///
    /// # Errors
    /// If it still runs after `timeout`.
    pub fn wait_agent_exit(&mut self, a: usize, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("lb-agent {} to exit", self.agents[a].hostname);
        self.wait_until(timeout, &what, |c| c.agent_exit(a))
    }

    /// Agent `a`'s log so far.
    #[must_use]
    pub fn agent_log(&self, a: usize) -> String {
        std::fs::read_to_string(&self.agents[a].log).unwrap_or_default()
    }

    /// Sends SIGKILL to agent `a`.
    ///
    /// # Errors
    /// If it was not running.
    pub fn kill_agent(&mut self, a: usize) -> Result<()> {
        let mut child = self.agents[a].child.take().context("not running")?;
        child.kill().ok();
        child.wait()?;
        Ok(())
    }

    /// Starts agent `a` again with its state directory (no token) and its `--join`.
    ///
    /// # Errors
    /// If it is still running or cannot be started.
    pub fn restart_agent(&mut self, a: usize) -> Result<()> {
        ensure!(self.agents[a].child.is_none(), "agent {a} is running");
        let agent = &self.agents[a];
        let child = spawn_logged(agent.command()?, &agent.log, "lb-agent --join (restart)")?;
        self.agents[a].child = Some(child);
        Ok(())
    }

    /// A gRPC `Control` client to manager `i` with `tls_dir`'s identity (the manager's
    /// own by default). Call it inside a Tokio runtime.
    ///
    /// # Errors
    /// If the identity cannot be read or no connection is made.
    pub async fn control(
        &self,
        i: usize,
        tls_dir: Option<&Path>,
    ) -> Result<ControlClient<Channel>> {
        let dir = tls_dir.map_or_else(|| self.managers[i].tls_dir(), Path::to_path_buf);
        connect_control(&[self.managers[i].addr.to_string()], &dir).await
    }

    /// Prints the tail of every log to stderr.
    pub fn print_logs(&self) {
        let logs = self
            .managers
            .iter()
            .map(|m| (&m.hostname, &m.log))
            .chain(self.agents.iter().map(|a| (&a.hostname, &a.log)));
        for (name, path) in logs {
            eprintln!(
                "----- [{}] {name}: {} (last 80 lines) -----\n{}",
                self.options.name,
                path.display(),
                tail(path, 80)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill();
        }
        for m in &mut self.managers {
            if let Some(mut child) = m.child.take() {
                child.kill().ok();
                child.wait().ok();
            }
        }
        if std::thread::panicking() || std::env::var_os("MESH_TEST_LOGS").is_some() {
            self.print_logs();
        }
        if std::env::var_os("MESH_KEEP_TEMP").is_none() {
            std::fs::remove_dir_all(&self.root).ok();
        }
    }
}

/// Parses the Prometheus text exposition into `name{labels}` to value.
#[must_use]
pub fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A gRPC `Control` client to the first of `addrs` that answers, with the identity in
/// `tls_dir`.
///
/// # Errors
/// If the identity cannot be read or no manager answers.
pub async fn connect_control(addrs: &[String], tls_dir: &Path) -> Result<ControlClient<Channel>> {
    let identity = TlsDir::new(tls_dir.to_path_buf())
        .load()
        .with_context(|| format!("reading the identity in {}", tls_dir.display()))?;
    let channel =
        mesh_client::connect::connect(addrs, &mesh_client::connect::identity_tls(&identity))
            .await
            .map_err(|e| anyhow!("{e}"))?;
    Ok(ControlClient::new(channel))
}

/// One label write: sets `key=value` on `node` through `control`.
///
/// # Errors
/// The call's status, as `meshctl` would print it.
pub async fn write_label(
    control: &mut ControlClient<Channel>,
    node: &str,
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(proto::UpdateNodeRequest {
        name: node.to_owned(),
        availability: String::new(),
        label_add: vec![format!("{key}={value}")],
        label_rm: Vec::new(),
    });
    request.set_timeout(timeout);
    control.update_node(request).await.map(|_| ())
}

/// What a [`LabelWriter`] did.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    /// Keys whose write was acknowledged (committed), in order.
    pub acked: Vec<String>,
    /// Writes that failed (not acknowledged; they may or may not have committed).
    pub failed: usize,
    /// The last failure's message.
    pub last_error: String,
}

/// A stream of label writes (`PREFIX0=1`, `PREFIX1=1`...) on one node, one at a time,
/// through the managers in turn: a failed write moves on to the next manager. Runs on
/// its own thread until [`LabelWriter::finish`].
#[derive(Debug)]
pub struct LabelWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    log: Arc<Mutex<WriteLog>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl LabelWriter {
    /// Starts writing labels `{prefix}{n}` on `node` through `addrs` (in turn after a
    /// failure), with the identity in `tls_dir`.
    #[must_use]
    pub fn start(addrs: Vec<String>, tls_dir: PathBuf, node: String, prefix: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let handle = {
            let (stop, acked, log) = (stop.clone(), acked.clone(), log.clone());
            std::thread::spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut cursor = 0;
                    let mut client: Option<ControlClient<Channel>> = None;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}{n}");
                        n += 1;
                        let result = match client.as_mut() {
                            Some(c) => write_label(c, &node, &key, "1", Duration::from_secs(10))
                                .await
                                .map_err(|s| mesh_client::connect::status_message(&s)),
                            None => {
                                match connect_control(&addrs[cursor..=cursor], &tls_dir).await {
                                    Ok(mut c) => {
                                        let r = write_label(
                                            &mut c,
                                            &node,
                                            &key,
                                            "1",
                                            Duration::from_secs(10),
                                        )
                                        .await
                                        .map_err(|s| mesh_client::connect::status_message(&s));
                                        client = Some(c);
                                        r
                                    }
                                    Err(e) => Err(format!("{e:#}")),
                                }
                            }
                        };
                        let ok = {
                            let mut log = log
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            match result {
                                Ok(()) => {
                                    log.acked.push(key);
                                    acked.fetch_add(1, Ordering::Relaxed);
                                    true
                                }
                                Err(e) => {
                                    log.failed += 1;
                                    log.last_error = format!("{}: {e}", addrs[cursor]);
                                    false
                                }
                            }
                        };
                        if !ok {
                            client = None;
                            cursor = (cursor + 1) % addrs.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                });
                Ok(())
            })
        };
        Self {
            stop,
            acked,
            log,
            handle: Some(handle),
        }
    }

    /// Acknowledged writes so far.
    #[must_use]
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` writes were acknowledged.
    ///
    /// # Errors
    /// On timeout (with the last failure).
    pub fn wait_acked(&self, n: usize, timeout: Duration) -> Result<()> {
        poll_until(timeout, &format!("{n} acknowledged writes"), || {
            Ok((self.acked() >= n).then_some(()))
        })
        .with_context(|| {
            let log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            format!(
                "{} acknowledged, {} failed, last failure: {}",
                log.acked.len(),
                log.failed,
                log.last_error
            )
        })
    }

    /// Stops the stream and returns what it did.
    ///
    /// # Errors
    /// If the writer thread failed.
    pub fn finish(mut self) -> Result<WriteLog> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle
                .join()
                .map_err(|_| anyhow!("the writer thread panicked"))??;
        }
        let log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(log.clone())
    }
}

impl Drop for LabelWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().ok();
        }
    }
}
