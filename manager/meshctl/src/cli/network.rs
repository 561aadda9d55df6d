//! `meshctl network ...`'s pure parts, after docker's CLI: `network create`'s flags
//! and the spec they build, `--network`'s syntax for services (`NAME` or
//! `name=NAME,alias=A`), and what `network ls`, `inspect` and `prune` print.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::Args;
use serde_json::{Value, json};

use mesh_api::network::{NetworkId, NetworkInfo, NetworkSpec, OVERLAY_DRIVER};
use mesh_api::node::{format_id, parse_label};
use mesh_api::service::Service;
use mesh_api::spec::NetworkAttachmentSpec;
use mesh_api::time::rfc3339;

use super::flags::FlagError;

/// What `network prune` asks before it removes anything (docker's words).
pub const PRUNE_WARNING: &str = "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ";

/// `meshctl network create`'s flags.
#[derive(Clone, Debug, Args)]
pub struct CreateFlags {
    /// Driver to manage the network (overlay, the only one).
    #[arg(long, short = 'd', default_value = OVERLAY_DRIVER)]
    pub driver: String,
    /// Subnet in CIDR format (default: the next free /24 of 10.0.0.0/8).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway for the subnet (default: its first host).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Enable manual container attachment (kept for docker's CLI).
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on a network (key=value).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// The network's name.
    pub name: String,
}

