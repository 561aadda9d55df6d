//! The mesh's node agent as a library: the dataplane loader, map programming from desired
//! state, the standalone configuration, metrics.
#![deny(unsafe_code)]

/// The compiled eBPF object (all programs and map definitions), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
