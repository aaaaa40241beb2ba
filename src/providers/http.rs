//! The one HTTP client every provider uses: conditional requests, pagination, the rate-limit
//! ledger, Retry-After, timeouts, bounded concurrency, a circuit breaker per host, a
//! response-size cap, and endpoint safety.

use super::ledger::{self, Ledger};
use super::safety::EndpointPolicy;
use super::{Credential, ProviderError};
use crate::engine::cache::{Cache, CachedResponse};
use jiff::{SignedDuration, Timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub provider: &'static str,
    pub credential: String,
}

#[derive(Clone, Default)]
pub struct UpstreamMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub remaining: Family<CredentialLabels, Gauge>,
    pub limit: Family<CredentialLabels, Gauge>,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub max_pages: usize,
    pub per_host_concurrency: usize,
    pub global_concurrency: usize,
    /// Consecutive failures that open a host's circuit, and for how long.
    pub breaker_threshold: u32,
    pub breaker_open_for: Duration,
    pub policy: EndpointPolicy,
    /// The egress proxy the admin named (`--upstream-proxy`); never one from the environment.
    pub proxy: Option<url::Url>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            max_body_bytes: 8 * 1024 * 1024,
            max_pages: 10,
            per_host_concurrency: 4,
            global_concurrency: 16,
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(60),
            policy: EndpointPolicy::default(),
            proxy: None,
        }
    }
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
}

/// A JSON document fetched from upstream, and whether it cost quota.
#[derive(Debug)]
pub struct Fetched {
    pub body: serde_json::Value,
    /// True when the upstream answered 304 and the cached copy was used.
    pub not_modified: bool,
    pub next: Option<url::Url>,
}

pub struct UpstreamClient {
    http: reqwest::Client,
    config: ClientConfig,
    cache: Cache,
    pub ledger: Ledger,
    metrics: UpstreamMetrics,
    global: Semaphore,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

/// One request: where, as whom, and how much quota to keep.
pub struct Request<'a> {
    pub provider: &'static str,
    pub url: url::Url,
    pub credential: &'a Credential,
    pub reserve: i64,
    pub budget: &'a super::Budget,
    pub extra_headers: &'a [(&'static str, &'static str)],
}

