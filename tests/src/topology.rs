//! The test topology: an underlay bridge, nodes, a client, tasks and agents, all in
//! network namespaces named with a prefix unique to the topology.
//!
//! ```text
//!   <p>-ul:  br0 ── n1 ── (veth) ── eth0 <p>-n1 10.99.0.11 ── v<task> ── eth0 <p>-t-web.1
//!             ├──── n2 ── (veth) ── eth0 <p>-n2 10.99.0.12 ── ...
//!             ├──── n3 ── (veth) ── eth0 <p>-n3 10.99.0.13 ── ...
//!             └──── c  ── (veth) ── eth0 <p>-c  10.99.0.100
//! ```

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::agent::{Agent, AgentConfig, EndpointSpec, PeerSpec, ServiceEntry};
use crate::netns::{self, BPFFS, ethtool_k, in_netns, ip_in};
use crate::{bin, poll_until};

/// MTU of the underlay.
pub const UNDERLAY_MTU: u32 = 1500;
/// MTU of task interfaces: the underlay's minus VXLAN's 50 bytes.
pub const TASK_MTU: u32 = UNDERLAY_MTU - 50;
/// The gateway address every task routes through (a link-local next hop on its veth).
pub const TASK_GATEWAY: &str = "169.254.1.1";
/// Where an agent's metrics server listens inside its node's namespace.
pub const METRICS_LISTEN: &str = "127.0.0.1:9464";
/// The port `task-echo` listens on in every task.
pub const TASK_PORT: u16 = 80;

/// A task: `task-echo` in its own namespace behind a veth in its node's namespace.
#[derive(Debug)]
pub struct Task {
    /// Task name, e.g. `web.1`.
    pub name: String,
    /// Index of its node (1-based).
    pub node: usize,
    /// Address on the overlay.
    pub addr: Ipv4Addr,
    /// The task's namespace.
    pub ns: String,
    /// The host side of its veth, in the node's namespace.
    pub host_iface: String,
    /// MAC of the host side (the task's gateway).
    pub host_mac: [u8; 6],
    child: Option<Child>,
}

impl Task {
    /// The MAC of the task's interface: `02:42` followed by the address (Docker's rule,
    /// the same as `lb_common::service::task_mac`).
    #[must_use]
    pub fn mac(&self) -> [u8; 6] {
        task_mac(self.addr)
    }
}

/// `02:42:<a>:<b>:<c>:<d>` for an address.
#[must_use]
pub fn task_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A topology of network namespaces; see the module docs. Dropping it tears everything
/// down unless [`Topology::keep`] was called.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    subnet: [u8; 3],
    nodes: usize,
    dir: PathBuf,
    tasks: Vec<Task>,
    services: Vec<ServiceEntry>,
    agents: Vec<Option<Agent>>,
    keep: bool,
    detached: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Kills every process in the namespaces named `<prefix>-*`, deletes those namespaces,
