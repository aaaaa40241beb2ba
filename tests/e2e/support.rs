//! Shared machinery of the end-to-end suite: a client for the test cluster, YAML apply,
//! polling waits, and operator processes started from the built binary.

use futures::Future;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

pub const MANAGER: &str = "hyperpage-e2e";
pub const LEASE_NAMESPACE: &str = "hyperpage-system";

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The suite shares one cluster and operators act cluster-wide: one test at a time, even
/// when someone forgets `--test-threads=1`.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub async fn client() -> Client {
    Client::try_default().await.expect("a cluster: run `make cluster-up` and source e2e/.run/env, or set KUBECONFIG")
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Parses a multi-document YAML file into objects.
pub fn documents(yaml: &str) -> Vec<DynamicObject> {
    serde_norway::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            (!value.is_null()).then(|| serde_json::from_value(value).expect("a Kubernetes object"))
        })
        .collect()
}

async fn api_for(client: &Client, object: &DynamicObject, namespace: &str) -> Api<DynamicObject> {
    let types = object.types.as_ref().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).expect("a valid apiVersion");
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await.expect("a known kind");
    match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side applies every object (optionally as a dry run) into `namespace`.
pub async fn apply(client: &Client, namespace: &str, objects: &[DynamicObject], dry_run: bool) -> Result<(), kube::Error> {
    for object in objects {
        let api = api_for(client, object, namespace).await;
        let mut params = PatchParams::apply(MANAGER).force();
        params.dry_run = dry_run;
        api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?;
    }
    Ok(())
}

pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) {
    apply(client, namespace, &documents(yaml), false).await.expect("apply succeeds");
}

pub async fn apply_file(client: &Client, namespace: &str, path: &Path) {
    apply_yaml(client, namespace, &std::fs::read_to_string(path).unwrap()).await;
}

/// Applies the examples a person starts from: the Secrets, the Workspace and three bindings.
pub async fn apply_examples(client: &Client, namespace: &str) {
    for file in ["secret-template.yaml", "workspace.yaml", "toolbinding-github.yaml", "toolbinding-gitlab.yaml", "toolbinding-jira.yaml"] {
        apply_file(client, namespace, &repo().join("examples").join(file)).await;
    }
}

