//! Listeners (LDS) into what each contributes to the model: an outbound or gateway port
//! (its route configuration, whether its protocol is detected, and for a gateway the TLS
//! servers it terminates), or the inbound listener's chains (each port's PeerAuthentication
//! mode and AuthorizationPolicies). Every HTTP connection manager also says how request
//! paths are normalized ([`path_normalization`]).

use std::sync::Arc;

use prost::Message;
use weft_xds::envoy::envoy::config::core::v3::{DataSource, TrafficDirection};
use weft_xds::envoy::envoy::config::listener::v3::{FilterChain, Listener, filter};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};

use super::jwt::{JWT_FILTER, manager_jwt};
use super::proto::decode_any;
use super::rbac::chain_rbac;
use super::tls::{data_source, subject_alt_names};
use crate::model::authn::JwtAuthn;
use crate::model::path::{EscapedSlashes, PathNormalization};
use crate::model::policy::Rbac;
use crate::model::{GatewayPort, GatewayTls};

/// The listener filter that marks an outbound port whose protocol is detected per connection.
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";

/// What a listener contributes to the model.
#[derive(Debug, Clone)]
pub struct ListenerPart {
    /// The route configurations its connection managers name, to ask RDS for.
    pub routes: Vec<String>,
    /// What it is.
    pub kind: ListenerKind,
}

/// The kinds of listener the proxy serves.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// A port's listener (`0.0.0.0_<port>`): a sidecar's outbound port, reached through
    /// interception, or a gateway's, which it binds.
    Port {
        /// The port.
        port: u16,
        /// Whether each connection's protocol is detected.
        sniffed: bool,
        /// How its HTTP requests' paths are normalized.
        paths: PathNormalization,
        /// Its authorization policies, when its connection manager has RBAC filters.
        rbac: Option<Arc<Rbac>>,
        /// `xff_num_trusted_hops`, with `use_remote_address`.
        trusted_hops: Option<u32>,
        /// The tokens it verifies, when its connection managers have a JWT filter.
        jwt: Option<Arc<JwtAuthn>>,
        /// What the gateway accepts on it, when it is bound.
        gateway: Option<GatewayPort>,
    },
    /// The inbound listener's chains.
    Inbound(Vec<InboundChain>),
    /// Anything else, which the proxy does not serve.
    Other,
}

/// One chain of the inbound listener.
#[derive(Debug, Clone)]
pub struct InboundChain {
    /// The port it matches.
    pub port: u16,
    /// Whether it takes TLS (mTLS) connections; plaintext otherwise.
    pub tls: bool,
    /// Whether it carries opaque TCP; HTTP otherwise.
    pub tcp: bool,
    /// Whether it terminates the TLS it takes; a TLS chain that does not passes it through.
    pub terminates: bool,
    /// Its authorization policies.
    pub rbac: Arc<Rbac>,
    /// The tokens its HTTP requests are authenticated with.
    pub jwt: Option<Arc<JwtAuthn>>,
    /// How its HTTP requests' paths are normalized.
    pub paths: PathNormalization,
}

/// What `listener`, named `name`, contributes.
pub(super) fn listener_part(name: &str, listener: &Listener) -> Result<ListenerPart, String> {
    for manager in managers(&listener.filter_chains) {
        known_http_filters(&manager)?;
    }
    let routes = rds_names(listener);
    let kind = if let Some(port) = name.strip_prefix("0.0.0.0_").and_then(|p| p.parse().ok()) {
        ListenerKind::Port {
            port,
            sniffed: listener
                .listener_filters
                .iter()
                .any(|f| f.name == HTTP_INSPECTOR),
            paths: managers(&listener.filter_chains)
                .next()
                .map(|manager| path_normalization(&manager))
                .transpose()?
                .unwrap_or_default(),
            rbac: port_rbac(listener)?,
            jwt: port_jwt(listener)?,
            trusted_hops: managers(&listener.filter_chains)
                .next()
                .and_then(|manager| {
                    manager
                        .use_remote_address
                        .is_some_and(|b| b.value)
                        .then_some(manager.xff_num_trusted_hops)
                }),
            // A sidecar's port listeners are reached through interception; a gateway's
            // are bound.
            gateway: listener
                .bind_to_port
                .as_ref()
                .is_none_or(|b| b.value)
                .then(|| gateway_port(listener))
                .transpose()?,
        }
    } else if listener.traffic_direction == TrafficDirection::Inbound as i32 {
        ListenerKind::Inbound(inbound_chains(listener)?)
    } else {
        ListenerKind::Other
    };
    Ok(ListenerPart { routes, kind })
}

