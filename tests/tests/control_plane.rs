//! The control plane as real processes on loopback (issue 3, "Show"): `mesh-manager`
//! daemons, `meshctl`, and `lb-agent --join` workers.
//!
//! - replication: writes through any manager; kill -9 of the leader during a stream of
//!   writes; every acknowledged write on every survivor; a restarted manager catches up
//!   (by snapshot: the log it needs was compacted); a whole-cluster kill -9 and restart
//!   from disk loses nothing;
//! - no quorum: reads say so, writes fail clearly, `--force-new-cluster` recovers;
//! - nodes: workers join and go down, update, promote, demote, remove, and bad input;
//! - security: no client certificate, another cluster's CA, rotated and foreign tokens,
//!   a worker calling a manager-only RPC, a removed node's certificate;
//! - leader failover: an agent that joined through one manager follows the leader
//!   when that manager is killed; MANAGER STATUS is Raft's (Unreachable for a killed
//!   manager, Reachable once restarted);
//! - promotion: the promoted node's agent runs its manager (restarted when it fails,
//!   replaced after an agent restart), demotion stops it and removes its data;
//! - encryption at rest: a copy of a manager's data directory holds no state in clear
//!   (log and snapshot); the manager does not start without its storage key, with
//!   another key, or with a key file others may read.
//!
//! Each test has its own cluster(s) on its own loopback network, so they run in parallel.
//! Needs the `mesh-manager`, `meshctl` and `lb-agent` binaries (`cargo xtask test` builds
//! them; see `mesh_tests::bin_dir`). No root needed.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use mesh_tests::cluster::{Cluster, ClusterOptions, LabelWriter, meshctl_with};
use mesh_tests::poll_until;
use serde_json::Value;

/// Generous: the machine may be a loaded 2-core VM running debug builds.
const CONVERGE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a scenario; its error (with context) fails the test, and the cluster's `Drop`
/// prints the processes' logs because the thread is panicking.
fn check(result: Result<()>) {
    if let Err(e) = result {
        panic!("{e:?}");
    }
}

fn ids(nodes: &[Value]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter_map(|n| n["ID"].as_str().map(str::to_owned))
        .collect()
}

fn metric(metrics: &std::collections::BTreeMap<String, f64>, name: &str) -> Result<u64> {
    let v = metrics
        .get(name)
        .with_context(|| format!("/metrics has no {name}"))?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(*v as u64)
}

/// Issue 3, Show 1: three managers; writes through any; kill -9 of the leader during a
/// stream of writes; a restarted manager catches up; snapshots and compaction.
#[test]
fn replication_failover_restart_and_snapshots() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 3,
        snapshot_interval: 20,
        name: "replication".into(),
        ..ClusterOptions::default()
    })
    .expect("start a 3-manager cluster");
    check(replication(&mut c));
}

fn replication(c: &mut Cluster) -> Result<()> {
    // Writes through every manager (followers forward to the leader), seen by all.
    for i in 0..3 {
        c.ctl(
            i,
            &[
                "node",
                "update",
                "--label-add",
                &format!("via-m{i}=yes"),
                "m0",
            ],
        )
        .with_context(|| format!("a write through m{i}"))?;
    }
    for i in 0..3 {
        c.wait_until(
            CONVERGE,
            &format!("m{i} to see the writes of every manager"),
            |c| {
                let labels = c.labels(i, "m0")?;
                Ok((0..3)
                    .all(|j| labels.get(&format!("via-m{j}")).map(String::as_str) == Some("yes"))
                    .then_some(()))
            },
        )?;
    }

    // The leader's metrics.
    let leader = c.wait_leader(CONVERGE)?;
    c.wait_until(
        CONVERGE,
        "the leader's /metrics to show 3 ready nodes",
        |c| {
            let m = c.metrics(leader)?;
            Ok((m.get("mesh_manager_nodes{state=\"ready\"}") == Some(&3.0)).then_some(m))
        },
    )?;
    let info = c.info(leader)?;
    let m = c.metrics(leader)?;
    ensure!(
        metric(&m, "mesh_manager_is_leader")? == 1,
        "is_leader: {m:?}"
    );
    ensure!(
        metric(&m, "mesh_manager_raft_term")? == info.term,
        "term: {m:?} vs {info:?}"
    );
    ensure!(
        metric(&m, "mesh_manager_raft_voters")? == 3,
        "voters: {m:?}"
    );
    let commit = metric(&m, "mesh_manager_raft_commit_index")?;
    let applied = metric(&m, "mesh_manager_raft_applied_index")?;
    ensure!(
        commit >= info.commit_index && applied >= info.applied_index && applied > 0,
        "indexes: {m:?} vs {info:?}"
    );
    ensure!(
        metric(&m, "mesh_manager_nodes{state=\"down\"}")? == 0,
        "{m:?}"
    );
    ensure!(
        m.keys()
            .any(|k| k.starts_with("mesh_manager_rpc_duration_seconds_count")),
        "no RPC latency: {m:?}"
    );
    for i in (0..3).filter(|&i| i != leader) {
        ensure!(
            metric(&c.metrics(i)?, "mesh_manager_is_leader")? == 0,
            "m{i} says it leads too"
        );
    }

    // A stream of writes through every manager; kill -9 the leader in the middle.
    let addrs: Vec<String> = (0..3).map(|i| c.manager(i).addr.to_string()).collect();
    let follower = (0..3).find(|&i| i != leader).context("a follower")?;
    // Start the stream on a follower so that the leader's death is a forwarding failure
    // as much as a connection failure.
    let mut order = addrs.clone();
    order.rotate_left(follower);
    let writer = LabelWriter::start(
        order,
        c.manager(follower).tls_dir(),
        "m1".into(),
        "k".into(),
    );
    writer.wait_acked(60, CONVERGE)?;
    c.kill(leader)?;
    let killed_at = writer.acked();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // The index the killed leader's log can hold at most (a few in-flight entries
    // aside): what the survivors have committed now.
    let commit_at_kill = survivors
        .iter()
        .filter_map(|&i| c.metrics(i).ok())
        .filter_map(|m| metric(&m, "mesh_manager_raft_commit_index").ok())
        .max()
        .context("no survivor's metrics")?;
    // Keep writing until 100 writes were acknowledged after the kill and the new leader
    // has compacted its log well past what the killed manager holds, so that it can
    // only catch up by snapshot.
    writer.wait_acked(killed_at + 100, Duration::from_secs(60))?;
    let new_leader = c.wait_leader(CONVERGE)?;
    ensure!(new_leader != leader, "the killed manager still leads");
    c.wait_until(CONVERGE, "the new leader to compact its log", |c| {
        let m = c.metrics(new_leader)?;
        let purged = metric(&m, "mesh_manager_raft_purged_index")?;
        Ok((purged > commit_at_kill + 20).then_some(()))
    })?;
    let log = writer.finish()?;
    ensure!(
        log.acked.len() >= 160,
        "only {} writes acknowledged",
        log.acked.len()
    );

    // Every acknowledged write is on every survivor.
    let check_all = |c: &mut Cluster, i: usize, acked: &[String]| -> Result<()> {
        c.wait_until(
            CONVERGE,
            &format!("m{i} to hold every acknowledged write"),
            |c| {
                let labels = c.labels(i, "m1")?;
                let missing: Vec<&String> =
                    acked.iter().filter(|k| !labels.contains_key(*k)).collect();
                Ok(missing.is_empty().then_some(()))
            },
        )
        .with_context(|| {
            let labels = c.labels(i, "m1").unwrap_or_default();
            let missing: Vec<&String> = acked.iter().filter(|k| !labels.contains_key(*k)).collect();
            format!(
                "m{i} misses {} acknowledged writes: {missing:?}",
                missing.len()
            )
        })
    };
    for &i in &survivors {
        check_all(c, i, &log.acked)?;
    }

    // The killed manager restarts from its data directory and catches up; the entries it
    // lacks were compacted away, so it catches up by snapshot.
    let target = c.info(new_leader)?.commit_index;
    c.restart(leader, &[])?;
    c.wait_until(CONVERGE, "the restarted manager to catch up", |c| {
        let info = c.info(leader)?;
        Ok((info.applied_index >= target && !info.leader_id.is_empty()).then_some(()))
    })?;
    check_all(c, leader, &log.acked)?;
    let m = c.metrics(leader)?;
    ensure!(
        metric(&m, "mesh_manager_raft_snapshot_index")? > commit_at_kill,
        "the restarted manager has no snapshot past its log: {m:?}"
    );
    for i in 0..3 {
        let m = c.metrics(i)?;
        ensure!(
            metric(&m, "mesh_manager_raft_snapshot_index")? > 0
                && metric(&m, "mesh_manager_raft_purged_index")? > 0,
            "m{i} never took a snapshot or compacted its log: {m:?}"
        );
    }

    // Everything is on disk: kill -9 every manager, start them again.
    for i in 0..3 {
        c.kill(i)?;
    }
    for i in 0..3 {
        c.restart(i, &[])?;
    }
    let leader = c.wait_leader(CONVERGE)?;
    for i in 0..3 {
        check_all(c, i, &log.acked)?;
    }
    // And the cluster still takes writes through any manager.
    for i in 0..3 {
        poll_until(CONVERGE, "a write after the full restart", || {
            Ok(
                c.meshctl(i, &["node", "update", "--label-add", "after=restart", "m2"])?
                    .success()
                    .then_some(()),
            )
        })?;
    }
    ensure!(c.labels(leader, "m2")?.contains_key("after"));
    Ok(())
}

