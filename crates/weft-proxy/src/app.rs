//! Starting a sidecar (or a gateway): its [`Settings`], the listeners it binds ([`Ports`]),
//! and the tasks it runs — the xDS client, the certificate's renewal, the listeners, the
//! admin and metrics servers — wired together in [`start`].
//!
//! What peers and the outside reach — the inbound listener, a gateway's ports, the metrics
//! port Prometheus and the kubelet scrape — binds the bind address. What is for the local
//! application and the operator only — the outbound listener (the explicit proxy, where
//! iptables redirects the application's connections: a REDIRECT of a locally generated
//! packet goes to 127.0.0.1), the per-upstream ports and the admin port — stays on loopback
//! whatever the bind address ([`loopback_for`]). A gateway opens no outbound listener
//! unless asked ([`Settings::forward_proxy`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::google::protobuf::{ListValue, Struct, Value, value::Kind};

use crate::admin::Admin;
use crate::drain::Drain;
use crate::listener::serve::{self, ConnectionLimits};
use crate::listener::{gateway, inbound, outbound};
use crate::proxy::Proxy;
use crate::proxy::tunnel::Listening;
use crate::telemetry::metrics::Metrics;
use crate::tls::identity::{self, CertificateFiles, Credential, CurrentIdentity};
use crate::upstream::Pool;
use crate::upstream::balance::Balancers;
use crate::xds::{self, Applied};

/// What a sidecar is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The control plane's xDS address (`host:port`).
    pub control: String,
    /// The PEM root the control plane's TLS certificate must chain to; plaintext xDS
    /// without one (nor a pin).
    pub control_root: Option<Vec<u8>>,
    /// Instead of the root itself, the hash of its public key: the root is taken from the
    /// control plane's chain when a certificate of it has this hash.
    pub control_root_pin: Option<crate::tls::pinned_root::Pin>,
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Services and ports the workload serves, each with the workload port it leads to
    /// (reached through interception); without one, the inbound port.
    pub services: Vec<(String, u16, Option<u16>)>,
    /// Where the application listens on loopback.
    pub app_port: Option<u16>,
    /// Address the inbound listener, the metrics port and a gateway's ports bind; the
    /// others stay on loopback ([`loopback_for`]).
    pub bind: IpAddr,
    /// Address other sidecars reach this one on.
    pub instance_ip: IpAddr,
    /// Inbound listener port (0: any free port).
    pub inbound_port: u16,
    /// Outbound listener port (0: any free port), on loopback.
    pub outbound_port: u16,
    /// Whether the outbound listener opens: always for a sidecar, for a gateway only when
    /// asked (`weft gateway --forward-proxy`).
    pub forward_proxy: bool,
    /// Admin port (0: any free port), on loopback.
    pub admin_port: u16,
    /// Prometheus metrics port (0: any free port), on the bind address.
    pub metrics_port: u16,
    /// Per-upstream local ports, on loopback: (local port, host, port); local port 0 picks
    /// a free one.
    pub upstreams: Vec<(u16, String, u16)>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// What the proxy presents to the CA (unused with certificate files).
    pub credential: Credential,
    /// Certificate files to use instead of asking the control plane's CA.
    pub certificate_files: Option<CertificateFiles>,
    /// How long a drain waits for connections to finish.
    pub drain_duration: Duration,
    /// What bounds every listener's connections.
    pub limits: ConnectionLimits,
    /// Whether responses carry the response-flags header.
    pub debug_headers: bool,
    /// An ingress gateway rather than a sidecar: it listens on the ports of the Gateway
    /// resources that select its labels.
    pub gateway: bool,
}

/// Where a started sidecar listens.
#[derive(Debug, Clone)]
pub struct Ports {
    /// Inbound (mTLS from peers).
    pub inbound: SocketAddr,
    /// Outbound (the explicit HTTP proxy); none at a gateway not asked for one.
    pub outbound: Option<SocketAddr>,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus metrics (`/stats/prometheus`).
    pub metrics: SocketAddr,
    /// Per-upstream local ports, with the `host:port` each leads to.
    pub upstreams: Vec<(SocketAddr, String)>,
    /// Drains the sidecar (SIGTERM, `/quitquitquit`).
    pub drain: Arc<Drain>,
    /// Tells when the sidecar is ready.
    pub readiness: Readiness,
}

/// Whether a sidecar is ready for its application: it holds a certificate and a whole first
/// configuration (listeners, clusters, and the routes and endpoints they name).
#[derive(Debug, Clone)]
pub struct Readiness {
    config: watch::Receiver<Arc<Applied>>,
    identity: CurrentIdentity,
}

impl Readiness {
    /// Whether a certificate was obtained.
    pub fn has_certificate(&self) -> bool {
        self.identity.get().is_some()
    }

