//! A small closed-loop load generator for `bench-mesh`, and the CPU counters it reads.
//!
//! Every worker is an OS thread that has entered the client's network namespace and runs
//! one of four [`Workload`]s against `task-echo` servers (directly or through a load
//! balancer):
//!
//! - [`Workload::Connections`]: a new TCP connection per operation: connect, read the
//!   banner, send a small request, read its echo, close (FIN; the client closes first).
//! - [`Workload::KeepAlive`]: one TCP connection per worker, opened before the window;
//!   each operation is a small request and its echo.
//! - [`Workload::Udp`]: one UDP socket per worker; each operation is a small datagram and
//!   its answer (request/response, one outstanding datagram per socket).
//! - [`Workload::Paced`]: like `KeepAlive`, but at a fixed total rate, for latency and CPU
//!   cost at the same offered load in every case.
//!
//! A run has a warm-up, then a measured window: operations that complete inside the
//! window are counted and their latencies kept. The caller's `snapshot` closure runs at
//! the window's start and end (CPU counters, say). Only the window's edges are timed with
//! sleeps: those sleeps are the measurement, not synchronisation; readiness is polled
//! with a deadline.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// Timeout of a connect, a read or a write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP request waits for its answer before it counts as lost.
pub const UDP_TIMEOUT: Duration = Duration::from_millis(200);
/// How long workers may take to get ready (connect, first exchange).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What the workers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A new connection per operation; `workers` concurrent workers.
    Connections {
        /// Concurrent workers.
        workers: usize,
    },
    /// Requests on kept-alive connections, one connection per worker, closed loop.
    KeepAlive {
        /// Connections (= workers).
        connections: usize,
    },
    /// UDP request/response, one socket per worker, one datagram outstanding.
    Udp {
        /// Sockets (= workers).
        sockets: usize,
    },
    /// Requests on kept-alive connections at a fixed total rate.
    Paced {
        /// Connections (= workers).
        connections: usize,
        /// Requests per second, over all connections.
        rate: u32,
    },
}

impl Workload {
    /// Number of worker threads.
    #[must_use]
    pub const fn workers(&self) -> usize {
        match *self {
            Self::Connections { workers } => workers,
            Self::KeepAlive { connections } | Self::Paced { connections, .. } => connections,
            Self::Udp { sockets } => sockets,
        }
    }
}

/// One run: a workload against targets, with a warm-up and a measured window.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What the workers do.
    pub workload: Workload,
    /// Where to: worker `i` uses `targets[i % n]` (kept-alive connections, UDP sockets);
    /// connection workers rotate over all of them.
    pub targets: Vec<SocketAddr>,
    /// Bytes per request (at least 8: a sequence number leads every request).
    pub payload: usize,
    /// Time before the window (connections warm, caches and flow tables populated).
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Operations that failed inside the window (timeouts, resets, lost datagrams).
    pub errors: u64,
    /// The window's real length.
    pub elapsed: Duration,
    /// Latency of every operation of the window, in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
    /// Which task answered, counted per connection or socket (per operation for
    /// [`Workload::Connections`]), over warm-up and window.
    pub tasks: BTreeMap<String, u64>,
    /// The first error a worker saw, if any.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Operations per second over the window.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (0..=100) of the window's latencies, in microseconds.
    #[must_use]
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        if self.latencies_ns.is_empty() {
            return None;
        }
        let n = self.latencies_ns.len();
        let idx = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies_ns[idx.clamp(1, n) - 1] as f64 / 1000.0)
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

#[derive(Debug)]
struct Control {
    phase: AtomicU8,
    ready: AtomicUsize,
    failed: AtomicUsize,
}

