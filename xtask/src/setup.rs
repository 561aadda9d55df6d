//! `cargo xtask setup`: installs every prerequisite, idempotently.
//!
//! Each step checks first and acts only when something is missing, so a second run on a
//! ready machine takes about a second and changes nothing:
//!
//! 1. rustup components `rust-src` (for `-Z build-std=core`), `rustfmt`, `clippy`;
//! 2. Debian packages: LLVM 22 for `bpf-linker`, and the tools tests and demos use;
//! 3. `bpf-linker` 0.13.0, built against Debian's LLVM 22;
//! 4. `cargo-deny` 0.20.2, for the dependency policy check of `cargo xtask test`;
//! 5. bpffs mounted at `/sys/fs/bpf`;
//! 6. a docker engine answering (for the docker task runtime and its tests): when
//!    `docker info` fails, `dockerd --iptables=false --bridge=none` is started in the
//!    background (its log: `/var/log/mesh-dockerd.log`) and awaited;
//! 7. `promtool` (the metrics tests lint every `/metrics` with `promtool check metrics`):
//!    the binary alone, taken out of Debian's `prometheus` package (downloaded and
//!    checksum-verified by apt, never installed, so no daemon comes with it) into
//!    `/usr/local/bin`.
//!
//! Steps 2, 5, 6 and 7 need root; steps 1, 3 and 4 do not. A machine that already has everything
//! passes without root. See docs/toolchain.md.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Cmd};

/// rustup components the build needs.
const COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

/// Debian packages `bpf-linker` links against (llvm-22 is in Debian 12's security suite).
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the tests, the demo and the benchmarks run. A test that starts a new
/// tool adds its package here, so that a fresh machine gets it.
const TOOL_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "bpftool",
    "tcpdump",
    "nftables",
    "socat",
    "netcat-openbsd",
    "curl",
    // `cargo xtask bench mesh`: the userspace L4 proxy it compares the mesh with.
    "haproxy",
    // The docker task runtime: the engine, and a static busybox the runtime tests put in
    // locally built images (and run as process tasks).
    "docker.io",
    "busybox-static",
    // The stacks test's data store, run as a process task (`stack deploy` of a web tier
    // and Redis).
    "redis-server",
    // `meshctl completion`'s tests load each script into its shell; `meshctl man`'s
    // render the pages with groff.
    "zsh",
    "fish",
    "groff-base",
    // `cargo xtask package`: the Depends of the packages' binaries (dpkg-shlibdeps).
    "dpkg-dev",
    // The cluster view's test and the demo's screenshot: a headless browser.
    "chromium",
];

/// The Debian package whose `promtool` the setup step takes (its only file we keep).
const PROMTOOL_PACKAGE: &str = "prometheus";

/// Where the setup step puts `promtool`.
const PROMTOOL_PATH: &str = "/usr/local/bin/promtool";

/// Where the docker engine that setup starts logs.
const DOCKERD_LOG: &str = "/var/log/mesh-dockerd.log";

/// The `bpf-linker` version this workspace is built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The `cargo-deny` version `cargo xtask test` checks the dependency policy with.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// Where Debian's LLVM 22 lives; `bpf-linker`'s build needs it as `LLVM_PREFIX`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Where the agent pins programs and maps.
const BPFFS: &str = "/sys/fs/bpf";

/// What a step did, for the summary.
enum Outcome {
    Present(String),
    Done(String),
}

/// One setup step: checks, acts if needed, and says what it did.
type Step = fn() -> Result<Outcome>;

/// Runs every setup step and prints what it did and what it skipped.
pub(crate) fn run() -> Result<()> {
    cmd::step("setup: checking prerequisites");
    let steps: [(&str, Step); 7] = [
        ("rustup components", components),
        ("Debian packages", packages),
        ("bpf-linker", bpf_linker),
        ("cargo-deny", cargo_deny),
        ("bpffs", bpffs),
        ("docker engine", docker_engine),
        ("promtool", promtool),
    ];
    let mut summary = Vec::new();
    for (name, f) in steps {
        let outcome = f().with_context(|| format!("setup step `{name}` failed"))?;
        summary.push((name, outcome));
    }
    eprintln!("\nsetup summary:");
    for (name, outcome) in summary {
        match outcome {
            Outcome::Present(what) => eprintln!("  {name:<18} skipped: {what}"),
            Outcome::Done(what) => eprintln!("  {name:<18} done:    {what}"),
        }
    }
    Ok(())
}

