//! Unit tests of the whole loader: what a user writes, what comes out, and the words
//! and places of what is refused. The real-world stack files (`testdata/`, each with
//! its source in its header) must all load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::types::{Mount, Port};
use crate::{Environment, Error, File, Loaded, emit, load};

fn env(pairs: &[(&str, &str)]) -> Environment {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn file(name: &str, text: &str) -> File {
    File {
        name: name.into(),
        dir: PathBuf::from("/srv/app"),
        text: text.into(),
    }
}

/// Env files the tests know, by absolute path.
fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> std::io::Result<String> {
    let files: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
        .collect();
    move |p: &Path| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

fn load_with(text: &str, e: &Environment) -> Result<Loaded, Error> {
    load(&[file("app.yml", text)], e, &reader(&[]))
}

fn load_ok(text: &str) -> Loaded {
    load_with(text, &env(&[])).expect("the file loads")
}

fn load_err(text: &str) -> String {
    load_with(text, &env(&[]))
        .expect_err("the file is refused")
        .to_string()
}

#[test]
fn interpolation_substitutes_every_form_and_types_after() {
    let e = env(&[("TAG", "1.25"), ("N", "3"), ("EXT", "yes"), ("P", "8080")]);
    let loaded = load_with(
        "services:\n  web:\n    image: nginx:${TAG}\n    command: echo $$HOME ${MISSING:-dflt} ${EMPTY-unset}\n    ports:\n      - target: 80\n        published: ${P}\n    deploy:\n      replicas: ${N}\n      update_config:\n        parallelism: \"$N\"\nnetworks:\n  front:\n    external: $EXT\n",
        &e,
    )
    .unwrap();
    let web = &loaded.config.services["web"];
    assert_eq!(web.image.as_deref(), Some("nginx:1.25"));
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["echo", "$HOME", "dflt", "unset"]
    );
    assert_eq!(web.ports[0].published, Some(8080));
    let deploy = web.deploy.as_ref().unwrap();
    assert_eq!(deploy.replicas, Some(3));
    assert_eq!(deploy.update_config.as_ref().unwrap().parallelism, Some(3));
    assert!(loaded.config.networks["front"].external);
}

#[test]
fn interpolation_errors_name_file_line_and_key() {
    let err = load_with(
        "services:\n  web:\n    deploy:\n      replicas: 1\n    environment:\n      A: b\n    image: \"app:${TAG:?set it}\"\n",
        &env(&[]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "app.yml:7: services.web.image: required variable TAG is missing a value: set it"
    );
    let err = load_err("services:\n  web:\n    image: a\n    user: \"$1\"\n");
    assert!(
        err.starts_with("app.yml:4: services.web.user: invalid interpolation format"),
        "{err}"
    );
    let err = load_with(
        "services:\n  web:\n    image: a\n    deploy:\n      replicas: ${N}\n",
        &env(&[("N", "three")]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "app.yml:5: services.web.deploy.replicas: must be an integer"
    );
    // An unset variable without default is the empty string, as in docker.
    let loaded = load_ok("services:\n  web:\n    image: a$UNSET\n");
    assert_eq!(loaded.config.services["web"].image.as_deref(), Some("a"));
}

#[test]
fn wrong_types_name_the_line_and_key() {
    let text = "version: '3.8'\nservices:\n  web:\n    image: nginx\n    deploy:\n      mode: replicated\n\n\n\n\n\n      replicas: lots\n";
    assert_eq!(
        load_err(text),
        "app.yml:12: services.web.deploy.replicas: must be an integer"
    );
    assert_eq!(
        load_err("services:\n  web:\n    image: [a]\n"),
        "app.yml:3: services.web.image: must be a string"
    );
    assert_eq!(
        load_err("services:\n  web:\n    deploy:\n      mode: everywhere\n"),
        "app.yml:4: services.web.deploy.mode: must be one of replicated, global, replicated-job, global-job"
    );
    assert_eq!(
        load_err("services:\n  web:\n    stop_grace_period: 10 seconds\n"),
        "app.yml:3: services.web.stop_grace_period: invalid duration \"10 seconds\": expected e.g. 10s, 500ms, 1m30s"
    );
    let err = load_err("services:\n  web:\n    ports:\n      - \"80:80\"\n      - \"x:80\"\n");
    assert_eq!(err, "app.yml:5: services.web.ports.1: invalid port \"x\"");
    let err =
        load_err("services:\n  web:\n    deploy:\n      placement:\n        constraint: [a]\n");
    assert_eq!(
        err,
        "app.yml:5: services.web.deploy.placement: additional property constraint is not allowed"
    );
}

#[test]
fn bad_yaml_and_bad_top_levels_say_where() {
    let err = load_err("services:\n  web:\n    image: [nginx\n    user: x\n");
    assert!(err.starts_with("app.yml:"), "{err}");
    assert!(err.contains("yaml:"), "{err}");
    assert_eq!(
        load_err("- a\n- b\n"),
        "app.yml: Top-level object must be a mapping"
    );
    assert_eq!(load_err(""), "app.yml: Top-level object must be a mapping");
    assert_eq!(
        load_err("version: '2.1'\nservices: {}\n"),
        "app.yml:1: version: unsupported Compose file version: 2.1; use version 3.x or none"
    );
    load_ok("version: 3.8\nservices: {}\n");
    load_ok("version: '3'\nservices: {}\n");
    assert_eq!(
        load_err("services: {}\nfrobs: 1\n"),
        "app.yml:2: (root): additional property frobs is not allowed"
    );
    assert_eq!(
        load_err("services:\n  web:\n    image: a\n    colour: blue\n"),
        "app.yml:4: services.web: additional property colour is not allowed"
    );
    assert_eq!(
        load_err("services:\n  web: nginx\n"),
        "app.yml:2: services.web: must be a mapping"
    );
}

#[test]
fn ignored_keys_warn_once_each_and_forbidden_keys_are_refused() {
    let loaded = load_ok(
        "services:\n  web:\n    image: a\n    build: .\n    restart: always\n    depends_on: [db]\n  db:\n    image: b\n    build: ./db\n    container_name: x\n",
    );
    let keys: Vec<_> = loaded
        .ignored
        .iter()
        .map(|i| (i.service.as_str(), i.key.as_str(), i.line))
        .collect();
    assert!(keys.contains(&("web", "build", 4)), "{keys:?}");
    assert!(keys.contains(&("db", "container_name", 10)), "{keys:?}");
    assert_eq!(
        loaded.warning().unwrap(),
        "Ignoring unsupported options: build, container_name, depends_on, restart"
    );
    // `restart` stays for the fallback docker makes to it.
    assert_eq!(
        loaded.config.services["web"].restart.as_deref(),
        Some("always")
    );
    assert_eq!(load_ok("services:\n  web:\n    image: a\n").warning(), None);
    assert_eq!(
        load_err("services:\n  web:\n    image: a\n    mem_limit: 1g\n"),
        "app.yml:4: services.web.mem_limit: unsupported option: Set resource limits using deploy.resources"
    );
    assert!(
        load_err("services:\n  web:\n    extends: base\n").contains("`extends` is not implemented")
    );
}

#[test]
fn both_syntaxes_of_everything_type_to_one_form() {
    let loaded = load_ok(
        r#"
services:
  web:
    image: nginx
    entrypoint: /bin/sh -c "exec nginx"
    command: ["-g", "daemon off;"]
    environment: [A=1, B, C=]
    labels: [com.x=y]
    ports:
      - "8080:80"
      - "127.0.0.1:5353:53/udp"
      - 9000
      - target: 443
        published: 8443
        mode: host
        protocol: tcp
    networks:
      front:
        aliases: [www]
      back:
    secrets:
      - db_pw
      - source: tls
        target: cert.pem
        uid: "100"
        mode: 0440
    configs:
      - source: conf
        target: /etc/nginx.conf
    volumes:
      - data:/var/lib/data
      - ./html:/usr/share/nginx/html:ro
      - type: tmpfs
        target: /tmp
        tmpfs:
          size: 64M
    healthcheck:
      test: curl -f http://localhost
      interval: 1m30s
      start_period: 10s
      retries: 3
    stop_grace_period: 5s
    extra_hosts: ["db:10.0.0.2"]
    dns: 1.1.1.1
    cap_add: [NET_ADMIN]
    deploy:
      mode: replicated
      replicas: 2
      endpoint_mode: dnsrr
      labels: {tier: front}
      placement:
        constraints: [node.role == worker]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 1
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 128M}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
      update_config: {parallelism: 1, delay: 10s, order: start-first, failure_action: rollback, max_failure_ratio: 0.2, monitor: 30s}
      rollback_config: {parallelism: 0}
  status:
    image: busybox
    environment: {X: 1, Y: true, Z: null, HOME: }
    healthcheck:
      disable: true
networks:
  front:
    driver: overlay
    attachable: true
    ipam:
      config:
        - subnet: 10.9.0.0/24
  back:
    external:
      name: shared_back
secrets:
  db_pw:
    file: ./secrets/db.txt
  tls:
    external: true
configs:
  conf:
    file: /etc/conf
volumes:
  data:
    driver: local
    labels: [a=b]
"#,
    );
    let c = &loaded.config;
    let web = &c.services["web"];
    assert_eq!(
        web.entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c", "exec nginx"]
    );
    assert_eq!(web.command.as_deref().unwrap(), ["-g", "daemon off;"]);
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"], None);
    assert_eq!(web.environment["C"].as_deref(), Some(""));
    assert_eq!(web.labels["com.x"], "y");
    let port = |published, target, mode: &str, protocol: &str| Port {
        mode: mode.into(),
        target,
        published,
        protocol: protocol.into(),
    };
    assert_eq!(
        web.ports,
        [
            port(Some(8080), 80, "ingress", "tcp"),
            port(Some(5353), 53, "ingress", "udp"),
            port(None, 9000, "ingress", "tcp"),
            port(Some(8443), 443, "host", "tcp"),
        ]
    );
    assert_eq!(web.networks["front"].aliases, ["www"]);
    assert!(web.networks["back"].aliases.is_empty());
    assert_eq!(web.secrets[0].source, "db_pw");
    assert_eq!(web.secrets[0].target, None);
    assert_eq!(web.secrets[1].target.as_deref(), Some("cert.pem"));
    assert_eq!(web.secrets[1].uid.as_deref(), Some("100"));
    assert_eq!(web.secrets[1].mode, Some(0o440));
    assert_eq!(web.configs[0].target.as_deref(), Some("/etc/nginx.conf"));
    assert_eq!(
        web.volumes[0],
        Mount {
            kind: "volume".into(),
            source: Some("data".into()),
            target: "/var/lib/data".into(),
            ..Mount::default()
        }
    );
    assert_eq!(web.volumes[1].kind, "bind");
    assert_eq!(web.volumes[1].source.as_deref(), Some("/srv/app/html"));
    assert!(web.volumes[1].read_only);
    assert_eq!(
        web.volumes[2]
            .tmpfs
            .as_ref()
            .unwrap()
            .size
            .as_ref()
            .unwrap()
            .bytes(),
        64 << 20
    );
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test.as_deref().unwrap(),
        ["CMD-SHELL", "curl -f http://localhost"]
    );
    assert_eq!(hc.interval.as_ref().unwrap().millis(), 90_000);
    assert_eq!(hc.retries, Some(3));
    assert_eq!(web.stop_grace_period.as_ref().unwrap().millis(), 5_000);
    assert_eq!(web.extra_hosts, ["db:10.0.0.2"]);
    assert_eq!(web.dns, ["1.1.1.1"]);
    let d = web.deploy.as_ref().unwrap();
    assert_eq!(d.endpoint_mode.as_deref(), Some("dnsrr"));
    assert_eq!(d.labels["tier"], "front");
    let placement = d.placement.as_ref().unwrap();
    assert_eq!(placement.constraints, ["node.role == worker"]);
    assert_eq!(placement.preferences[0].spread, "node.labels.zone");
    assert_eq!(placement.max_replicas_per_node, Some(1));
    let resources = d.resources.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(limits.cpus, Some(0.5));
    assert_eq!(limits.memory.as_ref().unwrap().bytes(), 512 << 20);
    assert_eq!(resources.reservations.as_ref().unwrap().cpus, Some(0.25));
    let restart = d.restart_policy.as_ref().unwrap();
    assert_eq!(restart.condition.as_deref(), Some("on-failure"));
    assert_eq!(restart.window.as_ref().unwrap().millis(), 120_000);
    let update = d.update_config.as_ref().unwrap();
    assert_eq!(update.order.as_deref(), Some("start-first"));
    assert_eq!(update.max_failure_ratio, Some(0.2));
    assert_eq!(d.rollback_config.as_ref().unwrap().parallelism, Some(0));
    let status = &c.services["status"];
    assert_eq!(status.environment["X"].as_deref(), Some("1"));
    assert_eq!(status.environment["Y"].as_deref(), Some("true"));
    assert_eq!(status.environment["Z"], None);
    assert_eq!(status.healthcheck.as_ref().unwrap().disable, Some(true));
    assert!(c.networks["front"].attachable.unwrap());
    assert_eq!(
        c.networks["front"].ipam.as_ref().unwrap().config[0]
            .subnet
            .as_deref(),
        Some("10.9.0.0/24")
    );
    assert!(c.networks["back"].external);
    assert_eq!(c.networks["back"].name.as_deref(), Some("shared_back"));
    assert_eq!(
        c.secrets["db_pw"].file.as_deref(),
        Some("/srv/app/secrets/db.txt")
    );
    assert!(c.secrets["tls"].external);
    assert_eq!(c.configs["conf"].file.as_deref(), Some("/etc/conf"));
    assert_eq!(c.volumes["data"].labels["a"], "b");
}

#[test]
fn names_without_values_come_from_the_environment() {
    let loaded = load_with(
        "services:\n  web:\n    image: a\n    environment: [HOME, GONE]\n",
        &env(&[("HOME", "/root")]),
    )
    .unwrap();
    let e = &loaded.config.services["web"].environment;
    assert_eq!(e["HOME"].as_deref(), Some("/root"));
    assert_eq!(e["GONE"], None);
}

#[test]
fn env_files_fold_into_environment_which_wins() {
    let files = [
        (
            "/srv/app/common.env",
            "# shared\nA=from-file\nB=file b\n\nFROM_ENV\n",
        ),
        ("/srv/app/conf/more.env", "C=c=d\n"),
    ];
    let loaded = load(
        &[file(
            "app.yml",
            "services:\n  web:\n    image: a\n    env_file: [common.env, ./conf/more.env]\n    environment:\n      A: from-environment\n",
        )],
        &env(&[("FROM_ENV", "yes")]),
        &reader(&files),
    )
    .unwrap();
    let web = &loaded.config.services["web"];
    assert!(web.env_file.is_empty());
    let e: Vec<_> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref().unwrap()))
        .collect();
    assert_eq!(
        e,
        [
            ("A", "from-environment"),
            ("B", "file b"),
            ("C", "c=d"),
            ("FROM_ENV", "yes")
        ]
    );
    let err = load(
        &[file(
            "app.yml",
            "services:\n  web:\n    image: a\n    env_file: missing.env\n",
        )],
        &env(&[]),
        &reader(&files),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "app.yml:4: services.web.env_file: /srv/app/missing.env: no such file"
    );
    let err = load(
        &[file(
            "app.yml",
            "services:\n  web:\n    image: a\n    env_file: bad.env\n",
        )],
        &env(&[]),
        &reader(&[("/srv/app/bad.env", "A B=1\n")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("variable 'A B' contains whitespaces"), "{err}");
}

#[test]
fn anchors_merge_keys_and_extensions() {
    let loaded = load_ok(
        r"
version: '3.7'
x-defaults: &defaults
  image: app:1
  deploy:
    replicas: 2
  logging:
    options:
      max-size: 1m
x-mesh-note: kept
services:
  a:
    <<: *defaults
    x-mesh-runtime: process
  b:
    <<: *defaults
    image: app:2
",
    );
    let c = &loaded.config;
    assert_eq!(c.services["a"].image.as_deref(), Some("app:1"));
    assert_eq!(c.services["b"].image.as_deref(), Some("app:2"));
    assert_eq!(c.services["b"].deploy.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        c.services["a"].extensions["x-mesh-runtime"],
        serde_json::json!("process")
    );
    assert_eq!(c.extensions["x-mesh-note"], serde_json::json!("kept"));
    assert!(c.extensions.contains_key("x-defaults"));
}

#[test]
fn files_merge_in_order_as_docker_merges() {
    let base = file(
        "base.yml",
        r"
version: '3.8'
services:
  web:
    image: web:1
    command: [serve, --old]
    environment: {A: '1', B: '1'}
    labels: [x=1]
    dns: [1.1.1.1]
    ports: ['80:80', '443:443']
    secrets: [s1, {source: s2, target: old}]
    volumes: ['data:/data', '/etc:/host-etc:ro']
    networks:
      front:
        aliases: [old]
    deploy:
      replicas: 1
      resources:
        limits: {memory: 64M}
    x-mesh-runtime: docker
  db:
    image: db:1
networks:
  front:
    driver: overlay
secrets:
  s1: {file: /s1}
  s2: {file: /s2}
",
    );
    let over = file(
        "prod.yml",
        r"
services:
  web:
    image: web:2
    command: [serve]
    environment: {B: '2', C: '3'}
    dns: [8.8.8.8]
    ports: ['80:80', '8080:8080']
    secrets: [{source: s2, target: new}]
    volumes: ['other:/data']
    networks:
      front:
        aliases: [new]
    deploy:
      replicas: 3
      resources:
        limits: {cpus: '1'}
    x-mesh-runtime: process
  cache:
    image: redis
networks:
  front:
    attachable: true
",
    );
    let loaded = load(&[base, over], &env(&[]), &reader(&[])).unwrap();
    let c = &loaded.config;
    assert_eq!(
        c.services.keys().collect::<Vec<_>>(),
        ["cache", "db", "web"]
    );
    let web = &c.services["web"];
    assert_eq!(web.image.as_deref(), Some("web:2"));
    assert_eq!(web.command.as_deref().unwrap(), ["serve"]);
    let e: Vec<_> = web
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap()))
        .collect();
    assert_eq!(e, ["A=1", "B=2", "C=3"]);
    assert_eq!(web.labels["x"], "1");
    assert_eq!(web.dns, ["1.1.1.1", "8.8.8.8"]);
    let published: Vec<_> = web.ports.iter().map(|p| p.published.unwrap()).collect();
    assert_eq!(published, [80, 443, 8080]);
    assert_eq!(web.secrets.len(), 2);
    assert_eq!(web.secrets[1].target.as_deref(), Some("new"));
    let targets: Vec<_> = web
        .volumes
        .iter()
        .map(|v| (v.target.as_str(), v.source.as_deref().unwrap()))
        .collect();
    assert_eq!(targets, [("/data", "other"), ("/host-etc", "/etc")]);
    assert_eq!(web.networks["front"].aliases, ["new"]);
    let deploy = web.deploy.as_ref().unwrap();
    assert_eq!(deploy.replicas, Some(3));
    let limits = deploy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits.cpus, Some(1.0));
    assert_eq!(limits.memory.as_ref().unwrap().bytes(), 64 << 20);
    assert_eq!(
        web.extensions["x-mesh-runtime"],
        serde_json::json!("process")
    );
    // Top-level objects are replaced key by key, not merged.
    assert_eq!(c.networks["front"].driver, None);
    assert_eq!(c.networks["front"].attachable, Some(true));
    assert_eq!(c.version.as_deref(), Some("3.8"));
}

