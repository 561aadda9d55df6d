//! A node's session with the leader, shared by `lb-agent --join` and each
//! manager's own node: heartbeats up, session messages down, failover to
//! the leader (over every manager the session learned, see
//! [`crate::failover`]), and certificate renewal when the node's role
//! changes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::connect::{self, ClientError, leader_addr};
use crate::failover::Failover;
use crate::pki::{self, TlsDir};
use crate::proto::{self, agent_message, dispatcher_client::DispatcherClient, manager_message};
use std::sync::Arc;

use mesh_api::assignment::Assignment;
use mesh_api::assignment_delta::{AssignmentFollower, DeltaError, Followed};
use mesh_api::node::Role;
use mesh_api::spec::RuntimeKind;
use mesh_api::task::{TaskId, TaskStatus};

/// The largest message an agent takes from the leader: an assignment with the secrets
/// and configs its tasks reference (each at most 1000 KiB, base64 in JSON).
pub const MAX_ASSIGNMENT_BYTES: usize = 64 * 1024 * 1024;
/// What a session reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A leader accepted the session.
    Established {
        /// The leader's address.
        manager: String,
        /// Every manager's address, for failover.
        managers: Vec<String>,
    },
    /// The node's role changed (and its certificate was renewed, if the
    /// session renews it: [`SessionOptions::renew_certificate`]).
    RoleChanged(Role),
    /// The session ended; it will be retried.
    Lost(String),
    /// What the node must run and route now: the whole assignment, as the
    /// session holds it after the leader's latest change (the leader sends
    /// it whole at the start of a session, then its changes).
    Assignment(Arc<Assignment>),
    /// The leader asks for some tasks' output; answer with
    /// [`Uplink::Logs`] chunks carrying `request_id`, one with `done` per task.
    LogsRequest {
        /// Echoed in every answer.
        request_id: u64,
        /// The tasks asked for.
        task_ids: Vec<TaskId>,
        /// Lines from the end of each task's output (0: all).
        tail: usize,
        /// Keep sending each task's new output ([`Uplink::FollowedLogs`]) until
        /// its output is complete (then `done`) or a
        /// [`SessionEvent::LogsCancel`] names the request.
        follow: bool,
    },
    /// The client of a followed log request went away: stop following it.
    LogsCancel {
        /// The request's ID.
        request_id: u64,
    },
}

/// What the node sends up its session, besides heartbeats. Messages queued
/// while no session is up are sent on the next one; after a reconnect
/// ([`SessionEvent::Established`]) an agent re-sends its current statuses.
#[derive(Debug)]
pub enum Uplink {
    /// Task state changes.
    Reports(Vec<(TaskId, TaskStatus)>),
    /// The node has programmed its dataplane and acted on this assignment
    /// version.
    Applied(u64),
    /// Part of an answer to a [`SessionEvent::LogsRequest`].
    Logs(proto::LogChunk),
    /// Whether the node's dataplane can be programmed: why not, or `None`.
    Dataplane(Option<String>),
    /// Part of an answer to a followed [`SessionEvent::LogsRequest`], with the
    /// credit it holds until the session hands it to the stream: a follow with
    /// N credits has at most N chunks waiting in the uplink, and waits for a
    /// credit before it reads more (backpressure, not an unbounded queue).
    FollowedLogs(proto::LogChunk, LogCredit),
}

/// What a followed log chunk holds while it waits in the uplink (see
/// [`Uplink::FollowedLogs`]).
pub type LogCredit = tokio::sync::OwnedSemaphorePermit;

/// The sending side of a session's uplink; survives reconnects.
pub type UplinkSender = mpsc::UnboundedSender<Uplink>;
/// The session's end of the uplink.
pub type UplinkReceiver = mpsc::UnboundedReceiver<Uplink>;

/// A new uplink: give the receiver to [`run_with_uplink`], keep the sender.
#[must_use]
pub fn uplink() -> (UplinkSender, UplinkReceiver) {
    mpsc::unbounded_channel()
}

