//! The allocator's pure core: addresses on the ingress network (task
//! addresses and VIPs) and published ports, with conflict detection.
//!
//! It runs inside [`crate::state::ClusterState::apply`], so every replica
//! allocates the same: a function of the state alone. Addresses are handed
//! out from a rotating cursor, so an address that was just freed is not
//! reused at once (agents and flow tables may still hold it for a moment).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::state::{ClusterState, StateError};
use mesh_api::service::ServiceId;
use mesh_api::spec::{PortSpec, Protocol, PublishMode};

/// The first port handed out to an ingress port published without a number
/// (Swarm's range).
pub const DYNAMIC_PORTS_START: u16 = 30_000;
/// The last one.
pub const DYNAMIC_PORTS_END: u16 = 32_767;

/// Every ingress address in use: task addresses (while the task's record
/// exists) and VIPs.
fn used_addrs(state: &ClusterState) -> BTreeSet<Ipv4Addr> {
    state
        .tasks
        .values()
        .filter_map(|t| t.addr)
        .chain(state.services.values().filter_map(|s| s.endpoint.vip))
        .collect()
}

/// Takes a free address on the ingress network and moves the cursor past it.
///
/// # Errors
/// [`StateError::Invalid`] when the network is full.
pub fn allocate_addr(state: &mut ClusterState) -> Result<Ipv4Addr, StateError> {
    let used = used_addrs(state);
    let net = &mut state.ingress;
    let hosts = net.hosts();
    let base = u32::from(net.subnet);
    for step in 0..hosts {
        let offset = (net.cursor.saturating_sub(1) + step) % hosts + 1;
        let addr = Ipv4Addr::from(base + offset);
        if !used.contains(&addr) {
            net.cursor = offset % hosts + 1;
            return Ok(addr);
        }
    }
    Err(StateError::Invalid(format!(
        "the ingress network {} has no free address left",
        net.cidr()
    )))
}

/// Fills in the published port of every ingress port that has none, keeping
/// the port `previous` had for the same target and protocol (an update keeps
/// its allocation), and checks that no other service publishes the same
/// port and protocol.
///
/// # Errors
/// [`StateError::Invalid`] naming the service that holds a conflicting
/// port, or when the dynamic range is exhausted.
pub fn allocate_ports(
    state: &ClusterState,
    service: Option<ServiceId>,
    ports: &[PortSpec],
    previous: &[PortSpec],
) -> Result<Vec<PortSpec>, StateError> {
    let taken: Vec<(u16, Protocol, &str)> = state
        .services
        .values()
        .filter(|s| Some(s.id) != service)
        .flat_map(|s| {
            s.endpoint
                .ports
                .iter()
                .filter_map(|p| p.published.map(|n| (n, p.protocol, s.spec.name.as_str())))
        })
        .collect();
    for port in ports {
        if let Some(n) = port.published
            && let Some((_, _, other)) = taken
                .iter()
                .find(|(m, proto, _)| *m == n && *proto == port.protocol)
        {
            return Err(StateError::Invalid(format!(
                "port '{n}/{}' is already in use by service '{other}'",
                port.protocol
            )));
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
                    !taken
                        .iter()
                        .any(|(m, proto, _)| m == n && *proto == port.protocol)
                        && !ports
                            .iter()
                            .chain(&out)
                            .any(|q| q.published == Some(*n) && q.protocol == port.protocol)
                })
            });
            port.published = Some(chosen.ok_or_else(|| {
                StateError::Invalid(format!(
                    "no free port left in {DYNAMIC_PORTS_START}-{DYNAMIC_PORTS_END}"
                ))
            })?);
        }
        out.push(port);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::network::IngressNetwork;
    use mesh_api::service::{Service, ServiceEndpoint};
    use mesh_api::spec::{RuntimeKind, ServiceSpec};

    fn with_service(name: &str, id: ServiceId, ports: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        add_service(&mut state, name, id, ports);
        state
    }

    fn add_service(state: &mut ClusterState, name: &str, id: ServiceId, ports: &[&str]) {
        let ports: Vec<PortSpec> = ports.iter().map(|p| p.parse().unwrap()).collect();
        state.services.insert(
            id,
            Service {
                id,
                spec: ServiceSpec::new(name, RuntimeKind::Process, "x", vec![]),
                previous_spec: None,
                spec_version: 1,
                endpoint: ServiceEndpoint {
                    vip: None,
                    ports: ports.clone(),
                },
                update_status: None,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
        );
    }

    #[test]
    fn addresses_rotate_and_skip_used_ones() {
        let mut state = ClusterState::default();
        let a = allocate_addr(&mut state).unwrap();
        let b = allocate_addr(&mut state).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 255, 0, 1));
        assert_eq!(b, Ipv4Addr::new(10, 255, 0, 2));
        // A tiny network: two hosts, one taken by a VIP.
        state.ingress = IngressNetwork {
            subnet: Ipv4Addr::new(10, 9, 0, 0),
            prefix: 30,
            vni: 1,
            cursor: 1,
        };
        add_service(&mut state, "s", 1, &[]);
        state.services.get_mut(&1).unwrap().endpoint.vip = Some(Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(
            allocate_addr(&mut state).unwrap(),
            Ipv4Addr::new(10, 9, 0, 2)
        );
        state.services.get_mut(&1).unwrap().endpoint.vip = Some(Ipv4Addr::new(10, 9, 0, 2));
        // The cursor wrapped: .1 is free again.
        assert_eq!(
            allocate_addr(&mut state).unwrap(),
            Ipv4Addr::new(10, 9, 0, 1)
        );
    }

    #[test]
    fn a_full_network_is_an_error() {
        let mut state = with_service("s", 1, &[]);
        state.ingress.prefix = 31;
        let err = allocate_addr(&mut state).unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    #[test]
    fn published_ports_conflict_and_dynamic_ones_are_filled() {
        let state = with_service("web", 1, &["8080:80", "30000:81"]);
        let err = allocate_ports(&state, None, &["8080:80".parse().unwrap()], &[]).unwrap_err();
        assert!(err.to_string().contains("already in use by service 'web'"));
        // UDP on the same number is another port.
        allocate_ports(&state, None, &["8080:80/udp".parse().unwrap()], &[]).unwrap();
        // The service itself may keep its ports.
        allocate_ports(&state, Some(1), &["8080:80".parse().unwrap()], &[]).unwrap();
        let got = allocate_ports(
            &state,
            None,
            &["80".parse().unwrap(), "81".parse().unwrap()],
            &[],
        )
        .unwrap();
        assert_eq!(got[0].published, Some(30_001));
        assert_eq!(got[1].published, Some(30_002));
        // An update keeps the port it had.
        let previous = ["31000:80".parse().unwrap()];
        let got = allocate_ports(&state, Some(2), &["80".parse().unwrap()], &previous).unwrap();
        assert_eq!(got[0].published, Some(31_000));
    }
}
