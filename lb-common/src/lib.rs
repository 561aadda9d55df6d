//! Types shared by the eBPF dataplane (`lb-ebpf`) and userspace (`lb-agent`, tests).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, so that the kernel,
//! the eBPF programs and userspace agree byte for byte. Addresses and ports are kept in
//! network byte order exactly as they appear on the wire; the constructors take host
//! order and do the conversion, so callers never juggle byte orders by hand.
//!
//! With the `user` feature the types implement [`aya::Pod`], so they can be read from and
//! written to maps.
#![no_std]
#![deny(missing_docs)]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]

pub mod config;
pub mod counters;
pub mod flow;
pub mod hop;
pub mod maps;
pub mod sched;
pub mod service;
pub mod sock;

pub use config::NodeConfig;
pub use counters::{Counters, DropReason, FlowEvent};
pub use flow::{Flow, FlowKey, FlowKind};
pub use hop::{NextHop, NextHopKey};
pub use sched::Scheduler;
pub use service::{Backend, Endpoint, MESH_ONLY_VNI, Service, ServiceKey};
pub use sock::{SockKey, SockOrigin};

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes that VXLAN encapsulation adds in front of an inner IPv4 packet:
/// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u16 = 50;

/// Implements `aya::Pod` for plain-old-data map types when the `user` feature is on.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has explicit padding fields and
            // no pointers, so every bit pattern of its size is a valid value.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;
