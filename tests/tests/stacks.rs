//! End-to-end tests of stacks (issue 15) on a managed mesh:
//!
//! - a multi-tier application from a compose file: Debian's `redis-server` as the data
//!   store, run by the process runtime with its password from a secret and its
//!   configuration from a config, and a web tier (`task-echo --redis db:6379`) that
//!   reaches it by its short name and increments a counter on every request, published
//!   on 8080. Requests through every node succeed and change the data; `stack ls`,
//!   `services` and `ps` show the right counts; a redeploy with more replicas and a
//!   changed environment variable rolls the web tier under load without a failed
//!   request and leaves the data store untouched; `stack rm` removes every object and
//!   leaves no task process or namespace behind;
//! - bad files and deploys, each refused with the place named and changing nothing.
//!
//! Each test runs on a 3-node cluster of its own ([`ManagedCluster`]), one at a time (a
//! lock). Needs root, iproute2, `redis-server` (`cargo xtask setup` installs it) and the
//! binaries `mesh-manager`, `meshctl`, `lb-agent` and `task-echo`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_tests::{ManagedCluster, TaskRow, bin, ok, turn};
use serde_json::Value;

/// How long a `stack deploy` that waits for convergence may take.
const CONVERGE: Duration = Duration::from_secs(180);
/// The web tier's published port.
const PORT: u16 = 8080;

/// The application: a Redis data store and a web tier calling it by name, with a
/// secret (Redis's password) and a config (its configuration), as a compose user
/// writes it. The variables come from the environment of `stack deploy`.
const APP: &str = r#"
version: "3.8"

# The process runtime for every service (nodes without Docker), shared with an anchor.
x-process: &process
  x-mesh-runtime: process

services:
  db:
    <<: *process
    entrypoint:
      - /bin/sh
      - -c
      - exec redis-server ${CONF_DIR}/redis.conf --requirepass "$$(cat /run/secrets/db_password)"
    secrets:
      - db_password
    configs:
      - source: redis_conf
        target: ${CONF_DIR}/redis.conf
        mode: 0440
  web:
    <<: *process
    entrypoint:
      - /bin/sh
      - -c
      - exec ${ECHO} --port 80 --tag "$$VERSION" --redis db:6379 --redis-password-file /run/secrets/db_password
    environment:
      VERSION: ${VERSION:-v1}
    secrets:
      - db_password
    ports:
      - "8080:80"
    deploy:
      replicas: ${WEB_REPLICAS:-2}
      update_config:
        parallelism: 1
        delay: 1s
        order: start-first

secrets:
  db_password:
    file: ./db_password.txt

configs:
  redis_conf:
    file: ./redis.conf
"#;

/// Redis's configuration: no persistence (the test's store lives as long as its task).
const REDIS_CONF: &str = "port 6379\nbind 0.0.0.0\nsave \"\"\nappendonly no\n";

/// A directory of the test's with `name` written in it.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    ok(std::fs::write(&path, text).map_err(anyhow::Error::from));
    path
}

/// `meshctl ARGS` with `env`, which must succeed; its standard output.
fn ctl_env(c: &ManagedCluster, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = ok(c.meshctl_env(args, env, CONVERGE));
    assert!(
        out.success(),
        "meshctl {} failed ({}):\nstdout: {}\nstderr: {}\n{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr,
        c.logs(40)
    );
    out.stdout
}

/// Everything the cluster holds that a stack can create, to check that a refusal
/// changed nothing.
fn snapshot(c: &ManagedCluster) -> Vec<Value> {
    [
        &["service", "ls", "--format", "json"][..],
        &["network", "ls", "--format", "json"],
        &["secret", "ls", "--format", "json"],
        &["config", "ls", "--format", "json"],
    ]
    .iter()
    .map(|args| {
        let mut v = ok(c.ctl_json(args));
        // Times go on ("5 seconds ago"); what exists does not.
        if let Value::Array(items) = &mut v {
            for item in items {
                if let Value::Object(map) = item {
                    map.retain(|k, _| !matches!(k.as_str(), "CreatedAt" | "UpdatedAt"));
                }
            }
        }
        v
    })
    .collect()
}