#[derive(Debug, Default)]
struct WorkerOut {
    ops: u64,
    errors: u64,
    latencies_ns: Vec<u64>,
    tasks: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl WorkerOut {
    fn error(&mut self, phase: u8, e: &io::Error) {
        if phase == MEASURE {
            self.errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn done(&mut self, phase: u8, started: Instant) {
        if phase == MEASURE {
            self.ops += 1;
            self.latencies_ns.push(started.elapsed().as_nanos() as u64);
        }
    }
}

/// Runs `plan` from the network namespace `netns` (a name under `/run/netns`), calling
/// `snapshot` right before and right after the window; returns the outcome and both
/// snapshots.
///
/// # Errors
///
/// Fails if the namespace cannot be entered, a worker cannot get ready (connect, first
/// answer) within [`READY_TIMEOUT`], or `snapshot` fails. Failures of single operations
/// inside the window are counted in [`Outcome::errors`], not returned.
pub fn run<S>(
    netns: &str,
    plan: &Plan,
    mut snapshot: impl FnMut() -> io::Result<S>,
) -> io::Result<(Outcome, S, S)> {
    if plan.targets.is_empty() {
        return Err(io::Error::other("no targets"));
    }
    if plan.payload < 8 {
        return Err(io::Error::other("payload must be at least 8 bytes"));
    }
    let ctl = Arc::new(Control {
        phase: AtomicU8::new(WARMUP),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let n = plan.workload.workers();
    let mut handles: Vec<JoinHandle<io::Result<WorkerOut>>> = Vec::with_capacity(n);
    let stop_all = |ctl: &Control, handles: Vec<JoinHandle<io::Result<WorkerOut>>>| {
        ctl.phase.store(STOP, Ordering::SeqCst);
        for h in handles {
            let _ = h.join();
        }
    };
    for i in 0..n {
        let ns_file = File::open(format!("/run/netns/{netns}"))?;
        let worker_ctl = Arc::clone(&ctl);
        let plan = plan.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                let res = setns(&ns_file, CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| worker(i, &plan, &worker_ctl));
                if res.is_err() {
                    worker_ctl.failed.fetch_add(1, Ordering::SeqCst);
                }
                res
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop_all(&ctl, handles);
                return Err(e);
            }
        }
    }
    // Wait until every worker is ready (or one failed).
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    while ctl.ready.load(Ordering::SeqCst) < n && ctl.failed.load(Ordering::SeqCst) == 0 {
        if Instant::now() >= deadline {
            stop_all(&ctl, handles);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("load workers not ready within {READY_TIMEOUT:?}"),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    if ctl.failed.load(Ordering::SeqCst) > 0 {
        ctl.phase.store(STOP, Ordering::SeqCst);
        let mut first = None;
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                first.get_or_insert(e);
            }
        }
        return Err(first.unwrap_or_else(|| io::Error::other("a load worker failed")));
    }
    std::thread::sleep(plan.warmup);
    let before = match snapshot() {
        Ok(s) => s,
        Err(e) => {
            stop_all(&ctl, handles);
            return Err(e);
        }
    };
    let t0 = Instant::now();
    ctl.phase.store(MEASURE, Ordering::SeqCst);
    std::thread::sleep(plan.window);
    ctl.phase.store(STOP, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let after = snapshot();
    let mut out = Outcome {
        elapsed,
        ..Outcome::default()
    };
    let mut join_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(w)) => {
                out.ops += w.ops;
                out.errors += w.errors;
                out.latencies_ns.extend(w.latencies_ns);
                for (t, c) in w.tasks {
                    *out.tasks.entry(t).or_default() += c;
                }
                if out.first_error.is_none() {
                    out.first_error = w.first_error;
                }
            }
            Ok(Err(e)) => {
                join_err.get_or_insert(e);
            }
            Err(_) => {
                join_err.get_or_insert(io::Error::other("a load worker panicked"));
            }
        }
    }
    if let Some(e) = join_err {
        return Err(e);
    }
    out.latencies_ns.sort_unstable();
    Ok((out, before, after?))
}

fn worker(i: usize, plan: &Plan, ctl: &Control) -> io::Result<WorkerOut> {
    let target = plan.targets[i % plan.targets.len()];
    let mut out = WorkerOut::default();
    let mut req = vec![0u8; plan.payload];
    match plan.workload {
        Workload::Connections { .. } => {
            ctl.ready.fetch_add(1, Ordering::SeqCst);
            let mut k = i;
            let mut seq = 0u64;
            loop {
                let phase = ctl.phase.load(Ordering::Relaxed);
                if phase == STOP {
                    break;
                }
                let target = plan.targets[k % plan.targets.len()];
                k += 1;
                seq += 1;
                let started = Instant::now();
                match one_connection(target, seq, &mut req) {
                    Ok(task) => {
                        *out.tasks.entry(task).or_default() += 1;
                        out.done(ctl.phase.load(Ordering::Relaxed), started);
                    }
                    Err(e) => out.error(ctl.phase.load(Ordering::Relaxed), &e),
                }
            }
        }
        Workload::KeepAlive { .. } | Workload::Paced { .. } => {
            let (mut conn, task) = connect(target)?;
            *out.tasks.entry(task).or_default() += 1;
            let interval = match plan.workload {
                Workload::Paced { connections, rate } => Some(Duration::from_secs_f64(
                    connections as f64 / f64::from(rate.max(1)),
                )),
                _ => None,
            };
            ctl.ready.fetch_add(1, Ordering::SeqCst);
            // Spread the paced workers' sends evenly over one interval.
            let mut next = interval
                .map(|iv| Instant::now() + iv.mul_f64(i as f64 / plan.workload.workers() as f64));
            let mut seq = 0u64;
            loop {
                if let (Some(iv), Some(at)) = (interval, next.as_mut()) {
                    let now = Instant::now();
                    if *at > now {
                        std::thread::sleep(*at - now);
                    }
                    // Keep the schedule, but do not burst to catch up after a stall.
                    *at = (*at + iv).max(Instant::now());
                }
                let phase = ctl.phase.load(Ordering::Relaxed);
                if phase == STOP {
                    break;
                }
                seq += 1;
                let started = Instant::now();
                match roundtrip(&mut conn, seq, &mut req) {
                    Ok(()) => out.done(ctl.phase.load(Ordering::Relaxed), started),
                    Err(e) => {
                        out.error(ctl.phase.load(Ordering::Relaxed), &e);
                        match connect(target) {
                            Ok((c, _)) => conn = c,
                            Err(e) => {
                                out.error(ctl.phase.load(Ordering::Relaxed), &e);
                                // Back off before the next try instead of spinning on a
                                // target that refuses.
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                }
            }
        }
        Workload::Udp { .. } => {
            let sock = UdpSocket::bind(("0.0.0.0", 0))?;
            sock.connect(target)?;
            sock.set_write_timeout(Some(IO_TIMEOUT))?;
            let mut buf = vec![0u8; 2048];
            // The first exchange, with retries (neighbours may still resolve): which task.
            sock.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut first = None;
            for _ in 0..10 {
                fill_request(&mut req, 0);
                sock.send(&req)?;
                if let Ok(n) = sock.recv(&mut buf)
                    && let Some(task) = banner_task(&buf[..n])
                {
                    first = Some(task);
                    break;
                }
            }
            let task = first.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no UDP answer from {target}"),
                )
            })?;
            *out.tasks.entry(task).or_default() += 1;
            sock.set_read_timeout(Some(UDP_TIMEOUT))?;
            ctl.ready.fetch_add(1, Ordering::SeqCst);
            let mut seq = 0u64;
            loop {
                let phase = ctl.phase.load(Ordering::Relaxed);
                if phase == STOP {
                    break;
                }
                seq += 1;
                let started = Instant::now();
                match udp_roundtrip(&sock, seq, &mut req, &mut buf) {
                    Ok(()) => out.done(ctl.phase.load(Ordering::Relaxed), started),
                    Err(e) => out.error(ctl.phase.load(Ordering::Relaxed), &e),
                }
            }
        }
    }
    Ok(out)
}

/// Writes the sequence number into the first 8 bytes; the rest is a fixed pattern.
fn fill_request(req: &mut [u8], seq: u64) {
    req[..8].copy_from_slice(&seq.to_be_bytes());
    for (j, b) in req[8..].iter_mut().enumerate() {
        *b = b'a' + (j % 26) as u8;
    }
}

/// The task name in a `task-echo` banner (`task=<name> peer=...`).
fn banner_task(data: &[u8]) -> Option<String> {
    let line = data.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("task="))
        .map(str::to_owned)
}

