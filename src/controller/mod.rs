//! The controller's shell: what surrounds the quorum's state machine (`ringlog_cluster`) in a
//! running `ringlog serve`: the voter that drives it ([`driver`], with the client brokers use),
//! its durable metadata log ([`metadata_log`]) and the frames on its links ([`wire`]).
//!
//! The state machine decides and orders; this shell makes its decisions durable before they
//! count, so a controller that crashes and restarts recovers exactly what it acknowledged.

pub mod driver;
pub mod metadata_log;
pub mod wire;
