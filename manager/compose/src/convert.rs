//! A loaded stack converted into what a deploy creates, as docker's CLI converts it
//! (docker/cli `cli/compose/convert`): the stack's networks, secrets and configs, and one
//! [`ServiceSpec`] per service, every object named `<stack>_<name>` (unless external or
//! given a `name:`) and labelled `com.docker.stack.namespace=<stack>`.
//!
//! The conversion is sans-IO: the data of the secrets and configs a file names with
//! `file:` comes through a [`ReadData`]. It creates nothing; deploying the
//! [`StackPlan`] is the caller's. Keys swarm honours that a [`ServiceSpec`] cannot carry
//! yet are not dropped silently: each gives a warning naming the service and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mesh_api::file::{FileData, FileSpec};
use mesh_api::file_ref::{FileKind, FileRef, validate_file_data};
use mesh_api::mount::{Mount as TaskMount, MountKind};
use mesh_api::network::{NetworkSpec, OVERLAY_DRIVER};
use mesh_api::resources::{ResourceRequirements, Resources, parse_nano_cpus};
use mesh_api::spec::{
    Constraint, EndpointMode, FailureAction, HealthCheck, NetworkAttachmentSpec,
    PlacementPreference, PortSpec, Protocol, PublishMode, RestartCondition, RestartPolicy,
    RuntimeKind, ServiceMode, ServiceSpec, UpdateConfig as SpecUpdateConfig, UpdateOrder,
};
use serde_json::Value as Json;

use crate::types::{self, Config, FileObject, Service};

/// The label every object of a stack carries, with the stack's name.
pub use mesh_api::stack::LABEL_NAMESPACE;
/// The label a stack's service carries with its image as written (a redeploy tells by
/// it whether the image changed).
pub const LABEL_IMAGE: &str = "com.docker.stack.image";
/// The service extension field that chooses the runtime (`docker` or `process`).
pub const RUNTIME_FIELD: &str = "x-mesh-runtime";
/// The network a service without `networks:` joins (`<stack>_default`).
pub const DEFAULT_NETWORK: &str = "default";

/// What converting a stack found wrong: the object (`service web`, `secret db_pw`,
/// `network front`, `stack`) and, when there is one, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error {
    /// `service web`, `secret db_pw`, `config app`, `network front`, `volume data`, or
    /// `stack`.
    pub object: String,
    /// The key (`deploy.replicas`, `ports.0`), when the fault has one.
    pub key: Option<String>,
    /// What is wrong, in docker's words where docker has them.
    pub message: String,
}

impl Error {
    fn render(&self) -> String {
        match &self.key {
            Some(key) => format!("{}: {key}: {}", self.object, self.message),
            None => format!("{}: {}", self.object, self.message),
        }
    }
}

fn fail(object: &str, key: Option<&str>, message: impl Into<String>) -> Error {
    Error {
        object: object.to_owned(),
        key: key.map(str::to_owned),
        message: message.into(),
    }
}

/// Reads the data of a secret or config `file:` (given its absolute path): the I/O the
/// conversion needs. `std::fs::read` is one.
pub trait ReadData {
    /// The file's bytes.
    ///
    /// # Errors
    /// The file cannot be read.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

impl<F: Fn(&Path) -> std::io::Result<Vec<u8>>> ReadData for F {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self(path)
    }
}

/// A network the stack creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNetwork {
    /// Its key in the compose file (`default` for the implicit one).
    pub key: String,
    /// What to create: `<stack>_<key>` (or its `name:`), overlay, labelled.
    pub spec: NetworkSpec,
}

/// Where a planned secret's or config's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// The bytes of its `file:`, to create it with.
    Data(FileData),
    /// `external: true`: it must already exist under its name.
    External,
}

/// A secret or config of the stack: one to create, or an external one to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Secret or config.
    pub kind: FileKind,
    /// Its key in the compose file.
    pub key: String,
    /// Its name (`<stack>_<key>`, its `name:`, or an external's name) and labels (with
    /// the stack's, for one to create).
    pub spec: FileSpec,
    /// Its data, or external.
    pub source: FileSource,
}

/// Everything a deploy of the stack creates or needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackPlan {
    /// The stack's name.
    pub namespace: String,
    /// The networks the stack creates (those its services use and that are not
    /// external), sorted by name.
    pub networks: Vec<PlannedNetwork>,
    /// The external networks its services use: they must already exist. Sorted.
    pub external_networks: Vec<String>,
    /// The secrets and configs: every one the file declares (not external), and the
    /// external ones its services reference. Sorted by kind and name.
    pub files: Vec<PlannedFile>,
    /// The services, sorted by name; each passes [`ServiceSpec::validate`].
    pub services: Vec<ServiceSpec>,
    /// What swarm would honour that this mesh does not carry yet, one line each
    /// (`service web: tty is not supported yet`), in service order.
    pub warnings: Vec<String>,
}

