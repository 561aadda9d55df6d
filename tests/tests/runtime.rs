//! The process runtime and the task plumbing, end to end: real namespaces, veths and
//! processes, inside a throwaway namespace that plays the node. Needs root and
//! `busybox-static` (`cargo xtask setup`).

mod runtime_common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_agent::runtime::Runtimes;
use lb_agent::runtime::plumb;
use lb_agent::runtime::task::{Exit, TaskConfig, TaskNetwork};
use mesh_api::spec::RuntimeKind;
use mesh_api::task::TaskId;
use runtime_common::{Node, fetch, poll, run, task_config, task_id};
use tokio::sync::mpsc::UnboundedReceiver;

fn task(id: TaskId, name: &str, addr: Ipv4Addr, program: &str, args: &[&str]) -> TaskConfig {
    task_config(RuntimeKind::Process, (id, name), addr, program, args)
}

/// A task that prints its environment and serves "hi" on TCP port 80.
fn server(id: TaskId, name: &str, addr: Ipv4Addr) -> TaskConfig {
    task(
        id,
        name,
        addr,
        "sh",
        &[
            "-c",
            "echo started $MESH_TASK_NAME $MESH_SERVICE_NAME $MESH_TASK_ADDR $MESH_TASK_ID $GREETING; \
             echo to-stderr >&2; exec busybox nc -ll -p 80 -e busybox echo hi",
        ],
    )
}

async fn next_exit(exits: &mut UnboundedReceiver<(TaskId, Exit)>) -> Result<(TaskId, Exit)> {
    tokio::time::timeout(Duration::from_secs(20), exits.recv())
        .await
        .context("no exit reported within 20 s")?
        .context("the exits channel closed")
}

fn netns_of(id: TaskId) -> String {
    lb_agent::runtime::process::netns_name(id)
}

fn in_task(id: TaskId, args: &[&str]) -> Result<String> {
    let ns = netns_of(id);
    let mut all = vec!["-n", ns.as_str()];
    all.extend_from_slice(args);
    run("ip", &all)
}

