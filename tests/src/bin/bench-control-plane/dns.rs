//! The DNS case of the services phase (root): from a scale's acknowledgement until every
//! node's resolver answers `tasks.<service>` with exactly the new set of task addresses,
//! beside the time until every node's dataplane balances the service's VIP to that set,
//! measured in the same rounds from the same instant.
//!
//! On the services phase's cluster: a user network [`NETWORK`]; service [`SERVICE`]
//! (`task-echo`) on it, scaled between [`LOW`] and [`HIGH`] replicas through
//! `UpdateService` (as in the scale rounds); service [`PROBE`] in global mode on it, one
//! task per node. From each node's probe task's network namespace, a UDP socket asks the
//! node's resolver (the tasks' gateway address, port 53) for `tasks.<service>` (type A)
//! with a new query ID each time, every [`POLL`] (a reply is awaited first, so a slow
//! resolver is not flooded), until the answer is the new set; at the same time, the
//! bench's main thread reads every node's pinned maps every [`POLL`] for the VIP's live
//! backends. Each figure is the time until the *last* node got there.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use lb_common::{IPPROTO_TCP, ServiceKey};
use mesh_tests::ManagedCluster;
use mesh_tests::cluster::connect_control;
use mesh_tests::pinned::PinnedMaps;

use crate::services::{CONVERGE, HIGH, LOW, NODES, PROPAGATE, latest_ms, scale};

/// The user network of the DNS case.
pub(crate) const NETWORK: &str = "benchnet";
/// The service whose `tasks.` name is asked.
pub(crate) const SERVICE: &str = "named";
/// The global service whose tasks ask.
pub(crate) const PROBE: &str = "probe";
/// Resolver and map polling period.
const POLL: Duration = Duration::from_millis(1);
/// How long a reply may take before the query is sent again.
const REPLY_TIMEOUT: Duration = Duration::from_millis(200);

/// One DNS round: a scale-up then a scale-down of [`SERVICE`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct DnsRound {
    /// From the scale-up's acknowledgement until every node's resolver answers with the
    /// [`HIGH`] tasks.
    pub up_dns_ms: f64,
    /// From the same instant until every node balances the VIP to those tasks.
    pub up_maps_ms: f64,
    /// From the scale-down's acknowledgement until every node's resolver answers with
    /// the [`LOW`] tasks left.
    pub down_dns_ms: f64,
    /// From the same instant until no node balances new flows to a removed task.
    pub down_maps_ms: f64,
    /// Queries answered during the round, over every node.
    pub queries: u64,
    /// Whether the scale-up's set kept every task of before (a task that fails to start
    /// or dies is replaced by one with another address).
    pub kept: bool,
}

/// A socket in node `k`'s probe task's network namespace, connected to that node's
/// resolver.
struct Asker {
    node: usize,
    socket: UdpSocket,
    next_id: u16,
    queries: u64,
}

impl Asker {
    /// Asks `tasks.<SERVICE>` once; the addresses answered (empty for NXDOMAIN: no task).
    fn ask(&mut self) -> Result<BTreeSet<Ipv4Addr>> {
        let name = format!("tasks.{SERVICE}");
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            let id = self.next_id;
            let query = lb_agent::dns::answer::query(id, &name, RecordType::A)?;
            self.socket.send(&query).context("sending a query")?;
            let mut buf = [0u8; 4096];
            // Wait for this query's reply; a late reply to an earlier one is skipped.
            let reply = loop {
                match self.socket.recv(&mut buf) {
                    Ok(n) => {
                        let m = Message::from_vec(&buf[..n]).map_err(|e| {
                            anyhow!(
                                "n{}'s resolver: a reply that does not parse: {e}",
                                self.node
                            )
                        })?;
                        if m.metadata.id == id {
                            break Some(m);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break None;
                    }
                    Err(e) => return Err(e).context("receiving a reply"),
                }
            };
            let Some(reply) = reply else { continue };
            self.queries += 1;
            match reply.metadata.response_code {
                ResponseCode::NoError => {}
                ResponseCode::NXDomain => return Ok(BTreeSet::new()),
                code => bail!("n{}'s resolver answered {name} with {code}", self.node),
            }
            return Ok(reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect());
        }
    }
}

/// Opens a UDP socket in the network namespace of process `pid` (a task's), connected
/// to the resolver the agent serves its tasks.
fn socket_in(pid: i32) -> Result<UdpSocket> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<UdpSocket> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {path}"))?;
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(SocketAddr::from((lb_agent::runtime::plumb::GATEWAY, 53)))?;
            socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
            Ok(socket)
        })
        .join()
        .map_err(|_| anyhow!("the thread opening a socket in {path} panicked"))?
    })
}

