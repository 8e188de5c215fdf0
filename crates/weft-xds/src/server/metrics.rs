//! Prometheus metrics of the ADS server: connected proxies, responses sent, how long each
//! took to build, and NACKs, by resource type.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: the resource type's short name (`Cluster`, `Listener`, …).
pub(crate) type TypeLabel = Vec<(&'static str, String)>;

/// The server's metrics; cheap to clone (every field is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    pub(crate) connected: Gauge,
    pub(crate) pushes: Family<TypeLabel, Counter>,
    pub(crate) push_seconds: Family<TypeLabel, Histogram>,
    pub(crate) nacks: Family<TypeLabel, Counter>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            pushes: Family::default(),
            // 100µs to about 3s.
            push_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            nacks: Family::default(),
        }
    }
}

impl XdsMetrics {
    /// Adds the metrics to `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_connected_proxies",
            "ADS streams currently open",
            self.connected.clone(),
        );
        registry.register(
            "xds_pushes",
            "Discovery responses sent, by type",
            self.pushes.clone(),
        );
        registry.register(
            "xds_push_duration_seconds",
            "Time to build one discovery response, by type",
            self.push_seconds.clone(),
        );
        registry.register(
            "xds_nacks",
            "Responses proxies rejected, by type",
            self.nacks.clone(),
        );
    }

    pub(crate) fn label(short_type: &str) -> TypeLabel {
        vec![("type", short_type.to_string())]
    }
}
