//! End-to-end tests of overlay networks on a managed mesh (issue 13), the managers' and
//! `meshctl`'s side: networks created, listed, inspected, removed and pruned as docker's
//! CLI does it, services attached to them (`--network`), and bad input refused with a
//! clear error that changes nothing.
//!
//! Each test runs on a 3-node cluster of its own ([`ManagedCluster`]), one at a time
//! (a lock). Needs root, iproute2, ethtool, and the binaries `mesh-manager`, `meshctl`,
//! `lb-agent` and `task-echo` (`cargo xtask test` builds them first).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_tests::{ManagedCluster, bin, ok, poll_until, turn};
use serde_json::Value;

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);

/// `meshctl ARGS`, which must succeed; its standard output.
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// `meshctl ARGS`, which must fail (exit non-zero) saying `needle`.
fn refused(c: &ManagedCluster, args: &[&str], needle: &str) {
    let out = ok(c.meshctl(args));
    ok(out
        .expect_failure(needle)
        .map_err(|e| e.context(format!("meshctl {}", args.join(" ")))));
}

/// `network inspect NAME`'s one object.
fn inspect(c: &ManagedCluster, name: &str) -> Value {
    let v = ok(c.ctl_json(&["network", "inspect", name]));
    v[0].clone()
}

/// `network ls --format json`'s names.
fn names(c: &ManagedCluster) -> BTreeSet<String> {
    let v = ok(c.ctl_json(&["network", "ls", "--format", "json"]));
    v.as_array()
        .expect("a list")
        .iter()
        .map(|n| n["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn subnet(v: &Value) -> String {
    v["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn vni(v: &Value) -> String {
    v["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Everything `network ls` and `inspect` say, to check that a refusal changed nothing.
fn snapshot(c: &ManagedCluster) -> Value {
    let ids: Vec<String> = ok(c.ctl(&["network", "ls", "-q", "--no-trunc"]))
        .lines()
        .map(str::to_string)
        .collect();
    let mut args = vec!["network", "inspect"];
    args.extend(ids.iter().map(String::as_str));
    ok(c.ctl_json(&args))
}

#[test]
fn networks_are_created_listed_inspected_attached_and_removed_like_docker() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy().to_string();

    // Two networks, one with the user's subnet: `network create` prints the ID.
    let front_id = ctl(&c, &["network", "create", "-d", "overlay", "front"]);
    let back_id = ctl(
        &c,
        &[
            "network",
            "create",
            "--subnet",
            "10.20.0.0/24",
            "--label",
            "tier=db",
            "back",
        ],
    );
    let (front_id, back_id) = (front_id.trim(), back_id.trim());
    assert_eq!(front_id.len(), 16, "{front_id}");
    let table = ctl(&c, &["network", "ls"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NETWORK ID") && header.contains("NAME") && header.contains("SCOPE"),
        "{table}"
    );
    for (name, id) in [
        ("front", front_id),
        ("back", back_id),
        ("ingress", "696e677265737300"),
    ] {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from\n{table}"));
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            [&id[..12], name, "overlay", "swarm"],
            "{table}"
        );
    }
    let quiet = ctl(&c, &["network", "ls", "-q"]);
    assert!(quiet.lines().any(|l| l == &back_id[..12]), "{quiet}");
    let filtered = ctl(&c, &["network", "ls", "-q", "--filter", "name=fro"]);
    assert_eq!(filtered.trim(), &front_id[..12]);
    let front = inspect(&c, "front");
    let back = inspect(&c, &back_id[..6]);
    assert_eq!(front["Id"], front_id);
    assert_eq!(back["Name"], "back");
    assert_eq!(subnet(&front), "10.0.0.0/24");
    assert_eq!(front["IPAM"]["Config"][0]["Gateway"], "10.0.0.1");
    assert_eq!(subnet(&back), "10.20.0.0/24");
    assert_eq!(back["Labels"]["tier"], "db");
    assert_eq!(
        (vni(&front).as_str(), vni(&back).as_str()),
        ("4097", "4098")
    );
    let ingress = inspect(&c, "ingress");
    assert_eq!(ingress["Ingress"], true);
    assert_eq!(subnet(&ingress), "10.255.0.0/16");

    // A service on back: a VIP there and none on ingress; its tasks' addresses on back
    // show in `network inspect`.
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "api",
            "--replicas",
            "2",
            "--network",
            "name=back,alias=db",
            "--",
            &echo,
            "--port",
            "80",
        ],
    );
    let tasks = ok(c.wait_converged("api", 2));
    let service = ok(c.ctl_json(&["service", "inspect", "api"]));
    let vips = service[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(vips.len(), 1, "{service}");
    assert_eq!(vips[0]["NetworkID"], back_id);
    let vip = vips[0]["Addr"].as_str().unwrap_or_default().to_string();
    assert!(vip.starts_with("10.20.0.") && vip.ends_with("/24"), "{vip}");
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "api"]);
    assert!(pretty.contains("back (aliases: db)"), "{pretty}");
    let back = ok(poll_until(
        Duration::from_secs(30),
        "api's tasks on back in network inspect",
        || {
            let back = inspect(&c, "back");
            let n = back["Containers"]
                .as_object()
                .map_or(0, serde_json::Map::len);
            Ok((n == 2).then_some(back))
        },
    ));
    let service_entry = &back["Services"]["api"];
    assert_eq!(
        format!("{}/24", service_entry["VIP"].as_str().unwrap_or_default()),
        vip
    );
    assert_eq!(service_entry["Aliases"][0], "db");
    let mut addrs = BTreeSet::new();
    for (task_id, entry) in back["Containers"].as_object().expect("tasks") {
        assert!(
            tasks.iter().any(|t| &t.id == task_id),
            "{task_id} is not one of api's tasks: {back}"
        );
        let addr = entry["IPv4Address"].as_str().unwrap_or_default();
        let ip: Ipv4Addr = addr.trim_end_matches("/24").parse().expect("an address");
        // In back's subnet, neither its network address nor its gateway (.1).
        assert!(
            ip.octets()[..3] == [10, 20, 0] && ip.octets()[3] > 1 && ip.octets()[3] < 255,
            "{addr}"
        );
        addrs.insert(ip);
    }
    assert_eq!(addrs.len(), 2, "distinct addresses: {back}");

    // Bad input: a clear error, a non-zero exit, and nothing changed.
    let before = snapshot(&c);
    let services_before = ctl(&c, &["service", "ls", "-q"]);
    refused(
        &c,
        &["network", "create", "--subnet", "10.20.0.128/25", "other"],
        "overlaps network back's subnet 10.20.0.0/24",
    );
    refused(
        &c,
        &["network", "create", "--subnet", "10.255.9.0/24", "other"],
        "overlaps network ingress's subnet",
    );
    refused(
        &c,
        &["network", "create", "back"],
        "network with name back already exists",
    );
    refused(
        &c,
        &["network", "create", "ingress"],
        "ingress is a pre-defined network and cannot be created",
    );
    refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "lost",
            "--network",
            "nope",
            "-d",
            "--",
            &echo,
        ],
        "network nope not found",
    );
    refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "lost",
            "--network",
            "name=back,alias=not_valid-",
            "-d",
            "--",
            &echo,
        ],
        "alias",
    );
    refused(
        &c,
        &["network", "rm", "back"],
        "network back is in use by service api",
    );
    refused(&c, &["network", "rm", "nope"], "network nope not found");
    refused(
        &c,
        &["network", "inspect", "back", "nope"],
        "network nope not found",
    );
    refused(&c, &["network", "rm", "ingress"], "pre-defined network");
    assert_eq!(snapshot(&c), before, "a refusal changed the networks");
    assert_eq!(ctl(&c, &["service", "ls", "-q"]), services_before);

    // `service update --network-add/--network-rm`: a rolling update; back's VIP is kept
    // while the service stays on it, one on front comes, and back's goes with it.
    ctl(
        &c,
        &[
            "service",
            "update",
            "--network-add",
            "name=front,alias=web",
            "api",
        ],
    );
    let vips_of = |c: &ManagedCluster| {
        let service = ok(c.ctl_json(&["service", "inspect", "api"]));
        service[0]["Endpoint"]["VirtualIPs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let both = vips_of(&c);
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[0]["Addr"], vip.as_str());
    assert_eq!(both[1]["NetworkID"], front_id);
    ok(c.wait_converged("api", 2));
    refused(
        &c,
        &["service", "update", "--network-add", "back", "api"],
        "service is already attached to network back",
    );
    ctl(&c, &["service", "update", "--network-rm", "back", "api"]);
    let only_front = vips_of(&c);
    assert_eq!(only_front.len(), 1, "{only_front:?}");
    assert_eq!(only_front[0]["NetworkID"], front_id);
    refused(
        &c,
        &["network", "rm", "front"],
        "network front is in use by service api",
    );

    // `network rm` once the service and its tasks are gone; prune removes the rest.
    ctl(&c, &["service", "rm", "api"]);
    // A task that has not ended keeps its network (`is in use by task ...`): wait for
    // api's tasks to stop.
    ok(poll_until(
        Duration::from_secs(60),
        "api's tasks to leave front once the service is removed",
        || {
            let front = inspect(&c, "front");
            let n = front["Containers"]
                .as_object()
                .map_or(0, serde_json::Map::len);
            Ok((n == 0).then_some(()))
        },
    ));
    let removed = ctl(&c, &["network", "rm", "back"]);
    assert_eq!(removed.trim(), "back");
    assert!(!names(&c).contains("back"));
    ctl(&c, &["network", "create", "spare"]);
    let pruned = ctl(&c, &["network", "prune", "-f"]);
    assert_eq!(pruned, "Deleted Networks:\nfront\nspare\n");
    assert_eq!(names(&c), BTreeSet::from(["ingress".to_string()]));
}
