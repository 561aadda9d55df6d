//! Clusters of real Raft nodes in one process, over tonic servers on
//! 127.0.0.1 (plaintext). Every wait is a poll of openraft's metrics with a
//! deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

use super::node::{RaftNode, RaftTuning, WriteError};
use super::service::RaftService;
use super::test_support::TestDir;
use crate::auth::Caller;
use crate::proto::AddManagerRequest;
use crate::proto::raft_client::RaftClient;
use mesh_api::cluster::{CaMaterial, JoinSecrets};
use mesh_api::node::{Node, NodeId, Role};
use mesh_core::state::{Applied, ClusterState, Command};

const WAIT: Duration = Duration::from_secs(10);

/// Test-only authentication: the caller names itself in a header.
const TEST_CALLER: &str = "x-test-node-id";

fn tuning() -> RaftTuning {
    RaftTuning {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        write_timeout: Duration::from_secs(2),
        ..RaftTuning::default()
    }
}

/// A test manager's Raft data, in its test directory.
fn raft_dir(dir: &TestDir) -> PathBuf {
    dir.path().join("raft")
}

/// A test manager's storage key: beside its Raft data, as in production.
fn key_file(dir: &TestDir) -> PathBuf {
    dir.path().join("raft.key")
}

fn connector() -> super::network::Connector {
    Arc::new(|addr: &str| Endpoint::from_shared(format!("http://{addr}")))
}

/// One manager: its data dir, address, Raft node and gRPC server.
struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    node: RaftNode,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestNode {
    /// Opens the node's data in `dir` and serves it on `addr` (port 0: any).
    async fn start(id: NodeId, dir: &TestDir, addr: SocketAddr, tuning: RaftTuning) -> Self {
        let node = RaftNode::open(&raft_dir(dir), &key_file(dir), id, connector(), tuning)
            .await
            .expect("open raft node");
        Self::serve(id, node, addr).await
    }

    async fn serve(id: NodeId, node: RaftNode, addr: SocketAddr) -> Self {
        let listener = bind(addr).await;
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = InterceptedService::new(
            RaftService::new(node.clone()).into_server(),
            |mut req: tonic::Request<()>| {
                let id = req
                    .metadata()
                    .get(TEST_CALLER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<NodeId>().ok());
                if let Some(node_id) = id {
                    req.extensions_mut().insert(Caller {
                        node_id,
                        role: Role::Manager,
                    });
                }
                Ok(req)
            },
        );
        let server = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            id,
            addr,
            node,
            stop: Some(stop),
            server: Some(server),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Stops Raft and the server (a crash, as far as peers can tell).
    async fn stop(&mut self) {
        self.node.shutdown().await.expect("raft shutdown");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
        {
            server.abort();
            let _ = server.await;
        }
    }

    fn state(&self) -> ClusterState {
        self.node.shared_state().read().expect("state lock").clone()
    }

    fn last_applied(&self) -> u64 {
        self.node.metrics().last_applied.map_or(0, |l| l.index)
    }

    async fn wait_applied(&self, index: u64, what: &str) {
        self.node
            .raft()
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), what)
            .await
            .unwrap_or_else(|e| panic!("node {}: {what}: {e}", self.id));
    }
}

