//! The tools: one module per provider, all on the shared [`http::UpstreamClient`].
//!
//! A provider turns one binding's spec into a [`Snapshot`]: counts and the newest items per
//! capability (`codeReviews`, `pipelines`, `tickets`, `artifacts`).

pub mod credential;
pub mod github;
pub mod gitlab;
pub mod harbor;
pub mod http;
pub mod jenkins;
pub mod jira;
pub mod ledger;
pub mod safety;

use crate::api::toolbinding::{Capability, CountGap, GapKind, Item, ToolItems, ToolSummary};
use crate::api::{Provider, ToolBindingSpec};
use std::time::Duration;

/// Items kept per capability in status: enough for a dashboard, small enough for etcd.
pub const MAX_ITEMS: usize = 20;

/// What one poll of one binding found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub summary: ToolSummary,
    pub items: ToolItems,
}

impl Snapshot {
    /// Keeps the newest [`MAX_ITEMS`] per capability, newest first.
    pub fn bounded(mut self) -> Self {
        for list in [&mut self.items.code_reviews, &mut self.items.pipelines, &mut self.items.tickets, &mut self.items.artifacts] {
            list.sort_by(|a, b| b.updated_at.as_ref().map(|t| t.0).cmp(&a.updated_at.as_ref().map(|t| t.0)));
            list.truncate(MAX_ITEMS);
        }
        self
    }

    /// Records that a capability's count is not exact.
    pub fn gap(&mut self, capability: Capability, kind: GapKind, reason: impl Into<String>) {
        let reason = reason.into();
        if !self.summary.gaps.iter().any(|g| g.capability == capability && g.kind == kind && g.reason == reason) {
            self.summary.gaps.push(CountGap { capability, kind, reason });
        }
    }

    /// Runs one capability's part of a poll: a capability the upstream refuses for this
    /// token or has switched off (403/410) becomes "n/a" with the upstream's reason, and
    /// what the other capabilities read stands.
    pub fn capability<T>(&mut self, capability: Capability, result: Result<T, ProviderError>) -> Result<Option<T>, ProviderError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(error @ ProviderError::Unavailable { .. }) => {
                self.gap(capability, GapKind::Unavailable, error.to_string());
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }
}

/// Why a poll did not produce data. Messages never contain the token or response bodies.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("failed to authenticate: {provider} answered HTTP {status}; check the token in the Secret")]
    CredentialsRejected { provider: &'static str, status: u16 },

    #[error("failed to poll: rate limited until {until} ({why})")]
    RateLimited { until: jiff::Timestamp, why: String },

    #[error("failed to poll: endpoint refused: {0}")]
    EndpointRefused(String),

    #[error("failed to poll {url}: {reason}")]
    Upstream { url: String, reason: String },

    #[error("failed to poll {url}: not available to this token or switched off upstream (HTTP {status}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Unavailable { url: String, status: u16, message: String },

    #[error("failed to poll {url}: not found (HTTP 404); check the names in the spec")]
    NotFound { url: String },

    #[error("failed to poll {url}: the response was not the JSON expected ({reason})")]
    Malformed { url: String, reason: String },

    #[error("failed to poll: circuit open for {host} after repeated failures; retrying after {until}")]
    CircuitOpen { host: String, until: jiff::Timestamp },

    #[error("failed to poll: {0}")]
    Config(String),

    #[error("failed to use the credential: {0}")]
    Credential(credential::Problem),
}

impl ProviderError {
    /// Every reason [`ProviderError::reason`] gives.
    pub const REASONS: [&'static str; 9] = [
        "CredentialsRejected",
        "RateLimited",
        "EndpointRefused",
        "UpstreamError",
        "CapabilityUnavailable",
        "NotFound",
        "MalformedResponse",
        "CircuitOpen",
        "InvalidSpec",
    ];

    /// The condition reason this error shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::CredentialsRejected { .. } => "CredentialsRejected",
            ProviderError::RateLimited { .. } => "RateLimited",
            ProviderError::EndpointRefused(_) => "EndpointRefused",
            ProviderError::Upstream { .. } => "UpstreamError",
            ProviderError::Unavailable { .. } => "CapabilityUnavailable",
            ProviderError::NotFound { .. } => "NotFound",
            ProviderError::Malformed { .. } => "MalformedResponse",
            ProviderError::CircuitOpen { .. } => "CircuitOpen",
            ProviderError::Config(_) => "InvalidSpec",
            ProviderError::Credential(problem) => problem.reason().as_str(),
        }
    }
}

/// How a provider authenticates, built from the Secret's value. It has no printable
/// name: the ledger and the cache key it by a keyed digest ([`http::CacheKey`]), metrics by
/// the Secret's name.
#[derive(Clone)]
pub struct Credential {
    /// Full header value (e.g. "Bearer …"); never logged.
    header: (::http::HeaderName, ::http::HeaderValue),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").finish_non_exhaustive()
    }
}

impl Credential {
    /// Builds the header the provider expects from the raw Secret value.
    pub fn new(provider: Provider, token: &str) -> Result<Self, ProviderError> {
        use base64::Engine as _;
        let token = token.trim();
        let basic = |t: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(t));
        let (name, value) = match provider {
            Provider::Github => (::http::header::AUTHORIZATION, format!("Bearer {token}")),
            Provider::Gitlab => (::http::HeaderName::from_static("private-token"), token.to_string()),
            // Jira Cloud uses email:api-token (Basic); Server/DC a personal access token (Bearer).
            Provider::Jira if token.contains(':') => (::http::header::AUTHORIZATION, basic(token)),
            Provider::Jira => (::http::header::AUTHORIZATION, format!("Bearer {token}")),
            // user:api-token, robot$name:secret
            Provider::Jenkins | Provider::Harbor => (::http::header::AUTHORIZATION, basic(token)),
        };
        let mut value = ::http::HeaderValue::from_str(&value)
            .map_err(|_| ProviderError::Config("the token contains characters that cannot be sent in a header".into()))?;
        value.set_sensitive(true);
        Ok(Self { header: (name, value) })
    }

    pub fn header(&self) -> (&::http::HeaderName, &::http::HeaderValue) {
        (&self.header.0, &self.header.1)
    }
}

