//! `hyperpage portal`: one Workspace's dashboard and JSON API.
//!
//! Namespace-scoped and read-only: it watches its own Workspace and that namespace's
//! ToolBindings with its own ServiceAccount and answers every request from that in-memory
//! cache. The HTTP handlers cannot make API calls: [`PortalState`] holds the caches and no
//! `Client`. It holds no credentials.
//!
//! Routes (the page, `/fragment`, `/events` and `/assets/*` are left out with `--api-only`):
//! - `/` the dashboard; `/fragment` its changing part; `/events` server-sent events carrying
//!   that fragment on every change (and every 30 s, so relative times and stale marks stay
//!   true)
//! - `/api/v1/workspace`, `/api/v1/toolbindings`, `/api/v1/openapi.json`
//! - `/healthz`, `/readyz` (the Workspace and the bindings are in the cache), open to
//!   everyone, like `/assets/*`
//! - `/metrics` on a port of its own (`--metrics-listen`), so that it can be kept from users
//!
//! - `/auth/sign-in`, `/auth/callback`, `/auth/sign-out`, `/auth/signed-out`: the OpenID
//!   Connect sign-in, when an issuer is configured (see [`oidc`])
//!
//! In the `kubernetes` access mode (the default) every other route answers only people the
//! cluster's RBAC allows to `get` this Workspace (see [`auth`]), signed in with a bearer token
//! or a browser session ([`session`]).

pub mod auth;
pub mod limits;
pub mod oidc;
mod page;
pub mod session;

pub use page::{CONTENT_SECURITY_POLICY, Mark, Tiles, escape, marks, render, render_dashboard, tiles};

use crate::api::{ToolBinding, Workspace};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::{Router, routing::get};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct PortalConfig {
    pub namespace: String,
    pub workspace: String,
    pub listen: SocketAddr,
    /// Where `/metrics` is served (and `/healthz`, `/readyz` again, for the kubelet).
    pub metrics_listen: SocketAddr,
    pub api_only: bool,
    pub access_mode: auth::AccessMode,
    /// Browser sign-in (kubernetes mode only).
    pub oidc: Option<oidc::OidcConfig>,
    /// The `Host`s served besides loopback (the Ingress host, the Service's names); empty:
    /// any.
    pub allowed_hosts: Vec<String>,
    /// Open `/events` streams allowed per signed-in identity and per pod.
    pub max_streams_per_identity: usize,
    pub max_streams: usize,
    /// How long a SIGTERM waits for open connections after telling `/events` streams to end.
    pub drain_timeout: Duration,
}

/// Default caps on open `/events` streams.
pub const MAX_STREAMS_PER_IDENTITY: usize = 10;
pub const MAX_STREAMS: usize = 1000;

/// How requests are let in.
#[derive(Clone)]
pub enum Access {
    /// Everyone (`--access-mode public`).
    Public,
    /// Whoever RBAC allows to `get` the Workspace.
    Kubernetes(Arc<auth::Gate>),
}

/// One label, known at compile time: counting a request allocates nothing.
type Labels = [(&'static str, &'static str); 1];

fn label(key: &'static str, value: &'static str) -> Labels {
    [(key, value)]
}

/// The portal's own metrics (`hyperpage_portal_*`).
#[derive(Clone)]
pub struct PortalMetrics {
    /// HTTP requests served, by route.
    pub requests: Family<Labels, Counter>,
    /// Watch events received, by kind.
    pub watch_events: Family<Labels, Counter>,
    /// LIST requests the watchers made (the first one and every re-list), by kind. Together
    /// with the long-running WATCH requests these are all the API calls the portal makes.
    pub relists: Family<Labels, Counter>,
    /// Watch failures (retried with backoff), by kind.
    pub watch_errors: Family<Labels, Counter>,
    /// Browsers currently connected to `/events`.
    pub live_clients: Gauge,
    /// Access decisions in `kubernetes` mode, by outcome.
    pub access: Family<Labels, Counter>,
    registry: Arc<Registry>,
}

