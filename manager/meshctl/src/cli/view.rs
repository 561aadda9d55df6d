//! `meshctl service ls`, `service ps`, `node ps` and `service inspect
//! --pretty` output, docker's columns and wording: `2/3` replicas,
//! `*:8080->80/tcp` ports, `Running 5 seconds ago`, history tasks as
//! ` \_ web.1`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use mesh_api::file_ref::FileKind;
use mesh_api::service::Service;

use crate::cli::table;
use mesh_api::node::format_id;
use mesh_api::spec::{
    Constraint, ConstraintKey, PortSpec, PublishMode, ServiceMode, UpdateConfig, format_duration_ms,
};
use mesh_api::task::{DesiredState, Task, TaskState};

/// A service with its task counts, as `ListServices` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    /// The record.
    pub service: Service,
    /// Tasks running.
    pub running: u32,
    /// Tasks wanted.
    pub desired: u32,
}

/// A task with the names `ListTasks` resolved, and its service's host-mode
/// ports (docker's PORTS column of `service ps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// The record.
    pub task: Task,
    /// `web.1`.
    pub name: String,
    /// Its service's name.
    pub service_name: String,
    /// Its node's hostname (empty until scheduled).
    pub node: String,
    /// Ports published on its node only.
    pub host_ports: Vec<PortSpec>,
}

/// The task's container settings docker's pretty view leaves to the JSON one:
/// entrypoint, hostname, extra hosts, DNS settings and container labels.
fn container_lines(out: &mut String, task: &mesh_api::spec::TaskSpec) {
    use std::fmt::Write as _;
    if !task.entrypoint.is_empty() {
        let _ = writeln!(out, " Entrypoint:\t{}", task.entrypoint.join(" "));
    }
    if let Some(hostname) = &task.hostname {
        let _ = writeln!(out, " Hostname:\t{hostname}");
    }
    if !task.hosts.is_empty() {
        let _ = writeln!(out, " Hosts:\t\t{}", task.hosts.join(" "));
    }
    let dns = &task.dns;
    if !dns.is_empty() {
        let _ = writeln!(out, " DNS:");
        let join = |v: Vec<String>| v.join(" ");
        for (title, words) in [
            (
                "Nameservers",
                join(dns.nameservers.iter().map(ToString::to_string).collect()),
            ),
            ("Search", join(dns.search.clone())),
            ("Options", join(dns.options.clone())),
        ] {
            if !words.is_empty() {
                let _ = writeln!(out, "  {title}:\t{words}");
            }
        }
    }
    if !task.container_labels.is_empty() {
        let _ = writeln!(out, " Labels:");
        for (k, v) in &task.container_labels {
            let _ = writeln!(out, "  {k}={v}");
        }
    }
}

/// A task's mounts as docker's API writes them (`Spec.TaskTemplate.ContainerSpec.
/// Mounts`): `Type`, `Source`, `Target`, `ReadOnly` (when set), `TmpfsOptions`
/// (`SizeBytes`, `Mode`) and `VolumeOptions` (`NoCopy`).
#[must_use]
pub fn mounts_json(mounts: &[mesh_api::mount::Mount]) -> Value {
    Value::Array(
        mounts
            .iter()
            .map(|m| {
                let mut v = json!({"Type": m.kind.as_str(), "Target": m.target});
                if !m.source.is_empty() {
                    v["Source"] = json!(m.source);
                }
                if m.readonly {
                    v["ReadOnly"] = json!(true);
                }
                if m.tmpfs_size.is_some() || m.tmpfs_mode.is_some() {
                    let mut t = json!({});
                    if let Some(size) = m.tmpfs_size {
                        t["SizeBytes"] = json!(size);
                    }
                    if let Some(mode) = m.tmpfs_mode {
                        t["Mode"] = json!(mode);
                    }
                    v["TmpfsOptions"] = t;
                }
                if m.volume_nocopy {
                    v["VolumeOptions"] = json!({"NoCopy": true});
                }
                v
            })
            .collect(),
    )
}

/// Docker's 12-digit short ID.
#[must_use]
pub fn short_id(id: u64) -> String {
    format_id(id)[..12].to_string()
}

