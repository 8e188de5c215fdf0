//! The outbound side: requests from the application to the mesh. The outbound listener is
//! an explicit HTTP proxy (the application sets `HTTP_PROXY`): each request names its
//! destination in its absolute URI or its Host, is routed by the route table of the
//! destination port, and is sent to an endpoint of the chosen cluster.
//!
//! Connections that iptables or nftables redirected to the outbound listener (transparent
//! interception) are served by [`Outbound::serve_redirected`]: HTTP when the mesh routes HTTP
//! on the port the application dialled, each request routed by its Host on that port, and
//! sent on to where the application was going when no route matches (Istio's passthrough);
//! opaque TCP straight to that destination otherwise.
//!
//! Errors are answered as Envoy answers them, with its response flag in the access log, the
//! metrics and, with `--debug-headers`, the [`RESPONSE_FLAGS`] header: no route `404 NR`, no cluster `503 NC`, no healthy endpoint
//! `503 UH`, connect failure `503 UF`, reset `503 UR`, timeout `504 UT`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderName, HeaderValue, LOCATION};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::sync::watch;

use crate::model::{Action, Forward, HeaderChanges, PathMatch, Redirect, Route};
use crate::router::{self, Balancers, Outcome};
use crate::sniff::Carries;
use crate::upstream::{Body, UpstreamError, Upstreams};
use crate::xds::Config;

/// The response header that carries Envoy-style response flags of locally answered errors.
pub static RESPONSE_FLAGS: HeaderName = HeaderName::from_static("weft-response-flags");

/// What the outbound handler reads.
#[derive(Clone)]
pub struct Outbound {
    /// The configuration in force.
    pub config: watch::Receiver<Arc<Config>>,
    /// Upstream connections.
    pub upstreams: Upstreams,
    /// Load-balancer state.
    pub balancers: Balancers,
    /// The workload's namespace, where short host names resolve.
    pub namespace: String,
    /// Held by every connection, so a drain knows what is open.
    pub drain: crate::drain::Watch,
    /// Request metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Whether responses carry the response-flags header.
    pub debug_headers: bool,
}

/// A response made by the proxy itself.
pub fn local_response(
    status: StatusCode,
    flag: Option<&str>,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Some(flag) = flag.and_then(|f| HeaderValue::from_str(f).ok()) {
        response.headers_mut().insert(RESPONSE_FLAGS.clone(), flag);
    }
    response
}

/// gRPC's status, in the trailers or (for an error without a body) the response head.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Headers that belong to one connection and are never forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

/// Removes hop-by-hop headers, and those the `Connection` header names. An upgrade
/// (WebSocket) keeps `Upgrade` and `Connection: upgrade`, the hop-by-hop headers the next hop
/// needs for it. Most messages carry none, which one pass over their names finds.
pub fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        // One string match per header (most have a length no hop-by-hop name has).
        let index = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            "te" => 5,
            "transfer-encoding" => 6,
            "upgrade" => 7,
            _ => continue,
        };
        present[index] = true;
    }
    if !present.contains(&true) {
        return;
    }
    let mut upgrade = None;
    let mut named = Vec::new();
    for token in headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        if token.eq_ignore_ascii_case("upgrade") {
            upgrade = headers.get(hyper::header::UPGRADE).cloned();
        } else if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
            // The connection's own options, not header names (`keep-alive` is removed below).
        } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    for (name, _) in HOP_BY_HOP
        .iter()
        .zip(present)
        .filter(|(_, present)| *present)
    {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(hyper::header::UPGRADE, upgrade);
        headers.insert(
            hyper::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
}

/// The upstream's answer as the downstream gets it: hop-by-hop headers removed; a failure
/// as `503` with its response flag.
pub fn from_upstream(result: Result<Response<Body>, UpstreamError>) -> Response<Body> {
    match result {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(error) => local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(error.flag()),
            format!("{error}\n"),
        ),
    }
}

