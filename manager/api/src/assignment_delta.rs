//! Assignments sent as changes: what a node's agent is sent after its first, whole
//! assignment of a session.
//!
//! An [`Assignment`] has two parts. The [`Routing`] part (the networks, the nodes with
//! a dataplane, every service's routes) is the same for every node, so the leader
//! computes its change once per state change ([`RoutingDelta::between`]), encodes it
//! once and sends the same bytes to every node. The [`NodeWork`] part (the node's
//! tasks, their history, secrets and configs) is the node's own, and its change
//! ([`NodeDelta::between`]) carries the tasks added, changed or removed, the history's
//! additions and removals, and the other fields whole when they changed. A change is thus
//! in proportion to what changed (a scale of one service sends that service's routes),
//! not to the cluster.
//!
//! A delta names the version of the assignment it applies to (`base`). The agent's
//! side ([`AssignmentFollower`], sans-IO) applies a delta only on that version; on a
//! gap (a message lost, or a delta before any whole assignment) it asks for the
//! whole assignment again and ignores deltas until it comes, so it never acts on a
//! state it was not sent.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::assignment::{AssignedTask, Assignment, Backend, Peer, ServiceRoutes};
use crate::codec::{self, CodecError};
use crate::file::FileContent;
use crate::network::{IngressNetwork, Network};
use crate::node::NodeId;
use crate::proto;
use crate::proto::assignment::Body;
use crate::service::ServiceId;
use crate::task::TaskId;

/// The part of an assignment that is the same for every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The ingress network.
    pub ingress: IngressNetwork,
    /// The user networks.
    pub networks: Vec<Network>,
    /// Every node with a dataplane, by ID (each node's peers are the others).
    pub nodes: Vec<Peer>,
    /// Every service's routes, by ID (each shared, as in [`Assignment::services`]).
    pub services: Vec<Arc<ServiceRoutes>>,
}

/// The part of an assignment that is one node's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeWork {
    /// The node.
    pub node: NodeId,
    /// Its hostname as the managers know it.
    pub hostname: String,
    /// Its tasks that exist on it (or must).
    pub tasks: Vec<AssignedTask>,
    /// Its ended tasks the managers still keep.
    pub history: BTreeSet<TaskId>,
    /// The secrets its tasks to run reference.
    pub secrets: Vec<FileContent>,
    /// The configs its tasks to run reference.
    pub configs: Vec<FileContent>,
}

impl Assignment {
    /// The assignment of version `version` made of `routing` and `work`.
    #[must_use]
    pub fn compose(version: u64, routing: &Routing, work: &NodeWork) -> Self {
        Self {
            version,
            node: work.node,
            ingress: routing.ingress.clone(),
            networks: routing.networks.clone(),
            peers: Arc::new(peers_of(&routing.nodes, work.node)),
            tasks: work.tasks.clone(),
            services: routing.services.clone(),
            history: work.history.clone(),
            secrets: work.secrets.clone(),
            configs: work.configs.clone(),
            hostname: work.hostname.clone(),
        }
    }
}

/// The nodes other than `node`.
fn peers_of(nodes: &[Peer], node: NodeId) -> Vec<Peer> {
    nodes.iter().filter(|p| p.id != node).cloned().collect()
}

/// What changed in the [`Routing`] part between two versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingDelta {
    /// The ingress network, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressNetwork>,
    /// The user networks, whole, if any changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<Network>>,
    /// Nodes added or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Peer>,
    /// Nodes gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_removed: Vec<NodeId>,
    /// Services added or changed, each whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Arc<ServiceRoutes>>,
    /// Services gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services_removed: Vec<ServiceId>,
    /// Services whose backends alone changed, each with its backends' changes
    /// (applied after `services`): one task more in a service of a thousand sends
    /// that task, not the thousand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendsDelta>,
}

/// What changed in the backends of a service whose other routes did not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsDelta {
    /// The service.
    pub service: ServiceId,
    /// Backends added or changed, by task ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<Backend>,
    /// Backends gone, by task ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<TaskId>,
}

/// Whether `a` and `b` differ in their backends at most.
fn same_but_backends(a: &ServiceRoutes, b: &ServiceRoutes) -> bool {
    a.id == b.id
        && a.name == b.name
        && a.vip == b.vip
        && a.ports == b.ports
        && a.networks == b.networks
        && a.lb_algorithm == b.lb_algorithm
}