/// Installs the committed CRDs and waits until the API server serves them.
pub async fn install_crds(client: &Client) {
    for entry in std::fs::read_dir(repo().join("crds")).unwrap() {
        apply_file(client, "", &entry.unwrap().path()).await;
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    for name in ["workspaces.hyperpage.dev", "toolbindings.hyperpage.dev"] {
        wait_for(&format!("CRD {name} to be Established"), Duration::from_secs(30), || async {
            let crd = crds.get(name).await.ok()?;
            let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        })
        .await;
    }
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let _ = namespaces.delete(&name, &DeleteParams::default()).await;
        wait_for(&format!("old namespace {name} to be gone"), Duration::from_secs(60), || async {
            namespaces.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
        let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.expect("namespace created");
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // kubectl rather than the async client: the test's runtime is not running while it
        // drops its values, and its client's connections belong to that runtime.
        // Waiting keeps tests apart: operators act cluster-wide, and a namespace still being
        // torn down would show up in the next test's write counts.
        let _ = Command::new("kubectl").args(["delete", "namespace", &self.name, "--wait=true", "--timeout=90s"]).output();
    }
}

pub async fn ensure_namespace(client: &Client, name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await.unwrap().is_none() {
        let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let _ = namespaces.create(&PostParams::default(), &ns).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the built `hyperpage` binary with `args`, logging to artifacts/e2e-logs/NAME.log,
/// as whoever `kubeconfig` names (the suite's own KUBECONFIG when `None`).
fn spawn_hyperpage(args: &[&str], name: &str, kubeconfig: Option<&Path>) -> (Child, PathBuf) {
    let logs = repo().join("artifacts/e2e-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hyperpage"));
    command.args(args).env("RUST_LOG", "info,hyperpage=debug").stdout(Stdio::from(out)).stderr(Stdio::from(err));
    if let Some(path) = kubeconfig {
        command.env("KUBECONFIG", path);
    }
    (command.spawn().expect("the hyperpage binary starts"), log)
}

fn send_signal(pid: i32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn wait_exit(child: &mut Child, timeout: Duration, name: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{name} did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `hyperpage operator` process, killed when dropped.
pub struct Operator {
    pub identity: String,
    pub admin_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct OperatorOptions<'a> {
    pub identity: &'a str,
    pub lease_name: &'a str,
    pub extra: &'a [&'a str],
}

impl Operator {
    pub fn start(options: OperatorOptions<'_>) -> Self {
        Self::spawn(options, None)
    }

    fn spawn(options: OperatorOptions<'_>, kubeconfig: Option<&Path>) -> Self {
        let admin_port = free_port();
        let admin = format!("127.0.0.1:{admin_port}");
        let mut args = vec!["operator", "--admin-address", &admin];
        args.extend(["--identity", options.identity, "--lease-name", options.lease_name, "--lease-namespace", LEASE_NAMESPACE]);
        args.extend(["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "1s"]);
        args.extend(["--portal-image", "ghcr.io/hyperpage-dev/hyperpage:e2e"]);
        // The examples name real SaaS endpoints: nothing here may reach them, so polling
        // is on only in tests that point bindings at local fake servers.
        if !options.extra.iter().any(|a| a.starts_with("--polling")) {
            args.push("--polling=false");
        }
        args.extend(options.extra);
        let (child, log) = spawn_hyperpage(&args, options.identity, kubeconfig);
        Self { identity: options.identity.to_string(), admin_port, log, child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process to exit after a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_exit(self.child.as_mut().expect("running"), timeout, &self.identity)
    }

    /// The admin server's /metrics, or None while it is not up.
    pub async fn metrics(&self) -> Option<String> {
        http_get(self.admin_port, "/metrics").await
    }

    /// The value of a metric line that starts with `prefix`, e.g. `hyperpage_leader `.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    /// Total mutating requests this process sent for objects other than its Lease.
    pub async fn writes(&self) -> Option<f64> {
        let text = self.metrics().await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("hyperpage_api_writes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "--- last log lines of {} ---\n{}", self.identity, self.log_tail());
        }
    }
}

/// A tiny HTTP/1.0 GET against loopback, enough for the admin endpoints.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string()).or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

/// Runs a tool the harness put on PATH (kubectl, helm).
fn tool_output(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("{tool} on PATH: {e}"))
}

/// Runs a tool and returns stdout, failing the test when the tool fails.
fn tool(tool: &str, args: &[&str]) -> String {
    let output = tool_output(tool, args);
    assert!(output.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

pub fn kubectl_output(args: &[&str]) -> std::process::Output {
    tool_output("kubectl", args)
}

pub fn kubectl(args: &[&str]) -> String {
    tool("kubectl", args)
}

/// One `hyperpage portal` process on a free loopback port, killed when dropped. With
/// `kubeconfig` it runs as whoever that file names (e.g. the portal's ServiceAccount);
/// without, as the suite's own KUBECONFIG.
pub struct Portal {
    pub port: u16,
    /// `/metrics` (and the probes), apart from the page and API.
    pub metrics_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Portal {
    pub fn start(namespace: &str, workspace: &str, kubeconfig: Option<&Path>) -> Self {
        Self::start_with(namespace, workspace, kubeconfig, &[])
    }

    /// Like `start`, with more `hyperpage portal` arguments (e.g. `--access-mode public`).
    pub fn start_with(namespace: &str, workspace: &str, kubeconfig: Option<&Path>, extra: &[&str]) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let listen = format!("127.0.0.1:{port}");
        let metrics = format!("127.0.0.1:{metrics_port}");
        let mut args =
            vec!["portal", "--namespace", namespace, "--workspace", workspace, "--listen", &listen, "--metrics-listen", &metrics];
        args.extend(extra);
        let (child, log) = spawn_hyperpage(&args, &format!("portal-{namespace}"), kubeconfig);
        Self { port, metrics_port, log, child: Some(child) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().map(|c| c.id() as i32).expect("running"), signal);
    }

    /// Waits for the process to exit after a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_exit(self.child.as_mut().expect("running"), timeout, "the portal")
    }

    /// Waits until `/readyz` answers 200 (the Workspace and the bindings are cached).
    pub async fn wait_ready(&self, timeout: Duration) {
        let port = self.port;
        wait_for("the portal to be ready", timeout, || async move { http_get(port, "/readyz").await.map(|_| ()) }).await;
    }

    pub async fn get(&self, path: &str) -> Option<String> {
        http_get(self.port, path).await
    }

    /// The value of a metric line that starts with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = http_get(self.metrics_port, "/metrics").await?;
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<_> = text.lines().collect();
            let _ =
                writeln!(std::io::stderr(), "--- last log lines of the portal ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
    }
}

/// A kubeconfig file (removed when dropped) that authenticates as a ServiceAccount with a
/// short-lived token from `kubectl create token`, with the server and CA of the suite's own
/// kubeconfig. Kept out of artifacts/: it holds a credential.
pub struct ServiceAccountKubeconfig {
    pub path: PathBuf,
}

impl ServiceAccountKubeconfig {
    pub fn create(namespace: &str, service_account: &str) -> Self {
        let token = kubectl(&["create", "token", service_account, "-n", namespace, "--duration=10m"]);
        let view = kubectl(&["config", "view", "--minify", "--raw", "-o", "json"]);
        let view: serde_json::Value = serde_json::from_str(&view).unwrap();
        let cluster = &view["clusters"][0]["cluster"];
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": service_account, "user": {"token": token.trim()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": service_account, "namespace": namespace}}],
            "current-context": "sa",
        });
        let path = std::env::temp_dir().join(format!("hyperpage-e2e-{namespace}-{service_account}.kubeconfig"));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).unwrap();
            file.write_all(serde_json::to_string(&config).unwrap().as_bytes()).unwrap();
        }
        Self { path }
    }

    /// `kubectl auth can-i` as this account: true for "yes", false for "no"; anything else
    /// (a typo, an unreachable server) fails the test rather than passing as "no".
    pub fn can_i(&self, args: &[&str]) -> bool {
        let output = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.path)
            .args(["auth", "can-i"])
            .args(args)
            .output()
            .expect("kubectl on PATH");
        match String::from_utf8_lossy(&output.stdout).trim() {
            "yes" => true,
            "no" => false,
            other => panic!("kubectl auth can-i {args:?}: {other:?} {}", String::from_utf8_lossy(&output.stderr)),
        }
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
        Client::try_from(config).unwrap()
    }
}

