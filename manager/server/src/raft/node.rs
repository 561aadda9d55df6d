//! [`RaftNode`]: the facade the manager uses over openraft, its redb storage
//! and its gRPC network: start, bootstrap, writes (forwarded to the leader
//! from followers), reads once a quorum is known, membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::error::{ClientWriteError, Fatal};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, ChangeMembers, CommittedLeaderId, LogId, Membership, SnapshotPolicy, Vote,
};
use tokio::time::Instant;

use mesh_api::codec;
use mesh_api::node::{NodeId, format_id};

use mesh_client::pki::{create_private_dir, create_private_file};

use super::failover::{self, LeaderContact};
use super::log_store::{DbError, LogStore};
use super::network::{Connector, Network};
use super::proposer::{BatchLimits, Proposer};
use super::reachability::ManagerView;
use super::seal::StoreSeal;
use super::state_machine::StateMachineStore;
use super::storage_key::{self, KeyError};
use super::types::{Entry, MeshRaft, Metrics};

use mesh_core::state::{self, Command, SharedState};

/// The database file in a manager's data directory.
pub const DB_FILE: &str = mesh_client::state_dir::RAFT_DB;

/// Timing and snapshot settings.
///
/// The defaults are for managers on one LAN (sub-millisecond RTT, fsync in
/// milliseconds): a 100 ms heartbeat, and an election timeout drawn from
/// 600-1200 ms. openraft adds the leader's lease (the longest election
/// timeout) before a follower elects, so a follower tolerates 1.8-2.4 s of
/// silence (a busy disk, a stalled host) before it starts an election; a
/// leader whose process died is replaced much sooner, on the positive
/// signal of its refused address ([`super::failover`]), two heartbeats
/// after its last word. Snapshots every 1000
/// entries keep restarts fast (the cluster state is small); 500 entries
/// stay in the log after a snapshot so a briefly lagging follower catches
/// up from the log rather than by snapshot.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Leader heartbeat interval; also the append-entries RPC timeout.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_max: Duration,
    /// When to build a snapshot, e.g. `SnapshotPolicy::LogsSinceLast(1000)`.
    pub snapshot_policy: SnapshotPolicy,
    /// Entries kept in the log after a snapshot (the rest are purged).
    pub logs_to_keep: u64,
    /// How long a write waits for a leader and for its commit before it
    /// fails with [`WriteError::NoLeader`] or [`WriteError::NoQuorum`].
    pub write_timeout: Duration,
    /// How long a membership change (adding, removing a voter) may take.
    pub membership_timeout: Duration,
    /// How the leader gathers concurrent writes into entries
    /// ([`super::proposer`]).
    pub batch: BatchLimits,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(600),
            election_max: Duration::from_millis(1200),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            logs_to_keep: 500,
            write_timeout: Duration::from_secs(5),
            membership_timeout: Duration::from_secs(10),
            batch: BatchLimits::default(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RaftTuning {
    fn config(&self) -> Result<openraft::Config, RaftError> {
        openraft::Config {
            cluster_name: "mesh".to_owned(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: 2000,
            snapshot_policy: self.snapshot_policy.clone(),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            snapshot_max_chunk_size: 512 * 1024,
            // Entries are batches of up to 256 KiB (`BatchLimits`): 32 of
            // them stay well inside one gRPC message.
            max_payload_entries: 32,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| RaftError::Config(Box::new(e)))
    }
}

/// Why the Raft node could not be opened, initialised or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The data directory could not be created.
    #[error("raft data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database file could not be opened (e.g. another process holds it).
    #[error("raft database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: redb::DatabaseError,
    },
    /// Reading or writing the database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The storage key is missing, wrong, or its file is unfit.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The tuning is not a valid openraft configuration.
    #[error("invalid raft settings: {0}")]
    Config(Box<openraft::ConfigError>),
    /// openraft could not start or stopped with an error.
    #[error("raft stopped: {0}")]
    Fatal(Box<Fatal<NodeId>>),
    /// `initialize` on a node that already has Raft state.
    #[error("this manager already belongs to a cluster (its raft log is not empty)")]
    AlreadyInitialized,
    /// Bootstrap failed for another reason.
    #[error("cluster bootstrap failed: {0}")]
    Initialize(String),
    /// `force_new_cluster` on a data directory without any Raft data.
    #[error("no raft data in {0}: nothing to recover")]
    NothingToRecover(PathBuf),
    /// The Raft task did not stop cleanly.
    #[error("raft shutdown failed: {0}")]
    Shutdown(String),
}

