//! Managed clusters: the managers program the mesh. `mesh-manager`s and `lb-agent --join`s
//! in the node namespaces of a [`Topology`], services created with `meshctl`, and what
//! tests need to watch them: task lists, requests through every node, background load,
//! killing agents, task processes, and cutting nodes off.
//!
//! ```text
//!   <p>-ul: br0 ── <p>-n1 10.99.0.11  mesh-manager (API :4242, /metrics 127.0.0.1:9465)
//!            │                          lb-agent --join (state: the manager's data dir)
//!            ├── <p>-n2 10.99.0.12  [mesh-manager join] lb-agent --join --token <worker>
//!            ├── <p>-n3 10.99.0.13  lb-agent --join --token <worker>
//!            └── <p>-c  10.99.0.100 the client
//! ```
//!
//! Nodes `1..=managers` run a manager; every node runs an agent, with XDP in skb mode on
//! its `eth0` (the reason is in [`crate::agent::AgentConfig::to_toml`]). The agents run
//! the tasks (the process runtime: `task-echo` from [`crate::bin_dir`]) and the dataplane.
//! `meshctl` runs in node 1's namespace with node 1's manager identity.
//!
//! Dropping a [`ManagedCluster`] kills every process it started, every process those
//! started (tasks), and tears down the topology; when a test is panicking, it first prints
//! the tail of every manager's and agent's log (the topology prints the agents').

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::agent::Agent;
use crate::client::{EchoConn, Reply, request_tcp, request_udp};
use crate::cluster::{API_PORT, CtlOutput, MESHCTL_TIMEOUT, METRICS_PORT, WEB_PORT, run_captured};
use crate::netns::{self, ip_in};
use crate::topology::METRICS_LISTEN;
use crate::{Topology, bin, in_netns, poll_until, spawn_in_netns};

/// How long a cluster may take to form: managers elected, every node ready.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to converge after a `meshctl` command.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What an agent started with `--join` and no dataplane logs.
const SESSION_ONLY_MARKER: &str = "cluster session only";

/// How a [`ManagedCluster`] is started.
#[derive(Clone, Debug)]
pub struct ManagedOptions {
    /// Nodes (1 to 9).
    pub nodes: usize,
    /// Nodes `1..=managers` run a manager (1, 3 or 5; at most `nodes`).
    pub managers: usize,
    /// `--heartbeat-ms` of the managers.
    pub heartbeat_ms: u64,
    /// `--heartbeat-misses` of the managers.
    pub heartbeat_misses: u32,
    /// A fixed topology prefix and underlay (the demo); `None`: unique to this process.
    pub prefix: Option<(String, [u8; 3])>,
    /// Start every process in a process group of its own, so they outlive a Ctrl-C aimed
    /// at the program that started them (the demo).
    pub detached: bool,
    /// Agents run with `--docker` (tasks with `--runtime docker`); the engine must answer
    /// ([`crate::images::ensure_docker`]). Dropping the cluster removes every container
    /// its agents started.
    pub docker: bool,
    /// Agents run with these capabilities only in their bounding set (`CAP_BPF`, ...),
    /// and no new privileges, as systemd runs the shipped unit
    /// ([`crate::unit_bounding_set`]); `None`: all of root's.
    pub agent_bounding_set: Option<Vec<String>>,
    /// The agents' DNS upstream (`--dns-upstream`), for names the mesh does not know, is
    /// port 53 of the client's address, where the test serves one
    /// ([`crate::dns::Upstream`]); `false`: the node's `/etc/resolv.conf`.
    pub dns_upstream_on_client: bool,
}

impl ManagedOptions {
    /// `nodes` nodes of which the first `managers` run a manager; a node is down after
    /// 3 missed heartbeats of 500 ms.
    #[must_use]
    pub fn new(nodes: usize, managers: usize) -> Self {
        Self {
            nodes,
            managers,
            heartbeat_ms: 500,
            heartbeat_misses: 3,
            prefix: None,
            detached: false,
            docker: false,
            agent_bounding_set: None,
            dns_upstream_on_client: false,
        }
    }
}

/// One task as `meshctl service ps --format json` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// Task ID, as `meshctl` prints it.
    pub id: String,
    /// `web.3`.
    pub name: String,
    /// The hostname of its node (`n2`); empty while unscheduled.
    pub node: String,
    /// What the leader wants (`Running`, `Shutdown`, `Remove`).
    pub desired: String,
    /// Its observed state (`Running`, `Failed`...), without the "5 seconds ago".
    pub state: String,
    /// Its address on the ingress network.
    pub addr: Option<Ipv4Addr>,
    /// Why it failed, if it did.
    pub error: String,
}

