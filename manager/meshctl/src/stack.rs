//! `meshctl stack`: applications from compose files, as `docker stack`.
//!
//! `deploy` loads and converts the files here (`mesh-compose`), as docker's CLI does,
//! and sends the result to the managers, which apply it in one Raft command, all or
//! nothing ([`mesh_api::stack`]); then, unless `-d`, it follows each created or updated
//! service until it converges, as `service create` does. `ls`, `services`, `ps` and `rm`
//! find a stack's objects by their `com.docker.stack.namespace` label; `config` needs
//! no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use mesh_api::file::FileInfo;
use mesh_api::file_ref::FileKind;
use mesh_api::node::format_id;
use mesh_api::stack::{
    Change, ExternalObject, ObjectKind, StackDeploy, StackDeployed, StackFile, namespace_of,
    validate_namespace,
};
use mesh_client::proto::{self, control_client::ControlClient};
use mesh_compose::convert::{FileSource, StackPlan};
use meshctl::cli::format::Format;
use meshctl::cli::progress::Watch;
use meshctl::cli::table;
use meshctl::cli::view::ServiceRow;
use tonic::transport::Channel;

use crate::rpc::rpc;
use crate::service;

/// How long `stack rm` waits for the removed services' tasks to stop.
const RM_WAIT: Duration = Duration::from_secs(300);
/// How often `stack rm` looks.
const RM_POLL: Duration = Duration::from_millis(250);

/// `meshctl stack ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum StackCommand {
    /// Deploy a new stack or update an existing stack.
    Deploy {
        /// Path to a Compose file, or "-" to read from stdin (repeatable: later files
        /// are merged into earlier ones).
        #[arg(long = "compose-file", short = 'c', required = true)]
        compose_file: Vec<PathBuf>,
        /// Prune services that are no longer referenced.
        #[arg(long)]
        prune: bool,
        /// Exit immediately instead of waiting for the stack services to converge.
        #[arg(long, short)]
        detach: bool,
        /// Suppress progress output.
        #[arg(long, short)]
        quiet: bool,
        /// The stack's name.
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the services in the stack.
    Services {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display IDs.
        #[arg(long, short)]
        quiet: bool,
        /// The stack's name.
        name: String,
    },
    /// List the tasks in the stack.
    Ps {
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display task IDs.
        #[arg(long, short)]
        quiet: bool,
        /// The stack's name.
        name: String,
    },
    /// Remove one or more stacks.
    #[command(alias = "remove", alias = "down")]
    Rm {
        /// Do not wait for the stack's tasks to stop (its networks, secrets and configs
        /// can be removed only once they have).
        #[arg(long, short)]
        detach: bool,
        /// The stacks' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Outputs the final config file, after doing merges and interpolations.
    Config {
        /// Path to a Compose file, or "-" to read from stdin (repeatable: later files
        /// are merged into earlier ones).
        #[arg(long = "compose-file", short = 'c', required = true)]
        compose_file: Vec<PathBuf>,
    },
}

/// Loads, merges and interpolates the files, printing the ignored keys' warning.
fn load(compose_file: &[PathBuf]) -> Result<mesh_compose::Loaded> {
    if compose_file.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        bail!("\"-\" (stdin) can be given only once");
    }
    let loaded = mesh_compose::load_paths(compose_file, &mut std::io::stdin().lock())?;
    if let Some(warning) = loaded.warning() {
        eprintln!("{warning}");
    }
    Ok(loaded)
}

