//! The portal's HTTP surface against caches filled by hand (no API server involved, which is
//! also the point: the handlers only have the caches).

use super::*;
use kube::runtime::reflector::store::Writer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKSPACE: &str = r#"
apiVersion: hyperpage.dev/v1alpha1
kind: Workspace
metadata: {name: payments, namespace: team, annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}}
spec: {displayName: "Payments <team>"}
status:
  conditions:
  - {type: Ready, status: "True", reason: PortalAvailable, message: "1/1", lastTransitionTime: "2026-11-02T11:00:00Z"}
  summary: {openPullRequests: 12, failingPipelines: 2, openIssues: 30}
"#;

const BINDING: &str = r#"
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: github, namespace: team}
spec:
  workspaceRef: {name: payments}
  provider: github
  credentialsSecretRef: {name: gh, key: token}
  github: {repositories: [acme/payments]}
status:
  summary: {codeReviews: 12, vulnerableArtifacts: 4}
  items:
    codeReviews:
    - {id: "1", title: "<img src=x onerror=alert(1)>", url: "https://github.com/acme/payments/pull/1"}
"#;

const OTHER: &str = r#"
apiVersion: hyperpage.dev/v1alpha1
kind: ToolBinding
metadata: {name: elsewhere, namespace: team}
spec:
  workspaceRef: {name: another}
  provider: github
  credentialsSecretRef: {name: gh, key: token}
  github: {repositories: [acme/other]}
"#;

struct Fixture {
    state: PortalState,
    ws: Writer<Workspace>,
    tb: Writer<ToolBinding>,
}

fn fixture() -> Fixture {
    let (workspaces, ws) = reflector::store();
    let (bindings, tb) = reflector::store();
    let state = PortalState::new("team".into(), "payments".into(), workspaces, bindings, Access::Public);
    Fixture { state, ws, tb }
}

