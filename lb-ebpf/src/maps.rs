//! The dataplane's maps. Names, key and value types come from `lb_common`; every map is
//! pinned by name so an agent that restarts finds the state and traffic never stops.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, Counters, DropReason, Endpoint, Flow, FlowEvent, FlowKey, NextHop, NextHopKey,
    NodeConfig, Service, ServiceKey, SockKey, SockOrigin,
    maps::{
        DEFAULT_MAX_FLOWS, DEFAULT_MAX_SYN_FLOWS, MAX_BACKENDS, MAX_ENDPOINTS, MAX_NEXT_HOPS,
        MAX_SERVICES, MAX_SOCK_ORIGINS, PUBLISHED_WORDS, SLOTS_LEN,
    },
};

/// Services by VIP or published port. Two keys (published, VIP) may share one service.
#[map]
pub(crate) static LB_SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES * 2, 0);

/// The slot pool: each service's live table is a range of it (`Service::base`, `slots`).
#[map]
pub(crate) static LB_SLOTS: Array<u32> = Array::pinned(SLOTS_LEN, 0);

/// Backends by id.
#[map]
pub(crate) static LB_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// The overlay's routing table: task address -> where it runs.
#[map]
pub(crate) static LB_ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Per-flow state of established flows (and of UDP flows).
#[map]
pub(crate) static LB_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(DEFAULT_MAX_FLOWS, 0);

/// Per-flow state of TCP connections in their handshake, moved to `LB_FLOWS` when it
/// completes: a SYN flood churns this table only.
#[map]
pub(crate) static LB_SYN_FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::pinned(DEFAULT_MAX_SYN_FLOWS, 0);

/// Round-robin cursors, per CPU, per service id: no shared atomic on the hot path.
#[map]
pub(crate) static LB_RR_CURSORS: PerCpuArray<u32> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Active connections per backend id, for least-connections picks: added to by new flows
/// of `lc` services (one value for every CPU), recounted by the agent's sweep.
#[map]
pub(crate) static LB_BACKEND_CONNS: Array<u64> = Array::pinned(MAX_BACKENDS, 0);

/// Counters per service id.
#[map]
pub(crate) static LB_SERVICE_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Counters per backend id.
#[map]
pub(crate) static LB_BACKEND_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Drops by reason.
#[map]
pub(crate) static LB_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DropReason::COUNT, 0);

/// Flow events by kind.
#[map]
pub(crate) static LB_FLOW_EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(FlowEvent::COUNT, 0);

/// This node's settings (one element).
#[map]
pub(crate) static LB_NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

/// Where the node's own UDP sockets' datagrams to published ports went, and what the
/// application had addressed (see `sock`).
#[map]
pub(crate) static LB_SOCK_ORIGINS: LruHashMap<SockKey, SockOrigin> =
    LruHashMap::pinned(MAX_SOCK_ORIGINS, 0);

/// Next hops found in the FIB, each used for a second (see `xdp::next_hop`).
#[map]
pub(crate) static LB_NEXT_HOPS: LruHashMap<NextHopKey, NextHop> =
    LruHashMap::pinned(MAX_NEXT_HOPS, 0);

/// The routing generation (one element): see `lb_common::maps::GENERATION`.
#[map]
pub(crate) static LB_GENERATION: Array<u32> = Array::pinned(1, 0);

/// Published ports, a bit each: see `lb_common::maps::PUBLISHED`.
#[map]
pub(crate) static LB_PUBLISHED: Array<u64> = Array::pinned(PUBLISHED_WORDS, 0);

/// The layout version the maps were written with (one element), written by the agent:
/// see `lb_common::maps::LAYOUT_VERSION`. The programs never read it.
#[map]
pub(crate) static LB_LAYOUT: Array<u32> = Array::pinned(1, 0);
