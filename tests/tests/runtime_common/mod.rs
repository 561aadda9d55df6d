//! Helpers shared by the agent's runtime tests (`runtime.rs`, `docker.rs`): a throwaway
//! network namespace that plays the node, the docker engine's preflight,
//! and a busybox image built locally (no registry).
#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use lb_agent::runtime::isolation::Isolation;
use lb_agent::runtime::task::TaskConfig;
use mesh_api::spec::{RuntimeKind, ServiceSpec, TaskSpec};
use mesh_api::task::TaskId;
use nix::sched::CloneFlags;

/// Fails clearly unless the test runs as root.
pub(crate) fn require_root() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().nth(1))
        .unwrap_or("");
    ensure!(
        euid == "0",
        "this test needs root (network namespaces, veths): run it as root"
    );
    Ok(())
}

/// Runs `cmd args` and returns its stdout; fails with its stderr.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it returns `Some`, failing after `timeout` with `what`.
pub(crate) async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throwaway network namespace that plays the node: [`Node::run`] runs a test body on
/// a thread inside it (with a current-thread tokio runtime), so the agent's netlink
/// socket, the task veths' host sides and the test's own sockets all live there.
pub(crate) struct Node {
    /// Its name under /run/netns.
    pub name: String,
}

/// The node namespace's own address.
pub(crate) const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

impl Node {
    /// Creates the namespace (`lo` up).
    ///
    /// # Errors
    /// If not root or namespaces are unavailable.
    pub(crate) fn new(tag: &str) -> Result<Self> {
        require_root()?;
        let name = format!("rtnode-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name]).context(
            "cannot create a network namespace (is this a container without CAP_SYS_ADMIN?)",
        )?;
        run("ip", &["-n", &name, "link", "set", "lo", "up"])?;
        // The node's own address (a node has one on its underlay), the source of what
        // the test sends to tasks.
        run(
            "ip",
            &[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{NODE_ADDR}/32"),
                "dev",
                "lo",
            ],
        )?;
        Ok(Self { name })
    }

    /// Runs `body` inside the namespace and returns its result.
    ///
    /// # Errors
    /// What `body` returns, or if the namespace cannot be entered.
    pub(crate) fn run<F, Fut>(&self, body: F) -> Result<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>>,
    {
        let path = PathBuf::from(format!("/run/netns/{}", self.name));
        std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).context("enter the node namespace")?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(body())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the test body panicked"))?
    }

    /// `ip ARGS` inside the node namespace.
    ///
    /// # Errors
    /// If `ip` fails.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Connects to `addr:port` (from the calling thread's namespace) and returns what the
/// server sends before closing, `None` if the connection fails.
pub(crate) async fn fetch(addr: Ipv4Addr, port: u16) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let connect = tokio::net::TcpStream::connect(SocketAddr::from((addr, port)));
    let mut s = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

/// A unique task ID for this test process (`n` distinguishes tasks within it).
#[must_use]
pub(crate) fn task_id(n: u64) -> u64 {
    (u64::from(std::process::id()) << 16) | n
}

/// Where static busybox lives (Debian's `busybox-static`, which `cargo xtask setup`
/// installs).
pub(crate) const BUSYBOX: &str = "/bin/busybox";

/// Fails clearly without a static busybox.
pub(crate) fn require_busybox() -> Result<()> {
    ensure!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: run `cargo xtask setup` (it installs busybox-static)"
    );
    Ok(())
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails, saying what to do, unless a docker engine answers (`cargo xtask setup`, which
/// `cargo xtask test` runs first, installs and starts it).
///
/// # Errors
/// When `docker info` fails.
pub(crate) fn ensure_docker() -> Result<()> {
    ensure!(
        docker_answers(),
        "no docker engine answers: run `cargo xtask setup` (it installs docker.io and \
         starts dockerd)"
    );
    Ok(())
}

/// Builds (once) the image `tag`: a root filesystem with static busybox and its applets
/// as symlinks in /bin, imported with `docker import` (no registry needed).
///
/// # Errors
/// If busybox is missing or docker fails.
pub(crate) fn busybox_image(tag: &str) -> Result<()> {
    ensure_docker()?;
    // The suite's tests run in parallel in one process: one builds, the others
    // wait for it and find the image (they shared the root directory, and a
    // second build failed on the first's symlinks).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if run("docker", &["image", "inspect", tag]).is_ok() {
        return Ok(());
    }
    require_busybox()?;
    let root = std::env::temp_dir().join(format!("mesh-busybox-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in run(BUSYBOX, &["--list"])?.lines() {
        let link = root.join("bin").join(applet.trim());
        if applet.trim().is_empty() || link.exists() {
            continue;
        }
        std::os::unix::fs::symlink("busybox", &link)?;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import --change 'CMD [\"/bin/sh\"]' - '{tag}'",
            root.display()
        ))
        .stdout(Stdio::null())
        .status()?;
    let _ = std::fs::remove_dir_all(&root);
    ensure!(status.success(), "docker import of {tag} failed");
    Ok(())
}

/// MTU of the tests' task interfaces.
pub(crate) const MTU: u32 = 1450;

/// A task of `runtime` running `image` (the program, for the process runtime) with
/// `args`, `GREETING=hello` in its environment and a 1 s stop grace period.
pub(crate) fn task_config(
    runtime: RuntimeKind,
    (id, name): (TaskId, &str),
    addr: Ipv4Addr,
    image: &str,
    args: &[&str],
) -> TaskConfig {
    TaskConfig {
        id,
        name: name.into(),
        spec: TaskSpec {
            env: vec!["GREETING=hello".into()],
            stop_grace_ms: 1000,
            ..ServiceSpec::new(
                "task",
                runtime,
                image,
                args.iter().map(|a| (*a).to_owned()).collect(),
            )
            .task
        },
        addr,
        mtu: MTU,
        networks: Vec::new(),
        files: Vec::new(),
    }
}

/// How the tests' agents confine process tasks: through the built `lb-agent`, hiding
/// the state directory `state`, as the agent does.
///
/// # Errors
/// If `lb-agent` is not built.
pub(crate) fn isolation(state: &Path) -> Result<Isolation> {
    let cgroups = lb_agent::runtime::cgroup::Cgroups::discover();
    let controllers = lb_agent::runtime::cgroup::Controllers::discover(cgroups.as_ref(), false);
    Ok(Isolation::new(mesh_tests::bin("lb-agent")?)
        .with_cgroups(cgroups)
        .with_controllers(controllers)
        .hide(state))
}
