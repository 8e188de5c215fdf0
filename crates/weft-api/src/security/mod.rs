//! `security.istio.io` resources: who may talk to whom, and how peers and requests prove who
//! they are.

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;
