//! The file store against a real folder: edits are picked up without a restart, an invalid
//! edit is reported and changes nothing that was valid, fixing it applies it, and deleting a
//! file removes its resources.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_api::Kind;
use weft_control::store::{ConfigState, ConfigStore, FileStore};

const VS_90_10: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n";
const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v2\n    labels: {version: v2}\n";

/// Waits for the next published state that satisfies `check`.
async fn next_state(
    states: &mut watch::Receiver<Arc<ConfigState>>,
    check: impl Fn(&ConfigState) -> bool,
) -> Arc<ConfigState> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            states.changed().await.expect("the store is running");
            let state = states.borrow_and_update().clone();
            if check(&state) {
                return state;
            }
        }
    })
    .await
    .expect("the store published the expected state")
}

fn weights(state: &ConfigState) -> Vec<i64> {
    let resource = &state.resources[&(
        Kind::VirtualService,
        "default".to_string(),
        "reviews".to_string(),
    )];
    match &resource.spec {
        weft_api::Spec::VirtualService(vs) => vs.http[0]
            .route
            .iter()
            .map(|d| d.weight.unwrap_or(0))
            .collect(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn edits_apply_invalid_ones_keep_the_last_good_and_deletes_remove() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vs.yaml"), VS_90_10).unwrap();
    std::fs::write(dir.path().join("dr.yaml"), DR).unwrap();
    let store = FileStore::start(dir.path().to_path_buf()).unwrap();
    let mut states = store.subscribe();
    let initial = states.borrow_and_update().clone();
    assert_eq!(initial.resources.len(), 2);
    assert_eq!(weights(&initial), [90, 10]);

    // A valid edit, written in place.
    std::fs::write(
        dir.path().join("vs.yaml"),
        VS_90_10.replace("90", "50").replace("10", "50"),
    )
    .unwrap();
    let state = next_state(&mut states, |s| weights(s) == [50, 50]).await;
    assert!(state.messages.is_empty(), "{:?}", state.messages);

    // An invalid edit (a negative weight): reported, and the 50/50 version stays in force.
    std::fs::write(dir.path().join("vs.yaml"), VS_90_10.replace("90", "-5")).unwrap();
    let state = next_state(&mut states, |s| {
        s.messages.iter().any(|m| m.code.id == "WEFT0103")
    })
    .await;
    assert_eq!(weights(&state), [50, 50]);

    // Broken YAML: reported, nothing that was valid changes.
    std::fs::write(dir.path().join("vs.yaml"), "spec: [unclosed\n").unwrap();
    let state = next_state(&mut states, |s| {
        s.messages.iter().any(|m| m.code.id == "WEFT0001")
    })
    .await;
    assert_eq!(weights(&state), [50, 50]);
    assert_eq!(state.resources.len(), 2);

    // Fixed with an editor-style atomic rename: applied.
    std::fs::write(
        dir.path().join(".vs.yaml.swp"),
        VS_90_10.replace("90", "70").replace("10", "30"),
    )
    .unwrap();
    std::fs::rename(dir.path().join(".vs.yaml.swp"), dir.path().join("vs.yaml")).unwrap();
    let state = next_state(&mut states, |s| {
        s.messages.is_empty() && s.resources.len() == 2
    })
    .await;
    assert_eq!(weights(&state), [70, 30]);

    // Deleting a file removes what it defined.
    std::fs::remove_file(dir.path().join("dr.yaml")).unwrap();
    let state = next_state(&mut states, |s| s.resources.len() == 1).await;
    assert!(
        !state
            .resources
            .keys()
            .any(|(kind, _, _)| *kind == Kind::DestinationRule)
    );
}
