//! GitLab, Jira, Jenkins and Harbor providers against local fakes of their APIs.

mod fakes;

use base64::Engine as _;
use fakes::gitlab::{self, Gitlab, Project};
use fakes::harbor::{self, Harbor};
use fakes::jenkins::{self, Jenkins};
use fakes::jira::{self, Jira};
use fakes::{Mode, Shared};
use hyperpage::api::ToolBindingSpec;
use hyperpage::api::toolbinding::{Capability, GapKind};
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::providers::http::{ClientConfig, UpstreamClient};
use hyperpage::providers::{self, Budget, Credential, PollRequest, ProviderError, Snapshot};
use std::collections::BTreeMap;
use std::time::Duration;

fn loopback_client() -> UpstreamClient {
    fakes::loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()))
}

fn spec(yaml: &str) -> ToolBindingSpec {
    serde_norway::from_str(&format!("workspaceRef: {{name: w}}\ncredentialsSecretRef: {{name: s, key: k}}\n{yaml}")).unwrap()
}

async fn poll(client: &UpstreamClient, url: &str, spec: &ToolBindingSpec, token: &str) -> Result<Snapshot, ProviderError> {
    let credential = Credential::new(spec.provider, token).unwrap();
    let budget = Budget::new(None);
    let request = PollRequest {
        spec,
        endpoint: url::Url::parse(url).unwrap(),
        credential: &credential,
        reserve: 0,
        budget: &budget,
        scope: Default::default(),
    };
    providers::poll(client, &request).await
}

fn basic(user_and_secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_and_secret))
}

/// 401, 5xx, malformed JSON and 429 + Retry-After, each on a fresh client.
async fn failure_modes(shared: &Shared, url: &str, spec: &ToolBindingSpec, token: &str, provider: &'static str) {
    shared.set_mode(Mode::Unauthorized);
    let error = poll(&loopback_client(), url, spec, token).await.unwrap_err();
    assert_eq!(error, ProviderError::CredentialsRejected { provider, status: 401 });
    assert!(!error.to_string().contains(token), "{error}");

    shared.set_mode(Mode::ServerError);
    let error = poll(&loopback_client(), url, spec, token).await.unwrap_err();
    assert!(matches!(&error, ProviderError::Upstream { reason, .. } if reason == "HTTP 502"), "{error:?}");

    shared.set_mode(Mode::Malformed);
    let error = poll(&loopback_client(), url, spec, token).await.unwrap_err();
    assert!(matches!(error, ProviderError::Malformed { .. }), "{error:?}");

    shared.set_mode(Mode::RetryAfter { status: 429, seconds: 120 });
    let client = loopback_client();
    let before = jiff::Timestamp::now();
    let error = poll(&client, url, spec, token).await.unwrap_err();
    let after = jiff::Timestamp::now();
    let ProviderError::RateLimited { until, .. } = error else { panic!("{error:?}") };
    assert!(until >= before + jiff::SignedDuration::from_secs(120) && until <= after + jiff::SignedDuration::from_secs(120), "{until}");
    shared.set_mode(Mode::Normal);
    shared.clear();
    let error = poll(&client, url, spec, token).await.unwrap_err();
    assert!(matches!(error, ProviderError::RateLimited { until: again, .. } if again == until), "{error:?}");
    assert!(shared.requests().is_empty(), "no request while waiting: {:?}", shared.requests());
}

/// Polls twice; the second poll must give the same snapshot. With ETags every request of the
/// second poll is conditional and answered 304; without, nothing is cached and every
/// request is a plain 200.
async fn second_poll(shared: &Shared, url: &str, spec: &ToolBindingSpec, token: &str, etags: bool) {
    let client = loopback_client();
    let first = poll(&client, url, spec, token).await.unwrap();
    let count = shared.requests().len();
    shared.clear();
    let second = poll(&client, url, spec, token).await.unwrap();
    assert_eq!(first, second);
    let seen = shared.requests();
    assert_eq!(seen.len(), count, "same requests again");
    if etags {
        assert!(seen.iter().all(|s| s.if_none_match.is_some() && s.status == 304), "{seen:?}");
    } else {
        assert!(seen.iter().all(|s| s.if_none_match.is_none() && s.status == 200), "{seen:?}");
    }
}

