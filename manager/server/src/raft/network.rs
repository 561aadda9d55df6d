//! openraft's network over gRPC: every Raft RPC is a `mesh.v1.Raft` call
//! whose [`RaftPayload`] carries openraft's request (and, back, its
//! `Result<response, RaftError>`) in [`mesh_api::codec`]'s compact encoding
//! (the proto field is still named `json`: a peer from before the encoding
//! sends JSON there, which [`codec::decode`] reads, and is answered in JSON).
//!
//! Channels come from a caller-supplied [`Connector`] (the manager passes an
//! mTLS endpoint builder, tests plain `http://`) and are cached per address;
//! a tonic channel reconnects by itself, so one cached channel serves a peer
//! across its restarts.
//!
//! The network also notes when each peer last answered (any reply, an
//! openraft refusal included): on the leader, whose heartbeats reach every
//! voter, that is how reachable each voter is ([`Network::last_contacts`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::types::TypeConfig;
use crate::proto::RaftPayload;
use crate::proto::raft_client::RaftClient;
use mesh_api::codec;
use mesh_api::node::NodeId;

/// Builds the endpoint for a manager's Raft address (`host:port`). The real
/// manager returns an mTLS endpoint; tests return `http://host:port`.
pub type Connector = Arc<dyn Fn(&str) -> Result<Endpoint, tonic::transport::Error> + Send + Sync>;

/// Largest Raft message, both directions. Snapshot chunks are 512 KiB of
/// data, which the encoding (an array of small integers) inflates to at
/// most 1 MiB (2 MiB from a peer that still sends JSON).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The Raft network: a connector and a channel per peer address.
#[derive(Clone)]
pub struct Network {
    id: NodeId,
    connector: Connector,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each peer last answered a Raft RPC of this node.
    contacts: Arc<Mutex<BTreeMap<NodeId, Instant>>>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers: Vec<String> = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Network")
            .field("id", &self.id)
            .field("peers", &peers)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A network for node `id` that reaches peers through `connector`.
    #[must_use]
    pub fn new(id: NodeId, connector: Connector) -> Self {
        Self {
            id,
            connector,
            channels: Arc::default(),
            contacts: Arc::default(),
        }
    }

    /// When each peer last answered one of this node's Raft RPCs. On the
    /// leader every voter is sent a heartbeat each heartbeat interval.
    #[must_use]
    pub fn last_contacts(&self) -> BTreeMap<NodeId, Instant> {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn answered(&self, peer: NodeId) {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// A Raft client for `addr`, on the cached channel or a new lazy one.
    ///
    /// # Errors
    /// The connector's error when it cannot build an endpoint for `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = (self.connector)(addr)?
                    .connect_timeout(Duration::from_secs(1))
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            network: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct Connection {
    network: Network,
    target: NodeId,
    node: BasicNode,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Maps a gRPC status from a Raft RPC to openraft's error: the peer could
/// not be reached or refused us (back off), a timeout, or another network
/// failure (retry at once). openraft's own errors never travel as a status:
/// they are inside the payload.
fn status_error<E: std::error::Error>(
    status: tonic::Status,
    timeout: Timeout<NodeId>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match status.code() {
        // Down, or refused by the peer's authentication: retrying at once
        // will not help, so openraft backs off.
        Code::Unavailable
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::Unimplemented => RPCError::Unreachable(Unreachable::new(&status)),
        Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(timeout),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        kind: RPCTypes,
        req: &Req,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = Timeout {
            action: kind,
            id: self.network.id,
            target: self.target,
            timeout: ttl,
        };
        let json = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .network
            .client(&self.node.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(ttl);
        let call = async {
            match kind {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = tokio::time::timeout(ttl, call)
            .await
            .map_err(|_elapsed| RPCError::Timeout(timeout.clone()))?
            .map_err(|status| status_error(status, timeout))?;
        self.network.answered(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> = codec::decode(&reply.into_inner().json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }
}
