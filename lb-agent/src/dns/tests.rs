//! The resolver's core against hand-built assignments: which names each task sees on
//! which networks, and the wire behaviour (codes, TTLs, truncation, malformed input).

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use mesh_api::assignment::{
    AssignedTask, Assignment, Backend, ServiceNetwork, ServiceRoutes, TaskAction,
};
use mesh_api::network::{IngressNetwork, Network, NetworkAddr, NetworkId, NetworkSpec};
use mesh_api::spec::{RuntimeKind, ServiceSpec};
use mesh_api::task::{TaskId, TaskState};
use proptest::prelude::*;

use super::answer::{MAX_UDP_PAYLOAD, Outcome, Reply, Transport, answer, query};
use super::view::{TASK_TTL, VIP_TTL, View};

const FRONT: NetworkId = 0xf1;
const BACK: NetworkId = 0xb2;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn network(id: NetworkId, name: &str, subnet: &str) -> Network {
    Network {
        id,
        spec: NetworkSpec::new(name),
        subnet: subnet.parse().unwrap(),
        gateway: ip(&subnet.replace(".0/24", ".1")),
        vni: 4097,
        cursor: 2,
        created_at_ms: 0,
    }
}

fn on(network: NetworkId, addr: &str) -> NetworkAddr {
    NetworkAddr {
        network,
        addr: ip(addr),
    }
}

fn backend(task: TaskId, name: &str, addr: &str, networks: Vec<NetworkAddr>) -> Backend {
    Backend {
        task,
        name: name.into(),
        addr: ip(addr),
        networks,
        node: 1,
        draining: false,
    }
}

fn service(
    id: u64,
    name: &str,
    vip: Option<&str>,
    backends: Vec<Backend>,
    networks: Vec<ServiceNetwork>,
) -> std::sync::Arc<ServiceRoutes> {
    std::sync::Arc::new(ServiceRoutes {
        id,
        name: name.into(),
        vip: vip.map(ip),
        ports: vec![],
        backends,
        networks,
        lb_algorithm: Default::default(),
    })
}

fn joins(network: NetworkId, vip: Option<&str>, aliases: &[&str]) -> ServiceNetwork {
    ServiceNetwork {
        network,
        vip: vip.map(ip),
        aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
    }
}

fn local(
    id: TaskId,
    name: &str,
    service_id: u64,
    addr: &str,
    networks: Vec<NetworkAddr>,
) -> AssignedTask {
    let service = name.split('.').next().unwrap();
    AssignedTask {
        id,
        name: name.into(),
        service_id,
        service_name: service.into(),
        spec: ServiceSpec::new(service, RuntimeKind::Process, "sleep", vec![]).task,
        addr: ip(addr),
        networks,
        action: TaskAction::Run,
        state: TaskState::Running,
        slot: 1,
    }
}

/// The cluster of these tests:
///
/// - `web` (default network, VIP 10.255.0.100): web.1, web.2, and web.3 draining;
/// - `rr` (default network, dnsrr): rr.1;
/// - `api` on `front` (VIP 10.1.0.100, alias `gateway`) and `back` (VIP 10.2.0.100);
/// - `db` on `back`, dnsrr, alias `postgres`;
/// - `cli` on `front`.
///
/// This node runs web.1 (default network), cli.1 (`front`) and api.1 (`front`, `back`).
fn cluster() -> Assignment {
    let mut web3 = backend(0x13, "web.3", "10.255.0.13", vec![]);
    web3.draining = true;
    let api1 = vec![on(FRONT, "10.1.0.31"), on(BACK, "10.2.0.31")];
    let db1 = vec![on(BACK, "10.2.0.41")];
    let cli1 = vec![on(FRONT, "10.1.0.51")];
    Assignment {
        version: 7,
        node: 1,
        ingress: IngressNetwork::default(),
        networks: vec![
            network(FRONT, "front", "10.1.0.0/24"),
            network(BACK, "Back", "10.2.0.0/24"),
        ],
        peers: Default::default(),
        tasks: vec![
            local(0x11, "web.1", 1, "10.255.0.11", vec![]),
            local(0x51, "cli.1", 5, "10.255.0.51", cli1.clone()),
            local(0x31, "api.1", 3, "10.255.0.31", api1.clone()),
        ],
        services: vec![
            service(
                1,
                "web",
                Some("10.255.0.100"),
                vec![
                    backend(0x11, "web.1", "10.255.0.11", vec![]),
                    backend(0x12, "web.2", "10.255.0.12", vec![]),
                    web3,
                ],
                vec![],
            ),
            service(
                2,
                "rr",
                None,
                vec![backend(0x21, "rr.1", "10.255.0.21", vec![])],
                vec![],
            ),
            service(
                3,
                "api",
                None,
                vec![backend(0x31, "api.1", "10.255.0.31", api1)],
                vec![
                    joins(FRONT, Some("10.1.0.100"), &["gateway"]),
                    joins(BACK, Some("10.2.0.100"), &[]),
                ],
            ),
            service(
                4,
                "db",
                None,
                vec![backend(0x41, "db.1", "10.255.0.41", db1)],
                vec![joins(BACK, None, &["postgres"])],
            ),
            service(
                5,
                "cli",
                None,
                vec![backend(0x51, "cli.1", "10.255.0.51", cli1)],
                vec![joins(FRONT, Some("10.1.0.101"), &[])],
            ),
        ],
        history: Default::default(),
        secrets: vec![],
        configs: vec![],
        hostname: String::new(),
    }
}

