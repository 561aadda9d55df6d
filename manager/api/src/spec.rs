//! A service's specification, as users write it: the whole [`ServiceSpec`]
//! and its parts (`--publish`, `--constraint`, restart, health, update
//! policies), parsed with docker's syntax and checked before anything is
//! stored ([`ServiceSpec::validate`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::file_ref::{FileKind, FileRef, validate_file_name};
use crate::node::{Node, Role, format_id};

/// Why a spec value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

pub(crate) fn invalid(message: impl Into<String>) -> SpecError {
    SpecError(message.into())
}

/// A transport protocol of a published port (the one `Protocol` of the workspace:
/// service specs, the agent's configuration file and its dataplane use it).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// How a port is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, balanced over all tasks through the mesh.
    Ingress,
    /// Only on the nodes that run a task, to that node's task.
    Host,
}

/// One `--publish` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port clients connect to; `None` asks the allocator for one.
    pub published: Option<u16>,
    /// The task's port.
    pub target: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Ingress (the mesh) or host.
    pub mode: PublishMode,
}

fn port(value: &str, what: &str) -> Result<u16, SpecError> {
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid(format!(
            "invalid {what} port {value:?}: expected 1-65535"
        ))),
        Ok(port) => Ok(port),
    }
}

fn protocol(value: &str) -> Result<Protocol, SpecError> {
    match value {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(invalid(format!(
            "invalid protocol {other:?}: expected tcp or udp"
        ))),
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;

    /// Docker's two syntaxes: `[published:]target[/protocol]`, and
    /// `published=P,target=T[,protocol=udp][,mode=host]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('=') {
            let mut spec = PortSpec {
                published: None,
                target: 0,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            };
            for field in s.split(',') {
                let (key, value) = field.split_once('=').ok_or_else(|| {
                    invalid(format!(
                        "invalid publish field {field:?}: expected key=value"
                    ))
                })?;
                match key.trim() {
                    "published" => spec.published = Some(port(value, "published")?),
                    "target" => spec.target = port(value, "target")?,
                    "protocol" => spec.protocol = protocol(value.trim())?,
                    "mode" => {
                        spec.mode = match value.trim() {
                            "ingress" => PublishMode::Ingress,
                            "host" => PublishMode::Host,
                            other => {
                                return Err(invalid(format!(
                                    "invalid publish mode {other:?}: expected ingress or host"
                                )));
                            }
                        }
                    }
                    other => return Err(invalid(format!("unknown publish field {other:?}"))),
                }
            }
            if spec.target == 0 {
                return Err(invalid(format!("publish {s:?} has no target port")));
            }
            return Ok(spec);
        }
        let (ports, proto) = match s.split_once('/') {
            Some((ports, proto)) => (ports, protocol(proto)?),
            None => (s, Protocol::Tcp),
        };
        let (published, target) = match ports.split_once(':') {
            Some((published, target)) => {
                (Some(port(published, "published")?), port(target, "target")?)
            }
            None => (None, port(ports, "target")?),
        };
        Ok(PortSpec {
            published,
            target,
            protocol: proto,
            mode: PublishMode::Ingress,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        match self.published {
            Some(published) => write!(f, "*:{published}->{}/{proto}", self.target),
            None => write!(f, "*:?->{}/{proto}", self.target),
        }
    }
}

/// What a placement constraint tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintKey {
    /// `node.role`.
    Role,
    /// `node.hostname`.
    Hostname,
    /// `node.id`.
    Id,
    /// `node.labels.<key>`.
    Label(String),
}

/// One `--constraint` value, e.g. `node.labels.zone==a`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// What is tested.
    pub key: ConstraintKey,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl FromStr for Constraint {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(invalid(format!(
                "invalid constraint {s:?}: expected <key>==<value> or <key>!=<value>"
            )));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(invalid(format!("invalid constraint {s:?}: empty value")));
        }
        let key = match key {
            "node.role" => {
                value.parse::<Role>().map_err(|e| invalid(e.to_string()))?;
                ConstraintKey::Role
            }
            "node.hostname" => ConstraintKey::Hostname,
            "node.id" => ConstraintKey::Id,
            other => match other.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => ConstraintKey::Label(label.to_string()),
                _ => {
                    return Err(invalid(format!(
                        "invalid constraint key {other:?}: expected node.role, node.hostname, \
                         node.id or node.labels.<key>"
                    )));
                }
            },
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }
}

impl Constraint {
    /// Whether `node` satisfies the constraint. A missing label is unequal
    /// to every value, as in Swarm.
    #[must_use]
    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.key {
            ConstraintKey::Role => Some(node.role.to_string()),
            ConstraintKey::Hostname => Some(node.hostname.clone()),
            ConstraintKey::Id => Some(format_id(node.id)),
            ConstraintKey::Label(key) => node.labels.get(key).cloned(),
        };
        (actual.as_deref() == Some(self.value.as_str())) == self.equal
    }
}

/// The most placement preferences a service may have. Docker sets no bound; each
/// preference is one more level of the scheduler's tree, and a handful is all a
/// topology needs (region, zone, rack).
pub const MAX_PREFERENCES: usize = 8;

/// One `--placement-pref` value, `spread=node.labels.<key>`: spread the
/// service's tasks evenly over the values of a node label, nodes without the
/// label forming one more group (swarmkit's `SpreadOver`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPreference {
    /// The spread descriptor as written: `node.labels.<key>`.
    pub spread: String,
}

/// The prefix of a spread descriptor (compared ignoring case, as swarmkit does).
const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";

