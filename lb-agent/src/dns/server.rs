//! The I/O shell of the tasks' resolver: a UDP and a TCP listener on one address and
//! port, answering from the latest [`View`] ([`super::answer`]), and forwarding what is
//! not a cluster name to the upstream servers.
//!
//! Bounds, since any task (and, at the address, anyone who can route to it) may talk to
//! it:
//!
//! - at most [`Limits::forwards`] forwarded queries in flight (UDP and TCP together);
//!   past it a query gets `SERVFAIL` at once;
//! - at most [`Limits::connections`] TCP connections; past it a new one is closed;
//! - a TCP connection idle (or slow to send a message) for [`Limits::idle`] is closed;
//! - each forward gives up after [`Limits::timeout`] over all upstreams (each tried in
//!   turn), and the client gets `SERVFAIL`.
//!
//! Forwarding relays the client's query and the upstream's reply as they are (the same
//! ID; a truncated reply stays truncated, the client asks again over TCP, which is
//! forwarded over TCP). Each forward uses a fresh socket (a random port), and a UDP
//! reply counts only from the server asked, with the query's ID.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

use super::answer::{Outcome, Reply, Transport, answer, servfail};
use super::view::View;

/// What the listeners may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Forwarded queries in flight (Swarm's `maxConcurrent`: 1024).
    pub forwards: usize,
    /// Open TCP connections.
    pub connections: usize,
    /// How long a TCP connection may stay idle or take to send one message.
    pub idle: Duration,
    /// How long a forward may take, over all upstreams (Swarm: 4 s).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            forwards: 1024,
            connections: 256,
            idle: Duration::from_secs(10),
            timeout: Duration::from_secs(4),
        }
    }
}

/// Queries by [`Outcome`], for `lb_dns_queries_total`.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; 5]);

impl Counters {
    /// Counts one query that ended as `outcome`.
    pub fn inc(&self, outcome: Outcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The queries that ended as `outcome` so far.
    #[must_use]
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize].load(Ordering::Relaxed)
    }
}

/// Failures to start the listeners.
#[derive(Debug, thiserror::Error)]
#[error("DNS: {what}: {source}")]
pub struct ServerError {
    what: String,
    source: std::io::Error,
}

/// The running listeners; dropping it stops them.
#[derive(Debug)]
pub struct Server {
    view: watch::Sender<Arc<View>>,
    counters: Arc<Counters>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the serving tasks share.
struct Shared {
    view: watch::Receiver<Arc<View>>,
    counters: Arc<Counters>,
    upstreams: Vec<SocketAddr>,
    limits: Limits,
    forwards: Arc<Semaphore>,
}

impl Server {
    /// Binds UDP and TCP at `ip:port` (`port` 0: a free port, the same for both) and
    /// serves an empty view (every query `REFUSED`) until [`Server::set_view`].
    ///
    /// # Errors
    /// [`ServerError`] if either socket cannot be bound.
    pub async fn bind(
        ip: Ipv4Addr,
        port: u16,
        upstreams: Vec<SocketAddr>,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        let bind_err = |what: String| move |source| ServerError { what, source };
        let (udp, tcp) = if port == 0 {
            // A free UDP port that is also free for TCP.
            let mut tries = 0;
            loop {
                let udp = UdpSocket::bind((ip, 0))
                    .await
                    .map_err(bind_err(format!("bind UDP {ip}:0")))?;
                let port = udp.local_addr().map_err(bind_err("local address".into()))?;
                match TcpListener::bind((ip, port.port())).await {
                    Ok(tcp) => break (udp, tcp),
                    Err(e) if tries >= 10 => return Err(bind_err(format!("bind TCP {port}"))(e)),
                    Err(_) => tries += 1,
                }
            }
        } else {
            let udp = UdpSocket::bind((ip, port))
                .await
                .map_err(bind_err(format!("bind UDP {ip}:{port}")))?;
            let tcp = TcpListener::bind((ip, port))
                .await
                .map_err(bind_err(format!("bind TCP {ip}:{port}")))?;
            (udp, tcp)
        };
        let addr = udp.local_addr().map_err(bind_err("local address".into()))?;
        let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            view: view_rx,
            counters: Arc::clone(&counters),
            upstreams,
            limits,
            forwards: Arc::new(Semaphore::new(limits.forwards)),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), Arc::clone(&shared))),
            tokio::spawn(serve_tcp(tcp, shared)),
        ];
        Ok(Self {
            view: view_tx,
            counters,
            addr,
            tasks,
        })
    }

    /// Answers from `view` from now on.
    pub fn set_view(&self, view: View) {
        self.view.send_replace(Arc::new(view));
    }

    /// The queries answered so far, by outcome.
    #[must_use]
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Where it listens (UDP and TCP).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // An ICMP error of an earlier reply, or no memory: the next one may do.
                debug!(error = %e, "DNS: receiving a query");
                continue;
            }
        };
        let SocketAddr::V4(source) = peer else {
            continue;
        };
        let query = &buf[..n];
        let view = Arc::clone(&shared.view.borrow());
        match answer(&view, *source.ip(), query, Transport::Udp) {
            Reply::Send { bytes, outcome } => {
                shared.counters.inc(outcome);
                let _ = socket.send_to(&bytes, peer).await;
            }
            Reply::Drop => {}
            Reply::Forward => {
                let Ok(permit) = Arc::clone(&shared.forwards).try_acquire_owned() else {
                    shared.counters.inc(Outcome::Failed);
                    if let Some(fail) = servfail(query) {
                        let _ = socket.send_to(&fail, peer).await;
                    }
                    continue;
                };
                let (socket, shared, query) =
                    (Arc::clone(&socket), Arc::clone(&shared), query.to_vec());
                let upstreams = view.upstreams(*source.ip()).map(<[SocketAddr]>::to_vec);
                tokio::spawn(async move {
                    let upstreams = upstreams.as_deref().unwrap_or(&shared.upstreams);
                    let reply = forward(&shared, upstreams, &query, Transport::Udp).await;
                    drop(permit);
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.limits.connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // Out of descriptors, most likely: give the others time to close.
                warn!(error = %e, "DNS: accepting a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            debug!(%peer, "DNS: too many TCP connections, one closed");
            continue;
        };
        let SocketAddr::V4(source) = peer else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, *source.ip(), &shared).await {
                debug!(%peer, error = %e, "DNS: a TCP connection ended");
            }
            drop(permit);
        });
    }
}

