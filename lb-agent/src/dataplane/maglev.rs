//! Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4), for the `maglev` and `sh` schedulers.
//!
//! The table has `M` entries (a prime, [`lb_common::sched::maglev_size`]); the dataplane
//! sends a new flow to entry `hash % M`. Each backend has a preference list, the
//! permutation `(offset + j * skip) % M` of the entries, from two hashes of its address
//! and port ([`lb_common::sched::backend_hashes`]); the backends take turns claiming
//! their next preferred entry that is still free until the table is full. A backend of
//! weight `w` (weights reduced as for round robin, [`wrr::slot_counts`]) takes `w` turns
//! per round, as Katran's weighted Maglev does.
//!
//! What a user gets:
//! - Balance: every backend holds its share of entries to within one entry per turn of
//!   a round (equal weights: all hold `M / N` rounded down or up).
//! - Consistency: the table depends only on the backends' addresses, ports and weights
//!   (backends are ordered by address and port, never by the node's ids), so every node
//!   builds the same table and a flow gets the same backend on whichever node it lands.
//! - Minimal disruption: removing one of `N` backends moves that backend's entries and a
//!   small fraction of the others' (the paper's figure 12; bounded in the tests below);
//!   adding one likewise.
//!
//! Pure: no I/O.

use lb_common::Scheduler;
use lb_common::maps::MAX_SLOTS;
use lb_common::sched::{backend_hashes, maglev_size};

use crate::dataplane::wrr;

/// How many slots the table of a service with scheduler `sched` and active backends of
/// `weights` takes: round robin, the weights expanded ([`wrr::slot_counts`]); `lc`, one
/// per backend; `maglev` and `sh`, [`maglev_size`]. `None` if it cannot hold them (more
/// than [`MAX_SLOTS`] backends, or a Maglev table's 4093).
#[must_use]
pub fn table_len(sched: Scheduler, weights: &[u32]) -> Option<u32> {
    let n = u32::try_from(weights.len()).ok()?;
    if n > MAX_SLOTS {
        return None;
    }
    match sched {
        _ if n == 0 => Some(0),
        Scheduler::RoundRobin => Some(wrr::slot_counts(weights, MAX_SLOTS).iter().sum()),
        Scheduler::LeastConn => Some(n),
        Scheduler::Maglev | Scheduler::SourceHash => maglev_size(n),
    }
}

/// The slot table of a service with scheduler `sched` and active `backends`: one period
/// of smooth weighted round robin (`rr`), each backend once in order (`lc`, whose weights
/// the dataplane reads from the backends), or a Maglev table (`maglev`, `sh`).
///
/// # Panics
/// If [`table_len`] is `None` for them (configurations are validated against it).
#[must_use]
pub fn slot_table(sched: Scheduler, backends: &[MaglevBackend]) -> Vec<u32> {
    let ids: Vec<u32> = backends.iter().map(|b| b.id).collect();
    let weights: Vec<u32> = backends.iter().map(|b| b.weight.max(1)).collect();
    let len = table_len(sched, &weights).expect("a validated number of backends");
    match sched {
        Scheduler::RoundRobin => wrr::slot_table(&ids, &weights, MAX_SLOTS),
        Scheduler::LeastConn => ids,
        Scheduler::Maglev | Scheduler::SourceHash => table(backends, len),
    }
}

/// A backend as the table sees it: its id on this node (what the table holds), and its
/// address and port (network order: what the preference list is derived from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// The node's backend id, the value of its table entries.
    pub id: u32,
    /// Address, network order.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    /// Weight (0 is taken as 1).
    pub weight: u32,
}

