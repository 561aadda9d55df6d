//! What each applied command touched: the services and nodes whose part of the
//! state it changed, for the leader's loops to work in proportion to a change
//! (plan the services a change touched, rebuild their routes and the work of
//! the nodes it touched) instead of going over the whole state every time.
//!
//! The journal is not replicated state: each manager's copy records the
//! commands it applied itself, and a copy of the state that was loaded (a
//! snapshot, a restart) starts with an empty journal, which answers
//! "everything" for any version before it. It keeps the last [`KEPT`]
//! versions; a reader further behind is told everything changed.

use std::collections::{BTreeSet, VecDeque};

use mesh_api::node::NodeId;
use mesh_api::service::ServiceId;
use mesh_api::task::TaskId;

use crate::state::{ClusterState, Command};

/// How many versions the journal keeps.
pub const KEPT: usize = 4096;

/// What one command touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touch {
    /// Anything may have changed (nodes, networks, files, a stack): readers
    /// start over from the whole state.
    pub everything: bool,
    /// Services whose spec, endpoint, status or tasks changed.
    pub services: BTreeSet<ServiceId>,
    /// Nodes one of whose tasks changed (before and after a move).
    pub nodes: BTreeSet<NodeId>,
}

impl Touch {
    /// A change a reader cannot narrow down.
    #[must_use]
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    /// Adds what `other` touched.
    pub fn merge(&mut self, other: &Touch) {
        if self.everything {
            return;
        }
        if other.everything {
            *self = Self::everything();
            return;
        }
        self.services.extend(&other.services);
        self.nodes.extend(&other.nodes);
    }

    /// Whether nothing was touched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty() && self.nodes.is_empty()
    }
}

/// The touches of the last [`KEPT`] versions.
#[derive(Debug, Default)]
pub struct Journal {
    /// `(version, touch)`, consecutive versions, oldest first.
    entries: VecDeque<(u64, Touch)>,
}

/// A copy of the state starts with an empty journal (a reader of the copy is
/// told everything changed before it): copies are made to try commands on (a
/// plan's simulation, a stack deploy), which need no history, and copying
/// thousands of entries with each would cost more than the copy's use.
impl Clone for Journal {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Two states are equal whatever their journals (it is bookkeeping of how a
/// copy got there, not state).
impl PartialEq for Journal {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Journal {}

impl Journal {
    /// Records what the command that made `version` touched.
    pub fn record(&mut self, version: u64, touch: Touch) {
        if self
            .entries
            .back()
            .is_some_and(|(last, _)| last + 1 != version)
        {
            // A gap (never in order of application): what came before is unknown.
            self.entries.clear();
        }
        if self.entries.len() == KEPT {
            self.entries.pop_front();
        }
        self.entries.push_back((version, touch));
    }

    /// What changed from `version` to `current` (the state's version): every
    /// touch after `version`, or everything if the journal does not reach back
    /// that far.
    #[must_use]
    pub fn since(&self, version: u64, current: u64) -> Touch {
        if version >= current {
            return Touch::default();
        }
        let reaches = self
            .entries
            .front()
            .is_some_and(|(first, _)| *first <= version + 1)
            && self
                .entries
                .back()
                .is_some_and(|(last, _)| *last == current);
        if !reaches {
            return Touch::everything();
        }
        let mut touch = Touch::default();
        for (_, t) in self.entries.iter().filter(|(v, _)| *v > version) {
            touch.merge(t);
            if touch.everything {
                break;
            }
        }
        touch
    }
}

/// What `command` touches when applied to `state`, looked up before it is
/// applied (the tasks it updates or deletes as they are before: a task that
/// moves touches both nodes). A new service's ID is known only once applied:
/// [`ClusterState::apply`] records it.
pub(crate) fn touch_before(state: &ClusterState, command: &Command) -> Touch {
    let mut touch = Touch::default();
    let task = |touch: &mut Touch, id: &TaskId| {
        if let Some(task) = state.tasks.get(id) {
            touch.services.insert(task.service);
            touch.nodes.extend(task.node);
        }
    };
    match command {
        Command::ChangeTasks {
            create,
            update,
            delete,
            ..
        } => {
            for new in create {
                touch.services.insert(new.service);
                touch.nodes.extend(new.node);
            }
            for change in update {
                task(&mut touch, &change.id);
                touch.nodes.extend(change.node);
            }
            for id in delete {
                task(&mut touch, id);
            }
        }
        Command::ReportTasks { reports, .. } => {
            for (id, _) in reports {
                task(&mut touch, id);
            }
        }
        Command::UpdateService { id, .. } | Command::SetUpdateStatus { id, .. } => {
            touch.services.insert(*id);
        }
        Command::RemoveService { id, .. } => {
            // Its tasks are told to stop, on their nodes.
            touch.services.insert(*id);
            touch.nodes.extend(
                state
                    .tasks
                    .values()
                    .filter(|t| t.service == *id)
                    .filter_map(|t| t.node),
            );
        }
        Command::CreateService { .. } => {}
        // Nodes, networks, files, stacks and the cluster's own records: rare,
        // and they reach every service and node.
        _ => touch = Touch::everything(),
    }
    touch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(ids: &[ServiceId]) -> Touch {
        Touch {
            services: ids.iter().copied().collect(),
            ..Touch::default()
        }
    }

    #[test]
    fn touches_since_a_version_are_merged() {
        let mut journal = Journal::default();
        for (v, s) in [(1, 10), (2, 20), (3, 30)] {
            journal.record(v, services(&[s]));
        }
        assert_eq!(journal.since(1, 3), services(&[20, 30]));
        assert_eq!(journal.since(3, 3), Touch::default());
        assert_eq!(journal.since(0, 3), services(&[10, 20, 30]));
        journal.record(4, Touch::everything());
        journal.record(5, services(&[50]));
        assert!(journal.since(3, 5).everything);
        assert_eq!(journal.since(4, 5), services(&[50]));
    }

    #[test]
    fn a_reader_the_journal_does_not_reach_is_told_everything() {
        let mut journal = Journal::default();
        // A state loaded at version 100 records from 101 on.
        assert!(journal.since(99, 100).everything, "nothing recorded");
        journal.record(101, services(&[1]));
        assert_eq!(journal.since(100, 101), services(&[1]));
        assert!(journal.since(99, 101).everything);
        // A journal that does not reach the state's version (a copy loaded
        // after it was recorded) answers everything too.
        assert!(journal.since(100, 102).everything);
        for v in 102..102 + KEPT as u64 {
            journal.record(v, services(&[2]));
        }
        assert!(
            journal.since(100, 101 + KEPT as u64).everything,
            "forgotten"
        );
        assert_eq!(journal.since(101, 101 + KEPT as u64), services(&[2]));
    }
}
