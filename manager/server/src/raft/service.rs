//! The `mesh.v1.Raft` gRPC service: openraft's RPCs from peers, writes
//! forwarded by followers, and managers asking to join the voters.
//!
//! Authentication and authorisation (manager certificates only) are the
//! interceptor's job; this service trusts the [`Caller`] it finds in the
//! request's extensions.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::network::MAX_MESSAGE_BYTES;
use super::node::{LocalWriteError, MembershipError, RaftNode};
use mesh_api::{LEADER_ADDR_HEADER, LEADER_ID_HEADER};

use crate::auth::Caller;
use crate::proto::raft_server::{Raft, RaftServer};
use crate::proto::{AddManagerRequest, AddManagerResponse, RaftPayload};
use mesh_api::codec;
use mesh_api::node::{NodeId, Role, format_id};
use mesh_core::state::Command;

/// The Raft gRPC service of one manager.
#[derive(Clone, Debug)]
pub struct RaftService {
    node: RaftNode,
}

impl RaftService {
    /// The service for `node`.
    #[must_use]
    pub fn new(node: RaftNode) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with message limits large enough
    /// for snapshot chunks.
    #[must_use]
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// How a peer encoded its request, so the answer goes back the same way: a
/// peer from before [`codec`] sends and reads JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Codec,
    Json,
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<(T, Format), Status> {
    let bytes = request.into_inner().json;
    let format = if codec::is_current(&bytes) {
        Format::Codec
    } else {
        Format::Json
    };
    let value = codec::decode(&bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))?;
    Ok((value, format))
}

fn encode<T: Serialize>(value: &T, format: Format) -> Result<Response<RaftPayload>, Status> {
    let json = match format {
        Format::Codec => codec::encode(value).map_err(|e| e.to_string()),
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
    }
    .map_err(|e| Status::internal(format!("cannot encode raft payload: {e}")))?;
    Ok(Response::new(RaftPayload { json }))
}

/// `FAILED_PRECONDITION` naming the leader (in the message and in metadata),
/// or saying that no leader is known.
pub(crate) fn not_leader(leader: Option<(NodeId, String)>) -> Status {
    match leader {
        Some((id, addr)) => {
            let mut status = Status::failed_precondition(format!(
                "this manager is not the leader; the leader is {} at {addr}",
                format_id(id)
            ));
            if let Ok(v) = MetadataValue::try_from(format_id(id)) {
                status.metadata_mut().insert(LEADER_ID_HEADER, v);
            }
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
            }
            status
        }
        None => Status::failed_precondition(
            "this manager is not the leader and knows no leader (election in progress or no quorum)",
        ),
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.node.leader_heard();
        let (rpc, format) = decode(request)?;
        encode(&self.node.raft().append_entries(rpc).await, format)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (rpc, format) = decode(request)?;
        encode(&self.node.raft().vote(rpc).await, format)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.node.leader_heard();
        let (rpc, format) = decode(request)?;
        encode(&self.node.raft().install_snapshot(rpc).await, format)
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let (command, format): (Command, _) = decode(request)?;
        match self.node.write_local(command).await {
            Ok(response) => encode(&response, format),
            Err(LocalWriteError::NotLeader(leader)) => Err(not_leader(leader)),
            Err(LocalWriteError::NoQuorum) => Err(Status::deadline_exceeded(
                "no quorum: the write was not committed",
            )),
            Err(LocalWriteError::Fatal(e)) => Err(Status::internal(format!("raft stopped: {e}"))),
        }
    }

    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerResponse>, Status> {
        let Some(caller) = request.extensions().get::<Caller>().copied() else {
            return Err(Status::unauthenticated("no authenticated caller"));
        };
        let addr = request.into_inner().addr;
        if addr.is_empty() {
            return Err(Status::invalid_argument("addr is empty"));
        }
        // Under the membership lock, so that a demotion decided meanwhile
        // waits for this change and then undoes it (see `set_role`).
        let _membership = self.node.membership_lock().await;
        let role = self
            .node
            .shared_state()
            .read()
            .map_err(|_| Status::internal("state lock poisoned"))?
            .node(caller.node_id)
            .map(|n| n.role);
        // A node the state does not know yet is a manager joining with a
        // token (the interceptor refuses removed nodes).
        if role == Ok(Role::Worker) {
            return Err(Status::failed_precondition(format!(
                "node {} is a worker (demoted, or never promoted): it can't join the managers",
                format_id(caller.node_id)
            )));
        }
        match self.node.add_voter(caller.node_id, addr).await {
            Ok(()) => Ok(Response::new(AddManagerResponse {})),
            Err(MembershipError::NotLeader(leader)) => Err(not_leader(leader)),
            Err(e @ MembershipError::Timeout(_)) => Err(Status::deadline_exceeded(e.to_string())),
            Err(e @ MembershipError::Refused(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ MembershipError::Fatal(_)) => Err(Status::internal(e.to_string())),
        }
    }
}