/// The Maglev lookup table of `backends` with `m` entries: the backend id of each entry.
/// Empty when `backends` is.
///
/// # Panics
/// If `m` is not a prime above 1 or is smaller than the number of backends (every backend
/// must hold an entry): [`lb_common::sched::maglev_size`] gives a valid `m`.
#[must_use]
pub fn table(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    assert!(
        m > 1 && backends.len() <= m as usize && is_prime(m),
        "Maglev table of {m} entries for {} backends",
        backends.len()
    );
    let mut sorted = backends.to_vec();
    sorted.sort_by_key(|b| (u32::from_be(b.addr), u16::from_be(b.port), b.id));
    let weights: Vec<u32> = sorted.iter().map(|b| b.weight.max(1)).collect();
    let turns = wrr::slot_counts(&weights, m);
    let m64 = u64::from(m);
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let (h1, h2) = backend_hashes(b.addr, b.port);
            (u64::from(h1) % m64, u64::from(h2) % (m64 - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut entry: Vec<Option<u32>> = vec![None; m as usize];
    let mut filled = 0u32;
    loop {
        for (i, b) in sorted.iter().enumerate() {
            for _ in 0..turns[i] {
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m64;
                while entry[c as usize].is_some() {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m64;
                }
                entry[c as usize] = Some(b.id);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return entry.into_iter().map(Option::unwrap_or_default).collect();
                }
            }
        }
    }
}

/// Whether `n` is prime (trial division: `n` is at most a table's size).
const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_common::sched::{MAGLEV_SIZES, maglev_size};

    use super::*;

    /// `n` backends at 10.0.0.1.. port 80, ids 100.., weight 1.
    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: 100 + i,
                addr: (0x0a00_0001 + i).to_be(),
                port: 80u16.to_be(),
                weight: 1,
            })
            .collect()
    }

    fn shares(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut s = BTreeMap::new();
        for id in t {
            *s.entry(*id).or_default() += 1;
        }
        s
    }

    #[test]
    fn sizes_are_prime() {
        for m in MAGLEV_SIZES {
            assert!(is_prime(m), "{m}");
        }
    }

    /// Equal weights: every backend holds `M / N` entries, rounded down or up.
    #[test]
    fn equal_weights_balance_to_one_entry() {
        for n in [1, 2, 3, 5, 10, 11, 40, 100, 1000] {
            let m = maglev_size(n).unwrap();
            let t = table(&backends(n), m);
            assert_eq!(t.len(), m as usize);
            let s = shares(&t);
            assert_eq!(s.len(), n as usize, "every backend has entries");
            let (lo, hi) = (m / n, m.div_ceil(n));
            for (id, c) in s {
                assert!((lo..=hi).contains(&(c as u32)), "n={n} id={id}: {c} of {m}");
            }
        }
    }

    /// Weights: each backend's share within 1% of the table of its weight's share.
    #[test]
    fn weights_are_honoured() {
        for weights in [vec![1, 2], vec![5, 1, 1], vec![3, 3, 1, 10], vec![100, 1]] {
            let mut b = backends(weights.len() as u32);
            for (b, w) in b.iter_mut().zip(&weights) {
                b.weight = *w;
            }
            let m = maglev_size(b.len() as u32).unwrap();
            let t = table(&b, m);
            let s = shares(&t);
            let total: u32 = weights.iter().sum();
            for (b, w) in b.iter().zip(&weights) {
                let got = s[&b.id] as f64 / f64::from(m);
                let want = f64::from(*w) / f64::from(total);
                assert!(
                    (got - want).abs() <= 0.01,
                    "weights {weights:?}: backend of weight {w} holds {got:.4}, wants {want:.4}"
                );
            }
        }
    }

    /// The table depends on addresses, not on the node's ids or the order given.
    #[test]
    fn same_table_on_every_node() {
        let a = backends(7);
        let mut b: Vec<MaglevBackend> = a.iter().rev().copied().collect();
        for x in &mut b {
            x.id += 1000;
        }
        let ta = table(&a, 1021);
        let tb = table(&b, 1021);
        assert!(ta.iter().zip(&tb).all(|(x, y)| *x + 1000 == *y));
    }

    /// Entries that change owner other than those of the removed (or to the added)
    /// backend, as a fraction of the table.
    fn extra_moves(before: &[u32], after: &[u32], changed: u32) -> f64 {
        let moved = before
            .iter()
            .zip(after)
            .filter(|(b, a)| b != a && **b != changed && **a != changed)
            .count();
        moved as f64 / before.len() as f64
    }

    /// Removing one of N backends moves its own entries (`1 / N` of the table), and at
    /// most 3.5% of the table besides; adding one back likewise (the same entries).
    /// Measured here: 0.2-2.5% for N = 3..40 (`M / N` >= 100), 3.0% at N = 100, 1.4% at
    /// N = 400. The Maglev paper reports a like few percent at its `M / N`.
    #[test]
    fn removing_or_adding_one_disrupts_little() {
        for n in [3, 5, 10, 20, 40, 100, 400] {
            let all = backends(n);
            let m = maglev_size(n).unwrap();
            assert_eq!(maglev_size(n - 1), Some(m), "same M before and after");
            let full = table(&all, m);
            for gone in [0, n / 2, n - 1] {
                let rest: Vec<MaglevBackend> =
                    all.iter().copied().filter(|b| b.id != 100 + gone).collect();
                let less = table(&rest, m);
                assert!(!less.contains(&(100 + gone)));
                let removal = extra_moves(&full, &less, 100 + gone);
                let addition = extra_moves(&less, &full, 100 + gone);
                assert!(
                    removal <= 0.035 && addition <= 0.035,
                    "n={n}, backend {gone}: {removal:.4} and {addition:.4} of the table moved \
                     beyond the changed backend's"
                );
            }
        }
    }

    #[test]
    fn empty() {
        assert!(table(&[], 1021).is_empty());
        assert_eq!(table_len(Scheduler::Maglev, &[]), Some(0));
    }

    #[test]
    fn table_per_scheduler() {
        let b = backends(3);
        assert_eq!(slot_table(Scheduler::LeastConn, &b), [100, 101, 102]);
        assert_eq!(slot_table(Scheduler::RoundRobin, &b).len(), 3);
        assert_eq!(slot_table(Scheduler::Maglev, &b).len(), 1021);
        assert_eq!(slot_table(Scheduler::SourceHash, &b), table(&b, 1021));
        assert_eq!(table_len(Scheduler::Maglev, &[1; 4094]), None);
        assert_eq!(table_len(Scheduler::LeastConn, &[1; 4094]), Some(4094));
        assert_eq!(table_len(Scheduler::LeastConn, &[1; 4097]), None);
    }
}
