//! Local stand-ins for the SaaS tools, reproducing their documented behaviour: list
//! endpoints with `Link` pagination, ETags and 304s (which cost no quota), rate-limit
//! headers in each provider's dialect, and the failure modes (401, 403/429 with and without
//! `Retry-After`, 5xx, slow answers, malformed and oversized bodies). Every request is
//! recorded so tests can assert what the client sent.
#![allow(dead_code)]

pub mod github;
pub mod gitlab;
pub mod harbor;
pub mod jenkins;
pub mod jira;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, Uri};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fake answers the next requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Normal,
    /// 401: a revoked or wrong token.
    Unauthorized,
    /// 403 or 429 with `Retry-After: secs` (GitHub secondary limit, Jira, GitLab).
    RetryAfter {
        status: u16,
        seconds: u64,
    },
    /// 403 without Retry-After: GitHub's "You have exceeded a secondary rate limit".
    SecondaryWithoutRetryAfter,
    /// 502 Bad Gateway.
    ServerError,
    /// Answers after this delay.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with a body of this many bytes.
    Oversized(usize),
}

/// Rate-limit header names of each tool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dialect {
    /// x-ratelimit-limit/remaining/reset (epoch seconds)
    Github,
    /// RateLimit-Limit/Remaining/Reset (epoch seconds)
    Gitlab,
    /// X-RateLimit-Limit/Remaining, X-RateLimit-Reset (RFC 3339)
    Jira,
    /// none
    None,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub if_none_match: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// Every request header, for assertions on names the fields above do not cover.
    pub headers: HeaderMap,
}

impl Seen {
    /// A query parameter, decoded as a form would be ('+' is a space).
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug)]
pub struct Quota {
    pub limit: i64,
    pub remaining: i64,
    pub reset: jiff::Timestamp,
}

pub struct Shared {
    pub dialect: Dialect,
    pub mode: Mutex<Mode>,
    pub quota: Mutex<Quota>,
    pub seen: Mutex<Vec<Seen>>,
    /// The token the fake accepts (compared with the Authorization / PRIVATE-TOKEN header).
    pub expected_auth: Mutex<Option<String>>,
    /// Whether 200 answers carry an ETag (and 304 on a match). GitHub and GitLab do; Jira's
    /// search, Jenkins' JSON API and Harbor do not.
    pub etags: AtomicBool,
}

