//! From a validated configuration to the desired dataplane state.
//!
//! Each port mapping of a configured service is one dataplane service with one id and up
//! to two keys: the published port (`0.0.0.0:published`, the routing mesh) and
//! `vip:target`. Its backends are `(endpoint address, target port)`. Services and
//! endpoints carry the VNI of their network (the configured one, or `node.vni`), which
//! the programs compare to keep networks apart.
//!
//! Identity, which is what keeps ids stable: a dataplane service is identified by its
//! keys (a port mapping keeps its id as long as it keeps one of its keys); a backend by
//! `(service id, address, port)`. Both can be recovered from the pinned maps alone, so an
//! agent that restarts keeps the ids, and the counters, of everything unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use lb_common::maps::{MAX_BACKENDS, MAX_SERVICES};
use lb_common::{Backend, Endpoint, NodeConfig, Service};

use crate::config::{Config, ConfigError, Protocol};
use crate::dataplane::ids::IdAllocator;
use crate::dataplane::maglev::{self, MaglevBackend};
use crate::dataplane::map_state::{DataplaneState, SvcKey};
use crate::host::interfaces::HostInfo;

/// The id allocators of an agent, kept across reloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocators {
    /// Service ids in `0..MAX_SERVICES`.
    pub services: IdAllocator,
    /// Backend ids in `0..MAX_BACKENDS`.
    pub backends: IdAllocator,
}

impl Allocators {
    /// Allocators that continue after the ids `current` uses.
    #[must_use]
    pub fn resume(current: &DataplaneState) -> Self {
        Self {
            services: IdAllocator::resume_after(MAX_SERVICES, current.service_ids()),
            backends: IdAllocator::resume_after(MAX_BACKENDS, current.backends.keys().copied()),
        }
    }
}

impl Default for Allocators {
    fn default() -> Self {
        Self {
            services: IdAllocator::new(MAX_SERVICES),
            backends: IdAllocator::new(MAX_BACKENDS),
        }
    }
}

/// Metric labels of a dataplane service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLabels {
    /// The configured service's name.
    pub service: String,
    /// The port mapping, `8080:80/tcp` or `80/tcp`.
    pub port: String,
}

/// Metric labels of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendLabels {
    /// The service's name.
    pub service: String,
    /// The port mapping.
    pub port: String,
    /// The endpoint's name.
    pub backend: String,
}

/// Everything the agent derives from one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The maps' desired contents.
    pub state: DataplaneState,
    /// Labels by service id.
    pub service_labels: BTreeMap<u32, ServiceLabels>,
    /// Labels by backend id.
    pub backend_labels: BTreeMap<u32, BackendLabels>,
    /// Per configured service: (active, draining) backend counts.
    pub backend_counts: BTreeMap<String, (u32, u32)>,
    /// Host-side interfaces of local endpoints (TC attach points): name -> ifindex.
    pub task_ifaces: BTreeMap<String, u32>,
    /// Underlay addresses of the peers, whose neighbour entries the agent keeps resolved.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// Computes the desired state of a configuration that passed [`Config::validate`].
