//! The demo application of `weft demo`: a bookshop of four small services in the shape of
//! Istio's Bookinfo, written for Weft.
//!
//! * `productpage` serves an HTML page about one book. It calls `details` and `reviews` and
//!   shows which version of `reviews` answered, for people (a line of text) and for machines
//!   (`data-reviews-version` on the reviews section).
//! * `details` answers the book's details as JSON.
//! * `reviews` answers two reviews. `v1` shows no rating; `v2` and `v3` ask `ratings` and show
//!   stars, black for `v2` and red for `v3`.
//! * `ratings` answers each reviewer's stars.
//!
//! Every service answers `/health`, and passes the trace and routing headers it received
//! (`x-request-id`, B3, W3C trace context, `user-agent`, `end-user`, `cookie`) on to the
//! services it calls, as a meshed application must for traces to join up and for header
//! routes to see them. Calls go through the environment's HTTP proxy ([`client`]).

pub mod client;

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

pub use client::Client;

/// Headers a service passes on to the services it calls.
pub const FORWARDED_HEADERS: [&str; 14] = [
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "user-agent",
    "end-user",
    "cookie",
];

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// The HTML page.
    Productpage,
    /// The book's details.
    Details,
    /// Reviews, in three versions.
    Reviews,
    /// Star ratings.
    Ratings,
}

impl App {
    /// Every service, in the order a demo starts them (callees first).
    pub const ALL: [App; 4] = [App::Ratings, App::Details, App::Reviews, App::Productpage];

    /// The service's name.
    pub fn name(self) -> &'static str {
        match self {
            App::Productpage => "productpage",
            App::Details => "details",
            App::Reviews => "reviews",
            App::Ratings => "ratings",
        }
    }
}

impl fmt::Display for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for App {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        App::ALL
            .into_iter()
            .find(|app| app.name() == name)
            .ok_or_else(|| {
                format!("no demo service {name:?}: productpage, details, reviews or ratings")
            })
    }
}

/// Where a service finds the services it calls.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Base URL of `details`.
    pub details: String,
    /// Base URL of `reviews`.
    pub reviews: String,
    /// Base URL of `ratings`.
    pub ratings: String,
}

impl Default for Upstreams {
    /// The mesh names, as services under `weft run` call them through their sidecars.
    fn default() -> Self {
        Self {
            details: "http://details:9080".into(),
            reviews: "http://reviews:9080".into(),
            ratings: "http://ratings:9080".into(),
        }
    }
}

/// One running service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Which service.
    pub app: App,
    /// Its version (`v1`, `v2`, `v3`).
    pub version: String,
    /// The services it calls.
    pub upstreams: Upstreams,
    /// How it calls them.
    pub client: Client,
}

impl Service {
    /// Serves HTTP/1.1 and HTTP/2 on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = self.clone();
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |request| {
                    let service = service.clone();
                    async move { Ok::<_, Infallible>(service.handle(request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        if path == "/health" {
            return text(StatusCode::OK, "ok\n");
        }
        let forwarded = forwarded(request.headers());
        match (self.app, path.as_str()) {
            (App::Productpage, "/") => html(StatusCode::OK, INDEX.to_string()),
            (App::Productpage, "/productpage") => self.product_page(&forwarded).await,
            (App::Details, _) if book_id(&path, "/details/").is_some() => {
                json_response(StatusCode::OK, &details(book_id(&path, "/details/")))
            }
            (App::Ratings, _) if book_id(&path, "/ratings/").is_some() => json_response(
                StatusCode::OK,
                &json!({
                    "id": book_id(&path, "/ratings/"),
                    "ratings": {"Reviewer1": 5, "Reviewer2": 4},
                }),
            ),
            (App::Reviews, _) if book_id(&path, "/reviews/").is_some() => {
                let id = book_id(&path, "/reviews/").unwrap_or_default();
                self.reviews(id, &forwarded).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// `reviews`: two reviews, with stars from `ratings` in `v2` (black) and `v3` (red).
    async fn reviews(&self, id: u32, forwarded: &HeaderMap) -> Response<Full<Bytes>> {
        let color = match self.version.as_str() {
            "v2" => Some("black"),
            "v3" => Some("red"),
            _ => None,
        };
        let ratings = match color {
            Some(_) => {
                let url = format!("{}/ratings/{id}", self.upstreams.ratings);
                match self.client.get(&url, forwarded).await {
                    Ok((status, body)) if status.is_success() => {
                        serde_json::from_slice::<serde_json::Value>(&body).ok()
                    }
                    Ok((status, _)) => {
                        tracing::warn!(%url, %status, "ratings answered with an error");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "ratings unreachable");
                        None
                    }
                }
            }
            None => None,
        };
        let review = |reviewer: &str, text: &str| {
            let mut review = json!({"reviewer": reviewer, "text": text});
            if let Some(color) = color {
                review["rating"] = match ratings
                    .as_ref()
                    .and_then(|r| r["ratings"][reviewer].as_u64())
                {
                    Some(stars) => json!({"stars": stars, "color": color}),
                    None => json!({"error": "ratings service is currently unavailable"}),
                };
            }
            review
        };
        json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "version": self.version,
                "reviews": [
                    review("Reviewer1", "A comedy of two pairs of twins that never gets old."),
                    review("Reviewer2", "Quick and sharp; the confusion is the point."),
                ],
            }),
        )
    }

    /// `productpage`: the book's page, from `details` and `reviews`.
    async fn product_page(&self, forwarded: &HeaderMap) -> Response<Full<Bytes>> {
        let details_url = format!("{}/details/0", self.upstreams.details);
        let reviews_url = format!("{}/reviews/0", self.upstreams.reviews);
        let (details, reviews) = tokio::join!(
            self.client.get(&details_url, forwarded),
            self.client.get(&reviews_url, forwarded)
        );
        let parsed = |answer: anyhow::Result<(StatusCode, Bytes)>, what: &str| match answer {
            Ok((status, body)) if status.is_success() => {
                serde_json::from_slice::<serde_json::Value>(&body).ok()
            }
            Ok((status, body)) => {
                tracing::warn!(what, %status, body = %String::from_utf8_lossy(&body), "error answer");
                None
            }
            Err(error) => {
                tracing::warn!(what, error = format!("{error:#}"), "call failed");
                None
            }
        };
        let details = parsed(details, "details");
        let reviews = parsed(reviews, "reviews");
        html(
            StatusCode::OK,
            product_html(details.as_ref(), reviews.as_ref()),
        )
    }
}

/// The id at the end of `/details/<id>` and the like.
fn book_id(path: &str, prefix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?.parse().ok()
}

fn details(id: Option<u32>) -> serde_json::Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1594,
        "type": "paperback",
        "pages": 112,
        "publisher": "Weft Demo Press",
        "language": "English",
        "ISBN-10": "0000000000",
    })
}