/// What a reply says: its code, and its answers as text (`A` addresses, `PTR` names),
/// sorted, with their TTLs.
#[derive(Debug, PartialEq, Eq)]
struct Said {
    code: ResponseCode,
    answers: Vec<(String, u32)>,
}

fn said(bytes: &[u8]) -> Said {
    let reply = Message::from_vec(bytes).expect("the reply parses");
    assert_eq!(reply.message_type, MessageType::Response);
    let mut answers: Vec<(String, u32)> = reply
        .answers
        .iter()
        .map(|r| {
            let text = match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::PTR(p) => p.0.to_string(),
                other => format!("{other:?}"),
            };
            (text, r.ttl)
        })
        .collect();
    answers.sort();
    Said {
        code: reply.response_code,
        answers,
    }
}

fn ask_type(view: &View, from: &str, name: &str, qtype: RecordType) -> Said {
    let q = query(0x1234, name, qtype).unwrap();
    match answer(view, ip(from), &q, Transport::Udp) {
        Reply::Send { bytes, .. } => said(&bytes),
        other => panic!("{name} {qtype} from {from}: {other:?}"),
    }
}

fn ask(view: &View, from: &str, name: &str) -> Said {
    ask_type(view, from, name, RecordType::A)
}

fn found(addrs: &[&str], ttl: u32) -> Said {
    let mut answers: Vec<(String, u32)> = addrs.iter().map(|a| ((*a).to_owned(), ttl)).collect();
    answers.sort();
    Said {
        code: ResponseCode::NoError,
        answers,
    }
}

fn code(code: ResponseCode) -> Said {
    Said {
        code,
        answers: vec![],
    }
}

fn forwarded(view: &View, from: &str, name: &str, qtype: RecordType) -> bool {
    let q = query(1, name, qtype).unwrap();
    answer(view, ip(from), &q, Transport::Udp) == Reply::Forward
}

const WEB1: &str = "10.255.0.11";
const CLI1: &str = "10.1.0.51";
const API1: &str = "10.2.0.31";

#[test]
fn a_default_network_task_resolves_default_network_services() {
    let view = View::new(&cluster());
    assert_eq!(ask(&view, WEB1, "web"), found(&["10.255.0.100"], VIP_TTL));
    // Draining tasks are not listed.
    assert_eq!(
        ask(&view, WEB1, "tasks.web"),
        found(&["10.255.0.11", "10.255.0.12"], TASK_TTL)
    );
    assert_eq!(ask(&view, WEB1, "rr"), found(&["10.255.0.21"], TASK_TTL));
    assert_eq!(
        ask(&view, WEB1, "tasks.rr"),
        found(&["10.255.0.21"], TASK_TTL)
    );
    assert_eq!(ask(&view, WEB1, "web.2"), found(&["10.255.0.12"], TASK_TTL));
    assert_eq!(
        ask(&view, WEB1, "web.2.0000000000000012"),
        found(&["10.255.0.12"], TASK_TTL)
    );
    // The default network's name qualifies too.
    assert_eq!(
        ask(&view, WEB1, "web.ingress"),
        found(&["10.255.0.100"], VIP_TTL)
    );
    // Services on user networks only are not here.
    assert_eq!(ask(&view, WEB1, "api"), code(ResponseCode::NXDomain));
    assert_eq!(ask(&view, WEB1, "gateway"), code(ResponseCode::NXDomain));
    assert_eq!(ask(&view, WEB1, "tasks.db"), code(ResponseCode::NXDomain));
    assert_eq!(ask(&view, WEB1, "api.front"), code(ResponseCode::NXDomain));
    assert!(forwarded(&view, WEB1, "example.com", RecordType::A));
}