/// `prefix` stripped from the front of `s`, ignoring ASCII case.
fn strip_prefix_ignore_case<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl PlacementPreference {
    /// The node label the tasks are spread over.
    #[must_use]
    pub fn label(&self) -> &str {
        strip_prefix_ignore_case(&self.spread, NODE_LABELS).unwrap_or_default()
    }

    /// The value that groups `node` (`""` for a node without the label: such
    /// nodes form a group of their own, as in swarmkit).
    #[must_use]
    pub fn value<'n>(&self, node: &'n Node) -> &'n str {
        node.labels.get(self.label()).map_or("", String::as_str)
    }

    /// Checks the descriptor: `node.labels.<key>` with a key. Swarmkit also
    /// spreads over `engine.labels.<key>`, which agents here do not report.
    ///
    /// # Errors
    /// Why the descriptor is refused, naming the preference.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |why: &str| {
            invalid(format!(
                "invalid placement preference \"spread={}\": {why}",
                self.spread
            ))
        };
        match strip_prefix_ignore_case(&self.spread, NODE_LABELS) {
            Some(key) if !key.trim().is_empty() => Ok(()),
            Some(_) => Err(bad("the label key is empty")),
            None if strip_prefix_ignore_case(&self.spread, ENGINE_LABELS).is_some() => Err(bad(
                "engine labels are not reported by this cluster's agents; \
                 spread over node.labels.<key>",
            )),
            None => Err(bad("expected node.labels.<key>")),
        }
    }
}

impl FromStr for PlacementPreference {
    type Err = SpecError;

    /// Docker's `--placement-pref` syntax, `spread=<descriptor>`, and its words
    /// for a malformed value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (strategy, arg) = s
            .split_once('=')
            .filter(|(strategy, _)| !strategy.is_empty())
            .ok_or_else(|| {
                invalid("placement preference must be of the format \"<strategy>=<arg>\"")
            })?;
        if strategy != "spread" {
            return Err(invalid(format!(
                "unsupported placement preference {strategy} (only spread is supported)"
            )));
        }
        let pref = PlacementPreference {
            spread: arg.trim().to_string(),
        };
        pref.validate()?;
        Ok(pref)
    }
}

impl fmt::Display for PlacementPreference {
    /// As docker shows it: `spread=node.labels.zone`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spread={}", self.spread)
    }
}

impl Protocol {
    /// `tcp` or `udp`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol number (IANA): 6 for TCP, 17 for UDP.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

/// Replicated (a number of tasks) or global (one task per eligible node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` tasks, spread over the eligible nodes.
    Replicated {
        /// How many tasks.
        replicas: u32,
    },
    /// One task on every eligible node.
    Global,
}

/// What runs a task.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A command the agent runs in a network namespace of its own (the default).
    #[default]
    Process,
    /// A Docker container (bollard), network mode `none`, plumbed by the agent.
    Docker,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        })
    }
}

impl FromStr for RuntimeKind {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(RuntimeKind::Process),
            "docker" => Ok(RuntimeKind::Docker),
            other => Err(invalid(format!(
                "invalid runtime {other:?}: expected process or docker"
            ))),
        }
    }
}

/// When a task that ended is replaced (docker's `--restart-condition`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Whenever it ends (the default).
    #[default]
    Any,
    /// Only when it fails (non-zero exit, unhealthy, lost node).
    OnFailure,
    /// Never.
    None,
}

impl FromStr for RestartCondition {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(RestartCondition::Any),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "none" => Ok(RestartCondition::None),
            other => Err(invalid(format!(
                "invalid restart condition {other:?}: expected any, on-failure or none"
            ))),
        }
    }
}

impl fmt::Display for RestartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        })
    }
}

/// Docker's restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between a task's end and its replacement's start, ms (docker: 5 s).
    pub delay_ms: u64,
    /// Restarts allowed within `window_ms` (0: unlimited).
    pub max_attempts: u32,
    /// The window `max_attempts` counts in, ms (0: since the service was created).
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// A health check (docker's `--health-cmd` and friends). The command runs in
/// the task's environment (its network namespace; for docker, in the
/// container) through `/bin/sh -c`; exit 0 is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The shell command.
    pub cmd: String,
    /// Between two checks, ms (docker: 30 s).
    pub interval_ms: u64,
    /// A check that takes longer fails, ms (docker: 30 s).
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy (docker: 3).
    pub retries: u32,
    /// Failures in this first period do not count, ms (docker: 0).
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// A check with docker's defaults.
    #[must_use]
    pub fn new(cmd: String) -> Self {
        Self {
            cmd,
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    }
}

