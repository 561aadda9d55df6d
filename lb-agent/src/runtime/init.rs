//! The confined side of a process task: `lb-agent task-init`, the first process (PID 1)
//! of the task's own PID namespace, and `lb-agent task-exec`, which runs a command (a
//! health check) inside a running task. The agent starts both through
//! [`super::isolation`]; they run single-threaded, before any async runtime exists.
//!
//! `task-init`, started in the task's network namespace and a new PID namespace:
//!
//! 0. joins the task's cgroup, if it has one, and a cgroup namespace rooted there
//!    ([`super::cgroup`]);
//! 1. catches the signals it forwards (handlers, not a blocked mask: the program would
//!    inherit the mask, handlers are reset by `execve`);
//! 2. with `--hostname`, enters a UTS namespace of its own and sets that hostname;
//!    enters a mount namespace of its own, a slave of the host's (the host's later
//!    mounts show through, nothing the task mounts goes back); with `--dns`, binds a
//!    private `/etc/resolv.conf` (that nameserver, the node's search domains or the
//!    task's `--dns-search`, `options ndots:0` and the task's `--dns-option`s), and with
//!    `--hostname` a private `/etc/hosts` (localhost, the hostname at `--addr`, the
//!    `--host` lines), written to a small tmpfs of the task's, over the node's files
//!    (over a target if it is a symbolic link); hides the agent's state
//!    directory and pin directory under empty read-only tmpfs mounts and its
//!    configuration file under `/dev/null`, and mounts a `/proc` of the task's PID
//!    namespace (the task sees its own processes only, `/proc/sys` read-only) and a
//!    read-only `/sys` of its network namespace (the host's bpffs and cgroups are not in
//!    it); in between, after the hiding, applies the task's `--mount`s
//!    ([`super::mounts`]: binds, named volumes, tmpfs), their sources opened before;
//! 3. lets ports below 1024 be bound without privilege in the task's network namespace
//!    (`net.ipv4.ip_unprivileged_port_start=0`, as docker does);
//! 4. narrows the capability bounding set to the task's capabilities (docker's defaults
//!    changed by `--cap-add`/`--cap-drop`), clears the ambient set and narrows the
//!    inheritable one: a root program gets those capabilities, another user none;
//! 5. starts the program (as `--user`, with no supplementary groups), in a process
//!    group of its own, in `--workdir` (which must exist in the task) or `/`;
//! 6. forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to it,
//!    reaps every orphan of the namespace, and exits with the program's status (128 +
//!    the signal's number if a signal ended it). The kernel then kills whatever else
//!    is left in the namespace.
//!
//! A PID 1 ignores the signals it has no handler for; the program is not PID 1, so it
//! gets SIGTERM's default action as it would outside (docker's `--init`).

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The signals `task-init` passes on to the program.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Exit status when the program cannot be started (as shells do: 127 not found, 126
/// otherwise) or the confinement cannot be set up (125, as `docker run`).
const EXIT_NOT_FOUND: i32 = 127;
const EXIT_CANNOT_RUN: i32 = 126;
const EXIT_SETUP: i32 = 125;

/// What a task's program is allowed: shared by `task-init` and `task-exec`.
#[derive(Clone, Debug, Args, PartialEq, Eq)]
pub struct Confinement {
    /// The capabilities the program gets, as a mask (`/proc/PID/status`'s hex form).
    #[arg(long, value_parser = parse_mask, default_value = "0")]
    pub caps: u64,
    /// Run as this user: `NAME|UID[:GROUP|GID]`.
    #[arg(long)]
    pub user: Option<String>,
}

/// `lb-agent task-init`'s arguments.
#[derive(Clone, Debug, Args, PartialEq, Eq)]
pub struct InitArgs {
    /// A directory hidden from the task (under an empty read-only tmpfs).
    #[arg(long, value_name = "DIR")]
    pub hide: Vec<PathBuf>,
    /// A file hidden from the task (under `/dev/null`).
    #[arg(long, value_name = "FILE")]
    pub mask: Vec<PathBuf>,
    /// The task's cgroup (v2), which it joins first.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Give the task an `/etc/resolv.conf` of its own naming this nameserver (with
    /// `options ndots:0` and the node's search domains).
    #[arg(long, value_name = "IP")]
    pub dns: Option<std::net::Ipv4Addr>,
    /// Read the task's secret and config files (JSON) from standard input: secrets go
    /// on a tmpfs of the task's own at `/run/secrets`, configs over their target files.
    #[arg(long)]
    pub files: bool,
    /// A mount of the task's (JSON, as [`super::mounts::plan`] resolved it), applied
    /// in its mount namespace after the agent's directories are hidden.
    #[arg(long, value_name = "JSON")]
    pub mount: Vec<super::mounts::TaskMount>,
    /// Give the task a UTS namespace of its own with this hostname, and an
    /// `/etc/hosts` of its own mapping it to `--addr`, with the `--host` lines.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// The task's address, which its hostname maps to in its `/etc/hosts`.
    #[arg(long, value_name = "IP")]
    pub addr: Option<std::net::IpAddr>,
    /// An extra `/etc/hosts` line, `HOST:IP` (with `--hostname`).
    #[arg(long, value_name = "HOST:IP")]
    pub host: Vec<String>,
    /// The task's resolver configuration: its nameservers without `--dns`.
    #[arg(long, value_name = "IP")]
    pub nameserver: Vec<std::net::IpAddr>,
    /// A search domain of the task's `/etc/resolv.conf`, instead of the node's.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// An `options` word of the task's `/etc/resolv.conf`.
    #[arg(long, value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// The directory the program starts in (default `/`).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    #[command(flatten)]
    pub confinement: Confinement,
    /// The program and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

/// `lb-agent task-exec`'s arguments. The command is confined as the task's program
/// is, in its cgroup: `task-exec` reads both from the `task-init`'s command line.
#[derive(Clone, Debug, Args, PartialEq, Eq)]
pub struct ExecArgs {
    /// The task's `task-init` (its PID as the agent sees it).
    #[arg(long)]
    pub pid: i32,
    /// The program and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

fn parse_mask(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{s:?} is not a hex capability mask: {e}"))
}

/// Why the confinement could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct SetupError {
    what: String,
    source: std::io::Error,
}

fn task_mounts(why: String) -> SetupError {
    SetupError {
        what: "set up the task's mounts".into(),
        source: std::io::Error::other(why),
    }
}

fn setup(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SetupError {
    let what = what.into();
    move |e| SetupError {
        what,
        source: e.into(),
    }
}

/// Runs `task-init` and exits with the program's status; never returns.
pub fn run_init(args: &InitArgs) -> ! {
    exit_with("task-init", init(args))
}

/// Runs `task-exec`: enters the task's namespaces, runs the command confined as the
/// task is, and exits with its status; never returns.
pub fn run_exec(args: &ExecArgs) -> ! {
    exit_with("task-exec", exec(args))
}

/// Exits with the program's status, or says why there is none (in the task's log).
fn exit_with(command: &str, result: Result<i32, Failed>) -> ! {
    let code = match result {
        Ok(code) => code,
        Err((code, why)) => {
            eprintln!("lb-agent {command}: {why}");
            code
        }
    };
    std::process::exit(code)
}

type Failed = (i32, String);

impl Confinement {
    /// Looks the user up and narrows this process's capabilities (step 4 of the module
    /// documentation); the user to start the program as.
    fn apply(&self) -> Result<Option<User>, Failed> {
        let user = self
            .user
            .as_deref()
            .map(resolve_user)
            .transpose()
            .map_err(at_setup)?;
        narrow_capabilities(self.caps).map_err(at_setup)?;
        Ok(user)
    }
}

fn at_setup(e: impl std::fmt::Display) -> Failed {
    (EXIT_SETUP, e.to_string())
}

fn init(args: &InitArgs) -> Result<i32, Failed> {
    let mut caught: Vec<i32> = FORWARDED.iter().map(|s| *s as i32).collect();
    caught.push(Signal::SIGCHLD as i32);
    let signals = signal_hook::iterator::Signals::new(&caught).map_err(at_setup)?;
    if let Some(cgroup) = &args.cgroup {
        super::cgroup::join(cgroup)
            .map_err(|e| at_setup(format!("join the cgroup {}: {e}", cgroup.display())))?;
    }
    let files = own_files(args)?;
    if let Some(hostname) = &args.hostname {
        nix::sched::unshare(CloneFlags::CLONE_NEWUTS)
            .map_err(|e| at_setup(format!("unshare the UTS namespace: {e}")))?;
        nix::unistd::sethostname(hostname)
            .map_err(|e| at_setup(format!("set the hostname {hostname:?}: {e}")))?;
    }
    // Read before the mount namespace changes: a failure leaves nothing behind.
    let task_files = if args.files {
        read_task_files()?
    } else {
        Vec::new()
    };
    mount_namespace(&args.hide, &args.mask, &files, &args.mount).map_err(at_setup)?;
    mount_task_files(&task_files).map_err(at_setup)?;
    // Best effort: a kernel without the knob (before 4.11) keeps the old rule.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    read_only("/proc/sys").map_err(at_setup)?;
    if let Some(dir) = &args.workdir
        && !dir.is_dir()
    {
        return Err(at_setup(format!(
            "the working directory {} does not exist in the task (or is not a directory)",
            dir.display()
        )));
    }
    let user = args.confinement.apply()?;
    let mut command = command(&args.command, user.as_ref());
    command.current_dir(args.workdir.as_deref().unwrap_or(Path::new("/")));
    command.process_group(0);
    // The program's standard input is not the pipe its files came through.
    command.stdin(std::process::Stdio::null());
    let main = spawn(&mut command, &args.command[0])?;
    supervise(main, signals)
}

/// The files the task gets in place of the node's: its `/etc/resolv.conf` (with
/// `--dns`, or its own nameservers, search domains or options) and its `/etc/hosts`
/// (with `--hostname`).
fn own_files(args: &InitArgs) -> Result<Vec<(PathBuf, String)>, Failed> {
    let mut files = Vec::new();
    let nameservers: Vec<std::net::IpAddr> = match args.dns {
        Some(dns) => vec![dns.into()],
        None => args.nameserver.clone(),
    };
    let own_settings = !args.dns_search.is_empty() || !args.dns_option.is_empty();
    if !nameservers.is_empty() || own_settings {
        let node = crate::dns::resolv::ResolvConf::read(Path::new(RESOLV_CONF));
        let nameservers = if nameservers.is_empty() {
            node.nameservers
                .iter()
                .map(std::net::SocketAddr::ip)
                .collect()
        } else {
            nameservers
        };
        let search = if args.dns_search.is_empty() {
            &node.search
        } else {
            &args.dns_search
        };
        let text =
            crate::dns::resolv::task_resolv_conf_with(&nameservers, search, &args.dns_option);
        files.push((PathBuf::from(RESOLV_CONF), text));
    }
    if let Some(hostname) = &args.hostname {
        let extra = args
            .host
            .iter()
            .map(|h| mesh_api::container::ExtraHost::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at_setup)?;
        let addr = args.addr.unwrap_or(std::net::IpAddr::from([127, 0, 1, 1]));
        let text = mesh_api::container::hosts_file(hostname, addr, &extra);
        files.push((PathBuf::from(HOSTS), text));
    }
    Ok(files)
}

/// The arguments of the `task-init` that runs as `pid`, from its command line.
fn init_args_of(pid: i32) -> Result<InitArgs, Failed> {
    #[derive(clap::Parser)]
    struct InitLine {
        #[command(flatten)]
        args: InitArgs,
    }
    let path = format!("/proc/{pid}/cmdline");
    let line = std::fs::read(&path).map_err(|e| at_setup(format!("read {path}: {e}")))?;
    let argv: Vec<OsString> = line
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
        .collect();
    if argv.get(1).is_none_or(|a| a != "task-init") {
        return Err(at_setup(format!("process {pid} is not a task's task-init")));
    }
    <InitLine as clap::Parser>::try_parse_from(&argv[1..])
        .map(|l| l.args)
        .map_err(|e| at_setup(format!("process {pid}'s command line: {e}")))
}

fn exec(args: &ExecArgs) -> Result<i32, Failed> {
    let init = init_args_of(args.pid)?;
    let confinement = init.confinement;
    if let Some(cgroup) = &init.cgroup {
        super::cgroup::join(cgroup)
            .map_err(|e| at_setup(format!("join the cgroup {}: {e}", cgroup.display())))?;
    }
    let open = |ns: &str| {
        let path = format!("/proc/{}/ns/{ns}", args.pid);
        File::open(&path).map_err(|e| at_setup(format!("open {path}: {e}")))
    };
    let (net, pid, mnt, uts) = (open("net")?, open("pid")?, open("mnt")?, open("uts")?);
    for (file, flag, what) in [
        (&net, CloneFlags::CLONE_NEWNET, "network"),
        (&pid, CloneFlags::CLONE_NEWPID, "PID"),
        (&uts, CloneFlags::CLONE_NEWUTS, "UTS"),
        (&mnt, CloneFlags::CLONE_NEWNS, "mount"),
    ] {
        nix::sched::setns(file, flag)
            .map_err(|e| at_setup(format!("enter the task's {what} namespace: {e}")))?;
    }
    std::env::set_current_dir(init.workdir.as_deref().unwrap_or(Path::new("/")))
        .or_else(|_| std::env::set_current_dir("/"))
        .map_err(at_setup)?;
    let user = confinement.apply()?;
    let mut child = spawn_child(&mut command(&args.command, user.as_ref()), &args.command[0])?;
    let status = child.wait().map_err(at_setup)?;
    Ok(super::process::exit_of(status).code)
}

/// The node's resolver configuration, which a task with `--dns` gets its own of.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The node's hosts file, which a task with `--hostname` gets its own of.
const HOSTS: &str = "/etc/hosts";

/// Where the task's private files are written before they are bound into place: a
/// tmpfs mounted here in the task's mount namespace only, detached once they are bound
/// (the bind mounts keep it alive; the node's directory shows through again).
const SCRATCH: &str = "/tmp";

/// Sets up the task's mount namespace (step 2 of the module documentation), with
/// `files` (path, contents) of its own in place of the node's, and its `mounts`.
fn mount_namespace(
    hide: &[PathBuf],
    mask: &[PathBuf],
    files: &[(PathBuf, String)],
    mounts: &[super::mounts::TaskMount],
) -> Result<(), SetupError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(setup("unshare the mount namespace"))?;
    mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None)
        .map_err(setup("make / a slave mount"))?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    private_files(files)?;
    // Opened before the agent's directories are hidden (volumes are in its state
    // directory), mounted after (a bind then shows them hidden too).
    let opened = super::mounts::open(mounts).map_err(task_mounts)?;
    for dir in hide.iter().filter(|d| d.is_dir()) {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            hardened | MsFlags::MS_RDONLY,
            Some("size=0,mode=0755"),
        )
        .map_err(setup(format!("hide {}", dir.display())))?;
    }
    for file in mask.iter().filter(|f| f.is_file()) {
        mount(Some("/dev/null"), file, None, MsFlags::MS_BIND, None)
            .map_err(setup(format!("hide {}", file.display())))?;
    }
    super::mounts::apply(&opened).map_err(task_mounts)?;
    drop(opened);
    mount(Some("proc"), "/proc", Some("proc"), hardened, None)
        .map_err(setup("mount the task's /proc"))?;
    // Read-only by a remount of this mount alone: the namespace's sysfs may be mounted
    // read-write elsewhere (`ip netns exec` does), and mounting it read-only would then
    // fail (EBUSY).
    // EBUSY: this very sysfs is mounted on /sys already (the agent runs in the
    // namespace, `ip netns exec` style): it is made read-only all the same.
    match mount(Some("sysfs"), "/sys", Some("sysfs"), hardened, None) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => return Err(setup("mount the task's /sys")(e)),
    }
    remount_read_only("/sys")
}