/// Once both sides of an upgrade (`101 Switching Protocols`) have switched, copies bytes
/// between them until either closes.
pub fn splice_upgrade(
    downstream: Option<hyper::upgrade::OnUpgrade>,
    response: &mut Response<Incoming>,
) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(downstream) = downstream else { return };
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(async move {
        if let (Ok(downstream), Ok(upstream)) = tokio::join!(downstream, upstream) {
            let mut downstream = hyper_util::rt::TokioIo::new(downstream);
            let mut upstream = hyper_util::rt::TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        }
    });
}

/// Applies header changes: remove, then set (overwrite), then add (append).
pub fn apply_changes(headers: &mut hyper::HeaderMap, changes: &HeaderChanges) {
    for name in &changes.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &changes.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &changes.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

impl Outbound {
    /// Proxies one request from the application.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let entry = crate::access::Entry::of(crate::metrics::Reporter::Source, &request);
        let mut response = self.route(request, client).await;
        entry.finish(&mut response, &self.metrics, None, self.debug_headers);
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        client: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return Box::pin(self.tunnel(Request::from_parts(parts, body))).await;
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let Some(authority) = authority else {
            return local_response(StatusCode::BAD_REQUEST, None, "the request names no host\n");
        };
        let port = authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(80);
        let config = self.config.borrow().clone();
        let route = config
            .model
            .route_table(port)
            .and_then(|table| table.virtual_host(&authority))
            .and_then(|vh| router::select(&vh.routes, &parts, &authority));
        let Some(route) = route else {
            if let Some(Redirected(original)) = parts.extensions.get::<Redirected>().copied() {
                return Box::pin(self.passthrough(parts, body, original)).await;
            }
            return local_response(StatusCode::NOT_FOUND, Some("NR"), "no route\n");
        };
        let mut response = match &route.action {
            Action::Direct { status, body } => local_response(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                None,
                body.clone(),
            ),
            Action::Redirect(redirect) => {
                redirect_response(redirect, route, &parts.uri, &authority)
            }
            Action::Forward(forward) => match inject_fault(route.fault.as_ref()).await {
                Some(aborted) => aborted,
                None => {
                    strip_hop_by_hop(&mut parts.headers);
                    apply_changes(&mut parts.headers, &route.request_headers);
                    let request = Request::from_parts(parts, body);
                    self.forward(&config, forward, route, request, authority, client)
                        .await
                }
            },
        };
        apply_changes(response.headers_mut(), &route.response_headers);
        response
    }

    async fn forward(
        &self,
        config: &Config,
        forward: &Forward,
        route: &Route,
        request: Request<Incoming>,
        authority: String,
        client: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let Some(weighted) = router::pick_cluster(forward) else {
            return local_response(StatusCode::SERVICE_UNAVAILABLE, Some("NC"), "no cluster\n");
        };
        let Some(cluster) = config.model.clusters.get(&weighted.name) else {
            return local_response(StatusCode::SERVICE_UNAVAILABLE, Some("NC"), "no cluster\n");
        };
        let balancer = self.balancers.of(cluster);
        let Some(_admitted) = balancer.admit() else {
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("UO"),
                "upstream overflow (circuit breaker)\n",
            );
        };
        apply_changes(&mut parts.headers, &weighted.request_headers);
        parts.uri = match rewritten_path(forward, route, &parts.uri) {
            Some(path) => match Uri::builder().path_and_query(path).build() {
                Ok(uri) => uri,
                Err(_) => return local_response(StatusCode::BAD_REQUEST, None, "bad path\n"),
            },
            None => Uri::from(
                parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            ),
        };
        let host = forward.host_rewrite.as_deref().unwrap_or(&authority);
        if parts.headers.get(HOST).map(HeaderValue::as_bytes) != Some(host.as_bytes())
            && let Ok(host) = HeaderValue::from_str(host)
        {
            parts.headers.insert(HOST, host);
        }
        let hash = router::request_hash(&forward.hash_policy, &parts, client);
        if parts.headers.contains_key(hyper::header::UPGRADE) {
            return Box::pin(self.forward_upgrade(cluster, parts, body, hash)).await;
        }
        // A request can be tried again only if its body can be sent again: small and whole.
        let (mut body, mut replay) = (Some(body), None);
        if forward.retry.as_ref().is_some_and(|r| r.retries > 0)
            && let Some(whole) = body.take_if(|b| {
                hyper::body::Body::size_hint(b)
                    .upper()
                    .is_some_and(|n| n <= MAX_REPLAYED_BODY)
            })
        {
            if hyper::body::Body::is_end_stream(&whole) {
                replay = Some(Bytes::new());
            } else {
                match whole.collect().await {
                    Ok(collected) => replay = Some(collected.to_bytes()),
                    Err(_) => {
                        return local_response(
                            StatusCode::BAD_REQUEST,
                            None,
                            "the request body broke off\n",
                        );
                    }
                }
            }
        }
        let attempts = match (&forward.retry, &replay) {
            (Some(retry), Some(_)) => 1 + retry.retries,
            _ => 1,
        };
        let deadline = forward.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tried = Vec::new();
        let mut retry_place = None;
        let mut last_error = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                // Envoy's backoff: 25 ms doubling, jittered.
                let base = 25u64 << (attempt - 1).min(4);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=base))).await;
            }
            // Another endpoint than those tried, when there is one (Istio's previous-hosts).
            let mut pick = None;
            for _ in 0..5 {
                let candidate = balancer.pick(hash);
                let fresh = candidate
                    .as_ref()
                    .is_some_and(|p| !tried.contains(&p.endpoint.address));
                pick = candidate;
                if fresh {
                    break;
                }
            }
            let Some(pick) = pick else {
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("UH"),
                    "no healthy upstream\n",
                );
            };
            let address = pick.endpoint.address;
            if attempts > 1 {
                tried.push(address);
            }
            let mut request = Request::new(match (&replay, body.take()) {
                // Boxing an empty body allocates nothing.
                (Some(bytes), _) if bytes.is_empty() => http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
                (Some(bytes), _) => Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
                (None, Some(body)) => crate::upstream::boxed(body),
                (None, None) => break,
            });
            *request.version_mut() = parts.version;
            if attempt + 1 == attempts {
                // The last attempt takes the request's head; earlier ones copy it.
                *request.method_mut() = std::mem::take(&mut parts.method);
                *request.uri_mut() = std::mem::take(&mut parts.uri);
                *request.headers_mut() = std::mem::take(&mut parts.headers);
            } else {
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = parts.uri.clone();
                *request.headers_mut() = parts.headers.clone();
            }
            let tls = if pick.endpoint.mesh {
                cluster.mesh_tls.as_ref()
            } else {
                cluster.default_tls.as_ref()
            };
            let sending = self.upstreams.send(
                pick.endpoint.address,
                tls,
                cluster
                    .protocol
                    .http2(parts.version == hyper::Version::HTTP_2),
                cluster.connect_timeout,
                request,
            );
            let try_deadline = match (
                forward.retry.as_ref().and_then(|r| r.per_try_timeout),
                deadline,
            ) {
                (Some(per_try), Some(overall)) => {
                    Some((tokio::time::Instant::now() + per_try).min(overall))
                }
                (Some(per_try), None) => Some(tokio::time::Instant::now() + per_try),
                (None, overall) => overall,
            };
            let result = match try_deadline {
                Some(at) => match tokio::time::timeout_at(at, sending).await {
                    Ok(result) => result,
                    Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                        return local_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            Some("UT"),
                            "upstream request timeout\n",
                        );
                    }
                    Err(_) => {
                        last_error = Some(local_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            Some("UT"),
                            "upstream request timeout\n",
                        ));
                        continue;
                    }
                },
                None => sending.await,
            };
            drop(pick);
            // A retry also needs a place under the cluster's `maxRetries`, taken only once a
            // retry is due.
            let retry = forward.retry.as_ref().filter(|_| attempt + 1 < attempts);
            let mut admit_retry = || {
                retry_place = balancer.admit_retry();
                retry_place.is_some()
            };
            match result {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    balancer.report(
                        address,
                        match status {
                            502..=504 => Outcome::GatewayError,
                            500.. => Outcome::ServerError,
                            _ => Outcome::Success,
                        },
                    );
                    let grpc_status = response
                        .headers()
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    if retry.is_some_and(|r| r.on_response(status, grpc_status)) && admit_retry() {
                        continue;
                    }
                    strip_hop_by_hop(response.headers_mut());
                    apply_changes(response.headers_mut(), &weighted.response_headers);
                    return response;
                }
                Err(error) => {
                    balancer.report(address, Outcome::GatewayError);
                    tracing::debug!(%error, cluster = cluster.name, attempt, "upstream failed");
                    let connect = matches!(error, crate::upstream::UpstreamError::Connect(_));
                    last_error = Some(local_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some(error.flag()),
                        format!("{error}\n"),
                    ));
                    if !(retry.is_some_and(|r| r.on_failure(connect)) && admit_retry()) {
                        break;
                    }
                }
            }
        }
        last_error.unwrap_or_else(|| {
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("URX"),
                "retries exhausted\n",
            )
        })
    }
}