impl PortalMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("hyperpage_portal");
        let metrics = Self {
            requests: Family::default(),
            watch_events: Family::default(),
            relists: Family::default(),
            watch_errors: Family::default(),
            live_clients: Gauge::default(),
            access: Family::default(),
            registry: Arc::new(Registry::default()),
        };
        registry.register("requests", "HTTP requests served, by route", metrics.requests.clone());
        registry.register("watch_events", "Watch events received from the API server, by kind", metrics.watch_events.clone());
        registry.register("relists", "LIST requests made by the watchers (start and re-lists), by kind", metrics.relists.clone());
        registry.register("watch_errors", "Watch failures, retried with backoff, by kind", metrics.watch_errors.clone());
        registry.register("live_clients", "Browsers connected to /events", metrics.live_clients.clone());
        registry.register("access", "Access decisions (allowed, unauthenticated, forbidden, unavailable)", metrics.access.clone());
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&label("version", crate::VERSION)).set(1);
        registry.register("build_info", "The running version", info);
        Self { registry: Arc::new(registry), ..metrics }
    }
}

/// What the routes share: one allocation, so the per-request clones that axum's `State` and
/// `from_fn_with_state` make are a reference count, not copies of the names and host list.
type Shared = Arc<PortalState>;

/// The portal's view: caches of its Workspace and the namespace's bindings, and a change
/// signal the watchers bump after each event.
#[derive(Clone)]
pub struct PortalState {
    pub namespace: String,
    pub workspace: String,
    pub workspaces: Store<Workspace>,
    pub bindings: Store<ToolBinding>,
    pub metrics: PortalMetrics,
    pub access: Access,
    /// Browser sign-in, when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    pub hosts: limits::AllowedHosts,
    pub streams: limits::StreamLimits,
    /// Set on SIGTERM: open `/events` streams end, so browsers reconnect to another pod.
    draining: Arc<watch::Sender<bool>>,
    changes: Arc<watch::Sender<u64>>,
    bindings_synced: Arc<AtomicBool>,
    /// The dashboard and the bindings' JSON as last rendered (see [`Rendered`]).
    dashboard: Rendered<Arc<Dashboard>>,
    bindings_json: Rendered<bytes::Bytes>,
}

/// One rendering shared by every request in the same second while the caches did not change:
/// keyed by the change counter and the whole second (relative times are in seconds), so an
/// answer is at most one second old even if a change was counted before the cache held it.
/// `T` is cheap to clone (`Bytes`, an `Arc`).
struct Rendered<T>(Arc<std::sync::Mutex<Option<(RenderKey, T)>>>);

impl<T> Clone for Rendered<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Rendered<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// (change counter, whole second).
type RenderKey = (u64, i64);

/// The dashboard fragment and the page title, rendered together from the same cache state.
struct Dashboard {
    title: String,
    html: Arc<str>,
}

impl<T: Clone> Rendered<T> {
    fn get_or(&self, key: RenderKey, render: impl FnOnce() -> T) -> T {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some((k, rendered)) if *k == key => rendered.clone(),
            _ => {
                let rendered = render();
                *slot = Some((key, rendered.clone()));
                rendered
            }
        }
    }
}

impl PortalState {
    pub fn new(namespace: String, workspace: String, workspaces: Store<Workspace>, bindings: Store<ToolBinding>, access: Access) -> Self {
        Self {
            access,
            oidc: None,
            hosts: limits::AllowedHosts::default(),
            streams: limits::StreamLimits::new(MAX_STREAMS_PER_IDENTITY, MAX_STREAMS),
            draining: Arc::new(watch::channel(false).0),
            namespace,
            workspace,
            workspaces,
            bindings,
            metrics: PortalMetrics::new(),
            changes: Arc::new(watch::channel(0).0),
            bindings_synced: Arc::new(AtomicBool::new(false)),
            dashboard: Rendered::default(),
            bindings_json: Rendered::default(),
        }
    }

