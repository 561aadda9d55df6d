//! End-to-end tests of secrets and configs on a managed mesh (issue 14):
//!
//! - a secret from standard input and one from a file, and a config, given to a
//!   service's process tasks: every task reads the exact bytes at `/run/secrets/...` and
//!   at the config's path, with the owner and mode asked for, read-only; a node with no
//!   such task never receives them; nothing of them is on the nodes' disks or in the
//!   managers' data directory; they are gone once the tasks stop;
//! - rotation (`--secret-rm old --secret-add source=new,target=same`) rolls the service
//!   under load without a failed request, and the new tasks read the new value;
//! - refusals, each changing nothing.
//!
//! Each test runs on a 3-node cluster of its own ([`ManagedCluster`]), one at a time
//! (a lock). Needs root, iproute2, and the binaries `mesh-manager`, `meshctl`, `lb-agent`
//! and `task-echo` (`cargo xtask test` builds them first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use mesh_tests::{ManagedCluster, ManagedOptions, TaskRow, bin, ok, poll_until, turn};
use serde_json::Value;

/// How long a `meshctl` command that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(120);
/// How long a change may take to reach every node.
const PROPAGATE: Duration = Duration::from_secs(30);
/// The published port of the tests' services.
const PORT: u16 = 8080;

/// `meshctl ARGS`, which must succeed; its standard output.
fn ctl(c: &ManagedCluster, args: &[&str]) -> String {
    ok(c.ctl_timeout(args, CONVERGE))
}

/// `meshctl ARGS` (with `input` on its standard input), which must fail saying
/// `needle`.
fn refused(c: &ManagedCluster, args: &[&str], input: &[u8], needle: &str) {
    let out = ok(c.meshctl_with_input(args, input));
    ok(out
        .expect_failure(needle)
        .map_err(|e| e.context(format!("meshctl {}", args.join(" ")))));
}

/// Everything `secret ls`, `config ls` and `service ls` say, to check that a refusal
/// changed nothing.
fn snapshot(c: &ManagedCluster) -> Vec<Value> {
    ["secret", "config", "service"]
        .iter()
        .map(|what| ok(c.ctl_json(&[what, "ls", "--format", "json"])))
        .collect()
}

