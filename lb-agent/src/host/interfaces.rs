//! The host's network interfaces, as far as the agent needs them (index, MAC, MTU, IPv4
//! addresses), read through rtnetlink.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// ifindex.
    pub index: u32,
    /// Hardware address (zeros if it has none).
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// IPv4 addresses, in the kernel's order.
    pub ipv4: Vec<Ipv4Addr>,
}

/// The interfaces of the host (of the agent's network namespace), by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    interfaces: BTreeMap<String, Interface>,
}

/// Failure to read the host's interfaces.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

impl HostInfo {
    /// Adds or replaces an interface.
    pub fn insert(&mut self, iface: Interface) {
        self.interfaces.insert(iface.name.clone(), iface);
    }

    /// The interface called `name`.
    #[must_use]
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.get(name)
    }

    /// The interface that holds `addr` (the first, by name, if several do).
    #[must_use]
    pub fn holding(&self, addr: Ipv4Addr) -> Option<&Interface> {
        self.interfaces.values().find(|i| i.ipv4.contains(&addr))
    }

    /// Reads every interface and its IPv4 addresses.
    ///
    /// # Errors
    /// [`HostError::Netlink`] if a dump fails.
    pub async fn query(handle: &rtnetlink::Handle) -> Result<Self, HostError> {
        let mut by_index = BTreeMap::new();
        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await? {
            let mut iface = Interface {
                name: String::new(),
                index: msg.header.index,
                mac: [0; 6],
                mtu: 0,
                ipv4: Vec::new(),
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => iface.name = n,
                    LinkAttribute::Address(a) if a.len() == 6 => iface.mac.copy_from_slice(&a),
                    LinkAttribute::Mtu(m) => iface.mtu = m,
                    _ => {}
                }
            }
            by_index.insert(iface.index, iface);
        }
        let mut addrs = handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await? {
            let Some(iface) = by_index.get_mut(&msg.header.index) else {
                continue;
            };
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links and the same as IFA_LOCAL elsewhere.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                })
            });
            if let Some(a) = addr {
                iface.ipv4.push(a);
            }
        }
        let mut info = Self::default();
        for iface in by_index.into_values() {
            info.insert(iface);
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ipv4: &[Ipv4Addr]) -> Interface {
        Interface {
            name: name.into(),
            index: 1,
            mac: [0; 6],
            mtu: 1500,
            ipv4: ipv4.to_vec(),
        }
    }

    #[test]
    fn the_interface_holding_an_address_is_found() {
        let mut host = HostInfo::default();
        host.insert(iface("lo", &[Ipv4Addr::LOCALHOST]));
        host.insert(iface(
            "eth0",
            &[Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 1, 5)],
        ));
        let name = |a| host.holding(a).map(|i| i.name.as_str());
        assert_eq!(name(Ipv4Addr::new(10, 0, 1, 5)), Some("eth0"));
        assert_eq!(name(Ipv4Addr::LOCALHOST), Some("lo"));
        assert_eq!(name(Ipv4Addr::new(10, 0, 0, 6)), None);
    }
}