/// What a task runs and how (docker's `ContainerSpec` plus task policies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Process or docker.
    pub runtime: RuntimeKind,
    /// Docker: the image. Process: the program (a path, or a name on `PATH`).
    pub image: String,
    /// Docker: replaces the image's command when not empty. Process: the arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment variables.
    pub env: Vec<String>,
    /// When an ended task is replaced.
    pub restart: RestartPolicy,
    /// How the agent checks the task's health; `None`: running is healthy.
    pub health: Option<HealthCheck>,
    /// Between SIGTERM and SIGKILL, ms (docker: 10 s). A draining task's flows
    /// may go on this long.
    pub stop_grace_ms: u64,
    /// Bumped by `service update --force`: the spec differs, so every task is
    /// replaced even if nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// The user the task runs as (docker's `--user`): `NAME|UID[:GROUP|GID]`,
    /// looked up on the node; `None`: root (a docker image's own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Capabilities added to the default set (docker's `--cap-add`; see
    /// [`crate::capability`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from the default set (docker's `--cap-drop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// The user networks the task joins (`--network`), one interface each. Empty: the
    /// service's east-west network is `ingress`, as every service's was before user
    /// networks (see `docs/networks.md`). Part of the task spec, as in Swarm, so that
    /// `--network-add`/`--network-rm` roll the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentSpec>,
    /// Secrets the task gets as files under `/run/secrets` (`--secret`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Configs the task gets as files at their targets (`--config`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Bind mounts, named volumes and tmpfs mounts (`--mount`; see [`crate::mount`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::mount::Mount>,
    /// CPU and memory limits (enforced on the node) and reservations (for the
    /// scheduler): `--limit-cpu`, `--limit-memory`, `--reserve-cpu`, `--reserve-memory`.
    #[serde(
        default,
        skip_serializing_if = "crate::resources::ResourceRequirements::is_empty"
    )]
    pub resources: crate::resources::ResourceRequirements,
    /// The task's hostname (`--hostname`; may hold [`crate::template`] placeholders).
    /// `None`: the first 12 hex digits of its task ID, as docker names a container
    /// after its ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra `/etc/hosts` lines (`--add-host`, docker's `--host`), `host:ip` each
    /// ([`crate::container::ExtraHost`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// DNS servers, search domains and options (`--dns`, `--dns-search`,
    /// `--dns-option`).
    #[serde(default, skip_serializing_if = "crate::container::DnsConfig::is_empty")]
    pub dns: crate::container::DnsConfig,
    /// The directory the program starts in (`--workdir`); `None`: `/` (docker: the
    /// image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Container labels (`--container-label`): the docker runtime's containers carry
    /// them; a process task has nothing to attach them to (kept in the spec).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_labels: BTreeMap<String, String>,
    /// Docker runtime: replaces the image's entrypoint when not empty (`--entrypoint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
}

/// A service's attachment to a network (`--network name=back,alias=db`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentSpec {
    /// The network: a name or ID as the user gave it; the managers store its ID (16 hex
    /// digits) once they have found it.
    pub target: String,
    /// Further names the service answers to on this network (DNS labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// The most secrets, and the most configs, a service may reference.
pub const MAX_FILE_REFS: usize = 64;

/// The most networks a service may join.
pub const MAX_NETWORKS: usize = 8;
/// The most aliases a service may have on one network.
pub const MAX_ALIASES: usize = 16;

/// Whether `label` is a valid DNS name component as swarmkit has it
/// (`isValidDNSName`): letters, digits, `-` and `_` (Swarm's stack names: `app_web`),
/// starting and ending with a letter or digit, at most [`MAX_NAME_LEN`] characters.
fn is_dns_label(label: &str) -> bool {
    label.len() <= MAX_NAME_LEN
        && label.starts_with(|c: char| c.is_ascii_alphanumeric())
        && label.ends_with(|c: char| c.is_ascii_alphanumeric())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a name the resolver will answer for besides the service's (an alias): a DNS
/// label as a service name is.
///
/// # Errors
/// Why it is refused.
pub fn validate_dns_label(what: &str, label: &str) -> Result<(), SpecError> {
    if is_dns_label(label) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {what} {label:?}: not a valid DNS label (letters, digits, '-' and '_', \
             starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters)"
        )))
    }
}

/// The longest `--user` value.
pub const MAX_USER_LEN: usize = 256;

/// Checks a `--user` value: `NAME|UID`, optionally `:GROUP|GID`, without
/// blanks.
///
/// # Errors
/// Why it is refused.
pub fn validate_user(user: &str) -> Result<(), SpecError> {
    let mut parts = user.split(':');
    let ok = user.len() <= MAX_USER_LEN
        && !user.chars().any(|c| c.is_whitespace() || c.is_control())
        && parts.next().is_some_and(|u| !u.is_empty())
        && parts.next().is_none_or(|g| !g.is_empty())
        && parts.next().is_none();
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid user {user:?}: expected NAME|UID[:GROUP|GID]"
        )))
    }
}

/// How a service's tasks are reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// A virtual IP balanced over the tasks (the default).
    #[default]
    Vip,
    /// No VIP: the tasks' own addresses (DNS round robin).
    Dnsrr,
}

impl FromStr for EndpointMode {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            other => Err(invalid(format!(
                "invalid endpoint mode {other:?}: expected vip or dnsrr"
            ))),
        }
    }
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        })
    }
}

/// How a service's new connections choose a task (IPVS calls it the scheduler).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    /// Round robin (the default).
    #[default]
    Rr,
    /// Maglev consistent hashing of the connection's addresses and ports: a
    /// connection gets the same task on every node, and few move when tasks come
    /// and go.
    Maglev,
    /// Least connections: the task with the fewest active connections.
    Lc,
    /// Source hashing: every connection from one client address goes to the same
    /// task while the tasks stay the same (consistent hashing, as `maglev`).
    Sh,
}

impl LbAlgorithm {
    /// Whether this is the default, round robin (left out of a serialized spec).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::Rr
    }
}

impl FromStr for LbAlgorithm {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rr" => Ok(LbAlgorithm::Rr),
            "maglev" => Ok(LbAlgorithm::Maglev),
            "lc" => Ok(LbAlgorithm::Lc),
            "sh" => Ok(LbAlgorithm::Sh),
            other => Err(invalid(format!(
                "invalid load-balancing algorithm {other:?}: expected rr, maglev, lc or sh"
            ))),
        }
    }
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbAlgorithm::Rr => "rr",
            LbAlgorithm::Maglev => "maglev",
            LbAlgorithm::Lc => "lc",
            LbAlgorithm::Sh => "sh",
        })
    }
}