/// The items of `new` that are not in `old` as they are, and the keys of `old` that
/// `new` lacks; both lists sorted by key.
fn changes<T: Clone + PartialEq, K: Ord + Copy>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<K>) {
    let old_by_key: std::collections::BTreeMap<K, &T> = old.iter().map(|x| (key(x), x)).collect();
    let new_keys: BTreeSet<K> = new.iter().map(&key).collect();
    let mut changed: Vec<T> = new
        .iter()
        .filter(|x| old_by_key.get(&key(x)) != Some(x))
        .cloned()
        .collect();
    changed.sort_by_key(|x| key(x));
    let removed = old_by_key
        .keys()
        .filter(|k| !new_keys.contains(k))
        .copied()
        .collect();
    (changed, removed)
}

/// Replaces or inserts `changed` and drops `removed` in `items`, kept sorted by key.
fn merge<T: Clone, K: Ord + Copy>(
    items: &mut Vec<T>,
    changed: &[T],
    removed: &[K],
    key: impl Fn(&T) -> K,
) {
    if !removed.is_empty() {
        let removed: BTreeSet<K> = removed.iter().copied().collect();
        items.retain(|x| !removed.contains(&key(x)));
    }
    for item in changed {
        match items.binary_search_by_key(&key(item), &key) {
            Ok(at) => items[at] = item.clone(),
            Err(at) => items.insert(at, item.clone()),
        }
    }
}

impl RoutingDelta {
    /// What changed from `old` to `new` (both with nodes and services sorted by ID,
    /// as the leader builds them).
    #[must_use]
    pub fn between(old: &Routing, new: &Routing) -> Self {
        let (nodes, nodes_removed) = changes(&old.nodes, &new.nodes, |p| p.id);
        let (services, services_removed) = changes(&old.services, &new.services, |s| s.id);
        let mut delta = Self {
            ingress: (old.ingress != new.ingress).then(|| new.ingress.clone()),
            networks: (old.networks != new.networks).then(|| new.networks.clone()),
            nodes,
            nodes_removed,
            services_removed,
            ..Self::default()
        };
        for service in services {
            let before = old
                .services
                .binary_search_by_key(&service.id, |s| s.id)
                .ok()
                .map(|at| &*old.services[at]);
            delta.service_changed(before, service);
        }
        delta
    }

    /// Records that a service's routes are now `new` (they were `old`, if it
    /// existed): nothing if they are the same, its backends' changes if nothing
    /// else changed, else its routes whole. Services are to be recorded in ID
    /// order.
    pub fn service_changed(&mut self, old: Option<&ServiceRoutes>, new: Arc<ServiceRoutes>) {
        match old {
            Some(old) if *old == *new => {}
            Some(old) if same_but_backends(old, &new) => {
                let (changed, removed) = changes(&old.backends, &new.backends, |b| b.task);
                self.backends.push(BackendsDelta {
                    service: new.id,
                    changed,
                    removed,
                });
            }
            _ => self.services.push(new),
        }
    }

