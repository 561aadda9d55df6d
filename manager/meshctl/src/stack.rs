//! `meshctl stack`: applications from compose files, as `docker stack`. For now
//! `stack config`, which loads, merges and interpolates the files (`mesh-compose`) and
//! prints the result, without a cluster.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

/// `meshctl stack ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum StackCommand {
    /// Outputs the final config file, after doing merges and interpolations.
    Config {
        /// Path to a Compose file, or "-" to read from stdin (repeatable: later files
        /// are merged into earlier ones).
        #[arg(long = "compose-file", short = 'c', required = true)]
        compose_file: Vec<PathBuf>,
    },
}

/// Runs a `stack` verb.
///
/// # Errors
/// The files cannot be read or loaded (file, line and key in the message).
pub(crate) fn run(command: &StackCommand) -> Result<()> {
    match command {
        StackCommand::Config { compose_file } => {
            if compose_file.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
                anyhow::bail!("\"-\" (stdin) can be given only once");
            }
            let loaded = mesh_compose::load_paths(compose_file, &mut std::io::stdin().lock())?;
            if let Some(warning) = loaded.warning() {
                eprintln!("{warning}");
            }
            let mut out = std::io::stdout().lock();
            out.write_all(mesh_compose::emit::to_yaml(&loaded.config).as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}
