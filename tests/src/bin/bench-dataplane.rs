//! `cargo xtask bench dataplane`: nanoseconds per packet through the dataplane's programs,
//! each path beside a minimal forwarding program measured in the same run.
//!
//! Method. Every case is a crafted frame run through the real, loaded program by the
//! kernel (BPF_PROG_TEST_RUN) in a private network namespace, and every timed run is
//! checked to have taken the path the case is named for:
//! - Live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) times only the MAC-swap floor:
//!   the kernel copies a frame into each page of its pool once, and a reused page keeps
//!   what the program last wrote, so a program whose rewrite changes what it decides
//!   (DNAT, encapsulation) would see its own output from the 65th run on. A MAC swap
//!   swapped again is the same frame, so every run of the floor takes its path.
//! - Established paths are also timed in live-frames mode, as Katran's figures were, on
//!   a pair of flows whose rewrites undo each other: two VIPs of one service, `A` and
//!   `B`, whose flows from the same client port are DNATed to each other (`A` -> `B`,
//!   `B` -> `A`), so a reused page that keeps the last rewrite holds the other flow's
//!   first packet, and every run is an established packet of that service (checked from
//!   the counters, as below). Replies likewise: the Reply entry of `B`'s answer SNATs it
//!   to `A`, and `A`'s to `B`. The path is the one the single-run case names, except
//!   that the service is found by a VIP key instead of a published port's (one lookup
//!   either way).
//! - Paths that leave the frame unchanged (P7) run with `repeat`, beside `lb_xdp_pass`.
//! - Every path that rewrites the frame, or changes the program's state (new flows), is
//!   timed one run at a time (the kernel's time of a run of 1), over distinct frames
//!   where the path needs them (a SYN from a new port each run), beside the MAC-swap
//!   floor timed the same way. Each run's verdict is checked.
//! - Around every measurement, the dataplane's own counters are read: a run of an
//!   established flow (or of a reply of one) counts one packet of its service and no
//!   new flow; a new-flow run one packet and one new flow; a refused run one
//!   `isolation` drop and nothing for the service; a run through a task's node for
//!   routing-mesh traffic (and its return) nothing for any service; and no run may drop,
//!   lose a flow or count another path. A measurement whose counters differ stops the
//!   bench, naming the case: every figure below is of the path it names, on every run.
//! - The P2 cases' service (`8081`) has a backend of its own, so its flow is established
//!   once and found on every run (a backend of another service made each packet a new
//!   flow).
//!
//! - Networks (P3, a task's packet to a VIP, on the TC program of its veth): each case
//!   on a user network (`front`, its own VNI) beside the same case on the default
//!   network: an established flow (a completed handshake: its entries are in the flow
//!   table), a new flow (a SYN from a new port each run), and a packet refused because
//!   its VIP is on another network (`isolation`), beside the default network's new flow
//!   (the check is made where a new flow would be balanced).
//!
//! Each case is measured `ROUNDS` times, interleaved (A B C ... A B C ...), and reported
//! as the median.
#![forbid(unsafe_code)]

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use lb_common::{Flow, FlowKey, FlowKind};
use mesh_tests::{
    fixture::{CLIENT, Dataplane, NODE, NODE_MAC, PEER, PEER_MAC, be},
    frames::*,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

#[derive(Parser, Debug)]
struct Args {
    /// Where to write the markdown report.
    #[arg(long, default_value = "bench-results/dataplane.md")]
    out: std::path::PathBuf,
    /// Interleaved rounds per case.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Runs per live-frames or repeat measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Single runs per measurement for new-flow and TC cases.
    #[arg(long, default_value_t = 2_000)]
    singles: u32,
}

/// How a case is timed.
enum Mode {
    /// Live frames, `repeat` times.
    Live,
    /// Plain repeat on one buffer (the program leaves it unchanged).
    Repeat,
    /// One run per frame over distinct frames (`make(i)`), median of the kernel's times.
    SinglesXdp,
    /// As `SinglesXdp`, for the TC program.
    SinglesTc,
}

/// The path every run of a case must take, checked from the dataplane's counters.
#[derive(Clone, Copy)]
enum Path {
    /// A floor program, which has no counters.
    Floor,
    /// A path that counts for no service (routing-mesh traffic through a task's node,
    /// and its return): nothing counted for `web`, no drop, no lost flow.
    Uncounted,
    /// A packet of an established flow of the service (or a reply of one): one packet,
    /// no new flow.
    Established(u32),
    /// A new flow of the service.
    NewFlow(u32),
    /// Refused for isolation: one `isolation` drop, nothing for the service.
    Refused(u32),
}

struct Case {
    name: &'static str,
    floor: &'static str,
    prog: &'static str,
    mode: Mode,
    make: Box<dyn Fn(u16) -> Vec<u8>>,
    expect: i64,
    path: Path,
}

/// The counters a [`Path`] is checked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    packets: u64,
    new_flows: u64,
    isolation: u64,
    drops: u64,
    lost: u64,
}

