//! The one HTTP client every provider uses: conditional requests, pagination, the rate-limit
//! ledger, Retry-After, timeouts, bounded concurrency, a circuit breaker per host, a
//! response-size cap, same-origin redirects, and endpoint safety.
//!
//! A request goes through three steps: [`UpstreamClient::send`] (breaker, ledger, budget,
//! permits, the request itself), the pure [`classify`] of status and headers, and the
//! bookkeeping (ledger, breaker, cache) in [`UpstreamClient::get`]. Each page is parsed into
//! the provider's small typed struct; the cache keeps that extracted form, never raw bodies.

use super::ledger::{self, Ledger};
use super::safety::EndpointPolicy;
use super::{Credential, ProviderError};
use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub provider: &'static str,
    pub status_class: &'static str,
}

/// Quota gauges are labelled with the Secret (`namespace/name`), never anything derived
/// from the token.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub provider: &'static str,
    pub secret: String,
}

/// The per-install key of every cache and ledger digest (HMAC-SHA256): without it, nobody
/// can compute which key holds whose data, or find two URLs whose keys collide.
#[derive(Clone)]
pub struct CacheKey(Arc<[u8]>);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(…)")
    }
}

impl CacheKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(Arc::from(bytes))
    }

    /// A key for this process only: a new leader cannot reuse what this one cached.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::new(&bytes)
    }

    /// Full-length HMAC-SHA256 of the parts, each length-prefixed (no two lists of parts
    /// give the same input), in hex.
    pub fn digest(&self, parts: &[&[u8]]) -> String {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
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
    pub cache_key: CacheKey,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            // 16 requests in flight at most 64 MiB: any page the providers ask for (at most
            // 100 items, 20 for the heavy ones) fits in a fraction of it.
            max_body_bytes: 4 * 1024 * 1024,
            max_pages: 10,
            per_host_concurrency: 4,
            global_concurrency: 16,
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(60),
            policy: EndpointPolicy::default(),
            proxy: None,
            cache_key: CacheKey::random(),
        }
    }
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
}

/// Where the client keeps validators and extracted pages, and the ledger. Implemented by
/// the engine's cache (memory or Redis): providers define the interface, the engine fills it.
pub trait ResponseCache: Send + Sync {
    fn get_response<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Option<CachedResponse>>;
    /// `owner` is the binding (`namespace/name`) whose poll stored it, so its entries go with it.
    fn put_response<'a>(&'a self, key: &'a str, response: CachedResponse, owner: &'a str) -> BoxFuture<'a, ()>;
    fn get_ledger<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, Option<ledger::LedgerEntry>>;
    fn put_ledger<'a>(&'a self, credential: &'a str, entry: &'a ledger::LedgerEntry) -> BoxFuture<'a, ()>;
}

/// A stored answer: its validators and the page as the provider extracted it (a few small
/// fields per item, never the raw body), with its paging, so a 304 replays it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedResponse {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The extracted page, as JSON.
    pub body: String,
    #[serde(default)]
    pub paging: Paging,
}

/// What the headers said about pagination and totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Paging {
    /// The next page, on the request's own origin.
    pub next: Option<String>,
    /// The page number of `rel="last"` (GitHub: with `per_page=1`, the total).
    pub last_page: Option<u64>,
    /// `X-Total` (GitLab) or `X-Total-Count` (Harbor).
    pub total: Option<i64>,
}

/// A page fetched from upstream, parsed into the provider's type.
#[derive(Debug)]
pub struct Fetched<T> {
    pub body: T,
    /// True when the upstream answered 304 and the cached copy was used.
    pub not_modified: bool,
    pub paging: Paging,
}

impl<T> Fetched<T> {
    pub fn next(&self) -> Option<url::Url> {
        self.paging.next.as_deref().and_then(|n| url::Url::parse(n).ok())
    }
}

/// A JSON array of which at most [`List::CAP`] elements are kept; the rest are skipped
/// without being stored, so a hostile page of millions of elements costs no memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> List<T> {
    pub const CAP: usize = 100;
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while items.len() < List::<T>::CAP {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(List(items)),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(List(items))
            }
        }
        deserializer.deserialize_seq(Visitor(std::marker::PhantomData))
    }
}

