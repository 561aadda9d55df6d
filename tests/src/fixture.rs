//! A loaded dataplane for `BPF_PROG_TEST_RUN`: the real eBPF object in the kernel, maps
//! programmed by hand, crafted frames in, verdicts and output bytes out.
//!
//! [`Dataplane::new`] moves the calling thread into a fresh network namespace with an
//! underlay veth (`ul0`, the node's address [`NODE`]) and permanent neighbour entries for
//! [`PEER`] and [`CLIENT`], so the programs' FIB lookups succeed; its maps are pinned
//! under a private directory that `Drop` removes.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use lb_agent::dataplane::loader::retry_eagain;
use lb_common::{
    Backend, Counters, DropReason, Endpoint, Flow, FlowKey, NextHop, NextHopKey, NodeConfig,
    Service, ServiceKey, maps,
};

/// This node's underlay address.
pub const NODE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
/// A peer node's underlay address.
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 12);
/// A client on the underlay.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
/// The node's underlay MAC.
pub const NODE_MAC: [u8; 6] = [0x02, 0, 10, 99, 0, 11];
/// The peer's underlay MAC (a permanent neighbour entry).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 10, 99, 0, 12];
/// The client's MAC (a permanent neighbour entry).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 10, 99, 0, 100];
/// VNI of the ingress network.
pub const VNI: u32 = 4096;
/// The underlay MTU.
pub const MTU: u32 = 1500;

/// Big-endian (network order) `u32` of an address, as the maps store it.
#[must_use]
pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

/// The eBPF object loaded into the kernel, in its own network namespace.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// ifindex of the underlay veth `ul0` in the private namespace.
    pub underlay_ifindex: u32,
}

fn ip(args: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .context("running `ip` (install iproute2: `cargo xtask setup`)")?;
    ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Fails with a clear message unless the process can load eBPF and make namespaces.
///
/// # Errors
/// When not root or bpffs is not mounted.
pub fn require_root() -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "these tests load eBPF programs and create network namespaces: run them as root \
         (`sudo cargo xtask test`)"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    ensure!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")),
        "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup`"
    );
    Ok(())
}

impl Dataplane {
    /// Loads the programs and writes this node's config (see the module docs).
    ///
    /// # Errors
    /// When not root, when the namespace cannot be made, or the kernel refuses a program.
    pub fn new() -> Result<Self> {
        Self::with_flow_tables(maps::DEFAULT_MAX_FLOWS, maps::DEFAULT_MAX_SYN_FLOWS)
    }