/// What a failed rolling update does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating; the operator decides (docker's default).
    #[default]
    Pause,
    /// Go on with the next batch.
    Continue,
    /// Roll back to the previous spec.
    Rollback,
}

impl FromStr for FailureAction {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "continue" => Ok(FailureAction::Continue),
            "rollback" => Ok(FailureAction::Rollback),
            other => Err(invalid(format!(
                "invalid failure action {other:?}: expected pause, continue or rollback"
            ))),
        }
    }
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        })
    }
}

/// Whether a replaced task stops before or after its replacement starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (docker's default).
    #[default]
    StopFirst,
    /// Start the new task; stop the old one once the new one runs.
    StartFirst,
}

impl FromStr for UpdateOrder {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop-first" => Ok(UpdateOrder::StopFirst),
            "start-first" => Ok(UpdateOrder::StartFirst),
            other => Err(invalid(format!(
                "invalid update order {other:?}: expected stop-first or start-first"
            ))),
        }
    }
}

impl fmt::Display for UpdateOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        })
    }
}

/// A rolling update's (or rollback's) pace and failure handling
/// (docker's `--update-*` and `--rollback-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all at once).
    pub parallelism: u32,
    /// Between two batches, ms.
    pub delay_ms: u64,
    /// What a failure does.
    pub failure_action: FailureAction,
    /// How long after a task starts its failure counts against the update, ms.
    pub monitor_ms: u64,
    /// Failed fraction of updated tasks tolerated, in thousandths (docker's
    /// `--update-max-failure-ratio 0.2` is 200).
    pub max_failure_permille: u32,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_permille: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// How a service is reached: a VIP or not, and its published ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// `vip` or `dnsrr`.
    pub mode: EndpointMode,
    /// Published ports; an ingress port without `published` gets one from
    /// the allocator.
    pub ports: Vec<PortSpec>,
    /// How new connections to its VIP and published ports choose a task.
    #[serde(default, skip_serializing_if = "LbAlgorithm::is_default")]
    pub lb_algorithm: LbAlgorithm,
}

