//! The harness's own topology, without agents: the bridge, the veths, the namespaces,
//! reachability between the client and the nodes, and tasks reachable from their node.
//! Needs root; fails (never skips) without it.

use std::net::{Ipv4Addr, SocketAddr};

use mesh_tests::client::{ping, request_tcp, request_udp};
use mesh_tests::netns::{exec_in, run};
use mesh_tests::{Topology, in_netns};

#[test]
fn topology_without_agents() {
    let mut topo = Topology::new(3).expect("build the topology");
    let c = topo.client_ns();
    for k in 1..=3 {
        let addr = topo.node_addr(k);
        in_netns(&c, move || ping(addr, 3))
            .unwrap()
            .unwrap_or_else(|e| panic!("client cannot ping n{k}: {e:#}"));
    }
    let n3 = topo.node_addr(3);
    in_netns(&topo.node_ns(1), move || ping(n3, 3))
        .unwrap()
        .expect("n1 pings n3");

    for k in 1..=3u8 {
        topo.add_task(
            k as usize,
            &format!("web.{k}"),
            Ipv4Addr::new(10, 255, k, 1),
        )
        .expect("add a task");
    }
    for t in topo.tasks() {
        let node_ns = topo.node_ns(t.node);
        let node_addr = topo.node_addr(t.node);
        let addr = SocketAddr::from((t.addr, 80));
        let r = in_netns(&node_ns, move || request_tcp(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("node {} reaches {}: {e:#}", t.node, t.name));
        assert_eq!(r.task, t.name);
        assert_eq!(r.peer_ip(), Some(node_addr));
        let (r, payload) = in_netns(&node_ns, move || request_udp(addr, b"ping"))
            .unwrap()
            .unwrap_or_else(|e| panic!("node {} reaches {} over UDP: {e:#}", t.node, t.name));
        assert_eq!(r.task, t.name);
        assert_eq!(payload, b"ping");
        // The wire emulation is in place.
        let k = run("ip", &["netns", "exec", &t.ns, "ethtool", "-k", "eth0"]).unwrap();
        assert!(k.contains("generic-receive-offload: on"), "{k}");
    }
    let k = exec_in(&topo.underlay_ns(), "ethtool", &["-k", "n1"]).unwrap();
    assert!(k.contains("tx-checksumming: off"), "{k}");
    assert!(k.contains("generic-receive-offload: on"), "{k}");
    let k = exec_in(&topo.node_ns(2), "ethtool", &["-k", "eth0"]).unwrap();
    assert!(k.contains("tx-checksumming: off"), "{k}");

    // Teardown removes every namespace of the prefix.
    let prefix = topo.prefix().to_owned();
    drop(topo);
    let left: Vec<String> = mesh_tests::netns::list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "left over: {left:?}");
}