/// and removes the pin directories `/sys/fs/bpf/<prefix>-*`.
pub fn teardown_prefix(prefix: &str) -> Result<()> {
    let mine = |name: &str| name.starts_with(&format!("{prefix}-"));
    let namespaces: Vec<String> = netns::list_netns()?
        .into_iter()
        .filter(|n| mine(n))
        .collect();
    // Nodes (agents) first, then everything else.
    for ns in &namespaces {
        for pid in netns::netns_pids(ns) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let mut errors = Vec::new();
    for ns in &namespaces {
        if let Err(e) = netns::ip(&["netns", "del", ns]) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if mine(&name) {
                let path = entry.path();
                let res = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = res {
                    errors.push(format!("remove {}: {e}", path.display()));
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("teardown of {prefix}: {}", errors.join("; "));
    }
    Ok(())
}

impl Topology {
    /// A topology of `nodes` nodes and a client with a prefix unique to this process and
    /// call (`mt<pid>x<n>`), on the underlay 10.99.0.0/24.
    pub fn new(nodes: usize) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("mt{:x}x{n}", std::process::id());
        Self::with_prefix(&prefix, nodes, [10, 99, 0])
    }

    /// A topology with a given prefix and underlay /24 (`subnet.0/24`). Anything left
    /// over with the same prefix (a crashed run) is torn down first.
    pub fn with_prefix(prefix: &str, nodes: usize, subnet: [u8; 3]) -> Result<Self> {
        netns::preflight()?;
        ensure!((1..=9).contains(&nodes), "1 to 9 nodes");
        ensure!(
            !prefix.is_empty() && prefix.len() <= 12 && !prefix.contains(['/', ' ']),
            "bad prefix {prefix:?}"
        );
        teardown_prefix(prefix)?;
        let dir = std::env::temp_dir().join("mesh-tests").join(prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mut topo = Self {
            prefix: prefix.to_owned(),
            subnet,
            nodes,
            dir,
            tasks: Vec::new(),
            services: Vec::new(),
            agents: (0..nodes).map(|_| None).collect(),
            keep: false,
            detached: false,
        };
        topo.build()
            .with_context(|| format!("build topology {prefix}"))?;
        Ok(topo)
    }

    fn build(&mut self) -> Result<()> {
        let ul = self.underlay_ns();
        add_netns(&ul)?;
        ip_in(&ul, &["link", "add", "br0", "type", "bridge"])?;
        // Forward at once: no STP listening/learning delay on the ports.
        ip_in(
            &ul,
            &["link", "set", "br0", "type", "bridge", "forward_delay", "0"],
        )?;
        ip_in(&ul, &["link", "set", "br0", "up"])?;
        for k in 1..=self.nodes {
            let ns = self.node_ns(k);
            let addr = self.node_addr(k);
            self.plug(&ns, &format!("n{k}"), addr)?;
        }
        let c = self.client_ns();
        self.plug(&c, "c", self.client_addr())?;
        Ok(())
    }

    /// Creates `ns` with `eth0` whose peer `port` is a port of the underlay bridge.
    fn plug(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let ul = self.underlay_ns();
        add_netns(ns)?;
        let mtu = UNDERLAY_MTU.to_string();
        ip_in(
            &ul,
            &[
                "link", "add", port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", ns,
            ],
        )?;
        ip_in(&ul, &["link", "set", port, "master", "br0"])?;
        ip_in(&ul, &["link", "set", port, "up"])?;
        ip_in(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        wire_emulation(&ul, port, ns, "eth0")?;
        Ok(())
    }

    /// The topology's prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of nodes.
    #[must_use]
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The directory that holds configuration files and logs.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlay bridge's namespace.
    #[must_use]
    pub fn underlay_ns(&self) -> String {
        format!("{}-ul", self.prefix)
    }

    /// Node `k`'s namespace (1-based).
    #[must_use]
    pub fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    /// Node `k`'s name in configurations (`n1`).
    #[must_use]
    pub fn node_name(k: usize) -> String {
        format!("n{k}")
    }

    /// Node `k`'s underlay address (`10.99.0.1k`).
    #[must_use]
    pub fn node_addr(&self, k: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + k as u8)
    }

    /// Node `k`'s pin directory.
    #[must_use]
    pub fn pin_dir(&self, k: usize) -> PathBuf {
        Path::new(BPFFS).join(format!("{}-n{k}", self.prefix))
    }

    /// The client's namespace.
    #[must_use]
    pub fn client_ns(&self) -> String {
        format!("{}-c", self.prefix)
    }

    /// The client's address (`10.99.0.100`).
    #[must_use]
    pub fn client_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 100)
    }

    /// The tasks, in the order they were added.
    #[must_use]
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// A task by name.
    pub fn task(&self, name: &str) -> Result<&Task> {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("no task {name}"))
    }

    /// Adds task `name` on node `node` with overlay address `addr`, and starts
    /// `task-echo --name <name> --port 80 --udp` in it; returns once it listens.
    pub fn add_task(&mut self, node: usize, name: &str, addr: Ipv4Addr) -> Result<&Task> {
        ensure!((1..=self.nodes).contains(&node), "no node {node}");
        ensure!(
            self.tasks.iter().all(|t| t.name != name && t.addr != addr),
            "task {name} or address {addr} already exists"
        );
        let echo = bin("task-echo")?;
        let nns = self.node_ns(node);
        let tns = format!("{}-t-{name}", self.prefix);
        let host_iface = self.host_iface_name(node, name);
        let host_mac = {
            let o = addr.octets();
            [0x02, 0xfe, o[0], o[1], o[2], o[3]]
        };
        add_netns(&tns)?;
        let mtu = TASK_MTU.to_string();
        ip_in(
            &nns,
            &[
                "link",
                "add",
                &host_iface,
                "mtu",
                &mtu,
                "address",
                &fmt_mac(host_mac),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                &mtu,
                "address",
                &fmt_mac(task_mac(addr)),
                "netns",
                &tns,
            ],
        )?;
        ip_in(&tns, &["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ip_in(&tns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &tns,
            &["route", "add", TASK_GATEWAY, "dev", "eth0", "scope", "link"],
        )?;
        ip_in(
            &tns,
            &[
                "route",
                "add",
                "default",
                "via",
                TASK_GATEWAY,
                "dev",
                "eth0",
            ],
        )?;
        ip_in(
            &tns,
            &[
                "neigh",
                "replace",
                TASK_GATEWAY,
                "lladdr",
                &fmt_mac(host_mac),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        task_wire_emulation(&tns, "eth0")?;
        ip_in(&nns, &["link", "set", &host_iface, "up"])?;
        // The node reaches its own tasks through their veths (like a CNI's host route).
        ip_in(
            &nns,
            &[
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &host_iface,
                "scope",
                "link",
            ],
        )?;

        let log = self.dir.join(format!("task-{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new("ip");
        if self.detached {
            cmd.process_group(0);
        }
        let child = cmd
            .args(["netns", "exec", &tns])
            .arg(&echo)
            .args(["--name", name, "--port", &TASK_PORT.to_string(), "--udp"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start task-echo in {tns}"))?;
        self.tasks.push(Task {
            name: name.to_owned(),
            node,
            addr,
            ns: tns.clone(),
            host_iface,
            host_mac,
            child: Some(child),
        });
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, TASK_PORT));
        poll_until(
            Duration::from_secs(10),
            &format!("task-echo in {tns} to listen"),
            || {
                in_netns(&tns, || {
                    TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok()
                })
                .map(|ok| ok.then_some(()))
            },
        )?;
        Ok(self.tasks.last().expect("just pushed"))
    }

    fn host_iface_name(&self, node: usize, name: &str) -> String {
        let clean: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let mut cand: String = format!("v{clean}").chars().take(15).collect();
        let taken = |c: &str| {
            self.tasks
                .iter()
                .any(|t| t.node == node && t.host_iface == c)
        };
        let mut i = 0;
        while taken(&cand) {
            i += 1;
            cand = format!("vt{}x{i}", self.tasks.len());
        }
        cand
    }

    /// Sets the services every agent's configuration lists (written by
    /// [`Topology::write_configs`], [`Topology::start_agents`] and [`Topology::reload`]).
    pub fn set_services(&mut self, services: Vec<ServiceEntry>) {
        self.services = services;
    }

    /// The services as last set.
    #[must_use]
    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// The services, to change before [`Topology::reload`].
    pub fn services_mut(&mut self) -> &mut Vec<ServiceEntry> {
        &mut self.services
    }

    /// Node `k`'s agent configuration.
    #[must_use]
    pub fn agent_config(&self, k: usize) -> AgentConfig {
        AgentConfig {
            node: Self::node_name(k),
            underlay: "eth0".into(),
            pin_dir: self.pin_dir(k),
            metrics_listen: METRICS_LISTEN.into(),
            peers: (1..=self.nodes)
                .filter(|&j| j != k)
                .map(|j| PeerSpec {
                    name: Self::node_name(j),
                    address: self.node_addr(j),
                })
                .collect(),
            endpoints: self
                .tasks
                .iter()
                .map(|t| EndpointSpec {
                    name: t.name.clone(),
                    address: t.addr,
                    node: Self::node_name(t.node),
                    iface: t.host_iface.clone(),
                })
                .collect(),
            services: self.services.clone(),
        }
    }

    /// Node `k`'s configuration file.
    #[must_use]
    pub fn config_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("n{k}.toml"))
    }

    /// Node `k`'s agent log.
    #[must_use]
    pub fn agent_log_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("agent-n{k}.log"))
    }

    /// Writes every node's configuration file (atomically: write, then rename).
    pub fn write_configs(&self) -> Result<()> {
        for k in 1..=self.nodes {
            let path = self.config_path(k);
            let tmp = path.with_extension("toml.tmp");
            std::fs::write(&tmp, self.agent_config(k).to_toml())
                .with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("rename {}", tmp.display()))?;
        }
        Ok(())
    }

    /// Writes the configurations and starts every node's agent; returns once all are ready.
    pub fn start_agents(&mut self) -> Result<()> {
        self.write_configs()?;
        for k in 1..=self.nodes {
            self.spawn_agent(k)?;
        }
        for k in 1..=self.nodes {
            self.agent_mut(k)?.wait_ready()?;
        }
        Ok(())
    }

    fn spawn_agent(&mut self, k: usize) -> Result<()> {
        let agent_bin = bin("lb-agent")?;
        let agent = Agent::start(
            &self.node_ns(k),
            &agent_bin,
            &self.config_path(k),
            &self.agent_log_path(k),
            self.detached,
        )?;
        self.agents[k - 1] = Some(agent);
        Ok(())
    }

    /// Node `k`'s agent.
    pub fn agent_mut(&mut self, k: usize) -> Result<&mut Agent> {
        self.agents
            .get_mut(k.wrapping_sub(1))
            .and_then(Option::as_mut)
            .with_context(|| format!("no agent running on n{k}"))
    }

    /// Node `k`'s agent, if it was started.
    #[must_use]
    pub fn agent(&self, k: usize) -> Option<&Agent> {
        self.agents.get(k.wrapping_sub(1)).and_then(Option::as_ref)
    }

    /// Rewrites every configuration from the current services and SIGHUPs every agent;
    /// returns once each has applied the new configuration.
    pub fn reload(&mut self) -> Result<()> {
        let mut before = Vec::new();
        for k in 1..=self.nodes {
            before.push(self.agent_mut(k)?.reload_counts());
        }
        self.write_configs()?;
        for k in 1..=self.nodes {
            self.agent_mut(k)?.reload_since(before[k - 1])?;
        }
        Ok(())
    }

    /// `kill -9` of node `k`'s agent.
    pub fn kill_agent(&mut self, k: usize) -> Result<()> {
        self.agent_mut(k)?.kill9()
    }

    /// Starts node `k`'s agent again (after [`Topology::kill_agent`]); returns once it has
    /// logged that it is ready (once more than before).
    pub fn restart_agent(&mut self, k: usize) -> Result<()> {
        let before = self
            .agent(k)
            .map(|a| {
                a.log()
                    .lines()
                    .filter(|l| l.contains(crate::agent::READY_MARKER))
                    .count()
            })
            .unwrap_or(0);
        if let Some(a) = self.agents[k - 1].as_mut() {
            a.kill9()?;
        }
        self.write_configs()?;
        self.spawn_agent(k)?;
        self.agent_mut(k)?.wait_ready_count(before + 1)
    }

    /// The tail of every agent's log, for failure reports.
    #[must_use]
    pub fn agent_logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for k in 1..=self.nodes {
            let log = std::fs::read_to_string(self.agent_log_path(k)).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            s.push_str(&format!(
                "--- agent n{k} ({}) ---\n{}\n",
                self.agent_log_path(k).display(),
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        s
    }

    /// Node `k`'s `/metrics` text.
    pub fn metrics(&self, k: usize) -> Result<String> {
        let addr: SocketAddr = METRICS_LISTEN.parse()?;
        in_netns(&self.node_ns(k), || {
            crate::client::http_get(addr, "/metrics")
        })?
    }

    /// What to look at when a test fails: per node, the non-zero drop and flow metrics
    /// and the kernel's IP error counters (packets the dataplane handed to the stack that
    /// the stack dropped show up there).
    #[must_use]
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for k in 1..=self.nodes {
            s.push_str(&format!("--- n{k} ({}) ---\n", self.node_ns(k)));
            match self.metrics(k) {
                Ok(m) => {
                    for l in m.lines().filter(|l| {
                        (l.starts_with("lb_dropped") || l.starts_with("lb_flows"))
                            && !l.ends_with(" 0")
                    }) {
                        s.push_str(l);
                        s.push('\n');
                    }
                }
                Err(e) => s.push_str(&format!("metrics: {e:#}\n")),
            }
            if let Ok(nstat) = netns::exec_in(&self.node_ns(k), "nstat", &["-a", "-z"]) {
                for l in nstat.lines().filter(|l| {
                    (l.starts_with("IpInAddrErrors")
                        || l.starts_with("IpOutNoRoutes")
                        || l.starts_with("IpInDiscards")
                        || l.starts_with("IpInHdrErrors")
                        || l.starts_with("TcpInCsumErrors")
                        || l.starts_with("UdpInCsumErrors"))
                        && l.split_whitespace().nth(1) != Some("0")
                }) {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Starts tasks and agents from now on in process groups of their own, so they outlive
    /// a Ctrl-C aimed at the program that built the topology (the demo, which leaves the
    /// mesh running).
    pub fn set_detached(&mut self, detached: bool) {
        self.detached = detached;
    }

    /// Leaves everything running when the topology is dropped (the demo).
    pub fn keep(&mut self) {
        self.keep = true;
        for a in self.agents.iter_mut().flatten() {
            a.detach();
        }
        for t in &mut self.tasks {
            t.child = None;
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "topology {} failed; logs and configs kept in {}\n{}{}",
                self.prefix,
                self.dir.display(),
                self.agent_logs(20),
                self.diagnostics()
            );
        }
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill9();
        }
        for t in &mut self.tasks {
            if let Some(mut c) = t.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Err(e) = teardown_prefix(&self.prefix) {
            eprintln!("{e:#}");
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn add_netns(ns: &str) -> Result<()> {
    netns::ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Makes a veth pair behave like a wire for the dataplane: `ul_dev` (in `ul_ns`, the
/// bridge side) and `node_dev` (in `node_ns`).
///
/// * tx checksum offload OFF on both ends: XDP frames cannot carry the kernel's
///   CHECKSUM_PARTIAL state across a veth (a real NIC would compute checksums on the wire),
///   so every frame must leave with a complete checksum.
/// * GRO ON on the bridge side: a veth receives frames sent with XDP_TX / XDP_REDIRECT only
///   if its receiving end has NAPI enabled (GRO on, or an XDP program attached).
pub fn wire_emulation(ul_ns: &str, ul_dev: &str, node_ns: &str, node_dev: &str) -> Result<()> {
    ethtool_k(ul_ns, ul_dev, "tx", false)?;
    ethtool_k(node_ns, node_dev, "tx", false)?;
    ethtool_k(ul_ns, ul_dev, "gro", true)?;
    Ok(())
}

/// The task side of a task's veth: GRO on, so it receives frames the node's XDP program
/// redirects into the veth (same NAPI reason as [`wire_emulation`]).
pub fn task_wire_emulation(task_ns: &str, dev: &str) -> Result<()> {
    ethtool_k(task_ns, dev, "gro", true)
}