// ---------------------------------------------------------------- GitLab

const GITLAB_TOKEN: &str = "glpat-providerTestTokenNeverPrinted";

fn gitlab_spec() -> ToolBindingSpec {
    spec("provider: gitlab\ngitlab: {projects: [payments/ledger, '7']}\n")
}

fn gitlab_projects() -> BTreeMap<String, Project> {
    let ledger = "payments/ledger";
    let mut merge_requests: Vec<_> =
        (1..=130).map(|n| gitlab::merge_request(ledger, n, &format!("MR {n}"), "opened", false, "2026-11-01T10:00:00.000Z")).collect();
    merge_requests.push(gitlab::merge_request(ledger, 131, "Draft: new ledger format", "opened", true, "2026-11-22T10:00:00.000Z"));
    merge_requests.push(gitlab::merge_request(ledger, 132, "Merged long ago", "merged", false, "2026-11-23T10:00:00.000Z"));
    let issues = vec![
        gitlab::issue(ledger, 1, "Rounding error", "opened", Some("carol"), "2026-11-21T10:00:00.000Z"),
        gitlab::issue(ledger, 2, "Slow export", "opened", None, "2026-11-20T10:00:00.000Z"),
        gitlab::issue(ledger, 3, "Fixed", "closed", None, "2026-11-23T10:00:00.000Z"),
    ];
    let pipelines = vec![
        gitlab::pipeline(ledger, 500, "success", "trunk", "2026-11-20T10:00:00.000Z"),
        gitlab::pipeline(ledger, 501, "failed", "trunk", "2026-11-21T10:00:00.000Z"),
        gitlab::pipeline(ledger, 502, "success", "feature-9", "2026-11-22T10:00:00.000Z"),
    ];
    let tools = "infra/tools";
    BTreeMap::from([
        (ledger.to_string(), Project { id: 42, default_branch: "trunk".into(), merge_requests, issues, pipelines, ..Project::default() }),
        (
            tools.to_string(),
            Project {
                id: 7,
                default_branch: "main".into(),
                merge_requests: vec![],
                issues: vec![gitlab::issue(tools, 9, "Upgrade", "opened", None, "2026-11-19T10:00:00.000Z")],
                pipelines: vec![gitlab::pipeline(tools, 600, "running", "main", "2026-11-22T11:00:00.000Z")],
                ..Project::default()
            },
        ),
    ])
}

#[tokio::test]
async fn gitlab_counts_and_maps_merge_requests_issues_and_pipelines() {
    let fake = Gitlab::start(gitlab_projects()).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    let summary = &snapshot.summary;
    assert_eq!(summary.code_reviews, 131, "open merge requests past the first page (X-Total), merged ones left out");
    assert_eq!(summary.tickets, 3, "open issues of both projects");
    assert_eq!((summary.pipelines, summary.failing_pipelines), (2, 1), "latest default-branch pipeline of each project");

    let draft = &snapshot.items.code_reviews[0];
    assert_eq!(draft.id, "payments/ledger!131");
    assert_eq!(draft.state.as_deref(), Some("draft"));
    assert_eq!(draft.author.as_deref(), Some("alice"));
    assert_eq!(draft.url, "https://gitlab.example.com/payments/ledger/-/merge_requests/131");
    assert!(snapshot.items.code_reviews[1..].iter().all(|i| i.state.as_deref() == Some("open")));
    let rounding = snapshot.items.tickets.iter().find(|t| t.id == "payments/ledger#1").unwrap();
    assert_eq!(rounding.author.as_deref(), Some("carol"), "the assignee when there is one");
    let slow = snapshot.items.tickets.iter().find(|t| t.id == "payments/ledger#2").unwrap();
    assert_eq!(slow.author.as_deref(), Some("bob"), "else the author");
    let failed = snapshot.items.pipelines.iter().find(|p| p.id == "payments/ledger/pipelines/501").unwrap();
    assert_eq!((failed.state.as_deref(), failed.title.as_str()), (Some("failed"), "payments/ledger @ trunk"));
    assert!(snapshot.items.pipelines.iter().any(|p| p.id == "7/pipelines/600" && p.state.as_deref() == Some("running")));

    let seen = fake.shared.requests();
    assert!(seen.iter().all(|s| s.param("page").is_none()), "one page each: the totals come from X-Total");
    assert!(
        seen.iter()
            .any(|s| s.path == "/api/v4/projects/payments%2Fledger/merge_requests" && s.param("order_by").as_deref() == Some("updated_at"))
    );
    assert!(seen.iter().any(|s| s.path == "/api/v4/projects/7/issues"));
    assert!(seen.iter().any(|s| s.path.ends_with("ledger/pipelines") && s.param("ref").as_deref() == Some("trunk")), "the default branch");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    assert!(seen.iter().all(|s| s.header("private-token") == Some(GITLAB_TOKEN) && s.header("authorization").is_none()));
}