/// The stack's tasks as `stack ps --format json` lists them (none once it says "Nothing
/// found in stack").
fn stack_tasks(c: &ManagedCluster, stack: &str) -> Vec<TaskRow> {
    ok(try_stack_tasks(c, stack))
}

/// [`stack_tasks`], or the error of `stack ps` (a manager that has no leader yet refuses).
fn try_stack_tasks(c: &ManagedCluster, stack: &str) -> anyhow::Result<Vec<TaskRow>> {
    let out = c.ctl(&["stack", "ps", stack, "--format", "json"])?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = ok(serde_json::from_str(&out).map_err(anyhow::Error::from));
    Ok(v.as_array()
        .map(|a| a.iter().map(|t| ok(TaskRow::from_json(t))).collect())
        .unwrap_or_default())
}

/// The running tasks of `service` in `tasks`.
fn running<'a>(tasks: &'a [TaskRow], service: &str) -> Vec<&'a TaskRow> {
    tasks
        .iter()
        .filter(|t| t.is_running() && t.name.rsplit_once('.').is_some_and(|(s, _)| s == service))
        .collect()
}

/// The counter in a reply of the web tier (`| hits=N`).
fn hits(reply: &mesh_tests::Reply) -> u64 {
    reply
        .called
        .as_deref()
        .and_then(|c| c.strip_prefix("hits="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the web tier did not reach its store: {reply:?}"))
}

#[test]
fn a_multi_tier_stack_deploys_serves_redeploys_without_a_failed_request_and_is_removed() {
    let _turn = turn();
    let c = ok(ManagedCluster::start(3, 1));
    let dir = c.topology().dir().join("stack-app");
    ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));
    let app = write(&dir, "app.yml", APP);
    write(&dir, "db_password.txt", "pw-8c1f0e77b2\n");
    write(&dir, "redis.conf", REDIS_CONF);
    // A process task sees the node's file system: its config goes over a file there.
    let conf_dir = dir.join("target");
    ok(std::fs::create_dir_all(&conf_dir).map_err(anyhow::Error::from));
    write(&conf_dir, "redis.conf", "");
    let echo = ok(bin("task-echo")).to_string_lossy().to_string();
    let conf_dir = conf_dir.to_string_lossy().to_string();
    let app = app.to_string_lossy().to_string();
    // `stack deploy` of the file with the web tier at `version` and `replicas`.
    let deploy = |version: &str, replicas: &str| {
        let env = [
            ("ECHO", echo.as_str()),
            ("CONF_DIR", conf_dir.as_str()),
            ("VERSION", version),
            ("WEB_REPLICAS", replicas),
        ];
        ctl_env(&c, &["stack", "deploy", "-c", &app, "app"], &env)
    };

    // The first deploy creates every object, in docker's words, and waits for them.
    let out = deploy("v1", "2");
    for line in [
        "Creating network app_default",
        "Creating secret app_db_password",
        "Creating config app_redis_conf",
        "Creating service app_db",
        "Creating service app_web",
        "verify: Service converged",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let ls = ok(c.ctl(&["stack", "ls"]));
    let lines: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines, [vec!["NAME", "SERVICES"], vec!["app", "2"]], "{ls}");
    let services = ok(c.ctl_json(&["stack", "services", "app", "--format", "json"]));
    let replicas: Vec<(String, String)> = services
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["Name"].as_str().unwrap_or_default().to_owned(),
                s["Replicas"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        replicas,
        [
            ("app_db".to_owned(), "1/1".to_owned()),
            ("app_web".to_owned(), "2/2".to_owned())
        ]
    );
    let tasks = stack_tasks(&c, "app");
    assert_eq!(running(&tasks, "app_db").len(), 1, "{tasks:?}");
    assert_eq!(running(&tasks, "app_web").len(), 2, "{tasks:?}");
    let db_task = running(&tasks, "app_db")[0].id.clone();

    // Every node's published port reaches the web tier, which reaches the store by its
    // short name: each request increments the counter.
    ok(c.wait_answered(1, PORT, Duration::from_secs(30)));
    let replies = ok(c.requests_everywhere(PORT, 3));
    let counts: Vec<u64> = replies.iter().map(|(_, r)| hits(r)).collect();
    assert!(
        counts.windows(2).all(|w| w[1] > w[0]),
        "the counter did not grow with each request: {counts:?}"
    );
    assert!(replies.iter().all(|(_, r)| r.tag.as_deref() == Some("v1")));

    // The same file again changes nothing.
    let out = deploy("v1", "2");
    assert!(
        out.contains("Keeping service app_db") && out.contains("Keeping service app_web"),
        "{out}"
    );
    assert!(
        !out.contains("Creating") && !out.contains("Updating"),
        "{out}"
    );

    // A redeploy with a new version and a third replica rolls the web tier under load.
    let load = ok(c.start_load(PORT));
    let before = load.stats();
    ok(load.wait_more(&before, 20, Duration::from_secs(30)));
    let out = deploy("v2", "3");
    assert!(out.contains("Updating service app_web (id: "), "{out}");
    assert!(out.contains("Keeping service app_db"), "{out}");
    let during = load.stats();
    ok(load.wait_more(&during, 20, Duration::from_secs(30)));
    let stats = ok(load.stop());
    assert!(
        stats.failed.is_empty(),
        "{} of {} requests failed during the redeploy: {:?}",
        stats.failed.len(),
        stats.ok + stats.failed.len(),
        &stats.failed[..stats.failed.len().min(5)]
    );
    eprintln!(
        "redeploy under load: {} requests answered, {} failed, by version {:?}",
        stats.ok,
        stats.failed.len(),
        stats.by_tag
    );
    assert!(stats.by_tag.contains_key("v2"), "{:?}", stats.by_tag);
    let tasks = stack_tasks(&c, "app");
    assert_eq!(running(&tasks, "app_web").len(), 3, "{tasks:?}");
    let db = running(&tasks, "app_db");
    assert_eq!(db.len(), 1, "{tasks:?}");
    assert_eq!(
        db[0].id, db_task,
        "the unchanged data store was not replaced"
    );
    // The data survived: the counter goes on from where it was.
    let last = *counts.last().unwrap_or(&0);
    let replies = ok(c.requests_everywhere(PORT, 2));
    for (k, r) in &replies {
        assert_eq!(r.tag.as_deref(), Some("v2"), "via n{k}: {r:?}");
        assert!(hits(r) > last + stats.ok as u64 / 2, "via n{k}: {r:?}");
    }

    // `stack rm` removes every object and waits for the tasks to go.
    let ids: BTreeSet<String> = stack_tasks(&c, "app").into_iter().map(|t| t.id).collect();
    let out = ok(c.ctl_timeout(&["stack", "rm", "app"], CONVERGE));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "Removing service app_db",
            "Removing service app_web",
            "Removing secret app_db_password",
            "Removing config app_redis_conf",
            "Removing network app_default",
        ],
        "{out}"
    );
    let empty = vec![Value::Array(Vec::new()); 4];
    let mut left = snapshot(&c);
    // `network ls` keeps the built-in ingress.
    if let Value::Array(networks) = &mut left[1] {
        networks.retain(|n| n["Name"] != "ingress");
    }
    assert_eq!(left, empty);
    for id in &ids {
        assert!(c.task_pids(id).is_empty(), "task {id} still has processes");
        let netns = Path::new("/run/netns").join(format!("mesh-{id}"));
        assert!(!netns.exists(), "{} is left", netns.display());
    }
    let out = ok(c.meshctl(&["stack", "ps", "app"]));
    assert!(
        out.stderr.contains("Nothing found in stack: app"),
        "{out:?}"
    );
}

