//! The Helm chart (`charts/hyperpage-operator`): it lints and renders with several value
//! sets into manifests the API server accepts, installs, upgrades and uninstalls, and its
//! RBAC is enough for the operator to do its whole job — and grants nothing the README's
//! table does not justify. The install test takes the real install path: image and chart
//! pushed to the local OCI registry, the chart installed from there, the image by digest.

use crate::support::*;
use hyperpage::api::conditions::{self, CREDENTIALS_VALID, READY};
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const ROLLOUT: Duration = Duration::from_secs(120);

/// Every metric the operator and its aggregation engine export, and the portals' that the
/// dashboard's Portals row shows; alerts and the dashboard may use no other. (Whether each
/// query really returns series is `prometheus::a_real_prometheus_draws_every_panel_…`.)
const METRICS: &[&str] = &[
    "hyperpage_reconcile_total",
    "hyperpage_reconcile_errors_total",
    "hyperpage_reconcile_duration_seconds",
    "hyperpage_api_writes_total",
    "hyperpage_leader",
    "hyperpage_leader_transitions_total",
    "hyperpage_build_info",
    "hyperpage_upstream_requests_total",
    "hyperpage_ratelimit_remaining",
    "hyperpage_ratelimit_limit",
    "hyperpage_poll_duration_seconds",
    "hyperpage_cache_requests_total",
    "hyperpage_redis_fallback",
    "hyperpage_toolbinding_degraded",
    "hyperpage_portal_requests_total",
    "hyperpage_portal_access_total",
    "hyperpage_portal_live_clients",
    "hyperpage_portal_watch_events_total",
    "hyperpage_portal_relists_total",
];

/// Value sets rendered, linted and dry-run applied.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("redis-deployed", &["--set", "redis.deploy=true"]),
    ("redis-secret", &["--set", "redis.existingSecret=hyperpage-redis,redis.existingSecretKey=url"]),
    ("monitoring", &["--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,redis.deploy=true"]),
    ("one-replica", &["--set", "replicaCount=1,leaderElection.enabled=false"]),
    (
        "policy",
        &[
            "--set-json",
            r#"policy={"allowedImages":["registry.example.com/portals/"],"allowedServiceTypes":["ClusterIP","LoadBalancer"],"allowPublicPortals":true,"ingressControllerNamespace":"ingress-nginx","ingress":{"allowedHostSuffixes":["{namespace}.apps.example.com"],"allowedClassNames":["nginx"],"allowWithoutTLS":true,"annotations":{"cert-manager.io/cluster-issuer":"letsencrypt"}}}"#,
        ],
    ),
    // Namespace-scoped: the watched namespace is the render test's own (see `namespaced`).
    ("namespaced", &[]),
];

fn chart_dir() -> String {
    repo().join("charts/hyperpage-operator").to_string_lossy().into_owned()
}

async fn wait_established(client: &Client, names: &[&str]) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        wait_for(&format!("CRD {name} to be Established"), Duration::from_secs(30), || async {
            let crd = crds.get(name).await.ok()?;
            crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
    }
}

fn find<'a>(objects: &'a [DynamicObject], kind: &str, name: &str) -> Option<&'a DynamicObject> {
    objects.iter().find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind) && o.name_any() == name)
}

fn kinds(objects: &[DynamicObject]) -> BTreeSet<String> {
    objects.iter().filter_map(|o| o.types.as_ref().map(|t| t.kind.clone())).collect()
}