impl Uplink {
    fn into_message(self) -> Option<proto::AgentMessage> {
        let kind = match self {
            Uplink::Reports(reports) => {
                agent_message::Kind::Reports(proto::TaskReports::new(&reports))
            }
            Uplink::Applied(version) => {
                agent_message::Kind::Applied(proto::AssignmentApplied { version })
            }
            // The credit is released here, as the chunk leaves the uplink.
            Uplink::Logs(chunk) | Uplink::FollowedLogs(chunk, _) => {
                agent_message::Kind::Logs(chunk)
            }
            Uplink::Dataplane(error) => agent_message::Kind::Dataplane(proto::DataplaneStatus {
                error: error.unwrap_or_default(),
            }),
        };
        Some(proto::AgentMessage { kind: Some(kind) })
    }
}

/// A session's settings.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Managers to try, in order, before the session has learned the others
    /// (and after them, should they all be gone).
    pub managers: Vec<String>,
    /// Where to keep the managers learned from the last session (one address
    /// a line), so that a restarted node knows them too; `None`: in memory.
    pub known_managers: Option<PathBuf>,
    /// The node's identity.
    pub tls: TlsDir,
    /// Reported in `Hello`.
    pub hostname: String,
    /// Reported in `Hello`.
    pub agent_version: String,
    /// The underlay address of the node's dataplane, reported in `Hello`:
    /// set, the session is the node's agent session (it runs tasks and its
    /// heartbeats alone keep the node ready).
    pub data_addr: Option<Ipv4Addr>,
    /// The runtimes the node's agent can run tasks of, reported in `Hello`
    /// (the scheduler places a task only on a node that runs its runtime);
    /// empty for a session without a dataplane.
    pub runtimes: BTreeSet<RuntimeKind>,
    /// The node's CPUs and memory, reported in `Hello` for the scheduler's
    /// reservations; zero for a session without a dataplane.
    pub resources: mesh_api::resources::Resources,
    /// Whether a role change renews the node's certificate (and is
    /// reported once renewed). The node's agent renews it; a manager's own
    /// session only reports the new role, so that two processes sharing a
    /// state directory never write its identity at once.
    pub renew_certificate: bool,
}

/// Why a session gave up for good.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The node was removed from the cluster.
    #[error("this node was removed from the cluster: {0}")]
    Removed(String),
    /// The node's identity could not be read.
    #[error("reading the node identity: {0}")]
    Identity(String),
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = mesh_api::node::SESSION_RETRY_MAX;

/// Keeps a session with the leader until `stop` turns true, reconnecting
/// (to the leader a follower names, or the next manager) when it drops.
///
/// # Errors
/// [`SessionError::Removed`] when the cluster refuses this node for good.
pub async fn run(
    options: SessionOptions,
    events: mpsc::Sender<SessionEvent>,
    stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let (_keep, uplink) = uplink();
    run_with_uplink(options, events, uplink, stop).await
}

