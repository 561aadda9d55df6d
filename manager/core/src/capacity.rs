//! What every node's dataplane must hold for the cluster's services, checked in
//! `apply` before a service is created or changed: the contract that keeps one
//! oversized service from freezing routing on every node.
//!
//! Every node routes every service (the routing mesh), so the whole cluster's
//! services must fit one node's maps (`lb_common::maps`). The accounting follows how
//! an agent turns a service into dataplane services (`lb-agent`'s
//! `managed::dataplane_config`): one per ingress port, two catch-alls (TCP and UDP)
//! on each of its VIPs (ingress, or one per user network), one per host-mode port; each has every task of the service as a
//! backend. A service's tasks are its replicas (every node for a global one), plus
//! the tasks a start-first update runs beside the old ones. Each active backend takes
//! one slot of its table (the managers give every task weight 1), so a table is never
//! longer than `MAX_SLOTS` (a service has at most `MAX_REPLICAS` replicas). A service
//! balanced by `maglev` or `sh` (`--lb-algorithm`) has a Maglev table per mapping
//! instead, of `lb_common::sched::maglev_size` slots (1021 or 4093), and these count
//! against the node's `MAX_LIVE_SLOTS`.

use lb_common::maps::{MAX_BACKENDS, MAX_LIVE_SLOTS, MAX_SERVICES, MAX_SLOTS};
use lb_common::sched::maglev_size;
use mesh_api::service::Service;
use mesh_api::spec::{LbAlgorithm, MAX_REPLICAS, PublishMode, ServiceMode, UpdateOrder};

// The accounting above relies on these.
const _: () = assert!(MAX_REPLICAS * 2 <= MAX_SLOTS && MAX_BACKENDS <= MAX_LIVE_SLOTS);

/// What one service takes in every node's dataplane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Dataplane services (service ids): one per port mapping.
    pub mappings: u64,
    /// Backends: each task, once per mapping.
    pub backends: u64,
    /// Live slots: each task once per mapping, or a Maglev table per mapping.
    pub slots: u64,
}

impl std::ops::Add for Footprint {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            mappings: self.mappings + other.mappings,
            backends: self.backends + other.backends,
            slots: self.slots + other.slots,
        }
    }
}

/// The footprint of `service` in a cluster of `nodes` nodes.
#[must_use]
pub fn footprint(service: &Service, nodes: usize) -> Footprint {
    let ports = &service.endpoint.ports;
    let ingress = ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress)
        .count();
    let host = ports.len() - ingress;
    // Two catch-alls (TCP and UDP) per VIP: the ingress one, or one per user network.
    let vips = usize::from(service.endpoint.vip.is_some()) + service.endpoint.vips.len();
    let catch_alls = 2 * vips;
    let mappings = (ingress + host + catch_alls) as u64;
    let replicas = match service.spec.mode {
        ServiceMode::Replicated { replicas } => u64::from(replicas),
        ServiceMode::Global => nodes as u64,
    };
    let update = &service.spec.update;
    let surge = match update.order {
        UpdateOrder::StartFirst if update.parallelism == 0 => replicas,
        UpdateOrder::StartFirst => u64::from(update.parallelism).min(replicas),
        UpdateOrder::StopFirst => 0,
    };
    let tasks = replicas + surge;
    let slots = match service.spec.endpoint.lb_algorithm {
        LbAlgorithm::Maglev | LbAlgorithm::Sh => {
            let n = u32::try_from(tasks).unwrap_or(u32::MAX);
            u64::from(maglev_size(n).unwrap_or(MAX_SLOTS)) * mappings
        }
        LbAlgorithm::Rr | LbAlgorithm::Lc => tasks * mappings,
    };
    Footprint {
        mappings,
        backends: tasks * mappings,
        slots,
    }
}

/// Why the services would not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster's services would take {count} dataplane {what} on every node, more than \
     the {max} a node holds{detail}"
)]
pub struct Exceeded {
    /// Which limit.
    pub what: &'static str,
    /// What the services would take.
    pub count: u64,
    /// The limit.
    pub max: u32,
    /// The service that brought the total over, and what it takes.
    pub detail: String,
}