/// A small stack of one service publishing `port`, whose task-echo is `$ECHO`.
fn echo_stack(port: u16) -> String {
    format!(
        r#"
services:
  web:
    x-mesh-runtime: process
    image: ${{ECHO}}
    command: ["--port", "80"]
    ports: ["{port}:80"]
    secrets: [pw]
secrets:
  pw:
    file: ./pw.txt
"#
    )
}

#[test]
fn bad_files_and_deploys_are_refused_naming_the_place_and_change_nothing() {
    let _turn = turn();
    let c = ok(ManagedCluster::start(3, 1));
    let dir = c.topology().dir().join("stack-bad");
    ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));
    write(&dir, "pw.txt", "first\n");
    let echo = ok(bin("task-echo")).to_string_lossy().to_string();
    let env = [("ECHO", echo.as_str())];
    let good = write(&dir, "good.yml", &echo_stack(PORT));
    let good = good.to_string_lossy().to_string();
    let out = ctl_env(&c, &["stack", "deploy", "-c", &good, "first"], &env);
    assert!(out.contains("Creating service first_web"), "{out}");
    ok(c.wait_answered(2, PORT, Duration::from_secs(30)));
    let before = snapshot(&c);

    // Each bad file, the stack it is deployed as, and what the error must say.
    let cases: Vec<(&str, String, &str, String)> = vec![
        (
            "bad YAML",
            "services:\n  web:\n    image: x\n   ports: [1]\n".into(),
            "app",
            "bad.yml:4: yaml: ".into(),
        ),
        (
            "an unknown top-level key",
            "version: \"3.8\"\nfrobs: 1\nservices:\n  web:\n    image: x\n".into(),
            "app",
            "bad.yml:2: (root): additional property frobs is not allowed".into(),
        ),
        (
            "a wrong type",
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n".into(),
            "app",
            "bad.yml:5: services.web.deploy.replicas: must be an integer".into(),
        ),
        (
            "an undefined variable with :?",
            "services:\n  web:\n    image: \"nginx:${TAG:?set TAG}\"\n".into(),
            "app",
            "bad.yml:3: services.web.image: required variable TAG is missing a value: set TAG"
                .into(),
        ),
        (
            "an external network that does not exist",
            "services:\n  web:\n    x-mesh-runtime: process\n    image: /bin/true\n    \
             networks: [outside]\nnetworks:\n  outside:\n    external: true\n"
                .into(),
            "app",
            "network \"outside\" is declared as external, but could not be found".into(),
        ),
        (
            "a port another stack publishes",
            echo_stack(PORT),
            "other",
            format!(
                "service other_web: port '{PORT}/tcp' is already in use by service 'first_web'"
            ),
        ),
        (
            "a secret file that does not exist",
            echo_stack(8081).replace("./pw.txt", "./missing.txt"),
            "app",
            format!(
                "secret pw: file: {}: No such file or directory",
                dir.join("missing.txt").display()
            ),
        ),
        (
            "a secret whose content changed",
            echo_stack(PORT).replace("./pw.txt", "./pw2.txt"),
            "first",
            "secret first_pw already exists with other content, and a secret can't change: to \
             rotate it, give it a new name"
                .into(),
        ),
        (
            "a bad stack name",
            echo_stack(8082),
            "my.app",
            "invalid stack name \"my.app\"".into(),
        ),
    ];
    write(&dir, "pw2.txt", "second\n");
    for (what, text, stack, needle) in &cases {
        let bad = write(&dir, "bad.yml", text);
        let args = ["stack", "deploy", "-c", &bad.to_string_lossy(), stack];
        let out = ok(c.meshctl_env(&args, &env, CONVERGE));
        assert!(
            !out.success() && out.stderr.contains(needle.as_str()),
            "{what}: expected a failure saying {needle:?}; got ({}):\nstdout: {}\nstderr: {}",
            out.status,
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
        assert_eq!(snapshot(&c), before, "{what} changed something");
    }

    // An object of the same name created by hand is never taken over.
    ok(c.ctl(&["network", "create", "app_default"]));
    let before = snapshot(&c);
    let file = write(&dir, "mine.yml", &echo_stack(8083));
    let args = ["stack", "deploy", "-c", &file.to_string_lossy(), "app"];
    let out = ok(c.meshctl_env(&args, &env, CONVERGE));
    assert!(
        !out.success()
            && out
                .stderr
                .contains("network app_default already exists and is not part of stack app"),
        "{out:?}"
    );
    assert_eq!(snapshot(&c), before);
    // `stack rm` of a stack that does not exist says so and removes nothing.
    let out = ok(c.meshctl(&["stack", "rm", "app"]));
    assert!(
        out.success() && out.stderr.contains("Nothing found in stack: app"),
        "{out:?}"
    );
    assert_eq!(snapshot(&c), before);

    // `--prune` removes the stack's services the file dropped, and only those.
    let extra = "  extra:\n    x-mesh-runtime: process\n    image: ${ECHO}\n    command: [\"--port\", \"81\"]\n";
    let two = write(
        &dir,
        "two.yml",
        &echo_stack(PORT).replace("\nsecrets:\n", &format!("\n{extra}secrets:\n")),
    );
    let two = two.to_string_lossy().to_string();
    let out = ctl_env(&c, &["stack", "deploy", "-d", "-c", &two, "first"], &env);
    assert!(out.contains("Creating service first_extra"), "{out}");
    let out = ctl_env(&c, &["stack", "deploy", "-d", "-c", &good, "first"], &env);
    assert!(!out.contains("Removing"), "no --prune: {out}");
    let out = ctl_env(
        &c,
        &["stack", "deploy", "-d", "--prune", "-c", &good, "first"],
        &env,
    );
    assert!(out.contains("Removing service first_extra"), "{out}");
    assert!(out.contains("Keeping service first_web"), "{out}");
    let listed = ok(c.ctl(&["stack", "services", "first", "-q"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

/// A real-world stack file of `manager/compose/src/testdata` (their headers name the
/// projects that publish them) and what deploying it needs.
struct RealStack {
    /// The file's name in `testdata/`.
    file: &'static str,
    /// The stack's name.
    stack: &'static str,
    /// The variables it needs (the others have defaults in the file).
    env: &'static [(&'static str, &'static str)],
    /// Files it names (configs, `env_file`s, bind sources), relative to it: created
    /// with this content (a directory for a path ending in `/`).
    files: &'static [(&'static str, &'static str)],
    /// The external networks it uses: created first.
    networks: &'static [&'static str],
    /// The external secrets it uses: created first.
    secrets: &'static [&'static str],
    /// A service whose health check cannot pass in a stand-in (it runs `curl`, which
    /// the stand-in has not): its tasks fail `unhealthy`, as the file's check says.
    unhealthy: Option<&'static str>,
    /// A service constrained to nodes with a label no node has yet: pending until
    /// a node gets it (`node update --label-add`), as the stack's tutorial says.
    pending_until_label: Option<(&'static str, &'static str)>,
}

const REAL: &[RealStack] = &[
    RealStack {
        file: "dockersamples_example-voting-app__docker-stack.yml",
        stack: "vote",
        env: &[],
        files: &[],
        networks: &[],
        secrets: &[],
        unhealthy: None,
        pending_until_label: None,
    },
    RealStack {
        file: "BretFisher_dogvscat__stack-voting.yml",
        stack: "dvc",
        env: &[],
        files: &[],
        networks: &["proxy"],
        secrets: &[],
        unhealthy: None,
        pending_until_label: None,
    },
    RealStack {
        file: "BretFisher_udemy-docker-mastery__swarm-secrets-assignment-1_answer_docker-compose.yml",
        stack: "drupal",
        env: &[],
        files: &[],
        networks: &[],
        secrets: &["psql-pw"],
        unhealthy: None,
        pending_until_label: None,
    },
    RealStack {
        file: "stefanprodan_swarmprom__docker-compose.yml",
        stack: "mon",
        env: &[("ADMIN_USER", "operator")],
        files: &[
            ("caddy/Caddyfile", ":9090 {\n  proxy / prometheus:9090\n}\n"),
            (
                "dockerd-exporter/Caddyfile",
                ":9323 {\n  proxy / 172.18.0.1:9323\n}\n",
            ),
            ("prometheus/rules/swarm_node.rules.yml", "groups: []\n"),
            ("prometheus/rules/swarm_task.rules.yml", "groups: []\n"),
        ],
        networks: &[],
        secrets: &[],
        unhealthy: Some("mon_caddy"),
        pending_until_label: None,
    },
    RealStack {
        file: "tiangolo_dockerswarm.rocks__docs_portainer.yml",
        stack: "portainer",
        env: &[("DOMAIN", "portainer.example.com")],
        files: &[],
        networks: &["traefik-public"],
        secrets: &[],
        unhealthy: None,
        pending_until_label: Some(("portainer_portainer", "portainer.portainer-data=true")),
    },
    RealStack {
        file: "vegasbrianc_prometheus__docker-stack.yml",
        stack: "prom",
        env: &[],
        files: &[
            (
                "grafana/config.monitoring",
                "GF_SECURITY_ADMIN_PASSWORD=foobar\n",
            ),
            ("grafana/provisioning/", ""),
            ("prometheus/", ""),
            ("alertmanager/", ""),
        ],
        networks: &[],
        secrets: &[],
        unhealthy: None,
        pending_until_label: None,
    },
];

/// What `real` converts to, as `stack deploy` converts it (the same library, the same
/// variables).
fn real_plan(real: &RealStack, path: &Path) -> mesh_compose::convert::StackPlan {
    let env: mesh_compose::Environment = real
        .env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let file = mesh_compose::File {
        name: path.display().to_string(),
        dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        text: ok(std::fs::read_to_string(path).map_err(anyhow::Error::from)),
    };
    let read_text = |p: &Path| std::fs::read_to_string(p);
    let loaded = mesh_compose::load(&[file], &env, &read_text)
        .unwrap_or_else(|e| panic!("{}: {e}", real.file));
    let read = |p: &Path| std::fs::read(p);
    mesh_compose::convert::convert(real.stack, &loaded.config, &read)
        .unwrap_or_else(|e| panic!("{}: {e}", real.file))
}

/// Names of the objects `ls --format json` lists.
fn names(c: &ManagedCluster, what: &str) -> BTreeSet<String> {
    ok(c.ctl_json(&[what, "ls", "--format", "json"]))
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["Name"].as_str().or(o["Spec"]["Name"].as_str()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn real_world_stacks_deploy_exactly_what_their_files_describe() {
    let _turn = turn();
    let mut options = mesh_tests::ManagedOptions::new(3, 1);
    options.docker = true;
    let c = ok(ManagedCluster::start_with(options));
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manager/compose/src/testdata");
    let mut standins = mesh_tests::images::StandIns::default();
    for real in REAL {
        let what = real.file;
        let dir = c.topology().dir().join(format!("real-{}", real.stack));
        ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));
        for (path, text) in real.files {
            let path = dir.join(path);
            let made = if path.to_string_lossy().ends_with('/') {
                std::fs::create_dir_all(&path)
            } else {
                std::fs::create_dir_all(path.parent().unwrap_or(&dir))
                    .and_then(|()| std::fs::write(&path, text))
            };
            ok(made.map_err(anyhow::Error::from));
        }
        let file = dir.join("stack.yml");
        ok(std::fs::copy(testdata.join(real.file), &file).map_err(anyhow::Error::from));
        for network in real.networks {
            ok(c.ctl(&["network", "create", "--attachable", network]));
        }
        for secret in real.secrets {
            let out = ok(c.meshctl_with_input(&["secret", "create", secret, "-"], b"pw\n"));
            assert!(out.success(), "{out:?}");
        }
        let plan = real_plan(real, &file);
        // Stand-ins for the images no registry here provides, under the file's names.
        let images: Vec<String> = plan.services.iter().map(|s| s.task.image.clone()).collect();
        ok(standins.tag(&images));

        let file = file.to_string_lossy().to_string();
        let out = ctl_env(
            &c,
            &["stack", "deploy", "-d", "-c", &file, real.stack],
            real.env,
        );
        // Exactly the objects the file describes, in docker's words.
        let mut expected: Vec<String> = plan
            .networks
            .iter()
            .map(|n| format!("Creating network {}", n.spec.name))
            .collect();
        for kind in [
            mesh_api::file_ref::FileKind::Secret,
            mesh_api::file_ref::FileKind::Config,
        ] {
            expected.extend(
                plan.files
                    .iter()
                    .filter(|f| {
                        f.kind == kind && f.source != mesh_compose::convert::FileSource::External
                    })
                    .map(|f| format!("Creating {kind} {}", f.spec.name)),
            );
        }
        expected.extend(
            plan.services
                .iter()
                .map(|s| format!("Creating service {}", s.name)),
        );
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{what}");

        // `service inspect` shows each spec as the file wrote it: the converted spec,
        // with its networks found by name.
        let networks: std::collections::BTreeMap<String, String> =
            ok(c.ctl_json(&["network", "ls", "--format", "json"]))
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| {
                    Some((n["Name"].as_str()?.to_owned(), n["ID"].as_str()?.to_owned()))
                })
                .collect();
        for planned in &plan.services {
            let mut want = planned.clone();
            for attachment in &mut want.task.networks {
                attachment.target = networks
                    .get(&attachment.target)
                    .unwrap_or_else(|| panic!("{what}: no network {}", attachment.target))
                    .clone();
            }
            let inspected = ok(c.ctl_json(&["service", "inspect", &planned.name]));
            let got: mesh_api::spec::ServiceSpec =
                serde_json::from_value(inspected[0]["spec"].clone())
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", planned.name));
            assert_eq!(got, want, "{what}: {}", planned.name);
        }
        let services = ok(c.ctl_json(&["stack", "services", real.stack, "--format", "json"]));
        let listed: Vec<&str> = services
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["Name"].as_str())
            .collect();
        let planned: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(listed, planned, "{what}");
        let secrets = names(&c, "secret");
        let configs = names(&c, "config");
        for f in &plan.files {
            let held = match f.kind {
                mesh_api::file_ref::FileKind::Secret => &secrets,
                mesh_api::file_ref::FileKind::Config => &configs,
            };
            assert!(
                held.contains(&f.spec.name),
                "{what}: no {} {}",
                f.kind,
                f.spec.name
            );
        }

        // Every service gets its tasks: a replicated one its replicas, a global one one
        // per node.
        let wanted: usize = plan
            .services
            .iter()
            .map(|s| s.replicas().map_or(c.nodes(), |n| n as usize))
            .sum();
        // Every task runs (the stand-ins serve whatever command the file gives), but
        // for the two services the file itself keeps from running here.
        let pending = real.pending_until_label.map(|(service, _)| service);
        let of = |t: &TaskRow, s: Option<&str>| {
            s.is_some_and(|s| t.name.rsplit_once('.').is_some_and(|(n, _)| n == s))
        };
        let settled = |tasks: &[TaskRow]| {
            let live: Vec<&TaskRow> = tasks
                .iter()
                .filter(|t| t.desired.eq_ignore_ascii_case("running"))
                .collect();
            live.len() >= wanted
                && live.iter().all(|t| {
                    of(t, real.unhealthy)
                        || if of(t, pending) {
                            t.state == "Pending"
                        } else {
                            t.state == "Running"
                        }
                })
                && real.unhealthy.is_none_or(|service| {
                    tasks
                        .iter()
                        .any(|t| of(t, Some(service)) && t.error.contains("unhealthy"))
                })
        };
        let show = |tasks: &[TaskRow]| {
            tasks
                .iter()
                .map(|t| {
                    format!(
                        "\n  {} {} {} {} {}",
                        t.name, t.node, t.desired, t.state, t.error
                    )
                })
                .collect::<String>()
        };
        let mut last = Vec::new();
        let waited = mesh_tests::poll_until(CONVERGE, &format!("{what}: tasks"), || {
            last = stack_tasks(&c, real.stack);
            Ok(settled(&last).then_some(()))
        });
        if let Err(e) = waited {
            panic!("{e:#}{}", show(&last));
        }
        if let Some((service, label)) = real.pending_until_label {
            ok(c.ctl(&["node", "update", "--label-add", label, "n1"]));
            ok(mesh_tests::poll_until(
                CONVERGE,
                &format!("{service} to run"),
                || {
                    let tasks = stack_tasks(&c, real.stack);
                    Ok(running(&tasks, service)
                        .first()
                        .is_some_and(|t| t.node == "n1")
                        .then_some(()))
                },
            ));
        }

        let out = ok(c.ctl_timeout(&["stack", "rm", real.stack], CONVERGE));
        assert!(out.contains("Removing service"), "{what}: {out}");
        assert!(stack_tasks(&c, real.stack).is_empty(), "{what}");
        // Externals are not the stack's: they stay.
        let left = names(&c, "network");
        for network in real.networks {
            assert!(left.contains(*network), "{what}: {network} was removed");
        }
        assert!(
            !left
                .iter()
                .any(|n| n.starts_with(&format!("{}_", real.stack))),
            "{what}: {left:?}"
        );
    }

    // An image no registry or local store can provide: its tasks are rejected with the
    // engine's "No such image" (the agent tried to pull it first), the rest deploys.
    let dir = c.topology().dir().join("no-such-image");
    ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));
    let file = write(
        &dir,
        "stack.yml",
        &format!(
            "services:\n  web:\n    image: {}\n    ports: [\"{PORT}:80\"]\n  broken:\n    \
             image: mesh-test/no-such-image:1\n",
            ok(mesh_tests::images::standin_image())
        ),
    );
    let out = ctl_env(
        &c,
        &[
            "stack",
            "deploy",
            "-d",
            "-c",
            &file.to_string_lossy(),
            "part",
        ],
        &[],
    );
    assert!(out.contains("Creating service part_broken"), "{out}");
    ok(c.wait_answered(3, PORT, Duration::from_secs(60)));
    let reason = "No such image: mesh-test/no-such-image:1";
    ok(mesh_tests::poll_until(
        CONVERGE,
        "the broken service's tasks to be rejected",
        || {
            let tasks = stack_tasks(&c, "part");
            Ok(tasks
                .iter()
                .any(|t| {
                    t.state == "Rejected"
                        && t.name.starts_with("part_broken.")
                        && t.error.contains(reason)
                })
                .then_some(()))
        },
    ));
    let table = ok(c.ctl(&["stack", "ps", "part", "--no-trunc"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("part_broken.1") && l.contains("Rejected") && l.contains(reason)),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("part_web.1") && l.contains("Running")),
        "{table}"
    );
    ok(c.ctl_timeout(&["stack", "rm", "part"], CONVERGE));
}

