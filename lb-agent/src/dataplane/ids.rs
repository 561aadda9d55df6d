//! Allocation of dense service and backend ids.
//!
//! Ids index slot tables, cursors and counters, so they must stay stable while the thing
//! they name exists, across reloads and agent restarts (the agent recovers them from the
//! pinned maps). A fresh id is never one that the dataplane still uses (the caller passes
//! the ids in use), and allocation is next-fit, like PIDs: an id that was just freed is
//! reused only after every other free id, so flows that still carry an old backend id
//! almost never meet a new backend with the same id.

/// A next-fit allocator over `0..limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdAllocator {
    limit: u32,
    next: u32,
}

impl IdAllocator {
    /// An allocator of ids in `0..limit` that starts at 0.
    #[must_use]
    pub const fn new(limit: u32) -> Self {
        Self { limit, next: 0 }
    }

    /// An allocator that continues after the highest id in `used` (as after a restart).
    #[must_use]
    pub fn resume_after(limit: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let next = used.into_iter().max().map_or(0, |m| (m + 1) % limit.max(1));
        Self { limit, next }
    }

    /// The exclusive upper bound of ids.
    #[must_use]
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The first id at or after the cursor (wrapping) for which `taken` is false, or
    /// `None` if every id is taken.
    pub fn allocate(&mut self, taken: impl Fn(u32) -> bool) -> Option<u32> {
        for i in 0..self.limit {
            let id = (self.next + i) % self.limit;
            if !taken(id) {
                self.next = (id + 1) % self.limit;
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_wraps_and_skips_taken() {
        let mut a = IdAllocator::new(4);
        assert_eq!(a.allocate(|_| false), Some(0));
        assert_eq!(a.allocate(|_| false), Some(1));
        // 0 is free again, but next-fit goes on.
        assert_eq!(a.allocate(|id| id == 2), Some(3));
        assert_eq!(a.allocate(|id| id == 1), Some(0));
        assert_eq!(a.allocate(|_| true), None);
    }

    #[test]
    fn resume() {
        let mut a = IdAllocator::resume_after(10, [3, 7, 1]);
        assert_eq!(a.allocate(|_| false), Some(8));
        let mut a = IdAllocator::resume_after(10, [9]);
        assert_eq!(a.allocate(|_| false), Some(0));
        let mut a = IdAllocator::resume_after(10, []);
        assert_eq!(a.allocate(|_| false), Some(0));
        assert_eq!(a.limit(), 10);
    }
}
