//! What clients do in the tests: requests to `task-echo` through the mesh.
//!
//! These functions use ordinary sockets of the calling thread's namespace: call them
//! inside [`crate::in_netns`] (or on sockets created there).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// Default timeout of a request.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What `task-echo` said first: which task answered, its tag, and the peer address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The task's name.
    pub task: String,
    /// The task's `--tag` (a version during a rolling update), if it has one.
    pub tag: Option<String>,
    /// The client address as the task saw it.
    pub peer: SocketAddr,
    /// What the service it called answered (`task-echo --call`): its banner, or
    /// `error: <why>`.
    pub called: Option<String>,
}

impl Reply {
    /// Parses `task=<name> [tag=<tag>] peer=<ip>:<port>` (with or without the newline),
    /// followed by ` | <the called service's answer>` with `task-echo --call`.
    pub fn parse(line: &str) -> Result<Self> {
        let line = line.trim_end();
        let (line, called) = match line.split_once(" | ") {
            Some((own, called)) => (own, Some(called.to_owned())),
            None => (line, None),
        };
        let mut task = None;
        let mut tag = None;
        let mut peer = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("task=") {
                task = Some(v.to_owned());
            } else if let Some(v) = field.strip_prefix("tag=") {
                tag = Some(v.to_owned());
            } else if let Some(v) = field.strip_prefix("peer=") {
                peer = Some(v.parse().with_context(|| format!("peer in {line:?}"))?);
            }
        }
        match (task, peer) {
            (Some(task), Some(peer)) => Ok(Self {
                task,
                tag,
                peer,
                called,
            }),
            _ => bail!("not a task-echo banner: {line:?}"),
        }
    }

    /// The peer's IPv4 address.
    #[must_use]
    pub fn peer_ip(&self) -> Option<Ipv4Addr> {
        match self.peer {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        }
    }
}

/// A TCP connection to `task-echo` whose banner has been read.
#[derive(Debug)]
pub struct EchoConn {
    /// The banner.
    pub reply: Reply,
    stream: TcpStream,
}

impl EchoConn {
    /// Connects to `addr`, reads the banner.
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connect to {addr}"))?;
        Self::banner(stream, addr)
    }

    /// As [`EchoConn::connect`], from local port `local_port` (of any address).
    ///
    /// A port outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
    /// 32768-60999 by default) is never picked by other connections of the client: the
    /// dataplane keys a task's reply entries by (task address and port, client address
    /// and port), so two connections of one client from one port that reach the same
    /// task through two different nodes overwrite each other's reply entry (a known
    /// defect), which a long-held connection under load may otherwise run into.
    pub fn connect_from(addr: SocketAddr, local_port: u16) -> Result<Self> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
            sockopt,
        };
        let SocketAddr::V4(v4) = addr else {
            bail!("{addr} is not IPv4");
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        // A blocking connect gives up after the send timeout.
        let timeout =
            nix::sys::time::TimeVal::new(i64::try_from(TIMEOUT.as_secs()).unwrap_or(5), 0);
        setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(std::net::SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                local_port,
            )),
        )
        .with_context(|| format!("bind local port {local_port}"))?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4))
            .with_context(|| format!("connect to {addr} from port {local_port}"))?;
        Self::banner(TcpStream::from(fd), addr)
    }

    /// Reads the banner of a connected stream.
    fn banner(stream: TcpStream, addr: SocketAddr) -> Result<Self> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing after the banner is consumed.
        while line.last() != Some(&b'\n') {
            let n = (&stream)
                .read(&mut byte)
                .with_context(|| format!("read the banner from {addr}"))?;
            ensure!(
                n == 1,
                "{addr} closed the connection before its banner ended"
            );
            line.push(byte[0]);
            ensure!(line.len() < 512, "banner from {addr} too long");
        }
        let reply = Reply::parse(&String::from_utf8_lossy(&line))?;
        Ok(Self { reply, stream })
    }

    /// The underlying stream.
    #[must_use]
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `data` and reads the same bytes back.
    pub fn roundtrip(&mut self, data: &[u8]) -> Result<()> {
        self.stream.write_all(data).context("send")?;
        let mut back = vec![0u8; data.len()];
        self.stream.read_exact(&mut back).context("read the echo")?;
        ensure!(back == data, "the echo differs from what was sent");
        Ok(())
    }

    /// Echoes `len` bytes of a deterministic pattern through the connection, writing on
    /// another thread while this one reads and checks; returns the bytes verified.
    ///
    /// `after_half` runs (on this thread) once half of the bytes have come back, while the
    /// transfer is in full swing, e.g. to kill an agent mid-transfer; the writer waits for
    /// it to finish before sending the second half.
    pub fn transfer(
        &mut self,
        len: usize,
        after_half: impl FnOnce() -> Result<()>,
    ) -> Result<usize> {
        let writer = self.stream.try_clone()?;
        let half = len / 2;
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        std::thread::scope(|s| -> Result<usize> {
            let w = s.spawn(move || -> Result<()> {
                let mut w = writer;
                let mut sent = 0;
                let mut chunk = vec![0u8; 64 * 1024];
                while sent < len {
                    if sent == half && !go_rx.recv().unwrap_or(false) {
                        return Ok(());
                    }
                    let end = (sent + chunk.len()).min(len);
                    let end = if sent < half { end.min(half) } else { end };
                    let n = end - sent;
                    fill_pattern(&mut chunk[..n], sent);
                    w.write_all(&chunk[..n]).context("send")?;
                    sent = end;
                }
                Ok(())
            });
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            let mut expect = vec![0u8; 64 * 1024];
            let mut after_half = Some(after_half);
            let result = (|| -> Result<usize> {
                while got < len {
                    if got == half
                        && let Some(f) = after_half.take()
                    {
                        let r = f();
                        let _ = go_tx.send(r.is_ok());
                        r.context("the mid-transfer action")?;
                    }
                    let want = (len - got).min(buf.len());
                    let want = if got < half {
                        want.min(half - got)
                    } else {
                        want
                    };
                    let n = self
                        .stream
                        .read(&mut buf[..want])
                        .with_context(|| format!("read the echo after {got} of {len} bytes"))?;
                    ensure!(n > 0, "connection closed after {got} of {len} bytes");
                    fill_pattern(&mut expect[..n], got);
                    ensure!(
                        buf[..n] == expect[..n],
                        "echoed bytes differ from what was sent at offset {got}"
                    );
                    got += n;
                }
                Ok(got)
            })();
            let _ = go_tx.send(false);
            let wres = w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
            let got = result?;
            wres?;
            Ok(got)
        })
    }

    /// Closes the sending side and checks that the server closes too, with nothing more.
    pub fn finish(mut self) -> Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).context("read to EOF")?;
        ensure!(
            rest.is_empty(),
            "{} unexpected bytes at the end",
            rest.len()
        );
        Ok(())
    }
}