    /// Checks that every service whose backends it changes exists once its
    /// services are applied to `services`.
    fn check_backends(&self, services: &[Arc<ServiceRoutes>]) -> Result<(), DeltaError> {
        for b in &self.backends {
            let held = services.binary_search_by_key(&b.service, |s| s.id).is_ok()
                && !self.services_removed.contains(&b.service);
            if !held && !self.services.iter().any(|s| s.id == b.service) {
                return Err(DeltaError::UnknownService(b.service));
            }
        }
        Ok(())
    }

    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Applies backends' changes to `services` (checked by
/// [`RoutingDelta::check_backends`]): only the changed services' routes are copied
/// (if shared).
fn apply_backends(services: &mut [Arc<ServiceRoutes>], deltas: &[BackendsDelta]) {
    for delta in deltas {
        if let Ok(at) = services.binary_search_by_key(&delta.service, |s| s.id) {
            let routes = Arc::make_mut(&mut services[at]);
            merge(&mut routes.backends, &delta.changed, &delta.removed, |b| {
                b.task
            });
        }
    }
}

impl Routing {
    /// Applies `delta` (the leader keeps its routing part up to date this way, as
    /// agents keep theirs).
    ///
    /// # Errors
    /// [`DeltaError::UnknownService`] (and nothing changes) if it changes the
    /// backends of a service this does not hold.
    pub fn apply(&mut self, delta: &RoutingDelta) -> Result<(), DeltaError> {
        delta.check_backends(&self.services)?;
        if let Some(ingress) = &delta.ingress {
            self.ingress = ingress.clone();
        }
        if let Some(networks) = &delta.networks {
            self.networks = networks.clone();
        }
        merge(&mut self.nodes, &delta.nodes, &delta.nodes_removed, |p| {
            p.id
        });
        merge(
            &mut self.services,
            &delta.services,
            &delta.services_removed,
            |s| s.id,
        );
        apply_backends(&mut self.services, &delta.backends);
        Ok(())
    }
}

/// What changed in a node's [`NodeWork`]: its tasks and history item by item, the
/// other fields whole if they changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDelta {
    /// The node's tasks added or changed, each whole, by ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<AssignedTask>,
    /// The node's tasks gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks_removed: Vec<TaskId>,
    /// Ended tasks added to its history.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub history_added: BTreeSet<TaskId>,
    /// Ended tasks the managers forgot.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub history_removed: BTreeSet<TaskId>,
    /// The secrets of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<FileContent>>,
    /// The configs of its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<FileContent>>,
    /// Its hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl NodeDelta {
    /// What changed from `old` to `new`.
    #[must_use]
    pub fn between(old: &NodeWork, new: &NodeWork) -> Self {
        fn field<T: PartialEq + Clone>(old: &T, new: &T) -> Option<T> {
            (old != new).then(|| new.clone())
        }
        let (tasks, tasks_removed) = changes(&old.tasks, &new.tasks, |t| t.id);
        Self {
            tasks,
            tasks_removed,
            history_added: new.history.difference(&old.history).copied().collect(),
            history_removed: old.history.difference(&new.history).copied().collect(),
            secrets: field(&old.secrets, &new.secrets),
            configs: field(&old.configs, &new.configs),
            hostname: field(&old.hostname, &new.hostname),
        }
    }

    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A delta that cannot apply.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The delta applies on another version than the one held.
    #[error("an assignment change from version {base} came while version {held} is held")]
    Gap {
        /// The version the delta applies on.
        base: u64,
        /// The version held (0: none).
        held: u64,
    },
    /// The message does not decode.
    #[error("unreadable assignment message: {0}")]
    Codec(#[from] CodecError),
    /// The message carries nothing.
    #[error("an assignment message without a body")]
    Empty,
    /// A change to the backends of a service the assignment does not hold.
    #[error("an assignment change names the backends of unknown service {0:016x}")]
    UnknownService(ServiceId),
}

impl Assignment {
    /// Applies the change from version `base` to `version`.
    ///
    /// # Errors
    /// [`DeltaError::Gap`] (and nothing changes) if this is not version `base`.
    pub fn apply_delta(
        &mut self,
        base: u64,
        version: u64,
        routing: &RoutingDelta,
        work: &NodeDelta,
    ) -> Result<(), DeltaError> {
        if self.version != base {
            return Err(DeltaError::Gap {
                base,
                held: self.version,
            });
        }
        routing.check_backends(&self.services)?;
        self.version = version;
        if let Some(ingress) = &routing.ingress {
            self.ingress = ingress.clone();
        }
        if let Some(networks) = &routing.networks {
            self.networks = networks.clone();
        }
        let node = self.node;
        let peers: Vec<Peer> = routing
            .nodes
            .iter()
            .filter(|p| p.id != node)
            .cloned()
            .collect();
        if !peers.is_empty() || !routing.nodes_removed.is_empty() {
            merge(
                Arc::make_mut(&mut self.peers),
                &peers,
                &routing.nodes_removed,
                |p| p.id,
            );
        }
        merge(
            &mut self.services,
            &routing.services,
            &routing.services_removed,
            |s| s.id,
        );
        apply_backends(&mut self.services, &routing.backends);
        merge(&mut self.tasks, &work.tasks, &work.tasks_removed, |t| t.id);
        self.history.retain(|id| !work.history_removed.contains(id));
        self.history.extend(&work.history_added);
        if let Some(secrets) = &work.secrets {
            self.secrets = secrets.clone();
        }
        if let Some(configs) = &work.configs {
            self.configs = configs.clone();
        }
        if let Some(hostname) = &work.hostname {
            self.hostname = hostname.clone();
        }
        Ok(())
    }
}

impl proto::Assignment {
    /// The whole assignment of version `version`: `routing` is the encoded
    /// [`Routing`] (the same bytes for every node), `work` the node's [`NodeWork`].
    ///
    /// # Errors
    /// [`CodecError`] if `work` does not encode.
    pub fn whole(version: u64, routing: Bytes, work: &NodeWork) -> Result<Self, CodecError> {
        Ok(Self {
            body: Some(Body::Whole(proto::AssignmentWhole {
                version,
                routing,
                node: codec::encode(work)?,
            })),
        })
    }

