//! The standalone configuration file (TOML): schema, parsing and validation.
//!
//! Parsing ([`Config::from_toml`]) checks the syntax and the types; validation
//! ([`Config::validate`]) checks the meaning: names are unique, references resolve, keys do
//! not collide, sizes fit the dataplane. Validation is pure: the host's interfaces are passed
//! in as a [`HostInfo`], so it runs in unit tests without root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lb_common::Scheduler;
use lb_common::maps::{MAX_BACKENDS, MAX_ENDPOINTS, MAX_LIVE_SLOTS, MAX_SERVICES, MAX_SLOTS};
use lb_common::sched::SCHEDULER_NAMES;
use serde::Deserialize;

use crate::host::interfaces::HostInfo;

/// Default directory of pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mesh";
/// Default address of the metrics endpoint.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default VXLAN network identifier of the ingress network.
pub const DEFAULT_VNI: u32 = 4096;
/// Default idle timeout of UDP flows, seconds.
pub const DEFAULT_UDP_TIMEOUT_SECS: u32 = 120;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeSection,
    /// Dataplane settings.
    #[serde(default)]
    pub dataplane: DataplaneSection,
    /// Metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The tasks' resolver (managed node only).
    #[serde(default)]
    pub dns: DnsSection,
    /// The other nodes of the mesh.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Task addresses on the overlay, local or on a peer.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Load-balanced services.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// `[node]`: this node.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name; endpoints with `node = <this name>` are local.
    pub name: String,
    /// Interface carrying underlay traffic; the XDP program attaches here.
    pub underlay: String,
    /// Underlay address; default: the first IPv4 address of `underlay`.
    pub address: Option<Ipv4Addr>,
    /// Underlay MTU; default: the MTU of `underlay`.
    pub mtu: Option<u32>,
    /// VNI of the ingress network.
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// UDP port of VXLAN.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
}

/// How the XDP program attaches to the underlay interface.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode.
    #[default]
    Native,
    /// Generic (skb) mode, works on any interface, slower.
    Skb,
}

/// `[dataplane]`: settings that need a restart to change (except `udp_timeout_secs`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Directory under bpffs where maps and links are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Entries of the flow table (used when the table is created).
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Idle timeout of UDP flows, seconds.
    #[serde(default = "default_udp_timeout")]
    pub udp_timeout_secs: u32,
    /// XDP attach mode.
    #[serde(default)]
    pub xdp_mode: XdpModeConfig,
    /// Seconds between two sweeps of the flow table.
    #[serde(default = "default_sweep_interval")]
    pub flow_sweep_interval_secs: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        Self {
            pin_dir: default_pin_dir(),
            flow_table_size: default_flow_table_size(),
            udp_timeout_secs: default_udp_timeout(),
            xdp_mode: XdpModeConfig::default(),
            flow_sweep_interval_secs: default_sweep_interval(),
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address and port of the `/metrics` HTTP endpoint.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

/// `[dns]`: the resolver a managed node serves its tasks at `169.254.1.1:53`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Where names outside the cluster are forwarded, `IP` or `IP:PORT` (at most 3);
    /// empty: the nameservers of the node's `/etc/resolv.conf`.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
}

/// A DNS upstream server, `IP` or `IP:PORT` (port 53 by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::dns::resolv::parse_upstream(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[[peers]]`: another node of the mesh.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node name.
    pub name: String,
    /// The peer's underlay address.
    pub address: Ipv4Addr,
}

/// `[[endpoints]]`: a task address on the overlay.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique name, referenced by service backends.
    pub name: String,
    /// The task's overlay address.
    pub address: Ipv4Addr,
    /// Node that runs the task: this node's name or a peer's.
    pub node: String,
    /// Host side of the task's veth; required for local endpoints.
    pub iface: Option<String>,
    /// The task's MAC; default `02:42` followed by the address bytes.
    pub mac: Option<MacAddr>,
    /// VNI of the network the address is on; default `node.vni` (the ingress network).
    /// `0`: a routing-mesh-only address (published ports reach it, no east-west traffic
    /// to or from it).
    pub vni: Option<u32>,
}

/// IP protocol of a port mapping: the workspace's one `Protocol` (`tcp` or `udp` in the
/// file).
pub use mesh_api::spec::Protocol;

