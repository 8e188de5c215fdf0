//! Byte tunnels: `CONNECT host:port` from the application, opaque TCP to a mesh service
//! (from a per-upstream port), and the two halves of an upgraded connection (WebSocket)
//! spliced together after `101 Switching Protocols`.

use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::inputs::Proxy;
use crate::error::{ConnectError, ProxyError, UpstreamError};
use crate::http::{Body, respond};
use crate::upstream::Stream;

/// How long a connection to a host outside the mesh may take.
const OUTSIDE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    /// `CONNECT host:port`: a byte tunnel to a mesh service (an endpoint of its cluster, over
    /// mesh mTLS when it is a mesh workload), or, for a host the mesh does not know, straight
    /// to it (Istio's `ALLOW_ANY`). The 200 goes out once the upstream is connected.
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
        let mut upstream = self.connect_to(authority.host(), port).await?;
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
    /// name resolves in this workload's namespace.
    pub async fn connect_to(&self, host: &str, port: u16) -> Result<Box<dyn Stream>, ProxyError> {
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
        let Some(cluster) = cluster else {
            let target = format!("{host}:{port}");
            let connected = tokio::time::timeout(
                OUTSIDE_CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host, port)),
            )
            .await
            .map_err(|_| ConnectError::Timeout(target.clone()))
            .and_then(|r| r.map_err(|error| ConnectError::Io { target, error }))
            .map_err(UpstreamError::Connect)?;
            return Ok(Box::new(connected));
        };
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