    /// As [`Dataplane::new`], with a flow table of `flows` entries and a handshake table
    /// of `syn_flows` (small ones to fill in a test).
    ///
    /// # Errors
    /// As [`Dataplane::new`].
    pub fn with_flow_tables(flows: u32, syn_flows: u32) -> Result<Self> {
        require_root()?;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET): a private network namespace for the test")?;
        ip("link set lo up")?;
        ip("link add ul0 type veth peer name ul1")?;
        ip("link set ul0 address 02:00:0a:63:00:0b")?;
        ip("addr add 10.99.0.11/24 dev ul0")?;
        ip("link set ul0 up")?;
        ip("link set ul1 up")?;
        // bpf_fib_lookup answers only on interfaces that forward (the agent sets the same).
        let out = Command::new("sysctl")
            .args(["-qw", "net.ipv4.conf.ul0.forwarding=1"])
            .output()
            .context("running sysctl")?;
        ensure!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ip("neigh replace 10.99.0.12 lladdr 02:00:0a:63:00:0c dev ul0 nud permanent")?;
        ip("neigh replace 10.99.0.100 lladdr 02:00:0a:63:00:64 dev ul0 nud permanent")?;
        let underlay_ifindex = nix::net::if_::if_nametoindex("ul0").context("ifindex of ul0")?;

        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/lbtest-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&pin_dir).context("creating the pin directory")?;
        let loaded = Self::load(&pin_dir, flows, syn_flows);
        if loaded.is_err() {
            let _ = std::fs::remove_dir_all(&pin_dir);
        }
        let ebpf = loaded?;
        let mut dp = Self {
            ebpf,
            pin_dir,
            underlay_ifindex,
        };
        dp.set_node_config(NodeConfig {
            addr: be(NODE),
            ifindex: underlay_ifindex,
            mac: NODE_MAC,
            vxlan_port: lb_common::VXLAN_PORT.to_be(),
            vni: VNI,
            mtu: MTU,
            udp_timeout_s: 120,
        })?;
        Ok(dp)
    }

    /// Loads the object with its maps pinned under `pin_dir`, and every program.
    fn load(pin_dir: &std::path::Path, flows: u32, syn_flows: u32) -> Result<Ebpf> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(maps::FLOWS, flows)
            .map_max_entries(maps::SYN_FLOWS, syn_flows)
            .load(lb_agent::EBPF_OBJECT)
            .context("loading the eBPF object")?;
        for name in ["lb_xdp", "lb_xdp_pass", "bench_xdp_mac_swap"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| name.to_owned())?
                .try_into()?;
            retry_eagain(|| prog.load()).with_context(|| format!("verifier refused {name}"))?;
        }
        let prog: &mut SchedClassifier = ebpf
            .program_mut("lb_tc_task")
            .context("lb_tc_task")?
            .try_into()?;
        retry_eagain(|| prog.load()).context("verifier refused lb_tc_task")?;
        Ok(ebpf)
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name}"))
    }

    /// Writes the node's settings.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_node_config(&mut self, cfg: NodeConfig) -> Result<()> {
        let mut m: Array<&mut MapData, NodeConfig> = self.map(maps::NODE_CONFIG)?.try_into()?;
        m.set(0, cfg, 0)?;
        Ok(())
    }

    /// Adds or replaces a service key.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_service(&mut self, key: ServiceKey, svc: Service) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, Service> =
            self.map(maps::SERVICES)?.try_into()?;
        m.insert(key, svc, 0)?;
        // A published port's bit, as the agent sets it.
        if key.addr == 0
            && let Some((word, mask)) = maps::published_bit(key.port, key.proto)
        {
            let mut bits: Array<&mut MapData, u64> = self.map(maps::PUBLISHED)?.try_into()?;
            let old = bits.get(&word, 0)?;
            bits.set(word, old | mask, 0)?;
        }
        Ok(())
    }

    /// Writes backend ids into the slot pool from entry `base` on (a service's table is
    /// the range its [`lb_common::Service::base`] and `slots` name).
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_slots(&mut self, base: u32, backend_ids: &[u32]) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = self.map(maps::SLOTS)?.try_into()?;
        for (idx, id) in (base..).zip(backend_ids) {
            m.set(idx, *id, 0)?;
        }
        Ok(())
    }

    /// Adds or replaces a backend.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_backend(&mut self, id: u32, backend: Backend) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, Backend> = self.map(maps::BACKENDS)?.try_into()?;
        m.insert(id, backend, 0)?;
        self.next_generation()
    }

    /// The directory the maps are pinned in.
    #[must_use]
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// The active connections of backend `id` that least-connections picks read
    /// ([`maps::BACKEND_CONNS`]).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn connections(&mut self, id: u32) -> Result<u64> {
        let m: Array<&mut MapData, u64> = self.map(maps::BACKEND_CONNS)?.try_into()?;
        Ok(m.get(&id, 0)?)
    }

    /// Removes a backend.
    ///
    /// # Errors
    /// When the backend is not there.
    pub fn remove_backend(&mut self, id: u32) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, Backend> = self.map(maps::BACKENDS)?.try_into()?;
        m.remove(&id)?;
        self.next_generation()
    }

    /// Adds or replaces an endpoint of the overlay.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_endpoint(&mut self, addr: Ipv4Addr, ep: Endpoint) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, Endpoint> = self.map(maps::ENDPOINTS)?.try_into()?;
        m.insert(be(addr), ep, 0)?;
        self.next_generation()
    }

    /// The entry for a 5-tuple in the flow table or, for a TCP connection in its
    /// handshake, in the handshake table.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn flow(&mut self, key: &FlowKey) -> Result<Option<Flow>> {
        match self.flow_in(maps::FLOWS, key)? {
            Some(f) => Ok(Some(f)),
            None => self.flow_in(maps::SYN_FLOWS, key),
        }
    }

    /// Adds one to the routing generation, as the agent does after changing backends or
    /// endpoints (flow entries then check their backend and route again).
    ///
    /// # Errors
    /// When the map cannot be read or written.
    pub fn next_generation(&mut self) -> Result<()> {
        let mut m: Array<&mut MapData, u32> = self.map(maps::GENERATION)?.try_into()?;
        let g = m.get(&0, 0)?;
        m.set(0, g.wrapping_add(1), 0)?;
        Ok(())
    }

    /// Writes a flow entry into the flow table ([`maps::FLOWS`]), as the programs would.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_flow(&mut self, key: FlowKey, flow: Flow) -> Result<()> {
        let mut m: HashMap<&mut MapData, FlowKey, Flow> = self.map(maps::FLOWS)?.try_into()?;
        m.insert(key, flow, 0)?;
        Ok(())
    }

    /// The XDP program's memo of the next hop from `src` to `dst` (`LB_NEXT_HOPS`).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn next_hop(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Option<NextHop>> {
        let m: HashMap<&mut MapData, NextHopKey, NextHop> =
            self.map(maps::NEXT_HOPS)?.try_into()?;
        let key = NextHopKey {
            src: be(src),
            dst: be(dst),
        };
        match m.get(&key, 0) {
            Ok(hop) => Ok(Some(hop)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading LB_NEXT_HOPS"),
        }
    }

    /// Sets the underlay's neighbour entry for `addr` to `mac` (permanent), as when a
    /// peer node is replaced by one with the same address.
    ///
    /// # Errors
    /// When `ip neigh replace` fails.
    pub fn set_neighbour(&self, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        ip(&format!(
            "neigh replace {addr} lladdr {mac} dev ul0 nud permanent"
        ))
    }

    /// The entry for a 5-tuple in `table` ([`maps::FLOWS`] or [`maps::SYN_FLOWS`]).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn flow_in(&mut self, table: &str, key: &FlowKey) -> Result<Option<Flow>> {
        let m: HashMap<&mut MapData, FlowKey, Flow> = self.map(table)?.try_into()?;
        match m.get(key, 0) {
            Ok(f) => Ok(Some(f)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The number of entries in `table`.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn flow_count(&mut self, table: &str) -> Result<usize> {
        let m: HashMap<&mut MapData, FlowKey, Flow> = self.map(table)?.try_into()?;
        Ok(m.keys().filter(Result::is_ok).count())
    }

    /// Removes every entry of the flow and handshake tables.
    ///
    /// # Errors
    /// When a map cannot be read or written.
    pub fn clear_flows(&mut self) -> Result<()> {
        for table in [maps::FLOWS, maps::SYN_FLOWS] {
            let mut m: HashMap<&mut MapData, FlowKey, Flow> = self.map(table)?.try_into()?;
            let keys: Vec<FlowKey> = m.keys().collect::<Result<_, _>>()?;
            for k in keys {
                m.remove(&k)?;
            }
        }
        Ok(())
    }

    /// Everything the agent writes and the programs only read: service keys, their live
    /// slot tables, backends, endpoints and the node's settings (not the flows, nor the
    /// counters). Equal snapshots mean no packet changed the routing.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn routing_snapshot(&mut self) -> Result<String> {
        use std::fmt::Write as _;
        let mut out = String::new();
        let services: HashMap<&mut MapData, ServiceKey, Service> =
            self.map(maps::SERVICES)?.try_into()?;
        let mut svcs: Vec<(ServiceKey, Service)> = services.iter().collect::<Result<_, _>>()?;
        svcs.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
        for (k, v) in &svcs {
            writeln!(out, "service {k:?} {v:?}")?;
        }
        let slots: Array<&mut MapData, u32> = self.map(maps::SLOTS)?.try_into()?;
        for (_, v) in &svcs {
            let table: Vec<u32> = (v.base..v.base + v.slots.min(maps::MAX_SLOTS))
                .map(|i| slots.get(&i, 0))
                .collect::<Result<_, _>>()?;
            writeln!(out, "slots {} {table:?}", v.id)?;
        }
        let backends: HashMap<&mut MapData, u32, Backend> = self.map(maps::BACKENDS)?.try_into()?;
        let mut bs: Vec<(u32, Backend)> = backends.iter().collect::<Result<_, _>>()?;
        bs.sort_by_key(|(id, _)| *id);
        writeln!(out, "backends {bs:?}")?;
        let endpoints: HashMap<&mut MapData, u32, Endpoint> =
            self.map(maps::ENDPOINTS)?.try_into()?;
        let mut es: Vec<(u32, Endpoint)> = endpoints.iter().collect::<Result<_, _>>()?;
        es.sort_by_key(|(a, _)| *a);
        writeln!(out, "endpoints {es:?}")?;
        let node: Array<&mut MapData, NodeConfig> = self.map(maps::NODE_CONFIG)?.try_into()?;
        writeln!(out, "node {:?}", node.get(&0, 0)?)?;
        Ok(out)
    }

    fn counters(&mut self, map: &str, id: u32) -> Result<Counters> {
        let m: PerCpuArray<&mut MapData, Counters> = self.map(map)?.try_into()?;
        let mut sum = Counters::default();
        for c in m.get(&id, 0)?.iter() {
            sum += *c;
        }
        Ok(sum)
    }

    /// A service's counters summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn service_counters(&mut self, id: u32) -> Result<Counters> {
        self.counters(maps::SERVICE_COUNTERS, id)
    }

    /// A backend's counters summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn backend_counters(&mut self, id: u32) -> Result<Counters> {
        self.counters(maps::BACKEND_COUNTERS, id)
    }

    /// Drops counted for a reason, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn drops(&mut self, reason: DropReason) -> Result<u64> {
        let m: PerCpuArray<&mut MapData, u64> = self.map(maps::DROPS)?.try_into()?;
        Ok(m.get(&(reason as u32), 0)?.iter().sum())
    }

    /// Flow events of a kind counted, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn flow_events(&mut self, event: lb_common::FlowEvent) -> Result<u64> {
        let m: PerCpuArray<&mut MapData, u64> = self.map(maps::FLOW_EVENTS)?.try_into()?;
        Ok(m.get(&(event as u32), 0)?.iter().sum())
    }

    /// The `struct xdp_md` a test run passes: `frame` arriving on the underlay veth.
    /// Fields: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    fn xdp_md(&self, frame: &[u8]) -> [u8; 24] {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.underlay_ifindex.to_ne_bytes());
        ctx
    }

    /// Runs an XDP program once on `frame` arriving on the underlay; returns the verdict
    /// and the frame as the program left it.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_xdp(&self, prog: &str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, out, _) = self.run_xdp_timed(prog, frame, 1)?;
        Ok((verdict, out))
    }

    /// Runs an XDP program `repeat` times; also returns the kernel's mean time per run.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_xdp_timed(
        &self,
        prog: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)> {
        let p: &Xdp = self
            .ebpf
            .program(prog)
            .with_context(|| prog.to_owned())?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = self.xdp_md(frame);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let res = p
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out, res.duration))
    }

    /// Times an XDP program in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): the
    /// kernel resets the frame before every run and really transmits what the program
    /// sends (into this private namespace), so a rewriting path is timed on the same
    /// input every time. Returns the mean time per frame.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn time_xdp_live(&self, prog: &str, frame: &[u8], repeat: u32) -> Result<Duration> {
        let p: &Xdp = self
            .ebpf
            .program(prog)
            .with_context(|| prog.to_owned())?
            .try_into()?;
        let ctx = self.xdp_md(frame);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = aya::programs::TestRunAttrs::new().xdp_live_frames(64);
        let res = p
            .test_run(opts)
            .with_context(|| format!("live-frames run of {prog}"))?;
        Ok(res.duration)
    }

    /// Adds a veth pair `name`/`name`-peer in the private namespace, with GRO on at the
    /// peer so frames redirected into `name` are received; returns `name`'s ifindex.
    ///
    /// # Errors
    /// When `ip` or `ethtool` fail.
    pub fn add_veth(&self, name: &str) -> Result<u32> {
        ip(&format!("link add {name} type veth peer name {name}p"))?;
        ip(&format!("link set {name} up"))?;
        ip(&format!("link set {name}p up"))?;
        let out = Command::new("ethtool")
            .args(["-K", &format!("{name}p"), "gro", "on"])
            .output()
            .context("running ethtool")?;
        ensure!(
            out.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(nix::net::if_::if_nametoindex(name)?)
    }

    /// Runs the TC program once on `frame` leaving a task; returns verdict and frame.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc(&self, frame: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (verdict, out, _) = self.run_tc_timed(frame, 1)?;
        Ok((verdict, out))
    }

    /// Runs the TC program `repeat` times; also returns the mean time per run. The frame
    /// comes in on the veth of its source's endpoint, if that is a local task
    /// ([`Dataplane::source_ifindex`]), as it would on the node.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc_timed(&self, frame: &[u8], repeat: u32) -> Result<(i32, Vec<u8>, Duration)> {
        let ifindex = self.source_ifindex(frame)?;
        self.run_tc_with(frame, repeat, ifindex)
    }

    /// Runs the TC program once on `frame` as it comes in on the veth `ifindex` (made
    /// in the test's namespace if needed), whatever its source address.
    ///
    /// # Errors
    /// When the kernel refuses the run.
    pub fn run_tc_on(&self, ifindex: u32, frame: &[u8]) -> Result<(i32, Vec<u8>)> {
        ensure_device(ifindex);
        let (verdict, out, _) = self.run_tc_with(frame, 1, Some(ifindex))?;
        Ok((verdict, out))
    }

    fn run_tc_with(
        &self,
        frame: &[u8],
        repeat: u32,
        ifindex: Option<u32>,
    ) -> Result<(i32, Vec<u8>, Duration)> {
        let p: &SchedClassifier = self
            .ebpf
            .program("lb_tc_task")
            .context("lb_tc_task")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        // A `struct __sk_buff`, all zero but `ifindex` (offset 40): the device the
        // kernel runs the program on.
        let mut ctx = [0u8; 192];
        let mut opts = TestRunOptions::new();
        if let Some(ifindex) = ifindex {
            ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            opts.ctx_in = Some(&ctx);
        }
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let res = p
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of lb_tc_task")?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out, res.duration))
    }
}