#[test]
fn errors_in_a_later_file_name_that_file() {
    let err = load(
        &[
            file("a.yml", "services:\n  web:\n    image: a\n"),
            file(
                "b.yml",
                "services:\n  web:\n    deploy:\n      replicas: x\n",
            ),
        ],
        &env(&[]),
        &reader(&[]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.yml:4: services.web.deploy.replicas: must be an integer"
    );
}

// ---- the real-world stack files ----

pub(crate) fn real(name: &str) -> &'static str {
    match name {
        "voting" => include_str!("testdata/dockersamples_example-voting-app__docker-stack.yml"),
        "dogvscat" => include_str!("testdata/BretFisher_dogvscat__stack-voting.yml"),
        "secrets" => include_str!(
            "testdata/BretFisher_udemy-docker-mastery__swarm-secrets-assignment-1_answer_docker-compose.yml"
        ),
        "swarmprom" => include_str!("testdata/stefanprodan_swarmprom__docker-compose.yml"),
        "portainer" => include_str!("testdata/tiangolo_dockerswarm.rocks__docs_portainer.yml"),
        "prometheus" => include_str!("testdata/vegasbrianc_prometheus__docker-stack.yml"),
        _ => unreachable!("a known file"),
    }
}

pub(crate) const REAL: &[&str] = &[
    "voting",
    "dogvscat",
    "secrets",
    "swarmprom",
    "portainer",
    "prometheus",
];

