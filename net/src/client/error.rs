//! The one error type of both clients, the glommio one and `blocking`: they share the wire
//! code that fails (framing, encoding, decoding, version negotiation), so they share the ways
//! it fails. Kafka error codes stay numbers with their name attached; the caller decides
//! whether one is retriable (`is_retriable`).

use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("the broker closed the connection")]
    Closed,
    #[error("response frame of {size} bytes is over the client's limit of {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("cannot encode {api} v{version}: {reason}")]
    Encode {
        api: &'static str,
        version: i16,
        reason: String,
    },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("response has correlation id {got}, expected {expected}")]
    Correlation { expected: i32, got: i32 },
    #[error("{api}: {}", unsupported(ours, broker.as_ref()))]
    Unsupported {
        api: &'static str,
        /// The versions this client speaks.
        ours: RangeInclusive<i16>,
        /// The versions the broker offers; `None` when it does not offer the API at all.
        broker: Option<RangeInclusive<i16>>,
    },
    #[error("{what}: {}", error_name(*.code))]
    Kafka { what: String, code: i16 },
    /// A request unanswered, or a wait for the cluster (topics created, say) not over, within
    /// the limit.
    #[error("{what}: timed out after {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("broker node {node} is not in the cluster metadata")]
    UnknownNode { node: i32 },
    #[error("{what}: gave up after {attempts} attempts in {waited_ms} ms ({limit}); the last error: {last}")]
    GaveUp {
        what: String,
        attempts: u32,
        waited_ms: u64,
        limit: RetryLimit,
        last: String,
    },
    #[error("record batch: {0}")]
    Batch(String),
}

/// What bounded a retried operation, as its error reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryLimit {
    /// Retried until this long after the first attempt.
    Time { ms: u64 },
    /// Retried at most this many times.
    Attempts(u32),
}

impl fmt::Display for RetryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Time { ms } => write!(f, "the limit is {ms} ms"),
            Self::Attempts(attempts) => write!(f, "the limit is {attempts} attempts"),
        }
    }
}

/// `ToString` for the tools that report errors as text (`ringlog groups`, the harness).
impl From<ClientError> for String {
    fn from(error: ClientError) -> Self {
        error.to_string()
    }
}

fn unsupported(ours: &RangeInclusive<i16>, broker: Option<&RangeInclusive<i16>>) -> String {
    let ours = format!("v{}..=v{}", ours.start(), ours.end());
    match broker {
        None => format!("the broker does not offer it (this client speaks {ours})"),
        Some(broker) => format!(
            "the broker speaks v{}..=v{}, this client {ours}: no version in common",
            broker.start(),
            broker.end()
        ),
    }
}

impl ClientError {
    /// `what` did not finish within `limit`.
    pub fn timeout(what: String, limit: Duration) -> Self {
        Self::Timeout {
            what,
            timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A Kafka error code the operation may succeed after retrying (leader moves, timeouts,
    /// coordinator loading), as the protocol classifies it.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka { code, .. } => is_retriable_code(*code),
            Self::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// Whether a Kafka error code is retriable (NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, ...).
pub fn is_retriable_code(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|error| error.is_retriable())
}

/// The protocol's name of an error code, with the code: `NotLeaderOrFollower (6)`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "no error (0)".to_owned(),
        Some(error) => format!("{error} ({code})"),
    }
}

/// `Ok` for error code 0, the error otherwise.
pub fn check_code(code: i16, what: impl FnOnce() -> String) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::Kafka { what: what(), code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_names_the_limit_that_ran_out() {
        let gave_up = |limit| {
            ClientError::GaveUp {
                what: "joining group g".to_owned(),
                attempts: 50,
                waited_ms: 812,
                limit,
                last: error_name(27),
            }
            .to_string()
        };
        assert_eq!(
            gave_up(RetryLimit::Attempts(50)),
            "joining group g: gave up after 50 attempts in 812 ms (the limit is 50 attempts); \
             the last error: RebalanceInProgress (27)"
        );
        assert!(gave_up(RetryLimit::Time { ms: 5_000 }).contains("(the limit is 5000 ms)"));
    }
}
