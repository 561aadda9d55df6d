//! The XDP program's memo of next hops: what the kernel's FIB said about a destination,
//! kept for a second so that a flow's every packet does not pay a FIB lookup.

use crate::pod;

/// Key of a next hop: the source and destination addresses of the lookup (network
/// order): this node's address and a peer's, for encapsulation; the address a reply is
/// SNATed to and the client's, for replies leaving through the underlay.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NextHopKey {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
}

/// A next hop as `bpf_fib_lookup` found it, and when.
///
/// MACs are kept as a 4-byte and a 2-byte word so that the program copies them as two
/// loads and stores (a 6-byte array copy compiles to a byte loop on the BPF target).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Output interface.
    pub ifindex: u32,
    /// Source MAC, bytes 0..4.
    pub smac_hi: u32,
    /// Source MAC, bytes 4..6.
    pub smac_lo: u16,
    /// Destination MAC, bytes 4..6.
    pub dmac_lo: u16,
    /// Destination MAC, bytes 0..4.
    pub dmac_hi: u32,
    /// `bpf_ktime_get_coarse_ns` when the FIB said so.
    pub filled_ns: u64,
}

impl NextHop {
    /// How long a memo stands before the FIB is asked again: a changed route or
    /// neighbour (a peer's new MAC) is followed within this time.
    pub const TTL_NS: u64 = 1_000_000_000;

    /// The source MAC.
    #[must_use]
    pub const fn smac(&self) -> [u8; 6] {
        join_mac(self.smac_hi, self.smac_lo)
    }

    /// The destination MAC.
    #[must_use]
    pub const fn dmac(&self) -> [u8; 6] {
        join_mac(self.dmac_hi, self.dmac_lo)
    }
}

const fn join_mac(hi: u32, lo: u16) -> [u8; 6] {
    let h = hi.to_ne_bytes();
    let l = lo.to_ne_bytes();
    [h[0], h[1], h[2], h[3], l[0], l[1]]
}

pod!(NextHopKey, NextHop);