/// The environment and env files the real stacks need (portainer's `DOMAIN` is
/// required; vegasbrianc's grafana reads `./grafana/config.monitoring`).
pub(crate) fn load_real(name: &str) -> Loaded {
    let f = File {
        name: format!("{name}.yml"),
        dir: PathBuf::from("/stacks"),
        text: real(name).to_owned(),
    };
    load(
        &[f],
        &env(&[("DOMAIN", "portainer.example.com")]),
        &reader(&[(
            "/stacks/grafana/config.monitoring",
            "GF_SECURITY_ADMIN_PASSWORD=foobar\nGF_USERS_ALLOW_SIGN_UP=false\n",
        )]),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn names<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

fn replicas(l: &Loaded, service: &str) -> Option<u64> {
    l.config.services[service].deploy.as_ref()?.replicas
}

fn mode(l: &Loaded, service: &str) -> Option<String> {
    l.config.services[service].deploy.as_ref()?.mode.clone()
}

fn published(l: &Loaded, service: &str) -> Vec<(u16, u16)> {
    l.config.services[service]
        .ports
        .iter()
        .map(|p| (p.published.unwrap_or(0), p.target))
        .collect()
}

fn networks<'a>(l: &'a Loaded, service: &str) -> Vec<&'a str> {
    names(&l.config.services[service].networks)
}

