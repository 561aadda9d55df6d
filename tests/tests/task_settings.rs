//! End-to-end tests of a task's container settings with the process runtime on a
//! managed mesh (issue 15): `--hostname` (with Swarm's `{{.Task.Slot}}`), `--add-host`,
//! `--dns`, `--dns-search`, `--dns-option`, `--workdir`, and template placeholders in
//! the environment, as a user checks them inside each running task:
//!
//! - `hostname` prints the set name, each replica its own; `/etc/hosts` maps it to the
//!   task's address and holds the extra host (`getent hosts` finds both);
//! - `/etc/resolv.conf` has the search domain and option, and a lookup through it
//!   applies them (`tasks`, with the search domain `named`, is `tasks.named`);
//! - names the mesh does not know are forwarded to the task's own `--dns` server, and
//!   only for that task;
//! - the program starts in the working directory, `{{.Task.Slot}}` in its environment
//!   is its own slot, and a volume named `slot-{{.Task.Slot}}` is its own;
//! - `service update --hostname "" --host-add ... --workdir ""` rolls the service: the
//!   new tasks have the default hostname (their task ID's first 12 digits), the new
//!   host, and start in `/`;
//! - a working directory the task does not have fails it, saying so; bad values are
//!   refused with docker's words and create nothing.
//!
//! Each test runs on a cluster of its own ([`ManagedCluster`]), one at a time (a lock).
//! Needs root, iproute2, util-linux's `nsenter`, glibc's `getent`, and the binaries
//! `mesh-manager`, `meshctl`, `lb-agent` (`cargo xtask test` builds them first).

use std::net::Ipv4Addr;
use std::time::Duration;

use mesh_tests::dns::Upstream;
use mesh_tests::{ManagedCluster, ManagedOptions, TaskRow, ok, poll_until, turn};

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// An outside name only the tasks' own DNS server knows, and its address.
const OUTSIDE: (&str, Ipv4Addr) = ("only.example", Ipv4Addr::new(192, 0, 2, 77));
/// A name no server knows, asked by a task without `--dns`.
const OTHER: &str = "other.example";

