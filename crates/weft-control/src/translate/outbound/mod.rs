//! The outbound side: what a sidecar or a proxyless gRPC client needs to reach the mesh's
//! services. [`listener`] takes connections (or, for proxyless clients, names the routes),
//! [`route`] picks a cluster per request from the VirtualServices, [`cluster`] says how to
//! talk to a service port and subset (the DestinationRule's policy) and [`endpoint`] lists
//! the addresses behind it. Each builds its resources by name, from the snapshot alone;
//! none imports another.

pub(crate) mod cluster;
pub(crate) mod endpoint;
pub(crate) mod listener;
pub(crate) mod route;
