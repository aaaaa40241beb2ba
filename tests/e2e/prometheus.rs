//! The chart's alerts and Grafana dashboard against a real Prometheus (built from
//! `e2e/tools/prometheus`, started on loopback and stopped by pid here): it scrapes two
//! operator replicas and a portal, with the PrometheusRule that `helm template` renders
//! (short `for:` values through the chart's values) as its rule file. Every query of every
//! dashboard panel returns a series; a binding on a failing fake makes its alert pending
//! (and none for the healthy one); deleting one ends its alert, and so does the tool
//! recovering while the leader changes; SIGKILL of both replicas makes the no-leader alert
//! pending.

use crate::engine::fakes::Mode;
use crate::engine::fakes::github::{self, Github, Repo};
use crate::support::*;
use hyperpage::api::ToolBinding;
use kube::api::{Api, DeleteParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Scrape and rule evaluation interval: the test waits seconds, not minutes.
const INTERVAL: &str = "1s";
/// What Grafana's `$__rate_interval` becomes at that scrape interval (at least 4 scrapes).
const RATE_INTERVAL: &str = "15s";
/// The `for:` of the alerts the test watches: long enough to see `pending` before `firing`.
const FOR: &str = "30s";
const JOB: &str = "hp-hyperpage-operator-metrics";

/// One Prometheus server with its own data directory, killed (by pid) when dropped.
struct Prometheus {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(config: &str, rules: &str) -> Self {
        let output = Command::new("bash")
            .arg(repo().join("e2e/cluster.sh"))
            .args(["tool", "prometheus", "prometheus"])
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs e2e/cluster.sh");
        assert!(output.status.success(), "building Prometheus (e2e/cluster.sh tool prometheus) failed");
        let binary = String::from_utf8(output.stdout).unwrap().trim().to_string();
        let dir = repo().join(format!("artifacts/prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts");
        Self { port, dir, child: Some(child), http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = self.http.get(url).query(query).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// An instant query's result, or an error message (Prometheus's own).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = self.http.get(url).query(&[("query", expr)]).send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", body["errorType"], body["error"])),
        }
    }

    /// Active alerts (pending or firing) named `name`.
    async fn alerts(&self, name: &str) -> Option<Vec<Value>> {
        let data = self.get("/api/v1/alerts", &[]).await?;
        Some(data["alerts"].as_array()?.iter().filter(|a| a["labels"]["alertname"] == name).cloned().collect())
    }

    /// The health of each scrape target, by its `job` and `instance`.
    async fn targets(&self) -> Option<Vec<(String, String, String)>> {
        let data = self.get("/api/v1/targets", &[("state", "active")]).await?;
        Some(
            data["activeTargets"]
                .as_array()?
                .iter()
                .map(|t| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (s(&t["labels"]["job"]), s(&t["labels"]["instance"]), s(&t["health"]))
                })
                .collect(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<_> = log.lines().collect();
            eprintln!("--- last lines of the Prometheus log ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The chart's PrometheusRule as a Prometheus rule file (its `spec`), rendered with short
/// `for:` values for the alerts this test waits for.
fn chart_rules(namespace: &str) -> String {
    let values = format!("prometheusRule.enabled=true,redis.deploy=true,prometheusRule.noLeaderFor={FOR},prometheusRule.degradedFor={FOR}");
    let chart = repo().join("charts/hyperpage-operator");
    let rendered = helm(&[
        "template",
        "hp",
        &chart.to_string_lossy(),
        "--namespace",
        namespace,
        "--set",
        &values,
        "--show-only",
        "templates/prometheusrule.yaml",
    ]);
    let rule: Value = serde_norway::from_str(&rendered).expect("the PrometheusRule is YAML");
    let spec = &rule["spec"];
    let alerts: Vec<&str> = spec["groups"][0]["rules"].as_array().unwrap().iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(alerts.len(), 6, "every alert rendered: {alerts:?}");
    // JSON is YAML: Prometheus reads it as a rule file.
    serde_json::to_string(spec).unwrap()
}

/// Every query of every panel (rows hold none), with Grafana's `$__rate_interval` filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("charts/hyperpage-operator/dashboards/hyperpage-operator.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has a PromQL expr");
            queries.push((
                format!("{} ({})", panel["title"].as_str().unwrap(), target["refId"]),
                expr.replace("$__rate_interval", RATE_INTERVAL),
            ));
        }
    }
    queries
}

fn scrape_config(operators: &[&Operator], portal: &Portal, namespace: &str) -> String {
    let instances: Vec<String> = operators.iter().map(|o| format!("'127.0.0.1:{}'", o.admin_port)).collect();
    // honor_labels as the chart's ServiceMonitor sets it: hyperpage_toolbinding_degraded's own
    // namespace/name labels win over the target's.
    format!(
        "global: {{scrape_interval: {INTERVAL}, scrape_timeout: {INTERVAL}, evaluation_interval: {INTERVAL}}}\n\
         rule_files: [rules.yaml]\n\
         scrape_configs:\n\
         - job_name: {JOB}\n  honor_labels: true\n  static_configs:\n  - targets: [{}]\n    labels: {{namespace: hyperpage-system}}\n\
         - job_name: portal\n  honor_labels: true\n  static_configs:\n  - targets: ['127.0.0.1:{}']\n    labels: {{namespace: {namespace}}}\n",
        instances.join(", "),
        portal.metrics_port,
    )
}

/// A Workspace with three GitHub bindings, `github` on a healthy fake and `github-broken` and
/// `github-gone` on one that answers 502, each with its opted-in Secret.
fn workspace_and_bindings(healthy: &str, broken: &str) -> String {
    let secret = |name: &str, endpoint: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{hyperpage.dev/credential: \"true\"}}\n  \
             annotations: {{hyperpage.dev/endpoints: \"{endpoint}\"}}\nstringData: {{token: ghp_e2ePrometheus}}\n---\n"
        )
    };
    let binding = |name: &str, endpoint: &str| {
        format!(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: payments}}\n  \
             provider: github\n  endpoint: {endpoint}\n  credentialsSecretRef: {{name: {name}-token, key: token}}\n  \
             github: {{repositories: [acme/payments-api]}}\n---\n"
        )
    };
    [
        secret("github-token", healthy),
        secret("github-broken-token", broken),
        secret("github-gone-token", broken),
        "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {name: payments}\nspec: {refreshInterval: 30s, portal: {replicas: 1}}\n---\n"
            .to_string(),
        binding("github", healthy),
        binding("github-broken", broken),
        binding("github-gone", broken),
    ]
    .concat()
}