#[test]
fn real_world_voting_app() {
    let l = load_real("voting");
    assert_eq!(
        names(&l.config.services),
        ["db", "redis", "result", "visualizer", "vote", "worker"]
    );
    assert_eq!(replicas(&l, "vote"), Some(2));
    assert_eq!(replicas(&l, "worker"), Some(1));
    assert_eq!(mode(&l, "worker").as_deref(), Some("replicated"));
    assert_eq!(published(&l, "vote"), [(5000, 80)]);
    assert_eq!(published(&l, "result"), [(5001, 80)]);
    assert_eq!(published(&l, "visualizer"), [(8080, 8080)]);
    assert_eq!(networks(&l, "worker"), ["backend", "frontend"]);
    assert_eq!(names(&l.config.networks), ["backend", "frontend"]);
    assert_eq!(names(&l.config.volumes), ["db-data"]);
    let worker = l.config.services["worker"].deploy.as_ref().unwrap();
    assert_eq!(worker.labels["APP"], "VOTING");
    let restart = worker.restart_policy.as_ref().unwrap();
    assert_eq!(restart.max_attempts, Some(3));
    assert_eq!(restart.window.as_ref().unwrap().millis(), 120_000);
    assert_eq!(
        l.config.services["visualizer"]
            .stop_grace_period
            .as_ref()
            .unwrap()
            .millis(),
        90_000
    );
    assert_eq!(
        l.config.services["db"]
            .deploy
            .as_ref()
            .unwrap()
            .placement
            .as_ref()
            .unwrap()
            .constraints,
        ["node.role == manager"]
    );
    assert_eq!(
        l.warning().unwrap(),
        "Ignoring unsupported options: depends_on"
    );
}

