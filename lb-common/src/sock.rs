//! Socket-level balancing of the node's own connections and datagrams to its published
//! ports: where a socket or its datagram really went, and what the application had
//! addressed, so that the peer and the answers look as if they were there.

use crate::pod;

/// A socket and the address it was connected to, or one of its datagrams sent to, after
/// balancing (network
/// order): the task's address and port, or another node's address and the published
/// port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The address the datagram went to.
    pub addr: u32,
    /// The port it went to.
    pub port: u16,
    /// Padding, always 0.
    pub pad: u16,
}

/// What the application addressed (network order): `127.0.0.1` or the node's address,
/// and the published port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOrigin {
    /// The address.
    pub addr: u32,
    /// The port.
    pub port: u16,
    /// Padding, always 0.
    pub pad: u16,
}

pod!(SockKey, SockOrigin);
