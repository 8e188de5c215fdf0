//! The Weft sidecar proxy (`weft proxy`, and `weft gateway` at the mesh's edge): the data
//! plane beside one workload. [`app`] starts it; the modules below follow one request, in
//! the order it meets them.
//!
//! On the client's side:
//!
//! 1. [`listener::outbound`] accepts the application's connection (the explicit proxy port,
//!    a redirected connection, a per-upstream port) and serves HTTP on it
//!    ([`listener::serve`]; an undeclared port's protocol is told by [`detect`]);
//! 2. [`proxy`] handles each request in phases: [`route`] picks its route and weighted
//!    cluster, [`proxy::forward`] plans the forwarding, [`proxy::retry`] makes the attempts;
//! 3. [`upstream::balance`] picks an endpoint under the cluster's circuit breakers and
//!    outlier detection;
//! 4. [`upstream`] sends it on a pooled connection ([`upstream::connect`]: TCP, mesh mTLS
//!    from [`tls`] with the certificate of [`tls::identity`], HTTP/1.1 or HTTP/2;
//!    [`upstream::h1`] for requests without a body);
//! 5. [`telemetry`] records it when the response comes back; what went wrong on the way is
//!    a [`error::ProxyError`], answered in one place.
//!
//! On the server's side, [`listener::inbound`] terminates mTLS (or takes plaintext, as
//! PeerAuthentication says), puts the caller's identity in `x-forwarded-client-cert`,
//! verifies its token ([`authn`]), authorizes the request ([`authz`]) and sends it to the application through
//! [`upstream`].
//!
//! Configuration arrives over ADS ([`xds`]), is turned into the proxy's own [`model`] by
//! [`xds::adapter`] (where it is parsed once, and refused if it cannot be), and is swapped
//! whole; [`admin`] shows it. [`drain`] ends it all gracefully. [`http`] holds the HTTP
//! basics every part shares.
//!
//! Dependencies point one way: `app` → `listener` → `proxy` → {`route`, `authn`, `authz`,
//! `upstream`, `telemetry`} → {`model`, `http`, `error`}; `xds` builds the `model`.

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod detect;
pub mod drain;
pub mod error;
pub mod http;
pub mod listener;
pub mod model;
pub mod proxy;
pub mod route;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds;

pub use app::{Ports, Readiness, Settings, StartError, start};
pub use listener::serve::ConnectionLimits;
