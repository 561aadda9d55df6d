//! Unit tests of the conversion: each rule on small files, then every real-world stack
//! file of `testdata/`, converted and checked for what a deploy of it creates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_api::file_ref::{FileKind, FileRef};
use mesh_api::mount::MountKind;
use mesh_api::spec::{
    EndpointMode, FailureAction, Protocol, PublishMode, RestartCondition, RuntimeKind, ServiceMode,
    ServiceSpec, UpdateOrder,
};

use super::{FileSource, LABEL_IMAGE, LABEL_NAMESPACE, StackPlan, convert};
use crate::tests::{REAL, load_real};
use crate::{Config, File, load};

fn config(text: &str) -> Config {
    let f = File {
        name: "app.yml".into(),
        dir: PathBuf::from("/srv/app"),
        text: text.into(),
    };
    let no_env_files = |_: &Path| -> std::io::Result<String> { unreachable!("no env_file") };
    load(&[f], &BTreeMap::new(), &no_env_files)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// Secret and config files the tests know, by absolute path.
fn files(known: &[(&str, &str)]) -> impl Fn(&Path) -> std::io::Result<Vec<u8>> {
    let known: BTreeMap<PathBuf, Vec<u8>> = known
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec()))
        .collect();
    move |p: &Path| {
        known.get(p).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            )
        })
    }
}

fn plan(text: &str) -> StackPlan {
    convert("app", &config(text), &files(&[])).unwrap_or_else(|e| panic!("{e}"))
}

fn plan_err(text: &str) -> String {
    convert("app", &config(text), &files(&[]))
        .expect_err("the stack is refused")
        .to_string()
}

fn service<'a>(p: &'a StackPlan, name: &str) -> &'a ServiceSpec {
    p.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn names(p: &StackPlan) -> Vec<&str> {
    p.services.iter().map(|s| s.name.as_str()).collect()
}

fn network_names(p: &StackPlan) -> Vec<&str> {
    p.networks.iter().map(|n| n.spec.name.as_str()).collect()
}

/// A service's attachments as `network:alias,alias`.
fn attachments(s: &ServiceSpec) -> Vec<String> {
    s.task
        .networks
        .iter()
        .map(|n| format!("{}:{}", n.target, n.aliases.join(",")))
        .collect()
}

/// A service's ports as docker prints them, with the mode.
fn ports(s: &ServiceSpec) -> Vec<String> {
    s.endpoint
        .ports
        .iter()
        .map(|p| format!("{p} {}", p.mode))
        .collect()
}

fn mounts(s: &ServiceSpec) -> Vec<String> {
    s.task.mounts.iter().map(ToString::to_string).collect()
}

fn constraints(s: &ServiceSpec) -> Vec<String> {
    s.constraints
        .iter()
        .map(|c| {
            let key = match &c.key {
                mesh_api::spec::ConstraintKey::Role => "node.role".to_owned(),
                mesh_api::spec::ConstraintKey::Hostname => "node.hostname".to_owned(),
                mesh_api::spec::ConstraintKey::Id => "node.id".to_owned(),
                mesh_api::spec::ConstraintKey::Label(l) => format!("node.labels.{l}"),
            };
            format!("{key}{}{}", if c.equal { "==" } else { "!=" }, c.value)
        })
        .collect()
}

fn refs(refs: &[FileRef]) -> Vec<String> {
    refs.iter()
        .map(|r| {
            format!(
                "{}->{} {}:{} {:o}",
                r.source, r.target, r.uid, r.gid, r.mode
            )
        })
        .collect()
}

const MIB: u64 = 1024 * 1024;

// ---- naming, labels, networks ----

#[test]
fn objects_are_scoped_labelled_and_the_default_network_is_created_when_used() {
    let p = plan(
        "services:\n  web:\n    image: nginx:1.27\n  db:\n    image: postgres\n    networks:\n      back:\n        aliases: [database]\nnetworks:\n  back:\n    labels: {tier: data}\n  unused: {}\n",
    );
    assert_eq!(p.namespace, "app");
    assert_eq!(names(&p), ["app_db", "app_web"]);
    assert_eq!(network_names(&p), ["app_back", "app_default"]);
    assert_eq!(p.networks[0].key, "back");
    let back = &p.networks[0].spec;
    assert_eq!(back.driver, "overlay");
    assert_eq!(
        back.labels,
        BTreeMap::from([
            (LABEL_NAMESPACE.to_owned(), "app".to_owned()),
            ("tier".to_owned(), "data".to_owned())
        ])
    );
    assert_eq!(p.networks[1].spec.labels[LABEL_NAMESPACE], "app");
    let web = service(&p, "app_web");
    assert_eq!(web.labels[LABEL_NAMESPACE], "app");
    assert_eq!(web.labels[LABEL_IMAGE], "nginx:1.27");
    assert_eq!(web.task.runtime, RuntimeKind::Docker);
    assert_eq!(web.task.image, "nginx:1.27");
    // Every attachment has the short name as an alias, after the file's own.
    assert_eq!(attachments(web), ["app_default:web"]);
    assert_eq!(attachments(service(&p, "app_db")), ["app_back:database,db"]);
    assert!(p.external_networks.is_empty() && p.files.is_empty() && p.warnings.is_empty());

    // Without a service on it, no default network.
    let p = plan("services:\n  web:\n    image: nginx\n    networks: [back]\nnetworks:\n  back:\n");
    assert_eq!(network_names(&p), ["app_back"]);
}

#[test]
fn names_and_externals_are_used_as_given_and_attachments_sorted() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    networks: [zeta, alpha, outside, default]\nnetworks:\n  zeta:\n    name: shared-zeta\n    attachable: true\n    internal: true\n    ipam:\n      config:\n        - subnet: 10.0.9.0/24\n  alpha:\n  outside:\n    external: true\n    name: proxy\n  default:\n    external: true\n",
    );
    assert_eq!(network_names(&p), ["app_alpha", "shared-zeta"]);
    let zeta = &p.networks[1].spec;
    assert!(zeta.attachable && zeta.internal);
    assert_eq!(zeta.subnet.unwrap().to_string(), "10.0.9.0/24");
    assert_eq!(p.external_networks, ["default", "proxy"]);
    assert_eq!(
        attachments(&p.services[0]),
        [
            "app_alpha:web",
            "default:web",
            "proxy:web",
            "shared-zeta:web"
        ]
    );
}