/// Checks that `services` (the cluster's, with a new or changed one among them) fit
/// every node's dataplane in a cluster of `nodes` nodes; `changed` names the service
/// to blame.
///
/// # Errors
/// [`Exceeded`], naming the limit.
pub fn check<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    nodes: usize,
    changed: &Service,
) -> Result<(), Exceeded> {
    let total = services
        .into_iter()
        .map(|s| footprint(s, nodes))
        .fold(Footprint::default(), |a, b| a + b);
    let own = footprint(changed, nodes);
    let detail = |unit: &str, n: u64| {
        format!(
            " (service {:?} takes {n} {unit}: its tasks, once per port mapping, and its \
             VIP's two catch-alls each)",
            changed.spec.name
        )
    };
    if total.mappings > u64::from(MAX_SERVICES) {
        return Err(Exceeded {
            what: "port mappings",
            count: total.mappings,
            max: MAX_SERVICES,
            detail: detail("mappings", own.mappings),
        });
    }
    if total.backends > u64::from(MAX_BACKENDS) {
        return Err(Exceeded {
            what: "backends",
            count: total.backends,
            max: MAX_BACKENDS,
            detail: detail("backends", own.backends),
        });
    }
    if total.slots > u64::from(MAX_LIVE_SLOTS) {
        return Err(Exceeded {
            what: "live slots",
            count: total.slots,
            max: MAX_LIVE_SLOTS,
            detail: format!(
                " (service {:?} takes {} slots: a table per port mapping; a maglev or sh \
                 table has 1021 slots, 4093 beyond 10 tasks)",
                changed.spec.name, own.slots
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::service::ServiceEndpoint;
    use mesh_api::spec::{PortSpec, Protocol, RuntimeKind, ServiceSpec};

    fn service(replicas: u32, ports: &[(u16, PublishMode)], vip: bool) -> Service {
        let mut spec = ServiceSpec::new("web", RuntimeKind::Process, "/bin/true", Vec::new());
        spec.mode = ServiceMode::Replicated { replicas };
        let ports: Vec<PortSpec> = ports
            .iter()
            .map(|&(published, mode)| PortSpec {
                published: Some(published),
                target: 80,
                protocol: Protocol::Tcp,
                mode,
            })
            .collect();
        Service {
            id: 1,
            spec,
            previous_spec: None,
            spec_version: 1,
            endpoint: ServiceEndpoint {
                vip: vip.then(|| "10.255.0.2".parse().unwrap()),
                ports,
                vips: Vec::new(),
            },
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_service_takes_a_mapping_per_port_and_two_on_its_vip() {
        let s = service(
            10,
            &[(8080, PublishMode::Ingress), (9090, PublishMode::Host)],
            true,
        );
        assert_eq!(
            footprint(&s, 3),
            Footprint {
                mappings: 4,
                backends: 40,
                slots: 40
            }
        );
        let mut maglev = s.clone();
        maglev.spec.endpoint.lb_algorithm = LbAlgorithm::Maglev;
        assert_eq!(
            footprint(&maglev, 3).slots,
            4 * 1021,
            "10 tasks: tables of 1021"
        );
        let dnsrr = service(10, &[(8080, PublishMode::Ingress)], false);
        assert_eq!(footprint(&dnsrr, 3).mappings, 1);
        let mut global = service(0, &[], true);
        global.spec.mode = ServiceMode::Global;
        assert_eq!(footprint(&global, 7).backends, 14);
        // On two user networks: no ingress VIP, two catch-alls on each network's VIP.
        let mut on_networks = service(10, &[], false);
        on_networks.endpoint.vips = [1, 2]
            .map(|network| mesh_api::network::NetworkAddr {
                network,
                addr: std::net::Ipv4Addr::new(10, 0, 0, 2),
            })
            .to_vec();
        assert_eq!(footprint(&on_networks, 3).mappings, 4);
    }

    #[test]
    fn a_start_first_update_counts_the_tasks_it_adds() {
        let mut s = service(10, &[], true);
        s.spec.update.order = UpdateOrder::StartFirst;
        s.spec.update.parallelism = 3;
        assert_eq!(footprint(&s, 3).backends, (10 + 3) * 2);
        s.spec.update.parallelism = 0;
        assert_eq!(footprint(&s, 3).backends, 20 * 2);
    }

    #[test]
    fn the_limit_that_is_passed_is_named_with_the_service_to_blame() {
        // 16,384 services of 2 mappings each fill the port mappings.
        let small = service(0, &[], true);
        let many = vec![small.clone(); (MAX_SERVICES / 2) as usize];
        assert_eq!(check(&many, 3, &small), Ok(()));
        let mut more = many.clone();
        more.push(small.clone());
        let err = check(&more, 3, &small).unwrap_err();
        assert_eq!(err.what, "port mappings");
        assert_eq!(err.count, u64::from(MAX_SERVICES) + 2);
        assert!(
            err.to_string().contains("\"web\" takes 2 mappings"),
            "{err}"
        );

        // 1,000 replicas on 3 mappings: 3,000 backends; 22 such services pass 65,536.
        let big = service(1_000, &[(8080, PublishMode::Ingress)], true);
        let many = vec![big.clone(); 21];
        assert_eq!(check(&many, 3, &big), Ok(()));
        let many = vec![big.clone(); 22];
        let err = check(&many, 3, &big).unwrap_err();
        assert_eq!((err.what, err.count), ("backends", 66_000));
    }
}
