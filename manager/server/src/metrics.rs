//! The manager's Prometheus metrics, served on `/metrics` by axum in the text
//! format 0.0.4, or OpenMetrics when the scraper's `Accept` header asks for it
//! ([`mesh_api::exposition`]).
//!
//! | metric | labels |
//! | --- | --- |
//! | `mesh_manager_is_leader` (gauge, 0 or 1) | |
//! | `mesh_manager_raft_term` (gauge) | |
//! | `mesh_manager_raft_commit_index`, `mesh_manager_raft_applied_index` (gauges) | |
//! | `mesh_manager_raft_voters` (gauge) | |
//! | `mesh_manager_raft_snapshot_index`, `mesh_manager_raft_purged_index` (gauges) | |
//! | `mesh_manager_raft_snapshot_bytes` (gauge) | |
//! | `mesh_manager_nodes` (gauge) | `state` = `ready`, `down` or `unknown` |
//! | `mesh_manager_service_tasks` (gauge): `service ls`'s replicas | `service`, `state` = `running` or `desired` |
//! | `mesh_manager_rpc_duration_seconds` (histogram) | `method`, `code` |
//! | `mesh_manager_raft_write_duration_seconds` (histogram) | |
//! | `mesh_manager_assignment_refresh_duration_seconds` (histogram): the leader bringing every agent's assignment up to a state change | |
//! | `mesh_manager_assignments_sent_total` (counter) | `kind` = `whole` or `delta` |
//! | `mesh_manager_leader_plan_duration_seconds` (histogram): one plan of the leader's loops (a pass over the state) | `trigger` = `change`, `deadline` or `safety_net` |
//! | `mesh_manager_assignment_sent_bytes_total` (counter): their encoded size | |
//!
//! Every label takes a bounded set of values, whoever calls: `method` is the
//! name of one of `mesh.proto`'s RPCs or `unknown` (any other path), `code`
//! a gRPC status code (`0` to `16`) or `unknown`, `service` the name of a service
//! in the state (a removed service's series go with it).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use mesh_api::exposition;
use mesh_api::node::NodeStatus;

use mesh_core::state::ClusterState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));

/// The `method` label of a request path: the RPC's name if the path is one
/// of `mesh.proto`'s, else `unknown`, so that callers cannot grow the
/// metrics with paths of their choosing.
fn method_label(path: &str) -> &'static str {
    RPC_METHODS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or(UNKNOWN, |(_, method)| *method)
}

/// The `code` label of a `grpc-status` value: the code if it is one of
/// gRPC's (0 to 16), else `unknown`.
fn code_label(status: Option<&str>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match status {
        None => "0",
        Some(code) => CODES
            .iter()
            .find(|c| **c == code)
            .copied()
            .unwrap_or(UNKNOWN),
    }
}

/// The label value of anything not in a known set.
const UNKNOWN: &str = "unknown";

/// What made the leader plan.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PlanTrigger {
    /// The replicated state changed (or leadership began).
    Change,
    /// Time-based work came due.
    Deadline,
    /// The periodic pass.
    SafetyNet,
}

impl PlanTrigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Deadline => "deadline",
            Self::SafetyNet => "safety_net",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceTaskLabels {
    service: String,
    state: &'static str,
}

/// Raft figures the metrics report, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftFigures {
    /// Whether this manager leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Highest committed log index known here.
    pub commit_index: u64,
    /// Highest applied log index.
    pub applied_index: u64,
    /// Voting members.
    pub voters: u64,
    /// Last log index the latest snapshot covers (0 without one).
    pub snapshot_index: u64,
    /// Last log index purged from the log after a snapshot (0 if none).
    pub purged_index: u64,
}

