//! The compact encoding (`mesh_api::codec`) round-trips the records the managers
//! store and send: a populated cluster state (a snapshot), the commands that built it
//! (log entries), and the assignments computed from it; and it is smaller than JSON.

use std::collections::BTreeMap;

use mesh_api::codec;
use mesh_api::file::{FileData, FileSpec};
use mesh_api::file_ref::{FileKind, FileRef};
use mesh_api::spec::{NetworkAttachmentSpec, RuntimeKind, ServiceSpec};
use mesh_api::task::TaskState;

use crate::assignment::for_node;
use crate::state::testing::{create_network, create_tasks, ready, report};
use crate::state::{Applied, ClusterState, Command};

/// Applies `command`, keeping it as a log entry would.
fn apply(state: &mut ClusterState, log: &mut Vec<Command>, command: Command) -> Applied {
    let applied = state.apply(&command).expect("the command applies");
    log.push(command);
    applied
}

/// A state with nodes, a network, a secret and a config, a service on the network
/// with a published port, and running tasks; and the commands that made it.
fn populated() -> (ClusterState, Vec<Command>) {
    let mut state = ready(&[1, 2, 3]);
    let mut log = Vec::new();
    let network = create_network(&mut state, "back");
    for (kind, name) in [(FileKind::Secret, "pw"), (FileKind::Config, "app.conf")] {
        apply(
            &mut state,
            &mut log,
            Command::CreateFile {
                kind,
                spec: FileSpec {
                    name: name.into(),
                    labels: BTreeMap::from([("team".into(), "a".into())]),
                },
                data: FileData::from(b"\x00\xffbytes".to_vec()),
                at_ms: 1,
            },
        );
    }
    let mut spec = ServiceSpec::new("api", RuntimeKind::Process, "/bin/app", vec!["-v".into()]);
    spec.task.secrets = vec![FileRef::parse(FileKind::Secret, "pw").unwrap()];
    spec.task.configs = vec![FileRef::parse(FileKind::Config, "app.conf").unwrap()];
    spec.task.networks = vec![NetworkAttachmentSpec {
        target: network.spec.name.clone(),
        aliases: vec!["db".into()],
    }];
    spec.endpoint.ports = vec!["8080:80".parse().unwrap()];
    spec.labels.insert("tier".into(), "back".into());
    let Applied::Service(service) = apply(
        &mut state,
        &mut log,
        Command::CreateService { spec, at_ms: 1 },
    ) else {
        panic!("not a service")
    };
    let tasks = create_tasks(&mut state, service.id, &[Some(1), Some(2), Some(3)]);
    for (node, task) in (1..).zip(&tasks) {
        report(&mut state, node, *task, TaskState::Running);
    }
    (state, log)
}

#[test]
fn a_populated_state_its_commands_and_assignments_round_trip() {
    let (state, log) = populated();
    let bytes = codec::encode(&state).unwrap();
    let back: ClusterState = codec::decode(&bytes).unwrap();
    assert_eq!(back, state);
    let json = serde_json::to_vec(&state).unwrap();
    assert!(
        bytes.len() * 4 < json.len() * 3,
        "{} bytes encoded, {} as JSON",
        bytes.len(),
        json.len()
    );
    // A snapshot written as JSON before the encoding reads back the same.
    assert_eq!(codec::decode::<ClusterState>(&json).unwrap(), state);
    for command in &log {
        let back: Command = codec::decode(&codec::encode(command).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(command).unwrap()
        );
    }
    for node in [1, 2, 3] {
        let assignment = for_node(&state, node, state.version);
        assert!(!assignment.tasks.is_empty() && !assignment.secrets.is_empty());
        let back = codec::decode(&codec::encode(&assignment).unwrap()).unwrap();
        assert_eq!(assignment, back);
    }
}
