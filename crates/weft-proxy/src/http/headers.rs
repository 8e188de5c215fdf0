//! Headers the proxy itself reads, writes or removes: the hop-by-hop headers it never
//! forwards, a route's header changes, header values as Envoy's matchers see them, and the
//! names of the headers it adds (the caller's identity, the original protocol across an
//! HTTP/2 hop, the response flags in debug mode).

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Request, Uri};

use crate::model::HeaderChanges;

/// The response header that carries Envoy-style response flags, with `--debug-headers`.
pub static RESPONSE_FLAGS: HeaderName = HeaderName::from_static("weft-response-flags");

/// The header that tells the application who called.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Header that carries an HTTP/1.1 request's protocol across an HTTP/2 hop between sidecars.
pub static ORIGINAL_PROTOCOL: HeaderName = HeaderName::from_static("weft-orig-proto");

/// gRPC's status, in the trailers or (for an error without a body) the response head.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Applies header changes: remove, then set (overwrite), then add (append). The names and
/// values were parsed when the configuration arrived.
pub fn apply_changes(headers: &mut HeaderMap, changes: &HeaderChanges) {
    for name in &changes.remove {
        headers.remove(name);
    }
    for (name, value) in &changes.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &changes.add {
        headers.append(name.clone(), value.clone());
    }
}

/// A request header's value as Envoy's matchers see it: pseudo-headers (`:method`,
/// `:authority`, `:path`, `:scheme`) included, repeated headers joined with commas.
pub fn header_value(request: &Parts, name: &str, authority: &str) -> Option<String> {
    match name {
        ":method" => Some(request.method.as_str().to_string()),
        ":authority" => Some(authority.to_string()),
        ":path" => request.uri.path_and_query().map(|p| p.as_str().to_string()),
        ":scheme" => Some("http".to_string()),
        name => {
            let values: Vec<&str> = request
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    }
}

/// Makes a request's URI absolute with `authority`, so it is routed as naming it.
pub fn address_to(request: &mut Request<Incoming>, authority: Authority) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
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