impl From<Fatal<NodeId>> for RaftError {
    fn from(e: Fatal<NodeId>) -> Self {
        RaftError::Fatal(Box::new(e))
    }
}

/// Why a write failed. A failed write is never reported as acknowledged;
/// only `Ok` means the command was committed (and applied on the leader).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader was known within the write timeout (an election did not
    /// finish, or this manager cannot reach a majority).
    #[error("no leader: the cluster has no quorum or is electing; the write was not committed")]
    NoLeader,
    /// The leader could not commit the write within the write timeout. As
    /// with any Raft write that times out, the entry may still be committed
    /// later if a majority comes back; it was not acknowledged.
    #[error("no quorum: the write was not committed")]
    NoQuorum,
    /// Forwarding the write to the leader failed in transport.
    #[error("forwarding the write to the leader {} at {addr} failed: {source}", format_id(*leader))]
    Forward {
        /// The leader the write was sent to.
        leader: NodeId,
        /// Its Raft address.
        addr: String,
        /// The transport or remote error.
        source: tonic::Status,
    },
    /// Raft stopped, or the leader answered something unintelligible.
    #[error("raft failure: {0}")]
    Fatal(String),
}

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes the membership; the leader, if known.
    #[error("this manager is not the leader{}", match .0 {
        Some((id, addr)) => format!("; the leader is {} at {addr}", format_id(*id)),
        None => String::new(),
    })]
    NotLeader(Option<(NodeId, String)>),
    /// The change did not finish in time (the new node did not catch up,
    /// or no quorum).
    #[error("membership change did not complete within {0:?}")]
    Timeout(Duration),
    /// openraft refused the change (e.g. another change is in progress).
    #[error("membership change refused: {0}")]
    Refused(String),
    /// Raft stopped.
    #[error("raft failure: {0}")]
    Fatal(String),
}

/// Outcome of a write attempted on this node only.
#[derive(Clone, Debug)]
pub(crate) enum LocalWriteError {
    NotLeader(Option<(NodeId, String)>),
    NoQuorum,
    Fatal(String),
}

