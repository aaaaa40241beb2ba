//! Who may see a portal, against the real API server: exactly the identities RBAC allows to
//! `get` its Workspace, checked with the API server's own TokenReview and
//! LocalSubjectAccessReview, with the grants the chart and the operator hand out.

use crate::setup;
use crate::support::*;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, DynamicObject};
use std::path::PathBuf;
use std::time::Duration;

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

/// Waits until the operator has put the `payments-portal` account of `namespace` into the
/// token-review binding.
async fn wait_for_token_reviewer(client: &Client, namespace: &str) {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    wait_for("the portal's account in the token-review binding", Duration::from_secs(60), || async {
        let crb = bindings.get(TOKEN_REVIEW_BINDING).await.ok()?;
        crb.subjects?.iter().any(|s| s.name == "payments-portal" && s.namespace.as_deref() == Some(namespace)).then_some(())
    })
    .await;
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
        wait_for_token_reviewer(&client, &ns.name).await;
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

    // SIGTERM drains: the live stream ends (a browser reconnects through the Service to a pod
    // that stays) and the process exits cleanly, well within its 10 s drain timeout.
    let mut portal = portal;
    let mut stream = reqwest::Client::new().get(format!("{}/events", portal.url())).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let first = stream.chunk().await.unwrap().expect("the dashboard at once");
    assert!(String::from_utf8_lossy(&first).contains("event: dashboard"));
    let started = std::time::Instant::now();
    portal.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while let Ok(Some(_)) = stream.chunk().await {} }).await;
    assert!(ended.is_ok(), "the stream ended on SIGTERM");
    let status = portal.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "clean exit: {status:?}");
    eprintln!("SIGTERM: stream ended and the portal exited in {:?}", started.elapsed());
    drop(portal);

    // `public`: anyone who reaches it.
    let public = Portal::start_with(&ns.name, "payments", Some(&sa.path), &["--access-mode", "public"]);
    public.wait_ready(Duration::from_secs(30)).await;
    let (status, body) = get_as(&public, "/api/v1/workspace", None).await;
    assert_eq!(status, 200, "{body}");
    drop(public);
    drop(grants);
}

/// The OpenID provider `e2e/cluster.sh` runs, whose issuer the API server trusts.
struct Provider {
    issuer: String,
    client_id: String,
    client_secret_file: String,
    ca_file: String,
    users: serde_json::Value,
}

impl Provider {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: the sign-in test needs the OpenID provider of the local cluster (`bash e2e/cluster.sh up && source e2e/.run/env`)")
            })
        };
        let users = std::fs::read_to_string(var("HYPERPAGE_E2E_OIDC_USERS")).unwrap();
        Self {
            issuer: var("HYPERPAGE_E2E_OIDC_ISSUER"),
            client_id: var("HYPERPAGE_E2E_OIDC_CLIENT_ID"),
            client_secret_file: var("HYPERPAGE_E2E_OIDC_CLIENT_SECRET_FILE"),
            ca_file: var("HYPERPAGE_E2E_OIDC_CA_FILE"),
            users: serde_json::from_str(&users).unwrap(),
        }
    }

    /// An ID token for a fixture user, through the provider's own endpoints and login form
    /// (the authorization code flow with PKCE, as a browser would run it).
    async fn id_token(&self, id: &str, redirect_uri: &str) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca_file).unwrap()).unwrap();
        let http = reqwest::Client::builder().add_root_certificate(ca).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let location = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_string();
        let absolute = |l: String| if l.starts_with('/') { format!("{}{l}", self.issuer) } else { l };
        let verifier = "e2e-verifier-e2e-verifier-e2e-verifier-e2e-verifier";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier));
        let mut auth = url::Url::parse(&format!("{}/auth", self.issuer)).unwrap();
        auth.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid")
            .append_pair("state", "e2e")
            .append_pair("nonce", "e2e")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let login = absolute(location(&http.get(auth).send().await.unwrap()));
        let request_id = url::Url::parse(&login).unwrap().query_pairs().find(|(k, _)| k == "authRequestID").unwrap().1.to_string();
        let (user, password) = (self.users[id]["Username"].as_str().unwrap(), self.users[id]["Password"].as_str().unwrap());
        let form = [("id", request_id.as_str()), ("username", user), ("password", password)];
        let done = http.post(format!("{}/login/username", self.issuer)).form(&form).send().await.unwrap();
        let back = http.get(absolute(location(&done))).send().await.unwrap();
        let callback = url::Url::parse(&location(&back)).unwrap();
        let code = callback.query_pairs().find(|(k, _)| k == "code").expect("an authorization code").1.to_string();
        let secret = std::fs::read_to_string(&self.client_secret_file).unwrap();
        let form = [("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", redirect_uri), ("code_verifier", verifier)];
        let tokens: serde_json::Value = http
            .post(format!("{}/oauth/token", self.issuer))
            .basic_auth(&self.client_id, Some(secret.trim()))
            .form(&form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens["id_token"].as_str().expect("an ID token").to_string()
    }

    /// `username:password` of the fixture user with this ID.
    fn login(&self, id: &str) -> String {
        format!("{}:{}", self.users[id]["Username"].as_str().unwrap(), self.users[id]["Password"].as_str().unwrap())
    }
}

