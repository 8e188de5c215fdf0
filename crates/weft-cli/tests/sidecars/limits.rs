//! What the sidecars withstand: bad input at both listeners (malformed, oversize, smuggling,
//! stalled and reset), answered or closed without a crash or growth, and a gigabyte
//! streamed through in constant memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::apps::sink_app;
use crate::clients::{raw, via_proxy};
use crate::common;
use crate::mesh::Mesh;

/// The resident memory of a sidecar's process, in KiB.
fn rss_kib(proxy: &common::Proxy) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Bad input at both listeners: the proxies answer or close, never crash, keep serving, and
/// do not grow.
#[test]
fn bad_input_at_both_listeners_is_answered_or_closed() {
    let mut mesh = Mesh::start("");
    let outbound = mesh.client.outbound.clone();
    let inbound = mesh.servers[0].inbound.clone();
    let host = "echo.test.svc.cluster.local:8080";
    let baseline = rss_kib(&mesh.client);

    // A client that never finishes its headers is cut off; meanwhile the rest goes on.
    let slow = {
        let outbound = outbound.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let answer = raw(&outbound, b"GET / HTTP/1.1\r\nHost: x\r\n");
            (started.elapsed(), answer)
        })
    };
    // A TLS handshake cut short is cut off too.
    let stalled_handshake = {
        let inbound = inbound.clone();
        std::thread::spawn(move || raw(&inbound, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
    };
    for round in 0..3 {
        let answer = raw(&outbound, b"THIS IS NOT HTTP\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "malformed request line: {answer:?}"
        );
        let big = format!(
            "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        let answer = raw(&outbound, big.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "oversize headers: {answer:?}"
        );
        // Content-Length and Transfer-Encoding together (either order), alone or after a
        // good request on the same connection: 400, and the bytes after it are never read
        // as a request. At the inbound listener too (PERMISSIVE takes plaintext there).
        for (addr, target) in [
            (&outbound, format!("http://{host}")),
            (&inbound, String::new()),
        ] {
            for (first, second) in [
                ("Content-Length: 5", "Transfer-Encoding: chunked"),
                ("Transfer-Encoding: chunked", "Content-Length: 5"),
            ] {
                let smuggling = format!(
                    "POST {target}/ HTTP/1.1\r\nHost: {host}\r\n{first}\r\n{second}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
                );
                let answer = raw(addr, smuggling.as_bytes());
                assert!(answer.starts_with("HTTP/1.1 400"), "CL and TE: {answer:?}");
                assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");
                let good = format!(
                    "POST {target}/good HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\nok"
                );
                let answer = raw(addr, format!("{good}{smuggling}").as_bytes());
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
                assert_eq!(
                    answer.matches("HTTP/1.1 400").count(),
                    1,
                    "the second request is refused: {answer:?}"
                );
                assert!(!answer.contains("/smuggled"), "{answer:?}");
            }
        }
        // TLS garbage and a handshake cut short at the inbound listener.
        assert_eq!(
            raw(&inbound, b"\x16\x03\x01\x00\x05hello"),
            "",
            "TLS garbage"
        );

        // Abrupt resets mid-request, both sides.
        for addr in [&outbound, &inbound] {
            let stream = TcpStream::connect(addr).unwrap();
            let _ = (&stream).write_all(b"GET / HTTP/1.1\r\nHo");
            nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .unwrap();
            drop(stream);
        }
        let (status, body) = via_proxy(&outbound, &format!("http://{host}/round-{round}"));
        assert_eq!(status, 200, "still serving: {body}");
    }
    assert_eq!(stalled_handshake.join().unwrap(), "");
    let (waited, answer) = slow.join().unwrap();
    assert!(
        waited < Duration::from_secs(15) && !answer.contains("200 OK"),
        "a client that never finishes its headers is cut off: {waited:?} {answer:?}"
    );
    for proxy in [&mut mesh.client, &mut mesh.servers[0]] {
        assert!(proxy.child.try_wait().unwrap().is_none(), "a proxy died");
    }
    let after = rss_kib(&mesh.client);
    assert!(
        after < baseline + 8 * 1024,
        "RSS from {baseline} KiB to {after} KiB"
    );
}

/// A 1 GiB request body streams through both sidecars in constant memory.
#[test]
fn a_gigabyte_streams_through_in_constant_memory() {
    const SIZE: u64 = 1 << 30;
    let mesh = Mesh::with_apps("", &["v1"], |_| sink_app());
    let pids = [mesh.client.child.id(), mesh.servers[0].child.id()];
    let idle = [rss_kib(&mesh.client), rss_kib(&mesh.servers[0])];
    let peak = Arc::new(Mutex::new([0u64; 2]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, pid) in pids.iter().enumerate() {
                    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .unwrap_or_default()
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    let mut peak = peak.lock().unwrap();
                    peak[i] = peak[i].max(rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut stream = TcpStream::connect(&mesh.client.outbound).unwrap();
    let host = "echo.test.svc.cluster.local:8080";
    write!(stream, "POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..(SIZE >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    assert!(
        response.ends_with(&format!("received: {SIZE}")),
        "{response}"
    );
    let peak = *peak.lock().unwrap();
    eprintln!("RSS of the client and server sidecars: idle {idle:?} KiB, peak {peak:?} KiB");
    // The test binaries are debug builds, larger at rest than release ones; what matters is
    // that streaming a gigabyte adds little.
    for (idle, peak) in idle.iter().zip(peak) {
        assert!(
            peak < idle + 16 * 1024,
            "RSS grew from {idle} KiB to {peak} KiB"
        );
    }
}

/// A client sidecar of `mesh` started with `flags` (its own limits).
fn client_with(mesh: &Mesh, flags: &[&str]) -> common::Proxy {
    let token = common::join_token(&crate::mesh::config_dir(mesh.dir.path()), "test", "client");
    let xds = mesh.control.as_ref().unwrap().xds.clone();
    let mut args = vec![
        "--control",
        &xds,
        "--name",
        "limited",
        "--namespace",
        "test",
        "--service-account",
        "client",
        "--token",
        &token,
    ];
    args.extend_from_slice(flags);
    let proxy = common::Proxy::start(&args);
    proxy.until_ready();
    proxy
}

/// Whether the server closes `stream` within `within`, having sent nothing more.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Every listener bounds its connections (`--max-connections`: past it, a new connection is
/// closed at once, and served again once one closes), and an HTTP connection that carries
/// nothing for `--idle-timeout` is closed: an idle HTTP/2 connection, a stalled HTTP/2
/// preface, a keep-alive connection between requests.
#[test]
fn listeners_bound_their_connections_and_close_idle_ones() {
    let mesh = Mesh::start("");
    let capped = client_with(&mesh, &["--max-connections", "4"]);
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&capped.outbound).unwrap())
        .collect();
    // Each of the four is accepted before the fifth arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(&capped.outbound).unwrap();
    assert!(
        closed_within(&mut fifth, Duration::from_secs(3)),
        "a fifth connection is closed at once"
    );
    held.pop();
    common::eventually(
        "a connection is served once one closes",
        Duration::from_secs(10),
        || {
            let answer = raw(
                &capped.outbound,
                b"GET http://nowhere.example/ HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n",
            );
            answer
                .starts_with("HTTP/1.1 404")
                .then_some(())
                .ok_or(answer)
        },
    );
    drop(held);

    let idle = client_with(&mesh, &["--idle-timeout", "1s"]);
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outbound = idle.outbound.clone();
    let closed = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&outbound).await.unwrap();
        let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .is_ok()
    });
    assert!(closed, "an idle HTTP/2 connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let mut preface = TcpStream::connect(&idle.outbound).unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    assert!(
        closed_within(&mut preface, Duration::from_secs(5)),
        "a stalled preface is closed"
    );
    let mut keep_alive = TcpStream::connect(&idle.outbound).unwrap();
    keep_alive
        .write_all(b"GET http://nowhere.example/ HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
        .unwrap();
    assert!(
        closed_within(&mut keep_alive, Duration::from_secs(5)),
        "a keep-alive connection idle after its request is closed"
    );
}

