//! Local stand-ins for the SaaS tools, reproducing their documented behaviour: list
//! endpoints with `Link` pagination, ETags and 304s, rate-limit headers in each provider's
//! dialect and only where the documentation says they come, and the failure modes (401,
//! 403/429 with and without `Retry-After`, 5xx, slow answers and bodies, resets, truncated,
//! malformed, mistyped, oversized and hostile bodies). Every request is recorded so tests
//! can assert what the client sent. Each module cites the documentation it follows.
#![allow(dead_code)]

pub mod github;
pub mod gitlab;
pub mod harbor;
pub mod jenkins;
pub mod jira;
pub mod slack;
pub mod telegram;

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
    /// 200 with a hostile body (see [`Hostile`]).
    Hostile(Hostile),
    /// 429 without `Retry-After` (a throttle that does not say how long).
    TooManyRequests,
    /// 200 whose body is the representation cut in half.
    Truncated,
    /// 200 with an HTML page (`text/html`), as a login or error page in front of the API.
    WrongContentType,
    /// 200 whose headers are sent, then the connection is dropped before the body.
    Reset,
    /// 200 whose body arrives one byte per this delay.
    SlowBody(Duration),
    /// Jira Data Center after failed logins: 403 with `X-Authentication-Denied-Reason`
    /// (and, as on every Data Center answer, `retry-after: 0`).
    CaptchaDenied,
}

/// Bodies meant to exhaust the client's memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hostile {
    /// `[0,0,0,…]` of this many bytes (with a Content-Length).
    Zeros(usize),
    /// `[[[[…]]]]` this deep.
    Nested(usize),
    /// A valid page with a `Link` (and `X-Next-Page`) to a next page, forever.
    EndlessPages,
    /// [`Hostile::EndlessPages`] where each page is valid JSON of about this many bytes:
    /// the route's first list element, every string in it 4 KiB long, repeated.
    MaximalPages(usize),
    /// A chunked body that never ends (no Content-Length).
    Endless,
}