/// A private file (removed when dropped) holding bytes taken from a Secret.
struct SecretFile(PathBuf);

impl SecretFile {
    fn from_secret(namespace: &str, name: &str, key: &str) -> Self {
        use base64::Engine as _;
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let encoded = kubectl(&["get", "secret", name, "-n", namespace, "-o", &format!("jsonpath={{.data.{key}}}")]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap();
        let path = std::env::temp_dir().join(format!("hyperpage-e2e-{namespace}-{key}"));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).unwrap();
        file.write_all(&bytes).unwrap();
        Self(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A member of `team-payments` signs in through the provider's own login form (headless
/// Chromium) and sees the live dashboard; someone else gets the 403 page; sign-out, cookie
/// flags and a tampered cookie are checked by e2e/browser/signin.test.mjs.
#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_team_member_signs_in_with_the_provider_and_others_are_refused() {
    let _serial = serial().await;
    let client = setup().await;
    let provider = Provider::from_env();
    let ns = TestNamespace::create(&client, "e2e-signin").await;
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    let grants = PortalAuthGrants::apply();

    // The operator, configured for sign-in, creates the session Secret and tells the portal
    // Deployment where the issuer is.
    {
        let _operator = Operator::start(OperatorOptions {
            identity: "portal-signin",
            lease_name: "e2e-portal-signin",
            extra: &[
                "--portal-token-review-binding",
                TOKEN_REVIEW_BINDING,
                "--portal-oidc-issuer-url",
                &provider.issuer,
                "--portal-oidc-client-id",
                &provider.client_id,
                "--portal-oidc-client-secret-file",
                &provider.client_secret_file,
            ],
        });
        wait_for("the portal's session Secret and Deployment", Duration::from_secs(60), || async {
            let secret = kubectl_output(&["get", "secret", "payments-portal-session", "-n", &ns.name]);
            let deployment = kubectl_output(&["get", "deployment", "payments-portal", "-n", &ns.name]);
            (secret.status.success() && deployment.status.success()).then_some(())
        })
        .await;
        wait_for_token_reviewer(&client, &ns.name).await;
    }
    let key = SecretFile::from_secret(&ns.name, "payments-portal-session", "session-key");
    assert_eq!(std::fs::metadata(&key.0).unwrap().len(), 64, "a 64-byte session key");
    let copied = SecretFile::from_secret(&ns.name, "payments-portal-session", "oidc-client-secret");
    assert_eq!(std::fs::read_to_string(&copied.0).unwrap().trim(), std::fs::read_to_string(&provider.client_secret_file).unwrap().trim());
    let deployment: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "deployment", "payments-portal", "-n", &ns.name, "-o", "json"])).unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains(&provider.issuer) && env.contains("HYPERPAGE_SESSION_KEY_FILE"), "{env}");
    assert!(!env.contains(std::fs::read_to_string(&provider.client_secret_file).unwrap().trim()), "no secret in the Deployment");

    kubectl(&[
        "create",
        "rolebinding",
        "payments-team",
        "-n",
        &ns.name,
        "--clusterrole=hyperpage-workspace-viewer",
        "--group=oidc:team-payments",
    ]);
    let sa = ServiceAccountKubeconfig::create(&ns.name, "payments-portal");
    let key_path = key.0.to_str().unwrap().to_string();
    let portal = Portal::start_with(
        &ns.name,
        "payments",
        Some(&sa.path),
        &[
            "--oidc-issuer-url",
            &provider.issuer,
            "--oidc-client-id",
            &provider.client_id,
            "--oidc-client-secret-file",
            copied.0.to_str().unwrap(),
            "--oidc-ca-file",
            &provider.ca_file,
            "--session-key-file",
            &key_path,
        ],
    );
    portal.wait_ready(Duration::from_secs(30)).await;

    // Without a browser: the page sends you to sign in; the API asks for a token.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = no_redirects.get(portal.url()).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], "/auth/sign-in?return=%2F");
    let sign_in = no_redirects.get(format!("{}/auth/sign-in", portal.url())).send().await.unwrap();
    let location = sign_in.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&provider.issuer) && location.contains("code_challenge_method=S256"), "{location}");
    assert!(location.contains(&format!("redirect_uri={}", urlencode(&format!("{}/auth/callback", portal.url())))), "{location}");
    assert_eq!(get_as(&portal, "/api/v1/workspace", None).await.0, 401);

    let browser = repo().join("e2e/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists() && browser.join("node_modules/playwright-core").exists(),
        "the browser test needs Debian's chromium and playwright-core (e2e/setup.sh installs both)"
    );
    let output = std::process::Command::new("node")
        .arg(browser.join("signin.test.mjs"))
        .env("PORTAL_URL", portal.url())
        .env("ISSUER", &provider.issuer)
        .env("NAMESPACE", &ns.name)
        .env("WORKSPACE", "payments")
        .env("ALLOWED", provider.login("u-pat"))
        .env("DENIED", provider.login("u-oscar"))
        .env("ARTIFACTS", repo().join("artifacts/browser"))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node on PATH");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "the sign-in browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    // The same user's ID token, fetched through the provider's login without a browser,
    // works for kubectl and for the portal's API alike.
    let id_token = provider.id_token("u-pat", &format!("{}/auth/callback", portal.url())).await;
    // Only the token: no client certificate from the suite's kubeconfig.
    let server = kubectl(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let as_user = |args: &[&str]| {
        let base = [
            "--kubeconfig=/dev/null",
            "--server",
            server.as_str(),
            "--certificate-authority",
            provider.ca_file.as_str(),
            "--token",
            id_token.as_str(),
        ];
        kubectl(&[&base[..], args].concat())
    };
    let whoami = as_user(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(whoami, "oidc:pat@payments.example", "kubectl sees the user the portal names");
    let can = as_user(&["auth", "can-i", "get", "workspaces.hyperpage.dev/payments", "-n", &ns.name]);
    assert_eq!(can.trim(), "yes");
    let (status, body) = get_as(&portal, "/api/v1/workspace", Some(&id_token)).await;
    assert_eq!(status, 200, "the ID token as a bearer token: {body}");
    let oscar = provider.id_token("u-oscar", &format!("{}/auth/callback", portal.url())).await;
    let (status, body) = get_as(&portal, "/api/v1/workspace", Some(&oscar)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("oidc:oscar@other.example") && body.contains("oidc:team-other"), "{body}");

    let signed_in = portal.metric("hyperpage_portal_requests_total{route=\"callback\"}").await.unwrap_or(0.0);
    assert!(signed_in >= 3.0, "three sign-ins went through the callback ({signed_in})");
    let log = portal.log_text();
    assert!(!log.contains("eyJ"), "no token in the portal's log");
    drop(portal);
    drop(grants);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The chart with browser sign-in configured renders what the API server accepts: the
/// operator gets the issuer, the client ID and the client secret as a mounted file (never as
/// a value), and the right to create the session Secrets.
#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_chart_configures_sign_in_for_every_portal() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-chart-oidc").await;
    let chart = repo().join("charts/hyperpage-operator");
    let values = [
        "--set",
        "portal.oidc.issuerURL=https://login.example.com/realms/acme",
        "--set",
        "portal.oidc.clientID=kubernetes",
        "--set",
        "portal.oidc.clientSecret.existingSecret=portal-oidc",
    ];
    let yaml = helm(&[&["template", "hyperpage-operator", chart.to_str().unwrap(), "--namespace", &ns.name], &values[..]].concat());
    let objects = documents(&yaml);
    let deployment = objects.iter().find(|o| o.types.as_ref().is_some_and(|t| t.kind == "Deployment")).expect("the operator Deployment");
    let container = &deployment.data["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].to_string();
    assert!(env.contains("https://login.example.com/realms/acme") && env.contains("HYPERPAGE_PORTAL_OIDC_CLIENT_SECRET_FILE"), "{env}");
    assert_eq!(deployment.data["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"], "portal-oidc");
    // `create` on Secrets (the session Secrets) is among the operator's own rules, which
    // follow watchNamespaces, and only with sign-in configured.
    let creates_secrets = |objects: &[DynamicObject]| {
        objects.iter().filter(|o| o.metadata.name.as_deref() == Some("hyperpage-operator")).any(|o| {
            o.data["rules"].as_array().into_iter().flatten().any(|rule| {
                rule["resources"].as_array().is_some_and(|r| r.iter().any(|r| r == "secrets"))
                    && rule["verbs"].as_array().is_some_and(|v| v.iter().any(|v| v == "create"))
            })
        })
    };
    assert!(creates_secrets(&objects), "create on secrets with sign-in configured");
    let without = documents(&helm(&["template", "hyperpage-operator", chart.to_str().unwrap()]));
    assert!(without.iter().any(|o| o.metadata.name.as_deref() == Some("hyperpage-operator")), "the operator's role is rendered");
    assert!(!creates_secrets(&without), "no Secret creation without sign-in");
    // Cluster-scoped objects are checked by the dry run too; nothing is created.
    apply(&client, &ns.name, &objects, true).await.expect("the API server accepts every rendered object (server-side dry run)");
    let refused = helm_output(&["template", "x", chart.to_str().unwrap(), "--set", "portal.oidc.issuerURL=https://idp.example"]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("clientID"),
        "an issuer without a client ID is refused"
    );
}