impl UpstreamClient {
    pub fn new(config: ClientConfig, cache: Cache, metrics: UpstreamMetrics) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hyperpage/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            // A redirect could lead anywhere, including addresses the policy refuses.
            .redirect(reqwest::redirect::Policy::none());
        // An environment proxy (HTTPS_PROXY) would bypass the endpoint policy: the resolver
        // would only ever see the proxy. Only a proxy the admin names is used; `get_json` then
        // checks each target by name and address before the request.
        let http = match &config.proxy {
            Some(proxy) => http.proxy(reqwest::Proxy::all(proxy.as_str()).expect("main checked the proxy URL")),
            None => http.no_proxy().dns_resolver(Arc::new(super::safety::PolicyResolver(config.policy.clone()))),
        };
        let http = http.build().expect("the HTTP client builds");
        let global = Semaphore::new(config.global_concurrency);
        Self {
            http,
            config,
            cache,
            ledger: Ledger::default(),
            metrics,
            global,
            hosts: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn policy(&self) -> &EndpointPolicy {
        &self.config.policy
    }

    fn host_semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        hosts.entry(host.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.config.per_host_concurrency))).clone()
    }

    fn check_breaker(&self, host: &str, now: Timestamp) -> Result<(), ProviderError> {
        let breakers = self.breakers.lock().expect("breaker lock");
        match breakers.get(host).and_then(|b| b.open_until) {
            Some(until) if until > now => Err(ProviderError::CircuitOpen { host: host.to_string(), until }),
            _ => Ok(()),
        }
    }

    fn breaker_result(&self, host: &str, failed: bool, now: Timestamp) {
        let mut breakers = self.breakers.lock().expect("breaker lock");
        let breaker = breakers.entry(host.to_string()).or_default();
        if !failed {
            *breaker = Breaker::default();
            return;
        }
        breaker.failures += 1;
        if breaker.failures >= self.config.breaker_threshold {
            let open_for = SignedDuration::try_from(self.config.breaker_open_for).unwrap_or(SignedDuration::from_secs(60));
            breaker.open_until = now.checked_add(open_for).ok();
            // Half-open afterwards: one more failure re-opens it.
            breaker.failures = self.config.breaker_threshold - 1;
            tracing::warn!(%host, "circuit opened after repeated failures");
        }
    }

    /// Loads a credential's ledger entry from the shared cache the first time it is used.
    async fn seed_ledger(&self, credential: &str) {
        if self.ledger.get(credential).is_none()
            && let Some(entry) = self.cache.get_ledger(credential).await
        {
            self.ledger.seed(credential, entry);
        }
    }

    fn cache_key(url: &url::Url, credential: &Credential) -> String {
        super::fingerprint(&format!("{url}|{}", credential.fingerprint))
    }

    fn count(&self, provider: &'static str, status_class: &'static str) {
        self.metrics.requests.get_or_create(&RequestLabels { provider, status_class }).inc();
    }

    /// GETs one JSON document, conditionally when a validator is cached.
    pub async fn get_json(&self, request: &Request<'_>) -> Result<Fetched, ProviderError> {
        let now = Timestamp::now();
        let url = &request.url;
        let host = url.host_str().unwrap_or_default().to_string();
        let fingerprint = &request.credential.fingerprint;
        // Through a proxy the resolver never sees the target: check it here, every request.
        if self.config.proxy.is_some() {
            self.config.policy.check(url).await?;
        }
        self.check_breaker(&host, now)?;
        self.seed_ledger(fingerprint).await;
        self.ledger.check(fingerprint, request.reserve, now)?;

        let key = Self::cache_key(url, request.credential);
        let cached = self.cache.get_response(&key).await;
        request.budget.acquire().await;
        let response = {
            let _global = self.global.acquire().await.expect("semaphore open");
            let host_permits = self.host_semaphore(&host);
            let _host = host_permits.acquire().await.expect("semaphore open");
            let (name, value) = request.credential.header();
            let mut builder = self.http.get(url.clone()).header(name, value).header(http::header::ACCEPT, "application/json");
            for (k, v) in request.extra_headers {
                builder = builder.header(*k, *v);
            }
            if let Some(c) = &cached {
                if let Some(etag) = &c.etag {
                    builder = builder.header(http::header::IF_NONE_MATCH, etag);
                }
                if let Some(lm) = &c.last_modified {
                    builder = builder.header(http::header::IF_MODIFIED_SINCE, lm);
                }
            }
            builder.send().await
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.count(request.provider, "error");
                self.breaker_result(&host, true, now);
                let reason = if e.is_timeout() { "timed out".to_string() } else { "could not connect".to_string() };
                return Err(ProviderError::Upstream { url: redact(url), reason });
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let observed = ledger::observe(&headers, now);
        self.count(request.provider, status_class(status.as_u16()));

        let rate_limited = status == http::StatusCode::TOO_MANY_REQUESTS
            || (status == http::StatusCode::FORBIDDEN && (observed.retry_after.is_some() || observed.remaining == Some(0)));
        if rate_limited {
            let entry = self.ledger.block(fingerprint, &observed, now);
            self.persist_ledger(request.provider, fingerprint, &entry).await;
            let until = entry.blocked_until.unwrap_or(now);
            let why = if observed.remaining == Some(0) { "the quota is used up" } else { "the provider asked to wait" };
            return Err(ProviderError::RateLimited { until, why: format!("HTTP {}: {why}", status.as_u16()) });
        }
        let entry = self.ledger.record(fingerprint, &observed, status.is_success() || status.as_u16() == 304);
        self.persist_ledger(request.provider, fingerprint, &entry).await;

        match status.as_u16() {
            304 => {
                self.breaker_result(&host, false, now);
                match cached {
                    Some(c) => Ok(Fetched {
                        body: serde_json::from_str(&c.body).map_err(|e| malformed(url, e))?,
                        not_modified: true,
                        next: c.next.and_then(|n| url::Url::parse(&n).ok()),
                    }),
                    None => Err(ProviderError::Upstream { url: redact(url), reason: "304 without a cached copy".into() }),
                }
            }
            200..=299 => {
                let next = next_link(&headers, url);
                let body = self.read_capped(response, url).await?;
                self.breaker_result(&host, false, now);
                let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| malformed(url, e))?;
                let header_text = |h: http::HeaderName| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
                let etag = header_text(http::header::ETAG);
                let last_modified = header_text(http::header::LAST_MODIFIED);
                if etag.is_some() || last_modified.is_some() {
                    let stored = CachedResponse {
                        etag,
                        last_modified,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        next: next.as_ref().map(url::Url::to_string),
                    };
                    self.cache.put_response(&key, stored).await;
                }
                Ok(Fetched { body: value, not_modified: false, next })
            }
            403 => {
                self.breaker_result(&host, false, now);
                // GitHub's secondary limits may come as a bare 403 whose message says so.
                let body = self.read_capped(response, url).await.unwrap_or_default();
                if String::from_utf8_lossy(&body).to_ascii_lowercase().contains("rate limit") {
                    let entry = self.ledger.block(fingerprint, &observed, now);
                    self.persist_ledger(request.provider, fingerprint, &entry).await;
                    let until = entry.blocked_until.unwrap_or(now);
                    return Err(ProviderError::RateLimited { until, why: "HTTP 403: secondary rate limit".into() });
                }
                Err(ProviderError::CredentialsRejected { provider: request.provider, status: 403 })
            }
            401 => {
                self.breaker_result(&host, false, now);
                Err(ProviderError::CredentialsRejected { provider: request.provider, status: 401 })
            }
            404 => {
                self.breaker_result(&host, false, now);
                Err(ProviderError::NotFound { url: redact(url) })
            }
            300..=399 => {
                self.breaker_result(&host, true, now);
                Err(ProviderError::Upstream { url: redact(url), reason: format!("unexpected redirect (HTTP {})", status.as_u16()) })
            }
            code => {
                self.breaker_result(&host, code >= 500, now);
                Err(ProviderError::Upstream { url: redact(url), reason: format!("HTTP {code}") })
            }
        }
    }

    async fn persist_ledger(&self, provider: &'static str, fingerprint: &str, entry: &ledger::LedgerEntry) {
        let labels = CredentialLabels { provider, credential: fingerprint.to_string() };
        if let Some(remaining) = entry.remaining {
            self.metrics.remaining.get_or_create(&labels).set(remaining);
        }
        if let Some(limit) = entry.limit {
            self.metrics.limit.get_or_create(&labels).set(limit);
        }
        self.cache.put_ledger(fingerprint, entry).await;
    }

    async fn read_capped(&self, response: reqwest::Response, url: &url::Url) -> Result<Vec<u8>, ProviderError> {
        let cap = self.config.max_body_bytes;
        if response.content_length().is_some_and(|l| l as usize > cap) {
            return Err(ProviderError::Upstream { url: redact(url), reason: format!("response larger than {cap} bytes") });
        }
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) =
            response.chunk().await.map_err(|_| ProviderError::Upstream { url: redact(url), reason: "the response was cut off".into() })?
        {
            if body.len() + chunk.len() > cap {
                return Err(ProviderError::Upstream { url: redact(url), reason: format!("response larger than {cap} bytes") });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Follows `Link: rel="next"` up to the page bound, staying on the same host.
    pub async fn get_all(&self, request: Request<'_>) -> Result<Vec<serde_json::Value>, ProviderError> {
        let mut pages = Vec::new();
        let mut next = Some(request.url.clone());
        let origin = request.url.origin();
        while let Some(url) = next.take() {
            if pages.len() >= self.config.max_pages {
                break;
            }
            let fetched = self.get_json(&Request { url, ..request }).await?;
            pages.push(fetched.body);
            next = fetched.next.filter(|n| n.origin() == origin);
        }
        Ok(pages)
    }
}

fn status_class(code: u16) -> &'static str {
    match code {
        200..=299 => "2xx",
        304 => "304",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn malformed(url: &url::Url, e: serde_json::Error) -> ProviderError {
    ProviderError::Malformed { url: redact(url), reason: format!("line {} column {}", e.line(), e.column()) }
}

/// A URL fit for messages: no user info, no query (JQL and tokens can live there).
pub fn redact(url: &url::Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or_default(), url.path())
}

/// The `rel="next"` target of a `Link` header (RFC 8288), resolved against `base`.
pub fn next_link(headers: &http::HeaderMap, base: &url::Url) -> Option<url::Url> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| base.join(target).ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::LINK,
            "<https://api.github.com/repositories/1/pulls?page=2>; rel=\"next\", <https://api.github.com/repositories/1/pulls?page=5>; rel=\"last\""
                .parse()
                .unwrap(),
        );
        let base = url::Url::parse("https://api.github.com/repos/a/b/pulls").unwrap();
        assert_eq!(next_link(&headers, &base).unwrap().as_str(), "https://api.github.com/repositories/1/pulls?page=2");
        headers.insert(http::header::LINK, "<https://x/?page=1>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&headers, &base), None);
    }

    #[test]
    fn redaction_drops_user_info_and_query() {
        let url = url::Url::parse("https://user:pw@jira.example.com/rest/api/2/search?jql=secret").unwrap();
        assert_eq!(redact(&url), "https://jira.example.com/rest/api/2/search");
    }
}
