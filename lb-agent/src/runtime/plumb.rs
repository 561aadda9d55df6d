//! A task's network: the veth pair between the agent's namespace and the task's, its
//! address, gateway and routes. Shared by every runtime (process and docker).
//!
//! Layout (the same as the test harness wires by hand, see `tests/src/topology.rs`):
//!
//! - host side `mt<13 hex digits of the task ID>` in the agent's namespace, MAC
//!   `02:fe` + the task's address, up, with a route `ADDR/32 dev mt… scope link`;
//! - task side `eth0` in the task's namespace, MAC [`lb_common::service::task_mac`]
//!   (`02:42` + address), `ADDR/32`, up, a route to the link-local gateway
//!   [`GATEWAY`] on the link, the default route through it, and a permanent neighbour
//!   entry for the gateway with the host side's MAC (nobody answers ARP for it: the
//!   dataplane's TC program handles what the task sends);
//! - both ends get the task's MTU; `lo` is up in the task's namespace;
//! - for each user network the task joins, in order, another veth alike: host side
//!   `m<n>` + the same 13 hex digits (`n` from 1), task side `eth<n>` with the task's
//!   address on that network (`/32`), a route to the network's subnet `via 169.254.1.1
//!   dev eth<n> onlink src ADDR`, and the same permanent neighbour entry for the
//!   gateway on that interface; the host side gets `ADDR/32 dev m<n>…` and, from the
//!   agent, the same TC program as `eth0`'s.
//!
//! The dataplane redirects frames into the veth from XDP (`XDP_REDIRECT`). The veth
//! only receives such frames when its receiving end (the task side) has NAPI on, which
//! takes GRO on or an XDP program attached there. We turn GRO on (`ETHTOOL_SGRO`, the
//! ioctl behind `ethtool -K DEV gro on`) while the task side still is in the agent's
//! namespace under a temporary name, then move it into the task's namespace and rename
//! it `eth0` in the same request: features survive the move, and the kernel enables NAPI
//! when the device comes up. The ioctl is the one `unsafe` call here; the alternative,
//! ethtool's generic netlink family, would need a hand-written genetlink codec for a
//! single bit.
//!
//! Requests inside the task's namespace go through a netlink socket created there (see
//! [`crate::runtime::netns::run_in`]). Deleting the host side removes the pair and the
//! host route with it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::TryStreamExt as _;
use mesh_api::task::TaskId;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::RouteScope;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::debug;

use crate::runtime::netns;
use crate::runtime::task::{Started, TaskConfig};

/// The tasks' link-local gateway (answered for by the host side's MAC).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The prefix of host-side interface names.
pub const HOST_PREFIX: &str = "mt";

/// The name of the task side, inside the task's namespace.
pub const TASK_IFACE: &str = "eth0";

/// Failures of plumbing.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The step.
        what: String,
        /// The cause.
        source: rtnetlink::Error,
    },
    /// A system call or namespace operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbError {
    let what = what.into();
    move |source| PlumbError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlumbError {
    let what = what.into();
    move |source| PlumbError::Io { what, source }
}

/// The most user networks a task's interfaces are named for (`eth1` to `eth9`): at
/// least `mesh_api::spec::MAX_NETWORKS`.
pub const MAX_TASK_NETWORKS: usize = 9;

// Every task a service may have gets names for all its networks.
const _: () = assert!(MAX_TASK_NETWORKS >= mesh_api::spec::MAX_NETWORKS);

/// The bits of a task ID its interface names carry (13 hex digits).
const ID_MASK: u64 = 0x000f_ffff_ffff_ffff;

/// The host-side interface name of task `id`'s `eth0` (15 characters at most).
#[must_use]
pub fn host_iface(id: TaskId) -> String {
    format!("{HOST_PREFIX}{:013x}", id & ID_MASK)
}

