//! Providers and the shared HTTP client against local fakes of the tools' APIs.

mod fakes;

use fakes::github::{self, Github, Repo};
use fakes::{Mode, loopback_client};
use hyperpage::api::ToolBindingSpec;
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::providers::http::{ClientConfig, UpstreamClient, UpstreamMetrics};
use hyperpage::providers::{self, Budget, Credential, PollRequest, ProviderError};
use std::collections::BTreeMap;
use std::time::Duration;

const TOKEN: &str = "ghp_providerTestTokenNeverPrinted";

fn spec(yaml: &str) -> ToolBindingSpec {
    serde_norway::from_str(yaml).unwrap()
}

fn github_spec() -> ToolBindingSpec {
    spec("workspaceRef: {name: w}\nprovider: github\ncredentialsSecretRef: {name: s, key: k}\ngithub: {repositories: [acme/api]}\n")
}

fn repo() -> BTreeMap<String, Repo> {
    let name = "acme/api";
    let mut pulls: Vec<_> = (1..=130).map(|n| github::pull(name, n, &format!("PR {n}"))).collect();
    pulls[0]["title"] = "<script>alert('x')</script>".into();
    let issues = vec![
        github::issue(name, 200, "Bug", false),
        github::issue(name, 201, "Also a bug", false),
        github::issue(name, 7, "PR in disguise", true),
    ];
    let runs = vec![
        github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z"),
        github::run(2, 10, "build", "failure", "2026-11-21T10:00:00Z"),
        github::run(3, 20, "deploy", "success", "2026-11-21T11:00:00Z"),
    ];
    BTreeMap::from([(name.to_string(), Repo { default_branch: "main".into(), pulls, issues, runs })])
}

async fn poll(client: &UpstreamClient, fake: &Github, reserve: i64) -> Result<providers::Snapshot, ProviderError> {
    let spec = github_spec();
    let credential = Credential::new(spec.provider, TOKEN).unwrap();
    let budget = Budget::new(None);
    let request =
        PollRequest { spec: &spec, endpoint: url::Url::parse(&fake.url()).unwrap(), credential: &credential, reserve, budget: &budget };
    providers::poll(client, &request).await
}

#[tokio::test]
async fn github_lists_paginate_count_and_never_search() {
    let fake = Github::start(repo()).await;
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let snapshot = poll(&client, &fake, 0).await.unwrap();
    assert_eq!(snapshot.summary.code_reviews, 130, "two pages of pull requests");
    assert_eq!(snapshot.summary.tickets, 2, "pull requests are not counted as issues");
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (2, 1), "the newest run of each workflow counts");
    assert_eq!(snapshot.items.code_reviews.len(), providers::MAX_ITEMS, "items are bounded");
    let seen = fake.shared.requests();
    assert!(seen.iter().all(|s| !s.path.starts_with("/search")), "no search API");
    assert!(seen.iter().any(|s| s.query.contains("page=2")), "followed the Link header");
    assert!(seen.iter().all(|s| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")[..])));
}

#[tokio::test]
async fn unchanged_data_comes_back_as_free_304s() {
    let fake = Github::start(repo()).await;
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let first = poll(&client, &fake, 0).await.unwrap();
    let remaining = fake.shared.quota.lock().unwrap().remaining;
    fake.shared.clear();
    let second = poll(&client, &fake, 0).await.unwrap();
    assert_eq!(first, second);
    let seen = fake.shared.requests();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.if_none_match.is_some() && s.status == 304), "conditional requests: {seen:?}");
    assert_eq!(fake.shared.quota.lock().unwrap().remaining, remaining, "a 304 costs no quota");
    assert_eq!(
        client.ledger.get(&Credential::new(hyperpage::api::Provider::Github, TOKEN).unwrap().fingerprint).unwrap().remaining,
        Some(remaining)
    );
}

#[tokio::test]
async fn a_bad_token_is_rejected_without_leaking_it() {
    let fake = Github::start(repo()).await;
    fake.shared.set_mode(Mode::Unauthorized);
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let error = poll(&client, &fake, 0).await.unwrap_err();
    assert_eq!(error, ProviderError::CredentialsRejected { provider: "github", status: 401 });
    assert!(!error.to_string().contains(TOKEN));
}

