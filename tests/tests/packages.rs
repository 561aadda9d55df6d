//! The Debian packages (`cargo xtask package`), installed with dpkg on this machine as an
//! administrator installs them, checked, run and purged:
//!
//! - dpkg installs the three (their `Depends` resolved against the machine's), registers
//!   the configuration files as conffiles, with the environment files private (0600);
//! - `systemd-analyze verify` accepts both installed units (it checks that their
//!   `ExecStart` binaries exist, so it fails on a unit whose binary is gone: seen after
//!   the purge);
//! - the units' own `ExecStart` command lines, taken from the installed units, run: the
//!   agent with the installed default configuration (in a network namespace whose `eth0`
//!   it attaches to) serves `/metrics`; a manager initialised with the installed binary
//!   and then started as the unit starts it (`mesh-manager run` with the unit's
//!   environment) leads its cluster, as the installed `meshctl` shows;
//! - meshctl's installed completion loads into bash and its man pages render;
//! - `dpkg --purge` removes everything, configuration included.
//!
//! This machine kind runs no systemd as PID 1, so `systemctl start` cannot be used; the
//! units' command lines are started as systemd would start them, from the units. Needs
//! root (dpkg, namespaces, eBPF) and the xtask binary (`cargo xtask test` builds it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_tests::{netns, ok, poll_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PACKAGES: [&str; 3] = ["lb-agent", "mesh-manager", "meshctl"];

/// `program args` must succeed; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    ok(netns::run(program, args))
}

/// The `ExecStart=` command line of an installed unit.
fn exec_start(unit: &str) -> Vec<String> {
    let path = format!("/lib/systemd/system/{unit}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{path} has no ExecStart="))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The `KEY=value` lines of an environment file (comments and blanks skipped), plus
/// `extra`, as systemd's `EnvironmentFile=` and `Environment=` give them.
fn unit_env(file: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut env: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// Starts `command` in network namespace `ns` with `env`, its output in `log`.
fn start_in(ns: &str, command: &[String], env: &[(String, String)], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("a log file");
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("ip netns exec runs")
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let _ = child.wait();
}

/// Purges the packages (and what a failed run left), quietly.
fn purge() -> std::process::ExitStatus {
    Command::new("dpkg")
        .arg("--purge")
        .args(PACKAGES)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("dpkg runs")
}

/// The namespace, the manager's data directory and the processes of the test: removed
/// however it ends.
struct Scratch {
    ns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop(child);
        }
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/usr/bin/lb-agent", "cleanup"])
            .args(["--config", "/etc/mesh/agent.toml"])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        purge();
    }
}

