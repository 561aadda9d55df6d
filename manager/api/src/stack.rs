//! A stack deploy as the managers apply it: every network, secret, config and service of
//! a compose file ([`StackDeploy`], what `meshctl stack deploy` sends once the file is
//! converted), applied in one Raft command, all or nothing, and what it did to each
//! object ([`StackDeployed`]).
//!
//! Objects belong to a stack by the label [`LABEL_NAMESPACE`], as in Swarm: `stack ls`,
//! `stack services`, `stack ps` and `stack rm` find them by it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::file::{FileData, FileSpec};
use crate::file_ref::FileKind;
use crate::network::NetworkSpec;
use crate::spec::{ServiceSpec, SpecError, invalid};

/// The label every object of a stack carries, with the stack's name (docker's).
pub const LABEL_NAMESPACE: &str = "com.docker.stack.namespace";

/// The most services a stack deploys.
pub const MAX_STACK_SERVICES: usize = 256;
/// The most networks, and the most secrets and configs together, a stack declares.
pub const MAX_STACK_OBJECTS: usize = 256;
/// The most bytes of secret and config data one deploy carries: the request must fit in
/// one gRPC message (4 MiB, with base64's growth) and its Raft entry in one append.
pub const MAX_STACK_DATA_BYTES: usize = 2 * 1024 * 1024;

/// Checks a stack's name: it prefixes every object's (`app_web`), so it is letters,
/// digits, `-` and `_`, starting and ending with a letter or digit, and short enough
/// for `<stack>_<service>` to stay a DNS label.
///
/// # Errors
/// Why the name is refused.
pub fn validate_namespace(namespace: &str) -> Result<(), SpecError> {
    let ok = !namespace.is_empty()
        && namespace.len() < crate::spec::MAX_NAME_LEN
        && namespace.starts_with(|c: char| c.is_ascii_alphanumeric())
        && namespace.ends_with(|c: char| c.is_ascii_alphanumeric())
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid stack name {namespace:?}: letters, digits, '-' and '_', starting and \
             ending with a letter or digit"
        )))
    }
}

/// The stack an object's labels say it belongs to.
#[must_use]
pub fn namespace_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get(LABEL_NAMESPACE).map(String::as_str)
}

/// A secret or config a stack creates, with its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFile {
    /// Secret or config.
    pub kind: FileKind,
    /// Its name (`<stack>_<key>` or its `name:`) and labels.
    pub spec: FileSpec,
    /// Its bytes: a redeploy compares them with the stored ones.
    pub data: FileData,
}

/// An object a stack uses but does not own (`external: true`): it must exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalObject {
    /// Network, secret or config.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
}

/// What `meshctl stack deploy` asks the managers to make true, in one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDeploy {
    /// The stack's name.
    pub namespace: String,
    /// The networks it owns: created when missing, kept when they exist.
    pub networks: Vec<NetworkSpec>,
    /// The secrets and configs it owns: created when missing, kept when they exist with
    /// the same data, refused when their data changed (they are immutable).
    pub files: Vec<StackFile>,
    /// The networks, secrets and configs it uses but does not own.
    pub external: Vec<ExternalObject>,
    /// Its services: created when missing, updated (a rolling update) when their spec
    /// changed, untouched otherwise.
    pub services: Vec<ServiceSpec>,
    /// Remove the stack's services that `services` no longer has (`--prune`).
    pub prune: bool,
}

impl StackDeploy {
    /// Checks what can be checked without the cluster's state: the stack's name, the
    /// counts and the data's size. Each object's own checks are the state machine's, as
    /// for a single create.
    ///
    /// # Errors
    /// Why the deploy is refused.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_namespace(&self.namespace)?;
        if self.services.len() > MAX_STACK_SERVICES {
            return Err(invalid(format!(
                "a stack has at most {MAX_STACK_SERVICES} services, this one {}",
                self.services.len()
            )));
        }
        let objects = self.networks.len() + self.files.len() + self.external.len();
        if objects > MAX_STACK_OBJECTS {
            return Err(invalid(format!(
                "a stack has at most {MAX_STACK_OBJECTS} networks, secrets and configs, \
                 this one {objects}"
            )));
        }
        let bytes: usize = self.files.iter().map(|f| f.data.len()).sum();
        if bytes > MAX_STACK_DATA_BYTES {
            return Err(invalid(format!(
                "the stack's secrets and configs hold {bytes} bytes, more than one deploy \
                 carries ({MAX_STACK_DATA_BYTES}): create the largest with `meshctl secret \
                 create` or `meshctl config create` and declare them `external: true`"
            )));
        }
        Ok(())
    }
}

/// The kinds of objects a stack has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// An overlay network.
    Network,
    /// A secret.
    Secret,
    /// A config.
    Config,
    /// A service.
    Service,
}

impl ObjectKind {
    /// `network`, `secret`, `config` or `service`, as messages say it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Network => "network",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
            ObjectKind::Service => "service",
        }
    }
}

impl From<FileKind> for ObjectKind {
    fn from(kind: FileKind) -> Self {
        match kind {
            FileKind::Secret => ObjectKind::Secret,
            FileKind::Config => ObjectKind::Config,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a deploy did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It did not exist: created.
    Created,
    /// Its spec changed: updated (for a service whose tasks change, a rolling update).
    Updated,
    /// It exists as the file describes it: untouched.
    Unchanged,
    /// A network that exists with another spec: kept as it is (a network cannot change
    /// under its tasks; `stack rm` and a new deploy recreate it).
    Kept,
    /// A service `--prune` removed.
    Removed,
}

/// One object a deploy touched or looked at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// Network, secret, config or service.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// Its ID (16 hex digits).
    pub id: u64,
    /// What the deploy did.
    pub change: Change,
    /// An update that replaces the service's tasks (its task spec changed): a rolling
    /// update runs.
    #[serde(default)]
    pub rolls: bool,
}

/// What a deploy did, object by object, in the order it did it: networks, secrets,
/// configs, services, then the services `--prune` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDeployed {
    /// Every object, in order.
    pub objects: Vec<Deployed>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        for ok in ["app", "my-app", "a_b", "x1"] {
            validate_namespace(ok).unwrap();
        }
        for bad in ["", "-app", "app_", "my app", "a.b", &"a".repeat(63)] {
            let err = validate_namespace(bad).unwrap_err().to_string();
            assert!(err.contains("invalid stack name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn limits() {
        let mut deploy = StackDeploy {
            namespace: "app".into(),
            networks: Vec::new(),
            files: Vec::new(),
            external: Vec::new(),
            services: Vec::new(),
            prune: false,
        };
        deploy.validate().unwrap();
        deploy.files.push(StackFile {
            kind: FileKind::Config,
            spec: FileSpec {
                name: "app_big".into(),
                labels: BTreeMap::new(),
            },
            data: vec![0; MAX_STACK_DATA_BYTES + 1].into(),
        });
        let err = deploy.validate().unwrap_err().to_string();
        assert!(err.contains("more than one deploy carries"), "{err}");
        deploy.files.clear();
        deploy.external = (0..=MAX_STACK_OBJECTS)
            .map(|i| ExternalObject {
                kind: ObjectKind::Network,
                name: format!("n{i}"),
            })
            .collect();
        assert!(deploy.validate().is_err());
    }

    #[test]
    fn labels_name_the_stack() {
        let mut labels = BTreeMap::new();
        assert_eq!(namespace_of(&labels), None);
        labels.insert(LABEL_NAMESPACE.to_owned(), "app".to_owned());
        assert_eq!(namespace_of(&labels), Some("app"));
    }
}
