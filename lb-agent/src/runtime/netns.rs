//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and running
//! code inside a namespace.
//!
//! Entering a namespace is per thread (`setns(2)` changes the calling thread only), so
//! [`run_in`] runs its closure on a fresh OS thread that enters the namespace and then
//! ends: no thread of the agent (nor of tokio's pools) ever changes namespace. What the
//! closure creates there stays there: a socket keeps the namespace it was created in, and
//! a child process forked from that thread starts in it. That is how the agent opens
//! netlink sockets inside a task's namespace and spawns a task's process in it, without
//! `unsafe` code (no `pre_exec`).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
#[must_use]
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Runs `f` on a fresh thread inside the network namespace at `ns` (a named namespace or
/// `/proc/PID/ns/net`) and returns its result.
///
/// # Errors
/// If the namespace cannot be opened or entered, or what `f` returns.
pub async fn run_in<T, F>(ns: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let file = File::open(ns).map_err(|e| io_err(&format!("open {}", ns.display()), e))?;
    let shown = ns.display().to_string();
    spawn_thread(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|e| io_err(&format!("enter {shown}"), e))?;
        f()
    })
    .await
}

/// Runs `f` on a fresh OS thread (which may change its namespaces and then ends).
async fn spawn_thread<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mesh-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that namespaces mounted
/// there later are seen from every mount namespace.
fn share_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            nix::mount::mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| io_err("bind /run/netns", e))?;
            shared().map_err(|e| io_err("make /run/netns shared", e))
        }
        Err(e) => Err(io_err("make /run/netns shared", e)),
    }
}

/// Creates the named namespace `name` (like `ip netns add`); an existing one is kept.
///
/// # Errors
/// If the namespace cannot be created or mounted.
pub async fn create(name: &str) -> io::Result<PathBuf> {
    let target = path(name);
    if exists(name) {
        return Ok(target);
    }
    share_dir()?;
    drop(File::create(&target)?);
    let t = target.clone();
    let made = spawn_thread(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| io_err("unshare", e))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io_err(&format!("bind-mount {}", t.display()), e))
    })
    .await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// Whether the named namespace `name` exists (is mounted).
#[must_use]
pub fn exists(name: &str) -> bool {
    let p = path(name);
    match (std::fs::metadata(&p), std::fs::metadata(NETNS_DIR)) {
        // A mounted namespace file lives on nsfs, another device than its directory.
        (Ok(f), Ok(d)) => f.dev() != d.dev(),
        _ => false,
    }
}

/// Deletes the named namespace `name` (like `ip netns delete`); `false` if there was
/// none. The namespace itself goes when its last process ends.
///
/// # Errors
/// If it cannot be unmounted or removed.
pub fn delete(name: &str) -> io::Result<bool> {
    let p = path(name);
    if !p.exists() {
        return Ok(false);
    }
    match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io_err(&format!("unmount {}", p.display()), e)),
    }
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// The names of the named namespaces.
///
/// # Errors
/// If `/run/netns` exists but cannot be read.
pub fn list() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        if let Some(name) = entry?.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The identity (device, inode) of the namespace at `ns`.
///
/// # Errors
/// If it cannot be read.
pub fn identity(ns: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(ns)?;
    Ok((m.dev(), m.ino()))
}

/// The processes (PIDs) whose network namespace is the one at `ns`.
///
/// # Errors
/// If the namespace cannot be read.
pub fn processes_in(ns: &Path) -> io::Result<Vec<i32>> {
    let want = identity(ns)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look: a vanished one is simply skipped.
        if identity(&entry.path().join("ns/net")).is_ok_and(|id| id == want) {
            out.push(pid);
        }
    }
    Ok(out)
}
