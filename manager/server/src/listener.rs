//! The API listener: TCP accepted and TLS handshaken here, not by tonic, so
//! that what a peer without a certificate can hold is bounded.
//!
//! - A TLS handshake must finish within [`ConnectionLimits::handshake_timeout`],
//!   and at most [`ConnectionLimits::max_handshakes`] run at once: one more
//!   drops the oldest, so a flood of silent connections cannot keep a
//!   member's handshake out for long.
//! - A connection whose peer sent no certificate (a node joining, or anyone)
//!   may only call `Join.Join` ([`crate::auth`]): it is closed
//!   [`ConnectionLimits::unauthenticated_lifetime`] after its handshake,
//!   whatever it does, and at most [`ConnectionLimits::max_unauthenticated`]
//!   are open at once (one more closes the oldest).
//! - A connection with a certificate the CA signed is a member's: it lives
//!   as long as its peer wants (HTTP/2 keepalives, set on the server, find
//!   dead ones).
//!
//! The connections keep tonic's connection info
//! ([`tonic::transport::server::TlsConnectInfo`]), so
//! `Request::peer_certs` works as with tonic's own TLS.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// What a peer may hold before it has proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a TLS handshake may take, from the TCP accept.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; one more drops the oldest.
    pub max_handshakes: usize,
    /// How long a connection without a client certificate stays open.
    pub unauthenticated_lifetime: Duration,
    /// Connections without a client certificate open at once; one more
    /// closes the oldest.
    pub max_unauthenticated: usize,
}

impl ConnectionLimits {
    /// The defaults: a 10 s handshake ([`mesh_client::pki::HANDSHAKE_TIMEOUT`]),
    /// 256 handshakes at once, 30 s for a connection without a certificate
    /// (a join is a CA fetch and one `Join` call, a commit of at most 5 s),
    /// 64 of them at once. Together they hold at most 320 file descriptors,
    /// well under the usual limit of 1024.
    pub const DEFAULT: Self = Self {
        handshake_timeout: mesh_client::pki::HANDSHAKE_TIMEOUT,
        max_handshakes: 256,
        unauthenticated_lifetime: Duration::from_secs(30),
        max_unauthenticated: 64,
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The TLS connections accepted on `listener`, for
/// `tonic::transport::Server::serve_with_incoming`: TCP_NODELAY set, TLS
/// done with `tls`, bounded by `limits`. Accepting stops when the stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), limits, tx));
    ReceiverStream::new(rx)
}

/// The open connections without a client certificate, oldest first: each
/// sender's connection closes when the sender is dropped.
type Unauthenticated = Arc<Mutex<VecDeque<oneshot::Sender<()>>>>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: ConnectionLimits,
    tx: mpsc::Sender<io::Result<Connection>>,
) {
    let mut handshakes: VecDeque<AbortHandle> = VecDeque::new();
    let unauthenticated: Unauthenticated = Arc::default();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, or the peer gave up before we
                // accepted: wait a little (not a busy loop), keep serving.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, small gRPC replies wait for the peer's
        // delayed ACK (~40 ms each): writes ran at ~20 per second per client.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        handshakes.retain(|h| !h.is_finished());
        if handshakes.len() >= limits.max_handshakes
            && let Some(oldest) = handshakes.pop_front()
        {
            tracing::debug!("too many TLS handshakes at once: dropping the oldest");
            oldest.abort();
        }
        let task = tokio::spawn(handshake(
            acceptor.clone(),
            tcp,
            limits,
            Arc::clone(&unauthenticated),
            tx.clone(),
        ));
        handshakes.push_back(task.abort_handle());
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    limits: ConnectionLimits,
    unauthenticated: Unauthenticated,
    tx: mpsc::Sender<io::Result<Connection>>,
) {
    let peer = tcp.peer_addr().ok();
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(?peer, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
            return;
        }
    };
    let has_certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    let limit = if has_certificate {
        None
    } else {
        let (close, closed) = oneshot::channel();
        let mut open = unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.retain(|sender| !sender.is_closed());
        if open.len() >= limits.max_unauthenticated {
            tracing::debug!("too many connections without a certificate: closing the oldest");
            open.pop_front();
        }
        open.push_back(close);
        Some(Limit {
            lifetime: Box::pin(tokio::time::sleep(limits.unauthenticated_lifetime)),
            closed,
            over: false,
        })
    };
    // An error here means the server stopped: the connection is dropped.
    let _ = tx.send(Ok(Connection { tls, limit })).await;
}

/// The end of a connection without a client certificate.
#[derive(Debug)]
struct Limit {
    lifetime: Pin<Box<Sleep>>,
    /// Resolves (with an error) when the accept loop drops the sender: the
    /// connection was the oldest of too many.
    closed: oneshot::Receiver<()>,
    over: bool,
}

impl Limit {
    /// Whether the connection must close; registers `cx` for when it must.
    fn is_over(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.over {
            self.over = self.lifetime.as_mut().poll(cx).is_ready()
                || Pin::new(&mut self.closed).poll(cx).is_ready();
        }
        self.over
    }
}

/// An accepted TLS connection; one without a client certificate fails its
/// reads and writes once its lifetime is over, which ends it.
#[derive(Debug)]
pub struct Connection {
    tls: TlsStream<TcpStream>,
    limit: Option<Limit>,
}

impl Connection {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.limit.as_mut().is_some_and(|limit| limit.is_over(cx)) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate reached its lifetime",
            ));
        }
        Ok(())
    }
}

impl Connected for Connection {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}
