//! Nodes as both sides see them: identity, role, availability, status, labels.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::spec::RuntimeKind;

/// A value that does not parse (a role, an availability, a label).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A node's identity: random, assigned at join, written as 16 hex digits.
pub type NodeId = u64;

/// The longest a node's session waits between two rounds of attempts to reach
/// the leader (its backoff doubles from 100 ms up to this). A new leader gives
/// the nodes it has not heard from yet twice this beyond the heartbeat deadline
/// before it judges them down.
pub const SESSION_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Formats a node ID the way users see it.
#[must_use]
pub fn format_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks only.
    Worker,
    /// Runs tasks and takes part in Raft.
    Manager,
}

impl Role {
    /// The lower-case name (`worker`, `manager`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            other => Err(ParseError(format!(
                "invalid role {other:?}: expected worker or manager"
            ))),
        }
    }
}

/// Whether the scheduler may place tasks on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be scheduled here.
    Active,
    /// No new tasks; running tasks stay.
    Pause,
    /// No tasks; running tasks move elsewhere.
    Drain,
}

impl Availability {
    /// The lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Availability {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            other => Err(ParseError(format!(
                "invalid availability {other:?}: expected active, pause or drain"
            ))),
        }
    }
}

/// A node's liveness, as the leader's dispatcher last committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Joined, no session yet.
    Unknown,
    /// Holds a session with heartbeats.
    Ready,
    /// Missed its heartbeats or closed its session.
    Down,
}

impl NodeStatus {
    /// The lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Identity; the CN of the node's certificate.
    pub id: NodeId,
    /// The hostname the node reported when it joined.
    pub hostname: String,
    /// Worker or manager.
    pub role: Role,
    /// Whether tasks may be placed here.
    pub availability: Availability,
    /// Liveness from the dispatcher.
    pub status: NodeStatus,
    /// Operator labels, for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// Where this node's manager API listens, if it runs a manager.
    pub manager_addr: Option<String>,
    /// Agent version reported in the last session.
    pub agent_version: String,
    /// The underlay address its agent's dataplane listens on; `None` until
    /// an agent with a dataplane holds a session (a node without one runs no
    /// tasks).
    #[serde(default)]
    pub data_addr: Option<Ipv4Addr>,
    /// The runtimes its agent can run, as the agent reported them with its
    /// data address. Empty for a node whose agent has not reported any (a
    /// node recorded before agents reported them, or an older agent): such
    /// a node counts as running the process runtime only (see
    /// [`Node::runs`]).
    #[serde(default)]
    pub runtimes: BTreeSet<RuntimeKind>,
    /// Why the node's agent cannot program its dataplane, as it last
    /// reported (`None`: it can). Such a node is not ready for tasks: the
    /// scheduler places none there, and `node ls`/`node inspect` say why (as
    /// Swarm's `Status.Message`).
    #[serde(default)]
    pub dataplane_error: Option<String>,
    /// The CPUs and memory its agent reported with its data address (docker's
    /// `Description.Resources`): what the scheduler may reserve there. Zero for a
    /// node whose agent has not reported them: a task with reservations does not
    /// fit there.
    #[serde(default)]
    pub resources: crate::resources::Resources,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

impl Node {
    /// A freshly joined node: active, status unknown, no labels.
    #[must_use]
    pub fn new(id: NodeId, hostname: String, role: Role, at_ms: u64) -> Self {
        Self {
            id,
            hostname,
            role,
            availability: Availability::Active,
            status: NodeStatus::Unknown,
            labels: BTreeMap::new(),
            manager_addr: None,
            agent_version: String::new(),
            data_addr: None,
            runtimes: BTreeSet::new(),
            dataplane_error: None,
            resources: crate::resources::Resources::default(),
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
        }
    }
}

impl Node {
    /// Whether the node's agent can run tasks of `runtime`. A node without
    /// recorded runtimes (recorded before agents reported them) counts as
    /// running processes only: every agent runs processes, and only one
    /// that found its docker engine runs containers.
    #[must_use]
    pub fn runs(&self, runtime: RuntimeKind) -> bool {
        if self.runtimes.is_empty() {
            runtime == RuntimeKind::Process
        } else {
            self.runtimes.contains(&runtime)
        }
    }

    /// The runtimes the node can run, as [`Node::runs`] counts them: the
    /// recorded ones, or the process runtime alone when none are recorded.
    #[must_use]
    pub fn effective_runtimes(&self) -> BTreeSet<RuntimeKind> {
        if self.runtimes.is_empty() {
            BTreeSet::from([RuntimeKind::Process])
        } else {
            self.runtimes.clone()
        }
    }
}

/// Parses `key=value` (or a bare `key`, value empty) as docker's
/// `--label-add` does.
///
/// # Errors
/// [`ParseError`] for an empty or malformed key.
pub fn parse_label(spec: &str) -> Result<(String, String), ParseError> {
    let (key, value) = spec.split_once('=').unwrap_or((spec, ""));
    validate_label_key(key)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks a label key: letters, digits, `.`, `-`, `_` and `/`, at most 128.
///
/// # Errors
/// [`ParseError`] naming the key otherwise.
pub fn validate_label_key(key: &str) -> Result<(), ParseError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ParseError(format!(
            "invalid label key {key:?}: use letters, digits, '.', '-', '_' and '/'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_as_docker_label_add_does() {
        assert_eq!(parse_label("k=v=w").unwrap(), ("k".into(), "v=w".into()));
        assert_eq!(parse_label("k").unwrap(), ("k".into(), String::new()));
        assert!(parse_label("=v").is_err());
        assert!(parse_label("a b=c").is_err());
    }

    #[test]
    fn a_node_recorded_before_runtimes_were_reported_runs_processes_only() {
        let mut node = Node::new(7, "n7".into(), Role::Worker, 5);
        node.data_addr = Some(Ipv4Addr::new(10, 0, 0, 7));
        let mut json = serde_json::to_value(&node).unwrap();
        json.as_object_mut().unwrap().remove("runtimes");
        let old: Node = serde_json::from_value(json).unwrap();
        assert!(old.runtimes.is_empty());
        assert!(old.runs(RuntimeKind::Process));
        assert!(!old.runs(RuntimeKind::Docker));
        assert_eq!(
            old.effective_runtimes(),
            BTreeSet::from([RuntimeKind::Process])
        );

        node.runtimes = BTreeSet::from([RuntimeKind::Process, RuntimeKind::Docker]);
        let back: Node = serde_json::from_str(&serde_json::to_string(&node).unwrap()).unwrap();
        assert!(back.runs(RuntimeKind::Docker));
        assert_eq!(back, node);
    }

    #[test]
    fn roles_and_availabilities_parse_their_names_only() {
        assert_eq!("manager".parse::<Role>(), Ok(Role::Manager));
        assert_eq!("drain".parse::<Availability>(), Ok(Availability::Drain));
        assert!(
            "boss"
                .parse::<Role>()
                .unwrap_err()
                .0
                .contains("expected worker or manager")
        );
    }
}