/// Runs `args` inside `task`'s mount and network namespaces; its standard output, or
/// the error with what it printed.
fn in_task(c: &ManagedCluster, task: &TaskRow, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = c.in_task(task, args).map_err(|e| format!("{e:#}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `stat -c '%u %g %a' PATH` inside `task`.
fn owner_and_mode(c: &ManagedCluster, task: &TaskRow, path: &str) -> String {
    let out = in_task(c, task, &["stat", "-L", "-c", "%u %g %a", path])
        .unwrap_or_else(|e| panic!("stat {path} in {}: {e}", task.name));
    String::from_utf8_lossy(&out).trim().to_string()
}

/// The forms `data` could take in a file: as it is, and base64 at each of the three
/// alignments (JSON holds file data in base64), each long enough not to match by
/// chance.
fn forms(data: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![data.to_vec()];
    for skip in 0..3 {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data[skip..]);
        // The middle of the encoding, away from padding and the unaligned start.
        forms.push(encoded.as_bytes()[4..encoded.len() - 4].to_vec());
    }
    forms
}

/// The files at or under `path` that hold any of `needles`.
fn files_holding(path: &Path, needles: &[Vec<u8>]) -> Vec<PathBuf> {
    let holds = |bytes: &[u8]| {
        needles
            .iter()
            .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
    };
    if path.is_file() {
        let bytes = std::fs::read(path).unwrap_or_default();
        return if holds(&bytes) {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && holds(&bytes)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Node `k`'s `lb_task_files_received_total{kind="KIND"}`.
fn received(c: &ManagedCluster, k: usize, kind: &str) -> f64 {
    let metrics = ok(c.topology().metrics(k));
    let series = format!("lb_task_files_received_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} on n{k}:\n{metrics}"))
}

/// The processes on this machine with a mount at `/run/secrets` (a task's tmpfs).
fn secrets_mounts() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let info = std::fs::read_to_string(e.path().join("mountinfo")).ok()?;
            info.lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/run/secrets"))
                .then_some(pid)
        })
        .collect()
}

#[test]
fn secrets_and_configs_reach_only_their_tasks_and_never_a_disk() {
    let _turn = turn();
    let c = ok(ManagedCluster::start(3, 1));
    let echo = ok(bin("task-echo")).to_string_lossy().to_string();
    let dir = c.topology().dir().join("secrets-test");
    ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));

    // A binary secret from standard input, a text one from a file, a config from a file.
    let pw: Vec<u8> = (0..=255u8).rev().chain(*b"pw-d41d8cd98f00b204").collect();
    let tag = "tag-7f3a9c2e51b84d6f0a1e".to_string();
    let tag_file = dir.join("tag");
    ok(std::fs::write(&tag_file, format!("{tag}\n")).map_err(anyhow::Error::from));
    let conf = b"listen = 8080\nmode = strict-5e2b\n".to_vec();
    let conf_file = dir.join("app.conf");
    ok(std::fs::write(&conf_file, &conf).map_err(anyhow::Error::from));
    let out = ok(c.meshctl_with_input(&["secret", "create", "pw", "-"], &pw));
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim().len(), 16, "secret create prints the ID");
    ctl(
        &c,
        &[
            "secret",
            "create",
            "--label",
            "tier=api",
            "tag",
            &tag_file.to_string_lossy(),
        ],
    );
    ctl(
        &c,
        &["config", "create", "app.conf", &conf_file.to_string_lossy()],
    );
    let table = ctl(&c, &["secret", "ls"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
        "{table}"
    );
    assert!(table.contains(" pw ") && table.contains(" tag "), "{table}");

    // A process task sees the node's file system: the config goes over a file there.
    let conf_target = dir.join("etc-app.conf");
    ok(std::fs::write(&conf_target, "node's own\n").map_err(anyhow::Error::from));
    let conf_target = conf_target.to_string_lossy().to_string();
    let config_ref = format!("source=app.conf,target={conf_target},mode=0440");
    let port = format!("{PORT}:{PORT}");
    let port_arg = PORT.to_string();
    ctl(
        &c,
        &[
            "service",
            "create",
            "--name",
            "api",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname!=n3",
            "--publish",
            &port,
            "--user",
            "65534:65534",
            "--secret",
            "pw",
            "--secret",
            "source=tag,target=app/tag,uid=65534,gid=65534,mode=0400",
            "--config",
            &config_ref,
            &echo,
            "--port",
            &port_arg,
            "--tag-file",
            "/run/secrets/app/tag",
        ],
    );
    let tasks = ok(c.running_tasks("api"));
    assert_eq!(tasks.len(), 2, "{tasks:?}");

    // Every task reads the exact bytes, with the owner and mode asked for, read-only.
    for task in &tasks {
        assert_eq!(
            in_task(&c, task, &["cat", "/run/secrets/pw"]).unwrap(),
            pw,
            "{}",
            task.name
        );
        assert_eq!(owner_and_mode(&c, task, "/run/secrets/pw"), "0 0 444");
        assert_eq!(
            in_task(&c, task, &["cat", "/run/secrets/app/tag"]).unwrap(),
            format!("{tag}\n").into_bytes()
        );
        assert_eq!(
            owner_and_mode(&c, task, "/run/secrets/app/tag"),
            "65534 65534 400"
        );
        assert_eq!(in_task(&c, task, &["cat", &conf_target]).unwrap(), conf);
        assert_eq!(owner_and_mode(&c, task, &conf_target), "0 0 440");
        let write = in_task(&c, task, &["sh", "-c", "echo x > /run/secrets/pw"]);
        assert!(
            write.as_ref().is_err_and(|e| e.contains("Read-only")),
            "a secret must be read-only: {write:?}"
        );
        let mounts =
            String::from_utf8_lossy(&in_task(&c, task, &["cat", "/proc/1/mountinfo"]).unwrap())
                .into_owned();
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/run/secrets"))
            .unwrap_or_else(|| panic!("no /run/secrets mount in {}:\n{mounts}", task.name));
        assert!(
            line.contains(" - tmpfs ") && line.contains(" ro,"),
            "{line}"
        );
    }
    // The node's own files are untouched: its config file, an empty /run/secrets.
    assert_eq!(
        ok(std::fs::read_to_string(&conf_target).map_err(anyhow::Error::from)),
        "node's own\n"
    );
    let node_secrets: Vec<_> = std::fs::read_dir("/run/secrets")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(node_secrets.is_empty(), "{node_secrets:?}");
    // The program, running as nobody, read its 0400 secret: it answers with its tag.
    let replies = ok(c.requests_everywhere(PORT, 6));
    for (k, reply) in &replies {
        assert_eq!(
            reply.tag.as_deref(),
            Some(tag.as_str()),
            "via n{k}: {reply:?}"
        );
    }

    // Only the nodes running a task received the secrets; n3 never did.
    for k in 1..=2 {
        let has_task = tasks.iter().any(|t| t.node == ManagedCluster::node_name(k));
        if has_task {
            assert_eq!(received(&c, k, "secret"), 2.0, "n{k}");
            assert_eq!(received(&c, k, "config"), 1.0, "n{k}");
        }
    }
    assert_eq!(received(&c, 3, "secret"), 0.0, "n3 runs no task of api");
    assert_eq!(received(&c, 3, "config"), 0.0);

    // Nothing of them on a disk: not in the agents' state directories or logs...
    let needles: Vec<Vec<u8>> = forms(&pw)
        .into_iter()
        .chain(forms(tag.as_bytes()))
        .collect();
    // The tasks' logs hold what the programs print: task-echo prints its tag (a program
    // may log its own secret; the agent never does), never `pw`.
    let leaks = |dir: &Path| -> Vec<PathBuf> {
        files_holding(dir, &needles)
            .into_iter()
            .filter(|f| {
                f.extension().is_none_or(|e| e != "log")
                    || !files_holding(f, &forms(&pw)).is_empty()
            })
            .collect()
    };
    for k in 1..=3 {
        let found = leaks(&c.agent_state_dir(k));
        assert!(
            found.is_empty(),
            "n{k}'s state directory holds a secret: {found:?}"
        );
        let log = ok(std::fs::read(c.agent_log_path(k)).map_err(anyhow::Error::from));
        assert!(
            !needles
                .iter()
                .any(|n| log.windows(n.len()).any(|w| w == n.as_slice())),
            "n{k}'s log holds a secret"
        );
    }
    // ...nor in a copy of the manager's data directory (Raft log, snapshots).
    let copy = c.topology().dir().join("manager-data-copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.data_dir(1))
        .arg(&copy)
        .status();
    assert!(status.is_ok_and(|s| s.success()), "copy the data directory");
    let found = leaks(&copy);
    assert!(
        found.is_empty(),
        "the manager's data directory holds a secret in clear: {found:?}"
    );
    // The scan finds what is there: n1's manager shares its directory with n1's agent,
    // whose task logs hold the tag task-echo printed.
    assert!(
        !files_holding(&copy, &forms(tag.as_bytes())).is_empty(),
        "the scan should find the tag in a task's log"
    );
    let _ = std::fs::remove_dir_all(&copy);

    // No API returns a secret's data: not inspect, not --pretty, not ls --format json.
    let inspect = ok(c.ctl_json(&["secret", "inspect", "pw", "tag"]));
    assert_eq!(inspect[1]["Spec"]["Labels"]["tier"], "api", "{inspect}");
    for shown in [
        inspect.to_string(),
        ctl(&c, &["secret", "inspect", "--pretty", "tag"]),
        ctl(&c, &["secret", "ls", "--format", "json"]),
        ctl(&c, &["service", "inspect", "api"]),
    ] {
        assert!(
            !needles
                .iter()
                .any(|n| shown.as_bytes().windows(n.len()).any(|w| w == n.as_slice())),
            "a secret's data was shown: {shown}"
        );
        assert!(!shown.contains("\"Data\""), "{shown}");
    }
    // A config's data is readable.
    let config = ok(c.ctl_json(&["config", "inspect", "app.conf"]));
    let data = config[0]["Spec"]["Data"].as_str().unwrap_or_default();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default(),
        conf
    );

    // Refusals, each changing nothing.
    let before = snapshot(&c);
    refused(
        &c,
        &["secret", "create", "big", "-"],
        &vec![b'x'; 500 * 1024 + 1],
        "secret data must be larger than 0 and at most 500 KiB",
    );
    refused(
        &c,
        &["secret", "create", "empty", "-"],
        b"",
        "must be larger than 0",
    );
    refused(
        &c,
        &["secret", "create", "pw", "-"],
        b"again",
        "secret pw already exists",
    );
    refused(
        &c,
        &["secret", "create", "bad name", "-"],
        b"x",
        "invalid secret name",
    );
    refused(
        &c,
        &["secret", "rm", "pw"],
        b"",
        "secret 'pw' is in use by the following service: api",
    );
    refused(
        &c,
        &["config", "rm", "app.conf"],
        b"",
        "config 'app.conf' is in use by the following service: api",
    );
    refused(
        &c,
        &[
            "service", "create", "--name", "other", "--secret", "nope", &echo,
        ],
        b"",
        "secret not found: nope",
    );
    refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "other",
            "--secret",
            "source=pw,target=../escape",
            &echo,
        ],
        b"",
        "invalid secret target",
    );
    refused(
        &c,
        &[
            "service",
            "create",
            "--name",
            "other",
            "--secret",
            "pw",
            "--secret",
            "source=tag,target=pw",
            &echo,
        ],
        b"",
        "have a conflicting target: '/run/secrets/pw'",
    );
    refused(
        &c,
        &["service", "update", "--secret-add", "nope", "api"],
        b"",
        "secret not found: nope",
    );
    refused(
        &c,
        &["secret", "inspect", "nope"],
        b"",
        "secret not found: nope",
    );
    assert_eq!(snapshot(&c), before, "a refusal changed something");

    // A config over a file the node does not have: the task fails and says why.
    let missing = format!(
        "source=app.conf,target={}",
        dir.join("absent.conf").display()
    );
    let out = ok(c.meshctl_timeout(
        &[
            "service", "create", "--name", "lost", "--config", &missing, &echo,
        ],
        CONVERGE,
    ));
    assert!(!out.success(), "{}", out.stdout);
    let lost = ok(c.service_tasks("lost"));
    assert!(
        lost.iter()
            .any(|t| t.error.contains("is not a file on this node")),
        "{lost:?}"
    );
    ctl(&c, &["service", "rm", "lost"]);

    // Once the tasks stop, their files are gone with their mount namespaces.
    let with_mounts = secrets_mounts();
    assert!(
        !with_mounts.is_empty(),
        "the tasks' tmpfs should be mounted"
    );
    ctl(&c, &["service", "rm", "api"]);
    ok(poll_until(
        PROPAGATE,
        "the tasks' /run/secrets to go",
        || Ok(secrets_mounts().is_empty().then_some(())),
    ));
    // And then the secrets can go too, once the managers have seen the tasks end (until
    // then a task still holds them, and says so).
    for name in ["pw", "tag"] {
        ok(poll_until(PROPAGATE, "the secret to be removable", || {
            let out = c.meshctl(&["secret", "rm", name])?;
            if out.success() {
                return Ok(Some(()));
            }
            anyhow::ensure!(
                out.stderr.contains("is in use by the following task"),
                "secret rm {name}: {}",
                out.stderr
            );
            Ok(None)
        }));
    }
    assert_eq!(ctl(&c, &["secret", "ls", "-q"]), "");
}

