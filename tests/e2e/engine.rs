//! The aggregation engine end to end: bindings pointing at local fakes of the tools, the
//! operator polling them, statuses and `kubectl get` filled, a pipeline turning red, an
//! exhausted quota, and no token anywhere it does not belong.

#[path = "../fakes/mod.rs"]
pub(crate) mod fakes;

use crate::support::*;
use fakes::github::{self, Github, Repo};
use fakes::gitlab::{self, Gitlab, Project};
use fakes::jira::{self, Jira};
use hyperpage::api::conditions::{self, RATE_LIMITED, READY, SYNCED};
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::time::Duration;

const TOKEN: &str = "ghp_e2eEngineTokenMustNeverAppear";
const GITLAB_TOKEN: &str = "glpat-e2eEngineTokenMustNeverAppear";
const JIRA_TOKEN: &str = "jira-pat-e2eEngineTokenMustNeverAppear";

fn projects() -> BTreeMap<String, Project> {
    let path = "payments/ledger";
    let project = Project {
        id: 42,
        default_branch: "main".into(),
        merge_requests: vec![gitlab::merge_request(path, 1, "Ledger rounding", "opened", false, "2026-11-20T10:00:00Z")],
        issues: vec![gitlab::issue(path, 9, "Reconcile nightly", "opened", None, "2026-11-20T10:00:00Z")],
        pipelines: vec![gitlab::pipeline(path, 700, "failed", "main", "2026-11-21T10:00:00Z")],
        ..Project::default()
    };
    BTreeMap::from([(path.to_string(), project)])
}

fn tickets() -> Vec<serde_json::Value> {
    (1..=5)
        .map(|n| jira::issue(&format!("PAY-{n}"), &format!("Ticket {n}"), "To Do", Some("Ada"), "2026-11-20T10:15:30.000+0000"))
        .collect()
}
/// One refresh interval (the schema's minimum) plus the 10% jitter and some slack.
const ONE_INTERVAL: Duration = Duration::from_secs(45);

fn repos() -> BTreeMap<String, Repo> {
    let name = "acme/payments-api";
    let repo = Repo {
        default_branch: "main".into(),
        pulls: (1..=4).map(|n| github::pull(name, n, &format!("Change {n}"))).collect(),
        issues: vec![github::issue(name, 50, "Crash on refund", false), github::issue(name, 51, "Slow export", false)],
        runs: vec![
            github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z"),
            github::run(2, 20, "deploy", "success", "2026-11-20T11:00:00Z"),
        ],
        ..Repo::default()
    };
    BTreeMap::from([(name.to_string(), repo)])
}

/// A Workspace `payments` polling every `interval`, with GitHub, GitLab and Jira bindings on
/// the fakes at these URLs, and their Secrets.
fn three_tools(interval: &str, github: &str, gitlab: &str, jira: &str) -> String {
    // Opted in, and pinned to the fake each token is meant for.
    let secret = |name: &str, token: &str, endpoint: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{hyperpage.dev/credential: \"true\"}}\n  \
             annotations: {{hyperpage.dev/endpoints: \"{endpoint}\"}}\nstringData: {{token: {token}}}\n---\n"
        )
    };
    let binding = |name: &str, provider: &str, endpoint: &str, block: &str| {
        format!(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: payments}}\n  \
             provider: {provider}\n  endpoint: {endpoint}\n  credentialsSecretRef: {{name: {name}-token, key: token}}\n  {block}\n---\n"
        )
    };
    [
        secret("github-token", TOKEN, github),
        secret("gitlab-token", GITLAB_TOKEN, gitlab),
        secret("jira-token", JIRA_TOKEN, jira),
        format!("apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: payments}}\nspec: {{refreshInterval: {interval}, portal: {{replicas: 1}}}}\n---\n"),
        binding("github", "github", github, "github: {repositories: [acme/payments-api]}\n  rateLimit: {minRemaining: 0}"),
        binding("gitlab", "gitlab", gitlab, "gitlab: {projects: [payments/ledger]}"),
        binding("jira", "jira", jira, "jira: {jql: project = PAY}"),
    ]
    .concat()
}

