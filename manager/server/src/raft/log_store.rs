//! The Raft log, the vote and the committed/purged markers, in redb.
//!
//! One redb database file holds the log (table `raft_log`, key = log index,
//! value = the entry in [`mesh_api::codec`]'s compact encoding, sealed with
//! the storage key: [`super::seal`]), a small metadata table (`raft_meta`:
//! vote, committed log id, last purged log id, in the same encoding, in
//! clear, and the store's sealing record) and, written by the
//! state machine, the latest snapshot (sealed too). Votes, appends,
//! truncations, purges and snapshots commit with [`Durability::Immediate`]
//! (fsync) before openraft is told they are done, so an acknowledged vote or
//! log entry survives a crash.
//!
//! One append is one transaction and one fsync. openraft 0.9 waits for
//! each append to be on disk before it appends again, so there is nothing
//! for a group commit below it to gather: the grouping happens above, where
//! the leader's proposer puts the writes that arrive together into one
//! entry ([`super::proposer`]), and a follower gets each `AppendEntries`'
//! entries in one append. The committed marker is committed without fsync
//! (see [`RaftLogStorage::save_committed`] below).
//!
//! Entries and metadata written as JSON (before the compact encoding) are
//! still read: [`codec::decode`] tells the two apart.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::seal::{SealError, StoreSeal};
use super::types::{Entry, TypeConfig};
use mesh_api::codec::{self, CodecError};
use mesh_api::node::NodeId;

/// Log entries by index, encoded ([`codec`]) and sealed.
pub(crate) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
/// Vote, committed and last purged log ids, encoded ([`codec`]).
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// A failure of the redb database or of (de)serialising what it holds.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// redb failed.
    #[error("raft database: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value does not decode as its type, or a value could not be
    /// encoded.
    #[error("raft database: bad stored value: {0}")]
    Codec(#[from] CodecError),
    /// The blocking task running a database write panicked or was cancelled.
    #[error("raft database: write task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A stored record does not open with the storage key, or one could
    /// not be sealed.
    #[error("raft database: {0}")]
    Seal(#[from] SealError),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(e.into())
            }
        }
    )*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Wraps a [`DbError`] as openraft's storage error for `subject` and `verb`.
pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &DbError,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

/// Runs one durable write transaction: `f` fills it, then it is committed
/// with immediate durability (fsync).
pub(crate) fn write_txn<T>(
    db: &Database,
    f: impl FnOnce(&WriteTransaction) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let out = f(&txn)?;
    txn.commit()?;
    Ok(out)
}

/// Runs a blocking database job on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f).await?
}