/// How a response is to be treated, from its status and headers alone.
#[derive(Clone, Debug, PartialEq)]
pub enum Class {
    Fresh,
    NotModified,
    /// A redirect to this target (same-origin ones are followed).
    Redirect(Option<url::Url>),
    RateLimited,
    /// 401, or a 403 that says the login itself was refused (Jira's
    /// `X-Authentication-Denied-Reason`, e.g. a CAPTCHA after failed logins).
    Rejected,
    /// 403 or 410: this token may not read this, or the feature is off. The body decides
    /// whether a 403 is really GitHub's secondary rate limit.
    Forbidden,
    NotFound,
    ClientError,
    ServerError,
}

/// Classifies a response (pure). `observed` is what the ledger read off the headers.
pub fn classify(status: u16, headers: &http::HeaderMap, observed: &ledger::Observed, url: &url::Url) -> Class {
    let waits = observed.retry_after.is_some_and(|d| !d.is_zero());
    match status {
        429 => Class::RateLimited,
        // Jira Data Center sends `retry-after: 0` on every answer: only a real wait or an
        // exhausted quota makes a 403 a limit.
        403 if waits || observed.remaining == Some(0) => Class::RateLimited,
        403 if headers.contains_key("x-authentication-denied-reason") => Class::Rejected,
        401 => Class::Rejected,
        403 | 410 => Class::Forbidden,
        404 => Class::NotFound,
        304 => Class::NotModified,
        200..=299 => Class::Fresh,
        301 | 302 | 303 | 307 | 308 => {
            Class::Redirect(headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok()).and_then(|l| url.join(l).ok()))
        }
        500.. => Class::ServerError,
        _ => Class::ClientError,
    }
}

/// Reads pagination and totals off the headers (pure). A next page is taken from GitLab's
/// `X-Next-Page` when present (GitLab builds its `Link` from its configured external host,
/// not the address used), else from `Link: rel="next"`; either way it is put on the
/// request's own origin, so the token never travels elsewhere and an in-cluster address
/// keeps working. Following it is no riskier than following a same-origin link.
pub fn paging(headers: &http::HeaderMap, url: &url::Url) -> Paging {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let next = match text("x-next-page") {
        Some(page) if !page.is_empty() => page.parse::<u64>().ok().map(|n| with_page(url, n)),
        Some(_) => None,
        None => link(headers, url, "next").map(|n| on_origin(&n, url)),
    };
    let last_page =
        link(headers, url, "last").and_then(|l| l.query_pairs().find(|(k, _)| k == "page").and_then(|(_, v)| v.parse::<u64>().ok()));
    let total = text("x-total").or(text("x-total-count")).and_then(|t| t.parse::<i64>().ok());
    Paging { next: next.map(|u| u.to_string()), last_page, total }
}

fn with_page(url: &url::Url, page: u64) -> url::Url {
    let mut next = url.clone();
    let pairs: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != "page").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    next.query_pairs_mut().clear().extend_pairs(pairs).append_pair("page", &page.to_string());
    next
}

fn on_origin(link: &url::Url, request: &url::Url) -> url::Url {
    let mut moved = request.clone();
    moved.set_path(link.path());
    moved.set_query(link.query());
    moved
}

/// The target of a `Link` header entry (RFC 8288) with this `rel`, resolved against `base`.
pub fn link(headers: &http::HeaderMap, base: &url::Url, rel: &str) -> Option<url::Url> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let wanted = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == format!("rel=\"{rel}\"") || p == format!("rel={rel}")
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        wanted.then(|| base.join(target).ok()).flatten()
    })
}

/// What an error body says, bounded and with control characters escaped (a person reads
/// it in status): `message` (GitHub, GitLab), `errorMessages` (Jira), `error`, `errors`.
pub fn upstream_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorBody {
        message: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
        #[serde(default)]
        error_messages: Vec<String>,
        errors: Option<serde_json::Value>,
    }
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let text = parsed
        .error_messages
        .first()
        .cloned()
        .or_else(|| parsed.message.as_ref().and_then(as_text))
        .or_else(|| parsed.error.as_ref().and_then(as_text))
        .or_else(|| parsed.errors.as_ref().filter(|e| e.as_object().is_none_or(|o| !o.is_empty())).and_then(as_text))?;
    let clipped: String = text.chars().take(200).collect();
    let escaped: String =
        clipped.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect();
    Some(if text.chars().count() > 200 { format!("{escaped}…") } else { escaped })
}