impl Shared {
    pub fn new(dialect: Dialect) -> Arc<Self> {
        Arc::new(Self {
            dialect,
            mode: Mutex::new(Mode::Normal),
            quota: Mutex::new(Quota { limit: 5000, remaining: 5000, reset: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1) }),
            seen: Mutex::new(Vec::new()),
            expected_auth: Mutex::new(None),
            etags: AtomicBool::new(true),
        })
    }

    pub fn set_etags(&self, on: bool) {
        self.etags.store(on, Ordering::SeqCst);
    }

    pub fn expect_auth(&self, value: &str) {
        *self.expected_auth.lock().unwrap() = Some(value.to_string());
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_quota(&self, remaining: i64, reset_in: Duration) {
        let mut q = self.quota.lock().unwrap();
        q.remaining = remaining;
        q.reset = jiff::Timestamp::now() + jiff::SignedDuration::try_from(reset_in).unwrap();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    fn rate_headers(&self, headers: &mut HeaderMap) {
        let q = self.quota.lock().unwrap();
        let (limit, remaining, reset) = match self.dialect {
            Dialect::Github => ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
            Dialect::Gitlab => ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"),
            Dialect::Jira => ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
            Dialect::None => return,
        };
        headers.insert(limit, q.limit.into());
        headers.insert(remaining, q.remaining.max(0).into());
        let reset_value = match self.dialect {
            Dialect::Jira => HeaderValue::from_str(&q.reset.to_string()).unwrap(),
            _ => q.reset.as_second().into(),
        };
        headers.insert(reset, reset_value);
    }

    /// Answers one request for a resource whose current representation is `body` (with an
    /// optional `next` page URL), applying mode, quota, ETag and recording.
    pub async fn answer(&self, uri: &Uri, headers: &HeaderMap, body: Option<Value>, next: Option<String>) -> Response<Body> {
        self.answer_with(uri, headers, body, next, HeaderMap::new()).await
    }

    /// [`Shared::answer`] with extra headers on a successful answer (e.g. GitLab's `X-Total`).
    pub async fn answer_with(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<Value>,
        next: Option<String>,
        extra: HeaderMap,
    ) -> Response<Body> {
        let mode = self.mode.lock().unwrap().clone();
        let if_none_match = headers.get("if-none-match").and_then(|v| v.to_str().ok()).map(str::to_string);
        let authorization =
            headers.get("authorization").or_else(|| headers.get("private-token")).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Mode::Slow(delay) = &mode {
            tokio::time::sleep(*delay).await;
        }
        let mut out = HeaderMap::new();
        {
            // A new window once the reset time has passed, as the real APIs do.
            let mut q = self.quota.lock().unwrap();
            if jiff::Timestamp::now() >= q.reset {
                q.remaining = q.limit;
                q.reset = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
            }
        }
        let expected = self.expected_auth.lock().unwrap().clone();
        let (status, payload): (u16, Vec<u8>) = if matches!(mode, Mode::Unauthorized)
            || expected.as_ref().is_some_and(|e| authorization.as_deref() != Some(e.as_str()))
        {
            (401, br#"{"message":"Bad credentials"}"#.to_vec())
        } else if let Mode::RetryAfter { status, seconds } = mode {
            out.insert("retry-after", seconds.into());
            (status, br#"{"message":"You have exceeded a secondary rate limit"}"#.to_vec())
        } else if mode == Mode::SecondaryWithoutRetryAfter {
            (403, br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#.to_vec())
        } else if mode == Mode::ServerError {
            (502, b"<html>Bad Gateway</html>".to_vec())
        } else if self.quota.lock().unwrap().remaining <= 0 && self.dialect != Dialect::None {
            self.rate_headers(&mut out);
            let status = if self.dialect == Dialect::Github { 403 } else { 429 };
            if self.dialect != Dialect::Github {
                // GitLab (Rack::Attack) and Jira send Retry-After with their 429s.
                let wait = self.quota.lock().unwrap().reset.duration_since(jiff::Timestamp::now()).as_secs().max(1);
                out.insert("retry-after", wait.into());
            }
            (status, br#"{"message":"API rate limit exceeded"}"#.to_vec())
        } else {
            match body {
                None => (404, br#"{"message":"Not Found"}"#.to_vec()),
                Some(value) => {
                    let text = match &mode {
                        Mode::Malformed => b"{\"items\": [unterminated".to_vec(),
                        Mode::Oversized(n) => format!("[\"{}\"]", "x".repeat(*n)).into_bytes(),
                        _ => serde_json::to_vec(&value).unwrap(),
                    };
                    let etag = format!("W/\"{:x}\"", fnv(&text));
                    let etags = self.etags.load(Ordering::SeqCst);
                    if etags {
                        out.insert("etag", HeaderValue::from_str(&etag).unwrap());
                    }
                    if let Some(next) = &next {
                        out.insert("link", HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")).unwrap());
                    }
                    out.extend(extra);
                    if etags && if_none_match.as_deref() == Some(etag.as_str()) {
                        // A conditional hit: no body, and (documented for GitHub) no quota spent.
                        // GitLab's throttles count every request, 304s included.
                        if self.dialect != Dialect::Github {
                            self.quota.lock().unwrap().remaining -= 1;
                        }
                        (304, Vec::new())
                    } else {
                        self.quota.lock().unwrap().remaining -= 1;
                        (200, text)
                    }
                }
            }
        };
        if status != 429 && status != 403 || out.get("x-ratelimit-remaining").is_none() {
            self.rate_headers(&mut out);
        }
        self.seen.lock().unwrap().push(Seen {
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            if_none_match,
            authorization,
            status,
            headers: headers.clone(),
        });
        let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
        *response.headers_mut().unwrap() = out;
        response.header("content-type", "application/json").body(Body::from(payload)).unwrap()
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// Serves `app` on a free loopback port until the returned handle is dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(app: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `page` and `per_page` (GitHub, GitLab) applied to a list, with the next page's URL.
pub fn paginate(items: &[Value], uri: &Uri, base: &str) -> (Value, Option<String>) {
    paginate_by(items, uri, base, "per_page", 30)
}

/// Pagination with `size_param` (`per_page`, Harbor's `page_size`) defaulting to `default`,
/// at most 100. An empty `base` gives a relative next link (Harbor sends those).
pub fn paginate_by(items: &[Value], uri: &Uri, base: &str, size_param: &str, default: usize) -> (Value, Option<String>) {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let get = |k: &str| query.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.parse::<usize>().ok());
    let per_page = get(size_param).unwrap_or(default).clamp(1, 100);
    let page = get("page").unwrap_or(1).max(1);
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items.iter().skip(start).take(per_page).cloned().collect();
    let next = (start + per_page < items.len()).then(|| {
        let mut pairs: Vec<(String, String)> = query.iter().filter(|(k, _)| k != "page").cloned().collect();
        pairs.push(("page".into(), (page + 1).to_string()));
        let q: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        format!("{base}{}?{q}", uri.path())
    });
    (Value::Array(slice), next)
}

/// Decodes `%XX` escapes once, as a path router does ('+' stays '+').
pub fn pct_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = segment.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One query parameter of a request URI, form-decoded.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The engine's HTTP client as tests use it: allowed to call the fakes on loopback over http.
pub fn loopback_client(
    config: hyperpage::providers::http::ClientConfig,
    cache: hyperpage::engine::cache::Cache,
) -> hyperpage::providers::http::UpstreamClient {
    let policy = hyperpage::providers::safety::EndpointPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()], allow_http: true };
    let config = hyperpage::providers::http::ClientConfig { policy, ..config };
    hyperpage::providers::http::UpstreamClient::new(config, cache, hyperpage::providers::http::UpstreamMetrics::default())
}