/// Issue 3, Build: without quorum, reads say so and writes fail clearly;
/// `--force-new-cluster` recovers the survivor with its data.
#[test]
fn no_quorum_then_force_new_cluster() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 3,
        name: "quorum".into(),
        ..ClusterOptions::default()
    })
    .expect("start a 3-manager cluster");
    check(no_quorum(&mut c));
}

fn no_quorum(c: &mut Cluster) -> Result<()> {
    for n in 0..20 {
        c.ctl(
            n % 3,
            &["node", "update", "--label-add", &format!("q{n}=v"), "m0"],
        )?;
    }
    let before = c.labels(0, "m0")?;
    let leader = c.wait_leader(CONVERGE)?;
    // Stop the leader and one follower; the other follower survives.
    let survivor = (0..3).find(|&i| i != leader).context("a follower")?;
    for i in (0..3).filter(|&i| i != survivor) {
        c.kill(i)?;
    }
    // Reads: refused with "no quorum" once the survivor notices (an election timeout).
    let out = c.wait_until(CONVERGE, "reads to report no quorum", |c| {
        let out = c.meshctl(survivor, &["node", "ls"])?;
        Ok((!out.success()).then_some(out))
    })?;
    out.expect_failure("no quorum")?;
    c.meshctl(survivor, &["node", "inspect", "m0"])?
        .expect_failure("no quorum")?;
    // `cluster inspect` still answers, and says there is no leader.
    let inspect = c.ctl(survivor, &["cluster", "inspect"])?;
    ensure!(inspect.contains("no quorum"), "cluster inspect:\n{inspect}");
    // Writes fail, clearly, in bounded time (meshctl is killed after 30 s).
    c.meshctl(survivor, &["node", "update", "--label-add", "lost=1", "m0"])?
        .expect_failure("quorum")?;
    c.meshctl(survivor, &["cluster", "join-token", "worker", "--rotate"])?
        .expect_failure("quorum")?;

    // Recover the survivor alone, with its data. SIGTERM stops it, quorum or not.
    let status = c.stop(survivor)?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the survivor cleanly: {status:?}"
    );
    c.restart(survivor, &["--force-new-cluster"])?;
    c.wait_until(CONVERGE, "the survivor to lead alone", |c| {
        let info = c.info(survivor)?;
        Ok((info.is_leader && info.voters == 1).then_some(()))
    })?;
    let after = c.wait_until(CONVERGE, "reads after recovery", |c| {
        Ok(c.labels(survivor, "m0").ok())
    })?;
    // Every label written with quorum survives. (The write refused without quorum may
    // show up: a survivor that led keeps its uncommitted tail, which the forced
    // membership entry commits.)
    for (k, v) in &before {
        ensure!(after.get(k) == Some(v), "label {k} lost: {after:?}");
    }
    c.ctl(
        survivor,
        &["node", "update", "--label-add", "recovered=yes", "m0"],
    )?;
    ensure!(
        c.labels(survivor, "m0")?
            .get("recovered")
            .map(String::as_str)
            == Some("yes")
    );
    let nodes = c.nodes(survivor)?;
    ensure!(
        nodes.len() == 3,
        "the other managers' nodes are still listed: {nodes:?}"
    );
    Ok(())
}

/// Issue 3, Build and Show 3: workers join and go down; update, promote, demote,
/// remove; bad input leaves the state unchanged.
#[test]
fn node_lifecycle_and_bad_input() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 1,
        heartbeat_ms: 300,
        name: "nodes".into(),
        ..ClusterOptions::default()
    })
    .expect("start a 1-manager cluster");
    check(lifecycle(&mut c));
}