/// Item 1: GitLab writes `Link` on its configured external host (the fake's is
/// gitlab.example.com), not the in-cluster address used; counts and pages still work.
#[tokio::test]
async fn gitlab_behind_an_internal_address_counts_past_the_first_page() {
    let fake = Gitlab::start(gitlab_projects()).await;
    assert_ne!(*fake.external_url.lock().unwrap(), fake.url());
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    assert_eq!(snapshot.summary.code_reviews, 131);
    assert!(snapshot.summary.gaps.is_empty(), "{:?}", snapshot.summary.gaps);
}

/// Item 2: merge requests and pipelines switched off (403) are "n/a"; issues stand.
#[tokio::test]
async fn gitlab_disabled_features_are_not_applicable_and_the_rest_stands() {
    let mut projects = gitlab_projects();
    projects.get_mut("payments/ledger").unwrap().disabled = vec!["merge_requests", "pipelines"];
    let fake = Gitlab::start(projects).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    assert_eq!(snapshot.summary.tickets, 3, "issues of both projects stand");
    assert_eq!(snapshot.summary.pipelines, 1, "the other project's pipeline stands");
    let unavailable: Vec<_> = snapshot.summary.gaps.iter().filter(|g| g.kind == GapKind::Unavailable).map(|g| g.capability).collect();
    assert_eq!(unavailable, [Capability::CodeReviews, Capability::Pipelines]);
    assert!(snapshot.summary.gaps.iter().all(|g| g.reason.contains("(HTTP 403): 403 Forbidden")), "{:?}", snapshot.summary.gaps);
}

/// Item 4: GitLab leaves `X-Total` out above 10,000: the count is a lower bound and says so.
#[tokio::test]
async fn gitlab_totals_above_ten_thousand_are_marked_as_lower_bounds() {
    let mut projects = gitlab_projects();
    projects.get_mut("infra/tools").unwrap().issues =
        (1..=10_050).map(|n| gitlab::issue("infra/tools", n, "chore", "opened", None, "2026-11-19T10:00:00.000Z")).collect();
    let fake = Gitlab::start(projects).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    assert_eq!(snapshot.summary.tickets, 2 + 10_000);
    let gap = snapshot.summary.gaps.iter().find(|g| g.capability == Capability::Tickets).expect("marked");
    assert_eq!(gap.kind, GapKind::Estimated);
}

/// Item 9: a running or skipped newest pipeline does not hide the failure before it.
#[tokio::test]
async fn gitlab_a_running_or_skipped_newest_pipeline_does_not_hide_a_failure() {
    let mut projects = gitlab_projects();
    let ledger = projects.get_mut("payments/ledger").unwrap();
    ledger.pipelines.push(gitlab::pipeline("payments/ledger", 503, "skipped", "trunk", "2026-11-22T10:00:00.000Z"));
    ledger.pipelines.push(gitlab::pipeline("payments/ledger", 504, "running", "trunk", "2026-11-23T10:00:00.000Z"));
    let fake = Gitlab::start(projects).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (2, 1));
    assert!(snapshot.items.pipelines.iter().any(|p| p.id == "payments/ledger/pipelines/501" && p.state.as_deref() == Some("failed")));
}