#[test]
fn networks_the_mesh_cannot_make_are_refused_naming_them() {
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    networks: [back]\n"),
        "service web: networks: undefined network \"back\""
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    networks: [back]\nnetworks:\n  back:\n    driver: bridge\n"
        ),
        "network back: driver: driver \"bridge\" is not supported: only \"overlay\""
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    networks: [back]\nnetworks:\n  back:\n    ipam:\n      config:\n        - subnet: fd00::/64\n"
        ),
        "network back: ipam.config.0.subnet: invalid subnet \"fd00::/64\": an IPv4 subnet such as 10.0.9.0/24"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    networks: [h]\nnetworks:\n  h:\n    external: true\n    name: host\n"
        ),
        "service web: networks: network \"host\" is not supported: a stack's services join overlay networks"
    );
    assert_eq!(
        convert(
            "my stack",
            &config("services:\n  web:\n    image: nginx\n"),
            &files(&[])
        )
        .unwrap_err()
        .to_string(),
        "stack: invalid stack name \"my stack\": letters, digits, '-' and '_', starting and ending with a letter or digit"
    );
}

// ---- ports ----

#[test]
fn ports_short_and_long_with_modes_and_protocols_sorted() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    ports:\n      - \"9000\"\n      - 8080:80\n      - 53:53/udp\n      - target: 443\n        published: 8443\n        mode: host\n        protocol: tcp\n",
    );
    assert_eq!(
        ports(&p.services[0]),
        [
            "*:?->9000/tcp ingress",
            "*:53->53/udp ingress",
            "*:8080->80/tcp ingress",
            "*:8443->443/tcp host"
        ]
    );
    let web = &p.services[0];
    assert_eq!(web.endpoint.ports[1].protocol, Protocol::Udp);
    assert_eq!(web.endpoint.ports[3].mode, PublishMode::Host);
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    ports: [\"80:80\", \"80:80\"]\n"),
        "service web: port 80/tcp is published twice"
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    ports:\n      - 80:80/sctp\n"),
        "service web: ports.0: protocol sctp is not supported (tcp or udp)"
    );
    // What validate refuses is refused, naming the service.
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    ports:\n      - target: 80\n        mode: host\n"
        ),
        "service web: port 80/tcp: a host-mode port needs a published port"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    ports: [\"80:80\"]\n    deploy:\n      endpoint_mode: dnsrr\n"
        ),
        "service web: port published with ingress mode can't be used with dnsrr mode"
    );
}

// ---- volumes ----

#[test]
fn volumes_binds_named_and_tmpfs() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    volumes:\n      - data:/data\n      - ./conf:/etc/app:ro\n      - shared:/shared:nocopy\n      - type: tmpfs\n        target: /cache\n        tmpfs:\n          size: 64M\n      - type: volume\n        source: old\n        target: /old\nvolumes:\n  data:\n  shared:\n    name: team-shared\n  old:\n    external: true\n",
    );
    let web = &p.services[0];
    assert_eq!(
        mounts(web),
        [
            "type=volume,source=app_data,target=/data",
            "type=bind,source=/srv/app/conf,target=/etc/app,readonly",
            "type=volume,source=team-shared,target=/shared,volume-nocopy",
            "type=tmpfs,target=/cache,tmpfs-size=67108864",
            "type=volume,source=old,target=/old",
        ]
    );
    assert_eq!(web.task.mounts[1].kind, MountKind::Bind);
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    volumes: [\"data:/data\"]\n"),
        "service web: volumes.0: undefined volume \"data\""
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    volumes: [\"/data\"]\n"),
        "service web: volumes.0: /data: anonymous volumes are not supported (name a volume declared under the top-level volumes)"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    volumes:\n      - type: npipe\n        source: x\n        target: /x\n"
        ),
        "service web: volumes.0: type npipe is not supported (bind, volume or tmpfs)"
    );
}

// ---- secrets and configs ----

#[test]
fn secrets_and_configs_are_read_scoped_referenced_and_sorted() {
    let c = config(
        "services:\n  web:\n    image: nginx\n    secrets:\n      - zz_key\n      - source: db_pw\n        target: password\n        uid: \"1000\"\n        gid: \"1001\"\n        mode: 0400\n      - ext\n    configs:\n      - site\n      - source: tls\n        target: /etc/tls.conf\nsecrets:\n  db_pw:\n    file: ./db_pw.txt\n  zz_key:\n    file: /keys/zz\n    name: zz-v2\n  ext:\n    external: true\n  unused_ext:\n    external: true\n  unused:\n    file: ./unused\nconfigs:\n  site:\n    file: ./site.conf\n    labels: [owner=web]\n  tls:\n    external: true\n    name: tls-v1\n",
    );
    let read = files(&[
        ("/srv/app/db_pw.txt", "hunter2"),
        ("/keys/zz", "zz"),
        ("/srv/app/unused", "u"),
        ("/srv/app/site.conf", "server {}"),
    ]);
    let p = convert("app", &c, &read).unwrap();
    let web = &p.services[0];
    assert_eq!(
        refs(&web.task.secrets),
        [
            "app_db_pw->password 1000:1001 400",
            "ext->ext 0:0 444",
            "zz-v2->zz_key 0:0 444"
        ]
    );
    assert_eq!(
        refs(&web.task.configs),
        ["app_site->/site 0:0 444", "tls-v1->/etc/tls.conf 0:0 444"]
    );
    let listed: Vec<String> = p
        .files
        .iter()
        .map(|f| {
            let source = match &f.source {
                FileSource::Data(d) => String::from_utf8(d.as_bytes().to_vec()).unwrap(),
                FileSource::External => "external".into(),
            };
            format!("{} {} ({}): {source}", f.kind, f.spec.name, f.key)
        })
        .collect();
    // Every declared one is created; only the referenced external ones are looked for.
    assert_eq!(
        listed,
        [
            "secret app_db_pw (db_pw): hunter2",
            "secret app_unused (unused): u",
            "secret ext (ext): external",
            "secret zz-v2 (zz_key): zz",
            "config app_site (site): server {}",
            "config tls-v1 (tls): external",
        ]
    );
    let site = p.files.iter().find(|f| f.key == "site").unwrap();
    assert_eq!(site.kind, FileKind::Config);
    assert_eq!(site.spec.labels[LABEL_NAMESPACE], "app");
    assert_eq!(site.spec.labels["owner"], "web");
}

