//! Byte tunnels: `CONNECT host:port` from the application, opaque TCP to a mesh service
//! (from a per-upstream port), and the two halves of an upgraded connection (WebSocket)
//! spliced together after `101 Switching Protocols`.
//!
//! A `CONNECT` to a mesh service goes to an endpoint the control plane gave, wherever that
//! is. Any other target is an address the application chose: a literal one, or the
//! addresses a name resolves to (resolved once, and only the allowed ones dialled, so a
//! name cannot change its answer between the check and the connection). None may be a
//! loopback, link-local or unspecified address, nor one of this proxy's own listening
//! ports ([`forbidden`], [`Listening`]); the client gets `403 connect_denied` instead.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::inputs::Proxy;
use crate::error::{ConnectError, ProxyError, UpstreamError};
use crate::http::{Body, respond};
use crate::model::Cluster;
use crate::upstream::Stream;
use crate::xds::Applied;

/// How long a connection to a host outside the mesh may take (resolving its name
/// included).
const OUTSIDE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where this proxy listens, so that no tunnel leads back into it.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    /// The addresses it is reached on besides loopback (its bind address and the address
    /// peers reach it on).
    pub addresses: Vec<IpAddr>,
    /// Its listening ports (a gateway's also come from its configuration).
    pub ports: Vec<u16>,
}

impl Proxy {
    /// `CONNECT host:port`: a byte tunnel to a mesh service (an endpoint of its cluster, over
    /// mesh mTLS when it is a mesh workload), or, for a host the mesh does not know, straight
    /// to it (Istio's `ALLOW_ANY`) unless it is an address tunnels may not lead to. The 200
    /// goes out once the upstream is connected.
    pub(super) async fn tunnel(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        let authority = request
            .uri()
            .authority()
            .cloned()
            .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
        let port = authority
            .port_u16()
            .ok_or(ProxyError::BadRequest("CONNECT needs host:port"))?;
        let config = self.config.borrow().clone();
        let mut upstream = match mesh_cluster(&config, &self.namespace, authority.host(), port) {
            Some(cluster) => self.connect_endpoint(cluster).await?,
            None => {
                let target = authority.as_str();
                let addresses = self
                    .outside_addresses(&config, authority.host(), port, target)
                    .await?;
                Box::new(connect_outside(&addresses, target).await?)
            }
        };
        drop(config);
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let mut downstream = TokioIo::new(upgraded);
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                }
                Err(error) => tracing::debug!(%error, "CONNECT tunnel was not established"),
            }
        });
        Ok(respond(StatusCode::OK, Bytes::new()))
    }

    /// A byte stream to `host:port`: an endpoint of the mesh service (over mesh mTLS when
    /// it is a mesh workload), or the host itself when the mesh does not know it. A short
    /// name resolves in this workload's namespace. For the per-upstream ports, whose
    /// targets the operator gave (`--upstream`), so not checked as a `CONNECT`'s are.
    pub async fn connect_to(&self, host: &str, port: u16) -> Result<Box<dyn Stream>, ProxyError> {
        let config = self.config.borrow().clone();
        if let Some(cluster) = mesh_cluster(&config, &self.namespace, host, port) {
            return self.connect_endpoint(cluster).await;
        }
        let target = format!("{host}:{port}");
        let addresses = resolve(host, port, &target).await?;
        Ok(Box::new(connect_outside(&addresses, &target).await?))
    }

    /// A connection to an endpoint the cluster's balancer picks.
    async fn connect_endpoint(&self, cluster: &Cluster) -> Result<Box<dyn Stream>, ProxyError> {
        let pick = self
            .balancers
            .pick(cluster, None)
            .ok_or(ProxyError::NoHealthyUpstream)?;
        Ok(self
            .pool
            .connect_stream(
                pick.endpoint.address,
                cluster.tls_for(pick.endpoint),
                cluster.connect_timeout,
            )
            .await?)
    }

    /// The addresses a `CONNECT` outside the mesh may dial: the literal address, or those
    /// its name resolves to, less the ones tunnels may not lead to; refused when none is
    /// left.
    async fn outside_addresses(
        &self,
        config: &Applied,
        host: &str,
        port: u16,
        target: &str,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let literal = unbracketed(host).parse::<IpAddr>().ok();
        let candidates = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => resolve(host, port, target).await?,
        };
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = candidates
            .into_iter()
            .filter(|address| match self.refusal(config, *address) {
                Some(reason) => {
                    refusal.get_or_insert(reason);
                    false
                }
                None => true,
            })
            .collect();
        match refusal {
            Some(reason) if allowed.is_empty() => {
                tracing::debug!(target, reason, "CONNECT refused");
                Err(ProxyError::TunnelDenied {
                    target: target.to_string(),
                    reason,
                })
            }
            _ => Ok(allowed),
        }
    }

    /// Why a tunnel may not lead to `address`, if it may not.
    fn refusal(&self, config: &Applied, address: SocketAddr) -> Option<&'static str> {
        let ip = address.ip().to_canonical();
        if let Some(reason) = forbidden(ip) {
            return Some(reason);
        }
        let gateway_port = config.model.gateway_ports.contains_key(&address.port());
        self.listening
            .owns(SocketAddr::new(ip, address.port()), gateway_port)
            .then_some("this proxy's own port")
    }
}

