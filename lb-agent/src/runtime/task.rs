//! A task as the runtimes see it: what they are given to start one ([`TaskConfig`], and
//! the environment it gets), what they give back ([`Started`], its network; [`Exit`], how
//! it ended), and the helpers both runtimes share for names and logs.

use std::net::Ipv4Addr;

use mesh_api::spec::{RuntimeKind, TaskSpec};
use mesh_api::task::TaskId;

/// What a runtime needs to start a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    /// The task.
    pub id: TaskId,
    /// `web.1`: for logs and container names.
    pub name: String,
    /// What it runs.
    pub spec: TaskSpec,
    /// Its address on the ingress network (a /32 on its interface).
    pub addr: Ipv4Addr,
    /// The MTU of its interfaces.
    pub mtu: u32,
    /// Its addresses on the user networks it joins, in its spec's order: one interface
    /// each (`eth1`, `eth2`, ...).
    pub networks: Vec<TaskNetwork>,
    /// Its secret and config files, with their bytes (never in `Debug`).
    pub files: Vec<super::files::TaskFile>,
}

/// A task's address on a user network, and the network's subnet (routed through that
/// network's interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskNetwork {
    /// The task's address there (a /32 on its interface).
    pub addr: Ipv4Addr,
    /// The network's subnet: address and prefix length. `None` when the network is not
    /// known (the interface then gets its address but no route).
    pub subnet: Option<(Ipv4Addr, u8)>,
}

/// A started task's network, as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The host side of the task's ingress veth (`eth0`), in the agent's namespace.
    pub host_iface: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// The host sides of its user networks' veths (`eth1`, `eth2`, ...), in order.
    pub networks: Vec<String>,
}

impl Started {
    /// The host sides of all its veths: `eth0`'s, then its networks' in order.
    #[must_use]
    pub fn host_ifaces(&self) -> Vec<String> {
        std::iter::once(self.host_iface.clone())
            .chain(self.networks.iter().cloned())
            .collect()
    }
}

/// How a task's main process ended.
///
/// A process task adopted from a previous agent run (see
/// [`crate::runtime::Runtimes::adopt`]) is not this agent's child: it ends with code -1,
/// its real code cannot be known. An adopted container's code is the engine's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code; 128 + the signal's number if a signal killed it.
    pub code: i32,
    /// Whether the kernel killed it for passing its memory limit (docker's
    /// `OOMKilled`): its cgroup counted an OOM kill.
    pub oom_killed: bool,
}

impl Exit {
    /// An exit with `code`, not for the memory limit.
    #[must_use]
    pub fn code(code: i32) -> Self {
        Self {
            code,
            oom_killed: false,
        }
    }
}

/// The service name in a task name (`web` in `web.1`).
#[must_use]
pub fn service_name(task_name: &str) -> &str {
    task_name
        .rsplit_once('.')
        .map_or(task_name, |(service, _)| service)
}

/// A task's environment: its spec's `KEY=VALUE` pairs, then `MESH_TASK_ID` (16 hex
/// digits), `MESH_TASK_NAME`, `MESH_SERVICE_NAME` and `MESH_TASK_ADDR` (which win).
/// Process tasks also get the agent's `PATH` unless the spec sets one.
#[must_use]
pub fn task_env(task: &TaskConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    for kv in &task.spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v.to_owned());
    }
    set("MESH_TASK_ID", format!("{:016x}", task.id));
    set("MESH_TASK_NAME", task.name.clone());
    set("MESH_SERVICE_NAME", service_name(&task.name).to_owned());
    set("MESH_TASK_ADDR", task.addr.to_string());
    if task.spec.runtime == RuntimeKind::Process && !env.iter().any(|(k, _)| k == "PATH") {
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        env.push(("PATH".into(), path));
    }
    env
}

/// The last `tail` lines of `text` (0: all).
#[must_use]
pub fn tail_lines(text: &str, tail: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let skip = if tail == 0 {
        0
    } else {
        lines.len().saturating_sub(tail)
    };
    lines[skip..].iter().map(|l| (*l).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::spec::RuntimeKind;

    fn task() -> TaskConfig {
        TaskConfig {
            id: 0x2a,
            name: "web.3".into(),
            spec: TaskSpec {
                env: vec!["A=1".into(), "MESH_TASK_NAME=spoofed".into(), "B".into()],
                ..mesh_api::spec::ServiceSpec::new("web", RuntimeKind::Docker, "busybox", vec![])
                    .task
            },
            addr: Ipv4Addr::new(10, 0, 0, 9),
            mtu: 1450,
            networks: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn environment() {
        let env = task_env(&task());
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some(""));
        assert_eq!(get("MESH_TASK_ID"), Some("000000000000002a"));
        assert_eq!(get("MESH_TASK_NAME"), Some("web.3"));
        assert_eq!(get("MESH_SERVICE_NAME"), Some("web"));
        assert_eq!(get("MESH_TASK_ADDR"), Some("10.0.0.9"));
        assert_eq!(get("PATH"), None, "docker tasks get the image's PATH");
        assert_eq!(env.iter().filter(|(k, _)| k == "MESH_TASK_NAME").count(), 1);
    }

    #[test]
    fn service_names() {
        assert_eq!(service_name("web.1"), "web");
        assert_eq!(service_name("my.app.12"), "my.app");
        assert_eq!(service_name("solo"), "solo");
    }

    #[test]
    fn tails() {
        let t = "a\nb\nc\n";
        assert_eq!(tail_lines(t, 0), ["a", "b", "c"]);
        assert_eq!(tail_lines(t, 2), ["b", "c"]);
        assert_eq!(tail_lines(t, 9), ["a", "b", "c"]);
        assert!(tail_lines("", 3).is_empty());
    }
}
