//! `Gateway`: a load balancer at the edge of the mesh — the ports, protocols, hosts and TLS
//! of an ingress or egress proxy selected by label.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Port, ServerTlsSettings};

/// The `spec` of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gateway {
    /// Listeners of the gateway.
    pub servers: Vec<Server>,
    /// Labels of the gateway proxies this applies to.
    pub selector: BTreeMap<String, String>,
}

/// `Server`: one listener.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Server {
    /// Port and protocol, required.
    pub port: Option<Port>,
    /// Address or unix socket to bind.
    pub bind: Option<String>,
    /// Hosts served, `namespace/host` or `host`; required.
    pub hosts: Vec<String>,
    /// TLS termination.
    pub tls: Option<ServerTlsSettings>,
    /// Where traffic goes when nothing matches.
    pub default_endpoint: Option<String>,
    /// A name for the server.
    pub name: Option<String>,
}
