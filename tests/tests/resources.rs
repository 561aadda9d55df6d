//! End-to-end tests of CPU and memory limits and reservations (issue 14) on a managed
//! 3-node mesh in network namespaces ([`ManagedCluster`]):
//!
//! - a process task's `--limit-memory`/`--limit-cpu` are its cgroup's files, read here
//!   from the node's cgroup hierarchy (cgroup v2's `memory.max`/`cpu.max` where the
//!   controllers are delegated, v1's `memory.limit_in_bytes`/`cpu.cfs_quota_us` on a
//!   hybrid host), and its processes are in that cgroup;
//! - a task that allocates past its memory limit is killed by the kernel, and `service
//!   ps` says it was OOM-killed;
//! - a reservation no node can cover leaves the task pending with docker's reason, and
//!   clearing it (`service update --reserve-memory 0`) lets it run; `node inspect` shows
//!   what each node reported.
//!
//! Needs root, iproute2, the binaries `mesh-manager`, `meshctl`, `lb-agent` and
//! `task-echo`, and a memory and a cpu cgroup controller the agents can use.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_agent::runtime::cgroup::{Cgroups, Controllers};
use mesh_api::resources::Resources;
use mesh_tests::{ManagedCluster, bin, ok, poll_until, turn};

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long a change may take to show.
const PROPAGATE: Duration = Duration::from_secs(30);

