//! The cluster view (`mesh-manager --web-addr`): a read-only page of the nodes as
//! columns and their tasks as cards, kept live by server-sent events.
//!
//! - `GET /`, `/app.js`, `/style.css`: the page, embedded in the binary (no CDN, nothing
//!   fetched at run time), with a Content-Security-Policy that lets it load only itself.
//! - `GET /api/events`: `text/event-stream`; a `view` event with the whole
//!   [`view::ClusterView`] at once, then one after each change of the state (changes
//!   within [`COALESCE`] go out together) or of the leader. Nothing is polled: one task
//!   waits on the state machine's change notification (the leader, which is not in the
//!   state, it compares once a second) and renders each change once for all the open
//!   streams, and nothing while none is open.
//! - `GET /api/view`: the same JSON, once.
//!
//! The page has no authentication: it is off by default and meant for loopback
//! (`--web-addr 127.0.0.1:9466`, reached remotely through an SSH tunnel). What it shows
//! is what `node ls`, `service ls` and `service ps` show; nothing secret (no environment,
//! secrets, configs or container labels), and it changes nothing. A peer holds at most
//! [`MAX_STREAMS`] streams at once across all peers; more are refused with 503.

pub mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::grpc::Manager;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Event streams open at once, over all peers; more are refused (503).
pub const MAX_STREAMS: usize = 64;

/// Changes that follow one another within this go out as one event.
pub const COALESCE: Duration = Duration::from_millis(100);

/// How often a stream compares the leader (not part of the state) with the last sent.
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// The page may load only itself; its data comes from its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The view of `manager`'s state now, as JSON.
fn snapshot(manager: &Manager) -> String {
    let raft = manager.raft().manager_view();
    let state = manager.read_unchecked();
    let view = view::build(&state, &raft, mesh_api::time::now_ms());
    serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The views sent to the open streams after the first: [`publish`] renders each change
/// once, whatever the number of streams, and only while one is open.
type Views = Arc<watch::Sender<Arc<str>>>;

/// Renders the view into `views` after each change of the state (changes within
/// [`COALESCE`] together) or of the leader, while a stream listens; until the manager
/// stops.
async fn publish(manager: Manager, views: Views) {
    let leader = || manager.raft().leader().map(|(id, _)| id);
    let mut changes = manager.state_changes();
    let mut sent_leader = leader();
    let mut tick = tokio::time::interval(LEADER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = manager.stopped() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => if leader() == sent_leader { continue },
        }
        tokio::time::sleep(COALESCE).await;
        changes.borrow_and_update();
        sent_leader = leader();
        if views.receiver_count() > 0 {
            views.send_replace(snapshot(&manager).into());
        }
    }
}

/// What one event stream keeps between events.
struct Stream {
    manager: Manager,
    views: watch::Receiver<Arc<str>>,
    first: bool,
    /// Held while the stream lives.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Stream {
    /// The next view to send: the state now the first time, then each one [`publish`]
    /// renders. `None` when the manager stops.
    async fn next(mut self) -> Option<(Result<Event, std::convert::Infallible>, Self)> {
        let view: Arc<str> = if self.first {
            self.first = false;
            snapshot(&self.manager).into()
        } else {
            tokio::select! {
                () = self.manager.stopped() => return None,
                changed = self.views.changed() => changed.ok()?,
            }
            Arc::clone(&self.views.borrow_and_update())
        };
        let event = Event::default().event("view").data(&*view);
        Some((Ok(event), self))
    }
}

/// The page's routes over `manager` (and the task that renders its views for the
/// streams, which ends when the manager stops).
pub fn router(manager: Manager) -> Router {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    let views: Views = Arc::new(watch::Sender::new(Arc::from("")));
    tokio::spawn(publish(manager.clone(), Arc::clone(&views)));
    let view_manager = manager.clone();
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/api/view",
            get(move || {
                let manager = view_manager.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        snapshot(&manager),
                    )
                }
            }),
        )
        .route(
            "/api/events",
            get(move || {
                let manager = manager.clone();
                let streams = Arc::clone(&streams);
                let views = views.subscribe();
                async move {
                    let Ok(permit) = streams.try_acquire_owned() else {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many open views of this manager\n",
                        )
                            .into_response();
                    };
                    let stream = Stream {
                        manager,
                        views,
                        first: true,
                        _permit: permit,
                    };
                    Sse::new(futures::stream::unfold(stream, Stream::next))
                        .keep_alive(KeepAlive::default())
                        .into_response()
                }
            }),
        )
}

/// Serves the page on `listener` until the manager stops.
///
/// # Errors
/// If serving fails.
pub async fn serve(listener: TcpListener, manager: Manager) -> std::io::Result<()> {
    let stop = manager.clone();
    axum::serve(listener, router(manager))
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await
}