fn lifecycle(c: &mut Cluster) -> Result<()> {
    let token = c.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let token = token.trim().to_owned();
    let w1 = c.join_worker("w1", &token)?;
    let table = c.ctl(0, &["node", "ls"])?;
    let row = table
        .lines()
        .find(|l| l.contains(" w1 "))
        .with_context(|| format!("w1 not in node ls:\n{table}"))?;
    ensure!(row.contains("Ready") && row.contains("Active"), "{table}");
    let id = c.node(0, "w1")?["ID"].as_str().context("ID")?.to_owned();
    ensure!(c.ctl(0, &["node", "ls", "-q"])?.lines().any(|l| l == id));

    // Labels and availability.
    c.ctl(
        0,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "--label-add",
            "rack=1",
            "w1",
        ],
    )?;
    let node = c.node(0, &id[..6])?; // an ID prefix resolves too
    ensure!(node["Availability"] == "drain", "{node}");
    ensure!(
        node["Labels"]["zone"] == "a" && node["Labels"]["rack"] == "1",
        "{node}"
    );
    c.ctl(
        0,
        &[
            "node",
            "update",
            "--availability",
            "pause",
            "--label-rm",
            "rack",
            "w1",
        ],
    )?;
    let node = c.node(0, "w1")?;
    ensure!(node["Availability"] == "pause", "{node}");
    ensure!(
        node["Labels"].get("rack").is_none() && node["Labels"]["zone"] == "a",
        "{node}"
    );

    // Bad input: clear errors, nothing changes.
    let before = c.node(0, "w1")?;
    let nodes_before = ids(&c.nodes(0)?);
    let bad: &[(&[&str], &str)] = &[
        (
            &["node", "update", "--availability", "sideways", "w1"],
            "invalid availability",
        ),
        (
            &["node", "update", "--label-add", "bad key=x", "w1"],
            "invalid label key",
        ),
        (
            &["node", "update", "--label-add", "=x", "w1"],
            "invalid label key",
        ),
        // One bad label refuses the whole update: `ok` is not added.
        (
            &[
                "node",
                "update",
                "--label-add",
                "ok=1",
                "--label-add",
                "no way",
                "w1",
            ],
            "invalid label key",
        ),
        (
            &["node", "update", "--label-rm", "bad key", "w1"],
            "invalid label key",
        ),
        (&["node", "update", "w1"], "nothing to update"),
        (
            &["node", "update", "--label-add", "a=b", "nosuch"],
            "not found",
        ),
        (
            &["node", "update", "--label-add", "a=b", ""],
            "a node name is required",
        ),
        (&["node", "update", "--bogus", "w1"], "unexpected argument"),
        (&["node", "update", "--availability"], "a value is required"),
        (&["node", "inspect", "nosuch"], "not found"),
        (&["node", "promote", "nosuch"], "not found"),
        (&["node", "demote", "nosuch"], "not found"),
        (&["node", "rm", "nosuch"], "not found"),
        (&["node", "rm"], "required"),
        // A live worker is not removed without --force...
        (&["node", "rm", "w1"], "not down"),
        // ...a manager, not at all: it must be demoted first...
        (
            &["node", "rm", "--force", "m0"],
            "demoted to worker before removal",
        ),
        // ...and the last manager can't be demoted.
        (&["node", "demote", "m0"], "last manager"),
        (&["cluster", "leave"], "last manager"),
        (&["cluster", "join-token", "admin"], "invalid value"),
    ];
    for (args, needle) in bad {
        c.meshctl(0, args)?
            .expect_failure(needle)
            .with_context(|| format!("meshctl {}", args.join(" ")))?;
    }
    ensure!(
        c.node(0, "w1")? == before,
        "w1 changed after refused commands"
    );
    ensure!(ids(&c.nodes(0)?) == nodes_before, "the node list changed");
    let m0 = c.node(0, "m0")?;
    ensure!(
        m0["Role"] == "manager" && m0["ManagerStatus"] == "Leader",
        "{m0}"
    );

    // Promote and demote the worker (its session renews its certificate each time).
    let out = c.ctl(0, &["node", "promote", "w1"])?;
    ensure!(out.contains("promoted to a manager"), "{out}");
    ensure!(c.node(0, "w1")?["Role"] == "manager");
    let out = c.ctl(0, &["node", "demote", "w1"])?;
    ensure!(out.contains("demoted"), "{out}");
    let node = c.node(0, "w1")?;
    ensure!(
        node["Role"] == "worker" && node["ManagerAddr"] == "",
        "{node}"
    );
    // Whether or not its agent had started the manager, none runs now, and the
    // voters are the managers'.
    c.wait_until(CONVERGE, "w1's manager to stop", |c| {
        Ok(c.agent(w1).manager_pid().is_none().then_some(()))
    })
    .with_context(|| c.agent_log(w1))?;
    ensure!(c.info(0)?.voters == 1, "{:?}", c.info(0)?);

    // A killed worker goes down within heartbeat * misses (plus slack for a busy host).
    c.kill_agent(w1)?;
    let o = &c.options;
    let down_within = Duration::from_millis(o.heartbeat_ms * u64::from(o.heartbeat_misses))
        + Duration::from_secs(5);
    c.wait_until(down_within, "w1 to be down", |c| {
        Ok((c.node(0, "w1")?["Status"] == "down").then_some(()))
    })?;
    let table = c.ctl(0, &["node", "ls"])?;
    ensure!(
        table
            .lines()
            .any(|l| l.contains(" w1 ") && l.contains("Down")),
        "{table}"
    );
    // A down worker is removed without --force; it is gone from the list.
    let out = c.ctl(0, &["node", "rm", "w1"])?;
    ensure!(out.trim() == id, "{out}");
    ensure!(!ids(&c.nodes(0)?).contains(&id), "w1 still listed");
    c.meshctl(0, &["node", "inspect", &id])?
        .expect_failure("not found")?;

    // The removed node's certificate is refused: the agent gives up, and its identity
    // can't call the API.
    c.restart_agent(w1)?;
    let status = c.wait_agent_exit(w1, CONVERGE)?;
    ensure!(!status.success(), "the removed agent exited cleanly");
    let log = c.agent_log(w1);
    ensure!(log.contains("removed"), "agent log:\n{log}");
    let addr = c.manager(0).addr.to_string();
    meshctl_with(&addr, &c.agent(w1).tls_dir(), &["node", "ls"])?
        .expect_failure("not a member of the cluster")?;
    ensure!(ids(&c.nodes(0)?).len() == 1);

    // A second worker: `node rm --force` removes a live one.
    let w2 = c.join_worker("w2", &token)?;
    c.ctl(0, &["node", "rm", "--force", "w2"])?;
    let status = c.wait_agent_exit(w2, CONVERGE)?;
    ensure!(!status.success(), "the force-removed agent exited cleanly");
    ensure!(ids(&c.nodes(0)?).len() == 1);
    Ok(())
}

