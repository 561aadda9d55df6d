//! Agents' sessions with the leader: heartbeats, task reports,
//! acknowledgements and log chunks up; assignments, role changes and log
//! requests down; and the leader loops that turn silence into `down` and
//! keep every agent's assignment current.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::agents::{Follows, SessionHandle};
use super::{Manager, sign_certificate, state_status};
use crate::auth::{self, Caller};
use crate::proto::{self, agent_message, dispatcher_server::Dispatcher, manager_message};
use crate::raft::service::not_leader;
use mesh_api::node::{NodeId, NodeStatus, format_id};
use mesh_api::spec::RuntimeKind;
use mesh_api::task::{TaskId, TaskStatus};
use mesh_api::time::now_ms;
use mesh_core::liveness::Liveness;
use mesh_core::state::Command;

/// The `Dispatcher` service.
#[derive(Clone, Debug)]
pub struct DispatcherService {
    manager: Manager,
}

impl DispatcherService {
    /// Serves sessions for `manager`.
    #[must_use]
    pub fn new(manager: Manager) -> Self {
        Self { manager }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<proto::ManagerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = auth::caller(&request)?;
        if !self.manager.raft().is_leader() {
            return Err(not_leader(self.manager.raft().leader()));
        }
        let mut inbound = request.into_inner();
        let deadline = self.manager.heartbeat() * self.manager.allowed_misses();
        let hello = match tokio::time::timeout(deadline, inbound.message()).await {
            Ok(Ok(Some(proto::AgentMessage {
                kind: Some(agent_message::Kind::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "a session starts with a Hello message",
                ));
            }
        };
        let data_addr: Option<Ipv4Addr> = if hello.data_addr.is_empty() {
            None
        } else {
            Some(hello.data_addr.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "invalid data address {:?} in Hello",
                    hello.data_addr
                ))
            })?)
        };
        let runtimes = hello_runtimes(caller.node_id, &hello.runtimes);
        let resources = mesh_api::resources::Resources {
            nano_cpus: hello.nano_cpus,
            memory_bytes: hello.memory_bytes,
        };
        let (needs_status, needs_addr, counts) = {
            let state = self.manager.read_unchecked();
            let node = state.node(caller.node_id).map_err(state_status)?;
            // Once a node has a dataplane, only its agent's session speaks
            // for its liveness (a manager host also holds the manager's own
            // session, which must not keep the node ready without its agent).
            let counts = data_addr.is_some() || node.data_addr.is_none();
            (
                counts
                    && (node.status != NodeStatus::Ready
                        || node.agent_version != hello.agent_version),
                data_addr.is_some()
                    && (node.data_addr != data_addr
                        || node.runtimes != runtimes
                        || node.resources != resources),
                counts,
            )
        };
        if counts && let Some(live) = self.manager.liveness().as_mut() {
            live.heartbeat(caller.node_id, Instant::now());
        }
        if needs_addr {
            self.manager
                .commit(Command::SetDataAddr {
                    id: caller.node_id,
                    addr: data_addr,
                    runtimes,
                    resources,
                    at_ms: now_ms(),
                })
                .await?;
        }
        if needs_status {
            self.manager
                .commit(Command::SetStatus {
                    id: caller.node_id,
                    status: NodeStatus::Ready,
                    agent_version: hello.agent_version.clone(),
                    at_ms: now_ms(),
                })
                .await?;
        }
        tracing::info!(
            node = %format_id(caller.node_id),
            hostname = %hello.hostname,
            data_addr = %hello.data_addr,
            runtimes = ?hello.runtimes,
            "session started"
        );

        let (tx, rx) = mpsc::channel(16);
        let established = established(&self.manager, caller.node_id, self.manager.manager_addrs());
        tx.send(Ok(established))
            .await
            .map_err(|_| Status::cancelled("the agent went away"))?;
        let follows = if hello.assignment_deltas {
            Follows::Deltas
        } else {
            Follows::WholeJson
        };
        let agent = data_addr.map(|_| self.manager.agents().register(caller.node_id, follows));
        tokio::spawn(serve_session(
            self.manager.clone(),
            caller,
            inbound,
            tx,
            agent,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn renew_certificate(
        &self,
        request: Request<proto::RenewCertificateRequest>,
    ) -> Result<Response<proto::RenewCertificateResponse>, Status> {
        let caller = auth::caller(&request)?;
        let (cert_pem, role) = {
            let state = self.manager.read()?;
            let role = state.node(caller.node_id).map_err(state_status)?.role;
            let csr_pem = &request.get_ref().csr_pem;
            (
                sign_certificate(&state, csr_pem, caller.node_id, role)?,
                role,
            )
        };
        Ok(Response::new(proto::RenewCertificateResponse {
            cert_pem,
            role: role.to_string(),
        }))
    }
}

/// The message that establishes a session, naming every manager; sent
/// again whenever the managers change, so that a node that joined a
/// one-manager cluster can fail over to the managers added since.
fn established(manager: &Manager, id: NodeId, managers: Vec<String>) -> proto::ManagerMessage {
    proto::ManagerMessage {
        kind: Some(manager_message::Kind::Established(
            proto::SessionEstablished {
                node_id: format_id(id),
                heartbeat_period_ms: u64::try_from(manager.heartbeat().as_millis())
                    .unwrap_or(u64::MAX),
                managers,
            },
        )),
    }
}

/// Reads the agent's messages until it goes away, this manager stops
/// leading or the node is removed; tells the agent when its role changes;
/// for an agent session, sends its assignments and log requests down.
async fn serve_session(
    manager: Manager,
    caller: Caller,
    mut inbound: Streaming<proto::AgentMessage>,
    tx: mpsc::Sender<Result<proto::ManagerMessage, Status>>,
    agent: Option<SessionHandle>,
) {
    let id = caller.node_id;
    let mut role = caller.role;
    let mut managers = manager.manager_addrs();
    let mut tick = tokio::time::interval(manager.heartbeat());
    let reports = spawn_report_committer(manager.clone(), id);
    let dataplane = spawn_dataplane_committer(manager.clone(), id);
    let serial = agent.as_ref().map(|a| a.serial);
    let (mut assignments, mut logs) = match agent {
        Some(a) => (Some(a.assignments), Some(a.logs)),
        None => (None, None),
    };
    loop {
        tokio::select! {
            // The manager is stopping: end the stream, or the server's graceful
            // shutdown would wait for it forever.
            () = manager.stopped() => break,
            message = inbound.message() => match message {
                Ok(Some(message)) => {
                    if !on_message(&manager, id, serial, message, &reports, &dataplane) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            Some(assignment) = next_assignment(assignments.as_mut()) => {
                let message = proto::ManagerMessage {
                    kind: Some(manager_message::Kind::Assignment(assignment)),
                };
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            Some(kind) = next_logs_message(logs.as_mut()) => {
                let message = proto::ManagerMessage { kind: Some(kind) };
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                if !manager.raft().is_leader() {
                    let _ = tx.send(Err(not_leader(manager.raft().leader()))).await;
                    break;
                }
                let current = manager.read_unchecked().node(id).map(|n| n.role).ok();
                match current {
                    None => {
                        let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "node {} has been removed from the cluster",
                                format_id(id)
                            ))))
                            .await;
                        break;
                    }
                    Some(now) if now != role => {
                        role = now;
                        let message = proto::ManagerMessage {
                            kind: Some(manager_message::Kind::RoleChanged(proto::RoleChanged {
                                role: role.to_string(),
                            })),
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                }
                let now = manager.manager_addrs();
                if now != managers {
                    managers = now;
                    if tx.send(Ok(established(&manager, id, managers.clone()))).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if let Some(serial) = serial {
        manager.agents().unregister(id, serial);
    }
    tracing::info!(node = %format_id(id), "session ended");
}

/// The next assignment to send, when the registry hands one out.
async fn next_assignment(
    assignments: Option<&mut mpsc::Receiver<proto::Assignment>>,
) -> Option<proto::Assignment> {
    assignments?.recv().await
}

/// The next log request or cancellation to send.
async fn next_logs_message(
    logs: Option<&mut mpsc::UnboundedReceiver<manager_message::Kind>>,
) -> Option<manager_message::Kind> {
    logs?.recv().await
}

/// The runtimes a `Hello` names; a name this manager does not know (an
/// agent newer than it) is left out with a warning, so its tasks are not
/// placed there.
fn hello_runtimes(node: NodeId, names: &[String]) -> BTreeSet<RuntimeKind> {
    names
        .iter()
        .filter_map(|name| match name.parse() {
            Ok(kind) => Some(kind),
            Err(e) => {
                tracing::warn!(node = %format_id(node), error = %e, "ignoring an unknown runtime in Hello");
                None
            }
        })
        .collect()
}

/// Handles one message from the node; `false` ends the session.
fn on_message(
    manager: &Manager,
    id: NodeId,
    serial: Option<u64>,
    message: proto::AgentMessage,
    reports: &mpsc::UnboundedSender<Vec<(TaskId, TaskStatus)>>,
    dataplane: &watch::Sender<Option<Option<String>>>,
) -> bool {
    // Only the agent's session speaks for a node with a dataplane.
    let counts = serial.is_some()
        || manager
            .read_unchecked()
            .node(id)
            .is_ok_and(|n| n.data_addr.is_none());
    if counts && let Some(live) = manager.liveness().as_mut() {
        live.heartbeat(id, Instant::now());
    }
    match message.kind {
        Some(agent_message::Kind::Reports(batch)) => match batch.reports() {
            Ok(batch) => return reports.send(batch).is_ok(),
            Err(e) => {
                tracing::warn!(node = %format_id(id), error = %e, "ignoring unreadable task reports");
            }
        },
        Some(agent_message::Kind::Applied(applied)) => {
            if let Some(serial) = serial {
                manager.agents().applied(id, serial, applied.version);
            }
        }
        Some(agent_message::Kind::Resync(resync)) => {
            if let Some(serial) = serial {
                tracing::info!(node = %format_id(id), base = resync.base, held = resync.held, "the agent missed an assignment change; sending it whole");
                manager.agents().resync(id, serial);
            }
        }
        Some(agent_message::Kind::Logs(chunk)) => manager.agents().deliver(chunk),
        Some(agent_message::Kind::Dataplane(status)) if serial.is_some() => {
            let error = (!status.error.is_empty()).then_some(status.error);
            if error.is_some() {
                tracing::warn!(node = %format_id(id), error = ?error, "the node's dataplane failed");
            }
            dataplane.send_replace(Some(error));
        }
        Some(agent_message::Kind::Dataplane(_)) => {}
        Some(agent_message::Kind::Hello(_) | agent_message::Kind::Heartbeat(_)) | None => {}
    }
    true
}

/// Records the node's dataplane status as its agent reports it: the latest
/// report wins (one that arrives during a commit is committed next), and a
/// report the state already holds commits nothing. Ends when the session
/// drops its sender.
fn spawn_dataplane_committer(
    manager: Manager,
    node: NodeId,
) -> watch::Sender<Option<Option<String>>> {
    let (tx, mut rx) = watch::channel::<Option<Option<String>>>(None);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(error) = rx.borrow_and_update().clone() else {
                continue;
            };
            let held = manager
                .read_unchecked()
                .node(node)
                .map(|n| n.dataplane_error.clone());
            if held.as_ref().ok() == Some(&error) {
                continue;
            }
            let command = Command::SetDataplane {
                id: node,
                error,
                at_ms: now_ms(),
            };
            if let Err(status) = manager.commit(command).await {
                tracing::warn!(node = %format_id(node), error = %status.message(), "recording the dataplane status");
            }
        }
    });
    tx
}

/// Commits the node's task reports, batching those that arrive while a
/// commit is under way. Ends when the session drops its sender.
fn spawn_report_committer(
    manager: Manager,
    node: NodeId,
) -> mpsc::UnboundedSender<Vec<(TaskId, TaskStatus)>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(TaskId, TaskStatus)>>();
    tokio::spawn(async move {
        while let Some(mut reports) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                reports.extend(more);
            }
            if reports.is_empty() {
                continue;
            }
            let command = Command::ReportTasks { node, reports };
            if let Err(status) = manager.commit(command).await {
                tracing::warn!(node = %format_id(node), error = %status.message(), "committing task reports failed");
            }
        }
    });
    tx
}