fn apply<K: Clone + kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned>(writer: &mut Writer<K>, yaml: &str) {
    let mut object: K = serde_norway::from_str(yaml).unwrap();
    trim(&mut object);
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

async fn serve(state: PortalState, api_only: bool) -> u16 {
    serve_app(router(state, api_only)).await
}

async fn serve_app(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// (status line, headers, body) of a plain HTTP/1.0 GET.
async fn get(port: u16, path: &str) -> (String, String, String) {
    get_with(port, path, "").await
}

/// The same, with extra header lines (each ending in CRLF).
async fn get_with(port: u16, path: &str, headers: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{headers}\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn the_api_answers_from_the_cache_and_only_with_this_workspace() {
    let mut f = fixture();
    let port = serve(f.state.clone(), false).await;
    let metrics_port = serve_app(metrics_router(f.state.clone())).await;
    let (status, _, body) = get(port, "/api/v1/workspace").await;
    assert!(status.contains("404"), "{status}");
    assert!(body.contains("workspace payments not found in namespace team"), "{body}");
    let (status, _, _) = get(port, "/readyz").await;
    assert!(status.contains("503"));

    apply(&mut f.ws, WORKSPACE);
    apply(&mut f.tb, BINDING);
    apply(&mut f.tb, OTHER);
    let (status, headers, body) = get(port, "/api/v1/workspace").await;
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("cache-control: no-store"), "{headers}");
    let ws: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ws["status"]["summary"]["openPullRequests"], 12);
    assert!(ws["metadata"]["annotations"].get("kubectl.kubernetes.io/last-applied-configuration").is_none(), "{body}");

    let (_, _, body) = get(port, "/api/v1/toolbindings").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|b| b["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["github"], "bindings of other workspaces are left out");

    // Ready once the bindings have been listed too.
    f.state.bindings_synced.store(true, Ordering::Relaxed);
    let (status, _, _) = get(port, "/readyz").await;
    assert!(status.contains("200"));

    assert!(get(port, "/metrics").await.0.contains("404"), "metrics are not on the public port");
    let (_, _, metrics) = get(metrics_port, "/metrics").await;
    assert!(metrics.contains("hyperpage_portal_requests_total{route=\"api_workspace\"} 2"), "{metrics}");
    assert!(get(metrics_port, "/readyz").await.0.contains("200"), "the probes answer on the metrics port too");
    assert!(get(metrics_port, "/api/v1/workspace").await.0.contains("404"), "no tenant data on the metrics port");
    assert!(metrics.contains("hyperpage_portal_build_info{version="), "{metrics}");
}

#[tokio::test]
async fn the_page_is_escaped_and_served_under_a_strict_csp() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    apply(&mut f.tb, BINDING);
    let port = serve(f.state.clone(), false).await;
    let (status, headers, body) = get(port, "/").await;
    assert!(status.contains("200"));
    assert!(headers.contains(&format!("content-security-policy: {}", CONTENT_SECURITY_POLICY.to_ascii_lowercase())), "{headers}");
    assert!(headers.contains("x-content-type-options: nosniff"));
    assert!(body.contains("Payments &lt;team&gt;"), "{body}");
    assert!(body.contains("&lt;img src=x onerror=alert(1)&gt;"), "{body}");
    assert!(!body.contains("<img"), "{body}");
    assert!(body.contains("data-tile=\"vulnerable-artifacts\"><b class=\"count\">4</b>"), "{body}");

    // The fragment is the page's changing part, the same rendering, escaped alike.
    let (status, headers, fragment) = get(port, "/fragment").await;
    assert!(status.contains("200") && headers.contains("content-type: text/html"), "{headers}");
    assert!(!fragment.is_empty() && body.contains(&fragment), "{fragment}");
    assert!(fragment.contains("data-tile=\"vulnerable-artifacts\"") && !fragment.contains("<img"), "{fragment}");

    let (status, headers, script) = get(port, "/assets/portal.js").await;
    assert!(status.contains("200") && headers.contains("content-type: text/javascript"), "{headers}");
    assert!(script.contains("EventSource"));
    let (status, _, _) = get(port, "/assets/portal.css").await;
    assert!(status.contains("200"));
}

async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 8192];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} in time: {seen}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn events_send_the_dashboard_at_once_and_again_on_change() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    let port = serve(f.state.clone(), false).await;
    let metrics_port = serve_app(metrics_router(f.state.clone())).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "No ToolBindings reference this workspace").await;
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: dashboard"), "{seen}");

    apply(&mut f.tb, BINDING);
    f.state.notify();
    read_until(&mut stream, &mut seen, "data-binding=\"github\"").await;
    let (_, _, metrics) = get(metrics_port, "/metrics").await;
    assert!(metrics.contains("hyperpage_portal_live_clients 1"), "{metrics}");
}