/// The operator container's env as name -> (value or "secret:NAME/KEY" or "field:PATH").
fn operator_env(deployment: &DynamicObject) -> BTreeMap<String, String> {
    let container = &deployment.data["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let from = &e["valueFrom"];
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if from["secretKeyRef"].is_object() {
                format!("secret:{}/{}", from["secretKeyRef"]["name"].as_str().unwrap(), from["secretKeyRef"]["key"].as_str().unwrap())
            } else {
                format!("field:{}", from["fieldRef"]["fieldPath"].as_str().unwrap_or_default())
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// `hyperpage_*` names used in a PromQL text (histogram suffixes folded into the family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hyperpage_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(name.to_string());
        i = end;
    }
    names
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_chart_lints_and_renders_manifests_the_api_server_accepts() {
    let _serial = serial().await;
    let client = client().await;
    install_crds(&client).await;
    apply_file(&client, "", &repo().join("tests/e2e/fixtures/monitoring-crds.yaml")).await;
    wait_established(&client, &["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"]).await;
    let ns = TestNamespace::create(&client, "e2e-chart-render").await;
    let chart = chart_dir();

    let watch = format!("watchNamespaces={{{}}}", ns.name);
    for (set, values) in VALUE_SETS {
        let namespaced = ["--set", watch.as_str()];
        let values: &[&str] = if *set == "namespaced" { &namespaced } else { values };
        let mut lint = vec!["lint", "--strict", chart.as_str()];
        lint.extend_from_slice(values);
        let output = helm_output(&lint);
        assert!(
            output.status.success(),
            "helm lint ({set}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let mut template = vec!["template", "hp", chart.as_str(), "--namespace", &ns.name, "--include-crds"];
        template.extend_from_slice(values);
        let rendered = helm(&template);
        let objects = documents(&rendered);
        // Every manifest, CRDs included, through the API server's validation and admission.
        for object in &objects {
            let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            if let Err(error) = apply(&client, &ns.name, std::slice::from_ref(object), true).await {
                panic!("value set {set}: the API server refused {kind} {}: {error}", object.name_any());
            }
        }
        let kinds = kinds(&objects);
        for kind in ["CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"] {
            assert!(kinds.contains(kind), "value set {set} renders a {kind}: {kinds:?}");
        }
        if *set == "namespaced" {
            // Cluster-wide only what portal sign-in needs by nature (a TokenReview has no
            // namespaced form), and the operator's part of it limited to named objects.
            let cluster_wide: BTreeSet<String> = objects
                .iter()
                .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "ClusterRole" || t.kind == "ClusterRoleBinding"))
                .map(|o| o.name_any())
                .collect();
            let allowed: BTreeSet<String> =
                ["hp-hyperpage-operator-portal-token-review", "hp-hyperpage-operator-portal-access", "hyperpage-workspace-viewer"]
                    .into_iter()
                    .map(String::from)
                    .collect();
            assert!(cluster_wide.is_subset(&allowed), "nothing cluster-wide but portal sign-in's: {cluster_wide:?}");
            let access = find(&objects, "ClusterRole", "hp-hyperpage-operator-portal-access").expect("the operator's portal-access role");
            for rule in access.data["rules"].as_array().unwrap() {
                assert!(rule["resourceNames"].as_array().is_some_and(|n| !n.is_empty()), "named objects only: {rule}");
            }
            let role = find(&objects, "Role", "hp-hyperpage-operator").expect("the operator's Role in the watched namespace");
            assert_eq!(role.namespace().as_deref(), Some(ns.name.as_str()));
            assert!(find(&objects, "RoleBinding", "hp-hyperpage-operator").is_some());
        } else {
            assert!(kinds.contains("ClusterRole") && kinds.contains("ClusterRoleBinding"), "value set {set}: {kinds:?}");
        }

        let deployment = find(&objects, "Deployment", "hp-hyperpage-operator").expect("the operator Deployment");
        let pod = &deployment.data["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let image = container["image"].as_str().unwrap();
        assert_eq!(image, "ghcr.io/hyperpage-dev/hyperpage:0.1.0", "tag defaults to appVersion");
        assert_eq!(env!("CARGO_PKG_VERSION"), "0.1.0", "Chart.yaml's appVersion follows Cargo.toml");
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.contains(&format!("--portal-image={image}").as_str()), "portals run the chart's image: {args:?}");
        let env = operator_env(deployment);
        assert_eq!(env["POD_NAME"], "field:metadata.name");
        assert_eq!(env["POD_NAMESPACE"], "field:metadata.namespace");
        assert_eq!(env["HYPERPAGE_ALLOW_PRIVATE_CIDRS"], "");
        assert_eq!(env["HYPERPAGE_ALLOW_INSECURE_HTTP"], "false");
        match *set {
            "policy" => {
                assert_eq!(env["HYPERPAGE_POLICY_ALLOWED_IMAGES"], "registry.example.com/portals/");
                assert_eq!(env["HYPERPAGE_POLICY_ALLOWED_SERVICE_TYPES"], "ClusterIP,LoadBalancer");
                assert_eq!(env["HYPERPAGE_ALLOW_PUBLIC_PORTALS"], "true");
                assert_eq!(env["HYPERPAGE_INGRESS_CONTROLLER_NAMESPACE"], "ingress-nginx");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_HOST_SUFFIXES"], "{namespace}.apps.example.com");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_CLASS_NAMES"], "nginx");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_ALLOW_WITHOUT_TLS"], "true");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_ANNOTATIONS"], r#"{"cert-manager.io/cluster-issuer":"letsencrypt"}"#);
            }
            _ => {
                // Default-deny: the operator's own image repository, ClusterIP, no Ingress.
                assert_eq!(env["HYPERPAGE_POLICY_ALLOWED_IMAGES"], "");
                assert_eq!(env["HYPERPAGE_POLICY_ALLOWED_SERVICE_TYPES"], "ClusterIP");
                assert_eq!(env["HYPERPAGE_ALLOW_PUBLIC_PORTALS"], "false");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_HOST_SUFFIXES"], "");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_ALLOW_WITHOUT_TLS"], "false");
                assert_eq!(env["HYPERPAGE_POLICY_INGRESS_ANNOTATIONS"], "{}");
            }
        }
        let watched = if *set == "namespaced" { ns.name.clone() } else { String::new() };
        assert_eq!(env["HYPERPAGE_WATCH_NAMESPACES"], watched);
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["ports"][0]["containerPort"], 9090);
        let service = find(&objects, "Service", "hp-hyperpage-operator-metrics").expect("the metrics Service");
        assert_eq!(service.data["spec"]["ports"][0]["name"], "metrics");
        assert_eq!(service.data["spec"]["ports"][0]["port"], 9090);

        let replicas = deployment.data["spec"]["replicas"].as_i64().unwrap();
        match *set {
            "one-replica" => {
                assert_eq!(replicas, 1);
                assert!(args.contains(&"--leader-elect=false"));
                assert!(!kinds.contains("PodDisruptionBudget"), "no PDB for a single replica");
                assert!(!kinds.contains("Role"), "no Lease Role without leader election");
            }
            _ => {
                assert_eq!(replicas, 2);
                assert!(args.contains(&"--leader-elect=true"));
                assert!(kinds.contains("PodDisruptionBudget") && kinds.contains("Role") && kinds.contains("RoleBinding"));
                let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
                assert_eq!(anti["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
            }
        }
        match *set {
            "redis-deployed" | "monitoring" => {
                assert_eq!(env["HYPERPAGE_REDIS_URL"], "secret:hp-redis/url", "the URL with the generated password");
                let auth = find(&objects, "Secret", "hp-redis").expect("the Redis password Secret");
                let decode = |key: &str| {
                    use base64::Engine as _;
                    let value = auth.data["data"][key].as_str().unwrap_or_else(|| panic!("key {key}"));
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).unwrap()).unwrap()
                };
                let password = decode("password");
                assert!(password.len() >= 32, "a generated password");
                assert_eq!(decode("url"), format!("redis://:{password}@hp-redis:6379"));
                assert_eq!(decode("redis.conf"), format!("requirepass {password}\n"));
                let redis = find(&objects, "Deployment", "hp-redis").expect("the Redis Deployment");
                assert_eq!(redis.data["spec"]["template"]["spec"]["containers"][0]["args"][1], "/etc/redis/auth/redis.conf");
                assert_eq!(redis.data["spec"]["template"]["spec"]["containers"][0]["image"], "redis:7-alpine");
                assert!(find(&objects, "Service", "hp-redis").is_some());
            }
            "redis-secret" => {
                assert_eq!(env["HYPERPAGE_REDIS_URL"], "secret:hyperpage-redis/url");
                assert!(find(&objects, "Deployment", "hp-redis").is_none());
            }
            _ => assert!(!env.contains_key("HYPERPAGE_REDIS_URL"), "no Redis unless asked for"),
        }
        if *set == "monitoring" {
            let monitor = find(&objects, "ServiceMonitor", "hp-hyperpage-operator").expect("a ServiceMonitor");
            assert_eq!(monitor.data["spec"]["endpoints"][0]["port"], "metrics");
            let rule = find(&objects, "PrometheusRule", "hp-hyperpage-operator").expect("a PrometheusRule");
            let rules = rule.data["spec"]["groups"][0]["rules"].as_array().unwrap();
            let alert = |name: &str| rules.iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("alert {name}"));
            // No replica scraped at all counts as no leader (the series go stale with the pods).
            assert_eq!(alert("HyperpageNoLeader")["expr"], "(max(hyperpage_leader) or vector(0)) < 1");
            assert_eq!(alert("HyperpageNoLeader")["for"], "5m");
            assert!(alert("HyperpageReconcileErrors")["expr"].as_str().unwrap().contains("rate(hyperpage_reconcile_errors_total[10m])"));
            assert_eq!(alert("HyperpageReconcileErrors")["for"], "15m");
            for name in ["HyperpageToolBindingDegraded", "HyperpageRateLimitNearlyExhausted", "HyperpageRedisFallback"] {
                alert(name);
            }
            let dashboard = find(&objects, "ConfigMap", "hp-hyperpage-operator-dashboard").expect("the Grafana dashboard");
            assert_eq!(dashboard.metadata.labels.as_ref().unwrap()["grafana_dashboard"], "1");
            let json: serde_json::Value =
                serde_json::from_str(dashboard.data["data"]["hyperpage-operator.json"].as_str().unwrap()).expect("dashboard JSON");
            assert!(json["panels"].as_array().unwrap().len() >= 10);
            // Alerts and panels use only metrics that exist.
            let mut used = metric_names(&serde_json::to_string(&rule.data["spec"]).unwrap());
            used.extend(metric_names(&json.to_string()));
            let unknown: Vec<_> = used.iter().filter(|m| !METRICS.contains(&m.as_str())).collect();
            assert!(unknown.is_empty(), "alerts or dashboard use unknown metrics: {unknown:?}");
            let unused: Vec<_> = METRICS.iter().filter(|m| !used.contains(**m)).collect();
            assert!(unused.is_empty(), "the dashboard shows every metric; missing: {unused:?}");
        } else {
            assert!(!kinds.contains("ServiceMonitor") && !kinds.contains("PrometheusRule"), "monitoring is off by default");
        }

        // Every RBAC rule carries a comment saying why it is needed.
        let rbac = helm(&[&["template", "hp", chart.as_str(), "--namespace", &ns.name, "-s", "templates/rbac.yaml"][..], values].concat());
        let lines: Vec<&str> = rbac.lines().collect();
        let mut rules = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- apiGroups:") {
                rules += 1;
                assert!(i > 0 && lines[i - 1].trim_start().starts_with('#'), "value set {set}: RBAC rule without a comment: {line}");
            }
        }
        assert!(rules >= 8, "{rules} rules rendered");
    }

    // Mistakes are refused at install time, with a message.
    for (args, message) in [
        (&["--set", "replicaCount=2,leaderElection.enabled=false"][..], "needs replicaCount=1"),
        (&["--set", "redis.deploy=true,redis.existingSecret=x"][..], "not both"),
        (&["--set", "replicas=3"][..], "additional properties 'replicas' not allowed"),
        (&["--set", "operator.allowPrivateCidrs=10.0.0.0"][..], "allowPrivateCidrs"),
        (&["--set", "policy.allowedServiceTypes={ExternalName}"][..], "allowedServiceTypes"),
        (&["--set", "watchNamespaces={Team_A}"][..], "watchNamespaces"),
    ] {
        let output = helm_output(&[&["template", "hp", chart.as_str()][..], args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{args:?} refused with {message:?}: {stderr}");
    }
}

/// Uninstalls a release when dropped, so a failing test does not leave it behind.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm").args(["uninstall", &self.name, "-n", &self.namespace, "--wait", "--timeout", "60s"]).output();
    }
}

