//! The webhook receiver end to end: a GitHub-style push signed with the binding's secret makes
//! the binding's status change within seconds (its interval is 10 minutes) for one
//! conditional poll, even when it lands on a standby replica; a bad signature gets 401 and
//! changes nothing; a burst of 100 pushes costs one or two polls.

use crate::engine::fakes::github::{self, Github, Repo};
use crate::support::*;
use hyperpage::api::conditions::{self, SYNCED};
use hyperpage::api::{REQUESTED_AT_ANNOTATION, ToolBinding};
use hyperpage::webhook::verify::{path_digest, sign};
use kube::api::Api;
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const TOKEN: &str = "ghp_e2eWebhookTokenMustNeverAppear";
const HOOK_SECRET: &str = "whsec-e2eWebhookSecretMustNeverAppear";
const REPO: &str = "acme/payments-api";
const PULLS: &str = "/repos/acme/payments-api/pulls";
/// The body of a push event; it must not matter what it says.
const PUSH: &str = r#"{"ref":"refs/heads/main","repository":{"full_name":"acme/payments-api"},"marker":"BODY-MUST-NOT-BE-LOGGED"}"#;

fn repos() -> BTreeMap<String, Repo> {
    let repo = Repo {
        default_branch: "main".into(),
        pulls: (1..=2).map(|n| github::pull(REPO, n, &format!("Change {n}"))).collect(),
        runs: vec![github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z")],
        ..Repo::default()
    };
    BTreeMap::from([(REPO.to_string(), repo)])
}

/// A Workspace polling every 10 minutes and one GitHub binding on the fake that takes webhooks.
fn manifests(github: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: github-token\n  labels: {{hyperpage.dev/credential: \"true\"}}\n  \
         annotations: {{hyperpage.dev/endpoints: \"{github}\"}}\nstringData: {{token: {TOKEN}}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: github-webhook\n  labels: {{hyperpage.dev/credential: \"true\"}}\n\
         stringData: {{secret: {HOOK_SECRET}}}\n---\n\
         apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: payments}}\nspec: {{refreshInterval: 10m, portal: {{replicas: 1}}}}\n---\n\
         apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: github}}\nspec:\n  workspaceRef: {{name: payments}}\n  \
         provider: github\n  endpoint: {github}\n  credentialsSecretRef: {{name: github-token, key: token}}\n  \
         github: {{repositories: [{REPO}]}}\n  webhook: {{secretRef: {{name: github-webhook, key: secret}}}}\n"
    )
}

struct Setup {
    client: Client,
    ns: TestNamespace,
    fake: Github,
    leader: Operator,
    leader_hooks: u16,
    bindings: Api<ToolBinding>,
}

fn start_operator(identity: &str, lease: &str, hooks: u16) -> Operator {
    let address = format!("--webhook-address=127.0.0.1:{hooks}");
    Operator::start(OperatorOptions {
        identity,
        lease_name: lease,
        extra: &["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true", &address],
    })
}

/// The fake, one leading operator, the binding synced once.
async fn setup(prefix: &str) -> Setup {
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, prefix).await;
    let fake = Github::start(repos()).await;
    fake.shared.expect_auth(&format!("Bearer {TOKEN}"));
    let leader_hooks = free_port();
    let leader = start_operator(prefix, prefix, leader_hooks);
    wait_for("the operator to lead", Duration::from_secs(30), || async {
        (leader.metric("hyperpage_leader ").await? == 1.0).then_some(())
    })
    .await;
    apply_yaml(&client, &ns.name, &manifests(&fake.url())).await;
    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the first sync", Duration::from_secs(60), || async {
        let b = bindings.get("github").await.ok()?;
        let synced = b.status.as_ref().and_then(|s| conditions::find(&s.conditions, SYNCED))?.status == "True";
        (synced && b.status?.summary?.code_reviews == 2).then_some(())
    })
    .await;
    Setup { client, ns, fake, leader, leader_hooks, bindings }
}

fn hook_url(port: u16, namespace: &str) -> String {
    format!("http://127.0.0.1:{port}/hooks/{}", path_digest(namespace, "github", HOOK_SECRET.as_bytes()))
}

