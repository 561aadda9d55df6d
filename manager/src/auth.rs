//! Per-RPC authentication and authorisation from the caller's certificate.
//! (In progress: the interceptors come with the PKI work.)

use crate::state::{NodeId, Role};

/// The authenticated caller of an RPC, inserted into the request's
/// extensions by the authentication interceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node named by the certificate's CN.
    pub node_id: NodeId,
    /// The node's role in the replicated state at the time of the call.
    pub role: Role,
}