/// Issue 3, Show 2: connections and callers the managers refuse, with nothing changed.
#[test]
fn security_refusals() {
    let mut a = Cluster::start(ClusterOptions {
        managers: 1,
        name: "security-a".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster A");
    let b = Cluster::start(ClusterOptions {
        managers: 1,
        name: "security-b".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster B");
    check(security(&mut a, &b));
}

fn security(a: &mut Cluster, b: &Cluster) -> Result<()> {
    let rt = runtime();
    let addr_a = a.manager(0).addr.to_string();
    let token = a.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let token = token.trim().to_owned();
    let worker = a.join_worker("w1", &token)?;
    let nodes_before = ids(&a.nodes(0)?);
    let m0_before = a.node(0, "m0")?;

    // No client certificate: TLS lets the caller in (a joining node has none), the
    // Control API does not.
    let ca_a = std::fs::read_to_string(a.manager(0).tls_dir().join("ca.pem"))?;
    let status = rt.block_on(async {
        let tls = mesh_client::pki::client_tls(&ca_a, None);
        let channel = mesh_client::connect::connect(std::slice::from_ref(&addr_a), &tls).await?;
        let mut control = mesh_client::proto::control_client::ControlClient::new(channel);
        let err = control
            .list_nodes(mesh_client::proto::ListNodesRequest {})
            .await
            .err()
            .context("ListNodes without a certificate succeeded")?;
        anyhow::Ok(err)
    })?;
    ensure!(status.code() == tonic::Code::Unauthenticated, "{status:?}");
    ensure!(
        status
            .message()
            .contains("a client certificate is required"),
        "{status:?}"
    );

    // Another cluster's identity: meshctl refuses the manager's certificate...
    let out = meshctl_with(&addr_a, &b.manager(0).tls_dir(), &["node", "ls"])?;
    out.expect_failure("not signed by the cluster CA")?;
    // ...and the manager refuses another CA's client certificate: a write with it does
    // not go through (m0 is compared at the end). Under TLS 1.3 the server checks the
    // client's certificate after the client has finished its handshake, so the client
    // reads either the server's alert ("refused this node's certificate") or, when its
    // first request races the alert, only a closed connection: the message is not
    // asserted.
    let identity_b = mesh_client::pki::TlsDir::new(b.manager(0).tls_dir()).load()?;
    let refused = rt.block_on(async {
        let tls = mesh_client::pki::client_tls(
            &ca_a,
            Some((identity_b.cert_pem.as_str(), identity_b.key_pem.as_str())),
        );
        let channel = match mesh_client::connect::connect(std::slice::from_ref(&addr_a), &tls).await
        {
            Err(e) => return anyhow::Ok(e.to_string()),
            Ok(channel) => channel,
        };
        let mut control = mesh_client::proto::control_client::ControlClient::new(channel);
        match mesh_tests::cluster::write_label(
            &mut control,
            "m0",
            "foreign",
            "1",
            Duration::from_secs(10),
        )
        .await
        {
            Ok(()) => anyhow::bail!("another CA's certificate was accepted"),
            Err(status) => Ok(mesh_client::connect::status_message(&status)),
        }
    })?;
    eprintln!("another CA's client certificate: {refused}");

    // A rotated token no longer joins; the new one does.
    let out = a.ctl(0, &["cluster", "join-token", "worker", "--rotate"])?;
    ensure!(
        out.contains("Successfully rotated worker join token"),
        "{out}"
    );
    let new_token = a.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let new_token = new_token.trim().to_owned();
    ensure!(new_token != token, "the token did not change");
    let foreign = b.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let refused = [
        ("old-token", token.as_str(), "invalid or has been rotated"),
        (
            "foreign-token",
            foreign.trim(),
            "presented a CA with digest",
        ),
        ("bad-token", "MESHTKN-nonsense", "invalid join token"),
    ];
    for (hostname, t, needle) in refused {
        let agent = a.spawn_agent(hostname, Some(t))?;
        let status = a.wait_agent_exit(agent, CONVERGE)?;
        ensure!(!status.success(), "{hostname}: the agent joined");
        let log = a.agent_log(agent);
        ensure!(
            log.contains(needle),
            "{hostname}: expected {needle:?} in:\n{log}"
        );
    }
    ensure!(
        ids(&a.nodes(0)?) == nodes_before,
        "a refused join added a node"
    );
    a.join_worker("w2", &new_token)?;

    // A worker's certificate: the manager-only API refuses it.
    let worker_tls = a.agent(worker).tls_dir();
    for args in [
        &["node", "ls"][..],
        &["node", "update", "--label-add", "pwned=1", "m0"],
        &["cluster", "join-token", "manager"],
        &["node", "promote", "w1"],
    ] {
        meshctl_with(&addr_a, &worker_tls, args)?
            .expect_failure("this call requires a manager")
            .with_context(|| format!("meshctl {} as a worker", args.join(" ")))?;
    }
    let status = rt.block_on(async {
        let mut control = a.control(0, Some(&worker_tls)).await?;
        anyhow::Ok(
            control
                .remove_node(mesh_client::proto::RemoveNodeRequest {
                    name: "m0".into(),
                    force: true,
                })
                .await
                .err()
                .context("a worker removed a node")?,
        )
    })?;
    ensure!(status.code() == tonic::Code::PermissionDenied, "{status:?}");
    ensure!(
        status.message().contains("requires a manager"),
        "{status:?}"
    );

    // Malformed join requests (a valid token, a bad CSR or hostname) change nothing.
    for (hostname, csr, needle) in [
        ("ok-host", "not a CSR", "invalid certificate request"),
        ("bad host", "", "invalid hostname"),
    ] {
        let status = rt.block_on(async {
            let tls = mesh_client::pki::client_tls(&ca_a, None);
            let channel =
                mesh_client::connect::connect(std::slice::from_ref(&addr_a), &tls).await?;
            let mut join = mesh_client::proto::join_client::JoinClient::new(channel);
            anyhow::Ok(
                join.join(mesh_client::proto::JoinRequest {
                    token: new_token.clone(),
                    csr_pem: csr.into(),
                    hostname: hostname.into(),
                    manager_addr: String::new(),
                })
                .await
                .err()
                .context("a malformed join succeeded")?,
            )
        })?;
        ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
        ensure!(status.message().contains(needle), "{status:?}");
    }

    let nodes_after = ids(&a.nodes(0)?);
    ensure!(
        nodes_after.len() == nodes_before.len() + 1 && nodes_after.is_superset(&nodes_before),
        "only w2 was added: {nodes_before:?} -> {nodes_after:?}"
    );
    let mut m0_after = a.node(0, "m0")?;
    // A session may have refreshed the timestamp; the rest must be equal.
    m0_after["UpdatedAt"] = m0_before["UpdatedAt"].clone();
    ensure!(
        m0_after == m0_before,
        "m0 changed: {m0_before} -> {m0_after}"
    );

    // SIGTERM stops the manager cleanly although agents hold sessions with it. (This
    // test's own idle gRPC connections go first: their runtime is not polled, so they
    // would never acknowledge the server's graceful GOAWAY.)
    drop(rt);
    let status = a.stop(0)?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "SIGTERM did not stop the manager cleanly: {status:?}"
    );
    Ok(())
}

/// The managers' view of each node, by hostname: (`Status`, `ManagerStatus`), through
/// manager `i`.
fn statuses(c: &Cluster, i: usize) -> Result<std::collections::BTreeMap<String, (String, String)>> {
    Ok(c.nodes(i)?
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_owned();
            (s("Hostname"), (s("Status"), s("ManagerStatus")))
        })
        .collect())
}

/// Agents learn every manager from their session and follow the leader: an agent that
/// joined through the leader alone comes back ready through another manager when the
/// leader is killed, and so does it when restarted while that manager is still away;
/// MANAGER STATUS comes from Raft.
#[test]
fn leader_failover_agents_follow_and_manager_status() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 3,
        name: "failover".into(),
        ..ClusterOptions::default()
    })
    .expect("start a 3-manager cluster");
    check(failover(&mut c));
}