/// Binds `addr`, retrying briefly while a just-closed listener lingers.
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline && addr.port() != 0 => {
                tracing::debug!("rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn bootstrap(first: NodeId) -> Command {
    Command::Bootstrap {
        cluster_id: "test-cluster".to_owned(),
        ca: CaMaterial {
            cert_pem: "cert".to_owned(),
            key_pem: "key".to_owned(),
        },
        secrets: JoinSecrets::default(),
        first: Node::new(first, "m1".to_owned(), Role::Manager, 0),
    }
}

fn add_worker(k: NodeId) -> Command {
    Command::AddNode {
        node: Node::new(k, format!("w{k}"), Role::Worker, 0),
    }
}

fn has_node(state: &ClusterState, k: NodeId) -> bool {
    state.nodes.contains_key(&k)
}

/// Writes `cmd` through `node` and expects it committed and accepted.
async fn must_write(node: &RaftNode, cmd: Command) {
    let response = node.write(cmd).await.expect("write committed");
    assert!(matches!(response, Ok(Applied::Node(_))), "{response:?}");
}

/// A bootstrapped single-node cluster with node `id`, serving.
async fn first_node(id: NodeId, dir: &TestDir, tuning: RaftTuning) -> TestNode {
    let n = TestNode::start(id, dir, any_port(), tuning).await;
    n.node.initialize(n.addr()).await.expect("initialize");
    n.node
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "bootstrap leader")
        .await
        .expect("leader after initialize");
    must_write(&n.node, bootstrap(id)).await;
    n
}

/// Three voters: 1 bootstraps; 2 joins with the AddManager RPC, 3 with
/// `add_voter`.
async fn three_nodes(dirs: &[TestDir; 3], tuning: &RaftTuning) -> Vec<TestNode> {
    let n1 = first_node(1, &dirs[0], tuning.clone()).await;
    let n2 = TestNode::start(2, &dirs[1], any_port(), tuning.clone()).await;
    let n3 = TestNode::start(3, &dirs[2], any_port(), tuning.clone()).await;

    let mut client = RaftClient::connect(format!("http://{}", n1.addr))
        .await
        .expect("connect to n1");
    // Without an authenticated caller the RPC is refused.
    let refused = client
        .add_manager(AddManagerRequest { addr: n2.addr() })
        .await
        .expect_err("AddManager without a caller");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(!n1.node.is_voter(2));
    for _ in 0..2 {
        // Twice: AddManager is idempotent.
        let mut req = tonic::Request::new(AddManagerRequest { addr: n2.addr() });
        req.metadata_mut()
            .insert(TEST_CALLER, "2".parse().expect("metadata"));
        client.add_manager(req).await.expect("AddManager for n2");
    }
    n1.node
        .add_voter(3, n3.addr())
        .await
        .expect("add n3 as voter");
    let voters: BTreeSet<NodeId> = n1.node.voters().into_keys().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));
    assert!(n1.node.is_voter(3));
    vec![n1, n2, n3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_forwards_survives_leader_loss_and_restarts() {
    let dirs = [TestDir::new("c1"), TestDir::new("c2"), TestDir::new("c3")];
    let tuning = tuning();
    let mut nodes = three_nodes(&dirs, &tuning).await;

    // Writes through the leader and through a follower (forwarded).
    must_write(&nodes[0].node, add_worker(100)).await;
    assert_eq!(nodes[1].node.leader().map(|l| l.0), Some(1));
    must_write(&nodes[1].node, add_worker(101)).await;
    must_write(&nodes[2].node, add_worker(102)).await;
    // A refused command is a committed, deterministic answer.
    let refused = nodes[2]
        .node
        .write(add_worker(102))
        .await
        .expect("committed");
    assert!(refused.is_err(), "{refused:?}");
    for n in &nodes {
        n.wait_applied(nodes[0].last_applied(), "replicated").await;
        for k in 100..=102 {
            assert!(has_node(&n.state(), k), "node {} lacks {k}", n.id);
        }
    }

    // A stream of writes through the followers while the leader dies.
    let acked = Arc::new(Mutex::new(Vec::<NodeId>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [nodes[1].node.clone(), nodes[2].node.clone()];
    let stream = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut k = 1000;
            let mut failed = 0;
            while !stop.load(Ordering::Relaxed) {
                let via = &writers[usize::try_from(k % 2).unwrap_or(0)];
                match via.write(add_worker(k)).await {
                    Ok(Ok(_)) => acked.lock().await.push(k),
                    Ok(Err(e)) => panic!("write {k} refused: {e}"),
                    Err(_) => failed += 1,
                }
                k += 1;
            }
            failed
        })
    };
    let wait_acked = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while acked.lock().await.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "fewer than {n} writes acknowledged"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_acked(20).await;
    let leader = nodes[0].node.leader().expect("leader").0;
    assert_eq!(leader, 1);
    let killed_at = Instant::now();
    nodes[0].stop().await;
    let new_leader = nodes[1]
        .node
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != 1),
            "a new leader after the old one died",
        )
        .await
        .expect("new leader")
        .current_leader
        .expect("leader");
    let failover = killed_at.elapsed();
    let before = acked.lock().await.len();
    wait_acked(before + 20).await;
    stop.store(true, Ordering::Relaxed);
    let failed = stream.await.expect("writer task");
    let acked = acked.lock().await.clone();
    tracing::info!(
        ?failover,
        new_leader,
        failed,
        acked = acked.len(),
        "failover"
    );

    // Every acknowledged write is on both survivors.
    let leader_node = nodes
        .iter()
        .find(|n| n.id == new_leader)
        .expect("new leader is a survivor");
    let target = leader_node.last_applied();
    for n in &nodes[1..] {
        n.wait_applied(target, "survivors converge").await;
        let state = n.state();
        for k in &acked {
            assert!(
                has_node(&state, *k),
                "acknowledged write {k} missing on node {}",
                n.id
            );
        }
    }

    // The old leader restarts from its directory and catches up.
    let addr = nodes[0].addr;
    nodes[0] = TestNode::start(1, &dirs[0], addr, tuning.clone()).await;
    must_write(&nodes[1].node, add_worker(5000)).await;
    let target = leader_node_index(&nodes, new_leader);
    nodes[0]
        .wait_applied(target, "restarted node catches up")
        .await;
    assert_eq!(nodes[0].state(), nodes[1].state());
    assert!(has_node(&nodes[0].state(), 5000));
    assert_eq!(nodes[0].node.leader().map(|l| l.0), Some(new_leader));
    // And serves writes again (forwarded to the new leader).
    must_write(&nodes[0].node, add_worker(5001)).await;

    for n in &mut nodes {
        n.stop().await;
    }
}