/// The list and the dashboard (with the title) are rendered once per change of the caches (and
/// second), and a change shows at once.
#[tokio::test]
async fn renderings_are_shared_until_the_caches_change() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    apply(&mut f.tb, BINDING);
    let port = serve(f.state.clone(), false).await;
    let names = |body: &str| -> Vec<String> {
        let list: serde_json::Value = serde_json::from_str(body).unwrap();
        list["items"].as_array().unwrap().iter().map(|b| b["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    let (_, headers, first) = get(port, "/api/v1/toolbindings").await;
    assert!(headers.contains("content-type: application/json"), "{headers}");
    assert_eq!(get(port, "/api/v1/toolbindings").await.2, first);
    assert_eq!(names(&first), ["github"]);
    assert!(!get(port, "/").await.2.contains("data-binding=\"gitlab\""));

    apply(&mut f.tb, &BINDING.replace("name: github", "name: gitlab"));
    f.state.notify();
    assert_eq!(names(&get(port, "/api/v1/toolbindings").await.2), ["github", "gitlab"]);
    assert!(get(port, "/").await.2.contains("data-binding=\"gitlab\""));

    // The title is rendered with the dashboard, from the same change.
    assert!(get(port, "/").await.2.contains("<title>Payments &lt;team&gt; · Hyperpage</title>"));
    apply(&mut f.ws, &WORKSPACE.replace("Payments <team>", "Payments & Billing"));
    f.state.notify();
    assert!(get(port, "/").await.2.contains("<title>Payments &amp; Billing · Hyperpage</title>"));
}

#[tokio::test]
async fn api_only_mode_serves_no_page() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    let port = serve(f.state.clone(), true).await;
    assert!(get(port, "/").await.0.contains("404"));
    assert!(get(port, "/events").await.0.contains("404"));
    assert!(get(port, "/api/v1/workspace").await.0.contains("200"));
    let (_, _, doc) = get(port, "/api/v1/openapi.json").await;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["ToolBinding"]["properties"]["status"]["properties"]["items"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["paths"]["/api/v1/workspace"]["get"]["responses"]["403"]["content"].is_object(), "the refusal is documented");
    assert_eq!(doc["paths"]["/readyz"]["get"]["security"], serde_json::json!([]), "probes are open");
    assert!(doc["paths"].get("/metrics").is_none(), "metrics are not on this port");
}

/// A scripted API server that answers TokenReviews and LocalSubjectAccessReviews: `alice`'s
/// token is valid and she may see the Workspace, `bob`'s is valid and he may not; any other
/// token is rejected. Returns the client and the paths it was asked.
fn review_api() -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    let (service, mut handle) = tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body: serde_json::Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
            let path = parts.uri.path().to_string();
            log.lock().unwrap().push(path.clone());
            let mut answer = body.clone();
            if path.ends_with("/tokenreviews") {
                let user = match body["spec"]["token"].as_str() {
                    Some("alice-token") => Some(("alice", vec!["team-payments"])),
                    Some("bob-token") => Some(("bob", vec!["team-other"])),
                    _ => None,
                };
                answer["status"] = match user {
                    Some((name, groups)) => serde_json::json!({"authenticated": true, "user": {"username": name, "groups": groups}}),
                    None => serde_json::json!({"authenticated": false, "error": "token has expired"}),
                };
            } else {
                assert_eq!(path, "/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews");
                let attributes = &body["spec"]["resourceAttributes"];
                assert_eq!((attributes["verb"].as_str(), attributes["name"].as_str()), (Some("get"), Some("payments")));
                answer["status"] = serde_json::json!({"allowed": body["spec"]["user"] == "alice"});
            }
            send.send_response(
                http::Response::builder().status(201).body(kube::client::Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
            );
        }
    });
    (Client::new(service, "team"), asked)
}

#[tokio::test]
async fn kubernetes_mode_lets_in_only_whom_rbac_allows_and_caches_the_answers() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    let (client, asked) = review_api();
    let gate = auth::Gate::new(client, auth::Permission { namespace: "team".into(), workspace: "payments".into() });
    let state = PortalState { access: Access::Kubernetes(Arc::new(gate)), ..f.state.clone() };
    let port = serve(state.clone(), false).await;

    for path in ["/", "/fragment", "/events", "/api/v1/workspace", "/api/v1/toolbindings", "/api/v1/openapi.json"] {
        let (status, headers, _) = get(port, path).await;
        assert!(status.contains("401"), "{path} without a token: {status}");
        assert!(headers.contains("www-authenticate: bearer"), "{headers}");
    }
    for path in ["/healthz", "/assets/portal.css"] {
        assert!(get(port, path).await.0.contains("200"), "{path} stays open");
    }
    assert!(asked.lock().unwrap().is_empty(), "no credential, no API call");

    let (status, _, body) = get_with(port, "/api/v1/workspace", "Authorization: Bearer alice-token\r\n").await;
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["metadata"]["name"], "payments");
    let (status, _, body) = get_with(port, "/", "Authorization: Bearer alice-token\r\n").await;
    assert!(status.contains("200") && body.contains("data-title"), "{status}");
    assert_eq!(asked.lock().unwrap().len(), 2, "one TokenReview and one access review, then the cache: {:?}", asked.lock().unwrap());

    let (status, _, body) = get_with(port, "/api/v1/toolbindings", "Authorization: Bearer bob-token\r\n").await;
    assert!(status.contains("403"), "{status}");
    let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["user"], "bob");
    assert_eq!(refusal["groups"], serde_json::json!(["team-other"]));
    assert_eq!(refusal["missingPermission"], "get workspaces.hyperpage.dev \"payments\" in namespace \"team\"");
    assert!(!body.contains("github"), "no tenant data in a refusal: {body}");
    let (status, headers, page) = get_with(port, "/", "Authorization: Bearer bob-token\r\n").await;
    assert!(status.contains("403") && headers.contains("text/html"), "{status} {headers}");
    assert!(page.contains("<b data-user>bob</b>") && page.contains("get workspaces.hyperpage.dev &quot;payments&quot;"), "{page}");

    let (status, _, body) = get_with(port, "/api/v1/workspace", "Authorization: Bearer expired-token\r\n").await;
    assert!(status.contains("401") && body.contains("did not accept this token"), "{status} {body}");

    let metrics_port = serve_app(metrics_router(state)).await;
    let (_, _, metrics) = get(metrics_port, "/metrics").await;
    assert!(metrics.contains("hyperpage_portal_access_total{outcome=\"forbidden\"} 2"), "{metrics}");
    assert!(metrics.contains("hyperpage_portal_access_total{outcome=\"allowed\"} 2"), "{metrics}");
}

