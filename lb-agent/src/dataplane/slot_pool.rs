//! Free ranges of the slot pool ([`lb_common::maps::SLOTS`]): which entries the live
//! slot tables hold, and where a new table fits.
//!
//! Pure: built from the live tables' ranges, then asked for ranges one table at a time
//! (next fit from where the last one ended, wrapping once), so that programming thousands
//! of services does not rescan the pool from its start for each.

use std::collections::BTreeMap;

/// The pool's used ranges, and where the next search starts.
#[derive(Clone, Debug)]
pub struct SlotPool {
    len: u32,
    /// Used ranges by start: start -> end (exclusive). Ranges never overlap.
    used: BTreeMap<u32, u32>,
    cursor: u32,
}

impl SlotPool {
    /// A pool of `len` entries in which `used` ranges (`(base, len)`) are taken. Empty
    /// ranges are ignored; a range past the pool's end is clipped to it.
    #[must_use]
    pub fn new(len: u32, used: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut pool = Self {
            len,
            used: BTreeMap::new(),
            cursor: 0,
        };
        for (base, n) in used {
            let end = base.saturating_add(n).min(len);
            if base < end {
                pool.take(base, end);
            }
        }
        pool
    }

    /// Marks `[start, end)` used, merging it with the ranges it overlaps.
    fn take(&mut self, mut start: u32, mut end: u32) {
        if let Some((&s, &e)) = self.used.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.used.remove(&s);
        }
        let overlapping: Vec<(u32, u32)> = self
            .used
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            end = end.max(e);
            self.used.remove(&s);
        }
        self.used.insert(start, end);
    }

    /// The first entry of a free range of `n` entries, now marked used; `None` if no
    /// range that long is free. `n` must be positive.
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        if n == 0 || n > self.len {
            return None;
        }
        let mut at = self.cursor;
        let mut wrapped = false;
        loop {
            // Past the range that covers `at`, if any.
            if let Some((_, &e)) = self.used.range(..=at).next_back()
                && e > at
            {
                at = e;
            }
            let gap_end = self.used.range(at..).next().map_or(self.len, |(&s, _)| s);
            if at < self.len && gap_end - at >= n {
                self.take(at, at + n);
                self.cursor = at + n;
                return Some(at);
            }
            if gap_end >= self.len || at >= self.len {
                if wrapped {
                    return None;
                }
                wrapped = true;
                at = 0;
            } else {
                at = self.used.get(&gap_end).copied().unwrap_or(gap_end);
            }
            if wrapped && at >= self.cursor {
                // Back where the search began: nothing fits.
                return None;
            }
        }
    }

    /// Entries in use.
    #[must_use]
    pub fn used(&self) -> u64 {
        self.used.iter().map(|(&s, &e)| u64::from(e - s)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_given_next_fit_and_never_overlap_the_live_ones() {
        let mut pool = SlotPool::new(100, [(10, 10), (40, 5)]);
        assert_eq!(pool.alloc(10), Some(0));
        assert_eq!(pool.alloc(5), Some(20));
        assert_eq!(pool.alloc(20), Some(45));
        // 25..40 is free (15 entries), 65..100 too (35).
        assert_eq!(pool.alloc(30), Some(65));
        assert_eq!(pool.alloc(15), Some(25));
        assert_eq!(pool.alloc(1), Some(95));
        assert_eq!(pool.used(), 100 - 4);
        assert_eq!(pool.alloc(5), None, "only scattered entries are left");
        assert_eq!(pool.alloc(4), Some(96));
        assert_eq!(pool.alloc(1), None);
    }

    #[test]
    fn the_search_wraps_once() {
        let mut pool = SlotPool::new(10, [(0, 2)]);
        assert_eq!(pool.alloc(6), Some(2));
        // 8..10 is too short: wrap to the start, which is taken, and give up.
        assert_eq!(pool.alloc(3), None);
        assert_eq!(pool.alloc(2), Some(8));
    }

    #[test]
    fn overlapping_and_adjacent_live_ranges_merge_and_bad_ones_are_clipped() {
        let pool = SlotPool::new(50, [(0, 10), (5, 10), (15, 5), (30, 0), (45, 100)]);
        assert_eq!(pool.used(), 20 + 5);
        let mut pool = pool;
        assert_eq!(pool.alloc(25), Some(20));
        assert_eq!(pool.alloc(0), None);
        assert_eq!(pool.alloc(51), None);
    }

    #[test]
    fn a_full_pool_of_single_entries() {
        let mut pool = SlotPool::new(1000, []);
        for i in 0..1000 {
            assert_eq!(pool.alloc(1), Some(i));
        }
        assert_eq!(pool.alloc(1), None);
        assert_eq!(pool.used(), 1000);
    }
}
