//! End-to-end tests of the routing mesh: three nodes in network namespaces, real `lb-agent`s
//! with the real eBPF dataplane, tasks running `task-echo`, a client on the underlay.
//!
//! Packet paths (docs/dataplane.md#packet-paths): P1 client -> node -> local task; P2 client -> node -> VXLAN ->
//! task on another node; P3 task -> VIP; P5 UDP; P7 traffic that is not the mesh's.
//!
//! Needs root, iproute2, ethtool and the binaries `lb-agent` and `task-echo`
//! (`cargo build -p lb-agent -p mesh-tests --bins`, which `cargo xtask test` runs first).
//! Each test builds its own topology with a unique prefix, so they may run concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Context, Result, ensure};
use mesh_tests::client::{EchoConn, ping, request_tcp, request_udp};
use mesh_tests::web::{self, TCP_PORT, UDP_PORT, VIP};
use mesh_tests::{BackendSpec, Topology, in_netns, ok};

const TASKS: [(usize, &str, Ipv4Addr); 3] = [
    (1, "web.1", Ipv4Addr::new(10, 255, 1, 1)),
    (2, "web.2", Ipv4Addr::new(10, 255, 2, 1)),
    (3, "web.3", Ipv4Addr::new(10, 255, 3, 1)),
];

