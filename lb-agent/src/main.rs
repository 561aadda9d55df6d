//! `lb-agent`: the mesh's node daemon; standalone, an IPVS-style L4 load balancer driven
//! by a configuration file. See docs/agent.md.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use lb_agent::agent::{self, Agent, Overrides};
use lb_agent::config::{Config, XdpModeConfig};
use lb_agent::dns::Dns;
use lb_agent::host::interfaces::HostInfo;
use lb_agent::managed::join::{self, JoinOptions};
use lb_agent::managed::manager_process::{ManagerCommand, ManagerProcess};
use lb_agent::managed::run::{Managed, run_managed};
use lb_agent::runtime::Runtimes;
use lb_agent::runtime::isolation::Isolation;
use tracing_subscriber::EnvFilter;

/// The mesh's node agent: loads the eBPF dataplane, programs it from a configuration
/// file, serves metrics.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, env = "LB_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory under bpffs for pinned maps and links (overrides `dataplane.pin_dir`).
    #[arg(long, env = "LB_AGENT_PIN_DIR", global = true)]
    pin_dir: Option<PathBuf>,
    /// Address of the metrics endpoint (overrides `metrics.listen`).
    #[arg(long, env = "LB_AGENT_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// Join a cluster: manager address(es), comma-separated. The node keeps a session
    /// with the leader; with `--underlay` (or a `--config` naming one) it is a managed
    /// node: it runs the tasks the leader assigns and programs its dataplane from the
    /// cluster; without, it runs the session only.
    #[arg(long, env = "LB_AGENT_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Join token (`meshctl cluster join-token worker`); needed only the first time.
    #[arg(long, env = "LB_AGENT_JOIN_TOKEN")]
    token: Option<String>,
    /// Where the node's cluster identity is kept.
    #[arg(
        long,
        env = "LB_AGENT_STATE_DIR",
        default_value = "/var/lib/mesh/agent",
        global = true
    )]
    state_dir: PathBuf,
    /// The hostname reported to the managers (default: the system's).
    #[arg(long, env = "LB_AGENT_HOSTNAME")]
    hostname: Option<String>,
    /// Managed node: the underlay interface (XDP attaches here; overrides `node.underlay`).
    /// `auto`: the interface this host reaches the first `--join` manager through.
    #[arg(long, env = "LB_AGENT_UNDERLAY")]
    underlay: Option<String>,
    /// Managed node: XDP attach mode (overrides `dataplane.xdp_mode`).
    #[arg(long, env = "LB_AGENT_XDP_MODE", value_parser = ["native", "skb"])]
    xdp_mode: Option<String>,
    /// Managed node: the underlay address announced to the cluster (default: the
    /// underlay interface's first IPv4 address).
    #[arg(long, env = "LB_AGENT_ADVERTISE_ADDR")]
    advertise_addr: Option<Ipv4Addr>,
    /// Managed node: enable the docker runtime (tasks with `--runtime docker`).
    #[arg(long, env = "LB_AGENT_DOCKER")]
    docker: bool,
    /// Where the node's manager listens once the node is promoted (the agent then
    /// runs `mesh-manager`); default: this node's address, port 4242.
    #[arg(long, env = "LB_AGENT_MANAGER_LISTEN_ADDR")]
    manager_listen_addr: Option<SocketAddr>,
    /// Where the promoted node's manager serves `/metrics`; `off` disables it.
    #[arg(
        long,
        env = "LB_AGENT_MANAGER_METRICS_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    manager_metrics_addr: String,
    /// The `mesh-manager` program a promoted node runs (default: the one beside
    /// `lb-agent`, else `mesh-manager` from `PATH`).
    #[arg(long, env = "LB_AGENT_MANAGER_PROGRAM")]
    manager_program: Option<PathBuf>,
    /// Managed node: where the tasks' resolver forwards names outside the cluster,
    /// `IP[:PORT]`, comma-separated, at most 3 (overrides `dns.upstream`; default: the
    /// nameservers of `/etc/resolv.conf`).
    #[arg(long, env = "LB_AGENT_DNS_UPSTREAM", value_delimiter = ',')]
    dns_upstream: Vec<lb_agent::config::Upstream>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration against this host and print the desired state; touches
    /// nothing.
    Check,
    /// Detach every program and remove every pin under the pin directory (from
    /// `--pin-dir`, or the configuration's `dataplane.pin_dir`).
    Cleanup,
    /// The node leaves for good: stop every task the agent's state directory
    /// (`--state-dir`) records, process tasks and containers (SIGTERM, SIGKILL after
    /// 2 s), and remove their namespaces and veths. Run it once the agent is stopped
    /// (stopping the agent keeps its tasks, for the next start to adopt); refused while
    /// it runs.
    Leave,
    /// (Internal) The first process of a process task: confines it and runs its
    /// program (started by the agent, in the task's namespaces).
    #[command(hide = true)]
    TaskInit(Box<lb_agent::runtime::init::InitArgs>),
    /// (Internal) Runs a command inside a running process task, confined as the task
    /// is (its health checks).
    #[command(hide = true)]
    TaskExec(lb_agent::runtime::init::ExecArgs),
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            pin_dir: self.pin_dir.clone(),
            metrics_listen: self.metrics_listen,
        }
    }

    fn config(&self) -> Result<&PathBuf> {
        self.config
            .as_ref()
            .context("--config (or LB_AGENT_CONFIG) is required")
    }
}