#[test]
fn process_task_is_plumbed_reachable_logged_checked_and_stopped() -> Result<()> {
    runtime_common::require_busybox()?;
    let node = Node::new("proc")?;
    let node_name = node.name.clone();
    let state = tempdir("proc")?;
    node.run(move || async move {
        let rt = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
        let mut exits = rt.take_exits().context("exits")?;
        ensure!(rt.take_exits().is_none(), "take_exits twice");
        let id = task_id(1);
        let addr = Ipv4Addr::new(10, 200, 0, 2);
        let started = rt.start(&server(id, "web.1", addr)).await?;
        assert_eq!(started.host_iface, plumb::host_iface(id));

        // The host side, in the node's namespace.
        let node_ip = |args: &[&str]| {
            let mut all = vec!["-n", node_name.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let link = node_ip(&["-o", "link", "show", &started.host_iface])?;
        assert!(link.starts_with(&format!("{}:", started.ifindex)), "{link}");
        assert!(link.contains("mtu 1450") && link.contains("state UP") || link.contains("LOWER_UP"), "{link}");
        assert!(link.contains("02:fe:0a:c8:00:02"), "{link}");
        let routes = node_ip(&["route", "show", &format!("{addr}/32")])?;
        assert!(
            routes.contains(&format!("dev {}", started.host_iface)) && routes.contains("scope link"),
            "{routes}"
        );

        // The task side, in the task's namespace (visible to `ip netns`).
        assert!(run("ip", &["netns", "list"])?.contains(&netns_of(id)));
        let eth = in_task(id, &["-o", "addr", "show", "eth0"])?;
        assert!(eth.contains(&format!("inet {addr}/32")), "{eth}");
        let eth_link = in_task(id, &["-o", "link", "show", "eth0"])?;
        assert!(eth_link.contains("mtu 1450") && eth_link.contains("02:42:0a:c8:00:02"), "{eth_link}");
        let lo = in_task(id, &["-o", "link", "show", "lo"])?;
        assert!(lo.contains("UP"), "{lo}");
        let troutes = in_task(id, &["route"])?;
        assert!(troutes.contains("default via 169.254.1.1 dev eth0"), "{troutes}");
        assert!(
            troutes.lines().any(|l| l.starts_with("169.254.1.1 dev eth0") && l.contains("scope link")),
            "{troutes}"
        );
        let neigh = in_task(id, &["neigh", "show", "169.254.1.1"])?;
        assert!(neigh.contains("lladdr 02:fe:0a:c8:00:02") && neigh.contains("PERMANENT"), "{neigh}");
        let features = run("ip", &["netns", "exec", &netns_of(id), "ethtool", "-k", "eth0"])?;
        assert!(features.contains("generic-receive-offload: on"), "{features}");

        // Reachable at its /32 from the node.
        let hi = poll(Duration::from_secs(10), "the task to answer on port 80", || fetch(addr, 80)).await?;
        assert_eq!(hi.trim(), "hi");

        // Logs: stdout and stderr, with the task's environment.
        let logs = poll(Duration::from_secs(5), "the task's first output", || {
            let rt = rt.clone();
            async move { rt.logs(id, 0).await.ok().filter(|l| l.len() >= 2) }
        })
        .await?;
        let want = format!("started web.1 web {addr} {id:016x} hello");
        assert!(logs.contains(&want), "{logs:?}");
        assert!(logs.contains(&"to-stderr".to_owned()), "{logs:?}");
        assert_eq!(rt.logs(id, 1).await?.len(), 1);

        // Health checks run in the task's namespace with its environment.
        assert!(rt.health_check(id, "test \"$MESH_TASK_NAME\" = web.1 && busybox nc 127.0.0.1 80 </dev/null | grep -q hi", Duration::from_secs(5)).await?);
        assert!(!rt.health_check(id, "exit 3", Duration::from_secs(5)).await?);
        // ... inside the task: its PID namespace (PID 1 its task-init, this test unseen),
        // its capabilities (docker's default set).
        let inside = format!(
            "test \"$(tr '\\0' ' ' </proc/1/cmdline | cut -d' ' -f2)\" = task-init \
             && ! test -e /proc/{} && grep -q 'CapEff:.00000000a80425fb' /proc/self/status",
            std::process::id()
        );
        assert!(rt.health_check(id, &inside, Duration::from_secs(5)).await?, "{inside}");
        assert!(!rt.health_check(id, "sleep 30", Duration::from_millis(300)).await?);
        assert!(matches!(
            rt.health_check(task_id(999), "true", Duration::from_secs(1)).await,
            Err(lb_agent::runtime::error::RuntimeError::Unknown(_))
        ));

        // Its cgroup holds its processes (task-init, the program), and the task sees it as
        // the root of its own cgroup namespace.
        let cgroups = lb_agent::runtime::cgroup::Cgroups::discover()
            .context("this test needs a writable cgroup v2 hierarchy (the kernel's unified one)")?;
        ensure!(cgroups.processes(id).len() >= 2, "task cgroup: {:?}", cgroups.processes(id));
        let before = cgroups.processes(id).len();
        let check = tokio::spawn({
            let rt = rt.clone();
            async move {
                rt.health_check(id, "grep -qx '0::/' /proc/self/cgroup && busybox sleep 3", Duration::from_secs(10))
                    .await
            }
        });
        // A health check runs in the task's cgroup too (task-exec, sh, sleep).
        poll(Duration::from_secs(5), "the health check to join the task's cgroup", || {
            let n = cgroups.processes(id).len();
            async move { (n >= before + 2).then_some(()) }
        })
        .await?;
        assert!(check.await??, "the health check sees its cgroup as its root");

        // Stop: SIGTERM ends it (128 + 15); namespace, cgroup, veth and route go.
        rt.stop(id, Duration::from_secs(5)).await?;
        assert_eq!(next_exit(&mut exits).await?, (id, Exit::code(143)));
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(id)));
        ensure!(!cgroups.path(id).exists(), "{} still there", cgroups.path(id).display());
        ensure!(node_ip(&["link", "show", &started.host_iface]).is_err(), "host side still there");
        assert_eq!(node_ip(&["route", "show", &format!("{addr}/32")])?.trim(), "");
        ensure!(fetch(addr, 80).await.is_none(), "still reachable after stop");
        rt.stop(id, Duration::from_secs(1)).await.context("a second stop")?;
        // The log outlives the task.
        assert!(rt.logs(id, 0).await?.contains(&want));

        // A task that ignores SIGTERM is killed after the grace period (128 + 9).
        let stubborn = task_id(2);
        rt.start(&task(stubborn, "stubborn.1", Ipv4Addr::new(10, 200, 0, 3), "sh", &[
            "-c", "trap '' TERM; echo ready; while :; do busybox sleep 1 || :; done",
        ]))
        .await?;
        poll(Duration::from_secs(5), "the stubborn task to start", || {
            let rt = rt.clone();
            async move { rt.logs(stubborn, 0).await.ok().filter(|l| l.iter().any(|x| x == "ready")) }
        })
        .await?;
        rt.stop(stubborn, Duration::from_millis(300)).await?;
        assert_eq!(next_exit(&mut exits).await?, (stubborn, Exit::code(137)));
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(stubborn)));

        // Exits are reported with the task's code.
        let quitter = task_id(3);
        rt.start(&task(quitter, "quit.1", Ipv4Addr::new(10, 200, 0, 4), "sh", &["-c", "echo bye; exit 7"])).await?;
        assert_eq!(next_exit(&mut exits).await?, (quitter, Exit::code(7)));
        assert_eq!(rt.logs(quitter, 0).await?, ["bye"]);
        rt.stop(quitter, Duration::from_secs(1)).await?;
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(quitter)));

        // A program that does not exist: start fails and leaves nothing behind.
        let missing = task_id(4);
        let err = rt
            .start(&task(missing, "missing.1", Ipv4Addr::new(10, 200, 0, 5), "/nonexistent/program", &[]))
            .await
            .expect_err("a missing program must fail");
        assert!(err.to_string().contains("nonexistent"), "{err}");
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(missing)));
        ensure!(node_ip(&["link", "show", &plumb::host_iface(missing)]).is_err(), "veth left behind");
        Ok(())
    })
}

