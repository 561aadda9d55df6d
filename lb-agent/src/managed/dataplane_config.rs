//! The managed agent's dataplane configuration: from the leader's
//! [`Assignment`] and the node's running tasks to the same [`Config`] the
//! standalone agent reads from its file, so one reconcile path programs
//! both. Pure: unit-tested without root.
//!
//! - The node is named by its ID (16 hex digits), each peer likewise.
//! - Endpoints: every local task that runs (with the host side of its veth,
//!   backend or not, so its own traffic to VIPs is balanced too), and every
//!   remote backend on a known peer. Local tasks not started yet are left out.
//! - Services: one entry per service with its VIP and its ingress ports,
//!   balanced over all its backends (draining ones keep their flows); its
//!   host-mode ports form a second entry (`<name>/host`) on the nodes that
//!   run one of its backends, balanced over the local backends only. A port
//!   whose target the VIP already carries goes in a third entry without the
//!   VIP (`<name>/ports`), since a VIP key can lead to one backend set only.
//!   A service with a VIP also gets `<name>/vip`: every other TCP and UDP
//!   port of the VIP, to the same port of a task (target 0), as Swarm's VIPs
//!   take every port; so services reach each other by VIP without publishing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_api::assignment::{Assignment, Backend};
use mesh_api::node::format_id;
use mesh_api::spec::{PortSpec, PublishMode};
use mesh_api::task::TaskId;

use lb_common::maps::{MAX_BACKENDS, MAX_LIVE_SLOTS, MAX_SERVICES, MAX_SLOTS};

use crate::config::{
    BackendConfig, Config, EndpointConfig, PeerConfig, PortConfig, Protocol, ServiceConfig,
};
use crate::dataplane::wrr;

/// The name of an endpoint: the task's name and ID (a metric label).
#[must_use]
pub fn endpoint_name(name: &str, task: TaskId) -> String {
    format!("{name}.{}", format_id(task))
}

fn port_config(p: &PortSpec, published: bool) -> Option<PortConfig> {
    let published = if published { Some(p.published?) } else { None };
    Some(PortConfig {
        published,
        target: p.target,
        protocol: p.protocol,
    })
}

