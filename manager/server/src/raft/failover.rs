//! Fast failover on a positive signal: a follower that stops hearing from
//! its leader asks the leader's host whether anything still listens on the
//! leader's Raft address.
//!
//! openraft starts an election only after the leader's lease and an
//! election timeout have passed without a heartbeat (1.8-2.4 s with the
//! default tuning): long enough that a busy machine (a slow disk, a
//! starved process) never costs a needless election. A leader whose
//! process died is another matter, and its host says so at once: a TCP
//! connection to its address is refused (the kernel answers for a port
//! nobody listens on). So a voter that has heard nothing from its leader for
//! [`SILENT_HEARTBEATS`] heartbeats tries a connection; only a refusal,
//! never a timeout or silence, makes it start an election at once
//! ([`openraft::raft::trigger::Trigger::elect`]). The other follower has
//! seen the same: the survivors take turns by id ([`turn`]), the first
//! standing at once and the next a heartbeat later unless a leader is known
//! by then, so that they do not split the vote; a candidate that does not
//! win tries again after a random pause until one of them leads.
//! A leader that is only slow accepts the connection and nothing happens;
//! a leader whose host is down or cut off refuses nothing and is replaced
//! by the election timeout, as before.

use std::sync::Mutex;
use std::time::Duration;

use mesh_api::node::NodeId;
use tokio::time::Instant;

/// Heartbeats without a word from the leader before a follower checks
/// whether the leader's process is still there.
pub const SILENT_HEARTBEATS: u32 = 2;

/// Elections a follower starts, one after the other, for one dead leader
/// (a split vote between the followers that saw it die is settled by the
/// next try; after these, the election timeout takes over).
pub const ELECTION_TRIES: usize = 5;

/// When this node last heard from a leader (an `AppendEntries` or
/// `InstallSnapshot` arrived), noted by the Raft service as the request
/// arrives, before openraft handles it: a node whose own Raft core is
/// stalled does not take its leader for silent.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    last: Mutex<Instant>,
}

impl LeaderContact {
    /// A contact that counts the node's start as the last word heard.
    pub(crate) fn new() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }

    /// A leader's request arrived now.
    pub(crate) fn heard(&self) {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// When a leader's request last arrived.
    pub(crate) fn last(&self) -> Instant {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `addr` (`host:port`) refuses a TCP connection within `timeout`:
/// the host is up and nothing listens there. A timeout, an unresolvable
/// name or any other failure is not a refusal.
pub(crate) async fn refuses(addr: &str, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// This node's turn to stand for election when `dead` stopped leading: its
/// rank by id among the other voters. Turn 0 stands at once; turn `k` waits
/// `k` heartbeats for another to win first.
pub(crate) fn turn(this: NodeId, dead: NodeId, voters: impl Iterator<Item = NodeId>) -> u32 {
    let ahead = voters.filter(|v| *v != dead && *v < this).count();
    u32::try_from(ahead).unwrap_or(u32::MAX)
}

/// A random pause between `base / 2` and `3 * base / 2`, so that two
/// followers retrying an election do not keep colliding.
pub(crate) fn jitter(base: Duration) -> Duration {
    let half = base / 2;
    half + base.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivors_take_turns_by_id_and_the_dead_leader_has_none() {
        let voters = [7, 3, 9];
        // 3 led and died: 7 stands first, 9 a turn later.
        assert_eq!(turn(7, 3, voters.into_iter()), 0);
        assert_eq!(turn(9, 3, voters.into_iter()), 1);
        // 7 led: 3 first, 9 next.
        assert_eq!(turn(3, 7, voters.into_iter()), 0);
        assert_eq!(turn(9, 7, voters.into_iter()), 1);
        // Five voters, the lowest led: every survivor has its own turn.
        let five = [1, 2, 3, 4, 5];
        let turns: Vec<u32> = (2..=5).map(|v| turn(v, 1, five.into_iter())).collect();
        assert_eq!(turns, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_closed_port_refuses_and_a_listening_one_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        assert!(!refuses(&addr, Duration::from_secs(5)).await);
        drop(listener);
        assert!(refuses(&addr, Duration::from_secs(5)).await);
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let j = jitter(base);
            assert!(j >= base / 2 && j <= base * 3 / 2, "{j:?}");
        }
    }
}