#[test]
fn cleanup_removes_leftovers_and_adopts_kept_tasks() -> Result<()> {
    runtime_common::require_busybox()?;
    let node = Node::new("clean")?;
    let node_name = node.name.clone();
    let state = tempdir("clean")?;
    node.run(move || async move {
        let gone = task_id(11);
        let kept = task_id(12);
        let (a_gone, a_kept) = (Ipv4Addr::new(10, 201, 0, 2), Ipv4Addr::new(10, 201, 0, 3));
        {
            // A first agent run starts two tasks, then goes away without stopping them.
            let first = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
            first.start(&server(gone, "gone.1", a_gone)).await?;
            first.start(&server(kept, "kept.1", a_kept)).await?;
            for addr in [a_gone, a_kept] {
                poll(Duration::from_secs(10), "the tasks to answer", || {
                    fetch(addr, 80)
                })
                .await?;
            }
        }
        // A stray host-side veth of an unknown task.
        let stray = plumb::host_iface(task_id(13));
        run(
            "ip",
            &[
                "-n", &node_name, "link", "add", &stray, "type", "veth", "peer", "name", "strayp",
            ],
        )?;

        let second = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
        let mut exits = second.take_exits().context("exits")?;
        let removed = second.cleanup(&BTreeSet::from([kept])).await?;
        assert_eq!(removed, [gone]);
        let netns = run("ip", &["netns", "list"])?;
        assert!(
            !netns.contains(&netns_of(gone)) && netns.contains(&netns_of(kept)),
            "{netns}"
        );
        ensure!(
            fetch(a_gone, 80).await.is_none(),
            "the removed task still answers"
        );
        let links = run("ip", &["-n", &node_name, "-o", "link"])?;
        assert!(!links.contains(&plumb::host_iface(gone)), "{links}");
        assert!(!links.contains(&stray), "{links}");
        assert!(links.contains(&plumb::host_iface(kept)), "{links}");
        assert_eq!(
            fetch(a_kept, 80).await.as_deref().map(str::trim),
            Some("hi")
        );

        // The kept task is adopted: logs, health and stop work in the new run.
        assert!(
            second
                .logs(kept, 0)
                .await?
                .iter()
                .any(|l| l.starts_with("started kept.1"))
        );
        assert!(
            second
                .health_check(
                    kept,
                    "test \"$MESH_TASK_NAME\" = kept.1",
                    Duration::from_secs(5)
                )
                .await?
        );
        second.stop(kept, Duration::from_secs(5)).await?;
        let (id, _) = next_exit(&mut exits).await?;
        assert_eq!(id, kept);
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(kept)));
        assert!(second.cleanup(&BTreeSet::new()).await?.is_empty());
        Ok(())
    })
}

