//! The Weft sidecar proxy (`weft proxy`): the data plane beside one workload.
//!
//! A request from the application goes: [`outbound`] (the explicit HTTP proxy listener) →
//! [`router`] (route, weighted cluster, endpoint) → [`upstream`] (pooled connection, mesh
//! mTLS from [`tls`] with the certificate from [`identity`]) → the peer sidecar's
//! [`inbound`] listener (mTLS or plaintext as PeerAuthentication says, caller identity in
//! `x-forwarded-client-cert`) → its application. Configuration arrives over ADS ([`xds`]),
//! is turned into the proxy's own [`model`] by [`adapter`], and is swapped whole; [`admin`]
//! shows it.

pub mod access;
pub mod adapter;
pub mod admin;
pub mod drain;
pub mod framing;
pub mod gateway;
pub mod h1;
pub mod hashing;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod rbac;
pub mod router;
pub mod sniff;
pub mod tls;
pub mod upstream;
pub mod xds;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::google::protobuf::{ListValue, Struct, Value, value::Kind};

/// What a sidecar is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The control plane's xDS address (`host:port`).
    pub control: String,
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Services and ports the workload serves.
    pub services: Vec<(String, u16)>,
    /// Where the application listens on loopback.
    pub app_port: Option<u16>,
    /// Address the listeners bind.
    pub bind: IpAddr,
    /// Address other sidecars reach this one on.
    pub instance_ip: IpAddr,
    /// Inbound listener port (0: any free port).
    pub inbound_port: u16,
    /// Outbound listener port (0: any free port).
    pub outbound_port: u16,
    /// Admin port (0: any free port), on loopback.
    pub admin_port: u16,
    /// Prometheus metrics port (0: any free port), on the bind address.
    pub metrics_port: u16,
    /// Per-upstream local ports: (local port, host, port); local port 0 picks a free one.
    pub upstreams: Vec<(u16, String, u16)>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// What the proxy presents to the CA (unused with certificate files).
    pub credential: identity::Credential,
    /// Certificate files to use instead of asking the control plane's CA.
    pub certificate_files: Option<identity::CertificateFiles>,
    /// How long a drain waits for connections to finish.
    pub drain_duration: Duration,
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
    /// Outbound (the explicit HTTP proxy).
    pub outbound: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus metrics (`/stats/prometheus`).
    pub metrics: SocketAddr,
    /// Per-upstream local ports, with the `host:port` each leads to.
    pub upstreams: Vec<(SocketAddr, String)>,
    /// Drains the sidecar (SIGTERM, `/quitquitquit`).
    pub drain: Arc<drain::Drain>,
    /// Tells when the sidecar is ready.
    pub readiness: Readiness,
}

/// Whether a sidecar is ready for its application: it holds a certificate and a whole first
/// configuration (listeners, clusters, and the routes and endpoints they name).
#[derive(Debug, Clone)]
pub struct Readiness {
    config: watch::Receiver<Arc<xds::Config>>,
    identity: identity::CurrentIdentity,
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
}

