//! The rate-limit ledger: one entry per credential fingerprint, shared by every binding that
//! uses the same token, so two bindings cannot spend the same quota twice.

use super::ProviderError;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What the upstream last said about a token's quota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub reset_at: Option<Timestamp>,
    /// No request before this time (Retry-After, secondary limits).
    pub blocked_until: Option<Timestamp>,
    /// Secondary-limit hits in a row, for exponential backoff.
    pub strikes: u32,
}

/// Rate-limit information read off one response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub reset_at: Option<Timestamp>,
    pub retry_after: Option<Duration>,
}

fn header<'a>(headers: &'a http::HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.get(*n)).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The longest wait any header may impose: a hostile or broken upstream cannot park a
/// binding for years.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

fn clamp_at(t: Timestamp, now: Timestamp) -> Timestamp {
    let latest = now.checked_add(SignedDuration::try_from(MAX_WAIT).expect("a day fits")).unwrap_or(now);
    t.min(latest)
}

/// Reads GitHub's `x-ratelimit-*`, GitLab's `RateLimit-*`, Jira's `X-RateLimit-*` and any
/// `Retry-After` (seconds or an HTTP date). Header names are case-insensitive.
pub fn observe(headers: &http::HeaderMap, now: Timestamp) -> Observed {
    let number = |names: &[&str]| header(headers, names).and_then(|v| v.parse::<i64>().ok());
    let reset_at = header(headers, &["x-ratelimit-reset", "ratelimit-reset"]).and_then(|v| {
        v.parse::<i64>()
            .ok()
            .and_then(|n| {
                // Epoch seconds (GitHub, GitLab); small numbers are "seconds from now" (IETF draft).
                if n > 1_000_000_000 { Timestamp::from_second(n).ok() } else { now.checked_add(SignedDuration::from_secs(n)).ok() }
            })
            .or_else(|| v.parse::<Timestamp>().ok())
            .map(|t| clamp_at(t, now))
    });
    let retry_after = header(headers, &["retry-after"]).and_then(|v| {
        v.parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .or_else(|| {
                let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
                Some(Duration::try_from(when.duration_since(now)).unwrap_or_default())
            })
            .map(|d| d.min(MAX_WAIT))
    });
    Observed {
        limit: number(&["x-ratelimit-limit", "ratelimit-limit"]),
        remaining: number(&["x-ratelimit-remaining", "ratelimit-remaining"]),
        reset_at,
        retry_after,
    }
}

#[derive(Default)]
pub struct Ledger {
    entries: Mutex<HashMap<String, LedgerEntry>>,
}

impl Ledger {
    pub fn get(&self, credential: &str) -> Option<LedgerEntry> {
        self.entries.lock().expect("ledger lock").get(credential).cloned()
    }

    /// Seeds an entry from the shared cache when this process has none yet.
    pub fn seed(&self, credential: &str, entry: LedgerEntry) {
        self.entries.lock().expect("ledger lock").entry(credential.to_string()).or_insert(entry);
    }

    /// May a request be sent now? Refuses while blocked, and when the quota is down to the
    /// reserve before its window resets.
    pub fn check(&self, credential: &str, reserve: i64, now: Timestamp) -> Result<(), ProviderError> {
        let Some(entry) = self.get(credential) else { return Ok(()) };
        if let Some(until) = entry.blocked_until.filter(|t| *t > now) {
            return Err(ProviderError::RateLimited { until, why: "the provider asked to wait (Retry-After or a secondary limit)".into() });
        }
        if let (Some(remaining), Some(reset)) = (entry.remaining, entry.reset_at)
            && remaining <= reserve
            && reset > now
        {
            return Err(ProviderError::RateLimited {
                until: reset,
                why: format!("{remaining} requests left, reserve is {reserve}; waiting for the window to reset"),
            });
        }
        Ok(())
    }

    /// Records a response's headers. Returns the updated entry (for persistence).
    pub fn record(&self, credential: &str, observed: &Observed, success: bool) -> LedgerEntry {
        let mut entries = self.entries.lock().expect("ledger lock");
        let entry = entries.entry(credential.to_string()).or_default();
        if observed.limit.is_some() {
            entry.limit = observed.limit;
        }
        if observed.remaining.is_some() {
            entry.remaining = observed.remaining;
        }
        if observed.reset_at.is_some() {
            entry.reset_at = observed.reset_at;
        }
        if success {
            entry.strikes = 0;
        }
        entry.clone()
    }

