//! `mesh-demo`: a managed 3-node cluster in network namespaces (a manager on n1, workers
//! n2 and n3 joined with a token, an agent on every node), the service `web` created with
//! `meshctl`, requests through every node answered by its tasks; then it stays up to be
//! explored with `meshctl`.
//!
//! ```text
//! mesh-demo          build the cluster (prefix `demo`), show it working, leave it running
//! mesh-demo --once   the same, then tear it down (CI smoke test)
//! mesh-demo --down   tear down what an earlier `mesh-demo` left running
//! ```
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::{Result, bail};
use mesh_tests::managed::teardown_managed;
use mesh_tests::{ManagedCluster, ManagedOptions, bin};

/// Not `mesh`: the process runtime names task namespaces `mesh-<task id>`, which a
/// teardown of `mesh-*` would take for the demo's.
const PREFIX: &str = "demo";
const NODES: usize = 3;
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8081;

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
    teardown_managed(PREFIX)?;
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("mesh-tests").join(PREFIX));
    println!(
        "mesh-demo: stopped the managers, agents and tasks; removed the namespaces {PREFIX}-* \
         and the pins /sys/fs/bpf/{PREFIX}-*"
    );
    Ok(())
}

/// Prints a command line and what it printed.
fn show(c: &ManagedCluster, args: &[&str]) -> Result<()> {
    println!("$ meshctl {}", args.join(" "));
    let out = c.meshctl_timeout(args, std::time::Duration::from_secs(120))?;
    print!("{}{}", out.stdout, out.stderr);
    if !out.success() {
        bail!("meshctl {} failed ({})", args.join(" "), out.status);
    }
    println!();
    Ok(())
}

fn demo(once: bool) -> Result<()> {
    println!(
        "mesh-demo: {NODES} nodes and a client in network namespaces `{PREFIX}-*`: a manager \
         on n1, workers n2 and n3 joined with a token, lb-agent on every node"
    );
    let mut options = ManagedOptions::new(NODES, 1);
    options.prefix = Some((PREFIX.to_owned(), [10, 99, 0]));
    options.detached = !once;
    let mut c = ManagedCluster::start_with(options)?;
    println!();
    show(&c, &["node", "ls"])?;

    let echo = bin("task-echo")?;
    let echo = echo.to_string_lossy();
    let tcp = format!("{TCP_PORT}:80");
    let udp = format!("{UDP_PORT}:80/udp");
    show(
        &c,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            &tcp,
            "-p",
            &udp,
            "--",
            &echo,
            "--port",
            "80",
            "--udp",
        ],
    )?;
    c.wait_converged("web", 3)?;
    show(&c, &["service", "ps", "web"])?;

    println!(
        "{:<6} {:<22} {:<8} {:<22}",
        "node", "request", "task", "peer seen by the task"
    );
    let mut failures = 0;
    for k in 1..=NODES {
        let node = c.node_addr(k);
        for udp in [false, false, false, true] {
            let (what, res) = if udp {
                (
                    format!("udp {node}:{UDP_PORT}"),
                    c.request_udp(k, UDP_PORT, b"hello").map(|(r, _)| r),
                )
            } else {
                // The first request through a node may race the node programming the
                // port it was just told to publish.
                let res = if failures == 0 {
                    c.wait_answered(k, TCP_PORT, std::time::Duration::from_secs(10))
                } else {
                    c.request(k, TCP_PORT)
                };
                (format!("tcp {node}:{TCP_PORT}"), res)
            };
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
    // The cluster view, as a browser shows it now, saved beside the demo's output.
    let bin_dir = mesh_tests::bin_dir();
    let shot = bin_dir
        .parent()
        .unwrap_or(&bin_dir)
        .join("demo/cluster-view.png");
    match screenshot(&c, &shot) {
        Ok(()) => println!(
            "The cluster view (mesh-manager --web-addr), now: {}\n",
            shot.display()
        ),
        Err(e) => println!("(no screenshot of the cluster view: {e:#})\n"),
    }
    if once {
        drop(c);
        if failures > 0 {
            bail!("{failures} requests failed");
        }
        println!("mesh-demo: all requests answered; torn down (--once)");
        return Ok(());
    }
    c.keep();
    let p = PREFIX;
    let meshctl = bin("meshctl")?;
    let tls = c.data_dir(1).join("tls");
    println!("The cluster keeps running. Talk to it as the manager on n1:");
    println!(
        "  alias meshctl='ip netns exec {p}-n1 env MESH_HOST={} MESH_TLS_DIR={} {}'",
        c.hosts(),
        tls.display(),
        meshctl.display()
    );
    println!("  meshctl node ls");
    println!("  meshctl service ps web");
    println!("  meshctl service scale web=6");
    println!("  meshctl service update --args \"--port 80 --udp --tag v2\" web   # rolling update");
    println!("  meshctl service rollback web");
    println!("  meshctl node update --availability drain n3");
    println!("Requests from the client namespace ({p}-c), through any node:");
    println!("  ip netns exec {p}-c nc -w1 10.99.0.12 {TCP_PORT} </dev/null");
    println!("  echo hi | ip netns exec {p}-c nc -u -w1 10.99.0.13 {UDP_PORT}");
    println!(
        "The cluster view in your browser, at http://127.0.0.1:9466/ (n1's manager, forwarded):"
    );
    println!(
        "  socat TCP-LISTEN:9466,bind=127.0.0.1,reuseaddr,fork EXEC:'ip netns exec {p}-n1 socat STDIO TCP\\:127.0.0.1\\:9466' &"
    );
    println!("Inside:");
    println!("  ip netns exec {p}-n1 curl -s 127.0.0.1:9464/metrics     # n1's agent");
    println!("  ip -n {p}-n1 -d link show eth0                          # its XDP program");
    println!(
        "  ls {}                    # managers' and agents' logs",
        c.topology().dir().display()
    );
    println!("Tear it down:");
    println!("  cargo xtask demo --down     (or: mesh-demo --down)");
    if failures > 0 {
        bail!("{failures} requests failed; the cluster was left running for inspection");
    }
    Ok(())
}

/// Saves a screenshot of n1's cluster view at `path`, once it shows the service's tasks.
fn screenshot(c: &ManagedCluster, path: &std::path::Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let url = format!("http://127.0.0.1:{}/", mesh_tests::cluster::WEB_PORT);
    let mut browser =
        mesh_tests::browser::Browser::open_in(&c.topology().node_ns(1), &url, 1100, 560)?;
    mesh_tests::poll_until(
        std::time::Duration::from_secs(20),
        "the view to show web's tasks",
        || {
            let cards = browser.eval("document.querySelectorAll('.task').length")?;
            Ok((cards.as_u64() >= Some(3)).then_some(()))
        },
    )?;
    browser.screenshot(path)
}
