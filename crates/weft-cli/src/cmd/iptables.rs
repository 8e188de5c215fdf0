//! `weft iptables`: the init container's job, as Istio's `istio-iptables`. It writes the
//! pod's `nat` rules so every TCP connection the application makes goes to the sidecar's
//! outbound port (15001) and every one it receives to the inbound port (15006), leaving the
//! proxy's own traffic (its user, 1337) alone; `--clean` takes them out again.
//!
//! The rules go in with one `iptables-restore --noflush` (all or nothing), in chains of
//! their own named as Istio's (`ISTIO_INBOUND`, `ISTIO_OUTPUT`, …), so tools that know
//! Istio's layout read Weft's. Running it again replaces them.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

/// Arguments of `weft iptables`; the short flags are `istio-iptables`'s.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The sidecar's outbound port, where outbound connections are sent.
    #[arg(short = 'p', long, default_value_t = 15001)]
    proxy_port: u16,
    /// The sidecar's inbound port, where inbound connections are sent.
    #[arg(short = 'z', long, default_value_t = 15006)]
    inbound_capture_port: u16,
    /// The user the sidecar runs as: its connections are not redirected.
    #[arg(short = 'u', long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The group the sidecar runs as [default: the proxy uid].
    #[arg(short = 'g', long)]
    proxy_gid: Option<u32>,
    /// Outbound destinations to redirect: `*` (all), or comma-separated CIDRs; empty for none.
    #[arg(short = 'i', long, default_value = "*")]
    outbound_ip_ranges_include: String,
    /// Outbound destinations never redirected, comma-separated CIDRs.
    #[arg(short = 'x', long, default_value = "")]
    outbound_ip_ranges_exclude: String,
    /// Outbound destination ports never redirected, comma-separated.
    #[arg(short = 'o', long, default_value = "")]
    outbound_ports_exclude: String,
    /// Outbound destination ports always redirected, even to excluded ranges, comma-separated.
    #[arg(short = 'q', long, default_value = "")]
    outbound_ports_include: String,
    /// Inbound ports to redirect: `*` (all), or comma-separated; empty for none.
    #[arg(short = 'b', long, default_value = "*")]
    inbound_ports_include: String,
    /// Inbound ports never redirected (with `-b '*'`), comma-separated. The sidecar's own
    /// health and metrics ports are always left out.
    #[arg(short = 'd', long, default_value = "15090,15021,15020")]
    inbound_ports_exclude: String,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules (and with them all redirection): the pod's traffic goes straight
    /// to where it was going.
    #[arg(long)]
    clean: bool,
}

/// The chains, in the order they are made.
const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
    "ISTIO_REDIRECT",
];
/// Where the built-in chains jump into the mesh's.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", "ISTIO_INBOUND"), ("OUTPUT", "ISTIO_OUTPUT")];
/// The address the sidecar connects to the application from (Istio's inbound passthrough).
const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";