impl Seen {
    fn read(dp: &mut Dataplane, service: u32) -> Result<Self> {
        let c = dp.service_counters(service)?;
        let mut drops = 0;
        for r in lb_common::DropReason::ALL {
            drops += dp.drops(r)?;
        }
        Ok(Self {
            packets: c.packets,
            new_flows: c.new_flows,
            isolation: dp.drops(lb_common::DropReason::Isolation)?,
            drops,
            lost: dp.flow_events(lb_common::FlowEvent::Lost)?,
        })
    }

    /// What `runs` runs of `path` add to `self`.
    fn after(self, path: Path, runs: u64) -> Self {
        let mut s = self;
        match path {
            Path::Floor | Path::Uncounted => {}
            Path::Established(_) => s.packets += runs,
            Path::NewFlow(_) => {
                s.packets += runs;
                s.new_flows += runs;
            }
            Path::Refused(_) => {
                s.isolation += runs;
                s.drops += runs;
            }
        }
        s
    }
}

fn service_of(path: Path) -> Option<u32> {
    match path {
        Path::Floor => None,
        Path::Uncounted => Some(WEB),
        Path::Established(s) | Path::NewFlow(s) | Path::Refused(s) => Some(s),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut dp = Dataplane::new().context("loading the dataplane (run as root)")?;
    let veth = dp.add_veth("lt0")?;
    mesh_on(&mut dp, &[0], veth);
    let client = |port: u16| (CLIENT, 10_000 + port);
    let mut cases: Vec<Case> = vec![
        Case {
            name: "floor: MAC swap + XDP_TX",
            floor: "",
            prog: "bench_xdp_mac_swap",
            mode: Mode::Live,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_TX.into(),
            path: Path::Floor,
        },
        Case {
            name: "floor: XDP_PASS",
            floor: "",
            prog: "lb_xdp_pass",
            mode: Mode::Repeat,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_PASS.into(),
            path: Path::Floor,
        },
        Case {
            name: "floor: MAC swap + XDP_TX, single runs",
            floor: "",
            prog: "bench_xdp_mac_swap",
            mode: Mode::SinglesXdp,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_TX.into(),
            path: Path::Floor,
        },
        Case {
            name: "P7 not the mesh's (TCP to :22), XDP_PASS",
            floor: "floor: XDP_PASS",
            prog: "lb_xdp",
            mode: Mode::Repeat,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_PASS.into(),
            path: Path::Uncounted,
        },
        Case {
            name: "P1 established, DNAT + redirect to local task",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_xdp",
            mode: Mode::SinglesXdp,
            make: Box::new(move |_| tcp(FROM_CLIENT, client(1), (NODE, 8080), Tcp::Ack, b"x")),
            expect: XDP_REDIRECT.into(),
            path: Path::Established(WEB),
        },
        Case {
            name: "P1 new flow (SYN), pick backend + 2 flow inserts",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_xdp",
            mode: Mode::SinglesXdp,
            make: Box::new(move |i| {
                tcp(
                    FROM_CLIENT,
                    (CLIENT, 20_000 + i),
                    (NODE, 8080),
                    Tcp::Syn,
                    &[],
                )
            }),
            expect: XDP_REDIRECT.into(),
            path: Path::NewFlow(WEB),
        },
        Case {
            name: "P2 established, DNAT + VXLAN encap + XDP_TX",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_xdp",
            mode: Mode::SinglesXdp,
            make: Box::new(move |_| tcp(FROM_CLIENT, client(2), (NODE, 8081), Tcp::Ack, b"x")),
            expect: XDP_TX.into(),
            path: Path::Established(WEB2),
        },
        Case {
            name: "P2 established, live frames (flow pair A <-> B), DNAT + VXLAN encap + XDP_TX",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
            make: Box::new(move |_| {
                tcp(
                    FROM_CLIENT,
                    (CLIENT, PAIR_PORT),
                    (PAIR_RA, 80),
                    Tcp::Ack,
                    b"x",
                )
            }),
            expect: XDP_TX.into(),
            path: Path::Established(PAIR),
        },
        Case {
            name: "P2 reply at ingress, decap + SNAT + XDP_TX",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_xdp",
            mode: Mode::SinglesXdp,
            make: Box::new(move |_| {
                let inner = tcp(
                    (PEER_MAC, NODE_MAC),
                    (REMOTE_TASK, 80),
                    client(2),
                    Tcp::Ack,
                    b"x",
                );
                vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50_000, &inner)
            }),
            expect: XDP_TX.into(),
            path: Path::Established(WEB2),
        },
        Case {
            name: "P2 reply at ingress, live frames (flow pair A <-> B), decap + SNAT + XDP_TX",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
            make: Box::new(move |_| {
                let inner = tcp(
                    (PEER_MAC, NODE_MAC),
                    (PAIR_RB, 80),
                    (CLIENT, PAIR_PORT),
                    Tcp::Ack,
                    b"x",
                );
                vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50_002, &inner)
            }),
            expect: XDP_TX.into(),
            path: Path::Established(PAIR),
        },
        Case {
            name: "P2 at task node, decap + redirect to task",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_xdp",
            mode: Mode::SinglesXdp,
            make: Box::new(move |_| {
                let inner = tcp(
                    (PEER_MAC, NODE_MAC),
                    (CLIENT, 3),
                    (LOCAL_TASK, 80),
                    Tcp::Ack,
                    b"x",
                );
                vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50_001, &inner)
            }),
            expect: XDP_REDIRECT.into(),
            path: Path::Uncounted,
        },
        Case {
            name: "TC reply of P1 flow, SNAT + redirect_neigh",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |_| {
                let from = (lb_common::service::task_mac(u32::from(LOCAL_TASK)), GW_MAC);
                tcp(from, (LOCAL_TASK, 80), client(1), Tcp::Ack, b"x")
            }),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::Established(WEB),
        },
        Case {
            name: "TC reply of P2 flow, VXLAN encap + redirect_neigh",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |_| {
                let from = (lb_common::service::task_mac(u32::from(LOCAL_TASK)), GW_MAC);
                tcp(from, (LOCAL_TASK, 80), (CLIENT, 3), Tcp::Ack, b"x")
            }),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::Uncounted,
        },
        Case {
            name: "P3 established task -> VIP, default network, DNAT + redirect",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |_| {
                from_task((LOCAL_TASK2, ESTABLISHED_PORT), (VIP, 80), Tcp::Ack, b"x")
            }),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::Established(WEB),
        },
        Case {
            name: "P3 established task -> VIP, user network, DNAT + redirect",
            floor: "P3 established task -> VIP, default network, DNAT + redirect",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |_| {
                from_task(
                    (FRONT_TASK, ESTABLISHED_PORT),
                    (FRONT_VIP, 80),
                    Tcp::Ack,
                    b"x",
                )
            }),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::Established(API_FRONT),
        },
        Case {
            name: "P3 new flow (SYN) task -> VIP, default network",
            floor: "floor: MAC swap + XDP_TX, single runs",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |i| from_task((LOCAL_TASK2, 20_000 + i), (VIP, 80), Tcp::Syn, &[])),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::NewFlow(WEB),
        },
        Case {
            name: "P3 new flow (SYN) task -> VIP, user network",
            floor: "P3 new flow (SYN) task -> VIP, default network",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |i| {
                from_task((FRONT_TASK, 20_000 + i), (FRONT_VIP, 80), Tcp::Syn, &[])
            }),
            expect: TC_ACT_REDIRECT.into(),
            path: Path::NewFlow(API_FRONT),
        },
        Case {
            name: "P3 refused: SYN to another network's VIP, isolation drop",
            floor: "P3 new flow (SYN) task -> VIP, default network",
            prog: "lb_tc_task",
            mode: Mode::SinglesTc,
            make: Box::new(move |i| {
                from_task((FRONT_TASK, 20_000 + i), (BACK_VIP, 80), Tcp::Syn, &[])
            }),
            expect: TC_ACT_SHOT.into(),
            path: Path::Refused(API_BACK),
        },
    ];

    // A second published port whose only backend is remote, for the P2 cases (its slots
    // after those of `networks_on`'s services).
    let web2 = lb_common::Service {
        id: WEB2,
        base: 700,
        slots: 1,
        flags: 0,
        vni: mesh_tests::fixture::VNI,
        sched: 0,
    };
    // Its own backend (a backend of another service would make every packet a new flow:
    // the program checks that a flow's backend still belongs to its service).
    dp.set_backend(
        WEB2_BACKEND,
        lb_common::Backend::new(u32::from(REMOTE_TASK), 80, WEB2),
    )?;
    dp.set_slots(700, &[WEB2_BACKEND])?;
    dp.set_service(
        lb_common::ServiceKey::published(8081, lb_common::IPPROTO_TCP),
        web2,
    )?;

    flow_pairs_on(&mut dp)?;

    // User networks `front` and `back` beside the default network: `api` on `front`
    // balances to FRONT_TASK2 on this node, as `web`'s VIP to LOCAL_TASK.
    networks_on(&mut dp, &[5], &[8]);

    // Establish the flows the "established" cases use, and check every verdict once.
    let setup = [
        tcp(FROM_CLIENT, client(1), (NODE, 8080), Tcp::Syn, &[]),
        tcp(FROM_CLIENT, client(2), (NODE, 8081), Tcp::Syn, &[]),
    ];
    for f in &setup {
        dp.run_xdp("lb_xdp", f)?;
    }
    establish_p3(&mut dp)?;
    let task_node = vxlan(
        (PEER_MAC, NODE_MAC),
        PEER,
        NODE,
        50_001,
        &tcp(
            (PEER_MAC, NODE_MAC),
            (CLIENT, 3),
            (LOCAL_TASK, 80),
            Tcp::Syn,
            &[],
        ),
    );
    dp.run_xdp("lb_xdp", &task_node)?;
    for c in &cases {
        let frame = (c.make)(PROBE_INDEX);
        let verdict = match c.mode {
            Mode::SinglesTc => i64::from(dp.run_tc(&frame)?.0),
            _ => i64::from(dp.run_xdp(c.prog, &frame)?.0),
        };
        ensure!(
            verdict == c.expect,
            "{}: verdict {verdict}, expected {}",
            c.name,
            c.expect
        );
    }

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut next_port = 0u16;
    for _ in 0..args.rounds {
        for (i, c) in cases.iter_mut().enumerate() {
            let before = match service_of(c.path) {
                Some(svc) => Some(Seen::read(&mut dp, svc)?),
                None => None,
            };
            let (ns, runs) = match c.mode {
                Mode::Live => (
                    ns(dp.time_xdp_live(c.prog, &(c.make)(0), args.repeat)?),
                    args.repeat,
                ),
                Mode::Repeat => (
                    ns(dp.run_xdp_timed(c.prog, &(c.make)(0), args.repeat)?.2),
                    args.repeat,
                ),
                Mode::SinglesXdp | Mode::SinglesTc => {
                    let mut runs = Vec::with_capacity(args.singles as usize);
                    for _ in 0..args.singles {
                        next_port = next_port.wrapping_add(1) % 40_000;
                        debug_assert!(next_port < PROBE_INDEX);
                        let frame = (c.make)(next_port);
                        let (verdict, d) = match c.mode {
                            Mode::SinglesTc => {
                                let (v, _, d) = dp.run_tc_timed(&frame, 1)?;
                                (i64::from(v), d)
                            }
                            _ => {
                                let (v, _, d) = dp.run_xdp_timed(c.prog, &frame, 1)?;
                                (i64::from(v), d)
                            }
                        };
                        ensure!(
                            verdict == c.expect,
                            "{}: a run's verdict {verdict}, expected {}",
                            c.name,
                            c.expect
                        );
                        runs.push(ns(d));
                    }
                    (median(&mut runs), args.singles)
                }
            };
            if let (Some(before), Some(svc)) = (before, service_of(c.path)) {
                let now = Seen::read(&mut dp, svc)?;
                let want = before.after(c.path, u64::from(runs));
                ensure!(
                    now == want,
                    "{}: not every run took the path named: counters {now:?}, expected \
                     {want:?} after {runs} runs from {before:?}",
                    c.name
                );
            }
            samples[i].push(ns);
        }
        // New-flow cases must keep finding new flows: start each round from an empty table.
        dp.clear_flows()?;
        for f in &setup {
            dp.run_xdp("lb_xdp", f)?;
        }
        dp.run_xdp("lb_xdp", &task_node)?;
        establish_p3(&mut dp)?;
        pair_flows(&mut dp)?;
    }

    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let programming = programming(args.rounds)?;
    let mut report = render(&cases, &medians, &args)?;
    render_programming(&mut report, &programming)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    print!("{report}");
    eprintln!("written to {}", args.out.display());
    Ok(())
}

