//! Tenant isolation, credentials: a tenant who may create ToolBindings but not read Secrets
//! cannot make the operator read a Secret for it or send one to an endpoint of its choice.
//! The tenant acts with its own ServiceAccount token; the "attacker's server" is a loopback
//! TCP listener that counts every connection and byte it receives.

use crate::engine::fakes::github::{self, Github, Repo};
use crate::support::*;
use hyperpage::api::conditions::{self, CREDENTIALS_VALID, READY, SYNCED};
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const CONTROL_TOKEN: &str = "ghp_tenancyControlToken";
/// What an unlabelled Secret holds; it must reach neither the listener nor anything else.
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY----- tenancy-e2e-never-read";
/// What a labelled Secret pinned elsewhere holds.
const PINNED_TOKEN: &str = "tenancy-e2e-pinned-token";

/// A loopback TCP listener standing in for an attacker's server: it accepts, reads and
/// counts, and never answers.
struct Listener {
    port: u16,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn start() -> Self {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, b) = (connections.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { port, connections, bytes, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn silent(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn repos() -> BTreeMap<String, Repo> {
    let name = "acme/payments-api";
    let repo = Repo { default_branch: "main".into(), pulls: vec![github::pull(name, 1, "Change 1")], ..Repo::default() };
    BTreeMap::from([(name.to_string(), repo)])
}

fn condition(binding: &ToolBinding, type_: &str) -> Option<(String, String, String)> {
    let c = binding.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_))?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn secret(name: &str, labelled: bool, endpoints: Option<&str>, key: &str, value: &str) -> Secret {
    let mut metadata = serde_json::json!({"name": name});
    if labelled {
        metadata["labels"] = serde_json::json!({"hyperpage.dev/credential": "true"});
    }
    if let Some(endpoints) = endpoints {
        metadata["annotations"] = serde_json::json!({"hyperpage.dev/endpoints": endpoints});
    }
    serde_json::from_value(serde_json::json!({"metadata": metadata, "stringData": {key: value}})).unwrap()
}

fn binding(name: &str, provider: &str, endpoint: &str, secret: &str, key: &str) -> ToolBinding {
    let block = match provider {
        "github" => "github: {repositories: [acme/payments-api]}",
        _ => "jenkins: {jobs: [deploy]}",
    };
    serde_norway::from_str(&format!(
        "apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: {name}}}\nspec:\n  workspaceRef: {{name: team}}\n  \
         provider: {provider}\n  endpoint: {endpoint}\n  credentialsSecretRef: {{name: {secret}, key: {key}}}\n  refreshInterval: 30s\n  {block}\n"
    ))
    .unwrap()
}

/// The command between the backticks of a condition message, as kubectl arguments.
fn command_in(message: &str) -> Vec<String> {
    let command = message.split('`').nth(1).unwrap_or_else(|| panic!("a command in {message:?}"));
    let words: Vec<String> = command.split_whitespace().map(String::from).collect();
    assert_eq!(words[0], "kubectl", "{message}");
    words[1..].to_vec()
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_tenant_cannot_make_the_operator_read_or_send_a_secret() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-tenancy").await;
    let audit_offset = audit_log_size();
    let control = Github::start(repos()).await;
    *control.shared.expected_auth.lock().unwrap() = Some(format!("Bearer {CONTROL_TOKEN}"));
    let listener = Listener::start().await;
    let operator = Operator::start(OperatorOptions {
        identity: "tenancy",
        lease_name: "e2e-tenancy",
        extra: &["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true"],
    });

    // The restricted tenant: create, get and list on Workspaces and ToolBindings, nothing else.
    let role = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: tenant}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: tenant}}\n\
         rules: [{{apiGroups: [hyperpage.dev], resources: [workspaces, toolbindings], verbs: [create, get, list]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenant}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant}}\n\
         subjects: [{{kind: ServiceAccount, name: tenant, namespace: {}}}]\n",
        ns.name
    );
    apply_yaml(&client, &ns.name, &role).await;
    let tenant = ServiceAccountKubeconfig::create(&ns.name, "tenant");
    for verb in ["get", "list", "watch", "create"] {
        assert!(!tenant.can_i(&[verb, "secrets", "-n", &ns.name]), "the tenant cannot {verb} Secrets");
    }
    assert!(tenant.can_i(&["create", "toolbindings.hyperpage.dev", "-n", &ns.name]));
    let as_tenant = tenant.client().await;

    // The Secrets, created by someone who may: the team's private key (never opted in), a
    // GitHub token pinned to the control fake, and one for the control binding.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let post = PostParams::default();
    secrets.create(&post, &secret("team-tls", false, None, "tls.key", PRIVATE_KEY)).await.unwrap();
    secrets.create(&post, &secret("pinned", true, Some(&control.url()), "token", PINNED_TOKEN)).await.unwrap();
    secrets.create(&post, &secret("control", true, Some(&control.url()), "token", CONTROL_TOKEN)).await.unwrap();

    // The tenant's objects, created with its own token.
    let workspace: Workspace = serde_norway::from_str(
        "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {name: team}\nspec: {portal: {replicas: 1}}\n",
    )
    .unwrap();
    Api::<Workspace>::namespaced(as_tenant.clone(), &ns.name).create(&post, &workspace).await.expect("the tenant creates a Workspace");
    let tenant_bindings: Api<ToolBinding> = Api::namespaced(as_tenant.clone(), &ns.name);
    let attack = listener.url();
    for b in [
        binding("control", "github", &control.url(), "control", "token"),
        // Jenkins sends the whole value as Basic auth: the most a tenant could hope for.
        binding("steal", "jenkins", &attack, "team-tls", "tls.key"),
        binding("ghost", "jenkins", &attack, "no-such-secret", "tls.key"),
        binding("redirect", "jenkins", &attack, "pinned", "token"),
    ] {
        tenant_bindings.create(&post, &b).await.expect("the tenant creates its ToolBindings");
    }

    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    let explained = |name: &'static str, reason: &'static str| {
        let bindings = bindings.clone();
        async move {
            wait_for(&format!("{name}: CredentialsValid=False {reason}"), Duration::from_secs(30), || async {
                let b = bindings.get(name).await.ok()?;
                let (status, found, message) = condition(&b, CREDENTIALS_VALID)?;
                (status == "False" && found == reason).then_some((b, message))
            })
            .await
        }
    };
    let (steal, steal_message) = explained("steal", "SecretNotOptedIn").await;
    let (_, ghost_message) = explained("ghost", "SecretNotOptedIn").await;
    let (_, redirect_message) = explained("redirect", "EndpointNotAllowed").await;

    // An unlabelled Secret reads exactly like a missing one: no existence oracle.
    assert_eq!(steal_message.replace("team-tls", "NAME"), ghost_message.replace("no-such-secret", "NAME"));
    let fix = format!("kubectl -n {} label secret team-tls hyperpage.dev/credential=true", ns.name);
    assert!(steal_message.contains(&fix), "{steal_message}");
    assert_eq!(condition(&steal, READY).unwrap().1, "SecretNotOptedIn");
    assert_eq!(condition(&steal, SYNCED).unwrap().1, "NotPolled");
    let fix = format!("kubectl -n {} annotate secret pinned hyperpage.dev/endpoints={attack} --overwrite", ns.name);
    assert!(redirect_message.contains(&attack) && redirect_message.contains(&fix), "{redirect_message}");

    // The control binding, as comparable as can be, polls its fake twice (one whole interval)
    // while the listener hears nothing.
    wait_for("the control binding's first poll", Duration::from_secs(60), || async {
        let b = bindings.get("control").await.ok()?;
        (condition(&b, SYNCED)?.0 == "True").then_some(())
    })
    .await;
    control.shared.clear();
    let started = std::time::Instant::now();
    wait_for("the control binding's second poll", Duration::from_secs(45), || async {
        (!control.shared.requests().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "the control binding polled again after {:?}; listener: {} connections",
        started.elapsed(),
        listener.connections.load(Ordering::SeqCst)
    );
    assert!(listener.silent(), "the attacker's listener received a connection or bytes");

    // Nothing of either Secret anywhere: status, Events, the operator's log and metrics.
    let mut haystack = String::new();
    for b in bindings.list(&ListParams::default()).await.unwrap() {
        haystack += &serde_json::to_string(&b.status).unwrap();
    }
    for e in Api::<Event>::namespaced(client.clone(), &ns.name).list(&ListParams::default()).await.unwrap() {
        haystack += &format!("{:?} {:?}", e.reason, e.message);
    }
    haystack += &operator.metrics().await.unwrap();
    haystack += &std::fs::read_to_string(&operator.log).unwrap();
    use base64::Engine as _;
    for value in [PRIVATE_KEY, PINNED_TOKEN] {
        for needle in [value.to_string(), base64::engine::general_purpose::STANDARD.encode(value)] {
            assert!(!haystack.contains(&needle), "a Secret's value leaked");
        }
    }

    // The API server's own record: the operator asked only for opted-in Secrets, by label.
    if let Some(offset) = audit_offset {
        let reads: Vec<serde_json::Value> = audit_events_since(offset)
            .into_iter()
            .filter(|e| e["userAgent"].as_str().is_some_and(|ua| ua.starts_with("hyperpage-operator/") && ua.contains("(tenancy)")))
            .filter(|e| e["objectRef"]["resource"] == "secrets")
            .collect();
        assert!(!reads.is_empty(), "the audit log shows the operator's Secret requests");
        for e in &reads {
            let uri = e["requestURI"].as_str().unwrap_or_default();
            let selected = uri.contains("labelSelector=hyperpage.dev%2Fcredential%3Dtrue");
            assert!(["list", "watch"].contains(&e["verb"].as_str().unwrap_or("")) && selected, "an unselected Secret request: {e}");
        }
        eprintln!("audit log: {} Secret requests by the operator, every one selecting the credential label", reads.len());
    }

    // The messages' commands are the fixes: labelled, the private key becomes a credential
    // pinned to nowhere (EndpointNotAllowed, still no request); annotated, it is usable.
    let label = command_in(&steal_message);
    kubectl(&label.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, pinned_message) = explained("steal", "EndpointNotAllowed").await;
    assert!(pinned_message.contains("jenkins has no public default"), "{pinned_message}");
    assert!(listener.silent(), "labelling alone sends nothing");
    let annotate = command_in(&pinned_message);
    assert!(annotate.iter().any(|a| a == &format!("hyperpage.dev/endpoints={attack}")), "{annotate:?}");

    // Only now, opted in and pinned to it by someone who may read the Secret, does the
    // listener hear from the operator: it would have noticed anything earlier.
    kubectl(&annotate.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for("the opted-in credential to reach its endpoint", Duration::from_secs(45), || async { (!listener.silent()).then_some(()) })
        .await;
}