/// Converts a loaded stack (`loaded.config`) deployed as `namespace`.
///
/// # Errors
/// The first fault found, naming the object and the key: an invalid stack name, a
/// service without an image, an undefined network, volume, secret or config, a value the
/// mesh cannot carry (an SCTP port, a job mode, an IPv6 subnet), a secret file that
/// cannot be read, or what [`ServiceSpec::validate`] refuses.
pub fn convert(namespace: &str, config: &Config, read: &dyn ReadData) -> Result<StackPlan, Error> {
    validate_stack_name(namespace)?;
    let mut plan = StackPlan {
        namespace: namespace.to_owned(),
        networks: Vec::new(),
        external_networks: Vec::new(),
        files: Vec::new(),
        services: Vec::new(),
        warnings: Vec::new(),
    };
    let mut used_networks = BTreeSet::new();
    let mut used_files = BTreeSet::new();
    for (name, service) in &config.services {
        let mut cx = ServiceCx {
            stack: namespace,
            config,
            name,
            object: format!("service {name}"),
            warnings: &mut plan.warnings,
        };
        let spec = cx.convert(service)?;
        used_networks.extend(service_network_keys(service));
        for r in &service.secrets {
            used_files.insert((FileKind::Secret, r.source.clone()));
        }
        for r in &service.configs {
            used_files.insert((FileKind::Config, r.source.clone()));
        }
        plan.services.push(spec);
    }
    plan.services.sort_by(|a, b| a.name.cmp(&b.name));
    for key in used_networks {
        let network = config.networks.get(&key).cloned().unwrap_or_default();
        let name = scoped(namespace, &key, network.name.as_deref());
        if network.external {
            plan.external_networks.push(name);
        } else {
            let spec = network_spec(namespace, &key, &name, &network, &mut plan.warnings)?;
            plan.networks.push(PlannedNetwork { key, spec });
        }
    }
    plan.networks.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    plan.external_networks.sort();
    plan.external_networks.dedup();
    for (kind, objects) in [
        (FileKind::Secret, &config.secrets),
        (FileKind::Config, &config.configs),
    ] {
        for (key, object) in objects {
            if object.external && !used_files.contains(&(kind, key.clone())) {
                continue;
            }
            plan.files.push(planned_file(
                namespace,
                kind,
                key,
                object,
                read,
                &mut plan.warnings,
            )?);
        }
    }
    plan.files
        .sort_by(|a, b| (a.kind, &a.spec.name).cmp(&(b.kind, &b.spec.name)));
    for volume_key in used_volume_keys(config) {
        volume_warnings(
            &volume_key,
            &config.volumes[&volume_key],
            &mut plan.warnings,
        );
    }
    Ok(plan)
}

/// A stack's name: it prefixes every object's, so it must fit in a DNS label.
fn validate_stack_name(namespace: &str) -> Result<(), Error> {
    mesh_api::stack::validate_namespace(namespace).map_err(|e| fail("stack", None, e.to_string()))
}

/// `<stack>_<key>`, or the object's own name (an external's, or one given `name:`).
fn scoped(stack: &str, key: &str, name: Option<&str>) -> String {
    name.map_or_else(|| format!("{stack}_{key}"), str::to_owned)
}

fn with_stack_label(stack: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(LABEL_NAMESPACE.into(), stack.into());
    labels
}

fn unsupported(warnings: &mut Vec<String>, object: &str, key: &str) {
    warnings.push(format!("{object}: {key} is not supported yet"));
}

/// The network keys a service joins (`default` when it names none).
fn service_network_keys(service: &Service) -> Vec<String> {
    if service.networks.is_empty() {
        vec![DEFAULT_NETWORK.to_owned()]
    } else {
        service.networks.keys().cloned().collect()
    }
}

fn used_volume_keys(config: &Config) -> BTreeSet<String> {
    config
        .services
        .values()
        .flat_map(|s| &s.volumes)
        .filter(|m| m.kind == "volume")
        .filter_map(|m| m.source.clone())
        .filter(|s| config.volumes.contains_key(s))
        .collect()
}

fn volume_warnings(key: &str, volume: &types::Volume, warnings: &mut Vec<String>) {
    let object = format!("volume {key}");
    if volume.driver.as_deref().is_some_and(|d| d != "local") {
        unsupported(warnings, &object, "driver");
    }
    if !volume.driver_opts.is_empty() {
        unsupported(warnings, &object, "driver_opts");
    }
    if !volume.labels.is_empty() {
        unsupported(warnings, &object, "labels");
    }
}