/// Reads one length-prefixed message; `None` at a clean end of the stream.
async fn read_message(stream: &mut TcpStream, idle: Duration) -> std::io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + idle;
    let mut len = [0u8; 2];
    match timeout_at(deadline, stream.read_exact(&mut len)).await {
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(r) => r?,
    };
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    timeout_at(deadline, stream.read_exact(&mut message))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(Some(message))
}

async fn write_message(
    stream: &mut TcpStream,
    message: &[u8],
    idle: Duration,
) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    timeout(idle, stream.write_all(&framed))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn serve_connection(
    mut stream: TcpStream,
    source: Ipv4Addr,
    shared: &Shared,
) -> std::io::Result<()> {
    let idle = shared.limits.idle;
    while let Some(query) = read_message(&mut stream, idle).await? {
        let view = Arc::clone(&shared.view.borrow());
        let reply = match answer(&view, source, &query, Transport::Tcp) {
            Reply::Send { bytes, outcome } => {
                shared.counters.inc(outcome);
                bytes
            }
            Reply::Drop => return Ok(()),
            Reply::Forward => {
                let Ok(_permit) = shared.forwards.try_acquire() else {
                    shared.counters.inc(Outcome::Failed);
                    match servfail(&query) {
                        Some(fail) => {
                            write_message(&mut stream, &fail, idle).await?;
                            continue;
                        }
                        None => return Ok(()),
                    }
                };
                let upstreams = view.upstreams(source).unwrap_or(&shared.upstreams);
                match forward(shared, upstreams, &query, Transport::Tcp).await {
                    Some(reply) => reply,
                    None => return Ok(()),
                }
            }
        };
        write_message(&mut stream, &reply, idle).await?;
    }
    Ok(())
}

/// Asks the upstream servers (the node's, or the asking task's own `--dns`) in turn
/// until one answers, within the forward timeout; the reply to relay (`SERVFAIL` if none
/// answered), counted.
async fn forward(
    shared: &Shared,
    upstreams: &[SocketAddr],
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + shared.limits.timeout;
    // Each server gets its share of the time left: a dead first server leaves the
    // others time, one that fails at once leaves them all of its share.
    for (i, upstream) in upstreams.iter().enumerate() {
        let left = u32::try_from(upstreams.len() - i).unwrap_or(1);
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let until = now + (deadline - now) / left;
        let result = match transport {
            Transport::Udp => timeout_at(until, ask_udp(*upstream, query)).await,
            Transport::Tcp => timeout_at(until, ask_tcp(*upstream, query)).await,
        };
        match result {
            Ok(Ok(reply)) => {
                shared.counters.inc(Outcome::Forwarded);
                return Some(reply);
            }
            Ok(Err(e)) => debug!(%upstream, error = %e, "DNS: forwarding failed"),
            Err(_) => debug!(%upstream, "DNS: no answer from the upstream server in time"),
        }
    }
    shared.counters.inc(Outcome::Failed);
    servfail(query)
}

