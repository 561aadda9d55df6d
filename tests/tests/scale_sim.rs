//! The scale simulator, test-sized (issue 17): a real `mesh-manager` and 20 simulated
//! agents (`mesh_tests::sim`: the real join and session client code, no dataplane) in
//! this process.
//!
//! - every simulated agent is placed tasks and every task of 5 services of 10 replicas
//!   runs (as the leader reports it);
//! - after a scale up and a scale down of one service, every agent's assignment routes
//!   it to the new backend set, and every agent routes every service the same way.
//!
//! And the cluster view (issue 18) with 50 simulated nodes and 1,000 tasks in headless
//! Chromium: every node's column and every task's card drawn, and a scale shown
//! without a reload; what it took is printed (`--nocapture`), not asserted.
//!
//! Needs the `mesh-manager` and `meshctl` binaries (`cargo xtask test` builds them; see
//! `mesh_tests::bin_dir`) and Debian's `chromium`. No root needed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mesh_tests::cluster::{Cluster, ClusterOptions, connect_control};
use mesh_tests::sim::{self, Fleet, FleetOptions};

/// Generous: the machine may be a loaded 2-core VM running debug builds.
const CONVERGE: Duration = Duration::from_secs(120);
const NODES: usize = 20;
const SERVICES: u32 = 5;
const REPLICAS: u32 = 10;

async fn scenario(cluster: &Cluster, token: String) -> Result<()> {
    let (fleet, mut control) = start_fleet(cluster, token, NODES, true).await?;
    sim::wait_for(
        Instant::now() + CONVERGE,
        "every agent's first assignment",
        || async {
            let errors = fleet.errors();
            ensure!(errors.is_empty(), "agents failed: {}", errors.join("; "));
            Ok((fleet.assigned() == NODES).then_some(()))
        },
    )
    .await?;
    let total = create_services(&mut control, "s", SERVICES, REPLICAS).await?;
    // What the leader reports comes from the agents' reports: they hold those tasks.
    sim::wait_for(
        Instant::now() + CONVERGE,
        "the agents to hold every task",
        || async { Ok((fleet.running() == usize::try_from(total)?).then_some(())) },
    )
    .await?;
    let idle: Vec<String> = fleet
        .agents()
        .iter()
        .enumerate()
        .filter(|(_, a)| a.running() == 0)
        .map(|(i, _)| format!("sim{i:04}"))
        .collect();
    ensure!(idle.is_empty(), "agents without a task: {idle:?}");

    fleet.watch("s0");
    for to in [REPLICAS + 1, REPLICAS - 1] {
        sim::scale(&mut control, "s0", to).await?;
        sim::wait_for(
            Instant::now() + CONVERGE,
            &format!("every agent to route {to} backends of s0"),
            || async { Ok(fleet.watched_converged(to as usize)) },
        )
        .await?;
        sim::wait_for(
            Instant::now() + CONVERGE,
            "every agent to route every service the same way",
            || async { Ok(fleet.routes_agree().then_some(())) },
        )
        .await?;
    }
    let routes = fleet.agents()[0].routes();
    let want = usize::try_from(total - 1)?;
    ensure!(
        routes.backends == want && routes.draining == 0,
        "agents route {} backends ({} draining), not {want}",
        routes.backends,
        routes.draining
    );
    ensure!(fleet.lost() == 0, "{} sessions were lost", fleet.lost());
    fleet.stop().await;
    Ok(())
}