impl Outbound {
    /// `CONNECT host:port`: a byte tunnel to a mesh service (an endpoint of its cluster, over
    /// mesh mTLS when it is a mesh workload), or, for a host the mesh does not know, straight
    /// to it (Istio's `ALLOW_ANY`). The 200 goes out once the upstream is connected.
    async fn tunnel(&self, request: Request<Incoming>) -> Response<Body> {
        let Some(authority) = request.uri().authority().cloned() else {
            return local_response(StatusCode::BAD_REQUEST, None, "CONNECT needs host:port\n");
        };
        let Some(port) = authority.port_u16() else {
            return local_response(StatusCode::BAD_REQUEST, None, "CONNECT needs host:port\n");
        };
        let mut upstream = match self.connect_to(authority.host(), port).await {
            Ok(upstream) => upstream,
            Err(refusal) => return refusal,
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let mut downstream = hyper_util::rt::TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                }
                Err(error) => tracing::debug!(%error, "CONNECT tunnel was not established"),
            }
        });
        local_response(StatusCode::OK, None, Bytes::new())
    }
}

impl Outbound {
    /// A byte stream to `host:port`: an endpoint of the mesh service (over mesh mTLS when
    /// it is a mesh workload), or the host itself when the mesh does not know it. A short
    /// name resolves in this workload's namespace.
    pub async fn connect_to(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Box<dyn crate::upstream::Stream>, Response<Body>> {
        let config = self.config.borrow().clone();
        let cluster = [
            host.to_string(),
            format!("{host}.{}.svc.cluster.local", self.namespace),
            format!("{host}.svc.cluster.local"),
            format!("{host}.cluster.local"),
        ]
        .iter()
        .find_map(|candidate| {
            config
                .model
                .clusters
                .get(&format!("outbound|{port}||{candidate}"))
        });
        let upstream = match cluster {
            Some(cluster) => {
                let Some(pick) = self.balancers.pick(cluster, None) else {
                    return Err(local_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some("UH"),
                        "no healthy upstream\n",
                    ));
                };
                let tls = if pick.endpoint.mesh {
                    cluster.mesh_tls.as_ref()
                } else {
                    cluster.default_tls.as_ref()
                };
                self.upstreams
                    .connect_stream(pick.endpoint.address, tls, cluster.connect_timeout)
                    .await
            }
            None => tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect((host, port)),
            )
            .await
            .map_err(|_| UpstreamError::Connect(format!("timed out connecting to {host}:{port}")))
            .and_then(|r| r.map_err(|e| UpstreamError::Connect(format!("{host}:{port}: {e}"))))
            .map(|s| Box::new(s) as Box<dyn crate::upstream::Stream>),
        };
        upstream.map_err(|error| {
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(error.flag()),
                format!("{error}\n"),
            )
        })
    }

    /// An upgrade request (WebSocket): one attempt, on an HTTP/1.1 connection of its own to
    /// the endpoint; after `101` the bytes flow both ways.
    async fn forward_upgrade(
        &self,
        cluster: &crate::model::Cluster,
        mut parts: hyper::http::request::Parts,
        body: Incoming,
        hash: Option<u64>,
    ) -> Response<Body> {
        let Some(pick) = self.balancers.pick(cluster, hash) else {
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("UH"),
                "no healthy upstream\n",
            );
        };
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let tls = if pick.endpoint.mesh {
            cluster.mesh_tls.as_ref()
        } else {
            cluster.default_tls.as_ref()
        };
        let request = Request::from_parts(parts, crate::upstream::boxed(body));
        let result = self
            .upstreams
            .send_upgrade(
                pick.endpoint.address,
                tls,
                cluster.connect_timeout,
                request,
                downstream,
            )
            .await;
        from_upstream(result)
    }

    /// Sends a request the mesh has no route for to where the application was sending it,
    /// in plaintext (Istio's `PassthroughCluster` with `outboundTrafficPolicy: ALLOW_ANY`).
    async fn passthrough(
        &self,
        mut parts: hyper::http::request::Parts,
        body: Incoming,
        original: std::net::SocketAddr,
    ) -> Response<Body> {
        strip_hop_by_hop(&mut parts.headers);
        if let Some(path) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(path);
        }
        let upgrade = parts.headers.contains_key(hyper::header::UPGRADE);
        let downstream = upgrade
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        let request = Request::from_parts(parts, crate::upstream::boxed(body));
        let result = if upgrade {
            self.upstreams
                .send_upgrade(
                    original,
                    None,
                    PASSTHROUGH_CONNECT_TIMEOUT,
                    request,
                    downstream,
                )
                .await
        } else {
            self.upstreams
                .send(original, None, false, PASSTHROUGH_CONNECT_TIMEOUT, request)
                .await
        };
        from_upstream(result)
    }

    /// Serves a connection that was redirected to the outbound listener on its way to
    /// `original`; see the module documentation.
    pub async fn serve_redirected(
        self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        original: std::net::SocketAddr,
    ) {
        Config::wait_warm(&mut self.config.clone()).await;
        match self.carries(original.port()) {
            Carries::Http => self.redirected_http(stream, peer, original).await,
            Carries::Tcp => passthrough_tcp(stream, original).await,
            Carries::Detect => match crate::sniff::detect(stream).await {
                Ok((crate::sniff::Detected::Http, stream)) => {
                    self.redirected_http(stream, peer, original).await;
                }
                Ok((crate::sniff::Detected::Opaque, stream)) => {
                    passthrough_tcp(stream, original).await;
                }
                Err(_) => {}
            },
        }
    }

    /// What connections to an outbound `port` carry, from the configuration.
    fn carries(&self, port: u16) -> Carries {
        let config = self.config.borrow();
        if config.model.route_table(port).is_none() {
            Carries::Tcp
        } else if config.model.sniffed_ports.contains(&port) {
            Carries::Detect
        } else {
            Carries::Http
        }
    }

    /// HTTP on a redirected connection: each request is routed as the name the application
    /// used (its Host), on the port it dialled.
    async fn redirected_http<T>(
        self,
        io: T,
        peer: std::net::SocketAddr,
        original: std::net::SocketAddr,
    ) where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let drain = self.drain.clone();
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let outbound = this.clone();
            async move {
                let host = request
                    .headers()
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
                    .map_or_else(|| original.ip().to_string(), |a| a.host().to_string());
                if let Ok(authority) = format!("{host}:{}", original.port()).parse() {
                    address_to(&mut request, authority);
                }
                request.extensions_mut().insert(Redirected(original));
                Ok::<_, std::convert::Infallible>(outbound.handle(request, Some(peer.ip())).await)
            }
        });
        let _ = drain
            .serve(crate::http_server().serve_connection_with_upgrades(
                hyper_util::rt::TokioIo::new(crate::framing::FramingGuard::new(io)),
                service,
            ))
            .await;
    }

    /// Serves a per-upstream local port: everything that arrives goes to `host:port`. HTTP
    /// when the mesh routes HTTP on that port (each request is routed as if it named
    /// `host:port`), opaque TCP otherwise, and on a port of undeclared protocol whatever
    /// each connection's first bytes say.
    pub async fn serve_upstream_port(
        self,
        listener: tokio::net::TcpListener,
        host: String,
        port: u16,
    ) {
        let mut drain = self.drain.clone();
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
            let outbound = self.clone();
            let host = host.clone();
            tokio::spawn(async move {
                crate::xds::Config::wait_warm(&mut outbound.config.clone()).await;
                match outbound.carries(port) {
                    Carries::Http => outbound.upstream_http(stream, peer, host, port).await,
                    Carries::Tcp => outbound.upstream_tcp(stream, &host, port).await,
                    Carries::Detect => match crate::sniff::detect(stream).await {
                        Ok((crate::sniff::Detected::Http, stream)) => {
                            outbound.upstream_http(stream, peer, host, port).await;
                        }
                        Ok((crate::sniff::Detected::Opaque, stream)) => {
                            outbound.upstream_tcp(stream, &host, port).await;
                        }
                        Err(_) => {}
                    },
                }
            });
        }
    }

    /// Opaque TCP on a per-upstream port: to an endpoint of the service.
    async fn upstream_tcp<T>(&self, mut io: T, host: &str, port: u16)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Ok(mut upstream) = self.connect_to(host, port).await {
            let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
        }
    }

    /// HTTP on a per-upstream port: every request is routed as if it named `host:port`.
    async fn upstream_http<T>(self, io: T, peer: std::net::SocketAddr, host: String, port: u16)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let named = format!("{host}:{port}");
        let (Ok(authority), Ok(host)) = (named.parse::<Authority>(), HeaderValue::from_str(&named))
        else {
            tracing::warn!(
                upstream = named,
                "not a host and port; closing the connection"
            );
            return;
        };
        let drain = self.drain.clone();
        let this = Arc::new(self);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            address_to(&mut request, authority.clone());
            request.headers_mut().insert(HOST, host.clone());
            let outbound = this.clone();
            async move {
                Ok::<_, std::convert::Infallible>(outbound.handle(request, Some(peer.ip())).await)
            }
        });
        let _ = drain
            .serve(crate::http_server().serve_connection_with_upgrades(
                hyper_util::rt::TokioIo::new(crate::framing::FramingGuard::new(io)),
                service,
            ))
            .await;
    }
}

