//! The services phase (root): how fast the managers' decisions reach every node's
//! dataplane, measured in the agents' pinned maps on a [`ManagedCluster`].
//!
//! - Scale: `web` (process runtime, `task-echo`, published on 8080) is scaled between
//!   [`LOW`] and [`HIGH`] replicas through the `UpdateService` RPC (what `meshctl service
//!   scale -d` sends). From the moment the RPC returns (the change is committed), every
//!   node's maps are read every millisecond until they hold the new backend set:
//!   scale-down until the removed backends take no new flow anywhere (pure propagation),
//!   then until they are gone from every map (drained and stopped); scale-up until every
//!   node sends new flows to every new task (includes starting the tasks).
//! - Node loss: a worker's agent is sent SIGKILL and its cable pulled; the time until
//!   no other node's maps hold that node's backends (the managers' heartbeat timeout
//!   dominates), and until the replacements take flows everywhere.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use mesh_api::service::Service;
use mesh_api::spec::ServiceMode;
use mesh_client::proto;
use mesh_tests::cluster::connect_control;
use mesh_tests::managed::FORM_TIMEOUT;
use mesh_tests::pinned::{PinnedMaps, ServiceBackends};
use mesh_tests::{ManagedCluster, ManagedOptions, bin};

/// The published port of `web`.
pub(crate) const PORT: u16 = 8080;
/// Replicas after a scale-down.
pub(crate) const LOW: u32 = 3;
/// Replicas after a scale-up.
pub(crate) const HIGH: u32 = 6;
/// Nodes of the managed clusters.
pub(crate) const NODES: usize = 3;
/// The longest a change may take to reach every node.
pub(crate) const PROPAGATE: Duration = Duration::from_secs(60);
/// How long a `meshctl` command that waits for convergence may take.
pub(crate) const CONVERGE: Duration = Duration::from_secs(120);
/// Map polling period.
const POLL: Duration = Duration::from_millis(1);

/// One scale round: up, then down.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleRound {
    /// The `UpdateService` RPC of the scale-up, until it returned.
    pub ack_up_ms: f64,
    /// The RPC of the scale-down.
    pub ack_down_ms: f64,
    /// From the scale-up's acknowledgement until every node sends new flows to all
    /// [`HIGH`] tasks.
    pub up_ms: f64,
    /// From the scale-down's acknowledgement until no node sends new flows to a removed
    /// task.
    pub down_ms: f64,
    /// From the scale-down's acknowledgement until no node's maps hold a removed task
    /// (drained and stopped).
    pub gone_ms: f64,
}

/// One node loss.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loss {
    /// The node lost (`k` of `nK`).
    pub node: usize,
    /// Its tasks (backends) when it was lost.
    pub tasks: usize,
    /// From the kill until no other node's maps hold its backends.
    pub removed_ms: f64,
    /// From the kill until every other node sends new flows to [`HIGH`] tasks again.
    pub replaced_ms: f64,
}

/// What the phase measured on one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    /// Managers of the cluster.
    pub managers: usize,
    /// The managers' `--heartbeat-ms` and `--heartbeat-misses`.
    pub heartbeat: (u64, u32),
    /// Scale rounds.
    pub scale: Vec<ScaleRound>,
    /// Node losses (empty when not measured on this cluster).
    pub losses: Vec<Loss>,
    /// DNS rounds (empty when not measured on this cluster).
    pub dns: Vec<crate::dns::DnsRound>,
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Starts a [`NODES`]-node cluster with `managers` managers, creates `web`, runs `rounds`
/// scale rounds, then (if `losses > 0`) `losses` node losses, then (if `dns_rounds > 0`)
/// the DNS case's rounds ([`crate::dns`]).
///
/// # Errors
/// If the cluster does not form, a command fails, or a change does not reach every node
/// within a minute.
pub(crate) fn measure(
    managers: usize,
    rounds: usize,
    losses: usize,
    dns_rounds: usize,
) -> Result<Measured> {
    ensure!(
        is_root(),
        "the services phase creates network namespaces and runs lb-agent (XDP): run it as root, \
         or select the other phases with `--phases raft`"
    );
    let options = ManagedOptions::new(NODES, managers);
    let heartbeat = (options.heartbeat_ms, options.heartbeat_misses);
    eprintln!("services: starting a {NODES}-node cluster with {managers} manager(s)");
    let mut c = ManagedCluster::start_with(options)?;
    let result = run(&mut c, managers, rounds, losses).and_then(|(scale, losses)| {
        let dns = if dns_rounds > 0 {
            crate::dns::measure(&mut c, managers, dns_rounds)?
        } else {
            Vec::new()
        };
        Ok((scale, losses, dns))
    });
    match result {
        Ok((scale, losses, dns)) => Ok(Measured {
            managers,
            heartbeat,
            scale,
            losses,
            dns,
        }),
        Err(e) => Err(e.context(format!("logs:\n{}", c.logs(30)))),
    }
}

