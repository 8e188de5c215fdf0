//! The config store: the resources in force, from a folder of YAML, kept valid across edits.
//!
//! A reload reads the whole folder with the `weft-api` loader and checks it. What it applies:
//! * a resource without errors replaces the version in force;
//! * a resource with an error is reported, and its last valid version stays in force;
//! * a file that cannot be parsed at all keeps the resources it held before;
//! * a resource whose file is gone (or that its file no longer defines) is removed.
//!
//! The [`ConfigStore`] trait is what the rest of the control plane sees, so Kubernetes and
//! etcd stores can stand beside this one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use weft_api::load::{Limits, LoadOutput, Loader, Workload};
use weft_api::{Kind, Level, Message, Resource};

/// Identifies a resource: kind, namespace, name.
pub type ResourceKey = (Kind, String, String);

/// The configuration in force, and what the last reload had to say about the input.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// Valid resources, by key.
    pub resources: BTreeMap<ResourceKey, Resource>,
    /// Kubernetes workloads seen in the input.
    pub workloads: Vec<Workload>,
    /// Messages of the last reload, as `weft analyze` prints them.
    pub messages: Vec<Message>,
    /// How many reloads have happened.
    pub generation: u64,
}

/// A source of configuration that publishes a new state on every change.
pub trait ConfigStore: Send + 'static {
    /// The current state, and changes to it.
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>>;
}

/// Errors starting a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder cannot be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

/// Computes the state after a reload from the previous state and the freshly loaded input.
pub fn merge(previous: &ConfigState, loaded: LoadOutput) -> ConfigState {
    let messages = weft_api::check(&loaded);
    let mut rejected: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut broken_files: BTreeSet<Arc<str>> = BTreeSet::new();
    for message in messages.iter().filter(|m| m.level() == Level::Error) {
        match (&message.resource, &message.origin) {
            (Some(r), _) => {
                rejected.insert((r.kind.clone(), r.namespace.clone(), r.name.clone()));
            }
            (None, Some(origin)) => {
                broken_files.insert(origin.file.clone());
            }
            (None, None) => {}
        }
    }
    let mut resources = BTreeMap::new();
    for resource in loaded.resources {
        let key = key_of(&resource);
        let reference = (key.0.as_str().to_string(), key.1.clone(), key.2.clone());
        if rejected.contains(&reference) {
            if let Some(good) = previous.resources.get(&key) {
                resources.insert(key, good.clone());
            }
        } else {
            resources.insert(key, resource);
        }
    }
    for (key, resource) in &previous.resources {
        if broken_files.contains(&resource.origin.file) {
            resources
                .entry(key.clone())
                .or_insert_with(|| resource.clone());
        }
    }
    ConfigState {
        resources,
        workloads: loaded.workloads,
        messages,
        generation: previous.generation + 1,
    }
}

fn key_of(resource: &Resource) -> ResourceKey {
    (
        resource.kind(),
        resource.namespace().to_string(),
        resource.metadata.name.clone(),
    )
}

/// Loads a folder.
pub fn load_dir(dir: &Path) -> LoadOutput {
    let mut loader = Loader::new(Limits::default());
    loader.load_path(dir);
    loader.finish()
}

/// A store backed by a folder of YAML, watched for changes.
pub struct FileStore {
    state: watch::Receiver<Arc<ConfigState>>,
    _watcher: notify::RecommendedWatcher,
}

impl FileStore {
    /// How long the folder must be quiet before a change is read: editors write in several
    /// steps (a temporary file, a rename), and one reload should see the end result.
    pub const DEBOUNCE: Duration = Duration::from_millis(100);

    /// Loads `dir` and starts watching it. Must be called within a Tokio runtime.
    pub fn start(dir: PathBuf) -> Result<Self, StoreError> {
        let initial = merge(&ConfigState::default(), load_dir(&dir));
        log_messages(&initial);
        let (publish, state) = watch::channel(Arc::new(initial));
        let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events_tx.send(());
                }
            })
            .map_err(|source| StoreError::Watch {
                path: dir.clone(),
                source,
            })?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|source| StoreError::Watch {
                path: dir.clone(),
                source,
            })?;
        tokio::spawn(async move {
            while events.recv().await.is_some() {
                // Wait for the folder to be quiet, then read it once.
                while let Ok(Some(())) = tokio::time::timeout(Self::DEBOUNCE, events.recv()).await {
                }
                let dir = dir.clone();
                let Ok(loaded) = tokio::task::spawn_blocking(move || load_dir(&dir)).await else {
                    continue;
                };
                let next = merge(&publish.borrow(), loaded);
                log_messages(&next);
                tracing::info!(
                    generation = next.generation,
                    resources = next.resources.len(),
                    "configuration reloaded"
                );
                if publish.send(Arc::new(next)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            state,
            _watcher: watcher,
        })
    }
}

impl ConfigStore for FileStore {
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.state.clone()
    }
}

fn log_messages(state: &ConfigState) {
    for message in &state.messages {
        match message.level() {
            Level::Error => tracing::error!("{message}"),
            Level::Warning => tracing::warn!("{message}"),
            Level::Info => tracing::info!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> LoadOutput {
        let mut loader = Loader::new(Limits::default());
        for (name, text) in files {
            loader.load_str(*name, text);
        }
        loader.finish()
    }

    const GOOD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: 100\n";
    const BAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: -1\n";
    const OTHER: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d\nspec:\n  host: d\n";

    #[test]
    fn an_invalid_edit_keeps_the_last_good_version() {
        let first = merge(
            &ConfigState::default(),
            load(&[("vs.yaml", GOOD), ("dr.yaml", OTHER)]),
        );
        assert_eq!(first.resources.len(), 2);
        let second = merge(&first, load(&[("vs.yaml", BAD), ("dr.yaml", OTHER)]));
        let vs = &second.resources[&(Kind::VirtualService, "default".into(), "r".into())];
        assert_eq!(
            vs,
            &first.resources[&(Kind::VirtualService, "default".into(), "r".into())]
        );
        assert!(second.messages.iter().any(|m| m.code.id == "WEFT0103"));
    }

    #[test]
    fn a_broken_file_keeps_its_resources_and_a_deleted_one_loses_them() {
        let first = merge(
            &ConfigState::default(),
            load(&[("vs.yaml", GOOD), ("dr.yaml", OTHER)]),
        );
        let broken = merge(
            &first,
            load(&[("vs.yaml", "spec: [unclosed\n"), ("dr.yaml", OTHER)]),
        );
        assert_eq!(broken.resources.len(), 2);
        let deleted = merge(&broken, load(&[("dr.yaml", OTHER)]));
        assert_eq!(deleted.resources.len(), 1);
    }
}
