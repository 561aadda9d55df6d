//! Overlay networks' address plans (issue 13's first layer): each network gets a
//! subnet, a gateway and a VXLAN network identifier, as Swarm's allocator gives them.
//!
//! - The subnet is the user's (`network create --subnet CIDR`), or the first free `/24` of
//!   the cluster's default pool (`10.0.0.0/8`, Swarm's default), in address order.
//! - A subnet may not overlap another network's, the built-in `ingress` network's
//!   included: a task on two networks must know which one an address is on.
//! - The gateway is the user's (`--gateway`, inside the subnet and neither its network
//!   nor its broadcast address), or the subnet's first host.
//! - The VNI is the lowest free one from [`FIRST_VNI`] (ingress has 4096, libnetwork's
//!   first) up to 2^24 - 1.
//!
//! Pure: the state machine passes in what is taken and applies the plan, so every
//! replica plans the same. CIDR arithmetic is the `ipnetwork` crate's.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The cluster's default address pool, which networks created without `--subnet` take
/// their subnet from (Swarm: `swarm init --default-addr-pool`).
pub const DEFAULT_POOL: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::new(10, 0, 0, 0), 8)
{
    Some(pool) => pool,
    None => panic!("a valid pool"),
};
/// The prefix length of a subnet taken from the pool (Swarm: `--default-addr-pool-mask-length`).
pub const DEFAULT_PREFIX: u8 = 24;
/// The first VNI of a user network (4096 is the `ingress` network's).
pub const FIRST_VNI: u32 = 4097;
/// The last VNI (24 bits).
pub const LAST_VNI: u32 = (1 << 24) - 1;
/// The longest prefix a network may have: a /30 holds a gateway and one task.
pub const MAX_PREFIX: u8 = 30;

/// A network's address plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Its subnet.
    pub subnet: Ipv4Network,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// Its VXLAN network identifier.
    pub vni: u32,
}

/// A network that holds a subnet, for overlap checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenSubnet<'a> {
    /// The network's name.
    pub network: &'a str,
    /// Its subnet.
    pub subnet: Ipv4Network,
}

/// Why no plan could be made, worded for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet has host bits set (`10.0.0.1/24`).
    #[error("invalid subnet {given}: it should be {network}")]
    HostBits {
        /// As given.
        given: Ipv4Network,
        /// The network it meant.
        network: Ipv4Network,
    },
    /// The subnet is too small for a gateway and a task.
    #[error("invalid subnet {0}: the prefix must be at most /{MAX_PREFIX}")]
    TooSmall(Ipv4Network),
    /// The subnet overlaps another network's.
    #[error("subnet {subnet} overlaps network {network}'s subnet {other}")]
    Overlap {
        /// The subnet asked for.
        subnet: Ipv4Network,
        /// The other network.
        network: String,
        /// Its subnet.
        other: Ipv4Network,
    },
    /// The gateway is not a host of the subnet.
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    Gateway {
        /// The gateway asked for.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Network,
    },
    /// A gateway without a subnet.
    #[error("a gateway needs a subnet: pass --subnet too")]
    GatewayWithoutSubnet,
    /// The default pool has no free subnet left.
    #[error("no free /{DEFAULT_PREFIX} subnet left in the default address pool {DEFAULT_POOL}")]
    PoolExhausted,
    /// Every VNI is taken.
    #[error("no free VXLAN network identifier left")]
    NoVni,
}

