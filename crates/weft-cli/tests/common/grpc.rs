//! Real gRPC peers for the tests, from `tests/clients/grpc_xds.py` (Python's grpcio, gRPC
//! C-core's xDS client): echo servers that answer with their name, and a proxyless client of
//! `xds:///TARGET` that counts which server answered.
//!
//! Needs the Python venv `scripts/test.sh` installs (grpcio); set `WEFT_TEST_PYTHON` to its
//! interpreter to run a test file alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The Python interpreter with grpcio.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("WEFT_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "this test needs Python with grpcio: run `bash scripts/test.sh` (it creates .venv), or set WEFT_TEST_PYTHON"
    );
    venv
}

/// The Python peers' script.
pub fn script() -> PathBuf {
    clients_dir().join("grpc_xds.py")
}

/// Where the clients' scripts (and their npm packages) live.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A child process killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Echo servers, one per `NAME=HOST:PORT`, each answering `/test.Echo/Echo` with its name.
pub fn servers_at(servers: &[(&str, &str)]) -> Process {
    let mut command = Command::new(python());
    command.arg(script()).arg("servers");
    for (name, addr) in servers {
        command.arg(format!("{name}={addr}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    // The servers print their ports once they listen.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "the gRPC servers did not start");
    Process(child)
}

/// A proxyless grpcio client of `xds:///TARGET`, its bootstrap naming `xds_addr` as its
/// (plaintext) xDS server and `node_id` as its node.
pub struct Client {
    process: Process,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    _bootstrap: tempfile::TempDir,
}

impl Client {
    pub fn start(target: &str, xds_addr: &str, node_id: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = dir.path().join("bootstrap.json");
        let contents = serde_json::json!({
            "xds_servers": [{"server_uri": xds_addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": node_id},
        });
        std::fs::write(&bootstrap, contents.to_string()).unwrap();
        let mut child = Command::new(python())
            .arg(script())
            .args(["client", target])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the client starts");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Self {
            process: Process(child),
            input,
            output,
            _bootstrap: dir,
        }
    }

    /// `calls` calls of `/test.Echo/Echo`: how many each server answered, and how many
    /// failed with each status code (as `"error CODE"`).
    pub fn calls(&mut self, calls: usize) -> BTreeMap<String, u64> {
        let command =
            serde_json::json!({"calls": calls, "method": "/test.Echo/Echo", "timeout": 5});
        writeln!(self.input, "{command}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the client exited: {:?}",
            self.process.0.try_wait()
        );
        let result: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut counts = BTreeMap::new();
        for (key, prefix) in [("replies", ""), ("errors", "error ")] {
            for (name, count) in result[key].as_object().unwrap() {
                if let Some(count) = count.as_u64() {
                    counts.insert(format!("{prefix}{name}"), count);
                }
            }
        }
        counts
    }
}