    pub fn workspace(&self) -> Option<Arc<Workspace>> {
        self.workspaces.get(&ObjectRef::new(&self.workspace).within(&self.namespace))
    }

    /// This workspace's bindings, by name.
    pub fn bindings(&self) -> Vec<Arc<ToolBinding>> {
        crate::operator::workspace::bindings_of(&self.bindings.state(), &self.namespace, &self.workspace)
    }

    /// Ends every open `/events` stream (and refuses new ones): the pod is going away.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Tells open `/events` streams that the cache changed.
    pub fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn rendered_key(&self, now: jiff::Timestamp) -> RenderKey {
        (*self.changes.borrow(), now.as_second())
    }

    fn dashboard(&self) -> Arc<Dashboard> {
        let now = jiff::Timestamp::now();
        self.dashboard.get_or(self.rendered_key(now), || {
            let ws = self.workspace();
            let html = page::render_dashboard(ws.as_deref(), &self.workspace, &self.namespace, &self.bindings(), now);
            Arc::new(Dashboard { title: page::title(ws.as_deref(), &self.workspace), html: html.into() })
        })
    }

    fn count(&self, route: &'static str) {
        self.metrics.requests.get_or_create(&label("route", route)).inc();
    }
}

pub fn router(state: PortalState, api_only: bool) -> Router {
    let state = Arc::new(state);
    let mut private = Router::new()
        .route("/api/v1/workspace", get(api_workspace))
        .route("/api/v1/toolbindings", get(api_bindings))
        .route("/api/v1/openapi.json", get(api_openapi));
    let mut open = Router::new();
    if !api_only {
        private = private.route("/", get(index)).route("/fragment", get(fragment)).route("/events", get(events));
        if state.oidc.is_some() {
            open = open
                .route("/auth/sign-in", get(sign_in))
                .route("/auth/callback", get(callback))
                .route("/auth/sign-out", axum::routing::post(sign_out))
                .route("/auth/signed-out", get(signed_out));
        }
        open = open
            .route("/assets/portal.js", get(|| async { asset("text/javascript; charset=utf-8", page::SCRIPT) }))
            .route("/assets/portal.css", get(|| async { asset("text/css; charset=utf-8", page::STYLE) }))
            .route("/assets/favicon.svg", get(|| async { asset("image/svg+xml", page::FAVICON) }));
    }
    let private = private.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_access));
    // Probes come from the kubelet with the pod's IP as Host: they skip the Host check.
    let checked = private.merge(open).route_layer(axum::middleware::from_fn_with_state(state.clone(), require_host));
    checked.merge(probes()).with_state(state).layer(axum::middleware::map_response(security_headers))
}

/// Refuses a request for a name this portal is not (DNS rebinding, a stray Ingress).
async fn require_host(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if state.hosts.allows(host(request.headers())) {
        return next.run(request).await;
    }
    state.metrics.access.get_or_create(&label("outcome", "wrong_host")).inc();
    (StatusCode::MISDIRECTED_REQUEST, "this portal does not answer to that host name\n").into_response()
}

fn probes() -> Router<Shared> {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz))
}

/// The metrics port: `/metrics` and the probes, no tenant data.
pub fn metrics_router(state: PortalState) -> Router {
    probes().route("/metrics", get(metrics)).with_state(Arc::new(state))
}

/// How the visitor of a request signed in, for the page's footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignedInWith {
    Bearer,
    Session,
}

fn host(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

fn cookie_headers(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok())
}

