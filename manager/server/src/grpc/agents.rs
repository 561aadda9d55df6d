//! The leader's registry of agent sessions: what each node's agent was last
//! sent and has applied, the lowest version every routing agent applied
//! (which turns a draining task's `Drain` into `Stop`), and the log
//! requests waiting for answers (a followed one is cancelled on the agent
//! when its caller finishes it, and ends with its session).
//!
//! Assignments go out whole at the start of a session (and after the agent
//! asks to resync), then as changes (`mesh_api::assignment_delta`): on every
//! refresh the routing part common to all nodes is built and diffed once and
//! its change encoded once, the same bytes for every session; each node's own
//! part is diffed per node. A session's queue is bounded: an agent too slow
//! to take its changes gets the whole assignment when it catches up instead.
//!
//! The bookkeeping ([`AgentRegistry::acked`], [`AgentRegistry::refresh`])
//! takes the state and the clock as arguments, so the drain rule is
//! unit-tested without sessions or I/O; the dispatcher feeds it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use mesh_api::assignment::Assignment;
use mesh_api::assignment_delta::{DeltaError, NodeDelta, NodeWork, Routing, RoutingDelta};
use mesh_api::codec;
use prost::bytes::Bytes;

use crate::proto;
use crate::proto::manager_message;
use mesh_api::node::NodeId;
use mesh_api::task::TaskId;
use mesh_core::assignment;
use mesh_core::journal::Touch;
use mesh_core::state::ClusterState;

/// The most assignment messages a session's queue holds: past it, the queue is
/// left to drain and the agent gets the whole assignment next.
pub const SESSION_QUEUE: usize = 64;

/// What a registered session hands its serve loop.
#[derive(Debug)]
pub struct SessionHandle {
    /// Identifies this session among the node's successive ones.
    pub serial: u64,
    /// The assignment messages to send, in order.
    pub assignments: mpsc::Receiver<proto::Assignment>,
    /// Log requests and cancellations to send down the session.
    pub logs: mpsc::UnboundedReceiver<manager_message::Kind>,
}

/// How a session's agent takes its assignments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follows {
    /// Whole, then changes, in the compact encoding.
    Deltas,
    /// Whole every time, as JSON (an agent from before deltas).
    WholeJson,
}

/// What the last assignment handed to a session held.
#[derive(Debug)]
struct Sent {
    version: u64,
    /// The routing generation ([`Inner::epoch`]) it had.
    epoch: u64,
    work: NodeWork,
}

#[derive(Debug)]
struct AgentSession {
    serial: u64,
    follows: Follows,
    push: mpsc::Sender<proto::Assignment>,
    logs: mpsc::UnboundedSender<manager_message::Kind>,
    /// The last assignment handed to the session; `None`: the next is whole.
    sent: Option<Sent>,
    /// The highest version the agent reported applied.
    applied: u64,
    /// The newest state version whose assignment for this node equals
    /// `sent` (the agent that applied `sent` is up to date with it).
    current_through: u64,
    /// The versions handed to the session that it has not applied yet, with
    /// when each was handed over, oldest first. An agent that keeps up with a
    /// stream of changes a few milliseconds behind is not stuck: only how
    /// long its oldest unapplied assignment has waited counts.
    unapplied: VecDeque<(u64, Instant)>,
}

impl AgentSession {
    /// The newest state version this agent is known to act on.
    fn effective(&self) -> u64 {
        match &self.sent {
            Some(sent) if self.applied >= sent.version => self.current_through.max(self.applied),
            _ => self.applied,
        }
    }

    /// Whether it sits on an assignment for longer than `bound`: it no
    /// longer holds drains back.
    fn stuck(&self, now: Instant, bound: Duration) -> bool {
        self.unapplied
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= bound)
    }
}

/// The routing part as last built, and its last change, each encoded once and
/// shared by every session's message (reference-counted bytes).
#[derive(Debug, Default)]
struct RoutingState {
    /// Bumped whenever the routing part changes.
    epoch: u64,
    current: Routing,
    /// The state version `current` and the sessions' node parts were last
    /// brought up to.
    built_at: u64,
    /// The lowest acknowledged version the node parts were last built with.
    acked: u64,
    /// `current`, encoded, once a session needed it whole.
    whole: Option<Bytes>,
    /// The change from generation `epoch - 1` to `epoch`, encoded.
    last_change: Bytes,
    /// An empty change, encoded (for a session whose own part alone changed).
    no_change: Bytes,
}