impl Dataplane {
    /// The veth a frame leaving a task comes in on: the host side of its source's
    /// endpoint, if that is a local task (`None` otherwise). A device with that ifindex
    /// is made in the test's namespace the first time (a veth `tc<ifindex>`), unless one
    /// exists ([`Dataplane::add_veth`]'s), since the kernel runs the program on it.
    ///
    /// # Errors
    /// When the endpoints map cannot be read.
    pub fn source_ifindex(&self, frame: &[u8]) -> Result<Option<u32>> {
        let Some(&[a, b, c, d]) = frame.get(26..30) else {
            return Ok(None);
        };
        let map = self.ebpf.map(maps::ENDPOINTS).context(maps::ENDPOINTS)?;
        let endpoints: HashMap<&MapData, u32, Endpoint> = HashMap::try_from(map)?;
        let Ok(ep) = endpoints.get(&be(Ipv4Addr::new(a, b, c, d)), 0) else {
            return Ok(None);
        };
        if !ep.is_local() || ep.ifindex <= 1 {
            return Ok(None);
        }
        ensure_device(ep.ifindex);
        Ok(Some(ep.ifindex))
    }
}

/// Makes a veth `tc<ifindex>` with that ifindex in the test's namespace, unless there is
/// one; fails harmlessly when another device of the test holds the index.
fn ensure_device(i: u32) {
    if nix::net::if_::if_nametoindex(format!("tc{i}").as_str()).is_err() {
        let _ = ip(&format!(
            "link add tc{i} index {i} type veth peer name tc{i}p index {}",
            i + 100_000
        ));
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Fails unless `cond`, with a message; a tiny helper for the bench's self-checks.
///
/// # Errors
/// When `cond` is false.
pub fn check(cond: bool, what: &str) -> Result<()> {
    if !cond {
        bail!("check failed: {what}");
    }
    Ok(())
}