/// Rate-limit header names of each tool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dialect {
    /// x-ratelimit-limit/remaining/reset (epoch seconds) on every answer; an exhausted
    /// quota is 403 with remaining 0.
    /// <https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>
    Github,
    /// RateLimit-Limit/Remaining/Reset (epoch seconds) and Retry-After only with a 429
    /// (on every answer only behind a feature flag).
    /// <https://docs.gitlab.com/security/rate_limits/#headers>
    Gitlab,
    /// Jira Cloud: only a 429 carries Retry-After, X-RateLimit-Reset (ISO 8601) and
    /// RateLimit-Reason. <https://developer.atlassian.com/cloud/jira/platform/rate-limiting/>
    JiraCloud,
    /// Jira Data Center: every answer carries X-RateLimit-Limit/Remaining/Interval-Seconds/
    /// FillRate and `retry-after: 0` (a token bucket: no reset time); 429 with Retry-After.
    /// <https://confluence.atlassian.com/adminjiraserver/improving-instance-stability-with-rate-limiting-983794911.html>
    JiraDataCenter,
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
    /// When the answer was sent.
    pub at: std::time::Instant,
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

    /// The rate-limit headers of this dialect; `limited` for the answer to an exhausted quota.
    fn rate_headers(&self, headers: &mut HeaderMap, limited: bool) {
        let q = self.quota.lock().unwrap();
        let wait = q.reset.duration_since(jiff::Timestamp::now()).as_secs().max(1);
        let mut set = |k: &'static str, v: String| {
            headers.insert(k, HeaderValue::from_str(&v).unwrap());
        };
        match self.dialect {
            Dialect::Github => {
                set("x-ratelimit-limit", q.limit.to_string());
                set("x-ratelimit-remaining", q.remaining.max(0).to_string());
                set("x-ratelimit-reset", q.reset.as_second().to_string());
                set("x-ratelimit-used", (q.limit - q.remaining.max(0)).to_string());
                set("x-ratelimit-resource", "core".into());
            }
            Dialect::Gitlab if limited => {
                set("ratelimit-limit", q.limit.to_string());
                set("ratelimit-observed", q.limit.to_string());
                set("ratelimit-remaining", "0".into());
                set("ratelimit-reset", q.reset.as_second().to_string());
                set("ratelimit-resettime", q.reset.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string());
                set("retry-after", wait.to_string());
            }
            Dialect::JiraCloud if limited => {
                set("retry-after", wait.to_string());
                set("x-ratelimit-reset", q.reset.strftime("%Y-%m-%dT%H:%MZ").to_string());
                set("ratelimit-reason", "jira-quota-tenant-based".into());
            }
            Dialect::JiraDataCenter => {
                set("x-ratelimit-limit", q.limit.to_string());
                set("x-ratelimit-remaining", q.remaining.max(0).to_string());
                set("x-ratelimit-interval-seconds", "60".into());
                set("x-ratelimit-fillrate", "10".into());
                if !headers.contains_key("retry-after") {
                    headers.insert("retry-after", HeaderValue::from_str(&if limited { wait.to_string() } else { "0".into() }).unwrap());
                }
            }
            _ => {}
        }
    }

    /// Answers one request for a resource whose current representation is `body` (with an
    /// optional `Link` header value), applying mode, quota, ETag and recording.
    pub async fn answer(&self, uri: &Uri, headers: &HeaderMap, body: Option<Value>, link: Option<String>) -> Response<Body> {
        self.answer_with(uri, headers, body, link, HeaderMap::new()).await
    }

    /// [`Shared::answer`] with extra headers on a successful answer (e.g. GitLab's `X-Total`).
    pub async fn answer_with(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<Value>,
        link: Option<String>,
        extra: HeaderMap,
    ) -> Response<Body> {
        let content = match body {
            Some(v) => Content::Found(v),
            None => Content::Status(404, serde_json::json!({"message": "Not Found"}), HeaderMap::new()),
        };
        self.respond(uri, headers, content, link, extra).await
    }

    /// A non-2xx answer the API documents (403 for a disabled feature, 410, 301, 400 …),
    /// still subject to authentication and quota.
    pub async fn answer_status(&self, uri: &Uri, headers: &HeaderMap, status: u16, body: Value, extra: HeaderMap) -> Response<Body> {
        self.respond(uri, headers, Content::Status(status, body, extra), None, HeaderMap::new()).await
    }

    async fn respond(&self, uri: &Uri, headers: &HeaderMap, content: Content, link: Option<String>, extra: HeaderMap) -> Response<Body> {
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
        let mut limited = false;
        let mut body_stream: Option<Body> = None;
        let (status, payload): (u16, Vec<u8>) = if matches!(mode, Mode::Unauthorized)
            || expected.as_ref().is_some_and(|e| authorization.as_deref() != Some(e.as_str()))
        {
            (401, br#"{"message":"Bad credentials"}"#.to_vec())
        } else if mode == Mode::CaptchaDenied {
            out.insert(
                "x-authentication-denied-reason",
                HeaderValue::from_static("CAPTCHA_CHALLENGE; login-url=https://jira.example.com/login.jsp"),
            );
            (403, b"<html>Forbidden</html>".to_vec())
        } else if let Mode::RetryAfter { status, seconds } = mode {
            out.insert("retry-after", seconds.into());
            (status, br#"{"message":"You have exceeded a secondary rate limit"}"#.to_vec())
        } else if mode == Mode::SecondaryWithoutRetryAfter {
            (403, br#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#.to_vec())
        } else if mode == Mode::TooManyRequests {
            (429, br#"{"message":"Too Many Requests"}"#.to_vec())
        } else if mode == Mode::ServerError {
            (502, b"<html>Bad Gateway</html>".to_vec())
        } else if self.quota.lock().unwrap().remaining <= 0 && self.dialect != Dialect::None {
            limited = true;
            let status = if self.dialect == Dialect::Github { 403 } else { 429 };
            (status, br#"{"message":"API rate limit exceeded"}"#.to_vec())
        } else {
            match content {
                Content::Status(status, value, headers) => {
                    out.extend(headers);
                    (status, serde_json::to_vec(&value).unwrap())
                }
                Content::Found(value) => {
                    let text = match &mode {
                        Mode::Malformed => b"{\"items\": [unterminated".to_vec(),
                        Mode::Truncated => {
                            let full = serde_json::to_vec(&value).unwrap();
                            full[..full.len() / 2].to_vec()
                        }
                        Mode::WrongContentType => b"<html><body>Sign in to continue</body></html>".to_vec(),
                        Mode::Reset => {
                            let error = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by the fake");
                            body_stream = Some(Body::from_stream(futures::stream::iter([Err::<axum::body::Bytes, _>(error)])));
                            Vec::new()
                        }
                        Mode::SlowBody(per_byte) => {
                            let (bytes, per_byte) = (serde_json::to_vec(&value).unwrap(), *per_byte);
                            let drip = futures::stream::unfold(0usize, move |at| {
                                let byte = bytes.get(at).copied();
                                async move {
                                    tokio::time::sleep(per_byte).await;
                                    byte.map(|b| (Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b])), at + 1))
                                }
                            });
                            body_stream = Some(Body::from_stream(drip));
                            Vec::new()
                        }
                        Mode::Oversized(n) => format!("[\"{}\"]", "x".repeat(*n)).into_bytes(),
                        Mode::Hostile(Hostile::Zeros(_) | Hostile::Nested(_)) => {
                            let Mode::Hostile(hostile) = &mode else { unreachable!() };
                            body_stream = Some(Body::from(hostile_bytes(*hostile)));
                            Vec::new()
                        }
                        Mode::Hostile(Hostile::MaximalPages(n)) => {
                            body_stream = Some(maximal(&value, *n));
                            Vec::new()
                        }
                        Mode::Hostile(Hostile::Endless) => {
                            let chunks =
                                futures::stream::repeat_with(|| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&[b' '; 65536])));
                            body_stream = Some(Body::from_stream(chunks));
                            Vec::new()
                        }
                        _ => serde_json::to_vec(&value).unwrap(),
                    };
                    let etag = format!("W/\"{:x}\"", fnv(&text));
                    let etags = self.etags.load(Ordering::SeqCst) && body_stream.is_none();
                    if etags {
                        out.insert("etag", HeaderValue::from_str(&etag).unwrap());
                    }
                    if let Mode::Hostile(Hostile::EndlessPages | Hostile::MaximalPages(_)) = mode {
                        // Always one more page, on the same origin.
                        let page = query_param(uri, "page").and_then(|p| p.parse::<u64>().ok()).unwrap_or(1);
                        let next = format!("<{}?page={}>; rel=\"next\"", uri.path(), page + 1);
                        out.insert("link", HeaderValue::from_str(&next).unwrap());
                        out.insert("x-next-page", HeaderValue::from(page + 1));
                    } else if let Some(link) = &link {
                        out.insert("link", HeaderValue::from_str(link).unwrap());
                    }
                    out.extend(extra);
                    if etags && if_none_match.as_deref() == Some(etag.as_str()) {
                        // A conditional hit: no body. GitHub documents that it costs no quota
                        // when the request was authorized (<https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#use-conditional-requests-if-appropriate>);
                        // GitLab's throttles count every request, 304s included.
                        if self.dialect != Dialect::Github || authorization.is_none() {
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
        self.rate_headers(&mut out, limited);
        self.seen.lock().unwrap().push(Seen {
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            if_none_match,
            authorization,
            status,
            headers: headers.clone(),
            at: std::time::Instant::now(),
        });
        let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
        *response.headers_mut().unwrap() = out;
        let body = body_stream.unwrap_or_else(|| Body::from(payload));
        let content_type = if mode == Mode::WrongContentType { "text/html; charset=utf-8" } else { "application/json" };
        response.header("content-type", content_type).body(body).unwrap()
    }
}

/// The `Zeros` and `Nested` bodies, built once per process (so the fake's own memory does
/// not count against the client's in a test of peak RSS).
pub fn hostile_bytes(hostile: Hostile) -> axum::body::Bytes {
    static CACHE: Mutex<Vec<(usize, bool, axum::body::Bytes)>> = Mutex::new(Vec::new());
    let (n, zeros) = match hostile {
        Hostile::Zeros(n) => (n, true),
        Hostile::Nested(n) => (n, false),
        _ => return axum::body::Bytes::new(),
    };
    let mut cache = CACHE.lock().unwrap();
    if let Some((_, _, b)) = cache.iter().find(|(m, z, _)| *m == n && *z == zeros) {
        return b.clone();
    }
    let bytes = if zeros {
        let mut b = Vec::with_capacity(n);
        b.push(b'[');
        while b.len() + 3 < n {
            b.extend_from_slice(b"0,");
        }
        b.extend_from_slice(b"0]");
        b
    } else {
        let mut b = vec![b'['; n];
        b.extend(std::iter::repeat_n(b']', n));
        b
    };
    let bytes = axum::body::Bytes::from(bytes);
    cache.push((n, zeros, bytes.clone()));
    bytes
}

/// A valid answer of about `size` bytes shaped like `value`: its first list (the value itself
/// or its first array field) filled with copies of its first element, every string 4 KiB.
/// Streamed from one copy of the element, so the fake itself stays small.
pub fn maximal(value: &Value, size: usize) -> Body {
    let bytes = axum::body::Bytes::from;
    fn long_strings(v: &mut Value) {
        match v {
            Value::String(s) => *s = "x".repeat(4096),
            Value::Array(a) => a.iter_mut().for_each(long_strings),
            Value::Object(o) => o.values_mut().for_each(long_strings),
            _ => {}
        }
    }
    let (mut shell, field) = match value {
        Value::Array(_) => (Value::Array(vec![]), None),
        Value::Object(o) => match o.iter().find(|(_, v)| v.is_array()) {
            Some((k, _)) => (value.clone(), Some(k.clone())),
            None => return Body::from(serde_json::to_vec(value).unwrap()),
        },
        other => return Body::from(serde_json::to_vec(other).unwrap()),
    };
    let list = match &field {
        Some(k) => shell[k.as_str()].take(),
        None => value.clone(),
    };
    let mut element = list.as_array().and_then(|a| a.first().cloned()).unwrap_or_else(|| serde_json::json!({}));
    long_strings(&mut element);
    let element = serde_json::to_vec(&element).unwrap();
    if let Some(k) = &field {
        shell[k.as_str()] = Value::Array(vec![]);
    }
    let shell = serde_json::to_vec(&shell).unwrap();
    // Split the shell at its empty list "[]" and fill the list.
    let marker = field.as_ref().map(|k| format!("\"{k}\":[]")).unwrap_or_else(|| "[]".into());
    let at = shell.windows(marker.len()).position(|w| w == marker.as_bytes()).unwrap() + marker.len() - 1;
    // Blocks of about 64 KiB of ",element" each, so tiny elements are not tiny chunks.
    let per_block = (65_536 / (element.len() + 1)).max(1);
    let mut block = Vec::with_capacity(per_block * (element.len() + 1));
    for _ in 0..per_block {
        block.push(b',');
        block.extend_from_slice(&element);
    }
    let blocks = (size.saturating_sub(shell.len() + element.len()) / block.len()).max(1);
    let parts = [bytes(shell[..at].to_vec()), bytes(element)]
        .into_iter()
        .chain(std::iter::repeat_n(bytes(block), blocks))
        .chain(std::iter::once(bytes(shell[at..].to_vec())))
        .map(Ok::<_, std::io::Error>);
    Body::from_stream(futures::stream::iter(parts))
}

/// What a route found.
enum Content {
    Found(Value),
    Status(u16, Value, HeaderMap),
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

/// `page` and `per_page` (GitHub, GitLab) applied to a list, with the `Link` header value.
pub fn paginate(items: &[Value], uri: &Uri, base: &str) -> (Value, Option<String>) {
    paginate_by(items, uri, base, "per_page", 30)
}

/// Pagination with `size_param` (`per_page`, Harbor's `page_size`) defaulting to `default`,
/// at most 100, and the RFC 8288 `Link` value (`next`, `last`, `first`, `prev` as GitHub
/// sends them). An empty `base` gives relative links (Harbor sends those).
pub fn paginate_by(items: &[Value], uri: &Uri, base: &str, size_param: &str, default: usize) -> (Value, Option<String>) {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let get = |k: &str| query.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.parse::<usize>().ok());
    let per_page = get(size_param).unwrap_or(default).clamp(1, 100);
    let page = get("page").unwrap_or(1).max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items.iter().skip(start).take(per_page).cloned().collect();
    let link_to = |n: usize, rel: &str| {
        let mut pairs: Vec<(String, String)> = query.iter().filter(|(k, _)| k != "page").cloned().collect();
        pairs.push(("page".into(), n.to_string()));
        let q: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        format!("<{base}{}?{q}>; rel=\"{rel}\"", uri.path())
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link_to(page - 1, "prev"));
    }
    if page < pages {
        links.push(link_to(page + 1, "next"));
        links.push(link_to(pages, "last"));
    }
    if page > 1 {
        links.push(link_to(1, "first"));
    }
    (Value::Array(slice), (!links.is_empty()).then(|| links.join(", ")))
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
