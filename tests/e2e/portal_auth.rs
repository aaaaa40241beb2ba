//! Who may see a portal, against the real API server: exactly the identities RBAC allows to
//! `get` its Workspace, checked with the API server's own TokenReview and
//! LocalSubjectAccessReview, with the grants the chart and the operator hand out.

use crate::support::*;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::Api;
use std::path::PathBuf;
use std::time::Duration;

async fn setup() -> Client {
    let client = client().await;
    install_crds(&client).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    client
}

/// The chart's portal-auth.yaml (rendered with the release name `hyperpage-operator`),
/// applied with kubectl and deleted again when dropped: the ClusterRoles and bindings are
/// cluster-scoped and the chart test installs the same names.
pub struct PortalAuthGrants {
    file: PathBuf,
}

pub const TOKEN_REVIEW_BINDING: &str = "hyperpage-operator-portal-token-review";

impl PortalAuthGrants {
    pub fn apply() -> Self {
        let chart = repo().join("charts/hyperpage-operator");
        let yaml = helm(&["template", "hyperpage-operator", chart.to_str().unwrap(), "--show-only", "templates/portal-auth.yaml"]);
        let file = std::env::temp_dir().join(format!("hyperpage-e2e-portal-auth-{}.yaml", std::process::id()));
        std::fs::write(&file, yaml).unwrap();
        kubectl(&["apply", "-f", file.to_str().unwrap()]);
        Self { file }
    }
}

