//! Configuration from the control plane: the ADS [`client`] receives xDS resources, the
//! [`adapter`] turns them into the proxy's [`crate::model::Model`] (or rejects them), and what is in force
//! is published as one [`Applied`] value that the data path reads and swaps whole.

pub mod adapter;
pub mod applied;
pub mod client;

pub use applied::Applied;