/// Item 6: GitLab sends `RateLimit-*` only with a 429, so the ledger learns nothing from a
/// normal answer (the reserve cannot act there; the README says so).
#[tokio::test]
async fn gitlab_rate_limit_headers_come_only_with_a_429() {
    let fake = Gitlab::start(gitlab_projects()).await;
    let client = loopback_client();
    poll(&client, &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    let credential = Credential::new(hyperpage::api::Provider::Gitlab, GITLAB_TOKEN).unwrap();
    assert_eq!(client.ledger_entry(&credential).and_then(|e| e.remaining), None);
    assert!(fake.shared.requests().iter().all(|s| s.status == 200));
}

#[tokio::test]
async fn gitlab_second_poll_is_all_304() {
    let fake = Gitlab::start(gitlab_projects()).await;
    second_poll(&fake.shared, &fake.url(), &gitlab_spec(), GITLAB_TOKEN, true).await;
}

#[tokio::test]
async fn gitlab_failure_modes() {
    let fake = Gitlab::start(gitlab_projects()).await;
    failure_modes(&fake.shared, &fake.url(), &gitlab_spec(), GITLAB_TOKEN, "gitlab").await;
}

#[tokio::test]
async fn gitlab_used_up_quota_waits_for_retry_after() {
    let fake = Gitlab::start(gitlab_projects()).await;
    fake.shared.set_quota(0, Duration::from_secs(45));
    let before = jiff::Timestamp::now();
    let error = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = error else { panic!("{error:?}") };
    assert!(until >= before + jiff::SignedDuration::from_secs(43) && until <= before + jiff::SignedDuration::from_secs(47), "{until}");
    assert_eq!(fake.shared.requests()[0].status, 429);
}

#[tokio::test]
async fn gitlab_unknown_project_is_not_found() {
    let fake = Gitlab::start(gitlab_projects()).await;
    let spec = spec("provider: gitlab\ngitlab: {projects: [payments/missing]}\n");
    let error = poll(&loopback_client(), &fake.url(), &spec, GITLAB_TOKEN).await.unwrap_err();
    assert!(matches!(error, ProviderError::NotFound { .. }), "{error:?}");
}

// ---------------------------------------------------------------- Jira

const JQL: &str = r#"project = PAY AND statusCategory != Done AND labels in ("a&b", "c=d") ORDER BY updated DESC"#;
const JIRA_PAT: &str = "NjE0MzI3ODk2NTQ1OmJhZGdlcw-providerTestPat";

fn jira_spec() -> ToolBindingSpec {
    spec(&format!("provider: jira\njira: {{jql: '{JQL}'}}\n"))
}

fn jira_issues() -> Vec<serde_json::Value> {
    (1..=130)
        .map(|n| {
            let updated = format!("2026-11-{:02}T10:15:30.000+0000", 1 + n % 28);
            jira::issue(&format!("PAY-{n}"), &format!("Ticket {n}"), if n % 2 == 0 { "In Progress" } else { "To Do" }, None, &updated)
        })
        .chain([jira::issue("PAY-999", "Newest", "In Review", Some("Dana Scully"), "2026-11-30T09:00:00.000+0100")])
        .collect()
}

#[tokio::test]
async fn jira_data_center_reads_one_page_and_the_exact_total() {
    let fake = Jira::start(jira_issues()).await;
    *fake.max_results.lock().unwrap() = 10;
    let snapshot = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    assert_eq!(snapshot.summary.tickets, 131, "the total Data Center reports");
    assert!(snapshot.summary.gaps.is_empty(), "an exact count");
    let seen = fake.shared.requests();
    assert_eq!(seen.len(), 1, "no paging for a count: {seen:?}");
    assert!(seen.iter().all(|s| s.path == "/rest/api/2/search" && s.param("fields").as_deref() == Some("summary,status,assignee,updated")));
    assert_eq!(*fake.jqls.lock().unwrap(), vec![JQL.to_string()], "the JQL arrives intact");

    *fake.max_results.lock().unwrap() = 1000;
    let snapshot = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    assert_eq!(snapshot.items.tickets.len(), providers::MAX_ITEMS);
    let newest = &snapshot.items.tickets[0];
    assert_eq!(newest.id, "PAY-999");
    assert_eq!(newest.title, "Newest");
    assert_eq!(newest.state.as_deref(), Some("In Review"));
    assert_eq!(newest.author.as_deref(), Some("Dana Scully"));
    assert_eq!(newest.url, format!("{}/browse/PAY-999", fake.url()));
    assert_eq!(newest.updated_at.as_ref().unwrap().0, "2026-11-30T08:00:00Z".parse::<jiff::Timestamp>().unwrap(), "+0100 understood");
}

/// Item 3: Cloud through the API gateway: the enhanced search, the approximate count
/// (marked as such), and links to the site rather than the gateway.
#[tokio::test]
async fn jira_cloud_via_the_api_gateway_uses_enhanced_search_and_the_approximate_count() {
    let fake = Jira::start_cloud(jira_issues(), "/ex/jira/11223344-a1b2-3b33-c444-def123456789").await;
    let spec = spec(&format!("provider: jira\njira: {{jql: '{JQL}', deployment: cloud}}\n"));
    let snapshot = poll(&loopback_client(), &fake.url(), &spec, "me@example.com:ATATT3xFfGF0-apiToken").await.unwrap();
    assert_eq!(snapshot.summary.tickets, 131);
    let gap = &snapshot.summary.gaps[0];
    assert_eq!((gap.capability, gap.kind), (Capability::Tickets, GapKind::Estimated));
    let newest = snapshot.items.tickets.iter().find(|t| t.id == "PAY-999").expect("the newest ticket");
    assert_eq!(newest.url, format!("{}/browse/PAY-999", jira::CLOUD_SITE));
    let seen = fake.shared.requests();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert!(paths.contains(&"/ex/jira/11223344-a1b2-3b33-c444-def123456789/rest/api/3/search/jql"), "{paths:?}");
    assert!(paths.contains(&"/ex/jira/11223344-a1b2-3b33-c444-def123456789/rest/api/3/search/approximate-count"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("/rest/api/2/")), "the removed API is never called: {paths:?}");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
}

/// Item 3: Cloud's own error text (bounded, control characters escaped) instead of "HTTP 400".
#[tokio::test]
async fn jira_cloud_errors_show_the_upstream_text_bounded_and_escaped() {
    let fake = Jira::start_cloud(jira_issues(), "").await;
    let spec = spec("provider: jira\njira: {jql: 'ORDER BY updated DESC', deployment: cloud}\n");
    let error = poll(&loopback_client(), &fake.url(), &spec, JIRA_PAT).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("HTTP 400: Unbounded JQL queries are not allowed here"), "{text}");
    assert!(!text.contains('\u{7}') && text.contains("\\u{7}"), "control characters escaped: {text}");
    assert!(text.len() < 400, "bounded: {text}");
}

