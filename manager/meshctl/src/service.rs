//! `meshctl service ...` and `meshctl node ps`: the gRPC calls and the
//! progress loop around the pure parts in `meshctl::cli`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mesh_api::node::format_id;
use mesh_api::service::Service;
use mesh_api::spec::{PortSpec, ServiceMode, ServiceSpec, format_duration_ms};
use mesh_api::task::Task;
use mesh_api::time::now_ms;
use mesh_client::proto::{self, control_client::ControlClient};
use meshctl::cli::flags::{self, CreateFlags, UpdateFlags};
use meshctl::cli::progress::{Phase, Watch, progress};
use meshctl::cli::view::{self, ServiceRow, TaskRow};
use tonic::transport::Channel;

use meshctl::cli::format::Format;
use meshctl::cli::network;

use crate::rpc::{remove_each, rpc};

/// How often progress polls the manager.
const POLL: Duration = Duration::from_millis(200);
/// How long a converged service must stay so (docker waits 5 s).
const STABLE: Duration = Duration::from_secs(1);
/// How long waiting for convergence may see no task start before it gives up
/// (a task that stays pending, a node that never answers); failing tasks give
/// up sooner ([`meshctl::cli::progress::GIVE_UP_FAILURES`]).
const STALL_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Create a new service: `IMAGE` is the program to run (process
    /// runtime, the default) or a container image (`--runtime docker`).
    Create(Box<CreateFlags>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the tasks of one or more services.
    Ps(PsArgs),
    /// Display detailed information on one or more services (JSON; `--pretty` for text).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
        /// Print human-readable text.
        #[arg(long)]
        pretty: bool,
    },
    /// Scale one or more replicated services (`SERVICE=REPLICAS`).
    Scale {
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        specs: Vec<String>,
        /// Exit immediately instead of waiting for the services to converge.
        #[arg(long, short)]
        detach: bool,
    },
    /// Update a service (rolling update when its tasks change).
    Update(Box<UpdateFlags>),
    /// Revert a service to its previous spec.
    Rollback {
        service: String,
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(long, short)]
        detach: bool,
        /// Suppress progress output.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Fetch the output of a service's tasks (or of one task).
    Logs {
        /// Lines from the end of each task's output (default: all).
        #[arg(long, short = 'n')]
        tail: Option<u32>,
        /// Follow log output: keep printing new output, of tasks that start
        /// later too, until interrupted or the service is removed.
        #[arg(long, short = 'f')]
        follow: bool,
        /// A service (name, ID or ID prefix) or a task ID.
        name: String,
    },
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Publish ports of a service on every node (`--rm` to unpublish), e.g.
    /// `meshctl service publish web 9090:80`.
    Publish {
        service: String,
        /// [PUBLISHED:]TARGET[/PROTOCOL] or published=P,target=T[,...];
        /// with --rm, the published or target port.
        #[arg(required = true, value_name = "PORT")]
        ports: Vec<String>,
        /// Unpublish the ports instead.
        #[arg(long)]
        rm: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    #[arg(required = true)]
    services: Vec<String>,
    /// Do not truncate IDs and errors.
    #[arg(long)]
    no_trunc: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only display task IDs.
    #[arg(long, short)]
    quiet: bool,
}

/// `meshctl node ps`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct NodePsArgs {
    /// The node (ID, ID prefix or hostname); default: the manager meshctl talks to.
    node: Option<String>,
    /// Do not truncate IDs and errors.
    #[arg(long)]
    no_trunc: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only display task IDs.
    #[arg(long, short)]
    quiet: bool,
}

fn decode_service(reply: &proto::ServiceReply) -> Result<ServiceRow> {
    let service = reply
        .service()
        .context("the manager sent a service record this meshctl can't read")?;
    Ok(ServiceRow {
        service,
        running: reply.running,
        desired: reply.desired,
    })
}

pub(crate) fn decode_task(info: &proto::TaskInfo) -> Result<Task> {
    info.task()
        .context("the manager sent a task record this meshctl can't read")
}

