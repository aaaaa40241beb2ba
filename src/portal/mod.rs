//! `hyperpage portal`: one Workspace's dashboard and JSON API.
//!
//! Namespace-scoped and read-only: it watches its own Workspace and that namespace's
//! ToolBindings with its own ServiceAccount and answers every request from that in-memory
//! cache, never with an API call per request. It holds no credentials.

mod page;

use crate::api::{ToolBinding, Workspace};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::{Router, routing::get};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct PortalConfig {
    pub namespace: String,
    pub workspace: String,
    pub listen: SocketAddr,
    pub api_only: bool,
}

/// The portal's view: caches of its Workspace and the namespace's bindings.
#[derive(Clone)]
pub struct PortalState {
    pub namespace: String,
    pub workspace: String,
    pub workspaces: Store<Workspace>,
    pub bindings: Store<ToolBinding>,
    requests: Counter,
    registry: Arc<Registry>,
}

impl PortalState {
    pub fn new(namespace: String, workspace: String, workspaces: Store<Workspace>, bindings: Store<ToolBinding>) -> Self {
        let mut registry = Registry::with_prefix("hyperpage_portal");
        let requests = Counter::default();
        registry.register("requests", "HTTP requests served", requests.clone());
        Self { namespace, workspace, workspaces, bindings, requests, registry: Arc::new(registry) }
    }

    pub fn workspace(&self) -> Option<Arc<Workspace>> {
        self.workspaces.get(&ObjectRef::new(&self.workspace).within(&self.namespace))
    }

    /// This workspace's bindings, by name.
    pub fn bindings(&self) -> Vec<Arc<ToolBinding>> {
        crate::operator::workspace::bindings_of(&self.bindings.state(), &self.namespace, &self.workspace)
    }
}

pub fn router(state: PortalState, api_only: bool) -> Router {
    let mut app = Router::new()
        .route("/api/v1/workspace", get(api_workspace))
        .route("/api/v1/toolbindings", get(api_bindings))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if !api_only {
        app = app.route("/", get(index));
    }
    app.with_state(state)
}

async fn api_workspace(State(state): State<PortalState>) -> Response {
    state.requests.inc();
    match state.workspace() {
        Some(ws) => Json(ws.as_ref().clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "workspace not found"}))).into_response(),
    }
}

async fn api_bindings(State(state): State<PortalState>) -> Response {
    state.requests.inc();
    let items: Vec<ToolBinding> = state.bindings().iter().map(|b| b.as_ref().clone()).collect();
    Json(serde_json::json!({ "items": items })).into_response()
}

async fn readyz(State(state): State<PortalState>) -> Response {
    if state.workspace().is_some() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "workspace not in cache yet").into_response()
    }
}

async fn metrics(State(state): State<PortalState>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

async fn index(State(state): State<PortalState>) -> Response {
    state.requests.inc();
    let html = page::render(state.workspace().as_deref(), &state.workspace, &state.bindings());
    (
        [
            (header::CONTENT_SECURITY_POLICY, page::CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(html),
    )
        .into_response()
}

/// Watches and serves until the process ends.
pub async fn run(client: Client, config: PortalConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (workspaces, ws_writer) = reflector::store();
    let (bindings, tb_writer) = reflector::store();
    let ws_api: Api<Workspace> = Api::namespaced(client.clone(), &config.namespace);
    let tb_api: Api<ToolBinding> = Api::namespaced(client, &config.namespace);
    let ws_watch = watcher(ws_api, watcher::Config::default().fields(&format!("metadata.name={}", config.workspace)))
        .default_backoff()
        .modify(|o: &mut Workspace| o.managed_fields_mut().clear())
        .reflect(ws_writer)
        .for_each(|e| {
            if let Err(error) = e {
                tracing::warn!(%error, "workspace watch failed; retrying");
            }
            std::future::ready(())
        });
    let tb_watch = watcher(tb_api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut ToolBinding| o.managed_fields_mut().clear())
        .reflect(tb_writer)
        .for_each(|e| {
            if let Err(error) = e {
                tracing::warn!(%error, "toolbinding watch failed; retrying");
            }
            std::future::ready(())
        });
    let state = PortalState::new(config.namespace.clone(), config.workspace.clone(), workspaces, bindings);
    let app = router(state, config.api_only);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(address = %config.listen, namespace = %config.namespace, workspace = %config.workspace, api_only = config.api_only, "portal listening");
    tokio::select! {
        result = axum::serve(listener, app) => result?,
        _ = futures::future::join(ws_watch, tb_watch) => {}
    }
    Ok(())
}
