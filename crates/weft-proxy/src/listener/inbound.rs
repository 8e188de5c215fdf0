//! The inbound listener: connections from other sidecars (and, where PeerAuthentication
//! allows, plaintext clients) to this workload. Each connection is told apart by its first
//! byte — a TLS handshake or not — and accepted or refused by the port's mode: STRICT takes
//! mTLS only, PERMISSIVE both (and passes TLS that offers no `istio…` ALPN, the
//! application's own, through as opaque TCP), DISABLE plaintext only. mTLS peers must present a mesh
//! certificate of this trust domain; their identity reaches the application in
//! `x-forwarded-client-cert`, in Envoy's format. Each request, or each opaque TCP
//! connection, is then authorized by the port's AuthorizationPolicies ([`crate::authz`])
//! — HTTP requests once their path is normalized ([`crate::model::path`]) — and goes to
//! the application.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::serve::{
    Carrier, HANDSHAKE_TIMEOUT, Io, accept_loop, first_byte, is_tls, serve_carried, serve_http,
};
use crate::authz::Denial;
use crate::detect::Carries;
use crate::drain;
use crate::error::{ConnectionError, ProxyError};
use crate::http::headers::{ORIGINAL_PROTOCOL, XFCC, strip_hop_by_hop};
use crate::http::{Body, boxed};
use crate::model::PathNormalization;
use crate::proxy::{downstream_response, tunnel};
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::{Metrics, Reporter};
use crate::tls::client_hello;
use crate::tls::identity::{CurrentIdentity, peer_spiffe_id, trust_domain};
use crate::upstream::Pool;
use crate::xds::Applied;

/// What the inbound side reads; one per sidecar, shared by its connections.
pub struct Inbound {
    /// The configuration in force.
    pub config: watch::Receiver<Arc<Applied>>,
    /// The workload's identity.
    pub identity: CurrentIdentity,
    /// Connections to the application.
    pub pool: Pool,
    /// The port this listener is on: the chain of a connection that came here directly
    /// (a redirected one takes the chain of the port it was going to).
    pub port: u16,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
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
    source: IpAddr,
    /// Where the caller was connecting: the workload's address and port before interception
    /// redirected the connection here, else this listener's. Its port picks the chain,
    /// the policies and the application (`inbound|<port>||`): one sidecar fronts every
    /// port of its workload.
    local: SocketAddr,
}

/// How a port takes connections.
#[derive(Debug, Clone, Copy)]
struct Mode {
    mtls: bool,
    plaintext: bool,
    serves: Carries,
    /// TLS without Istio's ALPN passes through to the application (PERMISSIVE).
    passthrough: bool,
}

/// Accepts connections until the drain.
pub async fn serve(inbound: Arc<Inbound>, listener: TcpListener, drain: drain::Watch) {
    accept_loop(listener, drain, move |stream, peer, drain| {
        let inbound = inbound.clone();
        async move {
            Applied::wait_warm(&mut inbound.config.clone()).await;
            inbound.identity.wait().await;
            if let Err(error) = inbound.connection(stream, drain).await {
                tracing::debug!(%peer, %error, "inbound connection refused");
            }
        }
    })
    .await;
}

impl Inbound {
    fn mode(&self, port: u16) -> Mode {
        // Before any configuration: mTLS only, the safe choice.
        self.config.borrow().model.inbound.get(&port).map_or(
            Mode {
                mtls: true,
                plaintext: false,
                serves: Carries::Http,
                passthrough: false,
            },
            |port| Mode {
                mtls: port.mtls,
                plaintext: port.plaintext,
                passthrough: port.tls_passthrough.is_some(),
                serves: match (&port.http, &port.tcp) {
                    (Some(_), Some(_)) => Carries::Detect,
                    (None, Some(_)) => Carries::Tcp,
                    _ => Carries::Http,
                },
            },
        )
    }

    /// How the port normalizes request paths.
    fn paths(&self, port: u16) -> PathNormalization {
        self.config
            .borrow()
            .model
            .inbound
            .get(&port)
            .map(|port| port.paths)
            .unwrap_or_default()
    }

    /// Verifies the request's token, if the port authenticates them (RequestAuthentication).
    fn authenticate(&self, port: u16, parts: &mut Parts) -> Result<(), ProxyError> {
        let jwt = self
            .config
            .borrow()
            .model
            .inbound
            .get(&port)
            .and_then(|port| port.jwt.clone());
        match jwt {
            Some(jwt) => jwt.authenticate(parts).map_err(ProxyError::Unauthenticated),
            None => Ok(()),
        }
    }

