//! The listeners: where connections arrive. [`serve`] is the one copy of what every listener
//! does with a connection (the accept loop, the first byte, the HTTP server, HTTP or TCP by
//! what the port carries).
//!
//! [`outbound`] takes the application's requests (the explicit proxy port, redirected
//! connections, per-upstream ports), [`inbound`] the peers' (mTLS or plaintext as
//! PeerAuthentication says, then authorization), [`gateway`] the outside world's on the
//! Gateway resources' ports. The request itself is handled by [`crate::proxy`].

pub mod gateway;
pub mod inbound;
pub mod orig_dst;
pub mod outbound;
pub mod serve;