fn leader_node_index(nodes: &[TestNode], leader: NodeId) -> u64 {
    nodes
        .iter()
        .find(|n| n.id == leader)
        .map_or(0, TestNode::last_applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_purge_logs_install_on_new_nodes_and_restore_on_restart() {
    let dirs = [TestDir::new("s1"), TestDir::new("s2")];
    let tuning = RaftTuning {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        logs_to_keep: 0,
        ..tuning()
    };
    let mut n1 = first_node(1, &dirs[0], tuning.clone()).await;
    for k in 0..40 {
        must_write(&n1.node, add_worker(100 + k)).await;
    }
    let m = n1
        .node
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= 20) && m.snapshot.is_some(),
            "snapshot built and log purged",
        )
        .await
        .expect("log compaction");
    let purged = m.purged.expect("purged").index;

    // A new node can only catch up by snapshot: the log it needs is gone.
    let mut n2 = TestNode::start(2, &dirs[1], any_port(), tuning.clone()).await;
    n1.node.add_voter(2, n2.addr()).await.expect("add n2");
    n2.wait_applied(n1.last_applied(), "n2 catches up").await;
    let m2 = n2.node.metrics();
    assert!(
        m2.snapshot.is_some_and(|s| s.index >= purged),
        "n2 installed a snapshot: {:?}",
        m2.snapshot
    );
    assert_eq!(n2.state(), n1.state());
    must_write(&n2.node, add_worker(999)).await;
    n1.wait_applied(n2.last_applied(), "n1 applied n2's write")
        .await;
    n2.wait_applied(n1.last_applied(), "n2 applied its write")
        .await;

    // Both stop; n1 alone (no quorum) rebuilds its state from its snapshot
    // and the committed log tail.
    let before = n1.state();
    let applied = n1.last_applied();
    n2.stop().await;
    n1.stop().await;
    let mut n1 = TestNode::start(1, &dirs[0], n1.addr, tuning.clone()).await;
    n1.wait_applied(applied, "restored from snapshot + log")
        .await;
    assert_eq!(n1.state(), before);
    assert!(has_node(&n1.state(), 999));
    n1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_quorum_fails_in_bounded_time_and_force_new_cluster_recovers() {
    let dirs = [TestDir::new("f1"), TestDir::new("f2"), TestDir::new("f3")];
    let tuning = tuning();
    let mut nodes = three_nodes(&dirs, &tuning).await;
    for k in 0..5 {
        must_write(
            &nodes[usize::try_from(k % 3).unwrap_or(0)].node,
            add_worker(100 + k),
        )
        .await;
    }
    let committed = nodes[0].state();
    assert_eq!(nodes[0].node.leader().map(|l| l.0), Some(1));

    // The two followers die: the leader cannot commit.
    nodes[1].stop().await;
    nodes[2].stop().await;
    let started = Instant::now();
    let err = nodes[0]
        .node
        .write(add_worker(200))
        .await
        .expect_err("a write without quorum fails");
    let took = started.elapsed();
    assert!(matches!(err, WriteError::NoQuorum), "{err:?}");
    assert_eq!(err.to_string(), "no quorum: the write was not committed");
    assert!(
        took < tuning.write_timeout + Duration::from_secs(1),
        "took {took:?}"
    );

    // The lone survivor is forced into a new one-manager cluster.
    nodes[0].stop().await;
    let addr = nodes[0].addr;
    let node = RaftNode::force_new_cluster(
        &raft_dir(&dirs[0]),
        &key_file(&dirs[0]),
        1,
        addr.to_string(),
        connector(),
        tuning.clone(),
    )
    .await
    .expect("force new cluster");
    let n1 = TestNode::serve(1, node, addr).await;
    n1.node
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "forced node leads")
        .await
        .expect("leader after force-new-cluster");
    assert_eq!(n1.node.voters(), BTreeMap::from([(1, addr.to_string())]));
    must_write(&n1.node, add_worker(300)).await;
    let state = n1.state();
    for k in committed.nodes.keys() {
        assert!(has_node(&state, *k), "committed node {k} lost");
    }
    assert!(has_node(&state, 300));
    let mut n1 = n1;
    n1.stop().await;
}