/// Byte `i` of the transfer pattern: not periodic at any small power of two, so a lost,
/// duplicated or reordered segment shows.
fn fill_pattern(buf: &mut [u8], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i) as u64;
        *b = (x.wrapping_mul(0x9E37_79B9).wrapping_add(x >> 13) >> 7) as u8;
    }
}

/// Opens a connection to `addr`, reads the banner, closes.
pub fn request_tcp(addr: SocketAddr) -> Result<Reply> {
    let conn = EchoConn::connect(addr)?;
    let reply = conn.reply.clone();
    drop(conn);
    Ok(reply)
}

/// As [`request_udp`], from a connected UDP socket (`connect`, then `send` and `recv`):
/// the kernel delivers only datagrams from the address the socket is connected to.
pub fn request_udp_connected(addr: SocketAddr, payload: &[u8]) -> Result<(Reply, Vec<u8>)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind a UDP socket")?;
    socket
        .connect(addr)
        .with_context(|| format!("connect a UDP socket to {addr}"))?;
    udp_exchange(addr, &socket, |buf| {
        socket
            .send(payload)
            .with_context(|| format!("send to {addr}"))?;
        Ok(socket.recv(buf))
    })
}

/// Sends one datagram with `payload` to `addr` (retrying a few times, UDP may lose one
/// while neighbours resolve) and returns the banner and the echoed payload.
pub fn request_udp(addr: SocketAddr, payload: &[u8]) -> Result<(Reply, Vec<u8>)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind a UDP socket")?;
    udp_exchange(addr, &socket, |buf| {
        socket
            .send_to(payload, addr)
            .with_context(|| format!("send to {addr}"))?;
        match socket.recv_from(buf) {
            Ok((n, from)) => {
                ensure!(
                    from == addr,
                    "answer to a datagram for {addr} came from {from}"
                );
                Ok(Ok(n))
            }
            Err(e) => Ok(Err(e)),
        }
    })
}

/// Up to 5 tries of `once` (send, then receive into the buffer) on `socket`, with a 1 s
/// receive timeout; the banner and the echoed payload of the first answer.
fn udp_exchange(
    addr: SocketAddr,
    socket: &UdpSocket,
    mut once: impl FnMut(&mut [u8]) -> Result<std::io::Result<usize>>,
) -> Result<(Reply, Vec<u8>)> {
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 65536];
    let mut last_err = None;
    for _ in 0..5 {
        match once(&mut buf)? {
            Ok(n) => {
                let data = &buf[..n];
                let nl = data
                    .iter()
                    .position(|&b| b == b'\n')
                    .context("UDP answer without a banner line")?;
                let reply = Reply::parse(&String::from_utf8_lossy(&data[..nl]))?;
                return Ok((reply, data[nl + 1..].to_vec()));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.map_or_else(
        || anyhow::anyhow!("no answer"),
        |e| anyhow::Error::new(e).context(format!("no UDP answer from {addr}")),
    ))
}

/// A minimal HTTP/1.0 GET (for `/metrics`): returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (code, body) = http_get_status(addr, path)?;
    ensure!(code == 200, "GET {addr}{path}: {code}");
    Ok(body)
}

