//! Whether this manager can do its job: commit writes and serve reads that
//! a quorum stands behind. One decision, from openraft's metrics, answers
//! both `/healthz` and the check reads make
//! ([`Manager::require_quorum`](crate::grpc::Manager::require_quorum)).

use std::time::Duration;

use mesh_api::node::{NodeId, format_id};

use crate::raft::Metrics;

/// What the decision looks at, read from openraft's metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitView {
    /// This manager.
    pub this: NodeId,
    /// The leader this manager knows, if any.
    pub leader: Option<NodeId>,
    /// On the leader: how long ago a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Voters in the effective membership.
    pub voters: usize,
    /// How long a leader's quorum acknowledgement stays good: after two
    /// election timeouts the followers have elected someone else.
    pub lease: Duration,
    /// Why the Raft core stopped, if it did (a storage error such as a
    /// full disk, or a shutdown).
    pub stopped: Option<String>,
}

/// Why this manager cannot commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// The Raft core stopped: nothing will be committed or applied here
    /// again until the process restarts.
    #[error("raft stopped: {0}")]
    RaftStopped(String),
    /// No leader is known (an election, or no majority in reach).
    #[error("no leader: manager {} knows no leader; the cluster is electing or has lost quorum", format_id(*.0))]
    NoLeader(NodeId),
    /// This manager leads, but a quorum has not acknowledged it within the
    /// lease (it is cut off from its followers).
    #[error("no quorum: manager {} leads but a majority has not acknowledged it for {}", format_id(*.this), match .millis {
        Some(ms) => format!("{ms} ms"),
        None => "ever".to_owned(),
    })]
    StaleQuorum {
        /// This manager.
        this: NodeId,
        /// Milliseconds since the last quorum acknowledgement, if any.
        millis: Option<u64>,
    },
}

impl CommitView {
    /// The view of `this` from `metrics`, with the lease for `election_max`.
    #[must_use]
    pub fn from_metrics(this: NodeId, metrics: &Metrics, election_max: Duration) -> Self {
        Self {
            this,
            leader: crate::raft::current_leader(this, metrics),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            voters: metrics.membership_config.membership().voter_ids().count(),
            lease: 2 * election_max,
            stopped: metrics
                .running_state
                .as_ref()
                .err()
                .map(ToString::to_string),
        }
    }

    /// Whether this manager can commit: its Raft core runs, and it knows a
    /// leader; if it is that leader, a quorum acknowledged it within the
    /// lease (or it is the only voter). A follower trusts the leader it
    /// knows: it forgets it when its election timeout fires.
    ///
    /// # Errors
    /// [`Unhealthy`] saying why not.
    pub fn check(&self) -> Result<(), Unhealthy> {
        if let Some(why) = &self.stopped {
            return Err(Unhealthy::RaftStopped(why.clone()));
        }
        match self.leader {
            None => Err(Unhealthy::NoLeader(self.this)),
            Some(leader) if leader == self.this => {
                let lease = self.lease.as_millis();
                let stale = self
                    .millis_since_quorum_ack
                    .is_none_or(|ms| u128::from(ms) > lease);
                if stale && self.voters > 1 {
                    Err(Unhealthy::StaleQuorum {
                        this: self.this,
                        millis: self.millis_since_quorum_ack,
                    })
                } else {
                    Ok(())
                }
            }
            Some(_) => Ok(()),
        }
    }

    /// Whether this manager leads and its Raft core runs (the
    /// `mesh_manager_is_leader` gauge).
    #[must_use]
    pub fn is_running_leader(&self) -> bool {
        self.stopped.is_none() && self.leader == Some(self.this)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{CommitView, Unhealthy};

    const ME: u64 = 1;
    const OTHER: u64 = 2;

    fn leader_of_three(ack_ms: Option<u64>) -> CommitView {
        CommitView {
            this: ME,
            leader: Some(ME),
            millis_since_quorum_ack: ack_ms,
            voters: 3,
            lease: Duration::from_millis(2400),
            stopped: None,
        }
    }

    #[test]
    fn a_leader_with_a_recent_quorum_or_alone_is_healthy() {
        assert_eq!(leader_of_three(Some(100)).check(), Ok(()));
        let alone = CommitView {
            voters: 1,
            millis_since_quorum_ack: None,
            ..leader_of_three(None)
        };
        assert_eq!(alone.check(), Ok(()));
        let follower = CommitView {
            leader: Some(OTHER),
            millis_since_quorum_ack: None,
            ..leader_of_three(None)
        };
        assert_eq!(follower.check(), Ok(()));
        assert!(follower.stopped.is_none() && !follower.is_running_leader());
        assert!(leader_of_three(Some(100)).is_running_leader());
    }

    #[test]
    fn no_leader_or_a_stale_quorum_is_unhealthy() {
        let electing = CommitView {
            leader: None,
            ..leader_of_three(None)
        };
        assert_eq!(electing.check(), Err(Unhealthy::NoLeader(ME)));
        assert_eq!(
            leader_of_three(Some(5000)).check(),
            Err(Unhealthy::StaleQuorum {
                this: ME,
                millis: Some(5000)
            })
        );
        assert!(
            leader_of_three(None)
                .check()
                .unwrap_err()
                .to_string()
                .contains("ever")
        );
    }

    /// Fault 7: a manager whose Raft core stopped (a full disk) kept
    /// answering 200 on `/healthz` and 1 on `is_leader`, its last leader
    /// still in openraft's metrics.
    #[test]
    fn a_stopped_raft_core_is_unhealthy_and_does_not_lead() {
        for view in [
            leader_of_three(Some(10)),
            CommitView {
                voters: 1,
                ..leader_of_three(None)
            },
            CommitView {
                leader: Some(OTHER),
                ..leader_of_three(None)
            },
        ] {
            let stopped = CommitView {
                stopped: Some("storage error: No space left on device".into()),
                ..view
            };
            let err = stopped.check().unwrap_err();
            assert!(matches!(err, Unhealthy::RaftStopped(_)), "{err}");
            assert!(err.to_string().contains("No space left"), "{err}");
            assert!(!stopped.is_running_leader());
        }
    }
}
