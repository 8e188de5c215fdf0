//! The ingress gateway: a proxy at the mesh's edge that listens on the ports of the Gateway
//! resources selecting it (they arrive as its listeners, so a port opens and closes as the
//! configuration changes). A connection is plaintext HTTP, or TLS terminated with the
//! certificate of the server its SNI name picks (`SIMPLE`; `MUTUAL` also checks the client's
//! certificate). Requests are routed by their Host with the port's routes — the
//! VirtualServices bound to the Gateway — and forwarded like a sidecar's outbound requests:
//! over mesh mTLS, with the gateway's own identity, to workloads of the mesh. A plaintext
//! request to a host of an `httpsRedirect` server gets a 301 to `https` instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

use crate::outbound::{Outbound, local_response};
use crate::upstream::Body;

/// How long a client may take to send its first byte or finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a listener open on every gateway port of the configuration, until the drain.
pub async fn serve(outbound: Outbound, bind: IpAddr) {
    let mut config = outbound.config.clone();
    let mut drain = outbound.drain.clone();
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
                    running.insert(port, tokio::spawn(accept(outbound.clone(), listener, port)));
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

async fn accept(outbound: Outbound, listener: TcpListener, port: u16) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(logged(outbound.clone(), stream, peer, port));
    }
}

async fn logged(outbound: Outbound, stream: TcpStream, peer: SocketAddr, port: u16) {
    if let Err(reason) = connection(outbound, stream, peer, port).await {
        tracing::debug!(%peer, port, reason, "gateway connection refused");
    }
}

async fn connection(
    outbound: Outbound,
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
) -> Result<(), String> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| "no bytes in time".to_string())?
        .map_err(|e| e.to_string())?;
    if peeked == 0 {
        return Ok(());
    }
    let config = outbound.config.borrow().clone();
    let Some(accepts) = config.model.gateway_ports.get(&port) else {
        return Err("the port is no longer configured".into());
    };
    // What the connection needs, copied: it must not keep this configuration alive.
    let plaintext = accepts.plaintext;
    let servers = accepts.tls.clone();
    drop(config);
    // 0x16 starts a TLS handshake record.
    if first[0] == 0x16 && !servers.is_empty() {
        let start = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let server = servers
            .iter()
            .find(|server| server.answers(sni.as_deref()))
            .ok_or_else(|| format!("no server for SNI {sni:?}"))?;
        let stream_tls =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(server.config.clone()))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
        serve_http(outbound, stream_tls, peer, port, true).await;
        Ok(())
    } else if plaintext {
        serve_http(outbound, stream, peer, port, false).await;
        Ok(())
    } else {
        Err("plaintext on a port with TLS servers only".into())
    }
}

/// HTTP on a gateway connection: each request routed by its Host on the listener's port.
async fn serve_http<T>(outbound: Outbound, io: T, peer: SocketAddr, port: u16, tls: bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let drain = outbound.drain.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let outbound = outbound.clone();
        async move {
            Ok::<_, std::convert::Infallible>(handle(outbound, request, peer, port, tls).await)
        }
    });
    let _ = drain
        .serve(crate::http_server().serve_connection_with_upgrades(
            hyper_util::rt::TokioIo::new(crate::framing::FramingGuard::new(io)),
            service,
        ))
        .await;
}

/// One request at the gateway.
async fn handle(
    outbound: Outbound,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
) -> Response<Body> {
    if let Some(refused) = prepare(&mut request, peer, port, tls) {
        return refused;
    }
    if !tls && let Some(redirect) = https_redirect(&outbound, &request, port) {
        return redirect;
    }
    outbound.handle(request, Some(peer.ip())).await
}

/// The 301 to `https://<Host><path>` for a plaintext request to a host whose virtual host
/// requires TLS (a Gateway server's `httpsRedirect`), as Envoy answers it.
fn https_redirect(
    outbound: &Outbound,
    request: &Request<Incoming>,
    port: u16,
) -> Option<Response<Body>> {
    let authority = request.uri().authority()?;
    let config = outbound.config.borrow();
    let virtual_host = config
        .model
        .route_table(port)?
        .virtual_host(authority.as_str())?;
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
    let mut response = local_response(StatusCode::MOVED_PERMANENTLY, None, "");
    response.headers_mut().insert(LOCATION, location);
    Some(response)
}

/// Addresses a request to its Host on the gateway's `port` and adds the forwarding headers;
/// `Some` answer instead when it cannot be served.
fn prepare(
    request: &mut Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    tls: bool,
) -> Option<Response<Body>> {
    // A gateway is not a forward proxy: no tunnels through it.
    if request.method() == Method::CONNECT {
        return Some(local_response(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "CONNECT is not served at the gateway\n",
        ));
    }
    let host = request.uri().host().map(str::to_string).or_else(|| {
        let host = request.headers().get(HOST)?.to_str().ok()?;
        let authority = host.parse::<hyper::http::uri::Authority>().ok()?;
        Some(authority.host().to_string())
    });
    let Some(host) = host else {
        return Some(local_response(
            StatusCode::BAD_REQUEST,
            None,
            "the request names no host\n",
        ));
    };
    if let Ok(authority) = format!("{host}:{port}").parse() {
        crate::outbound::address_to(request, authority);
    }
    let headers = request.headers_mut();
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    None
}
