//! `lb-agent` processes and the configuration files the harness writes for them.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use mesh_api::spec::Protocol;

use crate::poll_until;

/// The log line an agent prints once its dataplane is loaded and programmed.
pub const READY_MARKER: &str = "lb-agent ready";
/// The log line an agent prints once a reload (SIGHUP or the file changing) has been applied.
pub const RELOADED_MARKER: &str = "config reloaded";
/// How the agent's log names a reload that SIGHUP triggered.
pub const SIGHUP_TRIGGER: &str = "trigger=\"SIGHUP\"";
/// The log line an agent prints when a reload failed (the dataplane is left unchanged).
pub const RELOAD_FAILED_MARKER: &str = "config reload failed";
/// How long an agent may take to become ready (it loads and attaches eBPF programs).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A port mapping of a `[[services]]` entry: `published` on every node (and on the VIP as `target`)
/// goes to `target` on the tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The port published on every node.
    pub published: u16,
    /// The port the tasks listen on.
    pub target: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// A backend of a service: a task (endpoint) by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Name of the endpoint (the task's name).
    pub endpoint: String,
    /// Relative weight for new flows.
    pub weight: u32,
    /// A draining backend takes no new flows; its established flows go on.
    pub draining: bool,
}

impl BackendSpec {
    /// An active backend of weight 1.
    #[must_use]
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            weight: 1,
            draining: false,
        }
    }
}

/// A `[[services]]` entry of the agents' configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Service name.
    pub name: String,
    /// Virtual IP on the overlay, if any.
    pub vip: Option<Ipv4Addr>,
    /// Port mappings.
    pub ports: Vec<PortEntry>,
    /// Backends.
    pub backends: Vec<BackendSpec>,
    /// `scheduler` (`rr` when `None`).
    pub scheduler: Option<String>,
}

/// A node of the mesh as every agent's `[[peers]]` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Node name (`n1`).
    pub name: String,
    /// Underlay address.
    pub address: Ipv4Addr,
}

/// An endpoint (task address) of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Task name.
    pub name: String,
    /// Task address on the overlay.
    pub address: Ipv4Addr,
    /// Name of the node that runs it.
    pub node: String,
    /// Host side of the task's veth, in the node's namespace.
    pub iface: String,
}

/// Everything one node's configuration file says.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// The underlay interface inside the node's namespace.
    pub underlay: String,
    /// Where the agent pins its programs and maps.
    pub pin_dir: PathBuf,
    /// Address of the agent's metrics server (inside the node's namespace).
    pub metrics_listen: String,
    /// The other nodes.
    pub peers: Vec<PeerSpec>,
    /// Every endpoint of the overlay, local or remote.
    pub endpoints: Vec<EndpointSpec>,
    /// The services.
    pub services: Vec<ServiceEntry>,
}