/// Lets a request through only with an identity that RBAC allows to see this Workspace.
async fn require_access(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let Access::Kubernetes(gate) = &state.access else {
        return next.run(request).await;
    };
    let headers = request.headers();
    let mut credential = auth::bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
    let mut with = SignedInWith::Bearer;
    // A session that does not open (tampered with, or sealed with a rotated key) is cleared.
    let mut clear_session = false;
    if credential.is_none()
        && let Some(oidc) = &state.oidc
    {
        match oidc.session(cookie_headers(headers)) {
            session::Opened::Valid(s) => {
                credential = Some(auth::Credential::Bearer(s.id_token));
                with = SignedInWith::Session;
            }
            session::Opened::Invalid => clear_session = true,
            session::Opened::Missing => {}
        }
    }
    let verdict = gate.check(credential).await;
    let outcome = match &verdict {
        auth::Verdict::Allowed(_) => "allowed",
        auth::Verdict::Unauthenticated(_) => "unauthenticated",
        auth::Verdict::Forbidden { .. } => "forbidden",
        auth::Verdict::Unavailable => "unavailable",
    };
    state.metrics.access.get_or_create(&label("outcome", outcome)).inc();
    if matches!(verdict, auth::Verdict::Unauthenticated(_)) && with == SignedInWith::Session {
        clear_session = true; // the ID token expired or the API server no longer accepts it
    }
    let mut response = match verdict {
        auth::Verdict::Allowed(identity) => {
            request.extensions_mut().insert(identity);
            request.extensions_mut().insert(with);
            next.run(request).await
        }
        // A person opening the page is sent to sign in, and brought back afterwards.
        auth::Verdict::Unauthenticated(_) if state.oidc.is_some() && request.uri().path() == "/" && !wants_json(&request) => {
            let back = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut url = url::Url::parse("http://portal/auth/sign-in").expect("a valid URL");
            url.query_pairs_mut().append_pair("return", back);
            redirect(&format!("{}?{}", url.path(), url.query().unwrap_or_default()))
        }
        refused => refusal(&refused, wants_json(&request), with == SignedInWith::Session),
    };
    if clear_session {
        append_cookie(&mut response, session::clear(session::SESSION_COOKIE));
    }
    response
}