/// Connects and reads the banner; returns the stream and the task's name.
fn connect(target: SocketAddr) -> io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 128];
    // task-echo writes its banner on accept, before anything is sent: read exactly the
    // line (it arrives in one segment; anything after it would be ours, and there is none).
    while !line.contains(&b'\n') {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{target} closed before its banner"),
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > 512 {
            return Err(io::Error::other("banner too long"));
        }
    }
    let task = banner_task(&line).ok_or_else(|| io::Error::other("not a task-echo banner"))?;
    Ok((s, task))
}

fn roundtrip(conn: &mut TcpStream, seq: u64, req: &mut [u8]) -> io::Result<()> {
    fill_request(req, seq);
    conn.write_all(req)?;
    let mut back = [0u8; 256];
    let back = &mut back[..req.len().min(256)];
    conn.read_exact(back)?;
    if back[..8] != req[..8] {
        return Err(io::Error::other("echo out of sequence"));
    }
    Ok(())
}

/// Connect, banner, one request and its echo, close; returns the task's name.
fn one_connection(target: SocketAddr, seq: u64, req: &mut [u8]) -> io::Result<String> {
    let (mut conn, task) = connect(target)?;
    roundtrip(&mut conn, seq, req)?;
    drop(conn);
    Ok(task)
}

