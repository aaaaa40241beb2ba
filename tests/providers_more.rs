//! GitLab, Jira, Jenkins and Harbor providers against local fakes of their APIs.

mod fakes;

use base64::Engine as _;
use fakes::gitlab::{self, Gitlab, Project};
use fakes::harbor::{self, Harbor};
use fakes::jenkins::{self, Jenkins};
use fakes::jira::{self, Jira};
use fakes::{Mode, Shared};
use hyperpage::api::ToolBindingSpec;
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
    let request = PollRequest { spec, endpoint: url::Url::parse(url).unwrap(), credential: &credential, reserve: 0, budget: &budget };
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
        (ledger.to_string(), Project { id: 42, default_branch: "trunk".into(), merge_requests, issues, pipelines }),
        (
            tools.to_string(),
            Project {
                id: 7,
                default_branch: "main".into(),
                merge_requests: vec![],
                issues: vec![gitlab::issue(tools, 9, "Upgrade", "opened", None, "2026-11-19T10:00:00.000Z")],
                pipelines: vec![gitlab::pipeline(tools, 600, "running", "main", "2026-11-22T11:00:00.000Z")],
            },
        ),
    ])
}

#[tokio::test]
async fn gitlab_counts_and_maps_merge_requests_issues_and_pipelines() {
    let fake = Gitlab::start(gitlab_projects()).await;
    let snapshot = poll(&loopback_client(), &fake.url(), &gitlab_spec(), GITLAB_TOKEN).await.unwrap();
    let summary = &snapshot.summary;
    assert_eq!(summary.code_reviews, 131, "open merge requests over two pages, merged ones left out");
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
    assert!(seen.iter().any(|s| s.path == "/api/v4/projects/payments%2Fledger/merge_requests" && s.param("page").as_deref() == Some("2")));
    assert!(seen.iter().any(|s| s.path == "/api/v4/projects/7/issues"));
    assert!(seen.iter().filter(|s| s.path.ends_with("/pipelines")).all(|s| s.param("per_page").as_deref() == Some("1")));
    assert!(seen.iter().any(|s| s.path.ends_with("ledger/pipelines") && s.param("ref").as_deref() == Some("trunk")), "the default branch");
    assert!(seen.iter().all(|s| s.status == 200), "{seen:?}");
    assert!(seen.iter().all(|s| s.header("private-token") == Some(GITLAB_TOKEN) && s.header("authorization").is_none()));
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
async fn jira_server_pages_with_start_at_and_reports_the_total() {
    let fake = Jira::start(jira_issues()).await;
    *fake.max_results.lock().unwrap() = 50;
    let snapshot = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    assert_eq!(snapshot.summary.tickets, 131, "the total Server reports");
    assert_eq!(snapshot.items.tickets.len(), providers::MAX_ITEMS);
    let newest = &snapshot.items.tickets[0];
    assert_eq!(newest.id, "PAY-999");
    assert_eq!(newest.title, "Newest");
    assert_eq!(newest.state.as_deref(), Some("In Review"));
    assert_eq!(newest.author.as_deref(), Some("Dana Scully"));
    assert_eq!(newest.url, format!("{}/browse/PAY-999", fake.url()));
    assert_eq!(newest.updated_at.as_ref().unwrap().0, "2026-11-30T08:00:00Z".parse::<jiff::Timestamp>().unwrap(), "+0100 understood");

    let seen = fake.shared.requests();
    let starts: Vec<_> = seen.iter().map(|s| s.param("startAt").unwrap()).collect();
    assert_eq!(starts, ["0", "50", "100"], "follows startAt past the server's cap of 50");
    assert!(seen.iter().all(|s| s.path == "/rest/api/2/search" && s.param("fields").as_deref() == Some("summary,status,assignee,updated")));
    assert_eq!(*fake.jqls.lock().unwrap(), vec![JQL.to_string(); 3], "the JQL arrives intact");
}

#[tokio::test]
async fn jira_server_total_counts_tickets_beyond_the_pages_read() {
    let fake = Jira::start(jira_issues()).await;
    *fake.max_results.lock().unwrap() = 10;
    let snapshot = poll(&loopback_client(), &fake.url(), &jira_spec(), JIRA_PAT).await.unwrap();
    assert_eq!(fake.shared.requests().len(), ClientConfig::default().max_pages, "stops at the page bound");
    assert_eq!(snapshot.summary.tickets, 131, "the total, not the 100 read");
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

fn jenkins_jobs() -> BTreeMap<String, Option<jenkins::Build>> {
    BTreeMap::from([
        ("payments/build-main".to_string(), Some(jenkins::build(412, Some("FAILURE"), false, T))),
        ("payments/deploy".to_string(), Some(jenkins::build(88, None, true, T + 60_000))),
        ("nightly".to_string(), Some(jenkins::build(30, Some("SUCCESS"), false, T - 3_600_000))),
        ("release tools/package".to_string(), Some(jenkins::build(5, Some("UNSTABLE"), false, T - 7_200_000))),
        ("never-built".to_string(), None),
    ])
}

#[tokio::test]
async fn jenkins_counts_failures_but_not_running_builds() {
    let fake = Jenkins::start(jenkins_jobs()).await;
    fake.shared.expect_auth(&basic(JENKINS_TOKEN));
    let snapshot = poll(&loopback_client(), &fake.url(), &jenkins_spec(), JENKINS_TOKEN).await.unwrap();
    assert_eq!((snapshot.summary.pipelines, snapshot.summary.failing_pipelines), (4, 1));
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
        assert!(tree.starts_with("name,url,color,lastBuild[") && tree.contains("result"), "{tree}");
    }
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
