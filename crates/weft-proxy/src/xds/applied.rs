//! What is in force: the model the data path reads, what it was built from, and whether the
//! first configuration is whole (warm).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_xds::types::{CLUSTER, LISTENER};

use super::adapter::Received;
use crate::model::Model;

/// What the xDS client publishes: the model in force, and what it was built from (for the
/// config dump).
#[derive(Debug, Default)]
pub struct Applied {
    /// The model the data path reads.
    pub model: Arc<Model>,
    /// The resources it was built from, with their versions by type.
    pub received: Received,
    /// Version accepted, by type URL.
    pub versions: BTreeMap<String, String>,
    /// Whether listeners and clusters have arrived, with every route table and endpoint
    /// set they name (Envoy's "warm").
    pub warm: bool,
}

impl Applied {
    /// How long a connection that arrives before the first configuration waits for it.
    const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(10);

    /// Waits until the configuration is warm, for at most ten seconds, so connections
    /// made while the proxy starts are served instead of refused with `NR`.
    pub async fn wait_warm(config: &mut watch::Receiver<Arc<Applied>>) {
        if config.borrow().warm {
            return;
        }
        let _ = tokio::time::timeout(Self::FIRST_CONFIG_WAIT, config.wait_for(|c| c.warm)).await;
    }
}

/// Whether listeners and clusters have been answered, with every route table and endpoint
/// set they name (Envoy's "warm").
pub(crate) fn is_warm(received: &Received) -> bool {
    received.answered.contains(LISTENER)
        && received.answered.contains(CLUSTER)
        && received
            .wanted_routes()
            .iter()
            .all(|name| received.routes.contains_key(name))
        && received
            .wanted_endpoints()
            .iter()
            .all(|name| received.endpoints.contains_key(name))
}
