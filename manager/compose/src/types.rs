//! The typed compose model: the v3 subset that swarm honours, after docker/cli's
//! `cli/compose/types`. Each type reads both syntaxes compose allows (short strings and
//! long mappings, lists and mappings) and keeps one, the long, normalized form, which
//! is what `stack config` prints and what merging works on.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

/// A whole compose file, or several merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The file's `version:` (3.x), if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The services, by name.
    pub services: BTreeMap<String, Service>,
    /// The networks, by key.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub networks: BTreeMap<String, Network>,
    /// The named volumes, by key.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub volumes: BTreeMap<String, Volume>,
    /// The secrets, by key.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub secrets: BTreeMap<String, FileObject>,
    /// The configs, by key.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub configs: BTreeMap<String, FileObject>,
    /// The top-level `x-` extension fields, as written.
    #[serde(flatten, skip_deserializing)]
    pub extensions: BTreeMap<String, Json>,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// The image (`stack deploy` needs one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `command`: the image's arguments (a string is split as a shell would).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "shell_command"
    )]
    pub command: Option<Vec<String>>,
    /// `entrypoint`: the program (a string is split as a shell would).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "shell_command"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `environment` (list `K=V` or mapping) with `env_file` folded in; `None` is a
    /// variable named without a value that the environment does not set either.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "environment"
    )]
    pub environment: BTreeMap<String, Option<String>>,
    /// `env_file`: empty once loaded (the files are folded into `environment`).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_or_list"
    )]
    pub env_file: Vec<String>,
    /// Container labels.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Published ports, one per port (short-syntax ranges expanded).
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "ports")]
    pub ports: Vec<Port>,
    /// Networks the service joins, with aliases.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "service_networks"
    )]
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// Secrets the tasks get.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "file_refs")]
    pub secrets: Vec<FileRef>,
    /// Configs the tasks get.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "file_refs")]
    pub configs: Vec<FileRef>,
    /// Mounts.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "mounts")]
    pub volumes: Vec<Mount>,
    /// The health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Time to wait after the stop signal before killing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    /// The stop signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `user[:group]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The container's hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Extra `/etc/hosts` entries, `host:ip`.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "extra_hosts"
    )]
    pub extra_hosts: Vec<String>,
    /// DNS servers.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_or_list"
    )]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_or_list"
    )]
    pub dns_search: Vec<String>,
    /// Resolver options (`ndots:2`): compose's name for docker's `--dns-option`.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_or_list"
    )]
    pub dns_opt: Vec<String>,
    /// Capabilities added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Allocate a TTY.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// Keep stdin open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin_open: Option<bool>,
    /// Read-only root filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Run an init process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Kernel parameters.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits (`nofile: 1024` or `{soft, hard}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// OOM score adjustment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i64>,
    /// The logging driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Windows isolation technology.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Windows credential spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_spec: Option<CredentialSpec>,
    /// The service-level `restart:` (ignored with a warning, as docker does, but docker
    /// still falls back to it when `deploy.restart_policy` is unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// How swarm runs the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// The service's `x-` extension fields (for example the runtime a mesh stack asks
    /// for), as written.
    #[serde(flatten, skip_deserializing)]
    pub extensions: BTreeMap<String, Json>,
}

/// A published port (docker's `ServicePortConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// `ingress` (the routing mesh) or `host`.
    #[serde(default = "ingress", deserialize_with = "port_mode")]
    pub mode: String,
    /// The port inside the task.
    pub target: u16,
    /// The port published on the nodes (`None`: swarm picks one from 30000-32767).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "tcp", deserialize_with = "protocol")]
    pub protocol: String,
}

fn ingress() -> String {
    "ingress".into()
}

fn tcp() -> String {
    "tcp".into()
}

/// A service's attachment to a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceNetwork {
    /// Extra names the service answers to on the network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Ignored by swarm (kept as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// Ignored by swarm (kept as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Driver options of the attachment.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
}