#[test]
fn undefined_or_unreadable_secrets_and_configs_are_refused() {
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    secrets: [pw]\n"),
        "service web: secrets.0: undefined secret \"pw\""
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    configs: [site]\n"),
        "service web: configs.0: undefined config \"site\""
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\nsecrets:\n  pw:\n    file: ./missing\n"),
        "secret pw: file: /srv/app/missing: No such file or directory (os error 2)"
    );
    let c = config("services:\n  web:\n    image: nginx\nsecrets:\n  pw:\n    file: ./empty\n");
    assert_eq!(
        convert("app", &c, &files(&[("/srv/app/empty", "")]))
            .unwrap_err()
            .to_string(),
        "secret pw: file: /srv/app/empty: secret data must be larger than 0 and at most 500 KiB (got 0 bytes)"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    secrets:\n      - source: pw\n        uid: root\nsecrets:\n  pw:\n    external: true\n"
        ),
        "service web: secrets.0.uid: invalid uid \"root\": expected a number"
    );
}

// ---- deploy ----

#[test]
fn deploy_mode_replicas_endpoint_labels_and_constraints() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 3\n      endpoint_mode: dnsrr\n      labels:\n        team: web\n      placement:\n        constraints:\n          - node.role == manager\n          - node.labels.zone != b\n          - node.hostname==n1\n  agent:\n    image: agent\n    deploy:\n      mode: global\n  one:\n    image: one\n",
    );
    let web = service(&p, "app_web");
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(web.endpoint.mode, EndpointMode::Dnsrr);
    assert_eq!(web.labels["team"], "web");
    assert_eq!(web.labels[LABEL_NAMESPACE], "app");
    assert_eq!(
        constraints(web),
        [
            "node.role==manager",
            "node.labels.zone!=b",
            "node.hostname==n1"
        ]
    );
    assert_eq!(service(&p, "app_agent").mode, ServiceMode::Global);
    assert_eq!(
        service(&p, "app_one").mode,
        ServiceMode::Replicated { replicas: 1 }
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      mode: global\n      replicas: 2\n"
        ),
        "service web: deploy.replicas: replicas can only be used with replicated mode"
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    deploy:\n      mode: replicated-job\n"),
        "service web: deploy.mode: replicated-job is not supported yet (replicated or global)"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints: [node.colour == red]\n"
        ),
        "service web: deploy.placement.constraints.0: invalid constraint key \"node.colour\": expected node.role, node.hostname, node.id or node.labels.<key>"
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 5000\n"),
        "service web: invalid replicas 5000: at most 1000"
    );
}

#[test]
fn placement_preferences_and_max_replicas_per_node_are_carried() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 6\n      placement:\n        constraints: [node.role == worker]\n        preferences:\n          - spread: node.labels.region\n          - spread: node.labels.zone\n          - spread: engine.labels.az\n        max_replicas_per_node: 2\n",
    );
    let web = service(&p, "app_web");
    let prefs: Vec<String> = web.preferences.iter().map(ToString::to_string).collect();
    assert_eq!(
        prefs,
        ["spread=node.labels.region", "spread=node.labels.zone"]
    );
    assert_eq!(web.max_replicas_per_node, 2);
    assert_eq!(constraints(web), ["node.role==worker"]);
    assert_eq!(
        p.warnings,
        [
            "service web: placement preference \"spread: engine.labels.az\" is not supported yet (not stored)"
        ]
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        preferences:\n          - spread: node.hostname\n"
        ),
        "service web: deploy.placement.preferences.0.spread: invalid placement preference \"spread=node.hostname\": expected node.labels.<key>"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      mode: global\n      placement:\n        max_replicas_per_node: 1\n"
        ),
        "service web: deploy.placement.max_replicas_per_node: can only be used with replicated mode"
    );
}

#[test]
fn platform_constraints_hold_warn_or_are_refused() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints:\n          - node.platform.os == linux\n          - node.platform.arch == x86_64\n          - engine.labels.ssd == true\n          - node.role == worker\n",
    );
    assert_eq!(constraints(&p.services[0]), ["node.role==worker"]);
    assert_eq!(
        p.warnings,
        [
            "service web: placement constraint \"node.platform.os == linux\" holds on every node (all run Linux): not stored",
            "service web: placement constraint \"node.platform.arch == x86_64\" is not supported yet (not stored)",
            "service web: placement constraint \"engine.labels.ssd == true\" is not supported yet (not stored)",
        ]
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints: [node.platform.os == windows]\n"
        ),
        "service web: deploy.placement.constraints.0: \"node.platform.os == windows\": no node satisfies it (every node runs Linux)"
    );
}

#[test]
fn update_and_rollback_configs() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    deploy:\n      update_config:\n        parallelism: 2\n        delay: 10s\n        failure_action: rollback\n        monitor: 30s\n        max_failure_ratio: 0.25\n        order: start-first\n      rollback_config:\n        parallelism: 0\n        failure_action: continue\n  db:\n    image: postgres\n",
    );
    let web = service(&p, "app_web");
    let u = web.update;
    assert_eq!(
        (
            u.parallelism,
            u.delay_ms,
            u.failure_action,
            u.monitor_ms,
            u.max_failure_permille,
            u.order
        ),
        (
            2,
            10_000,
            FailureAction::Rollback,
            30_000,
            250,
            UpdateOrder::StartFirst
        )
    );
    let r = web.rollback;
    assert_eq!(
        (r.parallelism, r.failure_action),
        (0, FailureAction::Continue)
    );
    assert_eq!(
        (r.delay_ms, r.monitor_ms, r.order),
        (0, 5_000, UpdateOrder::StopFirst)
    );
    // Docker's defaults when unset: parallelism 1, pause, stop-first.
    let db = service(&p, "app_db");
    assert_eq!(db.update, mesh_api::spec::UpdateConfig::default());
    assert_eq!(db.update.parallelism, 1);
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      update_config:\n        failure_action: explode\n"
        ),
        "service web: deploy.update_config.failure_action: invalid failure action \"explode\": expected pause, continue or rollback"
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      rollback_config:\n        max_failure_ratio: 1.5\n"
        ),
        "service web: deploy.rollback_config.max_failure_ratio: max-failure-ratio must be between 0 and 1"
    );
}

