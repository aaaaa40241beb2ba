//! Providers and the shared HTTP client against local fakes of the tools' APIs.

mod fakes;

use fakes::github::{self, Github, Repo};
use fakes::{Mode, loopback_client};
use hyperpage::api::ToolBindingSpec;
use hyperpage::api::toolbinding::{Capability, GapKind};
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
    BTreeMap::from([(name.to_string(), Repo { pulls, issues, runs, ..Repo::default() })])
}

async fn poll(client: &UpstreamClient, fake: &Github, reserve: i64) -> Result<providers::Snapshot, ProviderError> {
    poll_spec(client, fake, reserve, &github_spec()).await
}

async fn poll_spec(
    client: &UpstreamClient,
    fake: &Github,
    reserve: i64,
    spec: &ToolBindingSpec,
) -> Result<providers::Snapshot, ProviderError> {
    let spec = spec.clone();
    let credential = Credential::new(spec.provider, TOKEN).unwrap();
    let budget = Budget::new(None);
    let request = PollRequest {
        spec: &spec,
        endpoint: url::Url::parse(&fake.url()).unwrap(),
        credential: &credential,
        reserve,
        budget: &budget,
        scope: Default::default(),
    };
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
    assert!(seen.iter().any(|s| s.path.ends_with("/issues") && s.query.contains("page=2")), "followed the Link header");
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
    assert_eq!(client.ledger_entry(&Credential::new(hyperpage::api::Provider::Github, TOKEN).unwrap()).unwrap().remaining, Some(remaining));
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

fn client() -> UpstreamClient {
    loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()))
}

fn one_repo(repo: Repo) -> BTreeMap<String, Repo> {
    BTreeMap::from([("acme/api".to_string(), repo)])
}

/// Item 1: GitHub Enterprise behind another name writes its public name into `Link`; the
/// next page is read on the address the binding names, and nothing goes to the other name.
#[tokio::test]
async fn github_links_on_another_name_are_followed_on_the_request_origin() {
    let name = "acme/api";
    let pulls: Vec<_> = (1..=150).map(|n| github::pull(name, n, "change")).collect();
    let mut issues: Vec<_> = (900..903).map(|n| github::issue(name, n, "old bug", false)).collect();
    for i in &mut issues {
        i["updated_at"] = "2026-10-01T10:00:00Z".into();
    }
    let fake = Github::start(one_repo(Repo { pulls, issues, ..Repo::default() })).await;
    let decoy = Github::start(BTreeMap::new()).await;
    *fake.public_url.lock().unwrap() = decoy.url();
    let snapshot = poll(&client(), &fake, 0).await.unwrap();
    assert_eq!(snapshot.summary.tickets, 3);
    assert_eq!(snapshot.items.tickets.len(), 3, "the issues on page 2 were read: {:?}", snapshot.items.tickets);
    assert!(fake.shared.requests().iter().any(|s| s.path == "/repos/acme/api/issues" && s.param("page").as_deref() == Some("2")));
    assert!(decoy.shared.requests().is_empty(), "nothing (and no token) went to the other origin");
}

/// Item 2: issues switched off (410) make tickets "n/a"; pull requests and pipelines stand.
#[tokio::test]
async fn github_disabled_issues_are_not_applicable_and_the_rest_stands() {
    let mut repos = repo();
    repos.get_mut("acme/api").unwrap().issues_enabled = false;
    let fake = Github::start(repos).await;
    let snapshot = poll(&client(), &fake, 0).await.unwrap();
    assert_eq!(snapshot.summary.code_reviews, 130);
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (2, 1));
    let gap = snapshot.summary.gaps.iter().find(|g| g.capability == Capability::Tickets).expect("tickets marked");
    assert_eq!(gap.kind, GapKind::Unavailable);
    assert!(gap.reason.contains("HTTP 410") && gap.reason.contains("Issues are disabled for this repo"), "{}", gap.reason);
    assert_eq!(snapshot.summary.tickets, 0);
}

/// Item 4: counts are exact past ten pages, read from `rel="last"` of a `per_page=1` list
/// and the repository's `open_issues_count`; only the shown items are read.
#[tokio::test]
async fn github_totals_are_exact_beyond_ten_pages() {
    let name = "acme/api";
    let pulls: Vec<_> = (1..=1500).map(|n| github::pull(name, n, "change")).collect();
    let issues: Vec<_> = (5000..5007).map(|n| github::issue(name, n, "bug", false)).collect();
    let fake = Github::start(one_repo(Repo { pulls, issues, ..Repo::default() })).await;
    let snapshot = poll(&client(), &fake, 0).await.unwrap();
    assert_eq!(snapshot.summary.code_reviews, 1500, "not capped at 1,000");
    assert_eq!(snapshot.summary.tickets, 7, "open_issues_count minus the open pull requests");
    assert_eq!(snapshot.items.code_reviews.len(), providers::MAX_ITEMS);
    let seen = fake.shared.requests();
    assert_eq!(seen.iter().filter(|s| s.path.ends_with("/pulls")).count(), 2, "one page of items and one per_page=1 count");
    assert!(seen.iter().filter(|s| s.path.ends_with("/issues")).count() <= 3, "issue pages are bounded");
}

