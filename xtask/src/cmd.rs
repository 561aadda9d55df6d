//! Running external commands with readable logs and error messages.
//!
//! Every command is echoed before it runs (`$ cargo build ...`), so a CI log shows exactly
//! what happened. A command that exits non-zero becomes a [`CommandFailed`] error, which
//! `main` turns back into the same exit code, so `cargo xtask test` fails the way
//! `cargo test` failed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// The workspace root: the parent of this crate's directory.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The cargo binary that runs us (`$CARGO`, set by `cargo run`), or `cargo` from `PATH`.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Cargo's own binary directory (`$CARGO_HOME/bin`, default `~/.cargo/bin`), where
/// `cargo install` puts `bpf-linker`.
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// `PATH` with cargo's binary directory appended when it is missing, so that a
/// `bpf-linker` installed by `cargo xtask setup` is found by the commands we start even
/// when the caller's `PATH` (sudo's, for one) does not list `~/.cargo/bin`.
fn child_path() -> Option<OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bin = cargo_bin_dir()?;
    if std::env::split_paths(&path).any(|p| p == bin) {
        return None;
    }
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(bin);
    std::env::join_paths(dirs).ok()
}

/// A command exited unsuccessfully; carries its exit code for `main` to propagate.
#[derive(Debug)]
pub(crate) struct CommandFailed {
    /// The command line, for the message.
    pub command: String,
    /// The exit code, or `None` when a signal killed it.
    pub code: Option<i32>,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command),
            None => write!(f, "`{}` was killed by a signal", self.command),
        }
    }
}

impl std::error::Error for CommandFailed {}

/// A command to run from the workspace root.
#[derive(Debug)]
pub(crate) struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl Cmd {
    /// A new command running `program`.
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `cargo` (the one running us).
    pub(crate) fn cargo() -> Self {
        Self::new(cargo())
    }

    /// Appends one argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the command.
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line as the user would type it, for logs and errors.
    pub(crate) fn display(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.envs {
            if k != "PATH" {
                out.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
            }
        }
        let program = Path::new(&self.program);
        // `$CARGO` is an absolute path; show it as plain `cargo`.
        let name = if self.program == cargo() {
            "cargo".into()
        } else {
            program.to_string_lossy()
        };
        out.push_str(&name);
        for a in &self.args {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) {
                out.push_str(&format!(" '{a}'"));
            } else {
                out.push(' ');
                out.push_str(&a);
            }
        }
        out
    }

    fn build(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).current_dir(workspace_root());
        if let Some(path) = child_path() {
            c.env("PATH", path);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    fn spawn_error(&self, err: std::io::Error) -> anyhow::Error {
        let hint = if err.kind() == std::io::ErrorKind::NotFound {
            " (is it installed and on PATH?)"
        } else {
            ""
        };
        anyhow::Error::new(err).context(format!(
            "could not start `{}`{hint}",
            self.program.to_string_lossy()
        ))
    }

    /// Runs the command with inherited stdio, echoing it first; fails with
    /// [`CommandFailed`] on a non-zero exit.
    pub(crate) fn run(&self) -> Result<()> {
        eprintln!("$ {}", self.display());
        let status = self.build().status().map_err(|e| self.spawn_error(e))?;
        if status.success() {
            Ok(())
        } else {
            Err(CommandFailed {
                command: self.display(),
                code: status.code(),
            }
            .into())
        }
    }

    /// Runs the command quietly and returns its stdout, or `None` when it could not be
    /// started or exited non-zero. For probes (`dpkg-query`, `bpf-linker --version`).
    pub(crate) fn probe(&self) -> Option<String> {
        let out = self
            .build()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Replaces this process with the command (Unix `exec`), so that signals (Ctrl-C)
    /// and the exit code go straight to and from it. Returns only on failure.
    pub(crate) fn exec(&self) -> anyhow::Error {
        use std::os::unix::process::CommandExt;
        eprintln!("$ {}", self.display());
        let err = self.build().exec();
        self.spawn_error(err)
    }
}

/// Whether this process runs as root (effective uid 0), read without `unsafe` from the
/// owner of `/proc/self`.
pub(crate) fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Prints a step heading.
pub(crate) fn step(title: &str) {
    eprintln!("\n==> {title}");
}

/// A task failed and wants a given exit code (e.g. `cargo test`'s, after a summary).
#[derive(Debug)]
pub(crate) struct Exit {
    /// The exit code.
    pub code: i32,
    /// What failed.
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code to report for an error: the failed command's own code, else 1.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> i32 {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return exit.code;
    }
    match err.downcast_ref::<CommandFailed>() {
        Some(CommandFailed {
            code: Some(code), ..
        }) if *code != 0 => *code,
        _ => 1,
    }
}

/// Context helper for filesystem reads.
pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
