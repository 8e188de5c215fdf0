//! `weft analyze -k` on a real cluster (etcd and kube-apiserver built by
//! `scripts/k8s-bin.sh`, in a network namespace of the test's own): the resources stored in
//! the API server get the same findings as the same YAML in a file, and `-n` limits the
//! analysis to one namespace; `weft control --kubernetes` writes the same messages on the
//! objects (`status.validationMessages`), and takes them off an object once it is fixed.
//!
//! **Needs root** (the network namespace) and `WEFT_K8S_BIN`, as scripts/test.sh sets it.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::cluster::Cluster;
use common::netns::NetNs;

fn weft(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

/// The findings of `weft analyze`'s text output without where each was found (a file line or
/// a cluster object), sorted.
fn findings(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let at = line.find(" [")?;
            let level_start = line[..at].rfind(": ").map_or(0, |i| i + 2);
            Some(without_places(&line[level_start..]))
        })
        .collect();
    lines.sort();
    lines
}

/// A finding's text without the places it names in parentheses (`(file.yaml:27)`,
/// `(kubernetes:DestinationRule/shop/reviews:1)`).
fn without_places(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('(') {
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c + 1);
        let inside = &rest[open..close];
        out.push_str(&rest[..open]);
        if !inside.contains(':') || inside.contains(' ') {
            out.push_str(inside);
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

#[test]
fn analyze_k_finds_in_the_cluster_what_it_finds_in_the_same_file() {
    let netns = NetNs::new("k8s-analyze", &["10.244.0.1/32"]);
    netns.enter(|| {
        let mut cluster = Cluster::start();
        let manifest = weft(&["manifest", "generate", "--set", "profile=minimal"]);
        assert!(manifest.status.success());
        // The CRDs only: without the control plane there is no validating webhook to refuse
        // the broken example, as when it was written before the mesh was installed.
        let crds: String = String::from_utf8_lossy(&manifest.stdout)
            .split("---\n")
            .filter(|doc| doc.contains("kind: CustomResourceDefinition"))
            .map(|doc| format!("---\n{doc}"))
            .collect();
        let output = cluster.try_kubectl_stdin(&["apply", "--server-side", "-f", "-"], &crds);
        assert!(output.status.success(), "{output:?}");
        cluster.kubectl(&["wait", "--for=condition=Established", "crd", "--all"]);
        cluster.kubectl(&["create", "namespace", "shop"]);
        let broken =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/broken/reviews.yaml");
        let broken = broken.to_str().unwrap();
        cluster.kubectl(&["apply", "-f", broken]);

        let from_file = weft(&["analyze", broken]);
        let kubeconfig = cluster.kubeconfig.to_str().unwrap();
        let from_cluster = weft(&["analyze", "-k", "--kubeconfig", kubeconfig]);
        assert!(!findings(&from_file).is_empty(), "{from_file:?}");
        assert_eq!(
            findings(&from_cluster),
            findings(&from_file),
            "{from_cluster:?}"
        );
        assert_eq!(from_cluster.status.code(), from_file.status.code());
        let stdout = String::from_utf8_lossy(&from_cluster.stdout);
        assert!(
            stdout.contains("kubernetes:VirtualService/shop/reviews"),
            "{stdout}"
        );

        // Another namespace has nothing to say.
        let elsewhere = weft(&["analyze", "-k", "--kubeconfig", kubeconfig, "-n", "default"]);
        assert!(elsewhere.status.success(), "{elsewhere:?}");
        assert!(findings(&elsewhere).is_empty(), "{elsewhere:?}");

        // The control plane writes the same messages on the objects.
        let analyzed = weft(&["analyze", "-k", "--kubeconfig", kubeconfig, "-o", "json"]);
        let analyzed: serde_json::Value = serde_json::from_slice(&analyzed.stdout).unwrap();
        let expected: BTreeSet<String> = analyzed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let text = |key: &str| m[key].as_str().unwrap().to_string();
                let resource = |key: &str| m["resource"][key].as_str().unwrap().to_string();
                let line = format!(
                    "{}/{} {} {} [{}]",
                    resource("kind"),
                    resource("name"),
                    text("level").to_ascii_uppercase(),
                    text("message"),
                    text("code")
                );
                without_places(&line)
            })
            .collect();
        let state = tempfile::tempdir().unwrap();
        let control = common::Control::start_kubernetes(&cluster.kubeconfig, state.path());
        let mut on_objects = BTreeSet::new();
        cluster.until(
            Duration::from_secs(20),
            "the objects carry the analyzer's messages",
            |c| {
                on_objects = status_messages(c);
                on_objects == expected
            },
        );
        // In Istio's shape: the schema problem is Istio's IST0106.
        let code = cluster.kubectl(&[
            "get",
            "destinationrule",
            "reviews",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.validationMessages[0].type.code} {.status.validationMessages[0].documentationUrl}",
        ]);
        assert_eq!(
            code,
            "IST0106 https://istio.io/latest/docs/reference/config/analysis/ist0106/"
        );

        // Fixed with kubectl: the DestinationRule's message goes; the VirtualService's stay.
        let fixed = std::fs::read_to_string(broken)
            .unwrap()
            .replace("ROUND_ROBN", "ROUND_ROBIN");
        cluster.apply(&fixed);
        cluster.until(Duration::from_secs(20), "the fixed object is clean", |c| {
            let now = status_messages(c);
            !now.iter().any(|m| m.starts_with("DestinationRule/"))
                && now.iter().any(|m| m.starts_with("VirtualService/"))
        });
        drop(control);
    });
}

/// Every `status.validationMessages` entry of the VirtualServices and DestinationRules in
/// namespace shop, as `Kind/name LEVEL description`, without places (as [`findings`]).
fn status_messages(cluster: &Cluster) -> BTreeSet<String> {
    let listed = cluster.kubectl(&[
        "get",
        "virtualservices,destinationrules",
        "-n",
        "shop",
        "-o",
        "json",
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let mut out = BTreeSet::new();
    for object in listed["items"].as_array().unwrap() {
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
        let name = format!(
            "{}/{}",
            text(&object["kind"]),
            text(&object["metadata"]["name"])
        );
        for message in object["status"]["validationMessages"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let line = format!(
                "{name} {} {}",
                text(&message["level"]),
                text(&message["description"])
            );
            out.insert(without_places(&line));
        }
    }
    out
}
