//! One ADS stream: the state machine of state-of-the-world xDS for every resource type the
//! proxy subscribes to.
//!
//! Rules kept here (from the xDS protocol):
//! * a response carries a version and a fresh nonce; a request whose `response_nonce` is not
//!   the latest nonce of its type is stale and ignored;
//! * a request echoing the latest nonce is an ACK, or a NACK when it has `error_detail`: the
//!   proxy keeps its previous version, the rejection is recorded, and the same content is not
//!   sent again — only a different one is;
//! * a change of the subscribed names is answered at once; otherwise a type is re-sent only
//!   when its content changed — and for route configurations and endpoints, only the
//!   resources that changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::Caller;
use super::{Generator, Ledger, NackRecord, PreparedResponse, ResourceSet, TypeStatus, XdsMetrics};
use crate::types::{PUSH_ORDER, is_wildcard_type, short_name};

/// What one resource type of the stream is subscribed to and was sent.
#[derive(Debug, Default)]
struct Subscription {
    /// Names asked for, sorted and without repeats; `None` is a wildcard subscription
    /// (everything of the type).
    names: Option<Vec<String>>,
    sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    version: String,
    nonce: String,
    /// What the proxy holds now: shared with other streams, not copied.
    set: Arc<ResourceSet>,
}

pub(super) struct AdsStream {
    id: u64,
    generator: Arc<dyn Generator>,
    ledger: Ledger,
    metrics: XdsMetrics,
    identifier: Arc<str>,
    responses: mpsc::Sender<Result<PreparedResponse, Status>>,
    node: Option<Node>,
    caller: Caller,
    subscriptions: BTreeMap<String, Subscription>,
    nonces: u64,
}

impl AdsStream {
    pub(super) fn new(
        id: u64,
        generator: Arc<dyn Generator>,
        ledger: Ledger,
        metrics: XdsMetrics,
        identifier: Arc<str>,
        responses: mpsc::Sender<Result<PreparedResponse, Status>>,
        caller: Caller,
    ) -> Self {
        Self {
            id,
            generator,
            ledger,
            metrics,
            identifier,
            responses,
            node: None,
            caller,
            subscriptions: BTreeMap::new(),
            nonces: 0,
        }
    }

