//! Agents' sessions with the leader: heartbeats up, session messages down,
//! and the leader loop that turns silence into `down`.

use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Manager, now_ms, sign_certificate, state_status};
use crate::auth::{self, Caller};
use crate::liveness::Liveness;
use crate::proto::{self, agent_message, dispatcher_server::Dispatcher, manager_message};
use crate::raft::service::not_leader;
use crate::state::{Command, NodeStatus, format_id};

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
        if let Some(live) = self.manager.liveness().as_mut() {
            live.heartbeat(caller.node_id, Instant::now());
        }
        let needs_update = {
            let state = self.manager.read_unchecked();
            let node = state.node(caller.node_id).map_err(state_status)?;
            node.status != NodeStatus::Ready || node.agent_version != hello.agent_version
        };
        if needs_update {
            self.manager
                .commit(Command::SetStatus {
                    id: caller.node_id,
                    status: NodeStatus::Ready,
                    agent_version: hello.agent_version.clone(),
                    at_ms: now_ms(),
                })
                .await?;
        }
        tracing::info!(node = %format_id(caller.node_id), hostname = %hello.hostname, "session started");

        let (tx, rx) = mpsc::channel(16);
        let established = proto::ManagerMessage {
            kind: Some(manager_message::Kind::Established(
                proto::SessionEstablished {
                    node_id: format_id(caller.node_id),
                    heartbeat_period_ms: u64::try_from(self.manager.heartbeat().as_millis())
                        .unwrap_or(u64::MAX),
                    managers: self.manager.manager_addrs(),
                },
            )),
        };
        tx.send(Ok(established))
            .await
            .map_err(|_| Status::cancelled("the agent went away"))?;
        tokio::spawn(serve_session(self.manager.clone(), caller, inbound, tx));
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

/// Reads heartbeats until the agent goes away, this manager stops leading
/// or the node is removed; tells the agent when its role changes.
async fn serve_session(
    manager: Manager,
    caller: Caller,
    mut inbound: Streaming<proto::AgentMessage>,
    tx: mpsc::Sender<Result<proto::ManagerMessage, Status>>,
) {
    let id = caller.node_id;
    let mut role = caller.role;
    let mut tick = tokio::time::interval(manager.heartbeat());
    loop {
        tokio::select! {
            // The manager is stopping: end the stream, or the server's graceful
            // shutdown would wait for it forever.
            () = manager.stopped() => break,
            message = inbound.message() => match message {
                Ok(Some(_)) => {
                    if let Some(live) = manager.liveness().as_mut() {
                        live.heartbeat(id, Instant::now());
                    }
                }
                Ok(None) | Err(_) => break,
            },
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
            }
        }
    }
    tracing::info!(node = %format_id(id), "session ended");
}

/// The leader loop: while this manager leads, commits status changes for
/// nodes whose heartbeats started or stopped. Runs until the manager stops.
pub async fn run_liveness_loop(manager: Manager) {
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