/// The service of the P2 cases: a published port (8081) whose only backend is remote.
const WEB2: u32 = 2;
/// Its backend's id (after the fixture's).
const WEB2_BACKEND: u32 = 40;

/// The service of the live-frames flow pair, reached by two VIPs.
const PAIR: u32 = 20;
/// The client port of the flow pairs.
const PAIR_PORT: u16 = 62_000;
/// The pair's VIPs, each also the address of a task on the peer.
const PAIR_RA: Ipv4Addr = Ipv4Addr::new(10, 255, 4, 1);
/// See [`PAIR_RA`].
const PAIR_RB: Ipv4Addr = Ipv4Addr::new(10, 255, 4, 2);

/// The service, backends and endpoints of the flow pair (see the module docs): `PAIR`
/// at the VIPs `PAIR_RA` and `PAIR_RB`, one backend at each, tasks on the peer; then the
/// flows. (Timed in live-frames mode, a redirect into a local task's veth would count
/// the veth's delivery to its peer, which XDP_TX and the floor do not pay.)
fn flow_pairs_on(dp: &mut Dataplane) -> Result<()> {
    let svc = lb_common::Service {
        id: PAIR,
        base: 0,
        slots: 0,
        flags: 0,
        vni: mesh_tests::fixture::VNI,
        sched: 0,
    };
    for (i, addr) in [PAIR_RA, PAIR_RB].into_iter().enumerate() {
        dp.set_service(
            lb_common::ServiceKey::new(u32::from(addr), 80, lb_common::IPPROTO_TCP),
            svc,
        )?;
        dp.set_backend(
            PAIR_BACKEND + i as u32,
            lb_common::Backend::new(u32::from(addr), 80, PAIR),
        )?;
        dp.set_endpoint(
            addr,
            lb_common::Endpoint {
                node: be(PEER),
                ifindex: 0,
                mac: lb_common::service::task_mac(u32::from(addr)),
                gw_mac: [0; 6],
                vni: mesh_tests::fixture::VNI,
            },
        )?;
    }
    pair_flows(dp)
}

