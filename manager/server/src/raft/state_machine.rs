//! The Raft state machine: the in-memory [`ClusterState`] plus the last
//! applied log id and membership, with snapshots persisted in redb.
//!
//! Applying an entry runs [`ClusterState::apply`]; its result, including a
//! refused command's [`StateError`](mesh_core::state::StateError), is the
//! entry's response: a refusal is a deterministic outcome every replica
//! shares, not a storage failure. A snapshot is the state in
//! [`mesh_api::codec`]'s compact encoding (one written as JSON before it
//! still loads, and so does one a leader from before it sends); its
//! metadata and data are sealed with the storage key ([`super::seal`]: the
//! data bound to the snapshot's ID), written to the `raft_snapshot` table
//! of the same database in one durable transaction, and loaded back when
//! the manager restarts (openraft then re-applies the committed log tail).
//! In memory, and sent to a follower, a snapshot is in clear.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::log_store::{DbError, blocking, storage_error, write_txn};
use super::seal::StoreSeal;
use super::types::{Entry, TypeConfig};
use mesh_api::codec;
use mesh_api::node::NodeId;
use mesh_core::state::{Applied, ClusterState, Response, SharedState};

/// The latest snapshot: `meta` and `data` (the state), each encoded
/// ([`codec`]) and sealed.
pub(crate) const SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_snapshot");
pub(crate) const SNAPSHOT_META: &str = "meta";
pub(crate) const SNAPSHOT_DATA: &str = "data";

type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// What has been applied to the state: updated together with the state,
/// under the state's write lock, so a reader holding the state's read lock
/// sees both consistently.
#[derive(Clone, Debug, Default)]
struct AppliedInfo {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
}

/// The state machine. Cheap to clone: clones (and the snapshot builder)
/// share the state and the database.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    state: SharedState,
    /// The state's version after every apply or snapshot install.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    applied: Arc<Mutex<AppliedInfo>>,
    db: Arc<Database>,
    /// Seals the snapshots written, opens the one read.
    seal: Arc<StoreSeal>,
    snapshot_seq: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StateMachineStore {
    /// Opens the state machine on `db`: creates the snapshot table if needed
    /// and, if a snapshot is stored, opens it with `seal` and loads it into
    /// `state`.
    ///
    /// # Errors
    /// [`DbError`] when the database fails or the stored snapshot is corrupt
    /// or does not open.
    pub fn open(
        db: Arc<Database>,
        state: SharedState,
        seal: Arc<StoreSeal>,
    ) -> Result<Self, DbError> {
        write_txn(&db, |txn| {
            txn.open_table(SNAPSHOT)?;
            Ok(())
        })?;
        let sm = Self {
            state,
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            applied: Arc::default(),
            db,
            seal,
            snapshot_seq: Arc::default(),
        };
        if let Some((meta, data)) = sm.read_snapshot()? {
            let restored: ClusterState = codec::decode(&data)?;
            sm.replace(&meta, restored);
        }
        Ok(sm)
    }

    /// The state that [`apply`](RaftStateMachine::apply) writes.
    #[must_use]
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Announces the state's version after every change (commands applied,
    /// a snapshot installed): what the leader's loops and the dispatcher
    /// wait on.
    #[must_use]
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The last applied log id and membership.
    fn applied_info(&self) -> AppliedInfo {
        let _state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        lock(&self.applied).clone()
    }

    fn replace(&self, meta: &Meta, new_state: ClusterState) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        *state = new_state;
        self.changed.send_replace(state.version);
        *lock(&self.applied) = AppliedInfo {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
    }

    fn read_snapshot(&self) -> Result<Option<(Meta, Vec<u8>)>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let meta = table.get(SNAPSHOT_META)?;
        let data = table.get(SNAPSHOT_DATA)?;
        let (Some(meta), Some(data)) = (meta, data) else {
            return Ok(None);
        };
        let opened = self
            .seal
            .open_snapshot(meta.value(), data.value(), |plain| {
                let meta: Meta = codec::decode(plain)?;
                Ok::<_, DbError>(meta.snapshot_id)
            })?;
        let meta: Meta = codec::decode(&opened.meta)?;
        Ok(Some((meta, opened.data.into_owned())))
    }

    async fn save_snapshot(&self, meta: &Meta, data: Vec<u8>) -> Result<(), DbError> {
        let (meta, data) =
            self.seal
                .seal_snapshot(&meta.snapshot_id, &codec::encode(meta)?, &data)?;
        crate::metrics::record_snapshot_bytes(meta.len() + data.len());
        let db = self.db.clone();
        blocking(move || {
            write_txn(&db, |txn| {
                let mut table = txn.open_table(SNAPSHOT)?;
                table.insert(SNAPSHOT_META, meta.as_slice())?;
                table.insert(SNAPSHOT_DATA, data.as_slice())?;
                Ok(())
            })
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let err = |e: &DbError| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e);
        let (data, info) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            let data = codec::encode(&*state).map_err(|e| err(&e.into()))?;
            (data, lock(&self.applied).clone())
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match info.last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
            None => format!("none-{seq}"),
        };
        let meta = Meta {
            last_log_id: info.last_applied,
            last_membership: info.last_membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, data.clone())
            .await
            .map_err(|e| err(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let info = self.applied_info();
        Ok((info.last_applied, info.last_membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let mut applied = lock(&self.applied);
        let mut out = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Ok(Applied::Done),
                EntryPayload::Normal(ref command) => state.apply(command),
                EntryPayload::Membership(ref m) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Ok(Applied::Done)
                }
            };
            out.push(response);
        }
        self.changed.send_replace(state.version);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let err = |e: &DbError| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let data = snapshot.into_inner();
        let new_state: ClusterState = codec::decode(&data).map_err(|e| err(&e.into()))?;
        self.save_snapshot(meta, data).await.map_err(|e| err(&e))?;
        self.replace(meta, new_state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self
            .read_snapshot()
            .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