/// Puts each of `files` (path, contents) over the node's file in the task's mount
/// namespace: written to a small tmpfs of the task's own, bind-mounted read-only over
/// the file (over its target if it is a symbolic link, as `/etc/resolv.conf` often is).
/// A file the node does not have is skipped with a warning (nothing to mount over).
/// The tmpfs is per task and never on disk, so secrets can take the same path.
fn private_files(files: &[(PathBuf, String)]) -> Result<(), SetupError> {
    let files: Vec<super::files::TaskFile> = files
        .iter()
        .filter_map(|(path, text)| {
            if path.is_file() {
                // Readable by every user the program may run as.
                Some(super::files::TaskFile {
                    kind: mesh_api::file_ref::FileKind::Config,
                    path: path.display().to_string(),
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                    data: text.as_bytes().to_vec().into(),
                })
            } else {
                eprintln!(
                    "lb-agent task-init: warning: {} is not a file on this node: the task \
                     sees it as it is",
                    path.display()
                );
                None
            }
        })
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    if !Path::new(SCRATCH).is_dir() {
        eprintln!(
            "lb-agent task-init: warning: no {SCRATCH} on this node to write the task's own \
             files in: the task sees the node's"
        );
        return Ok(());
    }
    bind_over_node_files(&files.iter().collect::<Vec<_>>())
}