impl TaskRow {
    /// Whether the leader wants it running and it runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.desired.eq_ignore_ascii_case("running") && self.state.eq_ignore_ascii_case("running")
    }

    /// Parses one element of `service ps --format json`. Docker's keys (`ID`, `Name`,
    /// `Node`, `DesiredState`, `CurrentState`, `Error`) and the manager's record's
    /// (`id`, `name`, `node`, `desired`, `status.state`, `addr`) are both understood.
    ///
    /// # Errors
    /// If it has no name or no state.
    pub fn from_json(v: &Value) -> Result<Self> {
        let s = |keys: &[&str]| -> Option<String> {
            keys.iter().find_map(|k| match &v[*k] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        let name = s(&["Name", "name"]).with_context(|| format!("a task without a name: {v}"))?;
        let state = s(&["CurrentState", "State", "state"])
            .or_else(|| v["status"]["state"].as_str().map(str::to_owned))
            .or_else(|| v["Status"]["State"].as_str().map(str::to_owned))
            .with_context(|| format!("task {name} without a state: {v}"))?;
        // "Running 5 seconds ago" -> "Running".
        let state = state
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let addr = s(&["Addr", "Address", "addr"])
            .and_then(|a| a.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok()));
        Ok(Self {
            id: s(&["ID", "Id", "id"]).unwrap_or_default(),
            name,
            node: s(&["Node", "NodeHostname", "node_hostname", "node"]).unwrap_or_default(),
            desired: s(&["DesiredState", "Desired", "desired"]).unwrap_or_default(),
            state,
            addr,
            error: s(&["Error", "error"])
                .or_else(|| v["status"]["error"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        })
    }
}

/// A managed cluster in network namespaces; see the module documentation.
#[derive(Debug)]
pub struct ManagedCluster {
    options: ManagedOptions,
    managers: Vec<Option<Child>>,
    agents: Vec<Option<Agent>>,
    /// The arguments of the worker join command `meshctl cluster join-token worker`
    /// prints (after `lb-agent`): workers join with it as printed, plus only what
    /// isolates them on this one machine (hostname, pin and state directories,
    /// metrics address, XDP mode for veths).
    worker_join: Vec<String>,
    /// Processes that outlived the agent that started them (tasks of a killed agent).
    orphans: Vec<i32>,
    keep: bool,
    /// `--pin-dir` of the agents started with another one than their node's.
    pin_dirs: BTreeMap<usize, PathBuf>,
    // Last: dropped after `Drop::drop` has killed the processes.
    topo: Topology,
}

impl ManagedCluster {
    /// `nodes` nodes, the first `managers` of them managers, every one running an agent;
    /// returns once `meshctl node ls` shows every node ready and every agent has attached
    /// its dataplane.
    ///
    /// # Errors
    /// If a prerequisite or binary is missing, a process exits, or the cluster does not
    /// form within [`FORM_TIMEOUT`]; the error carries the tails of the logs.
    pub fn start(nodes: usize, managers: usize) -> Result<Self> {
        Self::start_with(ManagedOptions::new(nodes, managers))
    }

    /// Like [`ManagedCluster::start`], with every option.
    ///
    /// # Errors
    /// As [`ManagedCluster::start`].
    pub fn start_with(options: ManagedOptions) -> Result<Self> {
        ensure!(
            (1..=options.nodes).contains(&options.managers) && options.managers % 2 == 1,
            "1, 3 or 5 managers, at most one per node"
        );
        let mut topo = match &options.prefix {
            Some((prefix, subnet)) => Topology::with_prefix(prefix, options.nodes, *subnet)?,
            None => Topology::new(options.nodes)?,
        };
        if options.docker {
            crate::images::ensure_docker()?;
        }
        topo.set_detached(options.detached);
        let mut cluster = Self {
            managers: (0..options.nodes).map(|_| None).collect(),
            agents: (0..options.nodes).map(|_| None).collect(),
            options,
            worker_join: Vec::new(),
            orphans: Vec::new(),
            keep: false,
            pin_dirs: BTreeMap::new(),
            topo,
        };
        if let Err(e) = cluster.form() {
            let logs = cluster.logs(40);
            return Err(e.context(format!("the cluster did not form; logs:\n{logs}")));
        }
        Ok(cluster)
    }

    /// `meshctl ARGS` (a `join-token`), retried until it succeeds within
    /// [`FORM_TIMEOUT`]: a manager that just became a voter is counted in the leader's
    /// quorum only once it answered a heartbeat, and until then the leader refuses
    /// (`no quorum`), as it would refuse a user, who would try again.
    fn join_token(&mut self, args: &[&str]) -> Result<String> {
        let mut last = String::new();
        poll_until(FORM_TIMEOUT, "a join token", || {
            self.check_managers()?;
            match self.ctl(args) {
                Ok(out) => Ok(Some(out)),
                Err(e) => {
                    last = format!("{e:#}");
                    Ok(None)
                }
            }
        })
        .map_err(|e| e.context(format!("last failure: {last}")))
    }

    fn form(&mut self) -> Result<()> {
        for k in 1..=self.options.managers {
            if k == 1 {
                self.spawn_manager(1, &["init"])?;
            } else {
                let token = self.join_token(&["cluster", "join-token", "manager", "-q"])?;
                let first = self.api_addr(1).to_string();
                self.spawn_manager(k, &["join", "--token", token.trim(), &first])?;
            }
            let what = format!("the manager on n{k} to vote");
            poll_until(FORM_TIMEOUT, &what, || {
                self.check_managers()?;
                let Ok(info) = self.ctl_json(&["cluster", "inspect", "--format", "json"]) else {
                    return Ok(None);
                };
                let voters = info["Managers"].as_array().map_or(0, |m| {
                    m.iter()
                        .filter(|m| m["Voter"].as_bool() == Some(true))
                        .count()
                });
                Ok(
                    (voters == k && info["LeaderID"].as_str().is_some_and(|l| !l.is_empty()))
                        .then_some(()),
                )
            })?;
        }
        self.worker_join =
            worker_join_command(&self.join_token(&["cluster", "join-token", "worker"])?)?;
        for k in 1..=self.options.nodes {
            self.spawn_agent(k)?;
        }
        self.wait_nodes_ready(FORM_TIMEOUT)?;
        for k in 1..=self.options.nodes {
            let what = format!("the agent on n{k} to attach XDP to eth0");
            let log = self.topo.agent_log_path(k);
            poll_until(FORM_TIMEOUT, &what, || {
                self.check_agents()?;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                ensure!(
                    !text.contains(SESSION_ONLY_MARKER),
                    "the agent on n{k} runs the cluster session only, without a dataplane: \
                     this lb-agent has no managed mode (`--join` with `--underlay`)"
                );
                Ok(self.dataplane_attached(k)?.then_some(()))
            })?;
        }
        Ok(())
    }

    fn spawn_manager(&mut self, k: usize, command: &[&str]) -> Result<()> {
        let ns = self.topo.node_ns(k);
        let data_dir = self.data_dir(k);
        let log = self.manager_log_path(k);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = Command::new("nsenter");
        if self.options.detached {
            cmd.process_group(0);
        }
        let (verb, rest) = command.split_first().context("a manager command")?;
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(bin("mesh-manager")?)
            .arg(verb)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--hostname", &Topology::node_name(k)])
            .args(["--listen-addr", &self.api_addr(k).to_string()])
            .args([
                "--metrics-addr",
                &SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT)).to_string(),
            ])
            .args([
                "--web-addr",
                &SocketAddr::from((Ipv4Addr::LOCALHOST, WEB_PORT)).to_string(),
            ])
            .args(["--heartbeat-ms", &self.options.heartbeat_ms.to_string()])
            .args([
                "--heartbeat-misses",
                &self.options.heartbeat_misses.to_string(),
            ])
            .args(rest)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("MESH_TEST_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("start mesh-manager in {ns}"))?;
        self.managers[k - 1] = Some(child);
        Ok(())
    }

    /// Node `k`'s agent's `--state-dir`: its identity, task records and task logs (a
    /// manager's node shares its manager's data directory).
    #[must_use]
    pub fn agent_state_dir(&self, k: usize) -> PathBuf {
        if self.is_manager(k) {
            self.data_dir(k)
        } else {
            self.topo.dir().join(format!("agent-state-n{k}"))
        }
    }

    /// The command line of node `k`'s agent (after `lb-agent`): a worker joins with the
    /// command `meshctl cluster join-token worker` printed; a manager's node with its
    /// manager's identity.
    fn agent_args(&self, k: usize) -> Vec<String> {
        let mut args = if self.is_manager(k) {
            vec![
                "--join".to_owned(),
                self.hosts(),
                "--underlay".to_owned(),
                "eth0".to_owned(),
                // The manager's node identity: the same node, no token needed.
                "--state-dir".to_owned(),
                self.data_dir(k).to_string_lossy().into_owned(),
            ]
        } else {
            let mut args = self.worker_join.clone();
            args.extend([
                "--state-dir".to_owned(),
                self.agent_state_dir(k).to_string_lossy().into_owned(),
            ]);
            args
        };
        args.extend([
            "--hostname".to_owned(),
            Topology::node_name(k),
            "--xdp-mode".to_owned(),
            "skb".to_owned(),
            "--pin-dir".to_owned(),
            self.pin_dirs
                .get(&k)
                .cloned()
                .unwrap_or_else(|| self.topo.pin_dir(k))
                .to_string_lossy()
                .into_owned(),
            "--metrics-listen".to_owned(),
            METRICS_LISTEN.to_owned(),
        ]);
        if self.options.docker {
            args.push("--docker".to_owned());
        }
        if self.options.dns_upstream_on_client {
            let upstream = SocketAddr::from((self.topo.client_addr(), 53));
            args.extend(["--dns-upstream".to_owned(), upstream.to_string()]);
        }
        args
    }

    fn spawn_agent(&mut self, k: usize) -> Result<()> {
        let args = self.agent_args(k);
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let agent = Agent::spawn(
            &self.topo.node_ns(k),
            &bin("lb-agent")?,
            &args,
            &self.topo.agent_log_path(k),
            self.options.detached,
            self.options.agent_bounding_set.as_deref(),
        )?;
        self.agents[k - 1] = Some(agent);
        Ok(())
    }

    /// Fails if a manager the harness started has exited.
    fn check_managers(&mut self) -> Result<()> {
        for k in 1..=self.options.nodes {
            if let Some(child) = self.managers[k - 1].as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.managers[k - 1] = None;
                bail!(
                    "the manager on n{k} exited ({status}); its log ends with:\n{}",
                    tail(&self.manager_log_path(k), 30)
                );
            }
        }
        Ok(())
    }

    /// Fails if an agent the harness started has exited.
    fn check_agents(&mut self) -> Result<()> {
        for k in 1..=self.options.nodes {
            if let Some(agent) = self.agents[k - 1].as_mut()
                && agent.has_exited()?
            {
                self.agents[k - 1] = None;
                bail!(
                    "the agent on n{k} exited; its log ends with:\n{}",
                    tail(&self.topo.agent_log_path(k), 30)
                );
            }
        }
        Ok(())
    }

    /// Waits until `node ls` shows every node `Ready`.
    ///
    /// # Errors
    /// On timeout, or if a process the harness started exits.
    pub fn wait_nodes_ready(&mut self, timeout: Duration) -> Result<()> {
        let want: BTreeSet<String> = (1..=self.options.nodes).map(Topology::node_name).collect();
        poll_until(timeout, "every node to be ready", || {
            self.check_managers()?;
            self.check_agents()?;
            let Ok(ready) = self.ready_nodes() else {
                return Ok(None);
            };
            Ok((ready == want).then_some(()))
        })
    }

    /// Hostnames of the nodes `node ls` shows `Ready`.
    ///
    /// # Errors
    /// If `meshctl` fails.
    pub fn ready_nodes(&self) -> Result<BTreeSet<String>> {
        let nodes = self.ctl_json(&["node", "ls", "--format", "json"])?;
        let nodes = nodes.as_array().context("node ls printed no list")?;
        Ok(nodes
            .iter()
            .filter(|n| {
                n["Status"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("ready"))
            })
            .filter_map(|n| n["Hostname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Whether an XDP program is attached to node `k`'s `eth0`.
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn dataplane_attached(&self, k: usize) -> Result<bool> {
        let link = ip_in(&self.topo.node_ns(k), &["-d", "link", "show", "eth0"])?;
        Ok(link.contains("xdp"))
    }

    /// The topology underneath (namespaces, addresses, the client).
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Number of nodes.
    #[must_use]
    pub fn nodes(&self) -> usize {
        self.options.nodes
    }

    /// Whether node `k` runs a manager.
    #[must_use]
    pub fn is_manager(&self, k: usize) -> bool {
        (1..=self.options.managers).contains(&k)
    }

    /// Node `k`'s underlay address (the address its published ports answer on).
    #[must_use]
    pub fn node_addr(&self, k: usize) -> Ipv4Addr {
        self.topo.node_addr(k)
    }

    /// Node `k`'s hostname (`n1`).
    #[must_use]
    pub fn node_name(k: usize) -> String {
        Topology::node_name(k)
    }

    /// Node `k` for a hostname `nK`.
    #[must_use]
    pub fn node_index(hostname: &str) -> Option<usize> {
        hostname.strip_prefix('n')?.parse().ok()
    }

    /// Manager `k`'s API address: node `k`'s underlay address, port [`API_PORT`].
    #[must_use]
    pub fn api_addr(&self, k: usize) -> SocketAddr {
        SocketAddr::from((self.topo.node_addr(k), API_PORT))
    }

    /// Every manager's API address, comma-separated (`--join`, `MESH_HOST`).
    #[must_use]
    pub fn hosts(&self) -> String {
        (1..=self.options.managers)
            .map(|k| self.api_addr(k).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Manager `k`'s data directory (its TLS identity is in `tls/`).
    #[must_use]
    pub fn data_dir(&self, k: usize) -> PathBuf {
        self.topo.dir().join(format!("manager-n{k}"))
    }

    /// Manager `k`'s log.
    #[must_use]
    pub fn manager_log_path(&self, k: usize) -> PathBuf {
        self.topo.dir().join(format!("manager-n{k}.log"))
    }

    /// Node `k`'s agent log.
    #[must_use]
    pub fn agent_log_path(&self, k: usize) -> PathBuf {
        self.topo.agent_log_path(k)
    }

    /// Runs `meshctl ARGS` in node 1's namespace as node 1's manager, against every
    /// manager (`MESH_HOST`).
    ///
    /// # Errors
    /// If it cannot run or does not finish within [`MESHCTL_TIMEOUT`]; its own failure
    /// is in the returned [`CtlOutput`].
    pub fn meshctl(&self, args: &[&str]) -> Result<CtlOutput> {
        self.meshctl_timeout(args, MESHCTL_TIMEOUT)
    }

    /// [`ManagedCluster::meshctl`] with a timeout of its own (a rolling update waits for
    /// the service to converge).
    ///
    /// # Errors
    /// As [`ManagedCluster::meshctl`].
    pub fn meshctl_timeout(&self, args: &[&str], timeout: Duration) -> Result<CtlOutput> {
        run_captured(self.meshctl_command(args)?, timeout)
    }

    /// `meshctl ARGS` as a command in node 1's network namespace, talking to the
    /// cluster's managers with node 1's identity. `nsenter` execs `meshctl`: signals to
    /// the child reach `meshctl` itself.
    fn meshctl_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.topo.node_ns(1)))
            .arg("--")
            .arg(bin("meshctl")?)
            .args(args)
            .env("MESH_HOST", self.hosts())
            .env("MESH_TLS_DIR", self.data_dir(1).join("tls"))
            .env("NO_COLOR", "1");
        Ok(cmd)
    }

    /// [`ManagedCluster::meshctl`] with `env` added to its environment (a compose file's
    /// variables for `stack deploy`) and a timeout of its own.
    ///
    /// # Errors
    /// As [`ManagedCluster::meshctl`].
    pub fn meshctl_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<CtlOutput> {
        let mut cmd = self.meshctl_command(args)?;
        cmd.envs(env.iter().copied());
        run_captured(cmd, timeout)
    }

    /// [`ManagedCluster::meshctl`] with `input` on its standard input (`secret create
    /// NAME -`).
    ///
    /// # Errors
    /// As [`ManagedCluster::meshctl`].
    pub fn meshctl_with_input(&self, args: &[&str], input: &[u8]) -> Result<CtlOutput> {
        crate::cluster::run_captured_with_input(self.meshctl_command(args)?, input, MESHCTL_TIMEOUT)
    }

    /// Starts `meshctl ARGS` as [`ManagedCluster::meshctl`] does, without waiting for
    /// it: a command that runs until stopped (`service logs -f`), its output collected
    /// as it comes ([`CtlChild`]).
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn meshctl_spawn(&self, args: &[&str]) -> Result<CtlChild> {
        CtlChild::spawn(self.meshctl_command(args)?)
    }

    /// Runs `meshctl ARGS` and returns its standard output.
    ///
    /// # Errors
    /// If it fails; the error holds what it printed.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_timeout(args, MESHCTL_TIMEOUT)
    }

    /// [`ManagedCluster::ctl`] with a timeout of its own.
    ///
    /// # Errors
    /// As [`ManagedCluster::ctl`].
    pub fn ctl_timeout(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let out = self.meshctl_timeout(args, timeout)?;
        ensure!(
            out.success(),
            "meshctl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", out.stdout.trim())
            }
        );
        Ok(out.stdout)
    }

    /// Runs `meshctl ARGS` and parses its JSON output.
    ///
    /// # Errors
    /// If it fails or prints no JSON.
    pub fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.ctl(args)?;
        serde_json::from_str(&out).with_context(|| format!("meshctl printed no JSON: {out}"))
    }

    /// `service`'s VIP on the user network `network`, from `service inspect`'s
    /// `Endpoint.VirtualIPs` and the network's ID in `network inspect`.
    ///
    /// # Errors
    /// If either command fails or the service has no VIP there.
    pub fn vip_on(&self, service: &str, network: &str) -> Result<Ipv4Addr> {
        let net = self.ctl_json(&["network", "inspect", network])?;
        let id = net[0]["Id"]
            .as_str()
            .with_context(|| format!("network {network} without an Id: {net}"))?
            .to_owned();
        let v = self.ctl_json(&["service", "inspect", service])?;
        v[0]["Endpoint"]["VirtualIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|vip| vip["NetworkID"] == id.as_str())
            .and_then(|vip| vip["Addr"].as_str())
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("{service} has no VIP on {network}: {v}"))
    }

    /// `service ps NAME --format json`: every task of the service the managers know,
    /// current and past.
    ///
    /// # Errors
    /// If `meshctl` fails or prints something else.
    pub fn service_tasks(&self, name: &str) -> Result<Vec<TaskRow>> {
        match self.ctl_json(&["service", "ps", name, "--format", "json"])? {
            Value::Array(tasks) => tasks.iter().map(TaskRow::from_json).collect(),
            other => bail!("service ps printed {other}"),
        }
    }

    /// The service's tasks that run and are meant to.
    ///
    /// # Errors
    /// As [`ManagedCluster::service_tasks`].
    pub fn running_tasks(&self, name: &str) -> Result<Vec<TaskRow>> {
        Ok(self
            .service_tasks(name)?
            .into_iter()
            .filter(TaskRow::is_running)
            .collect())
    }

    /// Waits until exactly `n` tasks of the service run, and no other task is meant to
    /// run (none starting, none pending); returns them.
    ///
    /// # Errors
    /// On timeout (with the last task list), or if a process the harness started exits.
    pub fn wait_converged(&mut self, name: &str, n: usize) -> Result<Vec<TaskRow>> {
        let mut last = Vec::new();
        let what = format!("service {name} to run {n} tasks");
        poll_until(CONVERGE_TIMEOUT, &what, || {
            self.check_managers()?;
            let Ok(tasks) = self.service_tasks(name) else {
                return Ok(None);
            };
            let running: Vec<TaskRow> = tasks.iter().filter(|t| t.is_running()).cloned().collect();
            let wanted = tasks
                .iter()
                .filter(|t| t.desired.eq_ignore_ascii_case("running"))
                .count();
            last = tasks;
            Ok((running.len() == n && wanted == n).then_some(running))
        })
        .map_err(|e| e.context(format!("last `service ps {name}`:\n{}", rows(&last))))
    }

    /// Requests through node `k`'s published TCP `port` from the client, until one is
    /// answered (a port a node was just told to publish may take a moment).
    ///
    /// # Errors
    /// If none is answered within `timeout`.
    pub fn wait_answered(&self, k: usize, port: u16, timeout: Duration) -> Result<Reply> {
        let mut last = String::new();
        let what = format!("n{k}:{port} to answer");
        poll_until(timeout, &what, || match self.request(k, port) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                last = format!("{e:#}");
                Ok(None)
            }
        })
        .map_err(|e| e.context(format!("last failure: {last}")))
    }

    /// One TCP request from the client to node `k`'s `port`: connect, banner, close.
    ///
    /// # Errors
    /// If it is not answered.
    pub fn request(&self, k: usize, port: u16) -> Result<Reply> {
        let addr = SocketAddr::from((self.node_addr(k), port));
        in_netns(&self.topo.client_ns(), move || request_tcp(addr))?
    }

    /// One UDP request from the client to node `k`'s `port`; the banner and the echo.
    ///
    /// # Errors
    /// If it is not answered.
    pub fn request_udp(&self, k: usize, port: u16, payload: &[u8]) -> Result<(Reply, Vec<u8>)> {
        let addr = SocketAddr::from((self.node_addr(k), port));
        let payload = payload.to_vec();
        in_netns(&self.topo.client_ns(), move || request_udp(addr, &payload))?
    }

    /// `n` TCP requests through each node in turn; fails at the first unanswered one.
    ///
    /// # Errors
    /// If a request is not answered.
    pub fn requests_everywhere(&self, port: u16, n: usize) -> Result<Vec<(usize, Reply)>> {
        let addrs: Vec<(usize, SocketAddr)> = (1..=self.nodes())
            .map(|k| (k, SocketAddr::from((self.node_addr(k), port))))
            .collect();
        in_netns(&self.topo.client_ns(), move || {
            let mut out = Vec::new();
            for (k, addr) in addrs {
                for i in 0..n {
                    let r = request_tcp(addr).with_context(|| format!("request {i} via n{k}"))?;
                    out.push((k, r));
                }
            }
            Ok(out)
        })?
    }

    /// Requests through every node until each has been answered by every task in
    /// `tasks` (names); fails on the first unanswered request or after `timeout`.
    ///
    /// # Errors
    /// On a failed request, an answer from a task not in `tasks`, or timeout.
    pub fn wait_every_node_reaches(
        &self,
        port: u16,
        tasks: &BTreeSet<String>,
        timeout: Duration,
    ) -> Result<()> {
        let mut seen: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        let what = format!("every node to reach every one of {tasks:?}");
        poll_until(timeout, &what, || {
            for (k, r) in self.requests_everywhere(port, tasks.len().max(4))? {
                ensure!(
                    tasks.contains(&r.task),
                    "n{k}:{port} was answered by {}, not one of {tasks:?}",
                    r.task
                );
                seen.entry(k).or_default().insert(r.task);
            }
            Ok((1..=self.nodes())
                .all(|k| seen.get(&k).is_some_and(|s| s == tasks))
                .then_some(()))
        })
        .map_err(|e| e.context(format!("seen so far: {seen:?}")))
    }

    /// A TCP connection from the client through node `k`'s `port`, banner read; usable
    /// from any thread.
    ///
    /// # Errors
    /// If it is not answered.
    pub fn connect(&self, k: usize, port: u16) -> Result<EchoConn> {
        let addr = SocketAddr::from((self.node_addr(k), port));
        in_netns(&self.topo.client_ns(), move || EchoConn::connect(addr))?
    }

    /// As [`ManagedCluster::connect`], from the client's local port `local_port`: one
    /// outside the ephemeral range for a connection held while [`ManagedCluster::start_load`]
    /// runs (see [`EchoConn::connect_from`]).
    ///
    /// # Errors
    /// If it is not answered.
    pub fn connect_from(&self, k: usize, port: u16, local_port: u16) -> Result<EchoConn> {
        let addr = SocketAddr::from((self.node_addr(k), port));
        in_netns(&self.topo.client_ns(), move || {
            EchoConn::connect_from(addr, local_port)
        })?
    }

    /// Starts background load from the client: one new connection after another through
    /// each node in turn to `port`, until [`Load::stop`].
    ///
    /// # Errors
    /// If the client thread cannot start.
    pub fn start_load(&self, port: u16) -> Result<Load> {
        Load::start(
            &self.topo.client_ns(),
            (1..=self.nodes())
                .map(|k| (k, SocketAddr::from((self.node_addr(k), port))))
                .collect(),
        )
    }

    /// Runs `args` inside the network, mount, PID and UTS namespaces of the process task
    /// `task` (as `service ps` lists it): what the task sees (`/proc/self` is the
    /// command's own in the task's `/proc`).
    ///
    /// # Errors
    /// If the task has no process here or `nsenter` cannot run.
    pub fn in_task(&self, task: &TaskRow, args: &[&str]) -> Result<std::process::Output> {
        let pid = *self
            .task_pids(&task.id)
            .first()
            .with_context(|| format!("no process of task {} ({})", task.name, task.id))?;
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "-m", "-p", "-u", "--"])
            .args(args)
            .output()
            .with_context(|| format!("nsenter into {}", task.name))
    }

    /// Pids of the processes of task `id` (from `service ps`): those whose environment
    /// says `MESH_TASK_ID=<id>` (IDs may be printed shortened: a prefix matches).
    #[must_use]
    pub fn task_pids(&self, id: &str) -> Vec<i32> {
        let id = id.to_ascii_lowercase();
        if id.is_empty() {
            return Vec::new();
        }
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let found = environ.split(|&b| b == 0).any(|var| {
                var.strip_prefix(b"MESH_TASK_ID=").is_some_and(|v| {
                    let v = String::from_utf8_lossy(v).to_ascii_lowercase();
                    !v.is_empty() && (v.starts_with(&id) || id.starts_with(&v))
                })
            });
            if found {
                pids.push(pid);
            }
        }
        pids
    }

    /// The docker containers this cluster's agents started (running or not): those whose
    /// owner label ([`lb_agent::runtime::docker::LABEL_OWNER`], the agent's state
    /// directory) lies in this cluster's directory.
    ///
    /// # Errors
    /// If `docker ps` fails.
    pub fn containers(&self) -> Result<Vec<Container>> {
        use lb_agent::runtime::docker::{LABEL_OWNER, LABEL_TASK_NAME};
        let format = format!(
            "{{{{.ID}}}}\t{{{{.Names}}}}\t{{{{.Image}}}}\t{{{{.State}}}}\t\
             {{{{.Label \"{LABEL_TASK_NAME}\"}}}}\t{{{{.Label \"{LABEL_OWNER}\"}}}}"
        );
        let out = crate::images::docker(&[
            "ps",
            "--all",
            "--no-trunc",
            "--filter",
            &format!("label={LABEL_OWNER}"),
            "--format",
            &format,
        ])?;
        let dir = std::fs::canonicalize(self.topo.dir()).unwrap_or_else(|_| self.topo.dir().into());
        Ok(out
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let [id, name, image, state, task, owner] = f[..] else {
                    return None;
                };
                Path::new(owner).starts_with(&dir).then(|| Container {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    image: image.to_owned(),
                    state: state.to_owned(),
                    task: task.to_owned(),
                })
            })
            .collect())
    }

    /// `kill -9` of task `id`'s processes (as the task's program crashing would).
    ///
    /// # Errors
    /// If no process of the task is found.
    pub fn kill_task(&self, id: &str) -> Result<Vec<i32>> {
        let pids = self.task_pids(id);
        ensure!(!pids.is_empty(), "no process has MESH_TASK_ID={id}");
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(pids)
    }

    /// The node whose manager leads, as `node ls` through the running managers says.
    ///
    /// # Errors
    /// If `node ls` fails or names no leader.
    pub fn leader(&self) -> Result<usize> {
        let nodes = self.ctl_json(&["node", "ls", "--format", "json"])?;
        let leader = nodes
            .as_array()
            .context("node ls is not a list")?
            .iter()
            .find(|n| n["ManagerStatus"] == "Leader")
            .and_then(|n| n["Hostname"].as_str())
            .context("node ls names no leader")?;
        Self::node_index(leader).with_context(|| format!("leader {leader:?} is no node"))
    }

    /// `kill -9` of node `k`'s manager (its agent goes on).
    ///
    /// # Errors
    /// If it is not running.
    pub fn kill_manager(&mut self, k: usize) -> Result<()> {
        let mut child = self.managers[k - 1]
            .take()
            .with_context(|| format!("no manager runs on n{k}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Starts node `k`'s manager again (`mesh-manager run` on its data directory)
    /// after [`ManagedCluster::kill_manager`]; does not wait.
    ///
    /// # Errors
    /// If it still runs or cannot start.
    pub fn restart_manager(&mut self, k: usize) -> Result<()> {
        ensure!(
            self.managers[k - 1].is_none(),
            "the manager on n{k} still runs"
        );
        self.spawn_manager(k, &["run"])
    }

    /// `kill -9` of node `k`'s agent. The tasks it started go on running (they are
    /// killed when the cluster is dropped).
    ///
    /// # Errors
    /// If it is not running.
    pub fn kill_agent(&mut self, k: usize) -> Result<()> {
        let agent = self.agents[k - 1]
            .as_mut()
            .with_context(|| format!("no agent runs on n{k}"))?;
        let pid = agent.pid().context("the agent is not running")?;
        self.orphans.extend(descendants(pid));
        agent.kill9()
    }

    /// Stops node `k`'s agent with SIGTERM (SIGKILL after 15 s); whatever it leaves
    /// running is killed when the cluster is dropped.
    ///
    /// # Errors
    /// If it is not running.
    pub fn stop_agent(&mut self, k: usize) -> Result<()> {
        let agent = self.agents[k - 1]
            .as_mut()
            .with_context(|| format!("no agent runs on n{k}"))?;
        let pid = agent.pid().context("the agent is not running")?;
        self.orphans.extend(descendants(pid));
        agent.stop(Duration::from_secs(15))
    }

    /// Starts node `k`'s agent again (after [`ManagedCluster::kill_agent`] or
    /// [`ManagedCluster::stop_agent`]), with the same identity; does not wait.
    ///
    /// # Errors
    /// If it still runs or cannot start.
    pub fn restart_agent(&mut self, k: usize) -> Result<()> {
        ensure!(
            self.agents[k - 1].as_ref().and_then(Agent::pid).is_none(),
            "the agent on n{k} still runs"
        );
        self.spawn_agent(k)
    }

    /// Starts node `k`'s agent again (as [`ManagedCluster::restart_agent`]) with
    /// `--pin-dir pin_dir` (`None`: its node's own), e.g. one it cannot use.
    ///
    /// # Errors
    /// If it still runs or cannot start.
    pub fn restart_agent_with_pin_dir(&mut self, k: usize, pin_dir: Option<PathBuf>) -> Result<()> {
        match pin_dir {
            Some(dir) => self.pin_dirs.insert(k, dir),
            None => self.pin_dirs.remove(&k),
        };
        self.restart_agent(k)
    }

    /// Cuts node `k` off the underlay: its port on the bridge goes down, so nothing
    /// reaches it and it reaches nothing (a pulled cable).
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn cut_off(&self, k: usize) -> Result<()> {
        ip_in(
            &self.topo.underlay_ns(),
            &["link", "set", &format!("n{k}"), "down"],
        )
        .map(drop)
    }

    /// Plugs node `k` back in after [`ManagedCluster::cut_off`].
    ///
    /// # Errors
    /// If `ip` fails.
    pub fn reconnect(&self, k: usize) -> Result<()> {
        ip_in(
            &self.topo.underlay_ns(),
            &["link", "set", &format!("n{k}"), "up"],
        )
        .map(drop)
    }

    /// The tail of every manager's and agent's log.
    #[must_use]
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for k in 1..=self.options.managers {
            let path = self.manager_log_path(k);
            s.push_str(&format!(
                "--- manager n{k} ({}) ---\n{}\n",
                path.display(),
                tail(&path, lines)
            ));
        }
        s.push_str(&self.topo.agent_logs(lines));
        s
    }

    /// Leaves everything running when the cluster is dropped (the demo).
    pub fn keep(&mut self) {
        self.keep = true;
        for m in &mut self.managers {
            *m = None;
        }
        for a in self.agents.iter_mut().flatten() {
            a.detach();
        }
        self.topo.keep();
    }
}

impl Drop for ManagedCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::thread::panicking() {
            // The topology prints the agents' logs when it is dropped.
            for k in 1..=self.options.managers {
                let path = self.manager_log_path(k);
                eprintln!(
                    "--- manager n{k} ({}) ---\n{}",
                    path.display(),
                    tail(&path, 40)
                );
            }
        }
        let mut pids = std::mem::take(&mut self.orphans);
        for a in self.agents.iter().flatten() {
            if let Some(pid) = a.pid() {
                pids.extend(descendants(pid));
            }
        }
        let node_ns: Vec<String> = (1..=self.options.nodes)
            .map(|k| self.topo.node_ns(k))
            .collect();
        let mut task_nets = task_namespaces(&pids, &node_ns);
        for m in self.managers.iter_mut().flatten() {
            let _ = m.kill();
            let _ = m.wait();
        }
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill9();
        }
        // Every task the agents recorded, whether its process still runs, had ended
        // (its namespace not removed yet), or was adopted by a restarted agent (no
        // longer its descendant): its namespace and whatever runs in it.
        let mut task_ids = Vec::new();
        for k in 1..=self.options.nodes {
            let records =
                lb_agent::runtime::record::list(&self.agent_state_dir(k)).unwrap_or_default();
            for (id, _) in records {
                let ns =
                    lb_agent::runtime::netns::path(&lb_agent::runtime::process::netns_name(id));
                pids.extend(lb_agent::runtime::netns::processes_in(&ns).unwrap_or_default());
                task_nets.extend(netns_inode(&ns.to_string_lossy()));
                task_ids.push(id);
            }
        }
        kill_and_delete(&pids, &task_nets);
        // Their cgroups, empty now.
        let cgroups = lb_agent::runtime::cgroup::Cgroups::discover();
        let controllers = lb_agent::runtime::cgroup::Controllers::discover(cgroups.as_ref(), false);
        for id in task_ids {
            if let Some(cgroups) = &cgroups {
                let _ = std::fs::remove_dir(cgroups.path(id));
            }
            // Those of their limits on a hybrid host (cgroup v1).
            for dir in controllers.v1_paths(id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if self.options.docker {
            // The agents leave their containers running (as they would across a
            // restart): remove them.
            match self.containers() {
                Ok(left) if !left.is_empty() => {
                    let mut args = vec!["rm", "--force", "--volumes"];
                    args.extend(left.iter().map(|c| c.id.as_str()));
                    if let Err(e) = crate::images::docker(&args) {
                        eprintln!("removing the cluster's containers: {e:#}");
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("listing the cluster's containers: {e:#}"),
            }
        }
    }
}

/// A docker container of a task, as `docker ps` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The container's ID.
    pub id: String,
    /// Its name (`<task name>.<task id>`).
    pub name: String,
    /// Its image (`mesh-echo:v1`).
    pub image: String,
    /// `running`, `exited`, `created`...
    pub state: String,
    /// Its task's name (`web.3`).
    pub task: String,
}

/// The network namespaces (inodes) of `pids`, other than the nodes' own: the tasks'
/// namespaces, whatever the runtime named them.
fn task_namespaces(pids: &[i32], node_ns: &[String]) -> BTreeSet<u64> {
    let node_nets: BTreeSet<u64> = node_ns
        .iter()
        .filter_map(|ns| netns_inode(&format!("/run/netns/{ns}")))
        .collect();
    pids.iter()
        .filter_map(|pid| netns_inode(&format!("/proc/{pid}/ns/net")))
        .filter(|ino| !node_nets.contains(ino))
        .collect()
}

/// SIGKILLs `pids`, then deletes the named network namespaces among `nets`.
fn kill_and_delete(pids: &[i32], nets: &BTreeSet<u64>) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Ok(names) = netns::list_netns() {
        for name in names {
            if netns_inode(&format!("/run/netns/{name}")).is_some_and(|i| nets.contains(&i)) {
                let _ = netns::ip(&["netns", "del", &name]);
            }
        }
    }
}