#[tokio::test]
async fn an_unreachable_api_server_refuses_rather_than_lets_in() {
    let f = fixture();
    let (service, handle) = tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    drop(handle);
    let gate = auth::Gate::new(Client::new(service, "team"), auth::Permission { namespace: "team".into(), workspace: "payments".into() });
    let state = PortalState { access: Access::Kubernetes(Arc::new(gate)), ..f.state.clone() };
    let port = serve(state, false).await;
    let (status, _, _) = get_with(port, "/api/v1/workspace", "Authorization: Bearer alice-token\r\n").await;
    assert!(status.contains("503"), "{status}");
}

/// A raw request (the caller writes every header, Host included).
async fn raw(port: u16, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn only_the_configured_host_names_and_loopback_are_answered_but_probes_always_are() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    f.state.bindings_synced.store(true, Ordering::Relaxed);
    let state = PortalState { hosts: limits::AllowedHosts::new(["payments.portal.example".to_string()]), ..f.state.clone() };
    let port = serve(state, false).await;
    let ok = raw(port, "GET /api/v1/workspace HTTP/1.0\r\nHost: payments.portal.example\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
    assert!(get(port, "/").await.0.contains("200"), "localhost (a port-forward)");
    for path in ["/", "/api/v1/workspace", "/assets/portal.css"] {
        let refused = raw(port, &format!("GET {path} HTTP/1.0\r\nHost: attacker.example\r\n\r\n")).await;
        assert!(refused.starts_with("HTTP/1.0 421"), "{path}: {refused}");
        assert!(!refused.contains("payments"), "no data for a wrong host");
    }
    let probe = raw(port, "GET /readyz HTTP/1.0\r\nHost: 10.244.3.7:8080\r\n\r\n").await;
    assert!(probe.starts_with("HTTP/1.0 200"), "the kubelet probes by pod IP: {probe}");
}

#[tokio::test]
async fn live_streams_are_capped_and_end_when_the_pod_drains() {
    let mut f = fixture();
    apply(&mut f.ws, WORKSPACE);
    let state = PortalState { streams: limits::StreamLimits::new(1, 2), ..f.state.clone() };
    let port = serve(state.clone(), false).await;
    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    first.write_all(b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut first, &mut seen, "event: dashboard").await;
    let mut second = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    second.write_all(b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    read_until(&mut second, &mut String::new(), "event: dashboard").await;
    let (status, headers, body) = get(port, "/events").await;
    assert!(status.contains("429") && headers.contains("retry-after: 30"), "the pod's cap: {status} {headers}");
    assert!(body.contains("this portal serves 2 live connections"), "{body}");

    state.drain();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest)).await.expect("the stream ends on drain").unwrap();
    let (status, _, _) = get(port, "/events").await;
    assert!(status.contains("503"), "no new streams while draining: {status}");
    assert!(get(port, "/api/v1/workspace").await.0.contains("200"), "other requests are still answered until the server stops");
}
