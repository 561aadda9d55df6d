//! The storage key's file, and unlocking the Raft store with it: the I/O
//! shell around [`super::seal`].
//!
//! Each manager has its own 256-bit storage key, in a file kept apart from
//! its data directory (by default the data directory's path with `.key`
//! appended: a sibling, not inside it). The file holds exactly the key's
//! 32 bytes and must be a regular file owned by the user the manager runs
//! as (root) and readable by its owner only (0600 or 0400); anything else
//! is refused. A store that was never sealed (a new
//! one, or one written by a manager without encryption at rest) is sealed
//! at its first open: with the key found at the path, or with a key created
//! there (0600, written to a temporary file, fsynced and renamed, so a
//! crash never leaves half a key). From then on the store's sealing record
//! (in `raft_meta`, sealed) says the store is sealed: without the key file,
//! or with another key, the store is not opened at all.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::log_store::{DbError, LOG, META, write_txn};
use super::seal::{KEY_LEN, SealError, Sealing, StorageKey, StoreSeal, snapshot_digest};
use super::state_machine::{SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META};

/// The `raft_meta` key of the store's sealing record.
const SEALING: &str = "sealing";

/// Why the storage key could not be read, created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store is sealed and the key file is not there.
    #[error(
        "the raft store is encrypted and its storage key {} is missing: start the manager with the \
         key it was created with (--storage-key-file); without it this manager cannot start \
         (remove the node from the cluster and join it again with an empty data directory)",
        .0.display()
    )]
    Missing(PathBuf),
    /// The key file holds another key than the one that sealed the store.
    #[error(
        "the storage key {} does not open the raft store (another key, or the store was altered); \
         start the manager with the key the store was created with",
        .0.display()
    )]
    Wrong(PathBuf),
    /// The key file may be read by others than its owner.
    #[error(
        "the storage key {} has mode {mode:04o}: it must be readable by its owner only (chmod 600)",
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user than the manager's.
    #[error(
        "the storage key {} is owned by uid {owner}, not by the user the manager runs as (uid {euid}): chown it",
        path.display()
    )]
    Owner {
        /// The key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The manager's effective user ID.
        euid: u32,
    },
    /// The key path is a directory, a device, a socket...
    #[error("the storage key {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// The key file is not exactly one key long.
    #[error(
        "the storage key {} holds {len} bytes: a storage key is exactly {KEY_LEN} bytes",
        path.display()
    )]
    Size {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// Reading or creating the key file failed.
    #[error("the storage key {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating a key or sealing the store's sealing record failed.
    #[error("sealing the raft store: {0}")]
    Seal(#[from] SealError),
    /// The database failed while reading or writing the sealing record.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the key file at `path`: `None` if there is none.
///
/// # Errors
/// [`KeyError`] when it is not a regular file, is readable by others than
/// its owner, is not exactly [`KEY_LEN`] bytes long, or cannot be read.
pub fn read_key_file(path: &Path) -> Result<Option<StorageKey>, KeyError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    if !meta.is_file() {
        return Err(KeyError::NotAFile(path.to_owned()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = effective_uid().map_err(io(path))?;
    if meta.uid() != euid {
        return Err(KeyError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| KeyError::Size {
        path: path.to_owned(),
        len: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
    })?;
    Ok(Some(StorageKey::from_bytes(key)))
}

/// The process's effective user ID: the owner of `/proc/self` (Linux
/// gives it the process's effective IDs), without `unsafe`.
fn effective_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Creates a new random key file at `path` (0600), atomically: written to
/// a temporary file beside it, fsynced, renamed, and the directory fsynced.
///
/// # Errors
/// [`KeyError`] when the random source fails or the file cannot be written
/// (e.g. its directory does not exist).
pub fn create_key_file(path: &Path) -> Result<StorageKey, KeyError> {
    let key = StorageKey::generate()?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(path))?;
    file.write_all(key.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(path))?;
    Ok(key)
}

/// Unlocks the store in `db` with the key in `key_file`, sealing the store
/// first if it never was (creating the key if there is none). What the log
/// store and the state machine then seal and open with.
///
/// # Errors
/// [`KeyError::Missing`] or [`KeyError::Wrong`] for a sealed store without
/// its key; the errors of [`read_key_file`] and [`create_key_file`]; a
/// database failure.
pub fn unlock(db: &Database, key_file: &Path) -> Result<StoreSeal, KeyError> {
    write_txn(db, |txn| {
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.open_table(SNAPSHOT)?;
        Ok(())
    })?;
    let stored = read_sealing(db)?;
    let key = read_key_file(key_file)?;
    match (stored, key) {
        (Some(record), Some(key)) => StoreSeal::from_record(&key, &record).map_err(|e| match e {
            SealError::Unopenable(_) => KeyError::Wrong(key_file.to_owned()),
            other => other.into(),
        }),
        (Some(_), None) => Err(KeyError::Missing(key_file.to_owned())),
        (None, key) => {
            let key = match key {
                Some(key) => {
                    tracing::info!(key_file = %key_file.display(), "sealing the raft store with the existing storage key");
                    key
                }
                None => {
                    let key = create_key_file(key_file)?;
                    tracing::info!(key_file = %key_file.display(), "created the storage key that seals the raft store");
                    key
                }
            };
            let sealing = legacy_extent(db)?;
            if sealing.has_legacy() {
                tracing::warn!(
                    sealed_from = sealing.sealed_from,
                    legacy_snapshot = sealing.legacy_snapshot.is_some(),
                    "the raft store holds records written unencrypted: they stay readable, \
                     and everything written from now on is encrypted"
                );
            }
            let seal = StoreSeal::new(&key, sealing);
            let record = seal.sealing_record()?;
            write_txn(db, |txn| {
                txn.open_table(META)?.insert(SEALING, record.as_slice())?;
                Ok(())
            })?;
            Ok(seal)
        }
    }
}

/// The stored sealing record, if the store was sealed.
fn read_sealing(db: &Database) -> Result<Option<Vec<u8>>, DbError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    Ok(table.get(SEALING)?.map(|v| v.value().to_vec()))
}

/// What of a never-sealed store is unsealed: the log up to its last entry,
/// and the stored snapshot.
fn legacy_extent(db: &Database) -> Result<Sealing, DbError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let sealed_from = log.last()?.map_or(0, |(k, _)| k.value().saturating_add(1));
    let snapshot = txn.open_table(SNAPSHOT)?;
    let legacy_snapshot = match (snapshot.get(SNAPSHOT_META)?, snapshot.get(SNAPSHOT_DATA)?) {
        (Some(meta), Some(data)) => Some(snapshot_digest(meta.value(), data.value())),
        _ => None,
    };
    Ok(Sealing {
        sealed_from,
        legacy_snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_support::TestDir;

    fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_created_key_file_is_private_and_reads_back() {
        let dir = TestDir::new("key-create");
        let path = dir.path().join("manager.key");
        assert!(read_key_file(&path).unwrap().is_none());
        let key = create_key_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(read_key_file(&path).unwrap(), Some(key));
        assert!(!dir.path().join("manager.key.tmp").exists());
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = TestDir::new("key-mode");
        let path = dir.path().join("k");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            write_mode(&path, &[7; 32], mode);
            let err = read_key_file(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "the storage key {} has mode {mode:04o}: it must be readable by its owner only (chmod 600)",
                    path.display()
                )
            );
        }
        write_mode(&path, &[7; 32], 0o400);
        assert!(read_key_file(&path).unwrap().is_some());
    }

    #[test]
    fn a_key_file_of_another_size_or_kind_is_refused() {
        let dir = TestDir::new("key-size");
        let path = dir.path().join("k");
        for len in [0, 31, 33, 64] {
            write_mode(&path, &vec![7; len], 0o600);
            assert!(
                matches!(read_key_file(&path), Err(KeyError::Size { len: l, .. }) if l == len as u64),
                "{len} bytes"
            );
        }
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(read_key_file(&sub), Err(KeyError::NotAFile(_))));
    }

    #[test]
    fn a_key_file_of_another_user_is_refused() {
        let dir = TestDir::new("key-owner");
        let path = dir.path().join("k");
        write_mode(&path, &[7; 32], 0o600);
        let me = effective_uid().unwrap();
        assert_eq!(me, std::fs::metadata(&path).unwrap().uid());
        assert!(read_key_file(&path).unwrap().is_some());
        // Only root may give a file away; as another user, there is
        // nothing more to check.
        if std::os::unix::fs::chown(&path, Some(65534), None).is_ok() {
            let err = read_key_file(&path).unwrap_err();
            assert!(
                matches!(err, KeyError::Owner { owner: 65534, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("chown it"), "{err}");
        }
    }

    #[test]
    fn creating_a_key_in_a_missing_directory_fails_naming_it() {
        let dir = TestDir::new("key-nodir");
        let path = dir.path().join("absent").join("k");
        let err = create_key_file(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