    /// Applies the port's authorization policies: its HTTP ones to a request, its TCP ones
    /// to an opaque connection.
    fn authorize(&self, caller: &Caller, http: Option<&Parts>) -> Result<(), Denial> {
        self.authorize_as(caller, http, false)
    }

    /// Applies the policies of a PERMISSIVE port's TLS passthrough (the application's own
    /// TLS) to a connection.
    fn authorize_passthrough(&self, caller: &Caller) -> Result<(), Denial> {
        self.authorize_as(caller, None, true)
    }

    fn authorize_as(
        &self,
        caller: &Caller,
        http: Option<&Parts>,
        passthrough: bool,
    ) -> Result<(), Denial> {
        let config = self.config.borrow().clone();
        // No configuration for the port (its listener never arrived, or was rejected): the
        // policies that should apply are unknown, so nothing is allowed.
        let Some(port) = config.model.inbound.get(&caller.local.port()) else {
            return Err(Denial::Unconfigured);
        };
        let rbac = match (http, passthrough) {
            (_, true) => port.tls_passthrough.as_ref(),
            (Some(_), false) => port.http.as_ref(),
            (None, false) => port.tcp.as_ref(),
        };
        let Some(rbac) = rbac else {
            return Err(Denial::NotCarried);
        };
        let request = crate::authz::Request {
            peer: caller.peer.as_ref().map(|p| p.spiffe_id.as_str()),
            source: caller.source,
            // As Envoy without `use_remote_address`: the last address `x-forwarded-for`
            // names (what the gateway in front appended), else the peer.
            remote: http
                .and_then(|parts| crate::authz::forwarded_client(&parts.headers, 0))
                .unwrap_or(caller.source),
            destination: (caller.local.ip(), caller.local.port()),
            http,
        };
        rbac.decide(&request)
    }