/// Item 6: Data Center sends `retry-after: 0` on every answer; a 403 after failed logins (a
/// CAPTCHA) is a refused login, not a rate limit.
#[tokio::test]
async fn jira_data_center_captcha_is_a_refused_login_not_a_rate_limit() {
    let fake = Jira::start(jira_issues()).await;
    poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    fake.shared.set_mode(Mode::CaptchaDenied);
    let error = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap_err();
    assert_eq!(error, ProviderError::CredentialsRejected { provider: "jira", status: 403 });
}

#[tokio::test]
async fn jira_auth_is_basic_for_email_and_token_and_bearer_for_a_pat() {
    let fake = Jira::start(jira_issues()).await;
    fake.shared.expect_auth(&basic("me@example.com:ATATT3xFfGF0-apiToken"));
    poll(&loopback_client(), &fake.url(), &jira_spec(), "me@example.com:ATATT3xFfGF0-apiToken").await.unwrap();
    fake.shared.expect_auth(&format!("Bearer {JIRA_PAT}"));
    poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    let error = poll(&loopback_client(), &fake.url(), &jira_spec(), "me@example.com:wrong").await.unwrap_err();
    assert_eq!(error, ProviderError::CredentialsRejected { provider: "jira", status: 401 });
}

#[tokio::test]
async fn jira_search_has_no_etags_so_every_poll_reads() {
    let fake = Jira::start(jira_issues()).await;
    second_poll(&fake.shared, &fake.url(), &jira_spec(), JIRA_PAT, false).await;
}