/// A service's reference to a secret or config (short `- name` or long syntax).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The top-level secret or config key.
    pub source: String,
    /// The file name (secrets) or path (configs) in the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// Permission bits (`0440` is octal, as in Go's YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A mount (docker's `ServiceVolumeConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// `volume`, `bind`, `tmpfs`, `npipe`, `cluster` or `image`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A volume's key, or a bind's host path (made absolute against the compose
    /// file's directory); none for an anonymous volume or a tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The path in the task.
    pub target: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Ignored on Linux (kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// Bind options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    /// Volume options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    /// Tmpfs options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

/// `bind:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BindOptions {
    /// Mount propagation (`rprivate`, `shared`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
}

/// `volume:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeOptions {
    /// Do not copy the image's content into a new volume.
    #[serde(skip_serializing_if = "is_false")]
    pub nocopy: bool,
    /// A path inside the volume to mount instead of its root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// `tmpfs:` options of a mount.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TmpfsOptions {
    /// The size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

/// The health check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` (what a string becomes) or `["NONE"]`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "healthcheck_test"
    )]
    pub test: Option<Vec<String>>,
    /// Between checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// A check's timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failures before unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// Grace period after start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    /// Between checks during the start period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    /// Turns the image's health check off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
}

/// A ulimit: one value for both, or soft and hard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ulimit {
    /// `nofile: 1024`.
    Single(i64),
    /// `nofile: {soft: 1024, hard: 2048}`.
    SoftHard {
        /// Soft limit.
        soft: i64,
        /// Hard limit.
        hard: i64,
    },
}

/// The logging driver and its options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// The driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Its options.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub options: BTreeMap<String, String>,
}

/// A Windows credential spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialSpec {
    /// A config's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// A file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A registry value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
}

/// `deploy:`: how swarm runs the service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deploy {
    /// `replicated` (default), `global`, `replicated-job` or `global-job`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deploy_mode"
    )]
    pub mode: Option<String>,
    /// Replicas of a replicated service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    /// `vip` (default) or `dnsrr`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "endpoint_mode"
    )]
    pub endpoint_mode: Option<String>,
    /// Service labels.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Where tasks may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Limits and reservations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// When tasks restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// How updates roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    /// How rollbacks roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Placement {
    /// `node.role == manager`, ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<Preference>,
    /// At most this many tasks on one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

/// A placement preference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    /// Spread tasks evenly over the values of this label (`node.labels.zone`).
    pub spread: String,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Hard limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
    /// What the scheduler reserves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceAmounts>,
}

/// CPUs, memory and more, as a limit or a reservation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPUs (`"0.5"` or `0.5`).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "cpus")]
    pub cpus: Option<f64>,
    /// Memory (`512M`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Process count limit (limits only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// Generic resources (reservations only), as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generic_resources: Vec<Json>,
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "condition"
    )]
    pub condition: Option<String>,
    /// Between restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Restarts before giving up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    /// The window a restart is judged in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// `deploy.update_config` and `deploy.rollback_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Tasks updated at once (0: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    /// Between batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// `continue`, `rollback` or `pause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    /// How long a task is watched after its update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
    /// Tolerated failure ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "order")]
    pub order: Option<String>,
}

/// `external:` of a top-level object: `true`, or the old `{name: N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct External(pub bool);

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// The driver (`overlay` when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
    /// Exists already; not created by the stack.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "external")]
    pub external: bool,
    /// The name, if not `<stack>_<key>` (or the key, when external).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Standalone containers may attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachable: Option<bool>,
    /// No outside connectivity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// Labels.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// Addressing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
}

/// A network's addressing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ipam {
    /// The IPAM driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Pools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
}

/// An address pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpamPool {
    /// `10.0.9.0/24`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

/// A top-level named volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Volume {
    /// The driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Driver options.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
    /// Exists already.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "external")]
    pub external: bool,
    /// The name, if not `<stack>_<key>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub labels: BTreeMap<String, String>,
}

