//! `bench-scale`: the control plane with many nodes, simulated on one machine. Writes the
//! report (`cargo xtask bench scale` passes `--out bench-results/scale.md`).
//!
//! For each number of managers (`--managers`, real `mesh-manager` processes started by the
//! test harness, `tests/src/cluster.rs`) and of nodes (`--nodes`, simulated agents in
//! this process: [`mesh_tests::sim`]), one after the other:
//! 1. join: every simulated agent joins with the worker token and opens its session
//!    (through a [`CountingProxy`] in front of the leader); until every agent received an
//!    assignment and the leader lists every node ready;
//! 2. create: one `CreateService` of `--big` replicas; until the leader reports all of
//!    them running (each agent reports its tasks running as soon as it is assigned them);
//! 3. fill: services of `--replicas` replicas (`CreateService` each, a few in flight)
//!    until `--tasks` tasks in all run;
//! 4. idle: the bytes the managers send the agents when nothing changes (keep-alive
//!    answers), and the leader's CPU, over a few seconds;
//! 5. scale: `--rounds` rounds of `UpdateService` of one service, replicas +1 then -1;
//!    for each, the time from the call's return until every agent's last assignment lists
//!    the new backend set of that service (for -1: the removed task drained and gone),
//!    and the bytes sent to the agents meanwhile (until the traffic falls back to idle),
//!    less the idle traffic of that window.
//!
//! Then the leader's CPU time (utime + stime of /proc/<pid>/stat, per phase), its memory
//! (VmHWM, VmRSS), its Raft database's size and its `/metrics` (commit index, snapshot
//! index and size). A phase that does not finish within `--time-limit` ends that
//! configuration: what was measured so far is reported, with the reason.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use mesh_client::proto;
use mesh_tests::cluster::{Cluster, ClusterOptions, connect_control};
use mesh_tests::sim::{self, CountingProxy, Fleet, FleetOptions};
use mesh_tests::stats::percentile;

#[derive(Debug, Parser)]
#[command(about = "Control plane at scale: real managers, simulated agents")]
struct Args {
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench-results/scale.md")]
    out: PathBuf,
    /// Simulated nodes, comma-separated; each is run with every `--managers`.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
    nodes: Vec<usize>,
    /// Managers, comma-separated (1, 3 or 5).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    managers: Vec<usize>,
    /// Tasks in all: the big service's, then services of `--replicas` until this many.
    #[arg(long, default_value_t = 10_000)]
    tasks: u32,
    /// Replicas of the big service whose creation is timed (at most 1,000).
    #[arg(long, default_value_t = 1_000)]
    big: u32,
    /// Replicas of each other service (the scaled one is the first of them).
    #[arg(long, default_value_t = 10)]
    replicas: u32,
    /// Scale rounds (one +1 and one -1 each).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Seconds a phase may take before its configuration is given up.
    #[arg(long, default_value_t = 600)]
    time_limit: u64,
    /// Simulated agents joining at once.
    #[arg(long, default_value_t = 32)]
    join_concurrency: usize,
    /// `CreateService` calls in flight at once while filling.
    #[arg(long, default_value_t = 8)]
    create_concurrency: usize,
    /// The agents' heartbeat period (`mesh-manager --heartbeat-ms`; the daemon's default).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// `mesh-manager --snapshot-interval`: entries between snapshots (the daemon's
    /// default is 5000; lower, a run of a few thousand writes takes some).
    #[arg(long, default_value_t = 5000)]
    snapshot_interval: u64,
    /// Seconds of idle traffic measured before the scale rounds.
    #[arg(long, default_value_t = 3.0)]
    idle_seconds: f64,
}

/// One scale change.
#[derive(Clone, Copy, Debug)]
struct Change {
    /// The `UpdateService` call (with its `InspectService`), until it returned.
    ack_ms: f64,
    /// From the call's return until the last agent had the new backend set.
    all_ms: f64,
    /// The median agent's time.
    agent_p50_ms: f64,
    /// Bytes sent to the agents from the call until the traffic fell back to idle.
    bytes_raw: u64,
    /// The same less the idle traffic of that window.
    bytes: f64,
    /// The assignment messages' encoded size over the same window, by the leader's
    /// own count (`mesh_manager_assignment_sent_bytes_total`): protobuf, without TLS
    /// and HTTP/2 framing, and whichever address the agents reach the leader on.
    encoded: f64,
}