async fn inspect(control: &mut ControlClient<Channel>, name: &str) -> Result<ServiceRow> {
    let reply = control
        .inspect_service(proto::ServiceRef {
            name: name.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    decode_service(&reply)
}

pub(crate) async fn list_services(control: &mut ControlClient<Channel>) -> Result<Vec<ServiceRow>> {
    control
        .list_services(proto::ListServicesRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .services
        .iter()
        .map(decode_service)
        .collect()
}

pub(crate) async fn list_tasks(
    control: &mut ControlClient<Channel>,
    service: &str,
    node: &str,
) -> Result<Vec<proto::TaskInfo>> {
    Ok(control
        .list_tasks(proto::ListTasksRequest {
            service: service.to_string(),
            node: node.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .tasks)
}

/// Tasks as table rows, with their services' host-mode ports.
pub(crate) fn task_rows(
    infos: &[proto::TaskInfo],
    ports: &BTreeMap<u64, Vec<PortSpec>>,
) -> Result<Vec<TaskRow>> {
    infos
        .iter()
        .map(|info| {
            let task = decode_task(info)?;
            Ok(TaskRow {
                host_ports: ports.get(&task.service).cloned().unwrap_or_default(),
                name: info.name.clone(),
                service_name: info.service_name.clone(),
                node: info.node_hostname.clone(),
                task,
            })
        })
        .collect()
}

/// `service ls`'s output of `rows`: IDs (`-q`), JSON or docker's table.
pub(crate) fn print_services(rows: &[ServiceRow], format: Format, quiet: bool) -> Result<()> {
    if quiet {
        for row in rows {
            println!("{}", format_id(row.service.id));
        }
    } else if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view::services_json(rows))?
        );
    } else {
        print!("{}", view::services_table(rows));
    }
    Ok(())
}

pub(crate) fn print_tasks(
    rows: &[TaskRow],
    no_trunc: bool,
    format: Format,
    quiet: bool,
) -> Result<()> {
    let now = now_ms();
    if quiet {
        for row in rows {
            println!("{}", format_id(row.task.id));
        }
    } else if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view::tasks_json(rows, now))?
        );
    } else {
        print!("{}", view::tasks_table(rows, now, no_trunc));
    }
    Ok(())
}

async fn update(
    control: &mut ControlClient<Channel>,
    current: &Service,
    spec: &ServiceSpec,
) -> Result<ServiceRow> {
    let reply = control
        .update_service(proto::UpdateServiceRequest::update(
            &format_id(current.id),
            spec,
            current.spec_version,
        ))
        .await
        .map_err(rpc)?
        .into_inner();
    decode_service(&reply)
}

