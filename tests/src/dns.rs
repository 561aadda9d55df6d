//! A DNS server that plays the nodes' own resolver in a test topology: the agents forward
//! names the mesh does not know to it (`ManagedOptions::dns_upstream`). It answers `A`
//! queries for a fixed set of names, `NXDOMAIN` for any other, and counts what it was
//! asked, so a test can tell a forwarded answer from one the mesh made up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use crate::in_netns;

/// The TTL of the upstream's answers.
const TTL: u32 = 60;

/// A running upstream; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Serves `records` (lower-case names without the final dot) on `addr:53` (UDP) in
    /// the network namespace `ns`.
    ///
    /// # Errors
    /// If the namespace or the socket cannot be had.
    pub fn start(ns: &str, addr: Ipv4Addr, records: &[(&str, Ipv4Addr)]) -> Result<Self> {
        let bind = SocketAddr::from((addr, 53));
        let socket = in_netns(ns, move || UdpSocket::bind(bind))?
            .with_context(|| format!("bind the upstream resolver on {bind} in {ns}"))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let records: BTreeMap<String, Ipv4Addr> = records
            .iter()
            .map(|(name, a)| (name.to_ascii_lowercase(), *a))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::Builder::new()
                .name("dns-upstream".into())
                .spawn(move || serve(&socket, &records, &asked, &stop))?
        };
        Ok(Self {
            addr: bind,
            asked,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The names it was asked, in order (lower case, without the final dot).
    #[must_use]
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    socket: &UdpSocket,
    records: &BTreeMap<String, Ipv4Addr>,
    asked: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(question) = query.queries.first().cloned() else {
            continue;
        };
        let name = question.name().to_ascii();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        let mut reply = Message::response(query.id, OpCode::Query);
        reply.metadata.recursion_desired = query.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_query(question.clone());
        match records.get(&name) {
            Some(a) if question.query_type() == RecordType::A => {
                reply.add_answers([Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::A(A(*a)),
                )]);
            }
            Some(_) => {}
            None => reply.metadata.response_code = ResponseCode::NXDomain,
        }
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

/// The addresses `busybox nslookup` printed as answers: what follows `Address:` on a
/// line (anywhere on it: `service logs` prefixes each line with its task) when it is an
/// IPv4 address (the server's own line, `169.254.1.1:53`, carries a port).
#[must_use]
pub fn nslookup_addresses(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|l| l.rsplit_once("Address:").map(|(_, a)| a))
        .map(str::trim)
        .filter(|a| a.parse::<Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect()
}
