//! `meshctl`: the mesh's command line, after the docker CLI's verbs, flags
//! and tables. It talks to any manager over mutual TLS with a manager's
//! identity (by default the local manager's).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use mesh_api::file_ref::FileKind;
use mesh_api::node::Role;
use mesh_client::connect;
use mesh_client::pki::TlsDir;
use mesh_client::proto::{self, control_client::ControlClient};
use meshctl::cli::format::Format;
use meshctl::cli::table;
use rpc::rpc;
use tonic::transport::Channel;

mod file;
mod network;
mod rpc;
mod service;
mod stack;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Manage a mesh cluster")]
struct Cli {
    /// Manager address(es) to talk to, comma-separated; the first that answers is used.
    #[arg(
        long,
        short = 'H',
        env = "MESH_HOST",
        default_value = "127.0.0.1:4242",
        value_delimiter = ',',
        global = true
    )]
    host: Vec<String>,
    /// Directory with the manager identity to use (ca.pem, node.pem, node-key.pem).
    #[arg(
        long,
        env = "MESH_TLS_DIR",
        default_value = "/var/lib/mesh/manager/tls",
        global = true
    )]
    tls_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage secrets: files a service's tasks get under /run/secrets.
    #[command(subcommand)]
    Secret(file::FileCommand),
    /// Manage configs: files a service's tasks get at a path.
    #[command(subcommand)]
    Config(file::FileCommand),
    /// Manage stacks: applications from compose files.
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(
        long_about = "Print the shell completion script for bash, zsh or fish.\n\n\
        Load it in the current shell:\n  \
        bash: source <(meshctl completion bash)\n  \
        zsh:  source <(meshctl completion zsh)\n  \
        fish: meshctl completion fish | source\n\n\
        Or install it for every shell: meshctl completion bash > /etc/bash_completion.d/meshctl, \
        meshctl completion zsh > /usr/local/share/zsh/site-functions/_meshctl, \
        meshctl completion fish > /etc/fish/completions/meshctl.fish."
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write meshctl's man pages (meshctl.1 and a page per command) into a directory.
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// A shell `meshctl completion` writes a script for.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start a manager that bootstraps a new cluster (runs `mesh-manager init` in the background).
    Init(InitArgs),
    /// Show the cluster's Raft status as the manager sees it.
    Inspect {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show (or rotate) the command a node joins with.
    JoinToken {
        /// Which token.
        #[arg(value_enum)]
        role: TokenRole,
        /// Replace the token; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Make the manager you talk to leave the cluster and stop.
    Leave {
        /// Leave even though this reduces the managers' fault tolerance.
        #[arg(long, short)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The manager's data directory.
    #[arg(long, default_value = "/var/lib/mesh/manager")]
    data_dir: PathBuf,
    /// Where the manager's API listens.
    #[arg(long, default_value = "0.0.0.0:4242")]
    listen_addr: String,
    /// Address other nodes reach the manager on.
    #[arg(long)]
    advertise_addr: String,
    /// Where its `/metrics` listens (`off` to disable).
    #[arg(long, default_value = "127.0.0.1:9465")]
    metrics_addr: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TokenRole {
    Worker,
    Manager,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the tasks running on a node (default: the manager meshctl talks to).
    Ps(service::NodePsArgs),
    /// Display detailed information on one or more nodes (JSON; `--pretty` for text).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Print human-readable text.
        #[arg(long)]
        pretty: bool,
    },
    /// Update a node's availability or labels.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or update a label (`key=value`).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label by key.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Promote one or more nodes to manager.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more managers to worker.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the cluster.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is not down.
        #[arg(long, short)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A `Control` client of the first of `hosts` that answers, as the manager
/// whose identity is in `tls_dir`. Opening the connection and every call
/// have deadlines ([`connect::Deadlines::UNARY`]: 13 s to connect, 30 s per
/// call; a `service logs` stream is bounded until it starts, not to its
/// end), so meshctl never hangs on a manager that does not answer.
async fn control_at(hosts: &[String], tls_dir: &Path) -> Result<ControlClient<Channel>> {
    let identity = TlsDir::new(tls_dir).load().with_context(|| {
        format!(
            "reading the manager identity in {} (set --tls-dir or MESH_TLS_DIR to a manager's tls directory)",
            tls_dir.display()
        )
    })?;
    let channel = connect::connect_with(
        hosts,
        &connect::identity_tls(&identity),
        connect::Deadlines::UNARY,
    )
    .await?;
    Ok(ControlClient::new(channel))
}

async fn control(cli: &Cli) -> Result<ControlClient<Channel>> {
    control_at(&cli.host, &cli.tls_dir).await
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Cluster(ClusterCommand::Init(args)) => cluster_init(args).await,
        Command::Cluster(ClusterCommand::Inspect { format }) => {
            let info = control(&cli)
                .await?
                .info(proto::InfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            print_info(&info, *format)
        }
        Command::Cluster(ClusterCommand::JoinToken {
            role,
            rotate,
            quiet,
        }) => {
            let mut control = control(&cli).await?;
            let request = proto::JoinTokensRequest {
                rotate_worker: *rotate && matches!(role, TokenRole::Worker),
                rotate_manager: *rotate && matches!(role, TokenRole::Manager),
            };
            let tokens = control
                .join_tokens(request)
                .await
                .map_err(rpc)?
                .into_inner();
            let info = control
                .info(proto::InfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            let token = match role {
                TokenRole::Worker => tokens.worker,
                TokenRole::Manager => tokens.manager,
            };
            let addr = if info.leader_addr.is_empty() {
                cli.host[0].clone()
            } else {
                info.leader_addr
            };
            if *quiet {
                println!("{token}");
            } else {
                if *rotate {
                    println!("Successfully rotated {} join token.\n", Role::from(*role));
                }
                print_join_command(*role, &token, &addr);
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::Leave { force }) => {
            control(&cli)
                .await?
                .leave(proto::LeaveRequest { force: *force })
                .await
                .map_err(rpc)?;
            println!("Node left the cluster.");
            Ok(())
        }
        Command::Node(command) => node(&cli, command).await,
        Command::Service(command) => service::run(&mut control(&cli).await?, command).await,
        Command::Network(command) => network::run(&mut control(&cli).await?, command).await,
        Command::Secret(command) => {
            file::run(&mut control(&cli).await?, FileKind::Secret, command).await
        }
        Command::Config(command) => {
            file::run(&mut control(&cli).await?, FileKind::Config, command).await
        }
        Command::Stack(stack::StackCommand::Config { compose_file }) => stack::config(compose_file),
        Command::Stack(command) => stack::run(&mut control(&cli).await?, command).await,
        Command::Completion { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            // Into a buffer first: the generator panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshctl", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                // A reader that stops early (`| head`) is not a failure.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the completion script")
                }
                _ => Ok(()),
            }
        }
        Command::Man { dir } => {
            let dir = dir.as_path();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            let pages = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
                .count();
            println!("{pages} man pages in {}", dir.display());
            Ok(())
        }
    }
}

impl From<TokenRole> for Role {
    fn from(role: TokenRole) -> Self {
        match role {
            TokenRole::Worker => Role::Worker,
            TokenRole::Manager => Role::Manager,
        }
    }
}

fn print_join_command(role: TokenRole, token: &str, addr: &str) {
    match role {
        TokenRole::Worker => {
            println!("To add a worker to this cluster, run the following command:\n");
            println!("    lb-agent --join {addr} --token {token} --underlay auto\n");
        }
        TokenRole::Manager => {
            println!("To add a manager to this cluster, run the following command:\n");
            println!(
                "    mesh-manager join --token {token} --advertise-addr <this-host>:4242 {addr}\n"
            );
        }
    }
}

fn print_info(info: &proto::InfoResponse, format: Format) -> Result<()> {
    if format == Format::Json {
        let managers: Vec<_> = info
            .managers
            .iter()
            .map(|m| serde_json::json!({"NodeID": m.node_id, "Addr": m.addr, "Voter": m.voter}))
            .collect();
        let value = serde_json::json!({
            "ClusterID": info.cluster_id,
            "NodeID": info.node_id,
            "IsLeader": info.is_leader,
            "LeaderID": info.leader_id,
            "LeaderAddr": info.leader_addr,
            "Term": info.term,
            "CommitIndex": info.commit_index,
            "AppliedIndex": info.applied_index,
            "Managers": managers,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let leader = if info.leader_id.is_empty() {
        "none (no quorum)".to_string()
    } else {
        format!("{} ({})", info.leader_id, info.leader_addr)
    };
    println!("Cluster ID:     {}", info.cluster_id);
    println!(
        "This manager:   {}{}",
        info.node_id,
        if info.is_leader { " (leader)" } else { "" }
    );
    println!("Leader:         {leader}");
    println!("Raft term:      {}", info.term);
    println!("Commit index:   {}", info.commit_index);
    println!("Applied index:  {}", info.applied_index);
    println!("Managers:");
    let rows: Vec<Vec<String>> = info
        .managers
        .iter()
        .map(|m| {
            vec![
                m.node_id.clone(),
                m.addr.clone(),
                if m.voter {
                    "voter".into()
                } else {
                    "learner".into()
                },
            ]
        })
        .collect();
    print!("{}", table::render(&["ID", "ADDRESS", "RAFT"], &rows));
    Ok(())
}

fn title(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// `node inspect --pretty`'s runtimes: `process, docker`, or `none` for a
/// node that runs no tasks (no dataplane).
fn runtimes_text(runtimes: &[String]) -> String {
    if runtimes.is_empty() {
        "none".to_string()
    } else {
        runtimes.join(", ")
    }
}

fn node_json(node: &proto::NodeInfo) -> serde_json::Value {
    serde_json::json!({
        "ID": node.id,
        "Hostname": node.hostname,
        "Role": node.role,
        "Availability": node.availability,
        "Status": node.status,
        "StatusMessage": node.status_message,
        "ManagerStatus": node.manager_status,
        "ManagerAddr": node.manager_addr,
        "Labels": node.labels,
        "CreatedAt": node.created_at,
        "UpdatedAt": node.updated_at,
        "AgentVersion": node.agent_version,
        "Runtimes": node.runtimes,
        "Description": {
            "Resources": {"NanoCPUs": node.nano_cpus, "MemoryBytes": node.memory_bytes},
        },
    })
}

async fn node(cli: &Cli, command: &NodeCommand) -> Result<()> {
    let mut control = control(cli).await?;
    match command {
        NodeCommand::Ps(args) => service::node_ps(&mut control, args).await?,
        NodeCommand::Ls { format, quiet } => {
            let mut nodes = control
                .list_nodes(proto::ListNodesRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .nodes;
            nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
            let me = control
                .info(proto::InfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .node_id;
            if *quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
            } else if *format == Format::Json {
                let list: Vec<_> = nodes.iter().map(node_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            if n.id == me {
                                format!("{} *", n.id)
                            } else {
                                n.id.clone()
                            },
                            n.hostname.clone(),
                            title(&n.status),
                            title(&n.availability),
                            n.manager_status.clone(),
                            n.agent_version.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(
                        &[
                            "ID",
                            "HOSTNAME",
                            "STATUS",
                            "AVAILABILITY",
                            "MANAGER STATUS",
                            "AGENT VERSION"
                        ],
                        &rows
                    )
                );
            }
        }
        NodeCommand::Inspect { nodes, pretty } => {
            let mut found = Vec::new();
            for name in nodes {
                let node = control
                    .inspect_node(proto::NodeRef { name: name.clone() })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                found.push(node);
            }
            if *pretty {
                for n in &found {
                    println!("ID:                {}", n.id);
                    println!("Hostname:          {}", n.hostname);
                    println!("Joined at:         {}", n.created_at);
                    println!("Status:");
                    println!(" State:            {}", title(&n.status));
                    println!(" Availability:     {}", title(&n.availability));
                    if !n.status_message.is_empty() {
                        println!(" Message:          {}", n.status_message);
                    }
                    if !n.manager_status.is_empty() {
                        println!("Manager Status:");
                        println!(" Address:          {}", n.manager_addr);
                        println!(" Raft Status:      {}", n.manager_status);
                    }
                    println!("Role:              {}", n.role);
                    if !n.labels.is_empty() {
                        println!("Labels:");
                        let mut labels: Vec<_> = n.labels.iter().collect();
                        labels.sort();
                        for (k, v) in labels {
                            println!(" - {k}={v}");
                        }
                    }
                    println!("Agent Version:     {}", n.agent_version);
                    println!("Runtimes:          {}", runtimes_text(&n.runtimes));
                    if n.nano_cpus > 0 || n.memory_bytes > 0 {
                        use mesh_api::resources::{Bytes, CpuCount};
                        println!("Resources:");
                        println!(" CPUs:             {}", CpuCount(n.nano_cpus));
                        println!(" Memory:           {}", Bytes(n.memory_bytes));
                    }
                }
            } else {
                let list: Vec<_> = found.iter().map(node_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            }
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
            if availability.is_none() && label_add.is_empty() && label_rm.is_empty() {
                bail!("nothing to update: pass --availability, --label-add or --label-rm");
            }
            let updated = control
                .update_node(proto::UpdateNodeRequest {
                    name: node.clone(),
                    availability: availability.clone().unwrap_or_default(),
                    label_add: label_add.clone(),
                    label_rm: label_rm.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", updated.id);
        }
        NodeCommand::Promote { nodes } => {
            for name in nodes {
                let node = control
                    .promote_node(proto::NodeRef { name: name.clone() })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                println!("Node {} promoted to a manager in the cluster.", node.id);
            }
        }
        NodeCommand::Demote { nodes } => {
            for name in nodes {
                let node = control
                    .demote_node(proto::NodeRef { name: name.clone() })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                println!("Manager {} demoted in the cluster.", node.id);
            }
        }
        NodeCommand::Rm { force, nodes } => {
            for name in nodes {
                let removed = control
                    .remove_node(proto::RemoveNodeRequest {
                        name: name.clone(),
                        force: *force,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                println!("{}", removed.id);
            }
        }
    }
    Ok(())
}

/// Starts `mesh-manager init` in the background, waits until it answers,
/// and prints the worker join command, as `docker swarm init` does.
async fn cluster_init(args: &InitArgs) -> Result<()> {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("mesh-manager")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mesh-manager"));
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let log_path = args.data_dir.join("manager.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = std::process::Command::new(&exe);
    child
        .args(["init", "--data-dir"])
        .arg(&args.data_dir)
        .args([
            "--listen-addr",
            &args.listen_addr,
            "--advertise-addr",
            &args.advertise_addr,
            "--metrics-addr",
            &args.metrics_addr,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let mut child = child
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let tls_dir = args.data_dir.join("tls");
    let host = vec![args.advertise_addr.clone()];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (info, mut control) = loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            bail!(
                "mesh-manager exited ({status}):\n{}",
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
        if let Ok(mut control) = control_at(&host, &tls_dir).await
            && let Ok(info) = control.info(proto::InfoRequest {}).await
            && info.get_ref().is_leader
        {
            break (info.into_inner(), control);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "mesh-manager did not become ready within 30 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tokens = control
        .join_tokens(proto::JoinTokensRequest::default())
        .await
        .map_err(rpc)?
        .into_inner();
    println!(
        "Cluster initialized: current node ({}) is now a manager (pid {}, log {}).\n",
        info.node_id,
        child.id(),
        log_path.display()
    );
    print_join_command(TokenRole::Worker, &tokens.worker, &args.advertise_addr);
    println!(
        "To add a manager to this cluster, run 'meshctl cluster join-token manager' and follow the instructions."
    );
    println!(
        "Talk to it with: export MESH_HOST={} MESH_TLS_DIR={}",
        args.advertise_addr,
        tls_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// A service's `--add-host` is not the global `--host` (the manager's address),
    /// though both hold host names.
    #[test]
    fn add_host_leaves_the_manager_address_alone() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "service",
            "create",
            "--add-host",
            "db:10.0.0.5",
            "sleep",
        ])
        .unwrap();
        // (`MESH_HOST` may set it: only its not being the mapping matters.)
        assert!(
            !cli.host.iter().any(|h| h.contains("10.0.0.5")),
            "{:?}",
            cli.host
        );
        let Command::Service(service::ServiceCommand::Create(flags)) = cli.command else {
            panic!("not a service create");
        };
        assert_eq!(flags.container.add_host, ["db:10.0.0.5"]);
    }
}
