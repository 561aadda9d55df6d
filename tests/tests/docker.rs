//! The docker runtime end to end: a container from a locally imported busybox image,
//! plumbed by the agent into a throwaway namespace that plays the node. Needs root and
//! a docker engine (`cargo xtask setup` installs and starts one; the preflight starts an
//! installed engine the same way).

mod runtime_common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_agent::runtime::Runtimes;
use lb_agent::runtime::plumb;
use lb_agent::runtime::task::{Exit, TaskConfig};
use mesh_api::spec::RuntimeKind;
use mesh_api::task::TaskId;
use runtime_common::{Node, fetch, poll, run, task_config, task_id};
use tokio::sync::mpsc::UnboundedReceiver;

const IMAGE: &str = "mesh-test/busybox:1";

fn task(id: TaskId, name: &str, addr: Ipv4Addr, args: &[&str]) -> TaskConfig {
    task_config(RuntimeKind::Docker, (id, name), addr, IMAGE, args)
}

async fn next_exit(exits: &mut UnboundedReceiver<(TaskId, Exit)>) -> Result<(TaskId, Exit)> {
    tokio::time::timeout(Duration::from_secs(30), exits.recv())
        .await
        .context("no exit reported within 30 s")?
        .context("the exits channel closed")
}

fn containers_of(id: TaskId) -> Result<String> {
    run(
        "docker",
        &[
            "ps",
            "-a",
            "--filter",
            &format!(
                "label={}={id:016x}",
                lb_agent::runtime::docker::LABEL_TASK_ID
            ),
            "--format",
            "{{.Names}}",
        ],
    )
}