#[test]
fn a_draining_tasks_names_are_gone() {
    let view = View::new(&cluster());
    assert!(forwarded(&view, WEB1, "web.3", RecordType::A));
    assert!(forwarded(
        &view,
        WEB1,
        "web.3.0000000000000013",
        RecordType::A
    ));
}

#[test]
fn names_are_case_insensitive_with_or_without_the_trailing_dot() {
    let view = View::new(&cluster());
    for name in ["web", "web.", "WEB", "Web.", "TASKS.web.", "web.INGRESS."] {
        assert_eq!(ask(&view, WEB1, name).code, ResponseCode::NoError, "{name}");
        assert!(!ask(&view, WEB1, name).answers.is_empty(), "{name}");
    }
    // A network named with capitals ("Back") matches in any case.
    assert_eq!(
        ask(&view, API1, "api.BACK"),
        found(&["10.2.0.100"], VIP_TTL)
    );
}

#[test]
fn a_user_network_task_sees_its_networks_only() {
    let view = View::new(&cluster());
    for from in [CLI1, "10.255.0.51"] {
        assert_eq!(
            ask(&view, from, "api"),
            found(&["10.1.0.100"], VIP_TTL),
            "{from}"
        );
        assert_eq!(ask(&view, from, "gateway"), found(&["10.1.0.100"], VIP_TTL));
        assert_eq!(
            ask(&view, from, "tasks.api"),
            found(&["10.1.0.31"], TASK_TTL)
        );
        assert_eq!(
            ask(&view, from, "tasks.gateway"),
            found(&["10.1.0.31"], TASK_TTL)
        );
        assert_eq!(
            ask(&view, from, "api.front"),
            found(&["10.1.0.100"], VIP_TTL)
        );
        assert_eq!(ask(&view, from, "api.1"), found(&["10.1.0.31"], TASK_TTL));
        // Not on `back`, nor on the default network it left.
        assert_eq!(ask(&view, from, "api.back"), code(ResponseCode::NXDomain));
        assert_eq!(ask(&view, from, "db"), code(ResponseCode::NXDomain));
        assert_eq!(ask(&view, from, "postgres"), code(ResponseCode::NXDomain));
        assert_eq!(ask(&view, from, "web"), code(ResponseCode::NXDomain));
        assert_eq!(
            ask(&view, from, "web.ingress"),
            code(ResponseCode::NXDomain)
        );
    }
}

#[test]
fn the_first_network_that_has_a_name_wins() {
    let view = View::new(&cluster());
    // api.1 joins front, then back: `api` is its VIP on front.
    assert_eq!(ask(&view, API1, "api"), found(&["10.1.0.100"], VIP_TTL));
    assert_eq!(
        ask(&view, API1, "api.back"),
        found(&["10.2.0.100"], VIP_TTL)
    );
    assert_eq!(
        ask(&view, API1, "tasks.api.back"),
        found(&["10.2.0.31"], TASK_TTL)
    );
    // dnsrr on back: the task addresses, under the name and the alias.
    assert_eq!(ask(&view, API1, "db"), found(&["10.2.0.41"], TASK_TTL));
    assert_eq!(
        ask(&view, API1, "postgres"),
        found(&["10.2.0.41"], TASK_TTL)
    );
    assert_eq!(
        ask(&view, API1, "tasks.postgres"),
        found(&["10.2.0.41"], TASK_TTL)
    );
    assert_eq!(
        ask(&view, API1, "db.1.0000000000000041.back"),
        found(&["10.2.0.41"], TASK_TTL)
    );
}

