//! The loops that work on a service's task records, as swarmkit's
//! `manager/orchestrator/{constraintenforcer,update,restart,replicated,
//! global,taskreaper}`: each is one pass of a round of the leader's loops,
//! composed by [`crate::reconcile::plan`] in this order, over one
//! [`work::Work`] per service (the service's tasks as the round changes
//! them; a live task is one the leader wants running that has not ended):
//! - [`evict`]: tasks on nodes that are down or gone are orphaned; tasks on
//!   drained nodes, or on nodes that no longer satisfy the constraints, are
//!   stopped (their node's agent drains them);
//! - [`update`]: the rolling updater's next step (a batch of replacements,
//!   a new status, or a rollback);
//! - [`restart`]: the restart supervisor's verdict on every empty slot
//!   whose last task ended by itself (now, later, never);
//! - [`replicated`] and [`global`]: the orchestrators, one live task per
//!   slot `1..=replicas` or per eligible node; empty slots get new tasks,
//!   extra tasks are stopped (both through [`slots`]);
//! - (the [`crate::scheduler`] places the new tasks, a pass of its own;)
//! - [`history`]: Swarm's task history retention.
//!
//! [`work`] holds the bookkeeping they share. This module only declares
//! them: none of them imports it.

pub mod evict;
pub mod global;
pub mod history;
pub mod replicated;
pub mod restart;
pub mod slots;
pub mod update;
pub mod work;

#[cfg(test)]
pub(crate) mod testing;