/// Whose poll this is: the binding (cache entries are scoped to its namespace and removed
/// with it) and the Secret its token came from (the name metrics use).
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub binding: &'a str,
    pub secret: &'a str,
}

/// Everything a provider needs for one poll.
pub struct PollRequest<'a> {
    pub spec: &'a ToolBindingSpec,
    pub endpoint: url::Url,
    pub credential: &'a Credential,
    /// Requests to keep in reserve (spec.rateLimit.minRemaining).
    pub reserve: i64,
    /// Per-minute cap for this binding (spec.rateLimit.maxRequestsPerMinute).
    pub budget: &'a Budget,
    pub scope: Scope<'a>,
}

impl PollRequest<'_> {
    /// One upstream request of this poll: same provider, credential, reserve and budget.
    pub fn upstream<'r>(&'r self, url: url::Url, extra_headers: &'r [(&'static str, &'static str)]) -> http::Request<'r> {
        http::Request {
            provider: self.spec.provider.as_str(),
            url,
            credential: self.credential,
            reserve: self.reserve,
            budget: self.budget,
            extra_headers,
            json: None,
            scope: self.scope,
        }
    }
}

/// A token bucket for `rateLimit.maxRequestsPerMinute`: requests wait for a token.
#[derive(Debug)]
pub struct Budget {
    per_minute: Option<u32>,
    state: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl Budget {
    pub fn new(per_minute: Option<u32>) -> Self {
        let full = f64::from(per_minute.unwrap_or(0));
        Self { per_minute, state: std::sync::Mutex::new((full, tokio::time::Instant::now())) }
    }

    pub fn per_minute(&self) -> Option<u32> {
        self.per_minute
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        let Some(limit) = self.per_minute.filter(|n| *n > 0) else { return };
        let rate = f64::from(limit) / 60.0;
        loop {
            let wait = {
                let mut state = self.state.lock().expect("budget lock");
                let now = tokio::time::Instant::now();
                state.0 = (state.0 + now.duration_since(state.1).as_secs_f64() * rate).min(f64::from(limit));
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The provider's public API address when the spec names none.
pub fn default_endpoint(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Github => Some("https://api.github.com"),
        Provider::Gitlab => Some("https://gitlab.com"),
        Provider::Jira | Provider::Jenkins | Provider::Harbor => None,
    }
}

/// Polls one binding.
pub async fn poll(client: &http::UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let snapshot = match request.spec.provider {
        Provider::Github => github::poll(client, request).await?,
        Provider::Gitlab => gitlab::poll(client, request).await?,
        Provider::Jira => jira::poll(client, request).await?,
        Provider::Jenkins => jenkins::poll(client, request).await?,
        Provider::Harbor => harbor::poll(client, request).await?,
    };
    Ok(snapshot.bounded())
}

/// Parses an RFC 3339 timestamp from upstream JSON.
pub(crate) fn time(value: Option<&str>) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    value?.parse::<jiff::Timestamp>().ok().map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

/// Untrusted text from a response, clipped to [`Text::MAX_CHARS`] while it is parsed: a
/// page of megabyte-long titles costs a few kilobytes once read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Text(String);

impl Text {
    /// Longest text any item field keeps (a URL).
    pub const MAX_CHARS: usize = 2048;
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.chars().take(Text::MAX_CHARS).collect()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The few fields of a user object any provider needs.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct User {
    #[serde(default, alias = "username", alias = "displayName")]
    pub login: Option<Text>,
}

/// Builds an item, trimming untrusted text to a sane length.
pub(crate) fn item(id: String, title: &str, url: &str, state: Option<&str>, author: Option<&str>, updated: Option<&str>) -> Item {
    let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    Item {
        // Long enough for a sha512 digest and for a 255-character GitLab path or Jenkins job
        // with its number: a clipped id is a different (and possibly shared) id.
        id: clip(&id, 320),
        title: clip(title, 256),
        url: clip(url, 2048),
        state: state.map(|s| clip(s, 64)),
        author: author.map(|s| clip(s, 128)),
        updated_at: time(updated),
        failing: false,
    }
}

/// Default wait when a provider signals a limit without saying for how long.
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_reason_is_listed() {
        let now = jiff::Timestamp::now();
        let errors = [
            ProviderError::CredentialsRejected { provider: "github", status: 401 },
            ProviderError::RateLimited { until: now, why: String::new() },
            ProviderError::EndpointRefused(String::new()),
            ProviderError::Upstream { url: String::new(), reason: String::new() },
            ProviderError::Unavailable { url: String::new(), status: 403, message: String::new() },
            ProviderError::NotFound { url: String::new() },
            ProviderError::Malformed { url: String::new(), reason: String::new() },
            ProviderError::CircuitOpen { host: String::new(), until: now },
            ProviderError::Config(String::new()),
        ];
        let reasons: Vec<&str> = errors.iter().map(ProviderError::reason).collect();
        assert_eq!(reasons, ProviderError::REASONS);
    }
}