fn components() -> Result<Outcome> {
    let Some(list) = Cmd::new("rustup")
        .args(["component", "list", "--installed"])
        .probe()
    else {
        // No rustup (a distribution's Rust, say): check the one thing we cannot do without.
        let sysroot = Cmd::new("rustc")
            .args(["--print", "sysroot"])
            .probe()
            .unwrap_or_default();
        let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
        if src.is_dir() {
            return Ok(Outcome::Present(
                "no rustup; rust-src found in the sysroot".into(),
            ));
        }
        bail!(
            "`rustup` was not found and the toolchain has no rust-src; install Rust with \
             rustup (https://rustup.rs) or add the standard library's sources"
        );
    };
    let installed: Vec<&str> = list.lines().map(str::trim).collect();
    // Installed components carry a target suffix (`clippy-x86_64-unknown-linux-gnu`),
    // except target-independent ones (`rust-src`).
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .iter()
                .any(|i| *i == *c || i.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Present(format!(
            "{} installed",
            COMPONENTS.join(", ")
        )));
    }
    Cmd::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .run()?;
    Ok(Outcome::Done(format!("added {}", missing.join(", "))))
}

/// Whether dpkg reports `pkg` as installed (not merely known, or removed with its config).
fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}", pkg])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) => {
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`dpkg-query` not found: the setup step installs packages on Debian or Ubuntu only. \
             Install by hand: LLVM 22 development files (llvm-22-dev, libpolly-22-dev), \
             zstd and zlib headers, and {}",
            TOOL_PACKAGES.join(", ")
        ),
        Err(e) => Err(e).context("running dpkg-query"),
    }
}

fn packages() -> Result<Outcome> {
    let all = LLVM_PACKAGES.iter().chain(TOOL_PACKAGES);
    let mut missing = Vec::new();
    for pkg in all {
        if !dpkg_installed(pkg)? {
            missing.push(*pkg);
        }
    }
    let total = LLVM_PACKAGES.len() + TOOL_PACKAGES.len();
    if missing.is_empty() {
        return Ok(Outcome::Present(format!("all {total} packages installed")));
    }
    eprintln!("missing Debian packages: {}", missing.join(" "));
    if !cmd::is_root() {
        bail!(
            "installing Debian packages needs root; run `cargo xtask setup` as root, or \
             install them yourself: apt-get install -y {}",
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        Cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "Dpkg::Use-Pty=0", "-q"])
            .args(args)
    };
    apt(&["update"]).run().context(
        "`apt-get update` failed: check the network and /etc/apt/sources.list \
         (llvm-22 comes from Debian 12's security suite)",
    )?;
    apt(&["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .run()
        .with_context(|| format!("`apt-get install` of {} failed", missing.join(" ")))?;
    Ok(Outcome::Done(format!("installed {}", missing.join(" "))))
}

/// A tool installed with `cargo install` at a pinned version.
struct CargoTool {
    /// The crate, and the binary `cargo install` puts in cargo's bin directory.
    name: &'static str,
    version: &'static str,
    /// What the build takes, said before it starts.
    duration: &'static str,
    /// Extra `cargo install` arguments.
    args: &'static [&'static str],
    /// What to check when the build fails.
    hint: &'static str,
}

/// `bpf-linker`, built against Debian's LLVM 22 (see [`LLVM_PREFIX`]).
const BPF_LINKER: CargoTool = CargoTool {
    name: "bpf-linker",
    version: BPF_LINKER_VERSION,
    duration: "about 2 minutes",
    args: &["--no-default-features", "--features", "llvm-22"],
    hint: "is crates.io reachable? is llvm-22-dev installed?",
};

/// `cargo-deny`, for `cargo deny check licenses bans sources` in `cargo xtask test`.
const CARGO_DENY: CargoTool = CargoTool {
    name: "cargo-deny",
    version: CARGO_DENY_VERSION,
    duration: "about 5 minutes on 2 cores",
    args: &["--locked"],
    hint: "is crates.io reachable?",
};

impl CargoTool {
    /// The installed version, from `<name> --version` ("bpf-linker 0.13.0").
    fn installed_version(&self) -> Option<String> {
        let out = Cmd::new(self.name).arg("--version").probe()?;
        out.split_whitespace().nth(1).map(str::to_owned)
    }

    /// Installs the pinned version unless it is there.
    fn ensure(&self) -> Result<Outcome> {
        let (name, version) = (self.name, self.version);
        let found = self.installed_version();
        if found.as_deref() == Some(version) {
            return Ok(Outcome::Present(format!("{name} {version} installed")));
        }
        match &found {
            Some(v) => eprintln!("{name} {v} found, want {version}: reinstalling"),
            None => eprintln!("{name} not found: installing {version} ({})", self.duration),
        }
        Cmd::cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["install", name, "--version", version, "--force"])
            .args(self.args)
            .run()
            .with_context(|| format!("building {name} failed ({})", self.hint))?;
        match self.installed_version() {
            Some(v) if v == version => {}
            other => bail!(
                "{name} was installed but `{name} --version` reports {other:?}; is {} on PATH?",
                cmd::cargo_bin_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
        }
        Ok(Outcome::Done(format!("installed {name} {version}")))
    }
}

