//! Parts of a service specification as users write them on the command
//! line (`--publish`, `--constraint`), parsed with docker's syntax and
//! checked before anything is stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::state::{Node, Role, format_id};

/// Why a spec value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

fn invalid(message: impl Into<String>) -> SpecError {
    SpecError(message.into())
}

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