impl Drop for PortalAuthGrants {
    fn drop(&mut self) {
        let _ = kubectl_output(&["delete", "--ignore-not-found", "-f", self.file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `kubectl create token` for a ServiceAccount, with extra arguments.
pub fn token(namespace: &str, account: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "token", account, "-n", namespace];
    args.extend(extra);
    kubectl(&args).trim().to_string()
}

/// GET with an optional bearer token: (status, body).
pub async fn get_as(portal: &Portal, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", portal.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the portal answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The operator grants the portal what it needs to check visitors (and no more), and the
/// portal lets in exactly whom RBAC allows to get its Workspace.
#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_portal_lets_in_exactly_whom_rbac_allows_to_get_the_workspace() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-auth").await;
    let other = TestNamespace::create(&client, "e2e-auth-other").await;
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    let grants = PortalAuthGrants::apply();

    // The operator fills the chart's token-review binding with the portal's account.
    let account = format!("system:serviceaccount:{}:payments-portal", ns.name);
    {
        let _operator = Operator::start(OperatorOptions {
            identity: "portal-auth",
            lease_name: "e2e-portal-auth",
            extra: &["--portal-token-review-binding", TOKEN_REVIEW_BINDING],
        });
        let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
        wait_for("the portal's account in the token-review binding", Duration::from_secs(60), || async {
            let crb = bindings.get(TOKEN_REVIEW_BINDING).await.ok()?;
            crb.subjects?.iter().any(|s| s.name == "payments-portal" && s.namespace.as_deref() == Some(ns.name.as_str())).then_some(())
        })
        .await;
    }

    // Least privilege, as the API server's authorizer sees it.
    let sa = ServiceAccountKubeconfig::create(&ns.name, "payments-portal");
    assert!(sa.can_i(&["create", "tokenreviews.authentication.k8s.io"]), "{account} may review tokens");
    assert!(sa.can_i(&["create", "localsubjectaccessreviews.authorization.k8s.io", "-n", &ns.name]), "and ask about its own namespace");
    assert!(!sa.can_i(&["create", "localsubjectaccessreviews.authorization.k8s.io", "-n", &other.name]), "but not about another");
    assert!(!sa.can_i(&["create", "subjectaccessreviews.authorization.k8s.io"]), "nor about the whole cluster");
    assert!(!sa.can_i(&["create", "serviceaccounts/token", "-n", &ns.name]), "it cannot mint tokens");
    assert!(!sa.can_i(&["get", "secrets", "-n", &ns.name]));
    // Who is let in.
    kubectl(&["create", "serviceaccount", "reader", "-n", &ns.name]);
    kubectl(&[
        "create",
        "rolebinding",
        "readers",
        "-n",
        &ns.name,
        "--clusterrole=hyperpage-workspace-viewer",
        "--serviceaccount",
        &format!("{}:reader", ns.name),
    ]);
    kubectl(&["create", "serviceaccount", "viewer", "-n", &ns.name]);
    kubectl(&[
        "create",
        "rolebinding",
        "viewers",
        "-n",
        &ns.name,
        "--clusterrole=view",
        "--serviceaccount",
        &format!("{}:viewer", ns.name),
    ]);
    kubectl(&["create", "serviceaccount", "outsider", "-n", &other.name]);
    kubectl(&[
        "create",
        "rolebinding",
        "readers",
        "-n",
        &other.name,
        "--clusterrole=hyperpage-workspace-viewer",
        "--serviceaccount",
        &format!("{}:outsider", other.name),
    ]);
    kubectl(&["create", "serviceaccount", "nobody", "-n", &ns.name]);
    wait_for("the viewer ClusterRole aggregated into view", Duration::from_secs(30), || async {
        let yes = kubectl_output(&[
            "auth",
            "can-i",
            "get",
            "workspaces.hyperpage.dev",
            "-n",
            &ns.name,
            &format!("--as=system:serviceaccount:{}:viewer", ns.name),
        ]);
        (String::from_utf8_lossy(&yes.stdout).trim() == "yes").then_some(())
    })
    .await;

    let portal = Portal::start(&ns.name, "payments", Some(&sa.path));
    portal.wait_ready(Duration::from_secs(30)).await;

    let reader = token(&ns.name, "reader", &[]);
    let (status, body) = get_as(&portal, "/api/v1/workspace", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    let ws: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ws["metadata"]["name"], "payments");
    let (status, page) = get_as(&portal, "/", Some(&reader)).await;
    assert!(status == 200 && page.contains("data-title"), "{status}");
    let (status, _) = get_as(&portal, "/api/v1/workspace", Some(&token(&ns.name, "viewer", &[]))).await;
    assert_eq!(status, 200, "the built-in view role includes the portal (aggregation)");

    for (who, token) in [("outsider", token(&other.name, "outsider", &[])), ("nobody", token(&ns.name, "nobody", &[]))] {
        let (status, body) = get_as(&portal, "/api/v1/toolbindings", Some(&token)).await;
        assert_eq!(status, 403, "{who}: {body}");
        let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(refusal["user"].as_str().unwrap().ends_with(&format!(":{who}")), "{refusal}");
        assert_eq!(refusal["missingPermission"], format!("get workspaces.hyperpage.dev \"payments\" in namespace \"{}\"", ns.name));
        assert!(refusal.get("items").is_none());
    }

    for path in ["/", "/api/v1/workspace", "/api/v1/toolbindings", "/fragment", "/events"] {
        let (status, _) = get_as(&portal, path, None).await;
        assert_eq!(status, 401, "{path} without a token");
    }
    let (status, _) = get_as(&portal, "/api/v1/workspace", Some("not-a-token")).await;
    assert_eq!(status, 401, "a token the API server does not know");

    // A token bound to a Secret stops working when the Secret goes: the API server refuses
    // it, so the portal does too.
    kubectl(&["create", "secret", "generic", "short-lived", "-n", &ns.name]);
    let uid = kubectl(&["get", "secret", "short-lived", "-n", &ns.name, "-o", "jsonpath={.metadata.uid}"]);
    let bound =
        token(&ns.name, "reader", &["--bound-object-kind=Secret", "--bound-object-name=short-lived", &format!("--bound-object-uid={uid}")]);
    kubectl(&["delete", "secret", "short-lived", "-n", &ns.name, "--wait"]);
    let (status, body) = get_as(&portal, "/api/v1/workspace", Some(&bound)).await;
    assert_eq!(status, 401, "an invalidated token: {body}");

    // Probes stay open; metrics live on their own port and hold no tenant data.
    assert_eq!(get_as(&portal, "/healthz", None).await.0, 200);
    assert_eq!(get_as(&portal, "/readyz", None).await.0, 200);
    assert_eq!(get_as(&portal, "/metrics", None).await.0, 404, "no metrics next to the page");
    let metrics = http_get(portal.metrics_port, "/metrics").await.expect("metrics on their own port");
    assert!(metrics.contains("hyperpage_portal_access_total{outcome=\"forbidden\"}"), "{metrics}");
    assert!(!metrics.contains("acme") && !metrics.contains(":reader"), "no tenant data or identities in metrics");
    let log = portal.log_text();
    assert!(!log.contains(&reader) && !log.contains(&bound), "no token in the portal's log");
    drop(portal);

    // `public`: anyone who reaches it.
    let public = Portal::start_with(&ns.name, "payments", Some(&sa.path), &["--access-mode", "public"]);
    public.wait_ready(Duration::from_secs(30)).await;
    let (status, body) = get_as(&public, "/api/v1/workspace", None).await;
    assert_eq!(status, 200, "{body}");
    drop(public);
    drop(grants);
}
