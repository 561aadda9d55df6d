//! The `mesh-manager` daemon: a Raft-replicated manager of the mesh, as thin
//! shells around the pure core (`mesh-core`).
//!
//! - [`raft`]: openraft over one redb file, the Raft RPCs, write forwarding;
//! - [`grpc`]: the `Join`, `Control` and `Dispatcher` services;
//! - [`leader`]: the leader's loops, committing `mesh_core::reconcile` plans;
//! - [`auth`]: per-RPC authentication and authorisation;
//! - [`metrics`]: the Prometheus metrics endpoint and `/healthz`;
//! - [`health`]: whether the manager can commit (`/healthz`, reads);
//! - [`tls`], [`listener`]: the server's TLS, and the bounds on what a peer
//!   without a certificate may hold;
//! - [`daemon`]: `init`, `join`, `run`, and serving.
#![forbid(unsafe_code)]

pub mod proto {
    //! gRPC stubs for `mesh.proto`: the servers generated here, the clients
    //! and messages re-exported from `mesh-client` and `mesh-api`.
    #![allow(missing_docs, missing_debug_implementations, unused_qualifications)]
    #![allow(unreachable_pub, clippy::all, clippy::pedantic)]
    pub use mesh_client::proto::*;
    include!(concat!(env!("OUT_DIR"), "/mesh.v1.rs"));
}

pub mod auth;
pub mod daemon;
pub mod grpc;
pub mod health;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod raft;
pub mod tls;
pub mod web;