/// The standard mesh: 3 nodes, web.k on node k, service `web` over the three, agents ready.
fn mesh() -> Topology {
    let mut topo = Topology::new(3).unwrap_or_else(|e| panic!("{e:#}"));
    for (node, name, addr) in TASKS {
        topo.add_task(node, name, addr)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    topo.set_services(vec![web::service(&["web.1", "web.2", "web.3"])]);
    topo.start_agents().unwrap_or_else(|e| panic!("{e:#}"));
    topo
}

/// Runs `f` in the client's namespace.
fn from_client<R: Send>(topo: &Topology, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    in_netns(&topo.client_ns(), f)?
}

/// Every reply came from a task that saw the client's own address (through node `k`).
fn assert_client_address_seen(replies: &[mesh_tests::Reply], client: Ipv4Addr, k: usize) {
    for r in replies {
        assert_eq!(
            r.peer_ip(),
            Some(client),
            "peer seen by {} via n{k}",
            r.task
        );
    }
}

fn published(topo: &Topology, k: usize) -> SocketAddr {
    SocketAddr::from((topo.node_addr(k), TCP_PORT))
}

/// P1 and P2 from every node: every task answers through every node, and sees the
/// client's real address.
#[test]
fn p1_p2_every_node_reaches_every_task() {
    let topo = mesh();
    let client = topo.client_addr();
    for k in 1..=3 {
        let addr = published(&topo, k);
        let replies = ok(from_client(&topo, || {
            (0..12)
                .map(|i| request_tcp(addr).with_context(|| format!("request {i} to {addr}")))
                .collect::<Result<Vec<_>>>()
        }));
        let tasks: BTreeSet<&str> = replies.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(
            tasks,
            BTreeSet::from(["web.1", "web.2", "web.3"]),
            "tasks answering through n{k}"
        );
        assert_client_address_seen(&replies, client, k);
    }
}

/// 300 new connections through the three nodes spread evenly over the three tasks.
#[test]
fn new_connections_spread_evenly() {
    let topo = mesh();
    let addrs: Vec<SocketAddr> = (1..=3).map(|k| published(&topo, k)).collect();
    let replies = ok(from_client(&topo, || {
        (0..300)
            .map(|i| request_tcp(addrs[i % 3]).with_context(|| format!("request {i}")))
            .collect::<Result<Vec<_>>>()
    }));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in replies {
        *counts.entry(r.task).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (task, n) in &counts {
        assert!(
            (90..=110).contains(n),
            "{task} got {n} of 300 connections: {counts:?}"
        );
    }
}

/// The standalone agents' `scheduler = "sh"` (issue 16), applied by a reload on every
/// node: the client's connections through all three nodes reach one task; back to the
/// default, they spread again.
#[test]
fn scheduler_sh_in_the_config_keeps_the_client_on_one_task() {
    let mut topo = mesh();
    let addrs: Vec<SocketAddr> = (1..=3).map(|k| published(&topo, k)).collect();
    let round = |topo: &Topology| -> BTreeSet<String> {
        let addrs = addrs.clone();
        ok(from_client(topo, move || {
            (0..30)
                .map(|i| Ok(request_tcp(addrs[i % 3])?.task))
                .collect::<Result<BTreeSet<_>>>()
        }))
    };
    topo.services_mut()[0].scheduler = Some("sh".into());
    ok(topo.reload());
    let one = round(&topo);
    assert_eq!(one.len(), 1, "sh: {one:?}");
    assert_eq!(round(&topo), one, "the same task again");
    topo.services_mut()[0].scheduler = None;
    ok(topo.reload());
    assert_eq!(round(&topo).len(), 3, "rr again");
}

/// P3: a task connects to the service's VIP and reaches tasks on its own and other nodes.
#[test]
fn p3_task_to_vip() {
    let topo = mesh();
    let web1 = ok(topo.task("web.1"));
    let (ns, src) = (web1.ns.clone(), web1.addr);
    let vip = SocketAddr::from((VIP, 80));
    let replies = ok(ok(in_netns(&ns, || {
        (0..12)
            .map(|i| request_tcp(vip).with_context(|| format!("request {i} to {vip}")))
            .collect::<Result<Vec<_>>>()
    })));
    let tasks: BTreeSet<&str> = replies.iter().map(|r| r.task.as_str()).collect();
    assert!(
        tasks.iter().any(|t| *t != "web.1"),
        "only {tasks:?} answered the VIP from web.1"
    );
    for r in &replies {
        assert_eq!(r.peer_ip(), Some(src), "peer seen by {}", r.task);
    }
}

/// P5: UDP through every node's published port, and to the VIP from a task.
#[test]
fn p5_udp() {
    let topo = mesh();
    let client = topo.client_addr();
    for k in 1..=3 {
        let addr = SocketAddr::from((topo.node_addr(k), UDP_PORT));
        let replies = ok(from_client(&topo, || {
            (0..9u8)
                .map(|i| {
                    let payload = [b'u', b'd', b'p', i];
                    let (r, back) = request_udp(addr, &payload)?;
                    ensure!(back == payload, "payload came back as {back:?}");
                    Ok(r)
                })
                .collect::<Result<Vec<_>>>()
        }));
        assert_client_address_seen(&replies, client, k);
        let tasks: BTreeSet<&str> = replies.iter().map(|r| r.task.as_str()).collect();
        assert!(tasks.len() > 1, "only {tasks:?} answered UDP through n{k}");
    }
    let web2 = ok(topo.task("web.2"));
    let vip = SocketAddr::from((VIP, 80));
    let (r, back) = ok(ok(in_netns(&web2.ns, || request_udp(vip, b"to the vip"))));
    assert_eq!(back, b"to the vip");
    assert_eq!(r.peer_ip(), Some(web2.addr));
}

/// P7: what is not the mesh's passes untouched: a node's own listener, ping.
#[test]
fn p7_other_traffic_passes() {
    let topo = mesh();
    let n1 = topo.node_addr(1);
    let listen = SocketAddr::from((n1, 2222));
    let listener = ok(in_netns(&topo.node_ns(1), || TcpListener::bind(listen)))
        .unwrap_or_else(|e| panic!("listen on {listen} in n1: {e}"));
    let server = std::thread::spawn(move || -> Result<SocketAddr> {
        let (mut conn, peer) = listener.accept()?;
        conn.write_all(b"sshd here\n")?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf)?;
        Ok(peer)
    });
    let got = ok(from_client(&topo, || {
        let mut s = std::net::TcpStream::connect_timeout(&listen, mesh_tests::client::TIMEOUT)?;
        s.set_read_timeout(Some(mesh_tests::client::TIMEOUT))?;
        let mut banner = [0u8; 10];
        s.read_exact(&mut banner)?;
        s.write_all(b"ping")?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back)?;
        ensure!(&back == b"ping");
        Ok(banner)
    }));
    assert_eq!(&got, b"sshd here\n");
    let peer = ok(server.join().expect("server thread"));
    assert_eq!(peer.ip(), topo.client_addr());
    for k in 1..=3 {
        let addr = topo.node_addr(k);
        ok(from_client(&topo, || ping(addr, 3)));
    }
    // Node to node, too (underlay traffic between nodes, not VXLAN).
    let n3 = topo.node_addr(3);
    ok(ok(in_netns(&topo.node_ns(1), || ping(n3, 3))));
}

