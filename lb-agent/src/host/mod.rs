//! The host around the dataplane, as far as the agent reads or changes it.
//!
//! - [`capacity`]: the node's CPUs and memory, for the scheduler;
//! - [`interfaces`]: the host's network interfaces (index, MAC, MTU, IPv4 addresses);
//! - [`neighbours`]: the peers' underlay neighbour entries, kept resolved;
//! - [`sysctl`]: the kernel settings the dataplane depends on.
//!
//! This module only declares its children; they depend on each other, never on it.

pub mod capacity;
pub mod interfaces;
pub mod neighbours;
pub mod sysctl;
