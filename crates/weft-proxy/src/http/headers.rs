//! Headers the proxy itself reads, writes or removes: the hop-by-hop headers it never
//! forwards (and the ones a client cannot make it drop), the upgrade a request asks for, a
//! route's header changes, header values as Envoy's matchers see them, and the names of the
//! headers it adds (the caller's identity, the original protocol across an HTTP/2 hop, the
//! response flags in debug mode).

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

/// Whether a header is the proxy's to set or to rely on, so a `Connection` header cannot
/// name it away: `Host` (Envoy never lets a filter remove it either), `Content-Length`, the
/// forwarding headers (`x-forwarded-*`, the caller's identity in `x-forwarded-client-cert`
/// among them), `x-request-id`, Envoy's `x-envoy-*` and Weft's own `weft-*`.
fn proxy_owned(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(name, "host" | "content-length" | "x-request-id")
        || name.starts_with("x-forwarded-")
        || name.starts_with("x-envoy-")
        || name.starts_with("weft-")
}

/// Removes hop-by-hop headers, and those the `Connection` header names — except the ones
/// the proxy owns ([`proxy_owned`]): a client naming `X-Forwarded-For` or `Host` in
/// `Connection` does not make the proxy drop them (Envoy does not remove headers a
/// `Connection` names at all). An upgrade keeps `Upgrade` and `Connection: upgrade`, the
/// hop-by-hop headers the next hop needs for it; whether the upgrade is allowed is
/// [`upgrade`]'s to tell. An `h2c` upgrade is not an upgrade a proxy passes on: it is
/// removed with its `HTTP2-Settings`, and the request goes on as plain HTTP/1.1, as Envoy
/// does. Most messages carry none of these, which one pass over their names finds.
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
            upgrade = headers
                .get(hyper::header::UPGRADE)
                .filter(|value| !value.as_bytes().eq_ignore_ascii_case(b"h2c"))
                .cloned();
        } else if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
            // The connection's own options, not header names (`keep-alive` is removed below).
        } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !proxy_owned(&name)
        {
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
    match upgrade {
        Some(upgrade) => {
            headers.insert(hyper::header::UPGRADE, upgrade);
            headers.insert(
                hyper::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
        // It only ever travels with an `h2c` upgrade, which is not passed on.
        None => {
            headers.remove(&HTTP2_SETTINGS);
        }
    }
}

/// The header an `h2c` upgrade carries its HTTP/2 settings in.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The upgrade a request asks for, once [`strip_hop_by_hop`] kept what an upgrade needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// A plain request.
    None,
    /// `Upgrade: websocket`, the one upgrade Istio configures (Envoy's `upgrade_configs`).
    WebSocket,
    /// Anything else, which Envoy refuses (`403`, `upgrade_failed`).
    Other,
}

/// The upgrade a request asks for: its `Upgrade` header, the whole value compared without
/// case as Envoy compares it with an `upgrade_type` (so `websocket, h2c` is not WebSocket).
pub fn upgrade(headers: &HeaderMap) -> Upgrade {
    match headers.get(hyper::header::UPGRADE) {
        None => Upgrade::None,
        Some(value)
            if value
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"websocket") =>
        {
            Upgrade::WebSocket
        }
        Some(_) => Upgrade::Other,
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
    fn connection_cannot_name_away_the_headers_the_proxy_owns() {
        let mut message = headers(&[
            (
                "connection",
                "X-Forwarded-For, x-forwarded-proto, Host, X-Forwarded-Client-Cert, x-request-id",
            ),
            (
                "connection",
                "X-Envoy-Original-Path, weft-orig-proto, content-length, x-gone",
            ),
            ("host", "a"),
            ("content-length", "0"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-client-cert", "By=x"),
            ("x-request-id", "r"),
            ("x-envoy-original-path", "/p"),
            ("weft-orig-proto", "HTTP/1.1"),
            ("x-gone", "1"),
        ]);
        strip_hop_by_hop(&mut message);
        assert_eq!(
            message,
            headers(&[
                ("host", "a"),
                ("content-length", "0"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-client-cert", "By=x"),
                ("x-request-id", "r"),
                ("x-envoy-original-path", "/p"),
                ("weft-orig-proto", "HTTP/1.1"),
            ])
        );
    }

    #[test]
    fn an_h2c_upgrade_is_dropped_and_the_request_goes_on_plain() {
        let mut message = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut message);
        assert_eq!(message, headers(&[("x-kept", "1")]));
        assert_eq!(upgrade(&message), Upgrade::None);
    }

    #[test]
    fn only_websocket_is_an_allowed_upgrade() {
        for (value, expected) in [
            ("websocket", Upgrade::WebSocket),
            ("WebSocket", Upgrade::WebSocket),
            ("websocket, h2c", Upgrade::Other),
            ("foo/1", Upgrade::Other),
            ("", Upgrade::Other),
        ] {
            let mut message = headers(&[("connection", "upgrade")]);
            message.insert(
                hyper::header::UPGRADE,
                HeaderValue::from_str(value).unwrap(),
            );
            strip_hop_by_hop(&mut message);
            assert_eq!(upgrade(&message), expected, "{value:?}");
        }
        // An `Upgrade` that `Connection` does not name is no upgrade, and is removed.
        let mut message = headers(&[("upgrade", "foo")]);
        strip_hop_by_hop(&mut message);
        assert_eq!(upgrade(&message), Upgrade::None);
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