/// A `303 See Other` to a path on this portal (or the provider).
fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn append_cookie(response: &mut Response, set_cookie: String) {
    if let Ok(value) = HeaderValue::from_str(&set_cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// A page saying what went wrong with a sign-in (never a secret or a token).
fn sign_in_problem(status: StatusCode, message: &str) -> Response {
    let body = format!("<p>{}</p><p><a href=\"/\">Start again</a></p>", page::escape(message));
    (status, Html(page::notice("Sign-in failed", &body))).into_response()
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    #[serde(rename = "return")]
    return_to: Option<String>,
}

/// Starts a sign-in: remembers state, nonce and PKCE verifier in the login cookie and sends
/// the browser to the provider.
async fn sign_in(State(state): State<Shared>, Query(query): Query<SignInQuery>, headers: axum::http::HeaderMap) -> Response {
    let Some(oidc) = &state.oidc else { return StatusCode::NOT_FOUND.into_response() };
    state.count("sign_in");
    let login = oidc::Login::start(query.return_to.as_deref().unwrap_or("/"));
    let started = async {
        let redirect = oidc::redirect_uri(oidc.config.external_url.as_ref(), host(&headers))?;
        let discovery = oidc.discovery().await?;
        let url = oidc::authorization_url(discovery, &oidc.config, &login, &redirect)?;
        let key = oidc.key()?;
        let cookie = session::seal(&key, session::LOGIN_COOKIE, &login, session::LOGIN_LIFETIME)
            .map_err(|e| oidc::OidcError::Config(format!("failed to seal the login cookie: {e}")))?;
        Ok::<_, oidc::OidcError>((url, cookie))
    };
    match started.await {
        Ok((url, cookie)) => {
            let mut response = redirect(url.as_str());
            append_cookie(&mut response, cookie);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "sign-in could not start");
            sign_in_problem(StatusCode::BAD_GATEWAY, &error.public_message())
        }
    }
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider sends the browser back here: check state, exchange the code, check the
/// nonce, let the API server say whose ID token it is, and start the session.
async fn callback(State(state): State<Shared>, Query(query): Query<CallbackQuery>, headers: axum::http::HeaderMap) -> Response {
    let (Some(oidc), Access::Kubernetes(gate)) = (&state.oidc, &state.access) else { return StatusCode::NOT_FOUND.into_response() };
    state.count("callback");
    let finished = async {
        let key = oidc.key()?;
        let login: oidc::Login = match session::open(&key, session::LOGIN_COOKIE, cookie_headers(&headers)) {
            session::Opened::Valid(login) => login,
            _ => return Err(oidc::OidcError::Callback("this sign-in expired or was started in another browser")),
        };
        if let Some(error) = &query.error {
            tracing::info!(error = %error, "the provider refused the sign-in");
            return Err(oidc::OidcError::Callback("the provider did not sign you in"));
        }
        oidc::check_state(&login, query.state.as_deref())?;
        let code = query.code.as_deref().ok_or(oidc::OidcError::Callback("the provider sent no authorization code"))?;
        let redirect = oidc::redirect_uri(oidc.config.external_url.as_ref(), host(&headers))?;
        let id_token = oidc.exchange(code, &login, &redirect).await?;
        oidc::check_nonce(&id_token, &login)?;
        match gate.authenticate(&id_token).await {
            Ok(Ok(identity)) => tracing::info!(user = %identity, "signed in"),
            Ok(Err(_)) => {
                return Err(oidc::OidcError::Callback(
                    "the cluster did not accept the ID token (is the API server configured for this issuer and client ID?)",
                ));
            }
            Err(error) => return Err(oidc::OidcError::Review(error.to_string())),
        }
        let lifetime = oidc::session_lifetime(&id_token, jiff::Timestamp::now());
        if lifetime.is_zero() {
            return Err(oidc::OidcError::Callback("the ID token has already expired"));
        }
        let cookie = session::seal(&key, session::SESSION_COOKIE, &oidc::Session { id_token }, lifetime)
            .map_err(|e| oidc::OidcError::Config(format!("failed to seal the session: {e}")))?;
        Ok::<_, oidc::OidcError>((login.return_to, cookie))
    };
    let mut response = match finished.await {
        Ok((back, cookie)) => {
            let mut response = redirect(&back);
            append_cookie(&mut response, cookie);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "sign-in failed");
            sign_in_problem(StatusCode::UNAUTHORIZED, &error.public_message())
        }
    };
    append_cookie(&mut response, session::clear(session::LOGIN_COOKIE));
    response
}

/// Ends the browser session (the provider's own session, if it keeps one, is its business).
async fn sign_out(State(state): State<Shared>) -> Response {
    state.count("sign_out");
    let mut response = redirect("/auth/signed-out");
    append_cookie(&mut response, session::clear(session::SESSION_COOKIE));
    response
}

async fn signed_out() -> Response {
    Html(page::notice("Signed out", "<p>You are signed out of this portal.</p><p><a href=\"/\">Sign in again</a></p>")).into_response()
}

/// API clients get JSON, browsers a page.
fn wants_json(request: &Request) -> bool {
    let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    request.uri().path().starts_with("/api/") || (accept.contains("application/json") && !accept.contains("text/html"))
}

/// The answer to a request that is not let in: who the caller is and what is missing (with a
/// way to sign in as someone else for a browser session).
fn refusal(verdict: &auth::Verdict, json: bool, session: bool) -> Response {
    let (status, error, identity, permission) = match verdict {
        auth::Verdict::Allowed(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        auth::Verdict::Unauthenticated(auth::Unauthenticated::NoCredential) => {
            (StatusCode::UNAUTHORIZED, "sign-in required: send a bearer token the cluster accepts", None, None)
        }
        auth::Verdict::Unauthenticated(auth::Unauthenticated::Rejected) => {
            (StatusCode::UNAUTHORIZED, "the cluster did not accept this token (expired, revoked or unknown)", None, None)
        }
        auth::Verdict::Forbidden { identity, permission } => (StatusCode::FORBIDDEN, "forbidden", Some(identity), Some(permission)),
        auth::Verdict::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "failed to ask the API server; try again", None, None),
    };
    let mut response = if json {
        let mut body = serde_json::json!({ "error": error });
        if let (Some(identity), Some(permission)) = (identity, permission) {
            body["user"] = serde_json::json!(identity.username);
            body["groups"] = serde_json::json!(identity.groups);
            body["missingPermission"] = serde_json::json!(permission.to_string());
        }
        (status, Json(body)).into_response()
    } else {
        let body = match (identity, permission) {
            (Some(identity), Some(permission)) => {
                format!(
                    "<p>You are signed in as <b data-user>{}</b>{}.</p><p>Seeing this portal needs the permission <code data-missing>{}</code>, which you do not have.</p><p>A namespace admin can grant it: <code>kubectl create rolebinding portal-viewers -n {} --clusterrole=hyperpage-workspace-viewer --user={}</code> (or <code>--group=…</code>).</p>",
                    page::escape(&identity.username),
                    if identity.groups.is_empty() {
                        String::new()
                    } else {
                        format!(" (groups: {})", page::escape(&identity.groups.join(", ")))
                    },
                    page::escape(&permission.to_string()),
                    page::escape(&permission.namespace),
                    page::escape(&identity.username),
                ) + if session { page::SIGN_OUT_FORM } else { "" }
            }
            _ => format!("<p>{}</p>", page::escape(error)),
        };
        let title = if status == StatusCode::FORBIDDEN {
            "Access denied"
        } else if status == StatusCode::UNAUTHORIZED {
            "Sign-in required"
        } else {
            "Try again"
        };
        (status, Html(page::notice(title, &body))).into_response()
    };
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"hyperpage\""));
    }
    response
}

