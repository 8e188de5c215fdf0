//! Wiring: the config store feeds mesh snapshots to the translator, and each new snapshot
//! tells the ADS server's streams to recompute what they serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_api::mesh::MeshConfig;
use weft_xds::server::{AdsServer, Caller, Ledger};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::admin::{self, DebugState};
use crate::ca::token::JoinTokens;
use crate::ca::{CaError, CaService, CertificateAuthority};
use prometheus_client::registry::Registry;

use crate::kube::config::KubeStore;
use crate::kube::registry::KubeRegistry;
use crate::kube::tokens::ServiceAccountTokens;
use crate::kube::webhook::{self, WebhookConfig, WebhookError};
use crate::metrics::ControlMetrics;
use crate::model::MeshSnapshot;
use crate::registration::{self, Registrations};
use crate::store::{ConfigState, ConfigStore, FileStore, StoreError};
use crate::translate::{MeshGenerator, MeshIdentity};

/// The file in the state directory that keeps the self-registered workloads across restarts.
const SAVED_WORKLOADS: &str = "registered-workloads.json";

/// Where the configuration and the services come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A folder of Istio YAML, watched; services from ServiceEntries and registrations.
    Dir(PathBuf),
    /// The Kubernetes API server: Istio's custom resources, and Services with their
    /// EndpointSlices and Pods. `None` finds the cluster as `kubectl` does.
    Kubernetes {
        /// The kubeconfig file.
        kubeconfig: Option<PathBuf>,
        /// The sidecar-injection webhook, when served.
        injection: Option<WebhookConfig>,
    },
}

/// What `weft control` needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration comes from.
    pub source: Source,
    /// Where to serve plaintext xDS.
    pub xds_addr: SocketAddr,
    /// Where to serve the debug pages.
    pub debug_addr: SocketAddr,
    /// Where the CA keys and join-token key live.
    pub state_dir: PathBuf,
    /// The trust domain of issued identities.
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    pub cert_ttl: std::time::Duration,
    /// How long a registered workload stays an endpoint after its xDS stream closes.
    pub registration_grace: std::time::Duration,
    /// Where to serve xDS and the certificate API over TLS, for proxies on other hosts;
    /// callers must present a join token. Off when `None`.
    pub xds_tls_addr: Option<SocketAddr>,
    /// Names (DNS or IP) the TLS port's certificate is valid for.
    pub tls_names: Vec<String>,
    /// The mesh-wide settings (Istio's MeshConfig).
    pub mesh: Arc<MeshConfig>,
    /// How often the key sets RequestAuthentications name by `jwksUri` are fetched again.
    pub jwks_refresh: std::time::Duration,
}