/// Everything a user says about a service (`meshctl service create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// What each task runs.
    pub task: TaskSpec,
    /// VIP and published ports.
    pub endpoint: EndpointSpec,
    /// Placement constraints.
    pub constraints: Vec<Constraint>,
    /// Placement preferences (`--placement-pref`), outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// At most this many live tasks of the service on one node
    /// (`--replicas-max-per-node`; 0: no limit). Replicated services only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_replicas_per_node: u64,
    /// Rolling update policy.
    pub update: UpdateConfig,
    /// Rollback policy.
    pub rollback: UpdateConfig,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The longest service name (docker's limit: a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 1_000;

impl ServiceSpec {
    /// A replicated service of one task running `image` with `args`, every
    /// policy at docker's defaults.
    #[must_use]
    pub fn new(name: &str, runtime: RuntimeKind, image: &str, args: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskSpec {
                runtime,
                image: image.to_string(),
                args,
                env: Vec::new(),
                restart: RestartPolicy::default(),
                health: None,
                stop_grace_ms: 10_000,
                force_update: 0,
                user: None,
                cap_add: Vec::new(),
                cap_drop: Vec::new(),
                networks: Vec::new(),
                secrets: Vec::new(),
                configs: Vec::new(),
                mounts: Vec::new(),
                resources: Default::default(),
                hostname: None,
                hosts: Vec::new(),
                dns: Default::default(),
                workdir: None,
                container_labels: BTreeMap::new(),
                entrypoint: Vec::new(),
            },
            endpoint: EndpointSpec::default(),
            constraints: Vec::new(),
            preferences: Vec::new(),
            max_replicas_per_node: 0,
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
        }
    }

    /// The replica count (`None` for global services).
    #[must_use]
    pub fn replicas(&self) -> Option<u32> {
        match self.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }

    /// Checks the placement preferences (at most [`MAX_PREFERENCES`], each
    /// [`PlacementPreference::validate`]) and that a limit of replicas per node is
    /// on a replicated service (docker's words).
    fn validate_placement(&self) -> Result<(), SpecError> {
        if self.preferences.len() > MAX_PREFERENCES {
            return Err(invalid(format!(
                "a service may have at most {MAX_PREFERENCES} placement preferences"
            )));
        }
        for pref in &self.preferences {
            pref.validate()?;
        }
        if self.max_replicas_per_node > 0 && self.mode == ServiceMode::Global {
            return Err(invalid(
                "replicas-max-per-node can only be used with replicated mode",
            ));
        }
        Ok(())
    }

    /// Checks the network attachments: at most [`MAX_NETWORKS`], each once, aliases DNS
    /// labels. Whether the networks exist is the managers' to find.
    fn validate_networks(&self) -> Result<(), SpecError> {
        let networks = &self.task.networks;
        if networks.len() > MAX_NETWORKS {
            return Err(invalid(format!(
                "a service may join at most {MAX_NETWORKS} networks"
            )));
        }
        for (i, attachment) in networks.iter().enumerate() {
            if attachment.target.trim().is_empty() {
                return Err(invalid("a network attachment needs a network name"));
            }
            if networks[..i].iter().any(|a| a.target == attachment.target) {
                return Err(invalid(format!(
                    "network {:?} is given twice",
                    attachment.target
                )));
            }
            if attachment.aliases.len() > MAX_ALIASES {
                return Err(invalid(format!(
                    "at most {MAX_ALIASES} aliases per network"
                )));
            }
            for alias in &attachment.aliases {
                validate_dns_label("alias", alias)?;
            }
        }
        Ok(())
    }

    /// Checks the secret and config references: at most [`MAX_FILE_REFS`] of each, each
    /// well formed, no two files at one path (swarmkit's words). Whether the secrets
    /// and configs exist is the managers' to find.
    fn validate_files(&self) -> Result<(), SpecError> {
        let mut paths: Vec<(String, &str)> = Vec::new();
        for (kind, refs) in [
            (FileKind::Secret, &self.task.secrets),
            (FileKind::Config, &self.task.configs),
        ] {
            if refs.len() > MAX_FILE_REFS {
                return Err(invalid(format!(
                    "a service may reference at most {MAX_FILE_REFS} {}s",
                    kind.as_str()
                )));
            }
            for reference in refs {
                validate_file_name(kind, &reference.source)?;
                reference.validate(kind)?;
                let path = reference.path(kind);
                if let Some((_, other)) = paths.iter().find(|(p, _)| *p == path) {
                    return Err(invalid(format!(
                        "{} references '{other}' and '{}' have a conflicting target: '{path}'",
                        kind.as_str(),
                        reference.source
                    )));
                }
                paths.push((path, &reference.source));
            }
        }
        Ok(())
    }

    /// Checks everything that does not depend on other services (names,
    /// sizes, ports, policies). Port conflicts between services are the
    /// allocator's to find.
    ///
    /// # Errors
    /// The first problem, worded for the user.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if let ServiceMode::Replicated { replicas } = self.mode
            && replicas > MAX_REPLICAS
        {
            return Err(invalid(format!(
                "invalid replicas {replicas}: at most {MAX_REPLICAS}"
            )));
        }
        if self.task.image.trim().is_empty() {
            return Err(invalid(match self.task.runtime {
                RuntimeKind::Docker => "an image is required".to_string(),
                RuntimeKind::Process => "a command to run is required".to_string(),
            }));
        }
        for var in &self.task.env {
            match var.split_once('=') {
                Some((key, _)) if !key.is_empty() && !key.contains(char::is_whitespace) => {}
                _ => {
                    return Err(invalid(format!(
                        "invalid environment variable {var:?}: expected KEY=VALUE"
                    )));
                }
            }
        }
        if let Some(user) = &self.task.user {
            validate_user(user)?;
        }
        crate::capability::resolve(&self.task.cap_add, &self.task.cap_drop)?;
        self.task.resources.validate()?;
        self.validate_placement()?;
        self.validate_networks()?;
        self.validate_files()?;
        crate::mount::validate_mounts(&self.task.mounts)?;
        self.validate_container()?;
        if let Some(health) = &self.task.health {
            if health.cmd.trim().is_empty() {
                return Err(invalid("the health command is empty"));
            }
            if health.interval_ms == 0 || health.timeout_ms == 0 {
                return Err(invalid(
                    "health-interval and health-timeout must be greater than 0",
                ));
            }
        }
        for config in [&self.update, &self.rollback] {
            if config.max_failure_permille > 1000 {
                return Err(invalid("max-failure-ratio must be between 0 and 1"));
            }
        }
        self.validate_durations()?;
        let mut seen = Vec::new();
        for port in &self.endpoint.ports {
            if port.mode == PublishMode::Host && port.published.is_none() {
                return Err(invalid(format!(
                    "port {}/{}: a host-mode port needs a published port",
                    port.target, port.protocol
                )));
            }
            if port.mode == PublishMode::Ingress && self.endpoint.mode == EndpointMode::Dnsrr {
                return Err(invalid(
                    "port published with ingress mode can't be used with dnsrr mode",
                ));
            }
            if let Some(published) = port.published {
                if seen.contains(&(published, port.protocol)) {
                    return Err(invalid(format!(
                        "port {published}/{} is published twice",
                        port.protocol
                    )));
                }
                seen.push((published, port.protocol));
            }
        }
        Ok(())
    }
}

impl ServiceSpec {
    /// Checks the hostname, extra hosts, DNS configuration, working directory,
    /// container labels, entrypoint, and the template placeholders of the fields Swarm
    /// expands (hostname, environment values, mount sources and targets).
    fn validate_container(&self) -> Result<(), SpecError> {
        use crate::container;
        let task = &self.task;
        if let Some(hostname) = &task.hostname {
            container::validate_hostname(hostname)?;
        }
        if task.hosts.len() > container::MAX_EXTRA_HOSTS {
            return Err(invalid(format!(
                "at most {} extra hosts (--add-host)",
                container::MAX_EXTRA_HOSTS
            )));
        }
        for host in &task.hosts {
            container::ExtraHost::parse(host)?;
        }
        task.dns.validate()?;
        if let Some(dir) = &task.workdir {
            container::validate_workdir(dir)?;
        }
        container::validate_labels(&task.container_labels)?;
        if !task.entrypoint.is_empty() {
            if task.runtime == RuntimeKind::Process {
                return Err(invalid(
                    "entrypoint is for the docker runtime: a process service's program is \
                     its IMAGE",
                ));
            }
            if task
                .entrypoint
                .iter()
                .any(|w| w.len() > container::MAX_TEXT_LEN)
            {
                return Err(invalid("the entrypoint is too long"));
            }
        }
        for var in &task.env {
            let (key, value) = var.split_once('=').unwrap_or((var, ""));
            crate::template::check(value)
                .map_err(|e| invalid(format!("environment variable {key}: {e}")))?;
        }
        for mount in &task.mounts {
            crate::template::check(&mount.source)
                .map_err(|e| invalid(format!("mount source {:?}: {e}", mount.source)))?;
            crate::template::check(&mount.target)
                .map_err(|e| invalid(format!("mount target {:?}: {e}", mount.target)))?;
        }
        Ok(())
    }

