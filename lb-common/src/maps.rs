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
/// This node's settings, one element: [`crate::NodeConfig`].
pub const NODE_CONFIG: &str = "LB_NODE_CONFIG";

/// The layout of the maps' contents, kept in [`LAYOUT`]: bumped whenever a value keeps
/// its size but changes its meaning, so that an agent of another version recreates the
/// pinned maps instead of reading them wrongly (1: fixed double-buffered slot tables per
/// service; 2: slot tables allocated from one pool, [`Service::base`](crate::Service);
/// 3: the VNI of each service and endpoint, 0 for routing-mesh-only addresses, and the
/// `isolation` drop reason; 4: each service's scheduler ([`Service::sched`](crate::Service))
/// and each backend's weight, and the active connections per backend
/// ([`BACKEND_CONNS`])).
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