fn mount(
    source: Option<&str>,
    target: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target.as_ref(), fstype, flags, data)
}

/// The task's files, from standard input (the agent writes them and closes the pipe).
fn read_task_files() -> Result<Vec<super::files::TaskFile>, Failed> {
    use std::io::Read as _;
    let limit = u64::try_from(super::files::MAX_ENCODED).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| at_setup(format!("read the task's files from standard input: {e}")))?;
    super::files::decode(&bytes)
        .map_err(|e| at_setup(format!("the task's files are malformed: {e}")))
}

/// Puts the task's secret and config files in place, in its mount namespace: secrets
/// (and configs whose target is under it) on a tmpfs of the task's own at
/// `/run/secrets`, made read-only once written; other configs written to a scratch
/// tmpfs and bound read-only over the node's file at their target (which must be a
/// file: checked again here). Each file has its owner and mode. The directory
/// `/run/secrets` is created on the node if it is missing (empty: the tmpfs is the
/// task's alone, and goes with its mount namespace).
fn mount_task_files(files: &[super::files::TaskFile]) -> Result<(), SetupError> {
    use mesh_api::file_ref::SECRETS_DIR;
    if files.is_empty() {
        return Ok(());
    }
    let io = |what: String| move |source: std::io::Error| SetupError { what, source };
    let text = |what: String| {
        move |e: String| SetupError {
            what,
            source: std::io::Error::other(e),
        }
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let (on_tmpfs, over_node): (Vec<_>, Vec<_>) = files.iter().partition(|f| f.under_secrets_dir());
    if !on_tmpfs.is_empty() {
        std::fs::create_dir_all(SECRETS_DIR).map_err(io(format!("create {SECRETS_DIR}")))?;
        let size = super::files::tmpfs_size(on_tmpfs.iter().copied());
        mount(
            Some("tmpfs"),
            SECRETS_DIR,
            Some("tmpfs"),
            hardened,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .map_err(setup(format!("mount a tmpfs on {SECRETS_DIR}")))?;
        for file in &on_tmpfs {
            let path = Path::new(&file.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            }
            super::files::write_file(path, file).map_err(text(format!("write {}", file.path)))?;
        }
        remount_read_only(SECRETS_DIR)?;
    }
    if over_node.is_empty() {
        return Ok(());
    }
    bind_over_node_files(&over_node)
}

/// Writes each of `files` (with its owner and mode) to a scratch tmpfs of the task's
/// own and binds it read-only over the node's file at its path (through a symbolic
/// link, to its target): the task's own `/etc/resolv.conf`, its configs. Each target
/// must be a file; it is held open from the start, so that the scratch tmpfs cannot hide
/// it (a target under `/tmp`): the bind goes through the descriptor's magic link. The
/// scratch tmpfs is detached once the files are bound (the binds keep it alive).
fn bind_over_node_files(files: &[&super::files::TaskFile]) -> Result<(), SetupError> {
    let text = |what: String| {
        move |e: String| SetupError {
            what,
            source: std::io::Error::other(e),
        }
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut targets = Vec::with_capacity(files.len());
    for file in files {
        let target = File::open(&file.path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
            .ok_or_else(|| SetupError {
                what: format!("target {}", file.path),
                source: std::io::Error::other("not a file on this node"),
            })?;
        targets.push(target);
    }
    let size = super::files::tmpfs_size(files.iter().copied());
    mount(
        Some("tmpfs"),
        SCRATCH,
        Some("tmpfs"),
        hardened,
        Some(format!("size={size},mode=0700").as_str()),
    )
    .map_err(setup(format!("mount a tmpfs on {SCRATCH}")))?;
    for (i, (file, target)) in files.iter().zip(&targets).enumerate() {
        let scratch = Path::new(SCRATCH).join(i.to_string());
        super::files::write_file(&scratch, file).map_err(text(format!("write {}", file.path)))?;
        let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(target));
        nix::mount::mount(
            Some(scratch.as_path()),
            through.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(setup(format!("bind a private {}", file.path)))?;
    }
    nix::mount::umount2(SCRATCH, nix::mount::MntFlags::MNT_DETACH)
        .map_err(setup(format!("detach the tmpfs on {SCRATCH}")))?;
    // With the scratch tmpfs gone, each path leads to its bind mount.
    for file in files {
        remount_read_only(&file.path)?;
    }
    Ok(())
}

/// Makes `path` a read-only bind mount of itself.
fn read_only(path: &str) -> Result<(), SetupError> {
    mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(setup(format!("bind {path}")))?;
    remount_read_only(path)
}

/// Makes the mount at `path` read-only (the mount, not its file system).
fn remount_read_only(path: impl AsRef<Path>) -> Result<(), SetupError> {
    let path = path.as_ref();
    mount(
        None,
        path,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(setup(format!("make {} read-only", path.display())))
}

/// The user and group IDs a `--user` value names, and the user's home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user ID.
    pub uid: u32,
    /// The group ID: the one named, else the user's primary group (the user ID's own
    /// number for a numeric user unknown to the system, as docker does).
    pub gid: u32,
    /// The user's home directory, if the system knows the user.
    pub home: Option<PathBuf>,
}

/// Looks `spec` (`NAME|UID[:GROUP|GID]`) up in the system's user and group databases.
///
/// # Errors
/// If a name is unknown, with docker's wording.
pub fn resolve_user(spec: &str) -> Result<User, String> {
    use nix::unistd::{Group, Uid, User as Passwd};
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => Passwd::from_uid(Uid::from_raw(uid)).ok().flatten(),
        Err(_) => Some(Passwd::from_name(user).ok().flatten().ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?),
    };
    let uid = match &entry {
        Some(e) => e.uid.as_raw(),
        None => user.parse::<u32>().map_err(|e| e.to_string())?,
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .map(|grp| grp.gid.as_raw())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
        None => entry.as_ref().map_or(uid, |e| e.gid.as_raw()),
    };
    Ok(User {
        uid,
        gid,
        home: entry.map(|e| e.dir),
    })
}

/// The capabilities in `mask`, as the `caps` crate names them.
fn capabilities(mask: u64) -> caps::CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| mask & (1u64 << c.index()) != 0)
        .collect()
}

/// Step 4 of the module documentation. This process keeps its own permitted set (it
/// may still need to change user), which the program cannot use: it is not inherited
/// across the program's `execve`, and the program cannot trace a process with more
/// capabilities than its own.
fn narrow_capabilities(mask: u64) -> Result<(), String> {
    let keep = capabilities(mask);
    let bounding = caps::read(None, caps::CapSet::Bounding).map_err(|e| e.to_string())?;
    if let Some(missing) = keep.iter().find(|c| !bounding.contains(c)) {
        return Err(format!(
            "the agent cannot grant {missing}: it is not in the agent's capability bounding \
             set (CapabilityBoundingSet in lb-agent.service)"
        ));
    }
    for cap in bounding.difference(&keep) {
        caps::drop(None, caps::CapSet::Bounding, *cap)
            .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
    }
    let inheritable = caps::read(None, caps::CapSet::Inheritable).map_err(|e| e.to_string())?;
    caps::set(
        None,
        caps::CapSet::Inheritable,
        &inheritable.intersection(&keep).copied().collect(),
    )
    .map_err(|e| format!("narrow the inheritable set: {e}"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| format!("clear the ambient set: {e}"))
}

/// The program's command: its arguments, the environment this process got (the task's),
/// `HOME` from the user's entry unless set, and the user.
fn command(argv: &[OsString], user: Option<&User>) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
        if std::env::var_os("HOME").is_none()
            && let Some(home) = &user.home
        {
            command.env("HOME", home);
        }
    }
    command
}

