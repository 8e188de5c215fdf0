//! `weft run [sidecar flags] -- CMD [ARGS...]`: meshes any process. The workload's sidecar
//! runs inside this process; the command starts once the sidecar is ready (Istio's
//! `holdApplicationUntilProxyStarts`), with `HTTP_PROXY` pointing at the sidecar's outbound
//! listener, so HTTP clients that honour it reach mesh services by name. Signals reach the
//! command; when it exits, the sidecar drains and `weft run` exits with the command's status.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::proxy::{self, Defaults};

/// Arguments of `weft run`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    sidecar: proxy::Args,
    /// How long to wait for the sidecar's certificate and first configuration before giving
    /// up without starting the command.
    #[arg(long, default_value = "30s", value_parser = super::control::parse_duration)]
    ready_timeout: Duration,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Signals passed on to the command.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// How long to try the control plane's address before saying it is not there.
const CONTROL_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the sidecar, then the command; returns the command's exit status.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some((program, program_args)) = args.command.split_first() else {
        anyhow::bail!("give the command to run after `--`");
    };
    let default_name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    let (settings, concurrency) = args.sidecar.settings(&Defaults::RUN, default_name)?;
    let control = settings.control.clone();
    proxy::runtime(concurrency)?.block_on(async move {
        // Said plainly, before anything else happens.
        match tokio::time::timeout(
            CONTROL_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect(&control),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => anyhow::bail!(
                "cannot reach the control plane at {control}: {error}. Is `weft control` (or `weft demo`) running? Give its address with --control"
            ),
            Err(_) => anyhow::bail!(
                "cannot reach the control plane at {control}: no answer within {CONTROL_PROBE_TIMEOUT:?}"
            ),
        }
        let ports = weft_proxy::start(settings)
            .await
            .context("starting the sidecar")?;
        proxy::log_ports(&ports);
        if tokio::time::timeout(args.ready_timeout, ports.readiness.wait())
            .await
            .is_err()
        {
            let missing = match (
                ports.readiness.has_certificate(),
                ports.readiness.has_configuration(),
            ) {
                (false, false) => "a certificate and a configuration",
                (false, true) => "a certificate (is the join token right?)",
                _ => "a whole configuration",
            };
            anyhow::bail!(
                "the sidecar did not get {missing} from {control} within {:?}; the command was not started",
                args.ready_timeout
            );
        }
        let code = supervise(program, program_args, &ports).await;
        ports.drain.drain().await;
        code
    })
}

/// Starts the command beside the ready sidecar and waits for it, passing signals on.
async fn supervise(
    program: &OsString,
    program_args: &[OsString],
    ports: &weft_proxy::Ports,
) -> anyhow::Result<ExitCode> {
    let outbound = ports
        .outbound
        .context("the sidecar has no outbound listener")?;
    let proxy_url = format!("http://{outbound}");
    let no_proxy = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_string)
        .chain(
            std::env::var("NO_PROXY")
                .or_else(|_| std::env::var("no_proxy"))
                .ok()
                .filter(|v| !v.is_empty()),
        )
        .collect::<Vec<_>>()
        .join(",");
    // Listening first: a signal that arrives as soon as the command runs is passed on, not
    // taken by this process's default action (which would leave the command behind).
    let mut streams = Vec::new();
    for forwarded in FORWARDED {
        let stream = signal(SignalKind::from_raw(forwarded as i32))
            .with_context(|| format!("listening for {forwarded}"))?;
        streams.push((forwarded, stream));
    }
    // The command starts as this binary's hidden `run-child`, which asks the kernel for a
    // SIGTERM should this process die (even by SIGKILL, when it cannot pass a signal on),
    // then becomes the command: same process, same PID.
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("run-child")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .arg(program)
        .args(program_args)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("NO_PROXY", &no_proxy)
        .env("no_proxy", &no_proxy)
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let (relay_tx, mut relay_rx) = tokio::sync::mpsc::unbounded_channel();
    for (forwarded, mut stream) in streams {
        let relay_tx = relay_tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if relay_tx.send(forwarded).is_err() {
                    return;
                }
            }
        });
    }
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            Some(received) = relay_rx.recv() => {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(pid, received);
                }
            }
            () = ports.drain.finished() => {
                // The sidecar was told to stop (`/quitquitquit`): so is the command.
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                }
                break child.wait().await.context("waiting for the command")?;
            }
        }
    };
    Ok(exit_code(status))
}

/// What `weft run` starts its command with (hidden): `weft run-child --parent PID -- CMD`.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// The `weft run` process that must be alive.
    #[arg(long)]
    parent: i32,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<OsString>,
}

/// Arranges for a SIGTERM when the `weft run` that started this process dies, then
/// replaces this process with the command. Returns only if the command cannot start.
pub fn run_child(args: ChildArgs) -> ExitCode {
    use std::os::unix::process::CommandExt;
    if let Err(error) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("weft run: cannot watch the weft run process: {error}");
        return ExitCode::from(126);
    }
    // `weft run` may have died before the request above took effect.
    if nix::unistd::getppid().as_raw() != args.parent {
        return ExitCode::from(126);
    }
    let Some((program, rest)) = args.command.split_first() else {
        return ExitCode::from(126);
    };
    let error = std::process::Command::new(program).args(rest).exec();
    eprintln!("weft: cannot start {}: {error}", program.to_string_lossy());
    ExitCode::from(127)
}

/// The command's status as this process's: its exit code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)),
        (None, None) => ExitCode::FAILURE,
    }
}
