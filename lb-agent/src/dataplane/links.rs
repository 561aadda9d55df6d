//! Program attachments as pinned bpf links, so that they outlive the agent.
//!
//! Layout: `<pin_dir>/links/xdp-<ifname>` (XDP on the underlay),
//! `<pin_dir>/links/tc-<ifname>` (TCX ingress of a task's host-side veth) and
//! `<pin_dir>/links/cgroup-<hook>` (`cgroup/connect4`, `sendmsg4`, `recvmsg4`,
//! `getpeername4` on the root
//! of the cgroup v2 hierarchy: the node's own connections to its published ports).
//!
//! Attaching when a pinned link exists replaces the link's program atomically
//! (`BPF_LINK_UPDATE`): no packet goes unprocessed during an agent upgrade. A pinned link
//! whose interface is gone (the kernel reports `ENOLINK`) is unpinned and a new link is
//! created. Removing the pin of a link the agent holds no other reference to detaches it.
//!
//! Cgroup links have no in-place replacement in aya; an agent that finds one pinned
//! attaches its program beside it first (cgroups run several programs), then unpins the
//! old link: a connect meets at least one of the two, and a second one leaves it alone
//! (its destination is no longer a published port of this node).
//!
//! The XDP mode (native or skb) is fixed when a link is created; a link replaced in place
//! keeps its mode, so changing `xdp_mode` needs `lb-agent cleanup` first.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    XdpMode,
};
use aya::sys::SyscallError;
use tracing::{info, warn};

/// Failures of attaching, replacing or detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Attaching or replacing a program failed.
    #[error("{what} on {iface}: {source}")]
    Program {
        /// `xdp` or `tc`.
        what: &'static str,
        /// The interface.
        iface: String,
        /// The cause.
        source: ProgramError,
    },
    /// A link operation failed.
    #[error("{what} link on {iface}: {source}")]
    Link {
        /// `xdp` or `tc`.
        what: &'static str,
        /// The interface.
        iface: String,
        /// The cause.
        source: LinkError,
    },
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The cause.
        source: aya::pin::PinError,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// What [`attach_xdp`] or [`attach_tc`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link was created and pinned.
    Created,
    /// The program of an existing pinned link was replaced atomically.
    Replaced,
}

/// The directory of link pins.
#[must_use]
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The pin path of the XDP link on `iface`.
#[must_use]
pub fn xdp_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("xdp-{iface}"))
}

/// The pin path of the TC link on `iface`.
#[must_use]
pub fn tc_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("tc-{iface}"))
}

/// The pin path of the link of the cgroup hook `hook` (`connect4`).
#[must_use]
pub fn cgroup_pin(pin_dir: &Path, hook: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("cgroup-{hook}"))
}

/// Interfaces that have a pinned TC link.
///
/// # Errors
/// If the links directory cannot be read.
pub fn pinned_tc_ifaces(pin_dir: &Path) -> Result<BTreeSet<String>, AttachError> {
    let dir = links_dir(pin_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(AttachError::Io { path: dir, source }),
    };
    let mut out = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| AttachError::Io {
            path: dir.clone(),
            source,
        })?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("tc-"))
        {
            out.insert(name.to_owned());
        }
    }
    Ok(out)
}

/// Opens the pinned link at `path`, `None` if there is none.
fn open_pinned(
    path: &Path,
    what: &'static str,
    iface: &str,
) -> Result<Option<FdLink>, AttachError> {
    match PinnedLink::from_pin(path) {
        Ok(p) => Ok(Some(p.into())),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(AttachError::Link {
            what,
            iface: iface.to_owned(),
            source,
        }),
    }
}

fn unpin_stale(
    path: &Path,
    what: &'static str,
    iface: &str,
    why: &dyn std::fmt::Display,
) -> Result<(), AttachError> {
    warn!(what, iface, error = %why, "pinned link cannot be reused, creating a new one");
    std::fs::remove_file(path).map_err(|source| AttachError::Io {
        path: path.to_owned(),
        source,
    })
}

fn ensure_links_dir(pin_dir: &Path) -> Result<(), AttachError> {
    let dir = links_dir(pin_dir);
    std::fs::create_dir_all(&dir).map_err(|source| AttachError::Io { path: dir, source })
}

/// The mechanism both program types share. If a link is pinned at `path`, `replace`
/// swaps the program inside it atomically (traffic never sees a gap); a pinned link that
/// cannot be reused (`replace` returns the reason) is unpinned. Otherwise `attach`
/// creates a link, which is pinned at `path` so it outlives the agent.
fn attach_pinned<P>(
    prog: &mut P,
    path: &Path,
    what: &'static str,
    iface: &str,
    replace: impl FnOnce(&mut P, FdLink) -> Result<Result<(), String>, AttachError>,
    attach: impl FnOnce(&mut P) -> Result<FdLink, AttachError>,
) -> Result<Attached, AttachError> {
    if let Some(fd) = open_pinned(path, what, iface)? {
        match replace(prog, fd)? {
            Ok(()) => {
                info!(what, iface, "replaced the program of the pinned link");
                return Ok(Attached::Replaced);
            }
            Err(why) => unpin_stale(path, what, iface, &why)?,
        }
    }
    let fd = attach(prog)?;
    fd.pin(path).map_err(|source| AttachError::Pin {
        path: path.to_owned(),
        source,
    })?;
    info!(what, iface, "attached and pinned");
    Ok(Attached::Created)
}

fn program_error(what: &'static str, iface: &str) -> impl Fn(ProgramError) -> AttachError {
    move |source| AttachError::Program {
        what,
        iface: iface.to_owned(),
        source,
    }
}

