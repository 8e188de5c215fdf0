//! The ADS server: one task per stream, driven by the proxy's requests and by notices that
//! the configuration changed.
//!
//! Each stream keeps, per resource type, what the proxy subscribed to and what it was last
//! sent (version, nonce, and a digest of the content). A change notice makes every stream ask
//! its [`Generator`] for its resources again and send only the types whose content differs.
//! Versions are digests of the content, so a proxy that reconnects with the version it holds
//! is recognised, and a NACKed version is never pushed again unchanged.

mod codec;
mod ledger;
mod metrics;
mod resource;
mod service;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Status, Streaming};

pub use ledger::{Ledger, NackRecord, StreamStatus, TypeStatus};
pub use metrics::XdsMetrics;
pub use resource::{Resource, ResourceSet};
pub use service::AdsService;

use codec::PreparedResponse;

/// Decides what each proxy gets. Called on a stream's own task, never under a lock held by
/// the server; it should be quick (read a snapshot, translate or look up a cache).
pub trait Generator: Send + Sync + 'static {
    /// The resources of `type_url` for the proxy `node`. `names` lists what the proxy asked
    /// for, sorted; `None` means everything of the type (a wildcard subscription). Proxies
    /// that get the same resources should get the same set: a stream compares a set's digest
    /// with what it sent last, so an unchanged set costs nothing to push.
    fn generate(&self, node: &Node, type_url: &str, names: Option<&[String]>) -> Arc<ResourceSet>;

    /// A stream identified itself with `node` (its first request), opened by `caller`. The
    /// control plane uses this to register the workload behind it — as far as the caller
    /// is proven to be it.
    fn connected(&self, _stream: u64, _node: &Node, _caller: &Caller) {}

    /// A stream that had identified itself ended.
    fn disconnected(&self, _stream: u64) {}
}

/// Who opened a stream, as far as its transport proves it: the server's interceptors put
/// this in the request's extensions; without one, a stream is [`Caller::Unverified`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Caller {
    /// A credential (a join token) proved this identity.
    Verified {
        /// The namespace the credential binds.
        namespace: String,
        /// The service account it binds.
        service_account: String,
    },
    /// A plaintext port the operator bound to loopback: a process of this host.
    Local,
    /// Nothing proves who it is.
    #[default]
    Unverified,
}

/// How many responses may wait for a slow proxy before its stream stops producing more.
const STREAM_BUFFER: usize = 16;

/// The ADS service.
pub struct AdsServer {
    generator: Arc<dyn Generator>,
    changes: watch::Receiver<u64>,
    ledger: Ledger,
    metrics: XdsMetrics,
    next_stream: AtomicU64,
    identifier: Arc<str>,
}

impl AdsServer {
    /// A server that asks `generator` for resources and re-asks whenever `changes` moves.
    /// Dropping the sender of `changes` ends every stream cleanly.
    pub fn new(
        generator: Arc<dyn Generator>,
        changes: watch::Receiver<u64>,
        identifier: impl Into<String>,
    ) -> Self {
        Self {
            generator,
            changes,
            ledger: Ledger::default(),
            metrics: XdsMetrics::default(),
            next_stream: AtomicU64::new(1),
            identifier: Arc::from(identifier.into()),
        }
    }

    /// What each connected stream was sent and acknowledged.
    pub fn ledger(&self) -> Ledger {
        self.ledger.clone()
    }

    /// The server's metrics, to register with a Prometheus registry.
    pub fn metrics(&self) -> XdsMetrics {
        self.metrics.clone()
    }

    /// The server as a tonic service, to serve beside others on one port.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Serves ADS on `listener` until `shutdown` completes. HTTP/2 keepalive pings detect dead
    /// peers.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }
}

impl AdsServer {
    /// Starts serving one stream of `requests` on its own task; returns what to send back.
    fn open_stream(
        &self,
        requests: Streaming<DiscoveryRequest>,
        peer: Option<SocketAddr>,
        caller: Caller,
    ) -> mpsc::Receiver<Result<PreparedResponse, Status>> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = stream::AdsStream::new(
            id,
            self.generator.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
            self.identifier.clone(),
            tx,
            caller,
        );
        let changes = self.changes.clone();
        tokio::spawn(async move {
            tracing::debug!(stream = id, ?peer, "ADS stream opened");
            stream.run(requests, changes).await;
            tracing::debug!(stream = id, ?peer, "ADS stream closed");
        });
        rx
    }
}