impl Listening {
    /// Whether `address` is one of this proxy's listeners (`gateway_port`: its port is one
    /// of the gateway's).
    fn owns(&self, address: SocketAddr, gateway_port: bool) -> bool {
        (gateway_port || self.ports.contains(&address.port()))
            && self.addresses.contains(&address.ip())
    }
}

/// Why no tunnel may lead to `ip`, if none may: loopback (`127.0.0.0/8`, `::1`),
/// link-local (`169.254.0.0/16`, `fe80::/10`) and unspecified addresses (`0.0.0.0/8`,
/// `::`) reach this host or its cloud's metadata service, not a destination of the mesh.
/// IPv4 addresses mapped into IPv6 count as themselves.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        ip if ip.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("a link-local address"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("an unspecified address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("an unspecified address"),
        _ => None,
    }
}

/// The mesh cluster a `host:port` names: the host as it is, or a short name completed in
/// `namespace`.
fn mesh_cluster<'a>(
    config: &'a Applied,
    namespace: &str,
    host: &str,
    port: u16,
) -> Option<&'a Cluster> {
    [
        host.to_string(),
        format!("{host}.{namespace}.svc.cluster.local"),
        format!("{host}.svc.cluster.local"),
        format!("{host}.cluster.local"),
    ]
    .iter()
    .find_map(|candidate| {
        config
            .model
            .clusters
            .get(&format!("outbound|{port}||{candidate}"))
            .map(|cluster| &**cluster)
    })
}

/// An IPv6 host without the brackets an authority writes it in.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The addresses `host` resolves to (a literal address to itself).
async fn resolve(host: &str, port: u16, target: &str) -> Result<Vec<SocketAddr>, ProxyError> {
    let resolved = tokio::time::timeout(
        OUTSIDE_CONNECT_TIMEOUT,
        tokio::net::lookup_host((unbracketed(host), port)),
    )
    .await
    .map_err(|_| ConnectError::Timeout(target.to_string()))
    .and_then(|r| {
        r.map_err(|error| ConnectError::Io {
            target: target.to_string(),
            error,
        })
    })
    .map_err(UpstreamError::Connect)?;
    Ok(resolved.collect())
}

/// A TCP connection to the first of `addresses` that takes it.
async fn connect_outside(addresses: &[SocketAddr], target: &str) -> Result<TcpStream, ProxyError> {
    let connecting = async {
        let mut failed = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => failed = error,
            }
        }
        Err(failed)
    };
    let stream = tokio::time::timeout(OUTSIDE_CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ConnectError::Timeout(target.to_string()))
        .and_then(|r| {
            r.map_err(|error| ConnectError::Io {
                target: target.to_string(),
                error,
            })
        })
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Once both sides of an upgrade have switched protocols, copies bytes between them until
/// either closes.
pub fn splice(downstream: Option<OnUpgrade>, upstream: Option<OnUpgrade>) {
    let (Some(downstream), Some(upstream)) = (downstream, upstream) else {
        return;
    };
    tokio::spawn(async move {
        if let (Ok(downstream), Ok(upstream)) = tokio::join!(downstream, upstream) {
            let mut downstream = TokioIo::new(downstream);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_never_lead_to_this_host_or_its_link() {
        for (ip, reason) in [
            ("127.0.0.1", Some("a loopback address")),
            ("127.9.9.9", Some("a loopback address")),
            ("::1", Some("a loopback address")),
            ("::ffff:127.0.0.1", Some("a loopback address")),
            ("169.254.169.254", Some("a link-local address")),
            ("fe80::1", Some("a link-local address")),
            ("febf::1", Some("a link-local address")),
            ("::ffff:169.254.1.1", Some("a link-local address")),
            ("0.0.0.0", Some("an unspecified address")),
            ("0.1.2.3", Some("an unspecified address")),
            ("::", Some("an unspecified address")),
            ("10.0.0.5", None),
            ("93.184.216.34", None),
            ("fec0::1", None),
            ("2001:db8::1", None),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(ip), reason, "{ip}");
        }
    }

    #[test]
    fn the_proxys_own_ports_are_its_own_at_its_own_addresses_only() {
        let listening = Listening {
            addresses: vec!["10.0.0.5".parse().unwrap()],
            ports: vec![15006, 15020],
        };
        let at = |address: &str| address.parse::<SocketAddr>().unwrap();
        assert!(listening.owns(at("10.0.0.5:15006"), false));
        assert!(listening.owns(at("10.0.0.5:8443"), true));
        assert!(!listening.owns(at("10.0.0.5:8080"), false));
        assert!(!listening.owns(at("10.0.0.6:15006"), false));
    }

    #[test]
    fn a_bracketed_ipv6_host_is_read_as_its_address() {
        assert_eq!(unbracketed("[::1]"), "::1");
        assert_eq!(unbracketed("echo"), "echo");
        assert_eq!(unbracketed("[::1"), "[::1");
    }
}