#[test]
fn real_world_dogvscat() {
    let l = load_real("dogvscat");
    assert_eq!(
        names(&l.config.services),
        ["db", "redis", "result", "vote", "worker"]
    );
    assert_eq!(replicas(&l, "vote"), Some(2));
    assert_eq!(replicas(&l, "redis"), None);
    let redis = &l.config.services["redis"];
    assert_eq!(
        redis.command.as_deref().unwrap(),
        ["redis-server", "--appendonly", "yes"]
    );
    assert_eq!(
        redis.deploy.as_ref().unwrap().endpoint_mode.as_deref(),
        Some("dnsrr")
    );
    // The merge key brought the shared logging options into every service.
    assert_eq!(redis.logging.as_ref().unwrap().options["max-size"], "1m");
    assert_eq!(networks(&l, "vote"), ["frontend", "proxy"]);
    assert!(l.config.networks["proxy"].external);
    assert_eq!(
        l.config.services["result"].deploy.as_ref().unwrap().labels["traefik.http.services.result.loadbalancer.server.port"],
        "80"
    );
    assert_eq!(l.config.volumes["db-data"].driver.as_deref(), Some("local"));
    assert_eq!(l.config.volumes["db-data"].driver_opts["size"], "1");
    assert!(l.config.extensions.contains_key("x-default-opts"));
    assert_eq!(l.warning(), None);
}

