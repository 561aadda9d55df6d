//! The managers' pure core, as quinn-proto is to quinn: every decision the
//! leader makes, as functions of the replicated state and of times passed in.
//!
//! - [`state`]: the replicated [`state::ClusterState`] and the
//!   [`state::Command`]s that change it (the Raft state machine's `apply`);
//! - [`allocator`]: addresses and published ports, inside `apply` (one command's
//!   allocations on copies of the cursors, so a refused command changes nothing);
//! - [`ipam`]: overlay networks' subnets, gateways and VNIs, inside `apply`;
//! - [`network_info`]: a network with what is attached to it, as the API shows it;
//! - [`capacity`]: what every node's dataplane must hold, checked inside `apply`;
//! - [`files`] and [`stack`]: secrets and configs, and stack deploys, inside `apply`;
//! - the leader's loops, each one pass per round, composed by
//!   [`reconcile::plan`]: evictions, the rolling updater, the restart
//!   supervisor and the replicated and global orchestrators (all under
//!   [`orchestrator`]), then the [`scheduler`], then history;
//! - [`journal`]: what each applied command touched, so the leader's loops work
//!   in proportion to a change;
//! - [`liveness`]: node status from heartbeats;
//! - [`assignment`]: what each node is sent.
//!
//! Nothing here does I/O, reads a clock (`.clippy.toml` bans the clock reads)
//! or depends on an async runtime; the shells in `mesh-manager` feed it the
//! clock and commit what it returns. Its tests run alone:
//! `cargo test -p mesh-core`.
#![forbid(unsafe_code)]

mod allocation;
pub mod allocator;
pub mod assignment;
pub mod capacity;
pub mod files;
pub mod ipam;
pub mod journal;
pub mod liveness;
pub mod network_info;
pub mod orchestrator;
pub mod reconcile;
pub mod scheduler;
pub mod stack;
pub mod state;

#[cfg(test)]
mod codec_tests;