fn failover(c: &mut Cluster) -> Result<()> {
    let leader = c.wait_leader(CONVERGE)?;
    let token = c.ctl(leader, &["cluster", "join-token", "worker", "-q"])?;
    let token = token.trim().to_owned();
    // The agent knows the leader's address only: the others, it learns from its session.
    let join = c.manager(leader).addr.to_string();
    let w1 = c.join_worker_via("w1", &token, &join)?;
    let killed = c.manager(leader).hostname.clone();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &survivors {
        let all = statuses(c, i)?;
        ensure!(
            all[&killed].1 == "Leader"
                && survivors
                    .iter()
                    .all(|&j| all[&c.manager(j).hostname].1 == "Reachable"),
            "before the kill, through m{i}: {all:?}"
        );
    }

    c.kill(leader)?;
    // Within a few heartbeat periods: a new leader; through every survivor, the killed
    // manager Unreachable (and down: the new leader's grace period is over, so every
    // node that has not come back is down too) and every other node ready, the agent
    // included (its session moved to the new leader).
    let deadline = Duration::from_secs(10);
    let new_leader = c.wait_leader(deadline)?;
    ensure!(new_leader != leader, "the killed manager still leads");
    for &i in &survivors {
        c.wait_until(
            deadline,
            &format!("m{i} to show {killed} Unreachable and down, every other node ready"),
            |c| {
                let all = statuses(c, i)?;
                let dead = &all[&killed];
                let others_ready = all
                    .iter()
                    .filter(|(h, _)| **h != killed)
                    .all(|(_, (status, _))| status == "ready");
                Ok((dead.0 == "down" && dead.1 == "Unreachable" && others_ready).then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "through m{i}: {:?}\nagent log:\n{}",
                statuses(c, i),
                c.agent_log(w1)
            )
        })?;
    }
    let all = statuses(c, new_leader)?;
    ensure!(
        all[&c.manager(new_leader).hostname].1 == "Leader",
        "the new leader's row: {all:?}"
    );
    // The cluster can be managed: a write through a survivor.
    for &i in &survivors {
        c.ctl(
            i,
            &[
                "node",
                "update",
                "--label-add",
                &format!("after-kill-m{i}=yes"),
                "w1",
            ],
        )
        .with_context(|| format!("a write through m{i} after the kill"))?;
    }

    // The agent restarts while the only manager it was told of (--join) is still away:
    // it knows the others from its last session (kept in its state directory).
    c.kill_agent(w1)?;
    c.wait_until(deadline, "the killed agent's node to be down", |c| {
        Ok((statuses(c, new_leader)?["w1"].0 == "down").then_some(()))
    })?;
    c.restart_agent(w1)?;
    c.wait_until(
        deadline,
        "the restarted agent to be ready through a surviving manager",
        |c| Ok((statuses(c, new_leader)?["w1"].0 == "ready").then_some(())),
    )
    .with_context(|| format!("agent log:\n{}", c.agent_log(w1)))?;

    // The killed manager comes back: Reachable again, and ready.
    c.restart(leader, &[])?;
    for i in 0..3 {
        c.wait_until(
            CONVERGE,
            &format!("m{i} to show the restarted {killed} Reachable"),
            |c| {
                let all = statuses(c, i)?;
                let back = &all[&killed];
                Ok((back.1 == "Reachable" && back.0 == "ready").then_some(()))
            },
        )
        .with_context(|| format!("through m{i}: {:?}", statuses(c, i)))?;
    }

    Ok(())
}

/// Issue 11, fault 4: `node promote` makes the worker a manager by itself (its agent
/// starts `mesh-manager` on the node's state directory): 2 voters with no other
/// command. The agent restarts a manager that fails, and replaces the one a killed
/// agent left behind; `node demote` stops it and removes its Raft data (which holds
/// the CA key); a second promotion joins afresh.
#[test]
fn promotion_runs_the_manager_and_demotion_stops_it() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 1,
        name: "promote".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster");
    check(promotion(&mut c));
}

fn promotion(c: &mut Cluster) -> Result<()> {
    let token = c.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let w1 = c.join_worker("w1", token.trim())?;
    ensure!(c.info(0)?.voters == 1);
    let state_dir = c.agent(w1).state_dir.clone();
    let w1_addr = c.agent(w1).manager_addr.to_string();

    let promoted = |c: &mut Cluster, what: &str, not: Option<i32>| -> Result<i32> {
        // With 2 voters, the cluster has no quorum while w1's manager is away: reads
        // fail until it is back.
        c.wait_until(CONVERGE, what, |c| {
            let pid = c.agent(w1).manager_pid();
            let voters = c.info(0).map(|i| i.voters).unwrap_or_default();
            let reachable = statuses(c, 0).is_ok_and(|all| {
                all.get("w1") == Some(&("ready".to_owned(), "Reachable".to_owned()))
            });
            Ok(pid
                .filter(|p| Some(*p) != not && voters == 2 && reachable)
                .filter(|p| process_alive(*p)))
        })
        .with_context(|| format!("{:?}\n{}", statuses(c, 0), c.agent_log(w1)))
    };

    // Promotion alone: the agent starts the manager, which joins the voters.
    c.ctl(0, &["node", "promote", "w1"])?;
    let first = promoted(c, "the promoted w1 to be a Reachable voter", None)?;
    // Its storage key is beside the agent's state directory, not in it.
    let mut key = state_dir.clone().into_os_string();
    key.push(".key");
    let key = std::path::PathBuf::from(key);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(&key).context("the promoted manager's storage key")?;
        ensure!(meta.permissions().mode() & 0o777 == 0o600 && meta.len() == 32);
    }
    // It serves the API: meshctl through w1's own manager, with w1's identity.
    let out = meshctl_with(&w1_addr, &c.agent(w1).tls_dir(), &["node", "ls"])?;
    ensure!(
        out.success() && out.stdout.contains("w1") && out.stdout.contains("Leader"),
        "node ls through w1: {out:?}"
    );

    // A manager that dies is started again (it resumes its log).
    kill9(first);
    let second = promoted(c, "w1's manager to be restarted", Some(first))?;

    // A killed agent leaves its manager behind; the restarted agent replaces it.
    c.kill_agent(w1)?;
    ensure!(process_alive(second), "the manager died with its agent");
    c.restart_agent(w1)?;
    let third = promoted(c, "the restarted agent's manager", Some(second))?;
    ensure!(!process_alive(second), "the old manager still runs");

    // Demotion stops the manager and removes its data.
    let out = c.ctl(0, &["node", "demote", "w1"])?;
    ensure!(out.contains("demoted"), "{out}");
    c.wait_until(CONVERGE, "w1's manager to stop", |c| {
        let node = c.node(0, "w1")?;
        Ok((!process_alive(third)
            && c.agent(w1).manager_pid().is_none()
            && c.info(0)?.voters == 1
            && node["Role"] == "worker"
            && node["ManagerStatus"] == "")
            .then_some(()))
    })
    .with_context(|| c.agent_log(w1))?;
    // The manager removes its data (and key) as it stops; the agent forgets it ran one when
    // its own session hears of the demotion (either may come first).
    c.wait_until(
        CONVERGE,
        "the demoted node's Raft data to go, and the agent to forget its manager",
        |_| {
            Ok((!state_dir.join("raft").exists()
                && !key.exists()
                && !state_dir.join("manager-run-by-agent").exists())
            .then_some(()))
        },
    )?;

    // Promoted again, it joins afresh.
    c.ctl(0, &["node", "promote", "w1"])?;
    promoted(c, "w1 promoted again", Some(third))?;
    Ok(())
}