/// The host-side interface name of task `id`'s `eth<n>` (its `n`-th user network, from
/// 1): `m<n>` and the same 13 hex digits; `None` past [`MAX_TASK_NETWORKS`].
#[must_use]
pub fn network_host_iface(id: TaskId, n: usize) -> Option<String> {
    (1..=MAX_TASK_NETWORKS)
        .contains(&n)
        .then(|| format!("m{n}{:013x}", id & ID_MASK))
}

/// The temporary name of the task side of `eth<n>` while it is in the agent's namespace.
fn temp_iface(id: TaskId, n: usize) -> String {
    if n == 0 {
        format!("mp{:013x}", id & ID_MASK)
    } else {
        format!("n{n}{:013x}", id & ID_MASK)
    }
}

/// The two-character prefix and the task ID bits ([`ID_MASK`]) of a name this module
/// gives an interface in the agent's namespace, `None` for other names.
fn split_iface(name: &str) -> Option<([u8; 2], u64)> {
    let b = name.as_bytes();
    if b.len() != 15 || !b[2..].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let prefix = [b[0], b[1]];
    let numbered = (b'1'..=b'9').contains(&b[1]);
    let ours = matches!(&prefix, b"mt" | b"mp") || (matches!(b[0], b'm' | b'n') && numbered);
    ours.then(|| {
        u64::from_str_radix(&name[2..], 16)
            .ok()
            .map(|id| (prefix, id))
    })?
}

/// The task ID bits in any name this module gives an interface in the agent's
/// namespace (host sides, and task sides under their temporary names).
fn task_of_iface(name: &str) -> Option<u64> {
    split_iface(name).map(|(_, id)| id)
}

/// Whether `name` is a host-side name [`host_iface`] or [`network_host_iface`] makes.
#[must_use]
pub fn is_host_iface(name: &str) -> bool {
    split_iface(name).is_some_and(|(p, _)| p[0] == b'm' && p[1] != b'p')
}

/// The bits of a task's ID that name its host-side interfaces: the owner of a host-side
/// name `n` is every task `id` with `id_bits(id) == host_iface_owner(n)`.
#[must_use]
pub const fn id_bits(id: TaskId) -> u64 {
    id & ID_MASK
}

/// The [`id_bits`] of the task a host-side interface name belongs to, `None` if `name`
/// is no host-side name.
#[must_use]
pub fn host_iface_owner(name: &str) -> Option<u64> {
    is_host_iface(name).then(|| task_of_iface(name))?
}

/// The host side's MAC for a task address: `02:fe` + the address.
#[must_use]
pub fn host_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0xfe, o[0], o[1], o[2], o[3]]
}

/// An rtnetlink connection; its background task ends when the handle is dropped.
#[derive(Debug)]
pub struct Netlink {
    /// The request handle.
    pub handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
    /// Held through a dump: the kernel runs one dump at a time per socket and refuses
    /// another meanwhile (`EBUSY`).
    dumping: tokio::sync::Mutex<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Netlink {
    /// A connection in the calling thread's (the agent's) namespace.
    ///
    /// # Errors
    /// If the socket cannot be opened.
    pub fn here() -> Result<Self, PlumbError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(io("open a netlink socket"))?;
        Ok(Self {
            handle,
            conn: tokio::spawn(conn),
            dumping: tokio::sync::Mutex::new(()),
        })
    }