/// The configuration that programs `assignment`: `base` supplies the
/// `[node]` (its name is replaced by the node's ID and its VNI by the
/// ingress network's), `[dataplane]` and `[metrics]` sections; `local` maps
/// each running local task to the host side of its veth.
#[must_use]
pub fn config(base: &Config, assignment: &Assignment, local: &BTreeMap<TaskId, String>) -> Config {
    let me = assignment.node;
    let mut node = base.node.clone();
    node.name = format_id(me);
    node.vni = assignment.ingress.vni;

    let peers: Vec<PeerConfig> = assignment
        .peers
        .iter()
        .filter(|p| p.id != me)
        .map(|p| PeerConfig {
            name: format_id(p.id),
            address: p.addr,
        })
        .collect();
    let known_peers: BTreeSet<u64> = assignment.peers.iter().map(|p| p.id).collect();

    // Endpoints by task, and which exist.
    let mut endpoints: BTreeMap<TaskId, EndpointConfig> = BTreeMap::new();
    let mut addrs: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for task in &assignment.tasks {
        if let Some(iface) = local.get(&task.id)
            && addrs.insert(task.addr)
        {
            endpoints.insert(
                task.id,
                EndpointConfig {
                    name: endpoint_name(&task.name, task.id),
                    address: task.addr,
                    node: node.name.clone(),
                    iface: Some(iface.clone()),
                    mac: None,
                },
            );
        }
    }
    for backend in assignment.services.iter().flat_map(|s| &s.backends) {
        if backend.node == me
            || !known_peers.contains(&backend.node)
            || endpoints.contains_key(&backend.task)
            || !addrs.insert(backend.addr)
        {
            continue;
        }
        endpoints.insert(
            backend.task,
            EndpointConfig {
                name: endpoint_name(&backend.name, backend.task),
                address: backend.addr,
                node: format_id(backend.node),
                iface: None,
                mac: None,
            },
        );
    }

    let backend_configs = |backends: &mut dyn Iterator<Item = &Backend>| -> Vec<BackendConfig> {
        backends
            .filter_map(|b| {
                Some(BackendConfig {
                    endpoint: endpoints.get(&b.task)?.name.clone(),
                    weight: 1,
                    draining: b.draining,
                })
            })
            .collect()
    };

    let mut services = Vec::new();
    for routes in &assignment.services {
        let all = backend_configs(&mut routes.backends.iter());
        let mut on_vip = Vec::new();
        let mut without_vip = Vec::new();
        let mut vip_targets = BTreeSet::new();
        for p in routes
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Ingress)
        {
            let Some(port) = port_config(p, true) else {
                continue;
            };
            if routes.vip.is_none() || vip_targets.insert((port.target, port.protocol)) {
                on_vip.push(port);
            } else {
                without_vip.push(port);
            }
        }
        if !on_vip.is_empty() {
            services.push(ServiceConfig {
                name: routes.name.clone(),
                vip: routes.vip,
                ports: on_vip,
                backends: all.clone(),
            });
        }
        if let Some(vip) = routes.vip {
            // Every other port of the VIP, TCP and UDP, to the same port of a task.
            services.push(ServiceConfig {
                name: format!("{}/vip", routes.name),
                vip: Some(vip),
                ports: [Protocol::Tcp, Protocol::Udp]
                    .into_iter()
                    .map(|protocol| PortConfig {
                        published: None,
                        target: 0,
                        protocol,
                    })
                    .collect(),
                backends: all.clone(),
            });
        }
        if !without_vip.is_empty() {
            services.push(ServiceConfig {
                name: format!("{}/ports", routes.name),
                vip: None,
                ports: without_vip,
                backends: all,
            });
        }
        let host_ports: Vec<PortConfig> = routes
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .filter_map(|p| port_config(p, true))
            .collect();
        let local_backends = backend_configs(&mut routes.backends.iter().filter(|b| b.node == me));
        if !host_ports.is_empty() && !local_backends.is_empty() {
            services.push(ServiceConfig {
                name: format!("{}/host", routes.name),
                vip: None,
                ports: host_ports,
                backends: local_backends,
            });
        }
    }

    Config {
        node,
        dataplane: base.dataplane.clone(),
        metrics: base.metrics.clone(),
        dns: base.dns.clone(),
        peers,
        endpoints: endpoints.into_values().collect(),
        services,
    }
}