    /// The change from version `base` to `version`: `routing` is the encoded
    /// [`RoutingDelta`] (the same bytes for every node), `work` the node's [`NodeDelta`].
    ///
    /// # Errors
    /// [`CodecError`] if `work` does not encode.
    pub fn delta(
        base: u64,
        version: u64,
        routing: Bytes,
        work: &NodeDelta,
    ) -> Result<Self, CodecError> {
        Ok(Self {
            body: Some(Body::Delta(proto::AssignmentDelta {
                base,
                version,
                routing,
                node: codec::encode(work)?,
            })),
        })
    }
}

/// What the agent's side does with an assignment message.
#[derive(Debug)]
pub enum Followed {
    /// The assignment now held.
    Assignment(Arc<Assignment>),
    /// A delta that does not apply on what is held: ask for the whole assignment
    /// (deltas are ignored until it comes).
    Resync(DeltaError),
    /// A delta that came while the whole assignment is awaited: nothing to do.
    Ignored,
}

/// The agent's side of incremental assignments (sans-IO): the assignment held, to
/// which deltas apply.
#[derive(Debug, Default)]
pub struct AssignmentFollower {
    held: Option<Arc<Assignment>>,
    /// A resync was asked for: deltas are ignored until the whole assignment comes.
    awaiting_whole: bool,
}

impl AssignmentFollower {
    /// A follower that holds nothing yet (a new session: the leader sends the whole
    /// assignment first).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets what is held (the session ended: the next one starts whole).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The assignment held.
    #[must_use]
    pub fn held(&self) -> Option<&Arc<Assignment>> {
        self.held.as_ref()
    }

    /// Takes one assignment message.
    ///
    /// # Errors
    /// [`DeltaError::Codec`] or [`DeltaError::Empty`] for a message that does not
    /// decode (nothing changes; the caller logs it and asks for the whole
    /// assignment).
    pub fn receive(&mut self, message: &proto::Assignment) -> Result<Followed, DeltaError> {
        match message.body.as_ref().ok_or(DeltaError::Empty)? {
            Body::Whole(whole) => {
                let routing: Routing = codec::decode(&whole.routing)?;
                let work: NodeWork = codec::decode(&whole.node)?;
                let whole = Arc::new(Assignment::compose(whole.version, &routing, &work));
                self.held = Some(whole.clone());
                self.awaiting_whole = false;
                Ok(Followed::Assignment(whole))
            }
            // From a manager that sends whole assignments as JSON only.
            Body::Json(bytes) => {
                let whole = Arc::new(codec::decode::<Assignment>(bytes)?);
                self.held = Some(whole.clone());
                self.awaiting_whole = false;
                Ok(Followed::Assignment(whole))
            }
            Body::Delta(delta) => {
                let routing: RoutingDelta = codec::decode(&delta.routing)?;
                let work: NodeDelta = codec::decode(&delta.node)?;
                if self.awaiting_whole {
                    return Ok(Followed::Ignored);
                }
                let Some(held) = self.held.as_mut() else {
                    self.awaiting_whole = true;
                    return Ok(Followed::Resync(DeltaError::Gap {
                        base: delta.base,
                        held: 0,
                    }));
                };
                if held.version != delta.base {
                    let gap = DeltaError::Gap {
                        base: delta.base,
                        held: held.version,
                    };
                    // Deltas from here on apply to what was missed: none does
                    // until the whole assignment comes.
                    self.held = None;
                    self.awaiting_whole = true;
                    return Ok(Followed::Resync(gap));
                }
                Arc::make_mut(held).apply_delta(delta.base, delta.version, &routing, &work)?;
                Ok(Followed::Assignment(held.clone()))
            }
        }
    }
}