fn condition(binding: &ToolBinding, type_: &str) -> Option<(String, String)> {
    binding.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_)).map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_engine_fills_statuses_follows_changes_and_respects_the_quota() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-engine").await;
    let fake = Github::start(repos()).await;
    *fake.shared.expected_auth.lock().unwrap() = Some(format!("Bearer {TOKEN}"));
    let operator = Operator::start(OperatorOptions {
        identity: "engine",
        lease_name: "e2e-engine",
        extra: &["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true"],
    });

    let gitlab_fake = Gitlab::start(projects()).await;
    let jira_fake = Jira::start(tickets()).await;
    apply_yaml(&client, &ns.name, &three_tools("30s", &fake.url(), &gitlab_fake.url(), &jira_fake.url())).await;

    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    let binding = wait_for("the GitHub binding to sync", Duration::from_secs(60), || async {
        let b = bindings.get("github").await.ok()?;
        (condition(&b, SYNCED)? == ("True".into(), "Synced".into())).then_some(b)
    })
    .await;
    let status = binding.status.clone().unwrap();
    let summary = status.summary.clone().unwrap();
    assert_eq!((summary.code_reviews, summary.tickets, summary.pipelines, summary.failing_pipelines), (4, 2, 2, 0));
    assert_eq!(status.items.unwrap().code_reviews.len(), 4);
    assert_eq!(status.rate_limit.unwrap().limit, Some(5000));
    assert!(fake.shared.requests().iter().all(|s| !s.path.starts_with("/search")));

    // GitHub 4 PRs + GitLab 1 MR; GitLab's failed pipeline; 2 GitHub issues + 1 GitLab + 5 Jira.
    wait_for("the roll-up of all three tools", Duration::from_secs(60), || async {
        let s = workspaces.get("payments").await.ok()?.status?.summary?;
        (s.open_pull_requests == 5 && s.failing_pipelines == 1 && s.open_issues == 8).then_some(())
    })
    .await;
    let table = kubectl(&["get", "workspaces", "-n", &ns.name]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    // NAME READY TOOLS PRS FAILING ISSUES LAST-SYNC AGE
    assert_eq!(&row[2..6], ["3", "5", "1", "8"], "{table}");
    let jira_binding = bindings.get("jira").await.unwrap();
    assert_eq!(jira_binding.status.unwrap().items.unwrap().tickets[0].url, format!("{}/browse/PAY-1", jira_fake.url()));

    // A pipeline turns red upstream.
    fake.repos.lock().unwrap().get_mut("acme/payments-api").unwrap().runs.push(github::run(
        3,
        10,
        "build",
        "failure",
        "2026-11-22T10:00:00Z",
    ));
    let started = std::time::Instant::now();
    wait_for("the red pipeline within one interval", ONE_INTERVAL, || async {
        let s = workspaces.get("payments").await.ok()?.status?.summary?;
        (s.failing_pipelines == 2).then_some(())
    })
    .await;
    eprintln!("red pipeline visible after {:?}", started.elapsed());
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for("a PipelineFailing event", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("PipelineFailing")).then_some(())
    })
    .await;

    // Unchanged data: the next polls are all 304 and write no status.
    let before = bindings.get("github").await.unwrap().metadata.resource_version;
    fake.shared.clear();
    wait_for("a poll of unchanged data", ONE_INTERVAL, || async { (!fake.shared.requests().is_empty()).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fake.shared.requests().iter().all(|s| s.status == 304), "conditional requests only");
    assert_eq!(bindings.get("github").await.unwrap().metadata.resource_version, before, "a 304 causes no status write");

    // The quota runs out: RateLimited=True, then polling resumes after the reset.
    fake.repos.lock().unwrap().get_mut("acme/payments-api").unwrap().pulls.push(github::pull("acme/payments-api", 5, "Change 5"));
    fake.shared.set_quota(0, Duration::from_secs(40));
    wait_for("RateLimited=True", ONE_INTERVAL, || async {
        let b = bindings.get("github").await.ok()?;
        (condition(&b, RATE_LIMITED)?.0 == "True").then_some(())
    })
    .await;
    let limited = bindings.get("github").await.unwrap();
    assert_eq!(condition(&limited, READY).unwrap(), ("True".into(), "WaitingForQuota".into()), "kept data, waiting");
    wait_for("polling to resume after the reset", Duration::from_secs(90), || async {
        let b = bindings.get("github").await.ok()?;
        let resumed = condition(&b, RATE_LIMITED)?.0 == "False" && b.status?.summary?.code_reviews == 5;
        resumed.then_some(())
    })
    .await;

    // The token appears nowhere: status, Events, logs, metrics.
    let mut haystack = String::new();
    for b in bindings.list(&ListParams::default()).await.unwrap() {
        haystack += &serde_json::to_string(&b.status).unwrap();
    }
    haystack += &serde_json::to_string(&workspaces.get("payments").await.unwrap().status).unwrap();
    for e in events.list(&ListParams::default()).await.unwrap() {
        haystack += &format!("{:?} {:?}", e.reason, e.message);
    }
    haystack += &operator.metrics().await.unwrap();
    haystack += &std::fs::read_to_string(&operator.log).unwrap();
    use base64::Engine as _;
    for token in [TOKEN, GITLAB_TOKEN, JIRA_TOKEN] {
        for needle in [token.to_string(), base64::engine::general_purpose::STANDARD.encode(token)] {
            assert!(!haystack.contains(&needle), "a token leaked");
        }
    }
    assert!(haystack.contains("hyperpage_upstream_requests_total"), "the scan covered the metrics");
}