/// `stack config`: the merged, interpolated file on standard output.
///
/// # Errors
/// The files cannot be read or loaded (file, line and key in the message).
pub(crate) fn config(compose_file: &[PathBuf]) -> Result<()> {
    let loaded = load(compose_file)?;
    let mut out = std::io::stdout().lock();
    out.write_all(mesh_compose::emit::to_yaml(&loaded.config).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// What the managers are asked to apply for `plan`.
fn to_deploy(plan: StackPlan, prune: bool) -> StackDeploy {
    let mut files = Vec::new();
    let mut external: Vec<ExternalObject> = plan
        .external_networks
        .into_iter()
        .map(|name| ExternalObject {
            kind: ObjectKind::Network,
            name,
        })
        .collect();
    for file in plan.files {
        match file.source {
            FileSource::Data(data) => files.push(StackFile {
                kind: file.kind,
                spec: file.spec,
                data,
            }),
            FileSource::External => external.push(ExternalObject {
                kind: file.kind.into(),
                name: file.spec.name,
            }),
        }
    }
    StackDeploy {
        namespace: plan.namespace,
        networks: plan.networks.into_iter().map(|n| n.spec).collect(),
        files,
        external,
        services: plan.services,
        prune,
    }
}

/// Docker's lines for what a deploy did.
fn deploy_lines(deployed: &StackDeployed) -> Vec<String> {
    deployed
        .objects
        .iter()
        .filter_map(|o| {
            let (kind, name, id) = (o.kind, &o.name, format_id(o.id));
            match (o.change, o.kind) {
                (Change::Created, _) => Some(format!("Creating {kind} {name}")),
                (Change::Updated, _) => Some(format!("Updating {kind} {name} (id: {id})")),
                (Change::Removed, _) => Some(format!("Removing {kind} {name}")),
                (Change::Unchanged, ObjectKind::Service) => {
                    Some(format!("Keeping service {name} (id: {id}): unchanged"))
                }
                (Change::Kept, _) => Some(format!(
                    "Keeping {kind} {name}: it exists with another spec, which can't change \
                     while the stack runs (`meshctl stack rm` and deploy again to recreate it)"
                )),
                (Change::Unchanged, _) => None,
            }
        })
        .collect()
}

async fn deploy(
    control: &mut ControlClient<Channel>,
    compose_file: &[PathBuf],
    prune: bool,
    detach: bool,
    quiet: bool,
    name: &str,
) -> Result<()> {
    validate_namespace(name)?;
    let loaded = load(compose_file)?;
    let read = |path: &Path| std::fs::read(path);
    let plan = mesh_compose::convert::convert(name, &loaded.config, &read)?;
    for warning in &plan.warnings {
        eprintln!("Warning: {warning}");
    }
    let request = to_deploy(plan, prune);
    request.validate()?;
    let deployed = control
        .deploy_stack(proto::DeployStackRequest::new(&request))
        .await
        .map_err(rpc)?
        .into_inner()
        .deployed()
        .context("the manager sent a deploy result this meshctl can't read")?;
    for line in deploy_lines(&deployed) {
        println!("{line}");
    }
    if detach {
        return Ok(());
    }
    let mut failed = Vec::new();
    let waiting = deployed
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Service)
        .filter(|o| matches!(o.change, Change::Created | Change::Updated));
    for object in waiting {
        if !quiet {
            println!("{}", object.name);
        }
        let w = Watch {
            task_spec_changed: object.rolls,
            rollback: false,
        };
        if let Err(e) = service::watch(control, object.id, w, quiet).await {
            if !quiet {
                println!("{e:#}");
            }
            failed.push(format!("service {}: {e:#}", object.name));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "failed to wait on services of stack {name}:\n{}",
            failed.join("\n")
        ))
    }
}

/// The services of stack `name`, sorted by name.
async fn stack_services(
    control: &mut ControlClient<Channel>,
    name: &str,
) -> Result<Vec<ServiceRow>> {
    let mut rows: Vec<ServiceRow> = service::list_services(control)
        .await?
        .into_iter()
        .filter(|r| namespace_of(&r.service.spec.labels) == Some(name))
        .collect();
    rows.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
    Ok(rows)
}

async fn files_of(
    control: &mut ControlClient<Channel>,
    kind: FileKind,
    name: &str,
) -> Result<Vec<FileInfo>> {
    let mut files: Vec<FileInfo> = crate::file::list(control, kind)
        .await?
        .into_iter()
        .filter(|f| namespace_of(&f.spec.labels) == Some(name))
        .collect();
    files.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(files)
}

/// Docker's `stack ls` table (or JSON): each stack found by its services' labels, with
/// how many it has.
fn stacks_listing(rows: &[ServiceRow], format: Format) -> Result<String> {
    let mut stacks: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows {
        if let Some(ns) = namespace_of(&row.service.spec.labels) {
            *stacks.entry(ns).or_default() += 1;
        }
    }
    if format == Format::Json {
        let list: Vec<_> = stacks
            .iter()
            .map(|(name, n)| serde_json::json!({"Name": name, "Services": n.to_string()}))
            .collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&list)?));
    }
    let cells: Vec<Vec<String>> = stacks
        .iter()
        .map(|(name, n)| vec![(*name).to_owned(), n.to_string()])
        .collect();
    Ok(table::render(&["NAME", "SERVICES"], &cells))
}

