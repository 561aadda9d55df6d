//! End-to-end tests of what a task may reach of its node (issue 12, faults 3 and 4): the
//! agents run as the shipped systemd unit runs them (its `CapabilityBoundingSet=` only,
//! no new privileges: `setpriv`, [`mesh_tests::unit_bounding_set`]), and their tasks are
//! looked at from inside.
//!
//! - A process task binds port 80 as root and as `--user nobody --cap-drop ALL`, runs in
//!   a PID namespace of its own (it sees its own processes only, not the agent nor this
//!   test), cannot read the agent's state directory (the node's key) nor its pinned maps,
//!   and holds docker's default capabilities, not the agent's; a `--cap-add` the agent
//!   cannot grant fails the task and says why.
//! - A docker task runs and answers under the same unit (the agent opens its network
//!   namespace) and gets the spec's user and capability changes.
//!
//! Needs root, iproute2, util-linux's `setpriv`, the binaries `mesh-manager`, `meshctl`,
//! `lb-agent` and `task-echo`, and for the docker test a docker engine (`cargo xtask
//! setup` installs them).

use std::time::Duration;

use mesh_tests::{
    ManagedCluster, ManagedOptions, bin, images, ok, poll_until, turn, unit_bounding_set,
};

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long a change may take to reach the node's dataplane.
const PROPAGATE: Duration = Duration::from_secs(30);

/// A one-node cluster whose agent runs with the shipped unit's capabilities.
fn cluster(docker: bool) -> ManagedCluster {
    let mut options = ManagedOptions::new(1, 1);
    options.agent_bounding_set = Some(ok(unit_bounding_set()));
    options.docker = docker;
    ok(ManagedCluster::start_with(options))
}

/// `meshctl ARGS`, which must succeed (with the long timeout: it may wait for
/// convergence).
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// The value of `key=` in the lines of `logs`.
fn value<'a>(logs: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    // `service logs` prefixes each line with its task and node, then " | ".
    logs.lines()
        .map(|l| l.split_once(" | ").map_or(l, |(_, line)| line))
        .find_map(|l| l.strip_prefix(&prefix).map(str::trim))
        .unwrap_or_else(|| panic!("no {key}= in the task's output:\n{logs}"))
}

#[test]
fn process_tasks_are_confined_and_get_docker_s_capabilities_under_the_shipped_unit() {
    let _turn = turn();
    let mut c = cluster(false);
    let echo = ok(bin("task-echo"));
    let echo = echo.to_string_lossy();

    // Port 80 as root (docker's default set has CAP_NET_BIND_SERVICE), and as nobody
    // without any capability (unprivileged ports start at 0 in a task's namespace, as
    // in a container's).
    for (name, port, privilege) in [
        ("root80", "8080:80", vec![]),
        (
            "nobody80",
            "8081:80",
            vec!["--user", "nobody", "--cap-drop", "ALL"],
        ),
    ] {
        let mut args = vec!["service", "create", "--name", name, "-p", port];
        args.extend(privilege);
        args.extend(["--", &echo, "--port", "80"]);
        ctl(&c, &args);
        ok(c.wait_converged(name, 1));
    }
    for (port, task) in [(8080, "root80.1"), (8081, "nobody80.1")] {
        let r = ok(c.wait_answered(1, port, PROPAGATE));
        assert_eq!(r.task, task);
    }

    // What a task sees of its node.
    let state = c.agent_state_dir(1);
    let pins = c.topology().pin_dir(1);
    assert!(
        state.join("tls/node-key.pem").is_file(),
        "the node's key is at {}",
        state.display()
    );
    let script = format!(
        "echo caps=$(grep CapEff /proc/self/status | cut -f2); \
         echo uid=$(id -u); \
         echo processes=$(ls /proc | grep -c '^[0-9]'); \
         echo init=$(tr '\\0' ' ' < /proc/1/cmdline); \
         echo cgroup=$(grep '^0::' /proc/self/cgroup); \
         test -e /proc/{me} && echo test=seen || echo test=unseen; \
         echo state=$(ls -A {state} | wc -l); \
         cat {state}/tls/node-key.pem > /dev/null 2>&1 && echo key=read || echo key=hidden; \
         echo pins=$(ls -A {pins} 2>/dev/null | wc -l); \
         echo sys=$(touch /sys/x 2>&1 | grep -c 'Read-only'); \
         echo done; exec sleep 600",
        me = std::process::id(),
        state = state.display(),
        pins = pins.display(),
    );
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "probe",
            "--restart-condition",
            "none",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    let task = ok(c.wait_converged("probe", 1)).remove(0);
    let logs = ok(poll_until(CONVERGE, "the probe's output", || {
        let out = c.ctl(&["service", "logs", &task.id])?;
        Ok(out.contains("done").then_some(out))
    }));
    // Docker's default set (CapEff of a container), not the agent's.
    assert_eq!(value(&logs, "caps"), "00000000a80425fb", "{logs}");
    assert_eq!(value(&logs, "uid"), "0");
    let processes: usize = value(&logs, "processes").parse().unwrap();
    assert!(
        processes <= 5,
        "the task sees {processes} processes:\n{logs}"
    );
    assert!(
        value(&logs, "init").contains("task-init"),
        "PID 1 of the task is its task-init:\n{logs}"
    );
    assert_eq!(value(&logs, "test"), "unseen", "the task sees this test");
    assert_eq!(
        value(&logs, "cgroup"),
        "0::/",
        "the task's cgroup is its root"
    );
    assert_eq!(value(&logs, "state"), "0", "the state directory is empty");
    assert_eq!(value(&logs, "key"), "hidden");
    assert_eq!(value(&logs, "pins"), "0", "the task sees the pinned maps");
    assert_eq!(value(&logs, "sys"), "1", "/sys is read-only");
    // The agent still reads its own key: the hiding is the task's alone.
    assert!(state.join("tls/node-key.pem").is_file());

    // More than the agent holds cannot be granted: the task fails and says why.
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "greedy",
            "--detach",
            "--cap-add",
            "SYS_TIME",
            "--",
            "/bin/sleep",
            "600",
        ],
    );
    let why = "the agent cannot grant CAP_SYS_TIME";
    let ps = ok(poll_until(CONVERGE, "greedy's task to fail", || {
        let ps = c.ctl(&["service", "ps", "greedy", "--no-trunc"])?;
        Ok(ps.contains(why).then_some(ps))
    }));
    assert!(ps.contains("Failed") || ps.contains("Rejected"), "{ps}");
}

#[test]
fn docker_tasks_run_under_the_shipped_unit_with_their_user_and_capabilities() {
    const DPORT: u16 = 8090;
    let _turn = turn();
    let image = ok(images::echo_image("v1"));
    let mut c = cluster(true);
    ctl(
        &c,
        &[
            "service",
            "create",
            "--runtime",
            "docker",
            "--name",
            "dweb",
            "-p",
            &format!("{DPORT}:80"),
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "NET_RAW",
            "--user",
            "65534:65534",
            &image,
        ],
    );
    ok(c.wait_converged("dweb", 1));
    let r = ok(c.wait_answered(1, DPORT, PROPAGATE));
    assert_eq!(r.task, "dweb.1");
    let container = ok(c.containers())
        .into_iter()
        .find(|k| k.task == "dweb.1")
        .expect("dweb.1's container");
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .HostConfig.CapAdd}} {{json .HostConfig.CapDrop}} {{.Config.User}}",
            &container.id,
        ])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"["CAP_NET_ADMIN"] ["CAP_NET_RAW"] 65534:65534"#
    );
}