/// `replicated` or `global`.
#[must_use]
pub fn mode_name(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// The ports a service publishes, as `service ls` shows them:
/// `*:8080->80/tcp, *:5353->53/udp`. Allocated ports are shown once known.
#[must_use]
pub fn ports_text(service: &Service) -> String {
    service
        .published_ports()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A constraint as the user wrote it (`node.labels.zone==a`).
#[must_use]
pub fn constraint_text(c: &Constraint) -> String {
    let key = match &c.key {
        ConstraintKey::Role => "node.role".to_string(),
        ConstraintKey::Hostname => "node.hostname".to_string(),
        ConstraintKey::Id => "node.id".to_string(),
        ConstraintKey::Label(label) => format!("node.labels.{label}"),
    };
    format!("{key}{}{}", if c.equal { "==" } else { "!=" }, c.value)
}

fn sorted(rows: &[ServiceRow]) -> Vec<&ServiceRow> {
    let mut rows: Vec<&ServiceRow> = rows.iter().collect();
    rows.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
    rows
}

/// `service ls`'s REPLICAS: running/desired, with docker's `(max N per node)` when the
/// service has a limit of replicas per node.
fn replicas_text(r: &ServiceRow) -> String {
    match r.service.spec.max_replicas_per_node {
        0 => format!("{}/{}", r.running, r.desired),
        max => format!("{}/{} (max {max} per node)", r.running, r.desired),
    }
}

/// `service ls`'s table: ID NAME MODE REPLICAS IMAGE PORTS, by name.
#[must_use]
pub fn services_table(rows: &[ServiceRow]) -> String {
    let cells: Vec<Vec<String>> = sorted(rows)
        .into_iter()
        .map(|r| {
            vec![
                short_id(r.service.id),
                r.service.spec.name.clone(),
                mode_name(r.service.spec.mode).to_string(),
                replicas_text(r),
                r.service.spec.task.image.clone(),
                ports_text(&r.service),
            ]
        })
        .collect();
    table::render(
        &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
        &cells,
    )
}

/// `service ls --format json`: the table's columns, full IDs and counts.
#[must_use]
pub fn services_json(rows: &[ServiceRow]) -> Value {
    Value::Array(
        sorted(rows)
            .into_iter()
            .map(|r| {
                json!({
                    "ID": format_id(r.service.id),
                    "Name": r.service.spec.name,
                    "Mode": mode_name(r.service.spec.mode),
                    "Replicas": replicas_text(r),
                    "Running": r.running,
                    "Desired": r.desired,
                    "Image": r.service.spec.task.image,
                    "Ports": ports_text(&r.service),
                })
            })
            .collect(),
    )
}

/// Docker's `HumanDuration` (go-units), e.g. `5 seconds`, `About a minute`.
#[must_use]
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    let minutes = seconds / 60;
    // Hours are rounded, as go-units does.
    let hours = (ms + 1_800_000) / 3_600_000;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ms / 3_600_000 / 24 / 365)
    }
}

/// `Running 5 seconds ago`, as docker's CURRENT STATE column.
#[must_use]
pub fn current_state(task: &Task, now_ms: u64) -> String {
    format!(
        "{} {} ago",
        task.status.state,
        human_duration(now_ms.saturating_sub(task.status.at_ms)).to_lowercase()
    )
}

/// What the ERROR column shows: the task's error, or why it is pending.
fn error_text(task: &Task) -> String {
    if !task.status.error.is_empty() {
        task.status.error.clone()
    } else if task.status.state == TaskState::Pending {
        task.status.message.clone()
    } else {
        String::new()
    }
}