/// A top-level secret or config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileObject {
    /// The file with the data (made absolute against the compose file's directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Exists already.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "external")]
    pub external: bool,
    /// The name, if not `<stack>_<key>` (or the key, when external).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub labels: BTreeMap<String, String>,
    /// A secrets driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Its options.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "labels"
    )]
    pub driver_opts: BTreeMap<String, String>,
    /// A template driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

/// A value compose writes as text in a unit (`10s`, `512M`), kept as written beside
/// its number: [`Duration`] or [`Size`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<U> {
    text: String,
    value: u64,
    unit: std::marker::PhantomData<U>,
}

/// How a [`Written`] value is read.
pub trait Unit {
    /// What it must look like, for errors.
    const EXPECTED: &'static str;
    /// Whether a bare YAML number is taken too (bytes are; a duration needs its unit).
    const NUMBERS: bool;
    /// The value of `text`.
    ///
    /// # Errors
    /// Why `text` is not one.
    fn parse(text: &str) -> Result<u64, String>;
}

/// Milliseconds, from a duration as Go and compose write it (`10s`, `1m30s`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Millis {}

impl Unit for Millis {
    const EXPECTED: &'static str = "must be a duration such as 10s or 1m30s";
    const NUMBERS: bool = false;
    fn parse(text: &str) -> Result<u64, String> {
        mesh_api::spec::parse_duration_ms(text).map_err(|e| e.to_string())
    }
}

/// Bytes, from an amount of memory as compose writes it (`512M`, `1g`, or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {}

impl Unit for Bytes {
    const EXPECTED: &'static str = "must be a size such as 512M";
    const NUMBERS: bool = true;
    fn parse(text: &str) -> Result<u64, String> {
        mesh_api::resources::parse_memory_bytes(text).map_err(|e| e.to_string())
    }
}

/// A duration, kept as written.
pub type Duration = Written<Millis>;
/// An amount of memory, kept as written.
pub type Size = Written<Bytes>;

impl<U: Unit> Written<U> {
    /// Parses `text`.
    ///
    /// # Errors
    /// Not a value of the unit.
    pub fn parse(text: &str) -> Result<Self, String> {
        U::parse(text).map(|value| Written {
            text: text.trim().to_owned(),
            value,
            unit: std::marker::PhantomData,
        })
    }

    /// As written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Duration {
    /// The duration in milliseconds.
    #[must_use]
    pub fn millis(&self) -> u64 {
        self.value
    }
}

impl Size {
    /// The size in bytes.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.value
    }
}

impl<U> Serialize for Written<U> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, U: Unit> Deserialize<'de> for Written<U> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Json::deserialize(d)? {
            Json::String(s) => Self::parse(&s).map_err(D::Error::custom),
            Json::Number(n) if U::NUMBERS && n.is_u64() => {
                Self::parse(&n.to_string()).map_err(D::Error::custom)
            }
            _ => Err(D::Error::custom(U::EXPECTED)),
        }
    }
}

// ---- readers of the forms compose allows ----

/// A scalar as text (numbers and booleans as YAML writes them); `None` for others.
fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    let map: BTreeMap<String, Option<T>> = Deserialize::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Json::deserialize(d)? {
        Json::Null => Ok(Vec::new()),
        Json::String(s) => Ok(vec![s]),
        Json::Array(items) => items
            .iter()
            .map(|i| scalar_text(i).ok_or(()))
            .collect::<Result<_, _>>()
            .map_err(|()| D::Error::custom("must be a string or a list of strings")),
        _ => Err(D::Error::custom("must be a string or a list of strings")),
    }
}

fn shell_command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Json::deserialize(d)? {
        Json::Null => Ok(None),
        Json::String(s) => shell_split(&s).map(Some).map_err(D::Error::custom),
        Json::Array(items) => items
            .iter()
            .map(|i| scalar_text(i).ok_or(()))
            .collect::<Result<_, _>>()
            .map(Some)
            .map_err(|()| D::Error::custom("must be a string or a list of strings")),
        _ => Err(D::Error::custom("must be a string or a list of strings")),
    }
}