fn run(
    c: &mut ManagedCluster,
    managers: usize,
    rounds: usize,
    losses: usize,
) -> Result<(Vec<ScaleRound>, Vec<Loss>)> {
    let echo = bin("task-echo")?;
    let echo = echo.to_string_lossy();
    let low = LOW.to_string();
    c.ctl_timeout(
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            &low,
            "-p",
            &format!("{PORT}:80"),
            "--stop-grace-period",
            "2s",
            "--",
            &echo,
            "--port",
            "80",
        ],
        CONVERGE,
    )?;
    c.wait_converged("web", LOW as usize)?;
    let pins: Vec<PathBuf> = (1..=NODES).map(|k| c.topology().pin_dir(k)).collect();
    let all: Vec<usize> = (1..=NODES).collect();
    wait_maps(
        &open(&pins, &all)?,
        "every node to hold 3 active backends",
        |b| b.active.len() == LOW as usize && b.draining.is_empty(),
    )?;

    // The scale rounds run in node 1's namespace, where the managers' API is reachable.
    let hosts: Vec<String> = (1..=managers).map(|k| c.api_addr(k).to_string()).collect();
    let tls = c.data_dir(1).join("tls");
    let ns = c.topology().node_ns(1);
    let scale = mesh_tests::in_netns(&ns, || -> Result<Vec<ScaleRound>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(scale_rounds(&hosts, &tls, &pins, rounds))
    })??;

    let mut lost = Vec::new();
    if losses > 0 {
        c.ctl_timeout(&["service", "scale", &format!("web={HIGH}")], CONVERGE)?;
        c.wait_converged("web", HIGH as usize)?;
        for i in 1..=losses {
            let l = node_loss(c, &pins)?;
            eprintln!(
                "services: node loss {i}/{losses}: n{} ({} tasks) removed everywhere after \
                 {:.0} ms, replaced after {:.0} ms",
                l.node, l.tasks, l.removed_ms, l.replaced_ms
            );
            lost.push(l);
        }
    }
    Ok((scale, lost))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Opens the pinned maps of nodes `nodes` (1-based).
fn open(pins: &[PathBuf], nodes: &[usize]) -> Result<Vec<(usize, PinnedMaps)>> {
    nodes
        .iter()
        .map(|&k| Ok((k, PinnedMaps::open(&pins[k - 1])?)))
        .collect()
}

/// The backends of `web` on every node of `maps` (an empty set where the node has no
/// such service yet).
fn read(maps: &[(usize, PinnedMaps)]) -> Result<Vec<ServiceBackends>> {
    maps.iter()
        .map(|(k, m)| {
            Ok(m.service(PORT, lb_common::IPPROTO_TCP)
                .with_context(|| format!("reading n{k}'s maps"))?
                .unwrap_or_default())
        })
        .collect()
}