fn tempdir(tag: &str) -> Result<std::path::PathBuf> {
    let d = Path::new("/tmp").join(format!("mesh-rt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The main process of task `id`, as its record names it.
fn recorded_pid(state: &Path, id: TaskId) -> Result<i32> {
    let records = lb_agent::runtime::record::list(state)?;
    let (_, rec) = records
        .iter()
        .find(|(t, _)| *t == id)
        .with_context(|| format!("no record of task {id:016x}"))?;
    Ok(rec.main.context("the record names no main process")?.pid)
}

/// Issue 12, fault 2: a later agent run adopts the tasks a previous one left running
/// (same process, same veth and ifindex, same log; their end is seen, although they are
/// not its children), removes the ones whose process ended meanwhile, and `stop_all`
/// (a node leaving) stops every task.
#[test]
fn a_later_run_adopts_running_tasks_and_removes_ended_ones() -> Result<()> {
    runtime_common::require_busybox()?;
    let node = Node::new("adopt")?;
    let node_name = node.name.clone();
    let state = tempdir("adopt")?;
    node.run(move || async move {
        let (alive, ended, other) = (task_id(31), task_id(32), task_id(33));
        let addr = |k| Ipv4Addr::new(10, 203, 0, k);
        let mut ifindex = Vec::new();
        {
            // A first agent run starts three tasks, then goes away.
            let first = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
            for (k, (id, name)) in [(alive, "alive.1"), (ended, "ended.1"), (other, "other.1")]
                .into_iter()
                .enumerate()
            {
                let a = addr(2 + u8::try_from(k)?);
                ifindex.push(first.start(&server(id, name, a)).await?.ifindex);
                poll(Duration::from_secs(10), "the task to answer", || {
                    fetch(a, 80)
                })
                .await?;
            }
        }
        let alive_pid = recorded_pid(&state, alive)?;
        let other_pid = recorded_pid(&state, other)?;
        // `ended`'s program ends while no agent runs.
        let ended_pid = recorded_pid(&state, ended)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(ended_pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        poll(
            Duration::from_secs(10),
            "the ended task's process to end",
            || async {
                (!lb_agent::runtime::procfs::is_task_process(ended_pid, ended, None)).then_some(())
            },
        )
        .await?;

        // `other`'s record is of an earlier agent version (the runtime's name alone):
        // its main process is found in its namespace.
        std::fs::write(lb_agent::runtime::record::path(&state, other), "process")?;

        let second = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
        let mut exits = second.take_exits().context("exits")?;
        let adopted = second.adopt().await?;
        assert_eq!(
            adopted.running.keys().copied().collect::<Vec<_>>(),
            [alive, other]
        );
        assert_eq!(adopted.running[&alive].ifindex, ifindex[0], "the same veth");
        assert_eq!(adopted.running[&alive].host_iface, plumb::host_iface(alive));
        assert_eq!(adopted.gone, BTreeSet::from([ended]));
        // The adopted task answers as before, from the same process.
        assert_eq!(
            fetch(addr(2), 80).await.as_deref().map(str::trim),
            Some("hi")
        );
        assert!(lb_agent::runtime::procfs::is_task_process(
            alive_pid, alive, None
        ));
        assert!(
            second
                .logs(alive, 0)
                .await?
                .iter()
                .any(|l| l.starts_with("started alive.1"))
        );
        // What was left of the ended task is gone.
        assert!(!run("ip", &["netns", "list"])?.contains(&netns_of(ended)));
        let links = run("ip", &["-n", &node_name, "-o", "link"])?;
        assert!(!links.contains(&plumb::host_iface(ended)), "{links}");
        assert!(links.contains(&plumb::host_iface(alive)), "{links}");
        // Adopting again takes nothing twice.
        let again = second.adopt().await?;
        assert_eq!(again.running.len(), 2);
        assert!(again.gone.is_empty());

        // The end of an adopted task is seen (not our child: code -1).
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(other_pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        assert_eq!(next_exit(&mut exits).await?, (other, Exit::code(-1)));

        // Leaving: every task is stopped, its namespace, veth and record removed.
        let stopped = second.stop_all(Duration::from_secs(5)).await?;
        assert_eq!(stopped, [alive, other]);
        assert_eq!(next_exit(&mut exits).await?.0, alive);
        ensure!(
            fetch(addr(2), 80).await.is_none(),
            "the stopped task still answers"
        );
        let netns = run("ip", &["netns", "list"])?;
        for id in [alive, ended, other] {
            assert!(!netns.contains(&netns_of(id)), "{netns}");
        }
        assert!(lb_agent::runtime::record::list(&state)?.is_empty());
        let third = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
        assert_eq!(third.adopt().await?, lb_agent::runtime::Adopted::default());
        Ok(())
    })
}

#[test]
fn a_task_gets_one_interface_per_network_and_a_later_run_adopts_them_all() -> Result<()> {
    runtime_common::require_busybox()?;
    let node = Node::new("nets")?;
    let node_name = node.name.clone();
    let state = tempdir("nets")?;
    node.run(move || async move {
        let id = task_id(41);
        let addr = Ipv4Addr::new(10, 204, 0, 2);
        let nets = [
            (
                Ipv4Addr::new(10, 210, 1, 5),
                Ipv4Addr::new(10, 210, 1, 0),
                24,
            ),
            (
                Ipv4Addr::new(10, 210, 2, 5),
                Ipv4Addr::new(10, 210, 2, 0),
                24,
            ),
        ];
        let mut config = server(id, "api.1", addr);
        config.networks = nets
            .iter()
            .map(|&(a, subnet, prefix)| TaskNetwork {
                addr: a,
                subnet: Some((subnet, prefix)),
            })
            .collect();
        let node_ip = |args: &[&str]| {
            let mut all = vec!["-n", node_name.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let started = {
            let first = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
            first.start(&config).await?
        };
        let names: Vec<String> = (1..=2)
            .map(|n| plumb::network_host_iface(id, n).expect("a name"))
            .collect();
        assert_eq!(started.networks, names);
        assert_eq!(started.host_iface, plumb::host_iface(id));

        for (n, ((a, subnet, prefix), host_side)) in nets.iter().zip(&names).enumerate() {
            let eth = format!("eth{}", n + 1);
            let o = a.octets();
            // The host side: its MAC, MTU, the route to the task's address there.
            let link = node_ip(&["-o", "link", "show", host_side])?;
            let host_mac = format!("02:fe:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            assert!(
                link.contains("mtu 1450") && link.contains(&host_mac),
                "{link}"
            );
            let routes = node_ip(&["route", "show", &format!("{a}/32")])?;
            assert!(routes.contains(&format!("dev {host_side}")), "{routes}");
            // The task side: address, MAC, MTU, GRO, the subnet's route and the gateway.
            let addrs = in_task(id, &["-o", "addr", "show", &eth])?;
            assert!(addrs.contains(&format!("inet {a}/32")), "{addrs}");
            let task_mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            let link = in_task(id, &["-o", "link", "show", &eth])?;
            assert!(
                link.contains("mtu 1450") && link.contains(&task_mac),
                "{link}"
            );
            let troutes = in_task(id, &["route", "show", &format!("{subnet}/{prefix}")])?;
            assert!(
                troutes.contains(&format!("via 169.254.1.1 dev {eth}"))
                    && troutes.contains(&format!("src {a}"))
                    && troutes.contains("onlink"),
                "{troutes}"
            );
            let neigh = in_task(id, &["neigh", "show", "169.254.1.1", "dev", &eth])?;
            assert!(
                neigh.contains(&host_mac) && neigh.contains("PERMANENT"),
                "{neigh}"
            );
            let features = run(
                "ip",
                &["netns", "exec", &netns_of(id), "ethtool", "-k", &eth],
            )?;
            assert!(
                features.contains("generic-receive-offload: on"),
                "{features}"
            );
        }
        // The default route stays on eth0; the task picks its network address for its
        // network's subnet.
        let default = in_task(id, &["route", "show", "default"])?;
        assert!(default.contains("dev eth0"), "{default}");
        let get = in_task(id, &["route", "get", "10.210.2.77"])?;
        assert!(
            get.contains("dev eth2") && get.contains("src 10.210.2.5"),
            "{get}"
        );
        // The task still answers on its ingress address.
        poll(Duration::from_secs(10), "the task to answer", || {
            fetch(addr, 80)
        })
        .await?;

        // A later agent run adopts the task with all its interfaces, and leaves them;
        // a network veth of a task nobody runs is stray, and removed.
        let stray = plumb::network_host_iface(task_id(42), 1).expect("a name");
        node_ip(&[
            "link", "add", &stray, "type", "veth", "peer", "name", "strayp",
        ])?;
        let second = Runtimes::new(&state, false, runtime_common::isolation(&state)?).await?;
        let adopted = second.adopt().await?;
        assert_eq!(adopted.running[&id], started);
        for host_side in &names {
            node_ip(&["link", "show", host_side])?;
        }
        ensure!(
            node_ip(&["link", "show", &stray]).is_err(),
            "{stray} still there"
        );
        // Stopping it removes every veth and route.
        second.stop(id, Duration::from_secs(5)).await?;
        let links = node_ip(&["-o", "link"])?;
        for host_side in names.iter().chain([&started.host_iface]) {
            assert!(!links.contains(host_side.as_str()), "{links}");
        }
        for (a, _, _) in nets {
            assert_eq!(node_ip(&["route", "show", &format!("{a}/32")])?.trim(), "");
        }
        Ok(())
    })
}

/// Service discovery on one node, without a cluster: the agent's resolver at the tasks'
/// gateway (`lb_agent::dns::Dns`, as a managed agent starts it) answers a process task
/// that resolves through its own `/etc/resolv.conf`, while the task binds port 53 itself
/// and the node's `/etc/resolv.conf` stays as it was.
#[test]
fn a_process_task_resolves_names_through_its_own_resolv_conf() -> Result<()> {
    use mesh_api::assignment::{AssignedTask, Assignment, Backend, ServiceRoutes, TaskAction};

    runtime_common::require_busybox()?;
    let node = Node::new("dns")?;
    let node_name = node.name.clone();
    let state = tempdir("dns")?;
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    node.run(move || async move {
        let lo = |name: &str| run("ip", &["-n", name, "-o", "addr", "show", "dev", "lo"]);
        ensure!(!lo(&node_name)?.contains("169.254.1.1"), "the gateway is on lo already");
        let dns = lb_agent::dns::Dns::start(vec![]).await?;
        ensure!(lo(&node_name)?.contains("inet 169.254.1.1/32"), "{}", lo(&node_name)?);
        let isolation = runtime_common::isolation(&state)?.with_dns(Some(plumb::GATEWAY));
        let rt = Runtimes::new(&state, false, isolation).await?;
        let id = task_id(41);
        let addr = Ipv4Addr::new(10, 204, 0, 2);
        // The task binds TCP port 53 in its own namespace, where nothing else listens.
        // As nobody: the file is readable by any user, and port 53 needs no privilege in
        // the task's namespace.
        let mut program = task(
            id,
            "web.1",
            addr,
            "busybox",
            &["nc", "-ll", "-p", "53", "-e", "busybox", "echo", "bound53"],
        );
        program.spec.user = Some("nobody".into());
        let spec = program.spec.clone();
        dns.set_view(lb_agent::dns::View::new(&Assignment {
            version: 1,
            node: 1,
            ingress: Default::default(),
            networks: vec![],
            peers: Default::default(),
            tasks: vec![AssignedTask {
                id,
                name: "web.1".into(),
                service_id: 1,
                service_name: "web".into(),
                spec,
                addr,
                networks: vec![],
                action: TaskAction::Run,
                state: mesh_api::task::TaskState::Running,
                slot: 1,
            }],
            services: vec![std::sync::Arc::new(ServiceRoutes {
                id: 1,
                name: "web".into(),
                vip: Some(Ipv4Addr::new(10, 255, 0, 100)),
                ports: vec![],
                backends: vec![Backend {
                    task: id,
                    name: "web.1".into(),
                    addr,
                    networks: vec![],
                    node: 1,
                    draining: false,
                }],
                networks: vec![],
                lb_algorithm: Default::default(),
            })],
            history: Default::default(),
            secrets: vec![],
            configs: vec![],
            hostname: String::new(),
        }));
        rt.start(&program).await?;
        let check = |cmd: &'static str| {
            let rt = rt.clone();
            async move {
                rt.health_check(id, cmd, Duration::from_secs(10))
                    .await
                    .ok()
                    .filter(|ok| *ok)
            }
        };
        // task-exec (health checks) sees the task's file, as its program does.
        poll(Duration::from_secs(10), "the task's own resolv.conf", || {
            check(
                "test \"$(cat /etc/resolv.conf | grep -v ^search)\" = \"$(printf 'nameserver 169.254.1.1\\noptions ndots:0')\"",
            )
        })
        .await?;
        poll(Duration::from_secs(10), "web to resolve to its VIP", || {
            check("busybox nslookup web | grep -q 'Address: *10.255.0.100$'")
        })
        .await?;
        poll(Duration::from_secs(10), "tasks.web to resolve to the task", || {
            check("busybox nslookup tasks.web | grep -q 'Address: *10.204.0.2$'")
        })
        .await?;
        poll(Duration::from_secs(10), "the task's own port 53", || {
            check("busybox nc 127.0.0.1 53 </dev/null | grep -q bound53")
        })
        .await?;
        let counters = dns.counters();
        ensure!(counters.get(lb_agent::dns::answer::Outcome::Answered) >= 2);
        rt.stop(id, Duration::from_secs(2)).await?;
        dns.stop().await;
        ensure!(!lo(&node_name)?.contains("169.254.1.1"), "the gateway left on lo");
        Ok(())
    })?;
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        host_resolv,
        "the node's /etc/resolv.conf changed"
    );
    Ok(())
}

/// A task whose limit no controller of this agent can enforce (an agent without cgroup
/// controllers, as on a node without a writable cgroup hierarchy) fails at once, naming
/// the flag, and leaves nothing behind: it never runs unlimited.
#[test]
fn a_limit_no_controller_enforces_fails_the_task_at_once() -> Result<()> {
    runtime_common::require_busybox()?;
    let node = Node::new("nolimit")?;
    let state = tempdir("nolimit")?;
    node.run(move || async move {
        let isolation = runtime_common::isolation(&state)?
            .with_controllers(lb_agent::runtime::cgroup::Controllers::default());
        let rt = Runtimes::new(&state, false, isolation).await?;
        let id = task_id(90);
        let mut config = task(
            id,
            "lim.1",
            Ipv4Addr::new(10, 200, 0, 90),
            "sleep",
            &["600"],
        );
        config.spec.resources.limits.memory_bytes = 32 << 20;
        let err = rt
            .start(&config)
            .await
            .expect_err("no controller enforces the limit");
        assert!(
            err.to_string()
                .contains("--limit-memory cannot be enforced on this node"),
            "{err}"
        );
        ensure!(
            !run("ip", &["netns", "list"])?.contains(&netns_of(id)),
            "the task's namespace is left"
        );
        if let Some(cgroups) = lb_agent::runtime::cgroup::Cgroups::discover() {
            ensure!(!cgroups.path(id).exists(), "the task's cgroup is left");
        }
        Ok(())
    })
}
