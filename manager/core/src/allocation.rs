//! One command's allocations (addresses on the ingress network and on user
//! networks, fresh IDs), made on copies of the allocation cursors.
//!
//! A command that is refused part-way must leave the state as it was. Making its
//! allocations on a copy of the whole state did that at a cost that grew with the
//! cluster (ten thousand tasks copied for one new task); an [`Allocations`] copies
//! only the cursors it moves, gathers each network's addresses in use once per
//! command (not once per address), and is written back by [`Allocations::commit`]
//! once the command can no longer fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_api::network::{IngressNetwork, Network, NetworkAddr, NetworkId};
use mesh_api::node::format_id;

use crate::allocator::{self, AllocError};
use crate::state::{ClusterState, StateError};

/// The allocations of one command, not yet in the state.
#[derive(Debug)]
pub(crate) struct Allocations {
    ingress: IngressNetwork,
    /// Ingress addresses in use (tasks' and VIPs', and those taken here), gathered
    /// at the first ingress allocation.
    ingress_used: Option<BTreeSet<Ipv4Addr>>,
    /// The user networks allocated on, each a copy with its addresses in use.
    networks: BTreeMap<NetworkId, (Network, BTreeSet<Ipv4Addr>)>,
    next_id: u64,
}

impl Allocations {
    /// Nothing allocated yet on `state`.
    pub(crate) fn new(state: &ClusterState) -> Self {
        Self {
            ingress: state.ingress.clone(),
            ingress_used: None,
            networks: BTreeMap::new(),
            next_id: state.next_id,
        }
    }

    /// Takes a free ingress address (see [`allocator::allocate_addr`]).
    ///
    /// # Errors
    /// [`AllocError::NetworkFull`].
    pub(crate) fn addr(&mut self, state: &ClusterState) -> Result<Ipv4Addr, AllocError> {
        let used = self.ingress_used.get_or_insert_with(|| {
            state
                .tasks
                .values()
                .filter_map(|t| t.addr)
                .chain(state.services.values().filter_map(|s| s.endpoint.vip))
                .collect()
        });
        allocator::allocate_addr(&mut self.ingress, used)
    }

    /// Takes a free address on user network `id` (see
    /// [`allocator::allocate_network_addr`]).
    ///
    /// # Errors
    /// [`StateError::UnknownNetwork`], or the network is full.
    pub(crate) fn network_addr(
        &mut self,
        state: &ClusterState,
        id: NetworkId,
    ) -> Result<NetworkAddr, StateError> {
        let (network, used) = match self.networks.entry(id) {
            std::collections::btree_map::Entry::Occupied(held) => held.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let network = state
                    .networks
                    .get(&id)
                    .ok_or_else(|| StateError::UnknownNetwork(format_id(id)))?;
                slot.insert((network.clone(), state.used_network_addrs(id)))
            }
        };
        let addr = allocator::allocate_network_addr(network, used)?;
        Ok(NetworkAddr { network: id, addr })
    }

    /// A fresh service, task or network ID (see [`fresh_id`]).
    pub(crate) fn fresh_id(&mut self, state: &ClusterState) -> u64 {
        self.next_id += 1;
        fresh_id(&state.cluster_id, self.next_id)
    }

    /// Writes the moved cursors back into `state`: the command is applied.
    pub(crate) fn commit(self, state: &mut ClusterState) {
        state.ingress = self.ingress;
        state.next_id = self.next_id;
        for (id, (network, _)) in self.networks {
            state.networks.insert(id, network);
        }
    }
}

/// The `n`th fresh ID of cluster `cluster_id`: deterministic (every replica
/// computes the same), but spread over the whole range like a random one.
pub(crate) fn fresh_id(cluster_id: &str, n: u64) -> u64 {
    let seed = cluster_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // splitmix64
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