/// Docker's `Ellipsis`: at most `width` characters, the last one `…` when
/// cut.
fn ellipsis(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The longest error `service ps` shows without `--no-trunc` (docker's).
const MAX_ERROR_LEN: usize = 30;

/// Tasks in docker's order: by service, then slot (replicated) or node
/// (global), the task the leader wants running first, then newest first; each
/// flagged when it is history (an older task of the same slot, wherever it ran).
fn ordered(rows: &[TaskRow]) -> Vec<(bool, &TaskRow)> {
    let mut rows: Vec<&TaskRow> = rows.iter().collect();
    let place = |r: &TaskRow| {
        let node = if r.task.slot > 0 { None } else { r.task.node };
        (r.service_name.clone(), r.task.slot, node)
    };
    rows.sort_by(|a, b| {
        place(a)
            .cmp(&place(b))
            .then(
                (b.task.desired == DesiredState::Running)
                    .cmp(&(a.task.desired == DesiredState::Running)),
            )
            .then(b.task.created_at_ms.cmp(&a.task.created_at_ms))
            .then(b.task.id.cmp(&a.task.id))
    });
    let mut out = Vec::with_capacity(rows.len());
    let mut previous = None;
    for row in rows {
        let here = place(row);
        out.push((previous.as_ref() == Some(&here), row));
        previous = Some(here);
    }
    out
}

/// `service ps` and `node ps`'s table: ID NAME IMAGE NODE DESIRED STATE
/// CURRENT STATE ERROR PORTS.
#[must_use]
pub fn tasks_table(rows: &[TaskRow], now_ms: u64, no_trunc: bool) -> String {
    let cells: Vec<Vec<String>> = ordered(rows)
        .into_iter()
        .map(|(history, r)| {
            let error = error_text(&r.task);
            let error = match (error.is_empty(), no_trunc) {
                (true, _) => String::new(),
                (false, true) => format!("\"{error}\""),
                (false, false) => format!("\"{}\"", ellipsis(&error, MAX_ERROR_LEN)),
            };
            vec![
                if no_trunc {
                    format_id(r.task.id)
                } else {
                    short_id(r.task.id)
                },
                if history {
                    format!(" \\_ {}", r.name)
                } else {
                    r.name.clone()
                },
                r.task.spec.image.clone(),
                r.node.clone(),
                r.task.desired.to_string(),
                current_state(&r.task, now_ms),
                error,
                host_ports_text(r),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
            "PORTS",
        ],
        &cells,
    )
}

fn host_ports_text(row: &TaskRow) -> String {
    if row.task.desired != DesiredState::Running {
        return String::new();
    }
    row.host_ports
        .iter()
        .filter(|p| p.mode == PublishMode::Host)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `service ps --format json` (and `node ps`): one object per task, in the
/// table's order.
#[must_use]
pub fn tasks_json(rows: &[TaskRow], now_ms: u64) -> Value {
    Value::Array(
        ordered(rows)
            .into_iter()
            .map(|(history, r)| {
                json!({
                    "ID": format_id(r.task.id),
                    "Name": r.name,
                    "Service": r.service_name,
                    "ServiceID": format_id(r.task.service),
                    "Slot": r.task.slot,
                    "Image": r.task.spec.image,
                    "Node": r.node,
                    "NodeID": r.task.node.map(format_id).unwrap_or_default(),
                    "DesiredState": r.task.desired.to_string(),
                    "State": r.task.status.state.as_str(),
                    "CurrentState": current_state(&r.task, now_ms),
                    "Message": r.task.status.message,
                    "Error": r.task.status.error,
                    "ExitCode": r.task.status.exit_code,
                    "Address": r.task.addr.map(|a| a.to_string()).unwrap_or_default(),
                    "SpecVersion": r.task.spec_version,
                    "History": history,
                    "Ports": host_ports_text(r),
                })
            })
            .collect(),
    )
}

fn pace(out: &mut String, title: &str, what: &str, c: &UpdateConfig) {
    let _ = writeln!(out, "{title}:");
    let _ = writeln!(out, " Parallelism:\t{}", c.parallelism);
    if c.delay_ms > 0 {
        let _ = writeln!(out, " Delay:\t\t{}", format_duration_ms(c.delay_ms));
    }
    let _ = writeln!(out, " On failure:\t{}", c.failure_action);
    let _ = writeln!(
        out,
        " Monitoring Period:\t{}",
        format_duration_ms(c.monitor_ms)
    );
    let _ = writeln!(
        out,
        " Max failure ratio:\t{}",
        f64::from(c.max_failure_permille) / 1000.0
    );
    let _ = writeln!(out, " {what} order:\t{}", c.order);
}

/// `service inspect --pretty`: docker's summary of a service.
#[must_use]
pub fn pretty_service(row: &ServiceRow, networks: &[mesh_api::network::NetworkInfo]) -> String {
    let s = &row.service;
    let spec = &s.spec;
    let mut out = String::new();
    let _ = writeln!(out, "ID:\t\t{}", format_id(s.id));
    let _ = writeln!(out, "Name:\t\t{}", spec.name);
    if !spec.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        for (k, v) in &spec.labels {
            let _ = writeln!(out, " {k}={v}");
        }
    }
    match spec.mode {
        ServiceMode::Replicated { replicas } => {
            let _ = writeln!(out, "Service Mode:\tReplicated");
            let _ = writeln!(out, " Replicas:\t{replicas}");
        }
        ServiceMode::Global => {
            let _ = writeln!(out, "Service Mode:\tGlobal");
        }
    }
    let _ = writeln!(
        out,
        "Tasks:\t\t{} running, {} wanted",
        row.running, row.desired
    );
    if let Some(status) = &s.update_status {
        let _ = writeln!(out, "UpdateStatus:");
        let _ = writeln!(out, " State:\t\t{}", status.state);
        let _ = writeln!(
            out,
            " Started:\t{}",
            mesh_api::time::rfc3339(status.started_at_ms)
        );
        if let Some(done) = status.completed_at_ms {
            let _ = writeln!(out, " Completed:\t{}", mesh_api::time::rfc3339(done));
        }
        let _ = writeln!(out, " Message:\t{}", status.message);
    }
    placement_text(&mut out, spec);
    pace(&mut out, "UpdateConfig", "Update", &spec.update);
    pace(&mut out, "RollbackConfig", "Rollback", &spec.rollback);
    let task = &spec.task;
    let _ = writeln!(out, "ContainerSpec:");
    let _ = writeln!(out, " Runtime:\t{}", task.runtime);
    let _ = writeln!(out, " Image:\t\t{}", task.image);
    if !task.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{}", task.args.join(" "));
    }
    if !task.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{}", task.env.join(" "));
    }
    if let Some(dir) = &task.workdir {
        let _ = writeln!(out, " Dir:\t\t{dir}");
    }
    if let Some(user) = &task.user {
        let _ = writeln!(out, " User:\t\t{user}");
    }
    container_lines(&mut out, task);
    if !task.cap_add.is_empty() || !task.cap_drop.is_empty() {
        let _ = writeln!(out, " Capabilities:");
        if !task.cap_add.is_empty() {
            let _ = writeln!(out, "  Add:\t\t{}", task.cap_add.join(" "));
        }
        if !task.cap_drop.is_empty() {
            let _ = writeln!(out, "  Drop:\t\t{}", task.cap_drop.join(" "));
        }
    }
    for (kind, title, refs) in [
        (FileKind::Secret, " Secrets:", &task.secrets),
        (FileKind::Config, " Configs:", &task.configs),
    ] {
        if !refs.is_empty() {
            let _ = writeln!(out, "{title}");
            for r in refs {
                let _ = writeln!(out, "  Target:\t{}", r.path(kind));
                let _ = writeln!(out, "   Source:\t{}", r.source);
            }
        }
    }
    if !task.mounts.is_empty() {
        let _ = writeln!(out, " Mounts:");
    }
    for mount in &task.mounts {
        let _ = writeln!(out, "  Target:\t{}", mount.target);
        if !mount.source.is_empty() {
            let _ = writeln!(out, "   Source:\t{}", mount.source);
        }
        let _ = writeln!(out, "   ReadOnly:\t{}", mount.readonly);
        let _ = writeln!(out, "   Type:\t{}", mount.kind);
        if let Some(size) = mount.tmpfs_size {
            let _ = writeln!(out, "   TmpfsSize:\t{size}");
        }
        if let Some(mode) = mount.tmpfs_mode {
            let _ = writeln!(out, "   TmpfsMode:\t{mode:o}");
        }
    }
    let _ = writeln!(
        out,
        " StopGracePeriod:\t{}",
        format_duration_ms(task.stop_grace_ms)
    );
    if let Some(h) = &task.health {
        let _ = writeln!(out, " Healthcheck:");
        let _ = writeln!(out, "  Command:\t{}", h.cmd);
        let _ = writeln!(out, "  Interval:\t{}", format_duration_ms(h.interval_ms));
        let _ = writeln!(out, "  Timeout:\t{}", format_duration_ms(h.timeout_ms));
        let _ = writeln!(out, "  Retries:\t{}", h.retries);
        let _ = writeln!(
            out,
            "  StartPeriod:\t{}",
            format_duration_ms(h.start_period_ms)
        );
    }
    resources_text(&mut out, &task.resources);
    let r = &task.restart;
    let _ = writeln!(out, "RestartPolicy:");
    let _ = writeln!(out, " Condition:\t{}", r.condition);
    let _ = writeln!(out, " Delay:\t\t{}", format_duration_ms(r.delay_ms));
    let _ = writeln!(out, " MaxAttempts:\t{}", r.max_attempts);
    if r.window_ms > 0 {
        let _ = writeln!(out, " Window:\t{}", format_duration_ms(r.window_ms));
    }
    if !task.networks.is_empty() {
        let _ = writeln!(out, "Networks:");
        for a in &task.networks {
            let name = super::network::network_name(networks, &a.target);
            if a.aliases.is_empty() {
                let _ = writeln!(out, " {name}");
            } else {
                let _ = writeln!(out, " {name} (aliases: {})", a.aliases.join(", "));
            }
        }
    }
    let _ = writeln!(out, "Endpoint Mode:\t{}", spec.endpoint.mode);
    let _ = writeln!(out, "LB Algorithm:\t{}", spec.endpoint.lb_algorithm);
    if let Some(vip) = s.endpoint.vip {
        let _ = writeln!(out, "Virtual IP:\t{vip}");
    }
    if !s.endpoint.vips.is_empty() {
        let _ = writeln!(out, "Virtual IPs:");
        for v in &s.endpoint.vips {
            let name = super::network::network_name(networks, &format_id(v.network));
            let _ = writeln!(out, " {name}:\t{}", v.addr);
        }
    }
    let ports = s.published_ports();
    if !ports.is_empty() {
        let _ = writeln!(out, "Ports:");
        for p in ports {
            let published = p
                .published
                .map_or_else(|| "(unallocated)".to_string(), |p| p.to_string());
            let _ = writeln!(out, " PublishedPort = {published}");
            let _ = writeln!(out, "  Protocol = {}", p.protocol);
            let _ = writeln!(out, "  TargetPort = {}", p.target);
            let _ = writeln!(out, "  PublishMode = {}", p.mode);
        }
    }
    align(&out)
}

/// Docker's `Placement:` block of `inspect --pretty`: constraints,
/// preferences and the limit of replicas per node, each when set (docker lines
/// the last two up with spaces, not its tabwriter).
fn placement_text(out: &mut String, spec: &mesh_api::spec::ServiceSpec) {
    if spec.constraints.is_empty() && spec.preferences.is_empty() && spec.max_replicas_per_node == 0
    {
        return;
    }
    let _ = writeln!(out, "Placement:");
    if !spec.constraints.is_empty() {
        let constraints: Vec<String> = spec.constraints.iter().map(constraint_text).collect();
        let _ = writeln!(out, " Constraints:\t[{}]", constraints.join(" "));
    }
    if !spec.preferences.is_empty() {
        let prefs: Vec<String> = spec.preferences.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, " Preferences:   [{}]", prefs.join(" "));
    }
    if spec.max_replicas_per_node > 0 {
        let _ = writeln!(
            out,
            " Max Replicas Per Node:   {}",
            spec.max_replicas_per_node
        );
    }
}

