//! Which manager a node's session tries next: the sans-IO part of failover.
//!
//! A node starts with the addresses it was given (`--join`, or a manager's
//! view of its peers) and learns every manager's address from each
//! `SessionEstablished`. When the session drops it tries, in turn: the
//! leader a follower just named, the manager that last accepted it, every
//! manager it learned, then the addresses it started with. So an agent that
//! joined through one manager follows the leader to any other once that
//! manager is gone, as Swarm's agents do with the manager list of their
//! session.

/// How many redirects in a row are followed at once; past that the session
/// backs off (two followers may name each other while an election runs).
pub const MAX_REDIRECTS: u32 = 3;

/// The managers a session knows and the order to try them in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// The addresses the node was started with; never forgotten.
    initial: Vec<String>,
    /// Every manager's address, from the last `SessionEstablished`.
    learned: Vec<String>,
    /// The manager that last accepted the session (the leader then).
    last_leader: Option<String>,
    /// The leader a follower named when it refused the session.
    hint: Option<String>,
    /// Redirects followed since the last session or failed round.
    redirects: u32,
}

impl Failover {
    /// Starts from `initial` (tried in order) and managers learned earlier
    /// (e.g. kept on disk), if any.
    #[must_use]
    pub fn new(initial: Vec<String>, learned: Vec<String>) -> Self {
        Self {
            initial: dedup(initial),
            learned: dedup(learned),
            ..Self::default()
        }
    }

    /// The addresses to try, in order, each once: the leader a follower
    /// named, the last leader, the learned managers, the initial addresses.
    #[must_use]
    pub fn order(&self) -> Vec<String> {
        dedup(
            self.hint
                .iter()
                .chain(&self.last_leader)
                .chain(&self.learned)
                .chain(&self.initial)
                .cloned()
                .collect(),
        )
    }

    /// Every manager learned from the last session, to keep for a restart.
    #[must_use]
    pub fn learned(&self) -> &[String] {
        &self.learned
    }

    /// `leader` accepted the session and named every manager's address in
    /// `managers`. Returns whether the learned list changed.
    pub fn established(&mut self, leader: &str, managers: &[String]) -> bool {
        self.last_leader = Some(leader.to_owned());
        self.hint = None;
        self.redirects = 0;
        let managers = dedup(managers.to_vec());
        if managers.is_empty() || managers == self.learned {
            return false;
        }
        self.learned = managers;
        true
    }

    /// A follower refused the session and named `leader`. Returns whether
    /// to try it at once; `false` after [`MAX_REDIRECTS`] redirects in a
    /// row, when the session should back off first (the leader stays first
    /// in [`Failover::order`]).
    pub fn redirected(&mut self, leader: String) -> bool {
        self.hint = Some(leader);
        self.redirects += 1;
        self.redirects <= MAX_REDIRECTS
    }

    /// A round over [`Failover::order`] reached no leader, or the session
    /// ended: the named leader is forgotten and the next round starts over.
    pub fn failed(&mut self) {
        self.hint = None;
        self.redirects = 0;
    }
}

/// `addrs` without empty strings and repeats, first occurrence kept.
fn dedup(addrs: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !addr.is_empty() && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn starts_with_the_initial_addresses_and_what_was_kept() {
        let f = Failover::new(addrs(&["a", "a", ""]), addrs(&["b", "a"]));
        assert_eq!(f.order(), addrs(&["b", "a"]));
        assert_eq!(
            Failover::new(addrs(&["a"]), Vec::new()).order(),
            addrs(&["a"])
        );
    }

    #[test]
    fn a_session_teaches_every_manager_and_the_join_address_is_kept() {
        let mut f = Failover::new(addrs(&["m0"]), Vec::new());
        assert!(f.established("m0", &addrs(&["m0", "m1", "m2"])));
        // The same list again changes nothing.
        assert!(!f.established("m0", &addrs(&["m0", "m1", "m2"])));
        // m0 was killed: the next round tries m0 (the last leader), then the
        // others it learned; a round that fails keeps them all.
        f.failed();
        assert_eq!(f.order(), addrs(&["m0", "m1", "m2"]));
        // A new leader names fewer managers: the join address stays last.
        assert!(f.established("m1", &addrs(&["m1", "m2"])));
        assert_eq!(f.order(), addrs(&["m1", "m2", "m0"]));
        assert_eq!(f.learned(), addrs(&["m1", "m2"]).as_slice());
        // An empty list (an old manager) forgets nothing.
        assert!(!f.established("m1", &[]));
        assert_eq!(f.order(), addrs(&["m1", "m2", "m0"]));
    }

    #[test]
    fn a_named_leader_is_tried_first_until_a_round_fails() {
        let mut f = Failover::new(addrs(&["m0"]), addrs(&["m0", "m1", "m2"]));
        assert!(f.redirected("m2".into()));
        assert_eq!(f.order(), addrs(&["m2", "m0", "m1"]));
        f.failed();
        assert_eq!(f.order(), addrs(&["m0", "m1", "m2"]));
    }

    #[test]
    fn redirects_in_a_row_are_bounded_then_back_off() {
        let mut f = Failover::new(addrs(&["m0", "m1"]), Vec::new());
        for _ in 0..MAX_REDIRECTS {
            assert!(f.redirected("m1".into()));
        }
        assert!(!f.redirected("m0".into()));
        // The last named leader is still tried first after the pause.
        assert_eq!(f.order(), addrs(&["m0", "m1"]));
        // A session resets the count.
        f.established("m0", &addrs(&["m0", "m1"]));
        assert!(f.redirected("m1".into()));
    }
}