/// Demoting the leader (as Swarm allows): leadership moves to another manager, and the
/// demoted manager stops by itself (status 0) and removes its Raft data. (It learns of
/// its demotion through its own session, which began when it was the only manager: the
/// leader tells sessions of every manager added since.)
#[test]
fn demoting_the_leader_moves_leadership_and_stops_it() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 3,
        name: "demote-leader".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster");
    check(demote_leader(&mut c));
}

fn demote_leader(c: &mut Cluster) -> Result<()> {
    let leader = c.wait_leader(CONVERGE)?;
    let name = c.manager(leader).hostname.clone();
    let other = (leader + 1) % 3;
    let out = c.ctl(other, &["node", "demote", &name])?;
    ensure!(out.contains("demoted"), "{out}");
    let status = c.wait_manager_exit(leader, CONVERGE)?;
    ensure!(status.success(), "the demoted leader exited with {status}");
    ensure!(
        !c.manager(leader).data_dir.join("raft").exists(),
        "the demoted manager's Raft data is still there"
    );
    c.wait_until(CONVERGE, "a new leader over 2 voters", |c| {
        let info = c.info(other).ok();
        let node = c.node(other, &name).ok();
        Ok(info
            .filter(|i| i.voters == 2 && !i.leader_id.is_empty())
            .zip(node)
            .filter(|(_, n)| n["Role"] == "worker" && n["ManagerStatus"] == "")
            .map(drop))
    })?;
    // The cluster still works.
    let out = c.ctl(
        other,
        &["node", "update", "--label-add", "after=demotion", &name],
    )?;
    ensure!(!out.is_empty(), "{out}");
    Ok(())
}

fn process_alive(pid: i32) -> bool {
    lb_agent::runtime::procfs::stat(pid).is_some_and(|s| !s.ended())
}

fn kill9(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Fault 8: 2,000 idle connections that never speak TLS do not stop `meshctl node ls`,
/// and the manager closes them after its handshake deadline (10 s); `meshctl` against a
/// listener that accepts TCP and never speaks TLS fails clearly within its deadline.
#[test]
fn idle_connections_and_a_silent_listener() {
    let c = Cluster::start(ClusterOptions {
        managers: 1,
        name: "idle".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster");
    check(idle(&c));
}

fn idle(c: &Cluster) -> Result<()> {
    use std::io::Read as _;
    const WANTED: usize = 2_000;
    let addr = c.manager(0).addr;
    // As many as the open-file limit lets this process hold, up to 2,000.
    let mut idle = Vec::with_capacity(WANTED);
    for _ in 0..WANTED {
        match std::net::TcpStream::connect(addr) {
            Ok(stream) => idle.push(stream),
            Err(e) => {
                eprintln!("stopped at {} connections: {e}", idle.len());
                break;
            }
        }
    }
    ensure!(idle.len() >= 500, "only {} connections opened", idle.len());
    let nodes = c
        .nodes(0)
        .context("meshctl node ls with idle connections open")?;
    ensure!(nodes.len() == 1, "{nodes:?}");

    for stream in &idle {
        stream.set_nonblocking(true)?;
    }
    let mut buf = [0u8; 64];
    poll_until(
        Duration::from_secs(20),
        "the manager to close the idle connections",
        || {
            idle.retain_mut(|s| {
                matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            });
            Ok(idle.is_empty().then_some(()))
        },
    )?;
    c.nodes(0)
        .context("meshctl node ls after the idle connections")?;

    // A listener that accepts TCP (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let started = std::time::Instant::now();
    let out = meshctl_with(
        &silent.local_addr()?.to_string(),
        &c.manager(0).tls_dir(),
        &["node", "ls"],
    )?;
    let took = started.elapsed();
    out.expect_failure("did not complete TLS within 10s")?;
    ensure!(took < Duration::from_secs(15), "meshctl took {took:?}");
    Ok(())
}

/// A tmpfs mounted over a directory for one test, unmounted (lazily: a process may still
/// hold files in it) when dropped, whether the test passed or not.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `dir` (which must exist). Needs root.
    fn mount(dir: &std::path::Path, size: u64) -> Result<Self> {
        use nix::mount::{MsFlags, mount};
        ensure!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a small tmpfs to fill a manager's disk: run it as root"
        );
        let options = format!("size={size},mode=0700");
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use nix::mount::{MntFlags, umount2};
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.dir.display());
        }
    }
}

/// Copies the directory tree `from` into the existing directory `to`, with modes.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
        std::fs::set_permissions(&target, entry.metadata()?.permissions())?;
    }
    Ok(())
}

/// Writes `path` until the file system is full (ENOSPC).
fn fill(path: &std::path::Path) -> Result<u64> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0xa5u8; chunk];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
    }
    file.sync_all().ok();
    Ok(written)
}

/// Issue 11, fault 7: a manager whose data disk is full exits non-zero within seconds
/// (its Raft core stops on the storage error; it used to stay up, `/healthz` 200 and
/// `is_leader` 1, with `Restart=on-failure` never firing), `/healthz` does not answer 200
/// once its writes fail, and it recovers on restart once there is space, with its data.
/// Needs root (it mounts a 16 MiB tmpfs for the manager's data directory).
#[test]
fn a_full_disk_ends_the_manager_which_recovers_on_restart() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 1,
        name: "disk-full".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster");
    check(disk_full(&mut c));
}

