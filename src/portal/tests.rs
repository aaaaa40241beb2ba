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
    let state = PortalState::new("team".into(), "payments".into(), workspaces, bindings);
    Fixture { state, ws, tb }
}

fn apply<K: Clone + kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned>(writer: &mut Writer<K>, yaml: &str) {
    let mut object: K = serde_norway::from_str(yaml).unwrap();
    trim(&mut object);
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

async fn serve(state: PortalState, api_only: bool) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router(state, api_only)).await.unwrap() });
    port
}

/// (status line, headers, body) of a plain HTTP/1.0 GET.
async fn get(port: u16, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
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

    let (_, _, metrics) = get(port, "/metrics").await;
    assert!(metrics.contains("hyperpage_portal_requests_total{route=\"api_workspace\"} 2"), "{metrics}");
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
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET /events HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "No ToolBindings reference this workspace").await;
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: dashboard"), "{seen}");

    apply(&mut f.tb, BINDING);
    f.state.notify();
    read_until(&mut stream, &mut seen, "data-binding=\"github\"").await;
    let (_, _, metrics) = get(port, "/metrics").await;
    assert!(metrics.contains("hyperpage_portal_live_clients 1"), "{metrics}");
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
}