#[test]
fn other_types_of_cluster_names_get_no_data_and_are_never_forwarded() {
    let view = View::new(&cluster());
    for qtype in [
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::SRV,
    ] {
        assert_eq!(
            ask_type(&view, WEB1, "web", qtype),
            code(ResponseCode::NoError),
            "{qtype}"
        );
        assert_eq!(
            ask_type(&view, WEB1, "tasks.web", qtype),
            code(ResponseCode::NoError)
        );
        assert_eq!(
            ask_type(&view, WEB1, "api", qtype),
            code(ResponseCode::NXDomain)
        );
    }
    assert_eq!(
        ask_type(&view, WEB1, "web", RecordType::ANY),
        found(&["10.255.0.100"], VIP_TTL)
    );
    assert!(forwarded(&view, WEB1, "example.com", RecordType::AAAA));
}

#[test]
fn ptr_names_task_addresses_on_shared_networks() {
    let view = View::new(&cluster());
    let ptr = |from: &str, addr: &str| ask_type(&view, from, addr, RecordType::PTR);
    assert_eq!(
        ptr(WEB1, "12.0.255.10.in-addr.arpa"),
        found(&["web.2.0000000000000012.ingress."], TASK_TTL)
    );
    assert_eq!(
        ptr(API1, "41.0.2.10.in-addr.arpa."),
        found(&["db.1.0000000000000041.back."], TASK_TTL)
    );
    assert_eq!(
        ptr(CLI1, "31.0.1.10.in-addr.arpa"),
        found(&["api.1.0000000000000031.front."], TASK_TTL)
    );
    // A task address on a network the task is not on.
    assert_eq!(
        ptr(CLI1, "41.0.2.10.in-addr.arpa"),
        code(ResponseCode::NXDomain)
    );
    assert_eq!(
        ptr(WEB1, "31.0.1.10.in-addr.arpa"),
        code(ResponseCode::NXDomain)
    );
    // Anything else is the upstream's.
    for name in [
        "8.8.8.8.in-addr.arpa",
        "12.0.255.in-addr.arpa",
        "012.0.255.10.in-addr.arpa",
    ] {
        assert!(forwarded(&view, WEB1, name, RecordType::PTR), "{name}");
    }
}

#[test]
fn only_the_nodes_tasks_are_answered() {
    let view = View::new(&cluster());
    // A backend on another node, the node itself, anyone.
    for from in ["10.255.0.12", "169.254.1.1", "10.2.0.41", "192.0.2.1"] {
        let q = query(9, "web", RecordType::A).unwrap();
        let Reply::Send { bytes, outcome } = answer(&view, ip(from), &q, Transport::Udp) else {
            panic!("no reply to {from}");
        };
        assert_eq!(outcome, Outcome::Refused);
        assert_eq!(said(&bytes), code(ResponseCode::Refused));
        // Nor forwarded for them.
        let q = query(9, "example.com", RecordType::A).unwrap();
        assert!(matches!(
            answer(&view, ip(from), &q, Transport::Tcp),
            Reply::Send {
                outcome: Outcome::Refused,
                ..
            }
        ));
    }
    // Before the first assignment: nobody.
    let q = query(9, "web", RecordType::A).unwrap();
    assert!(matches!(
        answer(&View::default(), ip(WEB1), &q, Transport::Udp),
        Reply::Send {
            outcome: Outcome::Refused,
            ..
        }
    ));
}

#[test]
fn the_reply_mirrors_the_query() {
    let view = View::new(&cluster());
    let q = query(0xbeef, "Web.", RecordType::A).unwrap();
    let Reply::Send { bytes, outcome } = answer(&view, ip(WEB1), &q, Transport::Udp) else {
        panic!("no reply");
    };
    assert_eq!(outcome, Outcome::Answered);
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.id, 0xbeef);
    assert!(reply.authoritative && reply.recursion_desired && reply.recursion_available);
    assert_eq!(reply.queries.len(), 1);
    assert_eq!(reply.queries[0].name().to_ascii(), "Web.");
    assert_eq!(reply.answers[0].name.to_ascii(), "Web.");
    assert!(reply.edns.is_none());
    // NXDOMAIN is counted as such.
    let q = query(1, "api", RecordType::A).unwrap();
    assert!(matches!(
        answer(&view, ip(WEB1), &q, Transport::Udp),
        Reply::Send {
            outcome: Outcome::NxDomain,
            ..
        }
    ));
}

