//! `mesh-manager`: a Raft-replicated manager of the mesh's control plane.
//!
//! `init` bootstraps a cluster, `join` adds a manager to one, `run` resumes
//! a member from its data directory. Each keeps serving until SIGINT or
//! SIGTERM, and exits non-zero on any fatal error: a panic anywhere (101),
//! or a Raft core that stopped, e.g. on a full disk (1).
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mesh_manager::daemon::{self, DaemonOptions, Start};
use mesh_manager::listener::ConnectionLimits;
use mesh_manager::raft::RaftTuning;
use openraft::SnapshotPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-manager",
    version,
    about = "The mesh's Raft-replicated manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster: a new CA, join tokens, and this manager as its first member.
    Init(Common),
    /// Join a cluster as a manager, with a manager join token.
    Join {
        /// A manager join token (`meshctl cluster join-token manager`); not needed
        /// on a node that was promoted (its data directory already holds a manager
        /// certificate: it joins the voters, resuming its log if it has one).
        /// The node's agent runs this itself when the node is promoted.
        #[arg(long, env = "MESH_JOIN_TOKEN", default_value = "")]
        token: String,
        /// Address of a manager of the cluster (`host:port`).
        remote: String,
        #[command(flatten)]
        common: Common,
    },
    /// Resume the member stored in the data directory.
    Run {
        /// Recover a lone surviving manager: make it the only member, keeping its data.
        #[arg(long)]
        force_new_cluster: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Holds the node's identity and the Raft log.
    #[arg(long, env = "MESH_DATA_DIR", default_value = "/var/lib/mesh/manager")]
    data_dir: PathBuf,
    /// The key that encrypts the Raft log and snapshots at rest: 32 bytes,
    /// mode 0600, outside the data directory; created if missing when the
    /// store is not encrypted yet. Default: the data directory's path with
    /// `.key` appended (`/var/lib/mesh/manager.key`).
    #[arg(long, env = "MESH_MANAGER_STORAGE_KEY_FILE")]
    storage_key_file: Option<PathBuf>,
    /// Where the API listens.
    #[arg(long, env = "MESH_LISTEN_ADDR", default_value = "0.0.0.0:4242")]
    listen_addr: SocketAddr,
    /// Address other nodes reach this manager on; defaults to --listen-addr
    /// unless that is unspecified (0.0.0.0).
    #[arg(long, env = "MESH_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Where `/metrics` listens; `off` disables it.
    #[arg(long, env = "MESH_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: String,
    /// Where the cluster view (a read-only web page of the nodes and their tasks,
    /// live) listens; `off` (the default) disables it. It has no authentication: keep it
    /// on loopback (`127.0.0.1:9466`) and reach it through an SSH tunnel.
    #[arg(long, env = "MESH_WEB_ADDR", default_value = "off")]
    web_addr: String,
    /// This node's hostname (default: the system's).
    #[arg(long, env = "MESH_HOSTNAME")]
    hostname: Option<String>,
    /// Interval agents heartbeat at, in milliseconds.
    #[arg(long, env = "MESH_HEARTBEAT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    heartbeat_ms: u64,
    /// Heartbeats a node may miss before it is marked down.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    heartbeat_misses: u32,
    /// Take a snapshot (and compact the log) every this many entries.
    #[arg(long, env = "MESH_SNAPSHOT_INTERVAL", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    snapshot_interval: u64,
}

impl Common {
    fn options(&self) -> Result<DaemonOptions> {
        let advertise = match &self.advertise_addr {
            Some(addr) => addr.clone(),
            None if self.listen_addr.ip().is_unspecified() => bail!(
                "--listen-addr {} is unspecified: pass --advertise-addr with the address other nodes reach this manager on",
                self.listen_addr
            ),
            None => self.listen_addr.to_string(),
        };
        let metrics_listen = match self.metrics_addr.as_str() {
            "off" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("invalid --metrics-addr {addr:?}"))?,
            ),
        };
        let web_listen = match self.web_addr.as_str() {
            "off" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("invalid --web-addr {addr:?}"))?,
            ),
        };
        let hostname = mesh_client::join::node_hostname(self.hostname.as_deref())
            .context("reading the hostname")?;
        let tuning = RaftTuning {
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_interval),
            logs_to_keep: self.snapshot_interval / 2,
            ..RaftTuning::default()
        };
        Ok(DaemonOptions {
            data_dir: self.data_dir.clone(),
            storage_key_file: self.storage_key_file.clone(),
            listen: self.listen_addr,
            advertise,
            metrics_listen,
            web_listen,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            allowed_misses: self.heartbeat_misses,
            hostname,
            tuning,
            limits: ConnectionLimits::DEFAULT,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "mesh-manager exits on an error");
            eprintln!("Error: {e:#}");
            // Not through the runtime's shutdown, which would wait for
            // whatever blocking work a failing manager left behind.
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    daemon::exit_on_panic();
    let cli = Cli::parse();
    let (options, start) = match cli.command {
        Command::Init(common) => (common.options()?, Start::Init),
        Command::Join {
            token,
            remote,
            common,
        } => (common.options()?, Start::Join { remote, token }),
        Command::Run {
            force_new_cluster,
            common,
        } => (common.options()?, Start::Resume { force_new_cluster }),
    };
    daemon::run(options, start).await?;
    Ok(())
}