    /// Whether a whole first configuration arrived.
    pub fn has_configuration(&self) -> bool {
        self.config.borrow().warm
    }

    /// Waits until both.
    pub async fn wait(&self) {
        let mut config = self.config.clone();
        let _ = config.wait_for(|c| c.warm).await;
        self.identity.obtained().await;
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The control plane address is not usable.
    #[error("bad control plane address {0:?}: {1}")]
    Control(String, tonic::transport::Error),
    /// The control plane did not present a root with the pinned hash.
    #[error("control plane {0}: {1}")]
    PinnedRoot(String, String),
}

/// Binds the listeners and starts everything; returns where it listens. The tasks run on
/// the current runtime until the process ends.
pub async fn start(mut settings: Settings) -> Result<Ports, StartError> {
    serve::set_limits(settings.limits);
    crate::http::set_stream_idle_timeout(settings.limits.stream_idle_timeout);
    if let (None, Some(pin)) = (&settings.control_root, settings.control_root_pin) {
        settings.control_root = Some(pinned_root(&settings.control, pin).await?);
    }
    let loopback = loopback_for(settings.bind);
    let bind = |ip: IpAddr, port: u16| async move {
        let addr = SocketAddr::new(ip, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind(addr, e))?;
        let local = listener.local_addr().unwrap_or(addr);
        Ok::<_, StartError>((listener, local))
    };
    let (inbound_listener, inbound_addr) = bind(settings.bind, settings.inbound_port).await?;
    let outbound_listener = if settings.forward_proxy {
        Some(bind(loopback, settings.outbound_port).await?)
    } else {
        None
    };
    let (admin_listener, admin_addr) = bind(loopback, settings.admin_port).await?;
    let (metrics_listener, metrics_addr) = bind(settings.bind, settings.metrics_port).await?;
    let identity = CurrentIdentity::default();
    let (config_tx, config) = watch::channel(Arc::new(Applied::default()));
    let mut upstream_listeners = Vec::new();
    for (local, host, port) in &settings.upstreams {
        let (listener, addr) = bind(loopback, *local).await?;
        upstream_listeners.push((listener, addr, host.clone(), *port));
    }
    let ports = Ports {
        upstreams: upstream_listeners
            .iter()
            .map(|(_, addr, host, port)| (*addr, format!("{host}:{port}")))
            .collect(),
        inbound: inbound_addr,
        outbound: outbound_listener.as_ref().map(|(_, addr)| *addr),
        admin: admin_addr,
        metrics: metrics_addr,
        drain: Arc::new(Drain::new(settings.drain_duration)),
        readiness: Readiness {
            config: config.clone(),
            identity: identity.clone(),
        },
    };
    let listening = listening(&settings, &ports);

    let channel = control_channel(&settings)?;
    let spiffe_id = identity::spiffe_id(
        &settings.trust_domain,
        &settings.namespace,
        &settings.service_account,
    );
    match settings.certificate_files.clone() {
        Some(files) => tokio::spawn(identity::watch_files(identity.clone(), files)),
        None => tokio::spawn(identity::renew_forever(
            identity.clone(),
            channel.clone(),
            settings.credential.clone(),
            spiffe_id,
        )),
    };
    // The token goes on the xDS stream too: the control plane registers the workload only
    // as what it binds.
    let ads_credential = match &settings.credential {
        Credential::Token(token) if token.is_empty() => None,
        credential => Some(credential.clone()),
    };
    tokio::spawn(xds::client::run(
        channel,
        node(&settings, ports.inbound.port()),
        ads_credential,
        config_tx,
    ));

    let pool = Pool::new(identity.clone());
    let metrics = Arc::new(Metrics::new(&settings.name, &settings.namespace));
    let admin = Admin {
        config: config.clone(),
        identity: identity.clone(),
        drain: ports.drain.clone(),
    };
    tokio::spawn(metrics.clone().serve(metrics_listener, admin.clone()));
    let inbound = Arc::new(inbound::Inbound {
        config: config.clone(),
        identity: identity.clone(),
        pool: pool.clone(),
        port: ports.inbound.port(),
        metrics: metrics.clone(),
        debug_headers: settings.debug_headers,
    });
    tokio::spawn(inbound::serve(
        inbound,
        inbound_listener,
        ports.drain.watch(),
    ));
    let proxy = Arc::new(Proxy {
        config: config.clone(),
        pool,
        balancers: Balancers::default(),
        namespace: settings.namespace.clone(),
        metrics,
        debug_headers: settings.debug_headers,
        listening,
    });
    for (listener, _, host, port) in upstream_listeners {
        tokio::spawn(outbound::serve_upstream_port(
            proxy.clone(),
            listener,
            ports.drain.watch(),
            host,
            port,
        ));
    }
    if settings.gateway {
        tokio::spawn(gateway::serve(
            proxy.clone(),
            settings.bind,
            ports.drain.watch(),
        ));
    }
    if let Some((listener, _)) = outbound_listener {
        tokio::spawn(outbound::serve(proxy, listener, ports.drain.watch()));
    }
    tokio::spawn(admin.serve(admin_listener));
    Ok(ports)
}

/// Where the listeners for the local application and the operator bind: the bind address
/// when it is a loopback one (several sidecars on one host, each on its own `127.0.0.x`),
/// else 127.0.0.1 — where iptables' REDIRECT sends the application's connections.
pub fn loopback_for(bind: IpAddr) -> IpAddr {
    if bind.is_loopback() {
        bind
    } else {
        IpAddr::from([127, 0, 0, 1])
    }
}

/// Where this proxy listens, for the `CONNECT`s that must not lead back into it.
fn listening(settings: &Settings, ports: &Ports) -> Listening {
    let mut addresses = vec![settings.instance_ip.to_canonical()];
    if !settings.bind.is_unspecified() && !addresses.contains(&settings.bind.to_canonical()) {
        addresses.push(settings.bind.to_canonical());
    }
    let ports = [ports.inbound, ports.admin, ports.metrics]
        .into_iter()
        .chain(ports.outbound)
        .chain(ports.upstreams.iter().map(|(addr, _)| *addr))
        .map(|addr| addr.port())
        .collect();
    Listening { addresses, ports }
}

/// The control plane's root, by its pinned hash: tried for half a minute, while the control
/// plane may still be starting.
async fn pinned_root(
    control: &str,
    pin: crate::tls::pinned_root::Pin,
) -> Result<Vec<u8>, StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match crate::tls::pinned_root::fetch(control, pin, Duration::from_secs(5)).await {
            Ok(root) => return Ok(root),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(StartError::PinnedRoot(control.to_string(), error));
            }
            Err(error) => {
                tracing::warn!(%control, %error, "cannot take the control plane's pinned root yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The channel to the control plane, for xDS and the CA: plaintext, or TLS whose server
/// certificate must chain to `control_root` (the TLS xDS port, Istio's 15012) — the only way
/// a proxy on another host can trust what it is sent, the mesh root included.
fn control_channel(settings: &Settings) -> Result<tonic::transport::Channel, StartError> {
    let bad = |e| StartError::Control(settings.control.clone(), e);
    let endpoint = match &settings.control_root {
        None => Endpoint::from_shared(format!("http://{}", settings.control)).map_err(bad)?,
        Some(root) => {
            let host = settings
                .control
                .rsplit_once(':')
                .map_or(settings.control.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(root))
                .domain_name(host);
            Endpoint::from_shared(format!("https://{}", settings.control))
                .map_err(bad)?
                .tls_config(tls)
                .map_err(bad)?
        }
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// The node this sidecar presents: Istio's node id, and the metadata the control plane
/// registers the workload from. Its services are reached on its inbound port; the
/// application behind it on `APP_PORT`.
fn node(settings: &Settings, inbound_port: u16) -> Node {
    let text = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let list = |items: Vec<String>| Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.into_iter().map(text).collect(),
        })),
    };
    let mut fields = vec![
        ("NAME".to_string(), text(settings.name.clone())),
        ("NAMESPACE".to_string(), text(settings.namespace.clone())),
        (
            "SERVICE_ACCOUNT".to_string(),
            text(settings.service_account.clone()),
        ),
        (
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: weft_xds::types::proto_map(
                        settings
                            .labels
                            .iter()
                            .map(|(k, v)| (k.clone(), text(v.clone()))),
                    ),
                })),
            },
        ),
        (
            "INSTANCE_IPS".to_string(),
            list(vec![settings.instance_ip.to_string()]),
        ),
    ];
    if !settings.services.is_empty() {
        fields.push((
            "SERVICES".to_string(),
            list(
                settings
                    .services
                    .iter()
                    .map(|(service, port, target)| {
                        let target = target.unwrap_or(inbound_port);
                        format!("{service}:{port}:{target}")
                    })
                    .collect(),
            ),
        ));
    }
    if let Some(app_port) = settings.app_port {
        fields.push(("APP_PORT".to_string(), text(app_port.to_string())));
    }
    Node {
        id: format!(
            "{}~{}~{}.{}~{}.svc.cluster.local",
            if settings.gateway {
                "router"
            } else {
                "sidecar"
            },
            settings.instance_ip,
            settings.name,
            settings.namespace,
            settings.namespace
        ),
        user_agent_name: "weft".to_string(),
        metadata: Some(Struct {
            fields: weft_xds::types::proto_map(fields),
        }),
        ..Node::default()
    }
}