fn repos() -> BTreeMap<String, Repo> {
    let name = "acme/payments-api";
    let repo = Repo {
        default_branch: "main".into(),
        pulls: vec![github::pull(name, 1, "Change 1")],
        issues: vec![github::issue(name, 50, "Crash on refund", false)],
        runs: vec![github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z")],
        ..Repo::default()
    };
    BTreeMap::from([(name.to_string(), repo)])
}

/// A ServiceAccount of `namespace` allowed to see the Workspace `payments` in its portal.
fn viewer(namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: viewer}}\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: payments-viewer}}\n\
rules: [{{apiGroups: [hyperpage.dev], resources: [workspaces], resourceNames: [payments], verbs: [get]}}]\n---\n\
apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: payments-viewer}}\n\
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: payments-viewer}}\n\
subjects: [{{kind: ServiceAccount, name: viewer, namespace: {namespace}}}]\n"
    )
}

fn state(alert: &Value) -> &str {
    alert["state"].as_str().unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_real_prometheus_draws_every_panel_and_raises_the_charts_alerts() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-prom").await;
    let healthy = Github::start(repos()).await;
    let broken = Github::start(repos()).await;
    broken.shared.set_mode(Mode::ServerError);

    let extra = ["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true"];
    let mut a = Operator::start(OperatorOptions { identity: "prom-a", lease_name: "e2e-prometheus", extra: &extra });
    let mut b = Operator::start(OperatorOptions { identity: "prom-b", lease_name: "e2e-prometheus", extra: &extra });
    apply_yaml(&client, &ns.name, &workspace_and_bindings(&healthy.url(), &broken.url())).await;
    let portal = Portal::start(&ns.name, "payments", None);
    portal.wait_ready(Duration::from_secs(60)).await;

    let prometheus = Prometheus::start(&scrape_config(&[&a, &b], &portal, &ns.name), &chart_rules("hyperpage-system"));
    wait_for("Prometheus to scrape both replicas and the portal", Duration::from_secs(60), || async {
        let targets = prometheus.targets().await?;
        (targets.len() == 3 && targets.iter().all(|(_, _, health)| health == "up")).then_some(())
    })
    .await;
    let rules = prometheus.get("/api/v1/rules", &[]).await.expect("the rules API answers");
    let loaded = rules["groups"][0]["rules"].as_array().map(Vec::len).unwrap_or_default();
    assert_eq!(loaded, 6, "the chart's six alerts are loaded: {rules}");
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "rule {} evaluates: {}", rule["name"], rule["lastError"]);
    }

    // Traffic for the portal's panels: a request without a token (refused) and the page and
    // the JSON API as a ServiceAccount that may get the Workspace (served).
    apply_yaml(&client, &ns.name, &viewer(&ns.name)).await;
    let token = kubectl(&["create", "token", "viewer", "-n", &ns.name, "--duration=10m"]);
    let http = reqwest::Client::new();
    let refused = http.get(portal.url()).send().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    for path in ["/", "/api/v1/workspace"] {
        let response = http.get(format!("{}{path}", portal.url())).bearer_auth(token.trim()).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{path} as the viewer");
    }

    // The failing bindings: pending (then firing after FOR), and nothing for the healthy one.
    let degraded = wait_for("HyperpageToolBindingDegraded for github-broken", Duration::from_secs(90), || async {
        let alerts = prometheus.alerts("HyperpageToolBindingDegraded").await?;
        let alert = alerts.into_iter().find(|a| a["labels"]["name"] == "github-broken")?;
        (alert["labels"]["namespace"] == ns.name.as_str()).then_some(alert)
    })
    .await;
    eprintln!("HyperpageToolBindingDegraded: {} for {}/github-broken", state(&degraded), ns.name);
    assert_eq!(state(&degraded), "pending", "first pending, for {FOR}");
    let firing = wait_for("the degraded alerts to fire after their for:", Duration::from_secs(60), || async {
        let alerts = prometheus.alerts("HyperpageToolBindingDegraded").await?;
        (alerts.len() == 2 && alerts.iter().all(|a| state(a) == "firing")).then_some(alerts)
    })
    .await;
    let mut names: Vec<&str> = firing.iter().map(|a| a["labels"]["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["github-broken", "github-gone"], "only the failing bindings alert");
    assert!(
        firing.iter().any(|a| a["annotations"]["description"].as_str().unwrap().contains("kubectl describe toolbinding github-broken"))
    );
    for quiet in ["HyperpageNoLeader", "HyperpageOperatorAbsent", "HyperpageRateLimitNearlyExhausted", "HyperpageRedisFallback"] {
        assert_eq!(prometheus.alerts(quiet).await.unwrap(), Vec::<Value>::new(), "{quiet} is silent on a healthy operator");
    }

    // Every query of every panel draws something.
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    // Series appear as the engine polls and the portal serves; the list says what never did.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (panel, expr) in &queries {
            match prometheus.query(expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => empty.push(format!("{panel}: no series from {expr}")),
                Err(error) => panic!("{panel}: Prometheus refuses {expr}: {error}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "dashboard queries without a series after 60s:\n{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("{} dashboard queries, each with at least one series", queries.len());

    // A binding deleted: its series goes, and so does its alert (not stuck on a stale value).
    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    bindings.delete("github-gone", &DeleteParams::default()).await.unwrap();
    wait_for("the deleted binding's alert to end", Duration::from_secs(60), || async {
        let alerts = prometheus.alerts("HyperpageToolBindingDegraded").await?;
        (alerts.len() == 1 && alerts[0]["labels"]["name"] == "github-broken").then_some(())
    })
    .await;

    // The leader frozen (SIGSTOP: a partition, a long pause) while its tool recovers: the
    // standby takes over and polls the tool fine, and when the old leader wakes up deposed it
    // must not keep exporting the 1 it saw, or the alert would never end.
    let (leader, standby) = if a.metric("hyperpage_leader ").await == Some(1.0) { (&a, &b) } else { (&b, &a) };
    assert_eq!(leader.metric("hyperpage_leader ").await, Some(1.0), "one of the replicas leads");
    leader.signal("STOP");
    broken.shared.set_mode(Mode::Normal);
    wait_for("the standby to take over from the frozen leader", Duration::from_secs(30), || async {
        (standby.metric("hyperpage_leader ").await? == 1.0).then_some(())
    })
    .await;
    leader.signal("CONT");
    wait_for("the woken replica to know it is deposed", Duration::from_secs(30), || async {
        (leader.metric("hyperpage_leader ").await? == 0.0).then_some(())
    })
    .await;
    let deposed = leader.metrics().await.unwrap();
    assert!(!deposed.contains("hyperpage_toolbinding_degraded{"), "a deposed replica exports no binding state:\n{deposed}");
    wait_for("the recovered binding's alert to end", Duration::from_secs(90), || async {
        prometheus.alerts("HyperpageToolBindingDegraded").await?.is_empty().then_some(())
    })
    .await;

    // Both replicas SIGKILLed: their series go stale, and "no leader" is pending, then firing.
    a.signal("KILL");
    b.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    b.wait_exit(Duration::from_secs(10));
    let no_leader = wait_for("HyperpageNoLeader after both replicas were killed", Duration::from_secs(30), || async {
        prometheus.alerts("HyperpageNoLeader").await?.into_iter().next()
    })
    .await;
    assert_eq!(state(&no_leader), "pending", "first pending, for {FOR}");
    wait_for("HyperpageNoLeader to fire after its for:", Duration::from_secs(60), || async {
        prometheus.alerts("HyperpageNoLeader").await?.into_iter().find(|a| state(a) == "firing").map(|_| ())
    })
    .await;
    let absent = prometheus.alerts("HyperpageOperatorAbsent").await.unwrap();
    assert_eq!(absent.iter().map(state).collect::<Vec<_>>(), ["pending"], "nothing scraped: absent is pending (for 10m)");
    let targets = prometheus.targets().await.unwrap();
    assert!(targets.iter().filter(|(job, _, _)| job == JOB).all(|(_, _, health)| health == "down"), "{targets:?}");
    // Nothing Prometheus had to complain about: no sample it refused, no rule that failed to
    // evaluate (a down target is no warning).
    let log = prometheus.log();
    let complaints: Vec<&str> = log.lines().filter(|l| l.contains("level=WARN") || l.contains("level=ERROR")).collect();
    assert!(complaints.is_empty(), "Prometheus logged:\n{}", complaints.join("\n"));
}
