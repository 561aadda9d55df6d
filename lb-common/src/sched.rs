//! Scheduling algorithms: how a service's new flows choose a backend, and the one hash
//! the dataplane and the agent share for the hashing ones.
//!
//! - [`Scheduler::RoundRobin`] (`rr`): a per-CPU cursor over the service's slot table,
//!   which holds one period of smooth weighted round robin.
//! - [`Scheduler::Maglev`] (`maglev`, IPVS's `mh`): slot `flow_hash(5-tuple) % slots` of
//!   a Maglev lookup table the agent fills (`lb-agent`'s `dataplane::maglev`).
//! - [`Scheduler::SourceHash`] (`sh`): the same table, hashed over the client address only.
//! - [`Scheduler::LeastConn`] (`lc`, weighted as IPVS's `wlc`): the backend with the
//!   fewest active connections per unit of weight, among the first [`LC_CANDIDATES`] of
//!   the service's distinct backends from the round-robin cursor.
//!
//! The hash has no seed and no per-node state: every node maps a tuple to the same slot,
//! so a flow that reaches a service through another node gets the same backend.

/// A service's scheduling algorithm, kept in [`crate::Service::sched`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Scheduler {
    /// Weighted round robin (the default).
    #[default]
    RoundRobin = 0,
    /// Maglev consistent hashing of the 5-tuple.
    Maglev = 1,
    /// Least connections, weighted.
    LeastConn = 2,
    /// Consistent hashing of the client address.
    SourceHash = 3,
}

/// The names [`Scheduler::from_name`] accepts, for error messages.
pub const SCHEDULER_NAMES: &str = "rr, maglev, lc, sh";

/// How many of a service's backends a least-connections pick compares: the first this
/// many of its table from the round-robin cursor (a bound the verifier needs). A service
/// with more backends gets the least loaded of a window that moves on with every flow.
pub const LC_CANDIDATES: u32 = 32;

impl Scheduler {
    /// The algorithm stored as `value` in a [`crate::Service`]; an unknown value is round
    /// robin.
    #[inline(always)]
    #[must_use]
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Self::Maglev,
            2 => Self::LeastConn,
            3 => Self::SourceHash,
            _ => Self::RoundRobin,
        }
    }

    /// The algorithm named `name`: `rr`, `maglev`, `lc`, `sh`, or IPVS's aliases `wrr`
    /// (weights are honoured by `rr`), `wlc` (by `lc`) and `mh` (Maglev hashing).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "rr" | "wrr" => Some(Self::RoundRobin),
            "maglev" | "mh" => Some(Self::Maglev),
            "lc" | "wlc" => Some(Self::LeastConn),
            "sh" => Some(Self::SourceHash),
            _ => None,
        }
    }

    /// The algorithm's canonical name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "rr",
            Self::Maglev => "maglev",
            Self::LeastConn => "lc",
            Self::SourceHash => "sh",
        }
    }

    /// Whether the slot table is a Maglev lookup table (`maglev`, `sh`).
    #[must_use]
    pub const fn is_hashing(self) -> bool {
        matches!(self, Self::Maglev | Self::SourceHash)
    }
}

/// The sizes of Maglev lookup tables (primes): [`maglev_size`] picks one.
pub const MAGLEV_SIZES: [u32; 2] = [1021, 4093];

/// The size `M` of the Maglev table of a service with `backends` active backends:
/// 1021 up to 10 backends, 4093 (the largest prime that fits [`crate::maps::MAX_SLOTS`])
/// beyond, so that `M` is at least 100 times the backends up to 40 of them, as the
/// Maglev paper advises. `None` with more backends than 4093.
///
/// Maglev gives every backend its share to within one entry (weights: to within one
/// entry per turn), so balance is exact to `1/M`; `M` bounds disruption instead: with
/// `M / N` entries per backend, removing one moves its own entries plus at most 3.5% of
/// the table besides (measured in the agent's tests: 0.2-2.5% up to 40 backends). A change of `M` (a service that grows
/// past 10 backends or shrinks back) remaps most new lookups; established flows keep
/// their backend through the flow table.
#[must_use]
pub const fn maglev_size(backends: u32) -> Option<u32> {
    if backends <= 10 {
        Some(MAGLEV_SIZES[0])
    } else if backends <= MAGLEV_SIZES[1] {
        Some(MAGLEV_SIZES[1])
    } else {
        None
    }
}

