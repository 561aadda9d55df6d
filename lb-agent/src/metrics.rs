//! Prometheus metrics: per-CPU dataplane counters summed at scrape time by a custom
//! collector, plus the agent's own reload counters, served on `/metrics` by axum.
//!
//! | metric | labels |
//! | --- | --- |
//! | `lb_service_packets_total`, `lb_service_bytes_total`, `lb_service_new_flows_total` | `service`, `port` |
//! | `lb_backend_packets_total`, `lb_backend_bytes_total`, `lb_backend_new_flows_total` | `service`, `port`, `backend` |
//! | `lb_dropped_packets_total` | `reason` |
//! | `lb_flows` (gauge, from the last sweep) | `proto` |
//! | `lb_backends` (gauge) | `service`, `state` = `active` or `draining` |
//! | `lb_config_reloads_total` | `result` = `success` or `failure` |
//! | `lb_config_last_reload_success_timestamp_seconds` (gauge) | |

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

use crate::dataplane::desired::{BackendLabels, Desired, ServiceLabels};
use crate::dataplane::flows::FlowCounts;
use crate::dataplane::loader::CounterMaps;

/// What the collector needs to label the counters, updated after each reload and sweep.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Labels by service id.
    pub services: BTreeMap<u32, ServiceLabels>,
    /// Labels by backend id.
    pub backends: BTreeMap<u32, BackendLabels>,
    /// (active, draining) backends per configured service.
    pub backend_counts: BTreeMap<String, (u32, u32)>,
    /// Flow counts of the last sweep.
    pub flows: FlowCounts,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    view: Arc<RwLock<View>>,
}

impl Metrics {
    /// Metrics over the dataplane's counter maps.
    #[must_use]
    pub fn new(counters: Arc<Mutex<CounterMaps>>) -> Self {
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
        let view = Arc::new(RwLock::new(View::default()));
        registry.register_collector(Box::new(DataplaneCollector {
            counters,
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
        }
    }

    /// Records a successful configuration load and its labels.
    pub fn reload_succeeded(&self, desired: &Desired) {
        self.reloads
            .get_or_create(&vec![("result", "success")])
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        view.services.clone_from(&desired.service_labels);
        view.backends.clone_from(&desired.backend_labels);
        view.backend_counts.clone_from(&desired.backend_counts);
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

    /// The text exposition.
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
                get(move || {
                    let m = Arc::clone(&self);
                    async move {
                        match m.encode() {
                            Ok(body) => (
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                body,
                            )
                                .into_response(),
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
        let (services, backends, drops) = {
            let maps = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            let services: Vec<_> = view
                .services
                .iter()
                .filter_map(|(id, l)| Some((l, maps.service(*id).ok()?)))
                .collect();
            let backends: Vec<_> = view
                .backends
                .iter()
                .filter_map(|(id, l)| Some((l, maps.backend(*id).ok()?)))
                .collect();
            let drops: Vec<_> = DropReason::ALL
                .iter()
                .map(|r| (r.name(), maps.drops(*r as u32).unwrap_or(0)))
                .collect();
            (services, backends, drops)
        };
        for (name, help, field) in SERVICE_FIELDS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, c) in &services {
                let labels = [("service", l.service.as_str()), ("port", l.port.as_str())];
                ConstCounter::new(field(c)).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, field) in BACKEND_FIELDS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, c) in &backends {
                let labels = [
                    ("service", l.service.as_str()),
                    ("port", l.port.as_str()),
                    ("backend", l.backend.as_str()),
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
        Ok(())
    }
}
