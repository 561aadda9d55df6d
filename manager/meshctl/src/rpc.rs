//! Failed calls as the user should read them, and the loops of the `rm` and `inspect`
//! verbs.

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

/// Inspects each of `names` with `inspect`, as docker's `inspect` verbs do: what was found
/// is returned (for the caller to print), with the others' errors gathered into one.
pub(crate) async fn inspect_each<T, F, Fut>(
    names: &[String],
    mut inspect: F,
) -> (Vec<T>, anyhow::Result<()>)
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        match inspect(name.clone()).await {
            Ok(t) => found.push(t),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let result = if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failed.join("\n")))
    };
    (found, result)
}
