//! `weft analyze`: load, validate and analyse Istio YAML, print the findings, and exit
//! non-zero when any reaches the failure threshold.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use weft_api::codes;
use weft_api::load::{Limits, Loader};
use weft_api::{Level, Message};

/// Exit status when findings reach the failure threshold; the same as `istioctl analyze`,
/// so scripts written for it keep working.
const EXIT_FINDINGS: u8 = 79;

/// Arguments of `weft analyze`.
#[derive(clap::Args)]
pub struct Args {
    /// Files and directories to analyse (directories recursively: *.yaml, *.yml, *.json);
    /// `-` reads standard input.
    #[arg(required_unless_present_any = ["list_codes", "kubernetes"])]
    paths: Vec<PathBuf>,
    /// Also analyse the live cluster (`istioctl analyze`): its Istio resources and Pods,
    /// together with the files given.
    #[arg(short = 'k', long)]
    kubernetes: bool,
    /// The kubeconfig for `-k`; otherwise found as kubectl finds it.
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With `-k`, only this namespace's resources (all namespaces otherwise).
    #[arg(short = 'n', long, requires = "kubernetes")]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Exit non-zero when a message of this level or worse is found.
    #[arg(long, alias = "failure-threshold", value_enum, default_value_t = Threshold::Error)]
    fail_threshold: Threshold,
    /// Print only messages of this level or worse.
    #[arg(long, value_enum, default_value_t = Threshold::Info)]
    output_threshold: Threshold,
    /// Largest input file accepted, in MiB.
    #[arg(long, default_value_t = 16)]
    max_file_size: u64,
    /// List every message code and exit.
    #[arg(long)]
    list_codes: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum Threshold {
    Info,
    Warning,
    Error,
}

impl From<Threshold> for Level {
    fn from(t: Threshold) -> Level {
        match t {
            Threshold::Info => Level::Info,
            Threshold::Warning => Level::Warning,
            Threshold::Error => Level::Error,
        }
    }
}

/// Runs `weft analyze`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    if args.list_codes {
        for code in codes::ALL {
            let istio = code.istio.map(|i| format!(" ({i})")).unwrap_or_default();
            writeln!(
                stdout,
                "{}  {:<7}  {}{istio}",
                code.id,
                code.level.as_str(),
                code.name
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let limits = Limits {
        max_input_bytes: args.max_file_size.saturating_mul(1024 * 1024),
        ..Limits::default()
    };
    let mut loader = Loader::new(limits);
    // The cluster first: a file's version of the same resource replaces the cluster's.
    if args.kubernetes {
        let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let documents = runtime.block_on(async {
            let client = weft_control::kube::connect(args.kubeconfig.as_deref()).await?;
            let documents =
                weft_control::kube::config::documents(client, args.namespace.as_deref()).await?;
            anyhow::Ok(documents)
        });
        for (origin, text) in documents.context("reading the cluster")? {
            loader.load_str(origin, &text);
        }
    }
    for path in &args.paths {
        if path.as_os_str() == "-" {
            loader.load_reader("-", std::io::stdin().lock());
        } else {
            loader.load_path(path);
        }
    }
    let loaded = loader.finish();
    let messages = weft_api::check(&loaded);
    let shown: Vec<&Message> = messages
        .iter()
        .filter(|m| m.level() >= Level::from(args.output_threshold))
        .collect();
    let count = |level| messages.iter().filter(|m| m.level() == level).count();
    let (errors, warnings, infos) = (
        count(Level::Error),
        count(Level::Warning),
        count(Level::Info),
    );
    match args.output {
        Format::Text => {
            for message in &shown {
                writeln!(stdout, "{message}")?;
            }
            let files = plural(loaded.files, "file");
            let resources = plural(loaded.resources.len(), "resource");
            if errors == 0 {
                writeln!(
                    stdout,
                    "No errors found in {resources} from {files} ({}, {}).",
                    plural(warnings, "warning"),
                    plural(infos, "info message")
                )?;
            } else {
                writeln!(
                    stdout,
                    "{} found in {resources} from {files} ({}, {}).",
                    plural(errors, "error"),
                    plural(warnings, "warning"),
                    plural(infos, "info message")
                )?;
            }
        }
        Format::Json | Format::Yaml => {
            let report = serde_json::json!({
                "messages": shown.iter().map(|m| m.to_json()).collect::<Vec<_>>(),
                "summary": {
                    "files": loaded.files,
                    "resources": loaded.resources.len(),
                    "errors": errors,
                    "warnings": warnings,
                    "info": infos,
                },
            });
            if matches!(args.output, Format::Json) {
                serde_json::to_writer_pretty(&mut stdout, &report).context("writing JSON")?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", weft_api::load::to_yaml(&report))?;
            }
        }
    }
    let threshold = Level::from(args.fail_threshold);
    if messages.iter().any(|m| m.level() >= threshold) {
        Ok(ExitCode::from(EXIT_FINDINGS))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
