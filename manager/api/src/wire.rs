//! The typed side of `mesh.proto`'s JSON fields.
//!
//! Specs, service and task records, task reports and assignments travel as
//! JSON of this crate's serde types inside protobuf `bytes` fields (one
//! definition of some forty fields instead of a protobuf mirror kept in step by
//! hand). Nobody touches those bytes directly: each message that carries one
//! has a constructor from the record and an accessor that decodes it, here.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::assignment::Assignment;
use crate::file::{FileInfo, FileSpec};
use crate::file_ref::FileKind;
use crate::network::{NetworkInfo, NetworkSpec};
use crate::proto;
use crate::service::Service;
use crate::spec::ServiceSpec;
use crate::stack::{StackDeploy, StackDeployed};
use crate::task::{Task, TaskId, TaskStatus};

/// A JSON field that does not hold the record its message names.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} in a {message} message: {source}")]
pub struct WireError {
    /// The message.
    pub message: &'static str,
    /// The record it should carry.
    pub what: &'static str,
    /// What the JSON decoder said.
    #[source]
    pub source: serde_json::Error,
}

/// A task's state change, as an agent reports it.
pub type TaskReport = (TaskId, TaskStatus);

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // These records are plain data with string-keyed maps: serde_json cannot
    // fail on them.
    serde_json::to_vec(value).expect("API records always encode as JSON")
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    message: &'static str,
    what: &'static str,
) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|source| WireError {
        message,
        what,
        source,
    })
}

impl proto::CreateServiceRequest {
    /// A request to create a service with `spec`.
    #[must_use]
    pub fn new(spec: &ServiceSpec) -> Self {
        Self {
            spec_json: encode(spec),
        }
    }

    /// The spec to create.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`ServiceSpec`].
    pub fn spec(&self) -> Result<ServiceSpec, WireError> {
        decode(&self.spec_json, "CreateServiceRequest", "service spec")
    }
}

impl proto::UpdateServiceRequest {
    /// A request to replace the spec of service `name` with `spec`, refused
    /// if the service's spec version is no longer `expected_version` (0: no
    /// check).
    #[must_use]
    pub fn update(name: &str, spec: &ServiceSpec, expected_version: u64) -> Self {
        Self {
            name: name.to_string(),
            spec_json: encode(spec),
            expected_version,
            rollback: false,
        }
    }

    /// A request to return service `name` to its previous spec.
    #[must_use]
    pub fn rollback(name: &str) -> Self {
        Self {
            name: name.to_string(),
            spec_json: Vec::new(),
            expected_version: 0,
            rollback: true,
        }
    }

    /// The new spec; `None` when the request carries none (a rollback).
    ///
    /// # Errors
    /// [`WireError`] if the field holds something other than a [`ServiceSpec`].
    pub fn spec(&self) -> Result<Option<ServiceSpec>, WireError> {
        if self.spec_json.is_empty() {
            return Ok(None);
        }
        decode(&self.spec_json, "UpdateServiceRequest", "service spec").map(Some)
    }
}

impl proto::ServiceReply {
    /// A reply describing `service`, `running` of whose `desired` tasks run.
    #[must_use]
    pub fn new(service: &Service, running: u32, desired: u32) -> Self {
        Self {
            service_json: encode(service),
            running,
            desired,
        }
    }

    /// The service record.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`Service`].
    pub fn service(&self) -> Result<Service, WireError> {
        decode(&self.service_json, "ServiceReply", "service record")
    }
}

impl proto::CreateNetworkRequest {
    /// A request to create a network with `spec`.
    #[must_use]
    pub fn new(spec: &NetworkSpec) -> Self {
        Self {
            spec_json: encode(spec),
        }
    }

    /// The spec to create.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`NetworkSpec`].
    pub fn spec(&self) -> Result<NetworkSpec, WireError> {
        decode(&self.spec_json, "CreateNetworkRequest", "network spec")
    }
}

impl proto::NetworkReply {
    /// A reply describing `network`.
    #[must_use]
    pub fn new(network: &NetworkInfo) -> Self {
        Self {
            network_json: encode(network),
        }
    }

    /// The network and what is attached to it.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`NetworkInfo`].
    pub fn network(&self) -> Result<NetworkInfo, WireError> {
        decode(&self.network_json, "NetworkReply", "network record")
    }
}

/// `secret` or `config` as a request names it.
///
/// # Errors
/// [`KindError`] for anything else.
pub fn file_kind(kind: &str) -> Result<FileKind, KindError> {
    match kind {
        "secret" => Ok(FileKind::Secret),
        "config" => Ok(FileKind::Config),
        other => Err(KindError(other.to_string())),
    }
}

/// A request's kind that is neither `secret` nor `config`.
#[derive(Debug, thiserror::Error)]
#[error("unknown kind {0:?}: expected secret or config")]
pub struct KindError(pub String);

impl proto::CreateFileRequest {
    /// A request to create the secret or config `spec` holding `data`.
    #[must_use]
    pub fn new(kind: FileKind, spec: &FileSpec, data: Vec<u8>) -> Self {
        Self {
            kind: kind.as_str().to_string(),
            spec_json: encode(spec),
            data,
        }
    }

