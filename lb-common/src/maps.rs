//! Names and sizes of the dataplane's maps.
//!
//! The names are the symbols in the eBPF object and the file names under the pin
//! directory (`/sys/fs/bpf/<prefix>/<NAME>`), so an agent that restarts finds them.

/// Services by (address, port, protocol): [`crate::ServiceKey`] -> [`crate::Service`].
pub const SERVICES: &str = "LB_SERVICES";
/// Backend slot tables, one pool: index -> backend id (`u32`); see [`SLOTS_LEN`].
pub const SLOTS: &str = "LB_SLOTS";
/// Backends by id: `u32` -> [`crate::Backend`].
pub const BACKENDS: &str = "LB_BACKENDS";
/// The overlay's routing table, task address (`u32`, network order) -> [`crate::Endpoint`].
pub const ENDPOINTS: &str = "LB_ENDPOINTS";
/// Per-flow state (LRU) of established flows: [`crate::FlowKey`] -> [`crate::Flow`].
pub const FLOWS: &str = "LB_FLOWS";
/// Per-flow state (LRU) of TCP connections in their handshake: a flood of SYNs from many
/// addresses churns this table only, never [`FLOWS`], whose entries a connection earns
/// once its handshake completes.
pub const SYN_FLOWS: &str = "LB_SYN_FLOWS";
/// Per-CPU round-robin cursor per service id (`u32`).
pub const RR_CURSORS: &str = "LB_RR_CURSORS";
/// Active connections per backend id (`u64`, shared by all CPUs), for least-connections
/// picks: the dataplane adds one for each new flow of an `lc` service, and the agent's
/// flow sweep recounts them from the flow tables (closed and removed flows leave the
/// count then).
pub const BACKEND_CONNS: &str = "LB_BACKEND_CONNS";
/// Per-CPU counters per service id: [`crate::Counters`].
pub const SERVICE_COUNTERS: &str = "LB_SERVICE_COUNTERS";
/// Per-CPU counters per backend id: [`crate::Counters`].
pub const BACKEND_COUNTERS: &str = "LB_BACKEND_COUNTERS";
/// Per-CPU drops by [`crate::DropReason`] (`u64`).
pub const DROPS: &str = "LB_DROPS";
/// Flow events by kind, per CPU ([`FlowEvent`](crate::FlowEvent)). New in a layout of
/// version 2: an agent that finds the others pinned creates it beside them.
pub const FLOW_EVENTS: &str = "LB_FLOW_EVENTS";
/// The node's own balanced sockets and datagrams (LRU): [`crate::SockKey`] ->
/// [`crate::SockOrigin`], so that `cgroup/getpeername4` and `recvmsg4` show the address
/// the application used. New beside the others (an agent that finds them pinned
/// creates it).
pub const SOCK_ORIGINS: &str = "LB_SOCK_ORIGINS";
/// Entries of [`SOCK_ORIGINS`].
pub const MAX_SOCK_ORIGINS: u32 = 65_536;
/// The XDP program's memo of next hops (LRU): [`crate::NextHopKey`] ->
/// [`crate::NextHop`], each standing for [`crate::NextHop::TTL_NS`]. Written by the
/// program alone; new beside the others (an agent that finds them pinned creates it).
pub const NEXT_HOPS: &str = "LB_NEXT_HOPS";
/// Entries of [`NEXT_HOPS`]: peers, and clients whose replies leave through the underlay.
pub const MAX_NEXT_HOPS: u32 = 16_384;
/// Which ports are published on the node, one bit per (protocol, port): `u64` words,
/// [`PUBLISHED_WORDS`] of them ([`published_bit`]). A packet to the node's address on a
/// port whose bit is clear is not the mesh's, and passes without a service lookup. The
/// agent sets a bit after inserting the port's service and clears it before removing
/// it, and rebuilds the words from [`SERVICES`] when it starts.
pub const PUBLISHED: &str = "LB_PUBLISHED";
/// Words of [`PUBLISHED`]: a bit for each TCP and each UDP port.
pub const PUBLISHED_WORDS: u32 = 2 * 65_536 / 64;