/// As [`run`], and sends what arrives on `uplink` up the current session.
///
/// # Errors
/// [`SessionError::Removed`] when the cluster refuses this node for good.
pub async fn run_with_uplink(
    options: SessionOptions,
    events: mpsc::Sender<SessionEvent>,
    mut uplink: UplinkReceiver,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let kept = options
        .known_managers
        .as_deref()
        .map(read_known)
        .unwrap_or_default();
    let mut failover = Failover::new(options.managers.clone(), kept);
    let mut backoff = RETRY_MIN;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let order = failover.order();
        let outcome = tokio::select! {
            outcome = attempt(&options, &order, &events, &mut uplink, &mut failover) => outcome,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match outcome {
            Attempt::Redirect(leader) => {
                if failover.redirected(leader) {
                    continue;
                }
            }
            Attempt::Removed(reason) => return Err(SessionError::Removed(reason)),
            Attempt::Identity(reason) => return Err(SessionError::Identity(reason)),
            Attempt::Ended {
                reason,
                established,
            } => {
                failover.failed();
                if established {
                    backoff = RETRY_MIN;
                }
                tracing::warn!(%reason, next = ?failover.order(), "session lost; reconnecting");
                let _ = events.send(SessionEvent::Lost(reason)).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// The managers kept in `path` by an earlier run (none if it is missing or
/// unreadable: the session still has its initial addresses).
fn read_known(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::trim).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Keeps `managers` in `path`, replacing it whole (written aside, then
/// renamed); a failure is logged, the session goes on.
fn write_known(path: &Path, managers: &[String]) {
    let tmp = path.with_extension("tmp");
    let mut text = managers.join("\n");
    text.push('\n');
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "keeping the managers' addresses");
    }
}

enum Attempt {
    Redirect(String),
    Removed(String),
    Identity(String),
    Ended {
        reason: String,
        /// Whether a leader accepted the session before it ended.
        established: bool,
    },
}

async fn attempt(
    options: &SessionOptions,
    order: &[String],
    events: &mpsc::Sender<SessionEvent>,
    uplink: &mut UplinkReceiver,
    failover: &mut Failover,
) -> Attempt {
    let identity = match options.tls.load() {
        Ok(identity) => identity,
        Err(e) => return Attempt::Identity(e.to_string()),
    };
    let tls = connect::identity_tls(&identity);
    let mut last = String::from("no manager reachable");
    for addr in order {
        let channel = match connect::connect(std::slice::from_ref(addr), &tls).await {
            Ok(channel) => channel,
            Err(ClientError::Unreachable { reason, .. }) => {
                last = reason;
                continue;
            }
            Err(e) => return Attempt::Identity(e.to_string()),
        };
        // An assignment carries the secrets and configs of the node's tasks: more than
        // tonic's default 4 MiB when they are many and large.
        let mut dispatcher =
            DispatcherClient::new(channel).max_decoding_message_size(MAX_ASSIGNMENT_BYTES);
        let (tx, rx) = mpsc::channel(64);
        let hello = proto::AgentMessage {
            kind: Some(agent_message::Kind::Hello(proto::Hello {
                hostname: options.hostname.clone(),
                agent_version: options.agent_version.clone(),
                data_addr: options.data_addr.map(|a| a.to_string()).unwrap_or_default(),
                runtimes: options.runtimes.iter().map(ToString::to_string).collect(),
                nano_cpus: options.resources.nano_cpus,
                memory_bytes: options.resources.memory_bytes,
                assignment_deltas: true,
            })),
        };
        if tx.send(hello).await.is_err() {
            continue;
        }
        let mut inbound = match dispatcher.session(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => match status.code() {
                tonic::Code::FailedPrecondition => {
                    if let Some(leader) = leader_hint(&status, addr) {
                        return Attempt::Redirect(leader);
                    }
                    last = format!("{addr}: {}", status.message());
                    continue;
                }
                tonic::Code::PermissionDenied => {
                    return Attempt::Removed(status.message().to_string());
                }
                _ => {
                    last = format!("{addr}: {}", connect::status_message(&status));
                    continue;
                }
            },
        };
        let mut established_once = false;
        let mut heartbeats: Option<tokio::task::JoinHandle<()>> = None;
        // A new session: the leader sends the whole assignment first.
        let mut follower = AssignmentFollower::new();
        let reason = loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                Some(up) = uplink.recv() => {
                    if let Some(message) = up.into_message()
                        && tx.send(message).await.is_err()
                    {
                        break format!("{addr}: the session's stream closed");
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(proto::ManagerMessage { kind: Some(kind) })) => match kind {
                    manager_message::Kind::Established(established) => {
                        if failover.established(addr, &established.managers)
                            && let Some(path) = &options.known_managers
                        {
                            write_known(path, failover.learned());
                        }
                        if established_once {
                            // Sent again because the managers changed: the
                            // session goes on as it was.
                            tracing::info!(managers = ?established.managers, "the cluster's managers changed");
                            continue;
                        }
                        established_once = true;
                        let period = Duration::from_millis(established.heartbeat_period_ms.max(50));
                        if let Some(old) = heartbeats.take() {
                            old.abort();
                        }
                        heartbeats = Some(tokio::spawn(send_heartbeats(tx.clone(), period)));
                        tracing::info!(manager = %addr, node = %established.node_id, "session established");
                        let _ = events
                            .send(SessionEvent::Established {
                                manager: addr.clone(),
                                managers: established.managers,
                            })
                            .await;
                    }
                    manager_message::Kind::RoleChanged(changed) if !options.renew_certificate => {
                        match changed.role.parse::<Role>() {
                            Ok(role) => {
                                tracing::info!(%role, "role changed");
                                let _ = events.send(SessionEvent::RoleChanged(role)).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "ignoring an unknown role"),
                        }
                    }
                    manager_message::Kind::RoleChanged(changed) => {
                        match renew(&options.tls, &mut dispatcher).await {
                            Ok(role) => {
                                tracing::info!(role = %changed.role, "role changed; certificate renewed");
                                let _ = events.send(SessionEvent::RoleChanged(role)).await;
                            }
                            Err(e) => tracing::warn!(error = %e, "renewing the certificate failed"),
                        }
                    }
                    manager_message::Kind::Assignment(assignment) => {
                        let resync = match follower.receive(&assignment) {
                            Ok(Followed::Assignment(assignment)) => {
                                let _ = events.send(SessionEvent::Assignment(assignment)).await;
                                None
                            }
                            Ok(Followed::Ignored) => None,
                            Ok(Followed::Resync(gap)) => {
                                tracing::warn!(reason = %gap, "missed an assignment change; asking for the whole assignment");
                                Some(gap)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "an unreadable assignment; asking for the whole assignment");
                                follower.reset();
                                Some(e)
                            }
                        };
                        if let Some(why) = resync {
                            let (base, held) = match why {
                                DeltaError::Gap { base, held } => (base, held),
                                _ => (0, 0),
                            };
                            let message = proto::AgentMessage {
                                kind: Some(agent_message::Kind::Resync(proto::Resync {
                                    base,
                                    held,
                                })),
                            };
                            if tx.send(message).await.is_err() {
                                break format!("{addr}: the session's stream closed");
                            }
                        }
                    }
                    manager_message::Kind::Logs(request) => {
                        let task_ids = request
                            .task_ids
                            .iter()
                            .filter_map(|id| u64::from_str_radix(id, 16).ok())
                            .collect();
                        let _ = events
                            .send(SessionEvent::LogsRequest {
                                request_id: request.request_id,
                                task_ids,
                                tail: request.tail as usize,
                                follow: request.follow,
                            })
                            .await;
                    }
                    manager_message::Kind::LogsCancel(cancel) => {
                        let _ = events
                            .send(SessionEvent::LogsCancel {
                                request_id: cancel.request_id,
                            })
                            .await;
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) => break format!("{addr} closed the session"),
                Err(status) if status.code() == tonic::Code::PermissionDenied => {
                    if let Some(h) = heartbeats.take() {
                        h.abort();
                    }
                    return Attempt::Removed(status.message().to_string());
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    if let Some(h) = heartbeats.take() {
                        h.abort();
                    }
                    if let Some(leader) = leader_hint(&status, addr) {
                        return Attempt::Redirect(leader);
                    }
                    break format!("{addr}: {}", status.message());
                }
                Err(status) => break format!("{addr}: {}", connect::status_message(&status)),
            }
        };
        if let Some(h) = heartbeats.take() {
            h.abort();
        }
        return Attempt::Ended {
            reason,
            established: established_once,
        };
    }
    Attempt::Ended {
        reason: last,
        established: false,
    }
}

/// The leader a follower named when it refused a session, unless it is
/// the manager just tried.
fn leader_hint(status: &tonic::Status, tried: &str) -> Option<String> {
    leader_addr(status).filter(|leader| leader != tried)
}

async fn send_heartbeats(tx: mpsc::Sender<proto::AgentMessage>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let beat = proto::AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(proto::Heartbeat {})),
        };
        if tx.send(beat).await.is_err() {
            return;
        }
    }
}

/// Asks for a certificate for the node's current role and stores it.
async fn renew(
    tls: &TlsDir,
    dispatcher: &mut DispatcherClient<tonic::transport::Channel>,
) -> Result<Role, String> {
    let (key_pem, csr_pem) = pki::generate_key_and_csr().map_err(|e| e.to_string())?;
    let response = dispatcher
        .renew_certificate(proto::RenewCertificateRequest { csr_pem })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let role: Role = response
        .role
        .parse()
        .map_err(|e: mesh_api::node::ParseError| e.to_string())?;
    let mut identity = tls.load().map_err(|e| e.to_string())?;
    identity.cert_pem = response.cert_pem;
    identity.key_pem = key_pem;
    tls.save(&identity).map_err(|e| e.to_string())?;
    Ok(role)
}
