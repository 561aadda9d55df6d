//! `meshctl secret ...` and `meshctl config ...`: the gRPC calls around the pure parts
//! in `meshctl::cli::file`.

use std::io::Read;

use anyhow::{Context, Result};
use clap::Subcommand;
use mesh_api::file::FileInfo;
use mesh_api::file_ref::FileKind;
use mesh_api::node::format_id;
use mesh_client::proto::{self, control_client::ControlClient};
use meshctl::cli::file;
use meshctl::cli::format::Format;
use tonic::transport::Channel;

use crate::rpc::{inspect_each, remove_each, rpc};

#[derive(Debug, Subcommand)]
pub(crate) enum FileCommand {
    /// Create one from a file, or from standard input with `-`.
    Create {
        /// Set metadata (key=value).
        #[arg(long, short, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// Its name.
        name: String,
        /// The file holding its content, or `-` for standard input.
        file: String,
    },
    /// List them.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only display IDs.
        #[arg(long, short)]
        quiet: bool,
        /// Filter output based on conditions provided (name=NAME: names containing it).
        #[arg(long, short, value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Display detailed information on one or more (never a secret's data).
    Inspect {
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn decode(reply: &proto::FileReply) -> Result<FileInfo> {
    reply
        .file()
        .context("the manager sent a secret or config record this meshctl can't read")
}

/// Every secret, or every config.
pub(crate) async fn list(
    control: &mut ControlClient<Channel>,
    kind: FileKind,
) -> Result<Vec<FileInfo>> {
    control
        .list_files(proto::ListFilesRequest {
            kind: kind.as_str().to_owned(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .files
        .iter()
        .map(decode)
        .collect()
}

/// Reads `path`'s bytes, or standard input's for `-`, at most one byte more than the
/// kind allows (so that an oversized input is refused without reading all of it).
fn read_data(kind: FileKind, path: &str) -> Result<Vec<u8>> {
    let limit = u64::try_from(kind.max_size()).unwrap_or(u64::MAX) + 1;
    let mut data = Vec::new();
    if path == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut data)
            .context("read standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_end(&mut data))
            .with_context(|| format!("read {path}"))?;
    }
    file::check_data(kind, &data)?;
    Ok(data)
}

pub(crate) async fn run(
    control: &mut ControlClient<Channel>,
    kind: FileKind,
    command: &FileCommand,
) -> Result<()> {
    let kind_name = kind.as_str().to_string();
    match command {
        FileCommand::Create { label, name, file } => {
            let spec = file::spec(kind, name, label)?;
            let data = read_data(kind, file)?;
            let reply = control
                .create_file(proto::CreateFileRequest::new(kind, &spec, data))
                .await
                .map_err(rpc)?
                .into_inner();
            println!("{}", format_id(decode(&reply)?.id));
        }
        FileCommand::Ls {
            format,
            quiet,
            filter,
        } => {
            let files = file::filtered(list(control, kind).await?, filter)?;
            if *quiet {
                for f in &files {
                    println!("{}", format_id(f.id));
                }
            } else if *format == Format::Json {
                let all: Vec<_> = files.iter().map(file::inspect_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", file::table(kind, &files, mesh_api::time::now_ms()));
            }
        }
        FileCommand::Inspect { pretty, names } => {
            let (found, result) = inspect_each(names, |name| {
                let mut control = control.clone();
                let kind = kind_name.clone();
                async move {
                    let reply = control
                        .inspect_file(proto::FileName { kind, name })
                        .await
                        .map_err(rpc)?;
                    decode(reply.get_ref())
                }
            })
            .await;
            if *pretty {
                let texts: Vec<String> = found.iter().map(file::pretty).collect();
                print!("{}", texts.join("\n"));
            } else {
                let all: Vec<_> = found.iter().map(file::inspect_json).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            result?;
        }
        FileCommand::Rm { names } => {
            remove_each(names, |name| {
                let mut control = control.clone();
                let kind = kind_name.clone();
                async move {
                    control.remove_file(proto::FileName { kind, name }).await?;
                    Ok(())
                }
            })
            .await?;
        }
    }
    Ok(())
}