/// Tears down what a [`ManagedCluster`] with `prefix` left running ([`ManagedCluster::keep`],
/// the demo): the tasks its agents started and their namespaces, then every process and
/// namespace of the topology ([`crate::teardown_prefix`]).
///
/// # Errors
/// As [`crate::teardown_prefix`].
pub fn teardown_managed(prefix: &str) -> Result<()> {
    let node_ns: Vec<String> = netns::list_netns()?
        .into_iter()
        .filter(|n| {
            n.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix("-n"))
                .is_some_and(|k| k.parse::<usize>().is_ok())
        })
        .collect();
    let mut pids = Vec::new();
    for ns in &node_ns {
        for pid in netns::netns_pids(ns) {
            pids.extend(u32::try_from(pid).map(descendants).unwrap_or_default());
        }
    }
    let nets = task_namespaces(&pids, &node_ns);
    kill_and_delete(&pids, &nets);
    crate::teardown_prefix(prefix)
}

/// The inode of a network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`), which
/// names the namespace.
fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// A background client: new TCP connections one after another through each node in turn,
/// each answered or counted as a failure.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    handle: Option<JoinHandle<Result<()>>>,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Requests answered.
    pub ok: usize,
    /// Requests not answered: `(node, error)`.
    pub failed: Vec<(usize, String)>,
    /// Answers per tag (`-` for untagged tasks).
    pub by_tag: BTreeMap<String, usize>,
    /// Answers per task name.
    pub by_task: BTreeMap<String, usize>,
}

