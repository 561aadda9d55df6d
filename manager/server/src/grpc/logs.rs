//! `meshctl service logs`: the output of a service's tasks, fetched from the
//! agents that run them over their sessions.
//!
//! Only the leader holds the agents' sessions: a follower passes the call on
//! to the leader and relays its answer. The leader sends one `LogsRequest`
//! per node (for that node's tasks of the service, recent history included),
//! and streams each chunk's lines as they arrive, prefixed like docker's
//! (`web.1.<task id>@<hostname>`). A node that does not answer within
//! [`IDLE_TIMEOUT`] is given up on.
//!
//! A followed call (`-f`, `follow`) asks the agents to keep sending, and
//! also asks for the tasks of the service that start later (it looks again
//! whenever the state changes). It ends
//! - when the client goes away: the agents are told to stop (`LogsCancel`);
//! - normally, with a last message saying why (`LogLine::ended`), once the
//!   service was removed and its tasks' output is complete (or
//!   [`REMOVED_GRACE`] passed), or, for one task, once its output is
//!   complete;
//! - with `UNAVAILABLE` when this manager stops leading (the agents'
//!   sessions, and so the follows, move to the new leader: the client must
//!   ask again).
//!
//! A follow never waits for its client: the leader reads the agents' chunks
//! as they come (their session also carries heartbeats and task reports)
//! and drops the lines a slow client has no room for in its
//! [`CLIENT_LINES`] buffer, telling it how many (`LogLine::dropped`) once
//! there is room again.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{Manager, state_status};
use crate::proto;
use mesh_api::node::{NodeId, NodeStatus, format_id};
use mesh_api::service::ServiceId;
use mesh_api::task::{TaskId, TaskState};
use mesh_core::state::{ClusterState, StateError};

/// The stream `ServiceLogs` answers with.
pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogLine, Status>> + Send + 'static>>;

/// How long the leader waits for the next chunk before it gives up on the
/// agents that have not finished answering.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines a call's client may have waiting; a follow drops what does not fit.
pub const CLIENT_LINES: usize = 256;

/// How long a follow of a removed service waits for the last output of its
/// stopping tasks.
pub const REMOVED_GRACE: Duration = Duration::from_secs(30);

/// How often a follow checks that it still leads and that its requests
/// still have their agents' sessions.
const FOLLOW_TICK: Duration = Duration::from_millis(250);

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
    let (tx, rx) = mpsc::channel(CLIENT_LINES);
    if request.follow {
        let subject = {
            let state = manager.read()?;
            Subject::resolve(&state, &request.name).map_err(state_status)?
        };
        tokio::spawn(follow(manager.clone(), subject, request.tail, tx));
    } else {
        let targets = {
            let state = manager.read()?;
            targets(&state, &request.name).map_err(state_status)?
        };
        tokio::spawn(collect(manager.clone(), targets, request.tail, tx));
    }
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// One node's tasks to ask for: task -> the source prefix of its lines.
type Targets = BTreeMap<NodeId, BTreeMap<TaskId, String>>;

/// The tasks whose output `name` (a service, or a task ID or prefix) asks
/// for, by node: those that started on a node (history included).
fn targets(state: &ClusterState, name: &str) -> Result<Targets, StateError> {
    let subject = Subject::resolve(state, name)?;
    let tasks = subject.tasks(state).unwrap_or_default();
    Ok(targets_of(state, &tasks, TaskState::Preparing))
}

/// What a call names: a service, or one task.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    Service { id: ServiceId, name: String },
    Task(TaskId),
}

impl Subject {
    /// A service (name, ID or prefix) or a task (ID or prefix).
    fn resolve(state: &ClusterState, name: &str) -> Result<Self, StateError> {
        match state.resolve_service(name) {
            Ok(id) => Ok(Self::Service {
                id,
                name: state.services[&id].spec.name.clone(),
            }),
            Err(StateError::UnknownService(_)) => Ok(Self::Task(resolve_task(state, name)?)),
            Err(e) => Err(e),
        }
    }

    /// Its tasks now; `None` once the service was removed (or the task
    /// forgotten).
    fn tasks(&self, state: &ClusterState) -> Option<Vec<TaskId>> {
        match self {
            Self::Service { id, .. } => state
                .services
                .contains_key(id)
                .then(|| state.service_tasks(*id).map(|t| t.id).collect()),
            Self::Task(id) => state.tasks.contains_key(id).then(|| vec![*id]),
        }
    }
}

