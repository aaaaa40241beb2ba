//! `hyperpage portal` against the real API server: the Role the operator grants is enough and
//! no more, the JSON API answers from the watch cache, and the page works in a real browser
//! (Debian's headless Chromium driven by e2e/browser/portal.test.mjs).
//!
//! Statuses are written by hand here (`patch_status`), as the aggregation engine would.

use crate::support::*;
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::process::Command;
use std::time::{Duration, Instant};

async fn setup() -> Client {
    let client = client().await;
    install_crds(&client).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    client
}

const BINDINGS: &str = r#"
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: github}
spec:
  workspaceRef: {name: payments}
  provider: github
  credentialsSecretRef: {name: github-token, key: token}
  github: {repositories: [acme/payments-api, acme/payments-web]}
  refreshInterval: 2m
---
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: gitlab}
spec:
  workspaceRef: {name: payments}
  provider: gitlab
  credentialsSecretRef: {name: gitlab-token, key: token}
  gitlab: {projects: [platform/ledger]}
---
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: jira}
spec:
  workspaceRef: {name: payments}
  provider: jira
  endpoint: https://acme.atlassian.net
  credentialsSecretRef: {name: jira-token, key: token}
  jira: {jql: "project = PAY AND statusCategory != Done"}
---
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: harbor}
spec:
  workspaceRef: {name: payments}
  provider: harbor
  endpoint: https://harbor.acme.example
  credentialsSecretRef: {name: harbor-token, key: token}
  harbor: {projects: [payments]}
"#;

/// The title an attacker controls upstream.
pub const EVIL_TITLE: &str = "<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\"> Bump lodash";

fn ago(seconds: i64) -> String {
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(seconds);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": ago(600)})
}

fn item(id: &str, title: &str, url: &str, state: &str, author: &str, age: i64) -> serde_json::Value {
    serde_json::json!({"id": id, "title": title, "url": url, "state": state, "author": author, "updatedAt": ago(age)})
}

/// Statuses as the aggregation engine would write them: a healthy GitHub, a healthy GitLab,
/// a rate-limited Jira with an attacker's title, a Harbor with vulnerable images.
fn statuses() -> Vec<(&'static str, serde_json::Value)> {
    let ok = |extra: Vec<serde_json::Value>| {
        let mut c = vec![
            condition("Ready", "True", "Synced", ""),
            condition("CredentialsValid", "True", "SecretFound", ""),
            condition("Synced", "True", "Synced", ""),
        ];
        c.extend(extra);
        c
    };
    vec![
        (
            "github",
            serde_json::json!({
                "conditions": ok(vec![]),
                "lastSyncTime": ago(40), "lastSuccessfulSyncTime": ago(40),
                "rateLimit": {"limit": 5000, "remaining": 4321, "resetAt": ago(-1800)},
                "summary": {"codeReviews": 5, "pipelines": 4, "failingPipelines": 1, "tickets": 0, "artifacts": 0, "vulnerableArtifacts": 0},
                "items": {
                    "codeReviews": [
                        item("#1287", "Retry card captures on 502 from the acquirer", "https://github.com/acme/payments-api/pull/1287", "open", "dana", 1800),
                        item("#1285", "Move refunds to the new ledger API", "https://github.com/acme/payments-api/pull/1285", "open", "lee", 7200),
                    ],
                    "pipelines": [
                        item("ci #9120", "payments-api / main", "https://github.com/acme/payments-api/actions/runs/9120", "failed", "", 900),
                        item("ci #4410", "payments-web / main", "https://github.com/acme/payments-web/actions/runs/4410", "success", "", 1500),
                    ],
                },
            }),
        ),
        (
            "gitlab",
            serde_json::json!({
                "conditions": ok(vec![]),
                "lastSyncTime": ago(100), "lastSuccessfulSyncTime": ago(100),
                "rateLimit": {"limit": 2000, "remaining": 1994},
                "summary": {"codeReviews": 2, "pipelines": 1, "failingPipelines": 0, "tickets": 0, "artifacts": 0, "vulnerableArtifacts": 0},
                "items": {"codeReviews": [item("!311", "Ledger: idempotency keys for transfers", "https://gitlab.com/platform/ledger/-/merge_requests/311", "open", "sam", 3600)]},
            }),
        ),
        (
            "jira",
            serde_json::json!({
                "conditions": ok(vec![condition("RateLimited", "True", "QuotaReserve", "12 requests left, below the reserve of 50; waiting for the window to reset")]),
                "lastSyncTime": ago(200), "lastSuccessfulSyncTime": ago(200),
                "rateLimit": {"limit": 1000, "remaining": 12, "resetAt": ago(-600)},
                "summary": {"codeReviews": 0, "pipelines": 0, "failingPipelines": 0, "tickets": 9, "artifacts": 0, "vulnerableArtifacts": 0},
                "items": {"tickets": [
                    item("PAY-812", EVIL_TITLE, "https://acme.atlassian.net/browse/PAY-812", "To Do", "mallory", 5400),
                    item("PAY-809", "Chargeback webhook drops events under load", "https://acme.atlassian.net/browse/PAY-809", "In Progress", "kim", 86400),
                ]},
            }),
        ),
        (
            "harbor",
            serde_json::json!({
                "conditions": ok(vec![]),
                "lastSyncTime": ago(60), "lastSuccessfulSyncTime": ago(60),
                "summary": {"codeReviews": 0, "pipelines": 0, "failingPipelines": 0, "tickets": 0, "artifacts": 6, "vulnerableArtifacts": 2},
                "items": {"artifacts": [
                    item("sha256:3f9a", "payments/api:1.42.0", "https://harbor.acme.example/harbor/projects/payments/api", "critical", "", 10800),
                    item("sha256:77c1", "payments/web:3.8.1", "https://harbor.acme.example/harbor/projects/payments/web", "critical", "", 20000),
                ]},
            }),
        ),
    ]
}