#[tokio::test]
async fn jira_failure_modes() {
    let fake = Jira::start(jira_issues()).await;
    failure_modes(&fake.shared, &fake.url(), &jira_spec(), JIRA_PAT, "jira").await;
}

#[tokio::test]
async fn jira_used_up_quota_waits_for_retry_after() {
    let fake = Jira::start(jira_issues()).await;
    fake.shared.set_quota(0, Duration::from_secs(30));
    let before = jiff::Timestamp::now();
    let error = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap_err();
    let ProviderError::RateLimited { until, .. } = error else { panic!("{error:?}") };
    assert!(until >= before + jiff::SignedDuration::from_secs(28) && until <= before + jiff::SignedDuration::from_secs(32), "{until}");
}

// ---------------------------------------------------------------- Jenkins

const JENKINS_TOKEN: &str = "ci-reader:11a0b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7";
const T: i64 = 1_795_428_000_000;

fn jenkins_spec() -> ToolBindingSpec {
    spec("provider: jenkins\njenkins: {jobs: [payments/build-main, payments/deploy, nightly, release tools/package]}\n")
}

fn jenkins_jobs() -> BTreeMap<String, Vec<jenkins::Build>> {
    BTreeMap::from([
        ("payments/build-main".to_string(), vec![jenkins::build(412, Some("FAILURE"), false, T)]),
        ("payments/deploy".to_string(), vec![jenkins::build(88, None, true, T + 60_000)]),
        ("nightly".to_string(), vec![jenkins::build(30, Some("SUCCESS"), false, T - 3_600_000)]),
        ("release tools/package".to_string(), vec![jenkins::build(5, Some("UNSTABLE"), false, T - 7_200_000)]),
        ("never-built".to_string(), vec![]),
    ])
}

#[tokio::test]
async fn jenkins_counts_failures_and_unstable_but_not_running_builds() {
    let fake = Jenkins::start(jenkins_jobs()).await;
    fake.shared.expect_auth(&basic(JENKINS_TOKEN));
    let snapshot = poll(&loopback_client(), &fake.url(), &jenkins_spec(), JENKINS_TOKEN).await.unwrap();
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (4, 2), "FAILURE and UNSTABLE (failing tests)");
    let by_id = |id: &str| snapshot.items.pipelines.iter().find(|p| p.id == id).unwrap_or_else(|| panic!("{id}: {snapshot:?}"));
    let failed = by_id("payments/build-main #412");
    assert_eq!((failed.title.as_str(), failed.state.as_deref()), ("build-main", Some("failure")));
    assert_eq!(failed.url, format!("{}/job/payments/job/build-main/412/", fake.url()));
    assert_eq!(failed.updated_at.as_ref().unwrap().0, jiff::Timestamp::from_millisecond(T).unwrap());
    assert_eq!(by_id("payments/deploy #88").state.as_deref(), Some("building"));
    assert_eq!(by_id("nightly #30").state.as_deref(), Some("success"));
    assert_eq!(by_id("release tools/package #5").state.as_deref(), Some("unstable"));

    let seen = fake.shared.requests();
    assert!(seen.iter().any(|s| s.path == "/job/payments/job/build-main/api/json"));
    for s in &seen {
        let tree = s.param("tree").unwrap_or_else(|| panic!("no tree= projection: {s:?}"));
        assert!(tree.starts_with("name,url,color,lastBuild[") && tree.contains("lastCompletedBuild[number,result"), "{tree}");
    }
}