/// `[[services]]`: a load-balanced service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name (a metric label).
    pub name: String,
    /// Virtual IP the service answers on (its target ports), if any.
    pub vip: Option<Ipv4Addr>,
    /// Port mappings; each one is a dataplane service of its own.
    pub ports: Vec<PortConfig>,
    /// Backends, by endpoint name.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// VNI of the network of its VIP and backends; default `node.vni` (the ingress
    /// network). Every backend's endpoint must be on it. `0`: published ports balanced
    /// to routing-mesh-only addresses (no VIP then); tasks cannot open flows to it.
    pub vni: Option<u32>,
    /// How new flows choose a backend (IPVS's word): `rr` (default, weighted round
    /// robin), `maglev` (consistent hashing of the 5-tuple), `lc` (least connections,
    /// weighted) or `sh` (consistent hashing of the client address); IPVS's `wrr`, `wlc`
    /// and `mh` are accepted as `rr`, `lc` and `maglev`.
    #[serde(default, deserialize_with = "scheduler")]
    pub scheduler: Scheduler,
}

/// Deserializes a scheduler by name; an unknown one names the choices.
fn scheduler<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Scheduler, D::Error> {
    let name = String::deserialize(d)?;
    Scheduler::from_name(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown scheduler {name:?}: expected one of {SCHEDULER_NAMES}"
        ))
    })
}

/// A port mapping of a service.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Port published on every node's underlay address (the routing mesh), if any.
    pub published: Option<u16>,
    /// Port the tasks listen on (and the port of the VIP). `0`, on a VIP and unpublished:
    /// every port of the VIP, each to the same port of a backend (Swarm's VIPs).
    pub target: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortConfig {
    /// The metric label of the mapping: `8080:80/tcp` if published, else `80/tcp`.
    #[must_use]
    pub fn label(&self) -> String {
        match (self.published, self.target) {
            (Some(p), _) => format!("{p}:{}/{}", self.target, self.protocol),
            (None, 0) => format!("*/{}", self.protocol),
            (None, target) => format!("{target}/{}", self.protocol),
        }
    }
}

/// A backend of a service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name of an `[[endpoints]]` entry.
    pub endpoint: String,
    /// Relative weight, at least 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// A draining backend takes no new flows; its established flows go on.
    #[serde(default)]
    pub draining: bool,
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            if part.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_vni() -> u32 {
    DEFAULT_VNI
}
fn default_vxlan_port() -> u16 {
    lb_common::VXLAN_PORT
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_flow_table_size() -> u32 {
    lb_common::maps::DEFAULT_MAX_FLOWS
}
fn default_udp_timeout() -> u32 {
    DEFAULT_UDP_TIMEOUT_SECS
}
fn default_sweep_interval() -> u32 {
    5
}
fn default_metrics_listen() -> SocketAddr {
    DEFAULT_METRICS_LISTEN
        .parse()
        .expect("valid default address")
}
fn default_weight() -> u32 {
    1
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the schema.
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// Two items of one kind share a name.
    #[error("duplicate {kind} name {name:?}")]
    DuplicateName {
        /// `peer`, `endpoint` or `service`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An endpoint runs on a node that is neither this node nor a peer.
    #[error("endpoint {endpoint:?}: unknown node {node:?} (not this node and not a peer)")]
    UnknownNode {
        /// The endpoint.
        endpoint: String,
        /// The node it names.
        node: String,
    },
    /// A backend names an endpoint that does not exist.
    #[error("service {service:?}: unknown endpoint {endpoint:?}")]
    UnknownEndpoint {
        /// The service.
        service: String,
        /// The endpoint it names.
        endpoint: String,
    },
    /// A service lists an endpoint twice.
    #[error("service {service:?}: endpoint {endpoint:?} listed twice")]
    DuplicateBackend {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
    },
    /// Two port mappings would match the same packets.
    #[error("service {service:?}: {what} is already used by service {other:?}")]
    DuplicateServiceKey {
        /// The service.
        service: String,
        /// The service that has it first.
        other: String,
        /// What collides, e.g. `published port 8080/tcp`.
        what: String,
    },
    /// A backend weight of 0.
    #[error(
        "service {service:?}: backend {endpoint:?} has weight 0 (use draining = true to take it out)"
    )]
    ZeroWeight {
        /// The service.
        service: String,
        /// The endpoint.
        endpoint: String,
    },
    /// A local endpoint without `iface`.
    #[error("endpoint {endpoint:?} runs on this node but has no iface")]
    MissingIface {
        /// The endpoint.
        endpoint: String,
    },
    /// An interface that this host does not have.
    #[error("{what}: interface {iface:?} does not exist")]
    NoSuchInterface {
        /// Who names it.
        what: String,
        /// The interface.
        iface: String,
    },
    /// An address that cannot be used where it is.
    #[error("{what}: invalid address {addr}: {reason}")]
    BadAddress {
        /// Where it is.
        what: String,
        /// The address.
        addr: Ipv4Addr,
        /// Why not.
        reason: &'static str,
    },
    /// A value out of range.
    #[error("{what}: {reason}")]
    Invalid {
        /// Where it is.
        what: String,
        /// Why not.
        reason: String,
    },
    /// More items than the dataplane holds.
    #[error("too many {what}: {count} (the dataplane holds at most {max})")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many the configuration has.
        count: usize,
        /// The limit.
        max: u32,
    },
}