    /// The provider refused with a limit: wait `Retry-After` when given, else at least 60 s,
    /// doubling with each consecutive hit (GitHub's guidance for secondary limits). A refusal
    /// that arrives while the credential is already waiting answers a request sent before the
    /// wait began (in flight, or another binding's with the same token): it is the same hit,
    /// not a new one, so a burst of refusals does not double the wait once per request.
    pub fn block(&self, credential: &str, observed: &Observed, now: Timestamp) -> LedgerEntry {
        let mut entries = self.entries.lock().expect("ledger lock");
        let entry = entries.entry(credential.to_string()).or_default();
        if entry.blocked_until.is_none_or(|until| until <= now) {
            entry.strikes = entry.strikes.saturating_add(1);
        }
        let wait = match (observed.retry_after, observed.remaining, observed.reset_at) {
            (Some(wait), _, _) => wait,
            // The primary quota is used up: wait for its reset, plus a second because reset
            // headers are whole seconds and the upstream's clock may be a little behind.
            (None, Some(0), Some(reset)) => {
                entry.strikes = 0;
                Duration::try_from(reset.duration_since(now)).unwrap_or_default() + Duration::from_secs(1)
            }
            _ => super::SECONDARY_LIMIT_WAIT * 2u32.saturating_pow(entry.strikes.saturating_sub(1).min(6)),
        };
        let until = now.checked_add(SignedDuration::try_from(wait.min(MAX_WAIT)).unwrap_or(SignedDuration::from_secs(60))).unwrap_or(now);
        entry.blocked_until = Some(until);
        if observed.remaining.is_some() {
            entry.remaining = observed.remaining;
        }
        if observed.reset_at.is_some() {
            entry.reset_at = observed.reset_at;
        }
        entry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    fn now() -> Timestamp {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn reads_github_gitlab_and_jira_headers() {
        let gh = observe(
            &headers(&[("x-ratelimit-limit", "5000"), ("x-ratelimit-remaining", "4990"), ("x-ratelimit-reset", "1795428000")]),
            now(),
        );
        assert_eq!((gh.limit, gh.remaining), (Some(5000), Some(4990)));
        assert_eq!(gh.reset_at, Some(Timestamp::from_second(1795428000).unwrap()));
        let gl =
            observe(&headers(&[("RateLimit-Limit", "2000"), ("RateLimit-Remaining", "1999"), ("RateLimit-Reset", "1795428060")]), now());
        assert_eq!((gl.limit, gl.remaining), (Some(2000), Some(1999)));
        let jira = observe(
            &headers(&[("X-RateLimit-Remaining", "10"), ("X-RateLimit-Reset", "2026-11-23T10:05:00Z"), ("Retry-After", "30")]),
            now(),
        );
        assert_eq!(jira.reset_at, Some("2026-11-23T10:05:00Z".parse().unwrap()));
        assert_eq!(jira.retry_after, Some(Duration::from_secs(30)));
        let date = observe(&headers(&[("Retry-After", "Mon, 23 Nov 2026 10:02:00 GMT")]), now());
        assert_eq!(date.retry_after, Some(Duration::from_secs(120)));
    }

    #[test]
    fn retry_after_and_reset_are_clamped_to_a_day() {
        let far = observe(&headers(&[("retry-after", "999999999"), ("x-ratelimit-reset", "4102444800")]), now());
        assert_eq!(far.retry_after, Some(MAX_WAIT));
        assert_eq!(far.reset_at, Some(now().checked_add(SignedDuration::from_hours(24)).unwrap()));
        let date = observe(&headers(&[("retry-after", "Fri, 01 Jan 2100 00:00:00 GMT")]), now());
        assert_eq!(date.retry_after, Some(MAX_WAIT));
        let blocked = Ledger::default().block("tok", &far, now());
        assert_eq!(blocked.blocked_until, Some(now().checked_add(SignedDuration::from_hours(24)).unwrap()));
    }

    #[test]
    fn the_reserve_stops_spending_until_the_reset() {
        let ledger = Ledger::default();
        let reset = now().checked_add(SignedDuration::from_mins(10)).unwrap();
        ledger.record("tok", &Observed { limit: Some(5000), remaining: Some(100), reset_at: Some(reset), retry_after: None }, true);
        assert!(ledger.check("tok", 50, now()).is_ok());
        assert!(matches!(ledger.check("tok", 100, now()), Err(ProviderError::RateLimited { until, .. }) if until == reset));
        assert!(ledger.check("tok", 100, reset.checked_add(SignedDuration::from_secs(1)).unwrap()).is_ok(), "a new window");
        assert!(ledger.check("other-token", 100, now()).is_ok(), "the ledger is per credential");
    }

    #[test]
    fn secondary_limits_back_off_from_a_minute_and_double() {
        let ledger = Ledger::default();
        let first = ledger.block("tok", &Observed::default(), now());
        assert_eq!(first.blocked_until, Some(now().checked_add(SignedDuration::from_secs(60)).unwrap()));
        // The chaos suite's 429 storm: thirty bindings sharing a token, each refused while the
        // first refusal's wait runs, had doubled it to 32 minutes. They are one hit.
        for _ in 0..30 {
            ledger.block("tok", &Observed::default(), now());
        }
        assert_eq!(ledger.get("tok").unwrap().blocked_until, first.blocked_until, "refusals during the wait do not double it");
        // Refused again after waiting: that doubles.
        let later = now().checked_add(SignedDuration::from_secs(61)).unwrap();
        let second = ledger.block("tok", &Observed::default(), later);
        assert_eq!(second.blocked_until, Some(later.checked_add(SignedDuration::from_secs(120)).unwrap()));
        let told = ledger.block("tok", &Observed { retry_after: Some(Duration::from_secs(7)), ..Default::default() }, later);
        assert_eq!(told.blocked_until, Some(later.checked_add(SignedDuration::from_secs(7)).unwrap()), "Retry-After wins");
        // An exhausted primary quota whose reset is (just) past: retry a second later, not in minutes.
        let just_past = Observed { remaining: Some(0), reset_at: Some(now()), ..Default::default() };
        assert_eq!(ledger.block("tok", &just_past, now()).blocked_until, Some(now().checked_add(SignedDuration::from_secs(1)).unwrap()));
        ledger.record("tok", &Observed::default(), true);
        assert_eq!(ledger.get("tok").unwrap().strikes, 0);
    }
}