/// Opaque TCP to where a redirected connection was going (Istio's `PassthroughCluster`).
async fn passthrough_tcp<T>(mut io: T, original: std::net::SocketAddr)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Ok(Ok(mut upstream)) = tokio::time::timeout(
        PASSTHROUGH_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(original),
    )
    .await
    {
        let _ = upstream.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    }
}

/// Makes a request's URI absolute with `authority`, so it is routed as naming it.
pub(crate) fn address_to(request: &mut Request<Incoming>, authority: Authority) {
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(
        request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = Uri::from_parts(uri) {
        *request.uri_mut() = uri;
    }
}

/// Marks a request that arrived on a redirected connection, with where it was going.
#[derive(Debug, Clone, Copy)]
struct Redirected(std::net::SocketAddr);

/// How long a passthrough connection may take to connect.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection redirected to this proxy by iptables or nftables (`REDIRECT`, or DNAT)
/// was going: the original destination conntrack recorded. `None` for a connection made to
/// the listener itself.
pub fn original_destination(stream: &tokio::net::TcpStream) -> Option<std::net::SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let local = stream.local_addr().ok()?;
    let original = match local {
        SocketAddr::V4(_) => {
            let address = getsockopt(stream, sockopt::OriginalDst).ok()?;
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                u16::from_be(address.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let address = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            SocketAddr::from((
                Ipv6Addr::from(address.sin6_addr.s6_addr),
                u16::from_be(address.sin6_port),
            ))
        }
    };
    (original != local).then_some(original)
}

/// The largest request body kept so the request can be retried (Envoy buffers 64 KiB).
const MAX_REPLAYED_BODY: u64 = 64 * 1024;

/// Applies a route's fault: maybe waits, maybe answers with the abort's error (flag `FI`).
async fn inject_fault(fault: Option<&crate::model::Fault>) -> Option<Response<Body>> {
    let fault = fault?;
    let hit = |per_million: u32| fastrand::u32(0..1_000_000) < per_million;
    if let Some((delay, share)) = fault.delay
        && hit(share)
    {
        tokio::time::sleep(delay).await;
    }
    let (abort, share) = fault.abort?;
    if !hit(share) {
        return None;
    }
    Some(match abort {
        crate::model::Abort::Http(status) => local_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Some("FI"),
            "fault filter abort",
        ),
        crate::model::Abort::Grpc(code) => {
            let mut response = local_response(StatusCode::OK, Some("FI"), Bytes::new());
            let headers = response.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            response
        }
    })
}

