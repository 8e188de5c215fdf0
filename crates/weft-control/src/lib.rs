//! The Weft control plane: Istio YAML in, xDS out.
//!
//! ```text
//!   config dir ──► store (last good version of each resource) ──► model (registry + rules)
//!                                                                      │
//!                             ADS streams ◄── translate (per proxy) ◄───┘
//! ```
//!
//! * [`store`] loads a directory with `weft-api`, watches it, and keeps the last valid
//!   version of every resource when an edit breaks it;
//! * [`registry`] turns ServiceEntries, WorkloadEntries and workloads that registered
//!   themselves over xDS ([`registration`]) into services and endpoints;
//! * [`model`] is one immutable snapshot of the mesh: the valid resources, indexed, with
//!   the key sets RequestAuthentications name by URI, which [`jwks`] fetches;
//! * [`translate`] turns a snapshot into the listeners, routes, clusters and endpoints one
//!   proxy needs — an Envoy, a Weft proxy, or a proxyless gRPC client;
//! * [`kube`] is the config store and registry on Kubernetes: Istio's custom resources,
//!   Services, EndpointSlices and Pods, watched in the API server;
//! * [`app`] wires them to the ADS server of `weft-xds`, and [`admin`] serves the debug
//!   pages.

pub mod admin;
pub mod app;
pub mod ca;
pub mod jwks;
pub mod kube;
pub mod metrics;
pub mod model;
mod node;
pub mod registration;
pub mod registry;
pub mod store;
pub mod translate;