#[test]
fn real_world_secrets_assignment() {
    let l = load_real("secrets");
    assert_eq!(names(&l.config.services), ["drupal", "postgres"]);
    assert_eq!(published(&l, "drupal"), [(8080, 80)]);
    assert_eq!(l.config.services["postgres"].secrets[0].source, "psql-pw");
    assert!(l.config.secrets["psql-pw"].external);
    assert_eq!(l.config.volumes.len(), 5);
    assert_eq!(
        l.config.services["postgres"].environment["POSTGRES_PASSWORD_FILE"].as_deref(),
        Some("/run/secrets/psql-pw")
    );
}

#[test]
fn real_world_swarmprom() {
    let l = load_real("swarmprom");
    assert_eq!(
        names(&l.config.services),
        [
            "alertmanager",
            "caddy",
            "cadvisor",
            "dockerd-exporter",
            "grafana",
            "node-exporter",
            "prometheus",
            "unsee"
        ]
    );
    for global in ["cadvisor", "dockerd-exporter", "node-exporter"] {
        assert_eq!(mode(&l, global).as_deref(), Some("global"), "{global}");
    }
    assert_eq!(replicas(&l, "grafana"), Some(1));
    assert_eq!(
        published(&l, "caddy"),
        [(3000, 3000), (9090, 9090), (9093, 9093), (9094, 9094)]
    );
    assert_eq!(networks(&l, "caddy"), ["net"]);
    assert_eq!(l.config.networks["net"].attachable, Some(true));
    assert_eq!(
        names(&l.config.configs),
        ["caddy_config", "dockerd_config", "node_rules", "task_rules"]
    );
    assert_eq!(
        l.config.configs["caddy_config"].file.as_deref(),
        Some("/stacks/caddy/Caddyfile")
    );
    let prom = &l.config.services["prometheus"];
    assert_eq!(prom.configs.len(), 2);
    assert_eq!(
        prom.command.as_deref().unwrap()[2],
        "--storage.tsdb.retention=24h"
    );
    let limits = prom.deploy.as_ref().unwrap().resources.as_ref().unwrap();
    assert_eq!(
        limits
            .limits
            .as_ref()
            .unwrap()
            .memory
            .as_ref()
            .unwrap()
            .bytes(),
        2048 << 20
    );
    // `$$` is a literal dollar; Swarm's own templates stay as written.
    let node_exporter = &l.config.services["node-exporter"];
    assert!(
        node_exporter.command.as_deref().unwrap()[3].ends_with("($|/)"),
        "{:?}",
        node_exporter.command
    );
    assert_eq!(
        node_exporter.environment["NODE_ID"].as_deref(),
        Some("{{.Node.ID}}")
    );
    let hc = l.config.services["caddy"].healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test.as_deref().unwrap(),
        ["CMD", "curl", "-f", "http://localhost:3000"]
    );
    assert_eq!(
        l.config.services["grafana"].environment["GF_SECURITY_ADMIN_USER"].as_deref(),
        Some("admin")
    );
}

