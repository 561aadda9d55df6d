//! Several `-c` files merged in order, as docker/cli's `loader/merge.go`: a service in
//! a later file is merged into the same service of the earlier ones (scalars and
//! mappings overridden key by key, lists appended), except `ports` (kept once each,
//! sorted by published port), `secrets` and `configs` (by source), `volumes` (by
//! target), `command` and `entrypoint` (replaced), a network's `aliases` (replaced)
//! and `logging` with another driver (replaced); top-level networks, volumes,
//! secrets, configs and `x-` fields are replaced key by key.
//!
//! The merge works on the normalized form (the typed model serialized), then types the
//! result again.

use serde_json::{Map, Value as Json};

use crate::types::Config;

/// Merges `configs` (at least one) in order.
///
/// # Errors
/// The merged model does not type (which would be a bug in the merge rules).
pub fn merge(configs: &[Config]) -> Result<Config, String> {
    let mut merged = Json::Object(Map::new());
    for config in configs {
        let json = serde_json::to_value(config).map_err(|e| e.to_string())?;
        merge_top(&mut merged, json);
    }
    // The extensions are not read back by serde; take them from the merged JSON.
    let mut top_ext = std::collections::BTreeMap::new();
    let mut service_ext = std::collections::BTreeMap::new();
    if let Json::Object(top) = &mut merged {
        top.retain(|k, v| {
            if k.starts_with("x-") {
                top_ext.insert(k.clone(), v.clone());
                false
            } else {
                true
            }
        });
        if let Some(Json::Object(services)) = top.get_mut("services") {
            for (name, service) in services.iter_mut() {
                if let Json::Object(keys) = service {
                    let ext: std::collections::BTreeMap<String, Json> = keys
                        .iter()
                        .filter(|(k, _)| k.starts_with("x-"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    keys.retain(|k, _| !k.starts_with("x-"));
                    service_ext.insert(name.clone(), ext);
                }
            }
        }
    }
    let mut config: Config = serde_json::from_value(merged).map_err(|e| e.to_string())?;
    config.extensions = top_ext;
    for (name, ext) in service_ext {
        if let Some(service) = config.services.get_mut(&name) {
            service.extensions = ext;
        }
    }
    Ok(config)
}

fn merge_top(base: &mut Json, over: Json) {
    let (Json::Object(base), Json::Object(over)) = (base, over) else {
        return;
    };
    for (key, value) in over {
        match key.as_str() {
            "services" => {
                let Json::Object(services) = value else {
                    continue;
                };
                let slot = base
                    .entry("services")
                    .or_insert_with(|| Json::Object(Map::new()));
                let Json::Object(slot) = slot else { continue };
                for (name, service) in services {
                    match slot.get_mut(&name) {
                        Some(existing) => merge_service(existing, service),
                        None => {
                            slot.insert(name, service);
                        }
                    }
                }
            }
            "networks" | "volumes" | "secrets" | "configs" => {
                let Json::Object(objects) = value else {
                    continue;
                };
                let slot = base.entry(key).or_insert_with(|| Json::Object(Map::new()));
                if let Json::Object(slot) = slot {
                    slot.extend(objects);
                }
            }
            _ => {
                base.insert(key, value);
            }
        }
    }
}

fn merge_service(base: &mut Json, over: Json) {
    let (Json::Object(base), Json::Object(over)) = (base, over) else {
        return;
    };
    for (key, value) in over {
        let Some(existing) = base.get_mut(&key) else {
            base.insert(key, value);
            continue;
        };
        match key.as_str() {
            "command" | "entrypoint" => *existing = value,
            "ports" => merge_list(existing, value, |p| p.clone(), "published"),
            "secrets" | "configs" => {
                merge_list(
                    existing,
                    value,
                    |s| s.get("source").cloned().unwrap_or_default(),
                    "source",
                );
            }
            "volumes" => {
                merge_list(
                    existing,
                    value,
                    |v| v.get("target").cloned().unwrap_or_default(),
                    "target",
                );
            }
            "networks" => {
                let (Json::Object(existing), Json::Object(value)) = (existing, value) else {
                    continue;
                };
                for (name, network) in value {
                    match existing.get_mut(&name) {
                        Some(Json::Object(current)) => {
                            if let Json::Object(network) = network {
                                for (k, v) in network {
                                    current.insert(k, v);
                                }
                            }
                        }
                        _ => {
                            existing.insert(name, network);
                        }
                    }
                }
            }
            "logging" => {
                let driver = |j: &Json| j.get("driver").cloned();
                if driver(existing).is_some()
                    && driver(&value).is_some()
                    && driver(existing) != driver(&value)
                {
                    *existing = value;
                } else {
                    merge_deep(existing, value);
                }
            }
            "ulimits" => {
                if let (Json::Object(existing), Json::Object(value)) = (existing, value) {
                    existing.extend(value);
                }
            }
            _ => merge_deep(existing, value),
        }
    }
}

/// Mappings merged key by key, lists appended, anything else replaced (mergo's
/// `WithOverride` and `WithAppendSlice`).
fn merge_deep(base: &mut Json, over: Json) {
    match (base, over) {
        (Json::Object(base), Json::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) => merge_deep(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (Json::Array(base), Json::Array(over)) => base.extend(over),
        (base, over) => *base = over,
    }
}

/// A list merged by key (a later entry replaces an earlier one with the same key),
/// sorted by `sort_by`.
fn merge_list(base: &mut Json, over: Json, key: impl Fn(&Json) -> Json, sort_by: &str) {
    let (Json::Array(items), Json::Array(over)) = (&mut *base, over) else {
        return;
    };
    for entry in over {
        let k = key(&entry);
        match items.iter_mut().find(|i| key(i) == k) {
            Some(slot) => *slot = entry,
            None => items.push(entry),
        }
    }
    let sort_key = |j: &Json| match j.get(sort_by) {
        Some(Json::Number(n)) => (n.as_u64().unwrap_or(0), String::new()),
        Some(Json::String(s)) => (0, s.clone()),
        _ => (0, String::new()),
    };
    items.sort_by_key(sort_key);
}