pub struct UpstreamClient {
    http: reqwest::Client,
    config: ClientConfig,
    cache: Arc<dyn ResponseCache>,
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
    /// A JSON body makes this a POST (Jira Cloud's approximate count); never cached.
    pub json: Option<&'a str>,
    pub scope: super::Scope<'a>,
}

impl UpstreamClient {
    pub fn new(config: ClientConfig, cache: impl ResponseCache + 'static, metrics: UpstreamMetrics) -> Self {
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
            cache: Arc::new(cache),
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

    /// Where a response is cached: the namespace, the URL and the credential, under the
    /// install's key. Another tenant's binding never shares an entry (no cross-tenant 304).
    fn cache_key(&self, request: &Request<'_>) -> String {
        let (_, credential) = request.credential.header();
        self.config.cache_key.digest(&[
            b"response",
            request.scope.namespace.as_bytes(),
            request.url.as_str().as_bytes(),
            credential.as_bytes(),
        ])
    }

    /// The ledger's name for a credential: shared by every binding with the same token.
    pub fn credential_id(&self, credential: &Credential) -> String {
        let (_, value) = credential.header();
        self.config.cache_key.digest(&[b"credential", value.as_bytes()])
    }

    /// What the ledger knows about a credential's quota.
    pub fn ledger_entry(&self, credential: &Credential) -> Option<ledger::LedgerEntry> {
        self.ledger.get(&self.credential_id(credential))
    }

    fn count(&self, provider: &'static str, status_class: &'static str) {
        self.metrics.requests.get_or_create(&RequestLabels { provider, status_class }).inc();
    }

    /// Sends one GET (breaker, ledger, budget and permits first), conditionally when a
    /// validator is cached.
    async fn send(
        &self,
        request: &Request<'_>,
        url: &url::Url,
        cached: Option<&CachedResponse>,
    ) -> Result<reqwest::Response, ProviderError> {
        let now = Timestamp::now();
        let host = url.host_str().unwrap_or_default().to_string();
        let credential_id = &self.credential_id(request.credential);
        // Through a proxy the resolver never sees the target: check it here, every request.
        if self.config.proxy.is_some() {
            self.config.policy.check(url).await?;
        }
        self.check_breaker(&host, now)?;
        self.seed_ledger(credential_id).await;
        self.ledger.check(credential_id, request.reserve, now)?;
        request.budget.acquire().await;
        let _global = self.global.acquire().await.expect("semaphore open");
        let host_permits = self.host_semaphore(&host);
        let _host = host_permits.acquire().await.expect("semaphore open");
        let (name, value) = request.credential.header();
        let mut builder = match request.json {
            Some(body) => self.http.post(url.clone()).header(http::header::CONTENT_TYPE, "application/json").body(body.to_string()),
            None => self.http.get(url.clone()),
        }
        .header(name, value);
        // One Accept header: the provider's own (GitHub's media type) or plain JSON.
        if !request.extra_headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
            builder = builder.header(http::header::ACCEPT, "application/json");
        }
        for (k, v) in request.extra_headers {
            builder = builder.header(*k, *v);
        }
        if let Some(c) = cached {
            if let Some(etag) = &c.etag {
                builder = builder.header(http::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &c.last_modified {
                builder = builder.header(http::header::IF_MODIFIED_SINCE, lm);
            }
        }
        builder.send().await.map_err(|e| {
            self.count(request.provider, "error");
            self.breaker_result(&host, true, now);
            let reason = if e.is_timeout() { "timed out".to_string() } else { "could not connect".to_string() };
            ProviderError::Upstream { url: redact(url), reason }
        })
    }

    /// GETs one JSON document into `T`, conditionally when a validator is cached, following
    /// same-origin redirects (after the endpoint policy check; never to another origin).
    pub async fn get<T: DeserializeOwned + Serialize>(&self, request: &Request<'_>) -> Result<Fetched<T>, ProviderError> {
        const MAX_REDIRECTS: usize = 3;
        let key = self.cache_key(request);
        let cached = match request.json {
            Some(_) => None,
            None => self.cache.get_response(&key, &format!("{}/{}", request.scope.namespace, request.scope.binding)).await,
        };
        let credential_id = &self.credential_id(request.credential);
        let mut url = request.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send(request, &url, cached.as_ref()).await?;
            let now = Timestamp::now();
            let host = url.host_str().unwrap_or_default().to_string();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let observed = ledger::observe(&headers, now);
            self.count(request.provider, status_class(status));
            let class = classify(status, &headers, &observed, &url);
            if class == Class::RateLimited {
                return self.rate_limited(request, &observed, status, now).await;
            }
            if class == Class::Forbidden {
                let body = self.read_capped(response, &url, ERROR_BODY_BYTES).await.unwrap_or_default();
                let message = upstream_message(&body).unwrap_or_default();
                // GitHub's secondary limits may come as a bare 403 whose message says so.
                if status == 403 && message.to_ascii_lowercase().contains("rate limit") {
                    return self.rate_limited(request, &observed, status, now).await;
                }
                let entry = self.ledger.record(credential_id, &observed, false);
                self.persist_ledger(request, credential_id, &entry).await;
                self.breaker_result(&host, false, now);
                return Err(ProviderError::Unavailable { url: redact(&url), status, message });
            }
            let entry = self.ledger.record(credential_id, &observed, matches!(class, Class::Fresh | Class::NotModified));
            self.persist_ledger(request, credential_id, &entry).await;
            self.breaker_result(&host, class == Class::ServerError, now);
            match class {
                Class::NotModified => {
                    let Some(c) = cached else {
                        return Err(ProviderError::Upstream { url: redact(&url), reason: "304 without a cached copy".into() });
                    };
                    let body = serde_json::from_str(&c.body).map_err(|e| malformed(&url, e))?;
                    return Ok(Fetched { body, not_modified: true, paging: c.paging });
                }
                Class::Fresh => {
                    let paging = paging(&headers, &url);
                    let raw = self.read_chunks(response, &url, self.config.max_body_bytes).await?;
                    let raw = raw.into_vec();
                    let body: T = serde_json::from_slice(&raw).map_err(|e| malformed(&url, e))?;
                    drop(raw);
                    let header_text = |h: http::HeaderName| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
                    let etag = header_text(http::header::ETAG);
                    let last_modified = header_text(http::header::LAST_MODIFIED);
                    if request.json.is_none() && (etag.is_some() || last_modified.is_some()) {
                        let extracted = serde_json::to_string(&body).expect("an extracted page serializes");
                        let stored = CachedResponse { etag, last_modified, body: extracted, paging: paging.clone() };
                        let owner = format!("{}/{}", request.scope.namespace, request.scope.binding);
                        self.cache.put_response(&key, stored, &owner).await;
                    }
                    return Ok(Fetched { body, not_modified: false, paging });
                }
                Class::Redirect(Some(target)) if target.origin() == url.origin() => {
                    self.config.policy.check(&target).await?;
                    url = target;
                }
                Class::Redirect(target) => {
                    let reason = match target {
                        Some(t) => format!(
                            "redirected (HTTP {status}) to another origin {}; not followed with the token",
                            t.origin().ascii_serialization()
                        ),
                        None => format!("HTTP {status} without a Location"),
                    };
                    return Err(ProviderError::Upstream { url: redact(&url), reason });
                }
                Class::Rejected => return Err(ProviderError::CredentialsRejected { provider: request.provider, status }),
                Class::NotFound => return Err(ProviderError::NotFound { url: redact(&url) }),
                Class::ClientError | Class::ServerError => {
                    let body = self.read_capped(response, &url, ERROR_BODY_BYTES).await.unwrap_or_default();
                    let reason = match upstream_message(&body) {
                        Some(m) => format!("HTTP {status}: {m}"),
                        None => format!("HTTP {status}"),
                    };
                    return Err(ProviderError::Upstream { url: redact(&url), reason });
                }
                Class::RateLimited | Class::Forbidden => unreachable!("handled above"),
            }
        }
        Err(ProviderError::Upstream { url: redact(&url), reason: format!("more than {MAX_REDIRECTS} redirects") })
    }

    async fn rate_limited<T>(
        &self,
        request: &Request<'_>,
        observed: &ledger::Observed,
        status: u16,
        now: Timestamp,
    ) -> Result<T, ProviderError> {
        let credential_id = &self.credential_id(request.credential);
        let entry = self.ledger.block(credential_id, observed, now);
        self.persist_ledger(request, credential_id, &entry).await;
        let until = entry.blocked_until.unwrap_or(now);
        let why = if observed.remaining == Some(0) {
            "the quota is used up"
        } else if observed.retry_after.is_some() {
            "the provider asked to wait"
        } else {
            "secondary rate limit"
        };
        Err(ProviderError::RateLimited { until, why: format!("HTTP {status}: {why}") })
    }

    async fn persist_ledger(&self, request: &Request<'_>, credential_id: &str, entry: &ledger::LedgerEntry) {
        let secret = format!("{}/{}", request.scope.namespace, request.scope.secret);
        let labels = CredentialLabels { provider: request.provider, secret };
        if let Some(remaining) = entry.remaining {
            self.metrics.remaining.get_or_create(&labels).set(remaining);
        }
        if let Some(limit) = entry.limit {
            self.metrics.limit.get_or_create(&labels).set(limit);
        }
        self.cache.put_ledger(credential_id, entry).await;
    }

    /// Reads a body of at most `cap` bytes as the chunks it arrived in.
    async fn read_chunks(&self, response: reqwest::Response, url: &url::Url, cap: usize) -> Result<Chunks, ProviderError> {
        let too_large = || ProviderError::Upstream { url: redact(url), reason: format!("response larger than {cap} bytes") };
        if response.content_length().is_some_and(|l| l as usize > cap) {
            return Err(too_large());
        }
        let mut chunks = Chunks::default();
        let mut response = response;
        let failed = |e: reqwest::Error| {
            let reason = if e.is_timeout() { "timed out while reading the response" } else { "the response was cut off" };
            ProviderError::Upstream { url: redact(url), reason: reason.into() }
        };
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if chunks.len + chunk.len() > cap {
                return Err(too_large());
            }
            chunks.len += chunk.len();
            chunks.parts.push_back(chunk);
        }
        Ok(chunks)
    }

