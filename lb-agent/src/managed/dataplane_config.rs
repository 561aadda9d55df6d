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
//! - User networks (issue 13): a service that joins some has no ingress VIP; its
//!   published ports (`<name>`, `<name>/ports`, `<name>/host`) go to its tasks'
//!   ingress addresses, which are routing-mesh-only (VNI 0). It gets one entry per
//!   network where it has a VIP, `<name>@<network>`: every port of that VIP, to its
//!   tasks' addresses on that network, on the network's VNI. Each entry's port
//!   mappings are dataplane services of their own (ids by their keys, as always), so
//!   a task's flow to one network's VIP is balanced, NATed and counted apart.
//! - Endpoints carry their network's VNI: none given (the ingress VNI) for a service
//!   on the default network, 0 for a routing-mesh-only ingress address, the
//!   network's VNI for an address on a user network (`<task name>@<network>.<task
//!   id>`, so the metric label is `web.1@front`; behind the host side of that
//!   network's veth when local).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use lb_common::{MESH_ONLY_VNI, Scheduler};
use mesh_api::assignment::{Assignment, Backend};
use mesh_api::network::{Network, NetworkId};
use mesh_api::node::format_id;
use mesh_api::service::ServiceId;
use mesh_api::spec::{LbAlgorithm, PortSpec, PublishMode};
use mesh_api::task::TaskId;

use lb_common::maps::{MAX_BACKENDS, MAX_LIVE_SLOTS, MAX_SERVICES};

use crate::config::{
    BackendConfig, Config, EndpointConfig, PeerConfig, PortConfig, Protocol, ServiceConfig,
};
use crate::dataplane::maglev;