/// Splits a command line as a POSIX shell would (quotes and backslashes; no
/// expansions), as docker's `shellwords.Parse`.
///
/// # Errors
/// An unclosed quote or a trailing backslash.
pub fn shell_split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                word.push(chars.next().ok_or("unterminated escape in command")?);
                in_word = true;
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unclosed quote in command".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unclosed quote in command".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unclosed quote in command".into()),
                    }
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A list of `K=V` (or `K`) or a mapping, as text; `None` for a name without value.
fn key_values(v: Json, what: &str) -> Result<BTreeMap<String, Option<String>>, String> {
    let bad = || format!("must be a mapping or a list of {what}");
    match v {
        Json::Null => Ok(BTreeMap::new()),
        Json::Array(items) => items
            .iter()
            .map(|i| {
                let text = scalar_text(i).ok_or_else(bad)?;
                Ok(match text.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (text, None),
                })
            })
            .collect(),
        Json::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Json::Null => Ok((k, None)),
                v => scalar_text(&v)
                    .map(|t| (k.clone(), Some(t)))
                    .ok_or_else(|| format!("{k}: must be a string, number, boolean or null")),
            })
            .collect(),
        _ => Err(bad()),
    }
}

fn environment<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    key_values(Json::deserialize(d)?, "KEY=VALUE strings").map_err(D::Error::custom)
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(key_values(Json::deserialize(d)?, "KEY=VALUE strings")
        .map_err(D::Error::custom)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn extra_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Json::deserialize(d)? {
        Json::Object(map) => map
            .into_iter()
            .map(|(host, ip)| {
                scalar_text(&ip)
                    .map(|ip| format!("{host}:{ip}"))
                    .ok_or_else(|| D::Error::custom("must be a mapping of host to address"))
            })
            .collect(),
        other => string_or_list(other).map_err(D::Error::custom),
    }
}

fn service_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, ServiceNetwork>, D::Error> {
    match Json::deserialize(d)? {
        Json::Null => Ok(BTreeMap::new()),
        Json::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Json::String(name) => Ok((name, ServiceNetwork::default())),
                _ => Err(D::Error::custom(
                    "must be a list of network names or a mapping",
                )),
            })
            .collect(),
        Json::Object(map) => map
            .into_iter()
            .map(|(name, v)| {
                let network = if v.is_null() {
                    ServiceNetwork::default()
                } else {
                    serde_json::from_value(v).map_err(|e| {
                        D::Error::custom(format!("{name}: {}", crate::words(&e.to_string())))
                    })?
                };
                Ok((name, network))
            })
            .collect(),
        _ => Err(D::Error::custom(
            "must be a list of network names or a mapping",
        )),
    }
}

fn file_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FileRef>, D::Error> {
    let Json::Array(items) = Json::deserialize(d)? else {
        return Err(D::Error::custom("must be a list"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Json::String(source) => Ok(FileRef {
                source,
                ..FileRef::default()
            }),
            Json::Object(_) => serde_json::from_value(item)
                .map_err(|e| D::Error::custom(format!("{i}: {}", crate::words(&e.to_string())))),
            _ => Err(D::Error::custom(format!(
                "{i}: must be a string or a mapping"
            ))),
        })
        .collect()
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Port>, D::Error> {
    let Json::Array(items) = Json::deserialize(d)? else {
        return Err(D::Error::custom("must be a list"));
    };
    let mut ports = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Json::Object(_) => {
                ports.push(serde_json::from_value(item).map_err(|e| {
                    D::Error::custom(format!("{i}: {}", crate::words(&e.to_string())))
                })?)
            }
            other => {
                let text = scalar_text(&other).ok_or_else(|| {
                    D::Error::custom(format!("{i}: must be a string, number or mapping"))
                })?;
                ports.extend(
                    parse_short_port(&text).map_err(|e| D::Error::custom(format!("{i}: {e}")))?,
                );
            }
        }
    }
    Ok(ports)
}

