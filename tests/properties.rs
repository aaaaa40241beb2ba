//! Property tests of every provider's response handling: whatever an upstream answers
//! (arbitrary bytes, arbitrary JSON built from the field names the providers read, arbitrary
//! status codes and rate-limit, paging and redirect headers), a poll returns a snapshot or a
//! typed error; it never panics, and no error message carries the token.
//!
//! Each case is one real poll through the engine's HTTP client against a loopback server
//! answering every request with the generated response. The case counts keep the whole file
//! at a few seconds in `cargo test`.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Response};
use hyperpage::api::ToolBindingSpec;
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::providers::http::{ClientConfig, UpstreamClient, UpstreamMetrics};
use hyperpage::providers::safety::EndpointPolicy;
use hyperpage::providers::{self, Budget, Credential, PollRequest, ProviderError};
use proptest::prelude::*;
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const TOKEN: &str = "ghp_propertyTestTokenNeverPrinted";

/// The answer the server gives to every request.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

struct Upstream {
    runtime: tokio::runtime::Runtime,
    answer: Arc<Mutex<Answer>>,
    url: String,
}

/// One server and runtime for the whole file (proptest cases are synchronous).
fn upstream() -> &'static Upstream {
    static UPSTREAM: OnceLock<Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let answer = Arc::new(Mutex::new(Answer { status: 200, headers: vec![], body: b"{}".to_vec() }));
        let shared = answer.clone();
        let app = axum::Router::new().fallback(move || {
            let answer = shared.lock().unwrap().clone();
            async move {
                let mut response = Response::builder().status(answer.status);
                for (name, value) in &answer.headers {
                    // Values the generator made that HTTP cannot carry are left out.
                    if let Ok(value) = HeaderValue::from_str(value) {
                        response = response.header(HeaderName::from_static(name), value);
                    }
                }
                response.body(Body::from(answer.body)).unwrap()
            }
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Upstream { runtime, answer, url }
    })
}

fn spec(provider: &str) -> ToolBindingSpec {
    let block = match provider {
        "github" => "github: {repositories: [acme/api]}",
        "gitlab" => "gitlab: {projects: [payments/ledger, '7']}",
        "jira" => "jira: {jql: project = PAY}",
        "jenkins" => "jenkins: {jobs: [payments/build-main, nightly]}",
        "harbor" => "harbor: {projects: [payments]}",
        other => panic!("unknown provider {other}"),
    };
    let yaml = format!("workspaceRef: {{name: w}}\nprovider: {provider}\ncredentialsSecretRef: {{name: s, key: k}}\n{block}\n");
    serde_norway::from_str(&yaml).unwrap()
}

/// Polls `provider` once against the server answering `answer`, with a fresh client (so no
/// ledger, breaker or cache state carries over between cases).
fn poll(provider: &str, answer: Answer) -> Result<providers::Snapshot, ProviderError> {
    // The tests of this file run in parallel and share the one server: one poll at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let upstream = upstream();
    *upstream.answer.lock().unwrap() = answer;
    let policy = EndpointPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()], allow_http: true };
    let config = ClientConfig { policy, timeout: Duration::from_secs(5), max_body_bytes: 64 * 1024, ..ClientConfig::default() };
    let client = UpstreamClient::new(config, Cache::memory(CacheMetrics::default()), UpstreamMetrics::default());
    let spec = spec(provider);
    let credential = Credential::new(spec.provider, TOKEN).unwrap();
    let budget = Budget::new(None);
    let request = PollRequest {
        spec: &spec,
        endpoint: url::Url::parse(&upstream.url).unwrap(),
        credential: &credential,
        reserve: 0,
        budget: &budget,
        scope: Default::default(),
    };
    upstream.runtime.block_on(providers::poll(&client, &request))
}

/// What every outcome must satisfy: a typed error with a listed reason and a "failed to …"
/// message without the token.
fn typed(result: &Result<providers::Snapshot, ProviderError>) -> Result<(), TestCaseError> {
    if let Err(error) = result {
        prop_assert!(ProviderError::REASONS.contains(&error.reason()), "unlisted reason {}", error.reason());
        let message = error.to_string();
        prop_assert!(message.starts_with("failed to "), "{message}");
        prop_assert!(!message.contains(TOKEN), "the token leaked into {message}");
    }
    Ok(())
}

const PROVIDERS: [&str; 5] = ["github", "gitlab", "jira", "jenkins", "harbor"];