#[test]
fn docker_task_is_plumbed_reachable_logged_checked_and_stopped() -> Result<()> {
    runtime_common::require_root()?;
    runtime_common::busybox_image(IMAGE)?;
    let node = Node::new("docker")?;
    let node_name = node.name.clone();
    let state = std::path::Path::new("/tmp").join(format!("mesh-rt-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    node.run(move || async move {
        // Without docker, docker tasks are refused with the reason.
        let off = Runtimes::new(
            &state.join("off"),
            false,
            runtime_common::isolation(&state.join("off"))?,
        )
        .await?;
        let err = off
            .start(&task(
                task_id(20),
                "off.1",
                Ipv4Addr::new(10, 202, 0, 9),
                &[],
            ))
            .await
            .expect_err("docker is off");
        assert!(
            matches!(
                err,
                lb_agent::runtime::error::RuntimeError::Unavailable(RuntimeKind::Docker, _)
            ),
            "{err}"
        );

        // As a managed agent runs it: its tasks' resolver at the gateway.
        let isolation = runtime_common::isolation(&state)?.with_dns(Some(plumb::GATEWAY));
        let rt = Runtimes::new(&state, true, isolation).await?;
        let mut exits = rt.take_exits().context("exits")?;
        let id = task_id(21);
        let addr = Ipv4Addr::new(10, 202, 0, 2);
        let started = rt
            .start(&task(
                id,
                "web.1",
                addr,
                &[
                    "/bin/sh",
                    "-c",
                    "echo started $MESH_TASK_NAME $MESH_SERVICE_NAME $MESH_TASK_ADDR $GREETING; \
                 echo to-stderr >&2; exec nc -ll -p 80 -e echo hi",
                ],
            ))
            .await?;
        assert_eq!(started.host_iface, plumb::host_iface(id));
        let names = containers_of(id)?;
        assert_eq!(names.trim(), format!("web.1.{id:016x}"));
        let link = run(
            "ip",
            &["-n", &node_name, "-o", "link", "show", &started.host_iface],
        )?;
        assert!(
            link.starts_with(&format!("{}:", started.ifindex))
                && link.contains("02:fe:0a:ca:00:02"),
            "{link}"
        );

        // Its resolv.conf names the agent's resolver (docs/networks.md).
        let resolv = run("docker", &["exec", names.trim(), "cat", "/etc/resolv.conf"])?;
        assert!(
            resolv.contains("nameserver 169.254.1.1") && resolv.contains("ndots:0"),
            "{resolv}"
        );

        // Inside the container: its eth0 with the /32 and the gateway.
        let pid = run("docker", &["inspect", "-f", "{{.State.Pid}}", names.trim()])?;
        let ns = format!("/proc/{}/ns/net", pid.trim());
        let addrs = run(
            "nsenter",
            &[&format!("--net={ns}"), "ip", "-o", "addr", "show", "eth0"],
        )?;
        assert!(addrs.contains(&format!("inet {addr}/32")), "{addrs}");
        let features = run(
            "nsenter",
            &[&format!("--net={ns}"), "ethtool", "-k", "eth0"],
        )?;
        assert!(
            features.contains("generic-receive-offload: on"),
            "{features}"
        );

        let hi = poll(
            Duration::from_secs(10),
            "the container to answer on port 80",
            || fetch(addr, 80),
        )
        .await?;
        assert_eq!(hi.trim(), "hi");

        let logs = poll(Duration::from_secs(5), "the container's output", || {
            let rt = rt.clone();
            async move { rt.logs(id, 0).await.ok().filter(|l| l.len() >= 2) }
        })
        .await?;
        assert!(
            logs.contains(&format!("started web.1 web {addr} hello")),
            "{logs:?}"
        );
        assert!(logs.contains(&"to-stderr".to_owned()), "{logs:?}");
        assert_eq!(rt.logs(id, 1).await?.len(), 1);

        assert!(
            rt.health_check(
                id,
                "test \"$MESH_TASK_NAME\" = web.1 && nc 127.0.0.1 80 </dev/null | grep -q hi",
                Duration::from_secs(10)
            )
            .await?
        );
        assert!(
            !rt.health_check(id, "exit 4", Duration::from_secs(10))
                .await?
        );
        assert!(
            !rt.health_check(id, "sleep 30", Duration::from_millis(500))
                .await?
        );

        // nc is PID 1 of its PID namespace, where SIGTERM without a handler is ignored:
        // the SIGKILL after the grace period ends it.
        rt.stop(id, Duration::from_millis(500)).await?;
        assert_eq!(next_exit(&mut exits).await?, (id, Exit::code(137)));
        assert_eq!(containers_of(id)?.trim(), "");
        ensure!(
            run(
                "ip",
                &["-n", &node_name, "link", "show", &started.host_iface]
            )
            .is_err(),
            "veth left"
        );
        rt.stop(id, Duration::from_secs(1))
            .await
            .context("a second stop")?;

        // Exit codes come from the engine; SIGTERM reaches a task that handles it.
        let quitter = task_id(22);
        rt.start(&task(
            quitter,
            "quit.1",
            Ipv4Addr::new(10, 202, 0, 3),
            &["/bin/sh", "-c", "sleep 0.2; exit 5"],
        ))
        .await?;
        assert_eq!(next_exit(&mut exits).await?, (quitter, Exit::code(5)));
        rt.stop(quitter, Duration::from_secs(1)).await?;

        // Limits are the engine's to enforce: HostConfig has them (no swap beyond the
        // memory limit), and a container killed for its memory limit is reported so.
        let limited = task_id(25);
        let mut config = task(
            limited,
            "lim.1",
            Ipv4Addr::new(10, 202, 0, 6),
            &["/bin/sh", "-c", "echo ready; sleep 600"],
        );
        config.spec.resources.limits = mesh_api::resources::Resources {
            nano_cpus: 500_000_000,
            memory_bytes: 32 << 20,
        };
        rt.start(&config).await?;
        let name = containers_of(limited)?;
        let host = run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}}",
                name.trim(),
            ],
        )?;
        assert_eq!(host.trim(), "33554432 33554432 500000000", "{name}");
        rt.stop(limited, Duration::from_secs(1)).await?;
        assert_eq!(next_exit(&mut exits).await?.0, limited);
        let hog = task_id(26);
        let mut config = task(
            hog,
            "hog.1",
            Ipv4Addr::new(10, 202, 0, 7),
            // A 64 MiB shell variable, past a 16 MiB limit. A second after the
            // start: containerd watches a container's OOM kills only once its task
            // has started, and misses one that comes first (containerd/containerd#8180),
            // so the engine would report a plain SIGKILL.
            &[
                "/bin/sh",
                "-c",
                "sleep 1; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
            ],
        );
        config.spec.resources.limits.memory_bytes = 16 << 20;
        rt.start(&config).await?;
        let (who, exit) = next_exit(&mut exits).await?;
        assert_eq!(who, hog);
        assert!(exit.oom_killed && exit.code == 137, "{exit:?}");
        rt.stop(hog, Duration::from_secs(1)).await?;
        let stubborn = task_id(23);
        rt.start(&task(
            stubborn,
            "graceful.1",
            Ipv4Addr::new(10, 202, 0, 4),
            &[
                "/bin/sh",
                "-c",
                "trap 'echo bye; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
            ],
        ))
        .await?;
        poll(
            Duration::from_secs(10),
            "the graceful container to start",
            || {
                let rt = rt.clone();
                async move {
                    rt.logs(stubborn, 0)
                        .await
                        .ok()
                        .filter(|l| l.iter().any(|x| x == "ready"))
                }
            },
        )
        .await?;
        rt.stop(stubborn, Duration::from_secs(20)).await?;
        assert_eq!(next_exit(&mut exits).await?, (stubborn, Exit::code(3)));

        // Cleanup by a later run removes this agent's leftover containers.
        let left = task_id(24);
        rt.start(&task(
            left,
            "left.1",
            Ipv4Addr::new(10, 202, 0, 5),
            &["/bin/sh", "-c", "sleep 600"],
        ))
        .await?;
        let later = Runtimes::new(&state, true, runtime_common::isolation(&state)?).await?;
        assert_eq!(later.cleanup(&BTreeSet::new()).await?, [left]);
        assert_eq!(containers_of(left)?.trim(), "");
        ensure!(
            run(
                "ip",
                &["-n", &node_name, "link", "show", &plumb::host_iface(left)]
            )
            .is_err(),
            "veth of the removed container left"
        );
        Ok(())
    })
}

