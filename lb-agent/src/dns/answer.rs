//! One query, answered from a [`View`] (sans-IO: bytes in, bytes or a decision out).
//!
//! | query | reply |
//! | --- | --- |
//! | shorter than a header, or a response | dropped |
//! | from an address that is not one of the node's tasks | `REFUSED` |
//! | unparseable, or not exactly one question | `FORMERR` |
//! | an opcode other than `QUERY` | `NOTIMP` |
//! | `A` (or `ANY`) of a name on one of the task's networks | its addresses |
//! | another type of such a name (`AAAA`, `MX`, ...) | no answer, `NOERROR` (never forwarded: no leak of cluster names) |
//! | `PTR` of a task address on one of the task's networks | `<task name>.<task id>.<network>` |
//! | a name (or task address) of the cluster on none of the task's networks | `NXDOMAIN` |
//! | anything else (another name, class `CH`, ...) | [`Reply::Forward`] |
//!
//! Names match case-insensitively, with or without the trailing dot. Answers are rotated
//! by the query's ID, so that clients that take the first address spread over the tasks.
//! Over UDP, a reply longer than the client accepts (512 bytes, or its EDNS size up to
//! [`MAX_UDP_PAYLOAD`]) is sent truncated (`TC`, no answers): the client asks again over
//! TCP.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};

use super::view::{Lookup, Reverse, TASK_TTL, View};

/// The largest UDP reply sent, whatever the client's EDNS size (the DNS flag day 2020
/// value: no fragmentation on common paths).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// How the query came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: the reply is bounded by the client's size.
    Udp,
    /// A TCP stream: any size.
    Tcp,
}

/// How a query ended, for the `result` label of `lb_dns_queries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered here (addresses, a PTR, or no data for another type).
    Answered,
    /// `NXDOMAIN`: a cluster name on none of the task's networks.
    NxDomain,
    /// Relayed from an upstream server.
    Forwarded,
    /// `REFUSED`: not from one of the node's tasks.
    Refused,
    /// Malformed or unsupported (`FORMERR`, `NOTIMP`), or no upstream answered
    /// (`SERVFAIL`).
    Failed,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Self; 5] = [
        Self::Answered,
        Self::NxDomain,
        Self::Forwarded,
        Self::Refused,
        Self::Failed,
    ];

    /// The `result` label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::NxDomain => "nxdomain",
            Self::Forwarded => "forwarded",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Send {
        /// The encoded reply.
        bytes: Vec<u8>,
        /// What it says.
        outcome: Outcome,
    },
    /// Not a cluster name: relay it to the upstream servers.
    Forward,
    /// Not worth a reply (too short to carry an ID, or a response).
    Drop,
}

/// Answers `query`, which the task at `source` sent over `transport`.
#[must_use]
pub fn answer(view: &View, source: Ipv4Addr, query: &[u8], transport: Transport) -> Reply {
    let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
        return Reply::Drop;
    };
    if header.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if !view.is_task(source) {
        return error(&header, ResponseCode::Refused, Outcome::Refused);
    }
    let Ok(request) = Message::from_vec(query) else {
        return error(&header, ResponseCode::FormErr, Outcome::Failed);
    };
    if request.op_code != OpCode::Query {
        return error(&header, ResponseCode::NotImp, Outcome::Failed);
    }
    let [question] = request.queries.as_slice() else {
        return error(&header, ResponseCode::FormErr, Outcome::Failed);
    };
    if question.query_class() != DNSClass::IN {
        return Reply::Forward;
    }
    let Some(name) = plain_name(question.name()) else {
        return Reply::Forward;
    };
    let qtype = question.query_type();
    let (code, answers) = if qtype == RecordType::PTR
        && let Some(addr) = reverse_addr(&name)
    {
        match view.reverse(source, addr) {
            Reverse::Found(target) => match Name::from_ascii(target) {
                Ok(mut target) => {
                    target.set_fqdn(true);
                    let rdata = RData::PTR(PTR(target));
                    let record = Record::from_rdata(question.name().clone(), TASK_TTL, rdata);
                    (ResponseCode::NoError, vec![record])
                }
                Err(_) => (ResponseCode::NoError, Vec::new()),
            },
            Reverse::NotHere => (ResponseCode::NXDomain, Vec::new()),
            Reverse::Unknown => return Reply::Forward,
        }
    } else {
        match view.lookup(source, &name) {
            Lookup::Found(found) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                let mut addrs = found.addrs.clone();
                if !addrs.is_empty() {
                    let by = usize::from(request.id) % addrs.len();
                    addrs.rotate_left(by);
                }
                let records = addrs
                    .into_iter()
                    .map(|a| Record::from_rdata(question.name().clone(), found.ttl, RData::A(A(a))))
                    .collect();
                (ResponseCode::NoError, records)
            }
            Lookup::Found(_) => (ResponseCode::NoError, Vec::new()),
            Lookup::NotHere => (ResponseCode::NXDomain, Vec::new()),
            Lookup::Unknown => return Reply::Forward,
        }
    };
    let outcome = if code == ResponseCode::NXDomain {
        Outcome::NxDomain
    } else {
        Outcome::Answered
    };
    let mut reply = Message::response(request.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = request.checking_disabled;
    reply.metadata.response_code = code;
    reply.add_query(question.clone());
    reply.add_answers(answers);
    let limit = match (&request.edns, transport) {
        (_, Transport::Tcp) => usize::MAX,
        (Some(edns), Transport::Udp) => usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        (None, Transport::Udp) => 512,
    };
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        reply.set_edns(edns);
    }
    let bytes = match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Too long for the client's datagrams (or, in theory, unencodable): truncated,
        // so that it asks again over TCP.
        _ => {
            reply.answers.clear();
            reply.metadata.truncation = true;
            match reply.to_vec() {
                Ok(bytes) => bytes,
                Err(_) => return error(&header, ResponseCode::ServFail, Outcome::Failed),
            }
        }
    };
    Reply::Send { bytes, outcome }
}

/// A reply that carries only `code` (no question: the request may not have a readable
/// one).
fn error(header: &Header, code: ResponseCode, outcome: Outcome) -> Reply {
    let mut reply = Message::error_msg(header.id, header.op_code, code);
    reply.metadata.recursion_desired = header.recursion_desired;
    reply.metadata.recursion_available = true;
    match reply.to_vec() {
        Ok(bytes) => Reply::Send { bytes, outcome },
        Err(_) => Reply::Drop,
    }
}

/// A `SERVFAIL` reply to `query` (no upstream answered); `None` if it has no header.
#[must_use]
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    match error(&header, ResponseCode::ServFail, Outcome::Failed) {
        Reply::Send { bytes, .. } => Some(bytes),
        _ => None,
    }
}

/// `name` in lower case without the trailing dot; `None` if a label holds a dot or a
/// byte that is not printable ASCII (no cluster name does).
fn plain_name(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        if label.is_empty() || label.iter().any(|b| *b == b'.' || !b.is_ascii_graphic()) {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    Some(out)
}

/// The address `d.c.b.a.in-addr.arpa` stands for.
fn reverse_addr(name: &str) -> Option<Ipv4Addr> {
    let digits = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = digits.split('.');
    for octet in octets.iter_mut().rev() {
        let part = parts.next()?;
        if part.len() > 1 && part.starts_with('0') {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// A query for `name` of type `qtype` with ID `id` (recursion desired), as a stub
/// resolver sends it; for tests and the I/O shell's checks.
///
/// # Errors
/// If `name` is not a domain name.
pub fn query(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, qtype));
    message.to_vec()
}
