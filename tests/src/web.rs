//! The `web` service the demo and the end-to-end tests publish: a VIP, TCP on 8080 and UDP
//! on 8081, both to port 80 of every task (task-echo serves both).

use std::net::Ipv4Addr;

use crate::{BackendSpec, PortEntry, Protocol, ServiceEntry};

/// The service's virtual IP on the overlay.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 10);
/// The TCP port published on every node.
pub const TCP_PORT: u16 = 8080;
/// The UDP port published on every node.
pub const UDP_PORT: u16 = 8081;

/// The `web` service with `backends` (task names).
#[must_use]
pub fn service(backends: &[&str]) -> ServiceEntry {
    ServiceEntry {
        name: "web".into(),
        vip: Some(VIP),
        ports: vec![
            PortEntry {
                published: TCP_PORT,
                target: 80,
                protocol: Protocol::Tcp,
            },
            PortEntry {
                published: UDP_PORT,
                target: 80,
                protocol: Protocol::Udp,
            },
        ],
        backends: backends.iter().map(|b| BackendSpec::new(b)).collect(),
        scheduler: None,
    }
}
