//! Watching the configuration file for changes.
//!
//! The watch is on the file's DIRECTORY, not the file: editors and configuration
//! managers often write a new file and rename it over the old one, which a watch on the
//! old inode would miss. Events are filtered by file name and kind (reads are ignored, so
//! the agent's own reading of the file does not trigger a reload); the agent debounces
//! what passes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;

/// Whether an event of `kind` on `paths` may have changed the file called `name`.
#[must_use]
pub fn is_relevant(kind: &EventKind, paths: &[PathBuf], name: &OsString) -> bool {
    let kind_matters = match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Other | EventKind::Any => false,
    };
    kind_matters
        && paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()))
}

/// Starts watching `path`'s directory; sends `()` on `tx` for every relevant event. The
/// watch lasts as long as the returned watcher.
///
/// # Errors
/// If the watch cannot be set up (e.g. the directory does not exist).
pub fn watch(path: &Path, tx: UnboundedSender<()>) -> notify::Result<RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned).unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && is_relevant(&ev.kind, &ev.paths, &name)
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RenameMode};

    #[test]
    fn relevant_events() {
        let name = OsString::from("agent.toml");
        let file = vec![PathBuf::from("/etc/mesh/agent.toml")];
        let other = vec![PathBuf::from("/etc/mesh/.agent.toml.swp")];
        assert!(is_relevant(
            &EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &file,
            &name
        ));
        assert!(is_relevant(
            &EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &file,
            &name
        ));
        assert!(is_relevant(
            &EventKind::Create(CreateKind::File),
            &file,
            &name
        ));
        assert!(!is_relevant(
            &EventKind::Access(AccessKind::Any),
            &file,
            &name
        ));
        assert!(!is_relevant(
            &EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            &file,
            &name
        ));
        assert!(!is_relevant(
            &EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &other,
            &name
        ));
    }

    #[tokio::test]
    async fn sees_rename_over_the_file() {
        let dir = std::env::temp_dir().join(format!("lb-agent-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.toml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch(&file, tx).unwrap();
        let tmp = dir.join("agent.toml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.unwrap(), Some(()));
    }
}
