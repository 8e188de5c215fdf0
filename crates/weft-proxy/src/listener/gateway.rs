//! The ingress gateway: a proxy at the mesh's edge that listens on the ports of the Gateway
//! resources selecting it (they arrive as its listeners, so a port opens and closes as the
//! configuration changes). A connection is plaintext HTTP, or TLS terminated with the
//! certificate of the server its SNI name picks (`SIMPLE`; `MUTUAL` also checks the client's
//! certificate). Requests are routed by their Host with the routes of the server the
//! connection reached — the VirtualServices bound to its Gateway that it admits (a host of
//! another server of the port gets 421) — and forwarded like a sidecar's outbound requests
//! ([`crate::proxy`]): over mesh mTLS, with the gateway's own identity, to workloads of the
//! mesh. A plaintext request to a host of an `httpsRedirect` server gets a 301 to `https`
//! instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

use super::serve::{HANDSHAKE_TIMEOUT, Io, accept_loop, first_byte, is_tls, serve_http};
use crate::drain;
use crate::error::{ConnectionError, ProxyError};
use crate::http::headers::address_to;
use crate::http::{Body, respond};
use crate::proxy::{GatewayAddress, GatewayRoute, Proxy};

/// Keeps a listener open on every gateway port of the configuration, until the drain.
pub async fn serve(proxy: Arc<Proxy>, bind: IpAddr, mut drain: drain::Watch) {
    let mut config = proxy.config.clone();
    let mut running: HashMap<u16, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let ports: Vec<u16> = config
            .borrow()
            .model
            .gateway_ports
            .keys()
            .copied()
            .collect();
        running.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                tracing::info!(port, "gateway port closed");
                task.abort();
            }
            keep
        });
        for port in ports {
            if running.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::new(bind, port)).await {
                Ok(listener) => {
                    tracing::info!(address = %SocketAddr::new(bind, port), "gateway listening");
                    let proxy = proxy.clone();
                    let accepting = accept_loop(
                        listener,
                        drain.clone(),
                        move |stream, peer, drain| {
                            let proxy = proxy.clone();
                            async move {
                                if let Err(error) =
                                    connection(proxy, stream, peer, port, drain).await
                                {
                                    tracing::debug!(%peer, port, %error, "gateway connection refused");
                                }
                            }
                        },
                    );
                    running.insert(port, tokio::spawn(accepting));
                }
                // Tried again at the next configuration.
                Err(error) => tracing::warn!(%error, port, "gateway cannot listen"),
            }
        }
        tokio::select! {
            changed = config.changed() => if changed.is_err() { break },
            () = drain.signaled() => break,
        }
    }
    for task in running.into_values() {
        task.abort();
    }
}

/// Serves a connection: TLS terminated by the server its SNI name picks, or plaintext
/// where the port has a plaintext server.
async fn connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    drain: drain::Watch,
) -> Result<(), ConnectionError> {
    let local = stream.local_addr().map_err(ConnectionError::Io)?.ip();
    let Some(first) = first_byte(&stream).await? else {
        return Ok(());
    };
    let config = proxy.config.borrow().clone();
    let accepts = config
        .model
        .gateway_ports
        .get(&port)
        .ok_or(ConnectionError::PortGone)?;
    // What the connection needs, copied: it must not keep this configuration alive.
    let plaintext = accepts.plaintext;
    let plaintext_route = accepts.plaintext_route.clone();
    let servers = accepts.tls.clone();
    drop(config);
    if is_tls(first) && !servers.is_empty() {
        let start = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
        )
        .await
        .map_err(|_| ConnectionError::HandshakeTimeout)?
        .map_err(ConnectionError::Handshake)?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let server = servers
            .iter()
            .find(|server| server.answers(sni.as_deref()))
            .ok_or(ConnectionError::NoServerForSni(sni))?;
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(server.config.clone()))
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout)?
            .map_err(ConnectionError::Handshake)?;
        let served = Served {
            port,
            local,
            tls: true,
            route: server.route.as_deref().map(Arc::from),
        };
        serve_requests(proxy, tls, peer, served, drain).await
    } else if plaintext {
        let served = Served {
            port,
            local,
            tls: false,
            route: plaintext_route.as_deref().map(Arc::from),
        };
        serve_requests(proxy, stream, peer, served, drain).await
    } else {
        Err(ConnectionError::PlaintextOnTlsPort)
    }
}