/// `meshctl ARGS`, which must succeed; its standard output.
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// `sh -c SCRIPT` in `task`: its standard output, or why it failed.
fn sh(c: &ManagedCluster, task: &TaskRow, script: &str) -> Result<String, String> {
    let out = c
        .in_task(task, &["/bin/sh", "-c", script])
        .map_err(|e| format!("{e:#}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{script:?} in {} failed: {}",
            task.name,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `sh -c SCRIPT` in `task`, which must succeed.
fn must(c: &ManagedCluster, task: &TaskRow, script: &str) -> String {
    sh(c, task, script).unwrap_or_else(|e| panic!("{e}"))
}

/// The slot of `web.3`.
fn slot(task: &TaskRow) -> &str {
    task.name.rsplit('.').next().unwrap_or_default()
}

/// The addresses `getent hosts NAME` gives in `task` (polled: the resolver follows the
/// assignment).
fn getent(c: &ManagedCluster, task: &TaskRow, name: &str, want: usize) -> Vec<String> {
    ok(poll_until(
        Duration::from_secs(20),
        &format!("getent hosts {name} in {}", task.name),
        || {
            let Ok(out) = sh(c, task, &format!("getent hosts {name}")) else {
                return Ok(None);
            };
            let addrs: Vec<String> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
            Ok((addrs.len() >= want).then_some(addrs))
        },
    ))
}

/// The log lines of `service` that start with `prefix`.
fn log_lines(c: &ManagedCluster, service: &str, prefix: &str, want: usize) -> Vec<String> {
    ok(poll_until(
        Duration::from_secs(30),
        &format!("{want} {prefix:?} lines in {service}'s logs"),
        || {
            let out = c.ctl_timeout(&["service", "logs", service], CONVERGE)?;
            let lines: Vec<String> = out
                .lines()
                .filter_map(|l| {
                    l.split_once(prefix)
                        .map(|(_, rest)| format!("{prefix}{rest}"))
                })
                .collect();
            Ok((lines.len() >= want).then_some(lines))
        },
    ))
}

#[test]
fn hostname_hosts_dns_workdir_and_templates_reach_each_task() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start_with(ManagedOptions::new(3, 1)));
    let client = c.topology().client_addr();
    let upstream = ok(Upstream::start(
        &c.topology().client_ns(),
        client,
        &[OUTSIDE],
    ));
    let workdir = c.topology().dir().join("work");
    ok(std::fs::create_dir_all(&workdir).map_err(anyhow::Error::from));
    let w = workdir.display().to_string();
    // Each task's own volume (`slot-{{.Task.Slot}}`) at this target.
    let cache = c.topology().dir().join("cache");
    ok(std::fs::create_dir_all(&cache).map_err(anyhow::Error::from));
    let k = cache.display().to_string();
    let program = format!(
        "echo \"started cwd=$(pwd) slot=$SLOT node=$NODE\"; echo $SLOT > {k}/slot; \
         exec sleep 100000"
    );
    let mount = format!("type=volume,source=slot-{{{{.Task.Slot}}}},target={k}");
    let client_ip = client.to_string();
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "named",
            "--replicas",
            "2",
            "--hostname",
            "web-{{ .Task.Slot }}",
            "--add-host",
            "db.example:10.9.8.7",
            "--dns",
            &client_ip,
            "--dns-search",
            "named",
            "--dns-option",
            "ndots:2",
            "--workdir",
            &w,
            "-e",
            "SLOT={{.Task.Slot}}",
            "-e",
            "NODE={{.Node.Hostname}}",
            "--mount",
            &mount,
            "--",
            "/bin/sh",
            "-c",
            &program,
        ],
    );
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "plain",
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
    );
    let tasks = ok(c.wait_converged("named", 2));
    let plain = ok(c.wait_converged("plain", 1)).remove(0);

    // The spec keeps the placeholders; inspect shows the settings.
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "named"]);
    for wanted in [
        format!(" Dir:               {w}"),
        " Hostname:          web-{{ .Task.Slot }}".to_owned(),
        " Hosts:             db.example:10.9.8.7".to_owned(),
        "  Search:           named".to_owned(),
    ] {
        assert!(pretty.contains(&wanted), "{wanted:?} missing in\n{pretty}");
    }

    let all_addrs: Vec<String> = tasks
        .iter()
        .map(|t| t.addr.expect("a task address").to_string())
        .collect();
    for task in &tasks {
        let own = task.addr.expect("a task address").to_string();
        let name = format!("web-{}", slot(task));
        // Its hostname, in its own UTS namespace.
        assert_eq!(must(&c, task, "hostname").trim(), name, "{}", task.name);
        // /etc/hosts: its name at its address, and the extra host.
        let hosts = must(&c, task, "cat /etc/hosts");
        assert!(hosts.contains(&format!("{own}\t{name}\n")), "{hosts}");
        assert!(hosts.contains("10.9.8.7\tdb.example\n"), "{hosts}");
        assert_eq!(getent(&c, task, &name, 1), [own]);
        assert_eq!(getent(&c, task, "db.example", 1), ["10.9.8.7"]);
        // resolv.conf: the search domain and the option, applied by a lookup.
        let resolv = must(&c, task, "cat /etc/resolv.conf");
        assert!(resolv.contains("search named\n"), "{resolv}");
        assert!(resolv.contains("options ndots:2\n"), "{resolv}");
        let mut found = getent(&c, task, "tasks", 2);
        found.sort();
        let mut wanted = all_addrs.clone();
        wanted.sort();
        assert_eq!(found, wanted, "tasks.named through the search domain");
        // Outside names go to the task's own server.
        assert_eq!(getent(&c, task, OUTSIDE.0, 1), [OUTSIDE.1.to_string()]);
    }
    // Only for that service: another task's outside names go to the node's servers.
    let _ = sh(&c, &plain, &format!("timeout 10 getent hosts {OTHER}"));
    let asked = upstream.asked();
    assert!(asked.iter().any(|n| n == OUTSIDE.0), "{asked:?}");
    assert!(!asked.iter().any(|n| n == OTHER), "{asked:?}");
    // A task without a hostname gets its task ID's first 12 digits, as docker's.
    let plain_host = must(&c, &plain, "hostname");
    assert_eq!(
        plain_host.trim().len(),
        12,
        "the default hostname: {plain_host}"
    );

    // Each replica's environment and working directory.
    let mut started = log_lines(&c, "named", "started ", 2);
    started.sort();
    let mut wanted: Vec<String> = tasks
        .iter()
        .map(|t| format!("started cwd={w} slot={} node={}", slot(t), t.node))
        .collect();
    wanted.sort();
    assert_eq!(started, wanted);
    // Each task's volume, named after its slot, on its node.
    for task in &tasks {
        let node: usize = task
            .node
            .trim_start_matches('n')
            .parse()
            .expect("a node nK");
        let file = c
            .agent_state_dir(node)
            .join(format!("volumes/slot-{}/_data/slot", slot(task)));
        let read = ok(poll_until(
            Duration::from_secs(20),
            &format!("{} written", file.display()),
            || {
                Ok(std::fs::read_to_string(&file)
                    .ok()
                    .filter(|t| t.ends_with('\n')))
            },
        ));
        assert_eq!(read.trim(), slot(task), "{}", file.display());
    }

    // An update rolls the service: the default hostname, a host more, `/`.
    ctl(
        &c,
        &[
            "service",
            "update",
            "--hostname",
            "",
            "--host-add",
            "api.example:10.9.8.8",
            "--workdir",
            "",
            "named",
        ],
    );
    let rolled = ok(c.wait_converged("named", 2));
    for task in &rolled {
        assert!(
            !tasks.iter().any(|t| t.id == task.id),
            "not replaced: {task:?}"
        );
        let host = must(&c, task, "hostname");
        let host = host.trim();
        assert!(
            host.len() == 12 && task.id.to_ascii_lowercase().starts_with(&host[..8]),
            "{host} for task {}",
            task.id
        );
        let hosts = must(&c, task, "cat /etc/hosts");
        assert!(hosts.contains("10.9.8.8\tapi.example\n"), "{hosts}");
        assert!(hosts.contains("10.9.8.7\tdb.example\n"), "{hosts}");
    }
    let lines = log_lines(&c, "named", "started cwd=/ ", 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
}

