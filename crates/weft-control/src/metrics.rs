//! Prometheus metrics of the control plane (`/metrics` on the debug port): the xDS server's,
//! plus configuration reloads and certificates.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_api::Level;

use crate::store::ConfigState;

/// Control-plane metrics beyond the xDS server's. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ControlMetrics {
    reloads: Counter,
    resources: Gauge,
    messages: Family<Vec<(&'static str, &'static str)>, Gauge>,
    pub(crate) certificates_issued: Counter,
    pub(crate) certificates_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl ControlMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "config_reloads",
            "Configuration snapshots built",
            self.reloads.clone(),
        );
        registry.register(
            "config_resources",
            "Istio resources in force",
            self.resources.clone(),
        );
        registry.register(
            "config_messages",
            "Analysis messages of the last reload, by level",
            self.messages.clone(),
        );
        registry.register(
            "ca_certificates_issued",
            "Workload certificates signed",
            self.certificates_issued.clone(),
        );
        registry.register(
            "ca_certificates_refused",
            "Certificate requests refused, by reason",
            self.certificates_refused.clone(),
        );
    }

    /// Records a reload.
    pub fn reloaded(&self, state: &ConfigState) {
        self.reloads.inc();
        self.resources
            .set(i64::try_from(state.resources.len()).unwrap_or(i64::MAX));
        for level in [Level::Error, Level::Warning, Level::Info] {
            let count = state.messages.iter().filter(|m| m.level() == level).count();
            self.messages
                .get_or_create(&vec![("level", level.as_str())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}
