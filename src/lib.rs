//! The ringlog broker as a library: the `ringlog` binary (`src/main.rs`) is a thin command line
//! over it, and tests and the cluster simulator build brokers from it directly.
//!
//! - [`serve`] starts a broker on this machine: one glommio executor per core, each owning a
//!   [`broker::Shard`], connected by the typed cross-core mesh ([`broker::mesh`]).
//! - [`broker`] is the broker itself: the topic catalog, one module per group of Kafka APIs.
//! - [`controller`] is the controller's shell around the quorum (`ringlog_cluster`): its
//!   durable metadata log.
//! - [`config`] is `ringlog serve`'s settings (flags, `RINGLOG_*` variables, a TOML file).
//! - [`dump_log`] and [`groups_cli`] are the `ringlog dump-log` and `ringlog groups` tools.

pub mod broker;
pub mod config;
pub mod controller;
pub mod dump_log;
pub mod groups_cli;
pub mod memlock;
pub mod meta_properties;
pub mod quorum_cli;
pub mod serve;