struct Inner {
    id: NodeId,
    raft: MeshRaft,
    state: SharedState,
    changes: tokio::sync::watch::Receiver<u64>,
    network: Network,
    /// The committed index the log store records (for metrics); not the
    /// store itself, which would keep the database open after shutdown.
    committed: Arc<std::sync::atomic::AtomicU64>,
    tuning: RaftTuning,
    /// The database, to see when openraft's tasks have let go of it.
    db: Weak<redb::Database>,
    /// Held across a membership decision and its change (see
    /// [`RaftNode::membership_lock`]).
    membership: tokio::sync::Mutex<()>,
    /// Gathers the writes proposed on this node into entries.
    proposer: Proposer,
    /// When a leader's request last arrived ([`super::failover`]).
    contact: LeaderContact,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("network", &self.network)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// The manager's Raft node: openraft with redb storage and the gRPC
/// network, plus leader forwarding and membership helpers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

/// Opens the database in `dir`. A database that is still being closed by
/// this process (the last reference of a shut-down node is dropped on
/// another thread) is retried for up to 3 s.
///
/// The directory is made 0700 and the file 0600 (created so, before redb
/// writes anything, or tightened if they exist): the log holds the CA key
/// and the join secrets (sealed, but the directory stays private too).
/// The store is then unlocked with the key in `key_file`
/// ([`storage_key::unlock`]); without its key it is not opened at all.
async fn open_db(
    dir: &Path,
    key_file: &Path,
) -> Result<(Arc<redb::Database>, Arc<StoreSeal>), RaftError> {
    create_private_dir(dir).map_err(|source| RaftError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(DB_FILE);
    create_private_file(&path).map_err(|source| RaftError::Dir {
        path: path.clone(),
        source,
    })?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let db = loop {
        match redb::Database::create(&path) {
            Ok(db) => break Arc::new(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(source) => return Err(RaftError::Open { path, source }),
        }
    };
    let seal = storage_key::unlock(&db, key_file)?;
    Ok((db, Arc::new(seal)))
}

impl RaftNode {
    /// Opens (or creates) the Raft data in `dir`, sealed with the storage
    /// key in `key_file`, and starts node `id`. A node with existing data
    /// rejoins its cluster with its log, snapshot and vote; a new node
    /// waits to be initialised or added.
    ///
    /// # Errors
    /// [`RaftError`] when the directory or database cannot be opened, the
    /// storage key is missing or wrong ([`RaftError::Key`]), the data is
    /// corrupt, or the tuning is invalid.
    pub async fn open(
        dir: &Path,
        key_file: &Path,
        id: NodeId,
        connector: Connector,
        tuning: RaftTuning,
    ) -> Result<Self, RaftError> {
        let (db, seal) = open_db(dir, key_file).await?;
        Self::start(db, seal, id, connector, tuning).await
    }

    /// Recovers a lone survivor: opens the data in `dir` and, before
    /// starting Raft, rewrites the effective membership to this node alone
    /// (at `addr`). It appends a membership entry for `{id}` with a term
    /// above any seen and saves a matching committed vote, so the node
    /// starts as the leader of a one-voter cluster and keeps every entry
    /// in its log (all committed data, plus any uncommitted tail, which
    /// the new membership entry commits).
    ///
    /// # Errors
    /// [`RaftError::NothingToRecover`] when `dir` holds no Raft data, and
    /// the errors of [`RaftNode::open`].
    pub async fn force_new_cluster(
        dir: &Path,
        key_file: &Path,
        id: NodeId,
        addr: String,
        connector: Connector,
        tuning: RaftTuning,
    ) -> Result<Self, RaftError> {
        let (db, seal) = open_db(dir, key_file).await?;
        let log = LogStore::new(db.clone(), seal.clone())?;
        let mut sm = StateMachineStore::open(db.clone(), SharedState::default(), seal.clone())?;
        let (snapshot_last, _) = sm
            .applied_state()
            .await
            .map_err(|e| RaftError::Initialize(e.to_string()))?;
        let log_last = log.last_log_id()?;
        // A snapshot ahead of the log (installed, then a crash before the
        // purge): the log resumes after the snapshot.
        let purge = snapshot_last.filter(|s| Some(*s) > log_last);
        let Some(last) = log_last.max(snapshot_last) else {
            return Err(RaftError::NothingToRecover(dir.to_owned()));
        };
        let vote_term = log.vote()?.map_or(0, |v| v.leader_id.term);
        let term = vote_term.max(last.leader_id.term) + 1;
        let log_id = LogId::new(CommittedLeaderId::new(term, id), last.index + 1);
        let membership = Membership::new(
            vec![BTreeSet::from([id])],
            BTreeMap::from([(id, BasicNode::new(addr))]),
        );
        let entry = Entry::new_membership(log_id, membership);
        log.append_with_vote(&[entry], &Vote::new_committed(term, id), purge)?;
        tracing::warn!(
            node = %format_id(id),
            term,
            index = log_id.index,
            "forced a new single-manager cluster from local raft data"
        );
        drop((log, sm));
        Self::start(db, seal, id, connector, tuning).await
    }

    async fn start(
        db: Arc<redb::Database>,
        seal: Arc<StoreSeal>,
        id: NodeId,
        connector: Connector,
        tuning: RaftTuning,
    ) -> Result<Self, RaftError> {
        let config = Arc::new(tuning.config()?);
        let log = LogStore::new(db.clone(), seal.clone())?;
        let state = SharedState::default();
        let sm = StateMachineStore::open(db.clone(), state.clone(), seal)?;
        let changes = sm.changes();
        let network = Network::new(id, connector);
        let db = Arc::downgrade(&db);
        let committed = log.committed_index();
        let raft = MeshRaft::new(id, config, network.clone(), log, sm).await?;
        let proposer = Proposer::start(raft.clone(), tuning.batch, tuning.write_timeout);
        let node = Self {
            inner: Arc::new(Inner {
                id,
                raft,
                state,
                changes,
                network,
                committed,
                tuning,
                db,
                membership: tokio::sync::Mutex::new(()),
                proposer,
                contact: LeaderContact::new(),
            }),
        };
        tokio::spawn(watch_leader(Arc::downgrade(&node.inner)));
        Ok(node)
    }

    /// Notes that a request from a leader (`AppendEntries`,
    /// `InstallSnapshot`) arrived: the leader is alive
    /// ([`super::failover`]).
    pub(crate) fn leader_heard(&self) {
        self.inner.contact.heard();
    }

    /// This node's ID.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The openraft handle, for metrics waits and low-level calls.
    #[must_use]
    pub fn raft(&self) -> &MeshRaft {
        &self.inner.raft
    }

    /// The tuning this node runs with.
    #[must_use]
    pub fn tuning(&self) -> &RaftTuning {
        &self.inner.tuning
    }

    /// Bootstraps a new cluster with this node, at Raft address `addr`, as
    /// its only voter. It becomes the leader at once.
    ///
    /// # Errors
    /// [`RaftError::AlreadyInitialized`] when this node already has Raft
    /// state; [`RaftError::Initialize`] or [`RaftError::Fatal`] otherwise.
    pub async fn initialize(&self, addr: String) -> Result<(), RaftError> {
        let members = BTreeMap::from([(self.inner.id, BasicNode::new(addr))]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Err(RaftError::AlreadyInitialized),
            Err(openraft::error::RaftError::APIError(e)) => {
                Err(RaftError::Initialize(e.to_string()))
            }
            Err(openraft::error::RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// The replicated state as this node has applied it, for reads. On a
    /// follower it may lag the leader by a heartbeat or so.
    #[must_use]
    pub fn shared_state(&self) -> SharedState {
        self.inner.state.clone()
    }

    /// Announces the state's version whenever the state machine applies
    /// commands or installs a snapshot.
    #[must_use]
    pub fn state_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.clone()
    }

    /// A copy of openraft's current metrics (role, term, leader, log and
    /// applied indexes, membership).
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Resolves once openraft's core has stopped (its metrics report a
    /// fatal error: a storage error such as a full disk, a panic in the
    /// core, or a shutdown), with why. Nothing is committed or applied on
    /// this node after that.
    pub async fn core_stopped(&self) -> RaftError {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.clone().into();
            }
            if metrics.changed().await.is_err() {
                // The core is gone; its last word, if any, is in the value.
                return match &metrics.borrow().running_state {
                    Err(fatal) => fatal.clone().into(),
                    Ok(()) => Fatal::Stopped.into(),
                };
            }
        }
    }

    /// Whether this node is the leader.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        current_leader(self.inner.id, &self.metrics()) == Some(self.inner.id)
    }

    /// The highest log index known committed here (the leader's commit
    /// index, or what the leader last told this follower).
    #[must_use]
    pub fn committed_index(&self) -> u64 {
        self.inner
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current leader and its Raft address, if this node knows one.
    #[must_use]
    pub fn leader(&self) -> Option<(NodeId, String)> {
        leader_of(self.inner.id, &self.metrics())
    }

    /// Whether `id` is a voter in the effective membership.
    #[must_use]
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id)
    }

    /// What this node knows of the Raft group, to tell each manager's
    /// status: the voters, the leader, and on the leader how long ago each
    /// peer last answered. A voter silent for two election timeouts (its
    /// heartbeats unanswered all that time) is stale.
    #[must_use]
    pub fn manager_view(&self) -> ManagerView {
        let metrics = self.metrics();
        let leader = current_leader(self.inner.id, &metrics);
        let now = std::time::Instant::now();
        let last_contact = (leader == Some(self.inner.id)).then(|| {
            self.inner
                .network
                .last_contacts()
                .into_iter()
                .map(|(id, at)| (id, now.saturating_duration_since(at)))
                .collect()
        });
        ManagerView {
            this: self.inner.id,
            leader,
            voters: metrics.membership_config.membership().voter_ids().collect(),
            last_contact,
            stale_after: 2 * self.inner.tuning.election_max,
        }
    }

    /// The voters and their Raft addresses.
    #[must_use]
    pub fn voters(&self) -> BTreeMap<NodeId, String> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .map(|id| {
                let addr = membership
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect()
    }

    /// Commits `command` and returns the state machine's response (which
    /// may be a refusal, [`state::StateError`], computed identically on
    /// every replica). On the leader it is proposed directly; on a follower
    /// it is forwarded to the leader with the `Propose` RPC. While no
    /// leader is known (an election), it waits up to the write timeout.
    ///
    /// # Errors
    /// [`WriteError::NoLeader`], [`WriteError::NoQuorum`] after the write
    /// timeout, [`WriteError::Forward`] when the leader cannot be reached,
    /// [`WriteError::Fatal`] when Raft has stopped. None of these is an
    /// acknowledgement.
    pub async fn write(&self, command: Command) -> Result<state::Response, WriteError> {
        let deadline = Instant::now() + self.inner.tuning.write_timeout;
        loop {
            let leader = self.leader();
            match &leader {
                Some((id, _)) if *id == self.inner.id => {
                    match self.write_local(command.clone()).await {
                        Ok(response) => return Ok(response),
                        Err(LocalWriteError::NotLeader(_)) => {}
                        Err(LocalWriteError::NoQuorum) => return Err(WriteError::NoQuorum),
                        Err(LocalWriteError::Fatal(e)) => return Err(WriteError::Fatal(e)),
                    }
                }
                Some((id, addr)) => {
                    if let Some(result) = self.forward(*id, addr, &command, deadline).await {
                        return result;
                    }
                }
                None => {}
            }
            // No usable leader right now: wait for the leader to change.
            let now = Instant::now();
            if now >= deadline {
                return Err(WriteError::NoLeader);
            }
            let wait = (deadline - now).min(self.inner.tuning.heartbeat);
            let current = leader.map(|(id, _)| id);
            let _changed = self
                .inner
                .raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader != current, "leader change")
                .await;
        }
    }

    /// Sends `command` to the leader. `None` means "not delivered, try again"
    /// (the leader moved or is unknown there).
    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        command: &Command,
        deadline: Instant,
    ) -> Option<Result<state::Response, WriteError>> {
        let forward_error = |source| {
            Some(Err(WriteError::Forward {
                leader,
                addr: addr.to_owned(),
                source,
            }))
        };
        let json = match codec::encode(command) {
            Ok(json) => json,
            Err(e) => {
                return Some(Err(WriteError::Fatal(format!(
                    "cannot encode command: {e}"
                ))));
            }
        };
        let mut client = match self.inner.network.client(addr) {
            Ok(client) => client,
            Err(e) => return forward_error(tonic::Status::unavailable(e.to_string())),
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let mut request = tonic::Request::new(crate::proto::RaftPayload { json });
        request.set_timeout(budget);
        let reply = match tokio::time::timeout(budget, client.propose(request)).await {
            Err(_elapsed) => return Some(Err(WriteError::NoQuorum)),
            Ok(reply) => reply,
        };
        match reply {
            Ok(reply) => Some(
                codec::decode::<state::Response>(&reply.into_inner().json).map_err(|e| {
                    WriteError::Fatal(format!("malformed propose reply from the leader: {e}"))
                }),
            ),
            Err(status) => match status.code() {
                tonic::Code::FailedPrecondition => None,
                tonic::Code::DeadlineExceeded => Some(Err(WriteError::NoQuorum)),
                _ => forward_error(status),
            },
        }
    }

    /// Proposes `command` on this node only (it must be the leader), with
    /// the other writes proposed meanwhile ([`super::proposer`]), and waits
    /// up to the write timeout for its commit and its own response.
    pub(crate) async fn write_local(
        &self,
        command: Command,
    ) -> Result<state::Response, LocalWriteError> {
        let timeout = self.inner.tuning.write_timeout;
        tokio::time::timeout(timeout, self.inner.proposer.propose(command))
            .await
            .unwrap_or(Err(LocalWriteError::NoQuorum))
    }

    /// Adds node `id`, reachable at Raft address `addr`, as a voter: first
    /// as a learner, waiting until it has caught up, then by a membership
    /// change. Idempotent: a voter at the same address is left alone; a
    /// voter at another address gets its address updated. Leader only.
    ///
    /// # Errors
    /// [`MembershipError`]: not the leader, timeout, refused, or fatal.
    pub async fn add_voter(&self, id: NodeId, addr: String) -> Result<(), MembershipError> {
        let voters = self.voters();
        match voters.get(&id) {
            Some(current) if *current == addr => return Ok(()),
            Some(_) => {
                let nodes = BTreeMap::from([(id, BasicNode::new(addr))]);
                return self.change(ChangeMembers::SetNodes(nodes)).await;
            }
            None => {}
        }
        let timeout = self.inner.tuning.membership_timeout;
        let learner = self.inner.raft.add_learner(id, BasicNode::new(addr), true);
        match tokio::time::timeout(timeout, learner).await {
            Err(_elapsed) => return Err(MembershipError::Timeout(timeout)),
            Ok(result) => result.map_err(membership_error)?,
        };
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    /// Serialises decisions about the membership with the changes that
    /// follow them: a caller checks the state (is the node still a
    /// manager? is it a voter?) and changes the membership while holding
    /// the guard, so that adding a promoted node and demoting it again
    /// cannot interleave into a voter whose role is worker.
    pub async fn membership_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.membership.lock().await
    }

    /// Removes voter `id` from the membership (it is not kept as a
    /// learner). Removing a node that is not a member is a no-op. Leader only.
    ///
    /// # Errors
    /// [`MembershipError`]: not the leader, timeout, refused, or fatal.
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), MembershipError> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        if !membership.voter_ids().any(|v| v == id) {
            return self
                .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await;
        }
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), MembershipError> {
        let timeout = self.inner.tuning.membership_timeout;
        let fut = self.inner.raft.change_membership(change, false);
        match tokio::time::timeout(timeout, fut).await {
            Err(_elapsed) => Err(MembershipError::Timeout(timeout)),
            Ok(result) => result.map(drop).map_err(membership_error),
        }
    }

    /// Stops Raft and waits (up to 5 s) until openraft's tasks have let go
    /// of the database, so the same directory can be opened again.
    ///
    /// # Errors
    /// [`RaftError::Shutdown`] when openraft's task failed or the database
    /// is still held after 5 s.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Shutdown(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inner.db.strong_count() > 0 {
            if Instant::now() >= deadline {
                return Err(RaftError::Shutdown(
                    "raft tasks still hold the database 5 s after shutdown".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Fast failover on a positive signal ([`super::failover`]): while this
/// node is a voter following a leader it has not heard from for a few
/// heartbeats, it checks whether the leader's address refuses connections
/// (its process is gone) and, if so, starts an election, at once or after
/// its turn among the surviving voters ([`failover::turn`]), trying again
/// after a random pause until a new leader is known. Ends when the
/// node is dropped or Raft stops.
async fn watch_leader(node: Weak<Inner>) {
    let Some(heartbeat) = node.upgrade().map(|n| n.tuning.heartbeat) else {
        return;
    };
    let silent = heartbeat * failover::SILENT_HEARTBEATS;
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The silence last probed (the time of the last word heard then), so a
    // leader that is slow but alive is asked once per silence.
    let mut probed: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(inner) = node.upgrade() else {
            return;
        };
        let metrics = inner.raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let last = inner.contact.last();
        if metrics.state != openraft::ServerState::Follower
            || last.elapsed() < silent
            || probed == Some(last)
            || !metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == inner.id)
        {
            continue;
        }
        let Some((leader, addr)) = leader_of(inner.id, &metrics) else {
            continue;
        };
        if leader == inner.id {
            continue;
        }
        probed = Some(last);
        if !failover::refuses(&addr, heartbeat).await {
            continue;
        }
        tracing::warn!(
            leader = %format_id(leader),
            %addr,
            silent_ms = last.elapsed().as_millis(),
            "the leader's address refuses connections (its process is gone): electing a new leader now"
        );
        // The surviving voters take turns (by id): the first starts an election
        // at once, the next one a turn later unless a leader is known by then.
        // Two followers that saw the leader die at the same moment and both
        // stood split the vote, and under load split it again and again.
        let turn = failover::turn(
            inner.id,
            leader,
            metrics.membership_config.membership().voter_ids(),
        );
        if turn > 0 && new_leader_within(&inner.raft, leader, heartbeat * turn).await {
            continue;
        }
        for _ in 0..failover::ELECTION_TRIES {
            if inner.raft.trigger().elect().await.is_err() {
                return;
            }
            if new_leader_within(&inner.raft, leader, failover::jitter(heartbeat * 2)).await {
                break;
            }
        }
    }
}

/// Whether `raft` knows a leader other than `dead` within `within`.
async fn new_leader_within(raft: &MeshRaft, dead: NodeId, within: Duration) -> bool {
    raft.wait(Some(within))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != dead),
            "a new leader",
        )
        .await
        .is_ok()
}

/// The leader `this` node knows from `metrics`. openraft keeps a leader
/// that removed itself from the voters as the vote's leader after it has
/// stepped down (to a learner): that node leads no more, and must not
/// answer as a leader (sessions would stay with it, and its state would
/// never hear of its own demotion).
#[must_use]
pub fn current_leader(this: NodeId, metrics: &Metrics) -> Option<NodeId> {
    let leader = metrics.current_leader?;
    (leader != this || metrics.state == openraft::ServerState::Leader).then_some(leader)
}

fn leader_of(this: NodeId, metrics: &Metrics) -> Option<(NodeId, String)> {
    let id = current_leader(this, metrics)?;
    let node = metrics.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

fn membership_error(
    e: openraft::error::RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> MembershipError {
    match e {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            let leader = f
                .leader_id
                .zip(f.leader_node)
                .map(|(id, node)| (id, node.addr));
            MembershipError::NotLeader(leader)
        }
        openraft::error::RaftError::APIError(e) => MembershipError::Refused(e.to_string()),
        openraft::error::RaftError::Fatal(f) => MembershipError::Fatal(f.to_string()),
    }
}
