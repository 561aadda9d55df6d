//! A service as the managers keep it, as Swarm does: its spec (and the
//! previous one, for rollback), what the allocator gave it, and where its
//! rolling update stands.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::spec::{PortSpec, ServiceSpec};

/// A service's identity, written as 16 hex digits like node IDs.
pub type ServiceId = u64;

/// What the allocator gave a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The service's virtual IP on the ingress network (endpoint mode `vip`), for a
    /// service whose east-west network is `ingress` (one given no `--network`).
    pub vip: Option<Ipv4Addr>,
    /// The spec's ports with every published port filled in.
    pub ports: Vec<PortSpec>,
    /// Its VIP on each user network it joins (endpoint mode `vip`), in the spec's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<crate::network::NetworkAddr>,
}

/// Where a rolling update (or rollback) stands, as `docker service inspect`
/// shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Replacing tasks with the new spec.
    Updating,
    /// Stopped after failures (failure action `pause`).
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Replacing tasks with the previous spec.
    RollbackStarted,
    /// A rollback stopped after failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Whether tasks are being replaced now.
    #[must_use]
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// Docker's word for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service's update status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Where it stands.
    pub state: UpdateState,
    /// Leader's clock when it started, ms since the epoch.
    pub started_at_ms: u64,
    /// When it completed or paused.
    pub completed_at_ms: Option<u64>,
    /// Why it paused, or what it is doing.
    pub message: String,
}

/// A service as the managers keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Identity.
    pub id: ServiceId,
    /// The spec in force.
    pub spec: ServiceSpec,
    /// The spec before the last update (what `rollback` returns to).
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped by every update of the spec; tasks record the version they run.
    pub spec_version: u64,
    /// VIP and published ports.
    pub endpoint: ServiceEndpoint,
    /// The last rolling update, if any.
    pub update_status: Option<UpdateStatus>,
    /// Ms since the epoch.
    pub created_at_ms: u64,
    /// Ms since the epoch.
    pub updated_at_ms: u64,
}

impl Service {
    /// The ports it publishes, as `service ls` shows them: the allocated ones once the
    /// allocator has filled them in, the spec's until then.
    #[must_use]
    pub fn published_ports(&self) -> &[PortSpec] {
        if self.endpoint.ports.is_empty() {
            &self.spec.endpoint.ports
        } else {
            &self.endpoint.ports
        }
    }
}
