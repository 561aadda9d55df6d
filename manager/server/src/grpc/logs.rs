//! `meshctl service logs`: the output of a service's tasks, fetched from the
//! agents that run them over their sessions.
//!
//! Only the leader holds the agents' sessions: a follower passes the call on
//! to the leader and relays its answer. The leader sends one `LogsRequest`
//! per node (for that node's tasks of the service, recent history included),
//! and streams each chunk's lines as they arrive, prefixed like docker's
//! (`web.1.<task id>@<hostname>`). A node that does not answer within
//! [`IDLE_TIMEOUT`] is given up on.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{Manager, state_status};
use crate::proto;
use mesh_api::node::{NodeId, NodeStatus, format_id};
use mesh_api::task::{TaskId, TaskState};
use mesh_core::state::{ClusterState, StateError};

/// The stream `ServiceLogs` answers with.
pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogLine, Status>> + Send + 'static>>;

/// How long the leader waits for the next chunk before it gives up on the
/// agents that have not finished answering.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a `ServiceLogs` call.
///
/// # Errors
/// `NOT_FOUND` for an unknown service or task; `UNAVAILABLE` without quorum
/// or when the leader cannot be reached.
pub async fn service_logs(
    manager: &Manager,
    request: proto::ServiceLogsRequest,
) -> Result<Response<LogStream>, Status> {
    manager.require_quorum()?;
    if !manager.raft().is_leader() {
        return relay_to_leader(manager, request).await;
    }
    let targets = {
        let state = manager.read()?;
        targets(&state, &request.name).map_err(state_status)?
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(collect(manager.clone(), targets, request.tail, tx));
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// One node's tasks to ask for: task -> the source prefix of its lines.
type Targets = BTreeMap<NodeId, BTreeMap<TaskId, String>>;

/// The tasks whose output `name` (a service, or a task ID or prefix) asks
/// for, by node: those that started on a node (history included).
fn targets(state: &ClusterState, name: &str) -> Result<Targets, StateError> {
    let tasks: Vec<TaskId> = match state.resolve_service(name) {
        Ok(service) => state.service_tasks(service).map(|t| t.id).collect(),
        Err(StateError::UnknownService(_)) => vec![resolve_task(state, name)?],
        Err(e) => return Err(e),
    };
    let mut out = Targets::new();
    for id in tasks {
        let task = &state.tasks[&id];
        let Some(node) = task.node else { continue };
        if task.status.state < TaskState::Preparing || task.status.state == TaskState::Rejected {
            continue;
        }
        let service_name = state
            .services
            .get(&task.service)
            .map(|s| s.spec.name.as_str())
            .unwrap_or_default();
        let hostname = state
            .nodes
            .get(&node)
            .map(|n| n.hostname.as_str())
            .unwrap_or_default();
        let source = format!("{}.{}@{hostname}", task.name(service_name), format_id(id));
        out.entry(node).or_default().insert(id, source);
    }
    Ok(out)
}

/// A task by full ID or unique ID prefix.
fn resolve_task(state: &ClusterState, name: &str) -> Result<TaskId, StateError> {
    let name = name.trim();
    let matches: Vec<TaskId> = state
        .tasks
        .keys()
        .filter(|id| format_id(**id).starts_with(name))
        .copied()
        .collect();
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => Err(StateError::UnknownService(name.to_string())),
        many => Err(StateError::Invalid(format!(
            "task {name} is ambiguous ({} matches)",
            many.len()
        ))),
    }
}

/// Asks every node for its tasks' output and streams the lines until every
/// task answered, the agents fall silent, or the caller goes away.
async fn collect(
    manager: Manager,
    targets: Targets,
    tail: u32,
    out: mpsc::Sender<Result<proto::LogLine, Status>>,
) {
    let (answers, mut chunks) = mpsc::unbounded_channel();
    let mut requests = Vec::new();
    let mut sources: HashMap<(u64, String), String> = HashMap::new();
    let mut outstanding = 0usize;
    let mut unreachable = Vec::new();
    for (node, tasks) in &targets {
        let ids: Vec<TaskId> = tasks.keys().copied().collect();
        let Some(request) = manager
            .agents()
            .request_logs(*node, &ids, tail, answers.clone())
        else {
            tracing::debug!(node = %format_id(*node), "no agent session: its tasks' logs are skipped");
            unreachable.push(*node);
            continue;
        };
        requests.push(request);
        for (id, source) in tasks {
            sources.insert((request, format_id(*id)), source.clone());
            outstanding += 1;
        }
    }
    drop(answers);
    while outstanding > 0 {
        let chunk = match tokio::time::timeout(IDLE_TIMEOUT, chunks.recv()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                tracing::debug!(outstanding, "log request timed out");
                break;
            }
        };
        let Some(source) = sources.get(&(chunk.request_id, chunk.task_id.clone())) else {
            continue;
        };
        if !chunk.error.is_empty() {
            tracing::debug!(%source, error = %chunk.error, "an agent could not read a task's output");
        }
        for line in chunk.lines {
            let line = proto::LogLine {
                source: source.clone(),
                line,
            };
            if out.send(Ok(line)).await.is_err() {
                manager.agents().finish_logs(&requests);
                return;
            }
        }
        if chunk.done {
            outstanding -= 1;
        }
    }
    manager.agents().finish_logs(&requests);
    if !unreachable.is_empty() {
        // After the lines of the nodes that answered: the call fails, saying whose
        // output is missing and why.
        let message = unreachable_message(&manager.read_unchecked(), &targets, &unreachable);
        let _ = out.send(Err(Status::unavailable(message))).await;
    }
}

