//! The Istio configuration model of Weft: typed resources, loading with `file:line` spans,
//! per-resource validation and cross-resource analysis.
//!
//! Weft is configured with Istio's own API (`networking.istio.io` and `security.istio.io`,
//! versions `v1`, `v1beta1` and `v1alpha3`). This crate is the one place that knows that API:
//!
//! * [`networking`] and [`security`] hold the resource types, field for field as Istio's YAML
//!   writes them (camelCase);
//! * [`load`] reads files, directories and streams of YAML or JSON into [`Resource`]s, records
//!   where every field starts, and refuses hostile input (alias bombs, huge files) with a clear
//!   error instead of running out of memory;
//! * [`validate`] checks one resource against Istio's rules, [`analyze`] checks a set of
//!   resources against each other; both speak in [`Message`]s whose codes are listed in
//!   [`codes`].
//!
//! The crate does no I/O beyond reading the files it is asked to load, and has no async or
//! network dependencies: the control plane and the CLI both call it.

pub mod analyze;
pub mod codes;
pub mod duration;
pub mod hosts;
pub mod load;
pub mod mesh;
pub mod message;
pub mod meta;
pub mod networking;
pub mod resource;
pub mod security;
pub mod validate;

pub use duration::Duration;
pub use message::{Level, Message, Origin, ResourceRef};
pub use resource::{Kind, Resource, Spec};

use load::LoadOutput;

/// Validates every loaded resource and analyses the set: the messages `weft analyze` prints,
/// load messages first, sorted by file and line.
pub fn check(loaded: &LoadOutput) -> Vec<Message> {
    let mut messages = loaded.messages.clone();
    for resource in &loaded.resources {
        validate::validate(resource, &mut messages);
    }
    analyze::analyze(&loaded.resources, &loaded.workloads, &mut messages);
    message::sort(&mut messages);
    messages
}
