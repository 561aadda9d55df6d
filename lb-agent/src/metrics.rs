//! Prometheus metrics: per-CPU dataplane counters summed at scrape time by a custom
//! collector, plus the agent's own reload counters, served on `/metrics` by axum in
//! the text format 0.0.4, or OpenMetrics when the scraper's `Accept` header asks for
//! it ([`mesh_api::exposition`]).
//!
//! | metric | labels |
//! | --- | --- |
//! | `lb_service_packets_total`, `lb_service_bytes_total`, `lb_service_new_flows_total` | `service`, `port` |
//! | `lb_backend_packets_total`, `lb_backend_bytes_total`, `lb_backend_new_flows_total` | `service`, `port`, `backend` |
//! | `lb_dropped_packets_total` | `reason` |
//! | `lb_flows` (gauge, from the last sweep) | `proto` |
//! | `lb_flow_table_entries`, `lb_flow_table_capacity` (gauges) | |
//! | `lb_flow_handshakes`, `lb_flow_handshakes_capacity` (gauges: the handshake table) | |
//! | `lb_flows_lost_total` (connections whose flow entry was evicted, balanced again) | |
//! | `lb_backends` (gauge) | `service`, `state` = `active` or `draining` |
//! | `lb_config_reloads_total` | `result` = `success` or `failure` |
//! | `lb_config_last_reload_success_timestamp_seconds` (gauge) | |
//! | `lb_session_state` (gauge, managed agent) | `state` = `connecting`, `established`, `lost` |
//! | `lb_tasks` (gauge, managed agent) | `state` = the task state, lower case |
//! | `lb_task_files_received_total` (managed agent) | `kind` = `secret`, `config` |
//! | `lb_dns_queries_total` (managed agent: the tasks' resolver) | `result` = `answered`, `nxdomain`, `forwarded`, `refused`, `failed` |
//!
//! The `backend` label is stable across task replacements: a managed agent's
//! endpoints are named `<task name>.<task id>` (`web.1.00000000000000ab`) and the
//! label is the task's name (`web.1`: its service and slot), which the replacement
//! keeps. The counters of a backend that goes away are carried into its series, so a
//! replacement continues the series instead of starting a new one at zero; when an old
//! and a new backend of one slot both exist (a draining old task) the series is their
//! sum.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use lb_common::{Counters, DropReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use axum::http::HeaderMap;
use mesh_api::exposition;
use mesh_api::task::TaskState;

use crate::dataplane::desired::{BackendLabels, Desired, ServiceLabels};
use crate::dataplane::flows::FlowCounts;
use crate::dataplane::loader::CounterMaps;

/// The labels of one backend series: service, port and [`backend_label`].
pub type BackendSeries = (String, String, String);

/// The `backend` label of the endpoint called `endpoint`: without the task ID a
/// managed agent's endpoint names end with (`.` and 16 hex digits), so that the
/// label is the task's name (`web.1`, its service and slot), which a replacement
/// keeps; any other name as it is.
#[must_use]
pub fn backend_label(endpoint: &str) -> &str {
    match endpoint.rsplit_once('.') {
        Some((name, id))
            if !name.is_empty() && id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => endpoint,
    }
}

/// The series of a backend's labels.
fn series(l: &BackendLabels) -> BackendSeries {
    (
        l.service.clone(),
        l.port.clone(),
        backend_label(&l.backend).to_owned(),
    )
}

/// The state of a managed agent's session with the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Not established yet.
    Connecting,
    /// A leader accepted the session.
    Established,
    /// The session ended; it is being retried.
    Lost,
}

impl SessionState {
    /// Every state, in label order.
    pub const ALL: [Self; 3] = [Self::Connecting, Self::Established, Self::Lost];

    /// The `state` label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Established => "established",
            Self::Lost => "lost",
        }
    }
}

/// The task states an agent reports, always present in `lb_tasks`.
const AGENT_TASK_STATES: [TaskState; 7] = [
    TaskState::Preparing,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Complete,
    TaskState::Shutdown,
    TaskState::Failed,
    TaskState::Rejected,
];

/// What a managed agent adds to its metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedView {
    /// The session's state.
    pub session: SessionState,
    /// The node's tasks by state, as last reported.
    pub tasks: BTreeMap<TaskState, u64>,
    /// Secrets and configs received from the managers so far (each counted when it
    /// arrives, not again while it is held).
    pub files_received: FilesReceived,
}