/// A dnsrr service of `n` tasks on the default network, and a task of it on this node.
fn big(n: u8) -> View {
    let backends: Vec<Backend> = (1..=n)
        .map(|i| {
            backend(
                u64::from(i),
                &format!("big.{i}"),
                &format!("10.255.1.{i}"),
                vec![],
            )
        })
        .collect();
    View::new(&Assignment {
        version: 1,
        node: 1,
        ingress: IngressNetwork::default(),
        networks: vec![],
        peers: Default::default(),
        tasks: vec![local(1, "big.1", 9, "10.255.1.1", vec![])],
        services: vec![service(9, "big", None, backends, vec![])],
        history: Default::default(),
        secrets: vec![],
        configs: vec![],
        hostname: String::new(),
    })
}

fn with_edns(name: &str, size: u16) -> Vec<u8> {
    let mut m = Message::new(3, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(size);
    m.set_edns(edns);
    m.to_vec().unwrap()
}

fn reply_of(view: &View, q: &[u8], transport: Transport) -> Message {
    match answer(view, ip("10.255.1.1"), q, transport) {
        Reply::Send { bytes, .. } => {
            if transport == Transport::Udp {
                assert!(bytes.len() <= usize::from(MAX_UDP_PAYLOAD));
            }
            Message::from_vec(&bytes).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let view = big(200);
    let plain = query(3, "tasks.big", RecordType::A).unwrap();
    let udp = reply_of(&view, &plain, Transport::Udp);
    assert!(udp.truncation && udp.answers.is_empty());
    let tcp = reply_of(&view, &plain, Transport::Tcp);
    assert!(!tcp.truncation);
    assert_eq!(tcp.answers.len(), 200);
    // EDNS raises the limit, up to 1232 bytes whatever the client says.
    let udp = reply_of(&view, &with_edns("tasks.big", 4096), Transport::Udp);
    assert!(udp.truncation && udp.edns.is_some());
    let view = big(50);
    let udp = reply_of(&view, &plain, Transport::Udp);
    assert!(udp.truncation, "50 answers do not fit 512 bytes");
    let udp = reply_of(&view, &with_edns("tasks.big", 4096), Transport::Udp);
    assert!(!udp.truncation);
    assert_eq!(udp.answers.len(), 50);
    assert_eq!(
        udp.edns.as_ref().map(Edns::max_payload),
        Some(MAX_UDP_PAYLOAD)
    );
    // A tiny EDNS size counts as 512.
    let udp = reply_of(&big(20), &with_edns("tasks.big", 100), Transport::Udp);
    assert!(!udp.truncation);
    assert_eq!(udp.answers.len(), 20);
}

#[test]
fn answers_rotate_with_the_query_id() {
    let view = big(5);
    let first = |id: u16| {
        let q = query(id, "big", RecordType::A).unwrap();
        let reply = reply_of(&view, &q, Transport::Tcp);
        assert_eq!(reply.answers.len(), 5);
        match &reply.answers[0].data {
            RData::A(a) => a.0,
            other => panic!("{other:?}"),
        }
    };
    let firsts: std::collections::BTreeSet<Ipv4Addr> = (0..5).map(first).collect();
    assert_eq!(firsts.len(), 5);
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        b.extend_from_slice(&c.to_be_bytes());
    }
    b
}

#[test]
fn malformed_queries_get_formerr_when_they_have_a_header_and_are_dropped_otherwise() {
    let view = View::new(&cluster());
    let from = ip(WEB1);
    assert_eq!(answer(&view, from, &[], Transport::Udp), Reply::Drop);
    assert_eq!(answer(&view, from, &[1, 2, 3], Transport::Udp), Reply::Drop);
    // A response is never answered (no loops between resolvers).
    let mut response = query(5, "web", RecordType::A).unwrap();
    response[2] |= 0x80;
    assert_eq!(answer(&view, from, &response, Transport::Udp), Reply::Drop);
    let formerr = |bytes: &[u8]| match answer(&view, from, bytes, Transport::Udp) {
        Reply::Send { bytes, outcome } => {
            let m = Message::from_vec(&bytes).unwrap();
            (m.id, m.response_code, outcome)
        }
        other => panic!("{other:?}"),
    };
    // One question announced, none there.
    let truncated = header(0x4242, 0x0100, [1, 0, 0, 0]);
    assert_eq!(
        formerr(&truncated),
        (0x4242, ResponseCode::FormErr, Outcome::Failed)
    );
    // A question cut short.
    let mut cut = query(0x77, "web", RecordType::A).unwrap();
    cut.truncate(cut.len() - 3);
    assert_eq!(
        formerr(&cut),
        (0x77, ResponseCode::FormErr, Outcome::Failed)
    );
    // No question, or two.
    assert_eq!(
        formerr(&header(8, 0x0100, [0, 0, 0, 0])),
        (8, ResponseCode::FormErr, Outcome::Failed)
    );
    let mut two = Message::new(9, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("web").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(Name::from_ascii("rr").unwrap(), RecordType::A));
    assert_eq!(
        formerr(&two.to_vec().unwrap()),
        (9, ResponseCode::FormErr, Outcome::Failed)
    );
    // Another opcode.
    let mut status = Message::new(10, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(
        Name::from_ascii("web").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        formerr(&status.to_vec().unwrap()),
        (10, ResponseCode::NotImp, Outcome::Failed)
    );
}

#[test]
fn other_classes_are_forwarded() {
    let view = View::new(&cluster());
    let mut q = Query::query(Name::from_ascii("version.bind").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    let mut m = Message::new(11, MessageType::Query, OpCode::Query);
    m.add_query(q);
    assert_eq!(
        answer(&view, ip(WEB1), &m.to_vec().unwrap(), Transport::Udp),
        Reply::Forward
    );
}

#[test]
fn a_task_on_a_network_the_assignment_does_not_name_still_resolves_there() {
    // The manager lists every network a service joins; if it did not, unqualified
    // names still answer.
    let mut a = cluster();
    a.networks.clear();
    let view = View::new(&a);
    assert_eq!(ask(&view, CLI1, "api"), found(&["10.1.0.100"], VIP_TTL));
    assert!(forwarded(&view, CLI1, "api.front", RecordType::A));
}

#[test]
fn a_name_shared_by_two_services_on_a_network_has_both_addresses() {
    let mut a = cluster();
    // `cli` takes the alias `gateway` on front too.
    std::sync::Arc::make_mut(&mut a.services[4]).networks[0]
        .aliases
        .push("gateway".into());
    let view = View::new(&a);
    assert_eq!(
        ask(&view, CLI1, "gateway"),
        found(&["10.1.0.100", "10.1.0.101"], VIP_TTL)
    );
}

proptest! {
    #[test]
    fn fuzz_dns_answer_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let view = View::new(&cluster());
        for transport in [Transport::Udp, Transport::Tcp] {
            if let Reply::Send { bytes, .. } = answer(&view, ip(WEB1), &bytes, transport) {
                prop_assert!(Message::from_vec(&bytes).is_ok());
            }
        }
    }

    #[test]
    fn fuzz_dns_answer_never_panics_on_mutated_queries(
        name in "[a-zA-Z0-9.-]{1,40}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let view = View::new(&cluster());
        let Ok(mut q) = query(1, &name, RecordType::A) else {
            return Ok(());
        };
        for (at, byte) in flips {
            let len = q.len();
            q[at % len] ^= byte;
        }
        q.truncate(cut % (q.len() + 1));
        for from in [WEB1, CLI1, "192.0.2.1"] {
            let _ = answer(&view, ip(from), &q, Transport::Udp);
        }
    }
}

#[test]
fn a_task_with_its_own_dns_servers_is_forwarded_to_them() {
    let mut assignment = cluster();
    let api = assignment
        .tasks
        .iter_mut()
        .find(|t| t.name == "api.1")
        .unwrap();
    api.spec.dns.nameservers = vec!["192.0.2.53".parse().unwrap()];
    let view = View::new(&assignment);
    let own = ["192.0.2.53:53".parse().unwrap()];
    // On each of its addresses; the other tasks keep the node's servers.
    assert_eq!(view.upstreams(ip("10.1.0.31")), Some(&own[..]));
    assert_eq!(view.upstreams(ip("10.2.0.31")), Some(&own[..]));
    assert_eq!(view.upstreams(ip("10.1.0.51")), None);
}