impl CreateFlags {
    /// The spec these flags describe, checked as far as it can be without the
    /// cluster (name, driver, CIDR and address syntax).
    ///
    /// # Errors
    /// The first malformed flag.
    pub fn spec(&self) -> Result<NetworkSpec, FlagError> {
        let mut spec = NetworkSpec::new(&self.name);
        spec.driver.clone_from(&self.driver);
        if let Some(subnet) = &self.subnet {
            spec.subnet = Some(subnet.parse().map_err(|e| {
                FlagError::new(format!(
                    "invalid subnet {subnet:?}: {e}: expected a CIDR like 10.1.0.0/24"
                ))
            })?);
        }
        if let Some(gateway) = &self.gateway {
            spec.gateway = Some(gateway.parse().map_err(|_| {
                FlagError::new(format!(
                    "invalid gateway {gateway:?}: expected an IPv4 address"
                ))
            })?);
        }
        spec.attachable = self.attachable;
        spec.internal = self.internal;
        for value in &self.label {
            let (k, v) = parse_label(value).map_err(|e| FlagError::new(format!("--label: {e}")))?;
            spec.labels.insert(k, v);
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// Parses `--network` and `--network-add` as docker does: a network name or ID, or the
/// long syntax `name=NAME[,alias=ALIAS...]` (comma-separated `key=value` fields).
///
/// # Errors
/// An unknown field, a field without a value, a missing name, or an alias that is not
/// a DNS label.
pub fn parse_attachment(value: &str) -> Result<NetworkAttachmentSpec, FlagError> {
    let bad = |what: String| Err(FlagError::new(format!("--network {value:?}: {what}")));
    if !value.contains('=') {
        if value.trim().is_empty() || value.contains(',') {
            return bad("expected a network name or name=NAME[,alias=ALIAS]".into());
        }
        return Ok(NetworkAttachmentSpec {
            target: value.trim().to_string(),
            aliases: Vec::new(),
        });
    }
    let mut attachment = NetworkAttachmentSpec {
        target: String::new(),
        aliases: Vec::new(),
    };
    for field in value.split(',') {
        let Some((key, val)) = field.split_once('=') else {
            return bad(format!("invalid field {field:?}: expected key=value"));
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => attachment.target = val.trim().to_string(),
            "alias" => {
                mesh_api::spec::validate_dns_label("alias", val)
                    .map_err(|e| FlagError::new(format!("--network {value:?}: {e}")))?;
                attachment.aliases.push(val.to_string());
            }
            "driver-opt" | "ip" | "ip6" | "mac-address" | "link-local-ip" => {
                return bad(format!("field {key:?} is not supported"));
            }
            _ => return bad(format!("invalid field key {key:?}")),
        }
    }
    if attachment.target.is_empty() {
        return bad("network name must be specified".into());
    }
    Ok(attachment)
}

/// A network ID as `network ls` shows it: its first 12 hex digits, as docker's.
#[must_use]
pub fn short_id(id: NetworkId) -> String {
    format_id(id)[..12].to_string()
}

/// Docker's scope of every network here: `swarm`.
pub const SCOPE: &str = "swarm";

/// Keeps the networks `filters` admit (`name=VALUE`: names containing it, as docker
/// matches; several: any of them).
///
/// # Errors
/// A filter other than `name=...`.
pub fn filtered(
    networks: Vec<NetworkInfo>,
    filters: &[String],
) -> Result<Vec<NetworkInfo>, FlagError> {
    let names = super::format::name_filters(filters)?;
    Ok(networks
        .into_iter()
        .filter(|n| super::format::name_passes(&n.name, &names))
        .collect())
}

/// `network ls`'s table, in the managers' order (by name).
#[must_use]
pub fn networks_table(networks: &[NetworkInfo], no_trunc: bool) -> String {
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            vec![
                if no_trunc {
                    format_id(n.id)
                } else {
                    short_id(n.id)
                },
                n.name.clone(),
                n.driver.clone(),
                SCOPE.to_string(),
            ]
        })
        .collect();
    super::table::render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
}

/// `network ls --format json`: one object per network.
#[must_use]
pub fn networks_json(networks: &[NetworkInfo]) -> Value {
    Value::Array(
        networks
            .iter()
            .map(|n| {
                json!({
                    "ID": format_id(n.id),
                    "Name": n.name,
                    "Driver": n.driver,
                    "Scope": SCOPE,
                    "Internal": n.internal,
                    "Ingress": n.ingress,
                    "CreatedAt": rfc3339(n.created_at_ms),
                    "Labels": n.labels,
                })
            })
            .collect(),
    )
}

/// `network inspect`'s JSON of one network, in docker's shape: its IPAM config, its
/// VNI under `Options`, the tasks with an address on it (`Containers`, keyed by task
/// ID) and the services reached on it with their VIP and tasks (`Services`).
#[must_use]
pub fn network_json(n: &NetworkInfo) -> Value {
    let prefix = n.subnet.prefix();
    let mut containers = serde_json::Map::new();
    let mut tasks_of: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for t in &n.tasks {
        let name = format!("{}.{}", t.name, format_id(t.id));
        containers.insert(
            format_id(t.id),
            json!({"Name": name, "IPv4Address": format!("{}/{prefix}", t.addr)}),
        );
        tasks_of
            .entry(t.service.as_str())
            .or_default()
            .push(json!({"Name": name, "EndpointIP": t.addr.to_string()}));
    }
    let mut services = serde_json::Map::new();
    for s in &n.services {
        services.insert(
            s.name.clone(),
            json!({
                "VIP": s.vip.map(|v| v.to_string()).unwrap_or_default(),
                "Aliases": s.aliases,
                "Tasks": tasks_of.remove(s.name.as_str()).unwrap_or_default(),
            }),
        );
    }
    let mut config = json!({"Subnet": n.subnet.to_string()});
    if let Some(gateway) = n.gateway {
        config["Gateway"] = json!(gateway.to_string());
    }
    json!({
        "Name": n.name,
        "Id": format_id(n.id),
        "Created": rfc3339(n.created_at_ms),
        "Scope": SCOPE,
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [config]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Containers": containers,
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": n.vni.to_string()},
        "Labels": n.labels,
        "Services": services,
    })
}

/// `network prune`'s report of the networks it removed (nothing when none).
#[must_use]
pub fn prune_report(removed: &[String]) -> String {
    if removed.is_empty() {
        return String::new();
    }
    let mut out = String::from("Deleted Networks:\n");
    for name in removed {
        let _ = writeln!(out, "{name}");
    }
    out
}

/// Whether an answer to [`PRUNE_WARNING`] is a yes (`y` or `yes`, any case).
#[must_use]
pub fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `service inspect`'s `Endpoint` in docker's shape: `VirtualIPs`, each with the
/// network's ID and the VIP with the network's prefix length (`10.0.1.2/24`); the
/// ingress VIP of a service given no network is on ingress.
#[must_use]
pub fn service_endpoint_json(service: &Service, networks: &[NetworkInfo]) -> Value {
    let prefix = |id: NetworkId| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map_or(32, |n| n.subnet.prefix())
    };
    let ingress = mesh_api::network::INGRESS_ID;
    let vips: Vec<Value> = service
        .endpoint
        .vip
        .map(|addr| (ingress, addr))
        .into_iter()
        .chain(service.endpoint.vips.iter().map(|v| (v.network, v.addr)))
        .map(|(id, addr)| {
            json!({"NetworkID": format_id(id), "Addr": format!("{addr}/{}", prefix(id))})
        })
        .collect();
    json!({
        "Spec": {
            "Mode": service.spec.endpoint.mode.to_string(),
            "LbAlgorithm": service.spec.endpoint.lb_algorithm.to_string(),
        },
        "VirtualIPs": vips,
    })
}