/// Every response: the strict CSP and friends; nothing is cached unless the route says so.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(page::CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

async fn api_workspace(State(state): State<Shared>) -> Response {
    state.count("api_workspace");
    match state.workspace() {
        // Serialized from the cache as it is: no copy of the object, no JSON value tree.
        Some(ws) => Json(ws.as_ref()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("workspace {} not found in namespace {}", state.workspace, state.namespace)})),
        )
            .into_response(),
    }
}

/// The bindings list, serialized straight from the cache: no copy of every binding and no
/// `serde_json::Value` tree in between.
#[derive(serde::Serialize)]
struct Items<'a> {
    items: Vec<&'a ToolBinding>,
}

async fn api_bindings(State(state): State<Shared>) -> Response {
    state.count("api_toolbindings");
    let json = state.bindings_json.get_or(state.rendered_key(jiff::Timestamp::now()), || {
        let bindings = state.bindings();
        serde_json::to_vec(&Items { items: bindings.iter().map(|b| b.as_ref()).collect() }).unwrap_or_default().into()
    });
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response()
}

/// An OpenAPI 3.1 description of the JSON API, with the schemas taken from the CRDs
/// themselves so it cannot drift from them.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: LazyLock<serde_json::Value> = LazyLock::new(|| {
        let schema = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
            crd.spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap_or_default())
        };
        let json = |description: &str, reference: serde_json::Value| serde_json::json!({"description": description, "content": {"application/json": {"schema": reference}}});
        let error = serde_json::json!({"type": "object", "properties": {"error": {"type": "string"}}});
        let refusal = serde_json::json!({"type": "object", "properties": {
            "error": {"type": "string"}, "user": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
            "missingPermission": {"type": "string"}
        }});
        let unauthenticated = json("No bearer token, or one the API server does not accept (access mode kubernetes)", error.clone());
        let forbidden = json("RBAC does not allow this identity to get the Workspace: who it is and the missing permission", refusal);
        serde_json::json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Hyperpage portal API",
                "version": crate::VERSION,
                "description": "Read-only view of one Workspace and its ToolBindings, answered from the portal's watch cache (never one API-server call per request). Objects are the Kubernetes objects without managedFields."
            },
            "paths": {
                "/api/v1/workspace": {"get": {"summary": "The portal's Workspace (spec and status)", "responses": {
                    "200": json("The Workspace", serde_json::json!({"$ref": "#/components/schemas/Workspace"})),
                    "404": json("The Workspace is not in the cache (deleted, or not readable)", error),
                    "401": unauthenticated.clone(), "403": forbidden.clone()
                }}},
                "/api/v1/toolbindings": {"get": {"summary": "The ToolBindings that reference the Workspace, sorted by name", "responses": {
                    "200": json("The bindings", serde_json::json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/ToolBinding"}}}})),
                    "401": unauthenticated.clone(), "403": forbidden.clone()
                }}},
                "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}, "401": unauthenticated, "403": forbidden}}},
                "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
                "/readyz": {"get": {"summary": "Readiness: the Workspace and the bindings are in the cache", "security": [], "responses": {"200": {"description": "ok"}, "503": {"description": "not yet"}}}}
            },
            "security": [{"bearer": []}],
            "components": {
                "schemas": {"Workspace": schema(Workspace::crd()), "ToolBinding": schema(ToolBinding::crd())},
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token the cluster's API server accepts (ServiceAccount or OIDC ID token); access mode kubernetes"}}
            }
        })
    });
    &DOC
}

