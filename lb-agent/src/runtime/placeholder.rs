//! PLACEHOLDER (dropped at merge): a throwaway [`Runtimes`] with the real
//! facade's signatures, so the managed agent builds and can be tried by hand
//! before the real runtimes land. It runs `process` tasks only, through
//! `ip netns exec` in a namespace it plumbs with `ip` commands.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manager::service::TaskId;
use manager::spec::RuntimeKind;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

use super::{Exit, RuntimeError, Started, TaskConfig};

const GATEWAY: &str = "169.254.1.1";
const KEEP_LINES: usize = 1000;

#[derive(Debug, Default)]
struct Inner {
    pids: HashMap<TaskId, u32>,
    logs: HashMap<TaskId, VecDeque<String>>,
    exits_rx: Option<mpsc::UnboundedReceiver<(TaskId, Exit)>>,
}

/// PLACEHOLDER task runtimes.
#[derive(Clone, Debug)]
pub struct Runtimes {
    inner: Arc<Mutex<Inner>>,
    exits: mpsc::UnboundedSender<(TaskId, Exit)>,
}

fn ns(id: TaskId) -> String {
    format!("mesh-task-{id:016x}")
}

fn iface(id: TaskId) -> String {
    format!("mt{:08x}", id & 0xffff_ffff)
}

async fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| RuntimeError::Failed(format!("ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Failed(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

async fn ip_ns(ns: &str, args: &[&str]) -> Result<(), RuntimeError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all).await
}

impl Runtimes {
    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Never.
    pub async fn new(_state_dir: &Path, _docker: bool) -> Result<Self, RuntimeError> {
        let (exits, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            exits_rx: Some(rx),
            ..Inner::default()
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            exits,
        })
    }

    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Plumbing or spawning failed.
    pub async fn start(&self, task: &TaskConfig) -> Result<Started, RuntimeError> {
        if task.spec.runtime != RuntimeKind::Process {
            return Err(RuntimeError::Unavailable(
                task.spec.runtime,
                "placeholder runtimes".into(),
            ));
        }
        let (ns, host) = (ns(task.id), iface(task.id));
        let _ = ip(&["netns", "del", &ns]).await;
        let _ = ip(&["link", "del", &host]).await;
        ip(&["netns", "add", &ns]).await?;
        let mtu = task.mtu.to_string();
        let o = task.addr.octets();
        let task_mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        let host_mac = format!("02:fe:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        ip(&[
            "link", "add", &host, "mtu", &mtu, "address", &host_mac, "type", "veth", "peer",
            "name", "eth0", "mtu", &mtu, "address", &task_mac, "netns", &ns,
        ])
        .await?;
        let addr = format!("{}/32", task.addr);
        ip_ns(&ns, &["addr", "add", &addr, "dev", "eth0"]).await?;
        ip_ns(&ns, &["link", "set", "lo", "up"]).await?;
        ip_ns(&ns, &["link", "set", "eth0", "up"]).await?;
        ip_ns(
            &ns,
            &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        )
        .await?;
        ip_ns(
            &ns,
            &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        )
        .await?;
        ip_ns(
            &ns,
            &[
                "neigh",
                "replace",
                GATEWAY,
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .await?;
        ip(&["link", "set", &host, "up"]).await?;
        ip(&["route", "replace", &addr, "dev", &host, "scope", "link"]).await?;
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns, &task.spec.image])
            .args(&task.spec.args)
            .envs(task.spec.env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Failed(format!("starting {}: {e}", task.spec.image)))?;
        let pid = child.id().unwrap_or(0);
        {
            let mut inner = self.inner.lock().expect("runtime lock");
            inner.pids.insert(task.id, pid);
            inner.logs.insert(task.id, VecDeque::new());
        }
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let inner = Arc::clone(&self.inner);
            let id = task.id;
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut inner = inner.lock().expect("runtime lock");
                    let buf = inner.logs.entry(id).or_default();
                    buf.push_back(line);
                    if buf.len() > KEEP_LINES {
                        buf.pop_front();
                    }
                }
            });
        }
        let (exits, inner, id) = (self.exits.clone(), Arc::clone(&self.inner), task.id);
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(9)
                }),
                Err(_) => 255,
            };
            inner.lock().expect("runtime lock").pids.remove(&id);
            let _ = exits.send((id, Exit { code }));
        });
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{host}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Started {
            host_iface: host,
            ifindex,
        })
    }

    /// PLACEHOLDER.
    #[must_use]
    pub fn take_exits(&self) -> Option<mpsc::UnboundedReceiver<(TaskId, Exit)>> {
        self.inner.lock().expect("runtime lock").exits_rx.take()
    }

    /// PLACEHOLDER.
    ///
    /// # Errors
    /// Never.
    pub async fn stop(&self, id: TaskId, grace: Duration) -> Result<(), RuntimeError> {
        let pid = self
            .inner
            .lock()
            .expect("runtime lock")
            .pids
            .get(&id)
            .copied();
        if let Some(pid) = pid {
            let pid = nix::unistd::Pid::from_raw(pid.cast_signed());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline
                && self
                    .inner
                    .lock()
                    .expect("runtime lock")
                    .pids
                    .contains_key(&id)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = ip(&["link", "del", &iface(id)]).await;
        let _ = ip(&["netns", "del", &ns(id)]).await;
        Ok(())
    }

    /// PLACEHOLDER.
    ///
    /// # Errors
    /// The check could not run.
    pub async fn health_check(
        &self,
        id: TaskId,
        cmd: &str,
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let run = tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns(id), "/bin/sh", "-c", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(status)) => Ok(status.success()),
            Ok(Err(e)) => Err(RuntimeError::Failed(e.to_string())),
            Err(_) => Ok(false),
        }
    }

    /// PLACEHOLDER.
    ///
    /// # Errors
    /// [`RuntimeError::Unknown`].
    pub async fn logs(&self, id: TaskId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let inner = self.inner.lock().expect("runtime lock");
        let buf = inner.logs.get(&id).ok_or(RuntimeError::Unknown(id))?;
        let skip = if tail == 0 {
            0
        } else {
            buf.len().saturating_sub(tail)
        };
        Ok(buf.iter().skip(skip).cloned().collect())
    }

    /// PLACEHOLDER: removes nothing.
    ///
    /// # Errors
    /// Never.
    pub async fn cleanup(&self, _keep: &BTreeSet<TaskId>) -> Result<Vec<TaskId>, RuntimeError> {
        Ok(Vec::new())
    }
}