fn disk_full(c: &mut Cluster) -> Result<()> {
    c.ctl(0, &["node", "update", "--label-add", "before=full", "m0"])?;
    // Move the manager's data directory onto a small tmpfs.
    let stopped = c.stop(0)?;
    ensure!(
        stopped.is_some_and(|s| s.success()),
        "m0 stopped with {stopped:?}"
    );
    let data = c.manager(0).data_dir.clone();
    let saved = c.root().join("m0-saved");
    std::fs::rename(&data, &saved)?;
    std::fs::create_dir(&data)?;
    let _tmpfs = Tmpfs::mount(&data, 16 << 20)?;
    copy_tree(&saved, &data)?;
    c.restart(0, &[])?;
    c.wait_leader(CONVERGE)?;
    let (code, body) = c.healthz(0)?;
    ensure!(code == 200, "/healthz of a healthy manager: {code} {body}");

    let filler = data.join("filler");
    let filled = fill(&filler)?;
    eprintln!("filled the tmpfs with {filled} bytes");

    // Writes until one fails; the manager must then exit non-zero, and /healthz must
    // not say 200 meanwhile (refused connections are fine: the process is gone).
    let value = "x".repeat(2048);
    let mut acked = Vec::new();
    let mut failed_at = None;
    let mut healthz_after_failure = Vec::new();
    let started = std::time::Instant::now();
    let waited = poll_until(Duration::from_secs(60), "m0 to exit", || {
        if let Some(status) = c.manager_exit(0)? {
            return Ok(Some(status));
        }
        if failed_at.is_none() {
            let label = format!("fill{}", acked.len());
            let out = c.meshctl(
                0,
                &[
                    "node",
                    "update",
                    "--label-add",
                    &format!("{label}={value}"),
                    "m0",
                ],
            )?;
            if out.success() {
                acked.push(label);
            } else {
                eprintln!(
                    "write {} failed after {:?}: {}",
                    acked.len(),
                    started.elapsed(),
                    out.stderr.trim()
                );
                failed_at = Some(std::time::Instant::now());
            }
        } else if let Ok((code, body)) = c.healthz(0) {
            healthz_after_failure.push((code, body));
        }
        Ok(None)
    });
    let last: Vec<_> = healthz_after_failure.iter().rev().take(3).collect();
    let status = waited.with_context(|| {
        format!(
            "{} writes acknowledged, first failure {:?} ago; last /healthz answers: {last:?}",
            acked.len(),
            failed_at.map(|at| at.elapsed())
        )
    })?;
    c.wait_manager_exit(0, Duration::from_secs(1))?;
    let failed_at = failed_at.context("m0 exited before any write failed")?;
    let exit_after = failed_at.elapsed();
    eprintln!(
        "m0 exited with {status} {exit_after:?} after the first failed write ({} acknowledged); \
         /healthz meanwhile: {healthz_after_failure:?}",
        acked.len()
    );
    ensure!(!status.success(), "m0 exited with {status}");
    ensure!(
        exit_after < Duration::from_secs(20),
        "m0 exited {exit_after:?} after its first failed write"
    );
    ensure!(
        healthz_after_failure.iter().all(|(code, _)| *code != 200),
        "/healthz answered 200 after the disk filled: {healthz_after_failure:?}"
    );
    let log = c.log(0);
    ensure!(
        log.contains("raft core stopped"),
        "m0's log does not say why it exited:\n{log}"
    );

    // Space again: the manager starts from its data directory, with everything it
    // acknowledged.
    std::fs::remove_file(&filler)?;
    c.restart(0, &[])?;
    c.wait_leader(CONVERGE)?;
    let labels = c.labels(0, "m0")?;
    ensure!(
        labels.get("before").map(String::as_str) == Some("full"),
        "{labels:?}"
    );
    for label in &acked {
        ensure!(
            labels.contains_key(label),
            "acknowledged {label} is lost: {labels:?}"
        );
    }
    c.ctl(0, &["node", "update", "--label-add", "after=full", "m0"])?;
    let (code, body) = c.healthz(0)?;
    ensure!(code == 200, "/healthz after the restart: {code} {body}");
    c.stop(0)?;
    Ok(())
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle)?);
        } else if std::fs::read(&path)?
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// Issue 14 (encryption at rest): a manager's data directory, copied while the state
/// holds a value (a node label here; secrets go the same way, as Raft entries), holds
/// its bytes nowhere, in the log or in a snapshot; the storage key is beside the
/// directory, 0600; without it, with another key, or with a key others may read, the
/// manager exits non-zero naming the key file, and with it the state is all there.
#[test]
fn the_data_dir_is_encrypted_at_rest_and_needs_its_key() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 1,
        snapshot_interval: 10,
        name: "at-rest".into(),
        ..ClusterOptions::default()
    })
    .expect("start cluster");
    check(at_rest(&mut c));
}

fn at_rest(c: &mut Cluster) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let marker = format!("at-rest-{:016x}", rand::random::<u64>());
    c.ctl(
        0,
        &[
            "node",
            "update",
            "--label-add",
            &format!("secret={marker}"),
            "m0",
        ],
    )?;
    // Enough writes after it for a snapshot (every 10 entries) that holds it.
    for k in 0..12 {
        c.ctl(
            0,
            &["node", "update", "--label-add", &format!("k{k}=v"), "m0"],
        )?;
    }
    c.wait_until(CONVERGE, "a snapshot", |c| {
        Ok((metric(&c.metrics(0)?, "mesh_manager_raft_snapshot_index")? > 0).then_some(()))
    })?;
    let data = c.manager(0).data_dir.clone();
    let copy = c.root().join("m0-copy");
    std::fs::create_dir(&copy)?;
    copy_tree(&data, &copy)?;
    let found = files_containing(&copy, marker.as_bytes())?;
    ensure!(found.is_empty(), "the label is in clear in {found:?}");
    ensure!(
        !files_containing(&copy, b"BEGIN PRIVATE KEY")?
            .iter()
            .any(|p| p.ends_with("raft/raft.redb")),
        "the CA key is in clear in the Raft store"
    );
    let key = c.root().join("m0.key");
    let mode = std::fs::metadata(&key)
        .context("the storage key beside the data directory")?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "the key file is {mode:o}");

    let refused = |c: &mut Cluster, what: &str, wanted: &str| -> Result<()> {
        ensure!(c.restart(0, &[]).is_err(), "m0 started {what}");
        let status = c.wait_manager_exit(0, CONVERGE)?;
        ensure!(status.code() == Some(1), "m0 {what} exited with {status}");
        let log = c.log(0);
        let last = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or("");
        ensure!(
            last.contains(&key.display().to_string()) && last.contains(wanted),
            "m0 {what} does not say why: {last}\n{log}"
        );
        Ok(())
    };
    c.stop(0)?;
    let saved = c.root().join("saved.key");
    std::fs::rename(&key, &saved)?;
    refused(c, "without its key", "is missing")?;
    ensure!(!key.exists(), "a new key was made for an encrypted store");
    std::fs::write(&key, [0x5a_u8; 32])?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    refused(c, "with another key", "does not open the raft store")?;
    std::fs::rename(&saved, &key)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    refused(c, "with a key others may read", "chmod 600")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;

    c.restart(0, &[])?;
    c.wait_leader(CONVERGE)?;
    let labels = c.labels(0, "m0")?;
    ensure!(
        labels.get("secret") == Some(&marker) && labels.contains_key("k11"),
        "{labels:?}"
    );
    c.stop(0)?;
    Ok(())
}

/// A node's agent session spoken by hand on the wire (`Dispatcher.Session`), so that
/// the test can lose an assignment message on purpose: the agent's side of
/// incremental assignments is the real one (`AssignmentFollower`).
struct WireAgent {
    tx: tokio::sync::mpsc::Sender<mesh_client::proto::AgentMessage>,
    inbound: tonic::Streaming<mesh_client::proto::ManagerMessage>,
    follower: mesh_api::assignment_delta::AssignmentFollower,
    beats: tokio::task::JoinHandle<()>,
    /// Resyncs asked for.
    resyncs: usize,
}

impl Drop for WireAgent {
    fn drop(&mut self) {
        self.beats.abort();
    }
}

