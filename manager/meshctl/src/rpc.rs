//! Failed calls as the user should read them.

use anyhow::anyhow;
use mesh_client::connect;

/// A failed call as the user should read it: the manager's message, with
/// what a transport or TLS failure means spelled out.
pub(crate) fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", connect::status_message(&status))
}