    /// Serves the stream until the proxy closes it, the connection breaks, or the server
    /// shuts down (the change channel closes).
    pub(super) async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        mut changes: watch::Receiver<u64>,
    ) {
        self.ledger
            .update(self.id, |s| s.connected_at = Some(SystemTime::now()));
        self.metrics.connected.inc();
        changes.mark_unchanged();
        loop {
            let keep_going = tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request).await,
                    Ok(None) => false,
                    Err(status) => {
                        tracing::debug!(stream = self.id, %status, "ADS stream ended with an error");
                        false
                    }
                },
                changed = changes.changed() => match changed {
                    Ok(()) => self.push_changes().await,
                    Err(_) => false,
                },
            };
            if !keep_going {
                break;
            }
        }
        self.ledger.remove(self.id);
        self.metrics.connected.dec();
        if self.node.is_some() {
            self.generator.disconnected(self.id);
        }
    }

    /// Ends the stream with INVALID_ARGUMENT; always false (the stream must end).
    async fn refuse(&self, why: &'static str) -> bool {
        let _ = self
            .responses
            .send(Err(Status::invalid_argument(why)))
            .await;
        false
    }

    /// Handles one request; false when the stream must end.
    async fn on_request(&mut self, request: DiscoveryRequest) -> bool {
        if self.node.is_none() {
            let Some(node) = request.node.clone() else {
                return self
                    .refuse("the first request of a stream must carry a node")
                    .await;
            };
            let node_id = node.id.clone();
            self.ledger.update(self.id, |s| s.node_id = node_id);
            self.generator.connected(self.id, &node, &self.caller);
            self.node = Some(node);
        }
        let type_url = request.type_url.clone();
        if type_url.is_empty() {
            return self.refuse("an ADS request must name its type_url").await;
        }
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        let first = subscription.sent.is_none() && subscription.names.is_none();
        if !request.response_nonce.is_empty() {
            let latest = subscription.sent.as_ref().map(|s| s.nonce.as_str());
            if latest != Some(request.response_nonce.as_str()) {
                tracing::trace!(
                    stream = self.id,
                    type_url,
                    nonce = request.response_nonce,
                    "stale nonce ignored"
                );
                return true;
            }
            let (sent_version, short) = (
                subscription
                    .sent
                    .as_ref()
                    .map(|s| s.version.clone())
                    .unwrap_or_default(),
                short_name(&type_url).to_string(),
            );
            match &request.error_detail {
                Some(error) => {
                    tracing::warn!(
                        stream = self.id,
                        node = self.node.as_ref().map(|n| n.id.as_str()).unwrap_or(""),
                        type_url = short,
                        rejected = sent_version,
                        error = error.message,
                        "proxy rejected configuration (NACK)"
                    );
                    self.metrics
                        .nacks
                        .get_or_create(&XdsMetrics::label(&short))
                        .inc();
                    let record = NackRecord {
                        rejected_version: sent_version,
                        kept_version: request.version_info.clone(),
                        error: error.message.clone(),
                        at: SystemTime::now(),
                    };
                    self.ledger.update(self.id, |s| {
                        s.types.entry(short).or_default().last_nack = Some(record);
                    });
                }
                None => {
                    let acked = request.version_info.clone();
                    self.ledger.update(self.id, |s| {
                        s.types.entry(short).or_default().acked_version = acked
                    });
                }
            }
        }
        let mut asked = request.resource_names;
        asked.sort_unstable();
        asked.dedup();
        let wildcard = asked.iter().any(|n| n == "*")
            || (asked.is_empty()
                && is_wildcard_type(&type_url)
                && (first || subscription.names.is_none()));
        let names = if wildcard { None } else { Some(asked) };
        let names_changed = first || subscription.names != names;
        subscription.names = names;
        if names_changed || subscription.sent.is_none() {
            return self.respond(&type_url, true).await;
        }
        true
    }

    /// Re-sends every subscribed type whose content changed, in push order.
    async fn push_changes(&mut self) -> bool {
        let mut types: Vec<String> = self.subscriptions.keys().cloned().collect();
        types.sort_by_key(|t| {
            PUSH_ORDER
                .iter()
                .position(|p| p == t)
                .unwrap_or(PUSH_ORDER.len())
        });
        for type_url in types {
            if !self.respond(&type_url, false).await {
                return false;
            }
        }
        true
    }

    /// Sends the current resources of a type, unless `force` is off and they are what was
    /// sent last. For route configurations and endpoints — resources a proxy asks for by
    /// name and keeps independently — a push carries only those that changed; listeners and
    /// clusters always go as a full set, as state-of-the-world xDS requires. False when the
    /// proxy is gone.
    async fn respond(&mut self, type_url: &str, force: bool) -> bool {
        let Some(node) = &self.node else { return true };
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return true;
        };
        let started = std::time::Instant::now();
        let set = self
            .generator
            .generate(node, type_url, subscription.names.as_deref());
        let previous = subscription.sent.as_ref().map(|s| &s.set);
        if !force && previous.is_some_and(|p| p.digest() == set.digest()) {
            return true;
        }
        let partial = !force && !is_wildcard_type(type_url) && previous.is_some();
        let outgoing = set
            .resources()
            .iter()
            .filter(|r| !partial || !previous.is_some_and(|p| p.holds(r)))
            .cloned()
            .collect();
        self.nonces += 1;
        let version = format!("{:016x}", set.digest());
        let nonce = self.nonces.to_string();
        let count = set.len();
        let response = PreparedResponse {
            version_info: version.clone(),
            resources: outgoing,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: self.identifier.clone(),
        };
        subscription.sent = Some(Sent {
            version: version.clone(),
            nonce: nonce.clone(),
            set: set.clone(),
        });
        let short = short_name(type_url).to_string();
        let label = XdsMetrics::label(&short);
        self.metrics.pushes.get_or_create(&label).inc();
        self.metrics
            .push_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        self.ledger.update(self.id, |s| {
            let status = s.types.entry(short).or_insert_with(TypeStatus::default);
            status.sent_version = version;
            status.sent_nonce = nonce;
            status.sent_resources = count;
            status.resources = Some(set);
        });
        self.responses.send(Ok(response)).await.is_ok()
    }
}