/// Item 9: `lastBuild` is the running build; red stays red until a fix has finished.
#[tokio::test]
async fn jenkins_red_stays_red_while_a_fix_builds() {
    let jobs = BTreeMap::from([(
        "payments/build-main".to_string(),
        vec![jenkins::build(412, Some("FAILURE"), false, T), jenkins::build(413, None, true, T + 60_000)],
    )]);
    let fake = Jenkins::start(jobs).await;
    let spec = spec("provider: jenkins\njenkins: {jobs: [payments/build-main]}\n");
    let snapshot = poll(&loopback_client(), &fake.url(), &spec, JENKINS_TOKEN).await.unwrap();
    assert_eq!(snapshot.summary.failing_pipelines, 1);
    let item = &snapshot.items.pipelines[0];
    assert_eq!((item.id.as_str(), item.state.as_deref()), ("payments/build-main #412", Some("failure")));
    assert!(item.failing, "marked failing for the operator's PipelineFailing event");
    fake.jobs.lock().unwrap().get_mut("payments/build-main").unwrap()[1] = jenkins::build(413, Some("SUCCESS"), false, T + 60_000);
    let snapshot = poll(&loopback_client(), &fake.url(), &spec, JENKINS_TOKEN).await.unwrap();
    assert_eq!(snapshot.summary.failing_pipelines, 0, "green once the fix finished");
}

#[tokio::test]
async fn jenkins_has_no_etags_so_every_poll_reads() {
    let fake = Jenkins::start(jenkins_jobs()).await;
    second_poll(&fake.shared, &fake.url(), &jenkins_spec(), JENKINS_TOKEN, false).await;
}

#[tokio::test]
async fn jenkins_failure_modes() {
    let fake = Jenkins::start(jenkins_jobs()).await;
    failure_modes(&fake.shared, &fake.url(), &jenkins_spec(), JENKINS_TOKEN, "jenkins").await;
}

#[test]
fn the_jenkins_fake_projects_trees() {
    let full = serde_json::json!({"_class": "J", "name": "a", "color": "red", "builds": [1],
                                  "lastBuild": {"_class": "B", "number": 3, "result": "FAILURE", "actions": []}});
    let projected = jenkins::project(&full, "name,lastBuild[number,result]");
    assert_eq!(projected, serde_json::json!({"_class": "J", "name": "a", "lastBuild": {"_class": "B", "number": 3, "result": "FAILURE"}}));
}

// ---------------------------------------------------------------- Harbor

const ROBOT: &str = "robot$payments+reader:Zk3aWcA9providerTestSecret";

fn harbor_spec() -> ToolBindingSpec {
    spec("provider: harbor\nharbor: {projects: [payments, infra]}\n")
}

fn harbor_projects() -> harbor::Projects {
    let payments = BTreeMap::from([
        (
            "ledger".to_string(),
            vec![
                harbor::artifact(1, Some("v1.4.0"), "2026-11-21T10:00:00.000Z", Some(("Critical", 2, 5))),
                harbor::artifact(2, Some("v1.3.9"), "2026-11-20T10:00:00.000Z", Some(("High", 0, 4))),
                harbor::artifact(3, None, "2026-11-19T10:00:00.000Z", None),
            ],
        ),
        ("team/api".to_string(), vec![harbor::artifact(4, Some("latest"), "2026-11-22T10:00:00.000Z", Some(("Critical", 1, 0)))]),
    ]);
    // More repositories than one page of 100; only one has artifacts.
    let mut infra: BTreeMap<String, Vec<serde_json::Value>> = (0..105).map(|n| (format!("tool-{n:03}"), vec![])).collect();
    infra.insert("tool-104".into(), vec![harbor::artifact(5, Some("2026.11"), "2026-11-18T10:00:00.000Z", Some(("Low", 0, 0)))]);
    BTreeMap::from([("payments".to_string(), payments), ("infra".to_string(), infra)])
}