/// The HTTP filters this proxy applies. A filter it does not know could be one that
/// refuses requests (an authorization or authentication it would skip), so any other
/// rejects the listener.
const HTTP_FILTERS: [&str; 4] = [
    "envoy.filters.http.rbac",
    "envoy.filters.http.fault",
    "envoy.filters.http.router",
    JWT_FILTER,
];

fn known_http_filters(manager: &HttpConnectionManager) -> Result<(), String> {
    match manager
        .http_filters
        .iter()
        .find(|f| !HTTP_FILTERS.contains(&f.name.as_str()) && !f.is_optional)
    {
        Some(filter) => Err(format!("HTTP filter {:?} is not supported", filter.name)),
        None => Ok(()),
    }
}

/// The JWT authentication of a port listener's connection managers (a gateway's); like its
/// policies, every chain must have the same.
fn port_jwt(listener: &Listener) -> Result<Option<Arc<JwtAuthn>>, String> {
    let mut found: Option<(Vec<String>, Option<JwtAuthn>)> = None;
    for manager in managers(&listener.filter_chains) {
        let jwt = manager_jwt(&manager)?;
        let issuers = jwt
            .iter()
            .flat_map(|j| &j.providers)
            .map(|p| format!("{}={}", p.name, p.issuer))
            .collect();
        match &found {
            None => found = Some((issuers, jwt)),
            Some((first, _)) if *first != issuers => {
                return Err("chains of the listener authenticate different issuers".to_string());
            }
            Some(_) => {}
        }
    }
    Ok(found.and_then(|(_, jwt)| jwt).map(Arc::new))
}

/// The HTTP connection managers of `chains`.
fn managers(chains: &[FilterChain]) -> impl Iterator<Item = HttpConnectionManager> + '_ {
    chains
        .iter()
        .flat_map(|chain| &chain.filters)
        .filter_map(|filter| match &filter.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
}

/// How a connection manager normalizes paths. Envoy's defaults change nothing; the action
/// that answers with a redirect is not implemented, so it rejects the listener rather than
/// leaving escaped slashes for policies to miss.
fn path_normalization(manager: &HttpConnectionManager) -> Result<PathNormalization, String> {
    use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::PathWithEscapedSlashesAction as Action;
    let escaped_slashes = match Action::try_from(manager.path_with_escaped_slashes_action) {
        Ok(Action::ImplementationSpecificDefault | Action::KeepUnchanged) => EscapedSlashes::Keep,
        Ok(Action::RejectRequest) => EscapedSlashes::Reject,
        Ok(Action::UnescapeAndForward) => EscapedSlashes::Unescape,
        Ok(Action::UnescapeAndRedirect) | Err(_) => {
            return Err(format!(
                "path_with_escaped_slashes_action {} is not supported",
                manager.path_with_escaped_slashes_action
            ));
        }
    };
    Ok(PathNormalization {
        escaped_slashes,
        normalize: manager.normalize_path.is_some_and(|b| b.value),
        merge_slashes: manager.merge_slashes,
    })
}

/// The authorization policies of a port listener's connection managers (a gateway's);
/// `None` without RBAC filters. Every chain must carry the same ones: a chain with fewer
/// would let through what another refuses, so chains that disagree reject the listener.
fn port_rbac(listener: &Listener) -> Result<Option<Arc<Rbac>>, String> {
    let mut policies = None;
    for chain in &listener.filter_chains {
        let rbac = chain_rbac(&chain.filters)?;
        let names = rbac.names();
        match &policies {
            None => policies = Some((names, rbac)),
            Some((first, _)) if *first != names => {
                return Err(format!(
                    "chain {:?} has other authorization policies than the listener's first",
                    chain.name
                ));
            }
            Some(_) => {}
        }
    }
    Ok(policies
        .map(|(_, rbac)| rbac)
        .filter(|rbac| !rbac.is_empty())
        .map(Arc::new))
}