#[test]
fn real_world_portainer_needs_its_domain() {
    let l = load_real("portainer");
    assert_eq!(names(&l.config.services), ["agent", "portainer"]);
    assert_eq!(mode(&l, "agent").as_deref(), Some("global"));
    assert_eq!(
        networks(&l, "portainer"),
        ["agent-network", "traefik-public"]
    );
    assert!(l.config.networks["traefik-public"].external);
    assert_eq!(l.config.networks["agent-network"].attachable, Some(true));
    let labels = &l.config.services["portainer"]
        .deploy
        .as_ref()
        .unwrap()
        .labels;
    assert_eq!(
        labels["traefik.http.routers.portainer-http.rule"],
        "Host(`portainer.example.com`)"
    );
    assert_eq!(
        l.config.services["portainer"].command.as_deref().unwrap(),
        ["-H", "tcp://tasks.agent:9001", "--tlsskipverify"]
    );
    let err = load_with(real("portainer"), &env(&[])).unwrap_err();
    assert_eq!(
        err.path.as_deref(),
        Some("services.portainer.deploy.labels.3")
    );
    assert!(
        err.to_string()
            .ends_with("required variable DOMAIN is missing a value: Variable not set"),
        "{err}"
    );
    assert_eq!(err.line, Some(40));
}

#[test]
fn real_world_prometheus() {
    let l = load_real("prometheus");
    assert_eq!(
        names(&l.config.services),
        [
            "alertmanager",
            "cadvisor",
            "grafana",
            "node-exporter",
            "prometheus"
        ]
    );
    assert_eq!(mode(&l, "cadvisor").as_deref(), Some("global"));
    assert_eq!(published(&l, "prometheus"), [(9090, 9090)]);
    assert_eq!(published(&l, "grafana"), [(3000, 3000)]);
    let grafana = &l.config.services["grafana"];
    assert_eq!(grafana.user.as_deref(), Some("472"));
    assert_eq!(
        grafana.environment["GF_USERS_ALLOW_SIGN_UP"].as_deref(),
        Some("false")
    );
    assert_eq!(
        grafana.volumes[1].source.as_deref(),
        Some("/stacks/grafana/provisioning")
    );
    assert!(!l.config.services["cadvisor"].volumes[1].read_only);
    assert_eq!(names(&l.config.networks), ["monitor-net"]);
    assert_eq!(
        l.warning().unwrap(),
        "Ignoring unsupported options: depends_on"
    );
}