/// An established connection survives backend-set changes and its own backend draining;
/// a draining backend takes no new connections.
#[test]
fn established_flow_survives_reload_and_draining() {
    let mut topo = mesh();
    let entry = published(&topo, 1);
    let mut conn = ok(from_client(&topo, || EchoConn::connect(entry)));
    let mine = conn.reply.task.clone();
    ok(conn.roundtrip(b"before any change"));

    // Add a backend (a new task on n2), reload.
    ok(topo
        .add_task(2, "web.4", Ipv4Addr::new(10, 255, 2, 2))
        .map(drop));
    topo.services_mut()[0]
        .backends
        .push(BackendSpec::new("web.4"));
    ok(topo.reload());
    ok(conn.roundtrip(b"after adding web.4"));

    // Remove a backend that is not ours.
    let other = ["web.1", "web.2", "web.3"]
        .into_iter()
        .find(|t| *t != mine)
        .expect("another task");
    topo.services_mut()[0]
        .backends
        .retain(|b| b.endpoint != other);
    ok(topo.reload());
    ok(conn.roundtrip(b"after removing another backend"));

    // Drain our own backend.
    for b in &mut topo.services_mut()[0].backends {
        if b.endpoint == mine {
            b.draining = true;
        }
    }
    ok(topo.reload());
    ok(conn.roundtrip(b"while our backend drains"));

    let addrs: Vec<SocketAddr> = (1..=3).map(|k| published(&topo, k)).collect();
    let replies = ok(from_client(&topo, || {
        (0..30)
            .map(|i| request_tcp(addrs[i % 3]))
            .collect::<Result<Vec<_>>>()
    }));
    let tasks: BTreeMap<&str, usize> = replies.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.task.as_str()).or_default() += 1;
        m
    });
    assert!(
        !tasks.contains_key(mine.as_str()),
        "draining {mine} got new connections: {tasks:?}"
    );
    assert!(
        !tasks.contains_key(other),
        "removed {other} got new connections: {tasks:?}"
    );
    ok(conn.roundtrip(&[7u8; 100_000]));
    ok(conn.finish());
}

/// Connects through node `k` until the chosen task is not on node `k` (P2).
fn connect_remote(topo: &Topology, k: usize) -> EchoConn {
    let entry = published(topo, k);
    let local = format!("web.{k}");
    ok(from_client(topo, || {
        for _ in 0..20 {
            let c = EchoConn::connect(entry)?;
            if c.reply.task != local {
                return Ok(c);
            }
        }
        anyhow::bail!("20 connections through n{k} all went to the local task")
    }))
}

/// P2 carries 1 MiB each way (upload and download at once) intact.
#[test]
fn p2_one_mib_each_way() {
    let topo = mesh();
    let mut conn = connect_remote(&topo, 1);
    assert_eq!(conn.reply.peer_ip(), Some(topo.client_addr()));
    let n = ok(conn.transfer(1 << 20, || Ok(())));
    assert_eq!(n, 1 << 20);
    ok(conn.finish());
}

/// `kill -9` of an agent in the middle of a transfer through its node loses nothing; the
/// agent restarts, picks its pinned dataplane up, and new connections work.
#[test]
fn agent_kill9_mid_transfer_loses_nothing() {
    let mut topo = mesh();
    let mut conn = connect_remote(&topo, 1);
    let topo_cell = std::cell::RefCell::new(&mut topo);
    let n = ok(conn.transfer(8 << 20, || topo_cell.borrow_mut().kill_agent(1)));
    assert_eq!(n, 8 << 20);
    ok(conn.roundtrip(b"still there after the agent died"));
    ok(topo.restart_agent(1));
    ok(conn.roundtrip(b"and after it came back"));
    ok(conn.finish());
    let entry = published(&topo, 1);
    let replies = ok(from_client(&topo, || {
        (0..9)
            .map(|_| request_tcp(entry))
            .collect::<Result<Vec<_>>>()
    }));
    let tasks: BTreeSet<&str> = replies.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(
        tasks.len(),
        3,
        "tasks answering through n1 after the restart: {tasks:?}"
    );
}