/// Header values pass through HTML escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const INDEX: &str = "<!doctype html>\n<html><head><title>Weft demo bookshop</title></head>\n<body><h1>Weft demo bookshop</h1>\n<p><a href=\"/productpage\">The Comedy of Errors</a></p></body></html>\n";

/// The product page. The reviews section says which version answered in
/// `data-reviews-version` (`unavailable` when none did).
pub fn product_html(
    details: Option<&serde_json::Value>,
    reviews: Option<&serde_json::Value>,
) -> String {
    let details_html = match details {
        Some(d) => {
            let rows: String = ["type", "pages", "publisher", "language", "ISBN-10"]
                .iter()
                .map(|key| {
                    let value = match &d[*key] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!(
                        "<tr><th>{}</th><td>{}</td></tr>",
                        escape(key),
                        escape(&value)
                    )
                })
                .collect();
            format!("<table>{rows}</table>")
        }
        None => "<p class=\"error\">Sorry, product details are currently unavailable.</p>".into(),
    };
    let (version, reviews_html) = match reviews {
        Some(r) => {
            let version = r["version"].as_str().unwrap_or("unknown").to_string();
            let items: String = r["reviews"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|review| {
                    let stars = match (&review["rating"]["stars"], review["rating"]["color"].as_str()) {
                        (serde_json::Value::Number(n), Some(color)) => {
                            let n = n.as_u64().unwrap_or(0).min(5) as usize;
                            format!(
                                "<span class=\"stars\" style=\"color:{color}\" data-stars=\"{n}\">{}{}</span>",
                                "\u{2605}".repeat(n),
                                "\u{2606}".repeat(5 - n)
                            )
                        }
                        _ if review["rating"]["error"].is_string() => {
                            "<span class=\"error\">Ratings service is currently unavailable</span>".into()
                        }
                        _ => String::new(),
                    };
                    format!(
                        "<blockquote><p>{}</p><footer>{} {stars}</footer></blockquote>",
                        escape(review["text"].as_str().unwrap_or_default()),
                        escape(review["reviewer"].as_str().unwrap_or_default()),
                    )
                })
                .collect();
            (
                version.clone(),
                format!(
                    "<p class=\"served-by\">Reviews served by reviews {}</p>{items}",
                    escape(&version)
                ),
            )
        }
        None => (
            "unavailable".to_string(),
            "<p class=\"error\">Sorry, product reviews are currently unavailable.</p>".to_string(),
        ),
    };
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>The Comedy of Errors</title></head>\n<body>\n<h1>The Comedy of Errors</h1>\n<p>Wikipedia summary: a farce about two sets of identical twins separated at birth.</p>\n<section id=\"details\"><h2>Book details</h2>{details_html}</section>\n<section id=\"reviews\" data-reviews-version=\"{}\"><h2>Book reviews</h2>{reviews_html}</section>\n</body></html>\n",
        escape(&version)
    )
}

/// The headers of `incoming` a service passes on.
pub fn forwarded(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in incoming.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    headers
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/html; charset=utf-8", Bytes::from(body))
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", Bytes::from(value.to_string()))
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds `address` and serves `service` there; what `weft demo-app` runs.
pub async fn run(service: Service, address: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(app = %service.app, version = service.version, %address, "serving");
    service.serve(listener).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_marks_the_reviews_version_and_its_stars() {
        let reviews = json!({
            "version": "v3",
            "reviews": [{"reviewer": "R1", "text": "<b>", "rating": {"stars": 4, "color": "red"}}],
        });
        let page = product_html(Some(&details(Some(0))), Some(&reviews));
        assert!(page.contains("data-reviews-version=\"v3\""), "{page}");
        assert!(page.contains("color:red\" data-stars=\"4\""), "{page}");
        assert!(page.contains("&lt;b&gt;"), "review text is escaped: {page}");
        let page = product_html(None, None);
        assert!(
            page.contains("data-reviews-version=\"unavailable\""),
            "{page}"
        );
        assert!(page.contains("details are currently unavailable"), "{page}");
    }

    #[test]
    fn only_trace_and_routing_headers_are_passed_on() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        incoming.insert("end-user", HeaderValue::from_static("jason"));
        incoming.insert("authorization", HeaderValue::from_static("secret"));
        let out = forwarded(&incoming);
        assert_eq!(out.len(), 2);
        assert!(out.get("authorization").is_none());
    }

    #[test]
    fn services_are_named() {
        assert_eq!("reviews".parse::<App>(), Ok(App::Reviews));
        assert!("nope".parse::<App>().is_err());
    }
}