/// The dataplane's scheduler of a service's `--lb-algorithm`.
#[must_use]
pub const fn scheduler(algorithm: LbAlgorithm) -> Scheduler {
    match algorithm {
        LbAlgorithm::Rr => Scheduler::RoundRobin,
        LbAlgorithm::Maglev => Scheduler::Maglev,
        LbAlgorithm::Lc => Scheduler::LeastConn,
        LbAlgorithm::Sh => Scheduler::SourceHash,
    }
}

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
/// each running local task to the host sides of its veths, in its interfaces'
/// order (`eth0` on ingress, then one per network of [`AssignedTask::networks`]).
#[must_use]
pub fn config(
    base: &Config,
    assignment: &Assignment,
    local: &BTreeMap<TaskId, Vec<String>>,
) -> Config {
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
    let networks: BTreeMap<NetworkId, &Network> =
        assignment.networks.iter().map(|n| (n.id, n)).collect();
    // The services that join user networks: their tasks' ingress addresses carry the
    // routing mesh only.
    let mesh_only: BTreeSet<ServiceId> = assignment
        .services
        .iter()
        .filter(|s| !s.networks.is_empty())
        .map(|s| s.id)
        .collect();

    // Endpoints by (task, network: `None` for ingress), and which addresses exist.
    let mut endpoints = Endpoints::default();
    for task in &assignment.tasks {
        let Some(ifaces) = local.get(&task.id) else {
            continue;
        };
        // By the service, as for remote backends: a task of an earlier spec (draining
        // through a rolling update that changed the networks) is on its service's side.
        let joins = mesh_only.contains(&task.service_id);
        let name = endpoint_name(&task.name, task.id);
        let here = node.name.clone();
        if let Some(iface) = ifaces.first() {
            let vni = joins.then_some(MESH_ONLY_VNI);
            endpoints.add((task.id, None), &name, task.addr, &here, Some(iface), vni);
        }
        for (na, iface) in task.networks.iter().zip(ifaces.iter().skip(1)) {
            if let Some(net) = networks.get(&na.network) {
                let name = endpoint_name(&format!("{}@{}", task.name, net.spec.name), task.id);
                let key = (task.id, Some(na.network));
                endpoints.add(key, &name, na.addr, &here, Some(iface), Some(net.vni));
            }
        }
    }
    for routes in &assignment.services {
        let joins = !routes.networks.is_empty();
        for backend in &routes.backends {
            if backend.node == me || !known_peers.contains(&backend.node) {
                continue;
            }
            let name = endpoint_name(&backend.name, backend.task);
            let there = format_id(backend.node);
            let vni = joins.then_some(MESH_ONLY_VNI);
            endpoints.add((backend.task, None), &name, backend.addr, &there, None, vni);
            for na in &backend.networks {
                if let Some(net) = networks.get(&na.network) {
                    let name =
                        endpoint_name(&format!("{}@{}", backend.name, net.spec.name), backend.task);
                    let key = (backend.task, Some(na.network));
                    endpoints.add(key, &name, na.addr, &there, None, Some(net.vni));
                }
            }
        }
    }

    let backend_configs = |network: Option<NetworkId>,
                           backends: &mut dyn Iterator<Item = &Backend>|
     -> Vec<BackendConfig> {
        backends
            .filter_map(|b| {
                Some(BackendConfig {
                    endpoint: endpoints.by_key.get(&(b.task, network))?.name.clone(),
                    weight: 1,
                    draining: b.draining,
                })
            })
            .collect()
    };

    let mut services = Vec::new();
    for routes in &assignment.services {
        let joins = !routes.networks.is_empty();
        let scheduler = scheduler(routes.lb_algorithm);
        // A service on user networks has no ingress VIP: its published ports go to its
        // tasks' routing-mesh-only ingress addresses.
        let (vip, vni) = if joins {
            (None, Some(MESH_ONLY_VNI))
        } else {
            (routes.vip, None)
        };
        let all = backend_configs(None, &mut routes.backends.iter());
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
            if vip.is_none() || vip_targets.insert((port.target, port.protocol)) {
                on_vip.push(port);
            } else {
                without_vip.push(port);
            }
        }
        if !on_vip.is_empty() {
            services.push(ServiceConfig {
                name: routes.name.clone(),
                vip,
                ports: on_vip,
                backends: all.clone(),
                vni,
                scheduler,
            });
        }
        if let Some(vip) = vip {
            services.push(every_port(
                format!("{}/vip", routes.name),
                vip,
                all.clone(),
                None,
                scheduler,
            ));
        }
        if !without_vip.is_empty() {
            services.push(ServiceConfig {
                name: format!("{}/ports", routes.name),
                vip: None,
                ports: without_vip,
                backends: all,
                vni,
                scheduler,
            });
        }
        let host_ports: Vec<PortConfig> = routes
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .filter_map(|p| port_config(p, true))
            .collect();
        let local_backends =
            backend_configs(None, &mut routes.backends.iter().filter(|b| b.node == me));
        if !host_ports.is_empty() && !local_backends.is_empty() {
            services.push(ServiceConfig {
                name: format!("{}/host", routes.name),
                vip: None,
                ports: host_ports,
                backends: local_backends,
                vni,
                scheduler,
            });
        }
        // Its VIP on each network it joins, balanced to its tasks' addresses there.
        for sn in &routes.networks {
            let (Some(vip), Some(net)) = (sn.vip, networks.get(&sn.network)) else {
                continue;
            };
            let backends = backend_configs(Some(net.id), &mut routes.backends.iter());
            let name = format!("{}@{}", routes.name, net.spec.name);
            services.push(every_port(name, vip, backends, Some(net.vni), scheduler));
        }
    }

    Config {
        node,
        dataplane: base.dataplane.clone(),
        metrics: base.metrics.clone(),
        dns: base.dns.clone(),
        peers,
        endpoints: endpoints.by_key.into_values().collect(),
        services,
    }
}