/// The agents' lifecycle as the harness drives it, without traffic: a reload that changes
/// the backend set is applied, `kill -9` and a restart pick the pinned dataplane up, and
/// every agent serves metrics.
#[test]
fn agent_lifecycle_reload_kill_restart() {
    let mut topo = mesh();
    for k in 1..=3 {
        let m = ok(topo.metrics(k));
        assert!(m.contains("lb_backends"), "n{k} metrics:\n{m}");
    }
    topo.services_mut()[0].backends[1].draining = true;
    topo.services_mut()[0].backends.remove(2);
    ok(topo.reload());
    let m = ok(topo.metrics(2));
    assert!(
        m.lines()
            .any(|l| l.starts_with("lb_backends{") && l.contains("draining") && l.ends_with(" 1")),
        "n2 metrics after the reload:\n{m}"
    );
    ok(topo.kill_agent(1));
    assert!(
        topo.pin_dir(1).join("LB_FLOWS").exists(),
        "pins survive kill -9"
    );
    ok(topo.restart_agent(1));
    let log = topo
        .agent(1)
        .map(mesh_tests::Agent::log)
        .unwrap_or_default();
    assert!(log.contains("lb-agent ready"), "{log}");
    ok(topo.metrics(1).map(drop));
}

/// A published port moved by a reload: served on the new port from every node, and the
/// old one is the mesh's no more (the node's kernel answers it: nothing listens there).
#[test]
fn a_published_port_moved_by_a_reload_is_served_there_and_no_more_here() {
    let mut topo = mesh();
    let moved = TCP_PORT + 1;
    topo.services_mut()[0].ports[0].published = moved;
    ok(topo.reload());
    for k in 1..=3 {
        let new = SocketAddr::from((topo.node_addr(k), moved));
        let reply = ok(from_client(&topo, || request_tcp(new)));
        assert!(reply.task.starts_with("web."), "via n{k}: {reply:?}");
        let old = published(&topo, k);
        let refused = ok(from_client(&topo, || Ok(request_tcp(old).is_err())));
        assert!(refused, "n{k} still balances the old port {old}");
    }
    // And back: the old port is published again.
    topo.services_mut()[0].ports[0].published = TCP_PORT;
    ok(topo.reload());
    for k in 1..=3 {
        let reply = ok(from_client(&topo, || request_tcp(published(&topo, k))));
        assert!(reply.task.starts_with("web."), "via n{k}: {reply:?}");
    }
}

/// Issue 12, fault 5: a bad configuration is counted once. The file watcher tries it as
/// it is written, and the SIGHUP sent after the edit (as the docs say) tries the same
/// bytes again: logged, not counted a second time. The dataplane keeps working.
#[test]
fn a_bad_configuration_is_counted_once() {
    let mut topo = mesh();
    let failures = |topo: &Topology| -> f64 {
        ok(topo.metrics(1))
            .lines()
            .find(|l| l.starts_with("lb_config_reloads_total{result=\"failure\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(failures(&topo), 0.0);
    let path = topo.config_path(1);
    let good = ok(std::fs::read_to_string(&path).context("reading the configuration"));
    ok(std::fs::write(&path, "this is [not toml").context("writing a bad configuration"));
    ok(mesh_tests::poll_until(
        std::time::Duration::from_secs(30),
        "the watcher's failed reload",
        || Ok((failures(&topo) >= 1.0).then_some(())),
    ));
    // Then the SIGHUP: tried again and logged, not counted again. (The watcher's own
    // failure is logged by now: it was counted.)
    let agent = topo.agent(1).context("n1's agent").unwrap();
    let pid = agent.pid().context("n1's agent's pid").unwrap();
    let logged = |agent: &mesh_tests::agent::Agent| {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("config reload failed"))
            .count()
    };
    ok(mesh_tests::poll_until(
        std::time::Duration::from_secs(30),
        "the watcher's failed reload in the log",
        || Ok((logged(topo.agent(1).unwrap()) >= 1).then_some(())),
    ));
    let agent = topo.agent(1).context("n1's agent").unwrap();
    let before = logged(agent);
    ok(nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .context("SIGHUP"));
    ok(mesh_tests::poll_until(
        std::time::Duration::from_secs(30),
        "the SIGHUP's failed reload in the log",
        || Ok((logged(topo.agent(1).unwrap()) > before).then_some(())),
    ));
    assert_eq!(failures(&topo), 1.0, "one bad configuration, one failure");
    // The dataplane was left as it was: a good file is applied again.
    ok(std::fs::write(&path, good).context("restoring the configuration"));
    ok(topo.reload());
    let entry = published(&topo, 1);
    ok(from_client(&topo, || request_tcp(entry)).map(drop));
}