/// Plans a new network: `subnet` and `gateway` as the user asked (or `None`), given the
/// networks that exist (`taken`, the ingress network included) and the VNIs in use.
///
/// # Errors
/// What [`IpamError`] lists.
pub fn plan(
    subnet: Option<Ipv4Network>,
    gateway: Option<Ipv4Addr>,
    taken: &[TakenSubnet<'_>],
    vnis: &BTreeSet<u32>,
) -> Result<Plan, IpamError> {
    let subnet = match subnet {
        Some(given) => {
            let network = Ipv4Network::new(given.network(), given.prefix())
                .map_err(|_| IpamError::TooSmall(given))?;
            if network.ip() != given.ip() {
                return Err(IpamError::HostBits { given, network });
            }
            if given.prefix() > MAX_PREFIX {
                return Err(IpamError::TooSmall(given));
            }
            if let Some(other) = taken.iter().find(|t| t.subnet.overlaps(network)) {
                return Err(IpamError::Overlap {
                    subnet: network,
                    network: other.network.to_owned(),
                    other: other.subnet,
                });
            }
            network
        }
        None if gateway.is_some() => return Err(IpamError::GatewayWithoutSubnet),
        None => free_subnet(taken)?,
    };
    let gateway = match gateway {
        Some(g) if is_host(subnet, g) => g,
        Some(g) => return Err(IpamError::Gateway { gateway: g, subnet }),
        None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
    };
    let vni = first_free(vnis, FIRST_VNI, LAST_VNI).ok_or(IpamError::NoVni)?;
    Ok(Plan {
        subnet,
        gateway,
        vni,
    })
}

/// The lowest number in `first..=last` not in `used` (one walk of `used`'s range).
fn first_free(used: &BTreeSet<u32>, first: u32, last: u32) -> Option<u32> {
    let mut next = first;
    for &v in used.range(first..=last) {
        if v != next {
            break;
        }
        next = next.checked_add(1)?;
    }
    (next <= last).then_some(next)
}

/// Whether `addr` is a host of `subnet` (neither its network nor its broadcast address).
#[must_use]
pub fn is_host(subnet: Ipv4Network, addr: Ipv4Addr) -> bool {
    subnet.contains(addr) && addr != subnet.network() && addr != subnet.broadcast()
}

/// The first `/24` of the default pool that overlaps no taken subnet. Subnets are
/// skipped past each overlapping one, so a large taken subnet costs one step.
fn free_subnet(taken: &[TakenSubnet<'_>]) -> Result<Ipv4Network, IpamError> {
    let size = 1u32 << (32 - DEFAULT_PREFIX);
    let end = u32::from(DEFAULT_POOL.broadcast());
    let mut at = u32::from(DEFAULT_POOL.network());
    loop {
        let candidate = Ipv4Network::new(Ipv4Addr::from(at), DEFAULT_PREFIX)
            .map_err(|_| IpamError::PoolExhausted)?;
        match taken.iter().find(|t| t.subnet.overlaps(candidate)) {
            None => return Ok(candidate),
            Some(t) => {
                // Past the overlapping subnet, aligned to the next /24.
                let past = u32::from(t.subnet.broadcast()).max(u32::from(candidate.broadcast()));
                at = match past.checked_add(1) {
                    Some(next) if next <= end => next & !(size - 1),
                    _ => return Err(IpamError::PoolExhausted),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ingress() -> TakenSubnet<'static> {
        TakenSubnet {
            network: "ingress",
            subnet: net("10.255.0.0/16"),
        }
    }

    #[test]
    fn networks_take_the_pool_s_free_24s_in_order() {
        let vnis = BTreeSet::from([4096]);
        let first = plan(None, None, &[ingress()], &vnis).unwrap();
        assert_eq!(
            first,
            Plan {
                subnet: net("10.0.0.0/24"),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                vni: 4097
            }
        );
        let taken = [
            ingress(),
            TakenSubnet {
                network: "front",
                subnet: first.subnet,
            },
            TakenSubnet {
                network: "mid",
                subnet: net("10.0.1.0/24"),
            },
            TakenSubnet {
                network: "big",
                subnet: net("10.0.2.0/23"),
            },
        ];
        let second = plan(None, None, &taken, &BTreeSet::from([4096, 4097])).unwrap();
        assert_eq!(second.subnet, net("10.0.4.0/24"));
        // A gap is filled first: the pool is taken in address order.
        assert_eq!(
            plan(
                None,
                None,
                &[taken[1].clone(), taken[3].clone()],
                &BTreeSet::new()
            )
            .unwrap()
            .subnet,
            net("10.0.1.0/24")
        );
        assert_eq!(second.vni, 4098);
        // A freed VNI is taken again, the lowest first.
        assert_eq!(
            plan(None, None, &taken, &BTreeSet::from([4096, 4098]))
                .unwrap()
                .vni,
            4097
        );
    }

    #[test]
    fn the_pool_skips_a_large_subnet_in_one_step_and_ends() {
        let most = [TakenSubnet {
            network: "huge",
            subnet: net("10.0.0.0/9"),
        }];
        assert_eq!(
            plan(None, None, &most, &BTreeSet::new()).unwrap().subnet,
            net("10.128.0.0/24")
        );
        let all = [TakenSubnet {
            network: "all",
            subnet: net("10.0.0.0/8"),
        }];
        assert_eq!(
            plan(None, None, &all, &BTreeSet::new()),
            Err(IpamError::PoolExhausted)
        );
    }

    #[test]
    fn a_user_s_subnet_and_gateway_are_checked() {
        let none = BTreeSet::new();
        let p = plan(
            Some(net("192.168.10.0/24")),
            Some(Ipv4Addr::new(192, 168, 10, 254)),
            &[ingress()],
            &none,
        )
        .unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(192, 168, 10, 254));
        let refused = |subnet: &str, gateway: Option<Ipv4Addr>| {
            plan(Some(net(subnet)), gateway, &[ingress()], &none)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("10.255.3.0/24", None),
            "subnet 10.255.3.0/24 overlaps network ingress's subnet 10.255.0.0/16"
        );
        assert_eq!(
            refused("10.0.0.0/8", None),
            "subnet 10.0.0.0/8 overlaps network ingress's subnet 10.255.0.0/16"
        );
        assert_eq!(
            refused("192.168.1.7/24", None),
            "invalid subnet 192.168.1.7/24: it should be 192.168.1.0/24"
        );
        assert_eq!(
            refused("192.168.1.0/31", None),
            "invalid subnet 192.168.1.0/31: the prefix must be at most /30"
        );
        for gateway in [
            Ipv4Addr::new(192, 168, 2, 1),
            Ipv4Addr::new(192, 168, 1, 0),
            Ipv4Addr::new(192, 168, 1, 255),
        ] {
            assert!(
                refused("192.168.1.0/24", Some(gateway)).contains("is not a host address"),
                "{gateway}"
            );
        }
        assert_eq!(
            plan(None, Some(Ipv4Addr::new(10, 0, 0, 1)), &[], &none),
            Err(IpamError::GatewayWithoutSubnet)
        );
    }

    #[test]
    fn vnis_run_out() {
        let used = BTreeSet::from([10, 11, 13]);
        assert_eq!(first_free(&used, 10, 20), Some(12));
        assert_eq!(first_free(&used, 12, 20), Some(12));
        assert_eq!(first_free(&BTreeSet::from([10, 11]), 10, 11), None);
        assert_eq!(
            first_free(&BTreeSet::from([u32::MAX]), u32::MAX, u32::MAX),
            None
        );
    }
}
