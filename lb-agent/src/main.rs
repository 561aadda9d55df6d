//! `lb-agent`: the mesh's node daemon; standalone, an IPVS-style L4 load balancer driven
//! by a configuration file. See docs/agent.md.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use lb_agent::agent::{self, Agent, Overrides};
use lb_agent::join::{self, JoinOptions};
use tracing_subscriber::EnvFilter;

/// The mesh's node agent: loads the eBPF dataplane, programs it from a configuration
/// file, serves metrics.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, env = "LB_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory under bpffs for pinned maps and links (overrides `dataplane.pin_dir`).
    #[arg(long, env = "LB_AGENT_PIN_DIR", global = true)]
    pin_dir: Option<PathBuf>,
    /// Address of the metrics endpoint (overrides `metrics.listen`).
    #[arg(long, env = "LB_AGENT_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// Join a cluster: manager address(es), comma-separated. The node keeps a session
    /// with the leader; without `--config` the agent runs the session only.
    #[arg(long, env = "LB_AGENT_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Join token (`meshctl cluster join-token worker`); needed only the first time.
    #[arg(long, env = "LB_AGENT_JOIN_TOKEN")]
    token: Option<String>,
    /// Where the node's cluster identity is kept.
    #[arg(
        long,
        env = "LB_AGENT_STATE_DIR",
        default_value = "/var/lib/mesh/agent"
    )]
    state_dir: PathBuf,
    /// The hostname reported to the managers (default: the system's).
    #[arg(long, env = "LB_AGENT_HOSTNAME")]
    hostname: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration against this host and print the desired state; touches
    /// nothing.
    Check,
    /// Detach every program and remove every pin under the pin directory (from
    /// `--pin-dir`, or the configuration's `dataplane.pin_dir`).
    Cleanup,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            pin_dir: self.pin_dir.clone(),
            metrics_listen: self.metrics_listen,
        }
    }

    fn config(&self) -> Result<&PathBuf> {
        self.config
            .as_ref()
            .context("--config (or LB_AGENT_CONFIG) is required")
    }
}

/// Runs the dataplane (with `--config`), the cluster session (with `--join`), or both.
async fn run(cli: &Cli) -> Result<()> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let session = if cli.join.is_empty() {
        None
    } else {
        let hostname = manager::session::node_hostname(cli.hostname.as_deref())
            .context("reading the hostname")?;
        let options = JoinOptions {
            managers: cli.join.clone(),
            token: cli.token.clone(),
            state_dir: cli.state_dir.clone(),
            hostname,
        };
        Some(join::start(options, stop).await?)
    };
    match (&cli.config, session) {
        (Some(config), session) => {
            let agent = Agent::start(config, cli.overrides()).await?;
            if let Some(session) = session {
                tokio::spawn(async move {
                    if let Ok(Err(e)) = session.await {
                        tracing::error!(error = %e, "cluster session ended");
                    }
                });
            }
            agent.run().await?;
            stop_tx.send_replace(true);
        }
        (None, Some(session)) => {
            tracing::info!("lb-agent ready (cluster session only: no --config, no dataplane)");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            tokio::select! {
                result = session => result.context("the session task")??,
                _ = term.recv() => {
                    stop_tx.send_replace(true);
                }
                _ = tokio::signal::ctrl_c() => {
                    stop_tx.send_replace(true);
                }
            }
        }
        (None, None) => bail!("--config (or LB_AGENT_CONFIG) or --join is required"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run => run(&cli).await?,
        Command::Check => {
            let desired = agent::check(cli.config()?, &cli.overrides()).await?;
            println!("configuration OK");
            for (key, svc) in &desired.state.services {
                let labels = &desired.service_labels[&svc.id];
                let slots = &desired.state.slots[&svc.id];
                println!(
                    "service {} {} id={} key={key} slots={slots:?}",
                    labels.service, labels.port, svc.id
                );
            }
            for (id, b) in &desired.state.backends {
                let l = &desired.backend_labels[id];
                let draining = if b.flags & lb_common::Backend::FLAG_DRAINING != 0 {
                    " draining"
                } else {
                    ""
                };
                println!(
                    "backend {id} {} {} -> {}{draining}",
                    l.service, l.port, l.backend
                );
            }
        }
        Command::Cleanup => {
            let pin_dir = match (&cli.pin_dir, &cli.config) {
                (Some(d), _) => d.clone(),
                (None, Some(c)) => agent::load_config(c, &cli.overrides())?.dataplane.pin_dir,
                (None, None) => bail!("cleanup needs --pin-dir or --config"),
            };
            let (links, maps) = agent::cleanup(&pin_dir)?;
            println!(
                "removed {links} links and {maps} map pins under {}",
                pin_dir.display()
            );
        }
    }
    Ok(())
}