impl Config {
    /// Parses a configuration from TOML text (no validation).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] if the text is not TOML or does not fit the schema (unknown
    /// fields are errors).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Reads and parses a configuration file (no validation).
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Parse`] as
    /// [`Config::from_toml`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Whether `node` names this node.
    #[must_use]
    pub fn is_local(&self, node: &str) -> bool {
        node == self.node.name
    }

    /// The VNI of an endpoint's network (its own, or the ingress network's).
    #[must_use]
    pub fn endpoint_vni(&self, ep: &EndpointConfig) -> u32 {
        ep.vni.unwrap_or(self.node.vni)
    }

    /// The VNI of a service's network (its own, or the ingress network's).
    #[must_use]
    pub fn service_vni(&self, svc: &ServiceConfig) -> u32 {
        svc.vni.unwrap_or(self.node.vni)
    }

    /// Checks the configuration's meaning against the host's interfaces.
    ///
    /// # Errors
    /// The first problem found, naming the offending item.
    pub fn validate(&self, host: &HostInfo) -> Result<(), ConfigError> {
        self.validate_node(host)?;
        let peers = self.validate_peers()?;
        let endpoints = self.validate_endpoints(host, &peers)?;
        self.validate_services(&endpoints)
    }

    fn validate_node(&self, host: &HostInfo) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.name.is_empty() {
            return Err(invalid("node.name", "must not be empty"));
        }
        let Some(underlay) = host.interface(&node.underlay) else {
            return Err(ConfigError::NoSuchInterface {
                what: "node.underlay".into(),
                iface: node.underlay.clone(),
            });
        };
        match node.address {
            Some(addr) => check_unicast("node.address", addr)?,
            None if underlay.ipv4.is_empty() => {
                return Err(invalid(
                    "node.address",
                    format!(
                        "not set and interface {:?} has no IPv4 address",
                        node.underlay
                    ),
                ));
            }
            None => {}
        }
        if let Some(mtu) = node.mtu
            && !(576..=65535).contains(&mtu)
        {
            return Err(invalid("node.mtu", format!("{mtu} is not in 576..=65535")));
        }
        if node.vni == 0 || node.vni >= 1 << 24 {
            return Err(invalid(
                "node.vni",
                format!("{} is not in 1..16777216", node.vni),
            ));
        }
        if node.vxlan_port == 0 {
            return Err(invalid("node.vxlan_port", "must not be 0"));
        }
        let dp = &self.dataplane;
        if dp.flow_table_size == 0 {
            return Err(invalid("dataplane.flow_table_size", "must not be 0"));
        }
        if dp.udp_timeout_secs == 0 {
            return Err(invalid("dataplane.udp_timeout_secs", "must not be 0"));
        }
        if dp.flow_sweep_interval_secs == 0 {
            return Err(invalid(
                "dataplane.flow_sweep_interval_secs",
                "must not be 0",
            ));
        }
        if !dp.pin_dir.is_absolute() {
            return Err(invalid("dataplane.pin_dir", "must be an absolute path"));
        }
        Ok(())
    }

    fn validate_peers(&self) -> Result<BTreeSet<&str>, ConfigError> {
        let mut names = BTreeSet::new();
        let mut addrs = BTreeMap::new();
        for peer in &self.peers {
            let what = format!("peer {:?}", peer.name);
            if peer.name == self.node.name {
                return Err(invalid(&what, "has this node's name"));
            }
            if !names.insert(peer.name.as_str()) {
                return Err(dup("peer", &peer.name));
            }
            check_unicast(&what, peer.address)?;
            if Some(peer.address) == self.node.address {
                return Err(ConfigError::BadAddress {
                    what,
                    addr: peer.address,
                    reason: "is this node's address",
                });
            }
            if let Some(other) = addrs.insert(peer.address, &peer.name) {
                return Err(invalid(
                    &what,
                    format!("has the same address as peer {other:?}"),
                ));
            }
        }
        Ok(names)
    }

    fn validate_endpoints<'a>(
        &'a self,
        host: &HostInfo,
        peers: &BTreeSet<&str>,
    ) -> Result<BTreeMap<&'a str, u32>, ConfigError> {
        if self.endpoints.len() > MAX_ENDPOINTS as usize {
            return Err(ConfigError::TooMany {
                what: "endpoints",
                count: self.endpoints.len(),
                max: MAX_ENDPOINTS,
            });
        }
        let mut names = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for ep in &self.endpoints {
            let what = format!("endpoint {:?}", ep.name);
            let vni = self.endpoint_vni(ep);
            if names.insert(ep.name.as_str(), vni).is_some() {
                return Err(dup("endpoint", &ep.name));
            }
            check_vni(&what, vni)?;
            check_unicast(&what, ep.address)?;
            if let Some(other) = addrs.insert(ep.address, &ep.name) {
                return Err(invalid(
                    &what,
                    format!("has the same address as endpoint {other:?}"),
                ));
            }
            if self.is_local(&ep.node) {
                let Some(iface) = &ep.iface else {
                    return Err(ConfigError::MissingIface {
                        endpoint: ep.name.clone(),
                    });
                };
                if host.interface(iface).is_none() {
                    return Err(ConfigError::NoSuchInterface {
                        what,
                        iface: iface.clone(),
                    });
                }
                if *iface == self.node.underlay {
                    return Err(invalid(&what, "iface is the underlay interface"));
                }
            } else if !peers.contains(ep.node.as_str()) {
                return Err(ConfigError::UnknownNode {
                    endpoint: ep.name.clone(),
                    node: ep.node.clone(),
                });
            }
        }
        Ok(names)
    }

    fn validate_services(&self, endpoints: &BTreeMap<&str, u32>) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        // What each dataplane key is used by, to report collisions.
        let mut published: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
        let mut vips: BTreeMap<(Ipv4Addr, u16, Protocol), &str> = BTreeMap::new();
        let mut mappings = 0usize;
        let mut backends = 0usize;
        let mut live_slots = 0usize;
        for svc in &self.services {
            let what = format!("service {:?}", svc.name);
            if !names.insert(svc.name.as_str()) {
                return Err(dup("service", &svc.name));
            }
            if svc.ports.is_empty() {
                return Err(invalid(&what, "has no ports"));
            }
            let vni = self.service_vni(svc);
            check_vni(&what, vni)?;
            if let Some(vip) = svc.vip {
                if vni == lb_common::MESH_ONLY_VNI {
                    return Err(invalid(
                        &what,
                        "has a VIP on vni 0 (routing-mesh-only), which no task may reach",
                    ));
                }
                check_unicast(&what, vip)?;
                if self.endpoints.iter().any(|e| e.address == vip) {
                    return Err(ConfigError::BadAddress {
                        what,
                        addr: vip,
                        reason: "is an endpoint's address",
                    });
                }
                // The node's own address takes published ports (looked up first there).
                if Some(vip) == self.node.address {
                    return Err(ConfigError::BadAddress {
                        what,
                        addr: vip,
                        reason: "is this node's address (publish the port instead)",
                    });
                }
            }
            let mut seen_targets = BTreeSet::new();
            for port in &svc.ports {
                if port.published == Some(0)
                    || (port.target == 0 && (port.published.is_some() || svc.vip.is_none()))
                {
                    return Err(invalid(
                        &what,
                        "port 0 is not a valid port (target = 0 means every port, on a VIP \
                         and unpublished only)",
                    ));
                }
                if port.published.is_none() && svc.vip.is_none() {
                    return Err(invalid(
                        &what,
                        format!("port {} is neither published nor on a VIP", port.label()),
                    ));
                }
                if let Some(p) = port.published
                    && let Some(other) = published.insert((p, port.protocol), &svc.name)
                {
                    return Err(ConfigError::DuplicateServiceKey {
                        service: svc.name.clone(),
                        other: other.to_owned(),
                        what: format!("published port {p}/{}", port.protocol),
                    });
                }
                if let Some(vip) = svc.vip {
                    if !seen_targets.insert((port.target, port.protocol)) {
                        return Err(invalid(
                            &what,
                            format!("target {}/{} twice on the VIP", port.target, port.protocol),
                        ));
                    }
                    if let Some(other) = vips.insert((vip, port.target, port.protocol), &svc.name) {
                        return Err(ConfigError::DuplicateServiceKey {
                            service: svc.name.clone(),
                            other: other.to_owned(),
                            what: format!("{vip}:{}/{}", port.target, port.protocol),
                        });
                    }
                }
            }
            mappings += svc.ports.len();
            let mut listed = BTreeSet::new();
            let mut active = 0usize;
            let mut active_weights = Vec::new();
            for b in &svc.backends {
                let Some(ep_vni) = endpoints.get(b.endpoint.as_str()) else {
                    return Err(ConfigError::UnknownEndpoint {
                        service: svc.name.clone(),
                        endpoint: b.endpoint.clone(),
                    });
                };
                if *ep_vni != vni {
                    return Err(invalid(
                        &what,
                        format!(
                            "is on vni {vni}, its backend {:?} on vni {ep_vni}: a service's \
                             backends are on its network",
                            b.endpoint
                        ),
                    ));
                }
                if !listed.insert(b.endpoint.as_str()) {
                    return Err(ConfigError::DuplicateBackend {
                        service: svc.name.clone(),
                        endpoint: b.endpoint.clone(),
                    });
                }
                if b.weight == 0 {
                    return Err(ConfigError::ZeroWeight {
                        service: svc.name.clone(),
                        endpoint: b.endpoint.clone(),
                    });
                }
                if !b.draining {
                    active += 1;
                    active_weights.push(b.weight);
                }
            }
            let Some(table) = crate::dataplane::maglev::table_len(svc.scheduler, &active_weights)
            else {
                let max = if svc.scheduler.is_hashing() {
                    lb_common::sched::MAGLEV_SIZES[1]
                } else {
                    MAX_SLOTS
                };
                return Err(invalid(
                    &what,
                    format!(
                        "{active} active backends, more than the {max} slots of a {} table",
                        svc.scheduler.name()
                    ),
                ));
            };
            backends += svc.backends.len() * svc.ports.len();
            live_slots += table as usize * svc.ports.len();
        }
        if live_slots > MAX_LIVE_SLOTS as usize {
            return Err(ConfigError::TooMany {
                what: "backend slots (weights expanded, Maglev tables, over all services)",
                count: live_slots,
                max: MAX_LIVE_SLOTS,
            });
        }
        if mappings > MAX_SERVICES as usize {
            return Err(ConfigError::TooMany {
                what: "service port mappings",
                count: mappings,
                max: MAX_SERVICES,
            });
        }
        if backends > MAX_BACKENDS as usize {
            return Err(ConfigError::TooMany {
                what: "backends (backends x ports, over all services)",
                count: backends,
                max: MAX_BACKENDS,
            });
        }
        Ok(())
    }
}

fn invalid(what: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

fn dup(kind: &'static str, name: &str) -> ConfigError {
    ConfigError::DuplicateName {
        kind,
        name: name.to_owned(),
    }
}

/// A VNI fits VXLAN's 24 bits (0 is the routing-mesh-only network).
fn check_vni(what: &str, vni: u32) -> Result<(), ConfigError> {
    if vni >= 1 << 24 {
        return Err(invalid(what, format!("vni {vni} is not in 0..16777216")));
    }
    Ok(())
}

fn check_unicast(what: &str, addr: Ipv4Addr) -> Result<(), ConfigError> {
    let reason = if addr.is_unspecified() {
        "unspecified (0.0.0.0)"
    } else if addr.is_broadcast() {
        "broadcast"
    } else if addr.is_multicast() {
        "multicast"
    } else if addr.is_loopback() {
        "loopback"
    } else {
        return Ok(());
    };
    Err(ConfigError::BadAddress {
        what: what.to_owned(),
        addr,
        reason,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::interfaces::Interface;

    pub(crate) const EXAMPLE: &str = r#"
[node]
name = "node1"
underlay = "eth0"

[[peers]]
name = "node2"
address = "10.99.0.12"

[[endpoints]]
name = "web.1"
address = "10.255.0.11"
node = "node1"
iface = "vweb1"

[[endpoints]]
name = "web.2"
address = "10.255.0.12"
node = "node2"

[[services]]
name = "web"
vip = "10.255.255.10"
ports = [{ published = 8080, target = 80, protocol = "tcp" }]
backends = [{ endpoint = "web.1", weight = 1 }, { endpoint = "web.2", weight = 2, draining = false }]
"#;

    pub(crate) fn host() -> HostInfo {
        let mut h = HostInfo::default();
        h.insert(Interface {
            name: "eth0".into(),
            index: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            ipv4: vec![Ipv4Addr::new(10, 99, 0, 11)],
        });
        h.insert(Interface {
            name: "vweb1".into(),
            index: 7,
            mac: [2, 0, 0, 0, 0, 7],
            mtu: 1450,
            ipv4: vec![],
        });
        h
    }

    fn check(edit: impl FnOnce(&mut Config)) -> Result<(), ConfigError> {
        let mut c = Config::from_toml(EXAMPLE).unwrap();
        edit(&mut c);
        c.validate(&host())
    }

    #[test]
    fn example_is_valid_with_defaults() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        c.validate(&host()).unwrap();
        assert_eq!(c.node.vni, 4096);
        assert_eq!(c.node.vxlan_port, 4789);
        assert_eq!(c.dataplane.pin_dir, PathBuf::from("/sys/fs/bpf/mesh"));
        assert_eq!(c.dataplane.xdp_mode, XdpModeConfig::Native);
        assert_eq!(c.metrics.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(c.services[0].ports[0].label(), "8080:80/tcp");
        assert_eq!(c.services[0].backends[1].weight, 2);
    }

    #[test]
    fn vnis_default_to_the_nodes_and_a_user_network_is_given_whole() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.endpoint_vni(&c.endpoints[0]), 4096);
        assert_eq!(c.service_vni(&c.services[0]), 4096);
        // Both endpoints and the service moved to a user network's VNI: valid.
        let text = EXAMPLE
            .replace("iface = \"vweb1\"", "iface = \"vweb1\"\nvni = 4097")
            .replace("node = \"node2\"\n", "node = \"node2\"\nvni = 4097\n")
            .replace("name = \"web\"", "name = \"web\"\nvni = 4097");
        let c = Config::from_toml(&text).unwrap();
        c.validate(&host()).unwrap();
        assert_eq!(
            c.endpoints
                .iter()
                .map(|e| c.endpoint_vni(e))
                .collect::<Vec<_>>(),
            [4097, 4097]
        );
        assert_eq!(c.service_vni(&c.services[0]), 4097);
    }

    #[test]
    fn deploy_example_is_valid() {
        let c = Config::from_toml(include_str!("../../deploy/agent.example.toml")).unwrap();
        c.validate(&host()).unwrap();
        assert_eq!(c.services[0].ports[1].label(), "53/udp");
    }

    #[test]
    fn dns_upstreams_parse_with_an_optional_port() {
        let c = Config::from_toml(&format!(
            "{EXAMPLE}\n[dns]\nupstream = [\"10.0.0.2\", \"10.0.0.3:5353\"]\n"
        ))
        .unwrap();
        assert_eq!(
            c.dns.upstream,
            [
                Upstream("10.0.0.2:53".parse().unwrap()),
                Upstream("10.0.0.3:5353".parse().unwrap())
            ]
        );
        assert!(Config::from_toml(EXAMPLE).unwrap().dns.upstream.is_empty());
        let err = Config::from_toml(&format!("{EXAMPLE}\n[dns]\nupstream = [\"dns.example\"]\n"))
            .unwrap_err();
        assert!(err.to_string().contains("dns.example"), "{err}");
        let err = Config::from_toml(&format!("{EXAMPLE}\n[dns]\nupstreams = []\n")).unwrap_err();
        assert!(err.to_string().contains("upstreams"), "{err}");
    }

    #[test]
    fn schedulers_by_ipvs_names() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.services[0].scheduler, Scheduler::RoundRobin, "default");
        for (name, want) in [
            ("maglev", Scheduler::Maglev),
            ("mh", Scheduler::Maglev),
            ("sh", Scheduler::SourceHash),
            ("wlc", Scheduler::LeastConn),
            ("wrr", Scheduler::RoundRobin),
        ] {
            let text = EXAMPLE.replace("vip = ", &format!("scheduler = \"{name}\"\nvip = "));
            let c = Config::from_toml(&text).unwrap();
            assert_eq!(c.services[0].scheduler, want, "{name}");
            c.validate(&host()).unwrap();
        }
        let err = Config::from_toml(&EXAMPLE.replace("vip = ", "scheduler = \"lblc\"\nvip = "))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown scheduler \"lblc\": expected one of rr, maglev, lc, sh"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml(&EXAMPLE.replace("underlay =", "underlya =")).unwrap_err();
        assert!(err.to_string().contains("underlya"), "{err}");
        let err = Config::from_toml(&format!("{EXAMPLE}\n[dataplane]\nxdp_mode = \"fast\"\n"))
            .unwrap_err();
        assert!(err.to_string().contains("fast"), "{err}");
    }

    #[test]
    fn mac_addresses_parse() {
        assert_eq!(
            "02:42:0a:ff:00:0b".parse::<MacAddr>().unwrap().0,
            [2, 0x42, 10, 255, 0, 11]
        );
        assert!("02:42:0a:ff:00".parse::<MacAddr>().is_err());
        assert!("02:42:0a:ff:00:0b:01".parse::<MacAddr>().is_err());
        assert!("zz:42:0a:ff:00:0b".parse::<MacAddr>().is_err());
        assert_eq!(
            MacAddr([2, 0x42, 10, 255, 0, 11]).to_string(),
            "02:42:0a:ff:00:0b"
        );
    }

    #[test]
    fn errors_name_the_offending_item() {
        type Edit = Box<dyn FnOnce(&mut Config)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.endpoints[1].node = "node9".into()), "node9"),
            (
                Box::new(|c| c.services[0].backends[0].endpoint = "nope".into()),
                "nope",
            ),
            (
                Box::new(|c| c.services[0].backends[0].weight = 0),
                "weight 0",
            ),
            (Box::new(|c| c.endpoints[0].iface = None), "has no iface"),
            (
                Box::new(|c| c.endpoints[0].iface = Some("veth9".into())),
                "veth9",
            ),
            (Box::new(|c| c.node.underlay = "eth9".into()), "eth9"),
            (
                Box::new(|c| c.endpoints[1].name = "web.1".into()),
                "duplicate endpoint",
            ),
            (
                Box::new(|c| c.endpoints[1].address = c.endpoints[0].address),
                "same address",
            ),
            (
                Box::new(|c| c.peers.push(c.peers[0].clone())),
                "duplicate peer",
            ),
            (
                Box::new(|c| c.endpoints[0].address = Ipv4Addr::UNSPECIFIED),
                "0.0.0.0",
            ),
            (
                Box::new(|c| c.services[0].vip = Some(Ipv4Addr::new(224, 0, 0, 1))),
                "multicast",
            ),
            (
                Box::new(|c| {
                    c.node.address = Some(Ipv4Addr::new(10, 99, 0, 11));
                    c.services[0].vip = c.node.address;
                }),
                "is this node's address (publish the port instead)",
            ),
            (Box::new(|c| c.node.vni = 1 << 24), "node.vni"),
            (
                Box::new(|c| c.endpoints[0].vni = Some(1 << 24)),
                "vni 16777216 is not in 0..16777216",
            ),
            (
                Box::new(|c| c.endpoints[0].vni = Some(4097)),
                "its backend \"web.1\" on vni 4097",
            ),
            (
                Box::new(|c| {
                    c.services[0].vni = Some(0);
                    for e in &mut c.endpoints {
                        e.vni = Some(0);
                    }
                }),
                "has a VIP on vni 0",
            ),
            (
                Box::new(|c| {
                    let b = c.services[0].backends[0].clone();
                    c.services[0].backends.push(b);
                }),
                "listed twice",
            ),
            (
                Box::new(|c| {
                    let mut s = c.services[0].clone();
                    s.name = "web2".into();
                    s.vip = None;
                    c.services.push(s);
                }),
                "published port 8080/tcp is already used by service \"web\"",
            ),
            (
                Box::new(|c| {
                    let mut s = c.services[0].clone();
                    s.name = "web2".into();
                    s.ports[0].published = None;
                    c.services.push(s);
                }),
                "10.255.255.10:80/tcp is already used",
            ),
            (
                Box::new(|c| {
                    let s = c.services[0].clone();
                    c.services.push(s);
                }),
                "duplicate service",
            ),
            (
                Box::new(|c| {
                    c.services[0].vip = None;
                    c.services[0].ports[0].published = None;
                }),
                "neither published nor on a VIP",
            ),
        ];
        for (edit, needle) in cases {
            let err = check(edit).expect_err(needle);
            assert!(
                err.to_string().contains(needle),
                "{err} does not contain {needle}"
            );
        }
    }

    #[test]
    fn target_zero_means_every_port_of_a_vip_and_nothing_else() {
        check(|c| {
            let mut s = c.services[0].clone();
            s.name = "web/vip".into();
            s.ports[0].published = None;
            s.ports[0].target = 0;
            c.services.push(s);
        })
        .unwrap();
        for edit in [
            (|c: &mut Config| c.services[0].ports[0].target = 0) as fn(&mut Config),
            |c| {
                c.services[0].vip = None;
                c.services[0].ports[0].published = None;
                c.services[0].ports[0].target = 0;
            },
            |c| c.services[0].ports[0].published = Some(0),
        ] {
            let err = check(edit).unwrap_err().to_string();
            assert!(err.contains("port 0 is not a valid port"), "{err}");
        }
    }

    #[test]
    fn udp_and_tcp_may_share_a_port() {
        check(|c| {
            let mut s = c.services[0].clone();
            s.name = "dns".into();
            s.vip = None;
            s.ports[0].protocol = Protocol::Udp;
            c.services.push(s);
        })
        .unwrap();
    }

    #[test]
    fn too_many_active_backends_for_the_slots() {
        let err = check(|c| {
            c.endpoints.clear();
            c.services[0].backends.clear();
            for i in 0..=MAX_SLOTS {
                let name = format!("t{i}");
                c.endpoints.push(EndpointConfig {
                    name: name.clone(),
                    address: Ipv4Addr::from(0x0a01_0000 + i),
                    node: "node2".into(),
                    iface: None,
                    mac: None,
                    vni: None,
                });
                c.services[0].backends.push(BackendConfig {
                    endpoint: name,
                    weight: 1,
                    draining: false,
                });
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("active backends"), "{err}");
    }

    #[test]
    fn weights_that_would_fill_more_than_half_the_slot_pool() {
        // Weights 1 and MAX_SLOTS - 1 fill a whole table; 129 such services take
        // 129 x 4096 slots, more than the half of the pool live tables may hold.
        let tables = MAX_LIVE_SLOTS / MAX_SLOTS + 1;
        let err = check(|c| {
            c.endpoints.truncate(2);
            let template = c.services[0].clone();
            c.services.clear();
            for i in 0..tables {
                let mut s = template.clone();
                s.name = format!("s{i}");
                s.vip = None;
                s.ports.truncate(1);
                s.ports[0].published = Some(10_000 + u16::try_from(i).unwrap());
                s.backends = c
                    .endpoints
                    .iter()
                    .zip([1, MAX_SLOTS - 1])
                    .map(|(e, weight)| BackendConfig {
                        endpoint: e.name.clone(),
                        weight,
                        draining: false,
                    })
                    .collect();
                c.services.push(s);
            }
        })
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "backend slots (weights expanded, Maglev tables, over all services): {}",
                tables * MAX_SLOTS
            )),
            "{err}"
        );
    }
}

/// Property tests of the parser: no input makes it panic. `cargo test` runs 256 cases
/// each; `cargo xtask fuzz parsers` runs them with many more (`PROPTEST_CASES`).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::Config;
    use super::tests::{EXAMPLE, host};

    /// The example configurations with `edits` applied (a byte set at an offset, or
    /// the text cut there), so most inputs are nearly valid TOML.
    fn edited(edits: &[(usize, u8, bool)]) -> Vec<String> {
        [EXAMPLE, include_str!("../../deploy/agent.example.toml")]
            .iter()
            .map(|text| {
                let mut bytes = text.as_bytes().to_vec();
                for &(at, byte, cut) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = at % bytes.len();
                    if cut {
                        bytes.truncate(at);
                    } else {
                        bytes[at] = byte;
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect()
    }

    proptest! {
        #[test]
        fn fuzz_config_parser_never_panics_on_any_text(text in ".{0,2000}") {
            if let Ok(config) = Config::from_toml(&text) {
                let _ = config.validate(&host());
            }
        }

        #[test]
        fn fuzz_config_parser_never_panics_on_edited_configs(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::bool::weighted(0.05)), 1..8)
        ) {
            for text in edited(&edits) {
                if let Ok(config) = Config::from_toml(&text) {
                    let _ = config.validate(&host());
                }
            }
        }
    }
}
