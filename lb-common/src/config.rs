//! This node's settings, read by the programs from a one-element array map.

use crate::pod;

/// Settings the agent writes once at start and on reconfiguration.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// The node's underlay address, network order. Published ports match it.
    pub addr: u32,
    /// ifindex of the underlay interface.
    pub ifindex: u32,
    /// MAC of the underlay interface.
    pub mac: [u8; 6],
    /// UDP port of VXLAN, network order.
    pub vxlan_port: u16,
    /// VNI of the ingress network (routing-mesh traffic).
    pub vni: u32,
    /// Underlay MTU; encapsulated packets must fit in it.
    pub mtu: u32,
    /// Idle timeout of UDP flows in seconds (enforced by the agent's sweep).
    pub udp_timeout_s: u32,
}

impl NodeConfig {
    /// The largest MSS that lets a full TCP segment fit once encapsulated.
    #[must_use]
    pub const fn overlay_mss(&self) -> u16 {
        // IPv4 (20) + TCP (20) headers inside, VXLAN overhead outside.
        (self.mtu as u16).saturating_sub(crate::VXLAN_OVERHEAD + 40)
    }
}

pod!(NodeConfig);