/// A leader's CPU and the simulator's over one phase.
#[derive(Clone, Debug)]
struct Phase {
    name: &'static str,
    wall_s: f64,
    leader_cpu_s: f64,
    sim_cpu_s: f64,
}

/// One configuration's results.
#[derive(Clone, Debug, Default)]
struct Run {
    managers: usize,
    nodes: usize,
    join_s: Option<f64>,
    big_s: Option<f64>,
    fill_s: Option<f64>,
    running: u64,
    services: u64,
    idle_bytes_per_s: Option<f64>,
    up: Vec<Change>,
    down: Vec<Change>,
    phases: Vec<Phase>,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
    sim_hwm_kib: u64,
    redb_bytes: u64,
    snapshot_bytes: Option<f64>,
    snapshot_index: Option<f64>,
    commit_index: Option<f64>,
    sessions_lost: u64,
    /// Calls refused (e.g. no quorum) and retried while filling.
    failed_calls: u64,
    note: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Clock ticks per second, for /proc/<pid>/stat.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (or this process), in seconds.
fn cpu_seconds(pid: Option<u32>, ticks: f64) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The fields after the command (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, that is 11 and 12 after the command.
    (field(11) + field(12)) / ticks
}

/// VmHWM and VmRSS of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

/// The size of every `.redb` file under `dir`.
fn redb_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                redb_bytes(&path)
            } else if path.extension().is_some_and(|x| x == "redb") {
                e.metadata().map_or(0, |m| m.len())
            } else {
                0
            }
        })
        .sum()
}

/// Times phases' wall clock and CPU.
struct Meter {
    pid: u32,
    ticks: f64,
    start: Instant,
    leader: f64,
    sim: f64,
}

impl Meter {
    fn new(pid: u32, ticks: f64) -> Self {
        Self {
            pid,
            ticks,
            start: Instant::now(),
            leader: cpu_seconds(Some(pid), ticks),
            sim: cpu_seconds(None, ticks),
        }
    }

    fn phase(&mut self, name: &'static str) -> Phase {
        let now = Self::new(self.pid, self.ticks);
        let phase = Phase {
            name,
            wall_s: now.start.duration_since(self.start).as_secs_f64(),
            leader_cpu_s: now.leader - self.leader,
            sim_cpu_s: now.sim - self.sim,
        };
        *self = now;
        phase
    }
}

/// Waits until the managers' traffic to the agents falls back to about its idle rate
/// (at most 10 s); returns when.
async fn settle(proxy: &CountingProxy, idle_per_s: f64) -> Instant {
    let step = Duration::from_millis(250);
    let limit = Instant::now() + Duration::from_secs(10);
    let mut last = proxy.down();
    loop {
        tokio::time::sleep(step).await;
        let now = proxy.down();
        #[allow(clippy::cast_precision_loss)]
        let rate = (now - last) as f64 / step.as_secs_f64();
        last = now;
        if rate <= idle_per_s * 1.5 + 4096.0 || Instant::now() >= limit {
            return Instant::now();
        }
    }
}

/// Everything the phases need of the cluster.
struct Target {
    pid: u32,
    leader_addr: SocketAddr,
    join: Vec<String>,
    tls: PathBuf,
    root: PathBuf,
    token: String,
    managers: usize,
    metrics: SocketAddr,
}

/// The leader's count of assignment bytes sent so far.
async fn assignment_bytes(metrics: SocketAddr) -> f64 {
    tokio::task::spawn_blocking(move || {
        mesh_tests::client::http_get(metrics, "/metrics")
            .map(|body| mesh_tests::cluster::parse_metrics(&body))
            .ok()
            .and_then(|m| m.get("mesh_manager_assignment_sent_bytes_total").copied())
            .unwrap_or(f64::NAN)
    })
    .await
    .unwrap_or(f64::NAN)
}

