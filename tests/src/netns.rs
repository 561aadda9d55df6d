//! Network namespaces and the commands that manage them.
//!
//! The harness shells out to iproute2 (`ip`) and `ethtool`; this module runs those
//! commands with good error messages, checks the prerequisites, and lets test code run
//! closures inside a namespace.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

/// Where bpffs is (and must be) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Runs a command to completion; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = output(program, args)?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its output whatever its exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program).args(args).output().with_context(|| {
        format!(
            "cannot run `{program}`: {}",
            install_hint(program).unwrap_or("is it installed and on PATH?")
        )
    })
}

fn install_hint(program: &str) -> Option<&'static str> {
    match program {
        "ip" => Some("install iproute2 (apt-get install -y iproute2)"),
        "ethtool" => Some("install ethtool (apt-get install -y ethtool)"),
        "tcpdump" => Some("install tcpdump (apt-get install -y tcpdump)"),
        "bpftool" => Some("install bpftool (apt-get install -y bpftool)"),
        "nsenter" => Some("install util-linux (apt-get install -y util-linux)"),
        _ => None,
    }
}

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `ip -n <ns> <args>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `ip netns exec <ns> <program> <args>` to completion.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `ethtool -K <dev> <feature> <on|off>` inside a namespace.
pub fn ethtool_k(ns: &str, dev: &str, feature: &str, on: bool) -> Result<()> {
    exec_in(
        ns,
        "ethtool",
        &["-K", dev, feature, if on { "on" } else { "off" }],
    )
    .map(drop)
}

/// Names of the network namespaces that exist now (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Pids of the processes running in a namespace (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Checks what every topology needs, once per process: root, `ip`, `ethtool`, bpffs
/// (mounted here if it is not), and the kernel's veth and XDP support.
///
/// Fails with a message that says what is missing; tests must never skip silently.
pub fn preflight() -> Result<()> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| check_prerequisites().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("the mesh's end-to-end harness cannot run here: {e}"))
}

fn check_prerequisites() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "it must run as root (network namespaces, veths, XDP, bpffs); \
             run the tests with sudo or as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    run("ip", &["-V"])?;
    run("ethtool", &["--version"])?;
    run("nsenter", &["--version"])?;
    if !is_bpffs(BPFFS)? {
        std::fs::create_dir_all(BPFFS).with_context(|| format!("mkdir {BPFFS}"))?;
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("bpffs is not mounted on {BPFFS} and mounting it failed"))?;
        if !is_bpffs(BPFFS)? {
            bail!("mounted bpffs on {BPFFS} but it still does not show up in /proc/mounts");
        }
    }
    if !Path::new("/proc/sys/net/core/bpf_jit_enable").exists()
        && !Path::new("/sys/kernel/btf/vmlinux").exists()
    {
        bail!("this kernel shows no eBPF support (no bpf_jit_enable, no BTF)");
    }
    Ok(())
}

fn is_bpffs(path: &str) -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fs) = (f.next(), f.next(), f.next());
        mnt == Some(path) && fs == Some("bpf")
    }))
}

/// Runs `f` on a new thread that has entered the network namespace `ns`, and returns its
/// result. Sockets created inside `f` belong to the namespace for their whole life, so
/// they may be returned and used from any thread afterwards.
pub fn in_netns<F, R>(ns: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path)
        .with_context(|| format!("open {path}: does the network namespace {ns} exist?"))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn_scoped(s, move || -> Result<R> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {ns}"))?;
                Ok(f())
            })
            .context("spawn a thread")?
            .join()
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                anyhow!("the closure running in {ns} panicked: {msg}")
            })?
    })
}

/// Like [`in_netns`], but the thread runs in the background; join the handle for `f`'s
/// result.
pub fn spawn_in_netns<F, R>(ns: &str, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path)
        .with_context(|| format!("open {path}: does the network namespace {ns} exist?"))?;
    let name = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<R> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {name}"))?;
            Ok(f())
        })
        .context("spawn a thread")
}