fn bpf_linker() -> Result<Outcome> {
    if BPF_LINKER.installed_version().as_deref() != Some(BPF_LINKER_VERSION)
        && !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists()
    {
        bail!("{LLVM_PREFIX}/bin/llvm-config is missing: llvm-22-dev must be installed first");
    }
    BPF_LINKER.ensure()
}

fn cargo_deny() -> Result<Outcome> {
    CARGO_DENY.ensure()
}

/// Whether a bpf filesystem is mounted at [`BPFFS`].
fn bpffs_mounted() -> Result<bool> {
    let mounts = cmd::read_to_string(Path::new("/proc/self/mounts"))?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn bpffs() -> Result<Outcome> {
    if bpffs_mounted()? {
        return Ok(Outcome::Present(format!("bpffs mounted at {BPFFS}")));
    }
    if !cmd::is_root() {
        bail!(
            "bpffs is not mounted at {BPFFS} and mounting it needs root: mount -t bpf bpf {BPFFS}"
        );
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    Cmd::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .run()
        .with_context(|| {
            format!("mounting bpffs at {BPFFS} failed (in a container, give it CAP_SYS_ADMIN)")
        })?;
    Ok(Outcome::Done(format!("mounted bpffs at {BPFFS}")))
}

/// Whether a docker engine answers `docker info`.
fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_engine() -> Result<Outcome> {
    use std::os::unix::process::CommandExt as _;
    if docker_answers() {
        return Ok(Outcome::Present("the docker engine answers".into()));
    }
    if !cmd::is_root() {
        bail!(
            "no docker engine answers and starting one needs root: dockerd --iptables=false --bridge=none &"
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    // No bridge and no iptables rules: the mesh plumbs its containers itself (network
    // mode `none`), and the engine must not touch the host's firewall.
    std::process::Command::new("dockerd")
        .args(["--iptables=false", "--bridge=none"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting dockerd (is docker.io installed?)")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !docker_answers() {
        if std::time::Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s; see {DOCKERD_LOG}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(Outcome::Done(format!(
        "started dockerd --iptables=false --bridge=none (log: {DOCKERD_LOG})"
    )))
}

/// `promtool --version`'s first line, if a `promtool` runs.
fn promtool_version() -> Option<String> {
    let out = Cmd::new("promtool").arg("--version").probe()?;
    out.lines().next().map(str::to_owned)
}

/// Installs `promtool` alone: `apt-get download` fetches Debian's `prometheus` package
/// (apt checks its SHA-256 against the signed archive index), `dpkg-deb -x` unpacks it
/// into a scratch directory, and only `usr/bin/promtool` is copied out. Installing the
/// package would bring the Prometheus daemon (started by its maintainer scripts) and
/// its web assets; the upstream release tarball is not reachable from every machine
/// that reaches Debian's archive.
fn promtool() -> Result<Outcome> {
    if let Some(version) = promtool_version() {
        return Ok(Outcome::Present(version));
    }
    if !cmd::is_root() {
        bail!(
            "promtool is missing and the setup step installs it as root only; install it \
             yourself (it is in Debian's `{PROMTOOL_PACKAGE}` package, or Prometheus's \
             release tarballs)"
        );
    }
    let scratch = std::env::temp_dir().join(format!("mesh-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = promtool_from_deb(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    let version = promtool_version()
        .with_context(|| format!("{PROMTOOL_PATH} was installed but does not run"))?;
    Ok(Outcome::Done(format!(
        "installed {PROMTOOL_PATH} from Debian's {PROMTOOL_PACKAGE} package ({version})"
    )))
}

/// Downloads the package into `scratch` and copies its `promtool` to [`PROMTOOL_PATH`].
fn promtool_from_deb(scratch: &Path) -> Result<()> {
    // `apt-get download` writes into its working directory, which `Cmd` does not set.
    let download = || -> Result<()> {
        eprintln!(
            "$ (cd {}; apt-get download {PROMTOOL_PACKAGE})",
            scratch.display()
        );
        let status = std::process::Command::new("apt-get")
            .args(["-q", "download", PROMTOOL_PACKAGE])
            .current_dir(scratch)
            .stdin(std::process::Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get download {PROMTOOL_PACKAGE}` failed ({status})");
        }
        Ok(())
    };
    if download().is_err() {
        // The package lists may be missing or stale (a fresh machine).
        Cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "update"])
            .run()
            .context("`apt-get update` failed")?;
        download()?;
    }
    let deb = std::fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("`apt-get download {PROMTOOL_PACKAGE}` left no .deb"))?;
    let root = scratch.join("root");
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .run()
        .context("unpacking the package")?;
    let binary = root.join("usr/bin/promtool");
    std::fs::copy(&binary, PROMTOOL_PATH)
        .with_context(|| format!("copying {} to {PROMTOOL_PATH}", binary.display()))?;
    let mut perms = std::fs::metadata(PROMTOOL_PATH)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(PROMTOOL_PATH, perms)?;
    Ok(())
}
