//! The agent's answers to the leader's log requests (`meshctl service logs`):
//! a one-shot request gets each task's lines, then `done`; a followed one
//! (`-f`) keeps sending each task's new output until that output is
//! complete (`done`), the leader cancels the request (its client went away)
//! or the session that carried it is lost.
//!
//! Bounds: a follow holds at most [`FOLLOW_CREDITS`] chunks waiting in the
//! session's uplink (each holds a credit until the session takes it), and
//! each task's follower at most [`FOLLOW_BATCHES`] batches between the
//! runtime and the uplink. When both are full the follow stops reading (the
//! output waits in the task's log file or the docker engine): backpressure,
//! nothing is dropped on the agent.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_api::node::format_id;
use mesh_api::task::TaskId;
use mesh_client::proto;
use mesh_client::session::{Uplink, UplinkSender};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::runtime::Runtimes;
use crate::runtime::lines::BATCH_LINES;

/// Chunks one follow may have waiting in the session's uplink.
pub const FOLLOW_CREDITS: usize = 8;
/// Batches a task's follower may hold between the runtime and the uplink.
pub const FOLLOW_BATCHES: usize = 2;

/// Answers a one-shot log request: each task's lines in chunks, then `done`.
pub async fn answer_logs(
    runtimes: Runtimes,
    uplink: UplinkSender,
    request_id: u64,
    task_ids: Vec<TaskId>,
    tail: usize,
) {
    for id in task_ids {
        let task_id = format_id(id);
        let (lines, error) = match runtimes.logs(id, tail).await {
            Ok(lines) => (lines, String::new()),
            Err(e) => (Vec::new(), e.to_string()),
        };
        let mut chunks: Vec<Vec<String>> =
            lines.chunks(BATCH_LINES).map(<[String]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (k, lines) in chunks.into_iter().enumerate() {
            let chunk = proto::LogChunk {
                request_id,
                task_id: task_id.clone(),
                lines,
                done: k == last,
                error: if k == last {
                    error.clone()
                } else {
                    String::new()
                },
            };
            if uplink.send(Uplink::Logs(chunk)).is_err() {
                return;
            }
        }
    }
}

/// The node's running follows, by request.
#[derive(Debug, Default)]
pub struct Follows {
    running: HashMap<u64, JoinHandle<()>>,
}

impl Follows {
    /// Starts following `task_ids` for request `request_id`.
    pub fn start(
        &mut self,
        runtimes: &Runtimes,
        uplink: &UplinkSender,
        request_id: u64,
        task_ids: Vec<TaskId>,
        tail: usize,
    ) {
        self.running.retain(|_, task| !task.is_finished());
        let tasks = task_ids.len();
        let handle = tokio::spawn(follow_request(
            runtimes.clone(),
            uplink.clone(),
            request_id,
            task_ids,
            tail,
        ));
        if let Some(old) = self.running.insert(request_id, handle) {
            old.abort();
        }
        info!(
            request = request_id,
            tasks,
            follows = self.running.len(),
            "started following tasks' output"
        );
    }

    /// Stops following request `request_id` (its client went away).
    pub fn cancel(&mut self, request_id: u64) {
        let Some(task) = self.running.remove(&request_id) else {
            return;
        };
        let was_running = !task.is_finished();
        task.abort();
        self.running.retain(|_, task| !task.is_finished());
        if !was_running {
            return;
        }
        info!(
            request = request_id,
            reason = "cancelled",
            follows = self.running.len(),
            "stopped following tasks' output"
        );
    }

    /// Stops every follow: the session that carried their requests is gone
    /// (a new leader knows none of them).
    pub fn cancel_all(&mut self, reason: &str) {
        for (request_id, task) in self.running.drain() {
            let was_running = !task.is_finished();
            task.abort();
            if was_running {
                info!(
                    request = request_id,
                    reason,
                    follows = 0,
                    "stopped following tasks' output"
                );
            }
        }
    }
}

impl Drop for Follows {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

/// Follows every task of a request at once, each until its output is
/// complete; the request ends with the last of them.
async fn follow_request(
    runtimes: Runtimes,
    uplink: UplinkSender,
    request_id: u64,
    task_ids: Vec<TaskId>,
    tail: usize,
) {
    let credits = Arc::new(Semaphore::new(FOLLOW_CREDITS));
    let followers: Vec<_> = task_ids
        .into_iter()
        .map(|id| {
            follow_task(
                runtimes.clone(),
                uplink.clone(),
                Arc::clone(&credits),
                request_id,
                id,
                tail,
            )
        })
        .collect();
    futures::future::join_all(followers).await;
    debug!(
        request = request_id,
        "every followed task's output is complete"
    );
}

/// Follows one task: its batches go up as chunks, each holding a credit
/// until the session takes it; `done` (with the error, if any) at the end.
async fn follow_task(
    runtimes: Runtimes,
    uplink: UplinkSender,
    credits: Arc<Semaphore>,
    request_id: u64,
    id: TaskId,
    tail: usize,
) {
    let task_id = format_id(id);
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(FOLLOW_BATCHES);
    // Owns the sender: once the reader is done, `rx` ends after what it queued.
    let reader = async move { runtimes.follow(id, tail, &tx).await };
    tokio::pin!(reader);
    let mut result = None;
    loop {
        tokio::select! {
            r = &mut reader, if result.is_none() => result = Some(r),
            lines = rx.recv() => {
                let Some(lines) = lines else { break };
                if !send(&uplink, &credits, request_id, &task_id, lines, false, String::new()).await {
                    return;
                }
            }
        }
    }
    let error = match result {
        Some(Err(e)) => e.to_string(),
        _ => String::new(),
    };
    send(
        &uplink,
        &credits,
        request_id,
        &task_id,
        Vec::new(),
        true,
        error,
    )
    .await;
}

/// Sends a chunk once a credit is free; `false` if the uplink is gone.
async fn send(
    uplink: &UplinkSender,
    credits: &Arc<Semaphore>,
    request_id: u64,
    task_id: &str,
    lines: Vec<String>,
    done: bool,
    error: String,
) -> bool {
    let Ok(credit) = Arc::clone(credits).acquire_owned().await else {
        return false;
    };
    let chunk = proto::LogChunk {
        request_id,
        task_id: task_id.to_owned(),
        lines,
        done,
        error,
    };
    uplink.send(Uplink::FollowedLogs(chunk, credit)).is_ok()
}
