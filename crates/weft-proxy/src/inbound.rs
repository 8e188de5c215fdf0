//! The inbound side: connections from other sidecars (and, where PeerAuthentication allows,
//! plaintext clients) to this workload. Each connection is told apart by its first byte —
//! a TLS handshake or not — and accepted or refused by the port's mode: STRICT takes mTLS
//! only, PERMISSIVE both, DISABLE plaintext only. mTLS peers must present a mesh certificate
//! of this trust domain; their identity reaches the application in
//! `x-forwarded-client-cert`, in Envoy's format.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::identity::{CurrentIdentity, peer_spiffe_id, trust_domain};
use crate::outbound::{local_response, strip_hop_by_hop};
use crate::sniff::Carries;
use crate::upstream::{Body, ORIGINAL_PROTOCOL, Upstreams};
use crate::xds::Config;

/// The header that tells the application who called.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// How long a client may take to send its first byte or finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the inbound side reads.
#[derive(Clone)]
pub struct Inbound {
    /// The configuration in force.
    pub config: watch::Receiver<Arc<Config>>,
    /// The workload's identity.
    pub identity: CurrentIdentity,
    /// Connections to the application.
    pub upstreams: Upstreams,
    /// The port this listener is on (its chains are keyed by it).
    pub port: u16,
    /// The cluster of the application behind it: `inbound|<port>||`.
    pub cluster: String,
    /// Held by every connection, so a drain knows what is open.
    pub drain: crate::drain::Watch,
    /// Request metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Whether responses carry the response-flags header.
    pub debug_headers: bool,
}

/// The verified caller of an mTLS connection.
#[derive(Debug, Clone)]
struct Peer {
    spiffe_id: String,
    /// The `x-forwarded-client-cert` the application gets with this caller's requests.
    xfcc: Option<HeaderValue>,
}

/// Who is calling, over which connection.
#[derive(Debug, Clone)]
struct Caller {
    /// The mTLS peer; none for plaintext.
    peer: Option<Peer>,
    source: std::net::IpAddr,
    local: std::net::SocketAddr,
}

/// How a port takes connections.
#[derive(Debug, Clone, Copy)]
struct Mode {
    mtls: bool,
    plaintext: bool,
    serves: Carries,
}

impl Inbound {
    /// Accepts connections until the listener fails.
    pub async fn serve(self, listener: TcpListener) {
        let mut drain = self.drain.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let inbound = self.clone();
                    tokio::spawn(async move {
                        crate::xds::Config::wait_warm(&mut inbound.config.clone()).await;
                        inbound.identity.wait().await;
                        if let Err(reason) = inbound.connection(stream).await {
                            tracing::debug!(%peer, reason, "inbound connection refused");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn mode(&self) -> Mode {
        // Before any configuration: mTLS only, the safe choice.
        self.config.borrow().model.inbound.get(&self.port).map_or(
            Mode {
                mtls: true,
                plaintext: false,
                serves: Carries::Http,
            },
            |port| Mode {
                mtls: port.mtls,
                plaintext: port.plaintext,
                serves: match (&port.http, &port.tcp) {
                    (Some(_), Some(_)) => Carries::Detect,
                    (None, Some(_)) => Carries::Tcp,
                    _ => Carries::Http,
                },
            },
        )
    }

    /// Applies the port's authorization policies.
    fn authorize(
        &self,
        caller: &Caller,
        http: Option<&hyper::http::request::Parts>,
    ) -> Result<(), String> {
        let config = self.config.borrow().clone();
        let Some(port) = config.model.inbound.get(&self.port) else {
            return Ok(());
        };
        let rbac = match http {
            Some(_) => port.http.as_ref(),
            None => port.tcp.as_ref(),
        };
        let Some(rbac) = rbac else {
            return Err("the port does not carry this protocol".into());
        };
        rbac.check(&crate::rbac::Request {
            peer: caller.peer.as_ref().map(|p| p.spiffe_id.as_str()),
            source: caller.source,
            destination: (caller.local.ip(), self.port),
            http,
        })
    }

    async fn connection(self, stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let source = stream.peer_addr().map_err(|e| e.to_string())?.ip();
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| "no bytes in time".to_string())?
            .map_err(|e| e.to_string())?;
        if peeked == 0 {
            return Ok(());
        }
        let mode = self.mode();
        // 0x16 starts a TLS handshake record.
        if first[0] == 0x16 {
            if !mode.mtls {
                return Err("TLS on a port whose PeerAuthentication is DISABLE".into());
            }
            let config = crate::tls::server_config(&self.identity).map_err(|e| e.to_string())?;
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsAcceptor::from(config).accept(stream),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .ok_or("no client certificate")?;
            let spiffe_id =
                peer_spiffe_id(certificate).ok_or("the client certificate has no SPIFFE ID")?;
            let own = self
                .identity
                .get()
                .map(|i| i.spiffe_id.clone())
                .unwrap_or_default();
            if trust_domain(&spiffe_id) != trust_domain(&own) {
                return Err(format!("{spiffe_id} is not in this mesh's trust domain"));
            }
            let cert_hash = hex(ring::digest::digest(&ring::digest::SHA256, certificate).as_ref());
            let own = self
                .identity
                .get()
                .map(|i| i.spiffe_id.clone())
                .unwrap_or_default();
            let xfcc = HeaderValue::from_str(&format!(
                "By={own};Hash={cert_hash};Subject=\"\";URI={spiffe_id}"
            ))
            .ok();
            let caller = Caller {
                peer: Some(Peer { spiffe_id, xfcc }),
                source,
                local,
            };
            self.carry(tls, caller, mode.serves).await
        } else {
            if !mode.plaintext {
                return Err("plaintext on a port whose PeerAuthentication is STRICT".into());
            }
            let caller = Caller {
                peer: None,
                source,
                local,
            };
            self.carry(stream, caller, mode.serves).await
        }
    }

    /// Carries an accepted (and, for mTLS, terminated) connection to the application.
    async fn carry<T>(&self, io: T, caller: Caller, serves: Carries) -> Result<(), String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match serves {
            Carries::Http => self.serve_http(io, caller).await,
            Carries::Tcp => {
                self.authorize(&caller, None)?;
                self.splice_to_app(io).await
            }
            Carries::Detect => match crate::sniff::detect(io).await.map_err(|e| e.to_string())? {
                (crate::sniff::Detected::Http, io) => self.serve_http(io, caller).await,
                (crate::sniff::Detected::Opaque, io) => {
                    self.authorize(&caller, None)?;
                    self.splice_to_app(io).await
                }
            },
        }
    }

    /// Opaque TCP: the bytes go to the application as they are, both ways.
    async fn splice_to_app<T>(&self, mut downstream: T) -> Result<(), String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let address = {
            let config = self.config.borrow();
            let cluster = config
                .model
                .clusters
                .get(&format!("inbound|{}||", self.port))
                .ok_or("no inbound cluster")?;
            cluster
                .endpoints
                .first()
                .map(|e| e.address)
                .ok_or("no application")?
        };
        let mut app = TcpStream::connect(address)
            .await
            .map_err(|e| format!("the application at {address}: {e}"))?;
        let _ = app.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut downstream, &mut app)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn serve_http<T>(&self, io: T, caller: Caller) -> Result<(), String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Shared by the connection's requests: one reference count each, no copies.
        let connection = Arc::new((self.clone(), caller));
        let service = hyper::service::service_fn(move |request| {
            let connection = connection.clone();
            async move {
                let (inbound, caller) = &*connection;
                Ok::<_, std::convert::Infallible>(inbound.handle(request, caller).await)
            }
        });
        self.drain
            .clone()
            .serve(crate::http_server().serve_connection_with_upgrades(
                TokioIo::new(crate::framing::FramingGuard::new(io)),
                service,
            ))
            .await
            .map_err(|e| e.to_string())
    }