/// The route configuration names the listener's connection managers take from RDS.
fn rds_names(listener: &Listener) -> Vec<String> {
    let mut names: Vec<String> = managers(&listener.filter_chains)
        .filter_map(|manager| match manager.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The inbound listener's chains, each with the port it matches.
fn inbound_chains(listener: &Listener) -> Result<Vec<InboundChain>, String> {
    let mut chains = Vec::new();
    for chain in &listener.filter_chains {
        let Some(matched) = &chain.filter_chain_match else {
            continue;
        };
        let Some(port) = matched
            .destination_port
            .as_ref()
            .and_then(|p| u16::try_from(p.value).ok())
        else {
            continue;
        };
        chains.push(InboundChain {
            port,
            tls: matched.transport_protocol == "tls",
            terminates: chain.transport_socket.is_some(),
            tcp: chain
                .filters
                .iter()
                .any(|f| f.name == "envoy.filters.network.tcp_proxy"),
            rbac: Arc::new(chain_rbac(&chain.filters)?),
            jwt: managers(std::slice::from_ref(chain))
                .next()
                .map(|manager| manager_jwt(&manager))
                .transpose()?
                .flatten()
                .map(Arc::new),
            paths: managers(std::slice::from_ref(chain))
                .next()
                .map(|manager| path_normalization(&manager))
                .transpose()?
                .unwrap_or_default(),
        });
    }
    Ok(chains)
}

/// What a gateway listener accepts: plaintext HTTP from chains without TLS, TLS with the
/// certificate files of the others (read now: one that cannot be read rejects the listener).
fn gateway_port(listener: &Listener) -> Result<GatewayPort, String> {
    use weft_xds::envoy::envoy::config::core::v3::transport_socket::ConfigType;
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let mut port = GatewayPort::default();
    for chain in &listener.filter_chains {
        let route = managers(std::slice::from_ref(chain)).find_map(|manager| {
            match manager.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
                _ => None,
            }
        });
        let Some(ConfigType::TypedConfig(any)) = chain
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            port.plaintext = true;
            port.plaintext_route = route;
            continue;
        };
        let context: DownstreamTlsContext = decode_any(&any)?;
        let common = context.common_tls_context.unwrap_or_default();
        let certificate = common
            .tls_certificates
            .first()
            .ok_or_else(|| format!("chain {:?} has no server certificate", chain.name))?;
        let read = |source: &Option<DataSource>, what: &str| match source {
            Some(source) => data_source(source).map_err(|e| format!("{what}: {e}")),
            None => Err(format!("chain {:?} has no {what}", chain.name)),
        };
        let chain_pem = read(&certificate.certificate_chain, "serverCertificate")?;
        let key_pem = read(&certificate.private_key, "privateKey")?;
        let mutual = context.require_client_certificate.is_some_and(|b| b.value);
        let (client_ca, crl, client_names) = match &common.validation_context_type {
            Some(ValidationContextType::ValidationContext(validation)) => (
                Some(read(&validation.trusted_ca, "caCertificates")?),
                validation
                    .crl
                    .as_ref()
                    .map(|crl| data_source(crl).map_err(|e| format!("caCrl: {e}")))
                    .transpose()?,
                subject_alt_names(validation)?,
            ),
            None => (None, None, Vec::new()),
            Some(_) => {
                return Err(format!(
                    "chain {:?}: a client validation this proxy does not support",
                    chain.name
                ));
            }
        };
        if mutual && client_ca.is_none() {
            return Err(format!(
                "chain {:?} requires client certificates but names no caCertificates",
                chain.name
            ));
        }
        let params = common.tls_params.clone().unwrap_or_default();
        let config = crate::tls::termination_config(&crate::tls::Termination {
            chain: &chain_pem,
            key: &key_pem,
            client_ca: client_ca.as_deref().filter(|_| mutual),
            crl: crl.as_deref(),
            client_names,
            versions: (
                params.tls_minimum_protocol_version,
                params.tls_maximum_protocol_version,
            ),
            cipher_suites: params.cipher_suites,
        })?;
        port.tls.push(GatewayTls {
            server_names: chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default(),
            mutual,
            route,
            config,
        });
    }
    Ok(port)
}
