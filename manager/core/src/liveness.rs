//! Node liveness from heartbeats: the dispatcher's pure core.
//!
//! The leader feeds heartbeats and the clock in and gets back the status
//! changes to commit. Nothing here does I/O or reads a clock, so the rules
//! are tested with made-up instants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_api::node::{NodeId, NodeStatus};

use crate::state::{ClusterState, Command};

/// Heartbeat bookkeeping of one leadership term.
#[derive(Debug)]
pub struct Liveness {
    period: Duration,
    allowed_misses: u32,
    /// When this leader took over: nodes it has not heard from yet are
    /// measured from here, so a new leader gives every node a full grace
    /// period instead of marking the whole cluster down.
    since: Instant,
    /// How much longer than the deadline a node this leader has not heard from
    /// yet is given: the time its session may take to find the new leader.
    takeover: Duration,
    last_seen: HashMap<NodeId, Instant>,
}

impl Liveness {
    /// Starts tracking at `now`: a node is down after `allowed_misses`
    /// heartbeat periods without a heartbeat.
    #[must_use]
    pub fn new(period: Duration, allowed_misses: u32, now: Instant) -> Self {
        Self {
            period,
            allowed_misses: allowed_misses.max(1),
            since: now,
            takeover: Duration::ZERO,
            last_seen: HashMap::new(),
        }
    }

    /// Gives a node this leader has not heard from yet `takeover` more than the
    /// deadline: the sessions that lost the old leader back off between rounds
    /// of attempts (up to `mesh_api::node::SESSION_RETRY_MAX`), so they may
    /// find this one seconds after it took over. Without it a leader change
    /// marks every node down, and their tasks are replaced.
    #[must_use]
    pub fn with_takeover(mut self, takeover: Duration) -> Self {
        self.takeover = takeover;
        self
    }

