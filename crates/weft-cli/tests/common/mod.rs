//! Helpers shared by the tests (and the push benchmark) that run the real `weft control`:
//! start it on ephemeral ports and wait for the addresses it logs, and read its debug pages.

#![allow(dead_code, reason = "each test binary uses part of these helpers")]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `weft control`, killed when dropped.
pub struct Control {
    pub child: Child,
    /// Where its debug pages are.
    pub debug: String,
    /// Where it serves xDS.
    pub xds: String,
}

impl Control {
    /// Starts `weft control` on `config_dir`, on ephemeral ports, and waits until it serves.
    pub fn start(config_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "control",
                "--xds-addr",
                "127.0.0.1:0",
                "--debug-addr",
                "127.0.0.1:0",
                "--log",
                "warn,weft=info",
            ])
            .arg("--config-dir")
            .arg(config_dir)
            .stderr(Stdio::piped())
            .spawn()
            .expect("weft control starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for marker in ["serving debug pages on ", "serving xDS on "] {
                    if let Some(addr) = line.split(marker).nth(1) {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let wait = || {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("weft control logs its addresses")
        };
        let debug = wait();
        let xds = wait();
        Self { child, debug, xds }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs a page over HTTP/1.1; returns the status code and the body.
pub fn get_status(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("the debug port accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GETs a page over HTTP/1.1 and returns its body; the page must answer 200.
pub fn get(addr: &str, path: &str) -> String {
    let (status, body) = get_status(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GETs a page and parses its JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(addr, path)).expect("the page is JSON")
}