/// Starts `nodes` simulated agents that join the cluster's first manager, connects a
/// control client, and waits until the leader counts every node ready (placement needs
/// it). `digest_every_service`: see [`FleetOptions`].
async fn start_fleet(
    cluster: &Cluster,
    token: String,
    nodes: usize,
    digest_every_service: bool,
) -> Result<(Fleet, sim::Control)> {
    let m = cluster.manager(0);
    let addr = m.addr.to_string();
    let fleet = Fleet::start(FleetOptions {
        nodes,
        join: vec![addr.clone()],
        session: vec![addr.clone()],
        token,
        root: cluster.root().join("sim"),
        hostname_prefix: "sim".into(),
        join_concurrency: 8,
        digest_every_service,
    });
    let control = connect_control(std::slice::from_ref(&addr), &m.tls_dir()).await?;
    sim::wait_for(Instant::now() + CONVERGE, "every node ready", || {
        let mut control = control.clone();
        let errors = fleet.errors();
        async move {
            ensure!(errors.is_empty(), "agents failed: {}", errors.join("; "));
            let listed = control
                .list_nodes(mesh_client::proto::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            // The manager is a node too.
            Ok((listed.iter().filter(|n| n.status == "ready").count() > nodes).then_some(()))
        }
    })
    .await?;
    Ok((fleet, control))
}

/// Creates `services` services named `{prefix}0`, `{prefix}1`, ... of `replicas` each
/// and waits until the leader reports every task running; returns the task count.
async fn create_services(
    control: &mut sim::Control,
    prefix: &str,
    services: u32,
    replicas: u32,
) -> Result<u64> {
    let width = services.saturating_sub(1).to_string().len();
    for s in 0..services {
        sim::create_service(control, &format!("{prefix}{s:0width$}"), replicas).await?;
    }
    let total = u64::from(services * replicas);
    sim::wait_for(Instant::now() + CONVERGE, "every task running", || {
        let mut control = control.clone();
        async move {
            let (running, desired) = sim::running_desired(&mut control).await?;
            Ok((running == total && desired == total).then_some(()))
        }
    })
    .await
    .context("the leader never reported every task running")?;
    Ok(total)
}

/// A 1-manager cluster named `name`, its worker join token, and a runtime to run a
/// scenario on it.
fn one_manager(name: &str) -> (Cluster, String, tokio::runtime::Runtime) {
    let cluster = mesh_tests::ok(Cluster::start(ClusterOptions {
        managers: 1,
        name: name.into(),
        ..ClusterOptions::default()
    }));
    let token = mesh_tests::ok(cluster.ctl(0, &["cluster", "join-token", "worker", "-q"]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    (cluster, token.trim().to_owned(), runtime)
}

#[test]
fn simulated_agents_get_their_tasks_and_converge_after_a_scale() {
    let _turn = mesh_tests::turn();
    let (cluster, token, runtime) = one_manager("scale-sim");
    if let Err(e) = runtime.block_on(scenario(&cluster, token)) {
        panic!("{e:?}");
    }
}

/// The cluster view of a cluster of 50 nodes and 1,000 tasks.
async fn view_scenario(cluster: &Cluster, token: String) -> Result<()> {
    const NODES: usize = 50;
    const SERVICES: u32 = 20;
    const REPLICAS: u32 = 50;
    let m = cluster.manager(0);
    let (fleet, mut control) = start_fleet(cluster, token, NODES, false).await?;
    let want_cards = create_services(&mut control, "v", SERVICES, REPLICAS).await?;

    let url = format!("http://{}/", m.web_addr);
    let json = mesh_tests::client::http_get(m.web_addr, "/api/view")?;
    let opened = Instant::now();
    let page = url.clone();
    let mut browser = tokio::task::spawn_blocking(move || {
        mesh_tests::browser::Browser::open_in("", &page, 1400, 900)
    })
    .await??;
    const COUNTS: &str = "JSON.stringify({columns: document.querySelectorAll('#nodes .node').length, \
        cards: document.querySelectorAll('.task').length, \
        running: document.querySelectorAll('.task[data-state=Running]').length, \
        loadedAt: window.meshView ? window.meshView.loadedAt : null, \
        renderMs: window.meshView ? window.meshView.renderMs : null})";
    let counts = |browser: &mut mesh_tests::browser::Browser| -> Result<serde_json::Value> {
        let text = browser.eval(COUNTS)?;
        Ok(serde_json::from_str(text.as_str().unwrap_or("{}"))?)
    };
    let first = mesh_tests::poll_until(CONVERGE, "the page to draw every node and task", || {
        let c = counts(&mut browser)?;
        Ok((c["columns"] == NODES as u64 + 1 && c["running"] == want_cards).then_some(c))
    })?;
    let drawn = opened.elapsed();
    let loaded_at = first["loadedAt"].clone();
    let scaled = sim::scale(&mut control, "v00", REPLICAS + 10).await?;
    let after = mesh_tests::poll_until(CONVERGE, "the page to show the scale", || {
        let c = counts(&mut browser)?;
        Ok((c["running"] == want_cards + 10).then_some(c))
    })?;
    let shown = scaled.elapsed();
    ensure!(after["loadedAt"] == loaded_at, "the page was reloaded");
    println!(
        "cluster view, {NODES} nodes and {want_cards} tasks: a view of {} KiB; \
         opened and drawn in {:.1} s (a draw: {:.0} ms); a scale of 10 on the page {:.2} s \
         after its acknowledgement (a draw: {:.0} ms)",
        json.len() / 1024,
        drawn.as_secs_f64(),
        first["renderMs"].as_f64().unwrap_or(f64::NAN),
        shown.as_secs_f64(),
        after["renderMs"].as_f64().unwrap_or(f64::NAN),
    );
    drop(browser);
    fleet.stop().await;
    Ok(())
}

#[test]
fn the_cluster_view_draws_50_nodes_and_1000_tasks_and_follows_a_scale() {
    let _turn = mesh_tests::turn();
    let (cluster, token, runtime) = one_manager("scale-view");
    if let Err(e) = runtime.block_on(view_scenario(&cluster, token)) {
        panic!("{e:?}");
    }
}
