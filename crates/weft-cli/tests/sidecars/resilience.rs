//! What keeps traffic flowing when something fails: the data plane without its control
//! plane, retries and injected faults, outlier detection, the circuit breaker, and a sidecar
//! draining the request in flight before it exits (`/quitquitquit`).

use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::apps::{FLAKY_SEEN, gate_app};
use crate::clients::{raw, via_proxy};
use crate::common::{self, eventually};
use crate::mesh::{Mesh, config_dir, destination_rule, virtual_service};

/// The data plane does not need the control plane to keep working; when it comes back, the
/// sidecars reconnect and take new configuration.
#[test]
fn traffic_flows_without_the_control_plane_and_converges_when_it_returns() {
    let mut mesh = Mesh::start("");
    let control = mesh.control.take().unwrap();
    let xds = control.xds.clone();
    drop(control);
    for _ in 0..20 {
        let (status, body) = via_proxy(
            &mesh.client.outbound,
            "http://echo.test.svc.cluster.local:8080/",
        );
        assert_eq!(status, 200, "with the control plane gone: {body}");
    }
    mesh.control = Some(common::Control::start_at(
        &config_dir(mesh.dir.path()),
        &xds,
    ));
    mesh.edit(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo, namespace: test}\nspec:\n  hosts: [echo]\n  http:\n  - directResponse: {status: 418, body: {string: back}}\n",
    );
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!((status, body.as_str()), (418, "back"));
}

/// Retries hide an upstream that fails every other request; without them half fail; fault
/// injection aborts and delays as the VirtualService says.
#[test]
fn retries_hide_a_flaky_upstream_and_faults_are_injected() {
    use std::sync::atomic::Ordering;
    let mesh = Mesh::with_versions(
        &virtual_service("    retries: {attempts: 3, retryOn: 5xx}\n"),
        &["flaky"],
    );
    let seen_before = FLAKY_SEEN.load(Ordering::SeqCst);
    let counts = mesh.served_by(40, "");
    assert_eq!(counts.get("flaky"), Some(&40), "{counts:?}");
    let attempts = FLAKY_SEEN.load(Ordering::SeqCst) - seen_before;
    assert!(
        (79..=81).contains(&attempts),
        "40 requests took {attempts} attempts"
    );

    mesh.edit(&virtual_service("    retries: {attempts: 0}\n"));
    let counts = mesh.served_by(40, "");
    assert_eq!(counts.get("status 503"), Some(&20), "{counts:?}");

    mesh.edit(&virtual_service(
        "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n",
    ));
    let (status, _) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!(status, 418);

    mesh.edit(&virtual_service(
        "    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n",
    ));
    let started = Instant::now();
    let _ = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

/// Outlier detection: an endpoint that keeps answering 5xx is ejected and traffic goes to
/// the healthy one.
#[test]
fn outlier_detection_ejects_a_failing_endpoint() {
    let mesh = Mesh::with_versions(
        &destination_rule(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n",
        ),
        &["good", "bad"],
    );
    // Round robin reaches the bad endpoint every other request: two 503s eject it.
    let first = mesh.served_by(10, "");
    let failed = first.get("status 503").copied().unwrap_or(0);
    assert!(failed >= 2, "the bad endpoint was tried: {first:?}");
    let after = mesh.served_by(30, "");
    assert_eq!(
        after.get("good"),
        Some(&30),
        "then only the good one: {after:?}"
    );
}

/// A circuit breaker: with `http2MaxRequests: 1`, a second request while one is in flight
/// is refused at once with `503` and the `UO` flag.
#[test]
fn the_circuit_breaker_refuses_overflow() {
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let mesh = Mesh::with_apps(
        &destination_rule("    connectionPool: {http: {http2MaxRequests: 1}}\n"),
        &["v1"],
        move |_| gate_app(arrived_tx.clone(), release_rx.clone()),
    );
    let outbound = mesh.client.outbound.clone();
    let first = std::thread::spawn(move || {
        via_proxy(&outbound, "http://echo.test.svc.cluster.local:8080/first")
    });
    // The application holds the first request: it is in flight until released.
    arrived
        .recv_timeout(Duration::from_secs(30))
        .expect("the first request reaches the application");
    let overflow = raw(
        &mesh.client.outbound,
        b"GET http://echo.test.svc.cluster.local:8080/second HTTP/1.1\r\nHost: echo.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    release.send(()).unwrap();
    assert!(overflow.starts_with("HTTP/1.1 503"), "{overflow}");
    assert!(overflow.contains("weft-response-flags: UO"), "{overflow}");
    assert_eq!(first.join().unwrap().0, 200);
}

/// `POST /quitquitquit`: the sidecar stops accepting, lets the request in flight finish,
/// and exits.
#[test]
fn quitquitquit_drains_the_request_in_flight_then_exits() {
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let mut mesh = Mesh::with_apps("", &["v1"], move |_| {
        gate_app(arrived_tx.clone(), release_rx.clone())
    });
    let outbound = mesh.client.outbound.clone();
    let in_flight = std::thread::spawn(move || {
        via_proxy(&outbound, "http://echo.test.svc.cluster.local:8080/slow")
    });
    arrived
        .recv_timeout(Duration::from_secs(30))
        .expect("the request reaches the application");

    let answer = raw(
        &mesh.client.admin,
        b"POST /quitquitquit HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The outbound listener closes: new connections are refused.
    eventually(
        "the outbound listener is closed",
        Duration::from_secs(10),
        || {
            TcpStream::connect(&mesh.client.outbound)
                .is_err()
                .then_some(())
        },
    );
    // The request in flight still gets its answer, then the process exits by itself.
    release.send(()).unwrap();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "finished\n"));
    let exit = eventually("the drained sidecar exits", Duration::from_secs(10), || {
        mesh.client.child.try_wait().unwrap()
    });
    assert!(exit.success(), "{exit:?}");
}
