//! The proxy end to end. Two workloads, each behind a real `weft proxy`, configured by a real
//! `weft control`: a client calls through its sidecar's outbound (explicit HTTP proxy)
//! listener; the request crosses to the server's sidecar over mesh mTLS and reaches the
//! server application with the caller's SPIFFE ID in `x-forwarded-client-cert`.
//!
//! One test binary (linking each one takes long on a small machine), one module per feature:
//!
//! * [`tls`]: mesh mTLS, client certificates, the caller's identity, authorization, TLS
//!   origination to servers outside the mesh.
//! * [`routing`]: unknown hosts, weighted and header routes, load balancing.
//! * [`resilience`]: no control plane, retries and faults, outlier detection, the circuit
//!   breaker, draining.
//! * [`protocols`]: gRPC, opaque TCP, WebSocket, HTTP/2 between sidecars, undeclared ports.
//! * [`limits`]: bad input at both listeners, a gigabyte in constant memory.
//! * [`authz`]: authorization that never fails open (path normalization, where policies
//!   apply, matcher case rules, one authority per request, unreadable policies refused).
//! * [`hardening`]: listener binds, CONNECT targets, proxy-set headers against hostile
//!   clients.
//! * [`identity`]: registration only as what a stream proves; sidecars over the TLS xDS
//!   port.
//!
//! and what they share: [`mesh`] (the harness, [`mesh::Mesh`], and the configuration it
//! serves), [`apps`] (the fake applications behind the server sidecars) and [`clients`]
//! (raw HTTP/1.1 and TLS clients), and [`fixed_control`] (a control plane of hand-made
//! resources, for shapes `weft control` never sends). The helpers every test file uses (starting `weft
//! control` and `weft proxy`, waiting with [`common::eventually`]) are in `tests/common/`.
//!
//! Run one feature with `cargo test -p weft-cli --test sidecars routing::`.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

#[path = "../common/mod.rs"]
mod common;

mod apps;
mod clients;
mod fixed_control;
mod mesh;

mod authz;
mod hardening;
mod identity;
mod jwt;
mod limits;
mod protocols;
mod resilience;
mod routing;
mod tls;
