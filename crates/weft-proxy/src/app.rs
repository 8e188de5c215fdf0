//! Starting a sidecar (or a gateway): its [`Settings`], the listeners it binds ([`Ports`]),
//! and the tasks it runs — the xDS client, the certificate's renewal, the listeners, the
//! admin and metrics servers — wired together in [`start`].

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
use crate::listener::{gateway, inbound, outbound};
use crate::proxy::Proxy;
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
    pub credential: Credential,
    /// Certificate files to use instead of asking the control plane's CA.
    pub certificate_files: Option<CertificateFiles>,
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
    let identity = CurrentIdentity::default();
    let (config_tx, config) = watch::channel(Arc::new(Applied::default()));
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
        drain: Arc::new(Drain::new(settings.drain_duration)),
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
    tokio::spawn(xds::client::run(
        channel,
        node(&settings, ports.inbound.port()),
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
        cluster: format!("inbound|{}||", ports.inbound.port()),
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
    tokio::spawn(outbound::serve(
        proxy,
        outbound_listener,
        ports.drain.watch(),
    ));
    tokio::spawn(admin.serve(admin_listener));
    Ok(ports)
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
