//! The networks tasks are attached to: today the built-in `ingress` overlay.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The built-in `ingress` overlay network: routing-mesh traffic, and every
/// task's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressNetwork {
    /// The network address.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Host offset the next allocation starts looking at.
    pub cursor: u32,
}

impl Default for IngressNetwork {
    fn default() -> Self {
        Self {
            subnet: Ipv4Addr::new(10, 255, 0, 0),
            prefix: 16,
            vni: 4096,
            cursor: 1,
        }
    }
}

impl IngressNetwork {
    /// Usable host offsets: the network and broadcast addresses excluded.
    #[must_use]
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))).saturating_sub(2)
    }

    /// `10.255.0.0/16`.
    #[must_use]
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
    }
}
