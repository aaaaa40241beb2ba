//! The portal row: the JSON API and the page of one Workspace's portal (the operator's own
//! router, access control on: a ServiceAccount token reviewed by the kube-apiserver, its
//! identity and verdict then cached as in production; the `Host` check on, with the names
//! the operator gives a portal) against a bare axum "hello JSON" server, both served by the
//! same kind of runtime in this process, in the same run. The targets take turns in short
//! rounds, so a slow spell of the machine falls on all of them alike.
//!
//! Load generator: a small client here (reqwest over hyper, 64 tasks each holding one
//! keep-alive connection, latency per request) rather than `oha`: no extra tool to pin and
//! cache, the same client for both servers, and the latencies land in this program's figures
//! directly. It shares the machine's cores with the servers, equally for both.

use hyperpage::api::{ToolBinding, Workspace};
use hyperpage::portal::auth::{Gate, Permission};
use hyperpage::portal::limits::AllowedHosts;
use hyperpage::portal::{Access, PortalState, router};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Load {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The requests of one target over all its rounds.
#[derive(Default)]
pub struct Tally {
    latencies_ms: Vec<f64>,
    errors: u64,
    seconds: f64,
}

impl Tally {
    pub fn summary(&mut self) -> Load {
        self.latencies_ms.sort_by(f64::total_cmp);
        Load {
            per_second: self.latencies_ms.len() as f64 / self.seconds,
            p50_ms: super::percentile(&self.latencies_ms, 0.5),
            p99_ms: super::percentile(&self.latencies_ms, 0.99),
            errors: self.errors,
        }
    }
}

/// What a request is sent to: the URL, the bearer token and the `Host` header it carries.
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    pub host: String,
}

/// `connections` clients, each sending requests to `target` one after the other for `secs`;
/// adds them to `tally`.
pub async fn load(target: &Target, connections: usize, secs: f64, tally: &mut Tally) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, url, token, host) = (client.clone(), target.url.clone(), target.token.clone(), target.host.clone());
        tasks.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let mut request = client.get(&url).header(reqwest::header::HOST, &host);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let ok = match request.send().await {
                    Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                errors += u64::from(!ok);
            }
            (latencies, errors)
        });
    }
    while let Some(Ok((latencies, errors))) = tasks.join_next().await {
        tally.latencies_ms.extend(latencies);
        tally.errors += errors;
    }
    tally.seconds += started.elapsed().as_secs_f64();
}

/// A ServiceAccount allowed to `get` the Workspace, and a token for it.
pub async fn viewer_token(client: &kube::Client, namespace: &str, workspace: &str) -> Result<String, super::BoxError> {
    let apply = PatchParams::apply("hyperpage-bench-engine").force();
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "portal-viewer", "namespace": namespace}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "portal-viewer", "namespace": namespace},
               "rules": [{"apiGroups": ["hyperpage.dev"], "resources": ["workspaces"], "resourceNames": [workspace], "verbs": ["get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "portal-viewer", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "portal-viewer"},
               "subjects": [{"kind": "ServiceAccount", "name": "portal-viewer", "namespace": namespace}]}),
    ];
    for object in objects {
        let kind = object["kind"].as_str().unwrap().to_string();
        let resource = match kind.as_str() {
            "ServiceAccount" => kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&()),
            "Role" => kube::discovery::ApiResource::erase::<k8s_openapi::api::rbac::v1::Role>(&()),
            _ => kube::discovery::ApiResource::erase::<k8s_openapi::api::rbac::v1::RoleBinding>(&()),
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        api.patch("portal-viewer", &apply, &Patch::Apply(object)).await?;
    }
    let out =
        std::process::Command::new("kubectl").args(["-n", namespace, "create", "token", "portal-viewer", "--duration", "1h"]).output()?;
    if !out.status.success() {
        return Err(format!("kubectl create token: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Serves the portal router and a bare axum server on a runtime of their own (two workers,
/// as on the machine's two cores); returns their addresses.
pub fn serve(
    client: kube::Client,
    namespace: String,
    workspace: String,
    workspaces: Store<Workspace>,
    bindings: Store<ToolBinding>,
    hosts: Vec<String>,
) -> (String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let permission = Permission { namespace: namespace.clone(), workspace: workspace.clone() };
            let access = Access::Kubernetes(Arc::new(Gate::new(client, permission)));
            let mut state = PortalState::new(namespace, workspace, workspaces, bindings, access);
            state.hosts = AllowedHosts::new(hosts);
            let portal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((format!("http://{}", portal.local_addr().unwrap()), format!("http://{}", bare.local_addr().unwrap()))).unwrap();
            let hello = axum::Router::new().route("/hello", axum::routing::get(|| async { axum::Json(json!({"hello": "world"})) }));
            tokio::spawn(async move { axum::serve(bare, hello).await });
            axum::serve(portal, router(state, false)).await
        })
    });
    rx.recv().unwrap()
}