async fn api_openapi(State(state): State<Shared>) -> Response {
    state.count("api_openapi");
    Json(openapi()).into_response()
}

async fn readyz(State(state): State<Shared>) -> Response {
    if state.workspace().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "workspace not in cache yet").into_response()
    } else if !state.bindings_synced.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "toolbindings not listed yet").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

async fn index(
    State(state): State<Shared>,
    identity: Option<axum::Extension<Arc<auth::Identity>>>,
    with: Option<axum::Extension<SignedInWith>>,
) -> Response {
    state.count("page");
    let account = match (identity, with) {
        (Some(identity), Some(with)) => page::account(&identity.username, with.0 == SignedInWith::Session),
        _ => String::new(),
    };
    let dashboard = state.dashboard();
    Html(page::page(&dashboard.title, &dashboard.html, &account)).into_response()
}

async fn fragment(State(state): State<Shared>) -> Response {
    state.count("fragment");
    Html(bytes::Bytes::from_owner(SharedHtml(state.dashboard().html.clone()))).into_response()
}

/// The shared rendering as a response body, sent without copying it per request.
struct SharedHtml(Arc<str>);

impl AsRef<[u8]> for SharedHtml {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Counts a connected browser for as long as its stream lives.
struct LiveClient(Gauge);

impl Drop for LiveClient {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Server-sent events: the dashboard fragment at once, then whenever it changes; ended when
/// the pod drains, so the browser reconnects to another one.
async fn events(State(state): State<Shared>, identity: Option<axum::Extension<Arc<auth::Identity>>>) -> Response {
    state.count("events");
    let mut draining = state.draining.subscribe();
    if *draining.borrow_and_update() {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "shutting down\n").into_response();
    }
    let slot = match state.streams.acquire(identity.as_ref().map(|i| i.username.as_str())) {
        Ok(slot) => slot,
        Err(refused) => {
            state.metrics.access.get_or_create(&label("outcome", "too_many_streams")).inc();
            return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "30")], format!("{refused}\n")).into_response();
        }
    };
    state.metrics.live_clients.inc();
    let client = (LiveClient(state.metrics.live_clients.clone()), slot);
    let changes = state.changes.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.reset();
    let start = (state, (changes, draining), tick, None::<Arc<str>>, true, client);
    let stream = futures::stream::unfold(start, |(state, (mut changes, mut draining), mut tick, mut last, mut first, client)| async move {
        loop {
            if !first {
                tokio::select! {
                    _ = draining.changed() => return None,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        // Coalesce a burst of watch events into one update.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        changes.borrow_and_update();
                    }
                    _ = tick.tick() => {}
                }
            }
            first = false;
            let html = state.dashboard().html.clone();
            if last.as_deref() != Some(&*html) {
                let event = Event::default().event("dashboard").data(&*html);
                last = Some(html);
                return Some((Ok::<_, Infallible>(event), (state, (changes, draining), tick, last, first, client)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// Drops what the portal never shows, so the cache stays small.
fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Records a watch event in the metrics and wakes the `/events` streams.
fn observe<K>(state: &PortalState, kind: &'static str, event: &Result<watcher::Event<K>, watcher::Error>) {
    match event {
        Ok(e) => {
            state.metrics.watch_events.get_or_create(&label("kind", kind)).inc();
            match e {
                watcher::Event::Init => {
                    state.metrics.relists.get_or_create(&label("kind", kind)).inc();
                }
                watcher::Event::InitApply(_) => return,
                watcher::Event::InitDone if kind == "toolbinding" => state.bindings_synced.store(true, Ordering::Relaxed),
                _ => {}
            }
            state.notify();
        }
        Err(error) => {
            state.metrics.watch_errors.get_or_create(&label("kind", kind)).inc();
            tracing::warn!(%error, kind, "watch failed; retrying");
        }
    }
}

/// Watches and serves until the process ends.
pub async fn run(client: Client, config: PortalConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (workspaces, ws_writer) = reflector::store();
    let (bindings, tb_writer) = reflector::store();
    let ws_api: Api<Workspace> = Api::namespaced(client.clone(), &config.namespace);
    let tb_api: Api<ToolBinding> = Api::namespaced(client.clone(), &config.namespace);
    let access = match config.access_mode {
        auth::AccessMode::Public => Access::Public,
        auth::AccessMode::Kubernetes => Access::Kubernetes(Arc::new(auth::Gate::new(
            client.clone(),
            auth::Permission { namespace: config.namespace.clone(), workspace: config.workspace.clone() },
        ))),
    };
    let mut state = PortalState::new(config.namespace.clone(), config.workspace.clone(), workspaces, bindings, access);
    if let (Some(oidc), Access::Kubernetes(_)) = (config.oidc.clone(), &state.access) {
        state.oidc = Some(oidc::Oidc::new(oidc)?);
    }
    state.hosts = limits::AllowedHosts::new(config.allowed_hosts.clone());
    state.streams = limits::StreamLimits::new(config.max_streams_per_identity.max(1), config.max_streams.max(1));

    let ws_state = state.clone();
    let ws_watch = watcher(ws_api, watcher::Config::default().fields(&format!("metadata.name={}", config.workspace)))
        .default_backoff()
        .modify(trim::<Workspace>)
        .reflect(ws_writer)
        .for_each(move |e| {
            observe(&ws_state, "workspace", &e);
            std::future::ready(())
        });
    let tb_state = state.clone();
    let tb_watch =
        watcher(tb_api, watcher::Config::default()).default_backoff().modify(trim::<ToolBinding>).reflect(tb_writer).for_each(move |e| {
            observe(&tb_state, "toolbinding", &e);
            std::future::ready(())
        });

    let metrics_app = metrics_router(state.clone());
    let draining = state.clone();
    let app = router(state, config.api_only);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    tracing::info!(address = %config.listen, metrics = %config.metrics_listen, namespace = %config.namespace, workspace = %config.workspace, api_only = config.api_only, access = %config.access_mode, "portal listening");
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down: ending live streams and finishing open requests");
        draining.drain();
    };
    // Graceful: on SIGTERM the `/events` streams end (browsers reconnect through the Service
    // to a pod that stays), open requests finish, for at most `drain_timeout`.
    let (stopped, stop) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopped.send(());
    });
    let drain_timeout = config.drain_timeout;
    let deadline = async move {
        if stop.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
            tracing::warn!(?drain_timeout, "connections still open after the drain timeout; exiting");
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = serve => result?,
        result = axum::serve(metrics_listener, metrics_app) => result?,
        _ = futures::future::join(ws_watch, tb_watch) => {}
        _ = deadline => {}
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
