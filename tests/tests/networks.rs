//! End-to-end tests of overlay networks on a managed mesh (issue 13):
//!
//! - the managers' and `meshctl`'s side: networks created, listed, inspected, removed and
//!   pruned as docker's CLI does it, services attached to them (`--network`), and bad
//!   input refused with a clear error that changes nothing;
//! - the nodes' side: a web tier on `front` and `back` calling `api` by name on every
//!   request through every node, names resolved inside tasks (VIPs, `tasks.`, dnsrr,
//!   aliases, `<name>.<network>`, task names, reverse lookups, an outside name forwarded
//!   to the node's resolver, NXDOMAIN for a name on no shared network), isolation
//!   (a task on `front` alone reaches nothing of `back`'s, and the drops are counted),
//!   and a service moved between networks by a rolling update;
//! - processes on the nodes themselves (P4): `127.0.0.1:PORT` and the node's address
//!   reach the published services from the node's own namespace, and nowhere else.
//!
//! Names are resolved and connections made from inside the tasks: `nsenter` into a
//! task's network and mount namespaces, then `busybox nslookup` (through the task's own
//! `/etc/resolv.conf`) or `busybox nc`.
//!
//! Each test runs on a 3-node cluster of its own ([`ManagedCluster`]), one at a time
//! (a lock). Needs root, iproute2, ethtool, and the binaries `mesh-manager`, `meshctl`,
//! `lb-agent` and `task-echo` (`cargo xtask test` builds them first).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use mesh_tests::client::{EchoConn, Reply, request_tcp, request_udp, request_udp_connected};
use mesh_tests::dns::Upstream;
use mesh_tests::{ManagedCluster, ManagedOptions, TaskRow, bin, in_netns, ok, poll_until, turn};
use serde_json::Value;

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long a change may take to reach every node's dataplane and resolver.
const PROPAGATE: Duration = Duration::from_secs(30);
/// The published port of `web`.
const WEB: u16 = 8080;
/// The tasks' gateway, an address of every node (on its `lo`).
const TASK_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// An outside name only the nodes' upstream resolver knows, and its address.
const OUTSIDE: (&str, Ipv4Addr) = ("outside.example", Ipv4Addr::new(192, 0, 2, 7));

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
        "not a valid DNS label",
    );
    refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "lost-",
            "--network",
            "back",
            "-d",
            "--",
            &echo,
        ],
        "must be valid as a DNS name component",
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

/// What `busybox nslookup NAME` printed inside a task: whether it found the name, and the
/// addresses (or, for a reverse lookup, the names) it gave.
#[derive(Debug)]
struct Lookup {
    found: bool,
    answers: BTreeSet<String>,
    output: String,
}

/// `busybox nslookup NAME` inside `task`, through its own `/etc/resolv.conf`.
fn lookup(c: &ManagedCluster, task: &TaskRow, name: &str) -> Lookup {
    let out = ok(c.in_task(task, &["busybox", "nslookup", name]));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answers = mesh_tests::dns::nslookup_addresses(&output);
    answers.extend(
        output
            .lines()
            .filter_map(|l| l.split_once("name = "))
            .map(|(_, n)| n.trim().trim_end_matches('.').to_owned()),
    );
    Lookup {
        found: out.status.success() && !answers.is_empty(),
        answers,
        output,
    }
}

/// Polls until `name`, looked up inside `task`, gives exactly `want`.
fn resolves_to(c: &ManagedCluster, task: &TaskRow, name: &str, want: &BTreeSet<String>) {
    let mut last = None;
    let found = poll_until(PROPAGATE, &format!("{name} to resolve to {want:?}"), || {
        let l = lookup(c, task, name);
        let done = l.found && &l.answers == want;
        last = Some(l);
        Ok(done.then_some(()))
    });
    if let Err(e) = found {
        panic!("{e:#}\nin {}: {last:#?}", task.name);
    }
}

/// Polls until `name`, looked up inside `task`, is not found (NXDOMAIN).
fn not_found(c: &ManagedCluster, task: &TaskRow, name: &str) {
    let mut last = None;
    let gone = poll_until(PROPAGATE, &format!("{name} to be unknown"), || {
        let l = lookup(c, task, name);
        let done = !l.found && l.output.contains("NXDOMAIN");
        last = Some(l);
        Ok(done.then_some(()))
    });
    if let Err(e) = gone {
        panic!("{e:#}\nin {}: {last:#?}", task.name);
    }
}