/// Why the output of the tasks on `nodes` (nodes without an agent session) is
/// missing: `no output from web.1.<id>@n3: node n3 is down; ...`.
fn unreachable_message(state: &ClusterState, targets: &Targets, nodes: &[NodeId]) -> String {
    let parts: Vec<String> = nodes
        .iter()
        .map(|node| {
            let tasks: Vec<&str> = targets
                .get(node)
                .map(|t| t.values().map(String::as_str).collect())
                .unwrap_or_default();
            let why = match state.nodes.get(node) {
                Some(n) if n.status == NodeStatus::Down => format!("node {} is down", n.hostname),
                Some(n) => format!("node {} has no agent session", n.hostname),
                None => format!("node {} was removed from the cluster", format_id(*node)),
            };
            format!("no output from {}: {why}", tasks.join(", "))
        })
        .collect();
    parts.join("; ")
}

/// A follower passes the call on to the leader, which holds the sessions.
async fn relay_to_leader(
    manager: &Manager,
    request: proto::ServiceLogsRequest,
) -> Result<Response<LogStream>, Status> {
    let stream = manager
        .leader_control("no leader to fetch logs from")
        .await?
        .service_logs(request)
        .await?
        .into_inner();
    Ok(Response::new(Box::pin(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskState;
    use mesh_core::state::testing;

    #[test]
    fn a_service_names_its_started_tasks_by_node_and_a_task_id_names_one() {
        let mut state = testing::ready(&[1, 2]);
        for (id, node) in &mut state.nodes {
            node.hostname = format!("host{id}");
        }
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        let service = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, service.id, &[Some(1), Some(2), None]);
        testing::report(&mut state, 1, ids[0], TaskState::Running);
        let t = targets(&state, "web").unwrap();
        assert_eq!(t.len(), 1, "only node 1's task started: {t:?}");
        assert_eq!(t[&1][&ids[0]], format!("web.1.{}@host1", format_id(ids[0])));
        let by_id = targets(&state, &format_id(ids[0])[..12]).unwrap();
        assert_eq!(by_id, t);
        assert!(matches!(
            targets(&state, "nope"),
            Err(StateError::UnknownService(_))
        ));
    }

    #[test]
    fn missing_output_names_the_tasks_and_why() {
        let mut state = testing::ready(&[1, 2]);
        state.nodes.get_mut(&1).unwrap().hostname = "n1".into();
        state.nodes.get_mut(&1).unwrap().status = NodeStatus::Down;
        let mut targets = Targets::new();
        targets
            .entry(1)
            .or_default()
            .insert(10, "web.1.a@n1".into());
        targets.entry(7).or_default().insert(11, "web.2.b@".into());
        assert_eq!(
            unreachable_message(&state, &targets, &[1, 7]),
            "no output from web.1.a@n1: node n1 is down; no output from web.2.b@: node \
             0000000000000007 was removed from the cluster"
        );
    }
}