#[test]
fn restart_policy_and_the_fallback_to_restart() {
    let p = plan(
        "services:\n  a:\n    image: x\n    deploy:\n      restart_policy:\n        condition: on-failure\n        delay: 10s\n        max_attempts: 3\n        window: 2m\n  b:\n    image: x\n    restart: on-failure:5\n  c:\n    image: x\n    restart: \"no\"\n  d:\n    image: x\n    restart: unless-stopped\n  e:\n    image: x\n    restart: always\n    deploy:\n      restart_policy:\n        condition: none\n",
    );
    let r = service(&p, "app_a").task.restart;
    assert_eq!(
        (r.condition, r.delay_ms, r.max_attempts, r.window_ms),
        (RestartCondition::OnFailure, 10_000, 3, 120_000)
    );
    let r = service(&p, "app_b").task.restart;
    assert_eq!(
        (r.condition, r.max_attempts),
        (RestartCondition::OnFailure, 5)
    );
    // docker: "no" leaves swarm's default policy.
    assert_eq!(
        service(&p, "app_c").task.restart,
        mesh_api::spec::RestartPolicy::default()
    );
    assert_eq!(
        service(&p, "app_d").task.restart.condition,
        RestartCondition::Any
    );
    // deploy.restart_policy wins over restart.
    assert_eq!(
        service(&p, "app_e").task.restart.condition,
        RestartCondition::None
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    restart: sometimes\n"),
        "service web: restart: unknown restart policy: sometimes"
    );
}

#[test]
fn resources_limits_and_reservations() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          cpus: '0.5'\n          memory: 512M\n          pids: 100\n        reservations:\n          cpus: 0.25\n          memory: 128M\n",
    );
    let r = p.services[0].task.resources;
    assert_eq!(
        (r.limits.nano_cpus, r.limits.memory_bytes),
        (500_000_000, 512 * MIB)
    );
    assert_eq!(
        (r.reservations.nano_cpus, r.reservations.memory_bytes),
        (250_000_000, 128 * MIB)
    );
    assert_eq!(
        p.warnings,
        ["service web: deploy.resources.limits.pids is not supported yet"]
    );
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: nginx\n    deploy:\n      resources:\n        limits:\n          memory: 64M\n        reservations:\n          memory: 128M\n"
        ),
        "service web: memory reservation (128MiB) must be less than or equal to memory limit (64MiB)"
    );
}

// ---- the task ----

#[test]
fn healthcheck_forms() {
    let p = plan(
        "services:\n  cmd:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost/a b\"]\n      interval: 5s\n      timeout: 2s\n      retries: 4\n      start_period: 1m\n  shell:\n    image: x\n    healthcheck:\n      test: pg_isready -U postgres || exit 1\n  shell_list:\n    image: x\n    healthcheck:\n      test: [\"CMD-SHELL\", \"true\"]\n  none:\n    image: x\n    healthcheck:\n      test: [\"NONE\"]\n  disabled:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      disable: true\n",
    );
    let h = service(&p, "app_cmd").task.health.clone().unwrap();
    assert_eq!(h.cmd, "curl -f 'http://localhost/a b'");
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (5_000, 2_000, 4, 60_000)
    );
    let h = service(&p, "app_shell").task.health.clone().unwrap();
    assert_eq!(h.cmd, "pg_isready -U postgres || exit 1");
    // docker's defaults.
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries),
        (30_000, 30_000, 3)
    );
    assert_eq!(
        service(&p, "app_shell_list")
            .task
            .health
            .as_ref()
            .unwrap()
            .cmd,
        "true"
    );
    assert_eq!(service(&p, "app_none").task.health, None);
    assert_eq!(service(&p, "app_disabled").task.health, None);
    assert_eq!(
        plan_err(
            "services:\n  web:\n    image: x\n    healthcheck:\n      test: [\"RUN\", \"x\"]\n"
        ),
        "service web: healthcheck.test: must be [\"NONE\"], [\"CMD\", args...], [\"CMD-SHELL\", command] or a command string"
    );
}

#[test]
fn environment_command_grace_user_and_capabilities() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    command: nginx -g 'daemon off;'\n    environment:\n      B: \"2\"\n      A1: x\n      A: \"1\"\n      UNSET:\n    stop_grace_period: 1m30s\n    user: \"1000:1000\"\n    cap_add: [net_admin, CAP_SYS_TIME, NET_ADMIN]\n    cap_drop: [ALL]\n",
    );
    let t = &p.services[0].task;
    assert_eq!(t.args, ["nginx", "-g", "daemon off;"]);
    // Sorted as docker sorts the KEY=VALUE strings; a name without value is left out.
    assert_eq!(t.env, ["A1=x", "A=1", "B=2"]);
    assert_eq!(t.stop_grace_ms, 90_000);
    assert_eq!(t.user.as_deref(), Some("1000:1000"));
    assert_eq!(t.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    assert_eq!(t.cap_drop, ["ALL"]);
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    cap_add: [FLY]\n"),
        "service web: cap_add: unknown capability: \"FLY\""
    );
    assert_eq!(
        plan_err("services:\n  web:\n    image: nginx\n    user: \"a b\"\n"),
        "service web: invalid user \"a b\": expected NAME|UID[:GROUP|GID]"
    );
}

#[test]
fn the_runtime_and_the_program() {
    assert_eq!(
        plan_err("services:\n  web:\n    command: [sleep, \"1\"]\n"),
        "service web: service web has neither an image nor x-mesh-runtime: process with a program to run"
    );
    let p = plan(
        "x-process: &process\n  x-mesh-runtime: process\nservices:\n  image:\n    <<: *process\n    image: /usr/bin/redis-server\n    command: [--port, \"6379\"]\n  entry:\n    x-mesh-runtime: process\n    entrypoint: python3 -m http.server\n    command: [\"8080\"]\n  cmd:\n    x-mesh-runtime: process\n    command: sleep infinity\n  docker:\n    x-mesh-runtime: docker\n    image: nginx\n    entrypoint: [/docker-entrypoint.sh]\n",
    );
    let s = service(&p, "app_image");
    assert_eq!(
        (s.task.runtime, s.task.image.as_str(), s.task.args.clone()),
        (
            RuntimeKind::Process,
            "/usr/bin/redis-server",
            vec!["--port".to_owned(), "6379".into()]
        )
    );
    assert_eq!(s.labels[LABEL_IMAGE], "/usr/bin/redis-server");
    let s = service(&p, "app_entry");
    assert_eq!(
        (s.task.image.as_str(), s.task.args.clone()),
        (
            "python3",
            vec!["-m".to_owned(), "http.server".into(), "8080".into()]
        )
    );
    assert!(!s.labels.contains_key(LABEL_IMAGE));
    let s = service(&p, "app_cmd");
    assert_eq!(
        (s.task.image.as_str(), s.task.args.clone()),
        ("sleep", vec!["infinity".to_owned()])
    );
    let s = service(&p, "app_docker");
    assert_eq!(s.task.runtime, RuntimeKind::Docker);
    // A docker service's entrypoint replaces its image's.
    assert!(!s.task.entrypoint.is_empty());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        plan_err(
            "services:\n  web:\n    x-mesh-runtime: process\n    image: a\n    entrypoint: b\n"
        ),
        "service web: entrypoint: x-mesh-runtime: process takes the program from image or from entrypoint, not both"
    );
    assert_eq!(
        plan_err("services:\n  web:\n    x-mesh-runtime: process\n"),
        "service web: service web has neither an image nor an entrypoint or command for the process runtime"
    );
    assert_eq!(
        plan_err("services:\n  web:\n    x-mesh-runtime: vm\n    image: a\n"),
        "service web: x-mesh-runtime: must be one of docker, process"
    );
}