/// The least time between two refreshes of the agents' assignments: under a
/// stream of commits (a thousand agents reporting their tasks) each agent gets
/// one message per spacing with every change in it, instead of one per commit
/// (and acknowledges one). A lone change goes out at once.
pub const REFRESH_SPACING: Duration = Duration::from_millis(10);

/// The leader loop that keeps every agent's assignment current: on every
/// state change, session change or acknowledgement (at most once per
/// [`REFRESH_SPACING`]), recomputes each agent session's assignment and sends
/// those that changed. An agent whose oldest unapplied assignment is two
/// heartbeat periods old stops holding drains back.
pub async fn run_assignment_loop(manager: Manager) {
    let mut changes = manager.state_changes();
    let mut tick = tokio::time::interval(manager.heartbeat() / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound = manager.heartbeat() * 2;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = manager.stopped() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = manager.agents().changed() => {}
            _ = tick.tick() => {}
        }
        // Changes that come meanwhile go out with this one.
        tokio::time::sleep(REFRESH_SPACING.saturating_sub(last.elapsed())).await;
        last = Instant::now();
        changes.borrow_and_update();
        if !manager.raft().is_leader() {
            manager.agents().clear();
            continue;
        }
        let state = manager.read_unchecked();
        let started = Instant::now();
        let pushed = manager.agents().refresh(&state, started, bound);
        manager
            .metrics()
            .assignments_refreshed(started.elapsed(), pushed);
        if pushed.messages() > 0 {
            tracing::debug!(
                version = state.version,
                whole = pushed.whole,
                deltas = pushed.deltas,
                bytes = pushed.bytes,
                "assignments sent"
            );
        }
    }
}

/// The leader loop: while this manager leads, commits status changes for
/// nodes whose heartbeats started or stopped. Runs until the manager stops.
pub async fn run_liveness_loop(manager: Manager) {
    tokio::spawn(run_assignment_loop(manager.clone()));
    let mut tick = tokio::time::interval(manager.heartbeat() / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = manager.stopped() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let changes = {
            let mut guard = manager.liveness();
            if !manager.raft().is_leader() {
                *guard = None;
                continue;
            }
            let live = guard.get_or_insert_with(|| {
                Liveness::new(manager.heartbeat(), manager.allowed_misses(), now)
                    .with_takeover(2 * mesh_api::node::SESSION_RETRY_MAX)
            });
            let state = manager.read_unchecked();
            live.changes(&state, now, now_ms())
        };
        for change in changes {
            if let Command::SetStatus { id, status, .. } = &change {
                tracing::info!(node = %format_id(*id), %status, "node status changed");
            }
            if let Err(status) = manager.commit(change).await {
                tracing::warn!(error = %status.message(), "committing a node status failed");
                break;
            }
        }
    }
}