fn network_spec(
    stack: &str,
    key: &str,
    name: &str,
    network: &types::Network,
    warnings: &mut Vec<String>,
) -> Result<NetworkSpec, Error> {
    let object = format!("network {key}");
    let mut spec = NetworkSpec::new(name);
    if let Some(driver) = &network.driver
        && driver != OVERLAY_DRIVER
    {
        return Err(fail(
            &object,
            Some("driver"),
            format!("driver {driver:?} is not supported: only \"{OVERLAY_DRIVER}\""),
        ));
    }
    if !network.driver_opts.is_empty() {
        unsupported(warnings, &object, "driver_opts");
    }
    spec.attachable = network.attachable.unwrap_or(false);
    spec.internal = network.internal.unwrap_or(false);
    spec.labels = with_stack_label(stack, &network.labels);
    if let Some(ipam) = &network.ipam {
        if ipam.driver.as_deref().is_some_and(|d| d != "default") {
            unsupported(warnings, &object, "ipam.driver");
        }
        let subnets: Vec<&str> = ipam
            .config
            .iter()
            .filter_map(|p| p.subnet.as_deref())
            .collect();
        if subnets.len() > 1 {
            return Err(fail(
                &object,
                Some("ipam.config"),
                "at most one subnet is supported",
            ));
        }
        if let Some(subnet) = subnets.first() {
            spec.subnet = Some(subnet.parse().map_err(|_| {
                fail(
                    &object,
                    Some("ipam.config.0.subnet"),
                    format!("invalid subnet {subnet:?}: an IPv4 subnet such as 10.0.9.0/24"),
                )
            })?);
        }
    }
    spec.validate()
        .map_err(|e| fail(&object, None, e.to_string()))?;
    Ok(spec)
}

fn planned_file(
    stack: &str,
    kind: FileKind,
    key: &str,
    object: &FileObject,
    read: &dyn ReadData,
    warnings: &mut Vec<String>,
) -> Result<PlannedFile, Error> {
    let what = format!("{} {key}", kind.as_str());
    let name = scoped(stack, key, object.name.as_deref());
    if object.external {
        return Ok(PlannedFile {
            kind,
            key: key.to_owned(),
            spec: FileSpec {
                name,
                labels: BTreeMap::new(),
            },
            source: FileSource::External,
        });
    }
    if object.driver.is_some() {
        return Err(fail(
            &what,
            Some("driver"),
            format!("{} drivers are not supported", kind.as_str()),
        ));
    }
    if object.template_driver.is_some() {
        unsupported(warnings, &what, "template_driver");
    }
    let file = object
        .file
        .as_deref()
        .ok_or_else(|| fail(&what, None, "a file (file:) or external: true is required"))?;
    let data = read
        .read(Path::new(file))
        .map_err(|e| fail(&what, Some("file"), format!("{file}: {e}")))?;
    validate_file_data(kind, &data)
        .map_err(|e| fail(&what, Some("file"), format!("{file}: {e}")))?;
    let spec = FileSpec {
        name,
        labels: with_stack_label(stack, &object.labels),
    };
    spec.validate(kind)
        .map_err(|e| fail(&what, None, e.to_string()))?;
    Ok(PlannedFile {
        kind,
        key: key.to_owned(),
        spec,
        source: FileSource::Data(data.into()),
    })
}

/// Quotes a word for `/bin/sh -c` (a health check's `CMD` form).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Converting one service.
struct ServiceCx<'a> {
    stack: &'a str,
    config: &'a Config,
    name: &'a str,
    object: String,
    warnings: &'a mut Vec<String>,
}

