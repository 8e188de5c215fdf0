//! The subcommands.

pub mod analyze;
pub mod control;