/// Secrets and configs a managed agent received (`lb_task_files_received_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilesReceived {
    /// Secrets.
    pub secrets: u64,
    /// Configs.
    pub configs: u64,
}

impl ManagedView {
    /// The view of `session` and the tasks whose states are `states`.
    #[must_use]
    pub fn new(session: SessionState, states: impl IntoIterator<Item = TaskState>) -> Self {
        let mut tasks: BTreeMap<TaskState, u64> =
            AGENT_TASK_STATES.iter().map(|s| (*s, 0)).collect();
        for state in states {
            *tasks.entry(state).or_default() += 1;
        }
        Self {
            session,
            tasks,
            files_received: FilesReceived::default(),
        }
    }

    /// With the count of secrets and configs received.
    #[must_use]
    pub fn with_files_received(mut self, files_received: FilesReceived) -> Self {
        self.files_received = files_received;
        self
    }
}

/// What the collector needs to label the counters, updated after each reload and sweep.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Labels by service id.
    pub services: BTreeMap<u32, ServiceLabels>,
    /// Labels by backend id.
    pub backends: BTreeMap<u32, BackendLabels>,
    /// Counters of backends that went away, by series (see the module's documentation).
    pub retired: BTreeMap<BackendSeries, Counters>,
    /// (active, draining) backends per configured service.
    pub backend_counts: BTreeMap<String, (u32, u32)>,
    /// Flow counts of the last sweep.
    pub flows: FlowCounts,
    /// The flow table's size.
    pub flow_capacity: u64,
    /// The managed agent's session and tasks (`None` standalone).
    pub managed: Option<ManagedView>,
    /// The managed agent's resolver's query counters (`None` standalone).
    pub dns: Option<Arc<crate::dns::Counters>>,
}

/// Counters of the backends a reload is about to remove or relabel, read before the
/// maps change ([`Metrics::retiring`]), for [`Metrics::reload_succeeded`].
#[derive(Clone, Debug, Default)]
pub struct Retiring(Vec<(BackendSeries, Counters)>);

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    view: Arc<RwLock<View>>,
    counters: Arc<Mutex<CounterMaps>>,
}

impl Metrics {
    /// Metrics over the dataplane's counter maps and a flow table of
    /// `flow_capacity` entries.
    #[must_use]
    pub fn new(counters: Arc<Mutex<CounterMaps>>, flow_capacity: u64) -> Self {
        let mut registry = Registry::default();
        let reloads = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "lb_config_reloads",
            "Configuration loads, by result",
            reloads.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lb_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            last_success.clone(),
        );
        let view = Arc::new(RwLock::new(View {
            flow_capacity,
            ..View::default()
        }));
        registry.register_collector(Box::new(DataplaneCollector {
            counters: Arc::clone(&counters),
            view: Arc::clone(&view),
        }));
        // Both results appear from the start, so rate() works from the first failure.
        drop(reloads.get_or_create(&vec![("result", "success")]));
        drop(reloads.get_or_create(&vec![("result", "failure")]));
        Self {
            registry,
            reloads,
            last_success,
            view,
            counters,
        }
    }

    /// The counters of the backends that `next` removes or relabels, read now,
    /// before the maps change (a removed backend's counters go, a reused id's are
    /// zeroed), to be carried into their series once the reload succeeded.
    #[must_use]
    pub fn retiring(&self, next: &Desired) -> Retiring {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let maps = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Retiring(
            view.backends
                .iter()
                .filter(|(id, l)| next.backend_labels.get(id) != Some(l))
                .filter_map(|(id, l)| Some((series(l), maps.backend(*id).ok()?)))
                .collect(),
        )
    }

    /// Records a successful configuration load and its labels; `retiring` (from
    /// [`Metrics::retiring`] before the load) is carried into its series.
    pub fn reload_succeeded(&self, desired: &Desired, retiring: Retiring) {
        self.reloads
            .get_or_create(&vec![("result", "success")])
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        for (series, counters) in retiring.0 {
            *view.retired.entry(series).or_default() += counters;
        }
        // A series whose service port is gone is not coming back.
        let ports: std::collections::BTreeSet<(&str, &str)> = desired
            .service_labels
            .values()
            .map(|l| (l.service.as_str(), l.port.as_str()))
            .collect();
        view.retired
            .retain(|(service, port, _), _| ports.contains(&(service.as_str(), port.as_str())));
        view.services.clone_from(&desired.service_labels);
        view.backends.clone_from(&desired.backend_labels);
        view.backend_counts.clone_from(&desired.backend_counts);
    }

    /// Records the managed agent's session state and task counts.
    pub fn set_managed(&self, managed: ManagedView) {
        self.view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .managed = Some(managed);
    }

    /// Counts the tasks' resolver's queries from `counters` (`lb_dns_queries_total`).
    pub fn set_dns(&self, counters: Arc<crate::dns::Counters>) {
        self.view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .dns = Some(counters);
    }

    /// Records a failed configuration load.
    pub fn reload_failed(&self) {
        self.reloads
            .get_or_create(&vec![("result", "failure")])
            .inc();
    }

    /// Records the flow counts of a sweep.
    pub fn set_flows(&self, flows: FlowCounts) {
        self.view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .flows = flows;
    }

    /// The OpenMetrics exposition.
    ///
    /// # Errors
    /// If encoding fails (a collector error).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Serves `/metrics` (and `/healthz`) on `listener` until the task is dropped.
    ///
    /// # Errors
    /// If serving fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let app = Router::new()
            .route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    let m = Arc::clone(&self);
                    async move {
                        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                        match m.encode() {
                            Ok(body) => {
                                let (content_type, body) =
                                    exposition::render(body, exposition::negotiate(accept));
                                ([(header::CONTENT_TYPE, content_type)], body).into_response()
                            }
                            Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        }
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }));
        axum::serve(listener, app).await
    }
}