pub(crate) async fn post(http: &reqwest::Client, url: &str, signature: Option<&str>, body: &str) -> u16 {
    let mut request = http.post(url).header("content-type", "application/json").header("x-github-event", "push").body(body.to_string());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Polls of the binding since the fake was cleared: each poll lists the pull requests once.
fn polls(fake: &Github) -> Vec<Option<String>> {
    fake.shared.requests().into_iter().filter(|s| s.path == PULLS).map(|s| s.if_none_match).collect()
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_signed_push_polls_at_once_on_any_replica_and_a_bad_signature_changes_nothing() {
    let _serial = serial().await;
    let Setup { client: _client, ns, fake, leader, leader_hooks, bindings } = setup("e2e-webhook").await;
    let standby_hooks = free_port();
    let standby = start_operator("e2e-webhook-standby", "e2e-webhook", standby_hooks);
    let http = reqwest::Client::new();
    let url = hook_url(standby_hooks, &ns.name);

    // Until the standby has read the binding's secret its path is unknown (404); a wrong
    // signature on the known path is 401, whatever the body.
    wait_for("the standby to serve the binding's path", Duration::from_secs(30), || async {
        (post(&http, &url, Some(&sign(b"not the secret", PUSH.as_bytes())), PUSH).await == 401).then_some(())
    })
    .await;
    assert_eq!(standby.metric("hyperpage_leader ").await, Some(0.0), "the request went to a standby");
    assert_eq!(post(&http, &format!("http://127.0.0.1:{standby_hooks}/hooks/{}", "0".repeat(64)), None, PUSH).await, 404);

    // Something changes upstream; a bad signature, a missing one and a tampered body change nothing.
    fake.repos.lock().unwrap().get_mut(REPO).unwrap().pulls.push(github::pull(REPO, 3, "Change 3"));
    fake.shared.clear();
    let before = bindings.get("github").await.unwrap();
    assert_eq!(post(&http, &url, Some(&sign(b"wrong", PUSH.as_bytes())), PUSH).await, 401);
    assert_eq!(post(&http, &url, None, PUSH).await, 401);
    assert_eq!(post(&http, &url, Some(&sign(HOOK_SECRET.as_bytes(), b"{}")), PUSH).await, 401);
    assert_eq!(post(&http, &url, Some("sha256=zz"), PUSH).await, 401);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = bindings.get("github").await.unwrap();
    assert!(polls(&fake).is_empty(), "no poll for refused requests");
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "the binding was not touched");
    assert!(!after.annotations().contains_key(REQUESTED_AT_ANNOTATION));
    let refused = |result: &'static str| {
        let standby = &standby;
        async move {
            standby.metric(&format!("hyperpage_webhook_requests_total{{provider=\"github\",result=\"{result}\"}}")).await.unwrap_or(0.0)
        }
    };
    assert!(refused("mismatch").await >= 3.0);
    assert_eq!(refused("missing_header").await, 1.0);
    assert_eq!(refused("malformed").await, 1.0);

    // A valid push on the standby: the leader polls at once, with a conditional request.
    let sent = Instant::now();
    assert_eq!(post(&http, &url, Some(&sign(HOOK_SECRET.as_bytes(), PUSH.as_bytes())), PUSH).await, 202);
    wait_for("the new pull request in status within 5 s", Duration::from_secs(5), || async {
        (bindings.get("github").await.ok()?.status?.summary?.code_reviews == 3).then_some(())
    })
    .await;
    eprintln!("push to status: {:?}", sent.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = polls(&fake);
    assert_eq!(seen.len(), 1, "one poll: {seen:?}");
    assert!(seen[0].is_some(), "the poll was conditional (If-None-Match)");
    assert!(bindings.get("github").await.unwrap().annotations().contains_key(REQUESTED_AT_ANNOTATION));
    assert_eq!(refused("accepted").await, 1.0);

    // Neither secret nor body appears in status, logs or metrics.
    let mut haystack = serde_json::to_string(&bindings.get("github").await.unwrap()).unwrap();
    for operator in [&leader, &standby] {
        haystack += &operator.metrics().await.unwrap();
        haystack += &std::fs::read_to_string(&operator.log).unwrap();
    }
    for needle in [HOOK_SECRET, TOKEN, "BODY-MUST-NOT-BE-LOGGED"] {
        assert!(!haystack.contains(needle), "{needle} leaked");
    }
    assert!(haystack.contains("hyperpage_webhook_requests_total"), "the scan covered the metrics");
    let _ = leader_hooks;
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_burst_of_pushes_costs_one_or_two_polls() {
    let _serial = serial().await;
    let Setup { client: _client, ns, fake, leader, leader_hooks, bindings } = setup("e2e-webhook-burst").await;
    let http = reqwest::Client::new();
    let url = hook_url(leader_hooks, &ns.name);
    wait_for("the receiver to serve the binding's path", Duration::from_secs(30), || async {
        (post(&http, &url, None, PUSH).await == 401).then_some(())
    })
    .await;
    fake.repos.lock().unwrap().get_mut(REPO).unwrap().pulls.push(github::pull(REPO, 3, "Change 3"));
    fake.shared.clear();

    let signature = sign(HOOK_SECRET.as_bytes(), PUSH.as_bytes());
    let started = Instant::now();
    let sends = (0..100).map(|n| {
        let (http, url, signature) = (http.clone(), url.clone(), signature.clone());
        async move {
            // Spread over one second, as a busy repository would.
            tokio::time::sleep(Duration::from_millis(n * 10)).await;
            post(&http, &url, Some(&signature), PUSH).await
        }
    });
    let statuses = futures::future::join_all(sends).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the burst took {:?}", started.elapsed());
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    wait_for("the new pull request in status", Duration::from_secs(5), || async {
        (bindings.get("github").await.ok()?.status?.summary?.code_reviews == 3).then_some(())
    })
    .await;
    // Past the coalescing window (5 s) and its trailing poll, and some more. (When the sync
    // before the burst was less than 5 s ago, the first poll itself waits for the gap.)
    tokio::time::sleep(hyperpage::webhook::COALESCE_WINDOW * 2 + Duration::from_secs(2)).await;
    let seen = polls(&fake);
    eprintln!("100 pushes: {} polls", seen.len());
    assert!((1..=2).contains(&seen.len()), "one or two polls, not {}", seen.len());
    let metric = |result: &'static str| {
        let leader = &leader;
        async move {
            leader.metric(&format!("hyperpage_webhook_requests_total{{provider=\"github\",result=\"{result}\"}}")).await.unwrap_or(0.0)
        }
    };
    assert_eq!(metric("accepted").await + metric("coalesced").await, 100.0);
    // One annotation write at once and one at the end of the window: the last push is not lost.
    let writes = leader.metric("hyperpage_api_writes_total{controller=\"webhook\",kind=\"ToolBinding\",verb=\"patch\"}").await;
    assert_eq!(writes, Some(2.0));
}
