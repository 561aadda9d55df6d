//! `bench-mesh`: the mesh beside what users would run instead, on the same kind of
//! topology, in the same run: direct (no load balancer), the mesh (`lb-agent`), nftables
//! DNAT + masquerade, and HAProxy in TCP mode.
//!
//! ```text
//! bench-mesh [--out bench-results/mesh.md] [--rounds 5] [--window 2] [--cases direct,mesh,...]
//! bench-mesh --down      remove what a killed run left behind
//! ```
//!
//! `cargo xtask bench mesh` builds everything in release mode and runs this. Needs root,
//! `nft` and `haproxy` (`cargo xtask setup` installs them). The method is in the report
//! it writes (see `METHOD` below).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use mesh_tests::client::{request_tcp, request_udp, tcp_reachable};
use mesh_tests::load::{self, CpuGroup, CpuTimes, GroupUsage, Outcome, Plan, USER_HZ, Workload};
use mesh_tests::netns::{exec_in, ip_in};
use mesh_tests::topology::TASK_PORT;
use mesh_tests::web::{self, TCP_PORT, UDP_PORT};
use mesh_tests::{Topology, in_netns, poll_until, teardown_prefix};

/// Prefix of the mesh topology (agents attached).
const MESH_PREFIX: &str = "bmm";
/// Prefix of the baseline topology (no agents: direct, nftables, HAProxy).
const BASE_PREFIX: &str = "bmb";
const MESH_SUBNET: [u8; 3] = [10, 98, 1];
const BASE_SUBNET: [u8; 3] = [10, 98, 2];
/// The tasks: one per node, the same in both topologies.
const TASKS: [(usize, &str, Ipv4Addr); 3] = [
    (1, "web.1", Ipv4Addr::new(10, 255, 1, 1)),
    (2, "web.2", Ipv4Addr::new(10, 255, 2, 1)),
    (3, "web.3", Ipv4Addr::new(10, 255, 3, 1)),
];
/// Where HAProxy listens on the baseline topology's node 1.
const HAPROXY_PORT: u16 = 9080;
/// VNI of the kernel VXLAN overlay of the baseline topology.
const BASE_VNI: &str = "4242";
/// The nftables table of the nftables case.
const NFT_TABLE: &str = "meshbench";

#[derive(Parser, Debug)]
#[command(about = "The mesh beside direct, nftables and HAProxy: throughput, latency, CPU")]
struct Args {
    /// Where to write the markdown report.
    #[arg(long, default_value = "bench-results/mesh.md")]
    out: PathBuf,
    /// Interleaved rounds (every case once per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// Seconds of warm-up before each window.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Concurrent workers of the new-connection phase.
    #[arg(long, default_value_t = 8)]
    conn_workers: usize,
    /// Kept-alive connections of the requests phase.
    #[arg(long, default_value_t = 16)]
    keepalive_conns: usize,
    /// UDP sockets of the UDP phase.
    #[arg(long, default_value_t = 8)]
    udp_sockets: usize,
    /// Kept-alive connections of the fixed-rate phase.
    #[arg(long, default_value_t = 6)]
    paced_conns: usize,
    /// Requests per second of the fixed-rate phase (over all its connections).
    #[arg(long, default_value_t = 3000)]
    paced_rate: u32,
    /// Bytes per request.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// The cases to run, in this order within each round.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Case::ALL)]
    cases: Vec<Case>,
    /// The phases to run for each case, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::ALL)]
    phases: Vec<Phase>,
    /// Do not turn on the kernel's eBPF run-time statistics (the eBPF column stays empty).
    #[arg(long)]
    no_bpf_stats: bool,
    /// Niceness for the bench and everything it starts (inherited): other work on the
    /// machine yields to it. 0 leaves it alone.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    nice: i32,
    /// Seconds, over the whole run, the bench may wait for other work on the machine to
    /// calm down before its rounds.
    #[arg(long, default_value_t = 60)]
    quiet_budget: u64,
    /// Remove the namespaces and pins a killed run left behind, then exit.
    #[arg(long)]
    down: bool,
}

/// A way for the client to reach the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Case {
    /// The client connects to a task's own address, routed through that task's node.
    Direct,
    /// The node's published port, balanced by lb-agent's eBPF dataplane.
    Mesh,
    /// The node's published port, balanced by nftables DNAT + masquerade.
    Nftables,
    /// HAProxy on the node, TCP mode.
    Haproxy,
}

impl Case {
    const ALL: [Self; 4] = [Self::Direct, Self::Mesh, Self::Nftables, Self::Haproxy];

    const fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Mesh => "mesh",
            Self::Nftables => "nftables",
            Self::Haproxy => "haproxy",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Phase {
    /// New connections per second.
    #[value(name = "conn")]
    Connections,
    /// Requests per second on kept-alive connections.
    #[value(name = "keepalive")]
    KeepAlive,
    /// UDP request/response pairs per second.
    Udp,
    /// Latency and CPU at a fixed request rate.
    Paced,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Connections, Self::KeepAlive, Self::Udp, Self::Paced];

    const fn name(self) -> &'static str {
        match self {
            Self::Connections => "new connections",
            Self::KeepAlive => "kept-alive requests",
            Self::Udp => "UDP request/response",
            Self::Paced => "fixed-rate requests",
        }
    }

    const fn short(self) -> &'static str {
        match self {
            Self::Connections => "conn",
            Self::KeepAlive => "keepalive",
            Self::Udp => "udp",
            Self::Paced => "paced",
        }
    }
}

/// Counters read at the edges of a window.
#[derive(Clone, Copy, Debug, Default)]
struct Snap {
    at: Option<Instant>,
    machine: CpuTimes,
    group: GroupUsage,
    ksoftirqd_ns: u64,
    proc_ns: u64,
    bpf_ns: u64,
    bpf_runs: u64,
}

