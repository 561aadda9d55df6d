//! A node talking to the mesh's managers: what `lb-agent`, `meshctl` and every
//! manager's own node share.
//!
//! - [`connect`]: mutual-TLS channels, failover across manager addresses,
//!   the leader a follower names, errors a user can act on;
//! - [`join`]: a join token and a certificate request exchanged for the
//!   node's identity;
//! - [`session`]: the node's long-lived session with the leader (heartbeats
//!   up; assignments, role changes and log requests down);
//! - [`failover`]: which manager the session tries next (sans-IO);
//! - [`pki`]: the cluster CA, certificates, join tokens, identities on disk,
//!   TLS configurations;
//! - [`state_dir`]: the files of a node's state directory, which its agent
//!   and its manager share;
//! - [`proto`]: the gRPC client stubs.
#![forbid(unsafe_code)]

pub mod proto {
    //! gRPC client stubs for `mesh.proto`'s services, over `mesh-api`'s
    //! messages (re-exported here, so one path names both).
    #![allow(missing_docs, missing_debug_implementations, unused_qualifications)]
    #![allow(unreachable_pub, clippy::all, clippy::pedantic)]
    pub use mesh_api::proto::*;
    include!(concat!(env!("OUT_DIR"), "/mesh.v1.rs"));
}

pub mod connect;
pub mod failover;
pub mod join;
pub mod pki;
pub mod session;
pub mod state_dir;
