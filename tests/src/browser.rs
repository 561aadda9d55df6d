//! A headless Chromium (Debian's `chromium`) in a node's network namespace, driven over
//! the DevTools protocol: it opens a page as a person's browser does (scripts, styles,
//! live event streams) and answers what the page shows (`Runtime.evaluate`) or how it
//! looks (`Page.captureScreenshot`). One page per browser; the browser and its profile
//! go with the value.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::WebSocket;
use tungstenite::stream::MaybeTlsStream;

use crate::netns::in_netns;

/// How long the browser has to start and a page call to answer.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running headless Chromium with one page open.
pub struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("pid", &self.child.id())
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts Chromium in network namespace `ns` (`""`: this process's) with a window of
    /// `width` x `height`, and opens `url` in a page.
    ///
    /// # Errors
    /// If Chromium is missing (`cargo xtask setup` installs it) or does not start, or
    /// the page cannot be opened.
    pub fn open_in(ns: &str, url: &str, width: u32, height: u32) -> Result<Self> {
        static PROFILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let profile = std::env::temp_dir().join(format!(
            "mesh-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&profile)?;
        let mut command = if ns.is_empty() {
            Command::new("chromium")
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "chromium"]);
            c
        };
        let mut child = command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: the zygote and renderers go with it on drop.
            .process_group(0)
            .spawn()
            .context(
                "starting chromium (Debian's `chromium` package; cargo xtask setup installs it)",
            )?;
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let browser_url = match rx.recv_timeout(DEADLINE) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                bail!("chromium did not open its DevTools port within {DEADLINE:?}");
            }
        };
        let devtools: SocketAddr = browser_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .context("a DevTools address")?
            .parse()
            .with_context(|| format!("DevTools address in {browser_url}"))?;
        let cleanup = |child: &mut Child, e: anyhow::Error| {
            let _ = child.kill();
            e
        };
        let target = in_ns(ns, || put_json(devtools, &format!("/json/new?{url}")))
            .map_err(|e| cleanup(&mut child, e))?;
        let page_url = target["webSocketDebuggerUrl"]
            .as_str()
            .context("no webSocketDebuggerUrl for the new page")
            .map_err(|e| cleanup(&mut child, e))?
            .to_owned();
        let page = in_ns(ns, || {
            let (mut socket, _) = tungstenite::connect(page_url.as_str())
                .with_context(|| format!("connecting to {page_url}"))?;
            if let MaybeTlsStream::Plain(stream) = socket.get_mut() {
                stream.set_read_timeout(Some(DEADLINE))?;
            }
            Ok(socket)
        })
        .map_err(|e| cleanup(&mut child, e))?;
        Ok(Self {
            child,
            page,
            next_id: 0,
            profile,
        })
    }

    /// Calls DevTools `method` on the page; its `result`.
    ///
    /// # Errors
    /// If the call fails or does not answer within the deadline.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params});
        self.page
            .send(tungstenite::Message::text(message.to_string()))
            .with_context(|| format!("sending {method}"))?;
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let reply = self
                .page
                .read()
                .with_context(|| format!("waiting for {method}'s answer"))?;
            let tungstenite::Message::Text(text) = reply else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str())?;
            if value["id"] != id {
                continue; // an event
            }
            if let Some(error) = value.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(value["result"].clone());
        }
        bail!("{method} did not answer within {DEADLINE:?}")
    }

    /// The value of JavaScript `expression` in the page (awaited if it is a promise).
    ///
    /// # Errors
    /// If it throws, or the call fails.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Saves what the page shows as a PNG at `path`.
    ///
    /// # Errors
    /// If the capture or the write fails.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let result = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = result["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.page.close(None);
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `f` in network namespace `ns` (`""`: here).
fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    if ns.is_empty() { f() } else { in_netns(ns, f)? }
}

/// `PUT path` on `addr` (DevTools wants PUT for `/json/new`, and HTTP/1.1); the JSON
/// answer.
fn put_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let answer = crate::client::http_exchange(
        addr,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        DEADLINE,
    )
    .with_context(|| format!("PUT {path}"))?;
    if answer.code != 200 {
        bail!("PUT {path}: {}", answer.head);
    }
    serde_json::from_str(&answer.body).with_context(|| format!("DevTools' answer: {}", answer.body))
}