/// A port or range: `80` or `8000-8010`.
fn port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port {text:?}");
    let one = |s: &str| s.parse::<u16>().map_err(|_| bad());
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => (one(text)?, one(text)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// The short syntax, `[ip:][published:]target[/protocol]` with ranges, as docker's
/// `nat.ParsePortSpecs`: one port each, mode `ingress` (a host IP is ignored by swarm).
///
/// # Errors
/// Docker's "invalid port" or "invalid ranges" words.
pub fn parse_short_port(spec: &str) -> Result<Vec<Port>, String> {
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {protocol}"));
    }
    // An IPv6 host IP is bracketed: [::1]:80:80.
    let rest = match rest.strip_prefix('[') {
        Some(r) => r
            .split_once("]:")
            .map(|(_, after)| after)
            .ok_or_else(|| format!("invalid port {spec:?}"))?,
        None => rest,
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => ("", *target),
        [published, target] => (*published, *target),
        [_ip, published, target] => (*published, *target),
        _ => return Err(format!("invalid port {spec:?}")),
    };
    let (t_lo, t_hi) = port_range(target)?;
    let published = if published.is_empty() {
        None
    } else {
        Some(port_range(published)?)
    };
    if let Some((p_lo, p_hi)) = published {
        if p_hi - p_lo != t_hi - t_lo && (t_lo != t_hi) {
            return Err(format!(
                "invalid ranges specified for container and host ports: {spec:?}"
            ));
        }
        if t_lo == t_hi && p_lo != p_hi {
            return Err(format!(
                "invalid ranges specified for container and host ports: {spec:?}"
            ));
        }
    }
    Ok((t_lo..=t_hi)
        .enumerate()
        .map(|(i, target)| Port {
            mode: ingress(),
            target,
            published: published.map(|(lo, _)| {
                #[allow(clippy::cast_possible_truncation)]
                let offset = i as u16;
                lo + offset
            }),
            protocol: protocol.clone(),
        })
        .collect())
}

fn mounts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mount>, D::Error> {
    let Json::Array(items) = Json::deserialize(d)? else {
        return Err(D::Error::custom("must be a list"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Json::String(spec) => {
                parse_short_volume(&spec).map_err(|e| D::Error::custom(format!("{i}: {e}")))
            }
            Json::Object(_) => {
                let m: Mount = serde_json::from_value(item).map_err(|e| {
                    D::Error::custom(format!("{i}: {}", crate::words(&e.to_string())))
                })?;
                if !matches!(
                    m.kind.as_str(),
                    "volume" | "bind" | "tmpfs" | "npipe" | "cluster" | "image"
                ) {
                    return Err(D::Error::custom(format!(
                        "{i}: type must be one of volume, bind, tmpfs, npipe, cluster, image"
                    )));
                }
                Ok(m)
            }
            _ => Err(D::Error::custom(format!(
                "{i}: must be a string or a mapping"
            ))),
        })
        .collect()
}

/// The short syntax `[source:]target[:mode]` (docker's `loader.ParseVolume` for Linux
/// paths): a source that is a path (`/`, `.`, `~`) is a bind, a name a volume, none an
/// anonymous volume; modes `ro`, `rw`, `nocopy` and propagation are read.
///
/// # Errors
/// An empty spec or too many parts.
pub fn parse_short_volume(spec: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, mode] => (Some(*source), *target, *mode),
        _ => return Err(format!("invalid spec: {spec}: too many colons")),
    };
    if target.is_empty() || source.is_some_and(str::is_empty) {
        return Err(format!("invalid spec: {spec}: empty section"));
    }
    let is_path = |s: &str| s.starts_with(['/', '.', '~']);
    let kind = match source {
        Some(s) if is_path(s) => "bind",
        _ => "volume",
    };
    let mut mount = Mount {
        kind: kind.into(),
        source: source.map(str::to_owned),
        target: target.to_owned(),
        ..Mount::default()
    };
    for option in mode.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => mount.read_only = true,
            "rw" => mount.read_only = false,
            "nocopy" => {
                mount.volume = Some(VolumeOptions {
                    nocopy: true,
                    subpath: None,
                });
            }
            "z" | "Z" | "cached" | "delegated" | "consistent" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                mount.bind = Some(BindOptions {
                    propagation: Some(option.into()),
                });
            }
            other => return Err(format!("invalid spec: {spec}: unknown option {other:?}")),
        }
    }
    Ok(mount)
}

