//! A task's main process as `/proc` shows it: whether a PID really is a given task's
//! process (not another that got the same PID), and waiting for a process that is not
//! the agent's child to end.
//!
//! **Identity.** A PID is task `T`'s main process when the process is alive (not a
//! zombie), its environment holds `MESH_TASK_ID=<T>` (every task gets it, see
//! [`crate::runtime::task::task_env`]), and, when its record names one, its start time
//! (field 22 of `/proc/<pid>/stat`, clock ticks since boot) is the recorded one.
//!
//! **Waiting.** A process the agent did not spawn (an adopted task, whose parent was the
//! previous agent run) cannot be `wait()`ed for. [`wait_exit`] holds a *pidfd*
//! (`pidfd_open(2)`, Linux 5.3) of it, which becomes readable when the process ends; the
//! descriptor keeps naming that very process even if its PID is reused afterwards, so
//! no later look can mistake another process for it (polling `/proc/<pid>` alone would
//! have to re-check the start time every time). Opening the pidfd *before* checking the
//! identity closes the last race: the process the check found to be the task is the one
//! the pidfd watches. Its exit code is lost (only a parent can read it).

use std::os::fd::OwnedFd;
use std::time::Duration;

use mesh_api::task::TaskId;

/// What `/proc/<pid>/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its parent's PID.
    pub ppid: i32,
    /// Its start time in clock ticks since boot.
    pub start: u64,
}

impl Stat {
    /// Whether it has ended (a zombie, or dead).
    #[must_use]
    pub fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may
/// hold spaces and parentheses (so the fields are counted after the *last* `)`).
#[must_use]
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// The `/proc/<pid>/stat` of a process, if it exists.
#[must_use]
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The task ID a process environment (`/proc/<pid>/environ`: `KEY=VALUE` pairs
/// separated by NULs) names in `MESH_TASK_ID`.
#[must_use]
pub fn environ_task_id(environ: &[u8]) -> Option<TaskId> {
    environ.split(|&b| b == 0).find_map(|kv| {
        let hex = kv.strip_prefix(b"MESH_TASK_ID=")?;
        TaskId::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    })
}

/// A process's environment as `KEY=VALUE` pairs (empty if it cannot be read).
#[must_use]
pub fn environ(pid: i32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is task `id`'s live main process (see the module documentation);
/// `start`, when known, must be its start time.
#[must_use]
pub fn is_task_process(pid: i32, id: TaskId, start: Option<u64>) -> bool {
    let Some(stat) = stat(pid) else {
        return false;
    };
    if stat.ended() || start.is_some_and(|s| s != stat.start) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|e| environ_task_id(&e))
        == Some(id)
}

/// Whether `pid` is a task's `lb-agent task-init` ([`super::init`]): PID 1 of its own
/// PID namespace, running `task-init`.
#[must_use]
pub fn is_task_init(pid: i32) -> bool {
    let first_pid_1 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|ids| ids.split_whitespace().last() == Some("1"))
        })
        .unwrap_or(false);
    first_pid_1
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|line| line.split(|b| *b == 0).nth(1) == Some(b"task-init".as_slice()))
}

/// A pidfd of `pid` (see the module documentation).
///
/// # Errors
/// If there is no such process, or the kernel has no `pidfd_open` (before 5.3).
pub fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::NONBLOCK,
    )?)
}

/// How often [`wait_exit`] looks whether the process has ended.
pub const WAIT_POLL: Duration = Duration::from_millis(250);

/// Whether the process of `pidfd` has ended (`poll(2)` with a zero timeout: a pidfd is
/// readable once its process has ended). An error counts as not ended.
#[must_use]
pub fn pidfd_ended(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0)
}

/// Returns once the process ends: looks every [`WAIT_POLL`] whether `pidfd` (of that
/// process) has become readable, or, without one, whether `/proc` still shows a live
/// process with `pid` and start time `start`.
///
/// Not registered with tokio's reactor: since tokio 1.54 that registration
/// (`AsyncFd::register`) is `unsafe`, which this crate denies; a quarter of a second to
/// notice that an adopted task ended is immaterial (its node's flows went with it).
pub async fn wait_exit(pid: i32, start: u64, pidfd: Option<OwnedFd>) {
    loop {
        let ended = match &pidfd {
            Some(fd) => pidfd_ended(fd),
            None => stat(pid).is_none_or(|s| s.ended() || s.start != start),
        };
        if ended {
            return;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 12345678 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                ppid: 1,
                start: 987_654
            })
        );
        let zombie = "7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(zombie).unwrap().ended());
        assert_eq!(parse_stat("7 (sh) S 1 2"), None, "too short");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn environments_name_their_task() {
        assert_eq!(
            environ_task_id(b"PATH=/bin\0MESH_TASK_ID=000000000000002a\0MESH_TASK_NAME=web.1\0"),
            Some(0x2a)
        );
        assert_eq!(environ_task_id(b"PATH=/bin\0"), None);
        assert_eq!(environ_task_id(b"MESH_TASK_ID=zz\0"), None);
        assert_eq!(environ_task_id(b""), None);
    }

    /// A real process: it is the task its environment names, with its own start time,
    /// and no longer once it has ended; the pidfd wait sees its end.
    #[tokio::test]
    async fn a_live_process_is_recognised_and_its_end_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("MESH_TASK_ID", format!("{:016x}", 0x77))
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).unwrap();
        // Its environment shows once exec has set it up (`spawn` may return a moment
        // earlier).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_task_process(pid, 0x77, None) {
            assert!(
                std::time::Instant::now() < deadline,
                "the process never showed its task"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let me = stat(pid).expect("its stat");
        assert!(!me.ended());
        assert_eq!(me.ppid, i32::try_from(std::process::id()).unwrap());
        assert!(is_task_process(pid, 0x77, None));
        assert!(is_task_process(pid, 0x77, Some(me.start)));
        assert!(!is_task_process(pid, 0x78, None), "another task's ID");
        assert!(
            !is_task_process(pid, 0x77, Some(me.start + 1)),
            "another start"
        );
        assert!(
            !is_task_process(i32::try_from(std::process::id()).unwrap(), 0x77, None),
            "a process without the task's environment"
        );
        assert_eq!(
            environ(pid)
                .iter()
                .find(|(k, _)| k == "MESH_TASK_ID")
                .map(|(_, v)| v.as_str()),
            Some("0000000000000077")
        );

        let fd = pidfd(pid).expect("pidfd_open");
        assert!(!pidfd_ended(&fd));
        let mut waiting = tokio::spawn(wait_exit(pid, me.start, Some(fd)));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                .await
                .is_err(),
            "the process still runs"
        );
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the end seen")
            .unwrap();
        // A zombie (not reaped yet) is no live task process.
        assert!(!is_task_process(pid, 0x77, Some(me.start)));
        child.wait().unwrap();
        assert!(!is_task_process(pid, 0x77, Some(me.start)));
        // Without a pidfd: /proc says it is gone.
        tokio::time::timeout(Duration::from_secs(10), wait_exit(pid, me.start, None))
            .await
            .expect("the end seen without a pidfd");
    }
}