async fn write_statuses(client: &Client, namespace: &str) {
    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), namespace);
    for (name, status) in statuses() {
        bindings.patch_status(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status}))).await.unwrap();
    }
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), namespace);
    let status = serde_json::json!({"status": {
        "conditions": [condition("Ready", "True", "PortalAvailable", "2/2 portal pods ready"), condition("Degraded", "False", "AllToolsReady", "")],
        "tools": {"total": 4, "ready": 4, "failing": 0},
        "summary": {"openPullRequests": 7, "failingPipelines": 1, "openIssues": 9, "lastSyncTime": ago(40)},
    }});
    workspaces.patch_status("payments", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_portal_runs_with_the_role_the_operator_gave_it_and_answers_from_memory() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-portal-rbac").await;
    let other = TestNamespace::create(&client, "e2e-portal-other").await;
    apply_file(&client, &ns.name, &repo().join("examples/secret-template.yaml")).await;
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    apply_yaml(&client, &ns.name, BINDINGS).await;
    apply_file(&client, &other.name, &repo().join("examples/workspace.yaml")).await;

    // The operator creates the portal's ServiceAccount, Role and RoleBinding; then it stops,
    // so that nothing but the portal reads hyperpage objects as a service account.
    {
        let _operator = Operator::start(OperatorOptions { identity: "portal-rbac", lease_name: "e2e-portal-rbac", extra: &[] });
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
        let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
        wait_for("the portal's ServiceAccount, Role and RoleBinding", Duration::from_secs(60), || async {
            let all = accounts.get_opt("payments-portal").await.ok()?.is_some()
                && roles.get_opt("payments-portal").await.ok()?.is_some()
                && role_bindings.get_opt("payments-portal").await.ok()?.is_some();
            all.then_some(())
        })
        .await;
    }
    write_statuses(&client, &ns.name).await;

    // Sufficient and minimal, as the API server's own authorizer sees it.
    let sa = ServiceAccountKubeconfig::create(&ns.name, "payments-portal");
    let n = ns.name.as_str();
    for allowed in [
        ["get", "workspaces.hyperpage.dev"],
        ["list", "workspaces.hyperpage.dev"],
        ["watch", "workspaces.hyperpage.dev"],
        ["list", "toolbindings.hyperpage.dev"],
        ["watch", "toolbindings.hyperpage.dev"],
        // Asking whether a visitor may see the Workspace, in its own namespace only.
        ["create", "localsubjectaccessreviews.authorization.k8s.io"],
    ] {
        assert!(sa.can_i(&[allowed[0], allowed[1], "-n", n]), "the portal may {allowed:?} in its namespace");
    }
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", n],
        &["list", "secrets", "-n", n],
        &["watch", "secrets", "-n", n],
        &["list", "workspaces.hyperpage.dev", "-n", &other.name],
        &["get", "toolbindings.hyperpage.dev", "-n", &other.name],
        &["list", "workspaces.hyperpage.dev", "--all-namespaces"],
        &["patch", "toolbindings.hyperpage.dev", "--subresource=status", "-n", n],
        &["update", "workspaces.hyperpage.dev", "-n", n],
        &["delete", "toolbindings.hyperpage.dev", "-n", n],
        &["create", "toolbindings.hyperpage.dev", "-n", n],
        &["list", "configmaps", "-n", n],
        &["list", "pods", "-n", n],
        &["create", "serviceaccounts/token", "-n", n],
        &["create", "localsubjectaccessreviews.authorization.k8s.io", "-n", &other.name],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
    ];
    for args in denied {
        assert!(!sa.can_i(args), "the portal's account must not be allowed to {args:?}");
    }
    // And directly, the way a compromised portal would try.
    let as_portal = sa.client().await;
    let secrets: Api<Secret> = Api::namespaced(as_portal.clone(), &ns.name);
    let refused = secrets.list(&ListParams::default()).await.expect_err("Secrets are not readable");
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused:?}");
    let elsewhere: Api<Workspace> = Api::namespaced(as_portal.clone(), &other.name);
    let refused = elsewhere.get("payments").await.expect_err("another namespace's Workspace is not readable");
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused:?}");

    // The portal works with exactly that account.
    let audit_start = audit_log_size();
    // Public: this test is about the data path; tests/e2e/portal_auth.rs is about access.
    let portal = Portal::start_with(&ns.name, "payments", Some(&sa.path), &["--access-mode", "public"]);
    portal.wait_ready(Duration::from_secs(30)).await;
    let ws: serde_json::Value = serde_json::from_str(&portal.get("/api/v1/workspace").await.unwrap()).unwrap();
    assert_eq!(ws["metadata"]["name"], "payments");
    assert_eq!(ws["status"]["summary"]["openPullRequests"], 7);
    assert!(ws["metadata"].get("managedFields").is_none(), "managedFields are stripped");
    let list: serde_json::Value = serde_json::from_str(&portal.get("/api/v1/toolbindings").await.unwrap()).unwrap();
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|b| b["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["github", "gitlab", "harbor", "jira"]);
    assert!(portal.get("/").await.unwrap().contains("data-binding=\"jira\""));

    // From memory: many requests, no more API calls. Counted twice: by the portal's own
    // metrics (each LIST the watchers make) and by the API server's audit log, which records
    // every read of hyperpage objects by a service account (e2e/audit-policy.yaml).
    tokio::time::sleep(Duration::from_secs(1)).await;
    async fn lists(p: &Portal) -> (f64, f64) {
        let w = p.metric("hyperpage_portal_relists_total{kind=\"workspace\"}").await.unwrap_or(-1.0);
        let t = p.metric("hyperpage_portal_relists_total{kind=\"toolbinding\"}").await.unwrap_or(-1.0);
        (w, t)
    }
    let lists_before = lists(&portal).await;
    assert_eq!(lists_before, (1.0, 1.0), "one LIST per kind to start");
    let audit_mid = audit_log_size();
    let started = Instant::now();
    const REQUESTS: usize = 300;
    for i in 0..REQUESTS {
        let path = ["/api/v1/workspace", "/api/v1/toolbindings", "/"][i % 3];
        assert!(portal.get(path).await.is_some(), "{path} answers");
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lists(&portal).await, lists_before, "no LIST per request");
    let served = portal.metric("hyperpage_portal_requests_total{route=\"api_workspace\"}").await.unwrap();
    assert!(served >= (REQUESTS / 3) as f64, "the portal counted the requests ({served})");
    eprintln!("portal: {REQUESTS} requests in {elapsed:?} ({:?} each), LISTs before/after {lists_before:?}", elapsed / REQUESTS as u32);

    let account = format!("system:serviceaccount:{}:payments-portal", ns.name);
    if let (Some(start), Some(mid)) = (audit_start, audit_mid) {
        let by_portal = |offset: u64| -> Vec<String> {
            audit_events_since(offset)
                .into_iter()
                .filter(|e| e["user"]["username"] == account.as_str())
                .filter(|e| e["stage"] != "ResponseComplete" || e["verb"] != "watch")
                .map(|e| format!("{} {} {}", e["stage"], e["verb"], e["requestURI"]))
                .collect()
        };
        let startup = by_portal(start);
        assert!(
            startup.iter().any(|l| l.contains("\"list\"")) && startup.iter().any(|l| l.contains("\"watch\"")),
            "the audit log records the portal's start-up LIST and WATCH (else this check proves nothing): {startup:#?}"
        );
        let during = by_portal(mid);
        assert!(during.is_empty(), "{REQUESTS} portal requests made API calls:\n{}", during.join("\n"));
        eprintln!("audit log: {} reads by the portal's account at start-up, 0 during {REQUESTS} requests", startup.len());
        let writes: Vec<_> = audit_events_since(start)
            .into_iter()
            .filter(|e| e["user"]["username"] == account.as_str())
            .filter(|e| !["get", "list", "watch"].contains(&e["verb"].as_str().unwrap_or("")))
            .collect();
        assert!(writes.is_empty(), "the portal wrote: {writes:?}");
    }
    let log = portal.log_text();
    assert!(!log.contains("forbidden") && !log.contains("watch failed"), "the portal ran into a permission problem:\n{log}");
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_portal_page_updates_live_in_a_browser() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-portal-page").await;
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    apply_yaml(&client, &ns.name, BINDINGS).await;
    write_statuses(&client, &ns.name).await;

    let browser = repo().join("e2e/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists() && browser.join("node_modules/playwright-core").exists(),
        "the browser test needs Debian's chromium and playwright-core: `apt-get install -y chromium` and `npm ci --prefix e2e/browser` (e2e/setup.sh, run by make test, does both)"
    );
    let portal = Portal::start_with(&ns.name, "payments", None, &["--access-mode", "public"]);
    portal.wait_ready(Duration::from_secs(30)).await;
    let artifacts = repo().join("artifacts/browser");
    let output = Command::new("node")
        .arg(browser.join("portal.test.mjs"))
        .env("PORTAL_URL", portal.url())
        .env("NAMESPACE", &ns.name)
        .env("WORKSPACE", "payments")
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node on PATH");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(artifacts.join("portal-light.png").exists(), "a screenshot was saved");
    let live = portal.metric("hyperpage_portal_requests_total{route=\"events\"}").await.unwrap_or(0.0);
    assert!(live >= 1.0, "the page used the live connection");
}
