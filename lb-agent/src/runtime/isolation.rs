//! How the agent confines a process task: what it hides from tasks (its state
//! directory, which holds the node's private key and the tasks' records, its pin
//! directory and its configuration file) and the command lines of `lb-agent task-init`
//! and `lb-agent task-exec` ([`super::init`]) that start a task's program, or a health
//! check in a running task, with the task's capabilities and user.
//!
//! What a spec asks for is checked here, before anything starts, so that a task that
//! cannot run fails at once and says why: a user unknown on this node, a capability the
//! agent itself does not hold (a task cannot get more than its agent's bounding set), a
//! program that is not there.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mesh_api::spec::TaskSpec;

use super::cgroup::{Cgroups, Controllers};
use super::error::RuntimeError;
use super::init::resolve_user;

/// What every process task of this agent is confined by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The `lb-agent` program that provides `task-init` and `task-exec`.
    program: PathBuf,
    /// Directories hidden from tasks.
    hide: Vec<PathBuf>,
    /// Files hidden from tasks.
    mask: Vec<PathBuf>,
    /// Where tasks get a cgroup of their own, if anywhere.
    cgroups: Option<Cgroups>,
    /// The nameserver tasks' `/etc/resolv.conf` names, if they get one of their own.
    dns: Option<Ipv4Addr>,
    /// Where named volumes live (`<state-dir>/volumes`), if tasks may have them.
    volumes: Option<PathBuf>,
    /// Where tasks' limits are enforced.
    controllers: Controllers,
}

impl Isolation {
    /// Confinement through `program` (an `lb-agent`), hiding nothing yet.
    #[must_use]
    pub fn new(program: PathBuf) -> Self {
        Self {
            program,
            hide: Vec::new(),
            mask: Vec::new(),
            cgroups: None,
            dns: None,
            volumes: None,
            controllers: Controllers::default(),
        }
    }