#[tokio::test]
async fn retry_after_is_honoured_without_sending_anything() {
    let fake = Github::start(repo()).await;
    fake.shared.set_mode(Mode::RetryAfter { status: 403, seconds: 90 });
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let before = jiff::Timestamp::now();
    let error = poll(&client, &fake, 0).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = error else { panic!("{error:?}") };
    assert!(until >= before + jiff::SignedDuration::from_secs(89), "waits the 90 s asked for");
    fake.shared.set_mode(Mode::Normal);
    fake.shared.clear();
    assert!(matches!(poll(&client, &fake, 0).await, Err(ProviderError::RateLimited { .. })));
    assert!(fake.shared.requests().is_empty(), "no request while waiting");
}

#[tokio::test]
async fn a_secondary_limit_without_retry_after_waits_at_least_a_minute() {
    let fake = Github::start(repo()).await;
    fake.shared.set_mode(Mode::SecondaryWithoutRetryAfter);
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let before = jiff::Timestamp::now();
    // The fake reports remaining quota, so this is not the primary limit.
    match poll(&client, &fake, 0).await {
        Err(ProviderError::CredentialsRejected { status: 403, .. }) => {
            panic!("a 403 secondary limit must not look like a bad token")
        }
        Err(ProviderError::RateLimited { until, .. }) => assert!(until >= before + jiff::SignedDuration::from_secs(59)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_reserve_is_left_for_people_and_ci() {
    let fake = Github::start(repo()).await;
    fake.shared.set_quota(6, Duration::from_secs(3600));
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let error = poll(&client, &fake, 3).await.unwrap_err();
    assert!(matches!(error, ProviderError::RateLimited { .. }), "{error:?}");
    assert_eq!(fake.shared.quota.lock().unwrap().remaining, 3, "stopped at the reserve of 3");
}

#[tokio::test]
async fn an_exhausted_quota_waits_for_the_reset() {
    let fake = Github::start(repo()).await;
    fake.shared.set_quota(0, Duration::from_secs(600));
    let client = loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let error = poll(&client, &fake, 0).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = error else { panic!("{error:?}") };
    assert!(until > jiff::Timestamp::now() + jiff::SignedDuration::from_secs(590), "until the reset header");
}

#[tokio::test]
async fn server_errors_open_the_circuit() {
    let fake = Github::start(repo()).await;
    fake.shared.set_mode(Mode::ServerError);
    let client = loopback_client(ClientConfig { breaker_threshold: 3, ..ClientConfig::default() }, Cache::memory(CacheMetrics::default()));
    for _ in 0..3 {
        assert!(matches!(poll(&client, &fake, 0).await, Err(ProviderError::Upstream { .. })));
    }
    fake.shared.clear();
    assert!(matches!(poll(&client, &fake, 0).await, Err(ProviderError::CircuitOpen { .. })));
    assert!(fake.shared.requests().is_empty(), "an open circuit sends nothing");
}

#[tokio::test]
async fn slow_malformed_and_oversized_answers_fail_cleanly() {
    let fake = Github::start(repo()).await;
    let client = loopback_client(
        ClientConfig { timeout: Duration::from_millis(500), max_body_bytes: 64 * 1024, ..ClientConfig::default() },
        Cache::memory(CacheMetrics::default()),
    );
    fake.shared.set_mode(Mode::Slow(Duration::from_secs(3)));
    let error = poll(&client, &fake, 0).await.unwrap_err();
    assert!(error.to_string().contains("timed out"), "{error}");
    fake.shared.set_mode(Mode::Malformed);
    assert!(matches!(poll(&client, &fake, 0).await, Err(ProviderError::Malformed { .. })));
    fake.shared.set_mode(Mode::Oversized(200 * 1024));
    let error = poll(&client, &fake, 0).await.unwrap_err();
    assert!(error.to_string().contains("larger than"), "{error}");
}

#[tokio::test]
async fn endpoints_outside_the_policy_are_refused_before_any_request() {
    let fake = Github::start(repo()).await;
    let strict = UpstreamClient::new(ClientConfig::default(), Cache::memory(CacheMetrics::default()), UpstreamMetrics::default());
    let error = strict.policy().check(&url::Url::parse(&fake.url()).unwrap()).await.unwrap_err();
    assert!(matches!(error, ProviderError::EndpointRefused(_)), "{error:?}");
    let error = strict.policy().check(&url::Url::parse("https://169.254.169.254/latest/meta-data").unwrap()).await.unwrap_err();
    assert!(error.to_string().contains("metadata"), "{error}");
}

#[tokio::test]
async fn max_requests_per_minute_spaces_requests() {
    let budget = Budget::new(Some(600));
    let started = tokio::time::Instant::now();
    for _ in 0..610 {
        budget.acquire().await;
    }
    // 600 at once from the full bucket, then 10 more at 10 per second.
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
}
