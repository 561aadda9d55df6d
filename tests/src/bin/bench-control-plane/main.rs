//! `bench-control-plane`: committed writes per second on 1 and 3 managers, leader
//! failover time, and how fast service changes reach every node's dataplane. Writes the
//! report (`cargo xtask bench control-plane` passes `--out bench-results/control-plane.md`).
//!
//! Phase `raft` (no root), with real `mesh-manager` processes on loopback; each round
//! measures, one after the other (interleaved, so drift hits every case):
//! 1. throughput on a 1-manager cluster: `--writers` concurrent gRPC clients, each
//!    committing node label updates through the leader one after the other, for
//!    `--seconds`; committed writes per second, and the writes' latency;
//! 2. the same on a 3-manager cluster;
//! 3. failover on the 3-manager cluster: a client writes through a follower without
//!    pause; the leader is killed with SIGKILL; the time until a survivor reports a new
//!    leader, and until a write started after the kill commits. The killed manager is
//!    then restarted and caught up before the next round.
//!
//! Medians over `--rounds` rounds.
//!
//! Phase `services` (root: network namespaces, XDP), on managed clusters of 3 nodes
//! (`mesh-manager`s and `lb-agent --join`s, tasks run by the process runtime): the time
//! from a committed `service scale` until every node's maps hold the new backend set,
//! and from a node's loss until no other node's maps hold its backends (see
//! `services.rs`); and, on the first cluster, from a committed `service scale` of a
//! service on a user network until every node's resolver answers `tasks.<service>` with
//! the new set, beside its dataplane maps (see `dns.rs`).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use mesh_client::proto;
use mesh_tests::cluster::{Cluster, ClusterOptions, connect_control, write_label};
use mesh_tests::stats::{median, percentile};

mod dns;
mod services;

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Committed writes per second and leader failover (no root).
    Raft,
    /// Scale and node-loss propagation to the agents' maps (root).
    Services,
}

#[derive(Debug, Parser)]
#[command(about = "Control-plane benchmark: committed writes/s on 1 and 3 managers, failover")]
struct Args {
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench-results/control-plane.md")]
    out: PathBuf,
    /// Rounds; the report gives medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of writes per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent writers in the throughput measurements.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// The phases to run, comma-separated: `raft` (no root), `services` (root).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Phase::Raft, Phase::Services])]
    phases: Vec<Phase>,
    /// Scale rounds (one scale-up and one scale-down each) per managed cluster.
    #[arg(long, default_value_t = 20)]
    scale_rounds: usize,
    /// Node losses (on the 1-manager managed cluster).
    #[arg(long, default_value_t = 3)]
    node_losses: usize,
    /// DNS rounds (one scale-up and one scale-down each) on the first managed cluster;
    /// 0 skips the DNS case.
    #[arg(long, default_value_t = 20)]
    dns_rounds: usize,
    /// Managers of the managed clusters the scale rounds run on, comma-separated (1, 3).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    service_managers: Vec<usize>,
}

/// One throughput measurement.
#[derive(Clone, Copy, Debug)]
struct Throughput {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    /// Elections (Raft term increments) during the measurement: the leader lives
    /// throughout, so any is a needless one.
    elections: u64,
}

/// One failover measurement.
#[derive(Clone, Copy, Debug)]
struct Failover {
    election_ms: f64,
    write_ms: f64,
    /// Elections (term increments) from the kill until the write committed.
    elections: u64,
    /// Elections while the killed manager restarted and caught up (the new leader
    /// lives throughout: any is a needless one).
    rejoin_elections: u64,
}

