//! Task records: the file a runtime writes under `<state dir>/tasks/<task id>.task`
//! before it starts a task, so that a later agent run finds what this one left
//! (to adopt it, or to remove it).
//!
//! A record is a few `key=value` lines:
//!
//! ```text
//! runtime=process
//! pid=4242
//! start=123456
//! ```
//!
//! `runtime` is the runtime that started the task; `pid` and `start` (the process's
//! start time in clock ticks since boot, field 22 of `/proc/<pid>/stat`) name a process
//! task's main process once it has been spawned, so that a later run can tell that very
//! process from another that got the same PID. A record of an earlier version holds the
//! runtime's name alone (`process`), which still parses.

use std::path::{Path, PathBuf};

use mesh_api::spec::RuntimeKind;
use mesh_api::task::TaskId;

use super::error::{RuntimeError, failed};

/// A process task's main process, as its record names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MainProcess {
    /// Its PID.
    pub pid: i32,
    /// Its start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// What a record says of a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The runtime that started it.
    pub kind: RuntimeKind,
    /// A process task's main process, once spawned.
    pub main: Option<MainProcess>,
}

impl Record {
    /// The record's text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = format!("runtime={}\n", self.kind);
        if let Some(m) = self.main {
            s.push_str(&format!("pid={}\nstart={}\n", m.pid, m.start));
        }
        s
    }

    /// Reads a record's text. Unknown keys and malformed lines are skipped; a runtime
    /// that does not parse is the default one (process); `pid` without `start` (or the
    /// reverse) names no process.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut kind = None;
        let (mut pid, mut start) = (None, None);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once('=') {
                Some(("runtime", v)) => kind = v.trim().parse().ok(),
                Some(("pid", v)) => pid = v.trim().parse::<i32>().ok().filter(|p| *p > 0),
                Some(("start", v)) => start = v.trim().parse().ok(),
                Some(_) => {}
                // The earlier format: the runtime's name alone.
                None => kind = kind.or_else(|| line.parse().ok()),
            }
        }
        Self {
            kind: kind.unwrap_or_default(),
            main: pid
                .zip(start)
                .map(|(pid, start)| MainProcess { pid, start }),
        }
    }
}

/// The record of task `id` under `state_dir`.
#[must_use]
pub fn path(state_dir: &Path, id: TaskId) -> PathBuf {
    state_dir.join("tasks").join(format!("{id:016x}.task"))
}

/// Writes (or replaces) the record of task `id`.
///
/// # Errors
/// If the file cannot be written.
pub fn write(state_dir: &Path, id: TaskId, record: &Record) -> Result<(), RuntimeError> {
    let path = path(state_dir, id);
    // Written aside and renamed over: a crash never leaves half a record.
    let tmp = path.with_extension("task.tmp");
    std::fs::write(&tmp, record.render())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(failed(format!("write {}", path.display())))
}

/// Removes the record of task `id` (a missing one is fine).
pub fn remove(state_dir: &Path, id: TaskId) {
    let _ = std::fs::remove_file(path(state_dir, id));
}

/// The tasks recorded under `state_dir`, by ID.
///
/// # Errors
/// If the directory cannot be read.
pub fn list(state_dir: &Path) -> Result<Vec<(TaskId, Record)>, RuntimeError> {
    let dir = state_dir.join("tasks");
    let entries = std::fs::read_dir(&dir).map_err(failed(format!("read {}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".task"))
            .and_then(|h| TaskId::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.push((id, Record::parse(&text)));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let docker = Record {
            kind: RuntimeKind::Docker,
            main: None,
        };
        assert_eq!(Record::parse(&docker.render()), docker);
        let process = Record {
            kind: RuntimeKind::Process,
            main: Some(MainProcess {
                pid: 4242,
                start: 987_654_321,
            }),
        };
        assert_eq!(
            process.render(),
            "runtime=process\npid=4242\nstart=987654321\n"
        );
        assert_eq!(Record::parse(&process.render()), process);
    }

    #[test]
    fn earlier_and_damaged_records_parse() {
        // The earlier format: the runtime's name alone.
        assert_eq!(Record::parse("docker").kind, RuntimeKind::Docker);
        assert_eq!(Record::parse("process\n"), Record::default());
        // Nothing usable: the process runtime, no main process.
        assert_eq!(Record::parse(""), Record::default());
        assert_eq!(Record::parse("runtime=podman\nfoo=1"), Record::default());
        // Half a main process, or a nonsensical PID, names none.
        assert_eq!(Record::parse("runtime=process\npid=12").main, None);
        assert_eq!(Record::parse("runtime=process\nstart=12").main, None);
        assert_eq!(Record::parse("pid=0\nstart=5").main, None);
        assert_eq!(Record::parse("pid=-3\nstart=5").main, None);
        assert_eq!(
            Record::parse(" runtime=docker \n\n pid=7\nstart=9 \n"),
            Record {
                kind: RuntimeKind::Docker,
                main: Some(MainProcess { pid: 7, start: 9 }),
            }
        );
    }

    #[test]
    fn records_are_listed_by_task() {
        let dir = std::env::temp_dir().join(format!("lb-agent-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tasks")).unwrap();
        let rec = Record {
            kind: RuntimeKind::Process,
            main: Some(MainProcess { pid: 1, start: 2 }),
        };
        write(&dir, 0xb, &rec).unwrap();
        write(&dir, 0xa, &Record::default()).unwrap();
        std::fs::write(dir.join("tasks/000000000000000a.log"), "not a record").unwrap();
        std::fs::write(dir.join("tasks/agent.lock"), "").unwrap();
        assert_eq!(
            list(&dir).unwrap(),
            vec![(0xa, Record::default()), (0xb, rec)]
        );
        remove(&dir, 0xa);
        remove(&dir, 0xa);
        assert_eq!(list(&dir).unwrap(), vec![(0xb, rec)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