async fn rm(control: &mut ControlClient<Channel>, names: &[String], detach: bool) -> Result<()> {
    let mut errors = Vec::new();
    for name in names {
        if let Err(e) = rm_one(control, name, detach).await {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", errors.join("\n")))
    }
}

/// Removes stack `name` as docker does: its services, then (once their tasks have
/// stopped) its secrets, configs and networks. Volumes stay.
async fn rm_one(control: &mut ControlClient<Channel>, name: &str, detach: bool) -> Result<()> {
    let services = stack_services(control, name).await?;
    let secrets = files_of(control, FileKind::Secret, name).await?;
    let configs = files_of(control, FileKind::Config, name).await?;
    let mut networks: Vec<_> = crate::network::list(control)
        .await?
        .into_iter()
        .filter(|n| namespace_of(&n.labels) == Some(name))
        .collect();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    if services.is_empty() && secrets.is_empty() && configs.is_empty() && networks.is_empty() {
        eprintln!("Nothing found in stack: {name}");
        return Ok(());
    }
    let mut failed = Vec::new();
    let mut removed = BTreeSet::new();
    for row in &services {
        println!("Removing service {}", row.service.spec.name);
        let reply = control
            .remove_service(proto::ServiceRef {
                name: format_id(row.service.id),
            })
            .await;
        match reply {
            Ok(_) => {
                removed.insert(row.service.id);
            }
            Err(status) => failed.push(format!(
                "Failed to remove service {}: {}",
                row.service.spec.name,
                rpc(status)
            )),
        }
    }
    if !detach && !removed.is_empty() {
        wait_tasks_gone(control, name, &removed).await?;
    }
    for (kind, files) in [(FileKind::Secret, &secrets), (FileKind::Config, &configs)] {
        for file in files {
            println!("Removing {kind} {}", file.spec.name);
            let reply = control
                .remove_file(proto::FileName {
                    kind: kind.as_str().to_owned(),
                    name: format_id(file.id),
                })
                .await;
            if let Err(status) = reply {
                failed.push(format!(
                    "Failed to remove {kind} {}: {}",
                    file.spec.name,
                    rpc(status)
                ));
            }
        }
    }
    for network in &networks {
        println!("Removing network {}", network.name);
        let reply = control
            .remove_network(proto::NetworkRef {
                name: format_id(network.id),
            })
            .await;
        if let Err(status) = reply {
            failed.push(format!(
                "Failed to remove network {}: {}",
                network.name,
                rpc(status)
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{}\nFailed to remove some resources from stack: {name}",
            failed.join("\n")
        ))
    }
}

/// Waits until no task of the removed services is left (stopped by their nodes and
/// forgotten), so that the stack's networks, secrets and configs can go.
async fn wait_tasks_gone(
    control: &mut ControlClient<Channel>,
    name: &str,
    services: &BTreeSet<u64>,
) -> Result<()> {
    let deadline = Instant::now() + RM_WAIT;
    loop {
        let left = service::list_tasks(control, "", "")
            .await?
            .iter()
            .map(service::decode_task)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|t| services.contains(&t.service))
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "stack {name}: {left} task(s) of its services still stopping after {} s; its \
                 networks, secrets and configs are kept: run `meshctl stack rm {name}` again \
                 once `meshctl node ps` shows them gone",
                RM_WAIT.as_secs()
            );
        }
        tokio::time::sleep(RM_POLL).await;
    }
}