/// The phases of one configuration, filling `run` as they go.
async fn phases(args: &Args, target: &Target, run: &mut Run, ticks: f64) -> Result<()> {
    let limit = Duration::from_secs(args.time_limit);
    let mut meter = Meter::new(target.pid, ticks);
    let start = Instant::now();
    let proxy = CountingProxy::start("127.0.0.1:0".parse()?, target.leader_addr).await?;
    let fleet = Fleet::start(FleetOptions {
        nodes: run.nodes,
        join: target.join.clone(),
        session: vec![proxy.addr.to_string()],
        token: target.token.clone(),
        root: target.root.clone(),
        hostname_prefix: "sim".into(),
        join_concurrency: args.join_concurrency,
        digest_every_service: false,
    });
    let result = drive(args, target, run, &fleet, &proxy, &mut meter, start, limit).await;
    run.sessions_lost = fleet.lost();
    let (hwm, rss) = memory_kib(target.pid);
    run.vm_hwm_kib = hwm;
    run.vm_rss_kib = rss;
    run.sim_hwm_kib = memory_kib(std::process::id()).0;
    fleet.stop().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &Args,
    target: &Target,
    run: &mut Run,
    fleet: &Fleet,
    proxy: &CountingProxy,
    meter: &mut Meter,
    start: Instant,
    limit: Duration,
) -> Result<()> {
    let nodes = run.nodes;
    // 1. Join.
    let mut control = connect_control(&[target.leader_addr.to_string()], &target.tls).await?;
    sim::wait_for(
        start + limit,
        "every simulated agent's first assignment",
        || async {
            let errors = fleet.errors();
            ensure!(
                errors.is_empty(),
                "simulated agents failed: {}",
                errors.join("; ")
            );
            Ok((fleet.assigned() == nodes).then_some(()))
        },
    )
    .await
    .with_context(|| {
        format!(
            "{} of {nodes} agents had an assignment, {} had a session",
            fleet.assigned(),
            fleet.established()
        )
    })?;
    let want_ready = nodes + target.managers;
    sim::wait_for(start + limit, "every node ready", || {
        let mut control = control.clone();
        async move {
            let listed = control
                .list_nodes(proto::ListNodesRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("ListNodes: {}", s.message()))?
                .into_inner()
                .nodes;
            let ready = listed.iter().filter(|n| n.status == "ready").count();
            Ok((ready >= want_ready).then_some(()))
        }
    })
    .await?;
    run.join_s = Some(start.elapsed().as_secs_f64());
    run.phases.push(meter.phase("join"));
    eprintln!(
        "  joined {nodes} agents in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // 2. One big service.
    let t0 = Instant::now();
    sim::create_service(&mut control, "big", args.big).await?;
    sim::wait_for(t0 + limit, "the big service's tasks to run", || {
        let mut control = control.clone();
        async move {
            // A refused read (no quorum) is one more poll.
            let Ok(reply) = control
                .inspect_service(proto::ServiceRef { name: "big".into() })
                .await
            else {
                return Ok(None);
            };
            let reply = reply.into_inner();
            Ok((reply.running >= reply.desired && reply.desired > 0).then_some(()))
        }
    })
    .await?;
    run.big_s = Some(t0.elapsed().as_secs_f64());
    run.phases.push(meter.phase("create"));
    run.running = u64::from(args.big);
    run.services = 1;
    eprintln!(
        "  {} replicas running {:.1} s after CreateService",
        args.big,
        t0.elapsed().as_secs_f64()
    );

    // 3. Fill.
    let fill = args.tasks.saturating_sub(args.big) / args.replicas;
    let t0 = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.create_concurrency.max(1)));
    let mut creates = tokio::task::JoinSet::new();
    for s in 0..fill {
        let permit = permits.clone().acquire_owned().await?;
        let mut control = control.clone();
        let replicas = args.replicas;
        let deadline = t0 + limit;
        creates.spawn(async move {
            // A refused write (no quorum while the leader is overloaded) is retried, as
            // a user would; a service that exists already was created by an attempt
            // whose answer was lost.
            let name = format!("s{s:04}");
            let mut failed = 0u64;
            loop {
                match sim::create_service(&mut control, &name, replicas).await {
                    Ok(()) => break,
                    Err(e) if format!("{e}").contains("already exists") => break,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            drop(permit);
            Ok::<u64, anyhow::Error>(failed)
        });
    }
    while let Some(result) = creates.join_next().await {
        run.failed_calls += result??;
    }
    let want = u64::from(args.big) + u64::from(fill) * u64::from(args.replicas);
    let progress = std::sync::Mutex::new((Instant::now(), 0u64, 0u64));
    let failed_polls = std::sync::atomic::AtomicU64::new(0);
    let waited = sim::wait_for(t0 + limit, "every task to run", || {
        let mut control = control.clone();
        let (progress, failed_polls) = (&progress, &failed_polls);
        async move {
            // A refused read (no quorum) is one more poll.
            let Ok((running, desired)) = sim::running_desired(&mut control).await else {
                failed_polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(None);
            };
            let mut p = progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if p.0.elapsed() >= Duration::from_secs(15) {
                eprintln!(
                    "  fill: {running} of {desired} tasks running ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                );
                p.0 = Instant::now();
            }
            (p.1, p.2) = (running, desired);
            Ok((running >= want && desired == want).then_some(()))
        }
    })
    .await;
    run.failed_calls += failed_polls.load(std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = waited {
        let p = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        run.running = p.1;
        bail!("{e} ({} of {} desired running; {want} wanted)", p.1, p.2);
    }
    run.fill_s = Some(t0.elapsed().as_secs_f64());
    run.running = want;
    run.services = 1 + u64::from(fill);
    run.phases.push(meter.phase("fill"));
    eprintln!(
        "  {want} tasks in {} services running {:.1} s after the first fill CreateService",
        run.services,
        t0.elapsed().as_secs_f64()
    );
    ensure!(
        fill > 0,
        "no service to scale: --tasks leaves none beside the big one"
    );

    // 4. Idle.
    let _ = settle(proxy, 0.0).await;
    meter.phase("settle");
    let b0 = proxy.down();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
    #[allow(clippy::cast_precision_loss)]
    let idle = (proxy.down() - b0) as f64 / t0.elapsed().as_secs_f64();
    run.idle_bytes_per_s = Some(idle);
    run.phases.push(meter.phase("idle"));

    // 5. Scale rounds.
    let name = "s0000";
    fleet.watch(name);
    let mut replicas = args.replicas;
    for round in 1..=args.rounds {
        for up in [true, false] {
            let to = if up { replicas + 1 } else { replicas - 1 };
            let b0 = proxy.down();
            let e0 = assignment_bytes(target.metrics).await;
            let called = Instant::now();
            let acked = sim::scale(&mut control, name, to).await?;
            let (last, times) = sim::wait_for(
                acked + limit,
                &format!("every agent to route {to} backends of {name}"),
                || async { Ok(fleet.watched_converged(to as usize)) },
            )
            .await?;
            let end = settle(proxy, idle).await;
            let raw = proxy.down() - b0;
            let encoded = assignment_bytes(target.metrics).await - e0;
            #[allow(clippy::cast_precision_loss)]
            let bytes = (raw as f64 - idle * end.duration_since(called).as_secs_f64()).max(0.0);
            let per_agent: Vec<f64> = times
                .iter()
                .map(|t| ms(t.saturating_duration_since(acked)))
                .collect();
            let change = Change {
                ack_ms: ms(acked - called),
                all_ms: ms(last.saturating_duration_since(acked)),
                agent_p50_ms: percentile(&per_agent, 0.5),
                bytes_raw: raw,
                bytes,
                encoded,
            };
            eprintln!(
                "  round {round}/{} {}1: every agent after {:.0} ms (ack {:.0} ms), {:.0} bytes \
                 ({} before taking the idle traffic out; {:.0} encoded by the leader)",
                args.rounds,
                if up { '+' } else { '-' },
                change.all_ms,
                change.ack_ms,
                change.bytes,
                change.bytes_raw,
                change.encoded
            );
            if up {
                run.up.push(change);
            } else {
                run.down.push(change);
            }
            replicas = to;
        }
    }
    run.phases.push(meter.phase("scale"));
    Ok(())
}

/// One configuration: a cluster, its simulated agents, the phases.
fn measure(args: &Args, managers: usize, nodes: usize, ticks: f64) -> Result<Run> {
    eprintln!("{managers} manager(s), {nodes} simulated nodes");
    let mut run = Run {
        managers,
        nodes,
        ..Run::default()
    };
    let mut cluster = Cluster::start(ClusterOptions {
        managers,
        heartbeat_ms: args.heartbeat_ms,
        heartbeat_misses: 3,
        snapshot_interval: args.snapshot_interval,
        name: format!("scale-{managers}m-{nodes}n"),
    })?;
    let leader = cluster.wait_leader(Duration::from_secs(30))?;
    let token = cluster
        .ctl(leader, &["cluster", "join-token", "worker", "-q"])?
        .trim()
        .to_owned();
    let m = cluster.manager(leader);
    let mut join = vec![m.addr.to_string()];
    join.extend(
        (0..cluster.len())
            .filter(|&i| i != leader)
            .map(|i| cluster.manager(i).addr.to_string()),
    );
    let target = Target {
        pid: m.pid().context("the leader's process")?,
        leader_addr: m.addr,
        join,
        tls: m.tls_dir(),
        root: cluster.root().join("sim"),
        token,
        managers,
        metrics: m.metrics_addr,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Err(e) = runtime.block_on(phases(args, &target, &mut run, ticks)) {
        eprintln!("  stopped: {e:#}");
        run.note = Some(format!("{e:#}"));
    }
    run.redb_bytes = redb_bytes(&cluster.manager(leader).data_dir);
    if let Ok(metrics) = cluster.metrics(leader) {
        run.commit_index = metrics.get("mesh_manager_raft_commit_index").copied();
        run.snapshot_index = metrics.get("mesh_manager_raft_snapshot_index").copied();
        run.snapshot_bytes = metrics.get("mesh_manager_raft_snapshot_bytes").copied();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(run)
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}{unit}"))
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn changes_cell(changes: &[Change], f: fn(&Change) -> f64) -> (f64, f64) {
    let v: Vec<f64> = changes.iter().map(f).collect();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// The report.
#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
fn report(args: &Args, runs: &[Run], load: (&str, &str)) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "# Scale benchmark: real managers, simulated nodes\n\n\
Machine: {}; load average (1, 5, 15 min) {} before, {} after.\n",
        mesh_tests::machine::Machine::this(),
        load.0,
        load.1
    )?;
    writeln!(
        s,
        "Per configuration: a {big}-replica service, then services of {r} replicas up to \
         {t} tasks; {rounds} scale rounds (+1 then -1) of one {r}-replica service. Phases \
         are limited to {lim} s each.\n",
        big = args.big,
        r = args.replicas,
        t = args.tasks,
        rounds = args.rounds,
        lim = args.time_limit
    )?;
    writeln!(s, "## Time\n")?;
    writeln!(
        s,
        "| managers | nodes | tasks running | join (all agents) | create {big} replicas → running | fill | scale +1 → every agent p50 / p99 | scale −1 → every agent p50 / p99 | median agent (+1 / −1) | scale call | calls refused while filling / sessions lost |",
        big = args.big
    )?;
    writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in runs {
        let (u50, u99) = changes_cell(&r.up, |c| c.all_ms);
        let (d50, d99) = changes_cell(&r.down, |c| c.all_ms);
        let (ua, _) = changes_cell(&r.up, |c| c.agent_p50_ms);
        let (da, _) = changes_cell(&r.down, |c| c.agent_p50_ms);
        let mut acks: Vec<f64> = r.up.iter().chain(&r.down).map(|c| c.ack_ms).collect();
        acks.sort_by(f64::total_cmp);
        let scaled = !r.up.is_empty();
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            r.managers,
            r.nodes,
            r.running,
            opt(r.join_s, " s"),
            opt(r.big_s, " s"),
            opt(r.fill_s, " s"),
            if scaled {
                format!("{u50:.0} / {u99:.0} ms")
            } else {
                "—".into()
            },
            if r.down.is_empty() {
                "—".into()
            } else {
                format!("{d50:.0} / {d99:.0} ms")
            },
            if scaled {
                format!("{ua:.0} / {da:.0} ms")
            } else {
                "—".into()
            },
            if scaled {
                format!("{:.0} ms", percentile(&acks, 0.5))
            } else {
                "—".into()
            },
            r.failed_calls,
            r.sessions_lost,
        )?;
    }
    writeln!(s, "\n## Cost\n")?;
    writeln!(
        s,
        "| managers | nodes | bytes to agents per change: total / per agent | assignment messages per change, encoded (leader's count): total / per agent | idle traffic to agents | leader CPU: fill / per change / idle | leader memory: peak (VmHWM) / now (VmRSS) | raft.redb | snapshot | commit index / snapshot index | simulator peak memory (so far) |"
    )?;
    writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for r in runs {
        let encoded: Vec<f64> =
            r.up.iter()
                .chain(&r.down)
                .map(|c| c.encoded)
                .filter(|b| b.is_finite())
                .collect();
        let encoded = if encoded.is_empty() {
            "—".to_owned()
        } else {
            let median = percentile(&encoded, 0.5);
            format!("{} / {}", mib(median), mib(median / r.nodes as f64))
        };
        let changes: Vec<f64> = r.up.iter().chain(&r.down).map(|c| c.bytes).collect();
        let per_change = percentile(&changes, 0.5);
        let bytes = if changes.is_empty() {
            "—".to_owned()
        } else {
            format!("{} / {}", mib(per_change), mib(per_change / r.nodes as f64))
        };
        let phase = |n: &str| r.phases.iter().find(|p| p.name == n);
        let fill = phase("fill").map(|p| format!("{:.1} s", p.leader_cpu_s));
        let per_change_cpu = phase("scale").map(|p| {
            let n = (r.up.len() + r.down.len()).max(1) as f64;
            format!("{:.2} s", p.leader_cpu_s / n)
        });
        let idle = phase("idle").map(|p| format!("{:.0} %", 100.0 * p.leader_cpu_s / p.wall_s));
        let dash = || "—".to_owned();
        writeln!(
            s,
            "| {} | {} | {bytes} | {encoded} | {} | {} / {} / {} | {} / {} | {} | {} | {} / {} | {} |",
            r.managers,
            r.nodes,
            r.idle_bytes_per_s
                .map_or_else(dash, |b| format!("{}/s", mib(b))),
            fill.unwrap_or_else(dash),
            per_change_cpu.unwrap_or_else(dash),
            idle.unwrap_or_else(dash),
            mib(r.vm_hwm_kib as f64 * 1024.0),
            mib(r.vm_rss_kib as f64 * 1024.0),
            mib(r.redb_bytes as f64),
            r.snapshot_bytes.map_or_else(dash, mib),
            r.commit_index.map_or_else(dash, |v| format!("{v:.0}")),
            r.snapshot_index.map_or_else(dash, |v| format!("{v:.0}")),
            mib(r.sim_hwm_kib as f64 * 1024.0),
        )?;
    }
    writeln!(
        s,
        "\n## Phases (wall clock; CPU of the leader and of the simulator)\n"
    )?;
    writeln!(
        s,
        "| managers | nodes | phase | wall | leader CPU | simulator CPU | stopped because |"
    )?;
    writeln!(s, "| ---: | ---: | --- | ---: | ---: | ---: | --- |")?;
    for r in runs {
        for p in &r.phases {
            writeln!(
                s,
                "| {} | {} | {} | {:.1} s | {:.1} s | {:.1} s | |",
                r.managers, r.nodes, p.name, p.wall_s, p.leader_cpu_s, p.sim_cpu_s
            )?;
        }
        if let Some(note) = &r.note {
            writeln!(
                s,
                "| {} | {} | (stopped) | | | | {} |",
                r.managers,
                r.nodes,
                note.replace('|', "/").replace('\n', " ")
            )?;
        }
    }
    writeln!(
        s,
        "\n## Method\n\n\
Run with `cargo xtask bench scale` (no root; `-- --nodes 10,100 --managers 1` and the \
other flags of `bench-scale --help` select what runs).\n\n\
- Managers: release builds of `mesh-manager` started by the test harness \
(`tests/src/cluster.rs`), each its own process with its own data directory on its own \
loopback address, mutual TLS everywhere; heartbeats every {hb} ms, 3 misses; snapshots \
every {si} entries. The managers' own nodes run no tasks (no runtime).\n\
- Nodes: simulated agents in the benchmark's process (`tests/src/sim.rs`), each a Tokio \
task that joins with the worker token (`mesh_client::join::join_cluster`, its own \
identity) and keeps its session with the client library the real agent uses \
(`mesh_client::session::run_with_uplink`): `Hello` with a made-up data address and the \
`process` runtime, heartbeats, assignments down; up, for each assignment, `Applied`, its \
dataplane healthy (once) and each task to run reported `running` at once (to stop: \
`shutdown`). Nothing runs: `task-echo` is only the spec. {jc} agents join at once.\n\
- Services: `CreateService` and `UpdateService` calls as `meshctl service create / \
scale --detach` send them. \"create → running\": from the call until `InspectService` \
reports all replicas running (polled every 100 ms). \"fill\": from the first of the \
other services' `CreateService` ({cc} in flight) until `ListServices` reports every task \
running.\n\
- Scale: the time from the `UpdateService` call's return (committed) until the last \
agent's last assignment lists the service's new backend set (+1: the new task running; \
-1: the removed task drained everywhere, stopped, and gone from the routes), every agent \
with the same set; p50 / p99 over the rounds (with few rounds p99 is the worst round). \
\"median agent\": the median over agents of the same time, median over rounds.\n\
- Bytes: the agents' sessions go through a TCP forwarder in front of the leader that \
counts the bytes sent down (TLS records, HTTP/2 and gRPC framing included: what the \
network carries). Per change: from the call until the traffic falls back to the idle rate \
(checked every 250 ms, at most 10 s after every agent has the change), less the idle \
traffic (HTTP/2 keep-alive answers...) over that window; median over the changes; per \
agent = total / nodes.\n\
- CPU: utime + stime of /proc/<pid>/stat of the leader over each phase (per change: the \
scale phase / its changes; idle: CPU over wall time while nothing changes). Memory: \
VmHWM and VmRSS of /proc/<pid>/status at the end. `raft.redb`: the leader's Raft \
database (log, vote, snapshot) at the end. Snapshot: `mesh_manager_raft_snapshot_bytes` \
(the latest snapshot as stored, sealed), with the commit and snapshot indexes, from the \
leader's `/metrics`.\n\
- The simulator shares the machine's cores with the managers: its CPU is in the phase \
table. A phase that exceeds the time limit ends its configuration (\"stopped because\").",
        hb = args.heartbeat_ms,
        si = args.snapshot_interval,
        jc = args.join_concurrency,
        cc = args.create_concurrency,
    )?;
    Ok(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(!args.nodes.is_empty(), "--nodes: at least one");
    ensure!(
        !args.managers.is_empty() && args.managers.iter().all(|m| [1, 3, 5].contains(m)),
        "--managers: 1, 3 or 5"
    );
    ensure!(
        (1..=mesh_api::spec::MAX_REPLICAS).contains(&args.big),
        "--big: 1 to {}",
        mesh_api::spec::MAX_REPLICAS
    );
    ensure!(
        args.replicas >= 2,
        "--replicas: at least 2 (the scale goes -1)"
    );
    if args.tasks < args.big + args.replicas {
        bail!("--tasks must leave room for one service of --replicas beside --big");
    }
    let ticks = clock_ticks();
    let before = loadavg();
    let mut runs = Vec::new();
    for &nodes in &args.nodes {
        for &managers in &args.managers {
            runs.push(measure(&args, managers, nodes, ticks)?);
            // Written after each configuration: a long run leaves what it measured.
            let s = report(&args, &runs, (&before, &loadavg()))?;
            if let Some(dir) = args.out.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&args.out, &s)
                .with_context(|| format!("writing {}", args.out.display()))?;
        }
    }
    let s = report(&args, &runs, (&before, &loadavg()))?;
    print!("{s}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
