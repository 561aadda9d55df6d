//! The networks tasks are attached to: the built-in `ingress` overlay, which carries the
//! routing mesh and is the east-west network of services given no `--network`, and the
//! user's overlay networks (`meshctl network create`), each with its own subnet and VNI.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// A network's identity, written as 16 hex digits like node and service IDs.
pub type NetworkId = u64;

/// The built-in network's name.
pub const INGRESS_NAME: &str = "ingress";

/// The built-in network's ID (`network ls` shows it like any other): "ingress\0" in
/// ASCII, so that it is the same in every cluster and no fresh ID can be it.
pub const INGRESS_ID: NetworkId = 0x696e_6772_6573_7300;

/// The only driver: a VXLAN overlay across the cluster's nodes.
pub const OVERLAY_DRIVER: &str = "overlay";

/// Names `network create` refuses: docker's predefined networks.
pub const PREDEFINED_NAMES: [&str; 4] = [INGRESS_NAME, "bridge", "host", "none"];

/// The longest network name.
pub const MAX_NETWORK_NAME_LEN: usize = 63;

/// Everything a user says about a network (`meshctl network create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// `overlay`, the only driver.
    pub driver: String,
    /// The user's subnet (`--subnet`); `None`: a /24 from the default pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Network>,
    /// The user's gateway (`--gateway`); `None`: the subnet's first host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Kept for docker's CLI (`--attachable`): standalone containers could join it.
    #[serde(default)]
    pub attachable: bool,
    /// No route out of the cluster from this network's interfaces (`--internal`).
    #[serde(default)]
    pub internal: bool,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// An overlay network called `name`, everything else at docker's defaults.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            driver: OVERLAY_DRIVER.to_string(),
            subnet: None,
            gateway: None,
            attachable: false,
            internal: false,
            labels: BTreeMap::new(),
        }
    }

    /// Checks what does not depend on other networks: the name, the driver, and a
    /// gateway given without a subnet. Overlaps are the allocator's to find.
    ///
    /// # Errors
    /// The first problem, worded for the user.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_network_name(&self.name)?;
        if self.driver != OVERLAY_DRIVER {
            return Err(crate::spec::invalid(format!(
                "invalid driver {:?}: only \"{OVERLAY_DRIVER}\" is supported",
                self.driver
            )));
        }
        if self.gateway.is_some() && self.subnet.is_none() {
            return Err(crate::spec::invalid("--gateway needs --subnet"));
        }
        Ok(())
    }
}

/// Checks a network name: docker's rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most
/// [`MAX_NETWORK_NAME_LEN`] characters, and not 16 hex digits (which would read as an ID).
///
/// # Errors
/// Why it is refused.
pub fn validate_network_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NETWORK_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(crate::spec::invalid(format!(
            "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at \
             most {MAX_NETWORK_NAME_LEN} characters"
        )));
    }
    if name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(crate::spec::invalid(format!(
            "invalid network name {name:?}: it would read as a network ID"
        )));
    }
    Ok(())
}

/// A user network as the managers keep it: its spec and what the allocator gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Identity.
    pub id: NetworkId,
    /// What the user asked for.
    pub spec: NetworkSpec,
    /// Its subnet (the user's or the pool's).
    pub subnet: Ipv4Network,
    /// Its gateway address (reserved: no task or VIP gets it).
    pub gateway: Ipv4Addr,
    /// The VXLAN network identifier its traffic carries between nodes.
    pub vni: u32,
    /// Host offset the next allocation starts looking at.
    pub cursor: u32,
    /// Ms since the epoch.
    pub created_at_ms: u64,
}

/// An address on a user network: a task's interface, or a service's VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkAddr {
    /// The network.
    pub network: NetworkId,
    /// The address, in the network's subnet.
    pub addr: Ipv4Addr,
}

/// The built-in `ingress` overlay network: routing-mesh traffic, and every
/// task's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressNetwork {
    /// The network address.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Host offset the next allocation starts looking at.
    pub cursor: u32,
}

impl Default for IngressNetwork {
    fn default() -> Self {
        Self {
            subnet: Ipv4Addr::new(10, 255, 0, 0),
            prefix: 16,
            vni: 4096,
            cursor: 1,
        }
    }
}

impl IngressNetwork {
    /// Usable host offsets: the network and broadcast addresses excluded.
    #[must_use]
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))).saturating_sub(2)
    }

    /// `10.255.0.0/16`.
    #[must_use]
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
    }
}

/// A network as the operator's API shows it (`network ls`, `network inspect`): the
/// ingress network or a user network, with the services and tasks attached to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Identity ([`INGRESS_ID`] for ingress).
    pub id: NetworkId,
    /// Its name.
    pub name: String,
    /// `overlay`.
    pub driver: String,
    /// Its subnet.
    pub subnet: Ipv4Network,
    /// Its gateway (`None` for ingress, which has none).
    pub gateway: Option<Ipv4Addr>,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// The built-in routing-mesh network.
    pub ingress: bool,
    /// `--internal`.
    pub internal: bool,
    /// `--attachable`.
    pub attachable: bool,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Ms since the epoch (0 for ingress).
    pub created_at_ms: u64,
    /// The services reached on it, by name order.
    pub services: Vec<AttachedService>,
    /// The tasks that have an address on it and have not ended.
    pub tasks: Vec<AttachedTask>,
}

/// A service on a network (`network inspect`'s `Services`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedService {
    /// The service's ID.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its VIP there (none in `dnsrr` mode).
    pub vip: Option<Ipv4Addr>,
    /// Its aliases there.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A task's address on a network (`network inspect`'s `Containers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedTask {
    /// The task's ID.
    pub id: u64,
    /// `api.1`.
    pub name: String,
    /// Its service's name.
    pub service: String,
    /// Its address there.
    pub addr: Ipv4Addr,
}