impl WireAgent {
    /// Opens a session for the node whose identity is in `tls`, with a dataplane at
    /// `data_addr` and the process runtime.
    async fn open(
        addr: &str,
        tls: &mesh_client::pki::TlsDir,
        hostname: &str,
        data_addr: &str,
    ) -> Result<Self> {
        use mesh_client::proto::{self, agent_message};
        let identity = tls.load()?;
        let channel = mesh_client::connect::connect(
            &[addr.to_string()],
            &mesh_client::connect::identity_tls(&identity),
        )
        .await?;
        let mut dispatcher = proto::dispatcher_client::DispatcherClient::new(channel)
            .max_decoding_message_size(mesh_client::session::MAX_ASSIGNMENT_BYTES);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(proto::AgentMessage {
            kind: Some(agent_message::Kind::Hello(proto::Hello {
                hostname: hostname.into(),
                agent_version: "wire-test".into(),
                data_addr: data_addr.into(),
                runtimes: vec!["process".into()],
                nano_cpus: 2_000_000_000,
                memory_bytes: 4 << 30,
                assignment_deltas: true,
            })),
        })
        .await?;
        let inbound = dispatcher
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let beat = tx.clone();
        let beats = tokio::spawn(async move {
            loop {
                let message = proto::AgentMessage {
                    kind: Some(agent_message::Kind::Heartbeat(proto::Heartbeat {})),
                };
                if beat.send(message).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Self {
            tx,
            inbound,
            follower: mesh_api::assignment_delta::AssignmentFollower::new(),
            beats,
            resyncs: 0,
        })
    }

    /// The next assignment message.
    async fn next(&mut self) -> Result<mesh_client::proto::Assignment> {
        use mesh_client::proto::manager_message::Kind;
        loop {
            let message = tokio::time::timeout(CONVERGE, self.inbound.message())
                .await
                .context("no assignment message in time")??
                .context("the session ended")?;
            if let Some(Kind::Assignment(assignment)) = message.kind {
                return Ok(assignment);
            }
        }
    }

    /// Takes `message` as an agent does: follows it, reports its tasks to run as
    /// running and the version applied, or asks to resync.
    async fn take(&mut self, message: &mesh_client::proto::Assignment) -> Result<()> {
        use mesh_api::assignment::TaskAction;
        use mesh_api::assignment_delta::Followed;
        use mesh_api::task::{TaskState, TaskStatus};
        use mesh_client::proto::{self, agent_message};
        let kind = match self.follower.receive(message)? {
            Followed::Assignment(a) => {
                let reports: Vec<_> = a
                    .tasks
                    .iter()
                    .filter(|t| t.action == TaskAction::Run && t.state != TaskState::Running)
                    .map(|t| {
                        (
                            t.id,
                            TaskStatus::new(TaskState::Running, "", mesh_api::time::now_ms()),
                        )
                    })
                    .collect();
                if !reports.is_empty() {
                    self.tx
                        .send(proto::AgentMessage {
                            kind: Some(agent_message::Kind::Reports(proto::TaskReports::new(
                                &reports,
                            ))),
                        })
                        .await?;
                }
                agent_message::Kind::Applied(proto::AssignmentApplied { version: a.version })
            }
            Followed::Resync(gap) => {
                self.resyncs += 1;
                let (base, held) = match gap {
                    mesh_api::assignment_delta::DeltaError::Gap { base, held } => (base, held),
                    other => anyhow::bail!("not a gap: {other}"),
                };
                agent_message::Kind::Resync(proto::Resync { base, held })
            }
            Followed::Ignored => return Ok(()),
        };
        self.tx
            .send(proto::AgentMessage { kind: Some(kind) })
            .await?;
        Ok(())
    }

    /// The backends of service `name` in the assignment held.
    fn backends(&self, name: &str) -> usize {
        self.follower
            .held()
            .and_then(|a| a.services.iter().find(|s| s.name == name))
            .map_or(0, |s| s.backends.len())
    }
}

/// Takes messages on both agents until `done` holds for both (or fails after CONVERGE).
async fn converge(agents: &mut [&mut WireAgent], done: impl Fn(&WireAgent) -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !agents.iter().all(|a| done(a)) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the agents did not converge in time"
        );
        for agent in agents.iter_mut() {
            if let Ok(message) = tokio::time::timeout(Duration::from_millis(20), agent.next()).await
            {
                agent.take(&message?).await?;
            }
        }
    }
    Ok(())
}

/// Issue 17: an agent follows assignment changes; one that misses a change (a message
/// lost on purpose here) notices the gap at the next change, asks for the whole
/// assignment, and ends up holding exactly what a new session of its node is sent.
#[test]
fn an_agent_that_misses_an_assignment_change_resyncs_to_the_exact_state() {
    let mut c = Cluster::start(ClusterOptions {
        managers: 1,
        name: "resync".into(),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    check(runtime().block_on(resync(&mut c)));
}

async fn resync(c: &mut Cluster) -> Result<()> {
    let token = c.ctl(0, &["cluster", "join-token", "worker", "-q"])?;
    let addr = c.manager(0).addr.to_string();
    let mut agents = Vec::new();
    for (i, data) in [(1, "10.77.0.1"), (2, "10.77.0.2")] {
        let tls = mesh_client::pki::TlsDir::new(c.root().join(format!("wire{i}/tls")));
        mesh_client::join::join_cluster(&tls, &addr, token.trim(), &format!("wire{i}"), "")
            .await
            .map_err(anyhow::Error::msg)?;
        let agent = WireAgent::open(&addr, &tls, &format!("wire{i}"), data).await?;
        agents.push((tls, agent));
    }
    let [(tls_a, a), (_, b)] = &mut agents[..] else {
        unreachable!()
    };
    c.ctl(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--",
            "/bin/sleep",
            "1000",
        ],
    )?;
    converge(&mut [&mut *a, &mut *b], |x| x.backends("web") == 2).await?;
    ensure!(a.resyncs == 0 && b.resyncs == 0, "no change was missed yet");

    // Scale up; node A loses the first change it is sent.
    c.ctl(0, &["service", "scale", "-d", "web=4"])?;
    let lost = a.next().await?;
    ensure!(
        matches!(
            lost.body,
            Some(mesh_client::proto::assignment::Body::Delta(_))
        ),
        "a change is sent as a delta: {lost:?}"
    );
    converge(&mut [&mut *a, &mut *b], |x| x.backends("web") == 4).await?;
    ensure!(a.resyncs == 1, "node A asked to resync {} times", a.resyncs);
    ensure!(b.resyncs == 0, "node B missed nothing");
    ensure!(
        c.log(0).contains("missed an assignment change"),
        "the manager logs the resync"
    );
    let held = a
        .follower
        .held()
        .cloned()
        .context("node A holds an assignment")?;
    ensure!(
        held.services == b.follower.held().context("node B holds one")?.services,
        "both nodes route the same"
    );
    ensure!(
        held.tasks
            .iter()
            .filter(|t| t.service_name == "web")
            .count()
            == 2,
        "node A runs its two tasks: {:?}",
        held.tasks
    );

    // What a new session of node A is sent whole is what it holds.
    let quiet = a.next();
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(500), quiet).await {
        anyhow::bail!("the cluster did not settle: {message:?}");
    }
    let mut fresh = WireAgent::open(&addr, tls_a, "wire1", "10.77.0.1").await?;
    let whole = fresh.next().await?;
    ensure!(
        matches!(
            whole.body,
            Some(mesh_client::proto::assignment::Body::Whole(_))
        ),
        "a session starts whole"
    );
    fresh.take(&whole).await?;
    let mut expected = (**fresh.follower.held().context("whole")?).clone();
    expected.version = held.version;
    ensure!(
        *held == expected,
        "after the resync node A holds exactly its whole assignment:\n{held:#?}\nvs\n{expected:#?}"
    );
    let metrics = c.metrics(0)?;
    ensure!(
        metrics.iter().any(
            |(k, v)| k.starts_with("mesh_manager_assignments_sent_total")
                && k.contains("delta")
                && *v > 0.0
        ),
        "deltas are counted: {metrics:?}"
    );
    Ok(())
}
