//! `weft demo`: the seed's hands-on exercise in embedded mode, end to end — real control
//! plane, real sidecars under `weft run`, the real gateway, the demo's services — and what a
//! Ctrl-C leaves behind (nothing).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::eventually;

/// Services in the order `weft demo` starts them, with their service accounts.
const WORKLOADS: [&str; 6] = [
    "ratings",
    "details",
    "reviews",
    "reviews",
    "reviews",
    "productpage",
];

/// A port base of this test process's own, so parallel runs do not meet. It stays below
/// Linux's ephemeral range (32768 up): a client socket in TIME_WAIT there blocks a listener's
/// bind, and the demo's traffic leaves thousands of them.
fn port_base(offset: u16) -> u16 {
    10_000 + (std::process::id() % 200) as u16 * 100 + offset
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

/// The reviews version a product page shows.
fn version(page: &str) -> Option<String> {
    let start = page.find("data-reviews-version=\"")? + "data-reviews-version=\"".len();
    let end = page[start..].find('"')? + start;
    Some(page[start..end].to_string())
}

/// `weft demo` in a process group of its own, as a terminal runs it; waits for its map.
fn start_demo(dir: &Path, base: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--port-base", &base.to_string(), "--dir"])
        .arg(dir)
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut map = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            map.push_str(&line);
            map.push('\n');
            if line.starts_with("Light traffic") {
                let _ = tx.send(map.clone());
            }
        }
    });
    let map = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("weft demo prints its map within two minutes");
    (child, map)
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn the_seed_exercise_runs_in_embedded_mode_and_ctrl_c_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh");
    let base = port_base(0);
    let started = Instant::now();
    let (demo, map) = start_demo(&config, base);
    assert!(
        map.contains(&format!("http://127.0.0.1:{base}/productpage")),
        "{map}"
    );
    eprintln!(
        "the demo served its page {:?} after starting",
        started.elapsed()
    );

    // Every workload's sidecar holds a certificate with its SPIFFE ID.
    for (index, account) in WORKLOADS.iter().enumerate() {
        let (status, certs) = get(base + 20 + index as u16, "/certs").unwrap();
        assert_eq!(status, 200);
        assert!(
            certs.contains(&format!(
                "spiffe://cluster.local/ns/default/sa/bookinfo-{account}"
            )),
            "{certs}"
        );
    }
    // STRICT mTLS: a plaintext request to any sidecar's inbound port gets no answer.
    for index in 0..WORKLOADS.len() as u16 {
        assert_eq!(get(base + 30 + index, "/health"), None, "inbound {index}");
    }

    // Everything to v1; the page says so.
    let load = |count: usize| {
        let mut versions = std::collections::BTreeMap::new();
        for _ in 0..count {
            let (status, page) = get(base, "/productpage").unwrap();
            assert_eq!(status, 200);
            *versions.entry(version(&page).unwrap()).or_insert(0usize) += 1;
        }
        versions
    };
    let first = load(30);
    assert_eq!(first.keys().collect::<Vec<_>>(), ["v1"], "{first:?}");

    // The canary: 50/50 v1/v3, by editing a file.
    std::fs::copy(
        config.join(".examples/reviews-50-50.yaml"),
        config.join("reviews.yaml"),
    )
    .unwrap();
    eventually("the canary takes effect", Duration::from_secs(30), || {
        load(10).contains_key("v3").then_some(())
    });
    let split = load(400);
    let v3 = split.get("v3").copied().unwrap_or(0) as f64 / 400.0;
    assert!((0.45..=0.55).contains(&v3), "{split:?}");
    assert_eq!(split.len(), 2, "{split:?}");

    // The control plane killed: pages keep coming; it is started again and converges.
    let control = processes_mentioning(&format!("--xds-addr 127.0.0.1:{}", base + 1));
    assert_eq!(control.len(), 1, "{control:?}");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&format!("--xds-addr 127.0.0.1:{}", base + 1))
            })
        })
        .and_then(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(load(20).values().sum::<usize>(), 20);
    std::fs::write(
        config.join("reviews.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v3}}]\n",
    )
    .unwrap();
    eventually(
        "the restarted control plane converges",
        Duration::from_secs(60),
        || (load(10).keys().collect::<Vec<_>>() == ["v3"]).then_some(()),
    );

    // Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
    let group = nix::unistd::Pid::from_raw(-(demo.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut demo = demo;
    eventually("the demo stops", Duration::from_secs(5), || {
        demo.try_wait().unwrap()
    });
    // Nothing is left behind: the last of its processes may still be on the way out when
    // the demo has exited, so they get a moment, not forever.
    let config_text = config.display().to_string();
    let leftovers = || -> Vec<String> {
        processes_mentioning(&config_text)
            .into_iter()
            .chain(
                (10..16)
                    .flat_map(|i| processes_mentioning(&format!("--port {}", base + i)))
                    .filter(|c| c.contains("demo-app")),
            )
            .collect()
    };
    eventually(
        "nothing of the demo is left",
        Duration::from_secs(5),
        || {
            let left = leftovers();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("left behind: {left:?}"))
            }
        },
    );
}

#[test]
fn a_taken_port_and_an_unwritable_dir_are_said_plainly() {
    let base = port_base(50);
    let taken = std::net::TcpListener::bind(("127.0.0.1", base)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--port-base", &base.to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {base} is already taken")),
        "{stderr}"
    );
    drop(taken);

    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--port-base", &base.to_string(), "--dir"])
        .arg(file.join("mesh"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot write the config dir"), "{stderr}");
}