    async fn read_capped(&self, response: reqwest::Response, url: &url::Url, cap: usize) -> Result<Vec<u8>, ProviderError> {
        Ok(self.read_chunks(response, url, cap).await?.into_vec())
    }

    /// Follows next pages (see [`paging`]) until `enough` says the items read suffice, there
    /// is no next page, or the page bound is reached. Totals come from headers, not from
    /// reading everything.
    pub async fn get_pages<T: DeserializeOwned + Serialize>(
        &self,
        request: Request<'_>,
        enough: impl Fn(&[Fetched<T>]) -> bool,
    ) -> Result<Vec<Fetched<T>>, ProviderError> {
        let mut pages: Vec<Fetched<T>> = Vec::new();
        let mut next = Some(request.url.clone());
        while let Some(url) = next.take() {
            if pages.len() >= self.config.max_pages {
                break;
            }
            let page = self.get(&Request { url, ..request }).await?;
            next = page.next();
            pages.push(page);
            if enough(&pages) {
                break;
            }
        }
        Ok(pages)
    }
}

/// A body as received: chunks, not one buffer grown by doubling (up to twice the cap).
#[derive(Default)]
struct Chunks {
    parts: std::collections::VecDeque<bytes::Bytes>,
    len: usize,
}

impl Chunks {
    /// One buffer of exactly the body's size, each chunk freed as soon as it is copied.
    fn into_vec(mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(chunk) = self.parts.pop_front() {
            out.extend_from_slice(&chunk);
        }
        out
    }
}