#[test]
fn a_stack_deployed_through_a_follower_survives_a_leader_change() {
    let _turn = turn();
    let mut c = ok(ManagedCluster::start(3, 3));
    let dir = c.topology().dir().join("stack-ha");
    ok(std::fs::create_dir_all(&dir).map_err(anyhow::Error::from));
    write(&dir, "pw.txt", "ha\n");
    let echo = ok(bin("task-echo")).to_string_lossy().to_string();
    let file = write(&dir, "ha.yml", &echo_stack(PORT));
    let file = file.to_string_lossy().to_string();

    // Through a follower, which forwards the deploy to the leader; then the leader dies.
    let leader = ok(c.leader());
    let follower = (1..=3).find(|k| *k != leader).unwrap_or(1);
    let host = c.api_addr(follower).to_string();
    let env = [("ECHO", echo.as_str()), ("MESH_HOST", host.as_str())];
    let out = ctl_env(&c, &["stack", "deploy", "-d", "-c", &file, "ha"], &env);
    assert!(out.contains("Creating service ha_web"), "{out}");
    ok(c.kill_manager(leader));

    // The new leader runs what the old one committed: the stack converges and serves.
    let env = [("ECHO", echo.as_str())];
    ok(mesh_tests::poll_until(
        CONVERGE,
        "ha_web to run under the new leader",
        || {
            // Right after the kill the survivors may still be electing a leader, and
            // refuse reads until they have one: not yet.
            let Ok(tasks) = try_stack_tasks(&c, "ha") else {
                return Ok(None);
            };
            Ok((running(&tasks, "ha_web").len() == 1).then_some(()))
        },
    ));
    let alive: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();
    for k in alive {
        ok(c.wait_answered(k, PORT, Duration::from_secs(60)));
    }
    // And takes the next deploy: the same file keeps the service, a changed one rolls
    // it, waiting for convergence.
    let out = ctl_env(&c, &["stack", "deploy", "-c", &file, "ha"], &env);
    assert!(out.contains("Keeping service ha_web"), "{out}");
    let more = write(
        &dir,
        "ha.yml",
        &echo_stack(PORT).replace(
            "    secrets: [pw]\n",
            "    secrets: [pw]\n    deploy:\n      replicas: 3\n",
        ),
    );
    let out = ctl_env(
        &c,
        &["stack", "deploy", "-c", &more.to_string_lossy(), "ha"],
        &env,
    );
    assert!(out.contains("Updating service ha_web (id: "), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    let tasks = stack_tasks(&c, "ha");
    assert_eq!(running(&tasks, "ha_web").len(), 3, "{tasks:?}");
}
