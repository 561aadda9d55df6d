//! `lb-agent`: the mesh's node daemon; standalone, an IPVS-style L4 load balancer driven
//! by a configuration file. See docs/agent.md.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use lb_agent::agent::{self, Agent, Overrides};
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
        Command::Run => {
            let agent = Agent::start(cli.config()?, cli.overrides()).await?;
            agent.run().await?;
        }
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