/// Reads the maps every [`POLL`] until `done` holds on every node at once; returns, per
/// node, when it first held there (the latest is when the change had reached every node).
fn wait_maps(
    maps: &[(usize, PinnedMaps)],
    what: &str,
    done: impl Fn(&ServiceBackends) -> bool,
) -> Result<Vec<Instant>> {
    let start = Instant::now();
    let mut first: Vec<Option<Instant>> = vec![None; maps.len()];
    loop {
        let now_sets = read(maps)?;
        let now = Instant::now();
        let mut all = true;
        for (i, b) in now_sets.iter().enumerate() {
            if done(b) {
                first[i].get_or_insert(now);
            } else {
                all = false;
            }
        }
        if all {
            return Ok(first.into_iter().map(|t| t.unwrap_or(now)).collect());
        }
        if start.elapsed() > PROPAGATE {
            let nodes: Vec<String> = maps
                .iter()
                .zip(&now_sets)
                .map(|((k, _), b)| {
                    format!("n{k}: active {:?}, draining {:?}", b.active, b.draining)
                })
                .collect();
            bail!(
                "waiting for {what}: not within {PROPAGATE:?}; maps: {}",
                nodes.join("; ")
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The latest of `times`, as milliseconds after `t0`.
pub(crate) fn latest_ms(t0: Instant, times: &[Instant]) -> f64 {
    times
        .iter()
        .map(|t| ms(t.saturating_duration_since(t0)))
        .fold(0.0, f64::max)
}

/// Sets service `name`'s replicas with one `UpdateService`; returns when the call
/// returned.
pub(crate) async fn scale(
    control: &mut proto::control_client::ControlClient<tonic::transport::Channel>,
    name: &str,
    replicas: u32,
) -> Result<Instant> {
    let reply = control
        .inspect_service(proto::ServiceRef { name: name.into() })
        .await
        .map_err(|s| anyhow::anyhow!("InspectService: {}", s.message()))?
        .into_inner();
    let service: Service = reply.service()?;
    let mut spec = service.spec.clone();
    spec.mode = ServiceMode::Replicated { replicas };
    let request = proto::UpdateServiceRequest::update(name, &spec, service.spec_version);
    control
        .update_service(request)
        .await
        .map_err(|s| anyhow::anyhow!("UpdateService (scale to {replicas}): {}", s.message()))?;
    Ok(Instant::now())
}

/// `rounds` rounds of scale-up then scale-down, from [`LOW`] replicas converged.
async fn scale_rounds(
    hosts: &[String],
    tls: &std::path::Path,
    pins: &[PathBuf],
    rounds: usize,
) -> Result<Vec<ScaleRound>> {
    let mut control = connect_control(hosts, tls).await?;
    let all: Vec<usize> = (1..=pins.len()).collect();
    let maps = open(pins, &all)?;
    let mut out = Vec::new();
    for round in 1..=rounds {
        let before = read(&maps)?
            .first()
            .map(|b| b.active.clone())
            .unwrap_or_default();
        // Up: every node sends new flows to the old and the new tasks.
        let sent = Instant::now();
        let acked = scale(&mut control, "web", HIGH).await?;
        let ack_up_ms = ms(acked - sent);
        let up = wait_maps(&maps, "the scale-up to reach every node", |b| {
            b.active.len() == HIGH as usize && b.active.is_superset(&before)
        })?;
        let up_ms = latest_ms(acked, &up);
        let high: BTreeSet<Ipv4Addr> = read(&maps)?
            .first()
            .map(|b| b.active.clone())
            .unwrap_or_default();
        // Down: no node sends new flows to the removed tasks; then they are gone.
        let sent = Instant::now();
        let acked = scale(&mut control, "web", LOW).await?;
        let ack_down_ms = ms(acked - sent);
        let down = wait_maps(&maps, "the scale-down to reach every node", |b| {
            b.active.len() == LOW as usize && b.active.is_subset(&high)
        })?;
        let down_ms = latest_ms(acked, &down);
        let gone = wait_maps(&maps, "the removed tasks to leave every node's maps", |b| {
            b.active.len() == LOW as usize && b.draining.is_empty()
        })?;
        let gone_ms = latest_ms(acked, &gone);
        eprintln!(
            "services: scale round {round}/{rounds}: up {up_ms:.1} ms, down {down_ms:.1} ms \
             (gone {gone_ms:.0} ms); RPCs {ack_up_ms:.1} / {ack_down_ms:.1} ms"
        );
        out.push(ScaleRound {
            ack_up_ms,
            ack_down_ms,
            up_ms,
            down_ms,
            gone_ms,
        });
    }
    Ok(out)
}

/// Loses the worker that runs the most tasks of `web` (kill -9 of its agent, cable
/// pulled), measures, then brings it back and waits until `web` runs [`HIGH`] tasks
/// again and every node's maps hold them.
fn node_loss(c: &mut ManagedCluster, pins: &[PathBuf]) -> Result<Loss> {
    let running = c.running_tasks("web")?;
    let victim = (1..=NODES)
        .filter(|&k| !c.is_manager(k))
        .max_by_key(|&k| {
            let name = ManagedCluster::node_name(k);
            running.iter().filter(|t| t.node == name).count()
        })
        .context("a worker node")?;
    let name = ManagedCluster::node_name(victim);
    let tasks: Vec<_> = running.iter().filter(|t| t.node == name).cloned().collect();
    ensure!(!tasks.is_empty(), "no task of web runs on a worker");
    let lost: BTreeSet<Ipv4Addr> = tasks.iter().filter_map(|t| t.addr).collect();
    ensure!(
        lost.len() == tasks.len(),
        "a task of {name} without an address"
    );
    let survivors: Vec<usize> = (1..=NODES).filter(|&k| k != victim).collect();
    let maps = open(pins, &survivors)?;
    wait_maps(&maps, "the survivors to hold the victim's backends", |b| {
        b.active.is_superset(&lost)
    })?;

    let t0 = Instant::now();
    c.kill_agent(victim)?;
    c.cut_off(victim)?;
    let removed = wait_maps(&maps, "the lost node's backends to leave every map", |b| {
        b.all().is_disjoint(&lost)
    })?;
    let replaced = wait_maps(&maps, "the replacements to take flows everywhere", |b| {
        b.active.len() == HIGH as usize && b.all().is_disjoint(&lost)
    })?;
    let loss = Loss {
        node: victim,
        tasks: tasks.len(),
        removed_ms: latest_ms(t0, &removed),
        replaced_ms: latest_ms(t0, &replaced),
    };

    // The lost node's tasks die with it; then it comes back, empty.
    for t in &tasks {
        let _ = c.kill_task(&t.id);
    }
    c.reconnect(victim)?;
    c.restart_agent(victim)?;
    c.wait_nodes_ready(FORM_TIMEOUT)?;
    c.wait_converged("web", HIGH as usize)?;
    let all: Vec<usize> = (1..=NODES).collect();
    wait_maps(
        &open(pins, &all)?,
        "every node to hold the service again",
        |b| b.active.len() == HIGH as usize && b.draining.is_empty(),
    )?;
    Ok(loss)
}

/// The phase's section of the report.
///
/// # Errors
/// Never in practice (formatting into a `String`).
pub(crate) fn report(measured: &[Measured]) -> Result<String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let rounds = measured.first().map_or(0, |m| m.scale.len());
    writeln!(
        s,
        "## Services: scale and node loss, until every node's dataplane follows\n"
    )?;
    writeln!(
        s,
        "Managed clusters of {NODES} nodes in network namespaces (`mesh-manager`s, `lb-agent \
         --join`s with XDP in skb mode, tasks run by the process runtime). Service `web` \
         (`task-echo`, published on {PORT}) scaled {LOW} -> {HIGH} -> {LOW}, {rounds} rounds \
         per cluster; every node's pinned maps read every millisecond. Over 50 samples or fewer, \
         p99 is the largest.\n"
    )?;
    writeln!(
        s,
        "| managers | from the scale's acknowledgement until | samples | p50 | p99 | max |"
    )?;
    writeln!(s, "| ---: | --- | ---: | ---: | ---: | ---: |")?;
    type Pick = fn(&[ScaleRound]) -> Vec<f64>;
    let rows: [(&str, Pick); 4] = [
        (
            "scale-down: no node sends new flows to a removed task",
            |r| r.iter().map(|r| r.down_ms).collect(),
        ),
        (
            "scale-down: no node's maps hold a removed task (drained, stopped)",
            |r| r.iter().map(|r| r.gone_ms).collect(),
        ),
        (
            "scale-up: every node sends new flows to every new task (includes starting them)",
            |r| r.iter().map(|r| r.up_ms).collect(),
        ),
        (
            "(the `UpdateService` call itself, from sent to acknowledged)",
            |r| {
                r.iter()
                    .flat_map(|r| [r.ack_up_ms, r.ack_down_ms])
                    .collect()
            },
        ),
    ];
    for m in measured {
        for (what, pick) in rows {
            let v = pick(&m.scale);
            let (p50, p99, max) = super::stats(&v);
            writeln!(
                s,
                "| {} | {what} | {} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |",
                m.managers,
                v.len()
            )?;
        }
    }

    let lossy: Vec<&Measured> = measured.iter().filter(|m| !m.losses.is_empty()).collect();
    let mut loss_median = f64::NAN;
    let mut hb = (0, 0);
    for m in &lossy {
        hb = m.heartbeat;
        let (period, misses) = m.heartbeat;
        writeln!(
            s,
            "\nNode loss (the {}-manager cluster; a worker's agent sent SIGKILL and its cable pulled; \
             managers run with `--heartbeat-ms {period} --heartbeat-misses {misses}`, the test \
             harness's settings: a node is marked down {} ms after its last heartbeat, checked \
             every {} ms):\n",
            m.managers,
            period * u64::from(misses),
            period / 2
        )?;
        writeln!(
            s,
            "| loss | node | its tasks | until no other node's maps hold its backends | until \
             the replacements take new flows everywhere |"
        )?;
        writeln!(s, "| ---: | ---: | ---: | ---: | ---: |")?;
        for (i, l) in m.losses.iter().enumerate() {
            writeln!(
                s,
                "| {} | n{} | {} | {:.0} ms | {:.0} ms |",
                i + 1,
                l.node,
                l.tasks,
                l.removed_ms,
                l.replaced_ms
            )?;
        }
        let removed: Vec<f64> = m.losses.iter().map(|l| l.removed_ms).collect();
        let replaced: Vec<f64> = m.losses.iter().map(|l| l.replaced_ms).collect();
        loss_median = super::median(&removed);
        writeln!(
            s,
            "| median | | | {loss_median:.0} ms | {:.0} ms |",
            super::median(&replaced)
        )?;
    }

    // The reference: Swarm's defaults, as the issue states them.
    let down_p50 = measured.first().map_or(f64::NAN, |m| {
        super::stats(&m.scale.iter().map(|r| r.down_ms).collect::<Vec<_>>()).0
    });
    writeln!(
        s,
        "\nBeside Docker Swarm's defaults (the reference the issue compares with; Swarm \
         cannot run here, so these are its documented settings, not measurements):\n"
    )?;
    writeln!(s, "| | Swarm (defaults) | here (p50/median, 1 manager) |")?;
    writeln!(s, "| --- | --- | ---: |")?;
    writeln!(
        s,
        "| a lost node's tasks stop getting flows | node down after 3 missed heartbeats of 5 s: \
         about 15 s | {loss_median:.0} ms ({} ms x {} heartbeats) |",
        hb.0, hb.1
    )?;
    writeln!(
        s,
        "| removed tasks stop getting new flows on a scale-down | tasks stopped after a fixed \
         2 s wait for the gossip to spread: 2 s | {down_p50:.1} ms |"
    )?;

    writeln!(
        s,
        "\n### Method\n\n\
Rerun alone with `cargo xtask bench control-plane -- --phases services` (root; a few \
minutes). `--scale-rounds`, `--node-losses` and `--service-managers` set the repetitions \
and clusters.\n\n\
- The test harness's managed cluster (`tests/src/managed.rs`): {NODES} node namespaces on \
an underlay bridge; node 1 (and nodes 2, 3 in the 3-manager cluster) runs `mesh-manager`, \
every node `lb-agent --join` with its maps pinned under `/sys/fs/bpf/<prefix>-nK/`.\n\
- Scale: from node 1's namespace, a gRPC client reads `web` (`InspectService`) and sends \
the new spec (`UpdateService` with the spec version read, what `meshctl service scale -d` \
sends). Its answer comes once the change is committed: the clock starts when it returns. \
Then the benchmark reads each node's `LB_SERVICES` (the published port's key), the live \
`LB_SLOTS` table and `LB_BACKENDS` every millisecond, directly from the pins: a task takes \
new flows on a node when its backend is in the live slot table and not flagged draining. A \
figure is the time until the *last* node got there (each node's first reading that shows \
it). Scale-up waits for the {HIGH} tasks (the old ones and the new); scale-down for {LOW} \
of the old ones, then for the removed ones to leave the maps altogether.\n\
- Node loss: `web` runs {HIGH} tasks (at first two per node); the worker running the most of them \
has its agent sent SIGKILL and its underlay port taken down (a pulled cable); the clock \
starts just before the kill. The other nodes' maps are read every millisecond until none \
holds a backend of the lost node (active or draining), then until {HIGH} tasks take new \
flows again (the replacements started elsewhere). Between losses the node's leftover \
tasks are killed, its cable plugged back, its agent restarted, and the benchmark waits \
until `web` runs {HIGH} tasks and every node's maps hold them.\n\
- The benchmark, the managers, the agents and the tasks share the machine's cores.\n"
    )?;
    writeln!(
        s,
        "### Reading\n\n\
- A scale-down usually reaches every node within a few milliseconds (the p50): one Raft \
commit, the leader's dispatcher computing each node's assignment and sending it down the \
node's session, the agent diffing it against its maps and writing the changed backends as \
draining. No task has to start or stop for it. Some rounds take up to about a hundred \
milliseconds more (the p99); the benchmark does not trace where, and the machine's two \
cores are shared with every process of the cluster and with other work (the load average \
above).\n\
- The removed tasks leave the maps later: they are told to stop only once every live \
node has acknowledged an assignment in which they drain (so no node still sends them new \
flows), then they stop (no flows are open here, so at once), their node reports them, \
and a second assignment removes them everywhere.\n\
- A scale-up includes starting the tasks: the scheduler's placement, the agent starting \
`task-echo` in its own namespace behind a veth, the task reporting `running`, a commit \
of that report, and the assignments that make it a backend everywhere.\n\
- A node loss is the heartbeat timeout: the node is marked down {down} ms after its last \
heartbeat, and that heartbeat came up to a period ({period} ms) before the kill, so the \
mark falls {lo}-{hi} ms after the kill (plus the check's {tick} ms tick); propagating it \
takes tens of milliseconds more. With the daemon's defaults (1000 ms x 3) it would be \
about 2-3 s, still well under Swarm's 15 s.\n\
- The replacements of a lost node's tasks take new flows about 5 s later than the loss is \
seen: the restart policy's default delay (5 s, as Swarm's) applies before they start.",
        down = hb.0 * u64::from(hb.1),
        period = hb.0,
        lo = hb.0 * u64::from(hb.1.saturating_sub(1)),
        hi = hb.0 * u64::from(hb.1),
        tick = hb.0 / 2,
    )?;
    writeln!(s, "\n### Per round (ms)\n")?;
    let mut header = String::from("| round |");
    let mut rule = String::from("| ---: |");
    for m in measured {
        let _ = write!(
            header,
            " {0} mgr up | {0} mgr down | {0} mgr gone |",
            m.managers
        );
        rule.push_str(" ---: | ---: | ---: |");
    }
    writeln!(s, "{header}\n{rule}")?;
    for i in 0..rounds {
        let mut row = format!("| {} |", i + 1);
        for m in measured {
            if let Some(r) = m.scale.get(i) {
                let _ = write!(
                    row,
                    " {:.1} | {:.1} | {:.0} |",
                    r.up_ms, r.down_ms, r.gone_ms
                );
            } else {
                row.push_str(" | | |");
            }
        }
        writeln!(s, "{row}")?;
    }
    Ok(s)
}