/// The highest Raft term the running managers of `cluster` report on `/metrics`
/// (`mesh_manager_raft_term`): every election increments it.
fn term(cluster: &mut Cluster) -> Result<u64> {
    let mut highest = 0.0f64;
    for i in cluster.running() {
        let metrics = cluster.metrics(i)?;
        let t = metrics
            .get("mesh_manager_raft_term")
            .copied()
            .context("no mesh_manager_raft_term on /metrics")?;
        highest = highest.max(t);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(highest as u64)
}

/// p50, p99 and the largest of `values`.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `writers` clients commit label writes through manager `target` for `seconds`.
async fn throughput(
    cluster: &Cluster,
    target: usize,
    writers: usize,
    seconds: f64,
) -> Result<Throughput> {
    let addr = vec![cluster.manager(target).addr.to_string()];
    let tls = cluster.manager(target).tls_dir();
    let node = cluster.manager(target).hostname.clone();
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(connect_control(&addr, &tls).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("bench-w{w}");
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                match write_label(
                    &mut client,
                    &node,
                    &key,
                    &n.to_string(),
                    Duration::from_secs(10),
                )
                .await
                {
                    Ok(()) => latencies.push(ms(t.elapsed())),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let per_second = latencies.len() as f64 / elapsed;
    Ok(Throughput {
        per_second,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        errors,
        elections: 0,
    })
}

/// Kills the leader of `cluster` during writes through a follower; then restarts it and
/// waits until it has caught up.
async fn failover(cluster: &mut Cluster) -> Result<Failover> {
    let leader = cluster.wait_leader(Duration::from_secs(30))?;
    let leader_id = cluster.manager(leader).node_id.clone();
    let follower = (0..cluster.len())
        .find(|&i| i != leader)
        .context("a follower")?;
    let addr = vec![cluster.manager(follower).addr.to_string()];
    let tls = cluster.manager(follower).tls_dir();
    let node = cluster.manager(follower).hostname.clone();
    let mut writer = connect_control(&addr, &tls).await?;
    let mut watcher = connect_control(&addr, &tls).await?;
    let term_before = term(cluster)?;
    // Writes flow before the kill.
    for n in 0..20 {
        write_label(
            &mut writer,
            &node,
            "failover",
            &n.to_string(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|s| anyhow::anyhow!("a write before the kill: {}", s.message()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    // The writer: one write after the other, through the follower; returns the time the
    // first write that started after the kill committed.
    let writes = {
        let (stop, killed_at, node) = (stop.clone(), killed_at.clone(), node.clone());
        tokio::spawn(async move {
            let mut n = 100u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                let result = write_label(
                    &mut writer,
                    &node,
                    "failover",
                    &n.to_string(),
                    Duration::from_secs(10),
                )
                .await;
                let after_kill = killed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some_and(|k| started >= k);
                match result {
                    Ok(()) if after_kill => return Some(Instant::now()),
                    Ok(()) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            None
        })
    };
    // Let the writer run, then kill the leader.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    cluster.kill(leader)?;
    *killed_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t0);
    // A survivor names a new leader.
    let elected = loop {
        if let Ok(info) = watcher.info(proto::InfoRequest {}).await {
            let info = info.into_inner();
            if !info.leader_id.is_empty() && info.leader_id != leader_id {
                break Instant::now();
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            stop.store(true, Ordering::Relaxed);
            bail!("no new leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let committed = tokio::time::timeout(Duration::from_secs(30), writes).await;
    stop.store(true, Ordering::Relaxed);
    let committed = committed
        .context("no write committed within 30 s of the kill")??
        .context("the writer stopped")?;
    let term_elected = term(cluster)?;
    // Bring the killed manager back and let it catch up.
    cluster.restart(leader, &[])?;
    let new_leader = cluster.wait_leader(Duration::from_secs(30))?;
    let target = cluster.info(new_leader)?.commit_index;
    cluster.wait_until(
        Duration::from_secs(30),
        "the restarted manager to catch up",
        |c| Ok((c.info(leader)?.applied_index >= target).then_some(())),
    )?;
    let term_rejoined = term(cluster)?;
    Ok(Failover {
        election_ms: ms(elected - t0),
        write_ms: ms(committed - t0),
        elections: term_elected.saturating_sub(term_before),
        rejoin_elections: term_rejoined.saturating_sub(term_elected),
    })
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The `raft` phase; returns its section of the report.
fn raft_phase(args: &Args) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = |managers: usize, name: &str| ClusterOptions {
        managers,
        heartbeat_ms: 1000,
        heartbeat_misses: 3,
        snapshot_interval: 5000,
        name: name.into(),
    };
    eprintln!("raft: starting a 1-manager and a 3-manager cluster");
    let mut one = Cluster::start(options(1, "bench-1"))?;
    let mut three = Cluster::start(options(3, "bench-3"))?;
    let bin_dir = mesh_tests::bin_dir();
    let mut t1 = Vec::new();
    let mut t3 = Vec::new();
    let mut fo = Vec::new();
    for round in 1..=args.rounds {
        let l1 = one.wait_leader(Duration::from_secs(30))?;
        let before = term(&mut one)?;
        let mut r1 = runtime.block_on(throughput(&one, l1, args.writers, args.seconds))?;
        r1.elections = term(&mut one)?.saturating_sub(before);
        let l3 = three.wait_leader(Duration::from_secs(30))?;
        let before = term(&mut three)?;
        let mut r3 = runtime.block_on(throughput(&three, l3, args.writers, args.seconds))?;
        r3.elections = term(&mut three)?.saturating_sub(before);
        let f = runtime.block_on(failover(&mut three))?;
        eprintln!(
            "round {round}/{}: 1 manager {:.0} writes/s (p50 {:.1} ms), 3 managers {:.0} writes/s \
             (p50 {:.1} ms), elections during them {} and {}; failover: leader after {:.0} ms, \
             write after {:.0} ms, {} election(s), {} while the old leader rejoined",
            args.rounds,
            r1.per_second,
            r1.p50_ms,
            r3.per_second,
            r3.p50_ms,
            r1.elections,
            r3.elections,
            f.election_ms,
            f.write_ms,
            f.elections,
            f.rejoin_elections,
        );
        t1.push(r1);
        t3.push(r3);
        fo.push(f);
    }
    drop(one);
    drop(three);

    let med = |v: &[Throughput], f: fn(&Throughput) -> f64| {
        let xs: Vec<f64> = v.iter().map(f).collect();
        median(&xs)
    };
    let mut s = String::new();
    writeln!(
        s,
        "## Raft: committed writes per second and leader failover\n"
    )?;
    writeln!(
        s,
        "Rounds: {} interleaved; {} concurrent writers for {} s per throughput measurement. \
         Medians over rounds.\n",
        args.rounds, args.writers, args.seconds
    )?;
    writeln!(
        s,
        "| managers | committed writes/s | write latency p50 | p99 | failed writes | elections during the writes |"
    )?;
    writeln!(s, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for (n, v) in [(1, &t1), (3, &t3)] {
        let errors: usize = v.iter().map(|t| t.errors).sum();
        let elections: u64 = v.iter().map(|t| t.elections).sum();
        writeln!(
            s,
            "| {n} | {:.0} | {:.2} ms | {:.2} ms | {errors} | {elections} |",
            med(v, |t| t.per_second),
            med(v, |t| t.p50_ms),
            med(v, |t| t.p99_ms),
        )?;
    }
    let election: Vec<f64> = fo.iter().map(|f| f.election_ms).collect();
    let write: Vec<f64> = fo.iter().map(|f| f.write_ms).collect();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.0}-{hi:.0} ms")
    };
    let (er, wr) = (range(&election), range(&write));
    writeln!(
        s,
        "\n| leader failover (3 managers, kill -9) | median | range |"
    )?;
    writeln!(s, "| --- | ---: | ---: |")?;
    writeln!(
        s,
        "| until a survivor names a new leader | {:.0} ms | {er} |",
        median(&election)
    )?;
    writeln!(
        s,
        "| until a write started after the kill commits | {:.0} ms | {wr} |",
        median(&write)
    )?;
    let failover_elections: u64 = fo.iter().map(|f| f.elections).sum();
    let rejoin_elections: u64 = fo.iter().map(|f| f.rejoin_elections).sum();
    let needless = rejoin_elections
        + t1.iter().map(|t| t.elections).sum::<u64>()
        + t3.iter().map(|t| t.elections).sum::<u64>();
    writeln!(
        s,
        "\nElections (Raft term increments, from `mesh_manager_raft_term`): {failover_elections} \
         over {} failovers (one each when the first vote succeeds, more after a split vote); \
         {needless} while a leader lived (during the throughput runs: {} on 1 manager, {} on 3; \
         while the killed manager restarted and caught up: {rejoin_elections}).",
        fo.len(),
        t1.iter().map(|t| t.elections).sum::<u64>(),
        t3.iter().map(|t| t.elections).sum::<u64>(),
    )?;
    writeln!(s, "\nPer round:\n")?;
    writeln!(
        s,
        "| round | 1 manager writes/s | 3 managers writes/s | new leader | write commits | failover elections |"
    )?;
    writeln!(s, "| ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for (i, ((a, b), f)) in t1.iter().zip(&t3).zip(&fo).enumerate() {
        writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} ms | {:.0} ms | {} |",
            i + 1,
            a.per_second,
            b.per_second,
            f.election_ms,
            f.write_ms,
            f.elections
        )?;
    }
    writeln!(
        s,
        "\n### Method\n\n\
Rerun alone with `cargo xtask bench control-plane -- --phases raft` (no root; about a \
minute after the release build).\n\n\
- Release builds of `mesh-manager` and `meshctl` from {bin}, started by the test harness \
(`tests/src/cluster.rs`): each manager is its own process with its own data directory \
(redb; each log append is one transaction and one fsync before openraft counts it), on \
its own loopback address; mutual TLS on every connection. Raft: 100 ms heartbeat, election timeout 600-1200 ms (the daemon's \
defaults); node heartbeats every 1 s; snapshots every 5000 entries. The 1-manager and \
the 3-manager cluster run side by side; each round measures both, then the failover.\n\
- Committed writes: {w} gRPC clients (one connection each) send `UpdateNode` (a label \
write) through the leader, each waiting for the answer before the next, for {sec} s. \
The answer comes after the entry is committed by a majority and applied; every \
acknowledged write counts. Latency is per write, over all writers of the round.\n\
- Failover: a client writes through a follower without pause (a failed write is retried \
after 5 ms); the leader is sent SIGKILL. \"New leader\" is the time until the follower's \
`Info` names a leader other than the killed one (polled every 5 ms); \"write commits\" \
the time until the first write *started after the kill* is acknowledged (the follower \
forwards it to the new leader). The killed manager is then restarted from its data \
directory and caught up before the next round, so leadership moves between rounds.\n\
- The benchmark's clients share the machine's cores with the managers.\n\n\
### Reading\n\n\
- Writes that arrive while an entry is in flight go out together in the next one \
(`Command::Batch`): each writer waits for its own commit, so the rate is the writers over \
the commit latency. With 3 managers each entry is also appended and applied by two \
followers, and the three managers and the clients share the two cores: fewer writes per \
second than on 1 manager. The managers are CPU-bound here (a profile of the 3-manager \
run: about 85% of both cores busy; the leader uses about 0.7 of a core, each follower \
0.35, the clients 0.2), so one entry in flight, which gathers the most writes per entry, \
commits more per second than two.\n\
- Writes used to run at about 20 per second per client: the API's listener did not set \
TCP_NODELAY, so each small reply waited for the client's delayed ACK (~40 ms). It does now.\n\
- Failover: a follower whose connection to the silent leader's Raft port is refused (the \
process is gone) starts an election at once instead of waiting out the election timeout \
(600-1200 ms) and the leader's lease. The survivors take turns by id (the next one \
stands a heartbeat later unless a leader is known by then), so one vote does it; when \
both stood at once they could split the vote several times in a row under load. A leader that is alive but slow answers, so a busy machine causes no election \
(counted above).",
        bin = bin_dir.display(),
        w = args.writers,
        sec = args.seconds,
    )?;
    Ok(s)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(args.writers >= 1, "--writers must be at least 1");
    ensure!(!args.phases.is_empty(), "--phases: at least one phase");
    let services = args.phases.contains(&Phase::Services);
    if services {
        ensure!(
            services::is_root(),
            "the `services` phase creates network namespaces and runs lb-agent (XDP) in them: \
             run the benchmark as root, or only the `raft` phase with `--phases raft`"
        );
        ensure!(
            !args.service_managers.is_empty()
                && args.service_managers.iter().all(|&m| m == 1 || m == 3),
            "--service-managers: 1 and/or 3"
        );
        ensure!(args.scale_rounds >= 1, "--scale-rounds must be at least 1");
    }
    let load_before = loadavg();
    eprintln!("load average {load_before}");
    let mut sections = Vec::new();
    if args.phases.contains(&Phase::Raft) {
        sections.push(raft_phase(&args)?);
    }
    if services {
        let mut measured = Vec::new();
        for (i, &managers) in args.service_managers.iter().enumerate() {
            // Node losses on the first cluster with one manager (a worker is lost; with
            // every node a manager, a loss would also be a manager's).
            let losses = if managers == 1 && !args.service_managers[..i].contains(&1) {
                args.node_losses
            } else {
                0
            };
            let dns_rounds = if i == 0 { args.dns_rounds } else { 0 };
            measured.push(services::measure(
                managers,
                args.scale_rounds,
                losses,
                dns_rounds,
            )?);
        }
        sections.push(services::report(&measured)?);
        for m in measured.iter().filter(|m| !m.dns.is_empty()) {
            sections.push(dns::report(m.managers, &m.dns)?);
        }
    }
    let load_after = loadavg();
    let mut s = String::new();
    writeln!(
        s,
        "# Control-plane benchmark: Raft writes, leader failover, service propagation\n"
    )?;
    writeln!(
        s,
        "Machine: {}; load average (1, 5, 15 min) {load_before} before, {load_after} after \
         (other work on the machine shows here: the figures are only comparable at a low load).\n",
        mesh_tests::machine::Machine::this()
    )?;
    s.push_str(&sections.join("\n"));
    if let Some(dir) = args.out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &s).with_context(|| format!("writing {}", args.out.display()))?;
    print!("{s}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