/// Docker's `TaskTemplate.Placement` in `service inspect`'s JSON:
/// `Constraints`, `Preferences` (`[{"Spread": {"SpreadDescriptor": ...}}]`)
/// and `MaxReplicas`, each when set.
#[must_use]
pub fn placement_json(spec: &mesh_api::spec::ServiceSpec) -> Value {
    let mut v = json!({});
    if !spec.constraints.is_empty() {
        v["Constraints"] = spec.constraints.iter().map(constraint_text).collect();
    }
    if !spec.preferences.is_empty() {
        v["Preferences"] = spec
            .preferences
            .iter()
            .map(|p| json!({"Spread": {"SpreadDescriptor": p.spread}}))
            .collect();
    }
    if spec.max_replicas_per_node > 0 {
        v["MaxReplicas"] = json!(spec.max_replicas_per_node);
    }
    v
}

/// Lines `key:\tvalue` with the values lined up, as docker's tabwriter does.
/// Docker's `Resources:` block of `inspect --pretty`: reservations, then
/// limits, each amount only when set.
fn resources_text(out: &mut String, resources: &mesh_api::resources::ResourceRequirements) {
    use mesh_api::resources::{Bytes, CpuCount};
    if resources.is_empty() {
        return;
    }
    let _ = writeln!(out, "Resources:");
    for (title, set) in [
        ("Reservations", &resources.reservations),
        ("Limits", &resources.limits),
    ] {
        if set.is_zero() {
            continue;
        }
        let _ = writeln!(out, " {title}:");
        if set.nano_cpus > 0 {
            let _ = writeln!(out, "  CPU:\t\t{}", CpuCount(set.nano_cpus));
        }
        if set.memory_bytes > 0 {
            let _ = writeln!(out, "  Memory:\t{}", Bytes(set.memory_bytes));
        }
    }
}