/// The ID of task `id`'s container (running or not), `None` if there is none.
fn container_id(id: TaskId) -> Result<Option<String>> {
    let out = run(
        "docker",
        &[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!(
                "label={}={id:016x}",
                lb_agent::runtime::docker::LABEL_TASK_ID
            ),
            "--format",
            "{{.ID}}",
        ],
    )?;
    Ok(out.lines().next().map(str::to_owned))
}

/// Issue 12, fault 2: a later agent run adopts the containers a previous one left
/// running (same container, same veth; their exit, with its code, is seen through the
/// engine), removes the ones that stopped meanwhile, and `stop_all` (a node leaving)
/// removes every container.
#[test]
fn a_later_run_adopts_running_containers_and_removes_stopped_ones() -> Result<()> {
    runtime_common::require_root()?;
    runtime_common::busybox_image(IMAGE)?;
    let node = Node::new("dadopt")?;
    let node_name = node.name.clone();
    let state = std::path::Path::new("/tmp").join(format!("mesh-rt-dadopt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    node.run(move || async move {
        let (alive, stopped) = (task_id(41), task_id(42));
        let mut ifindex = Vec::new();
        {
            let first = Runtimes::new(&state, true, runtime_common::isolation(&state)?).await?;
            for (k, (id, name)) in [(alive, "alive.1"), (stopped, "stopped.1")]
                .into_iter()
                .enumerate()
            {
                let addr = Ipv4Addr::new(10, 204, 0, 2 + u8::try_from(k)?);
                let started = first
                    .start(&task(id, name, addr, &["/bin/sh", "-c", "sleep 600"]))
                    .await?;
                ifindex.push(started.ifindex);
            }
        }
        let alive_ctr = container_id(alive)?.context("alive's container")?;
        let stopped_ctr = container_id(stopped)?.context("stopped's container")?;
        // `stopped`'s container ends while no agent runs.
        run("docker", &["kill", &stopped_ctr])?;

        let second = Runtimes::new(&state, true, runtime_common::isolation(&state)?).await?;
        let mut exits = second.take_exits().context("exits")?;
        let adopted = second.adopt().await?;
        assert_eq!(adopted.running.keys().copied().collect::<Vec<_>>(), [alive]);
        assert_eq!(adopted.running[&alive].ifindex, ifindex[0], "the same veth");
        assert_eq!(adopted.gone, BTreeSet::from([stopped]));
        assert_eq!(container_id(alive)?.as_deref(), Some(alive_ctr.as_str()));
        assert_eq!(
            container_id(stopped)?,
            None,
            "the stopped container is removed"
        );
        let links = run("ip", &["-n", &node_name, "-o", "link"])?;
        assert!(links.contains(&plumb::host_iface(alive)), "{links}");
        assert!(!links.contains(&plumb::host_iface(stopped)), "{links}");
        assert!(
            second
                .health_check(alive, "true", Duration::from_secs(10))
                .await?,
            "exec into the adopted container"
        );

        // Leaving: the adopted container is stopped and removed, its exit seen.
        assert_eq!(second.stop_all(Duration::from_secs(1)).await?, [alive]);
        assert_eq!(next_exit(&mut exits).await?.0, alive);
        assert_eq!(container_id(alive)?, None);
        assert!(lb_agent::runtime::record::list(&state)?.is_empty());
        Ok(())
    })
}