/// A request body that stops arriving breaks off after `--stream-idle-timeout` (Envoy's
/// `stream_idle_timeout`), while the connection itself is far from its idle timeout: the
/// client gets `408`, the stream does not hang on.
#[test]
fn a_stalled_request_body_is_broken_off() {
    let mesh = Mesh::start("");
    let proxy = client_with(&mesh, &["--stream-idle-timeout", "1s"]);
    let mut stream = TcpStream::connect(&proxy.outbound).unwrap();
    let host = "echo.test.svc.cluster.local:8080";
    write!(
        stream,
        "POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n0123456789"
    )
    .unwrap();
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("the stalled stream is still open after 15 s: {error}"),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "broken off after {:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled upload gets 408 (Envoy's SI): {answer}"
    );
}

/// Labels clients make up stay out of the metrics: a Host no route knows counts as
/// `unknown`, and past a bound of services per proxy the rest count as `unknown` too.
#[test]
fn metric_labels_are_bounded() {
    let mesh = Mesh::start("");
    for i in 0..50 {
        let host = format!("made-up-{i}.example");
        via_proxy(&mesh.client.outbound, &format!("http://{host}/"));
    }
    let metrics = common::get(&mesh.client.metrics, "/stats/prometheus");
    assert!(!metrics.contains("made-up-"), "{metrics}");
    assert!(
        metrics.contains("destination_service=\"unknown\""),
        "{metrics}"
    );
    // At the inbound side the Host is whatever the caller wrote.
    for i in 0..300 {
        raw(
            &mesh.servers[0].inbound,
            format!("GET / HTTP/1.1\r\nHost: invented-{i}.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
    }
    let metrics = common::get(&mesh.servers[0].metrics, "/stats/prometheus");
    let invented: std::collections::BTreeSet<&str> = metrics
        .split("destination_service=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|service| service.starts_with("invented-"))
        .collect();
    assert!(
        invented.len() <= 256,
        "{} services labelled",
        invented.len()
    );
    assert!(metrics.contains("destination_service=\"unknown\""));
}