#[test]
fn packages_install_verify_run_and_purge() {
    ok(netns::preflight());
    let xtask = mesh_tests::bin_dir().join("xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run the tests through `cargo xtask test` (or build xtask)",
        xtask.display()
    );
    let id = std::process::id();
    let mut scratch = Scratch {
        ns: format!("mpkg{id}"),
        dir: std::env::temp_dir().join(format!("mesh-packages-{id}")),
        children: Vec::new(),
    };
    purge();
    let _ = std::fs::remove_dir_all(&scratch.dir);
    let debs_dir = scratch.dir.join("debs");
    run(
        xtask.to_str().expect("UTF-8"),
        &[
            "package",
            "--debug",
            "--out",
            debs_dir.to_str().expect("UTF-8"),
        ],
    );
    let arch = run("dpkg", &["--print-architecture"]);
    let debs: Vec<String> = PACKAGES
        .iter()
        .map(|p| {
            debs_dir
                .join(format!(
                    "{p}_{}_{}.deb",
                    env!("CARGO_PKG_VERSION"),
                    arch.trim()
                ))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut args = vec!["-i"];
    args.extend(debs.iter().map(String::as_str));
    run("dpkg", &args);

    // Installed, with the configuration as conffiles and the environment files private.
    for package in PACKAGES {
        let status = run("dpkg-query", &["-W", "-f=${Status}", package]);
        assert_eq!(status, "install ok installed", "{package}");
        let depends = run("dpkg-query", &["-W", "-f=${Depends}", package]);
        assert!(
            depends.contains("libc6 (>= "),
            "{package}: Depends {depends:?}"
        );
    }
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "lb-agent"]);
    for file in ["/etc/mesh/agent.toml", "/etc/mesh/agent.env"] {
        assert!(
            conffiles.contains(file),
            "{file} is not a conffile: {conffiles}"
        );
    }
    for file in ["/etc/mesh/agent.env", "/etc/mesh/manager.env"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }

    // The units as systemd reads them, pointing at the installed binaries.
    let units = [
        "/lib/systemd/system/lb-agent.service",
        "/lib/systemd/system/mesh-manager.service",
    ];
    let mut verify = vec!["verify"];
    verify.extend(units);
    let out = Command::new("systemd-analyze")
        .args(&verify)
        .output()
        .expect("systemd-analyze runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        exec_start("lb-agent.service"),
        ["/usr/bin/lb-agent", "--config", "/etc/mesh/agent.toml"]
    );
    assert_eq!(
        exec_start("mesh-manager.service"),
        ["/usr/bin/mesh-manager", "run"]
    );

    // The agent's unit command, with the installed default configuration, in a namespace
    // whose eth0 it attaches to.
    let ns = scratch.ns.clone();
    run("ip", &["netns", "add", &ns]);
    ok(netns::ip_in(&ns, &["link", "set", "lo", "up"]).map(drop));
    ok(netns::ip_in(
        &ns,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ],
    )
    .map(drop));
    ok(netns::ip_in(&ns, &["addr", "add", "10.77.0.1/24", "dev", "eth0"]).map(drop));
    ok(netns::ip_in(&ns, &["link", "set", "eth0", "up"]).map(drop));
    ok(netns::ip_in(&ns, &["link", "set", "eth1", "up"]).map(drop));
    let agent_log = scratch.dir.join("agent.log");
    let agent = start_in(
        &ns,
        &exec_start("lb-agent.service"),
        &unit_env("/etc/mesh/agent.env", &[("RUST_LOG", "info")]),
        &agent_log,
    );
    scratch.children.push(agent);
    let metrics: SocketAddr = "127.0.0.1:9464".parse().expect("address");
    let text = ok(poll_until(
        Duration::from_secs(30),
        "the packaged agent's /metrics",
        || {
            let got = netns::in_netns(&ns, || mesh_tests::client::http_get(metrics, "/metrics"))?;
            Ok(got.ok().filter(|t| t.contains("lb_flow_table_capacity")))
        },
    ));
    assert!(
        text.contains("lb_dropped_packets_total"),
        "{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );

    // A manager: initialised with the installed binary, then started as its unit starts
    // it, from its data directory named in the unit's environment.
    let data = scratch.dir.join("manager");
    let data_str = data.to_str().expect("UTF-8").to_owned();
    let api = "127.0.0.1:4299";
    let init: Vec<String> = [
        "/usr/bin/mesh-manager",
        "init",
        "--hostname",
        "pkg-manager",
        "--data-dir",
        &data_str,
        "--listen-addr",
        api,
        "--metrics-addr",
        "off",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let tls = format!("{data_str}/tls");
    let node_ls = |what: &str| {
        ok(poll_until(Duration::from_secs(30), what, || {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "/usr/bin/meshctl", "--host", api])
                .args(["--tls-dir", &tls, "node", "ls"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok((out.status.success() && text.contains("Leader")).then_some(text))
        }))
    };
    let mut manager = start_in(&ns, &init, &[], &scratch.dir.join("init.log"));
    let table = node_ls("the manager started by `mesh-manager init` to lead");
    assert!(table.contains("pkg-manager"), "{table}");
    stop(&mut manager);
    let env = unit_env(
        "/etc/mesh/manager.env",
        &[
            ("MESH_DATA_DIR", &data_str),
            ("MESH_LISTEN_ADDR", api),
            ("MESH_METRICS_ADDR", "off"),
            ("RUST_LOG", "info"),
        ],
    );
    let manager = start_in(
        &ns,
        &exec_start("mesh-manager.service"),
        &env,
        &scratch.dir.join("run.log"),
    );
    scratch.children.push(manager);
    let table = node_ls("the manager started as its unit starts it to lead");
    assert!(table.contains("pkg-manager"), "{table}");

    // meshctl's completion and man pages where bash and man look for them.
    let out = run(
        "bash",
        &[
            "--norc",
            "-c",
            "source /usr/share/bash-completion/completions/meshctl && complete -p meshctl",
        ],
    );
    assert!(out.contains("-F _meshctl meshctl"), "{out}");
    let page = Path::new("/usr/share/man/man1/meshctl-service-create.1.gz");
    let rendered = run(
        "sh",
        &[
            "-c",
            &format!("zcat {} | groff -man -Tutf8 -ww -P-cbou", page.display()),
        ],
    );
    assert!(rendered.contains("meshctl-service-create"), "{rendered}");

    // Purged: binaries, units and configuration gone; a unit without its binary no
    // longer verifies.
    for child in &mut scratch.children {
        stop(child);
    }
    scratch.children.clear();
    let unit_copy = scratch.dir.join("lb-agent.service");
    std::fs::copy(units[0], &unit_copy).expect("copying the unit");
    assert!(purge().success(), "dpkg --purge failed");
    for gone in [
        "/usr/bin/lb-agent",
        "/usr/bin/mesh-manager",
        "/usr/bin/meshctl",
        units[0],
        units[1],
        "/etc/mesh/agent.toml",
        "/etc/mesh/manager.env",
        "/usr/share/bash-completion/completions/meshctl",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after the purge"
        );
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_copy)
        .output()
        .expect("systemd-analyze runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/bin/lb-agent"),
        "systemd-analyze verify did not notice the missing binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