/// Runs the standalone dataplane (`--config` without `--join`), a managed node
/// (`--join` with `--underlay` or a `--config` that names one), or a session only.
async fn run(cli: &Cli) -> Result<()> {
    if cli.join.is_empty() {
        let agent = Agent::start(cli.config()?, cli.overrides()).await?;
        return agent.run().await.map_err(Into::into);
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let hostname = mesh_client::join::node_hostname(cli.hostname.as_deref())
        .context("reading the hostname")?;
    let underlay = match cli.underlay.as_deref() {
        Some(AUTO) => Some(underlay_towards(&cli.join[0]).await?),
        other => other.map(str::to_owned),
    };
    let base = managed_base(cli, underlay.as_deref())?;
    let underlay_facts = match &base {
        Some(base) => Some(underlay_addr_and_mtu(base).await?),
        None => None,
    };
    let data_addr = underlay_facts.map(|(addr, _)| addr);
    let manager = manager_command(cli, data_addr, &hostname).await?;
    let mut options = JoinOptions {
        managers: cli.join.clone(),
        token: cli.token.clone(),
        state_dir: cli.state_dir.clone(),
        hostname,
        data_addr,
        runtimes: BTreeSet::new(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let Some(base) = base else {
        let mut session = join::start(options, stop).await?;
        let manager = ManagerProcess::start(manager, cli.join.clone());
        tracing::info!("lb-agent ready (cluster session only: no --underlay, no dataplane)");
        let result = loop {
            tokio::select! {
                event = session.events.recv() => match event {
                    Some(event) => {
                        join::log_event(&event);
                        manager.observe(&event);
                    }
                    None => break (&mut session.task).await.context("the session task")?,
                },
                _ = term.recv() => break Ok(()),
                _ = tokio::signal::ctrl_c() => break Ok(()),
            }
        };
        stop_tx.send_replace(true);
        manager.stop().await;
        return Ok(result?);
    };
    let (_, mtu) = underlay_facts.context("the underlay of a managed node")?;
    // Held while the agent runs: one agent per state directory (and so per set
    // of tasks), and `lb-agent leave` refuses meanwhile.
    let _lock = lb_agent::runtime::lock_state_dir(&cli.state_dir)?;
    let pin_dir = Some(base.dataplane.pin_dir.clone());
    let isolation = isolation(cli, pin_dir)?.with_dns(Some(lb_agent::runtime::plumb::GATEWAY));
    let runtimes = Runtimes::new(&cli.state_dir, cli.docker, isolation)
        .await
        .context("setting up the task runtimes")?;
    // Reported in the session's Hello: the scheduler places a task only on a
    // node whose agent runs its runtime.
    options.runtimes = runtimes.kinds();
    // Before the session: a node whose tasks could not resolve names takes none.
    let upstreams: Vec<SocketAddr> = base.dns.upstream.iter().map(|u| u.0).collect();
    let mut dns = Dns::start(lb_agent::dns::upstreams(&upstreams))
        .await
        .context("starting the tasks' resolver (169.254.1.1:53)")?;
    // Released here whichever way the agent ends (the run is dropped on a signal).
    let gateway = dns.take_address();
    let session = match join::start(options, stop.clone()).await {
        Ok(session) => session,
        Err(e) => {
            drop(dns);
            gateway.release().await;
            return Err(e.into());
        }
    };
    let managed = Managed {
        dns,
        base,
        task_mtu: mtu.saturating_sub(50),
        runtimes,
        manager: ManagerProcess::start(manager, cli.join.clone()),
    };
    // Boxed, so that it can be dropped (and the resolver's listeners with it) before
    // the function ends.
    let mut run = Box::pin(run_managed(session, managed, stop));
    let result = tokio::select! {
        result = &mut run => result,
        _ = term.recv() => {
            tracing::info!(
                "SIGTERM: exiting; the tasks and the dataplane keep running, for the next start \
                 to take over (`lb-agent leave` stops the tasks)"
            );
            stop_tx.send_replace(true);
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            stop_tx.send_replace(true);
            Ok(())
        }
    };
    // The resolver's listeners go with the run; then the address they were bound to.
    drop(run);
    gateway.release().await;
    Ok(result?)
}

/// The `[node]`, `[dataplane]`, `[metrics]` and `[dns]` sections of a managed node, from
/// `--config` (which must not list services, endpoints or peers) and the flags;
/// `None` when neither names an underlay (a session-only agent).
fn managed_base(cli: &Cli, underlay: Option<&str>) -> Result<Option<Config>> {
    let mut table = match &cli.config {
        Some(path) => read_table(path)?,
        None => toml::Table::new(),
    };
    for key in ["services", "endpoints", "peers"] {
        if table.contains_key(key) {
            bail!(
                "{}: with --join, the configuration supplies only [node], [dataplane], \
                 [metrics] and [dns]; the cluster provides the services, endpoints and peers \
                 (remove [[{key}]])",
                cli.config.as_deref().unwrap_or(Path::new("-")).display()
            );
        }
    }
    let node = table
        .entry("node")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(node) = node.as_table_mut() else {
        bail!("[node] must be a table");
    };
    if let Some(underlay) = underlay {
        node.insert("underlay".into(), underlay.into());
    }
    if !node.contains_key("underlay") {
        return Ok(None);
    }
    // Replaced by the node's ID once the first assignment names it.
    node.entry("name").or_insert_with(|| "managed".into());
    if let Some(addr) = cli.advertise_addr {
        node.insert("address".into(), addr.to_string().into());
    }
    let mut config = Config::from_toml(&table.to_string())?;
    cli.overrides().apply(&mut config);
    match cli.xdp_mode.as_deref() {
        Some("native") => config.dataplane.xdp_mode = XdpModeConfig::Native,
        Some("skb") => config.dataplane.xdp_mode = XdpModeConfig::Skb,
        _ => {}
    }
    if !cli.dns_upstream.is_empty() {
        config.dns.upstream.clone_from(&cli.dns_upstream);
    }
    if config.dns.upstream.len() > lb_agent::dns::resolv::MAX_UPSTREAMS {
        bail!(
            "dns.upstream (or --dns-upstream) lists {} servers: at most {} are used",
            config.dns.upstream.len(),
            lb_agent::dns::resolv::MAX_UPSTREAMS
        );
    }
    Ok(Some(config))
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// `--underlay auto`.
const AUTO: &str = "auto";

/// The port a promoted node's manager listens on by default (`mesh-manager`'s).
const MANAGER_PORT: u16 = 4242;

/// How this node runs its manager once it is promoted: `--manager-*`, with
/// defaults from the node's address (its dataplane's, else the one it
/// reaches the first `--join` manager from) and the agent's own location.
async fn manager_command(
    cli: &Cli,
    data_addr: Option<Ipv4Addr>,
    hostname: &str,
) -> Result<ManagerCommand> {
    let listen = match (cli.manager_listen_addr, data_addr) {
        (Some(addr), _) => addr,
        (None, Some(addr)) => SocketAddr::from((addr, MANAGER_PORT)),
        (None, None) => SocketAddr::from((local_addr_towards(&cli.join[0]).await?, MANAGER_PORT)),
    };
    let program = match &cli.manager_program {
        Some(program) => program.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("mesh-manager")))
            .filter(|beside| beside.exists())
            .unwrap_or_else(|| PathBuf::from("mesh-manager")),
    };
    Ok(ManagerCommand {
        program,
        state_dir: cli.state_dir.clone(),
        listen,
        metrics: cli.manager_metrics_addr.clone(),
        hostname: hostname.to_owned(),
    })
}

/// The address this host sends from to reach `manager` (`host:port`): the
/// kernel's route lookup, asked through a UDP socket's `connect` (which sends
/// nothing).
async fn local_addr_towards(manager: &str) -> Result<Ipv4Addr> {
    let target = tokio::net::lookup_host(manager)
        .await
        .with_context(|| format!("resolving {manager}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{manager} has no IPv4 address"))?;
    let socket =
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("opening a UDP socket")?;
    socket
        .connect(target)
        .with_context(|| format!("no route to {target}"))?;
    match socket.local_addr()?.ip() {
        std::net::IpAddr::V4(local) => Ok(local),
        std::net::IpAddr::V6(_) => bail!("{target} is reached over IPv6"),
    }
}

/// The interface whose address this host sends from to reach `manager`
/// (`host:port`): the kernel's route lookup, asked through a UDP socket's
/// `connect` (which sends nothing).
async fn underlay_towards(manager: &str) -> Result<String> {
    let local = local_addr_towards(manager)
        .await
        .context("--underlay auto")?;
    let host = HostInfo::query(&agent::netlink()?).await?;
    let iface = host.holding(local).with_context(|| {
        format!("--underlay auto: no interface holds {local}, the address towards {manager}")
    })?;
    tracing::info!(underlay = %iface.name, address = %local, %manager, "--underlay auto");
    Ok(iface.name.clone())
}

async fn underlay_info(base: &Config) -> Result<lb_agent::host::interfaces::Interface> {
    let host = HostInfo::query(&agent::netlink()?).await?;
    host.interface(&base.node.underlay)
        .cloned()
        .with_context(|| {
            format!(
                "the underlay interface {:?} does not exist",
                base.node.underlay
            )
        })
}

/// The underlay address announced to the cluster and the underlay's MTU: from the
/// configuration, else from the underlay interface (read once, and only if needed).
async fn underlay_addr_and_mtu(base: &Config) -> Result<(Ipv4Addr, u32)> {
    let iface = match (base.node.address, base.node.mtu) {
        (Some(_), Some(_)) => None,
        _ => Some(underlay_info(base).await?),
    };
    let addr = match base.node.address {
        Some(addr) => addr,
        None => iface
            .as_ref()
            .and_then(|i| i.ipv4.first().copied())
            .with_context(|| {
                format!(
                    "the underlay interface {:?} has no IPv4 address (or pass --advertise-addr)",
                    base.node.underlay
                )
            })?,
    };
    let mtu = base
        .node
        .mtu
        .or(iface.map(|i| i.mtu))
        .context("the underlay's MTU")?;
    Ok((addr, mtu))
}

/// What process tasks are confined by: everything of the agent's that a task could
/// use against the node is hidden from it (the state directory, with the node's key;
/// the pin directory; the configuration file).
fn isolation(cli: &Cli, pin_dir: Option<PathBuf>) -> Result<Isolation> {
    let cgroups = lb_agent::runtime::cgroup::Cgroups::discover();
    match &cgroups {
        Some(c) => {
            tracing::info!(parent = %c.parent().display(), "process tasks get a cgroup of their own")
        }
        None => tracing::info!(
            "no writable cgroup v2 hierarchy: process tasks stay in the agent's cgroup"
        ),
    }
    let controllers = lb_agent::runtime::cgroup::Controllers::discover(cgroups.as_ref(), true);
    tracing::info!(
        memory = ?controllers.memory,
        cpu = ?controllers.cpu,
        "where process tasks' limits are enforced (none: a task with that limit fails)"
    );
    let mut isolation = Isolation::of_this_program()
        .context("finding the lb-agent program (for task-init)")?
        .with_controllers(controllers)
        .with_cgroups(cgroups)
        .with_volumes(&cli.state_dir.join("volumes"))
        .hide(&cli.state_dir);
    if let Some(pin_dir) = pin_dir {
        isolation = isolation.hide(&pin_dir);
    }
    if let Some(config) = &cli.config {
        isolation = isolation.mask(config);
    }
    Ok(isolation)
}

/// `lb-agent leave`: stops the tasks of the state directory for good.
async fn leave(cli: &Cli) -> Result<()> {
    let _lock = lb_agent::runtime::lock_state_dir(&cli.state_dir)
        .context("lb-agent leave: stop the agent first")?;
    // Docker whenever its engine answers: the tasks of a run with --docker are
    // stopped even if this command is run without it.
    let runtimes = Runtimes::new(&cli.state_dir, true, isolation(cli, None)?)
        .await
        .context("setting up the task runtimes")?;
    // Taken over first, so that they are stopped gracefully (SIGTERM first).
    let adopted = runtimes.adopt().await.context("finding the node's tasks")?;
    let stopped = runtimes
        .stop_all(lb_agent::managed::run::KILL_GRACE)
        .await
        .context("stopping the node's tasks")?;
    println!(
        "stopped {} task(s); {} had already ended",
        stopped.len(),
        adopted.gone.len()
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A task's own processes: single-threaded, before any runtime starts (entering a
    // mount namespace needs a process of one thread).
    match &cli.command {
        Some(Command::TaskInit(args)) => lb_agent::runtime::init::run_init(args),
        Some(Command::TaskExec(args)) => lb_agent::runtime::init::run_exec(args),
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(agent_main(cli))
}

async fn agent_main(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run => run(&cli).await?,
        Command::Check => {
            let desired = agent::check(cli.config()?, &cli.overrides()).await?;
            println!("configuration OK");
            for (key, svc) in &desired.state.services {
                let labels = &desired.service_labels[&svc.id];
                let slots = &desired.state.slots[&svc.id];
                println!(
                    "service {} {} id={} key={key} slots={slots:?}",
                    labels.service, labels.port, svc.id
                );
            }
            for (id, b) in &desired.state.backends {
                let l = &desired.backend_labels[id];
                let draining = if b.flags & lb_common::Backend::FLAG_DRAINING != 0 {
                    " draining"
                } else {
                    ""
                };
                println!(
                    "backend {id} {} {} -> {}{draining}",
                    l.service, l.port, l.backend
                );
            }
        }
        Command::Leave => leave(&cli).await?,
        Command::TaskInit(_) | Command::TaskExec(_) => {
            unreachable!("task-init and task-exec run before the async runtime")
        }
        Command::Cleanup => {
            let pin_dir = match (&cli.pin_dir, &cli.config) {
                (Some(d), _) => d.clone(),
                (None, Some(c)) => agent::load_config(c, &cli.overrides())?.dataplane.pin_dir,
                (None, None) => bail!("cleanup needs --pin-dir or --config"),
            };
            let (links, maps) = agent::cleanup(&pin_dir)?;
            println!(
                "removed {links} links and {maps} map pins under {}",
                pin_dir.display()
            );
        }
    }
    Ok(())
}
