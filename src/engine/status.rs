//! Status composition (pure): validation conditions + the engine's last poll → ToolBinding
//! conditions and data. Stale data is kept and marked, never dropped.

use crate::api::ToolBinding;
use crate::api::conditions::{self, CREDENTIALS_VALID, DEGRADED, DesiredCondition, RATE_LIMITED, READY, SYNCED};
use crate::api::toolbinding::RateLimitStatus;
use crate::providers::{ProviderError, Snapshot};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The outcome of the newest poll of one binding, and the last good data.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncRecord {
    pub attempted_at: Time,
    pub succeeded_at: Option<Time>,
    pub snapshot: Option<Snapshot>,
    pub error: Option<ProviderError>,
    pub rate_limit: Option<RateLimitStatus>,
    /// Whether the newest poll found the same data as the one before.
    pub unchanged: bool,
}

/// What is known of a binding's newest poll.
#[derive(Clone, Copy, Debug)]
pub enum LastPoll<'a> {
    /// Polled in this leadership term.
    Fresh(&'a SyncRecord),
    /// Polled by an earlier leader, for the current generation: its conditions, as status
    /// holds them. A new leader takes over from them instead of flipping to SyncPending.
    Carried(&'a [Condition]),
    /// Never polled (or the spec changed since).
    None,
}

impl<'a> LastPoll<'a> {
    /// The engine's record when there is one, else what status says about the current
    /// generation.
    pub fn of(record: Option<&'a SyncRecord>, binding: &'a ToolBinding) -> Self {
        if let Some(record) = record {
            return LastPoll::Fresh(record);
        }
        let Some(status) = binding.status.as_ref() else { return LastPoll::None };
        let current = status.observed_generation == binding.metadata.generation && status.last_sync_time.is_some();
        match conditions::find(&status.conditions, SYNCED) {
            Some(synced) if current && synced.observed_generation == binding.metadata.generation => LastPoll::Carried(&status.conditions),
            _ => LastPoll::None,
        }
    }
}

/// Every reason [`compose`] writes after a poll; status text maps back to these.
fn known_reason(reason: &str) -> Option<&'static str> {
    const OWN: [&str; 8] =
        ["Synced", "Accepted", "Rejected", "WaitingForQuota", "RateLimited", "WithinLimits", "AsExpected", "CacheFallback"];
    OWN.iter().chain(ProviderError::REASONS.iter()).find(|r| **r == reason).copied()
}

/// A poll's conditions as an earlier leader wrote them, or None when any is not one a poll
/// produces (then the binding waits for its own poll). `CredentialsValid` is the validation's
/// unless the poll itself set it.
fn carried(previous: &[Condition], credentials: &DesiredCondition) -> Option<Vec<DesiredCondition>> {
    [READY, CREDENTIALS_VALID, SYNCED, RATE_LIMITED, DEGRADED]
        .into_iter()
        .map(|type_| {
            let c = conditions::find(previous, type_)?;
            if type_ == CREDENTIALS_VALID && !matches!(c.reason.as_str(), "Accepted" | "Rejected") {
                return Some(credentials.clone());
            }
            let status = match c.status.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => return None,
            };
            Some(DesiredCondition { type_, status, reason: known_reason(&c.reason)?, message: c.message.clone() })
        })
        .collect()
}

/// What the engine contributes to a binding's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Composed {
    pub conditions: Vec<DesiredCondition>,
    pub record: Option<SyncRecord>,
}

