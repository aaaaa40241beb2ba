//! Condition bookkeeping shared by both resources.
//!
//! `lastTransitionTime` moves only when a condition's status changes; reason and message may
//! change without a transition, as in the Kubernetes API conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const CREDENTIALS_VALID: &str = "CredentialsValid";
pub const SYNCED: &str = "Synced";
pub const RATE_LIMITED: &str = "RateLimited";

/// A condition as a reconciler wants it, before transition times are decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    /// `None` is "Unknown": not yet known (e.g. before the first poll).
    pub status: Option<bool>,
    pub reason: &'static str,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status: Some(status), reason, message: message.into() }
    }

    pub fn unknown(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status: None, reason, message: message.into() }
    }

    pub fn is_true(&self) -> bool {
        self.status == Some(true)
    }
}

fn status_word(status: Option<bool>) -> &'static str {
    match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
}

/// Turns desired conditions into API conditions, keeping `lastTransitionTime` from `previous`
/// whenever the status did not change.
pub fn merge(previous: &[Condition], desired: &[DesiredCondition], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    desired
        .iter()
        .map(|want| {
            let status = status_word(want.status).to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == want.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: want.type_.to_string(),
                status,
                reason: want.reason.to_string(),
                message: want.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_` in a list, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ts: &str) -> Time {
        Time(ts.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(&[], &[DesiredCondition::new(READY, false, "RollingOut", "0/1")], Some(1), &at("2026-01-01T00:00:00Z"));
        assert_eq!(first[0].last_transition_time, at("2026-01-01T00:00:00Z"));

        // Same status, new message: time stays.
        let second = merge(&first, &[DesiredCondition::new(READY, false, "RollingOut", "0/2")], Some(2), &at("2026-01-01T00:01:00Z"));
        assert_eq!(second[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert_eq!(second[0].message, "0/2");
        assert_eq!(second[0].observed_generation, Some(2));

        // Status flips: time moves.
        let third = merge(&second, &[DesiredCondition::new(READY, true, "PortalAvailable", "2/2")], Some(2), &at("2026-01-01T00:02:00Z"));
        assert_eq!(third[0].last_transition_time, at("2026-01-01T00:02:00Z"));
        assert!(is_true(&third, READY));
    }
}