/// Prints docker's progress lines until the service converges and stays
/// so for [`STABLE`], or its update pauses (an error).
pub(crate) async fn watch(
    control: &mut ControlClient<Channel>,
    id: u64,
    watch: Watch,
    quiet: bool,
) -> Result<()> {
    let say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let id = format_id(id);
    let mut last_line = String::new();
    let mut last_note = None;
    let mut last_failures = Vec::new();
    let mut stable_since: Option<Instant> = None;
    let mut progressed = (0, Instant::now());
    loop {
        let row = inspect(control, &id).await?;
        let tasks = list_tasks(control, &id, "")
            .await?
            .iter()
            .map(decode_task)
            .collect::<Result<Vec<_>>>()?;
        let p = progress(&row.service, row.desired, &tasks, watch);
        let line = format!("overall progress: {} out of {} tasks", p.done, p.wanted);
        if line != last_line {
            say(&line);
            last_line = line;
        }
        if p.note != last_note {
            if let Some(note) = &p.note {
                say(&format!("waiting: {note}"));
            }
            last_note.clone_from(&p.note);
        }
        for failure in p.failures.iter().filter(|f| !last_failures.contains(*f)) {
            say(failure);
        }
        last_failures.clone_from(&p.failures);
        if p.done != progressed.0 {
            progressed = (p.done, Instant::now());
        } else if p.phase == Phase::Converging && progressed.1.elapsed() >= STALL_LIMIT {
            let why = p
                .failures
                .first()
                .or(p.note.as_ref())
                .map_or_else(String::new, |w| format!(" ({w})"));
            bail!(
                "no progress in {}{why}: giving up waiting; the service stays as it is: see \
                 `meshctl service ps {id} --no-trunc`",
                format_duration_ms(STALL_LIMIT.as_millis().try_into().unwrap_or(u64::MAX))
            );
        }
        match p.phase {
            Phase::Failed(message) => bail!("{message}"),
            Phase::Converged => match stable_since {
                None => {
                    say(&format!(
                        "verify: Waiting {} seconds to verify that tasks are stable...",
                        STABLE.as_secs()
                    ));
                    stable_since = Some(Instant::now());
                }
                Some(since) if since.elapsed() >= STABLE => {
                    say("verify: Service converged");
                    return Ok(());
                }
                Some(_) => {}
            },
            Phase::Converging => {
                if stable_since.take().is_some() {
                    say("verify: Detected task failure");
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs a `meshctl service` command.
pub(crate) async fn run(
    control: &mut ControlClient<Channel>,
    command: &ServiceCommand,
) -> Result<()> {
    match command {
        ServiceCommand::Create(flags) => {
            let suffix = format!("{:04x}", rand::random::<u16>());
            let spec = flags.spec(&suffix)?;
            let reply = control
                .create_service(proto::CreateServiceRequest::new(&spec))
                .await
                .map_err(rpc)?
                .into_inner();
            let row = decode_service(&reply)?;
            println!("{}", format_id(row.service.id));
            if !flags.detach {
                watch(control, row.service.id, Watch::default(), flags.quiet).await?;
            }
        }
        ServiceCommand::Ls { format, quiet } => {
            print_services(&list_services(control).await?, *format, *quiet)?;
        }
        ServiceCommand::Ps(args) => {
            let mut ports = BTreeMap::new();
            let mut infos = Vec::new();
            for name in &args.services {
                let row = inspect(control, name).await?;
                infos.extend(list_tasks(control, &format_id(row.service.id), "").await?);
                ports.insert(row.service.id, row.service.endpoint.ports.clone());
            }
            let rows = task_rows(&infos, &ports)?;
            print_tasks(&rows, args.no_trunc, args.format, args.quiet)?;
        }
        ServiceCommand::Inspect { services, pretty } => {
            let mut rows = Vec::new();
            for name in services {
                rows.push(inspect(control, name).await?);
            }
            let networks = crate::network::list(control).await?;
            if *pretty {
                let texts: Vec<String> = rows
                    .iter()
                    .map(|r| view::pretty_service(r, &networks))
                    .collect();
                print!("{}", texts.join("\n"));
            } else {
                let list = rows
                    .iter()
                    .map(|r| {
                        // The record, with docker's `Endpoint.VirtualIPs` beside it.
                        let mut v = serde_json::to_value(&r.service)?;
                        v["Endpoint"] = network::service_endpoint_json(&r.service, &networks);
                        // And docker's `Mounts`, in docker's field names.
                        if !r.service.spec.task.mounts.is_empty() {
                            v["Mounts"] = view::mounts_json(&r.service.spec.task.mounts);
                        }
                        // And docker's `Placement`.
                        let placement = view::placement_json(&r.service.spec);
                        if placement.as_object().is_some_and(|o| !o.is_empty()) {
                            v["Placement"] = placement;
                        }
                        Ok(v)
                    })
                    .collect::<Result<Vec<_>>>()?;
                println!("{}", serde_json::to_string_pretty(&list)?);
            }
        }
        ServiceCommand::Scale { specs, detach } => {
            // Check every specifier and service before changing any.
            let wanted = specs
                .iter()
                .map(|s| flags::parse_scale(s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut targets = Vec::new();
            for (name, replicas) in wanted {
                let row = inspect(control, &name).await?;
                if row.service.spec.mode == ServiceMode::Global {
                    bail!("{name}: scale can only be used with replicated mode");
                }
                targets.push((name, replicas, row.service));
            }
            let mut changed = Vec::new();
            for (name, replicas, current) in targets {
                let mut spec = current.spec.clone();
                spec.mode = ServiceMode::Replicated { replicas };
                spec.validate()?;
                if spec != current.spec {
                    update(control, &current, &spec).await?;
                }
                println!("{name} scaled to {replicas}");
                changed.push(current.id);
            }
            if !detach {
                for id in changed {
                    watch(control, id, Watch::default(), false).await?;
                }
            }
        }
        ServiceCommand::Update(flags) => service_update(control, flags).await?,
        ServiceCommand::Rollback {
            service,
            detach,
            quiet,
        } => rollback(control, service, *detach, *quiet).await?,
        ServiceCommand::Logs { tail, follow, name } => {
            logs(control, name, tail.unwrap_or(0), *follow).await?;
        }
        ServiceCommand::Rm { services } => {
            remove_each(services, |name| {
                let mut control = control.clone();
                async move {
                    control.remove_service(proto::ServiceRef { name }).await?;
                    Ok(())
                }
            })
            .await?;
        }
        ServiceCommand::Publish { service, ports, rm } => {
            let row = inspect(control, service).await?;
            let mut spec = row.service.spec.clone();
            if *rm {
                flags::publish_rm(&mut spec, ports)?;
            } else {
                flags::publish_add(&mut spec, ports)?;
            }
            spec.validate()?;
            let row = if spec == row.service.spec {
                row
            } else {
                update(control, &row.service, &spec).await?
            };
            let published = view::ports_text(&row.service);
            println!(
                "{}: {}",
                row.service.spec.name,
                if published.is_empty() {
                    "no published ports"
                } else {
                    &published
                }
            );
        }
    }
    Ok(())
}

async fn service_update(control: &mut ControlClient<Channel>, flags: &UpdateFlags) -> Result<()> {
    let current = inspect(control, &flags.service).await?.service;
    let mut spec = current.spec.clone();
    // The spec holds network IDs: resolve the names the flags give first, as docker's
    // CLI does.
    let mut ids = BTreeMap::new();
    for name in flags.network_names()? {
        let id = format_id(crate::network::inspect(control, &name).await?.id);
        ids.insert(name, id);
    }
    flags.apply_with(&mut spec, &|name| {
        ids.get(name)
            .cloned()
            .ok_or_else(|| flags::FlagError::new(format!("network {name} not found")))
    })?;
    if flags.rollback {
        if spec != current.spec {
            bail!("--rollback can't be combined with other changes");
        }
        return rollback(control, &flags.service, flags.detach, flags.quiet).await;
    }
    if spec == current.spec {
        // Nothing changed: keep the previous spec for a rollback.
        println!("{}", current.spec.name);
        return Ok(());
    }
    update(control, &current, &spec).await?;
    // As docker: the name once the managers accepted the update, never before.
    println!("{}", current.spec.name);
    if !flags.detach {
        let task_spec_changed = spec.task != current.spec.task;
        let w = Watch {
            task_spec_changed,
            rollback: false,
        };
        watch(control, current.id, w, flags.quiet).await?;
    }
    Ok(())
}

async fn rollback(
    control: &mut ControlClient<Channel>,
    name: &str,
    detach: bool,
    quiet: bool,
) -> Result<()> {
    let current = inspect(control, name).await?.service;
    control
        .update_service(proto::UpdateServiceRequest {
            expected_version: current.spec_version,
            ..proto::UpdateServiceRequest::rollback(&format_id(current.id))
        })
        .await
        .map_err(rpc)?;
    println!("{}", current.spec.name);
    if !quiet {
        println!("rollback: manually requested rollback");
    }
    if !detach {
        let task_spec_changed = current
            .previous_spec
            .as_ref()
            .is_some_and(|p| p.task != current.spec.task);
        let w = Watch {
            task_spec_changed,
            rollback: true,
        };
        watch(control, current.id, w, quiet).await?;
    }
    Ok(())
}

/// `meshctl node ps`: the tasks on a node.
pub(crate) async fn node_ps(control: &mut ControlClient<Channel>, args: &NodePsArgs) -> Result<()> {
    let node = match &args.node {
        Some(node) => node.clone(),
        None => {
            control
                .info(proto::InfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .node_id
        }
    };
    let infos = list_tasks(control, "", &node).await?;
    let ports = list_services(control)
        .await?
        .into_iter()
        .map(|r| (r.service.id, r.service.endpoint.ports))
        .collect();
    let rows = task_rows(&infos, &ports)?;
    print_tasks(&rows, args.no_trunc, args.format, args.quiet)
}

/// `meshctl service logs`: every line, prefixed with its task as docker does.
///
/// With `follow`, new output keeps coming until the leader ends the stream:
/// normally with the reason on stderr (the service was removed, the task
/// ended; exit 0), or with an error (the leader changed; non-zero exit). An
/// interrupt (SIGINT, SIGTERM) ends it quietly with status 0; the leader then
/// tells the agents to stop following.
async fn logs(
    control: &mut ControlClient<Channel>,
    name: &str,
    tail: u32,
    follow: bool,
) -> Result<()> {
    use std::io::Write as _;
    // Only a follow handles the signals (a one-shot keeps their default).
    let mut interrupted = if follow {
        Some(Box::pin(interrupted()?))
    } else {
        None
    };
    let mut stream = control
        .service_logs(proto::ServiceLogsRequest {
            name: name.to_string(),
            tail,
            follow,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            () = async {
                match interrupted.as_mut() {
                    Some(interrupted) => interrupted.await,
                    None => std::future::pending().await,
                }
            } => return Ok(()),
        };
        let line = match message {
            Ok(Some(line)) => line,
            Ok(None) if follow => bail!("the leader ended the follow without a reason"),
            Ok(None) => return Ok(()),
            Err(status) if follow => return Err(rpc(status).context("following the output")),
            Err(status) => return Err(rpc(status)),
        };
        if line.dropped > 0 {
            eprintln!(
                "meshctl: {} lines dropped: the output came faster than it was read",
                line.dropped
            );
        } else if !line.ended.is_empty() {
            stdout.flush()?;
            eprintln!("{}", line.ended);
            return Ok(());
        } else {
            writeln!(stdout, "{}    | {}", line.source, line.line)?;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
fn interrupted() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