/// The flow pair's entries: the client's flows to `A` and `B` DNATed to each other, and
/// the Reply entries of their answers SNATed to each other.
fn pair_flows(dp: &mut Dataplane) -> Result<()> {
    let key = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)| FlowKey {
        src_addr: be(src.0),
        dst_addr: be(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto: lb_common::IPPROTO_TCP,
        pad: 0,
        pad2: 0,
    };
    let flow = |kind: FlowKind, backend: u32, nat: Ipv4Addr| Flow {
        kind: kind as u8,
        backend_id: PAIR_BACKEND + backend,
        nat_addr: be(nat),
        nat_port: 80u16.to_be(),
        service_id: PAIR,
        ..Flow::default()
    };
    let client = (CLIENT, PAIR_PORT);
    for (from, to, to_backend) in [(PAIR_RA, PAIR_RB, 1), (PAIR_RB, PAIR_RA, 0)] {
        dp.set_flow(
            key(client, (from, 80)),
            flow(FlowKind::Forward, to_backend, to),
        )?;
        dp.set_flow(
            key((from, 80), client),
            flow(FlowKind::Reply, to_backend, to),
        )?;
    }
    Ok(())
}

/// The first backend id of the flow pair (two).
const PAIR_BACKEND: u32 = 50;

/// The port of the P3 flows the "established" cases use.
const ESTABLISHED_PORT: u16 = 61_000;
/// The frame index of each case's verdict check before timing: outside the timed runs'
/// indices (below 40,000), and small enough that no case's port (at most 20,000 above
/// the index) overflows.
const PROBE_INDEX: u16 = 45_000;

