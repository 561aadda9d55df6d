//! End-to-end tests of `--mount` with the process runtime on a managed mesh (issue 14):
//!
//! - a read-only bind mount (the task reads the node file's exact bytes, a write
//!   fails), a named volume whose data outlives a killed task (its replacement on the
//!   same node, pinned by a constraint, reads it), and a tmpfs of the requested size
//!   (in the task's `/proc/self/mountinfo`); all private to the task (the node's
//!   directories stay as they were);
//! - `service update --mount-rm/--mount-add` rolling the service;
//! - refusals: a bind source that does not exist fails the task with docker's words
//!   (shown by `service ps` and by the create's progress), a malformed `--mount`
//!   creates nothing.
//!
//! Each test runs on a 3-node cluster of its own ([`ManagedCluster`]), one at a time (a
//! lock). Needs root, iproute2, util-linux's `nsenter`, and the binaries `mesh-manager`,
//! `meshctl`, `lb-agent` (`cargo xtask test` builds them first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mesh_tests::{ManagedCluster, TaskRow, ok, poll_until, turn};

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// The bind-mounted file's bytes.
const SITE: &str = "hello from the node\nline 2\n";
/// The named volume of the tests.
const VOLUME: &str = "mesh-test-cache";

/// `meshctl ARGS`, which must succeed; its standard output.
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// `sh -c SCRIPT` in `task`, which must succeed: its standard output.
fn sh(c: &ManagedCluster, task: &TaskRow, script: &str) -> String {
    let out = ok(c.in_task(task, &["/bin/sh", "-c", script]));
    assert!(
        out.status.success(),
        "{script:?} in {} failed: {}",
        task.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one running task of `service`, once it runs.
fn running(c: &mut ManagedCluster, service: &str) -> TaskRow {
    let tasks = ok(c.wait_converged(service, 1));
    tasks[0].clone()
}

/// The line of the task's `/proc/self/mountinfo` whose mount point is `target`.
fn mountinfo(c: &ManagedCluster, task: &TaskRow, target: &Path) -> Option<String> {
    let text = sh(c, task, "cat /proc/self/mountinfo");
    let target = target.to_string_lossy();
    text.lines()
        .find(|l| l.split_whitespace().nth(4) == Some(target.as_ref()))
        .map(str::to_owned)
}

/// The node's directories of the test: `site/index.txt` (the bind source) and the
/// (empty) targets `mnt/site`, `mnt/cache`, `mnt/scratch`, which a process task needs
/// on the node.
fn node_dirs(c: &ManagedCluster) -> PathBuf {
    let base = c.topology().dir().join("mounts");
    for dir in ["site", "mnt/site", "mnt/cache", "mnt/scratch"] {
        ok(std::fs::create_dir_all(base.join(dir)).context("create the test's directories"));
    }
    ok(std::fs::write(base.join("site/index.txt"), SITE).context("write the site"));
    base
}

#[test]
fn bind_volume_and_tmpfs_mounts_reach_the_task_and_updates_roll_them() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let base = node_dirs(&c);
    let b = base.display().to_string();
    let (site, cache, scratch) = (
        base.join("mnt/site"),
        base.join("mnt/cache"),
        base.join("mnt/scratch"),
    );
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "files",
            "--constraint",
            "node.hostname==n2",
            "--restart-delay",
            "0s",
            "--mount",
            &format!("type=bind,source={b}/site,target={b}/mnt/site,readonly"),
            "--mount",
            &format!("type=volume,source={VOLUME},target={b}/mnt/cache"),
            "--mount",
            &format!("type=tmpfs,target={b}/mnt/scratch,tmpfs-size=1m,tmpfs-mode=1770"),
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
    );
    let first = running(&mut c, "files");
    assert_eq!(first.node, "n2");

    // The bind mount: the node file's exact bytes, read-only.
    let read = sh(&c, &first, &format!("cat {b}/mnt/site/index.txt"));
    assert_eq!(read, SITE);
    let write = ok(c.in_task(
        &first,
        &["/bin/sh", "-c", &format!("echo x > {b}/mnt/site/new")],
    ));
    assert!(
        !write.status.success(),
        "a write to a read-only bind worked"
    );
    let err = String::from_utf8_lossy(&write.stderr);
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    assert!(!base.join("site/new").exists());
    let line = mountinfo(&c, &first, &site).expect("the bind in the task's mountinfo");
    assert!(
        line.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.starts_with("ro")),
        "{line}"
    );

    // The tmpfs: its size and mode, in the task's own mountinfo.
    let line = mountinfo(&c, &first, &scratch).expect("the tmpfs in the task's mountinfo");
    assert!(line.contains(" - tmpfs tmpfs "), "{line}");
    assert!(line.contains("size=1024k"), "{line}");
    assert!(line.contains("mode=1770"), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    // Private to the task: the node's directories are as they were.
    let node_side = std::fs::read_dir(&site).map(Iterator::count).unwrap_or(99);
    assert_eq!(node_side, 0, "the bind mount leaked to the node");

    // The named volume: written by this task, kept on the node under the agent's
    // state directory, read by the replacement of this task once it is killed.
    let data = format!("written by task {}\n", first.id);
    sh(
        &c,
        &first,
        &format!(
            "printf '{}' > {b}/mnt/cache/note",
            data.replace('\n', "\\n")
        ),
    );
    let on_node = c
        .agent_state_dir(2)
        .join("volumes")
        .join(VOLUME)
        .join("_data/note");
    assert_eq!(
        ok(std::fs::read_to_string(&on_node).context("the volume on n2")),
        data
    );
    assert!(
        !cache.join("note").exists(),
        "the volume mount leaked to the node"
    );
    ok(c.kill_task(&first.id));
    let second = ok(poll_until(CONVERGE, "files's replacement task", || {
        Ok(c.running_tasks("files")?
            .into_iter()
            .find(|t| t.id != first.id && !c.task_pids(&t.id).is_empty()))
    }));
    assert_eq!(second.node, "n2", "pinned to n2");
    assert_eq!(sh(&c, &second, &format!("cat {b}/mnt/cache/note")), data);
    let line = mountinfo(&c, &second, &scratch).expect("a tmpfs again");
    assert!(line.contains("size=1024k"), "{line}");
    assert_eq!(
        sh(&c, &second, &format!("ls -A {b}/mnt/scratch")),
        "",
        "a fresh tmpfs for each task"
    );

    // `service inspect` shows docker's Mounts.
    let inspect = ok(c.ctl_json(&["service", "inspect", "files"]));
    let mounts = inspect[0]["Mounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(mounts.len(), 3, "{inspect}");
    assert_eq!(mounts[0]["Type"], "bind");
    assert_eq!(mounts[0]["Source"], format!("{b}/site"));
    assert_eq!(mounts[0]["ReadOnly"], true);
    assert_eq!(mounts[1]["Source"], VOLUME);
    assert_eq!(mounts[2]["TmpfsOptions"]["SizeBytes"], 1_048_576);
    let pretty = ctl(&c, &["service", "inspect", "--pretty", "files"]);
    assert!(
        pretty.contains(" Mounts:") && pretty.contains(&format!("{b}/mnt/cache")),
        "{pretty}"
    );

    // An update: the tmpfs removed and the bind made writable roll the service.
    ctl(
        &c,
        &[
            "service",
            "update",
            "--mount-rm",
            &format!("{b}/mnt/scratch"),
            "--mount-add",
            &format!("type=bind,source={b}/site,target={b}/mnt/site"),
            "files",
        ],
    );
    let third = ok(poll_until(CONVERGE, "files rolled", || {
        Ok(c.running_tasks("files")?
            .into_iter()
            .find(|t| t.id != second.id && !c.task_pids(&t.id).is_empty()))
    }));
    assert!(
        mountinfo(&c, &third, &scratch).is_none(),
        "the tmpfs is gone"
    );
    sh(&c, &third, &format!("echo rw > {b}/mnt/site/new"));
    assert_eq!(
        ok(std::fs::read_to_string(base.join("site/new")).context("the written file")),
        "rw\n"
    );
    assert_eq!(sh(&c, &third, &format!("cat {b}/mnt/cache/note")), data);
    let inspect = ok(c.ctl_json(&["service", "inspect", "files"]));
    let mounts = inspect[0]["Mounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(mounts.len(), 2, "{inspect}");
    assert!(mounts.iter().all(|m| m["ReadOnly"].is_null()), "{inspect}");

    // The volume outlives the service, as docker's named volumes do.
    ctl(&c, &["service", "rm", "files"]);
    ok(poll_until(CONVERGE, "files's tasks gone", || {
        Ok(c.task_pids(&third.id).is_empty().then_some(()))
    }));
    assert_eq!(
        ok(std::fs::read_to_string(&on_node).context("the kept volume")),
        data
    );
}

#[test]
fn a_missing_bind_source_fails_the_task_and_bad_mounts_create_nothing() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 1));
    let base = node_dirs(&c);
    let b = base.display().to_string();
    let want = format!(
        "invalid mount config for type \"bind\": bind source path does not exist: {b}/no-such-dir"
    );

    // A bind source the node lacks: the create's progress gives up showing docker's
    // words, and `service ps` shows them on every failed task.
    let out = ok(c.meshctl_timeout(
        &[
            "service",
            "create",
            "--name",
            "broken",
            "--restart-delay",
            "0s",
            "--mount",
            &format!("type=bind,source={b}/no-such-dir,target={b}/mnt/site"),
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
        CONVERGE,
    ));
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!out.success(), "the create reported success:\n{all}");
    assert!(all.contains(&want), "the progress does not say why:\n{all}");
    let tasks = ok(c.service_tasks("broken"));
    assert!(
        tasks.iter().any(|t| t.error.contains(&want)),
        "no task fails with {want:?}:\n{}",
        mesh_tests::managed::rows(&tasks)
    );
    assert!(tasks.iter().all(|t| !t.is_running()), "{tasks:?}");

    // A target the node lacks (a process task shares the node's file system).
    ctl(
        &c,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "no-target",
            "--mount",
            &format!("type=tmpfs,target={b}/not-there"),
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
    );
    ok(poll_until(CONVERGE, "no-target's task failing", || {
        Ok(c.service_tasks("no-target")?.into_iter().find(|t| {
            t.error.contains(&format!(
                "mount target {b}/not-there does not exist on this node"
            ))
        }))
    }));

    // A bind of the agent's state directory: refused (least privilege).
    ctl(
        &c,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "peek",
            "--constraint",
            "node.hostname==n2",
            "--mount",
            &format!(
                "type=bind,source={},target={b}/mnt/site",
                c.agent_state_dir(2).display()
            ),
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
    );
    ok(poll_until(CONVERGE, "peek's task refused", || {
        Ok(c.service_tasks("peek")?
            .into_iter()
            .find(|t| t.error.contains("which the agent hides from tasks")))
    }));

    // A bind whose source contains the agent's state directory: allowed, but the task
    // sees that directory hidden there too (the recursive bind copies the hiding).
    let topo = c.topology().dir().to_path_buf();
    ok(std::fs::create_dir_all(base.join("mnt/topo")).context("a target"));
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "around",
            "--constraint",
            "node.hostname==n2",
            "--mount",
            &format!(
                "type=bind,source={},target={b}/mnt/topo,readonly",
                topo.display()
            ),
            "--",
            "/bin/sh",
            "-c",
            "sleep 100000",
        ],
    );
    let around = ok(c.wait_converged("around", 1)).remove(0);
    let state = c.agent_state_dir(2);
    let name = state
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        state.starts_with(&topo) && !name.is_empty(),
        "{}",
        state.display()
    );
    let on_node = std::fs::read_dir(&state).map(Iterator::count).unwrap_or(0);
    assert!(on_node > 0, "n2's state directory is empty on the node");
    assert_eq!(sh(&c, &around, &format!("ls -A {b}/mnt/topo/{name}")), "");
    assert_eq!(
        sh(
            &c,
            &around,
            &format!("cat {b}/mnt/topo/mounts/site/index.txt")
        ),
        SITE
    );

    // Malformed mounts: refused before anything is sent, no service created.
    let before = ctl(&c, &["service", "ls", "-q"]);
    for (mount, reason) in [
        (
            format!("type=bind,target={b}/x"),
            "field Source must not be empty".to_string(),
        ),
        (
            "type=bind,source=relative,target=/x".into(),
            "mount path must be absolute".into(),
        ),
        (
            "type=volume,target=/x".into(),
            "anonymous volumes are not supported".into(),
        ),
        (
            "type=tmpfs,target=/x,tmpfs-size=lots".into(),
            "invalid value for tmpfs-size: lots".into(),
        ),
        (
            "type=bind,source=/a,target=/".into(),
            "destination can't be '/'".into(),
        ),
        (
            "type=bind,src=/a,dst=/x,bogus=1".into(),
            "unexpected key 'bogus'".into(),
        ),
    ] {
        let out = ok(c.meshctl(&[
            "service",
            "create",
            "--name",
            "bad",
            "--mount",
            &mount,
            "--",
            "/bin/true",
        ]));
        ok(out
            .expect_failure(&reason)
            .with_context(|| format!("--mount {mount}")));
    }
    let out = ok(c.meshctl(&[
        "service",
        "create",
        "--name",
        "bad",
        "--mount",
        "type=tmpfs,target=/x",
        "--mount",
        "type=tmpfs,dst=/x",
        "--",
        "/bin/true",
    ]));
    ok(out.expect_failure("duplicate mount point: /x"));
    assert_eq!(
        ctl(&c, &["service", "ls", "-q"]),
        before,
        "a refusal created a service"
    );
}