    async fn handle(&self, request: Request<Incoming>, caller: &Caller) -> Response<Body> {
        let entry = crate::access::Entry::of(crate::metrics::Reporter::Destination, &request);
        let mut response = self.forward(request, caller).await;
        let peer = caller.peer.as_ref().map(|p| p.spiffe_id.as_str());
        entry.finish(&mut response, &self.metrics, peer, self.debug_headers);
        response
    }

    async fn forward(&self, request: Request<Incoming>, caller: &Caller) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        if let Err(reason) = self.authorize(caller, Some(&parts)) {
            tracing::debug!(reason, "request refused by authorization policy");
            return local_response(StatusCode::FORBIDDEN, Some("RBAC"), "RBAC: access denied");
        }
        let peer = caller.peer.as_ref();
        strip_hop_by_hop(&mut parts.headers);
        // Only this proxy may say who the caller is.
        parts.headers.remove(&XFCC);
        if let Some(xfcc) = peer.and_then(|p| p.xfcc.clone()) {
            parts.headers.insert(XFCC.clone(), xfcc);
        }
        // A request that was HTTP/1.1 before the sidecars' HTTP/2 hop goes to the app as it was.
        let downstream_http2 = parts.headers.remove(&ORIGINAL_PROTOCOL).is_none()
            && parts.version == hyper::Version::HTTP_2;
        let config = self.config.borrow().clone();
        let Some(cluster) = config.model.clusters.get(&self.cluster) else {
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("NC"),
                "no inbound cluster\n",
            );
        };
        let Some(endpoint) = cluster.endpoints.first() else {
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("UH"),
                "no application\n",
            );
        };
        let upgrade = parts.headers.contains_key(hyper::header::UPGRADE);
        let downstream = upgrade
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        let request = Request::from_parts(parts, crate::upstream::boxed(body));
        let sent = if upgrade {
            self.upstreams
                .send_upgrade(
                    endpoint.address,
                    None,
                    cluster.connect_timeout,
                    request,
                    downstream,
                )
                .await
        } else {
            self.upstreams
                .send(
                    endpoint.address,
                    None,
                    cluster.protocol.http2(downstream_http2),
                    cluster.connect_timeout,
                    request,
                )
                .await
        };
        crate::outbound::from_upstream(sent)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
