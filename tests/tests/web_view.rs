//! The cluster view (`mesh-manager --web-addr`) in headless Chromium, as a person sees
//! it: a column per node with its tasks as cards where they run, the services with
//! their replicas and ports; after a `service scale`, the page shows the new tasks
//! without a reload (its event stream, not a refresh). Needs root (namespaces, eBPF)
//! and Debian's `chromium` (`cargo xtask setup` installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh_tests::browser::Browser;
use mesh_tests::cluster::WEB_PORT;
use mesh_tests::{ManagedCluster, TaskRow, bin, ok, poll_until, turn};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(60);
const SEEN_WITHIN: Duration = Duration::from_secs(20);

/// What the page shows, read from its DOM: the columns (hostname and task cards), the
/// services' legend, the connection badge, and the page's own load time and draw count.
/// (Evaluated from the first moment: the page may still be loading.)
const SEEN: &str = r#"(() => ({
  loadedAt: window.meshView ? window.meshView.loadedAt : null,
  updates: window.meshView ? window.meshView.updates : 0,
  connection: document.getElementById('connection')?.textContent ?? null,
  columns: [...document.querySelectorAll('#nodes .node')].map((n) => ({
    host: n.dataset.hostname,
    heading: n.querySelector('h2')?.textContent ?? '',
    tasks: [...n.querySelectorAll('.task')].map((t) => ({ name: t.dataset.task, state: t.dataset.state })),
  })),
  services: [...document.querySelectorAll('#services .service')].map((s) => s.textContent),
}))()"#;

/// Where the page puts each task: task name -> hostname (running cards only).
fn placed(seen: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for column in seen["columns"].as_array().into_iter().flatten() {
        let host = column["host"].as_str().unwrap_or_default();
        for task in column["tasks"].as_array().into_iter().flatten() {
            if task["state"] == "Running" {
                out.insert(
                    task["name"].as_str().unwrap_or_default().to_owned(),
                    host.to_owned(),
                );
            }
        }
    }
    out
}

fn expected(tasks: &[TaskRow]) -> BTreeMap<String, String> {
    tasks
        .iter()
        .map(|t| (t.name.clone(), t.node.clone()))
        .collect()
}

/// Polls the page until it places exactly `tasks`; what it shows then.
fn wait_page_shows(browser: &mut Browser, tasks: &[TaskRow], what: &str) -> Value {
    let want = expected(tasks);
    let mut last = Value::Null;
    let seen = poll_until(SEEN_WITHIN, what, || {
        last = browser.eval(SEEN)?;
        Ok((placed(&last) == want).then(|| last.clone()))
    });
    seen.unwrap_or_else(|e| panic!("{e:#}: the page shows {last:#}, the cluster runs {want:?}"))
}

#[test]
fn the_cluster_view_shows_every_node_and_task_and_follows_a_scale_live() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy();
    ok(c.ctl_timeout(
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            "8080:80",
            "--",
            &echo,
            "--port",
            "80",
        ],
        CONVERGE,
    ));
    let tasks = ok(c.wait_converged("web", 3));

    let ns = c.topology().node_ns(1);
    let url = format!("http://127.0.0.1:{WEB_PORT}/");
    let mut browser = ok(Browser::open_in(&ns, &url, 1400, 900));
    let seen = wait_page_shows(&mut browser, &tasks, "the page to show web's 3 tasks");

    // Every node is a column, headed by its hostname; the leader is marked.
    let hosts: BTreeSet<&str> = seen["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["host"].as_str())
        .collect();
    let nodes: BTreeSet<String> = (1..=3).map(ManagedCluster::node_name).collect();
    assert_eq!(
        hosts,
        nodes.iter().map(String::as_str).collect(),
        "{seen:#}"
    );
    let leader = ManagedCluster::node_name(ok(c.leader()));
    let headed_leader: Vec<&Value> = seen["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter(|c| c["heading"].as_str().is_some_and(|h| h.contains('★')))
        .collect();
    assert_eq!(headed_leader.len(), 1, "{seen:#}");
    assert_eq!(headed_leader[0]["host"], leader.as_str(), "{seen:#}");
    // The service's legend: its replicas and its published port.
    let services: Vec<&str> = seen["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(services.len(), 1, "{seen:#}");
    assert!(
        services[0].contains("web")
            && services[0].contains("3/3")
            && services[0].contains("8080->80/tcp"),
        "{}",
        services[0]
    );
    assert_eq!(seen["connection"], "live");
    let loaded_at = seen["loadedAt"].clone();
    let updates = seen["updates"].as_u64().expect("updates");

    // A scale: the page follows without a reload.
    ok(c.ctl_timeout(&["service", "scale", "web=5"], CONVERGE));
    let tasks = ok(c.wait_converged("web", 5));
    let seen = wait_page_shows(&mut browser, &tasks, "the page to show web's 5 tasks");
    assert_eq!(seen["loadedAt"], loaded_at, "the page was reloaded");
    assert!(
        seen["updates"].as_u64().expect("updates") > updates,
        "{seen:#}"
    );
    let services = seen["services"].to_string();
    assert!(services.contains("5/5"), "{services}");

    // A rolling update, one task at a time with a pause between: the legend shows it in
    // progress (how many tasks run the new spec), the old tasks are marked, and the
    // badge goes once the update completes.
    ok(c.ctl_timeout(
        &[
            "service",
            "update",
            "-d",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
            "--args",
            "--port 80 --tag v2",
            "web",
        ],
        CONVERGE,
    ));
    const UPDATE: &str = r#"(() => ({
      badge: document.querySelector('#services [data-update]')?.textContent ?? null,
      outdated: document.querySelectorAll('.task.outdated').length,
    }))()"#;
    let shown = ok(poll_until(
        SEEN_WITHIN,
        "the page to show the update in progress",
        || {
            let v = browser.eval(UPDATE)?;
            Ok(v["badge"]
                .as_str()
                .is_some_and(|b| b.starts_with("updating "))
                .then_some(v))
        },
    ));
    assert!(shown["outdated"].as_u64() > Some(0), "{shown}");
    ok(poll_until(
        CONVERGE,
        "the update to complete on the page",
        || {
            let v = browser.eval(UPDATE)?;
            Ok((v["badge"].is_null() && v["outdated"] == 0).then_some(()))
        },
    ));
    assert_eq!(
        browser.eval("window.meshView.loadedAt").expect("loadedAt"),
        loaded_at,
        "the page was reloaded"
    );
}