#[test]
fn container_keys_are_carried_as_written() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    hostname: \"{{.Node.Hostname}}-web-{{ .Task.Slot }}\"\n    extra_hosts:\n      db: 10.0.0.5\n      v6: \"::1\"\n    dns: [8.8.8.8, 1.1.1.1]\n    dns_search: example.com\n    dns_opt: [ndots:2, rotate]\n    working_dir: /app\n    labels: [a=b]\n    entrypoint: /bin/sh -c\n    environment:\n      SLOT: \"{{.Task.Slot}}\"\n    deploy:\n      labels: [svc=1]\n    volumes:\n      - type: volume\n        source: data\n        target: \"/data/{{.Task.Slot}}\"\nvolumes:\n  data: {}\n",
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let t = &service(&p, "app_web").task;
    assert_eq!(
        t.hostname.as_deref(),
        Some("{{.Node.Hostname}}-web-{{ .Task.Slot }}")
    );
    assert_eq!(t.hosts, ["db:10.0.0.5", "v6:::1"]);
    assert_eq!(t.dns.nameservers.len(), 2);
    assert_eq!(t.dns.search, ["example.com"]);
    assert_eq!(t.dns.options, ["ndots:2", "rotate"]);
    assert_eq!(t.workdir.as_deref(), Some("/app"));
    // The service's `labels` are the container's; `deploy.labels` the service's.
    assert_eq!(t.container_labels.get("a").map(String::as_str), Some("b"));
    assert!(!t.container_labels.contains_key("svc"));
    assert_eq!(t.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(t.env, ["SLOT={{.Task.Slot}}"]);
    assert_eq!(t.mounts[0].target, "/data/{{.Task.Slot}}");
    for (yaml, wanted) in [
        (
            "    extra_hosts: [\"x\"]\n",
            "service web: extra_hosts.0: bad format for add-host: \"x\"",
        ),
        (
            "    dns: nope\n",
            "service web: dns.0: nope is not an ip address",
        ),
        (
            "    working_dir: app\n",
            "service web: working_dir: the working directory 'app' is invalid, it needs to be an absolute path",
        ),
        (
            "    hostname: \"{{.Task.Index}}\"\n",
            "service web: hostname: unknown template placeholder {{.Task.Index}}",
        ),
        (
            "    environment: [\"A={{.Service.Labels}}\"]\n",
            "environment variable A: unknown template placeholder {{.Service.Labels}}",
        ),
    ] {
        let err = plan_err(&format!("services:\n  web:\n    image: nginx\n{yaml}"));
        assert!(err.contains(wanted), "{yaml}: {err}");
    }
}

#[test]
fn keys_swarm_honours_that_the_mesh_does_not_carry_yet_warn() {
    let p = plan(
        "services:\n  web:\n    image: nginx\n    hostname: \"{{.Node.Hostname}}-web\"\n    extra_hosts: [\"db:10.0.0.5\"]\n    dns: 8.8.8.8\n    dns_search: example.com\n    dns_opt: [ndots:2]\n    working_dir: /app\n    labels: [a=b]\n    stop_signal: SIGQUIT\n    tty: true\n    stdin_open: true\n    read_only: true\n    init: true\n    sysctls: [net.core.somaxconn=1024]\n    ulimits:\n      nofile: 1024\n    oom_score_adj: 10\n    logging:\n      driver: json-file\n    environment:\n      SLOT: \"{{.Task.Slot}}\"\n    networks:\n      back:\n        driver_opts:\n          x: y\n    volumes:\n      - type: bind\n        source: /srv\n        target: /srv\n        bind:\n          propagation: rshared\n      - type: volume\n        source: data\n        target: \"/data/{{.Task.Slot}}\"\n        volume:\n          subpath: sub\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      start_interval: 1s\n    deploy:\n      placement:\n        preferences:\n          - spread: node.labels.zone\n        max_replicas_per_node: 2\n      resources:\n        reservations:\n          generic_resources:\n            - discrete_resource_spec:\n                kind: gpu\n                value: 1\nnetworks:\n  back:\n    driver_opts:\n      encrypted: \"\"\n    ipam:\n      driver: custom\nvolumes:\n  data:\n    driver: rexray\n    driver_opts:\n      size: 1\n    labels: [a=b]\n",
    );
    assert_eq!(
        p.warnings,
        [
            "service web: deploy.resources.reservations.generic_resources is not supported yet",
            "service web: healthcheck.start_interval is not supported yet",
            "service web: networks.back.driver_opts is not supported yet",
            "service web: volumes.0.bind.propagation is not supported yet",
            "service web: volumes.1.volume.subpath is not supported yet",
            "service web: stop_signal is not supported yet",
            "service web: tty is not supported yet",
            "service web: stdin_open is not supported yet",
            "service web: read_only is not supported yet",
            "service web: init is not supported yet",
            "service web: sysctls is not supported yet",
            "service web: ulimits is not supported yet",
            "service web: oom_score_adj is not supported yet",
            "service web: logging is not supported yet",
            "network back: driver_opts is not supported yet",
            "network back: ipam.driver is not supported yet",
            "volume data: driver is not supported yet",
            "volume data: driver_opts is not supported yet",
            "volume data: labels is not supported yet",
        ]
    );
    // What is carried still is: the spec is whole.
    let web = &p.services[0];
    assert_eq!(web.task.env, ["SLOT={{.Task.Slot}}"]);
    assert_eq!(web.task.mounts.len(), 2);
    let c = config(
        "services:\n  web:\n    image: nginx\nsecrets:\n  s:\n    file: ./s\n    template_driver: golang\n",
    );
    let with_secret = convert("app", &c, &files(&[("/srv/app/s", "x")])).unwrap();
    assert_eq!(
        with_secret.warnings,
        ["secret s: template_driver is not supported yet"]
    );
}