/// Binds the listeners and starts everything; returns where it listens. The tasks run on
/// the current runtime until the process ends.
pub async fn start(settings: Settings) -> Result<Ports, StartError> {
    let bind = |port: u16| async move {
        let addr = SocketAddr::new(settings.bind, port);
        TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind(addr, e))
    };
    let inbound_listener = bind(settings.inbound_port).await?;
    let outbound_listener = bind(settings.outbound_port).await?;
    let admin_addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), settings.admin_port);
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| StartError::Bind(admin_addr, e))?;
    let metrics_listener = bind(settings.metrics_port).await?;
    let local =
        |listener: &TcpListener, fallback: SocketAddr| listener.local_addr().unwrap_or(fallback);
    let identity = identity::CurrentIdentity::default();
    let (config_tx, config) = watch::channel(Arc::new(xds::Config::default()));
    let mut upstream_listeners = Vec::new();
    for (local, host, port) in &settings.upstreams {
        let listener = bind(*local).await?;
        let addr = listener
            .local_addr()
            .unwrap_or(SocketAddr::new(settings.bind, *local));
        upstream_listeners.push((listener, addr, host.clone(), *port));
    }
    let ports = Ports {
        upstreams: upstream_listeners
            .iter()
            .map(|(_, addr, host, port)| (*addr, format!("{host}:{port}")))
            .collect(),
        inbound: local(
            &inbound_listener,
            SocketAddr::new(settings.bind, settings.inbound_port),
        ),
        outbound: local(
            &outbound_listener,
            SocketAddr::new(settings.bind, settings.outbound_port),
        ),
        admin: local(&admin_listener, admin_addr),
        metrics: local(
            &metrics_listener,
            SocketAddr::new(settings.bind, settings.metrics_port),
        ),
        drain: Arc::new(drain::Drain::new(settings.drain_duration)),
        readiness: Readiness {
            config: config.clone(),
            identity: identity.clone(),
        },
    };

    let channel = Endpoint::from_shared(format!("http://{}", settings.control))
        .map_err(|e| StartError::Control(settings.control.clone(), e))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy();
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
    tokio::spawn(xds::run(
        channel,
        node(&settings, ports.inbound.port()),
        config_tx,
    ));

    let upstreams = upstream::Upstreams::new(identity.clone());
    let metrics = Arc::new(metrics::Metrics::new(&settings.name, &settings.namespace));
    let admin = admin::Admin {
        config: config.clone(),
        identity: identity.clone(),
        drain: ports.drain.clone(),
    };
    tokio::spawn(metrics.clone().serve(metrics_listener, admin.clone()));
    let inbound = inbound::Inbound {
        config: config.clone(),
        identity: identity.clone(),
        upstreams: upstreams.clone(),
        port: ports.inbound.port(),
        cluster: format!("inbound|{}||", ports.inbound.port()),
        drain: ports.drain.watch(),
        metrics: metrics.clone(),
        debug_headers: settings.debug_headers,
    };
    tokio::spawn(inbound.serve(inbound_listener));
    let outbound = outbound::Outbound {
        config: config.clone(),
        upstreams,
        balancers: router::Balancers::default(),
        namespace: settings.namespace.clone(),
        drain: ports.drain.watch(),
        metrics: metrics.clone(),
        debug_headers: settings.debug_headers,
    };
    for (listener, _, host, port) in upstream_listeners {
        tokio::spawn(outbound.clone().serve_upstream_port(listener, host, port));
    }
    if settings.gateway {
        tokio::spawn(gateway::serve(outbound.clone(), settings.bind));
    }
    tokio::spawn(serve_outbound(outbound, outbound_listener));
    tokio::spawn(admin.serve(admin_listener));
    Ok(ports)
}

async fn serve_outbound(outbound: outbound::Outbound, listener: TcpListener) {
    let mut drain = outbound.drain.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.signaled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let outbound = outbound.clone();
        if let Some(original) = outbound::original_destination(&stream) {
            tokio::spawn(outbound.serve_redirected(stream, peer, original));
            continue;
        }
        tokio::spawn(async move {
            xds::Config::wait_warm(&mut outbound.config.clone()).await;
            let drain = outbound.drain.clone();
            let outbound = Arc::new(outbound);
            let service = hyper::service::service_fn(move |request| {
                let outbound = outbound.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        outbound.handle(request, Some(peer.ip())).await,
                    )
                }
            });
            if let Err(error) = drain
                .serve(http_server().serve_connection_with_upgrades(
                    TokioIo::new(framing::FramingGuard::new(stream)),
                    service,
                ))
                .await
            {
                tracing::debug!(%error, "outbound connection ended");
            }
        });
    }
}

/// Largest request head accepted (Envoy's default is 60 KiB); a larger one gets 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How the proxy serves HTTP/1.1 and HTTP/2 to its clients, with the limits that keep a bad
/// client from costing it memory or connections: request heads of at most 64 KiB and 100
/// headers (431 beyond), 10 s to send them.
pub(crate) fn http_server() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(100);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD as u32);
    builder
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
                    .map(|(service, port)| format!("{service}:{port}:{inbound_port}"))
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