#[tokio::test]
async fn harbor_counts_critical_artifacts() {
    let fake = Harbor::start(harbor_projects()).await;
    fake.shared.expect_auth(&basic(ROBOT));
    let snapshot = poll(&loopback_client(), &fake.url(), &harbor_spec(), ROBOT).await.unwrap();
    assert_eq!((snapshot.summary.artifacts, snapshot.summary.vulnerable_artifacts), (5, 2));
    let by_title = |t: &str| snapshot.items.artifacts.iter().find(|a| a.title == t).unwrap_or_else(|| panic!("{t}: {snapshot:?}"));
    assert_eq!(by_title("payments/ledger:v1.4.0").state.as_deref(), Some("2 critical"));
    assert_eq!(by_title("payments/ledger:v1.3.9").state.as_deref(), Some("high"));
    assert_eq!(by_title("payments/team/api:latest").state.as_deref(), Some("1 critical"));
    assert_eq!(by_title("infra/tool-104:2026.11").state.as_deref(), Some("low"), "found on the second page of repositories");
    let untagged = snapshot.items.artifacts.iter().find(|a| a.title.starts_with("payments/ledger@sha256:")).unwrap();
    assert_eq!(untagged.state.as_deref(), Some("not scanned"));
    assert_eq!(untagged.id, format!("sha256:{:064x}", 3));

    let seen = fake.shared.requests();
    assert!(seen.iter().any(|s| s.path == "/api/v2.0/projects/payments/repositories/team%252Fapi/artifacts"), "{seen:?}");
    assert!(seen.iter().any(|s| s.path == "/api/v2.0/projects/infra/repositories" && s.param("page").as_deref() == Some("2")));
    assert!(seen.iter().filter(|s| s.path.ends_with("/artifacts")).all(|s| s.param("with_scan_overview").as_deref() == Some("true")));
    assert!(seen.iter().all(|s| s.status == 200), "{:?}", seen.iter().filter(|s| s.status != 200).collect::<Vec<_>>());
}

/// Items 4 and 8: the artifact count is exact (`artifact_count`), the vulnerable count says it
/// is a lower bound, and links use the UI route with the numeric project id.
#[tokio::test]
async fn harbor_counts_are_exact_and_links_use_the_numeric_project_id() {
    let mut projects = harbor_projects();
    let many: Vec<_> = (100..125).map(|n| harbor::artifact(n, Some(&format!("v{n}")), "2026-11-01T10:00:00.000Z", None)).collect();
    projects.get_mut("payments").unwrap().insert("busy".into(), many);
    let fake = Harbor::start(projects).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &harbor_spec(), ROBOT).await.unwrap();
    assert_eq!(snapshot.summary.artifacts, 5 + 25, "not capped at 10 per repository");
    let gap = snapshot.summary.gaps.iter().find(|g| g.capability == Capability::Artifacts).expect("marked");
    assert_eq!(gap.kind, GapKind::Estimated);
    let api = snapshot.items.artifacts.iter().find(|a| a.title == "payments/team/api:latest").unwrap();
    // infra is project 1, payments project 2 (the fake numbers them in name order).
    assert_eq!(api.url, format!("{}/harbor/projects/2/repositories/team%2Fapi/artifacts-tab/artifacts/{}", fake.url(), api.id));
}

#[tokio::test]
async fn harbor_has_no_etags_so_every_poll_reads() {
    let fake = Harbor::start(harbor_projects()).await;
    second_poll(&fake.shared, &fake.url(), &harbor_spec(), ROBOT, false).await;
}

#[tokio::test]
async fn harbor_failure_modes() {
    let fake = Harbor::start(harbor_projects()).await;
    failure_modes(&fake.shared, &fake.url(), &harbor_spec(), ROBOT, "harbor").await;
}