fn link_error(what: &'static str, iface: &str) -> impl Fn(LinkError) -> AttachError {
    move |source| AttachError::Link {
        what,
        iface: iface.to_owned(),
        source,
    }
}

/// Attaches `prog` (loaded) as XDP on `iface` through the pinned link, replacing the
/// program of an existing pinned link atomically.
///
/// # Errors
/// If the interface does not exist or the kernel refuses.
pub fn attach_xdp(
    prog: &mut Xdp,
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
) -> Result<Attached, AttachError> {
    const WHAT: &str = "xdp";
    ensure_links_dir(pin_dir)?;
    let prog_err = program_error(WHAT, iface);
    attach_pinned(
        prog,
        &xdp_pin(pin_dir, iface),
        WHAT,
        iface,
        |prog, fd| {
            let link = match XdpLink::try_from(fd) {
                Ok(link) => link,
                Err(e) => return Ok(Err(e.to_string())),
            };
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // Dropping our handle closes the fd; the pin keeps the link.
                    drop(prog.take_link(id).map_err(&prog_err)?);
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(e.to_string())),
            }
        },
        |prog| {
            info!(iface, ?mode, "attaching XDP");
            let id = prog.attach(iface, mode).map_err(&prog_err)?;
            let link = prog.take_link(id).map_err(&prog_err)?;
            FdLink::try_from(link).map_err(link_error(WHAT, iface))
        },
    )
}

/// Attaches `prog` (loaded) at TCX ingress of `iface` through the pinned link, replacing
/// the program of an existing pinned link atomically.
///
/// # Errors
/// If the interface does not exist or the kernel refuses.
pub fn attach_tc(
    prog: &mut SchedClassifier,
    pin_dir: &Path,
    iface: &str,
) -> Result<Attached, AttachError> {
    const WHAT: &str = "tc";
    ensure_links_dir(pin_dir)?;
    let prog_err = program_error(WHAT, iface);
    attach_pinned(
        prog,
        &tc_pin(pin_dir, iface),
        WHAT,
        iface,
        |prog, fd| {
            let link = match SchedClassifierLink::try_from(fd) {
                Ok(link) => link,
                Err(e) => return Ok(Err(e.to_string())),
            };
            match prog.attach_to_link(link) {
                Ok(id) => {
                    drop(prog.take_link(id).map_err(&prog_err)?);
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(e.to_string())),
            }
        },
        |prog| {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = prog
                .attach_with_options(iface, TcAttachType::Ingress, options)
                .map_err(&prog_err)?;
            let link = prog.take_link(id).map_err(&prog_err)?;
            FdLink::try_from(link).map_err(link_error(WHAT, iface))
        },
    )
}

/// Attaches `prog` (loaded, for the cgroup hook `hook`: `connect4`) to the cgroup v2
/// directory `cgroup` (the hierarchy's root, so that every process's sockets meet it)
/// through a pinned link. A link pinned before (an earlier agent's) is unpinned once the
/// new one is attached, so sockets never go unbalanced during an upgrade.
///
/// # Errors
/// If the cgroup cannot be opened, the kernel refuses, or the pins cannot be changed.
pub fn attach_cgroup(
    prog: &mut CgroupSockAddr,
    pin_dir: &Path,
    hook: &str,
    cgroup: &Path,
) -> Result<Attached, AttachError> {
    const WHAT: &str = "cgroup";
    ensure_links_dir(pin_dir)?;
    let target = cgroup.display().to_string();
    let dir = std::fs::File::open(cgroup).map_err(|source| AttachError::Io {
        path: cgroup.to_owned(),
        source,
    })?;
    let prog_err = program_error(WHAT, &target);
    // A bpf link takes no attach flags (the kernel refuses any with EINVAL): links to a
    // cgroup always run beside the others, so `Single` (0) is the only valid mode.
    let id = prog
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(&prog_err)?;
    let link = prog.take_link(id).map_err(&prog_err)?;
    let fd = FdLink::try_from(link).map_err(link_error(WHAT, &target))?;
    let path = cgroup_pin(pin_dir, hook);
    let replaced = detach(&path)?;
    fd.pin(&path).map_err(|source| AttachError::Pin {
        path: path.clone(),
        source,
    })?;
    info!(cgroup = %target, hook, replaced, "attached and pinned");
    Ok(if replaced {
        Attached::Replaced
    } else {
        Attached::Created
    })
}

/// Unpins the link at `path`, which detaches it (unless someone else holds it).
///
/// # Errors
/// If the pin exists but cannot be removed.
pub fn detach(path: &Path) -> Result<bool, AttachError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            info!(pin = %path.display(), "detached");
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(AttachError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Detaches every pinned link under `pin_dir` and removes the links directory.
///
/// # Errors
/// If a pin cannot be removed.
pub fn remove_all(pin_dir: &Path) -> Result<usize, AttachError> {
    let dir = links_dir(pin_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(AttachError::Io { path: dir, source }),
    };
    let mut n = 0;
    for entry in entries {
        let entry = entry.map_err(|source| AttachError::Io {
            path: dir.clone(),
            source,
        })?;
        if detach(&entry.path())? {
            n += 1;
        }
    }
    std::fs::remove_dir(&dir).map_err(|source| AttachError::Io { path: dir, source })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_layout() {
        let d = Path::new("/sys/fs/bpf/mesh");
        assert_eq!(
            xdp_pin(d, "eth0"),
            Path::new("/sys/fs/bpf/mesh/links/xdp-eth0")
        );
        assert_eq!(
            tc_pin(d, "vweb1"),
            Path::new("/sys/fs/bpf/mesh/links/tc-vweb1")
        );
        assert_eq!(
            cgroup_pin(d, "connect4"),
            Path::new("/sys/fs/bpf/mesh/links/cgroup-connect4")
        );
    }
}
