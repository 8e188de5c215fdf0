//! Listener binds, CONNECT targets and proxy-set headers against hostile clients.
