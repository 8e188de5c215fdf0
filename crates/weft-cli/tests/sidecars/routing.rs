//! Where a request goes: a host the mesh does not know (404, `NR`), the seed's canary
//! (weighted subsets, edited live) and header route, and each load-balancing policy's
//! distribution over three endpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clients::raw;
use crate::common::{self, eventually};
use crate::mesh::{Mesh, config_dir};

#[test]
fn unknown_hosts_get_404_with_the_nr_flag() {
    let mesh = Mesh::start("");
    let answer = raw(
        &mesh.client.outbound,
        b"GET http://nowhere.test.svc.cluster.local:8080/x HTTP/1.1\r\nHost: nowhere.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("weft-response-flags: NR"), "{answer}");
    // Without --debug-headers the flag stays out of the response.
    let token = common::join_token(&config_dir(mesh.dir.path()), "test", "client");
    let quiet = common::Proxy::start(&[
        "--control",
        &mesh.control.as_ref().unwrap().xds,
        "--name",
        "quiet-client",
        "--namespace",
        "test",
        "--service-account",
        "client",
        "--token",
        &token,
        "--debug-headers",
        "false",
    ]);
    quiet.until_ready();
    let answer = raw(
        &quiet.outbound,
        b"GET http://nowhere.test.svc.cluster.local:8080/x HTTP/1.1\r\nHost: nowhere.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("weft-response-flags"), "{answer}");
    let metrics = common::get(&mesh.client.metrics, "/stats/prometheus");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("istio_requests_total{")
                // A Host no route knows is the client's word: `unknown`, not a label of its own.
                && line.contains("destination_service=\"unknown\"")
                && line.contains("response_code=\"404\",response_flags=\"NR\"")
                && line.ends_with("} 1")),
        "{metrics}"
    );
    // The access log says the same.
    let line = eventually(
        "the access log has the request",
        Duration::from_secs(10),
        || {
            let logged = mesh.client.log.lock().unwrap();
            let line = logged.iter().find(|l| l.contains("nowhere.test"));
            line.cloned().ok_or_else(|| format!("{logged:?}"))
        },
    );
    assert!(line.contains("status=404") && line.contains("NR"), "{line}");
    drop(mesh.servers);
}

/// The seed's reviews rules on `echo`: Chrome's user agent to v2; the rest `v1`% to v1 and
/// `v3`% to v3.
fn split(v1: u32, v3: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: test}}\nspec:\n  hosts: [echo]\n  http:\n  - match:\n    - headers:\n        user-agent: {{regex: \".*Chrome.*\"}}\n    route:\n    - destination: {{host: echo, subset: v2}}\n  - route:\n    - destination: {{host: echo, subset: v1}}\n      weight: {v1}\n    - destination: {{host: echo, subset: v3}}\n      weight: {v3}\n"
    )
}

/// The percentage of `total` requests that `who` served.
fn share(counts: &BTreeMap<String, usize>, who: &str, total: usize) -> f64 {
    100.0 * *counts.get(who).unwrap_or(&0) as f64 / total as f64
}

/// The seed's canary: 95/5, then 50/50 between v1 and v3, over 2,000 requests each, within
/// three points; and its header route: Chrome's user agent goes to v2.
#[test]
fn the_canary_split_and_the_header_route_hold() {
    let mesh = Mesh::with_versions(&split(95, 5), &["v1", "v2", "v3"]);
    let counts = mesh.served_by(2000, "");
    let v3 = share(&counts, "v3", 2000);
    assert!((2.0..=8.0).contains(&v3), "95/5: {counts:?}");
    assert_eq!(counts.get("v2"), None, "{counts:?}");

    let chrome = mesh.served_by(
        50,
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n",
    );
    assert_eq!(chrome.get("v2"), Some(&50), "{chrome:?}");

    mesh.edit(&split(50, 50));
    let counts = mesh.served_by(2000, "");
    let v3 = share(&counts, "v3", 2000);
    assert!((47.0..=53.0).contains(&v3), "50/50: {counts:?}");
}

/// A DestinationRule for `echo` with the load-balancer `policy` given.
fn load_balancer(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  trafficPolicy:\n    loadBalancer: {policy}\n"
    )
}

/// Every load-balancing policy shows its distribution over three endpoints.
#[test]
fn each_load_balancer_distributes_as_it_should() {
    let mesh = Mesh::with_versions(&load_balancer("{simple: ROUND_ROBIN}"), &["a", "b", "c"]);
    let counts = mesh.served_by(300, "");
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "round robin: {counts:?}"
    );

    for simple in ["RANDOM", "LEAST_REQUEST"] {
        mesh.edit_then(
            &load_balancer(&format!("{{simple: {simple}}}")),
            weft_xds::types::CLUSTER,
        );
        let counts = mesh.served_by(600, "");
        assert_eq!(counts.len(), 3, "{simple}: {counts:?}");
        assert!(
            counts.values().all(|n| (130..=270).contains(n)),
            "{simple}: {counts:?}"
        );
    }

    // The route's hash policy changes with the first; only the cluster with the second.
    for (hash, changes) in [
        (
            "{consistentHash: {httpHeaderName: x-user}}",
            weft_xds::types::ROUTE,
        ),
        (
            "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}",
            weft_xds::types::CLUSTER,
        ),
    ] {
        mesh.edit_then(&load_balancer(hash), changes);
        // One user always reaches the same endpoint; many users spread.
        let alice = mesh.served_by(50, "x-user: alice\r\n");
        assert_eq!(alice.len(), 1, "{hash}: {alice:?}");
        let mut reached = std::collections::BTreeSet::new();
        for user in 0..30 {
            let counts = mesh.served_by(3, &format!("x-user: user-{user}\r\n"));
            assert_eq!(counts.len(), 1, "{hash}: user-{user}: {counts:?}");
            reached.extend(counts.into_keys());
        }
        assert!(
            reached.len() >= 2,
            "{hash}: 30 users all reached {reached:?}"
        );
    }
    mesh.edit_then(
        &load_balancer("{consistentHash: {useSourceIp: true}}"),
        weft_xds::types::ROUTE,
    );
    let same_client = mesh.served_by(50, "");
    assert_eq!(same_client.len(), 1, "source IP: {same_client:?}");
}
