//! Why a runtime failed: the error every runtime returns, and how plumbing errors and
//! other failures become one.

use mesh_api::spec::RuntimeKind;
use mesh_api::task::TaskId;

use crate::runtime::plumb::PlumbError;

/// Why a runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The spec asks for a runtime this agent does not have.
    #[error("the {0} runtime is not available on this node: {1}")]
    Unavailable(RuntimeKind, String),
    /// No task with this ID runs here.
    #[error("task {0:016x} is not running on this node")]
    Unknown(TaskId),
    /// Starting, stopping or plumbing failed.
    #[error("{0}")]
    Failed(String),
}

impl From<PlumbError> for RuntimeError {
    fn from(e: PlumbError) -> Self {
        RuntimeError::Failed(format!("plumbing: {e}"))
    }
}

/// Maps an error to [`RuntimeError::Failed`] with context.
pub(crate) fn failed<E: std::fmt::Display>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> RuntimeError {
    let what = what.into();
    move |e| RuntimeError::Failed(format!("{what}: {e}"))
}
