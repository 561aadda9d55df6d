//! `cargo xtask fuzz dataplane`: mutated frames through the loaded XDP and TC programs
//! (BPF_PROG_TEST_RUN), checking that every verdict is one the programs may give and
//! that no packet changes what only the agent writes.
//!
//! The corpus is the fixture's valid frames (the standard mesh scenario of
//! `mesh_tests::frames`): TCP to published ports and VIPs (SYN, ACK, FIN), UDP, VXLAN
//! from the peer, and tasks' answers for TC. Each run picks one, applies one to four
//! mutations (bit flips, random bytes, a header field set to an edge value, truncation,
//! random bytes appended) with a seeded generator, and runs it through `lb_xdp` or
//! `lb_tc_task`. Frames the kernel refuses to run (EINVAL: shorter than an Ethernet
//! header, or an IPv4 frame too short for a socket buffer, for TC) are counted apart.
//!
//! Checks: an XDP verdict is DROP, PASS, TX or REDIRECT (never ABORTED); a TC verdict is
//! OK, SHOT or REDIRECT; the routing maps (services, slot tables, backends, endpoints,
//! node settings) equal their first snapshot every `--check-every` frames and at the
//! end. Flows and counters may change: packets create flows and count. Figures go to
//! stdout.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use lb_common::service::task_mac;
use mesh_tests::fixture::{CLIENT, NODE, NODE_MAC, PEER, PEER_MAC};
use mesh_tests::frames::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const XDP_VERDICTS: [(u32, &str); 4] = [(1, "drop"), (2, "pass"), (3, "tx"), (4, "redirect")];
const TC_VERDICTS: [(i32, &str); 3] = [(0, "ok"), (2, "shot"), (7, "redirect")];

#[derive(Parser, Debug)]
struct Args {
    /// Mutated frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// The generator's seed (a run is reproducible from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compare the routing maps with their first snapshot every this many frames.
    #[arg(long, default_value_t = 100_000)]
    check_every: u64,
}

/// Where a corpus frame goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

fn corpus() -> Vec<(Hook, Vec<u8>)> {
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let mut frames = Vec::new();
    for (i, kind) in [Tcp::Syn, Tcp::Ack, Tcp::Fin, Tcp::SynAck]
        .into_iter()
        .enumerate()
    {
        let port = 40_000 + i as u16;
        frames.push((
            Hook::Xdp,
            tcp(FROM_CLIENT, (CLIENT, port), (NODE, 8080), kind, b"GET /"),
        ));
        frames.push((
            Hook::Xdp,
            tcp(FROM_CLIENT, (CLIENT, port), (VIP, 80), kind, &[]),
        ));
        frames.push((
            Hook::Tc,
            tcp(from_task, (LOCAL_TASK, 80), (CLIENT, port), kind, b"ok"),
        ));
        frames.push((
            Hook::Tc,
            tcp(from_task, (LOCAL_TASK, port), (VIP, 80), kind, &[]),
        ));
        let inner = tcp(
            (PEER_MAC, NODE_MAC),
            (CLIENT, port),
            (LOCAL_TASK, 80),
            kind,
            b"x",
        );
        frames.push((
            Hook::Xdp,
            vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50_000, &inner),
        ));
    }
    frames.push((
        Hook::Xdp,
        udp(FROM_CLIENT, (CLIENT, 5000), (NODE, 5353), b"query"),
    ));
    frames.push((
        Hook::Tc,
        udp(from_task, (LOCAL_TASK, 53), (CLIENT, 5000), b"answer"),
    ));
    frames.push((
        Hook::Xdp,
        syn_with_mss(FROM_CLIENT, (CLIENT, 41_000), (NODE, 8080), 9000),
    ));
    frames
}

/// Offsets of header fields worth setting to edge values: Ethernet type, IPv4 version
/// and IHL, total length, fragment bits, protocol, the L4 ports and TCP flags (at
/// their offsets without IP options), the VXLAN flags and VNI.
const FIELDS: [usize; 12] = [12, 14, 16, 20, 23, 34, 36, 46, 47, 42, 50, 53];
const EDGES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..5) {
            0 if !frame.is_empty() => {
                let at = rng.random_range(0..frame.len());
                frame[at] ^= 1 << rng.random_range(0..8);
            }
            1 if !frame.is_empty() => {
                let at = rng.random_range(0..frame.len());
                frame[at] = rng.random();
            }
            2 => {
                let at = FIELDS[rng.random_range(0..FIELDS.len())];
                if at < frame.len() {
                    frame[at] = EDGES[rng.random_range(0..EDGES.len())];
                }
            }
            3 => {
                let len = rng.random_range(0..=frame.len());
                frame.truncate(len);
            }
            _ => {
                for _ in 0..rng.random_range(1..=64) {
                    frame.push(rng.random());
                }
            }
        }
    }
}

/// Whether BPF_PROG_TEST_RUN refused the frame itself (EINVAL: shorter than an
/// Ethernet header, or, for TC, an IPv4 frame too short for the kernel to set up its
/// socket buffer), rather than failing to run the program.
fn refused_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(22))
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut dp = mesh(&[0, 1, 3]);
    let baseline = dp.routing_snapshot()?;
    let corpus = corpus();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut xdp: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tc: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refused = 0u64;
    let started = Instant::now();
    for n in 1..=args.frames {
        let (hook, seed) = &corpus[rng.random_range(0..corpus.len())];
        let mut frame = seed.clone();
        mutate(&mut rng, &mut frame);
        match hook {
            Hook::Xdp => match dp.run_xdp("lb_xdp", &frame) {
                Ok((verdict, _)) => {
                    let Some((_, name)) = XDP_VERDICTS.iter().find(|(v, _)| *v == verdict) else {
                        bail!("frame {n}: XDP verdict {verdict} for {frame:02x?}");
                    };
                    *xdp.entry(name).or_default() += 1;
                }
                Err(e) if refused_input(&e) => refused += 1,
                Err(e) => return Err(e).with_context(|| format!("frame {n}: {frame:02x?}")),
            },
            Hook::Tc => match dp.run_tc(&frame) {
                Ok((verdict, _)) => {
                    let Some((_, name)) = TC_VERDICTS.iter().find(|(v, _)| *v == verdict) else {
                        bail!("frame {n}: TC verdict {verdict} for {frame:02x?}");
                    };
                    *tc.entry(name).or_default() += 1;
                }
                Err(e) if refused_input(&e) => refused += 1,
                Err(e) => return Err(e).with_context(|| format!("frame {n}: {frame:02x?}")),
            },
        }
        if n % args.check_every == 0 || n == args.frames {
            let now = dp.routing_snapshot()?;
            ensure!(
                now == baseline,
                "after {n} frames the routing maps changed:\n--- before\n{baseline}\n--- after\n{now}"
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "fuzz-dataplane: {} mutated frames (seed {}) in {:.1} s: XDP {xdp:?}, TC {tc:?}, \
         {refused} refused by the kernel (EINVAL: too short to run); every verdict \
         valid, routing maps unchanged ({} checks)",
        args.frames,
        args.seed,
        elapsed.as_secs_f64(),
        args.frames.div_ceil(args.check_every),
    );
    Ok(())
}