    /// A connection whose socket lives in the namespace at `ns`.
    ///
    /// # Errors
    /// If the namespace cannot be entered or the socket opened.
    pub async fn in_netns(ns: &Path) -> Result<Self, PlumbError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = netns::run_in(ns, move || {
            // The socket registers with this runtime's reactor.
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .await
        .map_err(io(format!("netlink in {}", ns.display())))?;
        Ok(Self {
            handle,
            conn: tokio::spawn(conn),
            dumping: tokio::sync::Mutex::new(()),
        })
    }

    /// The index of the interface `name`, `None` if there is none.
    ///
    /// # Errors
    /// If the request fails otherwise.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, PlumbError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("look up {name}"))(e)),
        }
    }

    /// The names and indexes of the interfaces.
    ///
    /// # Errors
    /// If the dump fails.
    pub async fn links(&self) -> Result<Vec<(String, u32)>, PlumbError> {
        let _one_at_a_time = self.dumping.lock().await;
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl("list interfaces"))? {
            for attr in &msg.attributes {
                if let LinkAttribute::IfName(n) = attr {
                    out.push((n.clone(), msg.header.index));
                }
            }
        }
        Ok(out)
    }

    /// Deletes the interface `name` if it exists; whether it did.
    ///
    /// # Errors
    /// If the deletion fails.
    pub async fn delete_link(&self, name: &str) -> Result<bool, PlumbError> {
        let Some(index) = self.index_of(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(nl(format!("delete {name}"))(e)),
        }
    }
}

/// Turns GRO on for `iface` (in the calling thread's namespace) with the `ETHTOOL_SGRO`
/// ioctl, which is what gives a veth NAPI (see the module docs).
#[allow(unsafe_code)]
fn set_gro(iface: &str) -> std::io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    // SAFETY: an all-zero ifreq is valid (a byte array and a union of plain data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other(format!("{iface}: name too long")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer to `value`)
    // and reads/writes `value`, an `ethtool_value` laid out as the kernel's; both outlive
    // the call, and the socket is a valid open descriptor.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Plumbs `task` into the network namespace at `ns` (`/run/netns/NAME` or
/// `/proc/PID/ns/net`): `eth0` on ingress at [`TaskConfig::addr`], then one veth per
/// network of [`TaskConfig::networks`] (`eth1`, `eth2`, ...), all of MTU
/// [`TaskConfig::mtu`]. Stale host sides of the same task are replaced. On failure, what
/// was created is removed.
///
/// # Errors
/// If a step fails.
pub async fn plumb(host: &Netlink, task: &TaskConfig, ns: &Path) -> Result<Started, PlumbError> {
    unplumb(host, task.id).await?;
    match plumb_all(host, task, ns).await {
        Ok(started) => Ok(started),
        Err(e) => {
            if let Err(undo) = unplumb(host, task.id).await {
                debug!(task = format!("{:016x}", task.id), error = %undo, "undoing a failed plumbing");
            }
            Err(e)
        }
    }
}

async fn plumb_all(host: &Netlink, task: &TaskConfig, ns: &Path) -> Result<Started, PlumbError> {
    let ingress = Veth {
        name: host_iface(task.id),
        temp: temp_iface(task.id, 0),
        task_side: TASK_IFACE.to_owned(),
        addr: task.addr,
        routes: Routes::Default,
    };
    let ifindex = plumb_veth(host, &ingress, task.mtu, ns).await?;
    let mut networks = Vec::with_capacity(task.networks.len());
    for (i, net) in task.networks.iter().enumerate() {
        let n = i + 1;
        let name = network_host_iface(task.id, n).ok_or_else(|| {
            io(format!("plumb network {n} of task {:016x}", task.id))(std::io::Error::other(
                format!("at most {MAX_TASK_NETWORKS} networks per task"),
            ))
        })?;
        let veth = Veth {
            name: name.clone(),
            temp: temp_iface(task.id, n),
            task_side: format!("eth{n}"),
            addr: net.addr,
            routes: Routes::Subnet(net.subnet),
        };
        plumb_veth(host, &veth, task.mtu, ns).await?;
        networks.push(name);
    }
    Ok(Started {
        host_iface: ingress.name,
        ifindex,
        networks,
    })
}

/// One veth of a task.
struct Veth {
    /// The host side's name.
    name: String,
    /// The task side's name while it is in the agent's namespace.
    temp: String,
    /// The task side's name in the task's namespace (`eth0`, `eth1`, ...).
    task_side: String,
    /// The task's address on it.
    addr: Ipv4Addr,
    /// What the task routes through it.
    routes: Routes,
}

