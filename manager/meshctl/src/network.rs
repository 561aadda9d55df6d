//! `meshctl network ...`: the gRPC calls around the pure parts in
//! `meshctl::cli::network`.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::Subcommand;
use mesh_api::network::NetworkInfo;
use mesh_api::node::format_id;
use mesh_client::proto::{self, control_client::ControlClient};
use meshctl::cli::format::Format;
use meshctl::cli::network::{self, CreateFlags};
use tonic::transport::Channel;

use crate::rpc::{inspect_each, remove_each, rpc};

#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateFlags),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display network IDs.
        #[arg(long, short)]
        quiet: bool,
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Filter output based on conditions provided (name=NAME: names containing it).
        #[arg(long, short, value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Display detailed information on one or more networks.
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove all unused networks.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(long, short)]
        force: bool,
    },
}

fn decode(reply: &proto::NetworkReply) -> Result<NetworkInfo> {
    reply
        .network()
        .context("the manager sent a network record this meshctl can't read")
}

/// Every network, by name.
pub(crate) async fn list(control: &mut ControlClient<Channel>) -> Result<Vec<NetworkInfo>> {
    control
        .list_networks(proto::ListNetworksRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .networks
        .iter()
        .map(decode)
        .collect()
}

/// The network `name` (a name, an ID or a unique ID prefix).
pub(crate) async fn inspect(
    control: &mut ControlClient<Channel>,
    name: &str,
) -> Result<NetworkInfo> {
    let reply = control
        .inspect_network(proto::NetworkRef {
            name: name.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    decode(&reply)
}

pub(crate) async fn run(
    control: &mut ControlClient<Channel>,
    command: &NetworkCommand,
) -> Result<()> {
    match command {
        NetworkCommand::Create(flags) => {
            let spec = flags.spec()?;
            let reply = control
                .create_network(proto::CreateNetworkRequest::new(&spec))
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", format_id(decode(&reply)?.id));
        }
        NetworkCommand::Ls {
            format,
            quiet,
            no_trunc,
            filter,
        } => {
            let networks = network::filtered(list(control).await?, filter)?;
            if *quiet {
                for n in &networks {
                    if *no_trunc {
                        println!("{}", format_id(n.id));
                    } else {
                        println!("{}", network::short_id(n.id));
                    }
                }
            } else if *format == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&network::networks_json(&networks))?
                );
            } else {
                print!("{}", network::networks_table(&networks, *no_trunc));
            }
        }
        NetworkCommand::Inspect { networks } => {
            let (found, result) = inspect_each(networks, |name| {
                let mut control = control.clone();
                async move { Ok(network::network_json(&inspect(&mut control, &name).await?)) }
            })
            .await;
            println!("{}", serde_json::to_string_pretty(&found)?);
            result?;
        }
        NetworkCommand::Rm { networks } => {
            remove_each(networks, |name| {
                let mut control = control.clone();
                async move {
                    control.remove_network(proto::NetworkRef { name }).await?;
                    Ok(())
                }
            })
            .await?;
        }
        NetworkCommand::Prune { force } => {
            if !*force {
                print!("{}", network::PRUNE_WARNING);
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !network::confirmed(&answer) {
                    return Ok(());
                }
            }
            let removed = control
                .prune_networks(proto::PruneNetworksRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .removed;
            print!("{}", network::prune_report(&removed));
        }
    }
    Ok(())
}
