//! How a route changes where a request goes: the path sent upstream after a prefix or
//! regex rewrite, and the `Location` of a redirect.

use hyper::body::Bytes;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Response, Uri};

use crate::http::{Body, respond};
use crate::model::{Forward, PathMatch, Redirect, Route};

/// The path (and query) sent upstream after the route's rewrite; `None` when the route does
/// not rewrite it.
pub fn rewritten_path(forward: &Forward, route: &Route, uri: &Uri) -> Option<String> {
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

/// The redirect a route answers with: its scheme, host, port and path, each kept from the
/// request unless the route replaces it.
pub fn redirect(redirect: &Redirect, route: &Route, uri: &Uri, authority: &str) -> Response<Body> {
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
    let mut response = respond(redirect.status, Bytes::new());
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}
