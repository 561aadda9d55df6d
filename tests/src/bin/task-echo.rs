//! `task-echo`: the tiny server every test task runs.
//!
//! ```text
//! task-echo [--name web.1] [--tag v1 | --tag-file /run/secrets/tag] [--port 80] [--udp]
//!           [--call api:80 | --redis db:6379 [--redis-password-file /run/secrets/pw]]
//! ```
//!
//! Arguments after `--` are ignored (a stand-in for a compose file's image, whose
//! `command` it is given).
//!
//! The name defaults to `$MESH_TASK_NAME`, which the agent's process runtime sets for
//! every task it starts (`web.3`).
//!
//! TCP: on each connection it first writes one line `task=<name> peer=<ip>:<port>\n`, or
//! `task=<name> tag=<tag> peer=<ip>:<port>\n` with `--tag` (the peer address as the server
//! saw it, which proves that the client's source address was preserved; the tag tells
//! versions of a service apart during a rolling update), then echoes every byte it
//! receives until EOF. `--tag-file PATH` reads the tag from a file at start (its first
//! word): a task that answers with it has read its secret or config.
//!
//! With `--call HOST:PORT`, each TCP connection first resolves `HOST` (through the
//! system's resolver: the task's `/etc/resolv.conf`, so by the mesh's DNS), connects to
//! it, reads its first line, and appends it to its own: `task=web.1 peer=<ip>:<port> |
//! task=api.2 peer=<ip>:<port>`, or `| error: <why>` when the call fails. A web tier
//! calling its backend by name on every request, as a Swarm app does.
//!
//! With `--redis HOST:PORT` instead (and `--redis-password-file PATH`, read at start:
//! a secret), each TCP connection increments the counter `hits` in that Redis server
//! (`AUTH`, then `INCR hits`, in Redis's protocol) and appends ` | hits=<N>`, or `|
//! error: <why>`: a web tier that changes its data store on every request.
//!
//! UDP (with `--udp`, on the same port): answers each datagram with the same line
//! followed by the datagram's payload.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

struct Args {
    name: String,
    tag: Option<String>,
    port: u16,
    udp: bool,
    call: Option<Upstream>,
}

