//! `dfsctl local up --own-addresses` and the nodes' `--source-ip` (issue 21): each node listens
//! on and connects from a loopback address of its own, which is what lets the chaos run's
//! nftables rules cut the traffic between two chosen nodes. Checked from the kernel's own table
//! of TCP connections, after a put and a get through the cluster.
use dfs_tests::LocalUp;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Established IPv4 TCP connections of this network namespace: (local, remote).
fn established() -> Vec<(SocketAddrV4, SocketAddrV4)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let addr = |s: &str| {
        let (ip, port) = s.split_once(':').unwrap();
        // The address is the network-order word printed as a host-order number.
        let b = u32::from_str_radix(ip, 16).unwrap().to_le_bytes();
        SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_str_radix(port, 16).unwrap(),
        )
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            (f.get(3) == Some(&"01")).then(|| (addr(f[1]), addr(f[2])))
        })
        .collect()
}

#[test]
fn every_node_listens_on_and_connects_from_its_own_address() {
    let c = LocalUp::start(&[
        "--own-addresses",
        "--no-gateway",
        "--metas",
        "3",
        "--chunks",
        "2",
    ]);
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.path().join("cluster.json")).unwrap()).unwrap();
    let listen: Vec<(String, SocketAddrV4)> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["addr"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    for (name, a) in &listen {
        let (kind, i) = name.split_once('-').unwrap();
        let third = if kind == "meta" { 1 } else { 2 };
        assert_eq!(
            *a.ip(),
            Ipv4Addr::new(127, 0, third, i.parse().unwrap()),
            "{name}"
        );
    }

    // Data goes through: a put (client -> leader -> chunk servers) and a get.
    let src = c.path().join("hello.txt");
    std::fs::write(&src, b"from a node of its own").unwrap();
    c.ctl(&["put", src.to_str().unwrap(), "/hello.txt"]);
    assert_eq!(
        c.ctl(&["get", "/hello.txt", "-"]),
        b"from a node of its own"
    );

    // Every connection to a node leaves from the caller's own address (the client's are
    // closed by now), and every node has some (Raft and leader probes between the metadata
    // nodes, heartbeats from the chunk servers).
    let own: BTreeSet<Ipv4Addr> = listen.iter().map(|(_, a)| *a.ip()).collect();
    let ports: BTreeSet<SocketAddrV4> = listen.iter().map(|(_, a)| *a).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let links: BTreeSet<(Ipv4Addr, Ipv4Addr)> = established()
            .into_iter()
            .filter(|(_, remote)| ports.contains(remote))
            .map(|(local, remote)| (*local.ip(), *remote.ip()))
            .collect();
        let from_nodes: BTreeSet<Ipv4Addr> = links
            .iter()
            .filter(|(l, _)| own.contains(l))
            .map(|(l, _)| *l)
            .collect();
        assert!(
            links.iter().all(|(l, _)| own.contains(l)),
            "a connection to a node from an address that is not a node's: {links:?}"
        );
        if from_nodes == own {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections between nodes {links:?}: not every node connects from its own address"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