///
/// `current` is what the maps hold now: services and backends that exist there keep their
/// ids; new ones get ids from `allocs` that `current` does not use.
///
/// # Errors
/// [`ConfigError::TooMany`] when ids run out; [`ConfigError::NoSuchInterface`] or
/// [`ConfigError::UnknownEndpoint`] if the configuration was not validated against `host`.
pub fn compute(
    config: &Config,
    host: &HostInfo,
    current: &DataplaneState,
    allocs: &mut Allocators,
) -> Result<Desired, ConfigError> {
    let node = node_config(config, host)?;
    let peers: HashMap<&str, Ipv4Addr> = config
        .peers
        .iter()
        .map(|p| (p.name.as_str(), p.address))
        .collect();

    let mut state = DataplaneState {
        node: Some(node),
        ..DataplaneState::default()
    };
    let mut task_ifaces = BTreeMap::new();
    let mut endpoint_addrs = HashMap::new();
    for ep in &config.endpoints {
        let mac = ep.mac.map_or_else(
            || lb_common::service::task_mac(u32::from(ep.address)),
            |m| m.0,
        );
        let value = if config.is_local(&ep.node) {
            let iface_name = ep.iface.as_deref().unwrap_or_default();
            let iface = host
                .interface(iface_name)
                .ok_or_else(|| ConfigError::NoSuchInterface {
                    what: format!("endpoint {:?}", ep.name),
                    iface: iface_name.to_owned(),
                })?;
            task_ifaces.insert(iface.name.clone(), iface.index);
            Endpoint {
                node: 0,
                ifindex: iface.index,
                mac,
                gw_mac: iface.mac,
                vni: config.endpoint_vni(ep),
            }
        } else {
            let peer = peers
                .get(ep.node.as_str())
                .ok_or_else(|| ConfigError::UnknownNode {
                    endpoint: ep.name.clone(),
                    node: ep.node.clone(),
                })?;
            Endpoint {
                node: u32::from(*peer).to_be(),
                ifindex: 0,
                mac,
                gw_mac: [0; 6],
                vni: config.endpoint_vni(ep),
            }
        };
        state.endpoints.insert(ep.address, value);
        endpoint_addrs.insert(ep.name.as_str(), ep.address);
    }

    // Current identities.
    let current_backend_ids: HashMap<(u32, u32, u16), u32> = current
        .backends
        .iter()
        .map(|(id, b)| ((b.service_id, b.addr, b.port), *id))
        .collect();
    let current_service_ids = current.service_ids();
    let mut claimed_services = BTreeSet::new();
    let mut claimed_backends = BTreeSet::new();

    let mut service_labels = BTreeMap::new();
    let mut backend_labels = BTreeMap::new();
    let mut backend_counts = BTreeMap::new();
    for svc in &config.services {
        let active = svc.backends.iter().filter(|b| !b.draining).count() as u32;
        backend_counts.insert(
            svc.name.clone(),
            (active, svc.backends.len() as u32 - active),
        );
        for port in &svc.ports {
            let proto = port.protocol.number();
            let mut keys = Vec::new();
            if let Some(p) = port.published {
                keys.push(SvcKey::published(p, proto));
            }
            if let Some(vip) = svc.vip {
                keys.push(SvcKey {
                    addr: vip,
                    port: port.target,
                    proto,
                });
            }
            // Keep the id of the first key that has one not claimed yet.
            let existing = keys
                .iter()
                .filter_map(|k| current.services.get(k).map(|s| s.id))
                .find(|id| !claimed_services.contains(id));
            let sid = match existing {
                Some(id) => id,
                None => allocs
                    .services
                    .allocate(|id| {
                        current_service_ids.contains(&id) || claimed_services.contains(&id)
                    })
                    .ok_or(ConfigError::TooMany {
                        what: "services (no free id)",
                        count: claimed_services.len() + 1,
                        max: MAX_SERVICES,
                    })?,
            };
            claimed_services.insert(sid);
            let flags = if port.protocol == Protocol::Tcp {
                Service::FLAG_MSS_CLAMP
            } else {
                0
            };

            let mut active = Vec::new();
            for b in &svc.backends {
                let addr = *endpoint_addrs.get(b.endpoint.as_str()).ok_or_else(|| {
                    ConfigError::UnknownEndpoint {
                        service: svc.name.clone(),
                        endpoint: b.endpoint.clone(),
                    }
                })?;
                let mut value = Backend::new(u32::from(addr), port.target, sid);
                if b.draining {
                    value.flags |= Backend::FLAG_DRAINING;
                }
                value.weight = b.weight.max(1);
                let identity = (sid, value.addr, value.port);
                let bid = match current_backend_ids.get(&identity) {
                    Some(id) if !claimed_backends.contains(id) => *id,
                    _ => allocs
                        .backends
                        .allocate(|id| {
                            current.backends.contains_key(&id) || claimed_backends.contains(&id)
                        })
                        .ok_or(ConfigError::TooMany {
                            what: "backends (no free id)",
                            count: claimed_backends.len() + 1,
                            max: MAX_BACKENDS,
                        })?,
                };
                claimed_backends.insert(bid);
                state.backends.insert(bid, value);
                backend_labels.insert(
                    bid,
                    BackendLabels {
                        service: svc.name.clone(),
                        port: port.label(),
                        backend: b.endpoint.clone(),
                    },
                );
                if !b.draining {
                    active.push(MaglevBackend {
                        id: bid,
                        addr: value.addr,
                        port: value.port,
                        weight: value.weight,
                    });
                }
            }
            let slots = maglev::slot_table(svc.scheduler, &active);
            let value = Service {
                id: sid,
                base: 0,
                slots: slots.len() as u32,
                flags,
                vni: config.service_vni(svc),
                sched: svc.scheduler as u32,
            };
            for k in keys {
                state.services.insert(k, value);
            }
            state.slots.insert(sid, slots);
            service_labels.insert(
                sid,
                ServiceLabels {
                    service: svc.name.clone(),
                    port: port.label(),
                },
            );
        }
    }

    Ok(Desired {
        state,
        service_labels,
        backend_labels,
        backend_counts,
        task_ifaces,
        peers: config.peers.iter().map(|p| p.address).collect(),
    })
}