/// The path (and query) sent upstream after the route's rewrite; `None` when the route does
/// not rewrite it.
fn rewritten_path(forward: &Forward, route: &Route, uri: &Uri) -> Option<String> {
    let path = uri.path();
    let new_path = if let Some(rewrite) = &forward.regex_rewrite {
        // Every match, as Envoy replaces them.
        rewrite
            .pattern
            .replace_all(path, rewrite.substitution.as_str())
            .into_owned()
    } else if let (Some(prefix), PathMatch::Prefix(matched)) =
        (&forward.prefix_rewrite, &route.matcher.path)
    {
        format!("{prefix}{}", path.get(matched.len()..).unwrap_or(""))
    } else {
        return None;
    };
    let new_path = if new_path.is_empty() { "/" } else { &new_path };
    Some(match uri.query() {
        Some(query) => format!("{new_path}?{query}"),
        None => new_path.to_string(),
    })
}

fn redirect_response(
    redirect: &Redirect,
    route: &Route,
    uri: &Uri,
    authority: &str,
) -> Response<Body> {
    let scheme = redirect
        .scheme
        .clone()
        .unwrap_or_else(|| "http".to_string());
    let (host, original_port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), Some(port.to_string())),
        None => (authority.to_string(), None),
    };
    let host = redirect.host.clone().unwrap_or(host);
    let port = redirect
        .port
        .map(|p| p.to_string())
        .or(if redirect.host.is_some() {
            None
        } else {
            original_port
        });
    let path = match (&redirect.path, &redirect.prefix, &route.matcher.path) {
        (Some(path), _, _) => path.clone(),
        (None, Some(prefix), PathMatch::Prefix(matched)) => {
            format!("{prefix}{}", uri.path().get(matched.len()..).unwrap_or(""))
        }
        _ => uri.path().to_string(),
    };
    let location = match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    let mut response = local_response(
        StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
        None,
        Bytes::new(),
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> hyper::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut message = headers(&[
            ("connection", "keep-alive, X-Session"),
            ("keep-alive", "timeout=5"),
            ("x-session", "abc"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut message);
        assert_eq!(message, headers(&[("x-kept", "1")]));

        let mut untouched = headers(&[("host", "a"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, headers(&[("host", "a"), ("x-kept", "1")]));

        for name in &HOP_BY_HOP {
            let mut alone = headers(&[(name.as_str(), "x"), ("x-kept", "1")]);
            strip_hop_by_hop(&mut alone);
            assert_eq!(alone, headers(&[("x-kept", "1")]), "{name} is removed");
        }
    }

    #[test]
    fn an_upgrade_keeps_what_the_next_hop_needs_for_it() {
        let mut message = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut message);
        assert_eq!(
            message,
            headers(&[("upgrade", "websocket"), ("connection", "upgrade")])
        );
    }
}
