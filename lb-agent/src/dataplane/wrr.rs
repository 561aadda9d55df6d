//! Weights to slot tables: nginx's smooth weighted round robin, unrolled into a sequence.
//!
//! The dataplane picks slot `cursor % slots` for a new flow and advances a per-CPU cursor,
//! so a table that holds one full period of smooth WRR gives every backend its share,
//! interleaved (weights 5,1,1 give `a a b a c a a`, not `a a a a a b c`).
//!
//! Sizing: weights are first divided by their greatest common divisor, so `[100, 100]`
//! needs 2 slots, not 200. If the reduced weights still add up to more than `max_slots`,
//! they are scaled down proportionally (largest remainder), and every backend keeps at
//! least one slot: a positive weight never silently becomes "no traffic". The shares are
//! then approximate. More backends than `max_slots` is an error the configuration
//! validation reports before this point.

/// The reduced slot counts of `weights`: divided by their gcd, then scaled to fit in
/// `max_slots` if needed, each at least 1.
///
/// Returns an empty vector when `weights` is empty. Zero weights must not be passed (they
/// are treated as 1); more weights than `max_slots` give each one slot (the caller checks
/// this case beforehand).
#[must_use]
pub fn slot_counts(weights: &[u32], max_slots: u32) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().sum();
    let max = u64::from(max_slots.max(1));
    if total <= max {
        return reduced.iter().map(|&w| w as u32).collect();
    }
    let n = reduced.len() as u64;
    if n >= max {
        return vec![1; reduced.len()];
    }
    // Every backend gets one slot; the others are shared out proportionally by largest
    // remainder, which keeps the sum exactly `max`.
    let spare = max - n;
    let mut counts: Vec<u64> = reduced.iter().map(|w| 1 + w * spare / total).collect();
    let mut rest: Vec<(u64, usize)> = reduced
        .iter()
        .enumerate()
        .map(|(i, w)| (w * spare % total, i))
        .collect();
    // Largest remainder first; ties to the earlier backend.
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let assigned: u64 = counts.iter().sum();
    for &(_, i) in rest.iter().take((max - assigned) as usize) {
        counts[i] += 1;
    }
    counts.into_iter().map(|c| c as u32).collect()
}

/// One period of smooth weighted round robin over `items` with `weights` (already sized
/// by [`slot_counts`]): each item appears `weight` times, spread out.
///
/// # Panics
/// If `items` and `weights` differ in length.
#[must_use]
pub fn smooth_sequence<T: Copy>(items: &[T], weights: &[u32]) -> Vec<T> {
    assert_eq!(items.len(), weights.len(), "one weight per item");
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; items.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..items.len() {
            current[i] += i64::from(weights[i]);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(items[best]);
    }
    out
}

/// The slot table of backends `items` with configured `weights`, at most `max_slots` long.
#[must_use]
pub fn slot_table<T: Copy>(items: &[T], weights: &[u32], max_slots: u32) -> Vec<T> {
    smooth_sequence(items, &slot_counts(weights, max_slots))
}

const fn gcd(a: u64, b: u64) -> u64 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_example() {
        // The example from nginx's commit introducing smooth WRR.
        assert_eq!(
            smooth_sequence(&['a', 'b', 'c'], &[5, 1, 1]),
            ['a', 'a', 'b', 'a', 'c', 'a', 'a']
        );
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(slot_table(&[1, 2, 3], &[1, 1, 1], 256), [1, 2, 3]);
        assert_eq!(slot_table(&[1, 2, 3], &[100, 100, 100], 256), [1, 2, 3]);
    }

    #[test]
    fn gcd_reduction() {
        assert_eq!(slot_counts(&[4, 2, 6], 256), [2, 1, 3]);
        assert_eq!(
            slot_table(&['x', 'y'], &[30, 10], 256),
            ['x', 'x', 'y', 'x']
        );
    }

    #[test]
    fn empty() {
        assert!(slot_table::<u32>(&[], &[], 256).is_empty());
    }

    #[test]
    fn scaled_down_keeps_proportions_and_fits() {
        let counts = slot_counts(&[1000, 1], 256);
        assert_eq!(counts.iter().sum::<u32>(), 256);
        assert_eq!(counts[1], 1, "the small backend keeps one slot");
        let counts = slot_counts(&[300, 200, 100], 256);
        assert_eq!(counts, [3, 2, 1], "gcd first");
        let counts = slot_counts(&[301, 200, 100], 256);
        assert_eq!(counts.iter().sum::<u32>(), 256);
        // 301/601 of 256 is 128.2: within one slot.
        assert!((127..=130).contains(&counts[0]), "{counts:?}");
        assert!((84..=87).contains(&counts[1]), "{counts:?}");
        assert!((41..=44).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn every_backend_gets_a_slot_even_when_many() {
        let weights: Vec<u32> = (0..200).map(|i| if i == 0 { 100_000 } else { 1 }).collect();
        let counts = slot_counts(&weights, 256);
        assert!(counts.iter().all(|&c| c >= 1));
        assert_eq!(counts.iter().sum::<u32>(), 256);
        assert_eq!(counts[0], 57);
        assert_eq!(slot_counts(&[1; 300], 256), vec![1; 300]);
    }

    #[test]
    fn sequence_counts_match_weights() {
        let items: Vec<u32> = (0..7).collect();
        let weights = [7, 3, 1, 9, 2, 5, 4];
        let seq = slot_table(&items, &weights, 256);
        assert_eq!(seq.len(), 31);
        for (i, w) in weights.iter().enumerate() {
            assert_eq!(seq.iter().filter(|&&x| x == i as u32).count(), *w as usize);
        }
    }

    #[test]
    fn sequence_is_spread_out() {
        // With weights 1:1:...:1 plus one heavy backend, the heavy one never appears more
        // than twice in a row.
        let seq = slot_table(&['h', 'a', 'b', 'c'], &[3, 1, 1, 1], 256);
        assert_eq!(seq.len(), 6);
        assert!(
            !seq.windows(3).any(|w| w.iter().all(|&c| c == 'h')),
            "{seq:?}"
        );
    }
}