impl RoutingState {
    /// `current`, encoded (once per generation).
    fn whole(&mut self) -> Result<Bytes, codec::CodecError> {
        if let Some(bytes) = &self.whole {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(codec::encode(&self.current)?);
        self.whole = Some(bytes.clone());
        Ok(bytes)
    }
}

/// What one refresh handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Whole assignments.
    pub whole: usize,
    /// Changes.
    pub deltas: usize,
    /// Their encoded size.
    pub bytes: usize,
}

impl Pushed {
    /// How many messages in all.
    #[must_use]
    pub fn messages(&self) -> usize {
        self.whole + self.deltas
    }
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<NodeId, AgentSession>,
    routing: Option<RoutingState>,
    next_serial: u64,
    next_request: u64,
    /// Log request -> where its chunks go.
    pending: HashMap<u64, Pending>,
}

/// A log request waiting for answers.
#[derive(Debug)]
struct Pending {
    answers: mpsc::UnboundedSender<proto::LogChunk>,
    node: NodeId,
    /// The session that carried the request.
    serial: u64,
    follow: bool,
}

/// The leader's live agent sessions (one per node with a dataplane).
#[derive(Debug, Default)]
pub struct AgentRegistry {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl AgentRegistry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("agent registry lock poisoned")
    }

    /// Registers `node`'s new agent session, replacing an older one.
    pub fn register(&self, node: NodeId, follows: Follows) -> SessionHandle {
        let (push, assignments) = mpsc::channel(SESSION_QUEUE);
        let (logs_tx, logs) = mpsc::unbounded_channel();
        let serial = {
            let mut inner = self.lock();
            inner.next_serial += 1;
            let serial = inner.next_serial;
            inner.sessions.insert(
                node,
                AgentSession {
                    serial,
                    follows,
                    push,
                    logs: logs_tx,
                    sent: None,
                    applied: 0,
                    current_through: 0,
                    unapplied: VecDeque::new(),
                },
            );
            serial
        };
        self.changed.notify_one();
        SessionHandle {
            serial,
            assignments,
            logs,
        }
    }

    /// Session `serial` of `node` missed a change: it gets the whole assignment next.
    pub fn resync(&self, node: NodeId, serial: u64) {
        {
            let mut inner = self.lock();
            match inner.sessions.get_mut(&node) {
                Some(session) if session.serial == serial => session.sent = None,
                _ => return,
            }
        }
        self.changed.notify_one();
    }

    /// Forgets session `serial` of `node` (a newer one stays).
    pub fn unregister(&self, node: NodeId, serial: u64) {
        {
            let mut inner = self.lock();
            if inner
                .sessions
                .get(&node)
                .is_some_and(|s| s.serial == serial)
            {
                inner.sessions.remove(&node);
                // Its log requests died with it (the agent stops its follows).
                inner
                    .pending
                    .retain(|_, p| !(p.node == node && p.serial == serial));
            }
        }
        self.changed.notify_one();
    }

    /// Forgets every session and log request (this manager stopped leading).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.sessions.clear();
        inner.pending.clear();
        inner.routing = None;
    }

    /// Whether `node` has a live agent session.
    #[must_use]
    pub fn has_session(&self, node: NodeId) -> bool {
        self.lock().sessions.contains_key(&node)
    }

    /// Records that session `serial` of `node` applied `version`.
    pub fn applied(&self, node: NodeId, serial: u64, version: u64) {
        {
            let mut inner = self.lock();
            let Some(session) = inner.sessions.get_mut(&node) else {
                return;
            };
            if session.serial != serial {
                return;
            }
            session.applied = session.applied.max(version);
            while session
                .unapplied
                .front()
                .is_some_and(|(v, _)| *v <= session.applied)
            {
                session.unapplied.pop_front();
            }
        }
        self.changed.notify_one();
    }

    /// Resolves when a session came, went or applied something.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The lowest version every routing node's agent acts on (see
    /// [`assignment::for_node`]). A routing node without a session counts as
    /// having applied nothing: its dataplane routes by an assignment this leader
    /// does not know until its agent is back (or the node is marked down, when
    /// it no longer routes). Agents whose oldest unapplied assignment is older
    /// than `bound` do not count.
    #[must_use]
    pub fn acked(&self, state: &ClusterState, now: Instant, bound: Duration) -> u64 {
        let inner = self.lock();
        acked_of(&inner.sessions, state, now, bound)
    }

    /// Brings every agent's assignment up to `state`: brings the routing part
    /// common to all nodes up to date and encodes its change once, then each
    /// node's own part, and hands each session whose assignment changed (in more
    /// than its version) the change, or the whole assignment if it has none yet.
    /// Repeats while the acknowledged version moves, so a drain that every agent
    /// applied turns into a stop in the same call.
    ///
    /// The cost is in proportion to what changed since the last call (the
    /// state's [`mesh_core::journal`]): the routes of the services a change
    /// touched are rebuilt, and the own parts of the nodes whose tasks it
    /// touched (or whose drains the acknowledged version turns into stops).
    /// The first call, and a change the journal cannot narrow down (nodes,
    /// networks, files), rebuild everything.
    pub fn refresh(&self, state: &ClusterState, now: Instant, bound: Duration) -> Pushed {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let touch = match &inner.routing {
            Some(held) => state.journal.since(held.built_at, state.version),
            None => Touch::everything(),
        };
        let mut index = if touch.everything {
            assignment::TaskIndex::new(state)
        } else {
            // The touched services' tasks and nodes' (more nodes as needed below).
            assignment::TaskIndex::partial(state, &touch.services, &touch.nodes)
        };
        let incremental = match inner.routing.as_mut() {
            Some(held) if !touch.everything => {
                let change =
                    assignment::routing_change(state, &index, &touch.services, &held.current);
                Some(held.advance(&change))
            }
            _ => None,
        };
        let epoch = match incremental {
            Some(Ok(epoch)) => epoch,
            Some(Err(e)) => {
                tracing::error!(error = %e, "the routing part held does not take its change; rebuilding it");
                index = assignment::TaskIndex::new(state);
                advance_routing(&mut inner.routing, assignment::routing(state, &index))
            }
            None => advance_routing(&mut inner.routing, assignment::routing(state, &index)),
        };
        let routing = inner.routing.as_mut().expect("built above");
        routing.built_at = state.version;
        let mut pushed = Pushed::default();
        for _ in 0..4 {
            let acked = acked_of(&inner.sessions, state, now, bound);
            let drains = if touch.everything {
                BTreeSet::new()
            } else {
                assignment::nodes_with_drains_between(state, routing.acked, acked)
            };
            routing.acked = acked;
            for (node, session) in &mut inner.sessions {
                let rebuild = touch.everything
                    || session.sent.is_none()
                    || touch.nodes.contains(node)
                    || drains.contains(node);
                let work = match &session.sent {
                    Some(_) if !rebuild => None,
                    _ => {
                        index.add_node(state, *node);
                        Some(assignment::node_work(state, &index, *node, acked))
                    }
                };
                let message = match (&session.sent, &work) {
                    (Some(sent), work)
                        if sent.epoch == epoch && work.as_ref().is_none_or(|w| *w == sent.work) =>
                    {
                        if session.applied >= sent.version {
                            session.current_through = state.version;
                        }
                        continue;
                    }
                    (Some(sent), work)
                        if session.follows == Follows::Deltas && sent.epoch + 1 >= epoch =>
                    {
                        let change = if sent.epoch == epoch {
                            routing.no_change.clone()
                        } else {
                            routing.last_change.clone()
                        };
                        let delta = work
                            .as_ref()
                            .map(|w| NodeDelta::between(&sent.work, w))
                            .unwrap_or_default();
                        proto::Assignment::delta(sent.version, state.version, change, &delta)
                    }
                    (sent, work) => {
                        let work = work
                            .as_ref()
                            .or(sent.as_ref().map(|s| &s.work))
                            .expect("built when nothing was sent");
                        match session.follows {
                            Follows::Deltas => routing
                                .whole()
                                .and_then(|r| proto::Assignment::whole(state.version, r, work)),
                            Follows::WholeJson => Ok(proto::Assignment::json(
                                &Assignment::compose(state.version, &routing.current, work),
                            )),
                        }
                    }
                };
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::error!(node = %mesh_api::node::format_id(*node), error = %e, "an assignment does not encode");
                        continue;
                    }
                };
                let bytes = prost::Message::encoded_len(&message);
                let whole = !matches!(message.body, Some(proto::assignment::Body::Delta(_)));
                if session.push.try_send(message).is_err() {
                    // Full (or the session is going): what is queued drains, and
                    // the agent gets the whole assignment after it.
                    session.sent = None;
                    continue;
                }
                pushed.bytes += bytes;
                if whole {
                    pushed.whole += 1;
                } else {
                    pushed.deltas += 1;
                }
                session.unapplied.push_back((state.version, now));
                session.current_through = state.version;
                let work = match (work, session.sent.take()) {
                    (Some(work), _) => work,
                    (None, Some(sent)) => sent.work,
                    (None, None) => unreachable!("built when nothing was sent"),
                };
                session.sent = Some(Sent {
                    version: state.version,
                    epoch,
                    work,
                });
            }
            if acked_of(&inner.sessions, state, now, bound) == acked {
                break;
            }
        }
        pushed
    }

    /// Sends a log request for `tasks` to `node`'s agent (`follow`: keep
    /// sending new output until [`AgentRegistry::finish_logs`]); its chunks go
    /// to `answers`. Returns the request's ID, or `None` if the node has no
    /// agent session.
    pub fn request_logs(
        &self,
        node: NodeId,
        tasks: &[TaskId],
        tail: u32,
        follow: bool,
        answers: mpsc::UnboundedSender<proto::LogChunk>,
    ) -> Option<u64> {
        let mut inner = self.lock();
        inner.next_request += 1;
        let request_id = inner.next_request;
        let session = inner.sessions.get(&node)?;
        let request = proto::LogsRequest {
            request_id,
            task_ids: tasks
                .iter()
                .map(|t| mesh_api::node::format_id(*t))
                .collect(),
            tail,
            follow,
        };
        session
            .logs
            .send(manager_message::Kind::Logs(request))
            .ok()?;
        let serial = session.serial;
        inner.pending.insert(
            request_id,
            Pending {
                answers,
                node,
                serial,
                follow,
            },
        );
        Some(request_id)
    }

    /// Whether request `request` still has the session that carried it (a
    /// follow of a node whose agent went away gets nothing more).
    #[must_use]
    pub fn is_live(&self, request: u64) -> bool {
        self.lock().pending.contains_key(&request)
    }

    /// Hands a chunk to the request waiting for it.
    pub fn deliver(&self, chunk: proto::LogChunk) {
        let inner = self.lock();
        if let Some(pending) = inner.pending.get(&chunk.request_id) {
            let _ = pending.answers.send(chunk);
        }
    }

    /// Forgets log requests (answered or given up); tells the agents still
    /// following one of them to stop. Returns how many cancellations were sent.
    pub fn finish_logs(&self, requests: &[u64]) -> usize {
        let mut inner = self.lock();
        let mut cancelled = 0;
        for id in requests {
            let Some(pending) = inner.pending.remove(id) else {
                continue;
            };
            let session = inner.sessions.get(&pending.node);
            if pending.follow
                && let Some(session) = session.filter(|s| s.serial == pending.serial)
            {
                let cancel = proto::LogsCancel { request_id: *id };
                if session
                    .logs
                    .send(manager_message::Kind::LogsCancel(cancel))
                    .is_ok()
                {
                    cancelled += 1;
                }
            }
        }
        cancelled
    }
}