/// The file at `path` as task `task` sees it (through its main process's root: its
/// mount namespace, a container's file system), and its `uid gid mode`.
fn task_file(c: &ManagedCluster, task: &TaskRow, path: &str) -> (Vec<u8>, String) {
    use std::os::unix::fs::MetadataExt as _;
    let pid = *c
        .task_pids(&task.id)
        .last()
        .unwrap_or_else(|| panic!("no process of {}", task.name));
    let seen = PathBuf::from(format!("/proc/{pid}/root{path}"));
    let bytes = std::fs::read(&seen).unwrap_or_else(|e| panic!("{}: {e}", seen.display()));
    let meta = std::fs::metadata(&seen).unwrap_or_else(|e| panic!("{}: {e}", seen.display()));
    (
        bytes,
        format!("{} {} {:o}", meta.uid(), meta.gid(), meta.mode() & 0o7777),
    )
}

/// Step 3 (and 6 with `docker`): a service whose tasks, as `nobody`, answer with the tag
/// in their 0400 secret; rotated under load by `--secret-rm tag_v1 --secret-add
/// source=tag_v2,target=tag`: no request fails, both values answer during the update,
/// and then every task reads and answers `v2`. The old secret stays while a rollback
/// could return to it; a docker task's files go with it.
fn rotate(docker: bool) {
    let _turn = turn();
    let mut options = ManagedOptions::new(3, 1);
    options.docker = docker;
    let mut c = ok(ManagedCluster::start_with(options));
    let (runtime, program, prefix): (&str, String, Vec<String>) = if docker {
        let image = ok(mesh_tests::images::echo_image("v1"));
        ("docker", image, vec!["/task-echo".into()])
    } else {
        let echo = ok(bin("task-echo")).to_string_lossy().to_string();
        ("process", echo, Vec::new())
    };
    ok(c.meshctl_with_input(&["secret", "create", "tag_v1", "-"], b"v1\n"));
    let port = format!("{PORT}:{PORT}");
    let port_arg = PORT.to_string();
    let mut create: Vec<&str> = vec![
        "service",
        "create",
        "--runtime",
        runtime,
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        &port,
        "--update-delay",
        "1s",
        "--stop-grace-period",
        "2s",
        "--user",
        "65534:65534",
        "--secret",
        "source=tag_v1,target=tag,uid=65534,gid=65534,mode=0400",
        &program,
    ];
    // A container gets a config at any path of its image (the engine makes the mount
    // point); a process task's must be a file of the node's (the first test has one).
    const CONF: &[u8] = b"greeting = hello\n";
    if docker {
        ok(c.meshctl_with_input(&["config", "create", "app.conf", "-"], CONF));
        create.splice(
            create.len() - 1..create.len() - 1,
            ["--config", "source=app.conf,target=/etc/app.conf,mode=0440"],
        );
    }
    create.extend(prefix.iter().map(String::as_str));
    create.extend(["--port", &port_arg, "--tag-file", "/run/secrets/tag"]);
    ctl(&c, &create);
    let tasks = ok(c.wait_converged("web", 3));
    for task in &tasks {
        assert_eq!(
            task_file(&c, task, "/run/secrets/tag"),
            (b"v1\n".to_vec(), "65534 65534 400".to_string()),
            "{}",
            task.name
        );
        if docker {
            assert_eq!(
                task_file(&c, task, "/etc/app.conf"),
                (CONF.to_vec(), "0 0 440".to_string()),
                "{}",
                task.name
            );
        }
    }

    let load = ok(c.start_load(PORT));
    ok(load.wait_more(&load.stats(), 20, PROPAGATE));
    let out = ok(c.meshctl_with_input(&["secret", "create", "tag_v2", "-"], b"v2\n"));
    assert!(out.success(), "{}", out.stderr);
    ctl(
        &c,
        &[
            "service",
            "update",
            "--secret-rm",
            "tag_v1",
            "--secret-add",
            "source=tag_v2,target=tag,uid=65534,gid=65534,mode=0400",
            "web",
        ],
    );
    let tasks = ok(c.wait_converged("web", 3));
    let before = load.stats();
    ok(load.wait_more(&before, 20, PROPAGATE));
    let stats = ok(load.stop());
    assert!(
        stats.failed.is_empty(),
        "{} of {} requests failed during the rotation: {:?}",
        stats.failed.len(),
        stats.ok + stats.failed.len(),
        &stats.failed[..stats.failed.len().min(10)]
    );
    assert!(
        stats.by_tag.get("v1").copied().unwrap_or(0) > 0
            && stats.by_tag.get("v2").copied().unwrap_or(0) > 0,
        "both values should have answered during the rotation: {:?}",
        stats.by_tag
    );
    // Every task now reads the new value.
    for task in &tasks {
        assert_eq!(
            task_file(&c, task, "/run/secrets/tag"),
            (b"v2\n".to_vec(), "65534 65534 400".to_string()),
            "{}",
            task.name
        );
    }
    let replies = ok(c.requests_everywhere(PORT, 9));
    assert!(
        replies.iter().all(|(_, r)| r.tag.as_deref() == Some("v2")),
        "{replies:?}"
    );
    // The old secret is what a rollback returns to: it stays until the service moves on.
    refused(
        &c,
        &["secret", "rm", "tag_v1"],
        b"",
        "secret 'tag_v1' is in use by the following service: web (its previous spec",
    );
    // A docker task's files are on the node's /dev/shm while it runs, and go with it.
    if docker {
        let files = Path::new(lb_agent::runtime::files::HOST_FILES_ROOT);
        let dirs = || -> Vec<String> {
            std::fs::read_dir(files)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        ok(poll_until(
            PROPAGATE,
            "only the running tasks' files",
            || {
                let now = dirs();
                Ok((now.len() == 3
                    && tasks
                        .iter()
                        .all(|t| now.iter().any(|d| d.starts_with(&t.id))))
                .then_some(()))
            },
        ));
        ctl(&c, &["service", "rm", "web"]);
        ok(poll_until(CONVERGE, "the tasks' files to go", || {
            Ok(dirs().is_empty().then_some(()))
        }));
    }
}

#[test]
fn rotating_a_secret_rolls_the_service_without_a_failed_request() {
    rotate(false);
}

#[test]
fn docker_tasks_get_secrets_and_a_rotation_rolls_them() {
    rotate(true);
}
