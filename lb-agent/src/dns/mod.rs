//! Service discovery by name for a managed node's tasks (docs/networks.md, "Service
//! discovery"): a resolver at the tasks' link-local gateway `169.254.1.1:53` (UDP and
//! TCP) in the agent's namespace, which answers the cluster's names from the leader's
//! assignment and forwards the others to the node's resolvers.
//!
//! - [`view`]: the names of an assignment, per network, and the networks of each of
//!   the node's tasks (pure);
//! - [`answer`]: one query's reply from a view, over hickory-proto's wire format (pure);
//! - [`resolv`]: the node's `resolv.conf` (upstreams, search domains) and a task's;
//! - [`server`]: the listeners and the forwarding (tokio);
//! - here: the managed agent's resolver, with the gateway address on `lo`.
//!
//! A task reaches the gateway through its `eth0` default route; the host side of its
//! veth delivers the packet locally, since the agent puts `169.254.1.1/32` on `lo` (and
//! takes it away at exit if it was not there before). The reverse path to a task is its
//! `/32` route on its veth, so strict `rp_filter` passes.

pub mod answer;
pub mod resolv;
pub mod server;
pub mod view;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use tracing::{info, warn};

pub use server::{Counters, Limits, Server, ServerError};
pub use view::View;

use crate::runtime::plumb::{GATEWAY, Netlink, PlumbError};

/// The DNS port.
pub const PORT: u16 = 53;

/// Failures to start the managed agent's resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The gateway address could not be put on `lo`.
    #[error("DNS: putting {GATEWAY}/32 on lo: {0}")]
    Address(#[from] PlumbError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] ServerError),
}

/// The managed agent's resolver: the listeners at the gateway, and the gateway address
/// on `lo` if the agent put it there.
#[derive(Debug)]
pub struct Dns {
    server: Server,
    added: Option<AddressMessage>,
}

impl Dns {
    /// Puts [`GATEWAY`] on `lo` if it is not there, and binds the listeners at
    /// `GATEWAY:53`, forwarding to `upstreams` (none: every other name gets
    /// `SERVFAIL`).
    ///
    /// # Errors
    /// [`DnsError`] if the address cannot be added or a listener bound (port 53 taken,
    /// no privilege): the managed agent must not run without its tasks' resolver.
    pub async fn start(upstreams: Vec<SocketAddr>) -> Result<Self, DnsError> {
        if upstreams.is_empty() {
            warn!(
                "DNS: no upstream server (dns.upstream, or nameservers in /etc/resolv.conf): \
                 names outside the cluster get SERVFAIL"
            );
        }
        let netlink = Netlink::here()?;
        let added = ensure_on_lo(&netlink, GATEWAY).await?;
        match Server::bind(GATEWAY, PORT, upstreams.clone(), Limits::default()).await {
            Ok(server) => {
                info!(listen = %server.local_addr(), ?upstreams, "DNS: serving the tasks' names");
                Ok(Self { server, added })
            }
            Err(e) => {
                if let Some(added) = added {
                    let _ = netlink.handle.address().del(added).execute().await;
                }
                Err(e.into())
            }
        }
    }

    /// Answers from the names of `view` from now on.
    pub fn set_view(&self, view: View) {
        self.server.set_view(view);
    }

    /// The queries answered so far, by outcome.
    #[must_use]
    pub fn counters(&self) -> std::sync::Arc<Counters> {
        self.server.counters()
    }

    /// The gateway address this resolver put on `lo`, for the caller to release once
    /// the listeners are gone, however they go ([`Dns::stop`] then leaves it).
    pub fn take_address(&mut self) -> GatewayAddress {
        GatewayAddress(self.added.take())
    }

    /// Stops the listeners, and takes the gateway address off `lo` if this agent put
    /// it there (and still holds it: [`Dns::take_address`]).
    pub async fn stop(mut self) {
        let address = self.take_address();
        drop(self);
        address.release().await;
    }
}

/// The gateway address on `lo`, if the agent put it there.
#[derive(Debug)]
pub struct GatewayAddress(Option<AddressMessage>);

impl GatewayAddress {
    /// Takes the address off `lo` if the agent put it there; a failure is logged (the
    /// next start finds it and keeps it).
    pub async fn release(self) {
        let Some(added) = self.0 else {
            return;
        };
        let result = match Netlink::here() {
            Ok(netlink) => netlink
                .handle
                .address()
                .del(added)
                .execute()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => info!("DNS: took {GATEWAY}/32 off lo"),
            Err(e) => warn!(error = %e, "DNS: taking {GATEWAY}/32 off lo"),
        }
    }
}

/// Puts `addr/32` on `lo` unless `lo` has it; the address added, if it was.
async fn ensure_on_lo(
    netlink: &Netlink,
    addr: Ipv4Addr,
) -> Result<Option<AddressMessage>, PlumbError> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |source: rtnetlink::Error| PlumbError::Netlink { what, source }
    };
    let lo = netlink
        .index_of("lo")
        .await?
        .ok_or_else(|| PlumbError::Io {
            what: "find lo".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    if let Some(existing) = find(netlink, lo, addr)
        .await
        .map_err(fail("list lo's addresses"))?
    {
        drop(existing);
        return Ok(None);
    }
    netlink
        .handle
        .address()
        .add(lo, IpAddr::V4(addr), 32)
        .execute()
        .await
        .map_err(fail("add the address"))?;
    info!(address = %addr, "DNS: added the tasks' gateway address to lo");
    find(netlink, lo, addr)
        .await
        .map_err(fail("list lo's addresses"))
}

/// `addr`'s address message on interface `index`, if it has it.
async fn find(
    netlink: &Netlink,
    index: u32,
    addr: Ipv4Addr,
) -> Result<Option<AddressMessage>, rtnetlink::Error> {
    let mut addrs = netlink
        .handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        let has = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == IpAddr::V4(addr))
        });
        if has && msg.header.index == index {
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

/// The upstream servers: `configured` if any, else the nameservers of the node's
/// `/etc/resolv.conf` (at most three); this resolver itself (`169.254.1.1:53`) is never
/// one (a loop).
#[must_use]
pub fn upstreams(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    let servers = if configured.is_empty() {
        resolv::ResolvConf::read(std::path::Path::new("/etc/resolv.conf")).nameservers
    } else {
        configured.to_vec()
    };
    servers
        .into_iter()
        .filter(|s| *s != SocketAddr::from((GATEWAY, PORT)))
        .take(resolv::MAX_UPSTREAMS)
        .collect()
}

#[cfg(test)]
mod upstream_tests {
    use super::*;

    #[test]
    fn configured_upstreams_win_and_never_include_the_gateway() {
        let configured: Vec<SocketAddr> = [
            "169.254.1.1:53",
            "10.0.0.2:53",
            "10.0.0.3:53",
            "10.0.0.4:53",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(upstreams(&configured), configured[1..]);
        // The gateway on another port is another server.
        let other: SocketAddr = "169.254.1.1:5353".parse().unwrap();
        assert_eq!(upstreams(&[other]), [other]);
    }
}