fn q(s: &str) -> String {
    // TOML basic string; names here are plain ASCII, but escape what needs escaping.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl AgentConfig {
    /// The configuration as `lb-agent`'s TOML file (see `deploy/agent.example.toml`).
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Written by the mesh-tests harness.\n");
        let _ = writeln!(s, "[node]");
        let _ = writeln!(s, "name = {}", q(&self.node));
        let _ = writeln!(s, "underlay = {}\n", q(&self.underlay));
        let _ = writeln!(s, "[dataplane]");
        let _ = writeln!(s, "pin_dir = {}", q(&self.pin_dir.to_string_lossy()));
        // Generic XDP on the veth underlay: with native XDP on a veth, frames sent by
        // XDP_TX wait in the peer's queue until other traffic schedules its NAPI poll
        // (seen here as replies arriving seconds late, in bursts). docs/dataplane.md.
        let _ = writeln!(s, "xdp_mode = \"skb\"\n");
        let _ = writeln!(s, "[metrics]");
        let _ = writeln!(s, "listen = {}\n", q(&self.metrics_listen));
        for p in &self.peers {
            let _ = writeln!(s, "[[peers]]");
            let _ = writeln!(s, "name = {}", q(&p.name));
            let _ = writeln!(s, "address = {}\n", q(&p.address.to_string()));
        }
        for e in &self.endpoints {
            let _ = writeln!(s, "[[endpoints]]");
            let _ = writeln!(s, "name = {}", q(&e.name));
            let _ = writeln!(s, "address = {}", q(&e.address.to_string()));
            let _ = writeln!(s, "node = {}", q(&e.node));
            if e.node == self.node {
                let _ = writeln!(s, "iface = {}", q(&e.iface));
            }
            s.push('\n');
        }
        for svc in &self.services {
            let _ = writeln!(s, "[[services]]");
            let _ = writeln!(s, "name = {}", q(&svc.name));
            if let Some(vip) = svc.vip {
                let _ = writeln!(s, "vip = {}", q(&vip.to_string()));
            }
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|p| {
                    format!(
                        "{{ published = {}, target = {}, protocol = {} }}",
                        p.published,
                        p.target,
                        q(p.protocol.as_str())
                    )
                })
                .collect();
            let _ = writeln!(s, "ports = [{}]", ports.join(", "));
            if let Some(scheduler) = &svc.scheduler {
                let _ = writeln!(s, "scheduler = {}", q(scheduler));
            }
            let backends: Vec<String> = svc
                .backends
                .iter()
                .map(|b| {
                    format!(
                        "{{ endpoint = {}, weight = {}, draining = {} }}",
                        q(&b.endpoint),
                        b.weight,
                        b.draining
                    )
                })
                .collect();
            let _ = writeln!(s, "backends = [\n  {},\n]\n", backends.join(",\n  "));
        }
        s
    }
}

/// A running `lb-agent` in a node's namespace.
#[derive(Debug)]
pub struct Agent {
    ns: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Starts `nsenter --net=/run/netns/<ns> -- <bin> --config <config>`, output appended
    /// to `log`.
    /// Does not wait for readiness: see [`Agent::wait_ready`].
    ///
    /// `detached` starts it in a process group of its own, so that a Ctrl-C meant for the
    /// program that started it (the demo) does not reach it.
    pub fn start(ns: &str, bin: &Path, config: &Path, log: &Path, detached: bool) -> Result<Self> {
        let args = [OsStr::new("--config"), config.as_os_str()];
        let mut agent = Self::spawn(ns, bin, &args, log, detached, None)?;
        config.clone_into(&mut agent.config);
        Ok(agent)
    }

    /// Starts `nsenter --net=/run/netns/<ns> -- <bin> <args>`, output appended to `log`:
    /// an agent with any command line, e.g. a managed one (`--join`, no `--config`).
    /// [`Agent::config_path`] is empty then. Does not wait for readiness.
    ///
    /// `detached` as in [`Agent::start`].
    pub fn spawn(
        ns: &str,
        bin: &Path,
        args: &[&OsStr],
        log: &Path,
        detached: bool,
        bounding_set: Option<&[String]>,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        // Not `ip netns exec`: it gives the process a private mount namespace with a fresh
        // /sys, so the agent would pin into a bpffs of its own that dies with it. `nsenter
        // --net` changes the network namespace only; pins land in the host's bpffs.
        let mut cmd = Command::new("nsenter");
        if detached {
            cmd.process_group(0);
        }
        cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
        if let Some(caps) = bounding_set {
            // As systemd runs the shipped unit: these capabilities only, no new ones.
            let keep: Vec<String> = caps
                .iter()
                .map(|c| format!("+{}", c.to_ascii_lowercase().trim_start_matches("cap_")))
                .collect();
            cmd.args([
                "setpriv",
                "--no-new-privs",
                "--bounding-set",
                &format!("-all,{}", keep.join(",")),
                "--",
            ]);
        }
        let child = cmd
            .arg(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("MESH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {} in {ns}", bin.display()))?;
        Ok(Self {
            ns: ns.to_owned(),
            config: PathBuf::new(),
            log: log.to_owned(),
            child: Some(child),
        })
    }