/// What a task routes through one of its interfaces.
#[derive(Clone, Copy)]
enum Routes {
    /// `eth0`: the default route (and `lo` up).
    Default,
    /// A user network's interface: its subnet, if known.
    Subnet(Option<(Ipv4Addr, u8)>),
}

/// Creates one veth, moves its task side into `ns` and configures both sides; the host
/// side's ifindex.
async fn plumb_veth(host: &Netlink, v: &Veth, mtu: u32, ns: &Path) -> Result<u32, PlumbError> {
    let (name, temp) = (v.name.as_str(), v.temp.as_str());
    let gw_mac = host_mac(v.addr);
    let mac = lb_common::service::task_mac(u32::from(v.addr));
    let peer = LinkUnspec::new_with_name(temp)
        .mtu(mtu)
        .address(mac.to_vec())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new(name, temp)
        .mtu(mtu)
        .address(gw_mac.to_vec())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(nl(format!("create veth {name}")))?;
    set_gro(temp).map_err(io(format!("turn GRO on for {temp}")))?;

    let ns_file = std::fs::File::open(ns).map_err(io(format!("open {}", ns.display())))?;
    let temp_index = host
        .index_of(temp)
        .await?
        .ok_or_else(|| io(format!("find {temp}"))(std::io::ErrorKind::NotFound.into()))?;
    host.handle
        .link()
        .set(
            LinkUnspec::new_with_index(temp_index)
                .setns_by_fd(ns_file.as_raw_fd())
                .name(v.task_side.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {temp} into {}", ns.display())))?;
    drop(ns_file);

    inside(ns, v, gw_mac).await?;

    let index = host
        .index_of(name)
        .await?
        .ok_or_else(|| io(format!("find {name}"))(std::io::ErrorKind::NotFound.into()))?;
    host.handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {name} up")))?;
    let addr = v.addr;
    host.handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(addr, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl(format!("route {addr}/32 dev {name}")))?;
    Ok(index)
}

/// The steps inside the task's namespace for one of its interfaces.
async fn inside(ns: &Path, v: &Veth, gw_mac: [u8; 6]) -> Result<(), PlumbError> {
    let task = Netlink::in_netns(ns).await?;
    let h = &task.handle;
    let (addr, dev) = (v.addr, v.task_side.as_str());
    if matches!(v.routes, Routes::Default)
        && let Some(lo) = task.index_of("lo").await?
    {
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("set lo up"))?;
    }
    let eth = task.index_of(dev).await?.ok_or_else(|| {
        io(format!("find {dev} in the task"))(std::io::ErrorKind::NotFound.into())
    })?;
    h.address()
        .add(eth, IpAddr::V4(addr), 32)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("address {addr}/32 on {dev}")))?;
    h.link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {dev} up")))?;
    match v.routes {
        Routes::Default => {
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(GATEWAY, 32)
                        .output_interface(eth)
                        .scope(RouteScope::Link)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(nl("route to the gateway"))?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(GATEWAY)
                        .output_interface(eth)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(nl("default route"))?;
        }
        Routes::Subnet(Some((subnet, prefix))) => {
            // `SUBNET via 169.254.1.1 dev ethN onlink src ADDR`: the gateway is the same
            // link-local address on every interface, reached on this one.
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(subnet, prefix)
                        .gateway(GATEWAY)
                        .pref_source(addr)
                        .output_interface(eth)
                        .onlink()
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(nl(format!(
                    "route {subnet}/{prefix} via {GATEWAY} dev {dev}"
                )))?;
        }
        Routes::Subnet(None) => {}
    }
    h.neighbours()
        .add(eth, IpAddr::V4(GATEWAY))
        .link_layer_address(&gw_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("gateway neighbour on {dev}")))?;
    Ok(())
}