#[test]
fn printed_config_loads_back_to_the_same_model() {
    for name in REAL {
        let loaded = load_real(name);
        let text = emit::to_yaml(&loaded.config);
        let again = load(
            &[File {
                name: "printed.yml".into(),
                dir: PathBuf::from("/elsewhere"),
                text: text.clone(),
            }],
            &env(&[]),
            &reader(&[]),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(again.config, loaded.config, "{name}:\n{text}");
    }
}

/// docker/cli's own `full-example.yml`, checked against what its
/// `testdata/full-example.yaml.golden` holds (the keys swarm honours).
#[test]
fn docker_full_example_loads_as_docker_loads_it() {
    let f = File {
        name: "full-example.yml".into(),
        dir: PathBuf::from("/foo"),
        text: include_str!("testdata/docker-cli_full-example.yml").to_owned(),
    };
    let l = load(
        &[f],
        &env(&[("HOME", "/bar"), ("QUX", "qux_from_environment")]),
        &reader(&[
            (
                "/foo/example1.env",
                include_str!("testdata/docker-cli_example1.env"),
            ),
            (
                "/foo/example2.env",
                include_str!("testdata/docker-cli_example2.env"),
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        l.warning().unwrap(),
        "Ignoring unsupported options: build, cgroup_parent, container_name, depends_on, devices, domainname, expose, external_links, ipc, links, mac_address, network_mode, pid, privileged, restart, security_opt, tmpfs"
    );
    let c = &l.config;
    assert_eq!(c.version.as_deref(), Some("3.13"));
    let foo = &c.services["foo"];
    assert_eq!(foo.image.as_deref(), Some("redis"));
    assert_eq!(
        foo.command.as_deref().unwrap(),
        ["bundle", "exec", "thin", "-p", "3000"]
    );
    assert_eq!(
        foo.entrypoint.as_deref().unwrap(),
        ["/code/entrypoint.sh", "-p", "3000"]
    );
    let e: Vec<_> = foo
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("<unset>")))
        .collect();
    assert_eq!(
        e,
        [
            "BAR=bar_from_env_file_2",
            "BAZ=baz_from_service_def",
            "FOO=foo_from_env_file",
            "QUX=qux_from_environment"
        ]
    );
    let ports: Vec<(Option<u16>, u16)> =
        foo.ports.iter().map(|p| (p.published, p.target)).collect();
    let mut expected: Vec<(Option<u16>, u16)> = (3000..=3005).map(|t| (None, t)).collect();
    expected.extend([
        (Some(8000), 8000),
        (Some(9090), 8080),
        (Some(9091), 8081),
        (Some(49100), 22),
        (Some(8001), 8001),
    ]);
    expected.extend((5000..=5010).map(|p| (Some(p), p)));
    assert_eq!(ports, expected);
    assert!(
        foo.ports
            .iter()
            .all(|p| p.mode == "ingress" && p.protocol == "tcp")
    );
    assert_eq!(foo.configs[1].mode, Some(288));
    assert_eq!(foo.secrets[1].target.as_deref(), Some("my_secret"));
    assert_eq!(foo.secrets[1].gid.as_deref(), Some("103"));
    assert_eq!(foo.labels["com.example.number"], "42");
    assert_eq!(foo.labels["com.example.empty-label"], "");
    assert_eq!(foo.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(foo.networks["some-network"].aliases, ["alias1", "alias3"]);
    assert_eq!(
        foo.networks["other-network"].ipv4_address.as_deref(),
        Some("172.16.238.10")
    );
    assert_eq!(foo.extra_hosts[2], "host.docker.internal:host-gateway");
    let hc = foo.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test.as_deref().unwrap(),
        ["CMD-SHELL", "echo \"hello world\""]
    );
    assert_eq!(hc.start_period.as_ref().unwrap().millis(), 15_000);
    assert_eq!(foo.stop_signal.as_deref(), Some("SIGUSR1"));
    assert_eq!(foo.restart.as_deref(), Some("always"));
    assert_eq!(foo.ulimits.len(), 2);
    let volumes: Vec<(&str, Option<&str>, &str, bool)> = foo
        .volumes
        .iter()
        .map(|v| {
            (
                v.kind.as_str(),
                v.source.as_deref(),
                v.target.as_str(),
                v.read_only,
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            ("volume", None, "/var/lib/mysql", false),
            ("bind", Some("/opt/data"), "/var/lib/mysql", false),
            ("bind", Some("/foo"), "/code", false),
            ("bind", Some("/foo/static"), "/var/www/html", false),
            ("bind", Some("/bar/configs"), "/etc/configs/", true),
            ("volume", Some("datavolume"), "/var/lib/mysql", false),
            ("bind", Some("/foo/opt"), "/opt", false),
            ("tmpfs", None, "/opt", false),
            ("cluster", Some("group:mygroup"), "/srv", false),
        ]
    );
    let d = foo.deploy.as_ref().unwrap();
    assert_eq!(d.replicas, Some(6));
    assert_eq!(d.endpoint_mode.as_deref(), Some("dnsrr"));
    let r = d.resources.as_ref().unwrap();
    assert_eq!(
        r.limits.as_ref().unwrap().memory.as_ref().unwrap().bytes(),
        52_428_800
    );
    assert_eq!(r.limits.as_ref().unwrap().pids, Some(100));
    assert_eq!(r.reservations.as_ref().unwrap().generic_resources.len(), 2);
    assert_eq!(d.placement.as_ref().unwrap().max_replicas_per_node, Some(5));
    assert_eq!(
        d.rollback_config.as_ref().unwrap().order.as_deref(),
        Some("start-first")
    );
    assert_eq!(foo.extensions["x-foo"], serde_json::json!("bar"));
    assert_eq!(
        names(&c.networks),
        [
            "external-network",
            "other-external-network",
            "other-network",
            "some-network"
        ]
    );
    assert_eq!(
        c.networks["external-network"].name.as_deref(),
        Some("external-network")
    );
    assert_eq!(
        c.networks["other-external-network"].name.as_deref(),
        Some("my-cool-network")
    );
    assert_eq!(c.networks["other-network"].driver_opts["baz"], "1");
    assert_eq!(
        c.networks["other-network"]
            .ipam
            .as_ref()
            .unwrap()
            .config
            .len(),
        2
    );
    assert_eq!(
        c.volumes["other-external-volume"].name.as_deref(),
        Some("my-cool-volume")
    );
    assert_eq!(
        c.volumes["external-volume3"].name.as_deref(),
        Some("this-is-volume3")
    );
    assert_eq!(
        c.configs["config1"].file.as_deref(),
        Some("/foo/config_data")
    );
    assert_eq!(c.configs["config2"].name.as_deref(), Some("my_config"));
    assert!(c.secrets["secret3"].external);
    assert_eq!(c.secrets["secret4"].name.as_deref(), Some("bar"));
    assert_eq!(
        c.extensions["x-nested"],
        serde_json::json!({"bar": "baz", "foo": "bar"})
    );
}