/// Records `next` as the routing part (rebuilt whole), and its change from the
/// one before; returns its generation.
fn advance_routing(held: &mut Option<RoutingState>, next: Routing) -> u64 {
    match held {
        Some(state) => {
            let change = RoutingDelta::between(&state.current, &next);
            state.advance(&change).unwrap_or_else(|e| {
                // Never: a change made from the part held applies to it.
                tracing::error!(error = %e, "a rebuilt routing part's change does not apply");
                state.current = next;
                state.whole = None;
                // Two generations on: every session gets the whole assignment.
                state.epoch += 2;
                state.epoch
            })
        }
        None => {
            let no_change =
                codec::encode(&RoutingDelta::default()).expect("an empty change encodes");
            *held = Some(RoutingState {
                epoch: 1,
                current: next,
                no_change: no_change.into(),
                ..RoutingState::default()
            });
            1
        }
    }
}

impl RoutingState {
    /// Applies `change` to the routing part, encodes it once for every session,
    /// and returns the generation (bumped if anything changed).
    ///
    /// # Errors
    /// The change does not apply to the part held (nothing changed).
    fn advance(&mut self, change: &RoutingDelta) -> Result<u64, DeltaError> {
        if change.is_empty() {
            return Ok(self.epoch);
        }
        self.current.apply(change)?;
        self.whole = None;
        match codec::encode(change) {
            Ok(bytes) => {
                self.last_change = bytes.into();
                self.epoch += 1;
            }
            Err(e) => {
                // Two generations on: every session gets the whole assignment.
                tracing::error!(error = %e, "a routing change does not encode");
                self.epoch += 2;
            }
        }
        Ok(self.epoch)
    }
}