/// The tasks of `tasks` that reached `min` on a node (not rejected), by node.
fn targets_of(state: &ClusterState, tasks: &[TaskId], min: TaskState) -> Targets {
    let mut out = Targets::new();
    for id in tasks {
        let Some(task) = state.tasks.get(id) else {
            continue;
        };
        let id = *id;
        let Some(node) = task.node else { continue };
        if task.status.state < min || task.status.state == TaskState::Rejected {
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
    out
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
        let Some(request) =
            manager
                .agents()
                .request_logs(*node, &ids, tail, false, answers.clone())
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
                ..proto::LogLine::default()
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

/// A task a follow asked for.
#[derive(Debug)]
struct Followed {
    request: u64,
    source: String,
    /// Its output is complete, or its node's session was lost.
    done: bool,
}

/// What a follow has asked for and what it owes its client.
#[derive(Debug, Default)]
struct FollowState {
    tasks: BTreeMap<TaskId, Followed>,
    /// Request -> its tasks, by the IDs chunks carry.
    requests: HashMap<u64, HashMap<String, TaskId>>,
    /// Lines dropped since the client last had room.
    dropped: u64,
    dropped_total: u64,
}

impl FollowState {
    /// The tasks to ask for: those that reached `Starting` (their output
    /// exists on their node) and have not been asked for yet.
    fn wanted(&self, state: &ClusterState, tasks: &[TaskId]) -> Targets {
        let mut targets = targets_of(state, tasks, TaskState::Starting);
        for tasks in targets.values_mut() {
            tasks.retain(|id, _| !self.tasks.contains_key(id));
        }
        targets.retain(|_, tasks| !tasks.is_empty());
        targets
    }

    fn asked(&mut self, request: u64, tasks: BTreeMap<TaskId, String>) {
        let by_id = self.requests.entry(request).or_default();
        for (id, source) in tasks {
            by_id.insert(format_id(id), id);
            self.tasks.insert(
                id,
                Followed {
                    request,
                    source,
                    done: false,
                },
            );
        }
    }

    /// Whether every task asked for is done.
    fn all_done(&self) -> bool {
        self.tasks.values().all(|t| t.done)
    }

    /// Marks the tasks of requests that lost their session as done.
    fn lost(&mut self, live: impl Fn(u64) -> bool) {
        for task in self.tasks.values_mut() {
            if !task.done && !live(task.request) {
                tracing::debug!(source = %task.source, "its node's session ended: no longer followed");
                task.done = true;
            }
        }
    }

    /// Offers `line` to the client without waiting: a full buffer drops it
    /// (counted, and said once there is room). `false` once the client is gone.
    fn offer(
        &mut self,
        out: &mpsc::Sender<Result<proto::LogLine, Status>>,
        line: proto::LogLine,
    ) -> bool {
        use mpsc::error::TrySendError;
        if self.dropped > 0 {
            let note = proto::LogLine {
                dropped: self.dropped,
                ..proto::LogLine::default()
            };
            match out.try_send(Ok(note)) {
                Ok(()) => self.dropped = 0,
                Err(TrySendError::Full(_)) => {
                    self.dropped += 1;
                    self.dropped_total += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match out.try_send(Ok(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                self.dropped_total += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Follows `subject`'s output until it is complete, the client goes away or
/// this manager stops leading (see the module's header).
async fn follow(
    manager: Manager,
    subject: Subject,
    tail: u32,
    out: mpsc::Sender<Result<proto::LogLine, Status>>,
) {
    let (answers, mut chunks) = mpsc::unbounded_channel::<proto::LogChunk>();
    let mut changes = manager.state_changes();
    let mut tick = tokio::time::interval(FOLLOW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut follow = FollowState::default();
    let mut first = true;
    let mut removed_at: Option<tokio::time::Instant> = None;
    // Whether to look at the state again (it changed, a task's output ended,
    // or time passed).
    let mut look = true;
    let ended: Result<String, Status> = loop {
        if std::mem::take(&mut look) {
            let (tasks, wanted, task_ended) = {
                let state = manager.read_unchecked();
                let tasks = subject.tasks(&state);
                let wanted = tasks
                    .as_deref()
                    .map(|tasks| follow.wanted(&state, tasks))
                    .unwrap_or_default();
                let task_ended = match &subject {
                    Subject::Task(id) => state
                        .tasks
                        .get(id)
                        .is_some_and(|t| t.status.state.is_terminal()),
                    Subject::Service { .. } => false,
                };
                (tasks, wanted, task_ended)
            };
            // Ask for what started since the last look. The existing output is
            // cut to the tail; a task that starts later is all new.
            let tail = if first { tail } else { 0 };
            first = false;
            for (node, tasks) in wanted {
                let ids: Vec<TaskId> = tasks.keys().copied().collect();
                // A node without a session is asked again once it has one.
                if let Some(request) =
                    manager
                        .agents()
                        .request_logs(node, &ids, tail, true, answers.clone())
                {
                    follow.asked(request, tasks);
                }
            }
            if tasks.is_none() {
                let since = *removed_at.get_or_insert_with(tokio::time::Instant::now);
                if follow.all_done() || since.elapsed() >= REMOVED_GRACE {
                    break Ok(match &subject {
                        Subject::Service { name, .. } => format!("service {name} was removed"),
                        Subject::Task(id) => format!("task {} was removed", format_id(*id)),
                    });
                }
            } else if task_ended && follow.all_done() {
                // One task, ended, and its output is all sent (or it has none
                // to send: never started, or its node is gone).
                let source: Vec<&str> = follow.tasks.values().map(|t| t.source.as_str()).collect();
                let name = match (&subject, source.as_slice()) {
                    (_, [source]) => (*source).to_string(),
                    (Subject::Task(id), _) => format_id(*id),
                    (Subject::Service { name, .. }, _) => name.clone(),
                };
                break Ok(format!("{name}: the task ended"));
            }
        }
        tokio::select! {
            () = out.closed() => break Err(Status::cancelled("the client went away")),
            chunk = chunks.recv() => {
                let Some(chunk) = chunk else { continue };
                let Some(id) = follow
                    .requests
                    .get(&chunk.request_id)
                    .and_then(|tasks| tasks.get(&chunk.task_id))
                    .copied()
                else {
                    continue;
                };
                let source = follow.tasks[&id].source.clone();
                if !chunk.error.is_empty() {
                    tracing::debug!(%source, error = %chunk.error, "an agent could not follow a task's output");
                }
                let mut gone = false;
                for line in chunk.lines {
                    let line = proto::LogLine {
                        source: source.clone(),
                        line,
                        ..proto::LogLine::default()
                    };
                    if !follow.offer(&out, line) {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break Err(Status::cancelled("the client went away"));
                }
                if chunk.done && let Some(task) = follow.tasks.get_mut(&id) {
                    task.done = true;
                    look = true;
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    break Err(Status::unavailable("this manager is stopping: the follow ended"));
                }
                look = true;
            }
            _ = tick.tick() => {
                look = true;
                if !manager.raft().is_leader() {
                    break Err(Status::unavailable(
                        "the leader changed: the follow ended (run the command again)",
                    ));
                }
                follow.lost(|request| manager.agents().is_live(request));
            }
        }
    };
    let requests: Vec<u64> = follow.requests.keys().copied().collect();
    let cancelled = manager.agents().finish_logs(&requests);
    if follow.dropped_total > 0 {
        tracing::warn!(
            dropped = follow.dropped_total,
            "a log follow's client read too slowly: lines were dropped"
        );
    }
    tracing::info!(
        requests = requests.len(),
        cancelled,
        why = %match &ended { Ok(why) => why.clone(), Err(s) => s.message().to_string() },
        "log follow ended"
    );
    let last = match ended {
        Ok(why) => Ok(proto::LogLine {
            ended: why,
            ..proto::LogLine::default()
        }),
        Err(status) if status.code() == tonic::Code::Cancelled => return,
        Err(status) => Err(status),
    };
    // Waits for room: the end is never dropped (the client may be gone).
    let _ = out.send(last).await;
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

    fn line(text: &str) -> proto::LogLine {
        proto::LogLine {
            source: "web.1.a@n1".into(),
            line: text.into(),
            ..proto::LogLine::default()
        }
    }

    #[test]
    fn a_slow_client_loses_lines_and_is_told_how_many_once_it_has_room() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut follow = FollowState::default();
        for text in ["1", "2", "3", "4"] {
            assert!(follow.offer(&tx, line(text)));
        }
        assert_eq!(rx.try_recv().unwrap().unwrap().line, "1");
        assert_eq!(rx.try_recv().unwrap().unwrap().line, "2");
        assert!(follow.offer(&tx, line("5")));
        let note = rx.try_recv().unwrap().unwrap();
        assert_eq!(
            (note.dropped, note.line.as_str()),
            (2, ""),
            "3 and 4 dropped"
        );
        assert_eq!(rx.try_recv().unwrap().unwrap().line, "5");
        assert_eq!(follow.dropped_total, 2);
        drop(rx);
        assert!(!follow.offer(&tx, line("6")), "the client is gone");
    }

    #[test]
    fn a_follow_asks_for_started_tasks_once_and_a_lost_session_ends_them() {
        let mut state = testing::ready(&[1, 2]);
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        let service = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, service.id, &[Some(1), Some(2)]);
        testing::report(&mut state, 1, ids[0], TaskState::Running);
        testing::report(&mut state, 2, ids[1], TaskState::Preparing);
        let subject = Subject::resolve(&state, "web").unwrap();
        let tasks = subject.tasks(&state).unwrap();
        let mut follow = FollowState::default();
        let wanted = follow.wanted(&state, &tasks);
        assert_eq!(
            wanted.keys().copied().collect::<Vec<_>>(),
            [1],
            "node 2's task has no output yet"
        );
        follow.asked(7, wanted[&1].clone());
        assert!(follow.wanted(&state, &tasks).is_empty(), "asked once");
        testing::report(&mut state, 2, ids[1], TaskState::Running);
        let wanted = follow.wanted(&state, &tasks);
        assert_eq!(wanted.keys().copied().collect::<Vec<_>>(), [2]);
        follow.asked(8, wanted[&2].clone());
        assert!(!follow.all_done());
        follow.lost(|request| request != 8);
        assert!(follow.tasks[&ids[1]].done && !follow.tasks[&ids[0]].done);
        state.services.clear();
        assert_eq!(subject.tasks(&state), None, "the service was removed");
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
