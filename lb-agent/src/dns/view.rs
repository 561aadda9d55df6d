//! The names a node's tasks can resolve, built from the leader's assignment alone (no
//! sockets, no clock): per network, each name and its addresses; per querying task
//! (by source address), the networks it is on, in its spec's order.
//!
//! A service given no `--network` lives on the default network (`ingress`): its
//! [`ServiceRoutes::vip`] and its backends' ingress addresses. A service that joins user
//! networks has names on each of them ([`ServiceRoutes::networks`], its aliases there)
//! and none on ingress. Draining backends are left out: they take no new flows, so a
//! name must not lead new connections to them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use mesh_api::assignment::{Assignment, Backend, ServiceRoutes};
use mesh_api::network::{INGRESS_ID, INGRESS_NAME, NetworkId};

/// The TTL of a VIP answer: a VIP outlives its tasks.
pub const VIP_TTL: u32 = 5;
/// The TTL of a task address (dnsrr, `tasks.*`, a task's own name, PTR): tasks come and
/// go, so clients must not keep them.
pub const TASK_TTL: u32 = 0;

/// The addresses one name has on one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    /// The addresses, in the assignment's order, without duplicates.
    pub addrs: Vec<Ipv4Addr>,
    /// Their TTL (the lowest of the records merged into this name).
    pub ttl: u32,
}

impl Addrs {
    fn merge(&mut self, addrs: &[Ipv4Addr], ttl: u32, first: bool) {
        for a in addrs {
            if !self.addrs.contains(a) {
                self.addrs.push(*a);
            }
        }
        self.ttl = if first { ttl } else { self.ttl.min(ttl) };
    }
}

/// One network's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NetRecords {
    /// Its name, lower case (`ingress` for the default network).
    name: String,
    /// Lower-case name (no trailing dot) -> addresses.
    names: HashMap<String, Addrs>,
    /// A task address -> its name there (`web.1.<task id>.<network>`).
    ptrs: HashMap<Ipv4Addr, String>,
}

impl NetRecords {
    fn add(&mut self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        let key = name.to_ascii_lowercase();
        let first = !self.names.contains_key(&key);
        self.names.entry(key).or_default().merge(addrs, ttl, first);
    }
}

/// What a name is, for one querying task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A name on one of the task's networks.
    Found(&'a Addrs),
    /// A name of the cluster, but on no network the task is on.
    NotHere,
    /// Not a name of the cluster: the upstream servers' to answer.
    Unknown,
}

/// What an address is, for one querying task (PTR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reverse<'a> {
    /// A task address on one of the task's networks: its name there.
    Found(&'a str),
    /// A task address on a network the task is not on.
    NotHere,
    /// Not a task address of the cluster.
    Unknown,
}

/// The names of the cluster as this node's tasks see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// A source address of one of the node's tasks -> its networks, in order.
    tasks: HashMap<Ipv4Addr, Vec<NetworkId>>,
    /// Each network's names.
    networks: BTreeMap<NetworkId, NetRecords>,
    /// A source address of a task with DNS servers of its own (`--dns`) -> those
    /// servers, where the names the cluster does not have are forwarded for it.
    upstreams: HashMap<Ipv4Addr, Vec<std::net::SocketAddr>>,
}

impl View {
    /// The names in `assignment`.
    #[must_use]
    pub fn new(assignment: &Assignment) -> Self {
        let mut networks: BTreeMap<NetworkId, NetRecords> = BTreeMap::new();
        networks.insert(
            INGRESS_ID,
            NetRecords {
                name: INGRESS_NAME.to_owned(),
                ..NetRecords::default()
            },
        );
        for n in &assignment.networks {
            networks.insert(
                n.id,
                NetRecords {
                    name: n.spec.name.to_ascii_lowercase(),
                    ..NetRecords::default()
                },
            );
        }
        for service in &assignment.services {
            for home in homes(service) {
                // A network the assignment does not describe has no name to qualify
                // with; its records still answer unqualified names.
                let net = networks.entry(home.network).or_default();
                add_service(net, service, &home);
            }
        }
        let mut tasks = HashMap::new();
        let mut upstreams = HashMap::new();
        for task in &assignment.tasks {
            let nets: Vec<NetworkId> = if task.networks.is_empty() {
                assignment
                    .services
                    .iter()
                    .find(|s| s.id == task.service_id)
                    .filter(|s| !s.networks.is_empty())
                    .map_or_else(
                        || vec![INGRESS_ID],
                        |s| s.networks.iter().map(|n| n.network).collect(),
                    )
            } else {
                task.networks.iter().map(|n| n.network).collect()
            };
            let own: Vec<std::net::SocketAddr> = task
                .spec
                .dns
                .nameservers
                .iter()
                .map(|ip| std::net::SocketAddr::new(*ip, 53))
                .collect();
            for addr in std::iter::once(task.addr).chain(task.networks.iter().map(|n| n.addr)) {
                tasks.insert(addr, nets.clone());
                if !own.is_empty() {
                    upstreams.insert(addr, own.clone());
                }
            }
        }
        Self {
            tasks,
            networks,
            upstreams,
        }
    }

