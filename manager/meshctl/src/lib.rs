//! `meshctl`'s pure parts, tested without a cluster: flags and how they build
//! or change a service spec, tables and summaries, convergence progress. The
//! binary (`main.rs`) adds the gRPC calls through `mesh-client`.
#![forbid(unsafe_code)]

pub mod cli;