    /// The agent's pid, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent exited by itself (it is reaped then). `false` while it runs, and
    /// after the harness killed or stopped it.
    pub fn has_exited(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait().context("wait for the agent")?.is_some()),
            None => Ok(false),
        }
    }

    /// The agent's log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The agent's configuration file (empty for one started by [`Agent::spawn`]).
    #[must_use]
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the agent's log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn count(&self, marker: &str) -> usize {
        self.log().lines().filter(|l| l.contains(marker)).count()
    }

    /// Appends the tail of the log to an error, unless it is there already.
    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let msg = format!("{e:#}");
        if msg.contains("its log") {
            return e;
        }
        anyhow::anyhow!(
            "{msg}; its log {} ends with:\n{}",
            self.log.display(),
            self.log_tail(30)
        )
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.as_mut() {
            None => bail!("the agent in {} is not running", self.ns),
            Some(c) => {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "the agent in {} exited ({status}); its log {} ends with:\n{}",
                        self.ns,
                        self.log.display(),
                        self.log_tail(30)
                    );
                }
                Ok(())
            }
        }
    }

    /// Waits until the agent has logged [`READY_MARKER`] `n` times in its log (a restarted
    /// agent appends to the same log), failing early if it exits.
    pub fn wait_ready_count(&mut self, n: usize) -> Result<()> {
        let what = format!("the agent in {} to log `{READY_MARKER}`", self.ns);
        poll_until(READY_TIMEOUT, &what, || {
            self.check_alive()?;
            Ok((self.count(READY_MARKER) >= n).then_some(()))
        })
        .map_err(|e| self.with_log(e))
    }

    /// Waits until the agent has become ready once.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.wait_ready_count(1)
    }

    /// How many reloads the agent has logged (applied, failed): take it before changing
    /// the configuration file, for [`Agent::reload_since`].
    #[must_use]
    pub fn reload_counts(&self) -> (usize, usize) {
        let log = self.log();
        let count = |m: &str| log.lines().filter(|l| l.contains(m)).count();
        let sighup = log
            .lines()
            .filter(|l| l.contains(RELOADED_MARKER) && l.contains(SIGHUP_TRIGGER))
            .count();
        (sighup, count(RELOAD_FAILED_MARKER))
    }

    /// Sends SIGHUP and waits until the agent logs a SIGHUP-triggered [`RELOADED_MARKER`]
    /// more often than in `before` (from [`Agent::reload_counts`]); fails at once if it
    /// logs [`RELOAD_FAILED_MARKER`] or exits.
    ///
    /// Only the reload our own SIGHUP triggers counts: it starts after the rewrite, so it
    /// has read the new file. A reload the file watcher started may have read the file
    /// before the rewrite and still log after it; counting that one made a test go on
    /// before the new configuration was in force.
    pub fn reload_since(&mut self, before: (usize, usize)) -> Result<()> {
        self.check_alive()?;
        let pid = self.pid().context("agent not running")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).context("SIGHUP the agent")?;
        let what = format!("the agent in {} to log `{RELOADED_MARKER}`", self.ns);
        poll_until(Duration::from_secs(15), &what, || {
            self.check_alive()?;
            let (ok, failed) = self.reload_counts();
            if failed > before.1 {
                bail!("the agent in {} logged `{RELOAD_FAILED_MARKER}`", self.ns);
            }
            Ok((ok > before.0).then_some(()))
        })
        .map_err(|e| self.with_log(e))
    }

    /// Sends SIGHUP (the configuration file is unchanged) and waits for the reload.
    pub fn reload(&mut self) -> Result<()> {
        let before = self.reload_counts();
        self.reload_since(before)
    }

    /// Kills the agent with SIGKILL (no cleanup on its side) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().context("reap the agent")?;
        }
        Ok(())
    }

    /// Stops the agent with SIGTERM, and SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let exited = poll_until(grace, "the agent to exit", || Ok(c.try_wait()?.map(drop)));
            if exited.is_err() {
                let _ = c.kill();
            }
            c.wait().context("reap the agent")?;
        }
        Ok(())
    }

    /// Leaves the agent running when this value is dropped (for the demo).
    pub fn detach(&mut self) {
        self.child = None;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