    /// The interval agents are asked to heartbeat at.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long a node may stay silent before it is marked down.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        self.period * self.allowed_misses
    }

    /// Records a heartbeat (or a session's first message).
    pub fn heartbeat(&mut self, id: NodeId, now: Instant) {
        self.last_seen.insert(id, now);
    }

    /// Forgets a node (it was removed or left).
    pub fn forget(&mut self, id: NodeId) {
        self.last_seen.remove(&id);
    }

    /// Whether `id` has heartbeated within the deadline.
    #[must_use]
    pub fn is_alive(&self, id: NodeId, now: Instant) -> bool {
        self.last_seen
            .get(&id)
            .is_some_and(|seen| now.saturating_duration_since(*seen) < self.deadline())
    }

    /// The status changes to commit at `now`: nodes the state calls ready
    /// whose heartbeats stopped go down; nodes heard from within the
    /// deadline that the state does not call ready come up.
    #[must_use]
    pub fn changes(&self, state: &ClusterState, now: Instant, at_ms: u64) -> Vec<Command> {
        let mut out = Vec::new();
        for node in state.nodes.values() {
            let heard = self.last_seen.contains_key(&node.id);
            let (seen, allowed) = match self.last_seen.get(&node.id) {
                Some(seen) => (*seen, self.deadline()),
                None => (self.since, self.deadline() + self.takeover),
            };
            let alive = now.saturating_duration_since(seen) < allowed;
            let status = match (node.status, alive, heard) {
                (NodeStatus::Ready, false, _) => NodeStatus::Down,
                (NodeStatus::Unknown | NodeStatus::Down, true, true) => NodeStatus::Ready,
                (NodeStatus::Unknown, false, _) => NodeStatus::Down,
                _ => continue,
            };
            out.push(Command::SetStatus {
                id: node.id,
                status,
                agent_version: String::new(),
                at_ms,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::node::{Node, Role};

    /// An origin for the made-up instants the tests pass in (`Instant` has no
    /// other constructor); the code under test never reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    fn state_with(status: &[(NodeId, NodeStatus)]) -> ClusterState {
        let mut state = ClusterState::default();
        for (id, s) in status {
            let mut node = Node::new(*id, format!("n{id}"), Role::Worker, 0);
            node.status = *s;
            state.nodes.insert(*id, node);
        }
        state
    }

    fn statuses(commands: &[Command]) -> Vec<(NodeId, NodeStatus)> {
        commands
            .iter()
            .map(|c| match c {
                Command::SetStatus { id, status, .. } => (*id, *status),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    const P: Duration = Duration::from_millis(500);

    #[test]
    fn a_new_leader_gives_every_node_a_full_grace_period() {
        let t0 = origin();
        let live = Liveness::new(P, 3, t0);
        let state = state_with(&[(1, NodeStatus::Ready), (2, NodeStatus::Ready)]);
        assert!(live.changes(&state, t0 + P * 2, 0).is_empty());
        assert_eq!(
            statuses(&live.changes(&state, t0 + P * 3, 0)),
            vec![(1, NodeStatus::Down), (2, NodeStatus::Down)]
        );
    }

    #[test]
    fn a_new_leader_waits_for_the_sessions_to_find_it() {
        let t0 = origin();
        let takeover = Duration::from_secs(4);
        let mut live = Liveness::new(P, 3, t0).with_takeover(takeover);
        let state = state_with(&[(1, NodeStatus::Ready), (2, NodeStatus::Ready)]);
        // Past the deadline, within the takeover: nobody is judged yet.
        assert!(
            live.changes(&state, t0 + P * 3 + takeover / 2, 0)
                .is_empty()
        );
        // Node 1's session found the new leader; node 2's never did.
        live.heartbeat(1, t0 + P * 2 + takeover);
        assert_eq!(
            statuses(&live.changes(&state, t0 + P * 3 + takeover, 0)),
            vec![(2, NodeStatus::Down)]
        );
        // Once heard from, a node has the plain deadline again.
        assert_eq!(
            statuses(&live.changes(&state, t0 + P * 6 + takeover, 0)),
            vec![(1, NodeStatus::Down), (2, NodeStatus::Down)]
        );
    }

    #[test]
    fn heartbeats_keep_a_node_ready_and_silence_marks_it_down() {
        let t0 = origin();
        let mut live = Liveness::new(P, 3, t0);
        let state = state_with(&[(1, NodeStatus::Ready), (2, NodeStatus::Ready)]);
        for i in 1..=10 {
            live.heartbeat(1, t0 + P * i);
        }
        let now = t0 + P * 10 + Duration::from_millis(100);
        assert_eq!(
            statuses(&live.changes(&state, now, 0)),
            vec![(2, NodeStatus::Down)]
        );
        assert!(live.is_alive(1, now));
        assert!(!live.is_alive(1, now + P * 3));
    }

    #[test]
    fn a_heartbeat_brings_a_down_or_new_node_up_once() {
        let t0 = origin();
        let mut live = Liveness::new(P, 3, t0);
        let mut state = state_with(&[(1, NodeStatus::Down), (2, NodeStatus::Unknown)]);
        live.heartbeat(1, t0);
        live.heartbeat(2, t0);
        let changes = live.changes(&state, t0 + P, 7);
        assert_eq!(
            statuses(&changes),
            vec![(1, NodeStatus::Ready), (2, NodeStatus::Ready)]
        );
        for c in &changes {
            let Command::SetStatus { id, status, .. } = c else {
                unreachable!()
            };
            state.nodes.get_mut(id).unwrap().status = *status;
        }
        assert!(live.changes(&state, t0 + P, 7).is_empty());
    }

    #[test]
    fn a_joined_node_that_never_connects_goes_down() {
        let t0 = origin();
        let live = Liveness::new(P, 2, t0);
        let state = state_with(&[(9, NodeStatus::Unknown)]);
        assert!(live.changes(&state, t0 + P, 0).is_empty());
        assert_eq!(
            statuses(&live.changes(&state, t0 + P * 2, 0)),
            vec![(9, NodeStatus::Down)]
        );
    }
}