/// Issue 14: `--mount` with the docker runtime. A read-only bind mount (the node
/// file's exact bytes; a write fails), a named volume created by the engine on first
/// use whose data a later task reads, a tmpfs of the requested size; and a bind source
/// that does not exist refused before any container is created, in docker's words.
#[test]
fn docker_tasks_get_bind_volume_and_tmpfs_mounts() -> Result<()> {
    runtime_common::require_root()?;
    runtime_common::busybox_image(IMAGE)?;
    let node = Node::new("dmounts")?;
    let state =
        std::path::Path::new("/tmp").join(format!("mesh-rt-dmounts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let site = state.join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.txt"), "from the node\n")?;
    let volume = format!("mesh-test-dmounts-{}", std::process::id());
    let _ = run("docker", &["volume", "rm", "-f", &volume]);
    let result = node.run({
        let volume = volume.clone();
        move || async move {
            let rt = Runtimes::new(
                &state.join("agent"),
                true,
                runtime_common::isolation(&state.join("agent"))?,
            )
            .await?;
            let mounts = |extra: &str| -> Result<Vec<mesh_api::mount::Mount>> {
                let mut all = vec![
                    format!("type=bind,source={},target=/site,readonly", site.display()),
                    format!("type=volume,source={volume},target=/cache"),
                    "type=tmpfs,target=/scratch,tmpfs-size=1m".to_owned(),
                ];
                all.extend((!extra.is_empty()).then(|| extra.to_owned()));
                all.iter()
                    .map(|m| m.parse().map_err(anyhow::Error::from))
                    .collect()
            };
            let with_mounts = |id, name, n: u8, extra: &str| -> Result<TaskConfig> {
                let mut t = task(
                    id,
                    name,
                    Ipv4Addr::new(10, 205, 0, n),
                    &["/bin/sh", "-c", "sleep 600"],
                );
                t.spec.mounts = mounts(extra)?;
                Ok(t)
            };
            let first = task_id(51);
            rt.start(&with_mounts(first, "files.1", 2, "")?).await?;
            let name = containers_of(first)?.trim().to_owned();
            let exec = |name: &str, script: &str| {
                Command::new("docker")
                    .args(["exec", name, "/bin/sh", "-c", script])
                    .output()
                    .context("docker exec")
            };
            assert_eq!(
                run("docker", &["exec", &name, "cat", "/site/index.txt"])?,
                "from the node\n"
            );
            let write = exec(&name, "echo x > /site/new")?;
            ensure!(
                !write.status.success(),
                "a write to a read-only bind worked"
            );
            ensure!(!site.join("new").exists());
            let info = run("docker", &["exec", &name, "cat", "/proc/self/mountinfo"])?;
            let scratch = info
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/scratch"))
                .context("no /scratch mount")?;
            ensure!(
                scratch.contains("tmpfs") && scratch.contains("size=1024k"),
                "{scratch}"
            );
            ensure!(exec(&name, "echo kept > /cache/note")?.status.success());
            rt.stop(first, Duration::from_secs(1)).await?;

            // The volume outlives the container: the next task reads it.
            let second = task_id(52);
            rt.start(&with_mounts(second, "files.2", 3, "")?).await?;
            let name = containers_of(second)?.trim().to_owned();
            assert_eq!(
                run("docker", &["exec", &name, "cat", "/cache/note"])?,
                "kept\n"
            );
            rt.stop(second, Duration::from_secs(1)).await?;

            // A bind source that does not exist: refused before a container exists.
            let missing = task_id(53);
            let err = rt
                .start(&with_mounts(
                    missing,
                    "files.3",
                    4,
                    "type=bind,source=/no/such/dir,target=/x",
                )?)
                .await
                .expect_err("a missing bind source");
            assert_eq!(
                err.to_string(),
                "invalid mount config for type \"bind\": bind source path does not exist: \
                 /no/such/dir"
            );
            assert_eq!(containers_of(missing)?.trim(), "");
            Ok(())
        }
    });
    let _ = run("docker", &["volume", "rm", "-f", &volume]);
    result
}

