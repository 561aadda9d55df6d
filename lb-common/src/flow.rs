//! Per-flow state: what the dataplane decided for a connection, so every later packet
//! of it gets the same treatment, whatever happens to the service's backend set.

use crate::pod;

/// A packet's 5-tuple as it is on the wire, in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address.
    pub src_addr: u32,
    /// Destination address.
    pub dst_addr: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Padding, always 0. (Scalar fields, not an array: a small array makes LLVM emit a
    /// `memset` call that the BPF backend miscompiles around.)
    pub pad: u8,
    /// Padding, always 0.
    pub pad2: u16,
}

impl FlowKey {
    /// The same 5-tuple with another destination (network order).
    #[inline(always)]
    #[must_use]
    pub const fn with_dst(&self, addr: u32, port: u16) -> Self {
        Self {
            dst_addr: addr,
            dst_port: port,
            ..*self
        }
    }

    /// The same 5-tuple with another source (network order).
    #[inline(always)]
    #[must_use]
    pub const fn with_src(&self, addr: u32, port: u16) -> Self {
        Self {
            src_addr: addr,
            src_port: port,
            ..*self
        }
    }

    /// The key of the packets that answer this one.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            pad: 0,
            pad2: 0,
        }
    }
}

/// What kind of decision a [`Flow`] records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// Original direction of a load-balanced flow: rewrite the destination to the backend.
    Forward = 1,
    /// Reply direction: rewrite the source back to what the client connected to.
    Reply = 2,
    /// Reply of a flow that another node load-balanced to a task here: encapsulate it
    /// back to that node, so the return path is symmetric.
    Return = 3,
}

impl FlowKind {
    /// The kind for a raw byte, if it is one.
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Forward),
            2 => Some(Self::Reply),
            3 => Some(Self::Return),
            _ => None,
        }
    }
}

/// Per-flow state, the value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// A [`FlowKind`] as `u8`.
    pub kind: u8,
    /// TCP events seen, [`Flow::SEEN_FIN_FWD`] and friends.
    pub tcp: u8,
    /// Forward and Reply: how the packets' destination is routed, remembered at
    /// generation `generation` ([`Flow::ROUTE_UNKNOWN`] and friends).
    pub route: u8,
    /// Padding, always 0.
    pub pad: u8,
    /// Forward: the chosen backend's id. Reply: the backend the flow went to.
    pub backend_id: u32,
    /// Forward: the backend's address; Reply: the original destination address
    /// (the node's address or the VIP) that becomes the source again. Network order.
    pub nat_addr: u32,
    /// The port that goes with `nat_addr`, network order.
    pub nat_port: u16,
    /// Padding, always 0.
    pub pad2: u16,
    /// Return: underlay address of the node to send replies back to; Forward and Reply
    /// with [`Flow::ROUTE_ENCAP`]: the peer node that runs the destination (network
    /// order).
    pub node: u32,
    /// Id of the service, for counters.
    pub service_id: u32,
    /// Monotonic time (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC as of the last tick)
    /// when the flow was created.
    pub created_ns: u64,
    /// Monotonic time of the last packet, refreshed at most once a second; for TCP, only
    /// once a FIN or RST was seen ([`Flow::SEEN_CLOSING`]): before that it stays at
    /// `created_ns`.
    pub last_seen_ns: u64,
    /// The routing generation ([`crate::maps::GENERATION`]) at which the backend (Forward)
    /// and the route were last found valid: while the agent has changed no backend and
    /// no endpoint since, packets use what the entry remembers without looking up either.
    pub generation: u32,
    /// With [`Flow::ROUTE_ENCAP`]: the VNI of the destination's network.
    pub vni: u32,
}

impl Flow {
    /// A FIN was seen in the original direction.
    pub const SEEN_FIN_FWD: u8 = 1;
    /// A FIN was seen in the reply direction.
    pub const SEEN_FIN_REV: u8 = 2;
    /// A RST was seen.
    pub const SEEN_RST: u8 = 4;
    /// A TCP connection in its handshake ([`crate::maps::SYN_FLOWS`]): its other direction
    /// passed a packet (the task's SYN-ACK), so the client's ACK completes it.
    pub const SEEN_REPLY: u8 = 8;
    /// Any of the bits that start a TCP connection's end: FIN either way, RST. Only then
    /// do its packets refresh `last_seen_ns` (an open connection never expires).
    pub const SEEN_CLOSING: u8 = Self::SEEN_FIN_FWD | Self::SEEN_FIN_REV | Self::SEEN_RST;
    /// No route remembered: look the destination up.
    pub const ROUTE_UNKNOWN: u8 = 0;
    /// The destination is a local task: looked up on every packet (its veth and MACs are
    /// not kept in the entry).
    pub const ROUTE_LOCAL: u8 = 1;
    /// The destination runs on the peer `node`, on network `vni`: encapsulated.
    pub const ROUTE_ENCAP: u8 = 2;
    /// The destination is no task: out of the underlay, as the FIB routes it.
    pub const ROUTE_UNDERLAY: u8 = 3;
    /// How stale `last_seen_ns` may get before a packet refreshes it.
    pub const REFRESH_NS: u64 = 1_000_000_000;

    /// The flow's kind, if the stored byte is valid.
    #[must_use]
    pub const fn kind(&self) -> Option<FlowKind> {
        FlowKind::from_u8(self.kind)
    }

    /// Whether TCP has closed the flow (RST, or FIN both ways).
    #[must_use]
    pub const fn tcp_closed(&self) -> bool {
        Self::closes(self.tcp)
    }

    /// Whether TCP event bits `tcp` (a [`Flow::tcp`]) say the connection is closed: RST,
    /// or FIN both ways.
    #[must_use]
    pub const fn closes(tcp: u8) -> bool {
        tcp & Self::SEEN_RST != 0
            || tcp & (Self::SEEN_FIN_FWD | Self::SEEN_FIN_REV)
                == (Self::SEEN_FIN_FWD | Self::SEEN_FIN_REV)
    }
}

pod!(FlowKey, Flow);
