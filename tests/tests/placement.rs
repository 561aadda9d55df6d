//! End-to-end tests of placement preferences and the limit of replicas per node
//! (`--placement-pref spread=node.labels.<key>`, `--replicas-max-per-node`) on a
//! managed mesh: `mesh-manager` and `lb-agent --join`s in network namespaces
//! ([`ManagedCluster`]), labelled with `meshctl node update --label-add`, services of
//! `task-echo` run by the agents' process runtime.
//!
//! Needs root, iproute2, ethtool, and the binaries `mesh-manager`, `meshctl`, `lb-agent`
//! and `task-echo` (`cargo xtask test` builds them first).

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_tests::managed::{per_node, rows};
use mesh_tests::{ManagedCluster, bin, ok, poll_until, turn};

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long the leader may take to act on a change.
const PROPAGATE: Duration = Duration::from_secs(30);

/// `meshctl ARGS` that must succeed (with the long timeout: it may wait).
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// `meshctl service create -d OPTS -- task-echo --port 80`.
fn create(c: &ManagedCluster, opts: &[&str]) {
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy();
    let mut args = vec!["service", "create", "-d"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--", &echo, "--port", "80"]);
    ctl(c, &args);
}

/// A task of `service ps --format json`'s message and error, joined.
fn message(task: &serde_json::Value) -> String {
    ["Message", "Error"]
        .iter()
        .filter_map(|k| task[*k].as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Spread over two zones of unequal size gives each zone half of the tasks, and keeps it
/// when scaled down; a limit of
/// one task per node with more replicas than nodes leaves the rest pending, and
/// `service ps` says why; lifting the limit places them.
#[test]
fn spread_over_zones_and_max_replicas_per_node() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    // Zone a: n1 and n2; zone b: n3 alone.
    for (node, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        ctl(
            &c,
            &[
                "node",
                "update",
                "--label-add",
                &format!("zone={zone}"),
                node,
            ],
        );
    }

    // 4 tasks spread over the zones: 2 in each, so n3 runs 2 (without the
    // preference, the nodes would be evened out: 2, 1, 1 with zone a holding 3).
    create(
        &c,
        &[
            "--name",
            "spread",
            "--replicas",
            "4",
            "-p",
            "8090:80",
            "--placement-pref",
            "spread=node.labels.zone",
        ],
    );
    let tasks = ok(c.wait_converged("spread", 4));
    let per = per_node(&tasks);
    let zone_a = per.get("n1").copied().unwrap_or(0) + per.get("n2").copied().unwrap_or(0);
    assert_eq!(
        (zone_a, per.get("n3").copied().unwrap_or(0)),
        (2, 2),
        "not 2 tasks per zone:\n{}",
        rows(&tasks)
    );
    ok(c.wait_answered(1, 8090, PROPAGATE));
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "spread"]);
    assert!(
        pretty.contains("Placement:\n Preferences:   [spread=node.labels.zone]\n"),
        "service inspect --pretty spread:\n{pretty}"
    );
    let json = ok(c.ctl_json(&["service", "inspect", "spread"]));
    assert_eq!(
        json[0]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"], "node.labels.zone",
        "service inspect spread: {json:#}"
    );

    // Scaled down to 2 (the highest slots stop), one task stays in each zone.
    ctl(&c, &["service", "scale", "spread=2"]);
    let tasks = ok(c.wait_converged("spread", 2));
    let per = per_node(&tasks);
    assert_eq!(
        per.get("n3").copied().unwrap_or(0),
        1,
        "not 1 task per zone after scaling down:\n{}",
        rows(&tasks)
    );

    // At most one task per node, 5 wanted, 3 nodes: 3 run, 2 stay pending with
    // docker's reason.
    create(
        &c,
        &[
            "--name",
            "capped",
            "--replicas",
            "5",
            "--replicas-max-per-node",
            "1",
        ],
    );
    let why = "no suitable node (max replicas per node limit exceed)";
    let seen = poll_until(
        CONVERGE,
        "3 tasks of capped running, 2 pending saying why",
        || {
            let running = c.running_tasks("capped")?;
            let tasks = c.ctl_json(&["service", "ps", "capped", "--format", "json"])?;
            let tasks = tasks.as_array().cloned().unwrap_or_default();
            let pending = tasks.iter().filter(|t| message(t).contains(why)).count();
            Ok((running.len() == 3 && pending == 2).then_some(running))
        },
    );
    let running = match seen {
        Ok(running) => running,
        Err(e) => panic!(
            "{e:#}\n{}",
            ok(c.ctl(&["service", "ps", "capped", "--no-trunc"]))
        ),
    };
    assert_eq!(
        per_node(&running),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 1), ("n3".into(), 1)]),
        "{}",
        rows(&running)
    );
    // `service ps` (the table) shows the reason too, and the pending tasks have no node.
    let table = ctl(&c, &["service", "ps", "capped", "--no-trunc"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(why)).count(),
        2,
        "service ps capped:\n{table}"
    );
    let rows_now = ok(c.service_tasks("capped"));
    assert_eq!(
        rows_now
            .iter()
            .filter(|t| t.state.eq_ignore_ascii_case("pending") && t.node.is_empty())
            .count(),
        2,
        "{}",
        rows(&rows_now)
    );
    let ls = ctl(&c, &["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.contains(" capped ") && l.contains(" 3/5 (max 1 per node) ")),
        "service ls:\n{ls}"
    );
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "capped"]);
    assert!(
        pretty.contains("Placement:\n Max Replicas Per Node:   1\n"),
        "service inspect --pretty capped:\n{pretty}"
    );

    // Lifting the limit places them.
    ctl(
        &c,
        &[
            "service",
            "update",
            "-d",
            "--replicas-max-per-node",
            "0",
            "capped",
        ],
    );
    let tasks = ok(c.wait_converged("capped", 5));
    assert_eq!(tasks.len(), 5, "{}", rows(&tasks));
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "capped"]);
    assert!(
        !pretty.contains("Max Replicas Per Node"),
        "service inspect --pretty capped:\n{pretty}"
    );

    // A global service has no limit per node, in docker's words, and nothing changes.
    let echo = ok(bin("task-echo"));
    let out = ok(c.meshctl(&[
        "service",
        "create",
        "-d",
        "--name",
        "glob",
        "--mode",
        "global",
        "--replicas-max-per-node",
        "1",
        "--",
        &echo.to_string_lossy(),
    ]));
    assert!(
        !out.success()
            && out
                .stderr
                .contains("replicas-max-per-node can only be used with replicated mode"),
        "{out:?}"
    );
    let services = ctl(&c, &["service", "ls", "-q"]);
    assert_eq!(services.lines().count(), 2, "service ls:\n{services}");
}
