//! Keeps the peers' underlay neighbour entries resolved, so the XDP program's
//! `bpf_fib_lookup` finds their MAC addresses.
//!
//! For each peer the agent creates a *managed* neighbour entry (`NTF_EXT_MANAGED`, shown
//! as `managed` by `ip neigh`, Linux >= 5.16) on the underlay interface through
//! rtnetlink: the kernel then resolves the address itself and keeps it resolved, like a
//! permanent entry that follows MAC changes. The agent re-checks the entries periodically
//! and recreates missing ones (a managed entry that failed to resolve stays, and the
//! kernel keeps probing it). Where the kernel refuses managed entries, the agent falls
//! back to triggering ordinary resolution: it sends an empty UDP datagram to the peer's
//! discard port (9), which makes the kernel resolve the peer's MAC; the periodic re-check
//! repeats it, so the entry stays fresh.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use futures::TryStreamExt as _;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourState,
};
use tracing::{debug, warn};

/// Failures of neighbour management.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// The peers (among `peers`) that lack a managed entry on `ifindex`.
///
/// # Errors
/// If the neighbour dump fails.
pub async fn missing(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    peers: &BTreeSet<Ipv4Addr>,
) -> Result<BTreeSet<Ipv4Addr>, NeighError> {
    let mut missing = peers.clone();
    let mut dump = handle.neighbours().get().execute();
    while let Some(msg) = dump.try_next().await? {
        if msg.header.ifindex != ifindex {
            continue;
        }
        let mut dst = None;
        let mut managed = false;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
                _ => {}
            }
        }
        // A managed entry in FAILED state is fine: the kernel keeps re-probing it.
        if let Some(a) = dst
            && managed
        {
            missing.remove(&a);
        }
    }
    Ok(missing)
}

/// Creates (or replaces) a managed neighbour entry for `peer` on `ifindex`.
///
/// # Errors
/// If the kernel refuses (e.g. a kernel older than 5.16).
pub async fn add_managed(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    peer: Ipv4Addr,
) -> Result<(), NeighError> {
    let mut req = handle
        .neighbours()
        .add(ifindex, IpAddr::V4(peer))
        .state(NeighbourState::None)
        .replace();
    req.message_mut()
        .attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    req.execute().await?;
    Ok(())
}

/// Deletes our managed entry for `peer` on `ifindex`, if there is one.
///
/// # Errors
/// If the dump or the deletion fails.
pub async fn remove(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    peer: Ipv4Addr,
) -> Result<(), NeighError> {
    let mut dump = handle.neighbours().get().execute();
    while let Some(msg) = dump.try_next().await? {
        let is_peer = msg.header.ifindex == ifindex
            && msg.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(x)) if *x == peer))
            && msg.attributes.iter().any(|a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)));
        if is_peer {
            handle.neighbours().del(msg).execute().await?;
        }
    }
    Ok(())
}

/// Triggers ordinary ARP resolution of `peer` by sending it an empty UDP datagram on the
/// discard port.
pub fn poke(peer: Ipv4Addr) {
    let result = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        s.connect(SocketAddr::from((peer, 9)))?;
        s.send(&[])
    });
    if let Err(e) = result {
        debug!(%peer, error = %e, "resolution poke failed");
    }
}

/// Makes sure every peer has a resolved neighbour entry on `ifindex`; returns how many
/// entries were (re)created.
///
/// # Errors
/// If the neighbour dump fails. Failures to create an entry fall back to [`poke`].
pub async fn ensure(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    peers: &BTreeSet<Ipv4Addr>,
) -> Result<usize, NeighError> {
    let todo = missing(handle, ifindex, peers).await?;
    let mut created = 0;
    for peer in &todo {
        match add_managed(handle, ifindex, *peer).await {
            Ok(()) => created += 1,
            Err(e) => {
                warn!(%peer, error = %e, "cannot create a managed neighbour entry; triggering resolution instead");
                poke(*peer);
            }
        }
    }
    Ok(created)
}