// ---- the real-world stack files ----

/// The secret and config files the real stacks name (swarmprom's configs).
fn real_files() -> impl Fn(&Path) -> std::io::Result<Vec<u8>> {
    files(&[
        (
            "/stacks/caddy/Caddyfile",
            ":9090 {\n  proxy / prometheus:9090\n}\n",
        ),
        (
            "/stacks/dockerd-exporter/Caddyfile",
            ":9323 {\n  proxy / {$DOCKER_GWBRIDGE_IP}:9323\n}\n",
        ),
        (
            "/stacks/prometheus/rules/swarm_node.rules.yml",
            "groups: []\n",
        ),
        (
            "/stacks/prometheus/rules/swarm_task.rules.yml",
            "groups: []\n",
        ),
    ])
}

fn real_plan(name: &str, stack: &str) -> StackPlan {
    convert(stack, &load_real(name).config, &real_files()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn replicas(p: &StackPlan, name: &str) -> Option<u32> {
    service(p, name).replicas()
}

#[test]
fn every_real_world_stack_converts_to_valid_specs() {
    for name in REAL {
        let p = real_plan(name, "s");
        assert!(!p.services.is_empty(), "{name}");
        for s in &p.services {
            s.validate()
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", s.name));
            assert_eq!(s.labels[LABEL_NAMESPACE], "s", "{name}");
            assert!(s.name.starts_with("s_"), "{name}");
        }
        for n in &p.networks {
            n.spec.validate().unwrap();
            assert_eq!(n.spec.labels[LABEL_NAMESPACE], "s");
        }
        // Converting twice gives the same plan: redeploys are idempotent.
        assert_eq!(p, real_plan(name, "s"), "{name}");
    }
}

#[test]
fn real_world_voting_app_plan() {
    let p = real_plan("voting", "vote");
    assert_eq!(
        names(&p),
        [
            "vote_db",
            "vote_redis",
            "vote_result",
            "vote_visualizer",
            "vote_vote",
            "vote_worker"
        ]
    );
    assert_eq!(
        network_names(&p),
        ["vote_backend", "vote_default", "vote_frontend"]
    );
    assert!(p.external_networks.is_empty() && p.files.is_empty());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    for (name, n) in [
        ("vote_db", 1),
        ("vote_redis", 1),
        ("vote_result", 1),
        ("vote_visualizer", 1),
        ("vote_vote", 2),
        ("vote_worker", 1),
    ] {
        assert_eq!(replicas(&p, name), Some(n), "{name}");
    }
    let redis = service(&p, "vote_redis");
    assert_eq!(attachments(redis), ["vote_frontend:redis"]);
    assert_eq!(
        (redis.update.parallelism, redis.update.delay_ms),
        (2, 10_000)
    );
    assert_eq!(redis.task.restart.condition, RestartCondition::OnFailure);
    assert_eq!(redis.task.image, "redis:alpine");
    let db = service(&p, "vote_db");
    assert_eq!(
        db.task.env,
        ["POSTGRES_PASSWORD=postgres", "POSTGRES_USER=postgres"]
    );
    assert_eq!(
        mounts(db),
        ["type=volume,source=vote_db-data,target=/var/lib/postgresql/data"]
    );
    assert_eq!(constraints(db), ["node.role==manager"]);
    assert_eq!(attachments(db), ["vote_backend:db"]);
    let vote = service(&p, "vote_vote");
    assert_eq!(ports(vote), ["*:5000->80/tcp ingress"]);
    assert_eq!((vote.update.parallelism, vote.update.delay_ms), (2, 0));
    assert_eq!(
        ports(service(&p, "vote_result")),
        ["*:5001->80/tcp ingress"]
    );
    let worker = service(&p, "vote_worker");
    assert_eq!(
        attachments(worker),
        ["vote_backend:worker", "vote_frontend:worker"]
    );
    assert_eq!(worker.labels["APP"], "VOTING");
    assert_eq!(
        worker.labels[LABEL_IMAGE],
        "dockersamples/examplevotingapp_worker"
    );
    let r = worker.task.restart;
    assert_eq!(
        (r.condition, r.delay_ms, r.max_attempts, r.window_ms),
        (RestartCondition::OnFailure, 10_000, 3, 120_000)
    );
    assert_eq!(constraints(worker), ["node.role==manager"]);
    let viz = service(&p, "vote_visualizer");
    assert_eq!(attachments(viz), ["vote_default:visualizer"]);
    assert_eq!(ports(viz), ["*:8080->8080/tcp ingress"]);
    assert_eq!(viz.task.stop_grace_ms, 90_000);
    assert_eq!(
        mounts(viz),
        ["type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock"]
    );
}

#[test]
fn real_world_dogvscat_plan() {
    let p = real_plan("dogvscat", "dvc");
    assert_eq!(
        names(&p),
        [
            "dvc_db",
            "dvc_redis",
            "dvc_result",
            "dvc_vote",
            "dvc_worker"
        ]
    );
    assert_eq!(network_names(&p), ["dvc_backend", "dvc_frontend"]);
    assert_eq!(p.external_networks, ["proxy"]);
    assert!(p.files.is_empty());
    for (name, n) in [
        ("dvc_db", 1),
        ("dvc_redis", 1),
        ("dvc_result", 2),
        ("dvc_vote", 2),
        ("dvc_worker", 2),
    ] {
        assert_eq!(replicas(&p, name), Some(n), "{name}");
    }
    let redis = service(&p, "dvc_redis");
    assert_eq!(redis.endpoint.mode, EndpointMode::Dnsrr);
    assert_eq!(redis.task.args, ["redis-server", "--appendonly", "yes"]);
    assert_eq!(
        mounts(redis),
        ["type=volume,source=dvc_redis-data,target=/data"]
    );
    assert_eq!(service(&p, "dvc_db").endpoint.mode, EndpointMode::Dnsrr);
    assert_eq!(
        attachments(service(&p, "dvc_vote")),
        ["dvc_frontend:vote", "proxy:vote"]
    );
    assert_eq!(
        attachments(service(&p, "dvc_result")),
        ["dvc_backend:result", "proxy:result"]
    );
    assert_eq!(
        attachments(service(&p, "dvc_worker")),
        ["dvc_backend:worker", "dvc_frontend:worker"]
    );
    let result = service(&p, "dvc_result");
    assert_eq!(
        result.labels["traefik.http.routers.result.rule"],
        "Host(`result.dogvs.cat`)"
    );
    assert_eq!(
        result.labels["traefik.http.services.result.loadbalancer.sticky"],
        "true"
    );
    // The anchored logging options reach every service; the volumes' driver options
    // cannot be carried.
    assert_eq!(
        p.warnings,
        [
            "service db: logging is not supported yet",
            "service redis: logging is not supported yet",
            "service result: logging is not supported yet",
            "service vote: logging is not supported yet",
            "service worker: logging is not supported yet",
            "volume db-data: driver_opts is not supported yet",
            "volume redis-data: driver_opts is not supported yet",
        ]
    );
}

#[test]
fn real_world_secrets_assignment_plan() {
    let p = real_plan("secrets", "drupal");
    assert_eq!(names(&p), ["drupal_drupal", "drupal_postgres"]);
    assert_eq!(network_names(&p), ["drupal_default"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let drupal = service(&p, "drupal_drupal");
    assert_eq!(ports(drupal), ["*:8080->80/tcp ingress"]);
    assert_eq!(
        mounts(drupal),
        [
            "type=volume,source=drupal_drupal-modules,target=/var/www/html/modules",
            "type=volume,source=drupal_drupal-profiles,target=/var/www/html/profiles",
            "type=volume,source=drupal_drupal-sites,target=/var/www/html/sites",
            "type=volume,source=drupal_drupal-themes,target=/var/www/html/themes",
        ]
    );
    assert_eq!(attachments(drupal), ["drupal_default:drupal"]);
    let pg = service(&p, "drupal_postgres");
    // The external secret keeps its own name.
    assert_eq!(refs(&pg.task.secrets), ["psql-pw->psql-pw 0:0 444"]);
    assert_eq!(pg.task.env, ["POSTGRES_PASSWORD_FILE=/run/secrets/psql-pw"]);
    assert_eq!(
        mounts(pg),
        ["type=volume,source=drupal_drupal-data,target=/var/lib/postgresql/data"]
    );
    assert_eq!(attachments(pg), ["drupal_default:postgres"]);
    assert_eq!(p.files.len(), 1);
    assert_eq!(
        (
            p.files[0].kind,
            p.files[0].spec.name.as_str(),
            &p.files[0].source
        ),
        (FileKind::Secret, "psql-pw", &FileSource::External)
    );
}

#[test]
fn real_world_swarmprom_plan() {
    let p = real_plan("swarmprom", "mon");
    assert_eq!(
        names(&p),
        [
            "mon_alertmanager",
            "mon_caddy",
            "mon_cadvisor",
            "mon_dockerd-exporter",
            "mon_grafana",
            "mon_node-exporter",
            "mon_prometheus",
            "mon_unsee"
        ]
    );
    for name in ["mon_cadvisor", "mon_dockerd-exporter", "mon_node-exporter"] {
        assert_eq!(service(&p, name).mode, ServiceMode::Global, "{name}");
    }
    for name in [
        "mon_alertmanager",
        "mon_caddy",
        "mon_grafana",
        "mon_prometheus",
        "mon_unsee",
    ] {
        assert_eq!(replicas(&p, name), Some(1), "{name}");
    }
    assert_eq!(network_names(&p), ["mon_net"]);
    assert!(p.networks[0].spec.attachable);
    for s in &p.services {
        let short = s.name.strip_prefix("mon_").unwrap();
        assert_eq!(attachments(s), [format!("mon_net:{short}")]);
    }
    let listed: Vec<(FileKind, &str)> = p
        .files
        .iter()
        .map(|f| (f.kind, f.spec.name.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (FileKind::Config, "mon_caddy_config"),
            (FileKind::Config, "mon_dockerd_config"),
            (FileKind::Config, "mon_node_rules"),
            (FileKind::Config, "mon_task_rules"),
        ]
    );
    assert_eq!(
        p.files[2].source,
        FileSource::Data(b"groups: []\n".to_vec().into())
    );
    let caddy = service(&p, "mon_caddy");
    assert_eq!(
        ports(caddy),
        [
            "*:3000->3000/tcp ingress",
            "*:9090->9090/tcp ingress",
            "*:9093->9093/tcp ingress",
            "*:9094->9094/tcp ingress"
        ]
    );
    assert_eq!(
        refs(&caddy.task.configs),
        ["mon_caddy_config->/etc/caddy/Caddyfile 0:0 444"]
    );
    assert_eq!(caddy.task.env, ["ADMIN_PASSWORD=admin", "ADMIN_USER=admin"]);
    let h = caddy.task.health.clone().unwrap();
    assert_eq!(
        (h.cmd.as_str(), h.interval_ms, h.timeout_ms, h.retries),
        ("curl -f http://localhost:3000", 5_000, 1_000, 5)
    );
    assert_eq!(constraints(caddy), ["node.role==manager"]);
    let r = caddy.task.resources;
    assert_eq!(
        (r.limits.memory_bytes, r.reservations.memory_bytes),
        (128 * MIB, 64 * MIB)
    );
    let prom = service(&p, "mon_prometheus");
    let r = prom.task.resources;
    assert_eq!(
        (r.limits.memory_bytes, r.reservations.memory_bytes),
        (2048 * MIB, 128 * MIB)
    );
    assert_eq!(
        refs(&prom.task.configs),
        [
            "mon_node_rules->/etc/prometheus/swarm_node.rules.yml 0:0 444",
            "mon_task_rules->/etc/prometheus/swarm_task.rules.yml 0:0 444"
        ]
    );
    assert_eq!(prom.task.args[2], "--storage.tsdb.retention=24h");
    assert_eq!(
        mounts(prom),
        ["type=volume,source=mon_prometheus,target=/prometheus"]
    );
    let ne = service(&p, "mon_node-exporter");
    assert_eq!(ne.task.env, ["NODE_ID={{.Node.ID}}"]);
    assert_eq!(
        ne.task.args[3],
        "--collector.filesystem.ignored-mount-points=^/(sys|proc|dev|host|etc)($|/)"
    );
    assert_eq!(
        mounts(service(&p, "mon_cadvisor")),
        [
            "type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock,readonly",
            "type=bind,source=/,target=/rootfs,readonly",
            "type=bind,source=/var/run,target=/var/run",
            "type=bind,source=/sys,target=/sys,readonly",
            "type=bind,source=/var/lib/docker/,target=/var/lib/docker,readonly",
        ]
    );
    // Its template placeholder is kept as written, for each node to expand.
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn real_world_portainer_plan() {
    let p = real_plan("portainer", "portainer");
    assert_eq!(names(&p), ["portainer_agent", "portainer_portainer"]);
    assert_eq!(network_names(&p), ["portainer_agent-network"]);
    assert!(p.networks[0].spec.attachable);
    assert_eq!(p.external_networks, ["traefik-public"]);
    let agent = service(&p, "portainer_agent");
    assert_eq!(agent.mode, ServiceMode::Global);
    assert!(agent.constraints.is_empty());
    assert_eq!(agent.task.env, ["AGENT_CLUSTER_ADDR=tasks.agent"]);
    assert_eq!(attachments(agent), ["portainer_agent-network:agent"]);
    let portainer = service(&p, "portainer_portainer");
    assert_eq!(replicas(&p, "portainer_portainer"), Some(1));
    assert_eq!(
        constraints(portainer),
        [
            "node.role==manager",
            "node.labels.portainer.portainer-data==true"
        ]
    );
    assert_eq!(
        attachments(portainer),
        [
            "portainer_agent-network:portainer",
            "traefik-public:portainer"
        ]
    );
    assert_eq!(
        portainer.labels["traefik.http.routers.portainer-https.rule"],
        "Host(`portainer.example.com`)"
    );
    assert_eq!(
        portainer.task.args,
        ["-H", "tcp://tasks.agent:9001", "--tlsskipverify"]
    );
    assert_eq!(
        mounts(portainer),
        ["type=volume,source=portainer_portainer-data,target=/data"]
    );
    assert_eq!(
        p.warnings,
        [
            "service agent: placement constraint \"node.platform.os == linux\" holds on every node (all run Linux): not stored"
        ]
    );
}

#[test]
fn real_world_prometheus_plan() {
    let p = real_plan("prometheus", "prom");
    assert_eq!(
        names(&p),
        [
            "prom_alertmanager",
            "prom_cadvisor",
            "prom_grafana",
            "prom_node-exporter",
            "prom_prometheus"
        ]
    );
    assert_eq!(network_names(&p), ["prom_monitor-net"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    for name in ["prom_cadvisor", "prom_node-exporter"] {
        assert_eq!(service(&p, name).mode, ServiceMode::Global, "{name}");
    }
    for s in &p.services {
        assert_eq!(
            s.task.restart.condition,
            RestartCondition::OnFailure,
            "{}",
            s.name
        );
    }
    for (name, port) in [
        ("prom_alertmanager", 9093),
        ("prom_cadvisor", 8080),
        ("prom_grafana", 3000),
        ("prom_node-exporter", 9100),
        ("prom_prometheus", 9090),
    ] {
        assert_eq!(
            ports(service(&p, name)),
            [format!("*:{port}->{port}/tcp ingress")]
        );
    }
    let grafana = service(&p, "prom_grafana");
    assert_eq!(grafana.task.user.as_deref(), Some("472"));
    assert_eq!(
        grafana.task.env,
        [
            "GF_SECURITY_ADMIN_PASSWORD=foobar",
            "GF_USERS_ALLOW_SIGN_UP=false"
        ]
    );
    assert_eq!(
        mounts(grafana),
        [
            "type=volume,source=prom_grafana_data,target=/var/lib/grafana",
            "type=bind,source=/stacks/grafana/provisioning,target=/etc/grafana/provisioning/",
        ]
    );
    let prom = service(&p, "prom_prometheus");
    assert_eq!(constraints(prom), ["node.role==manager"]);
    assert_eq!(
        mounts(prom),
        [
            "type=bind,source=/stacks/prometheus,target=/etc/prometheus/",
            "type=volume,source=prom_prometheus_data,target=/prometheus",
        ]
    );
    assert_eq!(attachments(prom), ["prom_monitor-net:prometheus"]);
}

/// docker/cli's `full-example.yml` loads (see the loader's tests) but does not deploy, in
/// docker as here: the conversion says why, naming the service and key.
#[test]
fn docker_full_example_is_refused_where_docker_refuses_it() {
    let f = File {
        name: "full-example.yml".into(),
        dir: PathBuf::from("/foo"),
        text: include_str!("testdata/docker-cli_full-example.yml").to_owned(),
    };
    let env: crate::Environment = [("HOME", "/bar"), ("QUX", "qux_from_environment")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let env_files = |p: &Path| -> std::io::Result<String> {
        Ok(match p.to_str() {
            Some("/foo/example1.env") => include_str!("testdata/docker-cli_example1.env"),
            _ => include_str!("testdata/docker-cli_example2.env"),
        }
        .to_owned())
    };
    let mut c = load(&[f], &env, &env_files).unwrap().config;
    // Swarm refuses this constraint too (swarmkit's parser wants == or !=).
    assert_eq!(
        convert("full", &c, &files(&[])).unwrap_err().to_string(),
        "service foo: deploy.placement.constraints.0: invalid constraint \"node=foo\": expected <key>==<value> or <key>!=<value>"
    );
    let foo = c.services.get_mut("foo").unwrap();
    foo.deploy
        .as_mut()
        .unwrap()
        .placement
        .as_mut()
        .unwrap()
        .constraints = vec!["node.labels.foo==bar".into()];
    // As docker's convertServiceNetworks: the file is loadable, not deployable.
    assert_eq!(
        convert("full", &c, &files(&[])).unwrap_err().to_string(),
        "service foo: networks: undefined network \"other-other-network\""
    );
    let foo = c.services.get_mut("foo").unwrap();
    foo.networks.remove("other-other-network");
    // Where the mesh is narrower than docker: no anonymous volumes.
    assert_eq!(
        convert("full", &c, &files(&[])).unwrap_err().to_string(),
        "service foo: volumes.0: /var/lib/mysql: anonymous volumes are not supported (name a volume declared under the top-level volumes)"
    );
    let foo = c.services.get_mut("foo").unwrap();
    foo.volumes.retain(|v| v.source.is_some());
    // docker's convertVolumeToMount refuses it too.
    assert_eq!(
        convert("full", &c, &files(&[])).unwrap_err().to_string(),
        "service foo: volumes.4: undefined volume \"datavolume\""
    );
}