fn align(text: &str) -> String {
    const WIDTH: usize = 20;
    let mut out = String::new();
    for line in text.lines() {
        match line.split_once('\t') {
            Some((key, value)) => {
                let value = value.trim_start_matches('\t');
                let _ = writeln!(out, "{key:<WIDTH$}{value}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::service::ServiceEndpoint;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskStatus;

    fn web() -> Service {
        let mut spec = ServiceSpec::new(
            "web",
            RuntimeKind::Process,
            "/bin/sleep",
            vec!["1000".into()],
        );
        spec.mode = ServiceMode::Replicated { replicas: 3 };
        spec.endpoint.ports = vec!["8080:80".parse().unwrap()];
        Service {
            id: 0x0123_4567_89ab_cdef,
            spec,
            previous_spec: None,
            spec_version: 1,
            endpoint: ServiceEndpoint {
                vip: Some("10.255.0.2".parse().unwrap()),
                ports: vec!["8080:80".parse().unwrap()],
                vips: Vec::new(),
            },
            update_status: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn task(id: u64, slot: u32, created: u64, state: TaskState, at: u64) -> TaskRow {
        let s = web();
        TaskRow {
            task: Task {
                id,
                service: s.id,
                slot,
                node: Some(0xaa),
                spec: s.spec.task.clone().into(),
                spec_version: 1,
                desired: DesiredState::Running,
                desired_version: 1,
                status: TaskStatus::new(state, "", at),
                addr: None,
                networks: Vec::new(),
                created_at_ms: created,
            },
            name: format!("web.{slot}"),
            service_name: "web".into(),
            node: "worker-1".into(),
            host_ports: vec![],
        }
    }

    #[test]
    fn service_ls_shows_replicas_and_ports_like_docker() {
        let mut global = web();
        global.id = 0xfeed_0000_0000_0001;
        global.spec.name = "agent".into();
        global.spec.mode = ServiceMode::Global;
        global.spec.task.image = "nginx:1.27".into();
        global.spec.endpoint.ports = vec!["53/udp".parse().unwrap()];
        global.endpoint.ports = vec!["30000:53/udp".parse().unwrap()];
        let rows = vec![
            ServiceRow {
                service: web(),
                running: 2,
                desired: 3,
            },
            ServiceRow {
                service: global,
                running: 1,
                desired: 1,
            },
        ];
        assert_eq!(
            services_table(&rows),
            "ID             NAME    MODE         REPLICAS   IMAGE        PORTS\n\
             feed00000000   agent   global       1/1        nginx:1.27   *:30000->53/udp\n\
             0123456789ab   web     replicated   2/3        /bin/sleep   *:8080->80/tcp\n"
        );
        let json = services_json(&rows);
        assert_eq!(json[1]["Replicas"], "2/3");
        assert_eq!(json[1]["ID"], "0123456789abcdef");
        // With a limit per node, as docker shows it.
        let mut capped = rows[0].clone();
        capped.service.spec.max_replicas_per_node = 1;
        assert!(services_table(&[capped.clone()]).contains(" 2/3 (max 1 per node) "));
        assert_eq!(
            services_json(&[capped])[0]["Replicas"],
            "2/3 (max 1 per node)"
        );
    }

    #[test]
    fn durations_read_like_docker() {
        for (ms, text) in [
            (0, "Less than a second"),
            (999, "Less than a second"),
            (1_000, "1 second"),
            (5_400, "5 seconds"),
            (61_000, "About a minute"),
            (150_000, "2 minutes"),
            (3_600_000, "About an hour"),
            (5 * 3_600_000, "5 hours"),
            (72 * 3_600_000, "3 days"),
            (21 * 24 * 3_600_000, "3 weeks"),
            (90 * 24 * 3_600_000, "3 months"),
            (800 * 24 * 3_600_000, "2 years"),
        ] {
            assert_eq!(human_duration(ms), text, "{ms} ms");
        }
    }

    #[test]
    fn service_ps_shows_history_under_its_slot() {
        let mut old = task(0x1111_2222_3333_4444, 1, 10, TaskState::Shutdown, 20_000);
        old.task.desired = DesiredState::Shutdown;
        old.task.status.error = "task: non-zero exit (1): the program gave up early".into();
        let new = task(0x5555_6666_7777_8888, 1, 20, TaskState::Running, 25_000);
        let mut pending = task(0x9999_0000_aaaa_bbbb, 2, 20, TaskState::Pending, 29_500);
        pending.node = String::new();
        pending.task.status.message = "no suitable node".into();
        let rows = vec![pending, old, new];
        assert_eq!(
            tasks_table(&rows, 30_000, false),
            "ID             NAME        IMAGE        NODE       DESIRED STATE   CURRENT STATE                    ERROR                              PORTS\n\
             555566667777   web.1       /bin/sleep   worker-1   Running         Running 5 seconds ago\n\
             111122223333    \\_ web.1   /bin/sleep   worker-1   Shutdown        Shutdown 10 seconds ago          \"task: non-zero exit (1): the …\"\n\
             99990000aaaa   web.2       /bin/sleep              Running         Pending less than a second ago   \"no suitable node\"\n"
        );
        let full = tasks_table(&rows, 30_000, true);
        assert!(full.contains("1111222233334444"), "{full}");
        assert!(full.contains("the program gave up early\""), "{full}");
        let json = tasks_json(&rows, 30_000);
        assert_eq!(json[1]["History"], true);
        assert_eq!(json[1]["State"], "Shutdown");
        assert_eq!(json[2]["Message"], "no suitable node");
    }

    #[test]
    fn a_slots_history_on_other_nodes_stays_under_its_running_task() {
        // Issue 11, fault 10: history was grouped by slot *and node*, so an older
        // task of web.1 on another node was listed first, without `\_`.
        let mut old = task(0x1111_2222_3333_4444, 1, 10, TaskState::Failed, 20_000);
        old.task.desired = DesiredState::Shutdown;
        old.task.node = Some(0x01);
        old.node = "worker-0".into();
        let new = task(0x5555_6666_7777_8888, 1, 20, TaskState::Running, 25_000);
        let names: Vec<(bool, String)> = ordered(&[old, new])
            .into_iter()
            .map(|(history, r)| (history, r.node.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (false, "worker-1".to_string()),
                (true, "worker-0".to_string())
            ]
        );
    }

    #[test]
    fn host_ports_show_on_running_tasks() {
        let mut row = task(1, 1, 0, TaskState::Running, 0);
        row.host_ports = vec![
            "published=8081,target=81,mode=host".parse().unwrap(),
            "8080:80".parse().unwrap(),
        ];
        assert!(tasks_table(std::slice::from_ref(&row), 0, false).contains("*:8081->81/tcp"));
        row.task.desired = DesiredState::Shutdown;
        assert!(!tasks_table(&[row], 0, false).contains("8081"));
    }

    #[test]
    fn inspect_json_shows_placement_in_docker_s_fields() {
        let mut s = web();
        assert_eq!(placement_json(&s.spec), json!({}));
        s.spec.preferences = vec!["spread=node.labels.zone".parse().unwrap()];
        s.spec.max_replicas_per_node = 1;
        assert_eq!(
            placement_json(&s.spec),
            json!({
                "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
                "MaxReplicas": 1
            })
        );
    }

    #[test]
    fn pretty_inspect_names_the_essentials() {
        let mut s = web();
        s.spec.constraints = vec!["node.labels.zone==a".parse().unwrap()];
        s.spec.preferences = vec![
            "spread=node.labels.zone".parse().unwrap(),
            "spread=node.labels.rack".parse().unwrap(),
        ];
        s.spec.max_replicas_per_node = 2;
        s.spec.task.resources.limits.nano_cpus = 500_000_000;
        s.spec.task.resources.limits.memory_bytes = 32 << 20;
        s.spec.task.resources.reservations.memory_bytes = 16 << 20;
        s.spec.task.workdir = Some("/srv".into());
        s.spec.task.hostname = Some("web-{{.Task.Slot}}".into());
        s.spec.task.hosts = vec!["db:10.0.0.5".into()];
        s.spec.task.dns.search = vec!["example.com".into()];
        s.spec
            .task
            .container_labels
            .insert("team".into(), "web".into());
        let text = pretty_service(
            &ServiceRow {
                service: s.clone(),
                running: 1,
                desired: 3,
            },
            &[],
        );
        for wanted in [
            "Name:               web",
            " Replicas:          3",
            "Tasks:              1 running, 3 wanted",
            " Constraints:       [node.labels.zone==a]",
            " Preferences:   [spread=node.labels.zone spread=node.labels.rack]",
            " Max Replicas Per Node:   2",
            " Image:             /bin/sleep",
            " Args:              1000",
            " Dir:               /srv",
            " Hostname:          web-{{.Task.Slot}}",
            " Hosts:             db:10.0.0.5",
            " DNS:\n  Search:           example.com\n",
            " Labels:\n  team=web\n",
            "Virtual IP:         10.255.0.2",
            " PublishedPort = 8080",
            "  TargetPort = 80",
            "Resources:\n Reservations:\n  Memory:           16MiB\n Limits:\n  \
             CPU:              0.5\n  Memory:           32MiB\n",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing in\n{text}");
        }
        // On a network: its name and aliases, and the VIP there.
        let back = mesh_api::network::NetworkInfo {
            id: 0xb0,
            name: "back".into(),
            driver: "overlay".into(),
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: None,
            vni: 4097,
            ingress: false,
            internal: false,
            attachable: false,
            labels: std::collections::BTreeMap::new(),
            created_at_ms: 0,
            services: vec![],
            tasks: vec![],
        };
        s.spec.task.networks = vec![mesh_api::spec::NetworkAttachmentSpec {
            target: format_id(0xb0),
            aliases: vec!["db".into()],
        }];
        s.endpoint.vip = None;
        s.endpoint.vips = vec![mesh_api::network::NetworkAddr {
            network: 0xb0,
            addr: "10.0.1.2".parse().unwrap(),
        }];
        let row = ServiceRow {
            service: s,
            running: 1,
            desired: 3,
        };
        let text = pretty_service(&row, std::slice::from_ref(&back));
        for wanted in [
            "Networks:",
            " back (aliases: db)",
            "Virtual IPs:",
            " back:              10.0.1.2",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing in\n{text}");
        }
        assert!(!text.contains("Virtual IP:"), "{text}");
    }

    #[test]
    fn mounts_show_as_docker_shows_them() {
        let mut s = web();
        s.spec.task.mounts = vec![
            "type=bind,source=/srv,target=/data,readonly"
                .parse()
                .unwrap(),
            "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700"
                .parse()
                .unwrap(),
        ];
        assert_eq!(
            mounts_json(&s.spec.task.mounts),
            json!([
                {"Type": "bind", "Source": "/srv", "Target": "/data", "ReadOnly": true},
                {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1_048_576, "Mode": 0o700}},
            ])
        );
        let text = pretty_service(
            &ServiceRow {
                service: s,
                running: 1,
                desired: 1,
            },
            &[],
        );
        for wanted in [
            " Mounts:",
            "  Target:           /data",
            "   Source:          /srv",
            "   ReadOnly:        true",
            "   Type:            bind",
            "   TmpfsSize:       1048576",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing in\n{text}");
        }
    }
}