impl ServiceCx<'_> {
    fn fail(&self, key: &str, message: impl Into<String>) -> Error {
        fail(&self.object, Some(key), message)
    }

    fn warn(&mut self, key: &str) {
        unsupported(self.warnings, &self.object, key);
    }

    fn warn_text(&mut self, text: String) {
        self.warnings.push(format!("{}: {text}", self.object));
    }

    fn convert(&mut self, s: &Service) -> Result<ServiceSpec, Error> {
        let (runtime, program, args) = self.program(s)?;
        let mut spec = ServiceSpec::new(
            &format!("{}_{}", self.stack, self.name),
            runtime,
            &program,
            args,
        );
        let deploy = s.deploy.clone().unwrap_or_default();
        spec.labels = with_stack_label(self.stack, &deploy.labels);
        if let Some(image) = &s.image {
            spec.labels.insert(LABEL_IMAGE.into(), image.clone());
        }
        spec.mode = self.mode(&deploy)?;
        if let Some(mode) = &deploy.endpoint_mode {
            spec.endpoint.mode = if mode == "dnsrr" {
                EndpointMode::Dnsrr
            } else {
                EndpointMode::Vip
            };
        }
        spec.endpoint.ports = self.ports(s)?;
        self.placement(&deploy, &mut spec)?;
        if let Some(update) = &deploy.update_config {
            spec.update = self.update_config("deploy.update_config", update)?;
        }
        if let Some(rollback) = &deploy.rollback_config {
            spec.rollback = self.update_config("deploy.rollback_config", rollback)?;
        }
        spec.task.restart = self.restart(s, &deploy)?;
        spec.task.resources = self.resources(&deploy)?;
        spec.task.env = Self::environment(s);
        spec.task.health = self.health(s)?;
        if let Some(grace) = &s.stop_grace_period {
            spec.task.stop_grace_ms = grace.millis();
        }
        spec.task.user.clone_from(&s.user);
        spec.task.cap_add = self.capabilities("cap_add", &s.cap_add)?;
        spec.task.cap_drop = self.capabilities("cap_drop", &s.cap_drop)?;
        spec.task.networks = self.networks(s)?;
        spec.task.secrets = self.file_refs(FileKind::Secret, &s.secrets)?;
        spec.task.configs = self.file_refs(FileKind::Config, &s.configs)?;
        spec.task.mounts = self.mounts(s)?;
        self.container(s, &mut spec.task)?;
        self.unsupported_keys(s);
        spec.validate()
            .map_err(|e| fail(&self.object, None, e.to_string()))?;
        Ok(spec)
    }

    /// The runtime, the program (image) and its arguments.
    fn program(&mut self, s: &Service) -> Result<(RuntimeKind, String, Vec<String>), Error> {
        let runtime = match s.extensions.get(RUNTIME_FIELD) {
            None => RuntimeKind::Docker,
            Some(Json::String(r)) if r == "docker" => RuntimeKind::Docker,
            Some(Json::String(r)) if r == "process" => RuntimeKind::Process,
            Some(_) => {
                return Err(self.fail(RUNTIME_FIELD, "must be one of docker, process"));
            }
        };
        let command = s.command.clone().unwrap_or_default();
        match runtime {
            RuntimeKind::Docker => {
                let Some(image) = s.image.clone().filter(|i| !i.trim().is_empty()) else {
                    return Err(fail(
                        &self.object,
                        None,
                        format!(
                            "service {} has neither an image nor {RUNTIME_FIELD}: process \
                             with a program to run",
                            self.name
                        ),
                    ));
                };
                Ok((runtime, image, command))
            }
            RuntimeKind::Process => {
                let entrypoint = s.entrypoint.clone().filter(|e| !e.is_empty());
                let image = s.image.clone().filter(|i| !i.trim().is_empty());
                let mut line = match (entrypoint, image) {
                    (Some(_), Some(_)) => {
                        return Err(self.fail(
                            "entrypoint",
                            format!(
                                "{RUNTIME_FIELD}: process takes the program from image or \
                                 from entrypoint, not both"
                            ),
                        ));
                    }
                    (Some(entrypoint), None) => entrypoint,
                    (None, Some(image)) => vec![image],
                    (None, None) => Vec::new(),
                };
                line.extend(command);
                if line.is_empty() {
                    return Err(fail(
                        &self.object,
                        None,
                        format!(
                            "service {} has neither an image nor an entrypoint or command \
                             for the process runtime",
                            self.name
                        ),
                    ));
                }
                let program = line.remove(0);
                Ok((runtime, program, line))
            }
        }
    }

    fn mode(&self, deploy: &types::Deploy) -> Result<ServiceMode, Error> {
        let replicas = deploy
            .replicas
            .map(|r| {
                u32::try_from(r).map_err(|_| {
                    self.fail("deploy.replicas", format!("invalid replicas {r}: too many"))
                })
            })
            .transpose()?;
        match deploy.mode.as_deref().unwrap_or("replicated") {
            "replicated" => Ok(ServiceMode::Replicated {
                replicas: replicas.unwrap_or(1),
            }),
            "global" => {
                if replicas.is_some() {
                    return Err(self.fail(
                        "deploy.replicas",
                        "replicas can only be used with replicated mode",
                    ));
                }
                Ok(ServiceMode::Global)
            }
            other => Err(self.fail(
                "deploy.mode",
                format!("{other} is not supported yet (replicated or global)"),
            )),
        }
    }

    fn ports(&self, s: &Service) -> Result<Vec<PortSpec>, Error> {
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().enumerate() {
            let key = format!("ports.{i}");
            let protocol = match p.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    return Err(self.fail(
                        &key,
                        format!("protocol {other} is not supported (tcp or udp)"),
                    ));
                }
            };
            if p.target == 0 {
                return Err(self.fail(&key, "invalid target port 0"));
            }
            ports.push(PortSpec {
                published: p.published.filter(|&p| p != 0),
                target: p.target,
                protocol,
                mode: if p.mode == "host" {
                    PublishMode::Host
                } else {
                    PublishMode::Ingress
                },
            });
        }
        ports.sort_by_key(|p| {
            (
                p.published.unwrap_or(0),
                p.target,
                p.protocol,
                p.mode == PublishMode::Host,
            )
        });
        Ok(ports)
    }

    /// `deploy.placement`: its constraints, preferences and limit of replicas per
    /// node, into `spec` (whose mode is set).
    fn placement(&mut self, deploy: &types::Deploy, spec: &mut ServiceSpec) -> Result<(), Error> {
        const ENGINE_LABELS: &str = "engine.labels.";
        let Some(placement) = &deploy.placement else {
            return Ok(());
        };
        let mut constraints = Vec::new();
        for (i, text) in placement.constraints.iter().enumerate() {
            let key = format!("deploy.placement.constraints.{i}");
            let (left, equal, right) = if let Some((l, r)) = text.split_once("==") {
                (l.trim(), true, r.trim())
            } else if let Some((l, r)) = text.split_once("!=") {
                (l.trim(), false, r.trim())
            } else {
                (text.trim(), true, "")
            };
            if left == "node.platform.os" {
                // Every node of this mesh runs Linux (the agent is Linux-only).
                if right.eq_ignore_ascii_case("linux") == equal {
                    self.warn_text(format!(
                        "placement constraint {text:?} holds on every node (all run Linux): \
                         not stored"
                    ));
                    continue;
                }
                return Err(self.fail(
                    &key,
                    format!("{text:?}: no node satisfies it (every node runs Linux)"),
                ));
            }
            if left.starts_with("node.platform.") || left.starts_with("engine.labels.") {
                self.warn_text(format!(
                    "placement constraint {text:?} is not supported yet (not stored)"
                ));
                continue;
            }
            constraints.push(
                text.parse::<Constraint>()
                    .map_err(|e| self.fail(&key, e.to_string()))?,
            );
        }
        spec.constraints = constraints;
        for (i, pref) in placement.preferences.iter().enumerate() {
            let preference = PlacementPreference {
                spread: pref.spread.trim().to_owned(),
            };
            if preference
                .spread
                .get(..ENGINE_LABELS.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(ENGINE_LABELS))
            {
                // As for constraints: agents report no engine labels, so every
                // node would be in one group, which spreads nothing.
                self.warn_text(format!(
                    "placement preference \"spread: {}\" is not supported yet (not stored)",
                    preference.spread
                ));
                continue;
            }
            preference.validate().map_err(|e| {
                self.fail(
                    &format!("deploy.placement.preferences.{i}.spread"),
                    e.to_string(),
                )
            })?;
            spec.preferences.push(preference);
        }
        if let Some(max) = placement.max_replicas_per_node {
            if max > 0 && spec.mode == ServiceMode::Global {
                return Err(self.fail(
                    "deploy.placement.max_replicas_per_node",
                    "can only be used with replicated mode",
                ));
            }
            spec.max_replicas_per_node = max;
        }
        Ok(())
    }

    fn update_config(&self, key: &str, u: &types::UpdateConfig) -> Result<SpecUpdateConfig, Error> {
        let mut config = SpecUpdateConfig::default();
        if let Some(parallelism) = u.parallelism {
            config.parallelism = u32::try_from(parallelism).map_err(|_| {
                self.fail(
                    &format!("{key}.parallelism"),
                    format!("invalid parallelism {parallelism}: too large"),
                )
            })?;
        }
        if let Some(delay) = &u.delay {
            config.delay_ms = delay.millis();
        }
        if let Some(action) = &u.failure_action {
            config.failure_action = action
                .parse::<FailureAction>()
                .map_err(|e| self.fail(&format!("{key}.failure_action"), e.to_string()))?;
        }
        if let Some(monitor) = &u.monitor {
            config.monitor_ms = monitor.millis();
        }
        if let Some(ratio) = u.max_failure_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(self.fail(
                    &format!("{key}.max_failure_ratio"),
                    "max-failure-ratio must be between 0 and 1",
                ));
            }
            // In [0, 1000] once checked.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let permille = (ratio * 1000.0).round() as u32;
            config.max_failure_permille = permille;
        }
        if let Some(order) = &u.order {
            config.order = order
                .parse::<UpdateOrder>()
                .map_err(|e| self.fail(&format!("{key}.order"), e.to_string()))?;
        }
        Ok(config)
    }

    /// `deploy.restart_policy`, or docker's fallback to the service's `restart:`.
    fn restart(&self, s: &Service, deploy: &types::Deploy) -> Result<RestartPolicy, Error> {
        let mut policy = RestartPolicy::default();
        let Some(r) = &deploy.restart_policy else {
            let Some(restart) = s.restart.as_deref() else {
                return Ok(policy);
            };
            // docker's convertRestartPolicy: "no" leaves swarm's default.
            match restart
                .split_once(':')
                .map_or((restart, None), |(a, b)| (a, Some(b)))
            {
                ("no" | "" | "always" | "unless-stopped", None) => {}
                ("on-failure", count) => {
                    policy.condition = RestartCondition::OnFailure;
                    if let Some(count) = count {
                        policy.max_attempts = count.parse().map_err(|_| {
                            self.fail("restart", format!("invalid restart policy {restart:?}"))
                        })?;
                    }
                }
                _ => {
                    return Err(self.fail("restart", format!("unknown restart policy: {restart}")));
                }
            }
            return Ok(policy);
        };
        if let Some(condition) = &r.condition {
            policy.condition = condition.parse().map_err(|e: mesh_api::spec::SpecError| {
                self.fail("deploy.restart_policy.condition", e.to_string())
            })?;
        }
        if let Some(delay) = &r.delay {
            policy.delay_ms = delay.millis();
        }
        if let Some(attempts) = r.max_attempts {
            policy.max_attempts = u32::try_from(attempts).map_err(|_| {
                self.fail(
                    "deploy.restart_policy.max_attempts",
                    format!("invalid max_attempts {attempts}: too large"),
                )
            })?;
        }
        if let Some(window) = &r.window {
            policy.window_ms = window.millis();
        }
        Ok(policy)
    }

    fn resources(&mut self, deploy: &types::Deploy) -> Result<ResourceRequirements, Error> {
        let mut out = ResourceRequirements::default();
        let Some(resources) = &deploy.resources else {
            return Ok(out);
        };
        for (key, amounts, slot) in [
            (
                "deploy.resources.limits",
                &resources.limits,
                &mut out.limits,
            ),
            (
                "deploy.resources.reservations",
                &resources.reservations,
                &mut out.reservations,
            ),
        ] {
            let Some(a) = amounts else { continue };
            let mut r = Resources::default();
            if let Some(cpus) = a.cpus {
                r.nano_cpus = parse_nano_cpus(&cpus.to_string())
                    .map_err(|e| fail(&self.object, Some(&format!("{key}.cpus")), e.to_string()))?;
            }
            if let Some(memory) = &a.memory {
                r.memory_bytes = memory.bytes();
            }
            if a.pids.is_some() {
                unsupported(self.warnings, &self.object, &format!("{key}.pids"));
            }
            if !a.generic_resources.is_empty() {
                unsupported(
                    self.warnings,
                    &self.object,
                    &format!("{key}.generic_resources"),
                );
            }
            *slot = r;
        }
        Ok(out)
    }

    /// `KEY=VALUE`, sorted as docker sorts them; a name without a value (unset in the
    /// environment too) is left out, as the engine leaves it out. Template
    /// placeholders (`{{.Task.Slot}}`) are kept as written: each node expands them for
    /// its tasks.
    fn environment(s: &Service) -> Vec<String> {
        let mut env: Vec<String> = s
            .environment
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        env.sort();
        env
    }

    fn health(&mut self, s: &Service) -> Result<Option<HealthCheck>, Error> {
        let Some(h) = &s.healthcheck else {
            return Ok(None);
        };
        if h.disable == Some(true) {
            return Ok(None);
        }
        let Some(test) = &h.test else {
            self.warn_text(
                "healthcheck without test (the image's own check) is not supported yet".to_owned(),
            );
            return Ok(None);
        };
        let cmd = match test.split_first() {
            Some((first, [])) if first == "NONE" => return Ok(None),
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
            Some((first, [line])) if first == "CMD-SHELL" => line.clone(),
            _ => {
                return Err(self.fail(
                    "healthcheck.test",
                    "must be [\"NONE\"], [\"CMD\", args...], [\"CMD-SHELL\", command] or a \
                     command string",
                ));
            }
        };
        let mut check = HealthCheck::new(cmd);
        // As docker: a zero duration keeps the default.
        if let Some(d) = h.interval.as_ref().filter(|d| d.millis() > 0) {
            check.interval_ms = d.millis();
        }
        if let Some(d) = h.timeout.as_ref().filter(|d| d.millis() > 0) {
            check.timeout_ms = d.millis();
        }
        if let Some(d) = &h.start_period {
            check.start_period_ms = d.millis();
        }
        if let Some(retries) = h.retries {
            check.retries = u32::try_from(retries)
                .map_err(|_| self.fail("healthcheck.retries", "too large"))?;
        }
        if h.start_interval.is_some() {
            self.warn("healthcheck.start_interval");
        }
        Ok(Some(check))
    }

    fn capabilities(&self, key: &str, caps: &[String]) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for cap in caps {
            let cap =
                mesh_api::capability::canonical(cap).map_err(|e| self.fail(key, e.to_string()))?;
            if !out.contains(&cap) {
                out.push(cap);
            }
        }
        out.sort();
        Ok(out)
    }

    fn networks(&mut self, s: &Service) -> Result<Vec<NetworkAttachmentSpec>, Error> {
        let mut out = Vec::new();
        for key in service_network_keys(s) {
            let declared = self.config.networks.get(&key);
            if declared.is_none() && key != DEFAULT_NETWORK {
                return Err(self.fail("networks", format!("undefined network {key:?}")));
            }
            let target = scoped(self.stack, &key, declared.and_then(|n| n.name.as_deref()));
            if mesh_api::network::PREDEFINED_NAMES.contains(&target.as_str()) {
                return Err(self.fail(
                    "networks",
                    format!("network {target:?} is not supported: a stack's services join overlay networks"),
                ));
            }
            let attachment = s.networks.get(&key).cloned().unwrap_or_default();
            if !attachment.driver_opts.is_empty() {
                self.warn(&format!("networks.{key}.driver_opts"));
            }
            let mut aliases = attachment.aliases.clone();
            // The alias every stack service has: its short name (docker's
            // convertServiceNetworks).
            aliases.push(self.name.to_owned());
            let mut seen = BTreeSet::new();
            aliases.retain(|a| seen.insert(a.clone()));
            out.push(NetworkAttachmentSpec { target, aliases });
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(out)
    }

    fn file_refs(&self, kind: FileKind, refs: &[types::FileRef]) -> Result<Vec<FileRef>, Error> {
        let objects = match kind {
            FileKind::Secret => &self.config.secrets,
            FileKind::Config => &self.config.configs,
        };
        let what = kind.as_str();
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let key = format!("{what}s.{i}");
            let object = objects
                .get(&r.source)
                .ok_or_else(|| self.fail(&key, format!("undefined {what} {:?}", r.source)))?;
            let target = r.target.clone().unwrap_or_else(|| r.source.clone());
            let target = match kind {
                // Docker puts a config's relative target at the root.
                FileKind::Config if !target.starts_with('/') => format!("/{target}"),
                _ => target,
            };
            let id = |field: &str, v: &Option<String>| -> Result<u32, Error> {
                v.as_deref().map_or(Ok(0), |v| {
                    v.parse().map_err(|_| {
                        self.fail(
                            &format!("{key}.{field}"),
                            format!("invalid {field} {v:?}: expected a number"),
                        )
                    })
                })
            };
            let reference = FileRef {
                source: scoped(self.stack, &r.source, object.name.as_deref()),
                target,
                uid: id("uid", &r.uid)?,
                gid: id("gid", &r.gid)?,
                mode: r.mode.unwrap_or(mesh_api::file_ref::DEFAULT_MODE),
            };
            reference
                .validate(kind)
                .map_err(|e| self.fail(&key, e.to_string()))?;
            out.push(reference);
        }
        out.sort_by(|a, b| a.source.cmp(&b.source).then(a.target.cmp(&b.target)));
        Ok(out)
    }

    fn mounts(&mut self, s: &Service) -> Result<Vec<TaskMount>, Error> {
        let mut out = Vec::new();
        for (i, m) in s.volumes.iter().enumerate() {
            let key = format!("volumes.{i}");
            let mut mount = TaskMount {
                kind: MountKind::Volume,
                source: String::new(),
                target: m.target.clone(),
                readonly: m.read_only,
                tmpfs_size: None,
                tmpfs_mode: None,
                volume_nocopy: false,
            };
            match m.kind.as_str() {
                "volume" => {
                    let Some(source) = &m.source else {
                        return Err(self.fail(
                            &key,
                            format!(
                                "{}: anonymous volumes are not supported (name a volume declared \
                                 under the top-level volumes)",
                                m.target
                            ),
                        ));
                    };
                    let volume =
                        self.config.volumes.get(source).ok_or_else(|| {
                            self.fail(&key, format!("undefined volume {source:?}"))
                        })?;
                    mount.source = scoped(self.stack, source, volume.name.as_deref());
                    if let Some(options) = &m.volume {
                        mount.volume_nocopy = options.nocopy;
                        if options.subpath.is_some() {
                            self.warn(&format!("{key}.volume.subpath"));
                        }
                    }
                }
                "bind" => {
                    mount.kind = MountKind::Bind;
                    mount.source = m.source.clone().unwrap_or_default();
                    if m.bind.as_ref().is_some_and(|b| b.propagation.is_some()) {
                        self.warn(&format!("{key}.bind.propagation"));
                    }
                }
                "tmpfs" => {
                    mount.kind = MountKind::Tmpfs;
                    if m.source.is_some() {
                        return Err(self.fail(&key, "invalid tmpfs source, source must be empty"));
                    }
                    mount.tmpfs_size = m
                        .tmpfs
                        .as_ref()
                        .and_then(|t| t.size.as_ref())
                        .map(types::Size::bytes);
                }
                other => {
                    return Err(self.fail(
                        &key,
                        format!("type {other} is not supported (bind, volume or tmpfs)"),
                    ));
                }
            }
            mount
                .validate()
                .map_err(|e| self.fail(&key, e.to_string()))?;
            out.push(mount);
        }
        Ok(out)
    }

    /// `hostname`, `extra_hosts`, `dns`, `dns_search`, `dns_opt`, `working_dir`, the
    /// service's (container) `labels`, and a docker service's `entrypoint`, kept as
    /// written (a hostname's template placeholders are expanded on the node).
    fn container(&self, s: &Service, task: &mut mesh_api::spec::TaskSpec) -> Result<(), Error> {
        use mesh_api::container::{self as c, ExtraHost};
        if let Some(hostname) = &s.hostname {
            // Its errors name the field already (`hostname: unknown template ...`).
            c::validate_hostname(hostname).map_err(|e| fail(&self.object, None, e.to_string()))?;
            task.hostname = Some(hostname.clone());
        }
        for (i, host) in s.extra_hosts.iter().enumerate() {
            let host = ExtraHost::parse(host)
                .map_err(|e| self.fail(&format!("extra_hosts.{i}"), e.to_string()))?;
            task.hosts.push(host.to_string());
        }
        for (i, server) in s.dns.iter().enumerate() {
            let ip = c::parse_nameserver(server)
                .map_err(|e| self.fail(&format!("dns.{i}"), e.to_string()))?;
            task.dns.nameservers.push(ip);
        }
        for (i, domain) in s.dns_search.iter().enumerate() {
            c::validate_dns_search(domain)
                .map_err(|e| self.fail(&format!("dns_search.{i}"), e.to_string()))?;
            task.dns.search.push(domain.clone());
        }
        for (i, option) in s.dns_opt.iter().enumerate() {
            c::validate_dns_option(option)
                .map_err(|e| self.fail(&format!("dns_opt.{i}"), e.to_string()))?;
            task.dns.options.push(option.clone());
        }
        if let Some(dir) = &s.working_dir {
            c::validate_workdir(dir).map_err(|e| self.fail("working_dir", e.to_string()))?;
            task.workdir = Some(dir.clone());
        }
        task.container_labels.clone_from(&s.labels);
        if task.runtime == RuntimeKind::Docker
            && let Some(entrypoint) = &s.entrypoint
        {
            task.entrypoint.clone_from(entrypoint);
        }
        Ok(())
    }

    /// A warning for each key swarm honours that the spec cannot carry yet.
    fn unsupported_keys(&mut self, s: &Service) {
        let present: [(&str, bool); 11] = [
            ("stop_signal", s.stop_signal.is_some()),
            ("tty", s.tty == Some(true)),
            ("stdin_open", s.stdin_open == Some(true)),
            ("read_only", s.read_only == Some(true)),
            ("init", s.init == Some(true)),
            ("sysctls", !s.sysctls.is_empty()),
            ("ulimits", !s.ulimits.is_empty()),
            ("oom_score_adj", s.oom_score_adj.is_some()),
            ("logging", s.logging.is_some()),
            ("isolation", s.isolation.is_some()),
            ("credential_spec", s.credential_spec.is_some()),
        ];
        for (key, is_present) in present {
            if is_present {
                self.warn(key);
            }
        }
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
