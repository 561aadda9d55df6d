//! `meshctl service logs`: the output of a service's tasks, fetched from the
//! agents that run them over their sessions.

use tonic::{Response, Status};

use super::Manager;
use crate::proto;

/// The stream `ServiceLogs` answers with.
pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogLine, Status>> + Send + 'static>>;

/// Serves a `ServiceLogs` call.
///
/// # Errors
/// `NOT_FOUND` for an unknown service or task; `UNAVAILABLE` without quorum.
pub async fn service_logs(
    manager: &Manager,
    request: proto::ServiceLogsRequest,
) -> Result<Response<LogStream>, Status> {
    let _ = (manager, request);
    Err(Status::unimplemented("service logs are being built"))
}