    /// Keeps the tasks' named volumes under `dir` (`<dir>/<name>/_data`), made
    /// absolute; without it a task with a volume mount is refused.
    #[must_use]
    pub fn with_volumes(mut self, dir: &Path) -> Self {
        self.volumes = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()));
        self
    }

    /// Gives each task a cgroup of its own under `cgroups` (`None`: tasks stay in the
    /// agent's).
    #[must_use]
    pub fn with_cgroups(mut self, cgroups: Option<Cgroups>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// Enforces tasks' limits through `controllers` (by default nowhere: a task with
    /// limits fails).
    #[must_use]
    pub fn with_controllers(mut self, controllers: Controllers) -> Self {
        self.controllers = controllers;
        self
    }

    /// Where tasks' limits are enforced.
    #[must_use]
    pub fn controllers(&self) -> &Controllers {
        &self.controllers
    }

    /// Gives each task an `/etc/resolv.conf` of its own that names `nameserver`
    /// (`None`: tasks see the node's).
    #[must_use]
    pub fn with_dns(mut self, nameserver: Option<Ipv4Addr>) -> Self {
        self.dns = nameserver;
        self
    }

    /// The nameserver of the tasks' own `/etc/resolv.conf`, if they get one.
    #[must_use]
    pub fn dns(&self) -> Option<Ipv4Addr> {
        self.dns
    }

    /// Where tasks get a cgroup of their own, if anywhere.
    #[must_use]
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    /// Confinement through the running `lb-agent` program.
    ///
    /// # Errors
    /// If the program's path cannot be read.
    pub fn of_this_program() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
    }

    /// Also hides directory `dir` (made absolute) from tasks.
    #[must_use]
    pub fn hide(mut self, dir: &Path) -> Self {
        self.hide.push(absolute(dir));
        self
    }

    /// Also hides file `file` (made absolute) from tasks.
    #[must_use]
    pub fn mask(mut self, file: &Path) -> Self {
        self.mask.push(absolute(file));
        self
    }

    /// The program and arguments that start `spec`'s program as task `id`, whose
    /// environment is `env` and whose address (its hostname's in its `/etc/hosts`) is
    /// `addr`, confined (run in the task's network namespace and a new PID namespace;
    /// its cgroup, if it gets one, made beforehand).
    ///
    /// # Errors
    /// [`RuntimeError::Failed`] if the user is unknown here, a capability is not the
    /// agent's to grant, the program is not found, a mount cannot be made here
    /// ([`super::mounts::plan`]; a named volume is created on first use), or the working
    /// directory is neither on the node nor under one of the task's mounts.
    pub fn init_command(
        &self,
        id: mesh_api::task::TaskId,
        spec: &TaskSpec,
        env: &[(String, String)],
        addr: Ipv4Addr,
    ) -> Result<(PathBuf, Vec<OsString>), RuntimeError> {
        let caps = capabilities(spec)?;
        if let Some(user) = &spec.user {
            resolve_user(user).map_err(RuntimeError::Failed)?;
        }
        find_program(&spec.image, env)?;
        let hidden = super::mounts::Hidden {
            dirs: &self.hide,
            files: &self.mask,
        };
        let mounts = super::mounts::plan(&spec.mounts, hidden, self.volumes.as_deref())?;
        let mut args: Vec<OsString> = vec!["task-init".into()];
        for dir in &self.hide {
            args.extend(["--hide".into(), dir.into()]);
        }
        for file in &self.mask {
            args.extend(["--mask".into(), file.into()]);
        }
        if let Some(cgroups) = &self.cgroups {
            args.extend(["--cgroup".into(), cgroups.path(id).into()]);
        }
        if let Some(dns) = self.dns {
            args.extend(["--dns".into(), dns.to_string().into()]);
        }
        for mount in &mounts {
            args.extend(["--mount".into(), mount.to_string().into()]);
        }
        args.extend(self.container_args(spec, addr)?);
        args.extend(["--caps".into(), format!("{caps:x}").into()]);
        if let Some(user) = &spec.user {
            args.extend(["--user".into(), user.into()]);
        }
        args.push("--".into());
        args.push(spec.image.clone().into());
        args.extend(spec.args.iter().map(OsString::from));
        Ok((self.program.clone(), args))
    }

    /// `task-init`'s arguments for the task's hostname, `/etc/hosts` lines, DNS settings
    /// and working directory.
    fn container_args(
        &self,
        spec: &TaskSpec,
        addr: Ipv4Addr,
    ) -> Result<Vec<OsString>, RuntimeError> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(hostname) = &spec.hostname {
            args.extend(["--hostname".into(), hostname.into()]);
            args.extend(["--addr".into(), addr.to_string().into()]);
            for host in &spec.hosts {
                args.extend(["--host".into(), host.into()]);
            }
        }
        // With the agent's resolver the task's servers are where it forwards for this
        // task (`crate::dns::View`); without, they are the task's resolv.conf's.
        if self.dns.is_none() {
            for ns in &spec.dns.nameservers {
                args.extend(["--nameserver".into(), ns.to_string().into()]);
            }
        }
        for domain in &spec.dns.search {
            args.extend(["--dns-search".into(), domain.into()]);
        }
        for option in &spec.dns.options {
            args.extend(["--dns-option".into(), option.into()]);
        }
        if let Some(dir) = &spec.workdir {
            let under_mount = spec
                .mounts
                .iter()
                .any(|m| Path::new(dir).starts_with(&m.target));
            if !under_mount && !Path::new(dir).is_dir() {
                return Err(RuntimeError::Failed(format!(
                    "the working directory {dir} does not exist on this node"
                )));
            }
            args.extend(["--workdir".into(), dir.into()]);
        }
        Ok(args)
    }

    /// The program and arguments that run `argv` inside the task whose `task-init` is
    /// `pid`, confined as its program is.
    #[must_use]
    pub fn exec_command(&self, pid: i32, argv: &[&str]) -> (PathBuf, Vec<OsString>) {
        let mut args: Vec<OsString> = vec!["task-exec".into(), "--pid".into()];
        args.push(pid.to_string().into());
        args.push("--".into());
        args.extend(argv.iter().map(OsString::from));
        (self.program.clone(), args)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// The capability mask of `spec`'s task, checked against what this agent may grant.
fn capabilities(spec: &TaskSpec) -> Result<u64, RuntimeError> {
    let wanted = mesh_api::capability::resolve(&spec.cap_add, &spec.cap_drop)
        .map_err(|e| RuntimeError::Failed(e.to_string()))?;
    let bounding = caps::read(None, caps::CapSet::Bounding)
        .map_err(|e| RuntimeError::Failed(format!("read the agent's capabilities: {e}")))?;
    for cap in &wanted {
        if !bounding.iter().any(|c| c.index() == *cap) {
            let name = mesh_api::capability::NAMES
                .get(usize::from(*cap))
                .copied()
                .unwrap_or("?");
            return Err(RuntimeError::Failed(format!(
                "the agent cannot grant {name}: it is not in the agent's capability bounding \
                 set (CapabilityBoundingSet in lb-agent.service)"
            )));
        }
    }
    Ok(mesh_api::capability::mask(&wanted))
}

/// Where `program` is: itself if it names a path, else the first executable of that
/// name on the task's `PATH`.
fn find_program(program: &str, env: &[(String, String)]) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| executable(p))
    } else {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or("", |(_, v)| v.as_str());
        std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
    };
    found.ok_or_else(|| {
        RuntimeError::Failed(format!(
            "run {program:?}: no such executable{}",
            if program.contains('/') {
                ""
            } else {
                " on the task's PATH"
            }
        ))
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::init::{ExecArgs, InitArgs};
    use super::*;

    // A test's parser, built once: its size does not matter.
    #[allow(clippy::large_enum_variant)]
    #[derive(Parser)]
    enum Cli {
        TaskInit(InitArgs),
        TaskExec(ExecArgs),
    }

    fn spec(image: &str) -> TaskSpec {
        mesh_api::spec::ServiceSpec::new(
            "web",
            mesh_api::spec::RuntimeKind::Process,
            image,
            vec!["--port".into(), "80".into()],
        )
        .task
    }

    fn path_env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into())]
    }

    #[test]
    fn the_init_command_line_is_what_task_init_parses() {
        let isolation = Isolation::new("/usr/local/bin/lb-agent".into())
            .hide(Path::new("/var/lib/mesh"))
            .mask(Path::new("/etc/mesh/agent.toml"))
            .with_cgroups(Some(Cgroups::new("/sys/fs/cgroup/x".into())))
            .with_dns(Some(Ipv4Addr::new(169, 254, 1, 1)));
        let mut spec = spec("sh");
        spec.user = Some("nobody".into());
        spec.cap_drop = vec!["CAP_NET_RAW".into()];
        spec.mounts = vec!["type=tmpfs,target=/tmp,tmpfs-size=64k".parse().unwrap()];
        let (program, args) = isolation
            .init_command(7, &spec, &path_env(), Ipv4Addr::LOCALHOST)
            .unwrap();
        assert_eq!(program, Path::new("/usr/local/bin/lb-agent"));
        let Cli::TaskInit(init) = Cli::parse_from(std::iter::once("lb-agent".into()).chain(args))
        else {
            panic!("not task-init");
        };
        assert_eq!(init.hide, [Path::new("/var/lib/mesh")]);
        assert_eq!(init.mask, [Path::new("/etc/mesh/agent.toml")]);
        assert_eq!(
            init.cgroup.as_deref(),
            Some(Path::new("/sys/fs/cgroup/x/mesh-0000000000000007"))
        );
        assert_eq!(init.confinement.caps, 0xa804_25fb & !(1 << 13));
        assert_eq!(init.confinement.user.as_deref(), Some("nobody"));
        assert_eq!(init.dns, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!(init.mount.len(), 1);
        assert_eq!(init.mount[0].target, Path::new("/tmp"));
        assert_eq!(init.mount[0].tmpfs.as_deref(), Some("mode=1777,size=65536"));
        assert_eq!(init.command, ["sh", "--port", "80"]);

        let (_, args) = isolation.exec_command(42, &["/bin/sh", "-c", "true"]);
        let Cli::TaskExec(exec) = Cli::parse_from(std::iter::once("lb-agent".into()).chain(args))
        else {
            panic!("not task-exec");
        };
        assert_eq!(exec.pid, 42);
        assert_eq!(exec.command, ["/bin/sh", "-c", "true"]);
    }

    #[test]
    fn what_cannot_run_here_is_refused_before_it_starts() {
        let isolation = Isolation::new("/usr/local/bin/lb-agent".into());
        let refused = |spec: &TaskSpec| {
            isolation
                .init_command(7, spec, &path_env(), Ipv4Addr::LOCALHOST)
                .unwrap_err()
                .to_string()
        };
        let mut unknown_user = spec("sh");
        unknown_user.user = Some("no-such-user".into());
        assert!(refused(&unknown_user).contains("unable to find user no-such-user"));
        assert!(
            refused(&spec("no-such-program")).contains("no such executable on the task's PATH")
        );
        assert!(refused(&spec("/no/such/program")).contains("\"/no/such/program\""));
        let mut bad_cap = spec("sh");
        bad_cap.cap_add = vec!["CAP_FLY".into()];
        assert!(refused(&bad_cap).contains("unknown capability"));
        let mut missing = spec("sh");
        missing.mounts = vec!["type=bind,source=/no/such/dir,target=/tmp".parse().unwrap()];
        assert_eq!(
            refused(&missing),
            "invalid mount config for type \"bind\": bind source path does not exist: \
             /no/such/dir"
        );
    }
}