    /// Accepts or refuses a connection by the port's mode, verifies an mTLS caller, and
    /// serves it.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        drain: drain::Watch,
    ) -> Result<(), ConnectionError> {
        let source = stream.peer_addr().map_err(ConnectionError::Io)?.ip();
        let arrived = stream.local_addr().map_err(ConnectionError::Io)?;
        // A connection iptables redirected here was going to one of the workload's ports;
        // one that came here directly is for this listener's.
        let local = match super::orig_dst::original_destination(&stream) {
            Some(original) if original != arrived => original,
            _ => SocketAddr::new(arrived.ip(), self.port),
        };
        let Some(first) = first_byte(&stream).await? else {
            return Ok(());
        };
        let mode = self.mode(local.port());
        if !is_tls(first) {
            if !mode.plaintext {
                return Err(ConnectionError::PlaintextRefused);
            }
            let caller = Caller {
                peer: None,
                source,
                local,
            };
            return serve_carried(
                stream,
                mode.serves,
                Accepted {
                    inbound: self,
                    caller,
                    drain,
                },
            )
            .await;
        }
        if !mode.mtls {
            return Err(ConnectionError::TlsRefused);
        }
        if mode.passthrough {
            let offered = client_hello::offered_alpn(&stream, HANDSHAKE_TIMEOUT)
                .await
                .map_err(ConnectionError::Io)?;
            // What is not a ClientHello goes on to the handshake, which refuses it.
            if offered.is_some_and(|offered| !client_hello::is_mesh(&offered)) {
                let caller = Caller {
                    peer: None,
                    source,
                    local,
                };
                self.authorize_passthrough(&caller)?;
                return self.to_application(local.port(), stream).await;
            }
        }
        let config =
            crate::tls::server_config(&self.identity).map_err(ConnectionError::TlsSetup)?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(stream),
        )
        .await
        .map_err(|_| ConnectionError::HandshakeTimeout)?
        .map_err(ConnectionError::Handshake)?;
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or(ConnectionError::NoClientCertificate)?;
        let spiffe_id = peer_spiffe_id(certificate).ok_or(ConnectionError::NoSpiffeId)?;
        let own = self
            .identity
            .get()
            .map(|i| i.spiffe_id.clone())
            .unwrap_or_default();
        if trust_domain(&spiffe_id) != trust_domain(&own) {
            return Err(ConnectionError::ForeignTrustDomain(spiffe_id));
        }
        let cert_hash = hex(ring::digest::digest(&ring::digest::SHA256, certificate).as_ref());
        let xfcc = HeaderValue::from_str(&format!(
            "By={own};Hash={cert_hash};Subject=\"\";URI={spiffe_id}"
        ))
        .ok();
        let caller = Caller {
            peer: Some(Peer { spiffe_id, xfcc }),
            source,
            local,
        };
        serve_carried(
            tls,
            mode.serves,
            Accepted {
                inbound: self,
                caller,
                drain,
            },
        )
        .await
    }

    /// Copies the bytes of an authorized opaque connection to the application and back.
    async fn to_application<T: Io>(&self, port: u16, mut io: T) -> Result<(), ConnectionError> {
        let address = self.application(port)?;
        let mut app = TcpStream::connect(address)
            .await
            .map_err(|error| ConnectionError::Application { address, error })?;
        let _ = app.set_nodelay(true);
        tokio::io::copy_bidirectional(&mut io, &mut app)
            .await
            .map_err(ConnectionError::Io)?;
        Ok(())
    }

    /// The address of the application behind the workload's `port`.
    fn application(&self, port: u16) -> Result<SocketAddr, ConnectionError> {
        let config = self.config.borrow();
        let cluster = config
            .model
            .clusters
            .get(&inbound_cluster(port))
            .ok_or(ConnectionError::NoApplication)?;
        cluster
            .endpoints
            .first()
            .map(|e| e.address)
            .ok_or(ConnectionError::NoApplication)
    }

    async fn handle(&self, request: Request<Incoming>, caller: &Caller) -> Response<Body> {
        let entry = Entry::of(Reporter::Destination, &request);
        let mut response = self
            .forward(request, caller)
            .await
            .unwrap_or_else(ProxyError::into_response);
        let peer = caller.peer.as_ref().map(|p| p.spiffe_id.as_str());
        entry.finish(&mut response, &self.metrics, peer, self.debug_headers);
        response
    }

    /// Authorizes a request and sends it to the application, with the caller's identity.
    async fn forward(
        &self,
        request: Request<Incoming>,
        caller: &Caller,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        // Policies and the application read the normal form of the path.
        self.paths(caller.local.port())
            .normalize_uri(&mut parts.uri)
            .map_err(|rejected| ProxyError::BadRequest(rejected.reason()))?;
        self.authenticate(caller.local.port(), &mut parts)?;
        if let Err(denial) = self.authorize(caller, Some(&parts)) {
            tracing::debug!(%denial, "request refused by authorization policy");
            return Err(ProxyError::Denied);
        }
        strip_hop_by_hop(&mut parts.headers);
        crate::proxy::forward::allowed_upgrade(&parts.headers)?;
        // Only this proxy may say who the caller is.
        parts.headers.remove(&XFCC);
        if let Some(xfcc) = caller.peer.as_ref().and_then(|p| p.xfcc.clone()) {
            parts.headers.insert(XFCC.clone(), xfcc);
        }
        // A request that was HTTP/1.1 before the sidecars' HTTP/2 hop goes to the app as it was.
        let downstream_http2 = parts.headers.remove(&ORIGINAL_PROTOCOL).is_none()
            && parts.version == hyper::Version::HTTP_2;
        let config = self.config.borrow().clone();
        let cluster = config
            .model
            .clusters
            .get(&inbound_cluster(caller.local.port()))
            .ok_or(ProxyError::NoInboundCluster)?;
        let endpoint = cluster.endpoints.first().ok_or(ProxyError::NoApplication)?;
        if !parts.headers.contains_key(hyper::header::UPGRADE) {
            let request = Request::from_parts(parts, boxed(body));
            let sent = self
                .pool
                .send(
                    endpoint.address,
                    None,
                    cluster.protocol.http2(downstream_http2),
                    cluster.connect_timeout,
                    request,
                )
                .await;
            return downstream_response(sent);
        }
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let request = Request::from_parts(parts, boxed(body));
        let (response, upstream) = self
            .pool
            .send_upgrade(endpoint.address, None, cluster.connect_timeout, request)
            .await?;
        tunnel::splice(downstream, upstream);
        downstream_response(Ok(response))
    }
}

/// An accepted (and, for mTLS, terminated) connection, with who is calling.
struct Accepted {
    inbound: Arc<Inbound>,
    caller: Caller,
    drain: drain::Watch,
}

impl Carrier for Accepted {
    /// Each request is authorized, then goes to the application.
    async fn http<T: Io>(self, io: T) -> Result<(), ConnectionError> {
        // Shared by the connection's requests: one reference count each, no copies.
        let connection = Arc::new((self.inbound, self.caller));
        serve_http(io, self.drain, move |request| {
            let connection = connection.clone();
            async move {
                let (inbound, caller) = &*connection;
                inbound.handle(request, caller).await
            }
        })
        .await
    }

    /// Opaque TCP: authorized once, then the bytes go to the application as they are, both
    /// ways.
    async fn tcp<T: Io>(self, io: T) -> Result<(), ConnectionError> {
        let _open = self.drain;
        self.inbound.authorize(&self.caller, None)?;
        self.inbound
            .to_application(self.caller.local.port(), io)
            .await
    }
}

/// The cluster of the application behind the workload's `port` (Envoy's name).
fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