/// The size in bytes of the latest snapshot this process built, installed or saved
/// (sealed, as stored in the Raft database); 0 until the first one. A process holds one
/// state machine, so one figure.
static SNAPSHOT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Records the size of the snapshot just stored (see `mesh_manager_raft_snapshot_bytes`).
pub fn record_snapshot_bytes(bytes: usize) {
    SNAPSHOT_BYTES.store(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The manager's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    is_leader: Gauge,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    voters: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    snapshot_bytes: Gauge,
    nodes: Family<NodeLabels, Gauge>,
    service_tasks: Family<ServiceTaskLabels, Gauge>,
    /// The services `service_tasks` has series of, to remove a removed service's.
    service_tasks_of: Mutex<BTreeSet<String>>,
    rpc: Family<RpcLabels, Histogram>,
    writes: Histogram,
    refreshes: Histogram,
    plans: Family<TriggerLabels, Histogram>,
    assignments: Family<KindLabels, Counter>,
    assignment_bytes: Counter,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_manager");
        let is_leader = Gauge::default();
        registry.register(
            "is_leader",
            "1 if this manager is the Raft leader",
            is_leader.clone(),
        );
        let term = Gauge::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        let commit_index = Gauge::default();
        registry.register(
            "raft_commit_index",
            "Highest Raft log index known to be committed",
            commit_index.clone(),
        );
        let applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Highest Raft log index applied to the state machine",
            applied_index.clone(),
        );
        let voters = Gauge::default();
        registry.register("raft_voters", "Voting Raft members", voters.clone());
        let snapshot_index = Gauge::default();
        registry.register(
            "raft_snapshot_index",
            "Last Raft log index the latest snapshot covers",
            snapshot_index.clone(),
        );
        let purged_index = Gauge::default();
        registry.register(
            "raft_purged_index",
            "Last Raft log index purged (compacted) from the log",
            purged_index.clone(),
        );
        let snapshot_bytes = Gauge::default();
        registry.register(
            "raft_snapshot_bytes",
            "Size of the latest Raft snapshot stored here, in bytes (0 before the first)",
            snapshot_bytes.clone(),
        );
        let nodes = Family::<NodeLabels, Gauge>::default();
        registry.register("nodes", "Cluster nodes by state", nodes.clone());
        let service_tasks = Family::<ServiceTaskLabels, Gauge>::default();
        registry.register(
            "service_tasks",
            "A service's tasks: running now, and desired (its replicas, or for a global service its eligible nodes), as `service ls` counts them",
            service_tasks.clone(),
        );
        let rpc = Family::<RpcLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC calls served, by method and status code",
            rpc.clone(),
        );
        let writes = latency_histogram();
        registry.register(
            "raft_write_duration_seconds",
            "Time from proposing a command to its commit (or failure)",
            writes.clone(),
        );
        let refreshes = latency_histogram();
        registry.register(
            "assignment_refresh_duration_seconds",
            "Time the leader took to bring every agent's assignment up to a state change",
            refreshes.clone(),
        );
        let plans = Family::<TriggerLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "leader_plan_duration_seconds",
            "Time of one plan of the leader's loops (a pass over the state), by what triggered it",
            plans.clone(),
        );
        let assignments = Family::<KindLabels, Counter>::default();
        registry.register(
            "assignments_sent",
            "Assignment messages handed to agent sessions, whole or as changes",
            assignments.clone(),
        );
        let assignment_bytes = Counter::default();
        registry.register(
            "assignment_sent_bytes",
            "Encoded size of the assignment messages handed to agent sessions",
            assignment_bytes.clone(),
        );
        Self {
            registry,
            is_leader,
            term,
            commit_index,
            applied_index,
            voters,
            snapshot_index,
            purged_index,
            snapshot_bytes,
            nodes,
            service_tasks,
            service_tasks_of: Mutex::default(),
            rpc,
            writes,
            refreshes,
            plans,
            assignments,
            assignment_bytes,
        }
    }

    /// Records one plan of the leader's loops.
    pub fn observe_plan(&self, trigger: PlanTrigger, elapsed: Duration) {
        self.plans
            .get_or_create(&TriggerLabels {
                trigger: trigger.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one refresh of the agents' assignments.
    pub fn assignments_refreshed(&self, elapsed: Duration, pushed: crate::grpc::agents::Pushed) {
        self.refreshes.observe(elapsed.as_secs_f64());
        for (kind, count) in [("whole", pushed.whole), ("delta", pushed.deltas)] {
            if count > 0 {
                self.assignments
                    .get_or_create(&KindLabels { kind })
                    .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
            }
        }
        self.assignment_bytes
            .inc_by(u64::try_from(pushed.bytes).unwrap_or(u64::MAX));
    }

    /// Records one write's latency.
    pub fn observe_write(&self, elapsed: Duration) {
        self.writes.observe(elapsed.as_secs_f64());
    }

    /// Records one RPC of request path `path` that answered `grpc_status`
    /// (`None`: in trailers, counted as OK). Labels are bounded: see the
    /// module's documentation.
    pub fn observe_rpc(&self, path: &str, grpc_status: Option<&str>, elapsed: Duration) {
        self.rpc
            .get_or_create(&RpcLabels {
                method: method_label(path),
                code: code_label(grpc_status),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Refreshes the gauges from Raft and the state.
    pub fn refresh(&self, raft: RaftFigures, state: &ClusterState) {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.is_leader.set(i64::from(raft.is_leader));
        self.term.set(to_i64(raft.term));
        self.commit_index.set(to_i64(raft.commit_index));
        self.applied_index.set(to_i64(raft.applied_index));
        self.voters.set(to_i64(raft.voters));
        self.snapshot_index.set(to_i64(raft.snapshot_index));
        self.purged_index.set(to_i64(raft.purged_index));
        self.snapshot_bytes
            .set(to_i64(SNAPSHOT_BYTES.load(Ordering::Relaxed)));
        for status in [NodeStatus::Ready, NodeStatus::Down, NodeStatus::Unknown] {
            let count = state.nodes.values().filter(|n| n.status == status).count();
            self.nodes
                .get_or_create(&NodeLabels {
                    state: status.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        // Set in place (a concurrent scrape sees every series), then a removed
        // service's series removed.
        let mut served = self
            .service_tasks_of
            .lock()
            .expect("service_tasks_of lock poisoned");
        let mut now = BTreeSet::new();
        for (service, (running, desired)) in crate::grpc::control::all_task_counts(state) {
            for (label, count) in [("running", running), ("desired", desired)] {
                self.service_tasks
                    .get_or_create(&ServiceTaskLabels {
                        service: service.spec.name.clone(),
                        state: label,
                    })
                    .set(i64::from(count));
            }
            now.insert(service.spec.name.clone());
        }
        for gone in served.difference(&now) {
            for label in ["running", "desired"] {
                self.service_tasks.remove(&ServiceTaskLabels {
                    service: gone.clone(),
                    state: label,
                });
            }
        }
        *served = now;
    }

    /// The OpenMetrics exposition.
    ///
    /// # Errors
    /// If encoding fails.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// How `/healthz` learns whether the manager can do its job: `Err` with
/// the reason when it cannot.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The `/healthz` answer for `health`: 200 `ok`, or 503 `unhealthy:` and
/// the reason.
#[must_use]
pub fn healthz_response(health: Result<(), String>) -> (http::StatusCode, String) {
    match health {
        Ok(()) => (http::StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

/// Serves `/metrics` and `/healthz`; `refresh` runs before each scrape,
/// `health` on each `/healthz` (200 while it is `Ok`, 503 otherwise).
///
/// # Errors
/// If binding or serving fails.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    health: HealthCheck,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: http::HeaderMap| {
                let metrics = Arc::clone(&metrics);
                let refresh = Arc::clone(&refresh);
                async move {
                    refresh();
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    match metrics.encode() {
                        Ok(body) => {
                            let (content_type, body) =
                                exposition::render(body, exposition::negotiate(accept));
                            ([(header::CONTENT_TYPE, content_type)], body).into_response()
                        }
                        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&health);
                async move { healthz_response(health()) }
            }),
        );
    axum::serve(listener, app).await
}

/// A tower layer timing every gRPC call into `mesh_manager_rpc_duration_seconds`.
#[derive(Clone, Debug)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RpcMetricsLayer {
    /// Records into `metrics`.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone, Debug)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let metrics = Arc::clone(&self.metrics);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            // Unary errors carry grpc-status in the headers; streams and
            // successes carry it in trailers, which this layer does not wait for.
            let code = response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap_or(UNKNOWN));
            metrics.observe_rpc(&path, code, started.elapsed());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::{Layer as _, Service as _, ServiceExt as _};

    use super::{Metrics, RaftFigures, RpcMetricsLayer, healthz_response};

    /// Fault 7: `/healthz` answered 200 whatever the manager's state.
    #[test]
    fn healthz_is_503_with_the_reason_when_unhealthy() {
        assert_eq!(
            healthz_response(Ok(())),
            (http::StatusCode::OK, "ok\n".to_owned())
        );
        let (code, body) = healthz_response(Err("raft stopped: disk full".into()));
        assert_eq!(code, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "unhealthy: raft stopped: disk full\n");
    }

    /// Fault 8: a caller choosing request paths must not choose label
    /// values. The known RPCs keep their method; anything else is counted
    /// under one label.
    #[tokio::test]
    async fn rpc_labels_are_bounded_to_the_known_methods() {
        let metrics = Arc::new(Metrics::new());
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut service = RpcMetricsLayer::new(Arc::clone(&metrics)).layer(inner);
        let mut paths = vec![
            "/mesh.v1.Control/ListNodes".to_string(),
            "/mesh.v1.Join/Join".to_string(),
        ];
        paths.extend((0..100).map(|i| format!("/random-{i}/path-{i}")));
        paths.push("/mesh.v1.Control/NoSuchCall".into());
        paths.push("no-slash".into());
        for path in paths {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            service.ready().await.unwrap().call(request).await.unwrap();
        }
        let text = metrics.encode().unwrap();
        let methods: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("mesh_manager_rpc_duration_seconds_count"))
            .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            methods,
            ["Join", "ListNodes", "unknown"].into_iter().collect(),
            "{text}"
        );
    }

    /// `mesh_manager_service_tasks` has a service's series while it exists, and none of
    /// a removed one.
    #[test]
    fn service_task_series_follow_the_services() {
        use mesh_api::spec::{RuntimeKind, ServiceSpec};
        use mesh_core::state::Command;

        let metrics = Metrics::new();
        let mut state = crate::grpc::control::tests::cluster();
        for name in ["web", "api"] {
            let spec = ServiceSpec::new(name, RuntimeKind::Process, "/bin/sleep", vec![]);
            state
                .apply(&Command::CreateService { spec, at_ms: 1 })
                .unwrap();
        }
        let series = |metrics: &Metrics| -> Vec<String> {
            let text = metrics.encode().unwrap();
            text.lines()
                .filter(|l| l.starts_with("mesh_manager_service_tasks{"))
                .map(str::to_owned)
                .collect()
        };
        metrics.refresh(RaftFigures::default(), &state);
        assert_eq!(series(&metrics).len(), 4, "{:?}", series(&metrics));
        let web = state
            .services
            .values()
            .find(|s| s.spec.name == "web")
            .unwrap()
            .id;
        state
            .apply(&Command::RemoveService { id: web, at_ms: 2 })
            .unwrap();
        metrics.refresh(RaftFigures::default(), &state);
        let left = series(&metrics);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter().all(|l| l.contains("service=\"api\"")),
            "{left:?}"
        );
    }
}