/// Runs `weft iptables`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.clean {
        if args.dry_run {
            print!("{}", clean_commands().join("\n"));
            println!();
        } else {
            clean();
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rules = Rules::from_args(&args)?;
    let text = rules.restore_input();
    if args.dry_run {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    // Replacing: a second run (a restarted init container) must not add the jumps twice.
    clean();
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .context("running iptables-restore (install iptables)")?;
    child
        .stdin
        .take()
        .context("iptables-restore's input")?
        .write_all(text.as_bytes())
        .context("writing the rules to iptables-restore")?;
    let status = child.wait().context("waiting for iptables-restore")?;
    if !status.success() {
        bail!("iptables-restore refused the rules ({status}):\n{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `iptables` commands that remove the mesh's rules.
fn clean_commands() -> Vec<String> {
    let mut commands: Vec<String> = JUMPS
        .iter()
        .map(|(builtin, chain)| format!("iptables -t nat -D {builtin} -p tcp -j {chain}"))
        .collect();
    // Emptied first, then deleted: a chain cannot go while another still jumps to it.
    for chain in CHAINS {
        commands.push(format!("iptables -t nat -F {chain}"));
    }
    for chain in CHAINS {
        commands.push(format!("iptables -t nat -X {chain}"));
    }
    commands
}

/// Removes the rules; what is not there is skipped.
fn clean() {
    for command in clean_commands() {
        let words: Vec<&str> = command.split(' ').collect();
        // Each jump is deleted until none is left (an older run may have added it twice).
        let repeat = if command.contains(" -D ") { 8 } else { 1 };
        for _ in 0..repeat {
            let deleted = Command::new(words[0])
                .args(&words[1..])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !deleted {
                break;
            }
        }
    }
}

/// Which connections are redirected.
#[derive(Debug, PartialEq)]
struct Rules {
    proxy_port: u16,
    inbound_port: u16,
    uid: u32,
    gid: u32,
    include_ranges: Ranges,
    exclude_ranges: Vec<String>,
    exclude_ports: Vec<u16>,
    include_ports: Vec<u16>,
    inbound: Ports,
}

/// `*` or a list.
#[derive(Debug, PartialEq)]
enum Ranges {
    All,
    Some(Vec<String>),
}

#[derive(Debug, PartialEq)]
enum Ports {
    All { except: Vec<u16> },
    Some(Vec<u16>),
}

impl Rules {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let include_ranges = match args.outbound_ip_ranges_include.trim() {
            "*" => Ranges::All,
            list => Ranges::Some(cidrs(list, "--outbound-ip-ranges-include")?),
        };
        let mut except = ports(&args.inbound_ports_exclude, "--inbound-ports-exclude")?;
        // The sidecar's own ports are never redirected to itself.
        for own in [15090, 15021, 15020] {
            if !except.contains(&own) {
                except.push(own);
            }
        }
        let inbound = match args.inbound_ports_include.trim() {
            "*" => Ports::All { except },
            list => Ports::Some(ports(list, "--inbound-ports-include")?),
        };
        Ok(Self {
            proxy_port: args.proxy_port,
            inbound_port: args.inbound_capture_port,
            uid: args.proxy_uid,
            gid: args.proxy_gid.unwrap_or(args.proxy_uid),
            include_ranges,
            exclude_ranges: cidrs(
                &args.outbound_ip_ranges_exclude,
                "--outbound-ip-ranges-exclude",
            )?,
            exclude_ports: ports(&args.outbound_ports_exclude, "--outbound-ports-exclude")?,
            include_ports: ports(&args.outbound_ports_include, "--outbound-ports-include")?,
            inbound,
        })
    }

    /// The rules as `iptables-restore` reads them.
    fn restore_input(&self) -> String {
        let mut lines = vec!["*nat".to_string()];
        lines.extend(CHAINS.iter().map(|chain| format!(":{chain} - [0:0]")));
        let mut add = |rule: String| lines.push(format!("-A {rule}"));
        add(format!(
            "ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        add(format!(
            "ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.proxy_port
        ));
        // Inbound.
        match &self.inbound {
            Ports::All { except } => {
                add("PREROUTING -p tcp -j ISTIO_INBOUND".to_string());
                for port in except {
                    add(format!("ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
                }
                add("ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_string());
            }
            Ports::Some(ports) if !ports.is_empty() => {
                add("PREROUTING -p tcp -j ISTIO_INBOUND".to_string());
                for port in ports {
                    add(format!(
                        "ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT"
                    ));
                }
            }
            Ports::Some(_) => {}
        }
        // Outbound.
        add("OUTPUT -p tcp -j ISTIO_OUTPUT".to_string());
        // The sidecar forwarding inbound traffic to the application.
        add(format!(
            "ISTIO_OUTPUT -o lo -s {INBOUND_PASSTHROUGH_SOURCE} -j RETURN"
        ));
        // The application calling its own pod IP: through the sidecar's inbound side.
        add(format!(
            "ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner {} -j ISTIO_IN_REDIRECT",
            self.uid
        ));
        add(format!(
            "ISTIO_OUTPUT -o lo -p tcp -m owner ! --uid-owner {} -j RETURN",
            self.uid
        ));
        add(format!(
            "ISTIO_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.uid
        ));
        add(format!(
            "ISTIO_OUTPUT -m owner --gid-owner {} -j RETURN",
            self.gid
        ));
        add("ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".to_string());
        for port in &self.include_ports {
            add(format!(
                "ISTIO_OUTPUT -p tcp --dport {port} -j ISTIO_REDIRECT"
            ));
        }
        for range in &self.exclude_ranges {
            add(format!("ISTIO_OUTPUT -d {range} -j RETURN"));
        }
        for port in &self.exclude_ports {
            add(format!("ISTIO_OUTPUT -p tcp --dport {port} -j RETURN"));
        }
        match &self.include_ranges {
            Ranges::All => add("ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string()),
            Ranges::Some(ranges) => {
                for range in ranges {
                    add(format!("ISTIO_OUTPUT -d {range} -j ISTIO_REDIRECT"));
                }
                add("ISTIO_OUTPUT -j RETURN".to_string());
            }
        }
        lines.push("COMMIT".to_string());
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// Comma-separated IPv4 CIDRs (or addresses), checked: a typo fails the init container
/// rather than leaving traffic unredirected.
fn cidrs(list: &str, flag: &str) -> anyhow::Result<Vec<String>> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (address, prefix) = item.split_once('/').unwrap_or((item, "32"));
            let valid = address.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())
                && prefix.parse::<u8>().is_ok_and(|p| p <= 32);
            if valid {
                Ok(format!("{address}/{prefix}"))
            } else {
                bail!("{flag}: {item:?} is not an IPv4 address or CIDR")
            }
        })
        .collect()
}

/// Comma-separated port numbers, checked.
fn ports(list: &str, flag: &str) -> anyhow::Result<Vec<u16>> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => bail!("{flag}: {item:?} is not a port"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn rules(flags: &[&str]) -> anyhow::Result<String> {
        let mut argv = vec!["weft-iptables"];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv)?;
        Ok(Rules::from_args(&cli.args)?.restore_input())
    }

    #[test]
    fn by_default_all_tcp_but_the_proxys_own_goes_to_the_sidecar() {
        let text = rules(&[]).expect("rules");
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        for rule in [
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ] {
            assert!(text.contains(rule), "{rule} missing:\n{text}");
        }
        // The proxy's own traffic returns before the catch-all redirect.
        let own = text.find("--uid-owner 1337 -j RETURN").expect("own");
        let all = text.find("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").expect("all");
        assert!(own < all);
    }

    #[test]
    fn include_and_exclude_lists_shape_the_rules() {
        let text = rules(&[
            "-i",
            "10.96.0.0/12,240.240.0.1",
            "-x",
            "10.96.0.10",
            "-o",
            "5432",
            "-b",
            "9080",
        ])
        .expect("rules");
        assert!(text.contains("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT"));
        assert!(text.contains("-A ISTIO_OUTPUT -d 240.240.0.1/32 -j ISTIO_REDIRECT"));
        assert!(text.contains("-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN"));
        assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT"));
        assert!(!text.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"));
        assert!(
            text.ends_with("-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n"),
            "{text}"
        );
        // Exclusions come before the redirects they carve out of.
        let excluded = text.find("-d 10.96.0.10/32 -j RETURN").expect("exclude");
        let included = text
            .find("-d 10.96.0.0/12 -j ISTIO_REDIRECT")
            .expect("include");
        assert!(excluded < included);
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_redirect() {
        let text = rules(&["-b", ""]).expect("rules");
        assert!(!text.contains("PREROUTING"), "{text}");
    }

    #[test]
    fn a_mistyped_range_or_port_is_refused() {
        assert!(rules(&["-x", "10.0.0.0/40"]).is_err());
        assert!(rules(&["-i", "ten.0.0.0/8"]).is_err());
        assert!(rules(&["-o", "70000"]).is_err());
        assert!(rules(&["-d", "0"]).is_err());
    }
}
