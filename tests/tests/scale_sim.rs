//! The scale simulator, test-sized (issue 17): a real `mesh-manager` and 20 simulated
//! agents (`mesh_tests::sim`: the real join and session client code, no dataplane) in
//! this process.
//!
//! - every simulated agent is placed tasks and every task of 5 services of 10 replicas
//!   runs (as the leader reports it);
//! - after a scale up and a scale down of one service, every agent's assignment routes
//!   it to the new backend set, and every agent routes every service the same way.
//!
//! Needs the `mesh-manager` and `meshctl` binaries (`cargo xtask test` builds them; see
//! `mesh_tests::bin_dir`). No root needed.

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
    let m = cluster.manager(0);
    let addr = m.addr.to_string();
    let fleet = Fleet::start(FleetOptions {
        nodes: NODES,
        join: vec![addr.clone()],
        session: vec![addr.clone()],
        token,
        root: cluster.root().join("sim"),
        hostname_prefix: "sim".into(),
        join_concurrency: 8,
        digest_every_service: true,
    });
    let mut control = connect_control(std::slice::from_ref(&addr), &m.tls_dir()).await?;
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
    // Placed only once the leader counts the nodes ready.
    sim::wait_for(Instant::now() + CONVERGE, "every node ready", || {
        let mut control = control.clone();
        async move {
            let nodes = control
                .list_nodes(mesh_client::proto::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            let ready = nodes.iter().filter(|n| n.status == "ready").count();
            Ok((ready > NODES).then_some(()))
        }
    })
    .await?;
    for s in 0..SERVICES {
        sim::create_service(&mut control, &format!("s{s}"), REPLICAS).await?;
    }
    let total = u64::from(SERVICES * REPLICAS);
    sim::wait_for(Instant::now() + CONVERGE, "every task running", || {
        let mut control = control.clone();
        async move {
            let (running, desired) = sim::running_desired(&mut control).await?;
            Ok((running == total && desired == total).then_some(()))
        }
    })
    .await
    .context("the leader never reported every task running")?;
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

#[test]
fn simulated_agents_get_their_tasks_and_converge_after_a_scale() {
    let _turn = mesh_tests::turn();
    let cluster = mesh_tests::ok(Cluster::start(ClusterOptions {
        managers: 1,
        name: "scale-sim".into(),
        ..ClusterOptions::default()
    }));
    let token = mesh_tests::ok(cluster.ctl(0, &["cluster", "join-token", "worker", "-q"]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(scenario(&cluster, token.trim().to_owned())) {
        panic!("{e:?}");
    }
}