/// Binds the metrics listener.
///
/// # Errors
/// If the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[derive(Debug)]
struct DataplaneCollector {
    counters: Arc<Mutex<CounterMaps>>,
    view: Arc<RwLock<View>>,
}

type Fields = [(&'static str, &'static str, fn(&Counters) -> u64); 3];

const SERVICE_FIELDS: Fields = [
    (
        "lb_service_packets",
        "Packets forwarded to the service's backends",
        |c| c.packets,
    ),
    (
        "lb_service_bytes",
        "Bytes (L3) forwarded to the service's backends",
        |c| c.bytes,
    ),
    (
        "lb_service_new_flows",
        "New flows assigned to the service's backends",
        |c| c.new_flows,
    ),
];

const BACKEND_FIELDS: Fields = [
    (
        "lb_backend_packets",
        "Packets forwarded to the backend",
        |c| c.packets,
    ),
    (
        "lb_backend_bytes",
        "Bytes (L3) forwarded to the backend",
        |c| c.bytes,
    ),
    (
        "lb_backend_new_flows",
        "New flows assigned to the backend",
        |c| c.new_flows,
    ),
];

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let view = self
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (services, backends, drops, lost) = {
            let maps = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            let services: Vec<_> = view
                .services
                .iter()
                .filter_map(|(id, l)| Some((l, maps.service(*id).ok()?)))
                .collect();
            let mut backends = view.retired.clone();
            for (id, l) in &view.backends {
                if let Ok(c) = maps.backend(*id) {
                    *backends.entry(series(l)).or_default() += c;
                }
            }
            let drops: Vec<_> = DropReason::ALL
                .iter()
                .map(|r| (r.name(), maps.drops(*r as u32).unwrap_or(0)))
                .collect();
            let lost = maps
                .flow_events(lb_common::FlowEvent::Lost as u32)
                .unwrap_or(0);
            (services, backends, drops, lost)
        };
        let m = encoder.encode_descriptor(
            "lb_flows_lost",
            "TCP segments (not SYN or RST) that found no state for their connection, which was \
             balanced again as a new flow: its entry was evicted from a full flow table, lost \
             with the maps, or swept as closed before a late segment",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(lost).encode(m)?;
        for (name, help, field) in SERVICE_FIELDS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, c) in &services {
                let labels = [("service", l.service.as_str()), ("port", l.port.as_str())];
                ConstCounter::new(field(c)).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, field) in BACKEND_FIELDS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((service, port, backend), c) in &backends {
                let labels = [
                    ("service", service.as_str()),
                    ("port", port.as_str()),
                    ("backend", backend.as_str()),
                ];
                ConstCounter::new(field(c)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "lb_dropped_packets",
            "Packets the dataplane dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &drops {
            ConstCounter::new(*n).encode(m.encode_family(&[("reason", *reason)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "lb_flows",
            "Entries of the flow table at the last sweep",
            None,
            MetricType::Gauge,
        )?;
        for (proto, n) in [
            ("tcp", view.flows.tcp),
            ("udp", view.flows.udp),
            ("other", view.flows.other),
        ] {
            ConstGauge::new(n as i64).encode(m.encode_family(&[("proto", proto)])?)?;
        }
        let f = view.flows;
        let entries = f.tcp + f.udp + f.other;
        for (name, help, n) in [
            (
                "lb_flow_table_entries",
                "Entries of the flow table at the last sweep",
                entries,
            ),
            (
                "lb_flow_table_capacity",
                "Entries the flow table can hold",
                view.flow_capacity,
            ),
            (
                "lb_flow_handshakes",
                "Entries of the handshake table (TCP connections not established yet; a SYN \
                 flood fills this one, not the flow table) at the last sweep",
                f.handshakes,
            ),
            (
                "lb_flow_handshakes_capacity",
                "Entries the handshake table can hold",
                u64::from(lb_common::maps::DEFAULT_MAX_SYN_FLOWS),
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m)?;
        }
        let mut m = encoder.encode_descriptor(
            "lb_backends",
            "Configured backends per service, by state",
            None,
            MetricType::Gauge,
        )?;
        for (service, (active, draining)) in &view.backend_counts {
            for (state, n) in [("active", active), ("draining", draining)] {
                let labels = [("service", service.as_str()), ("state", state)];
                ConstGauge::new(i64::from(*n)).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(managed) = &view.managed {
            let mut m = encoder.encode_descriptor(
                "lb_session_state",
                "1 for the state of the session with the leader, 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for state in SessionState::ALL {
                ConstGauge::new(i64::from(managed.session == state))
                    .encode(m.encode_family(&[("state", state.as_str())])?)?;
            }
            let mut m = encoder.encode_descriptor(
                "lb_tasks",
                "The node's tasks, by the state last reported",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in &managed.tasks {
                let label = state.as_str().to_ascii_lowercase();
                ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                    .encode(m.encode_family(&[("state", label.as_str())])?)?;
            }
            let mut m = encoder.encode_descriptor(
                "lb_task_files_received",
                "Secrets and configs received from the managers for this node's tasks (each \
                 counted when it arrives; a node gets only those its tasks to run reference)",
                None,
                MetricType::Counter,
            )?;
            let received = managed.files_received;
            for (kind, n) in [("secret", received.secrets), ("config", received.configs)] {
                ConstCounter::new(n).encode(m.encode_family(&[("kind", kind)])?)?;
            }
        }
        if let Some(dns) = &view.dns {
            let mut m = encoder.encode_descriptor(
                "lb_dns_queries",
                "Queries to the tasks' resolver, by result: answered (here), nxdomain, \
                 forwarded (an upstream server's reply relayed), refused (not from a task of \
                 this node), failed (malformed, unsupported, or no upstream answered)",
                None,
                MetricType::Counter,
            )?;
            for outcome in crate::dns::answer::Outcome::ALL {
                ConstCounter::new(dns.get(outcome))
                    .encode(m.encode_family(&[("result", outcome.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{ManagedView, SessionState, backend_label};
    use mesh_api::task::TaskState;

    #[test]
    fn backend_labels_drop_the_task_id() {
        assert_eq!(backend_label("web.1.00000000000000ab"), "web.1");
        assert_eq!(backend_label("my.svc.12.0123456789abcdef"), "my.svc.12");
        // Standalone endpoint names stay as they are.
        assert_eq!(backend_label("web.2"), "web.2");
        assert_eq!(backend_label("backend-a"), "backend-a");
        assert_eq!(backend_label("web.1.00ab"), "web.1.00ab");
        assert_eq!(backend_label(".00000000000000ab"), ".00000000000000ab");
    }

    #[test]
    fn task_gauges_list_every_agent_state() {
        let view = ManagedView::new(
            SessionState::Established,
            [TaskState::Running, TaskState::Running, TaskState::Failed],
        );
        assert_eq!(view.tasks[&TaskState::Running], 2);
        assert_eq!(view.tasks[&TaskState::Failed], 1);
        assert_eq!(view.tasks[&TaskState::Starting], 0);
        assert_eq!(view.tasks.len(), 7);
    }
}