/// The VIP's live backends (not draining) on every node.
fn read_maps(maps: &[PinnedMaps], key: ServiceKey) -> Result<Vec<BTreeSet<Ipv4Addr>>> {
    maps.iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(m.service_at(key)
                .with_context(|| format!("reading n{}'s maps", i + 1))?
                .unwrap_or_default()
                .active)
        })
        .collect()
}

/// Polls the maps until no node's maps hold a draining backend of the VIP.
fn wait_gone(maps: &[PinnedMaps], key: ServiceKey) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut gone = true;
        for m in maps {
            gone &= m
                .service_at(key)?
                .is_none_or(|b| b.draining.is_empty() && b.active.len() == LOW as usize);
        }
        if gone {
            return Ok(());
        }
        if start.elapsed() > PROPAGATE {
            bail!("the removed tasks did not leave every node's maps within {PROPAGATE:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls the maps until `done` holds on every node; per node, when it first did.
fn wait_maps(
    maps: &[PinnedMaps],
    key: ServiceKey,
    what: &str,
    done: &(dyn Fn(&BTreeSet<Ipv4Addr>) -> bool + Sync),
) -> Result<Vec<Instant>> {
    let start = Instant::now();
    let mut first: Vec<Option<Instant>> = vec![None; maps.len()];
    loop {
        let sets = read_maps(maps, key)?;
        let now = Instant::now();
        for (i, set) in sets.iter().enumerate() {
            if done(set) {
                first[i].get_or_insert(now);
            }
        }
        if sets.iter().all(done) {
            return Ok(first.into_iter().map(|t| t.unwrap_or(now)).collect());
        }
        if start.elapsed() > PROPAGATE {
            bail!("waiting for {what}: not within {PROPAGATE:?}; maps: {sets:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Asks until the answer satisfies `done`; when it first did.
fn wait_answer(
    asker: &mut Asker,
    what: &str,
    done: &(dyn Fn(&BTreeSet<Ipv4Addr>) -> bool + Sync),
) -> Result<Instant> {
    let start = Instant::now();
    loop {
        let set = asker.ask()?;
        let now = Instant::now();
        if done(&set) {
            return Ok(now);
        }
        if start.elapsed() > PROPAGATE {
            bail!(
                "waiting for n{}'s resolver to answer {what}: not within {PROPAGATE:?}; it \
                 answers {set:?}",
                asker.node
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits, from now, for every node's resolver and every node's maps to satisfy `done`;
/// returns when each node's resolver and each node's maps first did.
fn wait_both(
    askers: &mut [Asker],
    maps: &[PinnedMaps],
    key: ServiceKey,
    what: &str,
    done: &(dyn Fn(&BTreeSet<Ipv4Addr>) -> bool + Sync),
) -> Result<(Vec<Instant>, Vec<Instant>)> {
    std::thread::scope(|s| {
        let dns: Vec<_> = askers
            .iter_mut()
            .map(|a| s.spawn(move || wait_answer(a, what, done)))
            .collect();
        let maps = wait_maps(maps, key, what, done);
        let dns: Result<Vec<Instant>> = dns
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("a resolver poller panicked"))?
            })
            .collect();
        Ok((dns?, maps?))
    })
}

/// Sets up the DNS case on `c` and runs `rounds` rounds (a scale-up and a scale-down
/// each), from [`LOW`] replicas.
///
/// # Errors
/// If a command fails, a change does not reach every node within [`PROPAGATE`], or a
/// resolver's answer and the dataplane's backends differ once both have settled.
pub(crate) fn measure(
    c: &mut ManagedCluster,
    managers: usize,
    rounds: usize,
) -> Result<Vec<DnsRound>> {
    let echo = mesh_tests::bin("task-echo")?;
    let echo = echo.to_string_lossy();
    let low = LOW.to_string();
    c.ctl_timeout(&["network", "create", NETWORK], CONVERGE)?;
    for (name, mode) in [
        (SERVICE, vec!["--replicas", &low]),
        (PROBE, vec!["--mode", "global"]),
    ] {
        let mut args = vec!["service", "create", "--name", name];
        args.extend(mode);
        args.extend([
            "--network",
            NETWORK,
            "--stop-grace-period",
            "2s",
            "--",
            &echo,
            "--port",
            "80",
        ]);
        c.ctl_timeout(&args, CONVERGE)?;
    }
    c.wait_converged(SERVICE, LOW as usize)?;
    let probes = c.wait_converged(PROBE, NODES)?;
    let vip = c.vip_on(SERVICE, NETWORK)?;
    let key = ServiceKey::new(u32::from(vip), 0, IPPROTO_TCP);

    // One asker per node, in that node's probe task.
    let mut askers = Vec::new();
    for k in 1..=NODES {
        let name = ManagedCluster::node_name(k);
        let task = probes
            .iter()
            .find(|t| t.node == name)
            .with_context(|| format!("no {PROBE} task on {name}"))?;
        let pid = *c
            .task_pids(&task.id)
            .first()
            .with_context(|| format!("no process of task {} ({})", task.name, task.id))?;
        askers.push(Asker {
            node: k,
            socket: socket_in(pid)?,
            next_id: 0,
            queries: 0,
        });
    }
    let pins: Vec<PathBuf> = (1..=NODES).map(|k| c.topology().pin_dir(k)).collect();
    let maps: Vec<PinnedMaps> = pins
        .iter()
        .map(|p| PinnedMaps::open(p))
        .collect::<Result<_>>()?;
    let settled = |s: &BTreeSet<Ipv4Addr>| s.len() == LOW as usize;
    wait_both(&mut askers, &maps, key, "the first tasks", &settled)?;
    agree(&mut askers, &maps, key)?;

    // The rounds run in node 1's namespace, where the managers' API is reachable.
    let hosts: Vec<String> = (1..=managers).map(|k| c.api_addr(k).to_string()).collect();
    let tls = c.data_dir(1).join("tls");
    let ns = c.topology().node_ns(1);
    mesh_tests::in_netns(&ns, move || -> Result<Vec<DnsRound>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut control = runtime.block_on(connect_control(&hosts, &tls))?;
        let mut out = Vec::new();
        for round in 1..=rounds {
            let queries: u64 = askers.iter().map(|a| a.queries).sum();
            let before = askers[0].ask()?;
            let acked = runtime.block_on(scale(&mut control, SERVICE, HIGH))?;
            let up = |s: &BTreeSet<Ipv4Addr>| s.len() == HIGH as usize;
            let (dns, map) = wait_both(&mut askers, &maps, key, "the scale-up", &up)?;
            let (up_dns_ms, up_maps_ms) = (latest_ms(acked, &dns), latest_ms(acked, &map));
            let high = agree(&mut askers, &maps, key)?;
            let kept = high.is_superset(&before);

            let acked = runtime.block_on(scale(&mut control, SERVICE, LOW))?;
            let down = |s: &BTreeSet<Ipv4Addr>| s.len() == LOW as usize && s.is_subset(&high);
            let (dns, map) = wait_both(&mut askers, &maps, key, "the scale-down", &down)?;
            let (down_dns_ms, down_maps_ms) = (latest_ms(acked, &dns), latest_ms(acked, &map));
            agree(&mut askers, &maps, key)?;
            // As the scale rounds do: the removed tasks leave every node's maps (drained
            // and stopped) before the next round starts others in their slots.
            wait_gone(&maps, key)?;
            let queries = askers.iter().map(|a| a.queries).sum::<u64>() - queries;
            eprintln!(
                "services: dns round {round}/{rounds}: up: resolvers {up_dns_ms:.1} ms, maps \
                 {up_maps_ms:.1} ms; down: resolvers {down_dns_ms:.1} ms, maps \
                 {down_maps_ms:.1} ms ({queries} queries)"
            );
            out.push(DnsRound {
                up_dns_ms,
                up_maps_ms,
                down_dns_ms,
                down_maps_ms,
                queries,
                kept,
            });
        }
        Ok(out)
    })?
}

/// Checks that every node's resolver answers exactly the addresses every node's maps
/// balance the VIP to, and returns them. Both have settled when this is called; the
/// removed tasks may still leave the maps' draining set, which the check ignores.
fn agree(askers: &mut [Asker], maps: &[PinnedMaps], key: ServiceKey) -> Result<BTreeSet<Ipv4Addr>> {
    let sets = read_maps(maps, key)?;
    let want = sets.first().cloned().unwrap_or_default();
    ensure!(
        sets.iter().all(|s| *s == want),
        "the nodes' maps differ: {sets:?}"
    );
    for a in askers {
        let got = a.ask()?;
        ensure!(
            got == want,
            "n{}'s resolver answers tasks.{SERVICE} with {got:?}, the maps hold {want:?}",
            a.node
        );
    }
    Ok(want)
}

/// The DNS case's section of the report (`managers`: of the cluster it ran on).
///
/// # Errors
/// Never in practice (formatting into a `String`).
pub(crate) fn report(managers: usize, rounds: &[DnsRound]) -> Result<String> {
    use std::fmt::Write as _;
    let mut s = String::new();
    writeln!(
        s,
        "## DNS: scale, until every node's resolver answers with the new set\n"
    )?;
    writeln!(
        s,
        "The services phase's {NODES}-node cluster with {managers} manager(s). Service \
         `{SERVICE}` (`task-echo`) on the user network `{NETWORK}`, scaled {LOW} -> {HIGH} -> \
         {LOW}, {} rounds; a task of the global service `{PROBE}` on each node asks its \
         node's resolver for `tasks.{SERVICE}`. Baseline in the same rounds, from the same \
         instant: every node's pinned maps, for the live backends of `{SERVICE}`'s VIP on \
         `{NETWORK}`. Over 50 samples or fewer, p99 is the largest.\n",
        rounds.len()
    )?;
    writeln!(
        s,
        "| from the scale's acknowledgement until | samples | p50 | p99 | max |"
    )?;
    writeln!(s, "| --- | ---: | ---: | ---: | ---: |")?;
    type Pick = fn(&DnsRound) -> f64;
    let rows: [(&str, Pick); 4] = [
        (
            "scale-up: every node's resolver answers with the old and the new tasks \
             (includes starting them)",
            |r| r.up_dns_ms,
        ),
        (
            "scale-up: (baseline) every node balances the VIP to them",
            |r| r.up_maps_ms,
        ),
        (
            "scale-down: every node's resolver answers with the tasks left",
            |r| r.down_dns_ms,
        ),
        (
            "scale-down: (baseline) no node balances new flows to a removed task",
            |r| r.down_maps_ms,
        ),
    ];
    for (what, pick) in rows {
        let v: Vec<f64> = rounds.iter().map(pick).collect();
        let (p50, p99, max) = crate::stats(&v);
        writeln!(
            s,
            "| {what} | {} | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |",
            v.len()
        )?;
    }
    let queries: u64 = rounds.iter().map(|r| r.queries).sum();
    writeln!(
        s,
        "\n### Method\n\n\
- Setup: `meshctl network create {NETWORK}`; `{SERVICE}` with {LOW} replicas and `{PROBE}` \
(`--mode global`) on it, both `task-echo`. The rounds start once every node's resolver \
and maps hold the {LOW} tasks.\n\
- Scale: as in the scale rounds above (`InspectService` then `UpdateService` from node \
1's namespace); the clock starts when the call returns (the change is committed).\n\
- Resolvers: in each node's `{PROBE}` task's network namespace (entered through \
`/proc/<pid>/ns/net`), a UDP socket sends a real DNS query (`tasks.{SERVICE}`, type A, \
built with `lb_agent::dns::answer::query`, a new ID each time) to the node's resolver \
({gw}:53), waits for the reply with that ID (resent after {timeout} ms without one), \
parses it with hickory-proto, and asks again {poll} ms later, until the A records are \
the new set: for a scale-up, {HIGH} addresses (the last column says whether they \
included the {LOW} of before: a task that fails to start is replaced, after the restart \
delay, by one with another address); for a scale-down, {LOW} of those {HIGH}. A figure is when the *last* node's resolver first \
answered so (one poller thread per node). {queries} queries were answered over all rounds.\n\
- Baseline: meanwhile the main thread reads every node's `LB_SERVICES` entry for the VIP \
(every TCP port: port 0), its live slots and `LB_BACKENDS` every {poll} ms, with the same \
condition on the backends that take new flows.\n\
- Exactly the new set: once both have settled, every node's resolver must answer exactly \
the addresses every node's maps balance the VIP to, or the benchmark stops. As in the \
scale rounds, the next round starts once the removed tasks have left every node's maps \
(drained and stopped).\n",
        gw = lb_agent::runtime::plumb::GATEWAY,
        timeout = REPLY_TIMEOUT.as_millis(),
        poll = POLL.as_millis(),
    )?;
    writeln!(s, "### Per round (ms)\n")?;
    writeln!(
        s,
        "| round | up: resolvers | up: maps | down: resolvers | down: maps | up kept the old tasks |"
    )?;
    writeln!(s, "| ---: | ---: | ---: | ---: | ---: | --- |")?;
    for (i, r) in rounds.iter().enumerate() {
        writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            i + 1,
            r.up_dns_ms,
            r.up_maps_ms,
            r.down_dns_ms,
            r.down_maps_ms,
            if r.kept {
                "yes"
            } else {
                "no (one was replaced)"
            }
        )?;
    }
    Ok(s)
}