/// Whether a TCP connection from inside `task` to `addr:80` gets `task-echo`'s banner.
fn reaches(c: &ManagedCluster, task: &TaskRow, addr: &str) -> bool {
    let out = ok(c.in_task(task, &["busybox", "nc", "-w", "2", addr, "80"]));
    String::from_utf8_lossy(&out.stdout).contains("task=")
}

/// The addresses on `network` of `service`'s tasks, by task name (`network inspect`).
fn addrs_on(c: &ManagedCluster, network: &str, service: &str) -> BTreeMap<String, Ipv4Addr> {
    let v = inspect(c, network);
    v["Containers"]
        .as_object()
        .map(|tasks| {
            tasks
                .values()
                .filter_map(|t| {
                    let name = t["Name"].as_str()?;
                    // "api.1.<task id>" -> "api.1".
                    let (svc, rest) = name.split_once('.')?;
                    let slot = rest.split('.').next()?;
                    let addr = t["IPv4Address"].as_str()?.split('/').next()?.parse().ok()?;
                    (svc == service).then(|| (format!("{svc}.{slot}"), addr))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `service`'s VIP on `network`, written out.
fn vip_on(c: &ManagedCluster, service: &str, network: &str) -> String {
    ok(c.vip_on(service, network)).to_string()
}

/// Packets the nodes' dataplanes dropped for isolation, summed.
fn isolation_drops(c: &ManagedCluster) -> f64 {
    (1..=c.nodes())
        .filter_map(|k| c.topology().metrics(k).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("lb_dropped_packets_total{reason=\"isolation\"} "))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn set(items: impl IntoIterator<Item = impl ToString>) -> BTreeSet<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

/// Issue 13, steps 1 to 4 on a 3-node cluster whose nodes' own resolver is a server in
/// the client's namespace.
#[test]
fn services_reach_each_other_by_name_on_shared_networks_only() {
    let _turn = turn();
    let mut options = ManagedOptions::new(3, 1);
    options.dns_upstream_on_client = true;
    let mut c = ok(ManagedCluster::start_with(options));
    let upstream = ok(Upstream::start(
        &c.topology().client_ns(),
        c.topology().client_addr(),
        &[OUTSIDE],
    ));
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy().to_string();
    ctl(&c, &["network", "create", "front"]);
    ctl(
        &c,
        &["network", "create", "--subnet", "10.77.0.0/24", "back"],
    );
    let service = |c: &ManagedCluster, name: &str, opts: &[&str], extra: &[&str]| {
        let mut args = vec!["service", "create", "--name", name];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", &echo, "--port", "80"]);
        args.extend_from_slice(extra);
        ctl(c, &args);
    };
    service(
        &c,
        "api",
        &["--replicas", "2", "--network", "name=back,alias=backend"],
        &[],
    );
    service(
        &c,
        "db",
        &[
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "back",
        ],
        &[],
    );
    service(
        &c,
        "web",
        &[
            "--replicas",
            "3",
            "--network",
            "front",
            "--network",
            "back",
            "-p",
            "8080:80",
        ],
        &["--call", "api:80"],
    );
    service(&c, "lonely", &["--network", "front"], &[]);
    let web = ok(c.wait_converged("web", 3));
    ok(c.wait_converged("api", 2));
    ok(c.wait_converged("db", 2));
    let lonely = ok(c.wait_converged("lonely", 1)).remove(0);

    // Step 1: every request through every node reaches web, which calls api by name;
    // api sees web's address on back, the client's is kept for web.
    let web_on_back = addrs_on(&c, "back", "web");
    assert_eq!(web_on_back.len(), 3, "{web_on_back:?}");
    ok(c.wait_answered(1, WEB, PROPAGATE));
    for (k, r) in ok(c.requests_everywhere(WEB, 4)) {
        assert_eq!(r.peer_ip(), Some(c.topology().client_addr()), "via n{k}");
        let called = r.called.clone().unwrap_or_default();
        let answer = ok(Reply::parse(&called)
            .with_context(|| format!("{} via n{k} called api: {called}", r.task)));
        assert!(answer.task.starts_with("api."), "via n{k}: {called}");
        assert_eq!(
            answer.peer_ip(),
            web_on_back.get(&r.task).copied(),
            "api saw {} by its address on back (via n{k})",
            r.task
        );
    }

    // Step 2: names inside a web task.
    let w = &web[0];
    let api_vip = vip_on(&c, "api", "back");
    resolves_to(&c, w, "api", &set([&api_vip]));
    resolves_to(&c, w, "backend", &set([&api_vip]));
    resolves_to(&c, w, "api.back", &set([&api_vip]));
    resolves_to(
        &c,
        w,
        "tasks.api",
        &set(addrs_on(&c, "back", "api").values()),
    );
    resolves_to(&c, w, "db", &set(addrs_on(&c, "back", "db").values()));
    let api1 = addrs_on(&c, "back", "api")["api.1"];
    resolves_to(&c, w, "api.1", &set([api1]));
    let reverse = lookup(&c, w, &api1.to_string());
    assert!(
        reverse.answers.iter().any(|n| n.starts_with("api.1.")),
        "reverse lookup of {api1}: {reverse:#?}"
    );
    resolves_to(&c, w, OUTSIDE.0, &set([OUTSIDE.1]));
    let asked = upstream.asked();
    assert!(asked.iter().any(|n| n == OUTSIDE.0), "{asked:?}");
    assert!(
        !asked.iter().any(|n| n == "api" || n == "tasks.api"),
        "mesh names were forwarded: {asked:?}"
    );
    // tasks.api follows scaling, exactly the running tasks.
    ctl(&c, &["service", "scale", "api=5"]);
    ok(c.wait_converged("api", 5));
    resolves_to(
        &c,
        w,
        "tasks.api",
        &set(addrs_on(&c, "back", "api").values()),
    );
    assert_eq!(addrs_on(&c, "back", "api").len(), 5);
    ctl(&c, &["service", "scale", "api=2"]);
    let api = ok(c.wait_converged("api", 2));
    let left: BTreeSet<String> = {
        let on_back = addrs_on(&c, "back", "api");
        api.iter().map(|t| on_back[&t.name].to_string()).collect()
    };
    resolves_to(&c, w, "tasks.api", &left);
    // A task on front alone shares nothing with api: NXDOMAIN, not forwarded.
    not_found(&c, &lonely, "api");
    not_found(&c, &lonely, "tasks.db");
    resolves_to(&c, &lonely, "web", &set([vip_on(&c, "web", "front")]));

    // Step 3: isolation. lonely reaches web on front, nothing of back's, by name or by
    // address; the drops are counted.
    assert!(reaches(&c, &lonely, &vip_on(&c, "web", "front")));
    let before = isolation_drops(&c);
    let api_task = left.iter().next().expect("an api task").clone();
    for addr in [&api_vip, &api_task] {
        assert!(!reaches(&c, &lonely, addr), "lonely reached {addr} on back");
    }
    ok(poll_until(
        PROPAGATE,
        "the isolation drops to be counted",
        || Ok((isolation_drops(&c) > before).then_some(())),
    ));
    // api's own tasks (on back alone) do not reach web's address on front either.
    let web_on_front = addrs_on(&c, "front", "web");
    let front_addr = web_on_front
        .values()
        .next()
        .expect("web on front")
        .to_string();
    assert!(
        !reaches(&c, &api[0], &front_addr),
        "api reached web on front"
    );

    // Step 4: lonely joins back by a rolling update, and reaches api; leaves, and no longer.
    ctl(
        &c,
        &["service", "update", "--network-add", "back", "lonely"],
    );
    let moved = ok(c.wait_converged("lonely", 1)).remove(0);
    assert_ne!(moved.id, lonely.id, "a rolling update replaces the task");
    resolves_to(&c, &moved, "api", &set([&api_vip]));
    assert!(reaches(&c, &moved, &api_vip));
    ctl(&c, &["service", "update", "--network-rm", "back", "lonely"]);
    let back_out = ok(c.wait_converged("lonely", 1)).remove(0);
    not_found(&c, &back_out, "api");
    assert!(!reaches(&c, &back_out, &api_vip));
    assert!(reaches(&c, &back_out, &vip_on(&c, "web", "front")));
}

/// From node `k`'s own network namespace (not a task's): one TCP request to `addr`,
/// whose socket must name `addr` as its peer.
fn request_on_node(c: &ManagedCluster, k: usize, addr: SocketAddr) -> Result<Reply> {
    in_netns(&c.topology().node_ns(k), move || {
        let conn = EchoConn::connect(addr)?;
        let peer = conn.stream().peer_addr()?;
        ensure!(
            peer == addr,
            "the socket connected to {addr} names {peer} as its peer"
        );
        Ok(conn.reply.clone())
    })?
}

/// From node `k`'s own network namespace, TCP requests to `127.0.0.1:port` and to the
/// node's address until both are answered by `task` (which runs on node `home`);
/// checks the peer the task saw.
fn node_reaches(c: &ManagedCluster, k: usize, port: u16, task: &str, home: usize) {
    for ip in [Ipv4Addr::LOCALHOST, c.node_addr(k)] {
        let addr = SocketAddr::from((ip, port));
        let mut last = String::new();
        let r = ok(poll_until(
            PROPAGATE,
            &format!("n{k} to reach {addr} from its own namespace"),
            || match request_on_node(c, k, addr) {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    last = format!("{e:#}");
                    Ok(None)
                }
            },
        )
        .with_context(|| format!("last failure: {last}")));
        assert_eq!(r.task, task, "n{k} -> {addr}");
        // Through another node's port, the task sees this node's address (a client of
        // the routing mesh); connected to directly, the address the kernel picks for the
        // route to the task: the node's, or the tasks' gateway on its `lo`.
        let peer = r.peer_ip();
        assert!(
            peer == Some(c.node_addr(k)) || (k == home && peer == Some(TASK_GATEWAY)),
            "{task} sees {peer:?} as the peer of n{k} -> {addr}"
        );
    }
}

/// P4: a process on a node, in the node's own network namespace, reaches the services
/// published on the node at `127.0.0.1:PORT` and at the node's address, whether a task
/// runs on that node or on another one, by TCP and by UDP (connected or not), for a service on
/// the default network and for one that joins a user network (balanced to its tasks'
/// routing-mesh-only addresses); after the agent restarts too. Processes in other
/// namespaces (the client's) are left alone.
#[test]
fn the_nodes_own_processes_reach_published_ports() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy().to_string();
    ctl(&c, &["network", "create", "front"]);
    let on_n2 = "node.hostname==n2";
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--constraint",
            on_n2,
            "-p",
            "8080:80",
            "-p",
            "8081:80/udp",
            "--",
            &echo,
            "--port",
            "80",
            "--udp",
        ],
    );
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "meshonly",
            "--network",
            "front",
            "--constraint",
            on_n2,
            "-p",
            "8082:80",
            "--",
            &echo,
            "--port",
            "80",
        ],
    );
    for name in ["web", "meshonly"] {
        let tasks = ok(c.wait_converged(name, 1));
        assert_eq!(tasks[0].node, "n2", "{name}: {tasks:?}");
    }

    // n2 runs the tasks (connected to directly), n1 and n3 do not (through n2's port).
    for k in 1..=3 {
        node_reaches(&c, k, 8080, "web.1", 2);
        node_reaches(&c, k, 8082, "meshonly.1", 2);
        for ip in [Ipv4Addr::LOCALHOST, c.node_addr(k)] {
            let addr = SocketAddr::from((ip, 8081));
            // Connected, and unconnected (`sendto`; `recvfrom` must name `addr` as the
            // answer's source, `request_udp` checks).
            let (connected, unconnected) = ok(in_netns(&c.topology().node_ns(k), move || {
                (
                    request_udp_connected(addr, b"ping"),
                    request_udp(addr, b"pong"),
                )
            }));
            let (r, echoed) = ok(connected.with_context(|| format!("UDP n{k} -> {addr}")));
            assert_eq!(r.task, "web.1", "UDP n{k} -> {addr}");
            assert_eq!(echoed, b"ping", "UDP n{k} -> {addr}");
            let (r, echoed) = ok(unconnected.with_context(|| format!("sendto n{k} -> {addr}")));
            assert_eq!(r.task, "web.1", "sendto n{k} -> {addr}");
            assert_eq!(echoed, b"pong", "sendto n{k} -> {addr}");
        }
    }

    // The client's namespace is no node's: its own 127.0.0.1:8080 is refused.
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
    let refused = ok(in_netns(&c.topology().client_ns(), move || {
        request_tcp(local)
    }));
    assert!(
        refused.is_err(),
        "the client reached its own 127.0.0.1:8080: {refused:?}"
    );

    // A stopped agent leaves its programs and maps in place: still balanced. An agent
    // that restarts replaces its programs (the old ones are detached, not left beside
    // them); connects go on being balanced.
    let before = sock_programs();
    assert!(before >= 12, "four socket programs per agent: {before}");
    for k in [1, 2] {
        ok(c.stop_agent(k));
        node_reaches(&c, k, 8080, "web.1", 2);
        ok(c.restart_agent(k));
        ok(c.wait_nodes_ready(CONVERGE));
        node_reaches(&c, k, 8080, "web.1", 2);
    }
    ok(poll_until(
        PROPAGATE,
        "the restarted agents' old programs to go",
        || Ok((sock_programs() == before).then_some(())),
    ));
}

/// How many socket programs of the mesh (`cgroup/connect4`, `sendmsg4`, `recvmsg4`) the
/// kernel holds.
fn sock_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            matches!(
                p.name_as_str(),
                Some("lb_connect4" | "lb_sendmsg4" | "lb_recvmsg4" | "lb_getpeername4")
            )
        })
        .count()
}
