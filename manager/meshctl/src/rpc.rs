//! Failed calls as the user should read them, and the `rm` verbs' loop.

use anyhow::anyhow;
use mesh_client::connect;

/// A failed call as the user should read it: the manager's message, with
/// what a transport or TLS failure means spelled out.
pub(crate) fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", connect::status_message(&status))
}

/// Removes each of `names` with `remove`, as docker's `rm` verbs do: each name removed is
/// printed, the others' errors are gathered into one.
///
/// # Errors
/// Every failure, one per line.
pub(crate) async fn remove_each<F, Fut>(names: &[String], mut remove: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut failed = Vec::new();
    for name in names {
        match remove(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(status) => failed.push(rpc(status).to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failed.join("\n")))
    }
}
