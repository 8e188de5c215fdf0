//! The names resources are known by, Istio's so tools and habits carry over: clusters
//! `outbound|<port>|<subset>|<host>`, a sidecar's listeners `virtualOutbound`,
//! `0.0.0.0_<port>` and `virtualInbound`, the SDS secrets `default` and `ROOTCA`. Every
//! module that builds or looks up a resource by name takes the name from here.

/// The listener interception sends outbound connections to (Istio's name and port).
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Its port.
pub const OUTBOUND_PORT: u32 = 15001;
/// The cluster that forwards to a connection's original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The inbound listener's name (Istio's).
pub const INBOUND_LISTENER: &str = "virtualInbound";
/// The port interception sends inbound connections to (Istio's).
pub const INBOUND_PORT: u32 = 15006;
/// The SDS secret holding a proxy's own certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// The SDS secret holding the mesh's trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";

/// The name of the cluster for a port and subset of a host, Istio's way.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Splits an Istio cluster name into port, subset and host.
pub fn parse_cluster_name(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

/// The name of a sidecar's or a gateway's listener for one port: `0.0.0.0_<port>`.
pub(crate) fn port_listener_name(port: u32) -> String {
    format!("0.0.0.0_{port}")
}

/// The port of a listener named `0.0.0.0_<port>`.
pub(crate) fn parse_port_listener_name(name: &str) -> Option<u32> {
    name.strip_prefix("0.0.0.0_")?.parse().ok()
}

/// Splits `host:port` (a listener or route configuration name) into its parts.
pub(crate) fn split_host_port(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (name, None),
        },
        None => (name, None),
    }
}

/// The name of a sidecar's inbound cluster for a workload port: `inbound|<port>||`.
pub(crate) fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The port of an inbound cluster named `inbound|<port>||`.
pub(crate) fn parse_inbound_cluster_name(name: &str) -> Option<u32> {
    name.strip_prefix("inbound|")?
        .strip_suffix("||")?
        .parse()
        .ok()
}