/// The word index and bit mask in [`PUBLISHED`] of the port `port` (network order) of
/// protocol `proto`; `None` for protocols other than TCP and UDP.
#[inline(always)]
#[must_use]
pub const fn published_bit(port: u16, proto: u8) -> Option<(u32, u64)> {
    let high = match proto {
        crate::IPPROTO_TCP => 0,
        crate::IPPROTO_UDP => 1 << 16,
        _ => return None,
    };
    let idx = high | u16::from_be(port) as u32;
    Some((idx / 64, 1 << (idx % 64)))
}

/// The routing generation, one element (`u32`): the agent adds one after every change
/// of backends or endpoints it applies, so a flow entry that remembers its backend and
/// route at an older generation checks them again ([`crate::Flow::generation`]).
pub const GENERATION: &str = "LB_GENERATION";
/// This node's settings, one element: [`crate::NodeConfig`].
pub const NODE_CONFIG: &str = "LB_NODE_CONFIG";

/// The layout of the maps' contents, kept in [`LAYOUT`]: bumped whenever a value keeps
/// its size but changes its meaning, so that an agent of another version recreates the
/// pinned maps instead of reading them wrongly (1: fixed double-buffered slot tables per
/// service; 2: slot tables allocated from one pool, [`Service::base`](crate::Service);
/// 3: the VNI of each service and endpoint, 0 for routing-mesh-only addresses, and the
/// `isolation` drop reason; 4: flow entries remember their route and the routing
/// generation they were checked at, each service's scheduler
/// ([`Service::sched`](crate::Service)) and each backend's weight, and the active
/// connections per backend ([`BACKEND_CONNS`])).
pub const LAYOUT_VERSION: u32 = 4;
/// The layout version of the pinned maps, one element (`u32`): [`LAYOUT_VERSION`].
pub const LAYOUT: &str = "LB_LAYOUT";

/// The most service ids one node routes (a service id is one slot table: a service's
/// target port, shared by its VIP and its published port).
pub const MAX_SERVICES: u32 = 32_768;
/// The most backend slots of one service's table (weights are expanded into slots), so
/// the most replicas one service can have active.
pub const MAX_SLOTS: u32 = 4_096;
/// The most backends one node knows, over all services (a backend is a task and a port).
pub const MAX_BACKENDS: u32 = 65_536;
/// The most task endpoints on the overlay.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Default size of the flow table; the agent may resize it at load.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Default size of the handshake table ([`SYN_FLOWS`]); the agent may resize it at load.
pub const DEFAULT_MAX_SYN_FLOWS: u32 = 65_536;

/// Number of entries of the [`SLOTS`] pool. Each service's live table is a range of it
/// ([`crate::Service::base`], [`crate::Service::slots`]); a changed table is written to a
/// free range first and goes live with one update of the service, so the live tables
/// may take at most half of the pool.
pub const SLOTS_LEN: u32 = 1 << 20;

/// The most slots the live tables of one node may hold together: half of [`SLOTS_LEN`],
/// so that every table can be rewritten beside the live one.
pub const MAX_LIVE_SLOTS: u32 = SLOTS_LEN / 2;

/// Index in [`SLOTS`] of the `pos`-th pick of a table at `base` of `slots` entries.
#[inline(always)]
#[must_use]
pub const fn slot_at(base: u32, slots: u32, pos: u32) -> u32 {
    base.wrapping_add(pos % slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tcp_and_udp_port_has_its_own_bit() {
        let mut seen = [0u64; PUBLISHED_WORDS as usize];
        for proto in [crate::IPPROTO_TCP, crate::IPPROTO_UDP] {
            for port in 0..=u16::MAX {
                let (word, mask) = published_bit(port.to_be(), proto).expect("tcp and udp");
                assert_eq!(mask.count_ones(), 1);
                assert!(word < PUBLISHED_WORDS);
                assert_eq!(
                    seen[word as usize] & mask,
                    0,
                    "port {port} of {proto} shares"
                );
                seen[word as usize] |= mask;
            }
        }
        assert!(
            seen.iter().all(|w| *w == u64::MAX),
            "every bit is someone's"
        );
        assert_eq!(published_bit(80u16.to_be(), 1), None, "ICMP has no ports");
    }
}