impl Drop for ServiceAccountKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Audit events (JSON lines) written to the API server's audit log after byte `offset`, when
/// the suite knows the log (HYPERPAGE_E2E_AUDIT_LOG, set by e2e/cluster.sh).
pub fn audit_log_size() -> Option<u64> {
    let path = std::env::var("HYPERPAGE_E2E_AUDIT_LOG").ok()?;
    Some(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

pub fn audit_events_since(offset: u64) -> Vec<serde_json::Value> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(path) = std::env::var("HYPERPAGE_E2E_AUDIT_LOG") else { return Vec::new() };
    let mut file = std::fs::File::open(path).unwrap();
    // A rotated log would read as empty from an offset into the old file: no check may pass on that.
    let len = file.metadata().unwrap().len();
    assert!(offset <= len, "the audit log is shorter ({len} bytes) than the offset {offset} taken before: rotated?");
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The mutating requests (Lease renewals aside) that the operator replica `identity` sent,
/// as (time the API server received it, "verb URI"), from the audit events `events`.
pub fn operator_writes(events: &[serde_json::Value], identity: &str) -> Vec<(jiff::Timestamp, String)> {
    let marker = format!("({identity})");
    events
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|ua| ua.starts_with("hyperpage-operator/") && ua.contains(&marker)))
        .filter(|e| ["create", "update", "patch", "delete", "deletecollection"].contains(&e["verb"].as_str().unwrap_or("")))
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .map(|e| {
            let received =
                e["requestReceivedTimestamp"].as_str().and_then(|t| t.parse().ok()).expect("audit events carry requestReceivedTimestamp");
            (received, format!("{} {}", e["verb"], e["requestURI"]))
        })
        .collect()
}

impl Operator {
    /// Like `start`, but talking to the cluster through `kubeconfig` (e.g. a ServiceAccount
    /// token) instead of the suite's admin credentials.
    pub fn start_with_kubeconfig(options: OperatorOptions<'_>, kubeconfig: &Path) -> Self {
        Self::spawn(options, Some(kubeconfig))
    }
}

pub fn helm_output(args: &[&str]) -> std::process::Output {
    tool_output("helm", args)
}

pub fn helm(args: &[&str]) -> String {
    tool("helm", args)
}
