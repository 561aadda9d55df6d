//! What the operator's API shows of a network (`meshctl network ls` and `inspect`):
//! the network, user or `ingress`, with the services reached on it and the tasks that
//! have an address on it. A pure function of the state.

use mesh_api::network::{
    AttachedService, AttachedTask, INGRESS_ID, INGRESS_NAME, NetworkId, NetworkInfo, OVERLAY_DRIVER,
};
use mesh_api::node::format_id;

use crate::state::{ClusterState, StateError};

/// Network `id` as the API shows it.
///
/// # Errors
/// [`StateError::UnknownNetwork`].
pub fn network_info(state: &ClusterState, id: NetworkId) -> Result<NetworkInfo, StateError> {
    let target = format_id(id);
    let service_name = |service: u64| {
        state
            .services
            .get(&service)
            .map_or_else(|| format_id(service), |s| s.spec.name.clone())
    };
    let live = state
        .tasks
        .values()
        .filter(|t| !t.status.state.is_terminal());
    if id == INGRESS_ID {
        let ingress = &state.ingress;
        let subnet = ipnetwork::Ipv4Network::new(ingress.subnet, ingress.prefix)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let mut services: Vec<AttachedService> = state
            .services
            .values()
            .filter(|s| s.spec.task.networks.is_empty())
            .map(|s| AttachedService {
                id: s.id,
                name: s.spec.name.clone(),
                vip: s.endpoint.vip,
                aliases: Vec::new(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let tasks = live
            .filter_map(|t| {
                let service = service_name(t.service);
                Some(AttachedTask {
                    id: t.id,
                    name: t.name(&service),
                    service,
                    addr: t.addr?,
                })
            })
            .collect();
        return Ok(NetworkInfo {
            id,
            name: INGRESS_NAME.to_string(),
            driver: OVERLAY_DRIVER.to_string(),
            subnet,
            gateway: None,
            vni: ingress.vni,
            ingress: true,
            internal: false,
            attachable: false,
            labels: std::collections::BTreeMap::new(),
            created_at_ms: 0,
            services,
            tasks,
        });
    }
    let network = state.network(id)?;
    let mut services: Vec<AttachedService> = state
        .services
        .values()
        .filter_map(|s| {
            let attachment = s.spec.task.networks.iter().find(|a| a.target == target)?;
            Some(AttachedService {
                id: s.id,
                name: s.spec.name.clone(),
                vip: s
                    .endpoint
                    .vips
                    .iter()
                    .find(|v| v.network == id)
                    .map(|v| v.addr),
                aliases: attachment.aliases.clone(),
            })
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let tasks = live
        .filter_map(|t| {
            let addr = t.networks.iter().find(|a| a.network == id)?.addr;
            let service = service_name(t.service);
            Some(AttachedTask {
                id: t.id,
                name: t.name(&service),
                service,
                addr,
            })
        })
        .collect();
    Ok(NetworkInfo {
        id,
        name: network.spec.name.clone(),
        driver: network.spec.driver.clone(),
        subnet: network.subnet,
        gateway: Some(network.gateway),
        vni: network.vni,
        ingress: false,
        internal: network.spec.internal,
        attachable: network.spec.attachable,
        labels: network.spec.labels.clone(),
        created_at_ms: network.created_at_ms,
        services,
        tasks,
    })
}

/// Every network as the API shows it, `ingress` included, by name (as docker lists them).
#[must_use]
pub fn all(state: &ClusterState) -> Vec<NetworkInfo> {
    let mut ids: Vec<(&str, NetworkId)> = state
        .networks
        .values()
        .map(|n| (n.spec.name.as_str(), n.id))
        .chain(std::iter::once((INGRESS_NAME, INGRESS_ID)))
        .collect();
    ids.sort_unstable();
    ids.into_iter()
        .filter_map(|(_, id)| network_info(state, id).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing;
    use mesh_api::spec::{NetworkAttachmentSpec, RuntimeKind, ServiceSpec};

    #[test]
    fn a_network_shows_its_services_vips_and_tasks_addresses() {
        let mut state = testing::ready(&[1]);
        let back = testing::create_network(&mut state, "back");
        let plain = testing::create_service(
            &mut state,
            ServiceSpec::new("plain", RuntimeKind::Process, "task-echo", vec![]),
        );
        let mut spec = ServiceSpec::new("api", RuntimeKind::Process, "task-echo", vec![]);
        spec.task.networks = vec![NetworkAttachmentSpec {
            target: "back".into(),
            aliases: vec!["db".into()],
        }];
        let api = testing::create_service(&mut state, spec);
        let ids = testing::create_tasks(&mut state, api.id, &[Some(1)]);
        let info = network_info(&state, back.id).unwrap();
        assert_eq!(info.name, "back");
        assert_eq!(info.services.len(), 1);
        assert_eq!(info.services[0].name, "api");
        assert_eq!(info.services[0].aliases, ["db"]);
        assert_eq!(info.services[0].vip, Some(api.endpoint.vips[0].addr));
        assert_eq!(info.tasks.len(), 1);
        assert_eq!(info.tasks[0].name, "api.1");
        assert_eq!(info.tasks[0].addr, state.tasks[&ids[0]].networks[0].addr);
        // Ingress: the services given no network, every live task's ingress address.
        let ingress = network_info(&state, INGRESS_ID).unwrap();
        assert!(ingress.ingress);
        assert_eq!(ingress.subnet.to_string(), "10.255.0.0/16");
        assert_eq!(ingress.services.len(), 1);
        assert_eq!(ingress.services[0].vip, plain.endpoint.vip);
        assert_eq!(ingress.tasks[0].addr, state.tasks[&ids[0]].addr.unwrap());
        let names: Vec<_> = all(&state).into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["back", "ingress"]);
        testing::shut_down(&mut state, ids[0]);
        testing::report(&mut state, 1, ids[0], mesh_api::task::TaskState::Shutdown);
        assert!(network_info(&state, back.id).unwrap().tasks.is_empty());
    }
}