/// The node settings of a configuration on this host.
///
/// # Errors
/// [`ConfigError::NoSuchInterface`] if the underlay interface is missing,
/// [`ConfigError::Invalid`] if no node address is configured or found.
pub fn node_config(config: &Config, host: &HostInfo) -> Result<NodeConfig, ConfigError> {
    let n = &config.node;
    let underlay = host
        .interface(&n.underlay)
        .ok_or_else(|| ConfigError::NoSuchInterface {
            what: "node.underlay".into(),
            iface: n.underlay.clone(),
        })?;
    let addr = n
        .address
        .or_else(|| underlay.ipv4.first().copied())
        .ok_or_else(|| ConfigError::Invalid {
            what: "node.address".into(),
            reason: format!("not set and interface {:?} has no IPv4 address", n.underlay),
        })?;
    Ok(NodeConfig {
        addr: u32::from(addr).to_be(),
        ifindex: underlay.index,
        mac: underlay.mac,
        vxlan_port: n.vxlan_port.to_be(),
        vni: n.vni,
        mtu: n.mtu.unwrap_or(underlay.mtu),
        udp_timeout_s: config.dataplane.udp_timeout_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{EXAMPLE, host};
    use crate::dataplane::map_state::{MapModel, MapOp, diff};
    use lb_common::Scheduler;

    #[test]
    fn protocol_numbers_are_the_dataplanes() {
        assert_eq!(Protocol::Tcp.number(), lb_common::IPPROTO_TCP);
        assert_eq!(Protocol::Udp.number(), lb_common::IPPROTO_UDP);
    }

    fn config(text: &str) -> Config {
        let c = Config::from_toml(text).unwrap();
        c.validate(&host()).unwrap();
        c
    }

    /// Computes and applies `text` on top of `current`, returning the new state.
    fn step(
        text: &str,
        current: &DataplaneState,
        allocs: &mut Allocators,
    ) -> (Desired, DataplaneState) {
        let d = compute(&config(text), &host(), current, allocs).unwrap();
        let mut model = MapModel::from_state(current);
        for op in diff(current, &d.state).unwrap() {
            model.apply(&op);
            assert!(
                model.dangling().is_empty(),
                "{op:?}: {:?}",
                model.dangling()
            );
        }
        (d, model.state())
    }

    /// A service's scheduler reaches its map value and shapes its table; switching it is
    /// a new table and one service update, with the backends kept.
    #[test]
    fn schedulers_shape_the_table() {
        let with =
            |name: &str| EXAMPLE.replace("vip = ", &format!("scheduler = \"{name}\"\nvip = "));
        let mut allocs = Allocators::default();
        let (_, rr) = step(EXAMPLE, &DataplaneState::default(), &mut allocs);
        let (d, maglev) = step(&with("maglev"), &rr, &mut allocs);
        let svc = d.state.services[&SvcKey::published(8080, 6)];
        assert_eq!(svc.sched, Scheduler::Maglev as u32);
        assert_eq!(d.state.slots[&0].len(), 1021);
        assert_eq!(d.state.backends, rr.backends, "same backends, same ids");
        // Weights 1 and 2: a third and two thirds of the table, to within a slot per turn.
        let two = d.state.slots[&0].iter().filter(|&&id| id == 1).count();
        assert!((680..=682).contains(&two), "{two} of 1021");
        let ops = diff(&rr, &d.state).unwrap();
        assert!(ops.iter().any(|op| matches!(op, MapOp::WriteSlots { .. })));
        let (d, _) = step(&with("lc"), &maglev, &mut allocs);
        assert_eq!(d.state.slots[&0], [0, 1], "each backend once");
        assert_eq!(d.state.backends[&1].weight, 2, "lc reads the weight");
    }

    #[test]
    fn example() {
        let (d, after) = step(
            EXAMPLE,
            &DataplaneState::default(),
            &mut Allocators::default(),
        );
        let s = &d.state;
        assert_eq!(s.services.len(), 2);
        let published = s.services[&SvcKey::published(8080, 6)];
        let vip = s.services[&SvcKey {
            addr: Ipv4Addr::new(10, 255, 255, 10),
            port: 80,
            proto: 6,
        }];
        assert_eq!(published, vip);
        assert_eq!(
            published,
            Service {
                id: 0,
                base: 0,
                slots: 3,
                flags: Service::FLAG_MSS_CLAMP,
                vni: 4096,
                sched: 0,
            }
        );
        // web.1 weight 1 (id 0), web.2 weight 2 (id 1).
        assert_eq!(s.slots[&0], [1, 0, 1]);
        assert_eq!(s.backends[&0], Backend::new(0x0aff_000b, 80, 0));
        let local = s.endpoints[&Ipv4Addr::new(10, 255, 0, 11)];
        assert_eq!(
            local,
            Endpoint {
                node: 0,
                ifindex: 7,
                mac: [2, 0x42, 10, 255, 0, 11],
                gw_mac: [2, 0, 0, 0, 0, 7],
                vni: 4096
            }
        );
        let remote = s.endpoints[&Ipv4Addr::new(10, 255, 0, 12)];
        assert_eq!(remote.node.to_ne_bytes(), [10, 99, 0, 12]);
        assert_eq!((remote.ifindex, remote.vni), (0, 4096));
        let node = s.node.unwrap();
        assert_eq!(node.addr.to_ne_bytes(), [10, 99, 0, 11]);
        assert_eq!(node.vxlan_port.to_ne_bytes(), 4789u16.to_be_bytes());
        assert_eq!(
            (node.ifindex, node.mtu, node.vni, node.udp_timeout_s),
            (2, 1500, 4096, 120)
        );
        assert_eq!(d.task_ifaces, BTreeMap::from([("vweb1".to_owned(), 7)]));
        assert_eq!(d.peers, BTreeSet::from([Ipv4Addr::new(10, 99, 0, 12)]));
        assert_eq!(d.service_labels[&0].port, "8080:80/tcp");
        assert_eq!(d.backend_labels[&1].backend, "web.2");
        assert_eq!(d.backend_counts["web"], (2, 0));
        // Applying it gives the desired state, and the same config again changes nothing.
        let mut allocs = Allocators::resume(&after);
        let (d2, _) = step(EXAMPLE, &after, &mut allocs);
        assert!(diff(&after, &d2.state).unwrap().is_empty());
    }

    #[test]
    fn ids_are_stable_across_changes_and_restarts() {
        let mut allocs = Allocators::default();
        let (_, s1) = step(EXAMPLE, &DataplaneState::default(), &mut allocs);
        // Add a service in front, drain web.1: web keeps id 0 and its backend ids.
        let text = EXAMPLE.replace("weight = 1 }", "weight = 1, draining = true }").replace(
            "[[services]]\nname = \"web\"",
            "[[services]]\nname = \"api\"\nports = [{ published = 9090, target = 90 }]\nbackends = [{ endpoint = \"web.2\" }]\n\n[[services]]\nname = \"web\"",
        );
        let (d2, s2) = step(&text, &s1, &mut allocs);
        assert_eq!(s2.services[&SvcKey::published(8080, 6)].id, 0);
        assert_eq!(s2.services[&SvcKey::published(9090, 6)].id, 1);
        assert_eq!(d2.state.backends[&0].flags, Backend::FLAG_DRAINING);
        assert_eq!(s2.slots[&0], [1], "draining backend has no slots");
        assert_eq!(d2.state.backends[&2], Backend::new(0x0aff_000c, 90, 1));
        // A restart: fresh allocators resumed from the maps give the same ids.
        let mut fresh = Allocators::resume(&s2);
        let (d3, _) = step(&text, &s2, &mut fresh);
        assert!(diff(&s2, &d3.state).unwrap().is_empty());
        // Removing api frees id 1 and backend 2; a new service does not reuse them at once.
        let text4 = EXAMPLE.replace("8080", "8081");
        let (d4, _) = step(&text4, &s2, &mut allocs);
        let ids: BTreeSet<u32> = d4.state.service_ids();
        // 8081 is a new key, but the VIP key keeps id 0.
        assert_eq!(ids, BTreeSet::from([0]));
    }

    #[test]
    fn a_new_service_never_takes_an_id_in_use() {
        let mut allocs = Allocators::default();
        let (_, s1) = step(EXAMPLE, &DataplaneState::default(), &mut allocs);
        // Replace web entirely by a different service with other keys: it must not get id 0
        // while web's keys are still live during the update.
        let text = EXAMPLE
            .replace("vip = \"10.255.255.10\"\n", "")
            .replace("8080", "7070");
        let mut allocs = Allocators::default();
        let (d, _) = step(&text, &s1, &mut allocs);
        assert_eq!(d.state.service_ids(), BTreeSet::from([1]));
        assert!(
            d.state
                .backends
                .keys()
                .all(|id| !s1.backends.contains_key(id))
        );
    }

    #[test]
    fn udp_has_no_mss_clamp() {
        let text = EXAMPLE.replace("protocol = \"tcp\"", "protocol = \"udp\"");
        let (d, _) = step(
            &text,
            &DataplaneState::default(),
            &mut Allocators::default(),
        );
        assert!(d.state.services.values().all(|s| s.flags == 0));
        assert!(d.state.services.keys().all(|k| k.proto == 17));
    }

    #[test]
    fn overrides_of_node_settings() {
        let text = EXAMPLE.replace(
            "underlay = \"eth0\"",
            "underlay = \"eth0\"\naddress = \"10.99.0.100\"\nmtu = 9000\nvni = 7\nvxlan_port = 8472",
        ) + "\n[dataplane]\nudp_timeout_secs = 30\n";
        let n = node_config(&config(&text), &host()).unwrap();
        assert_eq!(n.addr.to_ne_bytes(), [10, 99, 0, 100]);
        assert_eq!(
            (n.mtu, n.vni, u16::from_be(n.vxlan_port), n.udp_timeout_s),
            (9000, 7, 8472, 30)
        );
    }
}