/// What each TCP connection calls first.
#[derive(Clone)]
enum Upstream {
    /// Another task-echo: its banner.
    Echo(String),
    /// A Redis server: `INCR hits`.
    Redis {
        target: String,
        password: Option<String>,
    },
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut tag = None;
    let mut port = None;
    let mut udp = false;
    let mut call = None;
    let mut redis = None;
    let mut redis_password = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--name" => name = Some(it.next().ok_or("--name needs a value")?),
            "--tag" => {
                let v = it.next().ok_or("--tag needs a value")?;
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(format!("--tag {v:?}: one word, please"));
                }
                tag = Some(v);
            }
            "--tag-file" => {
                let path = it.next().ok_or("--tag-file needs a path")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--tag-file {path}: {e}"))?;
                let word = text.split_whitespace().next().unwrap_or_default();
                if word.is_empty() {
                    return Err(format!("--tag-file {path}: no word in it"));
                }
                tag = Some(word.to_string());
            }
            "--port" => {
                let v = it.next().ok_or("--port needs a value")?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v}: {e}"))?);
            }
            "--udp" => udp = true,
            "--call" => {
                let v = it.next().ok_or("--call needs HOST:PORT")?;
                if !v.contains(':') {
                    return Err(format!("--call {v}: expected HOST:PORT"));
                }
                call = Some(Upstream::Echo(v));
            }
            "--redis" => {
                let v = it.next().ok_or("--redis needs HOST:PORT")?;
                if !v.contains(':') {
                    return Err(format!("--redis {v}: expected HOST:PORT"));
                }
                redis = Some(v);
            }
            "--redis-password-file" => {
                let path = it.next().ok_or("--redis-password-file needs a path")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--redis-password-file {path}: {e}"))?;
                redis_password = Some(text.trim_end_matches(['\r', '\n']).to_string());
            }
            "-h" | "--help" => return Err(String::new()),
            // What follows is not ours: an image's stand-in ignores the command it is
            // given.
            "--" => break,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let name = name
        .or_else(|| std::env::var("MESH_TASK_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or("--name is required (or $MESH_TASK_NAME)")?;
    if let Some(target) = redis {
        if call.is_some() {
            return Err("--call and --redis: one upstream, please".into());
        }
        call = Some(Upstream::Redis {
            target,
            password: redis_password,
        });
    }
    Ok(Args {
        name,
        tag,
        port: port.unwrap_or(80),
        udp,
        call,
    })
}

/// Who answers: `task=<name>`, plus ` tag=<tag>` when tagged.
fn who(args: &Args) -> String {
    match &args.tag {
        Some(tag) => format!("task={} tag={tag}", args.name),
        None => format!("task={}", args.name),
    }
}

fn banner(who: &str, peer: SocketAddr) -> String {
    format!("{who} peer={peer}\n")
}

/// Resolves `target` (`HOST:PORT`) and connects to it.
fn connect_upstream(target: &str) -> Result<(TcpStream, SocketAddr), String> {
    use std::net::ToSocketAddrs as _;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {target}: no address"))?;
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {target} ({addr}): {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    Ok((conn, addr))
}

/// Calls `upstream` and returns what to append to the banner.
fn call_upstream(upstream: &Upstream) -> Result<String, String> {
    match upstream {
        Upstream::Echo(target) => {
            let (mut conn, addr) = connect_upstream(target)?;
            read_line(&mut conn).map_err(|e| format!("read from {target} ({addr}): {e}"))
        }
        Upstream::Redis { target, password } => {
            let (mut conn, addr) = connect_upstream(target)?;
            let mut talk = |args: &[&str]| -> Result<String, String> {
                // A command is an array of bulk strings (Redis's protocol, RESP).
                let mut out = format!("*{}\r\n", args.len()).into_bytes();
                for arg in args {
                    out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
                }
                conn.write_all(&out)
                    .map_err(|e| format!("write to {target} ({addr}): {e}"))?;
                let line = read_line(&mut conn)
                    .map_err(|e| format!("read from {target} ({addr}): {e}"))?;
                let line = line.trim_end_matches('\r').to_string();
                match line.chars().next() {
                    Some('+' | ':') => Ok(line[1..].to_string()),
                    _ => Err(format!("{target} answered {line:?}")),
                }
            };
            if let Some(password) = password {
                talk(&["AUTH", password])?;
            }
            let hits = talk(&["INCR", "hits"])?;
            Ok(format!("hits={hits}"))
        }
    }
}

/// The first line `conn` sends, without its newline.
fn read_line(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 1024 {
        match conn.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn serve_tcp_conn(name: &str, call: Option<&Upstream>, mut conn: TcpStream, peer: SocketAddr) {
    let mut first = banner(name, peer);
    if let Some(upstream) = call {
        first.pop();
        match call_upstream(upstream) {
            Ok(line) => first.push_str(&format!(" | {line}\n")),
            Err(e) => first.push_str(&format!(" | error: {e}\n")),
        }
    }
    if conn.write_all(first.as_bytes()).is_err() {
        return;
    }
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

fn serve_tcp(name: String, call: Option<Upstream>, listener: TcpListener) {
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                let name = name.clone();
                let call = call.clone();
                let spawned = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || serve_tcp_conn(&name, call.as_ref(), conn, peer));
                if let Err(e) = spawned {
                    eprintln!("task-echo: cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("task-echo: accept: {e}");
                // Out of file descriptors or similar: back off a little instead of spinning.
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_udp(name: &str, socket: &UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut out = banner(name, peer).into_bytes();
                out.extend_from_slice(&buf[..n]);
                if let Err(e) = socket.send_to(&out, peer) {
                    eprintln!("task-echo: udp send to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("task-echo: udp recv: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("task-echo: {e}");
            }
            eprintln!(
                "usage: task-echo [--name NAME] [--tag TAG | --tag-file PATH] [--port PORT] [--udp] \
                 [--call HOST:PORT | --redis HOST:PORT [--redis-password-file PATH]]"
            );
            return ExitCode::from(2);
        }
    };
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let listener = match TcpListener::bind(bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("task-echo: bind tcp {bind}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let udp = if args.udp {
        match UdpSocket::bind(bind) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("task-echo: bind udp {bind}: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let who = who(&args);
    eprintln!(
        "task-echo {who} listening on {bind} (tcp{})",
        if udp.is_some() { ", udp" } else { "" }
    );
    if let Some(socket) = udp {
        let name = who.clone();
        if let Err(e) = thread::Builder::new()
            .name("udp".into())
            .spawn(move || serve_udp(&name, &socket))
        {
            eprintln!("task-echo: cannot spawn the udp thread: {e}");
            return ExitCode::FAILURE;
        }
    }
    serve_tcp(who, args.call, listener);
    ExitCode::SUCCESS
}
