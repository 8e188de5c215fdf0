//! The subcommands.

pub mod analyze;