fn udp_roundtrip(sock: &UdpSocket, seq: u64, req: &mut [u8], buf: &mut [u8]) -> io::Result<()> {
    fill_request(req, seq);
    sock.send(req)?;
    loop {
        let n = sock.recv(buf)?;
        // The answer is the banner line, then our datagram: match its sequence number and
        // skip late answers to earlier (timed-out) requests.
        let data = &buf[..n];
        if let Some(nl) = data.iter().position(|&b| b == b'\n')
            && data.len() >= nl + 1 + 8
            && data[nl + 1..nl + 9] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
}

/// Linux's `USER_HZ`: the unit of `/proc/stat` and `/proc/<pid>/stat` times (100 on
/// every architecture the project runs on; it is part of the ABI, unlike `CONFIG_HZ`).
pub const USER_HZ: f64 = 100.0;

/// The machine-wide CPU times of `/proc/stat`'s `cpu` line, in `USER_HZ` ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// User time (with `nice`).
    pub user: u64,
    /// System time (kernel, process context).
    pub system: u64,
    /// Idle time (with iowait).
    pub idle: u64,
    /// Hardware interrupts.
    pub irq: u64,
    /// Softirqs (network receive processing, among others).
    pub softirq: u64,
    /// Time the hypervisor ran something else.
    pub steal: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`.
    ///
    /// # Errors
    ///
    /// Fails if `/proc/stat` cannot be read or has no `cpu` line.
    pub fn read() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let at = |k: usize| v.get(k).copied().unwrap_or(0);
        Ok(Self {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
        })
    }

    /// `self - earlier`, field by field.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    /// Busy time: user + system + irq + softirq (not idle, not steal).
    #[must_use]
    pub const fn busy(&self) -> u64 {
        self.user + self.system + self.irq + self.softirq
    }
}

/// Run time of a process, all its threads, in nanoseconds: the scheduler's own clock
/// (`/proc/<pid>/task/*/schedstat`), exact, unlike the tick-sampled `/proc/<pid>/stat`.
/// Threads that have exited are not counted.
///
/// # Errors
///
/// Fails if the process does not exist.
pub fn process_runtime_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Pids of the kernel's per-CPU softirq threads (`ksoftirqd/N`): softirq work that does
/// not fit in the context that raised it runs there.
#[must_use]
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// CPU time of a cgroup v2 group, from its `cpu.stat`, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupUsage {
    /// Total run time (exact: the scheduler's clock).
    pub usage_us: u64,
    /// Of which user time (the split is tick-sampled, scaled to the total).
    pub user_us: u64,
    /// Of which system time, including softirq work done in the group's tasks' context.
    pub system_us: u64,
}

impl GroupUsage {
    /// `self - earlier`, field by field.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            usage_us: self.usage_us.saturating_sub(earlier.usage_us),
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
        }
    }
}

/// A cgroup v2 group that this process moves into, so that its CPU time and that of
/// every process it starts afterwards (which inherit the group) can be told apart from
/// whatever else runs on the machine. Dropping it moves this process back to where it
/// was and removes the group (once the processes it started have exited).
#[derive(Debug)]
pub struct CpuGroup {
    dir: std::path::PathBuf,
    home: std::path::PathBuf,
    /// Whether this process moved itself into the group (and moves back on drop).
    entered: bool,
}

impl CpuGroup {
    /// Creates the group `<name>-<pid>` below this process's own cgroup v2 group and
    /// moves this process into it; removes empty `<name>-*` groups that killed runs
    /// left behind.
    ///
    /// # Errors
    ///
    /// Fails if no cgroup2 filesystem is mounted, or the group cannot be created or
    /// entered (not root, say).
    pub fn enter(name: &str) -> io::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let mount = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
            })
            .ok_or_else(|| io::Error::other("no cgroup2 filesystem is mounted"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| io::Error::other("this process has no cgroup v2 group"))?;
        let home = std::path::Path::new(&mount).join(rel.trim_start_matches('/'));
        // Groups that runs killed before their cleanup left behind: removing one fails
        // while a process is still in it, which is what we want.
        if let Ok(entries) = std::fs::read_dir(&home) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&format!("{name}-")))
                {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        // One group per process, so that a run that starts while another one is still
        // cleaning up never meets the other's group.
        let dir = home.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(Self {
            dir,
            home,
            entered: true,
        })
    }

    /// A second, empty group beside this one (`<name>-<pid>-<suffix>`), for processes
    /// to be counted apart with [`CpuGroup::adopt`]; removed on drop.
    ///
    /// # Errors
    ///
    /// Fails if the group cannot be created.
    pub fn sibling(&self, suffix: &str) -> io::Result<Self> {
        let mut name = self.dir.file_name().unwrap_or_default().to_owned();
        name.push(format!("-{suffix}"));
        let dir = self.home.join(name);
        std::fs::create_dir(&dir)?;
        Ok(Self {
            dir,
            home: self.home.clone(),
            entered: false,
        })
    }

    /// Moves a process, all its threads, into the group. Its children started later
    /// are born there.
    ///
    /// # Errors
    ///
    /// Fails if the process does not exist or cannot be moved.
    pub fn adopt(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// The group's CPU time so far.
    ///
    /// # Errors
    ///
    /// Fails if `cpu.stat` cannot be read.
    pub fn usage(&self) -> io::Result<GroupUsage> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        let field = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(GroupUsage {
            usage_us: field("usage_usec "),
            user_us: field("user_usec "),
            system_us: field("system_usec "),
        })
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        if self.entered {
            let _ = std::fs::write(
                self.home.join("cgroup.procs"),
                std::process::id().to_string(),
            );
        }
        // Processes that were started in the group may take a moment to be reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let o = Outcome {
            latencies_ns: (1..=100).map(|x| x * 1000).collect(),
            ..Outcome::default()
        };
        assert_eq!(o.percentile_us(50.0), Some(50.0));
        assert_eq!(o.percentile_us(99.0), Some(99.0));
        assert_eq!(o.percentile_us(100.0), Some(100.0));
        assert_eq!(Outcome::default().percentile_us(50.0), None);
    }

    #[test]
    fn banner() {
        assert_eq!(
            banner_task(b"task=web.2 peer=10.0.0.1:5\nxyz").as_deref(),
            Some("web.2")
        );
        assert_eq!(banner_task(b"hello\n"), None);
    }

    #[test]
    fn own_cpu_times() {
        let t = CpuTimes::read().unwrap();
        assert!(t.busy() + t.idle > 0);
        assert!(process_runtime_ns(std::process::id()).unwrap() > 0);
    }
}