/// A throwaway Redis on a free loopback port (Debian's redis-server), stopped when dropped.
struct RedisServer {
    port: u16,
    child: std::process::Child,
}

impl RedisServer {
    fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Warm failover: with every binding's data in status and the cache in Redis, SIGKILL the
/// leader. The new leader writes no status for the unchanged bindings, no binding leaves
/// Ready=True, and no upstream request is made before each binding's next due time; after
/// it, GitHub answers 304s from the validators the old leader left in Redis.
#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_new_leader_takes_over_warm_and_quietly() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-warm").await;
    let redis = RedisServer::start();
    let key_file = std::env::temp_dir().join(format!("hyperpage-e2e-cache-key-{}", std::process::id()));
    std::fs::write(&key_file, "e2e-install-key-0123456789abcdef").unwrap();
    let github_fake = Github::start(repos()).await;
    let gitlab_fake = Gitlab::start(projects()).await;
    let jira_fake = Jira::start(tickets()).await;
    let lease = "e2e-warm-failover";
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let _ = leases.delete(lease, &Default::default()).await;
    let redis_url = format!("--redis-url=redis://127.0.0.1:{}/", redis.port);
    let key_arg = format!("--cache-key-file={}", key_file.display());
    let extra = ["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true", &redis_url, &key_arg];
    let a = Operator::start(OperatorOptions { identity: "warm-a", lease_name: lease, extra: &extra });
    let b = Operator::start(OperatorOptions { identity: "warm-b", lease_name: lease, extra: &extra });

    // 40s: long enough for the takeover (6s lease) to happen well before the next poll.
    let interval = Duration::from_secs(40);
    apply_yaml(&client, &ns.name, &three_tools("40s", &github_fake.url(), &gitlab_fake.url(), &jira_fake.url())).await;
    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    let names = ["github", "gitlab", "jira"];
    wait_for("every binding Ready=True", Duration::from_secs(60), || async {
        for name in names {
            let b = bindings.get(name).await.ok()?;
            (condition(&b, READY)? == ("True".into(), "Synced".into())).then_some(())?;
        }
        Some(())
    })
    .await;
    // Let the first leader's writes settle (conditions, roll-up), then note each due time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = if a.metric("hyperpage_leader ").await == Some(1.0) { a } else { b };
    let mut due = Vec::new();
    for name in names {
        let status = bindings.get(name).await.unwrap().status.unwrap();
        let last = status.last_sync_time.unwrap().0;
        due.push(last + jiff::SignedDuration::try_from(interval).unwrap());
    }
    let first_due = *due.iter().min().unwrap();

    leader.signal("KILL");
    let offset = audit_log_size();
    for fake in [&github_fake.shared, &gitlab_fake.shared, &jira_fake.shared] {
        fake.clear();
    }
    // Until one second before the first due time: no request upstream, no status write,
    // Ready=True throughout (checked every half second).
    let quiet_until = first_due - jiff::SignedDuration::from_secs(1);
    assert!(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10) < quiet_until, "the window covers the takeover");
    let mut checks = 0;
    while jiff::Timestamp::now() < quiet_until {
        for name in names {
            let b = bindings.get(name).await.unwrap();
            assert_eq!(condition(&b, READY).unwrap().0, "True", "{name} left Ready=True during the failover");
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let upstream: usize = [&github_fake.shared, &gitlab_fake.shared, &jira_fake.shared].iter().map(|f| f.requests().len()).sum();
    assert_eq!(upstream, 0, "no upstream request before the next due time");
    if let Some(offset) = offset {
        let writes: Vec<_> = audit_events_since(offset)
            .into_iter()
            .filter(|e| e["objectRef"]["resource"] == "toolbindings" && e["objectRef"]["namespace"] == ns.name.as_str())
            .filter(|e| !["get", "list", "watch"].contains(&e["verb"].as_str().unwrap_or("")))
            .filter(|e| e["stage"] == "ResponseComplete")
            .collect();
        assert!(writes.is_empty(), "the new leader wrote ToolBinding status: {writes:#?}");
        eprintln!("warm failover: 0 ToolBinding writes, 0 upstream requests, Ready=True in {checks} checks until the first due time");
    }

    // After the due time the new leader polls; GitHub's answers are 304s from Redis' validators.
    wait_for("the new leader's first poll", interval, || async { (!github_fake.shared.requests().is_empty()).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = github_fake.shared.requests();
    assert!(seen.iter().all(|s| s.status == 304), "warm from Redis: {seen:?}");
    let _ = std::fs::remove_file(&key_file);
}
