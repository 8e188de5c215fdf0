//! What every connected stream was sent and acknowledged, for `/debug/syncz` and
//! `weft proxy-status`. Written by the stream tasks, read by debug handlers; the lock is held
//! only to copy a few strings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use super::ResourceSet;

/// The status of all streams, by stream id.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    streams: Arc<Mutex<BTreeMap<u64, StreamStatus>>>,
}

/// One stream.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The node id the proxy sent.
    pub node_id: String,
    /// When the stream opened.
    pub connected_at: Option<SystemTime>,
    /// Per resource type (short name, `Cluster`), what was sent and acknowledged.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One resource type of one stream.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Version last sent.
    pub sent_version: String,
    /// Nonce of the last response.
    pub sent_nonce: String,
    /// How many resources of this type the proxy holds after the last response.
    pub sent_resources: usize,
    /// Version the proxy last acknowledged; empty until it does.
    pub acked_version: String,
    /// The last rejection, if the proxy rejected anything.
    pub last_nack: Option<NackRecord>,
    /// The resources the proxy holds after the last response (what a config dump shows).
    #[serde(skip)]
    pub resources: Option<Arc<ResourceSet>>,
}

/// A rejected response.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NackRecord {
    /// The version the proxy refused.
    pub rejected_version: String,
    /// The version it kept.
    pub kept_version: String,
    /// The proxy's explanation.
    pub error: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, StreamStatus>> {
        // A panic while holding this lock can only come from a bug in the few lines that
        // copy strings under it; the map is still consistent, so keep using it.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every stream's status, by stream id.
    pub fn snapshot(&self) -> BTreeMap<u64, StreamStatus> {
        self.lock().clone()
    }

    pub(crate) fn update(&self, stream: u64, change: impl FnOnce(&mut StreamStatus)) {
        let mut streams = self.lock();
        change(streams.entry(stream).or_default());
    }

    pub(crate) fn remove(&self, stream: u64) {
        self.lock().remove(&stream);
    }
}