/// Field names the five providers read, so generated documents reach their item parsers.
const KEYS: &[&str] = &[
    "id",
    "iid",
    "number",
    "title",
    "name",
    "key",
    "html_url",
    "web_url",
    "url",
    "self",
    "state",
    "status",
    "conclusion",
    "draft",
    "user",
    "author",
    "login",
    "username",
    "assignee",
    "updated_at",
    "created_at",
    "updated",
    "fields",
    "summary",
    "issues",
    "total",
    "total_count",
    "workflow_runs",
    "workflows",
    "workflow_id",
    "head_branch",
    "event",
    "default_branch",
    "pull_request",
    "builds",
    "lastBuild",
    "result",
    "building",
    "timestamp",
    "fullName",
    "displayName",
    "jobs",
    "ref",
    "sha",
    "pipelines",
    "scan_overview",
    "summary",
    "severity",
    "critical",
    "artifacts",
    "digest",
    "tags",
    "push_time",
    "repository_name",
    "nextPageToken",
    "isLast",
    "startAt",
    "maxResults",
    "values",
    "message",
    "errorMessages",
    "open_issues_count",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "[ -~]{0,24}".prop_map(Value::String),
        Just(Value::String("2026-11-20T10:00:00Z".into())),
        Just(Value::String("2026-11-20T10:15:30.000+0000".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// Headers the client interprets: rate limits in every dialect, paging, redirects, types.
fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let names = prop::sample::select(vec![
        "retry-after",
        "x-ratelimit-remaining",
        "x-ratelimit-limit",
        "x-ratelimit-reset",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-interval-seconds",
        "link",
        "x-next-page",
        "x-total",
        "x-total-count",
        "etag",
        "location",
        "content-type",
    ]);
    let values = prop_oneof![
        "[ -~]{0,40}",
        any::<i64>().prop_map(|n| n.to_string()),
        Just("</x?page=2>; rel=\"next\"".to_string()),
        Just("application/json".to_string()),
        Just("text/html".to_string()),
    ];
    prop::collection::vec((names, values), 0..4)
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![Just(200u16), Just(304), Just(301), 100u16..600]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes under a 200: never a panic; a body that is not JSON is a
    /// MalformedResponse (or a capability the provider reports as a gap), never data.
    #[test]
    fn arbitrary_bytes_are_a_typed_error(provider in prop::sample::select(PROVIDERS.to_vec()), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let not_json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err();
        let result = poll(provider, Answer { status: 200, headers: vec![("content-type", "application/json".into())], body });
        typed(&result)?;
        if not_json {
            prop_assert_eq!(result.as_ref().err().map(ProviderError::reason), Some("MalformedResponse"), "{:?}", result);
        }
    }

    /// Arbitrary JSON documents made of the providers' own field names, at any status with
    /// any of the headers the client reads: a snapshot or a typed error.
    #[test]
    fn arbitrary_json_is_data_or_a_typed_error(
        provider in prop::sample::select(PROVIDERS.to_vec()),
        status in status(),
        headers in headers(),
        document in json_value(),
    ) {
        let result = poll(provider, Answer { status, headers, body: serde_json::to_vec(&document).unwrap() });
        typed(&result)?;
        if let Ok(snapshot) = &result {
            prop_assert!((200..300).contains(&status), "data from an HTTP {} answer: {:?}", status, snapshot);
        }
    }

    /// A valid document cut anywhere is malformed, not partial data.
    #[test]
    fn truncated_json_is_malformed(provider in prop::sample::select(PROVIDERS.to_vec()), document in json_value(), cut in any::<prop::sample::Index>()) {
        let text = serde_json::to_vec(&document).unwrap();
        let end = cut.index(text.len());
        prop_assume!(serde_json::from_slice::<serde::de::IgnoredAny>(&text[..end]).is_err());
        let result = poll(provider, Answer { status: 200, headers: vec![], body: text[..end].to_vec() });
        typed(&result)?;
        prop_assert_eq!(result.as_ref().err().map(ProviderError::reason), Some("MalformedResponse"), "{:?}", result);
    }

    /// Server errors with any body are UpstreamError; 401 is CredentialsRejected; 404 is NotFound.
    #[test]
    fn error_statuses_keep_their_meaning(provider in prop::sample::select(PROVIDERS.to_vec()), status in prop_oneof![500u16..600, Just(401), Just(404)], body in prop::collection::vec(any::<u8>(), 0..256)) {
        let result = poll(provider, Answer { status, headers: vec![], body });
        typed(&result)?;
        let expected = match status {
            401 => "CredentialsRejected",
            404 => "NotFound",
            _ => "UpstreamError",
        };
        prop_assert_eq!(result.as_ref().err().map(ProviderError::reason), Some(expected), "{:?}", result);
    }
}