#[test]
fn a_missing_workdir_fails_the_task_and_bad_values_create_nothing() {
    let _turn = turn();
    let c = ok(ManagedCluster::start(3, 1));
    let missing = c.topology().dir().join("no-such-dir");
    let m = missing.display().to_string();
    let want = format!("the working directory {m} does not exist");
    let out = ok(c.meshctl_timeout(
        &[
            "service",
            "create",
            "--name",
            "lost",
            "--restart-delay",
            "0s",
            "--workdir",
            &m,
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
        CONVERGE,
    ));
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.success(), "the create reported success:\n{all}");
    let tasks = ok(c.service_tasks("lost"));
    assert!(
        tasks.iter().any(|t| t.error.contains(&want)),
        "no task fails with {want:?}:\n{}",
        mesh_tests::managed::rows(&tasks)
    );

    let before = ctl(&c, &["service", "ls", "--format", "json"]);
    for (args, needle) in [
        (
            vec!["--add-host", "x"],
            "invalid argument \"x\" for \"--add-host\" flag: bad format for add-host: \"x\"",
        ),
        (
            vec!["--dns", "nope"],
            "invalid argument \"nope\" for \"--dns\" flag: nope is not an ip address",
        ),
        (
            vec!["--workdir", "rel"],
            "the working directory 'rel' is invalid, it needs to be an absolute path",
        ),
        (
            vec!["--hostname", "web-{{.Task.Number}}"],
            "unknown template placeholder {{.Task.Number}}",
        ),
        (
            vec!["-e", "A={{.Node.Name}}"],
            "environment variable A: unknown template placeholder {{.Node.Name}}",
        ),
    ] {
        let mut full = vec!["service", "create", "--name", "bad"];
        full.extend(args.iter().copied());
        full.extend(["--", "/bin/sh", "-c", "sleep 1"]);
        let out = ok(c.meshctl_timeout(&full, CONVERGE));
        ok(out
            .expect_failure(needle)
            .map_err(|e| e.context(format!("meshctl {}", full.join(" ")))));
    }
    assert_eq!(ctl(&c, &["service", "ls", "--format", "json"]), before);
}
