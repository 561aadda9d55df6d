//! The mesh's control plane: a Raft-replicated manager, its gRPC API, the
//! cluster PKI and join tokens, and the `meshctl` CLI's client side.
//!
//! The orchestration logic is a pure core ([`state`], [`liveness`]) tested
//! without I/O; the gRPC services, Raft storage and network are thin shells
//! around it.
#![forbid(unsafe_code)]

pub mod proto {
    //! Generated gRPC types for `proto/mesh.proto`.
    #![allow(missing_docs, missing_debug_implementations, unused_qualifications)]
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("mesh.v1");
}

pub mod allocator;
pub mod api;
pub mod assignment;
pub mod auth;
pub mod cli;
pub mod client;
pub mod liveness;
pub mod metrics;
pub mod orchestrator;
pub mod pki;
pub mod raft;
pub mod reconcile;
pub mod restart;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod session;
pub mod spec;
pub mod state;
pub mod table;
pub mod updater;