/// `service ps NAME --format json`'s tasks.
fn tasks(c: &ManagedCluster, name: &str) -> Result<Vec<serde_json::Value>> {
    let v = c.ctl_json(&["service", "ps", name, "--format", "json"])?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// A task's `Message` and `Error`, joined.
fn reason(task: &serde_json::Value) -> String {
    ["Message", "Error"]
        .iter()
        .filter_map(|k| task[*k].as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Where the agents of this machine enforce limits (they run in this test's cgroups).
fn controllers() -> Controllers {
    let controllers = Controllers::discover(Cgroups::discover().as_ref(), false);
    assert!(
        controllers.memory.is_some() && controllers.cpu.is_some(),
        "this test needs a memory and a cpu cgroup controller (v2 delegated, or v1): {controllers:?}"
    );
    controllers
}

/// A process task with `--limit-memory 32M --limit-cpu 0.5` runs in a cgroup whose files
/// say so; `inspect` shows docker's `Resources`; a task that allocates past its limit is
/// OOM-killed and `service ps` says so.
#[test]
fn a_process_task_s_limits_are_its_cgroup_s_and_an_oom_kill_is_reported() {
    let _turn = turn();
    let controllers = controllers();
    let c = ok(ManagedCluster::start(3, 1));
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy();
    let out = ok(c.meshctl_timeout(
        &[
            "service",
            "create",
            "--name",
            "lim",
            "--limit-memory",
            "32M",
            "--limit-cpu",
            "0.5",
            "--",
            &echo,
            "--port",
            "80",
        ],
        CONVERGE,
    ));
    assert!(out.success(), "service create lim: {out:?}");
    let running = ok(poll_until(PROPAGATE, "lim.1 running", || {
        Ok(tasks(&c, "lim")?
            .into_iter()
            .find(|t| t["State"] == "Running"))
    }));
    let id_text = running["ID"].as_str().unwrap_or_default().to_owned();
    let id = ok(u64::from_str_radix(&id_text, 16).context("a task ID of 16 hex digits"));

    // The limits, in the task's cgroup files, as the node's kernel has them.
    let limits = Resources {
        nano_cpus: 500_000_000,
        memory_bytes: 32 << 20,
    };
    let files = ok(controllers.plan(id, &limits).map_err(anyhow::Error::msg));
    let mut checked = Vec::new();
    for (path, file) in &files {
        if file.optional && !path.exists() {
            continue;
        }
        let text = ok(std::fs::read_to_string(path).with_context(|| path.display().to_string()));
        let want = match file.name {
            "memory.max" | "memory.limit_in_bytes" => "33554432",
            "cpu.max" => "50000 100000",
            "cpu.cfs_quota_us" => "50000",
            "cpu.cfs_period_us" => "100000",
            "memory.swap.max" => "0",
            "memory.memsw.limit_in_bytes" => "33554432",
            other => panic!("unexpected limit file {other}"),
        };
        assert_eq!(text.trim(), want, "{}", path.display());
        checked.push(file.name);
    }
    assert!(
        checked.iter().any(|n| n.starts_with("memory."))
            && checked.iter().any(|n| n.starts_with("cpu.")),
        "checked {checked:?}"
    );
    // The task's processes are in those cgroups.
    let pids = c.task_pids(&id_text);
    assert!(!pids.is_empty(), "no process of task {id_text}");
    for place in [&controllers.memory, &controllers.cpu]
        .into_iter()
        .flatten()
    {
        let procs =
            std::fs::read_to_string(place.path(id).join("cgroup.procs")).unwrap_or_default();
        let inside: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert!(
            pids.iter().any(|p| inside.contains(p)),
            "task processes {pids:?} not in {} ({inside:?})",
            place.path(id).display()
        );
    }
    // inspect: docker's Resources, in the JSON and --pretty.
    let inspect = ok(c.ctl_json(&["service", "inspect", "lim"]));
    let r = &inspect[0]["spec"]["task"]["resources"]["Limits"];
    assert_eq!(
        (r["NanoCPUs"].as_u64(), r["MemoryBytes"].as_u64()),
        (Some(500_000_000), Some(33_554_432)),
        "{inspect:#}"
    );
    let pretty = ok(c.ctl(&["service", "inspect", "--pretty", "lim"]));
    assert!(
        pretty.contains("Resources:\n Limits:\n  CPU:") && pretty.contains("32MiB"),
        "{pretty}"
    );

    // A task that allocates past its limit: a 64 MiB shell variable.
    let out = ok(c.meshctl(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hog",
        "--limit-memory",
        "16M",
        "--restart-condition",
        "none",
        "--",
        "/bin/sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
    ]));
    assert!(out.success(), "service create hog: {out:?}");
    let failed = poll_until(CONVERGE, "hog.1 failed, OOM-killed", || {
        Ok(tasks(&c, "hog")?
            .into_iter()
            .find(|t| t["State"] == "Failed"))
    });
    let failed = match failed {
        Ok(t) => t,
        Err(e) => panic!(
            "{e:#}\n{}",
            ok(c.ctl(&["service", "ps", "--no-trunc", "hog"]))
        ),
    };
    assert!(
        reason(&failed).contains("OOMKilled"),
        "hog.1 failed without saying it was OOM-killed: {failed:#}"
    );
    let table = ok(c.ctl(&["service", "ps", "--no-trunc", "hog"]));
    assert!(table.contains("OOMKilled"), "{table}");
}

/// A reservation larger than any node's memory: the task stays pending, saying there
/// are insufficient resources on every node (docker's words); `service update
/// --reserve-memory 0` lets it run. `node inspect` shows what the nodes reported.
#[test]
fn a_reservation_no_node_covers_leaves_the_task_pending_until_cleared() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let node = ok(c.ctl_json(&["node", "inspect", "n2"]));
    let reported = &node[0]["Description"]["Resources"];
    let memory = reported["MemoryBytes"].as_u64().unwrap_or(0);
    assert!(
        memory > 0 && reported["NanoCPUs"].as_u64().unwrap_or(0) >= 1_000_000_000,
        "node inspect n2: {node:#}"
    );
    let pretty = ok(c.ctl(&["node", "inspect", "--pretty", "n2"]));
    assert!(pretty.contains("Resources:\n CPUs:"), "{pretty}");

    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy();
    let too_much = format!("{}", memory * 2);
    // `service create` waits, showing why the task waits (docker's progress).
    let why = "no suitable node (insufficient resources on 3 nodes)";
    let mut create = ok(c.meshctl_spawn(&[
        "service",
        "create",
        "--name",
        "big",
        "--reserve-memory",
        &too_much,
        "--",
        &echo,
        "--port",
        "80",
    ]));
    ok(
        create.wait_stdout(PROPAGATE, "create's progress to say why", |lines| {
            lines.iter().find(|l| l.contains(why)).cloned()
        }),
    );
    ok(create.signal(nix::sys::signal::Signal::SIGINT));
    let _ = create.wait(PROPAGATE);
    let pending = poll_until(PROPAGATE, "big.1 pending, saying why", || {
        Ok(tasks(&c, "big")?
            .into_iter()
            .find(|t| reason(t).contains(why)))
    });
    let pending = match pending {
        Ok(t) => t,
        Err(e) => panic!(
            "{e:#}\n{}",
            ok(c.ctl(&["service", "ps", "--no-trunc", "big"]))
        ),
    };
    assert_eq!(pending["State"], "Pending", "{pending:#}");
    assert_eq!(pending["Node"], "", "{pending:#}");

    let out = ok(c.meshctl_timeout(
        &["service", "update", "--reserve-memory", "0", "big"],
        CONVERGE,
    ));
    assert!(out.success(), "service update big: {out:?}");
    ok(c.wait_converged("big", 1));
    let inspect = ok(c.ctl_json(&["service", "inspect", "big"]));
    assert!(
        inspect[0]["spec"]["task"].get("resources").is_none(),
        "the cleared reservation is gone: {inspect:#}"
    );
}