/// Errors starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config store could not start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Kubernetes API server cannot be reached.
    #[error(transparent)]
    Kubernetes(#[from] crate::kube::ConnectError),
    /// The injection webhook cannot be served.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// The certificate authority could not start.
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    /// The join-token key could not be read or created.
    #[error("join tokens in {path}: {source}")]
    Tokens {
        /// The state dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The xDS port could not be bound.
    #[error("cannot listen for xDS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running control plane, bound and loaded, not yet serving.
pub struct ControlPlane {
    listener: TcpListener,
    tls: Option<(TcpListener, Identity)>,
    tokens: Arc<JoinTokens>,
    debug_listener: TcpListener,
    generator: Arc<MeshGenerator>,
    ads: AdsServer,
    ca: CaService,
    registry: Arc<Registry>,
    ledger: Ledger,
    state: watch::Receiver<Arc<ConfigState>>,
    root_pem: String,
    _sources: Sources,
}

/// The config store and, on Kubernetes, the registry; watching while they live.
struct Sources {
    _store: Box<dyn ConfigStore>,
    _registry: Option<KubeRegistry>,
    /// The injection webhook's tasks.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ControlPlane {
    /// Loads the configuration, starts watching it and binds the xDS port.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let mut kube_client = None;
        let (store, platform_registry, service_accounts): (Box<dyn ConfigStore>, _, _) =
            match &config.source {
                Source::Dir(dir) => (Box::new(FileStore::start(dir.clone())?), None, None),
                Source::Kubernetes { kubeconfig, .. } => {
                    let client = crate::kube::connect(kubeconfig.as_deref()).await?;
                    kube_client = Some(client.clone());
                    let registry = KubeRegistry::start(client.clone()).await;
                    let tokens = ServiceAccountTokens::new(client.clone());
                    let store = KubeStore::start(client).await;
                    (Box::new(store), Some(registry), Some(tokens))
                }
            };
        let mut state = store.subscribe();
        let mut platform = match &platform_registry {
            Some(registry) => registry.subscribe(),
            None => watch::channel(Arc::new(Vec::new())).1,
        };
        let authority = CertificateAuthority::load_or_create(
            &config.state_dir,
            &config.trust_domain,
            config.cert_ttl,
        )?;
        let mut tasks = Vec::new();
        if let (
            Source::Kubernetes {
                injection: Some(injection),
                ..
            },
            Some(client),
        ) = (&config.source, &kube_client)
        {
            tasks = webhook::start(injection, client.clone(), &authority).await?;
        }
        let registrations = Registrations::new(config.registration_grace);
        let saved_workloads = config.state_dir.join(SAVED_WORKLOADS);
        registrations.restore(registration::load(&saved_workloads));
        let root_pem = authority.root_pem().to_string();
        let identity = MeshIdentity {
            trust_domain: config.trust_domain.clone(),
            root_pem: Some(root_pem.clone()),
        };
        let generator = Arc::new(MeshGenerator::new(registrations.clone(), identity));
        generator.set(Arc::new(
            MeshSnapshot::build(
                0,
                &state.borrow_and_update(),
                &registrations.workloads(),
                &platform.borrow_and_update(),
            )
            .with_mesh(config.mesh.clone()),
        ));
        let (changes, watcher) = watch::channel(0u64);
        let ads = AdsServer::new(generator.clone(), watcher, "weft-control");
        let tokens =
            JoinTokens::load_or_create(&config.state_dir).map_err(|source| StartError::Tokens {
                path: config.state_dir.clone(),
                source,
            })?;
        let metrics = ControlMetrics::default();
        let mut registry = Registry::with_prefix("weft");
        ads.metrics().register(&mut registry);
        metrics.register(&mut registry);
        metrics.reloaded(&state.borrow());
        let tls = match config.xds_tls_addr {
            Some(addr) => {
                let (chain, key) = authority.serving_certificate(&config.tls_names)?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, Identity::from_pem(chain, key)))
            }
            None => None,
        };
        let tokens = Arc::new(tokens);
        let mut ca =
            CaService::new(Arc::new(authority), tokens.clone()).with_metrics(metrics.clone());
        if let Some(service_accounts) = service_accounts {
            ca = ca.with_service_accounts(service_accounts);
        }
        let ledger = ads.ledger();
        let listener =
            TcpListener::bind(config.xds_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.xds_addr,
                    source,
                })?;
        let debug_listener = TcpListener::bind(config.debug_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.debug_addr,
                source,
            })?;
        let (mut key_sets, jwks_task) = crate::jwks::start(state.clone(), config.jwks_refresh);
        tasks.push(jwks_task);
        let mut updates = state.clone();
        let mut registered = registrations.subscribe();
        let serving = generator.clone();
        let mesh = config.mesh.clone();
        tokio::spawn(async move {
            // A new snapshot whenever the configuration, the registered workloads, the
            // platform's services or a fetched key set change.
            for version in 1.. {
                let workloads_changed = tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() { break }
                        registered.has_changed().unwrap_or(false)
                    }
                    changed = registered.changed() => if changed.is_err() { break } else { true },
                    changed = platform.changed(), if platform.has_changed().is_ok() => {
                        if changed.is_err() { continue }
                        registered.has_changed().unwrap_or(false)
                    }
                    changed = key_sets.changed(), if key_sets.has_changed().is_ok() => {
                        if changed.is_err() { continue }
                        registered.has_changed().unwrap_or(false)
                    }
                };
                registered.mark_unchanged();
                let state = updates.borrow_and_update().clone();
                let workloads = registrations.workloads();
                if workloads_changed
                    && let Err(error) = registration::save(&saved_workloads, &workloads)
                {
                    let path = saved_workloads.display();
                    tracing::warn!(%path, %error, "cannot save the registered workloads");
                }
                metrics.reloaded(&state);
                let services = platform.borrow_and_update().clone();
                let snapshot = MeshSnapshot::build(version, &state, &workloads, &services)
                    .with_mesh(mesh.clone())
                    .with_key_sets(key_sets.borrow_and_update().clone());
                serving.set(Arc::new(snapshot));
                if changes.send(version).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            listener,
            tls,
            tokens,
            debug_listener,
            generator,
            ads,
            ca,
            registry: Arc::new(registry),
            ledger,
            state,
            root_pem,
            _sources: Sources {
                _store: store,
                _registry: platform_registry,
                tasks,
            },
        })
    }

    /// The mesh's root certificate (PEM): what sidecars on other hosts trust the TLS port by.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The address the debug pages are served on.
    pub fn debug_addr(&self) -> std::io::Result<SocketAddr> {
        self.debug_listener.local_addr()
    }

    /// The address xDS is served on over TLS, when it is.
    pub fn xds_tls_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.tls.as_ref().map(|(listener, _)| listener.local_addr())
    }

    /// The address xDS is served on.
    pub fn xds_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// What each connected proxy was sent and acknowledged.
    pub fn ledger(&self) -> Ledger {
        self.ledger.clone()
    }

    /// The configuration in force and the messages about it.
    pub fn state(&self) -> Arc<ConfigState> {
        self.state.borrow().clone()
    }

    /// Serves xDS and the certificate API (plaintext, and over TLS when configured) and the
    /// debug pages until `shutdown` completes; streams are closed
    /// cleanly.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let Self {
            listener,
            tls,
            tokens,
            debug_listener,
            generator,
            ads,
            ca,
            registry,
            ledger,
            state,
            root_pem: _,
            _sources,
        } = self;
        let (stop, stopped) = watch::channel(false);
        let until_stopped = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let debug = DebugState {
            ledger,
            config: state,
            generator,
            registry,
        };
        let debug_task = tokio::spawn(admin::serve(debug_listener, debug, until_stopped()));
        let ads = ads.into_service();
        let ca = ca.into_server();
        let builder = || {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        };
        let tls_task = match tls {
            Some((listener, identity)) => {
                let mut server = builder().tls_config(ServerTlsConfig::new().identity(identity))?;
                let check = move |request: tonic::Request<()>| require_token(&tokens, request);
                let serving = server
                    .add_service(InterceptedService::new(ads.clone(), check))
                    .add_service(ca.clone())
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        until_stopped(),
                    );
                Some(tokio::spawn(serving))
            }
            None => None,
        };
        // Plaintext xDS speaks for its callers only on loopback: processes of this host.
        let local = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let plaintext = move |mut request: tonic::Request<()>| {
            if local {
                request.extensions_mut().insert(Caller::Local);
            }
            Ok(request)
        };
        let result = builder()
            .add_service(InterceptedService::new(ads, plaintext))
            .add_service(ca)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        let _ = stop.send(true);
        if let Some(task) = tls_task
            && let Ok(Err(err)) = task.await
        {
            tracing::warn!(%err, "the TLS xDS port stopped with an error");
        }
        let _ = debug_task.await;
        result
    }
}

/// Proxies on other hosts must present a join token (`authorization: Bearer <token>`) to be
/// served xDS over the TLS port.
fn require_token(
    tokens: &JoinTokens,
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let token = crate::ca::token::bearer(request.metadata());
    match token.and_then(|t| tokens.verify(t)) {
        // The stream's workload may register as this identity only.
        Some((namespace, service_account)) => {
            request.extensions_mut().insert(Caller::Verified {
                namespace,
                service_account,
            });
            Ok(request)
        }
        None => Err(tonic::Status::unauthenticated(
            "xDS over TLS needs `authorization: Bearer <join token>` (see `weft join-token`)",
        )),
    }
}