/// Runs a `stack` verb that needs the cluster.
///
/// # Errors
/// The file or the deploy is refused (the object and key, or file and line, in the
/// message), or the managers cannot be reached.
pub(crate) async fn run(
    control: &mut ControlClient<Channel>,
    command: &StackCommand,
) -> Result<()> {
    match command {
        StackCommand::Config { compose_file } => config(compose_file),
        StackCommand::Deploy {
            compose_file,
            prune,
            detach,
            quiet,
            name,
        } => deploy(control, compose_file, *prune, *detach, *quiet, name).await,
        StackCommand::Ls { format } => {
            let rows = service::list_services(control).await?;
            print!("{}", stacks_listing(&rows, *format)?);
            Ok(())
        }
        StackCommand::Services {
            format,
            quiet,
            name,
        } => {
            let rows = stack_services(control, name).await?;
            if rows.is_empty() {
                eprintln!("Nothing found in stack: {name}");
                Ok(())
            } else {
                service::print_services(&rows, *format, *quiet)
            }
        }
        StackCommand::Ps {
            no_trunc,
            format,
            quiet,
            name,
        } => {
            let rows = stack_services(control, name).await?;
            if rows.is_empty() {
                eprintln!("Nothing found in stack: {name}");
                return Ok(());
            }
            let ports: BTreeMap<u64, _> = rows
                .iter()
                .map(|r| (r.service.id, r.service.endpoint.ports.clone()))
                .collect();
            // Every task, then those of the stack's services.
            let infos = service::list_tasks(control, "", "").await?;
            let tasks: Vec<_> = service::task_rows(&infos, &ports)?
                .into_iter()
                .filter(|row| ports.contains_key(&row.task.service))
                .collect();
            service::print_tasks(&tasks, *no_trunc, *format, *quiet)
        }
        StackCommand::Rm { detach, names } => rm(control, names, *detach).await,
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::stack::Deployed;

    use super::*;

    fn object(kind: ObjectKind, name: &str, change: Change) -> Deployed {
        Deployed {
            kind,
            name: name.into(),
            id: 0xab,
            change,
            rolls: false,
        }
    }

    fn row(name: &str, stack: Option<&str>) -> ServiceRow {
        let mut spec = mesh_api::spec::ServiceSpec::new(
            name,
            mesh_api::spec::RuntimeKind::Process,
            "/bin/true",
            Vec::new(),
        );
        if let Some(stack) = stack {
            spec.labels
                .insert(mesh_api::stack::LABEL_NAMESPACE.into(), stack.into());
        }
        ServiceRow {
            service: mesh_api::service::Service {
                id: 1,
                spec,
                previous_spec: None,
                spec_version: 1,
                endpoint: Default::default(),
                update_status: None,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            running: 0,
            desired: 1,
        }
    }

    #[test]
    fn stacks_are_listed_by_their_services_labels() {
        let rows = [
            row("app_web", Some("app")),
            row("app_db", Some("app")),
            row("mon_grafana", Some("mon")),
            row("alone", None),
        ];
        let table = stacks_listing(&rows, Format::Table).unwrap();
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [vec!["NAME", "SERVICES"], vec!["app", "2"], vec!["mon", "1"]]
        );
        let json: serde_json::Value =
            serde_json::from_str(&stacks_listing(&rows, Format::Json).unwrap()).unwrap();
        assert_eq!(json[0], serde_json::json!({"Name": "app", "Services": "2"}));
        assert_eq!(
            stacks_listing(&[], Format::Table).unwrap().lines().count(),
            1
        );
    }

    #[test]
    fn deploy_prints_dockers_lines_and_says_nothing_of_what_it_left_alone() {
        let deployed = StackDeployed {
            objects: vec![
                object(ObjectKind::Network, "app_default", Change::Created),
                object(ObjectKind::Network, "app_back", Change::Unchanged),
                object(ObjectKind::Network, "app_front", Change::Kept),
                object(ObjectKind::Secret, "app_pw", Change::Created),
                object(ObjectKind::Config, "app_cfg", Change::Unchanged),
                object(ObjectKind::Service, "app_db", Change::Unchanged),
                object(ObjectKind::Service, "app_web", Change::Updated),
                object(ObjectKind::Service, "app_new", Change::Created),
                object(ObjectKind::Service, "app_old", Change::Removed),
            ],
        };
        let lines = deploy_lines(&deployed);
        assert_eq!(lines[0], "Creating network app_default");
        assert!(lines[1].starts_with("Keeping network app_front: it exists with another spec"));
        assert_eq!(
            lines[2..],
            [
                "Creating secret app_pw",
                "Keeping service app_db (id: 00000000000000ab): unchanged",
                "Updating service app_web (id: 00000000000000ab)",
                "Creating service app_new",
                "Removing service app_old",
            ]
        );
    }
}
