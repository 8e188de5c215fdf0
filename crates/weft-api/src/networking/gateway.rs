//! `Gateway`: a load balancer at the edge of the mesh — the ports, protocols, hosts and TLS
//! of an ingress or egress proxy selected by label.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Port, Protocol, ServerTlsMode, ServerTlsSettings};

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

impl Server {
    /// Why Weft's gateway does not serve this server, if it does not: the field (below the
    /// server) and the feature it would need. The gateway serves HTTP, HTTP/2 and gRPC in
    /// plaintext or terminated with `SIMPLE` or `MUTUAL` TLS from certificate files.
    pub fn unserved(&self) -> Option<(&'static str, &'static str)> {
        if self.port.as_ref().is_some_and(|p| {
            !matches!(
                p.protocol,
                Protocol::Http | Protocol::Https | Protocol::Http2 | Protocol::Grpc
            )
        }) {
            return Some(("port.protocol", "TCP and TLS gateway servers"));
        }
        let tls = self.tls.as_ref()?;
        match tls.mode {
            None | Some(ServerTlsMode::Simple | ServerTlsMode::Mutual) => {}
            Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough) => {
                return Some((
                    "tls.mode",
                    "PASSTHROUGH and AUTO_PASSTHROUGH gateway servers",
                ));
            }
            Some(ServerTlsMode::IstioMutual | ServerTlsMode::OptionalMutual) => {
                return Some((
                    "tls.mode",
                    "ISTIO_MUTUAL and OPTIONAL_MUTUAL gateway servers",
                ));
            }
        }
        // Pinned client certificates: a server that cannot check them is not served, rather
        // than taking any certificate its CA signed.
        if !tls.verify_certificate_spki.is_empty() || !tls.verify_certificate_hash.is_empty() {
            return Some((
                "tls.verifyCertificateSpki",
                "client certificate pinning (verifyCertificateSpki, verifyCertificateHash)",
            ));
        }
        let files = !tls.server_certificate.is_empty() && !tls.private_key.is_empty();
        if tls.mode.is_some() && !files {
            return Some((
                "tls.credentialName",
                "gateway certificates from credentialName (Kubernetes secrets)",
            ));
        }
        None
    }
}