/// The frame a local task's interface sends (`from`'s MAC to its gateway).
fn from_task(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let mac = lb_common::service::task_mac(u32::from(from.0));
    tcp((mac, GW_MAC), from, to, flags, payload)
}

/// Completes a TCP handshake from a task to a VIP through the TC program (SYN, the
/// backend's SYN-ACK, the client's ACK) for the P3 "established" cases, on the default
/// network (LOCAL_TASK2 to `web`'s VIP, balanced to LOCAL_TASK) and on `front`
/// (FRONT_TASK to `api`'s VIP there, balanced to FRONT_TASK2); checks that both
/// connections' entries are in the flow table (not the handshake table).
fn establish_p3(dp: &mut Dataplane) -> Result<()> {
    let port = ESTABLISHED_PORT;
    for (client, vip, backend) in [
        (LOCAL_TASK2, VIP, LOCAL_TASK),
        (FRONT_TASK, FRONT_VIP, FRONT_TASK2),
    ] {
        let steps = [
            from_task((client, port), (vip, 80), Tcp::Syn, &[]),
            from_task((backend, 80), (client, port), Tcp::SynAck, &[]),
            from_task((client, port), (vip, 80), Tcp::Ack, &[]),
        ];
        for (n, frame) in steps.iter().enumerate() {
            let (verdict, _) = dp.run_tc(frame)?;
            ensure!(
                verdict == TC_ACT_REDIRECT,
                "P3 handshake to {vip}, step {n}: verdict {verdict}"
            );
        }
        let key = key((client, port), (vip, 80), lb_common::IPPROTO_TCP);
        ensure!(
            dp.flow_in(lb_common::maps::FLOWS, &key)?.is_some(),
            "the P3 connection to {vip} is not established after its handshake"
        );
    }
    Ok(())
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn render(cases: &[Case], medians: &[f64], args: &Args) -> Result<String> {
    let mut s = String::new();
    let machine = mesh_tests::machine::Machine::this();
    writeln!(
        s,
        "# Dataplane benchmark: ns per packet through the eBPF programs\n"
    )?;
    writeln!(s, "Machine: {machine}.")?;
    writeln!(
        s,
        "Rounds: {} interleaved; {} runs per live/repeat measurement; {} single runs per \
         single-run measurement. Medians over rounds.\n",
        args.rounds, args.repeat, args.singles
    )?;
    writeln!(
        s,
        "| case | median ns/packet | floor or baseline | ratio to floor or baseline |"
    )?;
    writeln!(s, "| --- | ---: | --- | ---: |")?;
    for (c, m) in cases.iter().zip(medians) {
        let (floor, ratio) = match cases.iter().position(|f| f.name == c.floor) {
            Some(f) => (c.floor, format!("{:.2}x", m / medians[f])),
            None => ("-", "-".into()),
        };
        writeln!(s, "| {} | {m:.1} | {floor} | {ratio} |", c.name)?;
    }
    let of = |name: &str| {
        cases
            .iter()
            .position(|c| c.name == name)
            .map_or(f64::NAN, |i| medians[i])
    };
    let (est, est_user) = (
        of("P3 established task -> VIP, default network, DNAT + redirect"),
        of("P3 established task -> VIP, user network, DNAT + redirect"),
    );
    let (new, new_user) = (
        of("P3 new flow (SYN) task -> VIP, default network"),
        of("P3 new flow (SYN) task -> VIP, user network"),
    );
    let refused = of("P3 refused: SYN to another network's VIP, isolation drop");
    writeln!(s, "\n## Networks\n")?;
    writeln!(
        s,
        "A task's packet to a VIP on a user network costs what it costs on the default \
         network: {est_user:.0} ns against {est:.0} ns for an established flow ({:.2}x), \
         whose packets find their flow entry first and never reach the isolation check; \
         {new_user:.0} ns against {new:.0} ns for a new flow ({:.2}x), which pays the check \
         (one endpoint lookup) before it is balanced. A new flow to another network's VIP is \
         refused at that check, before any balancing or flow insert: {refused:.0} ns \
         ({:.2}x the default network's new flow). Each of these cases was verified on \
         every run (see the method below); the run stops if one run takes another path.",
        est_user / est,
        new_user / new,
        refused / new
    )?;
    writeln!(s, "\n## The reference to beat: Katran\n")?;
    writeln!(
        s,
        "Katran (Facebook's XDP load balancer), built from its sources and run with the same \
         frames, fixture and BPF_PROG_TEST_RUN modes (Intel Xeon KVM guest, 2 cores, medians \
         of 5 interleaved sets; quoted from issue 16, not measured in this run): an \
         established flow to a remote backend (IPIP, direct server return) 127 ns, 3.5x its \
         MAC-swap floor; a new flow (SYN) to a local backend 494 ns; a packet not for the \
         load balancer 33 ns. Those figures were taken in live-frames mode, before the page \
         reuse described below was found, against the live-frames floor; compare ratios to \
         each program's own floor, never nanoseconds across machines. Here, in this run: P2 \
         established {:.2}x the live-frames floor timed the same way (the flow pair; Katran: \
         3.5x; the issue's goal: at most 3.0x) and {:.2}x the single-run floor in single \
         runs; P1 new flow {:.2}x the single-run floor (goal: at most 8x); P7 {:.2}x \
         XDP_PASS (Katran: 33 ns against its XDP_PASS; goal: at most 2x).",
        of("P2 established, live frames (flow pair A <-> B), DNAT + VXLAN encap + XDP_TX")
            / of("floor: MAC swap + XDP_TX"),
        of("P2 established, DNAT + VXLAN encap + XDP_TX")
            / of("floor: MAC swap + XDP_TX, single runs"),
        of("P1 new flow (SYN), pick backend + 2 flow inserts")
            / of("floor: MAC swap + XDP_TX, single runs"),
        of("P7 not the mesh's (TCP to :22), XDP_PASS") / of("floor: XDP_PASS"),
    )?;
    writeln!(s, "\n## Method\n")?;
    writeln!(
        s,
        "Rerun with `cargo xtask bench dataplane` (root; about a minute).\n"
    )?;
    for line in include_str!("bench-dataplane.rs")
        .lines()
        .skip(3)
        .take_while(|l| l.starts_with("//!"))
    {
        writeln!(s, "{}", line.trim_start_matches("//!").trim_start())?;
    }
    Ok(s)
}

/// How many backends the programming measurement gives one service.
const PROGRAMMED: usize = 1_000;

/// What the programming measurement times, in order, each round.
const PROGRAMMING_STEPS: [&str; 3] = [
    "1,000 backends of one service, from none (with their 1,000 endpoints)",
    "one backend of the 1,000 replaced by another (a rolling update's step)",
    "all 1,000 removed (the service and its endpoints)",
];

/// The standalone configuration of one published service whose backends are the tasks
/// `first..first + PROGRAMMED` on the peer, or of nothing when `first` is `None`.
fn programming_config(first: Option<usize>) -> String {
    let mut c = String::from(
        "[node]\nname = \"node1\"\nunderlay = \"ul0\"\naddress = \"10.99.0.11\"\n\n\
         [[peers]]\nname = \"node2\"\naddress = \"10.99.0.12\"\n",
    );
    let Some(first) = first else {
        return c;
    };
    let tasks = first..first + PROGRAMMED;
    for i in tasks.clone() {
        let _ = write!(
            c,
            "\n[[endpoints]]\nname = \"t{i}\"\naddress = \"10.200.{}.{}\"\nnode = \"node2\"\n",
            i / 250,
            i % 250 + 1
        );
    }
    c.push_str(
        "\n[[services]]\nname = \"big\"\nports = [{ published = 9000, target = 80, \
         protocol = \"tcp\" }]\nbackends = [",
    );
    for i in tasks {
        let _ = write!(c, "{{ endpoint = \"t{i}\" }}, ");
    }
    c.push_str("]\n");
    c
}

/// Times the agent's own programming of the maps (`lb_agent::agent`'s reconcile without
/// its attachments: read the pinned maps' state, compute the desired state, diff, apply)
/// for the [`PROGRAMMING_STEPS`], on a dataplane the agent's loader opened in this
/// namespace; `rounds` rounds, milliseconds per step.
fn programming(rounds: usize) -> Result<Vec<Vec<f64>>> {
    use lb_agent::{
        config::Config,
        dataplane::{desired, loader::Dataplane as AgentDataplane, map_state},
        host::interfaces::{HostInfo, Interface},
    };
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lbbench-programming-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&pin_dir)?;
    let result = (|| {
        let mut dp = AgentDataplane::open(
            lb_agent::EBPF_OBJECT,
            &pin_dir,
            lb_common::maps::DEFAULT_MAX_FLOWS,
        )?;
        let mut host = HostInfo::default();
        host.insert(Interface {
            name: "ul0".into(),
            index: nix::net::if_::if_nametoindex("ul0")?,
            mac: NODE_MAC,
            mtu: 1500,
            ipv4: vec![NODE],
        });
        let configs = [Some(0), Some(1), None]
            .into_iter()
            .map(|first| -> Result<Config> {
                let c = Config::from_toml(&programming_config(first))?;
                c.validate(&host)?;
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut times = vec![Vec::new(); PROGRAMMING_STEPS.len()];
        for _ in 0..rounds {
            for (step, config) in configs.iter().enumerate() {
                let start = std::time::Instant::now();
                let current = dp.read_state()?;
                let mut allocs = desired::Allocators::resume(&current);
                let want = desired::compute(config, &host, &current, &mut allocs)?;
                let ops = map_state::diff(&current, &want.state)?;
                dp.apply(&ops)?;
                times[step].push(start.elapsed().as_secs_f64() * 1e3);
                let now = dp.read_state()?;
                let services = now.services.len();
                ensure!(
                    services == usize::from(step < 2)
                        && now.backends.len() == if step < 2 { PROGRAMMED } else { 0 },
                    "programming step {step}: {services} service keys and {} backends in the maps",
                    now.backends.len()
                );
            }
        }
        Ok(times)
    })();
    let _ = std::fs::remove_dir_all(&pin_dir);
    result
}

/// Appends the programming measurement to the report.
fn render_programming(s: &mut String, times: &[Vec<f64>]) -> Result<()> {
    writeln!(s, "\n## Programming 1,000 backends\n")?;
    writeln!(
        s,
        "The agent's own path from a configuration to the maps (read the pinned maps' state, \
         compute the desired state, diff, apply the map operations: what `lb-agent` does on \
         every change, standalone or managed, without attaching programs), timed with a \
         monotonic clock around those four steps, on maps the agent's loader opened; one \
         published service whose backends are tasks on a peer node. After each step the \
         maps are read back and checked to hold what was asked. Medians of {} rounds.\n",
        times.first().map_or(0, Vec::len)
    )?;
    writeln!(s, "| step | median ms | fastest ms | slowest ms |")?;
    writeln!(s, "| --- | ---: | ---: | ---: |")?;
    for (name, t) in PROGRAMMING_STEPS.iter().zip(times) {
        let mut t = t.clone();
        let (lo, hi) = t
            .iter()
            .fold((f64::MAX, 0.0_f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        writeln!(s, "| {name} | {:.2} | {lo:.2} | {hi:.2} |", median(&mut t))?;
    }
    Ok(())
}