/// One window's figures.
#[derive(Clone, Debug)]
struct Sample {
    round: usize,
    case: Case,
    phase: Phase,
    ops: u64,
    errors: u64,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Machine-wide, `/proc/stat`.
    machine: CpuTimes,
    /// CPU capacity between the two snapshots: cores times seconds, in µs.
    capacity_us: f64,
    /// The bench's own processes (client, tasks, agents or HAProxy).
    group: GroupUsage,
    ksoftirqd_ns: u64,
    proc_ns: u64,
    bpf_ns: u64,
    bpf_runs: u64,
    tasks: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Sample {
    fn per_op(&self, us: f64) -> f64 {
        us / self.ops.max(1) as f64
    }
    fn ticks_us(ticks: u64) -> f64 {
        ticks as f64 * 1e6 / USER_HZ
    }
    /// CPU of the bench's processes and of ksoftirqd, per operation.
    fn busy_us(&self) -> f64 {
        self.per_op(self.group.usage_us as f64 + self.ksoftirqd_ns as f64 / 1000.0)
    }
    fn kernel_us(&self) -> f64 {
        self.per_op(self.group.system_us as f64 + self.ksoftirqd_ns as f64 / 1000.0)
    }
    fn user_us(&self) -> f64 {
        self.per_op(self.group.user_us as f64)
    }
    /// Machine-wide softirq time (tick-sampled) per operation.
    fn softirq_us(&self) -> f64 {
        self.per_op(Self::ticks_us(self.machine.softirq))
    }
    /// Machine-wide busy time (capacity minus idle; idle is measured by the idle loop,
    /// not sampled) per operation, whatever ran.
    fn machine_busy_us(&self) -> f64 {
        (self.capacity_us - Self::ticks_us(self.machine.idle)).max(0.0)
    }
    fn machine_us(&self) -> f64 {
        self.per_op(self.machine_busy_us())
    }
    fn proc_us(&self) -> f64 {
        self.per_op(self.proc_ns as f64 / 1000.0)
    }
    fn bpf_us(&self) -> f64 {
        self.per_op(self.bpf_ns as f64 / 1000.0)
    }
    /// Share of the machine's CPU that went to other work during the window.
    fn other_share(&self) -> f64 {
        let ours = self.group.usage_us as f64 + self.ksoftirqd_ns as f64 / 1000.0;
        ((self.machine_busy_us() - ours) / self.capacity_us.max(1.0)).clamp(0.0, 1.0)
    }
    fn bpf_runs_per_op(&self) -> f64 {
        self.bpf_runs as f64 / self.ops.max(1) as f64
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let res = if args.down { down() } else { bench(&args) };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn down() -> Result<()> {
    mesh_tests::netns::preflight()?;
    for p in [MESH_PREFIX, BASE_PREFIX] {
        teardown_prefix(p)?;
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join("mesh-tests").join(p));
    }
    eprintln!("bench-mesh: removed {MESH_PREFIX}-* and {BASE_PREFIX}-*");
    Ok(())
}

/// Everything a run sets up. Fields drop in order: HAProxy and the nftables table before
/// the topologies, whose `Drop` removes namespaces, processes and pins.
struct Rig {
    haproxy: Option<Haproxy>,
    mesh: Option<Topology>,
    base: Option<Topology>,
    /// The mesh's eBPF programs (ids), for their run time.
    mesh_progs: Vec<u32>,
    /// The mesh's agents, counted apart from the bench's group: they are not on the
    /// packet path (see Method).
    agents: Option<CpuGroup>,
}

impl Rig {
    fn topo(&self, case: Case) -> &Topology {
        let t = match case {
            Case::Mesh => self.mesh.as_ref(),
            _ => self.base.as_ref(),
        };
        t.expect("the rig has every topology its cases need")
    }

    /// TCP and UDP targets of a case, as the client sees them.
    fn targets(&self, case: Case) -> (Vec<SocketAddr>, Option<Vec<SocketAddr>>) {
        let topo = self.topo(case);
        let node = topo.node_addr(1);
        match case {
            Case::Direct => {
                let tasks: Vec<SocketAddr> = TASKS
                    .iter()
                    .map(|&(_, _, a)| SocketAddr::from((a, TASK_PORT)))
                    .collect();
                (tasks.clone(), Some(tasks))
            }
            Case::Mesh | Case::Nftables => (
                vec![SocketAddr::from((node, TCP_PORT))],
                Some(vec![SocketAddr::from((node, UDP_PORT))]),
            ),
            Case::Haproxy => (vec![SocketAddr::from((node, HAPROXY_PORT))], None),
        }
    }

    /// Run time so far of the case's own process, in ns: HAProxy, or the mesh's agents.
    fn proc_ns(&self, case: Case) -> io::Result<u64> {
        match case {
            Case::Mesh => self
                .agents
                .as_ref()
                .map_or(Ok(0), |g| g.usage().map(|u| u.usage_us * 1000)),
            Case::Haproxy => self
                .haproxy
                .as_ref()
                .map_or(Ok(0), |h| load::process_runtime_ns(h.pid)),
            _ => Ok(0),
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    let started = Instant::now();
    mesh_tests::netns::preflight()?;
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(!args.cases.is_empty(), "no cases");
    let cases = args.cases.clone();
    let need_base = cases.iter().any(|&c| c != Case::Mesh);
    if need_base {
        for (tool, pkg) in [("nft", "nftables"), ("haproxy", "haproxy")] {
            ensure!(
                Command::new(tool)
                    .arg(if tool == "nft" { "--version" } else { "-v" })
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "`{tool}` not found: run `cargo xtask setup` (or apt-get install -y {pkg})"
            );
        }
    }
    if args.nice != 0 {
        // Before any thread or child exists: they all inherit it.
        let pid = std::process::id().to_string();
        mesh_tests::netns::run("renice", &["-n", &args.nice.to_string(), "-p", &pid])
            .context("renice the bench (run as root, or pass --nice 0)")?;
    }
    let env = Env::read();
    // Before anything is started: every process of the bench inherits the group, so its
    // CPU time is told apart from whatever else runs on the machine.
    let group = CpuGroup::enter("mesh-bench").context("create a cgroup for the bench")?;
    let ksoftirqd = load::ksoftirqd_pids();

    let mut rig = Rig {
        haproxy: None,
        mesh: None,
        base: None,
        mesh_progs: Vec::new(),
        agents: None,
    };
    if cases.contains(&Case::Mesh) {
        eprintln!("bench-mesh: building the mesh topology {MESH_PREFIX}-* (3 nodes, agents)");
        let mut t = Topology::with_prefix(MESH_PREFIX, 3, MESH_SUBNET)?;
        add_tasks(&mut t)?;
        tune(&t)?;
        let names: Vec<&str> = TASKS.iter().map(|&(_, n, _)| n).collect();
        t.set_services(vec![web::service(&names)]);
        t.start_agents()?;
        let agents = group.sibling("agents")?;
        for k in 1..=t.nodes() {
            let pid = t.agent(k).and_then(|a| a.pid()).context("an agent's pid")?;
            agents.adopt(pid)?;
        }
        rig.agents = Some(agents);
        rig.mesh_progs = mesh_programs(&t)?;
        rig.mesh = Some(t);
    }
    if need_base {
        eprintln!(
            "bench-mesh: building the baseline topology {BASE_PREFIX}-* (3 nodes, kernel VXLAN)"
        );
        let mut t = Topology::with_prefix(BASE_PREFIX, 3, BASE_SUBNET)?;
        add_tasks(&mut t)?;
        tune(&t)?;
        kernel_overlay(&t)?;
        if cases.contains(&Case::Haproxy) {
            rig.haproxy = Some(Haproxy::start(&t)?);
        }
        rig.base = Some(t);
    }
    for &case in &cases {
        check_case(&rig, case)?;
    }

    // The kernel counts eBPF run time only while someone asks for it; the fd turns it off
    // again when it is closed, even if this process dies.
    let _stats = if args.no_bpf_stats {
        None
    } else {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("turn on eBPF run-time statistics (BPF_ENABLE_STATS)")?,
        )
    };

    let mut samples = Vec::new();
    let mut quiet = Vec::new();
    let mut quiet_budget = Duration::from_secs(args.quiet_budget);
    for round in 1..=args.rounds {
        quiet.push(wait_quiet(round, &mut quiet_budget)?);
        for &case in &cases {
            // nftables rules exist only while their case runs: a NAT table makes the
            // kernel track connections (conntrack) in the node's namespace, which would
            // tax the other cases.
            let _nft = if case == Case::Nftables {
                Some(Nft::load(rig.topo(case))?)
            } else {
                None
            };
            for &phase in &args.phases {
                let Some(plan) = plan(args, &rig, case, phase) else {
                    continue;
                };
                let s = measure(&rig, &group, &ksoftirqd, round, case, phase, &plan)
                    .with_context(|| format!("round {round}, {}, {}", case.name(), phase.name()))?;
                eprintln!(
                    "round {round} {:<9} {:<22} {:>9.0}/s  p50 {:>7.1} us  p99 {:>7.1} us  \
                     cpu {:>6.1} us/op  errors {}",
                    case.name(),
                    phase.name(),
                    s.rate,
                    s.p50_us,
                    s.p99_us,
                    s.busy_us(),
                    s.errors
                );
                samples.push(s);
            }
        }
    }
    let wall = started.elapsed();
    let report = render(args, &env, &cases, &samples, &quiet, wall)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let reading = existing_reading(&args.out);
    std::fs::write(&args.out, format!("{report}{reading}"))
        .with_context(|| format!("write {}", args.out.display()))?;
    print!("{report}");
    eprintln!(
        "bench-mesh: written to {} in {wall:.0?}",
        args.out.display()
    );
    drop(rig);
    drop(group);
    Ok(())
}

/// Before a round: waits (up to 30 s, and what is left of `budget`) until the machine is
/// nearly idle, since other work on it skews every figure. Returns the busy share of the
/// last check (0..1).
fn wait_quiet(round: usize, budget: &mut Duration) -> Result<f64> {
    let started = Instant::now();
    let deadline = started + (*budget).min(Duration::from_secs(30));
    let share = wait_quiet_until(round, deadline);
    *budget = budget.saturating_sub(started.elapsed());
    share
}

fn wait_quiet_until(round: usize, deadline: Instant) -> Result<f64> {
    loop {
        let a = CpuTimes::read()?;
        std::thread::sleep(Duration::from_millis(300));
        let d = CpuTimes::read()?.since(&a);
        let share = d.busy() as f64 / (d.busy() + d.idle).max(1) as f64;
        if share <= 0.15 {
            return Ok(share);
        }
        if Instant::now() + Duration::from_secs(2) >= deadline {
            eprintln!(
                "bench-mesh: round {round} starts on a busy machine ({:.0} % busy)",
                share * 100.0
            );
            return Ok(share);
        }
        eprintln!(
            "bench-mesh: the machine is {:.0} % busy with other work; waiting before round {round}",
            share * 100.0
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn plan(args: &Args, rig: &Rig, case: Case, phase: Phase) -> Option<Plan> {
    let (tcp, udp) = rig.targets(case);
    let (workload, targets) = match phase {
        Phase::Connections => (
            Workload::Connections {
                workers: args.conn_workers,
            },
            tcp,
        ),
        Phase::KeepAlive => (
            Workload::KeepAlive {
                connections: args.keepalive_conns,
            },
            tcp,
        ),
        Phase::Udp => (
            Workload::Udp {
                sockets: args.udp_sockets,
            },
            udp?,
        ),
        Phase::Paced => (
            Workload::Paced {
                connections: args.paced_conns,
                rate: args.paced_rate,
            },
            tcp,
        ),
    };
    Some(Plan {
        workload,
        targets,
        payload: args.payload.max(8),
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.window),
    })
}

fn measure(
    rig: &Rig,
    group: &CpuGroup,
    ksoftirqd: &[u32],
    round: usize,
    case: Case,
    phase: Phase,
    plan: &Plan,
) -> Result<Sample> {
    let progs = if case == Case::Mesh {
        rig.mesh_progs.clone()
    } else {
        Vec::new()
    };
    let snap = || -> io::Result<Snap> {
        let (bpf_ns, bpf_runs) = bpf_run_time(&progs)?;
        let proc_ns = rig.proc_ns(case)?;
        let mut ksoftirqd_ns = 0;
        for &pid in ksoftirqd {
            ksoftirqd_ns += load::process_runtime_ns(pid).unwrap_or(0);
        }
        Ok(Snap {
            at: Some(Instant::now()),
            machine: CpuTimes::read()?,
            group: group.usage()?,
            ksoftirqd_ns,
            proc_ns,
            bpf_ns,
            bpf_runs,
        })
    };
    let client = rig.topo(case).client_ns();
    let (out, a, b): (Outcome, Snap, Snap) = load::run(&client, plan, snap)?;
    ensure!(
        out.ops > 0,
        "no operation completed in the window ({} errors; first: {})",
        out.errors,
        out.first_error.as_deref().unwrap_or("none")
    );
    Ok(Sample {
        round,
        case,
        phase,
        ops: out.ops,
        errors: out.errors,
        rate: out.rate(),
        p50_us: out.percentile_us(50.0).unwrap_or(f64::NAN),
        p99_us: out.percentile_us(99.0).unwrap_or(f64::NAN),
        machine: b.machine.since(&a.machine),
        capacity_us: match (a.at, b.at) {
            (Some(a), Some(b)) => {
                b.duration_since(a).as_secs_f64()
                    * 1e6
                    * std::thread::available_parallelism().map_or(1, usize::from) as f64
            }
            _ => f64::NAN,
        },
        group: b.group.since(&a.group),
        ksoftirqd_ns: b.ksoftirqd_ns.saturating_sub(a.ksoftirqd_ns),
        proc_ns: b.proc_ns.saturating_sub(a.proc_ns),
        bpf_ns: b.bpf_ns.saturating_sub(a.bpf_ns),
        bpf_runs: b.bpf_runs.saturating_sub(a.bpf_runs),
        tasks: out.tasks,
        first_error: out.first_error,
    })
}

/// Sum of run time and run count of the given eBPF programs.
fn bpf_run_time(ids: &[u32]) -> io::Result<(u64, u64)> {
    if ids.is_empty() {
        return Ok((0, 0));
    }
    let (mut ns, mut runs) = (0, 0);
    for info in aya::programs::loaded_programs() {
        let info = info.map_err(io::Error::other)?;
        if ids.contains(&info.id()) {
            ns += info.run_time().as_nanos() as u64;
            runs += info.run_count();
        }
    }
    Ok((ns, runs))
}

/// The ids of the packet programs (XDP, TC) behind the links the mesh's agents pinned;
/// not the socket programs (`cgroup-*`), which run per connect, not per packet.
fn mesh_programs(topo: &Topology) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for k in 1..=topo.nodes() {
        let dir = topo.pin_dir(k).join("links");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !(name.starts_with("xdp-") || name.starts_with("tc-")) {
                continue;
            }
            let link = aya::programs::links::PinnedLink::from_pin(&path)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("open the pinned link {}", path.display()))?;
            let info = aya::programs::links::FdLink::from(link)
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !ids.contains(&info.program_id()) {
                ids.push(info.program_id());
            }
        }
    }
    ensure!(!ids.is_empty(), "the mesh's agents pinned no links");
    Ok(ids)
}

fn add_tasks(topo: &mut Topology) -> Result<()> {
    for (node, name, addr) in TASKS {
        topo.add_task(node, name, addr)?;
    }
    Ok(())
}

/// The same settings in both topologies: nodes forward (every container host does),
/// and the client and nodes may reuse TIME_WAIT ports for new outgoing connections over
/// the whole port range: a client that opens thousands of connections a second to one
/// address would otherwise run out of ports within seconds.
fn tune(topo: &Topology) -> Result<()> {
    let mut namespaces: Vec<String> = (1..=topo.nodes()).map(|k| topo.node_ns(k)).collect();
    namespaces.push(topo.client_ns());
    for ns in namespaces {
        exec_in(
            &ns,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65535",
            ],
        )?;
    }
    Ok(())
}

/// The baseline topology's network: the client routes each task's /24 through the
/// task's node (for the direct case), and the nodes reach each other's tasks over the
/// kernel's VXLAN device, as flannel's vxlan backend and Docker's overlay driver do:
/// node `k` has `vx0` with address `10.255.k.0`, a route per peer's task subnet via the
/// peer's VTEP address, and static neighbour and FDB entries (no learning).
fn kernel_overlay(topo: &Topology) -> Result<()> {
    let mac = |k: usize| format!("02:76:78:00:00:{k:02x}");
    for k in 1..=topo.nodes() {
        let ns = topo.node_ns(k);
        let local = topo.node_addr(k).to_string();
        ip_in(
            &ns,
            &[
                "link",
                "add",
                "vx0",
                "address",
                &mac(k),
                "type",
                "vxlan",
                "id",
                BASE_VNI,
                "dstport",
                "4789",
                "local",
                &local,
                "dev",
                "eth0",
                "nolearning",
            ],
        )?;
        ip_in(
            &ns,
            &["addr", "add", &format!("10.255.{k}.0/32"), "dev", "vx0"],
        )?;
        ip_in(&ns, &["link", "set", "vx0", "up"])?;
        for j in (1..=topo.nodes()).filter(|&j| j != k) {
            let vtep = format!("10.255.{j}.0");
            ip_in(
                &ns,
                &[
                    "route",
                    "add",
                    &format!("10.255.{j}.0/24"),
                    "via",
                    &vtep,
                    "dev",
                    "vx0",
                    "onlink",
                ],
            )?;
            ip_in(
                &ns,
                &[
                    "neigh",
                    "replace",
                    &vtep,
                    "lladdr",
                    &mac(j),
                    "dev",
                    "vx0",
                    "nud",
                    "permanent",
                ],
            )?;
            exec_in(
                &ns,
                "bridge",
                &[
                    "fdb",
                    "append",
                    &mac(j),
                    "dev",
                    "vx0",
                    "dst",
                    &topo.node_addr(j).to_string(),
                ],
            )?;
        }
    }
    let client = topo.client_ns();
    for k in 1..=topo.nodes() {
        ip_in(
            &client,
            &[
                "route",
                "add",
                &format!("10.255.{k}.0/24"),
                "via",
                &topo.node_addr(k).to_string(),
            ],
        )?;
    }
    Ok(())
}

/// The nftables ruleset on node 1, shaped like kube-proxy's nftables mode: a verdict map
/// of node ports, a service chain that marks for masquerade and picks an endpoint chain
/// with `numgen`, endpoint chains that DNAT, and masquerade of marked packets. `numgen
/// inc` (round robin, like the mesh and HAProxy) instead of kube-proxy's `numgen random`:
/// the same cost, and the same spread over the tasks as the other cases.
fn nft_ruleset(topo: &Topology) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    let _ = writeln!(s, "  map nodeports {{");
    let _ = writeln!(s, "    type inet_proto . inet_service : verdict");
    let _ = writeln!(
        s,
        "    elements = {{ tcp . {TCP_PORT} : goto svc-web, udp . {UDP_PORT} : goto svc-web }}"
    );
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain prerouting {{");
    let _ = writeln!(
        s,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(
        s,
        "    fib daddr type local meta l4proto . th dport vmap @nodeports"
    );
    let _ = writeln!(s, "  }}");
    let eps: Vec<String> = (0..TASKS.len())
        .map(|i| format!("{i} : goto ep-{}", i + 1))
        .collect();
    let _ = writeln!(s, "  chain svc-web {{");
    let _ = writeln!(s, "    meta mark set meta mark or 0x4000");
    let _ = writeln!(
        s,
        "    numgen inc mod {} vmap {{ {} }}",
        TASKS.len(),
        eps.join(", ")
    );
    let _ = writeln!(s, "  }}");
    for (i, &(_, _, addr)) in TASKS.iter().enumerate() {
        let _ = writeln!(s, "  chain ep-{} {{", i + 1);
        for proto in ["tcp", "udp"] {
            let _ = writeln!(s, "    meta l4proto {proto} dnat to {addr}:{TASK_PORT}");
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "  chain postrouting {{");
    let _ = writeln!(
        s,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(s, "    meta mark & 0x4000 == 0 return");
    let _ = writeln!(s, "    meta mark set meta mark xor 0x4000");
    let _ = writeln!(s, "    masquerade fully-random");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    let _ = topo;
    s
}

/// The nftables table on node 1 while it exists; dropping it deletes the table.
struct Nft {
    ns: String,
}

impl Nft {
    fn load(topo: &Topology) -> Result<Self> {
        let ns = topo.node_ns(1);
        let path = topo.dir().join("nftables.nft");
        std::fs::write(&path, nft_ruleset(topo))
            .with_context(|| format!("write {}", path.display()))?;
        exec_in(&ns, "nft", &["-f", &path.to_string_lossy()])?;
        Ok(Self { ns })
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        if let Err(e) = exec_in(&self.ns, "nft", &["delete", "table", "ip", NFT_TABLE]) {
            eprintln!("bench-mesh: {e:#}");
        }
    }
}

/// HAProxy in node 1 of the baseline topology; killed on drop.
struct Haproxy {
    child: Child,
    pid: u32,
}

impl Haproxy {
    fn start(topo: &Topology) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let node = topo.node_addr(1);
        let mut cfg = String::new();
        let _ = writeln!(cfg, "global\n    nbthread {cores}\n    maxconn 8000\n");
        let _ = writeln!(
            cfg,
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    \
             timeout server 60s\n"
        );
        let _ = writeln!(
            cfg,
            "frontend web\n    bind {node}:{HAPROXY_PORT}\n    default_backend web\n"
        );
        let _ = writeln!(cfg, "backend web\n    balance roundrobin");
        for (_, name, addr) in TASKS {
            let _ = writeln!(cfg, "    server {name} {addr}:{TASK_PORT}");
        }
        let path = topo.dir().join("haproxy.cfg");
        std::fs::write(&path, cfg).with_context(|| format!("write {}", path.display()))?;
        let log_path = topo.dir().join("haproxy.log");
        let log = File::create(&log_path)?;
        // `ip netns exec` execs haproxy: the child's pid is haproxy's (-db: no daemon,
        // one process, `nbthread` threads).
        let child = Command::new("ip")
            .args(["netns", "exec", &topo.node_ns(1), "haproxy", "-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start haproxy")?;
        let pid = child.id();
        let mut h = Self { child, pid };
        let addr = SocketAddr::from((node, HAPROXY_PORT));
        let client = topo.client_ns();
        let log_tail = || std::fs::read_to_string(&log_path).unwrap_or_default();
        poll_until(Duration::from_secs(10), "haproxy to listen", || {
            if let Some(status) = h.child.try_wait()? {
                bail!("haproxy exited ({status}): {}", log_tail());
            }
            Ok(in_netns(&client, || tcp_reachable(addr))?.then_some(()))
        })?;
        Ok(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One TCP and one UDP exchange per case before anything is measured: the path works,
/// and the task sees the address it should (the client's own for direct and the mesh,
/// the node's for the NATing and proxying cases).
fn check_case(rig: &Rig, case: Case) -> Result<()> {
    let topo = rig.topo(case);
    let client = topo.client_addr();
    let (tcp, udp) = rig.targets(case);
    let _nft = if case == Case::Nftables {
        Some(Nft::load(topo)?)
    } else {
        None
    };
    let mut seen = Vec::new();
    for i in 0..TASKS.len() {
        let t = tcp[i % tcp.len()];
        let r = in_netns(&topo.client_ns(), || request_tcp(t))?
            .with_context(|| format!("{}: TCP to {t}", case.name()))?;
        seen.push(r);
    }
    if let Some(udp) = &udp {
        let u = udp[0];
        let (r, _) = in_netns(&topo.client_ns(), || request_udp(u, b"check"))?
            .with_context(|| format!("{}: UDP to {u}", case.name()))?;
        seen.push(r);
    }
    for r in &seen {
        let preserved = r.peer_ip() == Some(client);
        match case {
            Case::Direct | Case::Mesh => ensure!(
                preserved,
                "{}: {} saw {}, not the client",
                case.name(),
                r.task,
                r.peer
            ),
            Case::Nftables | Case::Haproxy => ensure!(
                !preserved,
                "{}: {} saw the client's address: the traffic did not go through the \
                 node's NAT/proxy",
                case.name(),
                r.task
            ),
        }
    }
    let line: Vec<String> = seen
        .iter()
        .map(|r| format!("{} saw {}", r.task, r.peer))
        .collect();
    eprintln!("bench-mesh: {:<9} ok: {}", case.name(), line.join(", "));
    Ok(())
}

/// The machine, for the report.
struct Env {
    cpu: String,
    cores: usize,
    kernel: String,
    date: String,
    commit: String,
    haproxy: String,
    nft: String,
    loadavg: String,
}

impl Env {
    fn read() -> Self {
        let cmd = |p: &str, a: &[&str]| {
            Command::new(p)
                .args(a)
                .stderr(Stdio::null())
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into())
        };
        let first_line = |s: String| s.lines().next().unwrap_or_default().to_owned();
        let machine = mesh_tests::machine::Machine::this();
        Self {
            cpu: machine.cpu,
            cores: machine.cores,
            kernel: machine.kernel,
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: cmd("git", &["rev-parse", "--short", "HEAD"]),
            haproxy: first_line(cmd("haproxy", &["-v"])),
            nft: cmd("nft", &["--version"]),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median over rounds of `f` for one case and phase; `None` if not measured.
fn med(samples: &[Sample], case: Case, phase: Phase, f: impl Fn(&Sample) -> f64) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.case == case && s.phase == phase)
        .map(f)
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn fmt_num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) if x.is_finite() => {
            if decimals == 0 {
                thousands(x.round() as u64)
            } else {
                format!("{x:.decimals$}")
            }
        }
        _ => "n/a".into(),
    }
}

/// 12345 -> "12 345".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

fn ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if x.is_finite() && b.is_finite() && b != 0.0 => {
            format!("{:.2}", x / b)
        }
        _ => "n/a".into(),
    }
}

fn render(
    args: &Args,
    env: &Env,
    cases: &[Case],
    samples: &[Sample],
    quiet: &[f64],
    wall: Duration,
) -> Result<String> {
    let mut s = String::new();
    let w = &mut s;
    writeln!(
        w,
        "# Mesh benchmark: the mesh beside direct, nftables and HAProxy\n"
    )?;
    writeln!(
        w,
        "Machine: {}, {} cores, kernel {}. Run {} at commit {}, load average before the \
         run {}; {} rounds, {:.1} s windows after {:.1} s of warm-up; the run took {:.0} s.\n\
         {}; {}.\n",
        env.cpu,
        env.cores,
        env.kernel,
        env.date,
        env.commit,
        env.loadavg,
        args.rounds,
        args.window,
        args.warmup,
        wall.as_secs_f64(),
        env.haproxy,
        env.nft
    )?;
    let others: Vec<f64> = samples.iter().map(Sample::other_share).collect();
    writeln!(
        w,
        "Other work on the machine (not the bench's) took a median {:.0} % (max {:.0} %) \
         of the CPU during the windows; the bench ran at nice {}.\n",
        median(others.clone()) * 100.0,
        others.iter().copied().fold(0.0, f64::max) * 100.0,
        args.nice
    )?;
    writeln!(
        w,
        "Rerun: `cargo xtask bench mesh` (root). Medians over the rounds; the method and \
         every round's raw figures follow the tables.\n"
    )?;

    let conn = |c| med(samples, c, Phase::Connections, |s| s.rate);
    let ka = |c| med(samples, c, Phase::KeepAlive, |s| s.rate);
    let udp = |c| med(samples, c, Phase::Udp, |s| s.rate);
    let p50 = |c| med(samples, c, Phase::Paced, |s| s.p50_us);
    let p99 = |c| med(samples, c, Phase::Paced, |s| s.p99_us);
    let cpu = |c| med(samples, c, Phase::Paced, Sample::busy_us);
    writeln!(w, "## Results\n")?;
    writeln!(
        w,
        "| case | new conn/s | kept-alive req/s | UDP req+resp/s | p50 µs | p99 µs | CPU µs/req |"
    )?;
    writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for &c in cases {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.name(),
            fmt_num(conn(c), 0),
            fmt_num(ka(c), 0),
            fmt_num(udp(c), 0),
            fmt_num(p50(c), 1),
            fmt_num(p99(c), 1),
            fmt_num(cpu(c), 1)
        )?;
    }
    writeln!(
        w,
        "\nnew conn/s: connect, banner, one {}-byte request and its echo, close, {} workers. \
         kept-alive req/s: {} connections, closed loop. UDP: request/response pairs per \
         second (each is one datagram each way), {} sockets, one datagram outstanding per \
         socket; HAProxy cannot balance UDP: n/a. p50/p99 and CPU µs/req: kept-alive \
         requests at a fixed {} req/s over {} connections (the same offered load in every \
         case), latency from send to echo; CPU: CPU time of the bench's processes per \
         request, client and servers included (see the CPU table and Method).\n",
        args.payload.max(8),
        args.conn_workers,
        args.keepalive_conns,
        args.udp_sockets,
        args.paced_rate,
        args.paced_conns
    )?;

    writeln!(
        w,
        "### Ratios (case / direct, case / mesh)\n\nThroughput: higher is better. Latency \
         and CPU: lower is better.\n"
    )?;
    writeln!(
        w,
        "| case | new conn/s | kept-alive req/s | UDP req+resp/s | p50 | p99 | CPU/req |"
    )?;
    writeln!(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    let has_mesh = cases.contains(&Case::Mesh);
    let has_direct = cases.contains(&Case::Direct);
    for &c in cases {
        let cell = |f: &dyn Fn(Case) -> Option<f64>| {
            let d = if has_direct {
                ratio(f(c), f(Case::Direct))
            } else {
                "n/a".into()
            };
            let m = if has_mesh {
                ratio(f(c), f(Case::Mesh))
            } else {
                "n/a".into()
            };
            format!("{d} / {m}")
        };
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.name(),
            cell(&conn),
            cell(&ka),
            cell(&udp),
            cell(&p50),
            cell(&p99),
            cell(&cpu)
        )?;
    }

    writeln!(w, "\n### CPU per operation, by phase (µs, medians)\n")?;
    writeln!(
        w,
        "cpu: CPU time of the bench's own processes (the client's load generator, the three \
         tasks, and HAProxy), with the kernel work they caused in their context, plus \
         ksoftirqd's, per operation; +direct: cpu minus direct's in the same \
         phase, i.e. what the load balancer added; kernel / user: its split; softirq: \
         machine-wide softirq time (sampled); machine: the whole machine's busy time \
         (capacity minus idle), whatever ran (other work on the machine shows here, not \
         in cpu); proxy: HAProxy's own process (in cpu), or for the mesh \
         the three lb-agents (not in cpu: not on the packet path; see Method); eBPF: run time of the mesh's XDP and \
         TC programs on all three nodes, and program runs per operation. See Method.\n"
    )?;
    writeln!(
        w,
        "| phase | case | cpu | +direct | kernel | user | softirq | machine | proxy | eBPF | eBPF runs/op |"
    )?;
    writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for phase in Phase::ALL {
        for &c in cases {
            let Some(busy) = med(samples, c, phase, Sample::busy_us) else {
                continue;
            };
            let plus = med(samples, Case::Direct, phase, Sample::busy_us)
                .map_or_else(|| "n/a".into(), |d| format!("{:+.1}", busy - d));
            let bpf = |f: fn(&Sample) -> f64, d: usize| {
                if c == Case::Mesh && !args.no_bpf_stats {
                    fmt_num(med(samples, c, phase, f), d)
                } else {
                    "-".into()
                }
            };
            let proc = if matches!(c, Case::Mesh | Case::Haproxy) {
                fmt_num(med(samples, c, phase, Sample::proc_us), 1)
            } else {
                "-".into()
            };
            writeln!(
                w,
                "| {} | {} | {busy:.1} | {plus} | {} | {} | {} | {} | {proc} | {} | {} |",
                phase.short(),
                c.name(),
                fmt_num(med(samples, c, phase, Sample::kernel_us), 1),
                fmt_num(med(samples, c, phase, Sample::user_us), 1),
                fmt_num(med(samples, c, phase, Sample::softirq_us), 1),
                fmt_num(med(samples, c, phase, Sample::machine_us), 1),
                bpf(Sample::bpf_us, 2),
                bpf(Sample::bpf_runs_per_op, 1),
            )?;
        }
    }
    writeln!(w, "\n## Method\n")?;
    w.push_str(METHOD);

    writeln!(w, "\n## Raw numbers\n")?;
    writeln!(
        w,
        "Machine busy share before each round (the bench waits, up to 30 s a round and \
         {} s a run, for it to fall under 15 %): {}.\n",
        args.quiet_budget,
        quiet
            .iter()
            .map(|q| format!("{:.0} %", q * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        w,
        "One line per window. ops: operations completed in the window; rate: ops/s; \
         p50/p99: µs, from every operation of the window; grp_us, grp_user, grp_sys: the \
         bench's cgroup (µs); ksoft_us: ksoftirqd (µs); proc_us: HAProxy or the agents \
         (µs); m_*: machine-wide `/proc/stat` ticks (10 ms); bpf: ns and runs of the \
         mesh's programs; other: share of the machine's CPU that went to other work.\n"
    )?;
    writeln!(w, "```text")?;
    writeln!(
        w,
        "{:<5} {:<8} {:<9} {:>7} {:>4} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>7} {:>5}",
        "round",
        "case",
        "phase",
        "ops",
        "err",
        "rate",
        "p50",
        "p99",
        "grp_us",
        "grp_user",
        "grp_sys",
        "ksoft_us",
        "proc_us",
        "m_user",
        "m_sys",
        "m_soft",
        "m_idle",
        "m_steal",
        "bpf_ns",
        "bpf_runs",
        "other"
    )?;
    for s in samples {
        writeln!(
            w,
            "{:<5} {:<8} {:<9} {:>7} {:>4} {:>7.0} {:>7.1} {:>7.1} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>7} {:>4.0}%",
            s.round,
            s.case.name(),
            s.phase.short(),
            s.ops,
            s.errors,
            s.rate,
            s.p50_us,
            s.p99_us,
            s.group.usage_us,
            s.group.user_us,
            s.group.system_us,
            s.ksoftirqd_ns / 1000,
            s.proc_ns / 1000,
            s.machine.user,
            s.machine.system + s.machine.irq,
            s.machine.softirq,
            s.machine.idle,
            s.machine.steal,
            s.bpf_ns,
            s.bpf_runs,
            s.other_share() * 100.0
        )?;
    }
    writeln!(w, "```\n")?;
    writeln!(
        w,
        "Which task answered (per connection or socket; per connection in the \
         new-connection phase), summed over the rounds, with warm-ups:\n"
    )?;
    writeln!(w, "```text")?;
    for &c in cases {
        for phase in Phase::ALL {
            let mut total: BTreeMap<&str, u64> = BTreeMap::new();
            let mut errs = None;
            for smp in samples.iter().filter(|x| x.case == c && x.phase == phase) {
                for (t, n) in &smp.tasks {
                    *total.entry(t).or_default() += n;
                }
                if errs.is_none() {
                    errs.clone_from(&smp.first_error);
                }
            }
            if total.is_empty() {
                continue;
            }
            let list: Vec<String> = total.iter().map(|(t, n)| format!("{t}={n}")).collect();
            write!(w, "{:<9} {:<9} {}", c.name(), phase.short(), list.join(" "))?;
            if let Some(e) = errs {
                write!(w, "  (first error: {e})")?;
            }
            writeln!(w)?;
        }
    }
    writeln!(w, "```")?;
    Ok(s)
}

/// The `## Reading` section of an earlier report (written by a person, about the run it
/// sat under), kept when the figures are rewritten.
fn existing_reading(path: &Path) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    match old.find("\n## Reading") {
        Some(i) => old[i..].to_owned(),
        None => String::new(),
    }
}

const METHOD: &str = "\
Two identical topologies of network namespaces, built by the end-to-end tests' harness
(`tests/src/topology.rs`): an underlay bridge, three nodes and a client on it (veth pairs
with GRO on the bridge side and tx checksum offload off, as the harness makes them to
behave like a wire), and three tasks, one per node, each `task-echo` (the harness's
server: a thread per TCP connection that writes a one-line banner and then echoes; one
thread answering UDP) behind a veth in its node. The client always connects to node 1
(or, for direct, to the tasks themselves). Every load-balanced case spreads new
connections round robin over the same three tasks: one on node 1 itself, two on other
nodes, so two thirds of the traffic crosses the underlay twice.

- **mesh** runs in topology `bmm`: `lb-agent` on every node, as the end-to-end tests run
  it (generic XDP on the veth underlay, TC on the task veths, VXLAN in eBPF), service
  `web` published on 8080/tcp and 8081/udp. The task sees the client's address; replies
  of remote tasks return through node 1 encapsulated.
- **direct**, **nftables** and **haproxy** run in topology `bmb`, which has no agent and
  no eBPF: so each case is pure, the mesh's programs are never attached there. Nodes
  reach each other's tasks through the kernel's VXLAN device (`vx0`, static FDB and
  neighbour entries; flannel's vxlan backend and Docker's overlay do the same), so the
  baselines also pay for encapsulation to remote tasks.
  - **direct**: the client routes each task's subnet through the task's own node and
    connects to the task's address: plain forwarding on one node, no load balancer, no
    tunnel (the topology's limit). Connections rotate over the three tasks.
  - **nftables**: a kube-proxy-style ruleset on node 1 (node-port verdict map, `numgen inc
    mod 3` to per-endpoint DNAT chains, mark, `masquerade fully-random` in postrouting):
    the path of kube-proxy's nftables mode and of Docker Swarm's iptables DNAT. The table
    is created before the case's phases in each round and deleted after them, so
    connection tracking runs in node 1 only during this case.
  - **haproxy**: HAProxy (Debian's package) on node 1, `mode tcp`, `balance roundrobin`,
    one thread per core, started once and idle during the other cases. It has no UDP
    load balancing: UDP is reported as n/a.
- Sysctls, the same in both topologies: `ip_forward=1` on the nodes, and on nodes and
  client `tcp_tw_reuse=1` with `ip_local_port_range=1024 65535` (thousands of new
  connections a second to one address exhaust the default port range within seconds).
- Load: `bench-mesh` (our own Rust, `tests/src/load.rs`), blocking sockets, one thread
  per connection or socket, in the client's namespace. Phases, in this order for each
  case: new connections (closed loop), kept-alive requests (closed loop), UDP
  request/response (closed loop; a datagram unanswered after 200 ms counts as an error),
  and kept-alive requests at a fixed rate (latency and CPU at equal load). Each phase
  warms up, then counts the operations that complete inside its window.
- Interleaving: every round runs every case once (direct, mesh, nftables, haproxy, then
  again); the tables show the median over rounds of each figure.
- CPU: all namespaces share one kernel and two CPUs, so time cannot be charged to a
  namespace. `bench-mesh` moves itself into a cgroup (v2) of its own before it starts
  anything, so the load generator, the tasks and HAProxy run in it and nothing else
  does; the `cpu` figure is that cgroup's `usage_usec` (the scheduler's exact clock)
  plus the run time of the `ksoftirqd` threads, over the window, per operation. The
  mesh's agents are moved to a group of their own once they are ready: they are not on
  the packet path, and their periodic flow-table sweep is the counterpart of
  conntrack's garbage collection, which runs in a kworker and is not counted for
  nftables either; their time is in the `proxy` column. On veth, a packet's whole journey (bridge, node, NAT or XDP or proxy
  socket, tunnel, task) runs as softirq work inside the sending task's system call, so it
  is charged to the bench's processes; what overflows goes to ksoftirqd. Not counted:
  softirq work that lands while a CPU idles (timers), conntrack's garbage collection
  (a kworker). The figure includes the client and the servers, whose work per operation
  is the same in every case, so the difference to direct (`+direct`) is what the load
  balancer adds. This kernel has tick-based accounting (`CONFIG_HZ=250`, no IRQ time
  accounting): the kernel/user split and the machine-wide softirq column are sampled.
  HAProxy's own time (`/proc/<pid>/task/*/schedstat`) and the eBPF programs' run time
  (`BPF_ENABLE_STATS`, held for the whole run; it adds two clock reads per program run,
  a few tens of ns, to the mesh only) attribute part of it exactly. In the closed-loop
  phases the machine is saturated, so CPU per operation there is close to two cores
  divided by the rate; the fixed-rate phase compares CPU cost at the same load.
- Other work on the machine: the bench renices itself to -10 before it starts anything
  (the tasks, agents and HAProxy inherit it), so that other work yields to it; before
  each round it waits (up to 30 s a round, a minute a run) until the machine is less
  than 15 % busy. Each window's share of CPU that went to other work is in the raw
  numbers. Such work still slows every case it overlaps (throughput and tail latency
  most; CPU per operation, which counts only the bench's processes, least); the
  interleaved rounds and medians damp it.
- Limits: the load generator, the servers and the node share two cores, so throughput is
  the whole system's, not the load balancer's alone; the server spawns a thread per
  connection, which bounds new connections per second in every case and narrows the
  ratios there. The mesh's XDP runs in generic (skb) mode on veth, as in the tests:
  on a NIC with native XDP, its packets would skip skb allocation too.
";
