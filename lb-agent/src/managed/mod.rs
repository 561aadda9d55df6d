//! The managed agent: a node of the cluster, driven by the leader instead of a
//! configuration file.
//!
//! - [`join`]: joining the cluster and keeping the session with the leader;
//! - [`logs`]: answering the leader's log requests, one-shot and followed;
//! - [`run`]: acting on the leader's assignments until the agent stops;
//! - [`manager_process`]: the node's manager, which the agent runs once the node is
//!   promoted;
//! - [`supervisor`]: the task supervisor, the pure core that decides what happens to
//!   the node's tasks;
//! - [`dataplane_config`]: from an assignment and the running tasks to the same
//!   [`crate::config::Config`] the standalone agent reads from its file.
//!
//! This module only declares its children; they depend on each other, never on it.

pub mod dataplane_config;
pub mod join;
pub mod logs;
pub mod manager_process;
pub mod run;
pub mod supervisor;