    /// Every duration of the spec, by the flag that sets it.
    fn durations(&self) -> Vec<(&'static str, u64)> {
        let task = &self.task;
        let mut all = vec![
            ("restart-delay", task.restart.delay_ms),
            ("restart-window", task.restart.window_ms),
            ("stop-grace-period", task.stop_grace_ms),
            ("update-delay", self.update.delay_ms),
            ("update-monitor", self.update.monitor_ms),
            ("rollback-delay", self.rollback.delay_ms),
            ("rollback-monitor", self.rollback.monitor_ms),
        ];
        if let Some(health) = &task.health {
            all.extend([
                ("health-interval", health.interval_ms),
                ("health-timeout", health.timeout_ms),
                ("health-start-period", health.start_period_ms),
            ]);
        }
        all
    }

    /// Refuses a duration longer than [`MAX_DURATION_MS`] (a spec sent through
    /// the API, not parsed by [`parse_duration_ms`], may hold any `u64`).
    fn validate_durations(&self) -> Result<(), SpecError> {
        match self
            .durations()
            .into_iter()
            .find(|(_, ms)| *ms > MAX_DURATION_MS)
        {
            Some((flag, ms)) => Err(invalid(format!(
                "invalid {flag} of {ms} ms: at most 2562047h"
            ))),
            None => Ok(()),
        }
    }
}

/// Checks a service name: a DNS label, as swarmkit requires (`isValidDNSName`): the
/// resolver answers for it.
///
/// # Errors
/// Why the name is refused.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid name {name:?}: it must be valid as a DNS name component: \
             [a-zA-Z0-9][a-zA-Z0-9_-], starting and ending with a letter or digit, at most \
             {MAX_NAME_LEN} characters"
        )))
    }
}

/// The longest duration a spec may hold: 2562047h (about 292 years), the
/// limit of Go's `time.Duration` that docker's CLI applies. Every deadline the
/// managers and agents compute from a spec (a timestamp in ms plus at most
/// this) stays far from overflowing.
pub const MAX_DURATION_MS: u64 = 2_562_047 * 3_600_000;