/// Items 5 and 9: a fork's pull-request run on its own `main` does not turn the pipeline red;
/// a quiet workflow is still read when another one ran 60 times since; a run in progress
/// does not hide the failure before it.
#[tokio::test]
async fn github_pipelines_ignore_fork_runs_keep_quiet_workflows_and_see_past_running_runs() {
    let mut runs = vec![github::run(1, 20, "deploy", "success", "2026-11-01T10:00:00Z")];
    runs.extend((0..60).map(|n| github::run(100 + n, 10, "build", "success", &format!("2026-11-02T10:{:02}:00Z", n))));
    runs.push(github::fork_run(200, 10, "build", "failure", "2026-11-03T10:00:00Z"));
    runs.push(github::run(300, 30, "test", "failure", "2026-11-03T10:00:00Z"));
    runs.push(github::running(301, 30, "test", "2026-11-03T11:00:00Z"));
    let fake = Github::start(one_repo(Repo { runs, ..Repo::default() })).await;
    let snapshot = poll(&client(), &fake, 0).await.unwrap();
    assert_eq!(snapshot.summary.pipelines, 3, "build, deploy and test: {:?}", snapshot.items.pipelines);
    assert_eq!(snapshot.summary.failing_pipelines, 1, "only test failed (its newest run is still running)");
    let test = snapshot.items.pipelines.iter().find(|p| p.id == "acme/api/test").unwrap();
    assert_eq!(test.state.as_deref(), Some("failure"));
    assert!(test.failing);
    assert_eq!(snapshot.items.pipelines.iter().filter(|p| p.failing).count(), 1);
    let seen = fake.shared.requests();
    assert!(seen.iter().filter(|s| s.path.ends_with("/runs")).all(|s| s.param("event").as_deref() == Some("push")));
}

/// Item 5: the branch is percent-encoded (a `+` is not a space, a `/` stays in the value).
#[tokio::test]
async fn github_branch_names_are_percent_encoded() {
    let branch = "release/2026 q4+hotfix";
    let mut run = github::run(1, 10, "build", "failure", "2026-11-01T10:00:00Z");
    run["head_branch"] = branch.into();
    let fake = Github::start(one_repo(Repo { default_branch: branch.into(), runs: vec![run], ..Repo::default() })).await;
    let snapshot = poll(&client(), &fake, 0).await.unwrap();
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (1, 1));
    assert!(fake.shared.requests().iter().any(|s| s.param("branch").as_deref() == Some(branch)));
}

/// Item 7: a renamed repository answers 301; the client follows it on the same origin, and
/// refuses to carry the token to another one.
#[tokio::test]
async fn github_renamed_repositories_are_followed_on_the_same_origin_only() {
    let fake = Github::start(repo()).await;
    fake.renamed.lock().unwrap().insert("acme/old-name".into(), "acme/api".into());
    let spec = spec(
        "workspaceRef: {name: w}\nprovider: github\ncredentialsSecretRef: {name: s, key: k}\ngithub: {repositories: [acme/old-name]}\n",
    );
    let client = client();
    let snapshot = poll_spec(&client, &fake, 0, &spec).await.unwrap();
    assert_eq!(snapshot.summary.code_reviews, 130);
    let seen = fake.shared.requests();
    assert!(seen.iter().any(|s| s.status == 301) && seen.iter().any(|s| s.path.starts_with("/repositories/1/")), "{seen:?}");

    let decoy = Github::start(repo()).await;
    *fake.public_url.lock().unwrap() = decoy.url();
    let error =
        poll_spec(&loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default())), &fake, 0, &spec).await.unwrap_err();
    assert!(error.to_string().contains("another origin"), "{error}");
    assert!(decoy.shared.requests().is_empty(), "the token never went to the other origin");
}

/// Item 10: exactly one `Accept`, GitHub's media type.
#[tokio::test]
async fn github_receives_one_accept_header() {
    let fake = Github::start(repo()).await;
    poll(&client(), &fake, 0).await.unwrap();
    for seen in fake.shared.requests() {
        let accepts: Vec<_> = seen.headers.get_all("accept").iter().collect();
        assert_eq!(accepts, ["application/vnd.github+json"], "{}", seen.path);
    }
}

/// Cache keys are keyed digests over namespace, URL and credential: the same URL and token
/// in another namespace never gets this namespace's validators (no cross-tenant 304).
#[tokio::test]
async fn cache_entries_are_not_shared_across_namespaces() {
    let fake = Github::start(repo()).await;
    let client = client();
    let spec = github_spec();
    let credential = Credential::new(spec.provider, TOKEN).unwrap();
    let budget = Budget::new(None);
    let endpoint = url::Url::parse(&fake.url()).unwrap();
    for (namespace, conditional) in [("team-a", false), ("team-a", true), ("team-b", false)] {
        fake.shared.clear();
        let scope = providers::Scope { namespace, binding: "github", secret: "token" };
        let request = PollRequest { spec: &spec, endpoint: endpoint.clone(), credential: &credential, reserve: 0, budget: &budget, scope };
        providers::poll(&client, &request).await.unwrap();
        let seen = fake.shared.requests();
        assert!(seen.iter().all(|s| s.if_none_match.is_some() == conditional), "{namespace}: {seen:?}");
    }
}
