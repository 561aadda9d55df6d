//! MANAGER STATUS from Raft: which managers are the leader, reachable or
//! unreachable, as this manager sees the Raft membership. Pure: the caller
//! gathers a [`ManagerView`] (membership, leader, and on the leader how long
//! ago each voter last answered a Raft RPC) and asks it about each node.
//!
//! As in Swarm, a node whose role is manager but that is not a Raft voter
//! (promoted and never started as a manager, or dropped by
//! `--force-new-cluster`) is unreachable: it takes no part in the quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use mesh_api::node::NodeId;

/// A manager's place in the Raft group, as `meshctl node ls` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerStatus {
    /// It leads.
    Leader,
    /// A voter the leader hears from.
    Reachable,
    /// Not a voter, or a voter the leader has not heard from lately.
    Unreachable,
    /// A voter that a follower cannot judge (only the leader talks to every
    /// voter); shown only when the follower cannot ask the leader.
    Unknown,
}

impl ManagerStatus {
    /// The name `meshctl` prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ManagerStatus::Leader => "Leader",
            ManagerStatus::Reachable => "Reachable",
            ManagerStatus::Unreachable => "Unreachable",
            ManagerStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ManagerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one manager knows of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerView {
    /// The manager answering.
    pub this: NodeId,
    /// The leader it knows, if any.
    pub leader: Option<NodeId>,
    /// The voters of the effective membership.
    pub voters: BTreeSet<NodeId>,
    /// On the leader: how long ago each peer last answered one of its Raft
    /// RPCs (heartbeats included); a peer never heard from is absent.
    /// `None` on a follower, which hears from the leader only.
    pub last_contact: Option<BTreeMap<NodeId, Duration>>,
    /// A voter silent for longer than this is unreachable.
    pub stale_after: Duration,
}

impl ManagerView {
    /// The status of manager `id`.
    #[must_use]
    pub fn status(&self, id: NodeId) -> ManagerStatus {
        if !self.voters.contains(&id) {
            return ManagerStatus::Unreachable;
        }
        if self.leader == Some(id) {
            return ManagerStatus::Leader;
        }
        if id == self.this {
            // It is answering this very call.
            return ManagerStatus::Reachable;
        }
        match &self.last_contact {
            Some(contacts) => match contacts.get(&id) {
                Some(age) if *age <= self.stale_after => ManagerStatus::Reachable,
                _ => ManagerStatus::Unreachable,
            },
            None => ManagerStatus::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(2);

    fn leader_view() -> ManagerView {
        ManagerView {
            this: 1,
            leader: Some(1),
            voters: BTreeSet::from([1, 2, 3]),
            last_contact: Some(BTreeMap::from([
                (2, Duration::from_millis(150)),
                (3, Duration::from_secs(5)),
            ])),
            stale_after: STALE,
        }
    }

    #[test]
    fn the_leader_judges_each_voter_by_its_last_answer() {
        let view = leader_view();
        assert_eq!(view.status(1), ManagerStatus::Leader);
        assert_eq!(view.status(2), ManagerStatus::Reachable);
        // Silent for longer than the threshold: killed, or cut off.
        assert_eq!(view.status(3), ManagerStatus::Unreachable);
        // Exactly at the threshold is still reachable.
        let mut view = leader_view();
        view.last_contact = Some(BTreeMap::from([(3, STALE)]));
        assert_eq!(view.status(3), ManagerStatus::Reachable);
    }

    #[test]
    fn a_voter_never_heard_from_is_unreachable() {
        let mut view = leader_view();
        view.last_contact = Some(BTreeMap::new());
        assert_eq!(view.status(2), ManagerStatus::Unreachable);
    }

    #[test]
    fn a_manager_that_is_no_voter_is_unreachable() {
        // Promoted but never started, or dropped by --force-new-cluster;
        // whatever a stale contact says.
        let mut view = leader_view();
        view.last_contact = Some(BTreeMap::from([(4, Duration::ZERO)]));
        assert_eq!(view.status(4), ManagerStatus::Unreachable);
        // Even the leader a follower still names, once it left the voters.
        view.voters.remove(&1);
        assert_eq!(view.status(1), ManagerStatus::Unreachable);
    }

    #[test]
    fn a_follower_knows_the_leader_and_itself_only() {
        let view = ManagerView {
            this: 2,
            leader: Some(1),
            voters: BTreeSet::from([1, 2, 3]),
            last_contact: None,
            stale_after: STALE,
        };
        assert_eq!(view.status(1), ManagerStatus::Leader);
        assert_eq!(view.status(2), ManagerStatus::Reachable);
        assert_eq!(view.status(3), ManagerStatus::Unknown);
        assert_eq!(view.status(9), ManagerStatus::Unreachable);
    }

    #[test]
    fn names_are_swarms() {
        let names: Vec<String> = [
            ManagerStatus::Leader,
            ManagerStatus::Reachable,
            ManagerStatus::Unreachable,
            ManagerStatus::Unknown,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(names, ["Leader", "Reachable", "Unreachable", "Unknown"]);
    }
}
