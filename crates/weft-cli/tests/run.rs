//! `weft run`: any process meshed by its own sidecar. Real `weft control`, real sidecars,
//! the demo's real services and an unmodified HTTP client (curl).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::eventually;

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

/// Runs `command` to its end, failing the test if it takes more than `limit`.
fn finish_within(mut command: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{command:?} still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

/// A control plane with mesh-wide STRICT mTLS, and `details` of the demo running under
/// `weft run` as service `details:9080`.
struct Mesh {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    control: common::Control,
    details: std::process::Child,
}

impl Drop for Mesh {
    /// SIGTERM, which `weft run` passes on to the service before it drains and exits (a
    /// SIGKILL would leave the service behind).
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.details.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.details.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.details.kill();
        let _ = self.details.wait();
    }
}

impl Mesh {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("strict.yaml"), STRICT).unwrap();
        let control = common::Control::start(&config);
        let app_port = common::free_port().to_string();
        let details = weft()
            .args([
                "run",
                "--control",
                &control.xds,
                "--service",
                "details:9080",
            ])
            .args(["--app-port", &app_port, "--config-dir"])
            .arg(&config)
            .args(["--", env!("CARGO_BIN_EXE_weft"), "demo-app", "details"])
            .args(["--port", &app_port])
            .spawn()
            .unwrap();
        let mesh = Mesh {
            _dir: dir,
            config,
            control,
            details,
        };
        // Ready once the registry lists the workload.
        let mut mesh = mesh;
        eventually("details is registered", Duration::from_secs(60), || {
            if common::get(&mesh.control.debug, "/debug/registry").contains("details") {
                return Some(());
            }
            if let Some(status) = mesh.details.try_wait().unwrap() {
                panic!("weft run for details ended: {status}");
            }
            None
        });
        mesh
    }

    /// `weft run` for a client workload, with `args` after `--`.
    fn run(&self, args: &[&str]) -> Command {
        let mut command = weft();
        command
            .args(["run", "--control", &self.control.xds, "--config-dir"])
            .arg(&self.config)
            .arg("--")
            .args(args);
        command
    }

    /// Starts `weft run -- sh -c SCRIPT` and returns it with the first line the script
    /// prints (so the command is known to be running).
    fn start_script(&self, script: &str) -> (std::process::Child, String) {
        let mut child = self
            .run(&["sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        (child, first.trim().to_string())
    }
}

#[test]
fn curl_reaches_a_mesh_service_by_name_and_its_status_is_weft_runs() {
    let mesh = Mesh::start();
    // The sidecar is ready before curl starts, so the very first request succeeds; a
    // service whose endpoint is still on its way gets a few tries.
    let body = eventually("curl gets through", Duration::from_secs(30), || {
        let (output, _) = finish_within(
            mesh.run(&["curl", "-sS", "--fail", "http://details:9080/details/0"]),
            Duration::from_secs(30),
        );
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    });
    assert!(body.contains("William Shakespeare"), "{body}");

    // curl's own failure is weft run's: 22 is curl's code for an HTTP error with --fail.
    let (output, _) = finish_within(
        mesh.run(&["curl", "-sS", "--fail", "http://details:9080/nothing-here"]),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(22), "{output:?}");
    let (output, _) = finish_within(mesh.run(&["sh", "-c", "exit 7"]), Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(7), "{output:?}");
}

#[test]
fn signals_reach_the_command() {
    let mesh = Mesh::start();
    let (mut child, first) =
        mesh.start_script("trap 'exit 42' TERM; echo started; while :; do sleep 0.1; done");
    assert_eq!(first, "started");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = eventually("weft run stops", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    assert_eq!(
        status.code(),
        Some(42),
        "the command's trap decides the status"
    );
}

#[test]
fn the_command_does_not_outlive_a_killed_weft_run() {
    let mesh = Mesh::start();
    let (mut child, first) = mesh.start_script("echo $$; while :; do sleep 0.1; done");
    let command: i32 = first.parse().unwrap();
    // SIGKILL: weft run gets no chance to pass anything on.
    child.kill().unwrap();
    child.wait().unwrap();
    let alive = || {
        // Gone, or a zombie waiting for whoever inherited it.
        std::fs::read_to_string(format!("/proc/{command}/stat"))
            .ok()
            .and_then(|stat| {
                Some(
                    stat.rsplit_once(')')?
                        .1
                        .trim_start()
                        .starts_with(['Z', 'X']),
                )
            })
            .is_some_and(|dead| !dead)
    };
    eventually(
        "the command is gone after weft run",
        Duration::from_secs(10),
        || (!alive()).then_some(()),
    );
}

#[test]
fn bad_commands_ports_and_control_planes_get_clear_messages() {
    let mesh = Mesh::start();
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let (output, took) = finish_within(mesh.run(&["/no/such/command"]), Duration::from_secs(30));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot start /no/such/command"),
        "{}",
        stderr(&output)
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // A command that exits at once ends weft run at once, with its status.
    let (output, took) = finish_within(mesh.run(&["true"]), Duration::from_secs(30));
    assert!(output.status.success(), "{output:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = weft();
    command
        .args([
            "run",
            "--control",
            &mesh.control.xds,
            "--outbound-port",
            &port,
        ])
        .arg("--config-dir")
        .arg(&mesh.config)
        .args(["--", "true"]);
    let (output, _) = finish_within(command, Duration::from_secs(30));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        stderr(&output)
    );

    let nobody = common::free_port();
    let mut command = weft();
    command
        .args(["run", "--control", &format!("127.0.0.1:{nobody}")])
        .arg("--config-dir")
        .arg(&mesh.config)
        .args(["--", "true"]);
    let (output, took) = finish_within(command, Duration::from_secs(30));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!(
            "cannot reach the control plane at 127.0.0.1:{nobody}"
        )),
        "{}",
        stderr(&output)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Without any way to get a certificate, it says so before starting anything.
    let mut command = weft();
    command
        .args(["run", "--control", &mesh.control.xds, "--", "true"])
        .env_remove("WEFT_JOIN_TOKEN");
    let (output, _) = finish_within(command, Duration::from_secs(30));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("join token"),
        "{}",
        stderr(&output)
    );

    // A token for another control plane's CA: no certificate, so the command never starts.
    let other = tempfile::tempdir().unwrap();
    let mut command = weft();
    command
        .args([
            "run",
            "--control",
            &mesh.control.xds,
            "--ready-timeout",
            "3s",
        ])
        .arg("--config-dir")
        .arg(other.path())
        .args(["--", "sh", "-c", "echo started"]);
    let (output, _) = finish_within(command, Duration::from_secs(30));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("did not get a certificate"),
        "{}",
        stderr(&output)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("started"));
}