/// The registry to push to and install from (host:port): the loopback one `e2e/cluster.sh up` starts.
fn registry() -> String {
    std::env::var("HYPERPAGE_E2E_REGISTRY").expect(
        "HYPERPAGE_E2E_REGISTRY: a registry the cluster can pull from (e2e/cluster.sh up starts one on loopback for the local cluster)",
    )
}

/// The digest the registry answers `HEAD /v2/NAME/manifests/REFERENCE` with, if it has it.
async fn manifest_digest(registry: &str, name: &str, reference: &str) -> Option<String> {
    let response = reqwest::Client::new()
        .head(format!("http://{registry}/v2/{name}/manifests/{reference}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.headers().get("Docker-Content-Digest")?.to_str().ok().map(String::from)
}

async fn available(deployments: &Api<Deployment>, name: &str, replicas: i32) {
    wait_for(&format!("Deployment {name} to have {replicas} available replicas"), ROLLOUT, || async {
        let d = deployments.get(name).await.ok()?;
        let status = d.status?;
        let current = status.observed_generation == d.metadata.generation;
        (current && status.available_replicas == Some(replicas) && status.updated_replicas == Some(replicas)).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    let _serial = serial().await;
    let client = client().await;
    // The real install path: what a release pushes (the image `make image` built, the chart
    // packaged), pushed to the loopback registry; the chart installed from there by reference.
    let registry = registry();
    let push = Command::new("bash").arg(repo().join("e2e/image.sh")).args(["push", &registry]).output().expect("bash");
    assert!(push.status.success(), "e2e/image.sh push: {}", String::from_utf8_lossy(&push.stderr));
    let pushed = String::from_utf8(push.stdout).unwrap().trim().to_string();
    let version = env!("CARGO_PKG_VERSION");
    let repository = format!("{registry}/hyperpage");
    let digest = pushed.strip_prefix(&format!("{repository}:{version}@")).unwrap_or_else(|| panic!("a pushed reference: {pushed}"));
    assert_eq!(manifest_digest(&registry, "hyperpage", version).await.as_deref(), Some(digest), "the tag resolves to the pushed digest");
    assert_eq!(manifest_digest(&registry, "hyperpage", digest).await.as_deref(), Some(digest), "the digest resolves");
    let chart_version: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo().join("charts/hyperpage-operator/Chart.yaml")).unwrap()).unwrap();
    let chart_version = chart_version["version"].as_str().unwrap().to_string();
    assert!(manifest_digest(&registry, "charts/hyperpage-operator", &chart_version).await.is_some(), "the chart is in the registry");
    let chart = format!("oci://{registry}/charts/hyperpage-operator");
    let image = format!("image.repository={repository},image.digest={digest}");
    // Every install and upgrade: the pushed chart version over plain HTTP (loopback), the image by digest.
    let from_registry = ["--version", chart_version.as_str(), "--plain-http", "--set", image.as_str()];
    // Start without the CRDs, so the install proves the chart brings them.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["workspaces.hyperpage.dev", "toolbindings.hyperpage.dev"] {
        let _ = crds.delete(name, &DeleteParams::default()).await;
    }
    wait_for("the CRDs to be deleted", Duration::from_secs(60), || async {
        let left =
            crds.list(&Default::default()).await.ok()?.items.into_iter().filter(|c| c.name_any().ends_with(".hyperpage.dev")).count();
        (left == 0).then_some(())
    })
    .await;

    // The operator's pods must pass the "restricted" Pod Security Standard to be created.
    let ns = TestNamespace::create(&client, "e2e-chart-install").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let label = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces.patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let release = Release { name: "hpi".into(), namespace: ns.name.clone() };
    let release_from_registry = |verb: &str, values: &[&str]| {
        let command = [verb, &release.name, &chart, "-n", &ns.name, "--wait", "--timeout", "120s"];
        helm(&[&command[..], values, &from_registry].concat())
    };

    let started = Instant::now();
    release_from_registry("install", &[]);
    let install_time = started.elapsed();
    // kwok pods pull nothing; the reference they would pull is the pushed one, and resolves.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = deployments.get("hpi-hyperpage-operator").await.unwrap();
    let container = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let reference = format!("{repository}@{digest}");
    assert_eq!(container.image.as_deref(), Some(reference.as_str()));
    assert!(container.args.unwrap().contains(&format!("--portal-image={reference}")), "portals run the pushed image too");
    assert_eq!(manifest_digest(&registry, "hyperpage", digest).await.as_deref(), Some(digest));
    wait_established(&client, &["workspaces.hyperpage.dev", "toolbindings.hyperpage.dev"]).await;
    available(&deployments, "hpi-hyperpage-operator", 2).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    assert!(pdbs.get_opt("hpi-hyperpage-operator").await.unwrap().is_some());
    let status = helm(&["status", &release.name, "-n", &ns.name]);
    assert!(status.contains("STATUS: deployed") && status.contains("kubectl get workspaces"), "{status}");

    // Upgrade with changed values: more replicas, a Redis, debug logs, monitoring off still.
    let started = Instant::now();
    release_from_registry("upgrade", &["--set", "replicaCount=3,redis.deploy=true,operator.logLevel=debug"]);
    let upgrade_time = started.elapsed();
    available(&deployments, "hpi-hyperpage-operator", 3).await;
    available(&deployments, "hpi-redis", 1).await;
    let deployment = deployments.get("hpi-hyperpage-operator").await.unwrap();
    let env = deployment.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(value("RUST_LOG").as_deref(), Some("debug"));
    let redis_url = env.iter().find(|e| e.name == "HYPERPAGE_REDIS_URL").and_then(|e| e.value_from.clone()?.secret_key_ref);
    assert_eq!(redis_url.map(|r| (r.name, r.key)), Some(("hpi-redis".into(), "url".into())), "the URL with the password, from the Secret");
    // The generated Redis password survives an upgrade (the chart looks the Secret up).
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let password = || async { secrets.get("hpi-redis").await.unwrap().data.unwrap()["password"].0.clone() };
    let first = password().await;
    assert!(first.len() >= 32, "a generated password");
    release_from_registry("upgrade", &["--reuse-values", "--set", "operator.logLevel=info"]);
    assert_eq!(password().await, first, "the upgrade kept the Redis password");
    let history = helm(&["history", &release.name, "-n", &ns.name]);
    assert_eq!(history.lines().count(), 4, "three revisions: {history}");

    let started = Instant::now();
    helm(&["uninstall", &release.name, "-n", &ns.name, "--wait", "--timeout", "60s"]);
    let uninstall_time = started.elapsed();
    assert!(deployments.get_opt("hpi-hyperpage-operator").await.unwrap().is_none());
    assert!(deployments.get_opt("hpi-redis").await.unwrap().is_none());
    assert!(Api::<ServiceAccount>::namespaced(client.clone(), &ns.name).get_opt("hpi-hyperpage-operator").await.unwrap().is_none());
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt("hpi-hyperpage-operator").await.unwrap().is_none());
    // Helm keeps CRDs (and so every Workspace) on uninstall.
    assert!(crds.get_opt("workspaces.hyperpage.dev").await.unwrap().is_some(), "CRDs stay after uninstall");
    eprintln!("helm install {install_time:?}, upgrade {upgrade_time:?}, uninstall {uninstall_time:?}");
}