/// A network's name, from the list, for `service inspect --pretty` (the ID when it is
/// not found).
#[must_use]
pub fn network_name(networks: &[NetworkInfo], target: &str) -> String {
    networks
        .iter()
        .find(|n| format_id(n.id) == target)
        .map_or_else(|| target.to_string(), |n| n.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use mesh_api::network::{AttachedService, AttachedTask, INGRESS_ID};
    use std::net::Ipv4Addr;

    #[derive(Parser)]
    struct Create {
        #[command(flatten)]
        flags: CreateFlags,
    }

    fn create(args: &[&str]) -> Result<NetworkSpec, FlagError> {
        let cli = Create::try_parse_from(std::iter::once("create").chain(args.iter().copied()))
            .map_err(|e| FlagError::new(e.to_string()))?;
        cli.flags.spec()
    }

    #[test]
    fn create_flags_build_the_spec() {
        let spec = create(&[
            "-d",
            "overlay",
            "--subnet",
            "10.1.2.0/24",
            "--gateway",
            "10.1.2.254",
            "--attachable",
            "--internal",
            "--label",
            "tier=back",
            "back",
        ])
        .unwrap();
        assert_eq!(spec.name, "back");
        assert_eq!(spec.subnet.unwrap().to_string(), "10.1.2.0/24");
        assert_eq!(spec.gateway, Some(Ipv4Addr::new(10, 1, 2, 254)));
        assert!(spec.attachable && spec.internal);
        assert_eq!(spec.labels["tier"], "back");
        assert_eq!(create(&["plain"]).unwrap(), NetworkSpec::new("plain"));
    }

    #[test]
    fn bad_create_flags_are_refused() {
        for (args, reason) in [
            (&["--subnet", "10.1.2/33", "x"][..], "invalid subnet"),
            (
                &["--gateway", "nope", "--subnet", "10.0.0.0/24", "x"],
                "invalid gateway",
            ),
            (&["--gateway", "10.0.0.1", "x"], "--gateway needs --subnet"),
            (&["-d", "bridge", "x"], "only \"overlay\" is supported"),
            (&["bad name"], "invalid network name"),
            (&["--label", "=v", "x"], "--label"),
        ] {
            let err = create(args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    #[test]
    fn network_flags_take_docker_s_two_syntaxes() {
        assert_eq!(
            parse_attachment("back").unwrap(),
            NetworkAttachmentSpec {
                target: "back".into(),
                aliases: vec![]
            }
        );
        assert_eq!(
            parse_attachment("name=back,alias=db,alias=cache").unwrap(),
            NetworkAttachmentSpec {
                target: "back".into(),
                aliases: vec!["db".into(), "cache".into()]
            }
        );
        for (bad, reason) in [
            ("name=back,alias=not_valid-", "alias"),
            ("alias=db", "network name must be specified"),
            ("name=back,color=red", "invalid field key \"color\""),
            ("name=back,alias", "invalid field \"alias\""),
            ("name=back,ip=10.0.0.9", "not supported"),
            ("", "expected a network name"),
        ] {
            let err = parse_attachment(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    fn back() -> NetworkInfo {
        NetworkInfo {
            id: 0x0123_4567_89ab_cdef,
            name: "back".into(),
            driver: "overlay".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            vni: 4097,
            ingress: false,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            created_at_ms: 0,
            services: vec![AttachedService {
                id: 9,
                name: "api".into(),
                vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
                aliases: vec!["db".into()],
            }],
            tasks: vec![AttachedTask {
                id: 0xabc,
                name: "api.1".into(),
                service: "api".into(),
                addr: Ipv4Addr::new(10, 0, 1, 3),
            }],
        }
    }

    #[test]
    fn ls_truncates_ids_like_docker() {
        let table = networks_table(&[back()], false);
        assert_eq!(
            table,
            "NETWORK ID     NAME   DRIVER    SCOPE\n0123456789ab   back   overlay   swarm\n"
        );
        assert!(networks_table(&[back()], true).contains("0123456789abcdef"));
        let mut ingress = back();
        ingress.name = "ingress".into();
        let both = vec![back(), ingress];
        let only = |f: &[&str]| {
            let f: Vec<String> = f.iter().map(|s| (*s).to_string()).collect();
            filtered(both.clone(), &f)
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(only(&["name=ac"]), ["back"]);
        assert_eq!(only(&[]), ["back", "ingress"]);
        assert_eq!(only(&["name=ac", "name=gre"]), ["back", "ingress"]);
        assert!(filtered(both, &["driver=overlay".into()]).is_err());
        assert_eq!(networks_json(&[back()])[0]["Scope"], "swarm");
    }

    #[test]
    fn inspect_shows_ipam_vni_services_and_tasks() {
        let v = network_json(&back());
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
        assert_eq!(
            v["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
            "4097"
        );
        let task = &v["Containers"]["0000000000000abc"];
        assert_eq!(task["Name"], "api.1.0000000000000abc");
        assert_eq!(task["IPv4Address"], "10.0.1.3/24");
        assert_eq!(v["Services"]["api"]["VIP"], "10.0.1.2");
        assert_eq!(v["Services"]["api"]["Tasks"][0]["EndpointIP"], "10.0.1.3");
        assert_eq!(v["Scope"], "swarm");
        assert_eq!(v["Ingress"], false);
    }

    #[test]
    fn prune_prints_what_it_removed() {
        assert_eq!(
            prune_report(&["a".into(), "b".into()]),
            "Deleted Networks:\na\nb\n"
        );
        assert_eq!(prune_report(&[]), "");
        assert!(confirmed("y\n") && confirmed("YES") && !confirmed("") && !confirmed("n"));
    }

    #[test]
    fn service_endpoint_lists_every_vip_with_its_prefix() {
        let mut spec = mesh_api::spec::ServiceSpec::new(
            "api",
            mesh_api::spec::RuntimeKind::Process,
            "task-echo",
            vec![],
        );
        spec.task.networks = vec![NetworkAttachmentSpec {
            target: format_id(back().id),
            aliases: vec![],
        }];
        let mut service = Service {
            id: 9,
            spec,
            previous_spec: None,
            spec_version: 1,
            endpoint: mesh_api::service::ServiceEndpoint {
                vip: None,
                ports: vec![],
                vips: vec![mesh_api::network::NetworkAddr {
                    network: back().id,
                    addr: Ipv4Addr::new(10, 0, 1, 2),
                }],
            },
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let v = service_endpoint_json(&service, &[back()]);
        assert_eq!(
            v["VirtualIPs"],
            json!([{"NetworkID": "0123456789abcdef", "Addr": "10.0.1.2/24"}])
        );
        service.endpoint.vips.clear();
        service.endpoint.vip = Some(Ipv4Addr::new(10, 255, 0, 2));
        let mut ingress = back();
        ingress.id = INGRESS_ID;
        ingress.subnet = "10.255.0.0/16".parse().unwrap();
        let v = service_endpoint_json(&service, &[ingress]);
        assert_eq!(v["VirtualIPs"][0]["Addr"], "10.255.0.2/16");
        assert_eq!(v["VirtualIPs"][0]["NetworkID"], "696e677265737300");
        assert_eq!(network_name(&[back()], "0123456789abcdef"), "back");
    }
}
