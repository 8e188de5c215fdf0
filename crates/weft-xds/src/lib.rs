//! The xDS v3 wire protocol, and nothing about Istio: an aggregated discovery service (ADS)
//! server speaking Envoy's own protobuf types, so one control plane can drive the Weft proxy,
//! a stock Envoy and proxyless gRPC clients alike.
//!
//! * [`types`] names the resource types and packs messages into `Any`;
//! * [`server`] runs state-of-the-world ADS streams: per-type versions and nonces, ACK and
//!   NACK, pushes only when a proxy's resources changed, and a [`server::Ledger`] of what each
//!   stream was sent and acknowledged (what `/debug/syncz` shows);
//! * [`istio_ca`] is Istio's certificate API, which proxies call with a CSR;
//! * [`dump`] turns what a proxy was sent into an Envoy config dump, as JSON.
//!
//! What the resources *are* is decided by a [`server::Generator`]; the control plane provides
//! one that translates the mesh model.

pub mod dump;
pub mod istio_ca;
pub mod server;
pub mod types;

/// Envoy's v3 API types, re-exported so callers use the same version as this crate.
pub use envoy_types::pb as envoy;