impl Load {
    fn start(client_ns: &str, targets: Vec<(usize, SocketAddr)>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let handle = {
            let (stop, stats) = (stop.clone(), stats.clone());
            spawn_in_netns(client_ns, move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (k, addr) = targets[i % targets.len()];
                    i += 1;
                    let result = request_tcp(addr);
                    let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(r) => {
                            s.ok += 1;
                            *s.by_tag
                                .entry(r.tag.clone().unwrap_or_else(|| "-".into()))
                                .or_default() += 1;
                            *s.by_task.entry(r.task).or_default() += 1;
                        }
                        Err(e) => s.failed.push((k, format!("{e:#}"))),
                    }
                }
            })?
        };
        Ok(Self {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    /// What it saw so far.
    #[must_use]
    pub fn stats(&self) -> LoadStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` more requests have been answered than `since.ok`
    /// (to be sure the load ran across some event).
    ///
    /// # Errors
    /// On timeout.
    pub fn wait_more(&self, since: &LoadStats, n: usize, timeout: Duration) -> Result<()> {
        poll_until(timeout, &format!("{n} more answered requests"), || {
            Ok((self.stats().ok >= since.ok + n).then_some(()))
        })
    }

    /// Stops the client and returns what it saw.
    ///
    /// # Errors
    /// If the client thread failed.
    pub fn stop(mut self) -> Result<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| anyhow!("the load thread panicked"))??;
        }
        Ok(self.stats())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The processes below `pid` (children, their children...), from `/proc/*/stat`.
#[must_use]
pub fn descendants(pid: u32) -> Vec<i32> {
    let Ok(root) = i32::try_from(pid) else {
        return Vec::new();
    };
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// A task list, one line per task, for error messages.
#[must_use]
pub fn rows(tasks: &[TaskRow]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "  {:<10} {:<18} node={:<4} desired={:<9} state={:<9} addr={} {}",
                t.name,
                t.id,
                t.node,
                t.desired,
                t.state,
                t.addr.map(|a| a.to_string()).unwrap_or_default(),
                t.error
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Tasks per node hostname.
#[must_use]
pub fn per_node(tasks: &[TaskRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        *m.entry(t.node.clone()).or_default() += 1;
    }
    m
}

/// The arguments (after `lb-agent`) of the join command in what `meshctl cluster
/// join-token worker` prints.
///
/// # Errors
/// If it prints no `lb-agent` command.
fn worker_join_command(printed: &str) -> Result<Vec<String>> {
    let line = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("lb-agent "))
        .with_context(|| format!("no `lb-agent` join command in:\n{printed}"))?;
    Ok(line.split_whitespace().skip(1).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_rows_from_docker_and_record_keys() {
        let docker = serde_json::json!({
            "ID": "3f2a", "Name": "web.2", "Node": "n3", "DesiredState": "Running",
            "CurrentState": "Running 4 seconds ago", "Error": "", "Addr": "10.255.0.5"
        });
        let t = TaskRow::from_json(&docker).unwrap();
        assert_eq!(t.name, "web.2");
        assert_eq!(t.node, "n3");
        assert!(t.is_running());
        assert_eq!(t.addr, Some(Ipv4Addr::new(10, 255, 0, 5)));
        let record = serde_json::json!({
            "id": "00ab", "name": "web.1", "node": "n1", "desired": "shutdown",
            "status": {"state": "failed", "error": "exit 137"}
        });
        let t = TaskRow::from_json(&record).unwrap();
        assert!(!t.is_running());
        assert_eq!(t.state, "failed");
        assert_eq!(t.error, "exit 137");
        assert!(TaskRow::from_json(&serde_json::json!({"Name": "x"})).is_err());
    }

    #[test]
    fn per_node_counts() {
        let t = |n: &str| TaskRow {
            id: String::new(),
            name: String::new(),
            node: n.into(),
            desired: String::new(),
            state: String::new(),
            addr: None,
            error: String::new(),
        };
        let m = per_node(&[t("n1"), t("n2"), t("n1")]);
        assert_eq!(m["n1"], 2);
        assert_eq!(m["n2"], 1);
    }

    #[test]
    fn node_index_of_hostname() {
        assert_eq!(ManagedCluster::node_index("n3"), Some(3));
        assert_eq!(ManagedCluster::node_index("m3"), None);
    }

    #[test]
    fn the_printed_worker_join_command_is_read_as_printed() {
        let printed = "To add a worker to this cluster, run the following command:\n\n    \
                       lb-agent --join 10.0.0.1:4242 --token MESHTKN-1-a-b --underlay auto\n\n";
        assert_eq!(
            worker_join_command(printed).unwrap(),
            [
                "--join",
                "10.0.0.1:4242",
                "--token",
                "MESHTKN-1-a-b",
                "--underlay",
                "auto"
            ]
        );
        assert!(worker_join_command("nothing here").is_err());
    }
}

/// A `meshctl` left running ([`ManagedCluster::meshctl_spawn`]): what it printed so
/// far, line by line. Killed when dropped.
#[derive(Debug)]
pub struct CtlChild {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl CtlChild {
    fn spawn(mut cmd: Command) -> Result<Self> {
        use std::io::{BufRead as _, BufReader, Read as _};
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        let mut err = child.stderr.take().context("stderr")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = Arc::clone(&stdout);
        let text = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }),
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    text.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        Ok(Self {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// The lines it printed on standard output so far.
    #[must_use]
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What it printed on standard error so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `f` finds something in its standard output.
    ///
    /// # Errors
    /// If it exits first, or `timeout` passes; the error holds what it printed.
    pub fn wait_stdout<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T> {
        poll_until(timeout, what, || {
            if let Some(found) = f(&self.stdout()) {
                return Ok(Some(found));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "meshctl exited ({status}) before {what}:\n{}\n{}",
                    self.stdout().join("\n"),
                    self.stderr()
                );
            }
            Ok(None)
        })
        .with_context(|| {
            format!(
                "meshctl printed:\n{}\n{}",
                self.stdout().join("\n"),
                self.stderr()
            )
        })
    }

    /// Sends it `signal`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid")?;
        kill(Pid::from_raw(pid), signal).context("signalling meshctl")
    }

    /// Waits for it to exit, and for its output to be read whole.
    ///
    /// # Errors
    /// If it does not exit within `timeout` (it is killed then).
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let status = poll_until(timeout, "meshctl to exit", || Ok(self.child.try_wait()?));
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                self.child.kill().ok();
                self.child.wait().ok();
                return Err(e.context(format!(
                    "meshctl printed:\n{}\n{}",
                    self.stdout().join("\n"),
                    self.stderr()
                )));
            }
        };
        for reader in self.readers.drain(..) {
            reader.join().ok();
        }
        Ok(status)
    }
}

impl Drop for CtlChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}