/// A managed docker service's container settings (issue 15), as a user checks them in
/// each container with `docker exec` and `docker inspect`: `--hostname` with
/// `{{.Task.Slot}}` (each replica its own; `/etc/hosts` maps it to the task's address),
/// `--add-host`, `--dns` (the service's own server answers outside names),
/// `--dns-search`, `--dns-option`, `--workdir`, `--entrypoint`, `--container-label`, and
/// `{{.Task.Slot}}` in the environment.
#[test]
fn managed_docker_tasks_get_hostname_hosts_workdir_entrypoint_labels_and_templates() {
    use mesh_tests::{ManagedCluster, ManagedOptions, ok, poll_until, turn};
    let _turn = turn();
    ok(runtime_common::busybox_image(IMAGE));
    let mut options = ManagedOptions::new(3, 1);
    options.docker = true;
    let mut c = ok(ManagedCluster::start_with(options));
    let converge = Duration::from_secs(120);
    // The service's own DNS server, which alone knows this name.
    let outside = ("only.example", Ipv4Addr::new(192, 0, 2, 78));
    let client = c.topology().client_addr();
    let _upstream = ok(mesh_tests::dns::Upstream::start(
        &c.topology().client_ns(),
        client,
        &[outside],
    ));
    let client = client.to_string();
    ok(c.ctl_timeout(
        &[
            "service",
            "create",
            "--runtime",
            "docker",
            "--name",
            "dset",
            "--dns",
            &client,
            "--dns-search",
            "dset",
            "--dns-option",
            "timeout:2",
            "--replicas",
            "2",
            "--hostname",
            "dweb-{{.Task.Slot}}",
            "--add-host",
            "db.example:10.9.8.7",
            "--workdir",
            "/tmp",
            "--entrypoint",
            "/bin/sh -c",
            "--container-label",
            "team=web",
            "-e",
            "SLOT={{.Task.Slot}}",
            IMAGE,
            "exec sleep 100000",
        ],
        converge,
    ));
    let tasks = ok(c.wait_converged("dset", 2));
    let containers = ok(poll_until(converge, "dset's 2 containers running", || {
        let all: Vec<_> = c
            .containers()?
            .into_iter()
            .filter(|k| k.task.starts_with("dset.") && k.state == "running")
            .collect();
        Ok((all.len() == 2).then_some(all))
    }));
    for task in &tasks {
        let slot = task.name.rsplit('.').next().unwrap_or_default();
        let container = containers
            .iter()
            .find(|k| k.task == task.name)
            .unwrap_or_else(|| panic!("no container of {}: {containers:?}", task.name));
        let exec = |args: &[&str]| {
            let mut all = vec!["exec", container.id.as_str()];
            all.extend_from_slice(args);
            ok(run("docker", &all))
        };
        let name = format!("dweb-{slot}");
        assert_eq!(exec(&["hostname"]).trim(), name);
        assert_eq!(exec(&["pwd"]).trim(), "/tmp");
        assert_eq!(exec(&["/bin/sh", "-c", "echo $SLOT"]).trim(), slot);
        let hosts = exec(&["cat", "/etc/hosts"]);
        let own = task.addr.expect("a task address");
        assert!(hosts.contains("10.9.8.7\tdb.example"), "{hosts}");
        assert!(hosts.contains(&format!("{own}\t{name}")), "{hosts}");
        // The resolver stays the node's; the search domain and options are the task's,
        // and its outside names go to its own server.
        let resolv = exec(&["cat", "/etc/resolv.conf"]);
        assert!(resolv.contains("nameserver 169.254.1.1"), "{resolv}");
        assert!(resolv.contains("search dset"), "{resolv}");
        assert!(
            resolv.contains("ndots:0") && resolv.contains("timeout:2"),
            "{resolv}"
        );
        let found = ok(poll_until(
            Duration::from_secs(20),
            "only.example through the task's own DNS server",
            || {
                let out = Command::new("docker")
                    .args(["exec", &container.id, "nslookup", outside.0])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok(text.contains(&outside.1.to_string()).then_some(text))
            },
        ));
        assert!(found.contains(outside.0), "{found}");
        let inspect = ok(run(
            "docker",
            &[
                "inspect",
                "--format",
                "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{index .Config.Labels \"team\"}}",
                &container.id,
            ],
        ));
        assert_eq!(
            inspect.trim(),
            r#"["/bin/sh","-c"] ["exec sleep 100000"] web"#
        );
    }
    ok(c.ctl_timeout(&["service", "rm", "dset"], converge));
}