/// Whether `reply` answers `query`: a response with its ID.
fn answers(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= 12 && query.len() >= 2 && reply[..2] == query[..2] && reply[2] & 0x80 != 0
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let any: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        if answers(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    // The caller's deadline bounds the whole exchange.
    let forever = Duration::from_secs(3600);
    write_message(&mut stream, query, forever).await?;
    let reply = read_message(&mut stream, forever)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    if answers(query, &reply) {
        Ok(reply)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the upstream's reply does not match the query",
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The listeners over real loopback sockets: a view whose one task is 127.0.0.1,
    //! and fake upstream servers that answer (or not) as the test says.

    use std::net::Ipv4Addr;
    use std::time::Duration;

    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};
    use mesh_api::assignment::{AssignedTask, Assignment, Backend, ServiceRoutes, TaskAction};
    use mesh_api::network::IngressNetwork;
    use mesh_api::spec::{RuntimeKind, ServiceSpec};
    use mesh_api::task::TaskState;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream, UdpSocket};

    use super::super::answer::{Outcome, query};
    use super::super::view::View;
    use super::{Limits, Server};

    const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

    /// Service `web` at `vip`, whose one task (web.1) is 127.0.0.1 on this node.
    fn view(vip: &str) -> View {
        View::new(&Assignment {
            version: 1,
            node: 1,
            ingress: IngressNetwork::default(),
            networks: vec![],
            peers: Default::default(),
            tasks: vec![AssignedTask {
                id: 1,
                name: "web.1".into(),
                service_id: 1,
                service_name: "web".into(),
                spec: ServiceSpec::new("web", RuntimeKind::Process, "sleep", vec![]).task,
                addr: LOOPBACK,
                networks: vec![],
                action: TaskAction::Run,
                state: TaskState::Running,
                slot: 1,
            }],
            services: vec![std::sync::Arc::new(ServiceRoutes {
                id: 1,
                name: "web".into(),
                vip: Some(vip.parse().unwrap()),
                ports: vec![],
                backends: vec![Backend {
                    task: 1,
                    name: "web.1".into(),
                    addr: LOOPBACK,
                    networks: vec![],
                    node: 1,
                    draining: false,
                }],
                networks: vec![],
                lb_algorithm: Default::default(),
            })],
            history: Default::default(),
            secrets: vec![],
            configs: vec![],
            hostname: String::new(),
        })
    }

    fn limits() -> Limits {
        Limits {
            forwards: 8,
            connections: 2,
            idle: Duration::from_millis(500),
            timeout: Duration::from_millis(600),
        }
    }

    async fn udp(server: std::net::SocketAddr, q: &[u8]) -> Message {
        let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
        socket.send_to(q, server).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert_eq!(from, server);
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn tcp_ask(stream: &mut TcpStream, q: &[u8]) -> Message {
        let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(q);
        stream.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.unwrap();
        Message::from_vec(&reply).unwrap()
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A reply to `q` as an upstream server would send it: 192.0.2.7, with TC if
    /// `truncated`.
    fn upstream_reply(q: &[u8], truncated: bool) -> Vec<u8> {
        let request = Message::from_vec(q).unwrap();
        let mut reply = Message::response(request.id, request.op_code);
        reply.metadata.truncation = truncated;
        reply.add_query(request.queries[0].clone());
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            request.queries[0].name().clone(),
            60,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 7))),
        ));
        reply.to_vec().unwrap()
    }

    /// A fake upstream: answers every UDP query (truncated) and every TCP query (whole)
    /// on one port; how many queries it got.
    async fn fake_upstream() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let udp = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = udp.send_to(&upstream_reply(&buf[..n], true), from).await;
            }
        });
        let counted = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut q).await.unwrap();
                let reply = upstream_reply(&q, false);
                let mut framed = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                s.write_all(&framed).await.unwrap();
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn answers_cluster_names_over_udp_and_tcp_and_follows_new_views() {
        let server = Server::bind(LOOPBACK, 0, vec![], limits()).await.unwrap();
        let at = server.local_addr();
        // Before any view: refused.
        let q = query(1, "web", RecordType::A).unwrap();
        assert_eq!(udp(at, &q).await.response_code, ResponseCode::Refused);
        server.set_view(view("10.255.0.100"));
        assert_eq!(addrs(&udp(at, &q).await), ["10.255.0.100"]);
        let mut stream = TcpStream::connect(at).await.unwrap();
        let q2 = query(2, "tasks.web", RecordType::A).unwrap();
        assert_eq!(addrs(&tcp_ask(&mut stream, &q2).await), ["127.0.0.1"]);
        // Several queries on one connection; a new view applies at once.
        server.set_view(view("10.255.0.200"));
        assert_eq!(addrs(&tcp_ask(&mut stream, &q).await), ["10.255.0.200"]);
        let q3 = query(3, "nope.web", RecordType::A).unwrap();
        // No upstream: a name outside the cluster fails.
        assert_eq!(udp(at, &q3).await.response_code, ResponseCode::ServFail);
        let counters = server.counters();
        assert_eq!(counters.get(Outcome::Refused), 1);
        assert_eq!(counters.get(Outcome::Answered), 3);
        assert_eq!(counters.get(Outcome::Failed), 1);
    }

    #[tokio::test]
    async fn forwards_other_names_and_relays_the_reply_as_it_is() {
        let (upstream, seen) = fake_upstream().await;
        let server = Server::bind(LOOPBACK, 0, vec![upstream], limits())
            .await
            .unwrap();
        server.set_view(view("10.255.0.100"));
        let at = server.local_addr();
        let q = query(0x5151, "example.com", RecordType::A).unwrap();
        let reply = udp(at, &q).await;
        assert_eq!(reply.id, 0x5151);
        assert!(reply.truncation, "the upstream's TC is passed through");
        assert_eq!(addrs(&reply), ["192.0.2.7"]);
        // Over TCP, forwarded over TCP.
        let mut stream = TcpStream::connect(at).await.unwrap();
        let reply = tcp_ask(&mut stream, &q).await;
        assert!(!reply.truncation);
        assert_eq!(addrs(&reply), ["192.0.2.7"]);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(server.counters().get(Outcome::Forwarded), 2);
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_servfail_in_time_and_the_next_one_is_tried() {
        // Bound, never answers.
        let silent = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
        let (upstream, _) = fake_upstream().await;
        let server = Server::bind(LOOPBACK, 0, vec![silent.local_addr().unwrap()], limits())
            .await
            .unwrap();
        server.set_view(view("10.255.0.100"));
        let q = query(7, "example.com", RecordType::A).unwrap();
        let started = std::time::Instant::now();
        let reply = udp(server.local_addr(), &q).await;
        assert_eq!(reply.response_code, ResponseCode::ServFail);
        assert_eq!(reply.id, 7);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(server.counters().get(Outcome::Failed), 1);
        let both = vec![silent.local_addr().unwrap(), upstream];
        let server = Server::bind(LOOPBACK, 0, both, limits()).await.unwrap();
        server.set_view(view("10.255.0.100"));
        assert_eq!(addrs(&udp(server.local_addr(), &q).await), ["192.0.2.7"]);
    }

    #[tokio::test]
    async fn tcp_connections_are_bounded_in_number_and_idle_time() {
        let server = Server::bind(LOOPBACK, 0, vec![], limits()).await.unwrap();
        server.set_view(view("10.255.0.100"));
        let at = server.local_addr();
        let q = query(1, "web", RecordType::A).unwrap();
        let mut first = TcpStream::connect(at).await.unwrap();
        let mut second = TcpStream::connect(at).await.unwrap();
        // Both are served (so both are accepted and hold their slots).
        tcp_ask(&mut first, &q).await;
        tcp_ask(&mut second, &q).await;
        // A third is closed at once.
        let mut third = TcpStream::connect(at).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
            .await
            .expect("closed within 5 s");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // An idle one is closed after the idle time.
        let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut byte))
            .await
            .expect("closed within 5 s");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // Its slot is free again.
        let mut fourth = TcpStream::connect(at).await.unwrap();
        drop(second);
        assert_eq!(addrs(&tcp_ask(&mut fourth, &q).await), ["10.255.0.100"]);
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error() {
        let server = Server::bind(LOOPBACK, 0, vec![], limits()).await.unwrap();
        let port = server.local_addr().port();
        let err = Server::bind(LOOPBACK, port, vec![], limits())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