/// Parses a docker-style duration: `10s`, `500ms`, `1m30s`, `2h`, `0`, at most
/// [`MAX_DURATION_MS`].
///
/// # Errors
/// A malformed duration, or one longer than [`MAX_DURATION_MS`].
pub fn parse_duration_ms(s: &str) -> Result<u64, SpecError> {
    let s = s.trim();
    let bad = || {
        invalid(format!(
            "invalid duration {s:?}: expected e.g. 10s, 500ms, 1m30s"
        ))
    };
    let too_long = || invalid(format!("invalid duration {s:?}: at most 2562047h"));
    if s == "0" {
        return Ok(0);
    }
    let mut total = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = (value * factor).round();
        // MAX_DURATION_MS is below 2^53: the f64 comparison is exact.
        #[allow(clippy::cast_precision_loss)]
        if !ms.is_finite() || ms > MAX_DURATION_MS as f64 {
            return Err(too_long());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = ms as u64;
        total = total
            .checked_add(ms)
            .filter(|t| *t <= MAX_DURATION_MS)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

/// Formats milliseconds the way docker prints durations (`10s`, `1m30s`, `500ms`).
#[must_use]
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{}s", ms as f64 / 1000.0)
        };
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Specs stored before `lb_algorithm` existed load as round robin, and a round-robin
    /// spec is written as before (Raft snapshots and logs of older managers stay valid).
    #[test]
    fn lb_algorithm_defaults_to_rr_and_is_left_out_while_it_is() {
        let old: EndpointSpec = serde_json::from_str(r#"{"mode":"vip","ports":[]}"#).unwrap();
        assert_eq!(old.lb_algorithm, LbAlgorithm::Rr);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"mode":"vip","ports":[]}"#
        );
        let sh = EndpointSpec {
            lb_algorithm: "sh".parse().unwrap(),
            ..old
        };
        let json = serde_json::to_string(&sh).unwrap();
        assert_eq!(json, r#"{"mode":"vip","ports":[],"lb_algorithm":"sh"}"#);
        assert_eq!(serde_json::from_str::<EndpointSpec>(&json).unwrap(), sh);
        for name in ["rr", "maglev", "lc", "sh"] {
            assert_eq!(name.parse::<LbAlgorithm>().unwrap().to_string(), name);
        }
        assert_eq!(
            "wlc".parse::<LbAlgorithm>().unwrap_err().to_string(),
            "invalid load-balancing algorithm \"wlc\": expected rr, maglev, lc or sh"
        );
    }

    #[test]
    fn publish_short_and_long_syntax() {
        let p: PortSpec = "8080:80".parse().unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (Some(8080), 80, Protocol::Tcp)
        );
        let p: PortSpec = "53:53/udp".parse().unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        let p: PortSpec = "80".parse().unwrap();
        assert_eq!((p.published, p.target), (None, 80));
        let p: PortSpec = "published=8081,target=81,protocol=udp,mode=host"
            .parse()
            .unwrap();
        assert_eq!(
            p,
            PortSpec {
                published: Some(8081),
                target: 81,
                protocol: Protocol::Udp,
                mode: PublishMode::Host
            }
        );
        assert_eq!(p.to_string(), "*:8081->81/udp");
    }

    #[test]
    fn bad_publish_values_are_refused_with_a_reason() {
        for (bad, reason) in [
            ("0:80", "published port"),
            ("8080:70000", "target port"),
            ("8080:80/sctp", "protocol"),
            ("a:b", "published port"),
            ("published=80", "no target"),
            ("target=80,mode=bridge", "publish mode"),
            ("target=80,color=red", "unknown publish field"),
            ("", "target port"),
        ] {
            let err = bad.parse::<PortSpec>().unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn constraints_match_like_swarm() {
        let mut node = Node::new(0xab, "n1".into(), Role::Worker, 0);
        node.labels.insert("zone".into(), "a".into());
        let c = |s: &str| s.parse::<Constraint>().unwrap();
        assert!(c("node.role==worker").matches(&node));
        assert!(!c("node.role==manager").matches(&node));
        assert!(c("node.role != manager").matches(&node));
        assert!(c("node.hostname==n1").matches(&node));
        assert!(c("node.id==00000000000000ab").matches(&node));
        assert!(c("node.labels.zone==a").matches(&node));
        assert!(!c("node.labels.disk==ssd").matches(&node));
        assert!(c("node.labels.disk!=ssd").matches(&node));
    }

    #[test]
    fn bad_constraints_are_refused_with_a_reason() {
        for (bad, reason) in [
            ("node.role=manager", "expected <key>==<value>"),
            ("node.role==boss", "invalid role"),
            ("node.colour==red", "invalid constraint key"),
            ("node.labels.==x", "invalid constraint key"),
            ("node.hostname==", "empty value"),
        ] {
            let err = bad.parse::<Constraint>().unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn placement_preferences_parse_and_group_like_swarmkit() {
        let pref: PlacementPreference = "spread=node.labels.zone".parse().unwrap();
        assert_eq!(pref.to_string(), "spread=node.labels.zone");
        assert_eq!(pref.label(), "zone");
        let mut node = Node::new(1, "n1".into(), Role::Worker, 0);
        assert_eq!(pref.value(&node), "");
        node.labels.insert("zone".into(), "a".into());
        assert_eq!(pref.value(&node), "a");
        // The prefix is compared ignoring case, as swarmkit does.
        let upper: PlacementPreference = "spread=Node.Labels.zone".parse().unwrap();
        assert_eq!(upper.value(&node), "a");
        for (bad, err) in [
            (
                "zone",
                "placement preference must be of the format \"<strategy>=<arg>\"",
            ),
            (
                "=node.labels.zone",
                "placement preference must be of the format \"<strategy>=<arg>\"",
            ),
            (
                "pack=node.labels.zone",
                "unsupported placement preference pack (only spread is supported)",
            ),
            (
                "spread=node.hostname",
                "invalid placement preference \"spread=node.hostname\": expected node.labels.<key>",
            ),
            (
                "spread=node.labels.",
                "invalid placement preference \"spread=node.labels.\": the label key is empty",
            ),
        ] {
            assert_eq!(
                bad.parse::<PlacementPreference>().unwrap_err().to_string(),
                err,
                "{bad}"
            );
        }
        let engine = "spread=engine.labels.az"
            .parse::<PlacementPreference>()
            .unwrap_err()
            .to_string();
        assert!(
            engine.contains("engine labels are not reported"),
            "{engine}"
        );
    }

    #[test]
    fn placement_is_validated_in_the_spec() {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/true", vec![]);
        spec.preferences = vec!["spread=node.labels.zone".parse().unwrap(); MAX_PREFERENCES];
        spec.max_replicas_per_node = 2;
        assert_eq!(spec.validate(), Ok(()));
        // A spec sent through the API is checked too.
        let mut bad = spec.clone();
        bad.preferences[0].spread = "node.id".into();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("node.labels.<key>")
        );
        let mut many = spec.clone();
        many.preferences.push(many.preferences[0].clone());
        assert_eq!(
            many.validate().unwrap_err().to_string(),
            format!("a service may have at most {MAX_PREFERENCES} placement preferences")
        );
        let mut global = spec.clone();
        global.mode = ServiceMode::Global;
        assert_eq!(
            global.validate().unwrap_err().to_string(),
            "replicas-max-per-node can only be used with replicated mode"
        );
        global.max_replicas_per_node = 0;
        assert_eq!(global.validate(), Ok(()));
    }

    #[test]
    fn specs_stored_before_placement_preferences_still_load() {
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/true", vec![]);
        let json = serde_json::to_value(&spec).unwrap();
        // Nothing new is written for a spec without them...
        assert!(json.get("preferences").is_none());
        assert!(json.get("max_replicas_per_node").is_none());
        // ...and a spec written before them loads.
        let back: ServiceSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn durations_parse_like_docker() {
        assert_eq!(parse_duration_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("0.5s").unwrap(), 500);
        assert_eq!(parse_duration_ms("0").unwrap(), 0);
        for bad in ["", "10", "s", "10x", "-1s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration_ms(90_000), "1m30s");
        assert_eq!(format_duration_ms(500), "500ms");
        assert_eq!(format_duration_ms(0), "0s");
    }

    #[test]
    fn durations_too_long_to_compute_with_are_refused_not_overflowed() {
        // Issue 11, fault 7: these made meshctl panic (the sum overflowed).
        for huge in [
            "99999999999999999999h1h",
            "99999999999999999999h",
            "2562048h",
            "1e400s",
            "NaNs",
            "infs",
        ] {
            let err = parse_duration_ms(huge).expect_err(huge).to_string();
            assert!(
                err.contains("invalid duration")
                    && (err.contains("at most 2562047h") || err.contains("expected")),
                "{huge:?}: {err}"
            );
        }
        assert_eq!(parse_duration_ms("2562047h").unwrap(), MAX_DURATION_MS);
    }

    #[test]
    fn every_duration_of_a_spec_is_range_checked() {
        type Field = fn(&mut ServiceSpec);
        let fields: [(&str, Field); 10] = [
            ("restart-delay", |s| s.task.restart.delay_ms = u64::MAX),
            ("restart-window", |s| s.task.restart.window_ms = u64::MAX),
            ("stop-grace-period", |s| s.task.stop_grace_ms = u64::MAX),
            ("health-interval", |s| {
                s.task.health = Some(HealthCheck {
                    interval_ms: u64::MAX,
                    ..HealthCheck::new("true".into())
                });
            }),
            ("health-timeout", |s| {
                s.task.health = Some(HealthCheck {
                    timeout_ms: u64::MAX,
                    ..HealthCheck::new("true".into())
                });
            }),
            ("health-start-period", |s| {
                s.task.health = Some(HealthCheck {
                    start_period_ms: u64::MAX,
                    ..HealthCheck::new("true".into())
                });
            }),
            ("update-delay", |s| s.update.delay_ms = u64::MAX),
            ("update-monitor", |s| s.update.monitor_ms = u64::MAX),
            ("rollback-delay", |s| s.rollback.delay_ms = u64::MAX),
            ("rollback-monitor", |s| s.rollback.monitor_ms = u64::MAX),
        ];
        for (flag, set) in fields {
            let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/true", vec![]);
            spec.validate().unwrap();
            set(&mut spec);
            let err = spec.validate().expect_err(flag).to_string();
            assert!(
                err.contains(flag) && err.contains("at most 2562047h"),
                "{flag}: {err}"
            );
        }
    }

    #[test]
    fn service_specs_are_validated_with_a_reason() {
        let good = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        good.validate().unwrap();
        type Change = Box<dyn Fn(&mut ServiceSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.name = "bad name".into()), "invalid name"),
            (
                Box::new(|s| s.task.hosts = vec!["x".into()]),
                "bad format for add-host: \"x\"",
            ),
            (
                Box::new(|s| s.task.workdir = Some("srv".into())),
                "it needs to be an absolute path",
            ),
            (
                Box::new(|s| s.task.hostname = Some("a b".into())),
                "invalid hostname",
            ),
            (
                Box::new(|s| s.task.env = vec!["N={{.Task.Number}}".into()]),
                "environment variable N: unknown template placeholder {{.Task.Number}}",
            ),
            (
                Box::new(|s| s.task.hostname = Some("w{{.Task.Slot".into())),
                "hostname: unclosed action",
            ),
            (
                Box::new(|s| {
                    let mut m: crate::mount::Mount =
                        "type=bind,source=/d,target=/d".parse().unwrap();
                    m.source = "/d-{{.Node}}".into();
                    s.task.mounts = vec![m];
                }),
                "mount source \"/d-{{.Node}}\": unknown template placeholder",
            ),
            (
                Box::new(|s| s.task.entrypoint = vec!["/bin/sh".into()]),
                "entrypoint is for the docker runtime",
            ),
            (Box::new(|s| s.name = String::new()), "invalid name"),
            (Box::new(|s| s.name = "web-".into()), "DNS name component"),
            (Box::new(|s| s.name = "web_".into()), "DNS name component"),
            (
                Box::new(|s| {
                    s.task.networks = vec![NetworkAttachmentSpec {
                        target: "back".into(),
                        aliases: vec!["_db".into()],
                    }];
                }),
                "not a valid DNS label",
            ),
            (
                Box::new(|s| {
                    let back = NetworkAttachmentSpec {
                        target: "back".into(),
                        aliases: vec![],
                    };
                    s.task.networks = vec![back.clone(), back];
                }),
                "given twice",
            ),
            (
                Box::new(|s| s.mode = ServiceMode::Replicated { replicas: 5000 }),
                "invalid replicas",
            ),
            (Box::new(|s| s.task.image = " ".into()), "command to run"),
            (
                Box::new(|s| s.task.env = vec!["NOEQUALS".into()]),
                "KEY=VALUE",
            ),
            (
                Box::new(|s| {
                    s.endpoint.ports = vec!["8080:80".parse().unwrap(), "8080:81".parse().unwrap()]
                }),
                "published twice",
            ),
            (
                Box::new(|s| {
                    s.endpoint.mode = EndpointMode::Dnsrr;
                    s.endpoint.ports = vec!["8080:80".parse().unwrap()];
                }),
                "dnsrr",
            ),
            (
                Box::new(|s| s.endpoint.ports = vec!["target=80,mode=host".parse().unwrap()]),
                "host-mode port needs a published port",
            ),
        ];
        for (change, reason) in cases {
            let mut spec = good.clone();
            change(&mut spec);
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(reason), "{err} should mention {reason}");
        }
    }
}
