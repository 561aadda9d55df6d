//! Fixtures for the orchestrators' unit tests: a replicated service and
//! its task records, without a cluster.

use mesh_api::service::{Service, ServiceEndpoint};
use mesh_api::spec::{RuntimeKind, ServiceMode, ServiceSpec};
use mesh_api::task::{DesiredState, Task, TaskId, TaskState, TaskStatus};

/// Service 1, replicated `replicas` times, on image `v2`, at version 2.
pub(crate) fn service(replicas: u32) -> Service {
    let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "v2", vec![]);
    spec.mode = ServiceMode::Replicated { replicas };
    Service {
        id: 1,
        spec,
        previous_spec: None,
        spec_version: 2,
        endpoint: ServiceEndpoint::default(),
        update_status: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// A task of `service` on node 1, wanted running, in `state` since `id` ms
/// (it was created then too), on `image`.
pub(crate) fn task(
    service: &Service,
    id: TaskId,
    slot: u32,
    image: &str,
    state: TaskState,
) -> Task {
    let mut spec = service.spec.task.clone();
    spec.image = image.into();
    Task {
        id,
        service: service.id,
        slot,
        node: Some(1),
        spec: spec.into(),
        spec_version: 1,
        desired: DesiredState::Running,
        desired_version: 1,
        status: TaskStatus::new(state, "", id),
        addr: None,
        networks: Vec::new(),
        created_at_ms: id,
    }
}
