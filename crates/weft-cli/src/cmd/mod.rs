//! The subcommands.

pub mod analyze;
pub mod control;
pub mod join_token;
pub mod proxy;
