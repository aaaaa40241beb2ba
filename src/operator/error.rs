//! Errors of the reconcilers, each with a category for metrics and logs.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to apply {kind} {name}: {source}")]
    Apply { kind: &'static str, name: String, source: kube::Error },

    #[error("failed to read {kind} {name}: {source}")]
    Read { kind: &'static str, name: String, source: kube::Error },

    #[error("failed to delete {kind} {name}: {source}")]
    Delete { kind: &'static str, name: String, source: kube::Error },

    #[error("failed to update the status of {kind} {name}: {source}")]
    Status { kind: &'static str, name: String, source: kube::Error },

    /// An API error or timeout; a Secret that may not be used is a condition, not this.
    #[error(transparent)]
    ReadSecret(crate::providers::credential::ReadError),

    #[error("failed to serialize {kind}: {source}")]
    Serialize { kind: &'static str, source: serde_json::Error },

    #[error("failed to write: this replica is not the leader")]
    NotLeader,

    #[error("failed to reconcile {0}: the object has no namespace")]
    MissingNamespace(String),
}

impl Error {
    /// Label value for `hyperpage_reconcile_errors_total{category}`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Read { .. } => "read",
            Error::Delete { .. } => "delete",
            Error::Status { .. } => "status",
            Error::ReadSecret(_) => "secret",
            Error::Serialize { .. } => "serialize",
            Error::NotLeader => "not_leader",
            Error::MissingNamespace(_) => "invalid",
        }
    }

    /// Permanent errors wait for the object to change instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::MissingNamespace(_) | Error::Serialize { .. })
    }
}

/// Exponential backoff for transient errors: 2s, 4s, 8s … capped at 5 minutes.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(8);
    Duration::from_secs(2u64 << exponent).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn messages_are_lowercase_failed_to() {
        let e = Error::MissingNamespace("ws".into());
        assert!(e.to_string().starts_with("failed to"));
        assert!(Error::NotLeader.to_string().starts_with("failed to"));
    }
}