/// Leaves out of `config` the services its dataplane cannot hold, in order, and says
/// why for each: one with more active backends than a table has slots, and those that
/// would take the node past its port mappings, backends or live slots. The managers
/// refuse services that would not fit (`mesh_core::capacity`), so this only happens
/// when their accounting and the node's differ (a global service on a grown cluster,
/// agents of another version); routing everything else beats refusing the whole
/// configuration, which would freeze every service's routing on the node.
pub fn fit(config: &mut Config) -> Vec<String> {
    let mut left_out = Vec::new();
    let (mut mappings, mut backends, mut slots) = (0usize, 0usize, 0usize);
    config.services.retain(|svc| {
        let ports = svc.ports.len();
        let weights: Vec<u32> = svc
            .backends
            .iter()
            .filter(|b| !b.draining)
            .map(|b| b.weight)
            .collect();
        if weights.len() > MAX_SLOTS as usize {
            left_out.push(format!(
                "{}: {} active backends, more than the {MAX_SLOTS} slots of a table",
                svc.name,
                weights.len()
            ));
            return false;
        }
        let table: u32 = wrr::slot_counts(&weights, MAX_SLOTS).iter().sum();
        let next = (
            mappings + ports,
            backends + svc.backends.len() * ports,
            slots + table as usize * ports,
        );
        let over = [
            (next.0, MAX_SERVICES, "port mappings"),
            (next.1, MAX_BACKENDS, "backends"),
            (next.2, MAX_LIVE_SLOTS, "live slots"),
        ]
        .into_iter()
        .find(|(n, max, _)| *n > *max as usize);
        if let Some((n, max, what)) = over {
            left_out.push(format!(
                "{}: would take the node to {n} {what}, more than the {max} it holds",
                svc.name
            ));
            return false;
        }
        (mappings, backends, slots) = next;
        true
    });
    left_out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_api::assignment::{AssignedTask, Peer, ServiceRoutes, TaskAction};
    use mesh_api::network::IngressNetwork;
    use mesh_api::spec::{Protocol as P, RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskState;

    use super::*;
    use crate::config::{DataplaneSection, MetricsSection, NodeSection};
    use crate::host::interfaces::{HostInfo, Interface};

    const ME: u64 = 0xa;
    const OTHER: u64 = 0xb;

    fn base() -> Config {
        Config {
            node: NodeSection {
                name: "placeholder".into(),
                underlay: "eth0".into(),
                address: None,
                mtu: None,
                vni: 1,
                vxlan_port: 4789,
            },
            dataplane: DataplaneSection::default(),
            metrics: MetricsSection::default(),
            dns: crate::config::DnsSection::default(),
            peers: vec![],
            endpoints: vec![],
            services: vec![],
        }
    }

    fn addr(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 255, 0, last)
    }

    fn backend(task: TaskId, node: u64, draining: bool) -> Backend {
        Backend {
            task,
            name: format!("web.{task}"),
            addr: addr(task as u8),
            networks: Vec::new(),
            node,
            draining,
        }
    }

    fn port(published: u16, target: u16, mode: PublishMode) -> PortSpec {
        PortSpec {
            published: Some(published),
            target,
            protocol: P::Tcp,
            mode,
        }
    }

    fn local_task(id: TaskId, action: TaskAction) -> AssignedTask {
        AssignedTask {
            id,
            name: format!("web.{id}"),
            service_id: 100,
            service_name: "web".into(),
            spec: ServiceSpec::new("web", RuntimeKind::Process, "task-echo", vec![]).task,
            addr: addr(id as u8),
            networks: Vec::new(),
            action,
            state: TaskState::Running,
        }
    }

    /// `web` has tasks 1 (here, running), 2 (here, not started yet), 3 (on
    /// the peer, draining) and 4 (on a node that is not a peer).
    fn assignment(ports: Vec<PortSpec>) -> Assignment {
        Assignment {
            version: 7,
            node: ME,
            ingress: IngressNetwork::default(),
            networks: Vec::new(),
            peers: vec![Peer {
                id: OTHER,
                hostname: "b".into(),
                addr: Ipv4Addr::new(192, 168, 0, 2),
            }],
            tasks: vec![
                local_task(1, TaskAction::Run),
                local_task(2, TaskAction::Run),
            ],
            services: vec![ServiceRoutes {
                id: 100,
                name: "web".into(),
                vip: Some(Ipv4Addr::new(10, 255, 0, 200)),
                ports,
                backends: vec![
                    backend(1, ME, false),
                    backend(3, OTHER, true),
                    backend(4, 0xc, false),
                ],
                networks: Vec::new(),
            }],
            history: Default::default(),
        }
    }

    fn host() -> HostInfo {
        let mut host = HostInfo::default();
        for (index, name) in [(1, "eth0"), (2, "veth-1")] {
            host.insert(Interface {
                name: name.into(),
                index,
                mac: [2, 0, 0, 0, 0, index as u8],
                mtu: 1500,
                ipv4: vec![Ipv4Addr::new(192, 168, 0, 1)],
            });
        }
        host
    }

    fn local() -> BTreeMap<TaskId, String> {
        BTreeMap::from([(1, "veth-1".to_string())])
    }

    fn service(name: &str, ports: u16, active: usize, draining: usize) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            vip: None,
            ports: (0..ports)
                .map(|p| PortConfig {
                    published: Some(10_000 + p),
                    target: 80,
                    protocol: Protocol::Tcp,
                })
                .collect(),
            backends: (0..active + draining)
                .map(|i| BackendConfig {
                    endpoint: format!("t{i}"),
                    weight: 1,
                    draining: i >= active,
                })
                .collect(),
        }
    }

    #[test]
    fn what_the_dataplane_cannot_hold_is_left_out_and_the_rest_kept() {
        let mut config = base();
        config.services = vec![
            service("a", 1, 3, 0),
            // More active backends than a table has slots (draining ones take none).
            service("wide", 1, MAX_SLOTS as usize + 1, 0),
            service("b", 1, MAX_SLOTS as usize, 5),
            // Past the node's port mappings.
            service("many-ports", u16::try_from(MAX_SERVICES).unwrap(), 1, 0),
            service("c", 2, 1, 0),
        ];
        let left_out = fit(&mut config);
        let kept: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(kept, ["a", "b", "c"]);
        assert_eq!(left_out.len(), 2, "{left_out:?}");
        assert!(
            left_out[0].starts_with("wide: 4097 active backends"),
            "{left_out:?}"
        );
        assert!(
            left_out[1].starts_with("many-ports: would take the node to 32770 port mappings"),
            "{left_out:?}"
        );
        // What fits is left as it is.
        let mut again = config.clone();
        assert!(fit(&mut again).is_empty());
        assert_eq!(again, config);
    }

    #[test]
    fn ingress_ports_route_to_every_known_backend_and_the_result_validates() {
        let a = assignment(vec![port(8080, 80, PublishMode::Ingress)]);
        let c = config(&base(), &a, &local());
        c.validate(&host()).expect("a valid configuration");
        assert_eq!(c.node.name, "000000000000000a");
        assert_eq!(c.node.vni, a.ingress.vni);
        assert_eq!(c.peers.len(), 1);
        let names: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["web.1.0000000000000001", "web.3.0000000000000003"],
            "task 2 has not started; task 4's node is no peer"
        );
        assert_eq!(c.endpoints[0].iface.as_deref(), Some("veth-1"));
        assert_eq!(c.endpoints[1].node, "000000000000000b");
        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(web.vip, a.services[0].vip);
        assert_eq!(web.ports[0].published, Some(8080));
        let every_port = &c.services[1];
        assert_eq!(every_port.name, "web/vip");
        assert_eq!(every_port.vip, a.services[0].vip);
        let labels: Vec<String> = every_port.ports.iter().map(PortConfig::label).collect();
        assert_eq!(labels, ["*/tcp", "*/udp"]);
        assert_eq!(every_port.backends, web.backends);
        let backends: Vec<(&str, bool)> = web
            .backends
            .iter()
            .map(|b| (b.endpoint.as_str(), b.draining))
            .collect();
        assert_eq!(
            backends,
            vec![
                ("web.1.0000000000000001", false),
                ("web.3.0000000000000003", true)
            ]
        );
    }

    #[test]
    fn host_ports_route_to_local_backends_only_where_there_are_some() {
        let a = assignment(vec![port(9090, 80, PublishMode::Host)]);
        let c = config(&base(), &a, &local());
        c.validate(&host()).expect("a valid configuration");
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["web/vip", "web/host"],
            "no ingress port: no `web` entry"
        );
        let host_svc = &c.services[1];
        assert_eq!(host_svc.name, "web/host");
        assert_eq!(host_svc.vip, None);
        assert_eq!(host_svc.backends.len(), 1);
        assert_eq!(host_svc.backends[0].endpoint, "web.1.0000000000000001");

        // Without a running local task, no host port at all.
        let c = config(&base(), &a, &BTreeMap::new());
        assert!(c.services.iter().all(|s| s.name != "web/host"));
    }

    #[test]
    fn two_published_ports_to_one_target_both_route() {
        let a = assignment(vec![
            port(8080, 80, PublishMode::Ingress),
            port(8081, 80, PublishMode::Ingress),
        ]);
        let c = config(&base(), &a, &local());
        c.validate(&host()).expect("a valid configuration");
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["web", "web/vip", "web/ports"]);
        assert_eq!(c.services[2].ports[0].published, Some(8081));
    }

    #[test]
    fn a_running_local_task_that_is_no_backend_still_gets_its_endpoint() {
        let mut a = assignment(vec![port(8080, 80, PublishMode::Ingress)]);
        a.services[0].backends.clear();
        let c = config(&base(), &a, &local());
        c.validate(&host()).expect("a valid configuration");
        assert_eq!(c.endpoints.len(), 1);
        assert!(c.services[0].backends.is_empty());
    }
}
