//! `weft iptables` in a pod-like network namespace linked by a veth pair to a peer
//! namespace: the application's outbound TCP reaches the sidecar's outbound port with its
//! original destination, the proxy's own user's does not, excluded ports go straight;
//! inbound TCP reaches the inbound port, the sidecar's health port does not; a second run
//! replaces the rules, `--dry-run` changes nothing and `--clean` removes everything.
//!
//! **Needs root** (network namespaces and iptables); without it the test fails and says so.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::netns::NetNs;

const POD: &str = "10.10.0.1";
const PEER: &str = "10.10.0.2";

/// Answers every connection with `name` and, when it was redirected, where it was going.
fn listen(addr: &str, name: &'static str) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let local = stream.local_addr().unwrap();
            let original =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::OriginalDst)
                    .ok()
                    .map(|a| {
                        let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                        std::net::SocketAddr::from((ip, u16::from_be(a.sin_port)))
                    })
                    .filter(|original| *original != local)
                    .map(|original| format!(" {original}"))
                    .unwrap_or_default();
            let _ = write!(stream, "{name}{original}");
        }
    });
}

/// What answers a connection to `addr` (made by the calling thread's namespace and user);
/// `refused` when nothing does.
fn dial(addr: &str) -> String {
    match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)) {
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        }
        Err(_) => "refused".to_string(),
    }
}

/// What answers a connection to `host:port` made by a process running as user `uid`.
fn dial_as(netns: &NetNs, uid: u32, host: &str, port: u16) -> String {
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && cat <&3");
    let output = Command::new("ip")
        .args(["netns", "exec", netns.name(), "setpriv"])
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .args(["bash", "-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// `weft iptables ARGS` inside the pod's namespace; returns its standard output.
fn weft_iptables(pod: &NetNs, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.name(),
            env!("CARGO_BIN_EXE_weft"),
            "iptables",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "weft iptables {args:?}: {output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The pod's `nat` table as `iptables -S` lists it.
fn nat_rules(pod: &NetNs) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", pod.name(), "iptables", "-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_pods_tcp_goes_to_its_sidecar_but_the_sidecars_own_and_clean_removes_it() {
    let pod = NetNs::new("ipt-pod", &[]);
    let peer = NetNs::new("ipt-peer", &[]);
    pod.link(&format!("{POD}/24"), &peer, &format!("{PEER}/24"));
    pod.enter(|| {
        listen("0.0.0.0:15001", "outbound");
        listen("0.0.0.0:15006", "inbound");
        listen("0.0.0.0:15021", "health");
    });
    peer.enter(|| {
        listen(&format!("{PEER}:8080"), "peer");
        listen(&format!("{PEER}:5432"), "peer");
    });

    // --dry-run prints the rules and touches nothing.
    let printed = weft_iptables(&pod, &["--dry-run", "-o", "5432"]);
    assert!(printed.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
    assert!(!nat_rules(&pod).contains("ISTIO"), "{}", nat_rules(&pod));
    let peer_addr = format!("{PEER}:8080");
    assert_eq!(pod.enter(move || dial(&peer_addr)), "peer");

    weft_iptables(&pod, &["-o", "5432"]);
    // Twice, as a restarted init container would: the rules are replaced, not doubled.
    weft_iptables(&pod, &["-o", "5432"]);
    let rules = nat_rules(&pod);
    assert_eq!(
        rules.matches("-A OUTPUT -p tcp -j ISTIO_OUTPUT").count(),
        1,
        "{rules}"
    );
    assert_eq!(
        rules
            .matches("-A PREROUTING -p tcp -j ISTIO_INBOUND")
            .count(),
        1,
        "{rules}"
    );

    // The application (any user but the proxy's) is sent to the sidecar, which learns
    // where it was going.
    let peer_addr = format!("{PEER}:8080");
    assert_eq!(
        pod.enter(move || dial(&peer_addr)),
        format!("outbound {PEER}:8080")
    );
    assert_eq!(
        dial_as(&pod, 1000, PEER, 8080),
        format!("outbound {PEER}:8080")
    );
    // The sidecar's own connections (user 1337) go where they were going.
    assert_eq!(dial_as(&pod, 1337, PEER, 8080), "peer");
    // An excluded port is not redirected.
    let excluded = format!("{PEER}:5432");
    assert_eq!(pod.enter(move || dial(&excluded)), "peer");

    // Inbound: any port to the inbound listener, with the port it was for; the sidecar's
    // health port is left alone.
    let inbound = format!("{POD}:9080");
    assert_eq!(
        peer.enter(move || dial(&inbound)),
        format!("inbound {POD}:9080")
    );
    let health = format!("{POD}:15021");
    assert_eq!(peer.enter(move || dial(&health)), "health");

    // The kill switch: --clean, and traffic goes straight again.
    weft_iptables(&pod, &["--clean"]);
    let rules = nat_rules(&pod);
    assert!(!rules.contains("ISTIO"), "{rules}");
    let peer_addr = format!("{PEER}:8080");
    assert_eq!(pod.enter(move || dial(&peer_addr)), "peer");
    let inbound = format!("{POD}:9080");
    assert_eq!(peer.enter(move || dial(&inbound)), "refused");
    // Cleaning what is clean is fine.
    weft_iptables(&pod, &["--clean"]);
}
