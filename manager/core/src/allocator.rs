//! The allocator's pure core: addresses on the ingress network and on user networks
//! (task addresses and VIPs) and published ports, with conflict detection.
//!
//! It knows nothing of the cluster state: the state machine
//! ([`crate::state`]) passes in what is in use and applies the result, inside
//! `apply`, so every replica allocates the same. Addresses are handed out from
//! a rotating cursor, so an address that was just freed is not reused at once
//! (agents and flow tables may still hold it for a moment).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use mesh_api::network::{IngressNetwork, Network};
use mesh_api::spec::{PortSpec, Protocol, PublishMode};

/// The first port handed out to an ingress port published without a number
/// (Swarm's range).
pub const DYNAMIC_PORTS_START: u16 = 30_000;
/// The last one.
pub const DYNAMIC_PORTS_END: u16 = 32_767;

/// A port another service publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedPort<'a> {
    /// The published port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// The service that publishes it.
    pub service: &'a str,
}

/// Why an allocation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every address of the network is taken.
    #[error("network {name} ({subnet}) has no free address left")]
    NetworkFull {
        /// The network's name.
        name: String,
        /// Its subnet.
        subnet: String,
    },
    /// Another service publishes the port.
    #[error("port '{port}/{protocol}' is already in use by service '{service}'")]
    PortInUse {
        /// The port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
        /// The service that holds it.
        service: String,
    },
    /// The dynamic range is exhausted.
    #[error("no free port left in {DYNAMIC_PORTS_START}-{DYNAMIC_PORTS_END}")]
    NoFreePort,
}

/// Takes a free host of a subnet (`base` its network address, `hosts` its usable host
/// offsets `1..=hosts`), none of `used`, from a rotating cursor (the offset to look at
/// next), which it moves past the address taken; `None` when every host is used.
#[must_use]
pub fn allocate_host(
    base: Ipv4Addr,
    hosts: u32,
    cursor: &mut u32,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let base = u32::from(base);
    for step in 0..hosts {
        let offset = (cursor.saturating_sub(1) + step) % hosts + 1;
        let addr = Ipv4Addr::from(base + offset);
        if !used.contains(&addr) {
            *cursor = offset % hosts + 1;
            return Some(addr);
        }
    }
    None
}

