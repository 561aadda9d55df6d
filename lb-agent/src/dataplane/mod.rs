//! The eBPF dataplane: loading the object and pinning its maps and links, the maps'
//! contents as plain data, and the pure logic that computes them from a configuration.
//!
//! - [`loader`]: loads the object, reads and writes the pinned maps, sweeps flows;
//! - [`bpffs`]: the BPF file system the pins live on;
//! - [`links`]: the programs' attachments, pinned so that they outlive the agent;
//! - [`map_state`]: what the maps hold, and the ordered map operations between two states;
//! - [`desired`]: from a validated configuration to the desired map state;
//! - [`ids`]: stable service and backend ids;
//! - [`wrr`]: weights to slot tables;
//! - [`maglev`]: Maglev lookup tables, and each scheduler's table;
//! - [`flows`]: which flows the sweep expires.
//!
//! This module only declares its children; they depend on each other, never on it.

pub mod bpffs;
pub mod desired;
pub mod flows;
pub mod ids;
pub mod links;
pub mod loader;
pub mod maglev;
pub mod map_state;
pub mod slot_pool;
pub mod wrr;
