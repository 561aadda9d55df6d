//! `mesh-demo`: a 3-node mesh in network namespaces, with agents and tasks, that answers
//! requests through every node, and then stays up to be explored.
//!
//! ```text
//! mesh-demo          build the mesh (prefix `mesh`), show it working, leave it running
//! mesh-demo --once   the same, then tear it down (CI smoke test)
//! mesh-demo --down   tear down what an earlier `mesh-demo` left running
//! ```
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::{Result, bail};
use mesh_tests::client::request_tcp;
use mesh_tests::client::request_udp;
use mesh_tests::web::{self, TCP_PORT, UDP_PORT, VIP};
use mesh_tests::{Topology, in_netns, teardown_prefix};

const PREFIX: &str = "mesh";

fn usage() -> ExitCode {
    eprintln!("usage: mesh-demo [--once | --down]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => demo(false),
        ["--once"] => demo(true),
        ["--down"] => down(),
        ["-h" | "--help"] => return usage(),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn down() -> Result<()> {
    mesh_tests::netns::preflight()?;
    teardown_prefix(PREFIX)?;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("mesh-tests").join(PREFIX));
    println!("mesh-demo: removed the namespaces {PREFIX}-* and the pins /sys/fs/bpf/{PREFIX}-*");
    Ok(())
}

fn demo(once: bool) -> Result<()> {
    println!(
        "mesh-demo: building 3 nodes, a client and 4 tasks in network namespaces `{PREFIX}-*`"
    );
    let mut topo = Topology::with_prefix(PREFIX, 3, [10, 99, 0])?;
    topo.set_detached(!once);
    let tasks = [(1, "web.1"), (2, "web.2"), (3, "web.3"), (1, "web.4")];
    for (j, (node, name)) in tasks.iter().enumerate() {
        let addr = Ipv4Addr::new(10, 255, *node as u8, j as u8 + 1);
        topo.add_task(*node, name, addr)?;
    }
    let names: Vec<&str> = tasks.iter().map(|(_, n)| *n).collect();
    topo.set_services(vec![web::service(&names)]);
    println!(
        "mesh-demo: starting lb-agent on every node (configs in {})",
        topo.dir().display()
    );
    topo.start_agents()?;

    let client = topo.client_ns();
    println!();
    println!(
        "{:<6} {:<22} {:<8} {:<22}",
        "node", "request", "task", "peer seen by the task"
    );
    let mut failures = 0;
    for k in 1..=topo.nodes() {
        let node = topo.node_addr(k);
        for (proto, port) in [
            ("tcp", TCP_PORT),
            ("tcp", TCP_PORT),
            ("tcp", TCP_PORT),
            ("udp", UDP_PORT),
        ] {
            let addr = SocketAddr::from((node, port));
            let res = in_netns(&client, move || {
                if proto == "tcp" {
                    request_tcp(addr)
                } else {
                    request_udp(addr, b"hello").map(|(r, _)| r)
                }
            })
            .and_then(|r| r);
            let what = format!("{proto} {addr}");
            match res {
                Ok(r) => println!(
                    "{:<6} {:<22} {:<8} {:<22}",
                    format!("n{k}"),
                    what,
                    r.task,
                    r.peer
                ),
                Err(e) => {
                    failures += 1;
                    println!("{:<6} {:<22} FAILED: {e:#}", format!("n{k}"), what);
                }
            }
        }
    }
    println!();
    if once {
        drop(topo);
        if failures > 0 {
            bail!("{failures} requests failed");
        }
        println!("mesh-demo: all requests answered; torn down (--once)");
        return Ok(());
    }
    topo.keep();
    let p = PREFIX;
    let c = topo.client_addr();
    println!("The mesh keeps running. Look around:");
    println!(
        "  ip netns list | grep {p}-              # namespaces: {p}-ul (bridge), {p}-n1..n3, {p}-c (client {c}), {p}-t-<task>"
    );
    println!(
        "  ip netns exec {p}-c curl -s --max-time 2 telnet://10.99.0.11:{TCP_PORT} </dev/null"
    );
    println!(
        "  ip netns exec {p}-c nc -w1 10.99.0.12 {TCP_PORT} </dev/null    # answered by any task"
    );
    println!("  echo hi | ip netns exec {p}-c nc -u -w1 10.99.0.13 {UDP_PORT}");
    println!("  ip netns exec {p}-t-web.1 nc -w1 {VIP} 80 </dev/null          # a task to the VIP");
    println!("  ip netns exec {p}-n1 curl -s 127.0.0.1:9464/metrics");
    println!("  bpftool map dump pinned /sys/fs/bpf/{p}-n1/LB_FLOWS");
    println!("  ip -n {p}-n1 link show eth0                          # the XDP program");
    println!("  cat {}/agent-n1.log", topo.dir().display());
    println!("Tear it down:");
    println!("  mesh-demo --down      (or: cargo xtask demo --down)");
    if failures > 0 {
        bail!("{failures} requests failed; the mesh was left running for inspection");
    }
    Ok(())
}
