//! Counters kept per CPU by the dataplane and summed by the agent.

use crate::pod;

/// Packet counters of a service or backend (one per CPU in the map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (L3 length).
    pub bytes: u64,
    /// New flows assigned.
    pub new_flows: u64,
}

impl core::ops::AddAssign for Counters {
    fn add_assign(&mut self, rhs: Self) {
        self.packets += rhs.packets;
        self.bytes += rhs.bytes;
        self.new_flows += rhs.new_flows;
    }
}

/// Why the dataplane dropped a packet (index into the drops map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header was cut short or had impossible lengths.
    Malformed = 0,
    /// A service had no backend that takes new flows.
    NoBackend = 1,
    /// A VXLAN packet for a network this node does not know.
    UnknownVni = 2,
    /// A decapsulated packet for an address with no endpoint here.
    NoEndpoint = 3,
    /// A packet that would exceed the underlay MTU once encapsulated.
    TooBig = 4,
    /// A fragment of a packet addressed to a service (only unfragmented packets are balanced).
    Fragment = 5,
    /// A helper failed (adjusting headroom, redirecting).
    Internal = 6,
    /// No next hop with a resolved neighbour for an encapsulated packet.
    NoRoute = 7,
    /// A packet between networks that must not reach each other: a task's new flow to a
    /// VIP or a task address of another network (or from a routing-mesh-only address),
    /// or a VXLAN packet whose VNI is not its local destination's.
    Isolation = 8,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [Self; 9] = [
        Self::Malformed,
        Self::NoBackend,
        Self::UnknownVni,
        Self::NoEndpoint,
        Self::TooBig,
        Self::Fragment,
        Self::Internal,
        Self::NoRoute,
        Self::Isolation,
    ];

    /// Number of reasons (size of the drops map).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// A short snake_case name, used as a metric label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NoBackend => "no_backend",
            Self::UnknownVni => "unknown_vni",
            Self::NoEndpoint => "no_endpoint",
            Self::TooBig => "too_big",
            Self::Fragment => "fragment",
            Self::Internal => "internal",
            Self::NoRoute => "no_route",
            Self::Isolation => "isolation",
        }
    }
}

/// What the dataplane notices of its flow state (index into the flow-events map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A TCP segment without SYN or RST found no state for its connection (in neither
    /// flow table) and was balanced again as a new flow: the connection's entry was
    /// evicted from a full table, lost with the maps, or swept as closed before a late
    /// segment came. Counted once per loss: the segment makes a new entry.
    Lost = 0,
}

impl FlowEvent {
    /// Every event, in index order.
    pub const ALL: [Self; 1] = [Self::Lost];

    /// Number of events (size of the flow-events map).
    pub const COUNT: u32 = Self::ALL.len() as u32;
}

pod!(Counters);