/// openraft's storage conformance suite, against the log store and the
/// state machine together.
mod storage_suite {
    use std::sync::Arc;

    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    use crate::raft::log_store::LogStore;
    use crate::raft::seal::{Sealing, StorageKey, StoreSeal};
    use crate::raft::state_machine::StateMachineStore;
    use crate::raft::test_support::TestDir;
    use crate::raft::types::TypeConfig;
    use mesh_api::node::NodeId;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TestDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(TestDir, LogStore, StateMachineStore), StorageError<NodeId>> {
            let dir = TestDir::new("suite");
            let db =
                Arc::new(redb::Database::create(dir.path().join("raft.redb")).expect("create db"));
            let seal = Arc::new(StoreSeal::new(
                &StorageKey::generate().expect("key"),
                Sealing::from_start(),
            ));
            let log = LogStore::new(db.clone(), seal.clone()).expect("log store");
            let sm = StateMachineStore::open(db, Arc::default(), seal).expect("state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite against the redb store.
    #[test]
    fn openraft_storage_suite() {
        if let Err(e) = Suite::test_all(Builder) {
            panic!("storage suite failed: {e}");
        }
    }
}

/// Encryption at rest: a manager's data directory, copied after state
/// holding a marker went through Raft entries and a snapshot, holds the
/// marker nowhere; the store reopens with its key, and refuses to open
/// without it or with another key, naming the key file.
mod at_rest {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    use super::*;
    use crate::raft::RaftError;
    use crate::raft::storage_key::KeyError;

    /// Every file under `dir` (recursively) whose bytes contain `needle`.
    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut files = 0;
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    files += 1;
                    let bytes = std::fs::read(&path).expect("read file");
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
            }
        }
        assert!(files > 0, "no files under {}", dir.display());
        found
    }

    fn labelled(k: NodeId, marker: &str) -> Command {
        let mut node = Node::new(k, format!("w{k}"), Role::Worker, 0);
        node.labels.insert("secret".to_owned(), marker.to_owned());
        Command::AddNode { node }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_data_dir_holds_no_plaintext_and_needs_its_key() {
        let dir = TestDir::new("at-rest");
        // Not a literal in the test binary's data: built at run time.
        let marker = format!("marker-{:016x}", rand::random::<u64>());
        let tuning = RaftTuning {
            snapshot_policy: SnapshotPolicy::Never,
            ..tuning()
        };
        let mut n = first_node(1, &dir, tuning.clone()).await;
        must_write(&n.node, labelled(100, &marker)).await;
        // A snapshot now (with the marker in it), and more entries after it.
        n.node
            .raft()
            .trigger()
            .snapshot()
            .await
            .expect("trigger a snapshot");
        let applied = n.last_applied();
        n.node
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot built",
            )
            .await
            .expect("snapshot");
        must_write(&n.node, labelled(101, &marker)).await;
        let before = n.state();
        assert_eq!(before.nodes[&101].labels["secret"], marker);
        let addr = n.addr;
        n.stop().await;

        // The data directory (with the database as it is on disk) holds
        // the marker nowhere; the key is outside it.
        let key = key_file(&dir);
        assert!(!key.starts_with(raft_dir(&dir)));
        let meta = std::fs::metadata(&key).expect("the key file was created");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(
            files_containing(&raft_dir(&dir), marker.as_bytes()),
            Vec::<PathBuf>::new(),
            "the marker is in clear in the data directory"
        );
        // Also not the hostnames, nor the CA key of the bootstrap entry.
        assert!(files_containing(&raft_dir(&dir), b"\"hostname\"").is_empty());
        assert!(files_containing(&raft_dir(&dir), b"key_pem").is_empty());

        // Without the key file: refused, naming it.
        let moved = dir.path().join("moved.key");
        std::fs::rename(&key, &moved).expect("move the key away");
        let err = RaftNode::open(&raft_dir(&dir), &key, 1, connector(), tuning.clone())
            .await
            .expect_err("opened without its key");
        assert!(
            matches!(err, RaftError::Key(KeyError::Missing(_))),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&key.display().to_string()),
            "{err}"
        );
        assert!(!key.exists(), "a new key was made for a sealed store");

        // With another key: refused, naming it.
        std::fs::write(&key, [7u8; 32]).expect("write another key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = RaftNode::open(&raft_dir(&dir), &key, 1, connector(), tuning.clone())
            .await
            .expect_err("opened with another key");
        assert!(matches!(err, RaftError::Key(KeyError::Wrong(_))), "{err:?}");
        assert!(
            err.to_string().contains(&key.display().to_string()),
            "{err}"
        );

        // With its key: the state comes back from the snapshot and the log.
        std::fs::rename(&moved, &key).expect("put the key back");
        let mut n = TestNode::start(1, &dir, addr, tuning).await;
        n.wait_applied(applied + 1, "restored").await;
        assert_eq!(n.state(), before);
        n.stop().await;
    }

    /// A store whose log entries, markers and snapshot were written (and
    /// sealed) as JSON, before the compact encoding, is read back; what is
    /// written after is in the encoding.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_and_a_snapshot_written_as_json_are_read_back() {
        use crate::raft::log_store::{LOG, LogStore, META};
        use crate::raft::state_machine::{
            SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META, StateMachineStore,
        };
        use crate::raft::types::Entry;
        use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StoredMembership};

        let dir = TestDir::new("json-store");
        let raft = raft_dir(&dir);
        std::fs::create_dir_all(&raft).expect("mkdir");
        let db = Arc::new(redb::Database::create(raft.join(crate::raft::DB_FILE)).expect("db"));
        let seal =
            Arc::new(crate::raft::storage_key::unlock(&db, &key_file(&dir)).expect("unlock"));
        let entry = |index: u64, k: NodeId| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(add_worker(k)),
        };
        let mut state = ClusterState::default();
        state.apply(&bootstrap(1)).expect("bootstrap");
        state.apply(&add_worker(102)).expect("a worker");
        let meta = SnapshotMeta::<NodeId, openraft::BasicNode> {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 2)),
            last_membership: StoredMembership::default(),
            snapshot_id: "json".to_owned(),
        };
        let vote = openraft::Vote::new_committed(1, 1);
        {
            // As the manager wrote them before the encoding: JSON, sealed.
            let (meta, data) = seal
                .seal_snapshot(
                    &meta.snapshot_id,
                    &serde_json::to_vec(&meta).expect("json"),
                    &serde_json::to_vec(&state).expect("json"),
                )
                .expect("seal");
            let txn = db.begin_write().expect("txn");
            {
                let mut log = txn.open_table(LOG).expect("table");
                for i in 3..=4 {
                    let json = serde_json::to_vec(&entry(i, 100 + i)).expect("json");
                    log.insert(i, seal.seal_entry(i, &json).expect("seal").as_slice())
                        .expect("insert");
                }
                let mut markers = txn.open_table(META).expect("table");
                markers
                    .insert("vote", serde_json::to_vec(&vote).expect("json").as_slice())
                    .expect("insert");
                let mut snapshot = txn.open_table(SNAPSHOT).expect("table");
                snapshot
                    .insert(SNAPSHOT_META, meta.as_slice())
                    .expect("insert");
                snapshot
                    .insert(SNAPSHOT_DATA, data.as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let restored = mesh_core::state::SharedState::default();
        drop(
            StateMachineStore::open(db.clone(), restored.clone(), seal.clone())
                .expect("a JSON snapshot loads"),
        );
        assert_eq!(*restored.read().expect("lock"), state);
        let log = LogStore::new(db.clone(), seal.clone()).expect("log");
        assert_eq!(log.vote().expect("a JSON vote reads"), Some(vote));
        let old = log.entries_from(3).expect("JSON entries read");
        assert_eq!(old, vec![entry(3, 103), entry(4, 104)]);
        log.append_with_vote(&[entry(5, 105)], &vote, None)
            .expect("append");
        {
            let txn = redb::ReadableDatabase::begin_read(&*db).expect("txn");
            let table = txn.open_table(LOG).expect("table");
            let stored = table
                .get(5)
                .expect("get")
                .expect("entry 5")
                .value()
                .to_vec();
            let plain = seal.open_entry(5, &stored).expect("open").into_owned();
            assert!(
                mesh_api::codec::is_current(&plain),
                "entry 5 is not in the encoding"
            );
        }
        assert_eq!(
            log.entries_from(3).expect("read"),
            vec![entry(3, 103), entry(4, 104), entry(5, 105)]
        );
    }

    /// A store written without encryption (as by an older manager) is
    /// sealed when first opened: its log entries and snapshot stay
    /// readable, later ones are sealed, and an unsealed entry or snapshot
    /// slipped in afterwards is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_legacy_store_is_upgraded_in_place() {
        use crate::raft::log_store::{LOG, LogStore};
        use crate::raft::state_machine::{
            SNAPSHOT, SNAPSHOT_DATA, SNAPSHOT_META, StateMachineStore,
        };
        use crate::raft::types::Entry;
        use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StoredMembership};

        let dir = TestDir::new("at-rest-legacy");
        let raft = raft_dir(&dir);
        std::fs::create_dir_all(&raft).expect("mkdir");
        let marker = format!("legacy-{:016x}", rand::random::<u64>());
        let entry = |index: u64, k: NodeId| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(labelled(k, &marker)),
        };
        let plain = |e: &Entry| serde_json::to_vec(e).expect("json");
        // A snapshot at index 2, as an older manager stored it.
        let mut legacy_state = ClusterState::default();
        legacy_state
            .apply(&bootstrap(1))
            .expect("bootstrap the legacy state");
        legacy_state
            .apply(&labelled(102, &marker))
            .expect("a labelled node");
        let snapshot_meta = serde_json::to_vec(&SnapshotMeta::<NodeId, openraft::BasicNode> {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 2)),
            last_membership: StoredMembership::default(),
            snapshot_id: "legacy".to_owned(),
        })
        .expect("json");
        let snapshot_data = serde_json::to_vec(&legacy_state).expect("json");
        {
            let db = redb::Database::create(raft.join(crate::raft::DB_FILE)).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut log = txn.open_table(LOG).expect("table");
                for i in 1..=3 {
                    log.insert(i, plain(&entry(i, 100 + i)).as_slice())
                        .expect("insert");
                }
                let mut snapshot = txn.open_table(SNAPSHOT).expect("table");
                snapshot
                    .insert(SNAPSHOT_META, snapshot_meta.as_slice())
                    .expect("insert");
                snapshot
                    .insert(SNAPSHOT_DATA, snapshot_data.as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        assert!(!key_file(&dir).exists());

        let db = Arc::new(redb::Database::create(raft.join(crate::raft::DB_FILE)).expect("db"));
        let seal =
            Arc::new(crate::raft::storage_key::unlock(&db, &key_file(&dir)).expect("unlock"));
        assert!(
            key_file(&dir).exists(),
            "the key was created on the upgrade"
        );
        assert_eq!(seal.sealing().sealed_from, 4);
        assert!(seal.sealing().legacy_snapshot.is_some());
        // The legacy snapshot loads.
        let state = mesh_core::state::SharedState::default();
        drop(
            StateMachineStore::open(db.clone(), state.clone(), seal.clone())
                .expect("legacy snapshot"),
        );
        assert_eq!(*state.read().expect("lock"), legacy_state);
        let log = LogStore::new(db.clone(), seal.clone()).expect("log");
        let old = log.entries_from(1).expect("legacy entries read");
        assert_eq!(old.len(), 3);
        assert_eq!(old[2], entry(3, 103));
        let vote = openraft::Vote::new(1, 1);
        log.append_with_vote(&[entry(4, 104)], &vote, None)
            .expect("append");
        {
            let txn = redb::ReadableDatabase::begin_read(&*db).expect("txn");
            let table = txn.open_table(LOG).expect("table");
            let stored = table
                .get(4)
                .expect("get")
                .expect("entry 4")
                .value()
                .to_vec();
            assert!(crate::raft::seal::is_sealed(&stored));
            assert!(!stored.windows(marker.len()).any(|w| w == marker.as_bytes()));
        }
        assert_eq!(log.entries_from(4).expect("read")[0], entry(4, 104));

        // An unsealed entry put in after the upgrade is refused.
        {
            let txn = db.begin_write().expect("txn");
            txn.open_table(LOG)
                .expect("table")
                .insert(5, plain(&entry(5, 105)).as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = log
            .entries_from(1)
            .expect_err("an unsealed entry after sealing");
        assert!(
            err.to_string().contains("log entry 5 is not sealed"),
            "{err}"
        );
        // Another unsealed snapshot put in its place is refused.
        {
            let txn = db.begin_write().expect("txn");
            txn.open_table(SNAPSHOT)
                .expect("table")
                .insert(SNAPSHOT_DATA, b"{}".as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = StateMachineStore::open(db.clone(), Arc::default(), seal.clone())
            .expect_err("another unsealed snapshot");
        assert!(err.to_string().contains("snapshot is not sealed"), "{err}");
        drop(log);
        drop(seal);

        // Reopened: the store is sealed now; the key is needed.
        let err = crate::raft::storage_key::unlock(&db, &dir.path().join("absent.key"))
            .expect_err("a sealed store without its key");
        assert!(matches!(err, KeyError::Missing(_)), "{err:?}");
        crate::raft::storage_key::unlock(&db, &key_file(&dir)).expect("reopened with its key");
    }
}