/// `GET path` on `addr` (HTTP/1.0) with `Accept: accept` when given: the
/// `Content-Type` and the body of a 200 answer (for `/metrics`' content
/// negotiation).
///
/// # Errors
/// If the connection fails, the answer is not HTTP or not a 200.
pub fn http_get_accept(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<(String, String)> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let answer = http_exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n"),
        TIMEOUT,
    )
    .with_context(|| format!("GET {addr}{path}"))?;
    ensure!(
        answer.code == 200,
        "GET {addr}{path}: {}",
        answer.head.lines().next().unwrap_or_default()
    );
    let content_type = answer.header("content-type").unwrap_or_default().to_owned();
    Ok((content_type, answer.body))
}

/// `GET path` on `addr` (HTTP/1.0): the status code and the body, whatever the code.
///
/// # Errors
/// If the connection fails or the answer is not HTTP.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let answer = http_exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
        TIMEOUT,
    )
    .with_context(|| format!("GET {addr}{path}"))?;
    Ok((answer.code, answer.body))
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub code: u16,
    /// The status line and the headers, as received.
    pub head: String,
    /// The body (lossily UTF-8).
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (any case), if present.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// Sends `request` (a whole HTTP/1.x request) to `addr` and reads the answer, each read
/// within `timeout`: its body is `Content-Length` bytes when the answer gives one (a
/// server may keep the connection open after it, as Chromium's DevTools does), else
/// what comes until the server closes.
///
/// # Errors
/// If the connection fails, or the answer is not HTTP or ends early.
pub fn http_exchange(addr: SocketAddr, request: &str, timeout: Duration) -> Result<HttpAnswer> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("read the answer of {addr}"))?;
        if read == 0 {
            bail!("not an HTTP answer from {addr}: {head:?}");
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.lines().next().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {status:?} from {addr}"))?;
    let mut answer = HttpAnswer {
        code,
        head,
        body: String::new(),
    };
    let mut body = Vec::new();
    match answer.header("content-length") {
        Some(length) => {
            body.resize(length.parse().context("a Content-Length")?, 0);
            reader
                .read_exact(&mut body)
                .with_context(|| format!("read the body of {addr}'s answer"))?;
        }
        None => {
            reader
                .read_to_end(&mut body)
                .with_context(|| format!("read the body of {addr}'s answer"))?;
        }
    }
    answer.body = String::from_utf8_lossy(&body).into_owned();
    Ok(answer)
}

/// Connects to `addr` with a short timeout: `Ok(true)` if it connected.
pub fn tcp_reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// Sends ICMP echo requests to `addr` (raw socket; needs root) until one is answered,
/// up to `tries` of them one second apart.
pub fn ping(addr: Ipv4Addr, tries: u32) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
        setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .context("open a raw ICMP socket")?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )?;
    let id = (std::process::id() & 0xffff) as u16;
    let dest = SockaddrIn::from(std::net::SocketAddrV4::new(addr, 0));
    for seq in 0..tries.max(1) as u16 {
        let mut pkt = [0u8; 16];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..].copy_from_slice(b"meshping");
        let sum = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        sendto(fd.as_raw_fd(), &pkt, &dest, MsgFlags::empty())
            .with_context(|| format!("send an echo request to {addr}"))?;
        let mut buf = [0u8; 1500];
        // Read until our reply or the timeout.
        while let Ok((n, from)) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            let from_ip = from.map(|f| f.ip());
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n >= ihl + 8
                && from_ip == Some(addr)
                && buf[ihl] == 0
                && buf[ihl + 4..ihl + 6] == id.to_be_bytes()
                && buf[ihl + 6..ihl + 8] == seq.to_be_bytes()
            {
                return Ok(());
            }
        }
    }
    bail!("no ICMP echo reply from {addr} to {tries} requests")
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_banner() {
        let r = Reply::parse("task=web.1 peer=10.99.0.100:40000\n").unwrap();
        assert_eq!(r.task, "web.1");
        assert_eq!(r.peer_ip(), Some(Ipv4Addr::new(10, 99, 0, 100)));
        assert_eq!(r.tag, None);
        assert!(Reply::parse("hello").is_err());
        let r =
            Reply::parse("task=web.2 peer=10.99.0.100:4 | task=api.1 peer=10.0.0.3:5\n").unwrap();
        assert_eq!((r.task.as_str(), r.peer.port()), ("web.2", 4));
        assert_eq!(r.called.as_deref(), Some("task=api.1 peer=10.0.0.3:5"));
        let r = Reply::parse("task=web.3 tag=v2 peer=10.99.0.100:40000").unwrap();
        assert_eq!(r.task, "web.3");
        assert_eq!(r.tag.as_deref(), Some("v2"));
    }
}
