//! olboot turns a freshly booted VM of the Open Library fleet into a working member of it:
//! firewall, data volumes, `/opt`, packages and the olsystem links, in that order, each step
//! observing the machine first and changing only what differs from the config.
//!
//! `main.rs` only parses the command line; everything else lives here so that tests can call it.

pub mod archive;
pub mod cli;
pub mod config;
pub mod engine;
pub mod report;
pub mod retry;
pub mod root;
pub mod secret;
pub mod steps;
pub mod store;
pub mod sys;
pub mod tuning;