fn acked_of(
    sessions: &HashMap<NodeId, AgentSession>,
    state: &ClusterState,
    now: Instant,
    bound: Duration,
) -> u64 {
    assignment::routing_nodes(state)
        .filter_map(|node| match sessions.get(&node) {
            // Its dataplane still routes by the last assignment it applied, which
            // this leader does not know (it just took over, or the agent is
            // reconnecting): it holds every drain back until it is back or down.
            None => Some(0),
            Some(session) if session.stuck(now, bound) => None,
            Some(session) => Some(session.effective()),
        })
        .min()
        .unwrap_or(state.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::assignment::TaskAction;
    use mesh_api::assignment_delta::{AssignmentFollower, Followed};
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskState;
    use mesh_core::state::testing::{self, shut_down};
    use mesh_core::state::{Command, TaskChange};
    use std::sync::Arc;

    const BOUND: Duration = Duration::from_secs(1);

    /// Nodes 1 and 2 with dataplanes, a service with one running task on 2.
    fn cluster() -> (ClusterState, TaskId) {
        let mut state = testing::ready(&[1, 2]);
        let spec = ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]);
        let service = testing::create_service(&mut state, spec);
        let task = testing::create_tasks(&mut state, service.id, &[Some(2)])[0];
        testing::report(&mut state, 2, task, TaskState::Running);
        (state, task)
    }

    /// A session's agent: it follows what its session is handed.
    struct Agent {
        handle: SessionHandle,
        follower: AssignmentFollower,
    }

    impl Agent {
        fn serial(&self) -> u64 {
            self.handle.serial
        }

        /// The assignment held after taking every message handed over.
        fn latest(&mut self) -> Arc<Assignment> {
            while let Ok(message) = self.handle.assignments.try_recv() {
                match self.follower.receive(&message).expect("a readable message") {
                    Followed::Assignment(_) => {}
                    other => panic!("the agent could not follow: {other:?}"),
                }
            }
            self.follower.held().cloned().expect("an assignment")
        }
    }

    fn agent(registry: &AgentRegistry, node: NodeId) -> Agent {
        Agent {
            handle: registry.register(node, Follows::Deltas),
            follower: AssignmentFollower::new(),
        }
    }

    #[test]
    fn a_drain_turns_into_a_stop_once_every_agent_applied_it() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let (mut a, mut b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        assert_eq!(registry.refresh(&state, t0, BOUND).whole, 2);
        registry.applied(1, a.serial(), state.version);
        registry.applied(2, b.serial(), state.version);
        assert_eq!(
            registry.refresh(&state, t0, BOUND).messages(),
            0,
            "nothing changed"
        );

        shut_down(&mut state, task);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Drain);
        assert!(a.latest().services[0].backends[0].draining);
        registry.applied(2, b.serial(), state.version);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(
            b.latest().tasks[0].action,
            TaskAction::Drain,
            "node 1 has not applied the drain yet"
        );
        registry.applied(1, a.serial(), a.latest().version);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Stop);
    }

    #[test]
    fn a_change_of_history_alone_is_pushed() {
        // The agent removes the logs of ended tasks its assignment's history no longer
        // names: a history that shrank without another change must reach it (the logs of
        // a removed service's tasks stayed on a node for good when it did not).
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let (_a, mut b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        testing::report(&mut state, 2, task, TaskState::Complete);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().history, [task].into());
        state
            .apply(&Command::ChangeTasks {
                create: vec![],
                update: vec![],
                delete: vec![task],
                at_ms: 5,
            })
            .unwrap();
        assert_eq!(registry.refresh(&state, t0, BOUND).deltas, 1);
        assert!(b.latest().history.is_empty());
    }

    #[test]
    fn an_agent_whose_assignment_did_not_change_does_not_hold_drains_back() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let (a, b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        registry.applied(1, a.serial(), state.version);
        registry.applied(2, b.serial(), state.version);
        // Commands that change nothing node 1 sees (a report) move the version.
        testing::report(&mut state, 2, task, TaskState::Running);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(registry.acked(&state, t0, BOUND), state.version);
    }

    #[test]
    fn a_stuck_agent_holds_drains_back_for_a_bounded_time_only() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let (_a, mut b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        registry.applied(2, b.serial(), state.version);
        shut_down(&mut state, task);
        registry.refresh(&state, t0, BOUND);
        registry.applied(2, b.serial(), state.version);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Drain);
        registry.refresh(&state, t0 + BOUND, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Stop);
    }

    #[test]
    fn an_agent_that_keeps_up_a_step_behind_a_stream_of_changes_is_not_stuck() {
        let (mut state, _) = cluster();
        let registry = AgentRegistry::default();
        let (mut a, b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        registry.applied(1, a.serial(), state.version);
        registry.applied(2, b.serial(), state.version);
        // For three bounds' time node 1's assignment changes every 100 ms (its peer's
        // name); its agent is always one assignment behind: it applies each one only
        // once the next is out.
        let mut previous = a.latest().version;
        for step in 1..=30u32 {
            let now = t0 + BOUND * step / 10;
            state.nodes.get_mut(&2).unwrap().hostname = format!("n2-{step}");
            state.version += 1;
            registry.refresh(&state, now, BOUND);
            registry.applied(2, b.serial(), state.version);
            registry.applied(1, a.serial(), previous);
            let pending = a.latest().version;
            let acked = registry.acked(&state, now, BOUND);
            assert!(
                acked < pending,
                "step {step}: node 1 has not applied {pending} yet, but drains may pass \
                 at {acked}"
            );
            previous = pending;
        }
    }

    #[test]
    fn a_node_without_a_session_holds_drains_back_until_it_is_back_or_down() {
        // A new leader, or an agent reconnecting: the node's dataplane still routes
        // by the last assignment it had, with the task among the backends. Stopping
        // the task before it applied the drain refuses its new connections (seen
        // when the leader was killed during a rolling update).
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let mut b = agent(&registry, 2);
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        registry.applied(2, b.serial(), state.version);
        assert_eq!(
            registry.acked(&state, t0, BOUND),
            0,
            "node 1 has no session"
        );
        shut_down(&mut state, task);
        registry.refresh(&state, t0, BOUND);
        registry.applied(2, b.serial(), state.version);
        // Long past the bound of a stuck agent: node 1 is still up.
        registry.refresh(&state, t0 + BOUND * 10, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Drain);

        // Back: it holds the drain until it applied it.
        let mut a = agent(&registry, 1);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Drain);
        assert!(a.latest().services[0].backends[0].draining);
        registry.applied(1, a.serial(), state.version);
        registry.refresh(&state, t0, BOUND);
        assert_eq!(b.latest().tasks[0].action, TaskAction::Stop);

        // Gone again, then marked down: a down node does not route.
        registry.unregister(1, a.serial());
        assert!(!registry.has_session(1));
        assert_eq!(registry.acked(&state, t0, BOUND), 0);
        let applied = state.version;
        state
            .apply(&Command::SetStatus {
                id: 1,
                status: mesh_api::node::NodeStatus::Down,
                agent_version: String::new(),
                at_ms: 9,
            })
            .unwrap();
        assert_eq!(registry.acked(&state, t0, BOUND), applied, "node 2's alone");
    }

    #[test]
    fn changes_follow_the_state_exactly_and_share_the_routing_bytes() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let (mut a, mut b) = (agent(&registry, 1), agent(&registry, 2));
        let t0 = Instant::now();
        assert_eq!(registry.refresh(&state, t0, BOUND).whole, 2);
        assert_eq!(*a.latest(), assignment::for_node(&state, 1, state.version));
        b.latest();
        let service = state.tasks[&task].service;
        let more = testing::create_tasks(&mut state, service, &[Some(1)])[0];
        testing::report(&mut state, 1, more, TaskState::Running);
        let pushed = registry.refresh(&state, t0, BOUND);
        assert_eq!((pushed.whole, pushed.deltas), (0, 2));
        // Both sessions were handed the same encoded routing change.
        let routing = |agent: &mut Agent| match agent.handle.assignments.try_recv() {
            Ok(proto::Assignment {
                body: Some(proto::assignment::Body::Delta(delta)),
            }) => {
                let bytes = delta.routing.clone();
                agent
                    .follower
                    .receive(&proto::Assignment {
                        body: Some(proto::assignment::Body::Delta(delta)),
                    })
                    .unwrap();
                bytes
            }
            other => panic!("expected a delta, got {other:?}"),
        };
        assert_eq!(routing(&mut a), routing(&mut b));
        let acked = registry.acked(&state, t0, BOUND);
        assert_eq!(*a.latest(), assignment::for_node(&state, 1, acked));
        assert_eq!(*b.latest(), assignment::for_node(&state, 2, acked));
    }

    #[test]
    fn a_resync_or_a_full_queue_sends_the_whole_assignment_next() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let mut a = agent(&registry, 1);
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        a.latest();
        registry.resync(1, a.serial());
        assert_eq!(registry.refresh(&state, t0, BOUND).whole, 1);
        a.latest();
        // An agent that takes nothing: its queue fills with changes, then the
        // next one is dropped and it is owed the whole assignment.
        for step in 0..=SESSION_QUEUE {
            state.nodes.get_mut(&2).unwrap().hostname = format!("n2-{step}");
            state.version += 1;
            registry.refresh(&state, t0, BOUND);
        }
        testing::report(&mut state, 2, task, TaskState::Complete);
        state.version += 1;
        assert_eq!(
            registry.refresh(&state, t0, BOUND).whole,
            0,
            "still no room"
        );
        let stale = a.latest();
        assert_eq!(stale.peers[0].hostname, format!("n2-{}", SESSION_QUEUE - 1));
        assert!(stale.version < state.version);
        assert_eq!(registry.refresh(&state, t0, BOUND).whole, 1);
        assert_eq!(*a.latest(), assignment::for_node(&state, 1, state.version));
    }

    #[test]
    fn changes_built_from_what_each_command_touched_equal_a_rebuild_from_scratch() {
        // Every kind of change the journal narrows down (new and removed services,
        // tasks created, placed, reported, stopped and forgotten, a service scaled)
        // and one it cannot (a node going down), in turn: after each, what every agent
        // holds is exactly what a rebuild of its whole assignment from the state gives.
        let (mut state, _) = cluster();
        let registry = AgentRegistry::default();
        let mut agents = [agent(&registry, 1), agent(&registry, 2)];
        let t0 = Instant::now();
        let check = |state: &ClusterState, agents: &mut [Agent; 2], step: &str| {
            let pushed = registry.refresh(state, t0, BOUND);
            let acked = registry.acked(state, t0, BOUND);
            for (agent, node) in agents.iter_mut().zip([1, 2]) {
                let held = agent.latest();
                // An agent whose assignment did not change is sent nothing: it
                // holds an earlier version of the same content.
                let expected = Assignment {
                    version: held.version,
                    ..assignment::for_node(state, node, acked)
                };
                assert_eq!(*held, expected, "node {node} after {step}");
                registry.applied(node, agent.serial(), state.version);
            }
            pushed
        };
        check(&state, &mut agents, "the start");
        let api = testing::create_service(
            &mut state,
            ServiceSpec::new("api", RuntimeKind::Process, "task-echo", vec![]),
        );
        check(&state, &mut agents, "a new service");
        let ids = testing::create_tasks(&mut state, api.id, &[Some(1), None, Some(2)]);
        check(&state, &mut agents, "new tasks");
        state
            .apply(&Command::ChangeTasks {
                create: vec![],
                update: vec![TaskChange {
                    id: ids[1],
                    node: Some(1),
                    ..TaskChange::default()
                }],
                delete: vec![],
                at_ms: 3,
            })
            .unwrap();
        check(&state, &mut agents, "a pending task placed");
        for (id, node) in [(ids[0], 1), (ids[1], 1), (ids[2], 2)] {
            testing::report(&mut state, node, id, TaskState::Running);
        }
        let pushed = check(&state, &mut agents, "reports");
        assert_eq!((pushed.whole, pushed.deltas), (0, 2), "changes, not whole");
        shut_down(&mut state, ids[2]);
        check(&state, &mut agents, "a drain");
        check(&state, &mut agents, "every agent applied the drain: a stop");
        testing::report(&mut state, 2, ids[2], TaskState::Shutdown);
        check(&state, &mut agents, "the stopped task reported");
        state
            .apply(&Command::RemoveService {
                id: api.id,
                at_ms: 4,
            })
            .unwrap();
        check(&state, &mut agents, "a removed service");
        state
            .apply(&Command::SetStatus {
                id: 2,
                status: mesh_api::node::NodeStatus::Down,
                agent_version: String::new(),
                at_ms: 5,
            })
            .unwrap();
        check(&state, &mut agents, "a node down");
    }

    #[test]
    fn an_agent_from_before_deltas_gets_whole_json() {
        let (mut state, task) = cluster();
        let registry = AgentRegistry::default();
        let mut old = registry.register(1, Follows::WholeJson);
        let t0 = Instant::now();
        registry.refresh(&state, t0, BOUND);
        testing::report(&mut state, 2, task, TaskState::Complete);
        registry.refresh(&state, t0, BOUND);
        for _ in 0..2 {
            let Ok(proto::Assignment {
                body: Some(proto::assignment::Body::Json(json)),
            }) = old.assignments.try_recv()
            else {
                panic!("expected whole JSON")
            };
            serde_json::from_slice::<Assignment>(&json).unwrap();
        }
    }

    #[test]
    fn log_chunks_reach_the_request_that_asked() {
        let registry = AgentRegistry::default();
        let mut handle = registry.register(7, Follows::Deltas);
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(
            registry
                .request_logs(8, &[1], 0, false, tx.clone())
                .is_none()
        );
        let id = registry.request_logs(7, &[0xab], 5, false, tx).unwrap();
        let Some(manager_message::Kind::Logs(sent)) = handle.logs.try_recv().ok() else {
            panic!("no log request sent");
        };
        assert_eq!(sent.task_ids, vec!["00000000000000ab".to_string()]);
        assert_eq!(sent.tail, 5);
        registry.deliver(proto::LogChunk {
            request_id: id,
            task_id: "00000000000000ab".into(),
            lines: vec!["hello".into()],
            done: true,
            error: String::new(),
        });
        assert_eq!(rx.try_recv().unwrap().lines, vec!["hello".to_string()]);
        assert_eq!(registry.finish_logs(&[id]), 0, "nothing to cancel");
        registry.deliver(proto::LogChunk {
            request_id: id,
            ..proto::LogChunk::default()
        });
        assert!(rx.try_recv().is_err());
        assert!(handle.logs.try_recv().is_err());
    }

    #[test]
    fn a_finished_follow_is_cancelled_on_its_agent_and_a_lost_session_ends_its_follows() {
        let registry = AgentRegistry::default();
        let mut handle = registry.register(7, Follows::Deltas);
        let (tx, _rx) = mpsc::unbounded_channel();
        let id = registry
            .request_logs(7, &[0xab], 0, true, tx.clone())
            .unwrap();
        let Some(manager_message::Kind::Logs(sent)) = handle.logs.try_recv().ok() else {
            panic!("no log request sent");
        };
        assert!(sent.follow);
        assert!(registry.is_live(id));
        assert_eq!(registry.finish_logs(&[id]), 1);
        assert!(!registry.is_live(id));
        let Some(manager_message::Kind::LogsCancel(cancel)) = handle.logs.try_recv().ok() else {
            panic!("no cancellation sent");
        };
        assert_eq!(cancel.request_id, id);
        assert_eq!(registry.finish_logs(&[id]), 0, "cancelled once");

        // The session goes: its follow is no longer live, and nothing is sent to the
        // node's next session.
        let id = registry.request_logs(7, &[0xab], 0, true, tx).unwrap();
        registry.unregister(7, handle.serial);
        assert!(!registry.is_live(id));
        let mut next = registry.register(7, Follows::Deltas);
        assert_eq!(registry.finish_logs(&[id]), 0);
        assert!(next.logs.try_recv().is_err());
    }
}