/// Removes task `id`'s veths (their pairs and host routes go with them); whether its
/// ingress veth existed.
///
/// By name, not from a dump of every interface: tasks start and stop concurrently on
/// one netlink socket, and the kernel refuses a second dump on a socket while one is
/// running (`EBUSY`), which a 300-task service hit.
///
/// # Errors
/// If a lookup or a deletion fails.
pub async fn unplumb(host: &Netlink, id: TaskId) -> Result<bool, PlumbError> {
    let gone = host.delete_link(&host_iface(id)).await?;
    for name in (1..=MAX_TASK_NETWORKS).filter_map(|n| network_host_iface(id, n)) {
        host.delete_link(&name).await?;
    }
    Ok(gone)
}

/// The host sides of task `id`'s user networks' veths that exist in `links` (names and
/// indexes from [`Netlink::links`]), in order, stopping at the first missing one.
#[must_use]
pub fn network_ifaces_of(id: TaskId, links: &[(String, u32)]) -> Vec<String> {
    (1..=MAX_TASK_NETWORKS)
        .map_while(|n| {
            let name = network_host_iface(id, n)?;
            links.iter().any(|(l, _)| *l == name).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_round_trip() {
        for id in [0, 1, 0xdead_beef, u64::MAX] {
            let n = host_iface(id);
            assert!(n.len() <= 15, "{n}");
            assert!(is_host_iface(&n), "{n}");
            assert!(temp_iface(id, 0).len() <= 15);
        }
        assert_eq!(host_iface(0x1234), "mt0000000001234");
        assert!(!is_host_iface("eth0"));
        assert!(!is_host_iface("mtx000000001234"));
        // One more veth per user network, recognised alike and owned by the same task.
        for n in 1..=MAX_TASK_NETWORKS {
            let name = network_host_iface(0x1234, n).unwrap();
            assert_eq!(name, format!("m{n}0000000001234"));
            assert!(is_host_iface(&name), "{name}");
            assert_eq!(host_iface_owner(&name), Some(id_bits(0x1234)));
            let temp = temp_iface(0x1234, n);
            assert!(temp.len() <= 15 && !is_host_iface(&temp), "{temp}");
            assert_eq!(task_of_iface(&temp), Some(0x1234));
        }
        assert_eq!(network_host_iface(1, 0), None);
        assert_eq!(network_host_iface(1, MAX_TASK_NETWORKS + 1), None);
        // Temporary names are no host sides; other interfaces are nobody's.
        assert!(!is_host_iface(&temp_iface(0x1234, 0)));
        assert_eq!(host_iface_owner("mp0000000001234"), None);
        assert_eq!(host_iface_owner("m00000000001234"), None);
        assert_eq!(host_iface_owner("vethabcdef01234"), None);
        assert_eq!(
            host_iface_owner(&host_iface(u64::MAX)),
            Some(id_bits(u64::MAX))
        );
    }

    #[test]
    fn network_ifaces_are_found_in_order_up_to_a_gap() {
        let id = 0xabc;
        let links: Vec<(String, u32)> = [
            host_iface(id),
            network_host_iface(id, 1).unwrap(),
            network_host_iface(id, 2).unwrap(),
            network_host_iface(id, 4).unwrap(),
            network_host_iface(0xabd, 3).unwrap(),
        ]
        .into_iter()
        .zip(1..)
        .collect();
        assert_eq!(
            network_ifaces_of(id, &links),
            [
                network_host_iface(id, 1).unwrap(),
                network_host_iface(id, 2).unwrap()
            ]
        );
        assert!(network_ifaces_of(0xabd, &links).is_empty());
    }

    #[test]
    fn macs() {
        let a = Ipv4Addr::new(10, 0, 0, 7);
        assert_eq!(host_mac(a), [0x02, 0xfe, 10, 0, 0, 7]);
    }
}
