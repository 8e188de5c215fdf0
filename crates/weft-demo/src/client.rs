//! The demo services' HTTP client. It honours `http_proxy`/`HTTP_PROXY` and `no_proxy`/
//! `NO_PROXY` as curl does, which is how a service under `weft run` reaches the others by
//! their mesh names through its sidecar; without a proxy it connects to the URL's host.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a call to another service may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends GET requests, through the environment's HTTP proxy when it applies.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `host:port` of the HTTP proxy.
    proxy: Option<String>,
    /// Host names (and `.suffix` domains) reached without the proxy.
    no_proxy: Vec<String>,
}

impl Client {
    /// A client configured from the environment.
    pub fn from_env() -> Self {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        };
        let proxy = var(["http_proxy", "HTTP_PROXY"]).and_then(|url| {
            url.parse::<Uri>()
                .ok()
                .and_then(|uri| uri.authority().map(|a| a.to_string()))
        });
        let no_proxy = var(["no_proxy", "NO_PROXY"])
            .map(|list| {
                list.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Self { proxy, no_proxy }
    }

    /// Whether a request to `host` goes through the proxy.
    fn proxied(&self, host: &str) -> Option<&str> {
        let host = host.to_ascii_lowercase();
        let bypass = self.no_proxy.iter().any(|entry| {
            entry == "*"
                || *entry == host
                || entry
                    .strip_prefix('.')
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
        });
        if bypass { None } else { self.proxy.as_deref() }
    }

    /// GETs `url` with `headers` added; returns the status and the whole body.
    pub async fn get(&self, url: &str, headers: &HeaderMap) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(CALL_TIMEOUT, self.get_now(url, headers))
            .await
            .with_context(|| format!("GET {url}: no answer within {CALL_TIMEOUT:?}"))?
    }

    async fn get_now(&self, url: &str, headers: &HeaderMap) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            bail!("the URL {url} names no host");
        };
        let port = uri.port_u16().unwrap_or(80);
        let via_proxy = self.proxied(host);
        let stream = match via_proxy {
            Some(proxy) => TcpStream::connect(proxy).await,
            None => TcpStream::connect((host, port)).await,
        }
        .with_context(|| format!("connecting to {}", via_proxy.unwrap_or(authority.as_str())))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        // Through a proxy the request line names the whole URL; directly, only the path.
        let target = match via_proxy {
            Some(_) => uri.clone(),
            None => uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone())),
        };
        let mut request = Request::get(target)
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        request.headers_mut().extend(headers.clone());
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_str(authority.as_str())?);
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to GET {url}"))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_lists_bypass_the_proxy() {
        let client = Client {
            proxy: Some("127.0.0.1:15001".into()),
            no_proxy: vec!["localhost".into(), "127.0.0.1".into(), ".internal".into()],
        };
        assert_eq!(client.proxied("details"), Some("127.0.0.1:15001"));
        assert_eq!(client.proxied("LOCALHOST"), None);
        assert_eq!(client.proxied("127.0.0.1"), None);
        assert_eq!(client.proxied("db.internal"), None);
        assert_eq!(client.proxied("internal"), Some("127.0.0.1:15001"));
    }
}
