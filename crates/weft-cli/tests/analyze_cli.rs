//! `weft analyze` as a user runs it: the real binary on real files, including hostile ones.
//! Every bad input must end in a clear message, a non-zero exit and no panic, within bounded
//! memory.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const EXIT_FINDINGS: i32 = 79;

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn seed_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .display()
        .to_string()
}

#[test]
fn clean_config_exits_zero_and_says_so() {
    let output = weft(&["analyze", &seed_dir()]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("No errors found in 11 resources from 10 files"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn warnings_fail_only_with_the_warning_threshold() {
    let output = weft(&["analyze", "--fail-threshold", "warning", &seed_dir()]);
    assert_eq!(output.status.code(), Some(EXIT_FINDINGS));
}

#[test]
fn errors_are_printed_sorted_by_file_and_line_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: -5\n    - destination: {host: s}\n      weight: 0\n    timeout: 0s\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a.yaml"), "kind: [\n").unwrap();
    let output = weft(&["analyze", &dir.path().display().to_string()]);
    assert_eq!(output.status.code(), Some(EXIT_FINDINGS));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("a.yaml:") && lines[0].contains("[WEFT0001]"),
        "{text}"
    );
    let weight = lines
        .iter()
        .position(|l| l.contains("b.yaml:10: Error [WEFT0103] (VirtualService default/r)"));
    let timeout = lines
        .iter()
        .position(|l| l.contains("b.yaml:13: Error [WEFT0107]"));
    assert!(
        weight.is_some() && timeout.is_some() && weight < timeout,
        "{text}"
    );
    assert!(
        lines.last().unwrap().starts_with("3 errors found"),
        "{text}"
    );
}

#[test]
fn json_and_yaml_outputs_carry_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pa.yaml");
    std::fs::write(&file, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls:\n    mode: STICT\n").unwrap();
    let output = weft(&["analyze", "-o", "json", &file.display().to_string()]);
    assert_eq!(output.status.code(), Some(EXIT_FINDINGS));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    let message = &report["messages"][0];
    assert_eq!(message["code"], "WEFT0113");
    assert_eq!(message["istioCode"], "IST0106");
    assert_eq!(message["level"], "Error");
    assert_eq!(message["line"], 7);
    assert_eq!(message["resource"]["kind"], "PeerAuthentication");
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("did you mean STRICT"),
        "{message}"
    );
    assert_eq!(report["summary"]["errors"], 1);

    let output = weft(&["analyze", "-o", "yaml", &file.display().to_string()]);
    let text = stdout(&output);
    assert!(
        text.contains("code: WEFT0113") && text.contains("line: 7"),
        "{text}"
    );
}

#[test]
fn reads_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["analyze", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  subsets:\n  - name: v1\n    labels: {version: v1}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("1 resource from 1 file"));
}

/// Runs `weft analyze` on a file with these contents and returns the output.
fn analyze_bytes(name: &str, contents: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    weft(&["analyze", &file.display().to_string()])
}

/// Peak resident memory of the largest child process this test binary has waited for.
fn peak_child_rss_mib() -> f64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    usage.max_rss() as f64 / 1024.0
}

#[test]
fn bad_input_gets_a_clear_message_a_non_zero_exit_and_no_panic() {
    let mut alias_bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        alias_bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let mut big = String::with_capacity(50 << 20);
    while big.len() < 50 << 20 {
        big.push_str("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: filler\nspec:\n  hosts: [filler]\n---\n");
    }
    let mut garbage = vec![0u8; 4096];
    for (i, byte) in garbage.iter_mut().enumerate() {
        *byte = (i.wrapping_mul(2_654_435_761) >> 7) as u8 | 0x80;
    }
    let cases: [(&str, &[u8], &str, &str); 8] = [
        ("wrong indentation", b"apiVersion: v1\nkind: VirtualService\nmetadata:\n  name: a\n   namespace: b\n", "indent.yaml:5", "WEFT0001"),
        ("tabs", b"apiVersion: v1\nkind: VirtualService\nmetadata:\n\tname: a\n", "tabs.yaml:4", "tabs for indentation"),
        ("unclosed bracket", b"spec:\n  hosts: [a, b\n  http: x\n", "bracket.yaml:3", "left unclosed"),
        ("wrong type", b"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\nspec:\n  host: r\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        maxConnections: lots\n", "type.yaml:10", "maxConnections"),
        ("alias bomb", alias_bomb.as_bytes(), "bomb.yaml:", "alias bomb"),
        ("50 MB file", big.as_bytes(), "big.yaml:1", "MiB limit"),
        ("binary garbage", &garbage, "garbage.yaml:1", "not UTF-8"),
        ("empty file", b"", "empty.yaml:1", "holds no resources"),
    ];
    let names = [
        "indent.yaml",
        "tabs.yaml",
        "bracket.yaml",
        "type.yaml",
        "bomb.yaml",
        "big.yaml",
        "garbage.yaml",
        "empty.yaml",
    ];
    for ((what, contents, place, text), name) in cases.iter().zip(names) {
        let output = analyze_bytes(name, contents);
        let out = stdout(&output);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FINDINGS),
            "{what}: {out}{err}"
        );
        assert!(!err.contains("panicked"), "{what} panicked: {err}");
        assert!(
            out.contains(place) && out.contains(text),
            "{what}: expected {place:?} and {text:?} in:\n{out}"
        );
    }
    let peak = peak_child_rss_mib();
    assert!(peak < 200.0, "a child used {peak:.0} MiB");
}