/// One round of murmur3's 32-bit mixing of `k` into `h`.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// Murmur3's finalizer: every input bit affects every output bit.
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// murmur3_32 of three words with `seed`: a few multiplies and rotates, cheap enough for
/// every new flow in eBPF, identical on every node (no per-node seed).
#[inline(always)]
#[must_use]
pub const fn hash3(seed: u32, a: u32, b: u32, c: u32) -> u32 {
    fmix(mix(mix(mix(seed, a), b), c) ^ 12)
}

/// The hash of a new flow for [`Scheduler::Maglev`]: its source address and port, its
/// destination port and protocol, in network order as on the wire. The destination
/// address is left out: a published port's flow is addressed to whichever node it
/// reached, and must hash alike on all of them.
#[inline(always)]
#[must_use]
pub const fn flow_hash(src_addr: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    hash3(
        0,
        src_addr,
        ((src_port as u32) << 16) | dst_port as u32,
        proto as u32,
    )
}

/// The hash of a new flow for [`Scheduler::SourceHash`]: its source address only (network
/// order).
#[inline(always)]
#[must_use]
pub const fn source_hash(src_addr: u32) -> u32 {
    hash3(0, src_addr, 0, 0)
}

/// The two hashes of a backend (address and port, network order) that give its Maglev
/// preference list: `offset = h.0 % M`, `skip = h.1 % (M - 1) + 1`. Seeded apart from the
/// flow hashes, and from each other.
#[must_use]
pub const fn backend_hashes(addr: u32, port: u16) -> (u32, u32) {
    (
        hash3(0x6d61_676c, addr, port as u32, 1),
        hash3(0x6576_2121, addr, port as u32, 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            Scheduler::RoundRobin,
            Scheduler::Maglev,
            Scheduler::LeastConn,
            Scheduler::SourceHash,
        ] {
            assert_eq!(Scheduler::from_name(s.name()), Some(s));
            assert_eq!(Scheduler::from_u32(s as u32), s);
        }
        assert_eq!(Scheduler::from_name("mh"), Some(Scheduler::Maglev));
        assert_eq!(Scheduler::from_name("wlc"), Some(Scheduler::LeastConn));
        assert_eq!(Scheduler::from_name("lblc"), None);
    }

    #[test]
    fn hash_is_fixed_and_spreads() {
        // The same on every build and node: a changed constant would remap every flow of
        // a mixed-version cluster.
        assert_eq!(flow_hash(1, 2, 3, 6), flow_hash(1, 2, 3, 6));
        assert_ne!(flow_hash(1, 2, 3, 6), flow_hash(1, 3, 3, 6));
        assert_ne!(source_hash(1), source_hash(2));
        // Ports one apart land in different halves about half the time.
        let mut high = 0;
        for p in 0..1000u16 {
            if flow_hash(0x0a00_0001, p, 80, 6) & 0x8000_0000 != 0 {
                high += 1;
            }
        }
        assert!((400..600).contains(&high), "{high}");
    }

    /// The hash is a contract between nodes (and agent versions): a node that hashed
    /// otherwise would send a client's flow to another task than its peers do.
    #[test]
    fn hash_values_are_fixed() {
        let addr = 0x0a00_0001_u32.to_be();
        assert_eq!(
            flow_hash(addr, 40000_u16.to_be(), 80_u16.to_be(), 6),
            0x65c0_52e2
        );
        assert_eq!(source_hash(addr), 0x7536_3381);
        assert_eq!(
            backend_hashes(0x0a00_0002_u32.to_be(), 80_u16.to_be()),
            (3_559_400_536, 3_850_768_010)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(maglev_size(1), Some(1021));
        assert_eq!(maglev_size(10), Some(1021));
        assert_eq!(maglev_size(11), Some(4093));
        assert_eq!(maglev_size(4093), Some(4093));
        assert_eq!(maglev_size(4094), None);
        assert!(MAGLEV_SIZES[1] <= crate::maps::MAX_SLOTS);
    }
}