fn when(t: &Time) -> String {
    t.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The poll reason of a token the provider refused (also read back from status).
pub const REJECTED: &str = "Rejected";

/// `validation` holds the binding check's `Ready` and `CredentialsValid`, found by type.
pub fn compose(validation: Vec<DesiredCondition>, last: LastPoll<'_>, cache_fallback: bool) -> Vec<DesiredCondition> {
    let of = |type_: &'static str| {
        let found = validation.iter().find(|c| c.type_ == type_).cloned();
        found.unwrap_or_else(|| DesiredCondition::unknown(type_, "NotValidated", "the binding was not validated"))
    };
    let mut ready = of(READY);
    let mut credentials = of(CREDENTIALS_VALID);
    if !ready.is_true() {
        let not_polled = format!("not polled: {}", ready.message);
        return vec![
            ready,
            credentials,
            DesiredCondition::unknown(SYNCED, "NotPolled", not_polled),
            DesiredCondition::new(RATE_LIMITED, false, "WithinLimits", "no requests are being made"),
            DesiredCondition::new(DEGRADED, false, "AsExpected", "nothing to report"),
        ];
    }
    let sync = match last {
        LastPoll::Fresh(record) => Some(record),
        LastPoll::Carried(previous) => {
            if let Some(conditions) = carried(previous, &credentials) {
                return conditions;
            }
            None
        }
        LastPoll::None => None,
    };
    let Some(sync) = sync else {
        return vec![
            DesiredCondition::unknown(READY, "SyncPending", "waiting for the first poll"),
            credentials,
            DesiredCondition::unknown(SYNCED, "SyncPending", "waiting for the first poll"),
            DesiredCondition::new(RATE_LIMITED, false, "WithinLimits", "no requests made yet"),
            DesiredCondition::new(DEGRADED, false, "AsExpected", "nothing to report"),
        ];
    };
    let stale = sync.succeeded_at.as_ref().map(|t| format!("; showing data from {}", when(t))).unwrap_or_default();
    let quota = match &sync.rate_limit {
        // No remaining count or reset time here: they move with every poll of any binding of
        // this token, and an unchanged poll must leave status unchanged.
        Some(RateLimitStatus { limit: Some(l), .. }) => {
            format!("within the provider's quota of {l} requests per window")
        }
        _ => "the provider reports no quota".into(),
    };
    let mut rate_limited = DesiredCondition::new(RATE_LIMITED, false, "WithinLimits", quota);
    let mut degraded = if cache_fallback {
        DesiredCondition::new(DEGRADED, true, "CacheFallback", "Redis is unavailable: caching in memory, a new leader would start cold")
    } else {
        DesiredCondition::new(DEGRADED, false, "AsExpected", "nothing to report")
    };
    let synced = match &sync.error {
        None => {
            credentials = DesiredCondition::new(CREDENTIALS_VALID, true, "Accepted", "the provider accepted the token");
            // No timestamps in these messages: an unchanged poll must leave status unchanged.
            ready = DesiredCondition::new(READY, true, "Synced", "the newest poll succeeded");
            DesiredCondition::new(SYNCED, true, "Synced", "the newest poll succeeded")
        }
        Some(error @ ProviderError::RateLimited { until, .. }) => {
            rate_limited = DesiredCondition::new(RATE_LIMITED, true, "RateLimited", error.to_string());
            ready = if sync.succeeded_at.is_some() {
                DesiredCondition::new(READY, true, "WaitingForQuota", format!("paused until {until}{stale}"))
            } else {
                DesiredCondition::new(READY, false, "RateLimited", format!("paused until {until} before any data was read"))
            };
            DesiredCondition::new(SYNCED, false, "RateLimited", format!("{error}{stale}"))
        }
        Some(error) => {
            let reason = error.reason();
            if let ProviderError::CredentialsRejected { .. } = error {
                credentials = DesiredCondition::new(CREDENTIALS_VALID, false, REJECTED, error.to_string());
            }
            ready = DesiredCondition::new(READY, false, reason, error.to_string());
            if !cache_fallback || sync.succeeded_at.is_some() {
                degraded = DesiredCondition::new(DEGRADED, true, reason, format!("{error}{stale}"));
            }
            DesiredCondition::new(SYNCED, false, reason, format!("{error}{stale}"))
        }
    };
    vec![ready, credentials, synced, rate_limited, degraded]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::DesiredCondition as D;

    fn valid() -> Vec<D> {
        vec![D::new(READY, true, "Configured", "ok"), D::new(CREDENTIALS_VALID, true, "SecretFound", "ok")]
    }
    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }
    fn find<'a>(c: &'a [D], type_: &str) -> &'a D {
        c.iter().find(|c| c.type_ == type_).unwrap()
    }
    fn record(error: Option<ProviderError>, succeeded: bool) -> SyncRecord {
        SyncRecord {
            attempted_at: t("2026-11-23T10:00:00Z"),
            succeeded_at: succeeded.then(|| t("2026-11-23T09:55:00Z")),
            snapshot: succeeded.then(Snapshot::default),
            error,
            rate_limit: None,
            unchanged: false,
        }
    }

    #[test]
    fn before_the_first_poll_ready_is_unknown() {
        let c = compose(valid(), LastPoll::None, false);
        assert_eq!((find(&c, READY).status, find(&c, READY).reason), (None, "SyncPending"));
    }

    #[test]
    fn a_failed_poll_keeps_data_and_says_since_when() {
        let err = ProviderError::Upstream { url: "https://api.github.com/repos/a/b/pulls".into(), reason: "HTTP 502".into() };
        let c = compose(valid(), LastPoll::Fresh(&record(Some(err), true)), false);
        assert_eq!((find(&c, SYNCED).status, find(&c, SYNCED).reason), (Some(false), "UpstreamError"));
        let degraded = find(&c, DEGRADED);
        assert_eq!(degraded.status, Some(true));
        assert!(degraded.message.contains("showing data from 2026-11-23 09:55:00 UTC"), "{}", degraded.message);
    }

    #[test]
    fn a_rejected_token_flips_credentials_valid() {
        let c = compose(
            valid(),
            LastPoll::Fresh(&record(Some(ProviderError::CredentialsRejected { provider: "github", status: 401 }), false)),
            false,
        );
        assert_eq!((find(&c, CREDENTIALS_VALID).status, find(&c, CREDENTIALS_VALID).reason), (Some(false), "Rejected"));
        assert_eq!(find(&c, READY).status, Some(false));
    }

    #[test]
    fn a_quota_wait_is_rate_limited_not_failed() {
        let until: jiff::Timestamp = "2026-11-23T11:00:00Z".parse().unwrap();
        let c = compose(valid(), LastPoll::Fresh(&record(Some(ProviderError::RateLimited { until, why: "reserve".into() }), true)), false);
        assert_eq!(find(&c, RATE_LIMITED).status, Some(true));
        assert_eq!((find(&c, READY).status, find(&c, READY).reason), (Some(true), "WaitingForQuota"));
        assert_eq!(find(&c, DEGRADED).status, Some(false));
    }

    /// A new leader, with no poll of its own yet, writes what the last leader wrote.
    #[test]
    fn a_new_leader_carries_the_last_poll_over() {
        let now = t("2026-11-23T10:00:00Z");
        let mut binding: ToolBinding = serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap();
        binding.metadata.generation = Some(3);
        let until: jiff::Timestamp = "2026-11-23T11:00:00Z".parse().unwrap();
        for error in
            [None, Some(ProviderError::RateLimited { until, why: "reserve".into() }), Some(ProviderError::NotFound { url: "u".into() })]
        {
            let written = compose(valid(), LastPoll::Fresh(&record(error.clone(), true)), false);
            let status = crate::api::toolbinding::ToolBindingStatus {
                observed_generation: Some(3),
                conditions: conditions::merge(&[], &written, Some(3), &now),
                last_sync_time: Some(now.clone()),
                ..Default::default()
            };
            binding.status = Some(status);
            let last = LastPoll::of(None, &binding);
            assert!(matches!(last, LastPoll::Carried(_)), "{error:?}");
            assert_eq!(compose(valid(), last, false), written, "{error:?}");
        }
        binding.metadata.generation = Some(4);
        assert!(matches!(LastPoll::of(None, &binding), LastPoll::None), "a changed spec waits for its own poll");
    }

    #[test]
    fn the_conditions_do_not_follow_the_quota_other_bindings_spend() {
        let with = |remaining, reset: &str| SyncRecord {
            rate_limit: Some(RateLimitStatus { limit: Some(5000), remaining: Some(remaining), reset_at: Some(t(reset)) }),
            ..record(None, true)
        };
        let a = compose(valid(), LastPoll::Fresh(&with(4000, "2026-11-23T11:00:00Z")), false);
        let b = compose(valid(), LastPoll::Fresh(&with(3120, "2026-11-23T12:00:00Z")), false);
        assert_eq!(a, b);
        assert_eq!(find(&a, RATE_LIMITED).message, "within the provider's quota of 5000 requests per window");
    }

    #[test]
    fn invalid_bindings_are_not_polled() {
        let invalid =
            vec![D::new(READY, false, "SecretNotFound", "missing"), D::new(CREDENTIALS_VALID, false, "SecretNotFound", "missing")];
        let c = compose(invalid, LastPoll::Fresh(&record(None, true)), false);
        assert_eq!(find(&c, READY).reason, "SecretNotFound");
        assert_eq!(find(&c, SYNCED).reason, "NotPolled");
    }
}
