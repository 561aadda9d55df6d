//! Names and sizes of the dataplane's maps.
//!
//! The names are the symbols in the eBPF object and the file names under the pin
//! directory (`/sys/fs/bpf/<prefix>/<NAME>`), so an agent that restarts finds them.

/// Services by (address, port, protocol): [`crate::ServiceKey`] -> [`crate::Service`].
pub const SERVICES: &str = "LB_SERVICES";
/// Backend slot tables: index [`slot_index`] -> backend id (`u32`).
pub const SLOTS: &str = "LB_SLOTS";
/// Backends by id: `u32` -> [`crate::Backend`].
pub const BACKENDS: &str = "LB_BACKENDS";
/// The overlay's routing table, task address (`u32`, network order) -> [`crate::Endpoint`].
pub const ENDPOINTS: &str = "LB_ENDPOINTS";
/// Per-flow state (LRU): [`crate::FlowKey`] -> [`crate::Flow`].
pub const FLOWS: &str = "LB_FLOWS";
/// Per-CPU round-robin cursor per service id (`u32`).
pub const RR_CURSORS: &str = "LB_RR_CURSORS";
/// Per-CPU counters per service id: [`crate::Counters`].
pub const SERVICE_COUNTERS: &str = "LB_SERVICE_COUNTERS";
/// Per-CPU counters per backend id: [`crate::Counters`].
pub const BACKEND_COUNTERS: &str = "LB_BACKEND_COUNTERS";
/// Per-CPU drops by [`crate::DropReason`] (`u64`).
pub const DROPS: &str = "LB_DROPS";
/// This node's settings, one element: [`crate::NodeConfig`].
pub const NODE_CONFIG: &str = "LB_NODE_CONFIG";

/// The most services one node routes.
pub const MAX_SERVICES: u32 = 1024;
/// The most backend slots of one service's table (weights are expanded into slots).
pub const MAX_SLOTS: u32 = 256;
/// The most backends one node knows, over all services.
pub const MAX_BACKENDS: u32 = 16_384;
/// The most task endpoints on the overlay.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Default size of the flow table; the agent may resize it at load.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// Index in [`SLOTS`] of slot `slot` of table `table` (0 or 1) of service `service_id`.
///
/// Each service owns two tables: the agent fills the one the service does not use, then
/// flips [`crate::Service::table`] with one map update, so a packet sees either the old
/// or the new backend set, never a half-written one.
#[inline(always)]
#[must_use]
pub const fn slot_index(service_id: u32, table: u32, slot: u32) -> u32 {
    ((service_id * 2 + (table & 1)) * MAX_SLOTS) + (slot % MAX_SLOTS)
}

/// Number of entries of the [`SLOTS`] array.
pub const SLOTS_LEN: u32 = MAX_SERVICES * 2 * MAX_SLOTS;
