//! `cargo xtask bench dataplane`: nanoseconds per packet through the dataplane's programs,
//! each path beside a minimal forwarding program measured in the same run.
//!
//! Method. Every case is a crafted frame run through the real, loaded program by the
//! kernel (BPF_PROG_TEST_RUN) in a private network namespace:
//! - XDP paths that rewrite the frame run in live-frames mode: the kernel resets the frame
//!   before each run and really transmits the result (XDP_TX out of the namespace's
//!   underlay veth, XDP_REDIRECT into a task veth), so each run takes the same path and
//!   the transmit is included. The floor is `bench_xdp_mac_swap` (swap MACs, XDP_TX) in
//!   the same mode.
//! - Paths that leave the frame unchanged (P7) run with `repeat`, beside `lb_xdp_pass`.
//! - New flows and TC paths cannot repeat on one buffer (each run changes state or the
//!   frame), so they are timed one run at a time over many distinct frames, beside the
//!   floor timed the same way.
//!
//! Each case is measured `ROUNDS` times, interleaved (A B C ... A B C ...), and reported
//! as the median; every case's verdict is checked once before timing.
#![forbid(unsafe_code)]

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use mesh_tests::{
    fixture::{CLIENT, Dataplane, NODE, NODE_MAC, PEER, PEER_MAC},
    frames::*,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
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

struct Case {
    name: &'static str,
    floor: &'static str,
    prog: &'static str,
    mode: Mode,
    make: Box<dyn Fn(u16) -> Vec<u8>>,
    expect: i64,
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
        },
        Case {
            name: "floor: XDP_PASS",
            floor: "",
            prog: "lb_xdp_pass",
            mode: Mode::Repeat,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_PASS.into(),
        },
        Case {
            name: "floor: MAC swap + XDP_TX, single runs",
            floor: "",
            prog: "bench_xdp_mac_swap",
            mode: Mode::SinglesXdp,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_TX.into(),
        },
        Case {
            name: "P7 not the mesh's (TCP to :22), XDP_PASS",
            floor: "floor: XDP_PASS",
            prog: "lb_xdp",
            mode: Mode::Repeat,
            make: Box::new(move |i| tcp(FROM_CLIENT, client(i), (NODE, 22), Tcp::Ack, &[])),
            expect: XDP_PASS.into(),
        },
        Case {
            name: "P1 established, DNAT + redirect to local task",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
            make: Box::new(move |_| tcp(FROM_CLIENT, client(1), (NODE, 8080), Tcp::Ack, b"x")),
            expect: XDP_REDIRECT.into(),
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
        },
        Case {
            name: "P2 established, DNAT + VXLAN encap + XDP_TX",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
            make: Box::new(move |_| tcp(FROM_CLIENT, client(2), (NODE, 8081), Tcp::Ack, b"x")),
            expect: XDP_TX.into(),
        },
        Case {
            name: "P2 reply at ingress, decap + SNAT + XDP_TX",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
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
        },
        Case {
            name: "P2 at task node, decap + redirect to task",
            floor: "floor: MAC swap + XDP_TX",
            prog: "lb_xdp",
            mode: Mode::Live,
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
        },
    ];

    // A second published port whose only backend is remote, for the P2 cases.
    let web2 = lb_common::Service {
        id: 2,
        base: 500,
        slots: 1,
        flags: 0,
        vni: mesh_tests::fixture::VNI,
    };
    dp.set_slots(500, &[1])?;
    dp.set_service(
        lb_common::ServiceKey::published(8081, lb_common::IPPROTO_TCP),
        web2,
    )?;

    // Establish the flows the "established" cases use, and check every verdict once.
    let setup = [
        tcp(FROM_CLIENT, client(1), (NODE, 8080), Tcp::Syn, &[]),
        tcp(FROM_CLIENT, client(2), (NODE, 8081), Tcp::Syn, &[]),
    ];
    for f in &setup {
        dp.run_xdp("lb_xdp", f)?;
    }
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
        let frame = (c.make)(60_000);
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
            let ns = match c.mode {
                Mode::Live => ns(dp.time_xdp_live(c.prog, &(c.make)(0), args.repeat)?),
                Mode::Repeat => ns(dp.run_xdp_timed(c.prog, &(c.make)(0), args.repeat)?.2),
                Mode::SinglesXdp | Mode::SinglesTc => {
                    let mut runs = Vec::with_capacity(args.singles as usize);
                    for _ in 0..args.singles {
                        next_port = next_port.wrapping_add(1) % 40_000;
                        let frame = (c.make)(next_port);
                        let d = match c.mode {
                            Mode::SinglesTc => dp.run_tc_timed(&frame, 1)?.2,
                            _ => dp.run_xdp_timed(c.prog, &frame, 1)?.2,
                        };
                        runs.push(ns(d));
                    }
                    median(&mut runs)
                }
            };
            samples[i].push(ns);
        }
        // New-flow cases must keep finding new flows: start each round from an empty table.
        dp.clear_flows()?;
        for f in &setup {
            dp.run_xdp("lb_xdp", f)?;
        }
        dp.run_xdp("lb_xdp", &task_node)?;
    }

    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let report = render(&cases, &medians, &args)?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    print!("{report}");
    eprintln!("written to {}", args.out.display());
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
    writeln!(s, "| case | median ns/packet | floor | ratio to floor |")?;
    writeln!(s, "| --- | ---: | --- | ---: |")?;
    for (c, m) in cases.iter().zip(medians) {
        let (floor, ratio) = match cases.iter().position(|f| f.name == c.floor) {
            Some(f) => (c.floor, format!("{:.2}x", m / medians[f])),
            None => ("-", "-".into()),
        };
        writeln!(s, "| {} | {m:.1} | {floor} | {ratio} |", c.name)?;
    }
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