/// Every port of `vip`, TCP and UDP, each to the same port of a backend (Swarm's VIPs
/// take every port).
fn every_port(
    name: String,
    vip: Ipv4Addr,
    backends: Vec<BackendConfig>,
    vni: Option<u32>,
    scheduler: Scheduler,
) -> ServiceConfig {
    ServiceConfig {
        name,
        vip: Some(vip),
        ports: [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .map(|protocol| PortConfig {
                published: None,
                target: 0,
                protocol,
            })
            .collect(),
        backends,
        vni,
        scheduler,
    }
}

/// The endpoints of a configuration being built: by (task, network; `None` for
/// ingress), each address once.
#[derive(Default)]
struct Endpoints {
    by_key: BTreeMap<(TaskId, Option<NetworkId>), EndpointConfig>,
    addrs: BTreeSet<Ipv4Addr>,
}

impl Endpoints {
    /// Adds an endpoint unless its key or its address is already taken.
    fn add(
        &mut self,
        key: (TaskId, Option<NetworkId>),
        name: &str,
        address: Ipv4Addr,
        node: &str,
        iface: Option<&String>,
        vni: Option<u32>,
    ) {
        if self.by_key.contains_key(&key) || !self.addrs.insert(address) {
            return;
        }
        self.by_key.insert(
            key,
            EndpointConfig {
                name: name.to_owned(),
                address,
                node: node.to_owned(),
                iface: iface.cloned(),
                mac: None,
                vni,
            },
        );
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
        let Some(table) = maglev::table_len(svc.scheduler, &weights) else {
            left_out.push(format!(
                "{}: {} active backends, more than the slots of a {} table",
                svc.name,
                weights.len(),
                svc.scheduler.name()
            ));
            return false;
        };
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
    use lb_common::maps::MAX_SLOTS;

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
            slot: 1,
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
            peers: std::sync::Arc::new(vec![Peer {
                id: OTHER,
                hostname: "b".into(),
                addr: Ipv4Addr::new(192, 168, 0, 2),
            }]),
            tasks: vec![
                local_task(1, TaskAction::Run),
                local_task(2, TaskAction::Run),
            ],
            services: vec![std::sync::Arc::new(ServiceRoutes {
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
                lb_algorithm: Default::default(),
            })],
            history: Default::default(),
            secrets: vec![],
            configs: vec![],
            hostname: String::new(),
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

    fn local() -> BTreeMap<TaskId, Vec<String>> {
        BTreeMap::from([(1, vec!["veth-1".to_string()])])
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
            vni: None,
            scheduler: Default::default(),
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

    /// `--lb-algorithm` reaches every dataplane entry of the service: its ports, its
    /// VIP's catch-alls, its host ports.
    #[test]
    fn the_lb_algorithm_reaches_every_entry() {
        let mut a = assignment(vec![
            port(8080, 80, PublishMode::Ingress),
            port(8081, 80, PublishMode::Ingress),
            port(9090, 80, PublishMode::Host),
        ]);
        let c = config(&base(), &a, &local());
        assert!(
            c.services
                .iter()
                .all(|s| s.scheduler == Scheduler::RoundRobin)
        );
        for (algorithm, want) in [
            (LbAlgorithm::Maglev, Scheduler::Maglev),
            (LbAlgorithm::Sh, Scheduler::SourceHash),
            (LbAlgorithm::Lc, Scheduler::LeastConn),
        ] {
            std::sync::Arc::make_mut(&mut a.services[0]).lb_algorithm = algorithm;
            let c = config(&base(), &a, &local());
            c.validate(&host()).expect("a valid configuration");
            let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["web", "web/vip", "web/ports", "web/host"]);
            assert!(
                c.services.iter().all(|s| s.scheduler == want),
                "{algorithm}: {:?}",
                c.services
                    .iter()
                    .map(|s| (&s.name, s.scheduler))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_running_local_task_that_is_no_backend_still_gets_its_endpoint() {
        let mut a = assignment(vec![port(8080, 80, PublishMode::Ingress)]);
        std::sync::Arc::make_mut(&mut a.services[0])
            .backends
            .clear();
        let c = config(&base(), &a, &local());
        c.validate(&host()).expect("a valid configuration");
        assert_eq!(c.endpoints.len(), 1);
        assert!(c.services[0].backends.is_empty());
    }

    mod networks {
        use mesh_api::assignment::ServiceNetwork;
        use mesh_api::network::{Network, NetworkAddr, NetworkSpec};

        use super::*;
        use crate::dataplane::desired::{Allocators, compute};
        use crate::dataplane::map_state::{DataplaneState, SvcKey};

        const FRONT: u64 = 0xf1;
        const BACK: u64 = 0xf2;
        const API: u64 = 200;

        fn network(id: u64, name: &str, third: u8, vni: u32) -> Network {
            Network {
                id,
                spec: NetworkSpec::new(name),
                subnet: format!("10.0.{third}.0/24").parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, third, 1),
                vni,
                cursor: 2,
                created_at_ms: 0,
            }
        }

        fn on(net: u64, last: u8) -> NetworkAddr {
            let third = if net == FRONT { 1 } else { 2 };
            NetworkAddr {
                network: net,
                addr: Ipv4Addr::new(10, 0, third, last),
            }
        }

        /// The base assignment's `web` (default network), plus `api` on `front` and
        /// `back` (VIPs .2 on each), published 9090 -> 80: its task 5 here (running),
        /// task 6 on the peer.
        fn assignment() -> Assignment {
            let mut a = super::assignment(vec![port(8080, 80, PublishMode::Ingress)]);
            a.networks = vec![
                network(FRONT, "front", 1, 4097),
                network(BACK, "back", 2, 4098),
            ];
            let mut task = local_task(5, TaskAction::Run);
            task.name = "api.1".into();
            task.service_id = API;
            task.networks = vec![on(FRONT, 5), on(BACK, 5)];
            a.tasks.push(task);
            let api_backend = |task: TaskId, node| Backend {
                name: "api.1".into(),
                networks: vec![on(FRONT, task as u8), on(BACK, task as u8)],
                ..backend(task, node, false)
            };
            a.services.push(std::sync::Arc::new(ServiceRoutes {
                id: API,
                name: "api".into(),
                vip: None,
                ports: vec![port(9090, 80, PublishMode::Ingress)],
                backends: vec![api_backend(5, ME), api_backend(6, OTHER)],
                networks: [(FRONT, 2), (BACK, 2)]
                    .into_iter()
                    .map(|(network, last)| ServiceNetwork {
                        network,
                        vip: Some(on(network, last).addr),
                        aliases: Vec::new(),
                    })
                    .collect(),
                lb_algorithm: Default::default(),
            }));
            a
        }

        fn local() -> BTreeMap<TaskId, Vec<String>> {
            let mut local = super::local();
            local.insert(5, vec!["veth-5".into(), "veth-5a".into(), "veth-5b".into()]);
            local
        }

        fn host() -> HostInfo {
            let mut host = super::host();
            for (index, name) in [(5, "veth-5"), (6, "veth-5a"), (7, "veth-5b")] {
                host.insert(Interface {
                    name: name.into(),
                    index,
                    mac: [2, 0, 0, 0, 0, index as u8],
                    mtu: 1500,
                    ipv4: vec![],
                });
            }
            host
        }

        fn endpoint<'a>(c: &'a Config, name: &str) -> &'a EndpointConfig {
            c.endpoints
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("no endpoint {name}: {:?}", c.endpoints))
        }

        fn service<'a>(c: &'a Config, name: &str) -> &'a ServiceConfig {
            c.services
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no service {name}"))
        }

        fn backend_names(s: &ServiceConfig) -> Vec<&str> {
            s.backends.iter().map(|b| b.endpoint.as_str()).collect()
        }

        #[test]
        fn each_address_is_an_endpoint_on_its_network_and_the_ingress_one_is_mesh_only() {
            let a = assignment();
            let c = config(&base(), &a, &local());
            c.validate(&host()).expect("a valid configuration");
            let cases = [
                (
                    "api.1.0000000000000005",
                    "veth-5",
                    Some(0),
                    Ipv4Addr::new(10, 255, 0, 5),
                ),
                (
                    "api.1@front.0000000000000005",
                    "veth-5a",
                    Some(4097),
                    on(FRONT, 5).addr,
                ),
                (
                    "api.1@back.0000000000000005",
                    "veth-5b",
                    Some(4098),
                    on(BACK, 5).addr,
                ),
            ];
            for (name, iface, vni, addr) in cases {
                let e = endpoint(&c, name);
                assert_eq!(
                    (e.iface.as_deref(), e.vni, e.address, e.node.as_str()),
                    (Some(iface), vni, addr, "000000000000000a"),
                    "{name}"
                );
            }
            for (name, vni, addr) in [
                (
                    "api.1.0000000000000006",
                    Some(0),
                    Ipv4Addr::new(10, 255, 0, 6),
                ),
                (
                    "api.1@front.0000000000000006",
                    Some(4097),
                    on(FRONT, 6).addr,
                ),
                ("api.1@back.0000000000000006", Some(4098), on(BACK, 6).addr),
            ] {
                let e = endpoint(&c, name);
                assert_eq!(
                    (e.iface.as_deref(), e.vni, e.address, e.node.as_str()),
                    (None, vni, addr, "000000000000000b"),
                    "{name}"
                );
            }
            // The default network's service is as it was: no VNI of its own.
            assert_eq!(endpoint(&c, "web.1.0000000000000001").vni, None);
            assert_eq!(service(&c, "web").vni, None);
            assert_eq!(service(&c, "web").vip, a.services[0].vip);
        }

        #[test]
        fn a_vip_per_network_to_the_addresses_there_and_published_ports_to_the_mesh_only_ones() {
            let a = assignment();
            let c = config(&base(), &a, &local());
            let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["web", "web/vip", "api", "api@front", "api@back"]);
            let published = service(&c, "api");
            assert_eq!((published.vip, published.vni), (None, Some(0)));
            assert_eq!(published.ports[0].published, Some(9090));
            assert_eq!(
                backend_names(published),
                ["api.1.0000000000000005", "api.1.0000000000000006"]
            );
            for (name, net, vni) in [("api@front", FRONT, 4097), ("api@back", BACK, 4098)] {
                let s = service(&c, name);
                assert_eq!((s.vip, s.vni), (Some(on(net, 2).addr), Some(vni)), "{name}");
                let labels: Vec<String> = s.ports.iter().map(PortConfig::label).collect();
                assert_eq!(labels, ["*/tcp", "*/udp"]);
                let net = name.trim_start_matches("api@");
                assert_eq!(
                    backend_names(s),
                    [
                        format!("api.1@{net}.0000000000000005"),
                        format!("api.1@{net}.0000000000000006")
                    ]
                );
                // The metric label is the task's name on that network.
                assert_eq!(
                    crate::metrics::backend_label(&s.backends[0].endpoint),
                    format!("api.1@{net}")
                );
            }
        }

        #[test]
        fn the_dataplane_state_carries_the_vnis() {
            let a = assignment();
            let c = config(&base(), &a, &local());
            let d = compute(
                &c,
                &host(),
                &DataplaneState::default(),
                &mut Allocators::default(),
            )
            .expect("the configuration computes");
            let s = &d.state;
            let vip = |net, proto| SvcKey {
                addr: on(net, 2).addr,
                port: 0,
                proto,
            };
            let front = s.services[&vip(FRONT, 6)];
            let back = s.services[&vip(BACK, 6)];
            assert_eq!((front.vni, back.vni), (4097, 4098));
            assert_ne!(front.id, back.id, "one dataplane service per network VIP");
            assert_eq!(s.services[&SvcKey::published(9090, 6)].vni, 0);
            assert_eq!(s.services[&SvcKey::published(8080, 6)].vni, 4096);
            // The front VIP balances to the tasks' front addresses.
            let mut addrs: Vec<Ipv4Addr> = s
                .backends
                .values()
                .filter(|b| b.service_id == front.id)
                .map(|b| Ipv4Addr::from(u32::from_be(b.addr)))
                .collect();
            addrs.sort();
            assert_eq!(addrs, [on(FRONT, 5).addr, on(FRONT, 6).addr]);
            let ep = |addr| s.endpoints[&addr];
            assert_eq!(ep(on(FRONT, 5).addr).vni, 4097);
            assert_eq!(ep(on(FRONT, 5).addr).ifindex, 6);
            assert_eq!(ep(on(BACK, 6).addr).vni, 4098);
            assert_eq!(ep(on(BACK, 6).addr).node.to_ne_bytes(), [192, 168, 0, 2]);
            assert_eq!(ep(Ipv4Addr::new(10, 255, 0, 5)).vni, 0);
            assert_eq!(ep(Ipv4Addr::new(10, 255, 0, 1)).vni, 4096);
            // Every local veth gets the TC program.
            let ifaces: Vec<&str> = d.task_ifaces.keys().map(String::as_str).collect();
            assert_eq!(ifaces, ["veth-1", "veth-5", "veth-5a", "veth-5b"]);
        }

        #[test]
        fn dnsrr_unknown_networks_and_missing_veths_leave_out_what_cannot_be_routed() {
            let mut a = assignment();
            // dnsrr on back: no VIP there; an unknown network: nothing.
            std::sync::Arc::make_mut(&mut a.services[1]).networks[1].vip = None;
            a.networks.retain(|n| n.id != FRONT);
            let mut local = local();
            // The adopted task's second network veth was not found.
            local.get_mut(&5).unwrap().truncate(2);
            let c = config(&base(), &a, &local);
            c.validate(&host()).expect("a valid configuration");
            let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["web", "web/vip", "api"]);
            let eps: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                eps,
                [
                    "web.1.0000000000000001",
                    "web.3.0000000000000003",
                    "api.1.0000000000000005",
                    "api.1.0000000000000006",
                    "api.1@back.0000000000000006",
                ]
            );
        }

        #[test]
        fn a_backend_off_its_service_network_is_refused_by_validation() {
            let mut c = config(&base(), &assignment(), &local());
            let front = c
                .services
                .iter_mut()
                .find(|s| s.name == "api@front")
                .unwrap();
            front.backends[0].endpoint = "api.1@back.0000000000000005".into();
            let err = c.validate(&host()).unwrap_err().to_string();
            assert!(
                err.contains("vni 4097") && err.contains("vni 4098"),
                "{err}"
            );
        }
    }
}
