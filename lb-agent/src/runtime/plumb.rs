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
//! - both ends get the task's MTU; `lo` is up in the task's namespace.
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
use crate::runtime::task::Started;

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

/// The host-side interface name of task `id` (15 characters at most).
#[must_use]
pub fn host_iface(id: TaskId) -> String {
    format!("{HOST_PREFIX}{:013x}", id & 0x000f_ffff_ffff_ffff)
}

/// The temporary name of the task side while it is in the agent's namespace.
fn temp_iface(id: TaskId) -> String {
    format!("mp{:013x}", id & 0x000f_ffff_ffff_ffff)
}

/// Whether `name` is a host-side name [`host_iface`] makes.
#[must_use]
pub fn is_host_iface(name: &str) -> bool {
    name.strip_prefix(HOST_PREFIX)
        .is_some_and(|h| h.len() == 13 && h.bytes().all(|b| b.is_ascii_hexdigit()))
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

/// Plumbs task `id` at `addr` (MTU `mtu`) into the network namespace at `ns`
/// (`/run/netns/NAME` or `/proc/PID/ns/net`). A stale host side of the same task is
/// replaced. On failure, what was created is removed.
///
/// # Errors
/// If a step fails.
pub async fn plumb(
    host: &Netlink,
    id: TaskId,
    addr: Ipv4Addr,
    mtu: u32,
    ns: &Path,
) -> Result<Started, PlumbError> {
    let name = host_iface(id);
    host.delete_link(&name).await?;
    let temp = temp_iface(id);
    host.delete_link(&temp).await?;
    match plumb_steps(host, &name, &temp, addr, mtu, ns).await {
        Ok(started) => Ok(started),
        Err(e) => {
            if let Err(undo) = host.delete_link(&name).await {
                debug!(iface = name, error = %undo, "undoing a failed plumbing");
            }
            let _ = host.delete_link(&temp).await;
            Err(e)
        }
    }
}

async fn plumb_steps(
    host: &Netlink,
    name: &str,
    temp: &str,
    addr: Ipv4Addr,
    mtu: u32,
    ns: &Path,
) -> Result<Started, PlumbError> {
    let gw_mac = host_mac(addr);
    let mac = lb_common::service::task_mac(u32::from(addr));
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
                .name(TASK_IFACE)
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {temp} into {}", ns.display())))?;
    drop(ns_file);

    inside(ns, addr, gw_mac).await?;

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
    Ok(Started {
        host_iface: name.to_owned(),
        ifindex: index,
    })
}

/// The steps inside the task's namespace.
async fn inside(ns: &Path, addr: Ipv4Addr, gw_mac: [u8; 6]) -> Result<(), PlumbError> {
    let task = Netlink::in_netns(ns).await?;
    let h = &task.handle;
    if let Some(lo) = task.index_of("lo").await? {
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl("set lo up"))?;
    }
    let eth = task
        .index_of(TASK_IFACE)
        .await?
        .ok_or_else(|| io("find eth0 in the task")(std::io::ErrorKind::NotFound.into()))?;
    h.address()
        .add(eth, IpAddr::V4(addr), 32)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("address {addr}/32")))?;
    h.link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl("set eth0 up"))?;
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
    h.neighbours()
        .add(eth, IpAddr::V4(GATEWAY))
        .link_layer_address(&gw_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl("gateway neighbour"))?;
    Ok(())
}

/// Removes task `id`'s veth (its pair and host route go with it); whether it existed.
///
/// # Errors
/// If the deletion fails.
pub async fn unplumb(host: &Netlink, id: TaskId) -> Result<bool, PlumbError> {
    let gone = host.delete_link(&host_iface(id)).await?;
    host.delete_link(&temp_iface(id)).await?;
    Ok(gone)
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
            assert!(temp_iface(id).len() <= 15);
        }
        assert_eq!(host_iface(0x1234), "mt0000000001234");
        assert!(!is_host_iface("eth0"));
        assert!(!is_host_iface("mtx000000001234"));
    }

    #[test]
    fn macs() {
        let a = Ipv4Addr::new(10, 0, 0, 7);
        assert_eq!(host_mac(a), [0x02, 0xfe, 10, 0, 0, 7]);
    }
}