/// Error bodies are read this far, for their message.
const ERROR_BODY_BYTES: usize = 16 * 1024;

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
/// The path is clipped: names in it may come from a hostile page.
pub fn redact(url: &url::Url) -> String {
    const MAX_PATH: usize = 200;
    let path = url.path();
    let clipped: String = path.chars().take(MAX_PATH).collect();
    let more = if clipped.len() < path.len() { "…" } else { "" };
    format!("{}://{}{clipped}{more}", url.scheme(), url.host_str().unwrap_or_default())
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
        assert_eq!(paging(&headers, &base).next.as_deref(), Some("https://api.github.com/repositories/1/pulls?page=2"));
        assert_eq!(paging(&headers, &base).last_page, Some(5));
        headers.insert(http::header::LINK, "<https://x/?page=1>; rel=\"prev\"".parse().unwrap());
        assert_eq!(paging(&headers, &base).next, None);
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn next_pages_stay_on_the_request_origin_and_prefer_x_next_page() {
        let base = url::Url::parse("http://gitlab.gitlab.svc:8080/api/v4/projects/1/issues?state=opened&per_page=20").unwrap();
        let link = "<https://gitlab.example.com/api/v4/projects/1/issues?page=2&per_page=20&state=opened>; rel=\"next\"";
        let gitlab = paging(&headers(&[("link", link), ("x-next-page", "2"), ("x-total", "131")]), &base);
        assert_eq!(gitlab.next.as_deref(), Some("http://gitlab.gitlab.svc:8080/api/v4/projects/1/issues?state=opened&per_page=20&page=2"));
        assert_eq!(gitlab.total, Some(131));
        assert_eq!(paging(&headers(&[("link", link), ("x-next-page", "")]), &base).next, None, "an empty X-Next-Page: the last page");
        let enterprise = paging(&headers(&[("link", link)]), &base);
        assert_eq!(
            enterprise.next.as_deref(),
            Some("http://gitlab.gitlab.svc:8080/api/v4/projects/1/issues?page=2&per_page=20&state=opened")
        );
    }

    #[test]
    fn classification_separates_limits_refusals_and_switched_off_features() {
        let url = url::Url::parse("https://api.github.com/repos/a/b").unwrap();
        let now = Timestamp::now();
        let class = |status: u16, pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            classify(status, &h, &ledger::observe(&h, now), &url)
        };
        assert_eq!(class(403, &[("retry-after", "0")]), Class::Forbidden, "Jira Data Center's retry-after: 0 is no limit");
        assert_eq!(class(403, &[("retry-after", "30")]), Class::RateLimited);
        assert_eq!(class(403, &[("x-ratelimit-remaining", "0")]), Class::RateLimited);
        assert_eq!(class(403, &[("x-authentication-denied-reason", "CAPTCHA_CHALLENGE")]), Class::Rejected);
        assert_eq!(class(410, &[]), Class::Forbidden);
        assert_eq!(class(401, &[]), Class::Rejected);
        assert_eq!(class(429, &[]), Class::RateLimited);
        assert_eq!(
            class(301, &[("location", "/repositories/1")]),
            Class::Redirect(Some(url::Url::parse("https://api.github.com/repositories/1").unwrap()))
        );
    }

    #[test]
    fn upstream_messages_are_bounded_and_escaped() {
        assert_eq!(upstream_message(br#"{"errorMessages":["Bad\u0007 JQL"],"errors":{}}"#).as_deref(), Some("Bad\\u{7} JQL"));
        assert_eq!(
            upstream_message(br#"{"message":"Issues are disabled for this repo"}"#).as_deref(),
            Some("Issues are disabled for this repo")
        );
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
        assert_eq!(upstream_message(long.as_bytes()).unwrap().chars().count(), 201);
        assert_eq!(upstream_message(b"<html>Bad Gateway</html>"), None);
    }

    #[test]
    fn lists_keep_at_most_their_cap() {
        let many = format!("[{}0]", "0,".repeat(10_000));
        let list: List<u8> = serde_json::from_str(&many).unwrap();
        assert_eq!(list.0.len(), List::<u8>::CAP);
    }

    #[test]
    fn redaction_drops_user_info_and_query() {
        let url = url::Url::parse("https://user:pw@jira.example.com/rest/api/2/search?jql=secret").unwrap();
        assert_eq!(redact(&url), "https://jira.example.com/rest/api/2/search");
    }
}