/// A (resource, verb) pair.
type Grant = (String, String);

/// (resource, verb) pairs `kubectl auth can-i --list` reports for `user` in `namespace`,
/// and the non-resource URLs.
fn can_i(user: &str, namespace: &str) -> (BTreeSet<Grant>, BTreeSet<String>) {
    let table = kubectl(&["auth", "can-i", "--list", &format!("--as={user}"), "-n", namespace]);
    let mut resources = BTreeSet::new();
    let mut urls = BTreeSet::new();
    for line in table.lines().skip(1) {
        let Some(first_bracket) = line.find('[') else { continue };
        let resource = line[..first_bracket].trim().to_string();
        let groups: Vec<&str> = line.split('[').skip(1).map(|g| g.split(']').next().unwrap()).collect();
        let (nonresource, verbs) = (groups[0], groups[groups.len() - 1]);
        for verb in verbs.split_whitespace() {
            if resource.is_empty() {
                for url in nonresource.split_whitespace() {
                    urls.insert(format!("{verb} {url}"));
                }
            } else {
                resources.insert((resource.clone(), verb.to_string()));
            }
        }
    }
    (resources, urls)
}

/// The resource names `user`'s grants on `resource` are limited to (empty: all of them).
fn resource_names(user: &str, namespace: &str, resource: &str) -> Vec<String> {
    let table = kubectl(&["auth", "can-i", "--list", &format!("--as={user}"), "-n", namespace]);
    let mut names: Vec<String> = table
        .lines()
        .filter(|line| line.split('[').next().is_some_and(|r| r.trim() == resource))
        .flat_map(|line| {
            let groups: Vec<&str> = line.split('[').skip(1).map(|g| g.split(']').next().unwrap()).collect();
            let named: Vec<String> = groups[1].split_whitespace().map(String::from).collect();
            if named.is_empty() { vec![String::from("*")] } else { named }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What `user` may do in `namespace` beyond an account with no grants at all (printed for
/// the log); it must hold no non-resource URL beyond what every account has.
fn extra_grants(user: &str, namespace: &str) -> BTreeSet<Grant> {
    let nobody = format!("system:serviceaccount:{LEASE_NAMESPACE}:e2e-nobody");
    let (base, base_urls) = can_i(&nobody, namespace);
    let (mine, urls) = can_i(user, namespace);
    let extra_urls: Vec<_> = urls.difference(&base_urls).collect();
    assert!(extra_urls.is_empty(), "non-resource URLs beyond every account's: {extra_urls:?}");
    let extra: BTreeSet<Grant> = mine.difference(&base).cloned().collect();
    let listing: Vec<String> = extra.iter().map(|(r, v)| format!("{v} {r}")).collect();
    eprintln!("{user} in {namespace}:\n  {}", listing.join("\n  "));
    extra
}

/// The README's RBAC table: (resource, verb) -> where ("cluster" or "release namespace"),
/// and which rows are optional (granted only with a value set).
fn readme_rbac() -> (BTreeMap<Grant, String>, BTreeSet<Grant>) {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("## Install with Helm").nth(1).expect("README has ## Install with Helm");
    let section = section.split("\n## ").next().unwrap();
    let section = section.split("### What the operator may do, and why").nth(1).expect("the RBAC table's heading");
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut justified = BTreeMap::new();
    let mut optional = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (resources, verbs, scope, why) = (ticked(cells[1]), ticked(cells[2]), cells[3], cells[4]);
        assert!(why.len() > 20, "every RBAC row says why: {line}");
        for resource in &resources {
            for verb in &verbs {
                justified.insert((resource.clone(), verb.clone()), scope.to_string());
                if scope.contains("only with") {
                    optional.insert((resource.clone(), verb.clone()));
                }
            }
        }
    }
    assert!(justified.len() > 10, "the README's RBAC table was found: {justified:?}");
    (justified, optional)
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_charts_service_account_runs_the_operator_and_can_do_nothing_else() {
    let _serial = serial().await;
    let client = client().await;
    install_crds(&client).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    let chart = chart_dir();
    let lease = "e2e-chart-rbac";
    let release = Release { name: "hpr".into(), namespace: LEASE_NAMESPACE.into() };
    let _ = Command::new("helm").args(["uninstall", &release.name, "-n", LEASE_NAMESPACE, "--wait"]).output();
    helm(&[
        "install",
        &release.name,
        &chart,
        "-n",
        LEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
        "--set",
        &format!("leaderElection.leaseName={lease}"),
    ]);
    let account = "hpr-hyperpage-operator";
    let user = format!("system:serviceaccount:{LEASE_NAMESPACE}:{account}");

    // A kubeconfig holding only a token for the chart's ServiceAccount.
    let token = kubectl(&["create", "token", account, "-n", LEASE_NAMESPACE, "--duration=1h"]);
    let admin: serde_json::Value = serde_json::from_str(&kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let ca = match cluster["certificate-authority-data"].as_str() {
        Some(data) => format!("certificate-authority-data: {data}"),
        None => format!("certificate-authority: {}", cluster["certificate-authority"].as_str().expect("a cluster CA")),
    };
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    {ca}\nusers:\n- name: {account}\n  user:\n    token: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {account}\n    namespace: {LEASE_NAMESPACE}\ncurrent-context: e2e\n",
        cluster["server"].as_str().unwrap(),
        token.trim()
    );
    let dir = repo().join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("e2e-chart-sa.kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let ns = TestNamespace::create(&client, "e2e-chart-rbac").await;
    // Ingress allowed for the test's hosts, so that the account's Ingress rights are exercised.
    let policy = ["--policy-ingress-host-suffixes=payments.example.com"];
    let operator = Operator::start_with_kubeconfig(OperatorOptions { identity: "chart-sa", lease_name: lease, extra: &policy }, &path);
    apply_examples(&client, &ns.name).await;

    // The whole job, as the ServiceAccount: children applied, Workspace Ready, bindings
    // validated (the Secret GET), statuses and Events written, the Lease held.
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    wait_for("Workspace payments Ready with 3 ready tools", ROLLOUT, || async {
        let ws = workspaces.get("payments").await.ok()?;
        let status = ws.status.as_ref()?;
        let tools = status.tools.as_ref()?;
        (conditions::is_true(&status.conditions, READY) && tools.ready == 3).then_some(())
    })
    .await;
    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    for binding in bindings.list(&Default::default()).await.unwrap() {
        let conditions = binding.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        assert!(conditions::is_true(&conditions, CREDENTIALS_VALID) && conditions::is_true(&conditions, READY), "{}", binding.name_any());
    }
    // Events too. A Workspace that works and bindings fine at first sight are no news, so
    // the account's Event rights get a problem to report: a binding naming a Secret that
    // was never opted in.
    let unopted = serde_json::json!({
        "apiVersion": "hyperpage.dev/v1alpha1", "kind": "ToolBinding", "metadata": {"name": "unopted"},
        "spec": {"workspaceRef": {"name": "payments"}, "provider": "github",
                 "credentialsSecretRef": {"name": "never-opted-in", "key": "token"}, "github": {"repositories": ["acme/payments-api"]}},
    });
    bindings.create(&Default::default(), &serde_json::from_value(unopted).unwrap()).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the binding's Warning Event from the operator", Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reporting_controller.as_deref() == Some("hyperpage-operator")
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("SecretNotOptedIn")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("unopted")
            })
            .then_some(())
    })
    .await;
    let holder = kubectl(&["get", "lease", lease, "-n", LEASE_NAMESPACE, "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(holder, "chart-sa");

    // Deletes too: scaling to one replica removes the PDB; an Ingress comes and goes.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let ingress = serde_json::json!({"host": "portal.payments.example.com", "tlsSecretName": "payments-portal-tls"});
    let patch = serde_json::json!({"spec": {"portal": {"replicas": 1, "ingress": ingress}}});
    workspaces.patch("payments", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the PDB to be deleted and the Ingress created", ROLLOUT, || async {
        let gone = pdbs.get_opt("payments-portal").await.ok()?.is_none();
        let ingress = ingresses.get_opt("payments-portal").await.ok()?.is_some();
        (gone && ingress).then_some(())
    })
    .await;
    let patch = serde_json::json!({"spec": {"portal": {"ingress": null}}});
    workspaces.patch("payments", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the Ingress to be deleted", ROLLOUT, || async { ingresses.get_opt("payments-portal").await.ok()?.is_none().then_some(()) })
        .await;

    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "the ServiceAccount was refused something:\n{}", operator.log_tail());
    let errors: f64 = operator
        .metrics()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("hyperpage_reconcile_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(errors, 0.0, "no reconcile failed:\n{}", operator.log_tail());
    drop(operator);

    // Everything the account may do is in the README's table, and the table is true.
    let (justified, optional) = readme_rbac();
    let mut unjustified = Vec::new();
    let mut granted = BTreeSet::new();
    for namespace in [ns.name.as_str(), LEASE_NAMESPACE] {
        for pair in &extra_grants(&user, namespace) {
            granted.insert(pair.clone());
            let scope = justified.get(pair);
            let ok = match scope {
                Some(scope) if namespace == LEASE_NAMESPACE => scope.contains("cluster") || scope.contains("release namespace"),
                Some(scope) => scope.contains("cluster"),
                None => false,
            };
            if !ok {
                unjustified.push(format!("{} {} in {namespace}", pair.1, pair.0));
            }
        }
    }
    assert!(unjustified.is_empty(), "the chart grants what the README does not justify: {unjustified:?}");
    let unused: Vec<_> = justified.keys().filter(|k| !granted.contains(*k) && !optional.contains(*k)).collect();
    assert!(unused.is_empty(), "the README justifies grants the chart does not make: {unused:?}");
    // The Lease grant is namespaced: nothing on leases outside the release namespace.
    let (elsewhere, _) = can_i(&user, &ns.name);
    assert!(!elsewhere.iter().any(|(r, _)| r.starts_with("leases")), "{elsewhere:?}");
    drop(release);
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_namespace_scoped_install_runs_the_examples_and_grants_nothing_cluster_wide() {
    let _serial = serial().await;
    let client = client().await;
    install_crds(&client).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    let watched = TestNamespace::create(&client, "e2e-chart-watched").await;
    let unwatched = TestNamespace::create(&client, "e2e-chart-unwatched").await;
    let chart = chart_dir();
    let lease = "e2e-chart-namespaced";
    let release = Release { name: "hpn".into(), namespace: LEASE_NAMESPACE.into() };
    let _ = Command::new("helm").args(["uninstall", &release.name, "-n", LEASE_NAMESPACE, "--wait"]).output();
    let values = format!("leaderElection.leaseName={lease},watchNamespaces={{{}}}", watched.name);
    helm(&["install", &release.name, &chart, "-n", LEASE_NAMESPACE, "--wait", "--timeout", "120s", "--set", &values]);
    let account = "hpn-hyperpage-operator";
    let user = format!("system:serviceaccount:{LEASE_NAMESPACE}:{account}");
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(account).await.unwrap().is_none(), "no ClusterRole");

    // The operator as the chart's ServiceAccount, watching what the chart was told.
    let kubeconfig = ServiceAccountKubeconfig::create(LEASE_NAMESPACE, account);
    let watch = format!("--watch-namespaces={}", watched.name);
    let options = OperatorOptions { identity: "chart-namespaced", lease_name: lease, extra: &[watch.as_str()] };
    let operator = Operator::start_with_kubeconfig(options, &kubeconfig.path);
    for ns in [&watched.name, &unwatched.name] {
        for file in
            ["secret-template.yaml", "workspace.yaml", "toolbinding-github.yaml", "toolbinding-gitlab.yaml", "toolbinding-jira.yaml"]
        {
            apply_file(&client, ns, &repo().join("examples").join(file)).await;
        }
    }
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &watched.name);
    wait_for("Workspace payments Ready with 3 ready tools in the watched namespace", ROLLOUT, || async {
        let ws = workspaces.get("payments").await.ok()?;
        let status = ws.status.as_ref()?;
        (conditions::is_true(&status.conditions, READY) && status.tools.as_ref()?.ready == 3).then_some(())
    })
    .await;
    // The unwatched namespace is not touched: no status, no portal.
    let elsewhere: Api<Workspace> = Api::namespaced(client.clone(), &unwatched.name);
    assert!(elsewhere.get("payments").await.unwrap().status.is_none(), "an unwatched namespace gets no status");
    assert!(Api::<Deployment>::namespaced(client.clone(), &unwatched.name).get_opt("payments-portal").await.unwrap().is_none());
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "the Roles were enough:\n{}", operator.log_tail());
    drop(operator);

    // can-i: in the watched namespace only what the README's table justifies there; in the
    // release namespace only the Lease; nothing at all anywhere else (cluster-wide grants
    // would show up in every namespace, `default` included).
    let (justified, _) = readme_rbac();
    let mut wrong = Vec::new();
    for namespace in [watched.name.as_str(), LEASE_NAMESPACE, unwatched.name.as_str(), "default"] {
        for pair in &extra_grants(&user, namespace) {
            let scope = justified.get(pair).map(String::as_str).unwrap_or_default();
            // A grant on one named cluster-wide object (portal sign-in's token-review
            // binding) shows up in every namespace; its names are checked below.
            let ok = if scope.starts_with("cluster, only the") {
                true
            } else if namespace == watched.name {
                scope.contains("watched namespace")
            } else if namespace == LEASE_NAMESPACE {
                scope.contains("release namespace")
            } else {
                false
            };
            if !ok {
                wrong.push(format!("{} {} in {namespace}", pair.1, pair.0));
            }
        }
    }
    assert!(wrong.is_empty(), "a namespace-scoped install grants more than it should: {wrong:?}");
    for resource in ["clusterroles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io"] {
        let names = resource_names(&user, &unwatched.name, resource);
        assert_eq!(names, ["hpn-hyperpage-operator-portal-token-review"], "{resource}: only the named token-review objects");
    }
    drop(release);
}