    /// The spec to create.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`FileSpec`].
    pub fn spec(&self) -> Result<FileSpec, WireError> {
        decode(&self.spec_json, "CreateFileRequest", "file spec")
    }
}

impl proto::DeployStackRequest {
    /// A request to deploy `deploy`.
    #[must_use]
    pub fn new(deploy: &StackDeploy) -> Self {
        Self {
            deploy_json: encode(deploy),
        }
    }

    /// The deploy.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`StackDeploy`].
    pub fn deploy(&self) -> Result<StackDeploy, WireError> {
        decode(&self.deploy_json, "DeployStackRequest", "stack deploy")
    }
}

impl proto::DeployStackReply {
    /// A reply saying what a deploy did.
    #[must_use]
    pub fn new(deployed: &StackDeployed) -> Self {
        Self {
            deployed_json: encode(deployed),
        }
    }

    /// What the deploy did.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`StackDeployed`].
    pub fn deployed(&self) -> Result<StackDeployed, WireError> {
        decode(
            &self.deployed_json,
            "DeployStackReply",
            "stack deploy result",
        )
    }
}

impl proto::FileReply {
    /// A reply describing `file` (a secret's carries no data: see [`FileInfo`]).
    #[must_use]
    pub fn new(file: &FileInfo) -> Self {
        Self {
            file_json: encode(file),
        }
    }

    /// The secret or config.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`FileInfo`].
    pub fn file(&self) -> Result<FileInfo, WireError> {
        decode(&self.file_json, "FileReply", "file record")
    }
}

impl proto::TaskInfo {
    /// `task`, with the names it is shown under: `web.1`, its service's name
    /// and its node's hostname.
    #[must_use]
    pub fn new(task: &Task, name: String, service_name: String, node_hostname: String) -> Self {
        Self {
            task_json: encode(task),
            name,
            service_name,
            node_hostname,
        }
    }

    /// The task record.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a [`Task`].
    pub fn task(&self) -> Result<Task, WireError> {
        decode(&self.task_json, "TaskInfo", "task record")
    }
}

impl proto::TaskReports {
    /// An agent's report of its tasks' state changes.
    #[must_use]
    pub fn new(reports: &[TaskReport]) -> Self {
        Self {
            json: encode(&reports),
        }
    }

    /// The reported changes.
    ///
    /// # Errors
    /// [`WireError`] if the field does not hold a list of task reports.
    pub fn reports(&self) -> Result<Vec<TaskReport>, WireError> {
        decode(&self.json, "TaskReports", "task report list")
    }
}

impl proto::Assignment {
    /// A node's whole assignment as JSON, for an agent that does not follow
    /// changes (see [`crate::assignment_delta`] for the others).
    #[must_use]
    pub fn json(assignment: &Assignment) -> Self {
        Self {
            body: Some(proto::assignment::Body::Json(encode(assignment))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RuntimeKind;
    use crate::task::TaskState;

    #[test]
    fn records_round_trip_through_their_messages() {
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/true", vec![]);
        let request = proto::CreateServiceRequest::new(&spec);
        assert_eq!(request.spec().unwrap(), spec);

        let update = proto::UpdateServiceRequest::update("web", &spec, 7);
        assert_eq!(update.spec().unwrap(), Some(spec));
        assert_eq!(update.expected_version, 7);
        assert_eq!(
            proto::UpdateServiceRequest::rollback("web").spec().unwrap(),
            None
        );

        let mut net = NetworkSpec::new("back");
        net.subnet = Some("10.0.9.0/24".parse().unwrap());
        assert_eq!(proto::CreateNetworkRequest::new(&net).spec().unwrap(), net);
        let info = NetworkInfo {
            id: 7,
            name: "back".into(),
            driver: "overlay".into(),
            subnet: "10.0.9.0/24".parse().unwrap(),
            gateway: Some(std::net::Ipv4Addr::new(10, 0, 9, 1)),
            vni: 4097,
            ingress: false,
            internal: false,
            attachable: false,
            labels: std::collections::BTreeMap::new(),
            created_at_ms: 1,
            services: vec![],
            tasks: vec![],
        };
        assert_eq!(proto::NetworkReply::new(&info).network().unwrap(), info);

        let reports = vec![(42, TaskStatus::new(TaskState::Running, "started", 5))];
        assert_eq!(
            proto::TaskReports::new(&reports).reports().unwrap(),
            reports
        );
    }

    #[test]
    fn a_field_of_the_wrong_shape_is_a_clear_error() {
        let request = proto::CreateServiceRequest {
            spec_json: b"{\"name\": 3}".to_vec(),
        };
        let err = request.spec().unwrap_err().to_string();
        assert!(
            err.starts_with("malformed service spec in a CreateServiceRequest message"),
            "{err}"
        );
        let reports = proto::TaskReports {
            json: b"[1,2]".to_vec(),
        };
        assert!(reports.reports().is_err());
    }
}
