//! Services, their backends, and the endpoints of the overlay.

use crate::pod;

/// Key of a service: the address, port and protocol clients connect to.
///
/// `addr == 0` is a port published on the node: it matches packets addressed to the
/// node's own underlay address (the routing mesh's ingress). Any other `addr` is a
/// virtual IP that matches only itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Address in network byte order, or 0 for a published port.
    pub addr: u32,
    /// Port in network byte order.
    pub port: u16,
    /// IP protocol number ([`crate::IPPROTO_TCP`] or [`crate::IPPROTO_UDP`]).
    pub proto: u8,
    /// Padding, always 0.
    pub pad: u8,
}

impl ServiceKey {
    /// A service key from a host-order address, port and protocol.
    #[must_use]
    pub const fn new(addr: u32, port: u16, proto: u8) -> Self {
        Self {
            addr: addr.to_be(),
            port: port.to_be(),
            proto,
            pad: 0,
        }
    }

    /// The key of a port published on every node (the routing mesh).
    #[must_use]
    pub const fn published(port: u16, proto: u8) -> Self {
        Self::new(0, port, proto)
    }
}

/// A service's current backend table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Dense id in `0..MAX_SERVICES`: indexes cursors and counters.
    pub id: u32,
    /// First entry of the service's live slot table in the slot pool
    /// ([`crate::maps::SLOTS`]).
    pub base: u32,
    /// Number of slots of that table; 0 means no backend takes new flows.
    pub slots: u32,
    /// [`Service::FLAG_MSS_CLAMP`] and friends.
    pub flags: u32,
    /// VXLAN network identifier of the network its backends' addresses are on: the
    /// ingress VNI for the default network, a user network's VNI, or
    /// [`MESH_ONLY_VNI`] for the published ports of a service that joins user networks
    /// (balanced to its tasks' routing-mesh-only addresses). A task's new flow to the
    /// service is allowed only from an address of the same, non-zero, VNI.
    pub vni: u32,
    /// How new flows pick a slot: a [`Scheduler`](crate::Scheduler) as `u32` (0, round
    /// robin, for a zeroed value). For `maglev` and `sh` the slot table is a Maglev lookup
    /// table; for `lc` it lists each active backend once.
    pub sched: u32,
}

impl Service {
    /// Clamp the MSS of SYNs to fit the overlay's MTU (set by default by the agent).
    pub const FLAG_MSS_CLAMP: u32 = 1;
}

/// A backend: a task's address and the port it listens on.
///
/// Where the task runs is not stored here: the overlay's [`Endpoint`] for `addr` says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Task address in network byte order.
    pub addr: u32,
    /// Target port in network byte order.
    pub port: u16,
    /// [`Backend::FLAG_DRAINING`].
    pub flags: u16,
    /// Id of the service the backend belongs to.
    pub service_id: u32,
    /// Weight, for least-connections picks (connections per unit of weight); at least 1.
    /// Round robin and Maglev have the weights in the slot table instead.
    pub weight: u32,
}

impl Backend {
    /// The backend takes no new flows; its established flows go on.
    pub const FLAG_DRAINING: u16 = 1;

    /// A backend from a host-order address and port.
    #[must_use]
    pub const fn new(addr: u32, port: u16, service_id: u32) -> Self {
        Self {
            addr: addr.to_be(),
            port: port.to_be(),
            flags: 0,
            service_id,
            weight: 1,
        }
    }
}

/// The VNI of a routing-mesh-only address (see [`Endpoint::vni`]): no east-west
/// traffic reaches it or leaves it, and it travels between nodes with the ingress VNI.
pub const MESH_ONLY_VNI: u32 = 0;

/// Where a task address lives: on this node (behind a veth) or on a peer node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Underlay address of the peer node that runs the task (network order), 0 if local.
    pub node: u32,
    /// Local tasks: ifindex of the host side of the task's veth; 0 for remote tasks.
    pub ifindex: u32,
    /// The task's MAC address.
    pub mac: [u8; 6],
    /// Local tasks: MAC of the host side of the veth (the task's gateway).
    pub gw_mac: [u8; 6],
    /// VXLAN network identifier of the network the address belongs to: the ingress VNI
    /// for the default network, a user network's VNI, or [`MESH_ONLY_VNI`] for a task's
    /// ingress address when its service joins user networks (it carries the routing mesh
    /// only: published ports to it and their replies).
    pub vni: u32,
}

impl Endpoint {
    /// Whether the task runs on this node.
    #[must_use]
    pub const fn is_local(&self) -> bool {
        self.node == 0
    }
}

/// The MAC address a task interface gets for an IPv4 address, after Docker's convention
/// (`02:42` followed by the four address bytes), so every node can derive any task's MAC.
#[must_use]
pub const fn task_mac(addr: u32) -> [u8; 6] {
    let b = addr.to_be_bytes();
    [0x02, 0x42, b[0], b[1], b[2], b[3]]
}

pod!(ServiceKey, Service, Backend, Endpoint);