/// Takes a free address on the ingress network, none of `used`, moves the cursor
/// past it and adds it to `used`.
///
/// # Errors
/// [`AllocError::NetworkFull`] when the network is full.
pub fn allocate_addr(
    net: &mut IngressNetwork,
    used: &mut BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, AllocError> {
    let hosts = net.hosts();
    let addr = allocate_host(net.subnet, hosts, &mut net.cursor, used).ok_or_else(|| {
        AllocError::NetworkFull {
            name: mesh_api::network::INGRESS_NAME.to_string(),
            subnet: net.cidr(),
        }
    })?;
    used.insert(addr);
    Ok(addr)
}

/// Takes a free address on user network `net`: none of `used`, never its network or
/// broadcast address nor its gateway (both added to `used`, as the address taken
/// is), and moves its cursor past it.
///
/// # Errors
/// [`AllocError::NetworkFull`] when the network is full.
pub fn allocate_network_addr(
    net: &mut Network,
    used: &mut BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, AllocError> {
    let hosts = (1u32 << (32 - u32::from(net.subnet.prefix()))).saturating_sub(2);
    used.insert(net.gateway);
    let addr =
        allocate_host(net.subnet.network(), hosts, &mut net.cursor, used).ok_or_else(|| {
            AllocError::NetworkFull {
                name: net.spec.name.clone(),
                subnet: net.subnet.to_string(),
            }
        })?;
    used.insert(addr);
    Ok(addr)
}

/// Fills in the published port of every ingress port that has none, keeping
/// the port `previous` had for the same target and protocol (an update keeps
/// its allocation), and checks that no port is among those other services
/// publish (`taken`).
///
/// # Errors
/// [`AllocError::PortInUse`] naming the service that holds a conflicting
/// port; [`AllocError::NoFreePort`] when the dynamic range is exhausted.
pub fn allocate_ports(
    taken: &[PublishedPort<'_>],
    ports: &[PortSpec],
    previous: &[PortSpec],
) -> Result<Vec<PortSpec>, AllocError> {
    let is_taken =
        |n: u16, protocol: Protocol| taken.iter().find(|t| t.port == n && t.protocol == protocol);
    for port in ports {
        if let Some(n) = port.published
            && let Some(other) = is_taken(n, port.protocol)
        {
            return Err(AllocError::PortInUse {
                port: n,
                protocol: port.protocol,
                service: other.service.to_string(),
            });
        }
    }
    let mut out: Vec<PortSpec> = Vec::with_capacity(ports.len());
    for port in ports {
        let mut port = *port;
        if port.published.is_none() && port.mode == PublishMode::Ingress {
            let kept = previous
                .iter()
                .find(|p| p.target == port.target && p.protocol == port.protocol)
                .and_then(|p| p.published)
                .filter(|n| !ports.iter().any(|q| q.published == Some(*n)));
            let chosen = kept.or_else(|| {
                (DYNAMIC_PORTS_START..=DYNAMIC_PORTS_END).find(|n| {
                    is_taken(*n, port.protocol).is_none()
                        && !ports
                            .iter()
                            .chain(&out)
                            .any(|q| q.published == Some(*n) && q.protocol == port.protocol)
                })
            });
            port.published = Some(chosen.ok_or(AllocError::NoFreePort)?);
        }
        out.push(port);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: [u8; 4], prefix: u8) -> IngressNetwork {
        IngressNetwork {
            subnet: Ipv4Addr::from(subnet),
            prefix,
            vni: 1,
            cursor: 1,
        }
    }

    #[test]
    fn addresses_rotate_and_skip_used_ones() {
        let mut ingress = IngressNetwork::default();
        let mut none = BTreeSet::new();
        let a = allocate_addr(&mut ingress, &mut none).unwrap();
        let b = allocate_addr(&mut ingress, &mut BTreeSet::new()).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 255, 0, 1));
        assert_eq!(b, Ipv4Addr::new(10, 255, 0, 2));
        // A tiny network: two hosts, one taken by a VIP.
        let mut tiny = net([10, 9, 0, 0], 30);
        let mut used = BTreeSet::from([Ipv4Addr::new(10, 9, 0, 1)]);
        assert_eq!(
            allocate_addr(&mut tiny, &mut used).unwrap(),
            Ipv4Addr::new(10, 9, 0, 2)
        );
        // The cursor wrapped: .1 is free again.
        let mut used = BTreeSet::from([Ipv4Addr::new(10, 9, 0, 2)]);
        assert_eq!(
            allocate_addr(&mut tiny, &mut used).unwrap(),
            Ipv4Addr::new(10, 9, 0, 1)
        );
    }

    #[test]
    fn a_full_network_is_an_error() {
        let mut full = net([10, 9, 0, 0], 31);
        let err = allocate_addr(&mut full, &mut BTreeSet::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network ingress (10.9.0.0/31) has no free address left"
        );
    }

    #[test]
    fn a_user_network_never_hands_out_its_gateway_and_rotates() {
        let mut back = Network {
            id: 7,
            spec: mesh_api::network::NetworkSpec::new("back"),
            subnet: "10.0.1.0/29".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            vni: 4097,
            cursor: 1,
            created_at_ms: 0,
        };
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        // Six hosts (.1-.6), .1 the gateway: five addresses, then full.
        for _ in 0..5 {
            let addr = allocate_network_addr(&mut back, &mut used).unwrap();
            assert!(
                used.contains(&addr),
                "the address taken is recorded as used"
            );
            got.push(addr.octets()[3]);
        }
        assert_eq!(got, [2, 3, 4, 5, 6]);
        let err = allocate_network_addr(&mut back, &mut used).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network back (10.0.1.0/29) has no free address left"
        );
        // A freed address is taken again only after the cursor wrapped past the others.
        used.remove(&Ipv4Addr::new(10, 0, 1, 3));
        assert_eq!(
            allocate_network_addr(&mut back, &mut used).unwrap(),
            Ipv4Addr::new(10, 0, 1, 3)
        );
    }

    #[test]
    fn published_ports_conflict_and_dynamic_ones_are_filled() {
        let taken = [8080, 30_000].map(|port| PublishedPort {
            port,
            protocol: Protocol::Tcp,
            service: "web",
        });
        let err = allocate_ports(&taken, &["8080:80".parse().unwrap()], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port '8080/tcp' is already in use by service 'web'"
        );
        // UDP on the same number is another port.
        allocate_ports(&taken, &["8080:80/udp".parse().unwrap()], &[]).unwrap();
        let got =
            allocate_ports(&taken, &["80".parse().unwrap(), "81".parse().unwrap()], &[]).unwrap();
        assert_eq!(got[0].published, Some(30_001));
        assert_eq!(got[1].published, Some(30_002));
        // An update keeps the port it had.
        let previous = ["31000:80".parse().unwrap()];
        let got = allocate_ports(&taken, &["80".parse().unwrap()], &previous).unwrap();
        assert_eq!(got[0].published, Some(31_000));
    }
}