    /// The DNS servers of the task at `source`, if it has its own (`--dns`): the names
    /// the cluster does not have are forwarded to them instead of the node's.
    #[must_use]
    pub fn upstreams(&self, source: Ipv4Addr) -> Option<&[std::net::SocketAddr]> {
        self.upstreams.get(&source).map(Vec::as_slice)
    }

    /// Whether `addr` is one of the node's tasks' addresses (only they are answered).
    #[must_use]
    pub fn is_task(&self, addr: Ipv4Addr) -> bool {
        self.tasks.contains_key(&addr)
    }

    /// What `name` (lower case, no trailing dot) is for the task at `source`: the
    /// first of its networks that has it wins; `<name>.<network>` looks on that network
    /// only, if the task is on it.
    #[must_use]
    pub fn lookup(&self, source: Ipv4Addr, name: &str) -> Lookup<'_> {
        let Some(nets) = self.tasks.get(&source) else {
            return Lookup::Unknown;
        };
        let on = |net: &NetworkId| self.networks.get(net);
        if let Some(found) = nets.iter().filter_map(on).find_map(|n| n.names.get(name)) {
            return Lookup::Found(found);
        }
        for net in nets.iter().filter_map(on) {
            if let Some(found) = qualified(net, name) {
                return Lookup::Found(found);
            }
        }
        let anywhere = self
            .networks
            .values()
            .any(|n| n.names.contains_key(name) || qualified(n, name).is_some());
        if anywhere {
            Lookup::NotHere
        } else {
            Lookup::Unknown
        }
    }

    /// What task address `addr` is called, for the task at `source`.
    #[must_use]
    pub fn reverse(&self, source: Ipv4Addr, addr: Ipv4Addr) -> Reverse<'_> {
        let Some(nets) = self.tasks.get(&source) else {
            return Reverse::Unknown;
        };
        if let Some(name) = nets
            .iter()
            .filter_map(|n| self.networks.get(n))
            .find_map(|n| n.ptrs.get(&addr))
        {
            return Reverse::Found(name);
        }
        if self.networks.values().any(|n| n.ptrs.contains_key(&addr)) {
            Reverse::NotHere
        } else {
            Reverse::Unknown
        }
    }
}

/// `name` as `<x>.<network>` on `net`: `x`'s addresses there.
fn qualified<'a>(net: &'a NetRecords, name: &str) -> Option<&'a Addrs> {
    let x = name.strip_suffix(net.name.as_str())?.strip_suffix('.')?;
    (!net.name.is_empty() && !x.is_empty())
        .then(|| net.names.get(x))
        .flatten()
}

/// A service on one network: its VIP there and the names it answers to.
struct Home<'a> {
    network: NetworkId,
    vip: Option<Ipv4Addr>,
    names: Vec<&'a str>,
}

/// The networks `service` has names on.
fn homes(service: &ServiceRoutes) -> Vec<Home<'_>> {
    if service.networks.is_empty() {
        return vec![Home {
            network: INGRESS_ID,
            vip: service.vip,
            names: vec![service.name.as_str()],
        }];
    }
    service
        .networks
        .iter()
        .map(|n| Home {
            network: n.network,
            vip: n.vip,
            names: std::iter::once(service.name.as_str())
                .chain(n.aliases.iter().map(String::as_str))
                .collect(),
        })
        .collect()
}

/// Backend `b`'s address on `network` (its ingress address for a service on the default
/// network).
fn backend_addr(service: &ServiceRoutes, b: &Backend, network: NetworkId) -> Option<Ipv4Addr> {
    if service.networks.is_empty() {
        return (network == INGRESS_ID).then_some(b.addr);
    }
    b.networks
        .iter()
        .find(|n| n.network == network)
        .map(|n| n.addr)
}

fn add_service(net: &mut NetRecords, service: &ServiceRoutes, home: &Home<'_>) {
    let live: Vec<(&Backend, Ipv4Addr)> = service
        .backends
        .iter()
        .filter(|b| !b.draining)
        .filter_map(|b| Some((b, backend_addr(service, b, home.network)?)))
        .collect();
    let addrs: Vec<Ipv4Addr> = live.iter().map(|(_, a)| *a).collect();
    for name in &home.names {
        match home.vip {
            Some(vip) => net.add(name, &[vip], VIP_TTL),
            None => net.add(name, &addrs, TASK_TTL),
        }
        net.add(&format!("tasks.{name}"), &addrs, TASK_TTL);
    }
    for (b, addr) in live {
        let full = format!("{}.{:016x}", b.name, b.task);
        net.add(&b.name, &[addr], TASK_TTL);
        net.add(&full, &[addr], TASK_TTL);
        let ptr = if net.name.is_empty() {
            full
        } else {
            format!("{full}.{}", net.name)
        };
        net.ptrs.entry(addr).or_insert(ptr);
    }
}