fn put_meta<T: Serialize>(txn: &WriteTransaction, key: &str, value: &T) -> Result<(), DbError> {
    let bytes = codec::encode(value)?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// The redb-backed Raft log. Cheap to clone: clones share the database.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
    /// Seals the entries written, opens those read.
    seal: Arc<StoreSeal>,
    /// The last committed index openraft saved, for metrics (0 = none).
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    /// Opens the log in `db`, creating its tables if needed; entries are
    /// sealed and opened with `seal`.
    ///
    /// # Errors
    /// [`DbError`] when the tables cannot be created.
    pub fn new(db: Arc<Database>, seal: Arc<StoreSeal>) -> Result<Self, DbError> {
        write_txn(&db, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(Self {
            db,
            seal,
            committed: Arc::default(),
        })
    }

    /// The highest log index known committed (as last saved by openraft),
    /// shared: it stays readable without holding the database open.
    #[must_use]
    pub fn committed_index(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.committed)
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for row in table.range::<u64>(range)? {
            let (k, v) = row?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        match table.last()? {
            Some((k, v)) => Ok(Some(self.decode(k.value(), v.value())?)),
            None => Ok(None),
        }
    }

    /// The entry stored at `index`, opened and decoded (JSON, as written
    /// before the compact encoding, included).
    fn decode(&self, index: u64, record: &[u8]) -> Result<Entry, DbError> {
        Ok(codec::decode(&self.seal.open_entry(index, record)?)?)
    }

    /// `entry` as stored: encoded ([`codec`]), sealed for its index.
    fn encode(seal: &StoreSeal, entry: &Entry) -> Result<(u64, Vec<u8>), DbError> {
        let index = entry.log_id.index;
        Ok((index, seal.seal_entry(index, &codec::encode(entry)?)?))
    }

    /// The last purged log id, if any.
    ///
    /// # Errors
    /// [`DbError`] on a database failure.
    pub fn last_purged(&self) -> Result<Option<LogId<NodeId>>, DbError> {
        self.meta(LAST_PURGED)
    }

    /// The id of the last entry in the log (or the last purged one when
    /// the log is empty).
    ///
    /// # Errors
    /// [`DbError`] on a database failure.
    pub fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, DbError> {
        match self.last_entry()? {
            Some(e) => Ok(Some(e.log_id)),
            None => self.last_purged(),
        }
    }

    /// The saved vote, if any.
    ///
    /// # Errors
    /// [`DbError`] on a database failure.
    pub fn vote(&self) -> Result<Option<Vote<NodeId>>, DbError> {
        self.meta(VOTE)
    }

    /// Entries from `from` (inclusive) to the end of the log.
    ///
    /// # Errors
    /// [`DbError`] on a database failure.
    pub fn entries_from(&self, from: u64) -> Result<Vec<Entry>, DbError> {
        self.entries((Bound::Included(from), Bound::Unbounded))
    }

    /// Appends `entries` and saves `vote` in one durable transaction,
    /// outside openraft (used to force a new cluster before starting it).
    /// With `purged`, the log up to it is purged in the same transaction
    /// (when a snapshot is ahead of the log, the log must resume after it).
    ///
    /// # Errors
    /// [`DbError`] on a database failure.
    pub fn append_with_vote(
        &self,
        entries: &[Entry],
        vote: &Vote<NodeId>,
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), DbError> {
        write_txn(&self.db, |txn| {
            {
                let mut table = txn.open_table(LOG)?;
                if let Some(purged) = purged {
                    table.retain_in::<u64, _>(..=purged.index, |_, _| false)?;
                }
                for e in entries {
                    let (index, bytes) = Self::encode(&self.seal, e)?;
                    table.insert(index, bytes.as_slice())?;
                }
            }
            if let Some(purged) = purged {
                put_meta(txn, LAST_PURGED, &purged)?;
            }
            put_meta(txn, VOTE, vote)
        })
    }

    async fn put_meta_durable<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), DbError> {
        let bytes = codec::encode(value)?;
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |txn| {
                txn.open_table(META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(bounds)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = || -> Result<_, DbError> {
            let last_purged = self.last_purged()?;
            let last = self.last_entry()?.map(|e| e.log_id).or(last_purged);
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta_durable(VOTE, vote)
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.vote()
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(log_id) = committed {
            self.committed
                .fetch_max(log_id.index, std::sync::atomic::Ordering::Relaxed);
        }
        // Not fsynced: the committed marker only saves re-applying entries
        // after a restart. If it is lost, the node applies from its snapshot
        // and learns the commit index from the leader again; nothing that
        // was acknowledged depends on it (the entries themselves are
        // durable). One fsync per commit fewer. (Not deferred to the next
        // append either: a lone manager restarting without a quorum rebuilds
        // its state up to this marker.)
        let bytes = codec::encode(&committed)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &DbError::from(e)))?;
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            txn.open_table(META)?.insert(COMMITTED, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e: DbError| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = self
            .meta::<Option<LogId<NodeId>>>(COMMITTED)
            .map(Option::flatten)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        if let Some(log_id) = committed {
            self.committed
                .fetch_max(log_id.index, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| Self::encode(&self.seal, &e))
            .collect::<Result<Vec<_>, DbError>>();
        let db = self.db.clone();
        let result = match rows {
            Ok(rows) => {
                blocking(move || {
                    write_txn(&db, |txn| {
                        {
                            let mut table = txn.open_table(LOG)?;
                            for (index, bytes) in &rows {
                                table.insert(*index, bytes.as_slice())?;
                            }
                        }
                        Ok(())
                    })
                })
                .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |txn| {
                let mut table = txn.open_table(LOG)?;
                table.retain_in::<u64, _>(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |txn| {
                put_meta(txn, LAST_PURGED, &log_id)?;
                let mut table = txn.open_table(LOG)?;
                table.retain_in::<u64, _>(..=log_id.index, |_, _| false)?;
                Ok(())
            })
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