/// Which server of a gateway port a connection reached.
#[derive(Debug, Clone)]
struct Served {
    port: u16,
    /// The address the connection arrived at (`destination.ip` of the gateway's policies).
    local: IpAddr,
    /// Whether it terminated TLS.
    tls: bool,
    /// Its route table: a TLS server's own, or the port's plaintext one.
    route: Option<Arc<str>>,
}

/// HTTP on a gateway connection: each request routed by its Host with the table of the
/// server the connection reached.
async fn serve_requests<T: Io>(
    proxy: Arc<Proxy>,
    io: T,
    peer: SocketAddr,
    served: Served,
    drain: drain::Watch,
) -> Result<(), ConnectionError> {
    serve_http(io, drain, move |request| {
        let (proxy, served) = (proxy.clone(), served.clone());
        async move { handle(&proxy, request, peer, &served).await }
    })
    .await
}

/// One request at the gateway.
async fn handle(
    proxy: &Proxy,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    served: &Served,
) -> Response<Body> {
    if let Err(refused) = prepare(&mut request, peer, served.port, served.tls) {
        return refused.into_response();
    }
    if let Some(route) = &served.route {
        request.extensions_mut().insert(GatewayRoute(route.clone()));
    }
    request
        .extensions_mut()
        .insert(GatewayAddress(served.local));
    if !served.tls
        && let Some(redirect) = https_redirect(proxy, &request, served)
    {
        return redirect;
    }
    proxy.handle(request, Some(peer.ip())).await
}

/// The 301 to `https://<Host><path>` for a plaintext request to a host whose virtual host
/// requires TLS (a Gateway server's `httpsRedirect`), as Envoy answers it.
fn https_redirect(
    proxy: &Proxy,
    request: &Request<Incoming>,
    served: &Served,
) -> Option<Response<Body>> {
    let authority = request.uri().authority()?;
    let config = proxy.config.borrow();
    let table = match &served.route {
        Some(route) => config.model.routes.get(route.as_ref())?,
        None => config
            .model
            .outbound_ports
            .get(&served.port)
            .and_then(|p| config.model.routes.get(&p.route))?,
    };
    let virtual_host = table.virtual_host(authority.as_str())?;
    if !virtual_host.require_tls {
        return None;
    }
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(authority.as_str());
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{host}{path}")).ok()?;
    let mut response = respond(StatusCode::MOVED_PERMANENTLY, Bytes::new());
    response.headers_mut().insert(LOCATION, location);
    Some(response)
}

/// Addresses a request to its Host on the gateway's `port` and adds the forwarding headers,
/// or says why it cannot be served.
fn prepare(
    request: &mut Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
) -> Result<(), ProxyError> {
    // A gateway is not a forward proxy: no tunnels through it.
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT is not served at the gateway",
        ));
    }
    let host = request.uri().host().map(str::to_string).or_else(|| {
        let host = request.headers().get(HOST)?.to_str().ok()?;
        let authority = host.parse::<hyper::http::uri::Authority>().ok()?;
        Some(authority.host().to_string())
    });
    let host = host.ok_or(ProxyError::BadRequest("the request names no host"))?;
    if let Ok(authority) = format!("{host}:{port}").parse() {
        address_to(request, authority);
    }
    let headers = request.headers_mut();
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    // Every earlier hop, whether proxies appended to one header or sent several, then the
    // peer.
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let peer_ip = peer.ip().to_string();
    hops.push(&peer_ip);
    let forwarded_for = hops.join(", ");
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    Ok(())
}