fn healthcheck_test<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Json::deserialize(d)? {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(vec!["CMD-SHELL".into(), s])),
        Json::Array(items) => items
            .iter()
            .map(|i| scalar_text(i).ok_or(()))
            .collect::<Result<_, _>>()
            .map(Some)
            .map_err(|()| D::Error::custom("must be a string or a list of strings")),
        _ => Err(D::Error::custom("must be a string or a list of strings")),
    }
}

fn cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let bad = || D::Error::custom("must be a number of CPUs such as 0.5");
    match Json::deserialize(d)? {
        Json::Number(n) => n.as_f64().map(Some).ok_or_else(bad),
        Json::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(Some)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn external<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Json::deserialize(d)? {
        Json::Bool(b) => Ok(b),
        // The old `external: {name: N}`: the loader moves the name to `name:`.
        Json::Object(_) => Ok(true),
        _ => Err(D::Error::custom("must be a boolean")),
    }
}

/// A reader for a string that must be one of `allowed`.
fn one_of<'de, D: Deserializer<'de>>(d: D, allowed: &[&str]) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(D::Error::custom(format!(
            "must be one of {}",
            allowed.join(", ")
        )))
    }
}

fn port_mode<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &["ingress", "host"])
}

fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &["tcp", "udp", "sctp"])
}

fn deploy_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    one_of(d, &["replicated", "global", "replicated-job", "global-job"]).map(Some)
}

fn endpoint_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    one_of(d, &["vip", "dnsrr"]).map(Some)
}

fn condition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    one_of(d, &["none", "on-failure", "any"]).map(Some)
}

fn order<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    one_of(d, &["stop-first", "start-first"]).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ports_expand_like_docker() {
        let p = parse_short_port("8080:80").unwrap();
        assert_eq!(
            (p[0].published, p[0].target, p[0].protocol.as_str()),
            (Some(8080), 80, "tcp")
        );
        let p = parse_short_port("127.0.0.1:53:53/udp").unwrap();
        assert_eq!(
            (p[0].published, p[0].target, p[0].protocol.as_str()),
            (Some(53), 53, "udp")
        );
        let p = parse_short_port("3000-3002:4000-4002").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].published, p[2].target), (Some(3002), 4002));
        let p = parse_short_port("9000").unwrap();
        assert_eq!((p[0].published, p[0].target), (None, 9000));
        let p = parse_short_port("[::1]:80:8080").unwrap();
        assert_eq!((p[0].published, p[0].target), (Some(80), 8080));
        assert!(parse_short_port("1-3:4-5").is_err());
        assert!(parse_short_port("80/icmp").is_err());
        assert!(parse_short_port("x:80").is_err());
        assert!(parse_short_port("70000").is_err());
    }

    #[test]
    fn short_volumes_are_binds_volumes_or_anonymous() {
        let m = parse_short_volume("db-data:/var/lib/postgresql/data").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.source.as_deref()),
            ("volume", Some("db-data"))
        );
        let m = parse_short_volume("/var/run/docker.sock:/var/run/docker.sock:ro").unwrap();
        assert_eq!(m.kind, "bind");
        assert!(m.read_only);
        let m = parse_short_volume("/data").unwrap();
        assert_eq!((m.kind.as_str(), m.source), ("volume", None));
        assert!(parse_short_volume("a:b:c:d").is_err());
        assert!(parse_short_volume("a:/b:bogus").is_err());
    }

    #[test]
    fn commands_split_as_a_shell_does() {
        assert_eq!(
            shell_split(r#"sh -c 'echo "hi there"' a\ b "x\"y""#).unwrap(),
            ["sh", "-c", "echo \"hi there\"", "a b", "x\"y"]
        );
        assert!(shell_split("echo 'oops").is_err());
    }
}