fn spawn_child(command: &mut Command, program: &OsString) -> Result<std::process::Child, Failed> {
    command.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_RUN
        };
        (code, format!("run {}: {e}", Path::new(program).display()))
    })
}

fn spawn(command: &mut Command, program: &OsString) -> Result<Pid, Failed> {
    let child = spawn_child(command, program)?;
    let pid = i32::try_from(child.id()).map_err(at_setup)?;
    // Reaped below with waitpid(-1), as every other child of this PID 1.
    drop(child);
    Ok(Pid::from_raw(pid))
}

/// Step 6 of the module documentation.
fn supervise(main: Pid, mut signals: signal_hook::iterator::Signals) -> Result<i32, Failed> {
    loop {
        // A SIGCHLD may have come before the handler saw the program: reap first.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == main => return Ok(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                    return Ok(128 + signal as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        for signal in signals.wait() {
            if let Ok(signal) = Signal::try_from(signal)
                && signal != Signal::SIGCHLD
            {
                let _ = nix::sys::signal::kill(main, signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_as_docker_resolves_them() {
        let root = resolve_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.home.as_deref(), Some(Path::new("/root")));
        assert_eq!(resolve_user("0:0").unwrap().uid, 0);
        let unknown = resolve_user("4242").unwrap();
        assert_eq!((unknown.uid, unknown.gid, unknown.home), (4242, 4242, None));
        assert_eq!(resolve_user("4242:7").unwrap().gid, 7);
        assert_eq!(
            resolve_user("no-such-user").unwrap_err(),
            "unable to find user no-such-user: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_user("root:no-such-group").unwrap_err(),
            "unable to find group no-such-group: no matching entries in group file"
        );
    }

    #[test]
    fn a_task_gets_its_own_resolv_conf_and_hosts() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Line {
            #[command(flatten)]
            args: InitArgs,
        }
        let line = Line::try_parse_from([
            "task-init",
            "--dns",
            "169.254.1.1",
            "--dns-search",
            "svc.example",
            "--dns-option",
            "ndots:2",
            "--hostname",
            "web-1",
            "--addr",
            "10.0.1.5",
            "--host",
            "db:10.0.0.5",
            "--workdir",
            "/srv",
            "--",
            "sleep",
        ])
        .unwrap();
        assert_eq!(line.args.workdir.as_deref(), Some(Path::new("/srv")));
        let files = own_files(&line.args).unwrap();
        assert_eq!(files[0].0, Path::new(RESOLV_CONF));
        assert_eq!(
            files[0].1,
            "nameserver 169.254.1.1\nsearch svc.example\noptions ndots:2\n"
        );
        assert_eq!(files[1].0, Path::new(HOSTS));
        assert!(
            files[1].1.ends_with("10.0.1.5\tweb-1\n10.0.0.5\tdb\n"),
            "{}",
            files[1].1
        );
        // Nothing of its own asked: the node's files.
        let bare = Line::try_parse_from(["task-init", "--", "sleep"]).unwrap();
        assert!(own_files(&bare.args).unwrap().is_empty());
        let bad = Line::try_parse_from(["task-init", "--hostname", "w", "--host", "x", "--", "s"])
            .unwrap();
        assert!(
            own_files(&bad.args)
                .unwrap_err()
                .1
                .contains("bad format for add-host")
        );
    }

    #[test]
    fn masks_name_capabilities() {
        let set = capabilities(0b1_0000_0001);
        assert_eq!(set.len(), 2);
        assert!(set.contains(&caps::Capability::CAP_CHOWN));
        assert!(set.contains(&caps::Capability::CAP_SETPCAP));
        assert_eq!(parse_mask("a80425fb").unwrap(), 0xa804_25fb);
        assert!(parse_mask("zz").is_err());
    }
}
