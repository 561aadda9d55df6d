//! The mesh's node agent as a library: the dataplane loader, map programming from desired
//! state, the standalone configuration, metrics.
//!
//! Pure logic (configuration validation, desired state, diffing into ordered map
//! operations, id allocation, flow expiry, weighted slot tables) lives in modules without
//! I/O and is unit-tested without root; the dataplane, netlink and HTTP shells are thin.
//!
//! Layout, by role:
//!
//! - [`dataplane`]: loading, pinning, the maps and their desired state, WRR, flows;
//! - [`dns`]: the tasks' resolver (service discovery by name);
//! - [`host`]: the host's interfaces, neighbour entries and sysctls;
//! - [`managed`]: joining a cluster, the session, the task supervisor, assignment to
//!   configuration;
//! - [`runtime`]: the process and docker runtimes and a task's network plumbing;
//! - the standalone path at the top: [`config`], [`watch`], [`agent`], [`metrics`] (and
//!   the `lb-agent` binary in `main.rs`).
#![deny(unsafe_code)]

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod host;
pub mod managed;
pub mod metrics;
pub mod runtime;
pub mod watch;

/// The compiled eBPF object (all programs and map definitions), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
