//! The reconcilers against a scripted API server (tower-test): every request they send is
//! recorded, so the tests can say exactly which writes happen, and that none happen when
//! nothing changed or when this replica is not the leader.

use super::cached::{self, Cached};
use super::child_cache::ChildCache;
use super::children::{self, BuildConfig};
use super::context::{Context, Stores};
use super::error::Error;
use super::{toolbinding, workspace};
use crate::api::conditions::{self, CREDENTIALS_VALID, READY};
use crate::api::{ToolBinding, Workspace};
use crate::lease::Fence;
use crate::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

type Responder = Box<dyn Fn(&Method, &str, &Value) -> (StatusCode, Value) + Send + Sync>;

/// Answers like a well-behaved API server: applies echo the object back, creates succeed.
fn default_responder() -> Responder {
    Box::new(|method, path, body| {
        if *method == Method::GET && path.ends_with("/secrets") {
            return (StatusCode::OK, secret_list(&[]));
        }
        if *method == Method::GET {
            let name = path.rsplit('/').next().unwrap_or_default();
            return (StatusCode::NOT_FOUND, not_found(name));
        }
        if *method == Method::POST {
            return (StatusCode::CREATED, body.clone());
        }
        (StatusCode::OK, echo(path, body))
    })
}

/// What the API server returns for an apply: the object, with its identity filled in. A
/// status apply carries only the status, so the spec comes from the fixtures.
fn echo(path: &str, body: &Value) -> Value {
    let mut object = body.clone();
    let segments: Vec<&str> = path.trim_end_matches("/status").split('/').collect();
    let (namespace, name) = (segments[segments.len() - 3], segments[segments.len() - 1]);
    if object.get("metadata").is_none() {
        object["metadata"] = json!({"name": name, "namespace": namespace});
    }
    if object.get("spec").is_none() {
        if path.contains("/workspaces/") {
            object["spec"] = serde_json::to_value(workspace_fixture().spec).unwrap();
        } else if path.contains("/toolbindings/") {
            object["spec"] = serde_json::to_value(binding_fixture().spec).unwrap();
        }
    }
    object
}

/// A LIST answer (the credential reader selects Secrets by label and name).
fn secret_list(items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn not_found(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("\"{name}\" not found")})
}

struct FakeApi {
    requests: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Mutex<Responder>>,
}

impl FakeApi {
    fn start() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responder = Arc::new(Mutex::new(default_responder()));
        let (req_log, resp) = (requests.clone(), responder.clone());
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_string();
                let (status, answer) = (resp.lock().unwrap())(&parts.method, &path, &body);
                req_log.lock().unwrap().push(Recorded {
                    method: parts.method.clone(),
                    path,
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body,
                });
                let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), FakeApi { requests, responder })
    }

    fn respond_with(&self, responder: Responder) {
        *self.responder.lock().unwrap() = responder;
    }

    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

fn writes(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.method != Method::GET).collect()
}

/// Writers for every cache, so a test can say what the watches have seen.
struct Caches {
    workspaces: Writer<Workspace>,
    deployments: ChildCache<Deployment>,
    services: ChildCache<k8s_openapi::api::core::v1::Service>,
    service_accounts: ChildCache<k8s_openapi::api::core::v1::ServiceAccount>,
    roles: ChildCache<k8s_openapi::api::rbac::v1::Role>,
    role_bindings: ChildCache<k8s_openapi::api::rbac::v1::RoleBinding>,
    network_policies: ChildCache<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

fn context(client: Client, fence: Fence) -> (Arc<Context>, Caches) {
    let (workspaces, ws_w) = reflector::store();
    let (bindings, _tb_w) = reflector::store();
    let (deployments, services, service_accounts) = (ChildCache::new(1), ChildCache::new(1), ChildCache::new(1));
    let (roles, role_bindings, network_policies) = (ChildCache::new(1), ChildCache::new(1), ChildCache::new(1));
    let (ingresses, pod_disruption_budgets) = (ChildCache::new(1), ChildCache::new(1));
    let stores = Stores {
        workspaces,
        bindings,
        bindings_by_workspace: Default::default(),
        deployments: deployments.clone(),
        services: services.clone(),
        service_accounts: service_accounts.clone(),
        roles: roles.clone(),
        role_bindings: role_bindings.clone(),
        network_policies: network_policies.clone(),
        ingresses,
        pod_disruption_budgets,
    };
    let build = BuildConfig::new("ghcr.io/hyperpage-dev/hyperpage:0.1.0");
    let ctx = Arc::new(Context::new(client, stores, build, fence, Metrics::new(), Duration::from_secs(600)));
    let caches = Caches { workspaces: ws_w, deployments, services, service_accounts, roles, role_bindings, network_policies };
    (ctx, caches)
}

fn seen<K: Resource + Clone>(writer: &mut Writer<K>, object: K)
where
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

fn seen_child<K: Resource<DynamicType = ()>>(cache: &ChildCache<K>, object: Cached<K>) {
    cache.follow("", watcher::Event::Apply(object));
}

fn workspace_fixture() -> Workspace {
    serde_norway::from_str(include_str!("../../tests/fixtures/workspace-basic.yaml")).unwrap()
}

fn binding_fixture() -> ToolBinding {
    serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap()
}

/// The children as the API server would return them after an apply: what we sent plus
/// server-side defaults.
fn converge_children(ws: &Workspace, ctx: &Context, caches: &mut Caches, available: i32) {
    let c = children::build(ws, &ctx.build);
    seen_child(&caches.service_accounts, Cached::new(&c.service_account));
    seen_child(&caches.roles, Cached::new(&c.role));
    seen_child(&caches.role_bindings, Cached::new(&c.role_binding));
    let mut deployment = c.deployment;
    deployment.metadata.generation = Some(1);
    deployment.metadata.resource_version = Some("42".into());
    deployment.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": available, "availableReplicas": available
        }))
        .unwrap(),
    );
    seen_child(&caches.deployments, Cached::new(&deployment));
    let mut service = c.service.clone();
    service.spec.as_mut().unwrap().cluster_ip = Some("10.96.12.34".into());
    seen_child(&caches.services, cached::as_applied(&service, &c.service));
    seen_child(&caches.network_policies, Cached::new(&c.network_policy));
}

/// The status the operator would write for what the caches hold now.
fn status_as_observed(ws: &Workspace, ctx: &Context) -> crate::api::WorkspaceStatus {
    let observed = workspace::observe(ws, ctx);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    workspace::compute_status(ws, observed.deployment.as_deref(), &observed.bindings, &Default::default(), &now)
}

fn condition_in(body: &Value, type_: &str) -> (String, String) {
    let c = body["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap();
    (c["status"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn first_reconcile_applies_every_child_and_reports_progress() {
    let (client, api) = FakeApi::start();
    let (ctx, _caches) = context(client, Fence::always_open());
    let ws = Arc::new(workspace_fixture());

    workspace::reconcile(ws, ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    let applied: Vec<_> =
        requests.iter().filter(|r| r.method == Method::PATCH && !r.path.ends_with("/status")).map(|r| r.path.as_str()).collect();
    assert_eq!(
        applied,
        [
            "/api/v1/namespaces/team-payments/serviceaccounts/payments-portal",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team-payments/roles/payments-portal",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team-payments/rolebindings/payments-portal",
            "/apis/apps/v1/namespaces/team-payments/deployments/payments-portal",
            "/api/v1/namespaces/team-payments/services/payments-portal",
            "/apis/networking.k8s.io/v1/namespaces/team-payments/networkpolicies/payments-portal",
        ]
    );
    for r in requests.iter().filter(|r| r.method == Method::PATCH) {
        assert!(r.query.contains("fieldManager=hyperpage-operator") && r.query.contains("force=true"), "server-side apply: {}", r.query);
    }
    // Each name the caches lack was read once before, from the API server's watch cache.
    let reads: Vec<_> = requests.iter().filter(|r| r.method == Method::GET && r.path.ends_with("/payments-portal")).collect();
    assert_eq!(reads.len(), applied.len(), "one read per child: {:?}", reads.iter().map(|r| &r.path).collect::<Vec<_>>());
    assert!(reads.iter().all(|r| r.query.contains("resourceVersion=0")), "{:?}", reads.iter().map(|r| &r.query).collect::<Vec<_>>());
    let status = requests.iter().find(|r| r.path.ends_with("/workspaces/payments/status")).expect("status written");
    assert_eq!(condition_in(&status.body, READY), ("False".into(), "Creating".into()));
    assert_eq!(status.body["status"]["observedGeneration"], 1);
    assert!(requests.iter().all(|r| !r.path.contains("/events")), "a new Workspace's first rollout is no Event");
}

#[tokio::test]
async fn a_converged_workspace_costs_zero_writes_on_resync() {
    let (client, api) = FakeApi::start();
    let (ctx, mut caches) = context(client, Fence::always_open());
    let mut ws = workspace_fixture();
    converge_children(&ws, &ctx, &mut caches, 1);
    ws.status = Some(status_as_observed(&ws, &ctx));
    seen(&mut caches.workspaces, ws.clone());

    for _ in 0..3 {
        workspace::reconcile(Arc::new(ws.clone()), ctx.clone()).await.unwrap();
        ctx.events_sent().await;
    }

    assert!(writes(&api.take()).is_empty(), "a converged workspace must not be written to");
}

#[tokio::test]
async fn drift_in_a_child_is_repaired_with_one_apply() {
    let (client, api) = FakeApi::start();
    let (ctx, mut caches) = context(client, Fence::always_open());
    let mut ws = workspace_fixture();
    converge_children(&ws, &ctx, &mut caches, 1);
    ws.status = Some(status_as_observed(&ws, &ctx));
    // Someone edits the Service by hand.
    let mut service = children::build(&ws, &ctx.build).service;
    service.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    service.metadata.uid = Some("5e7c1c5e-0000-4000-8000-00000000000a".into());
    seen_child(&caches.services, Cached::new(&service));

    workspace::reconcile(Arc::new(ws), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let w = api.take();
    let paths: Vec<_> = writes(&w).iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/api/v1/namespaces/team-payments/services/payments-portal"]);
    // Applied only over that very object: its uid is the apply's precondition.
    assert_eq!(writes(&w)[0].body["metadata"]["uid"], "5e7c1c5e-0000-4000-8000-00000000000a");
}

#[tokio::test]
async fn an_available_deployment_makes_the_workspace_ready() {
    let (client, api) = FakeApi::start();
    let (ctx, mut caches) = context(client, Fence::always_open());
    let mut ws = workspace_fixture();
    converge_children(&ws, &ctx, &mut caches, 0);
    // First pass: pods not ready yet.
    ws.status = Some(status_as_observed(&ws, &ctx));
    assert!(!conditions::is_true(&ws.status.as_ref().unwrap().conditions, READY));

    // kubelet (kwok) marks the pod ready; the Deployment reports it.
    converge_children(&ws, &ctx, &mut caches, 1);
    workspace::reconcile(Arc::new(ws), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    let w = writes(&requests);
    let status = w.iter().find(|r| r.path.ends_with("/status")).expect("status written");
    assert_eq!(condition_in(&status.body, READY), ("True".into(), "PortalAvailable".into()));
    assert_eq!(status.body["status"]["portal"]["readyReplicas"], 1);
    assert_eq!(
        w.len(),
        1,
        "only the status: the end of the first rollout is no Event: {:?}",
        w.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_portal_that_was_available_reports_its_outage_and_its_recovery() {
    let (client, api) = FakeApi::start();
    let (ctx, mut caches) = context(client, Fence::always_open());
    let mut ws = workspace_fixture();
    converge_children(&ws, &ctx, &mut caches, 1);
    ws.status = Some(status_as_observed(&ws, &ctx));
    assert!(conditions::is_true(&ws.status.as_ref().unwrap().conditions, READY));

    let mut reasons = Vec::new();
    for available in [0, 1] {
        converge_children(&ws, &ctx, &mut caches, available);
        workspace::reconcile(Arc::new(ws.clone()), ctx.clone()).await.unwrap();
        ctx.events_sent().await;
        ws.status = Some(status_as_observed(&ws, &ctx));
        let requests = api.take();
        let events: Vec<_> = writes(&requests).into_iter().filter(|r| r.path.contains("/events")).collect();
        assert_eq!(events.len(), 1, "one Event per change of Ready once the portal was available");
        reasons.push((events[0].body["reason"].clone(), events[0].body["type"].clone()));
    }
    assert_eq!(reasons, [(json!("RollingOut"), json!("Normal")), (json!("PortalAvailable"), json!("Normal"))]);
}

#[tokio::test]
async fn a_missing_secret_then_its_arrival_flip_credentials_valid() {
    let (client, api) = FakeApi::start();
    let (ctx, mut caches) = context(client, Fence::always_open());
    seen(&mut caches.workspaces, workspace_fixture());
    let mut binding = binding_fixture();

    toolbinding::reconcile(Arc::new(binding.clone()), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    // The Secret is asked for only through a LIST selecting the credential label: an
    // unlabelled Secret never reaches the operator.
    assert_eq!(requests[0].method, Method::GET);
    assert_eq!(requests[0].path, "/api/v1/namespaces/team-payments/secrets");
    assert!(requests[0].query.contains("labelSelector=hyperpage.dev%2Fcredential%3Dtrue"), "{}", requests[0].query);
    assert!(requests[0].query.contains("fieldSelector=metadata.name%3Dgithub-token"), "{}", requests[0].query);
    let status = requests.iter().find(|r| r.path.ends_with("/toolbindings/github/status")).expect("status written");
    assert_eq!(condition_in(&status.body, CREDENTIALS_VALID), ("False".into(), "SecretNotOptedIn".into()));
    assert_eq!(condition_in(&status.body, READY), ("False".into(), "SecretNotOptedIn".into()));
    let event = requests.iter().find(|r| r.path.contains("/events")).expect("a warning event");
    assert_eq!((event.body["type"].as_str(), event.body["reason"].as_str()), (Some("Warning"), Some("SecretNotOptedIn")));
    binding.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());

    // The Secret is created, opted in.
    api.respond_with(Box::new(|method, path, body| {
        if *method == Method::GET && path.ends_with("/secrets") {
            return (
                StatusCode::OK,
                secret_list(&[json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "github-token", "namespace": "team-payments", "labels": {"hyperpage.dev/credential": "true"}},
                "data": {"token": "Z2hwX3NlY3JldHRva2Vu"}})]),
            );
        }
        if *method == Method::POST {
            return (StatusCode::CREATED, body.clone());
        }
        (StatusCode::OK, echo(path, body))
    }));
    toolbinding::reconcile(Arc::new(binding.clone()), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    assert!(requests.iter().all(|r| !r.path.contains("/secrets/")), "no GET of a named Secret");
    let status = requests.iter().find(|r| r.path.ends_with("/status")).expect("status written");
    assert_eq!(condition_in(&status.body, CREDENTIALS_VALID), ("True".into(), "SecretFound".into()));
    assert_eq!(condition_in(&status.body, READY), ("True".into(), "Configured".into()));
    let events: Vec<_> = requests.iter().filter(|r| r.path.contains("/events")).collect();
    assert_eq!(events.len(), 1, "one Event for the binding becoming ready");
    assert_eq!((events[0].body["type"].as_str(), events[0].body["reason"].as_str()), (Some("Normal"), Some("Configured")));
    for r in &requests {
        assert!(
            !r.body.to_string().contains("ghp_secrettoken") && !r.body.to_string().contains("Z2hwX3NlY3JldHRva2Vu"),
            "the token leaked into {}",
            r.path
        );
    }

    // Nothing changes on the next resync.
    binding.status = Some(serde_json::from_value(status.body["status"].clone()).unwrap());
    toolbinding::reconcile(Arc::new(binding), ctx.clone()).await.unwrap();
    ctx.events_sent().await;
    assert!(writes(&api.take()).is_empty());
}

#[tokio::test]
async fn a_replica_that_lost_leadership_makes_no_writes() {
    let (client, api) = FakeApi::start();
    let fence = Fence::always_open();
    let (ctx, mut caches) = context(client, fence.clone());
    seen(&mut caches.workspaces, workspace_fixture());
    fence.close();

    let result = workspace::reconcile(Arc::new(workspace_fixture()), ctx.clone()).await;
    ctx.events_sent().await;
    assert!(matches!(result, Err(Error::NotLeader)), "{result:?}");
    let result = toolbinding::reconcile(Arc::new(binding_fixture()), ctx.clone()).await;
    ctx.events_sent().await;
    assert!(matches!(result, Err(Error::NotLeader)), "{result:?}");

    assert!(writes(&api.take()).is_empty(), "no writes after losing the lease");
}

#[tokio::test]
async fn an_object_in_the_way_is_never_applied_over() {
    let (client, api) = FakeApi::start();
    let (ctx, _caches) = context(client, Fence::always_open());
    // Someone's own Service already has the portal's name: no managed-by label, no owner.
    api.respond_with(Box::new(|method, path, body| {
        if *method == Method::GET && path.ends_with("/services/payments-portal") {
            return (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "payments-portal", "namespace": "team-payments", "labels": {"app": "theirs"}},
                       "spec": {"ports": [{"port": 80}]}}),
            );
        }
        if *method == Method::GET {
            return (StatusCode::NOT_FOUND, not_found(path.rsplit('/').next().unwrap_or_default()));
        }
        if *method == Method::POST {
            return (StatusCode::CREATED, body.clone());
        }
        (StatusCode::OK, echo(path, body))
    }));

    workspace::reconcile(Arc::new(workspace_fixture()), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    let w = writes(&requests);
    let paths: Vec<_> = w.iter().map(|r| r.path.as_str()).collect();
    assert!(w.iter().all(|r| r.path.ends_with("/status") || r.path.contains("/events")), "no child is applied: {paths:?}");
    let status = w.iter().find(|r| r.path.ends_with("/status")).expect("status written");
    assert_eq!(condition_in(&status.body, conditions::DEGRADED), ("True".into(), "NameConflict".into()));
    let event = w.iter().find(|r| r.path.contains("/events")).expect("a warning event");
    assert_eq!((event.body["type"].as_str(), event.body["reason"].as_str()), (Some("Warning"), Some("NameConflict")));
    assert!(event.body["note"].as_str().unwrap().contains("Service/payments-portal"), "{}", event.body);
}

#[tokio::test]
async fn a_policy_violation_applies_only_what_is_allowed() {
    let (client, api) = FakeApi::start();
    let (ctx, _caches) = context(client, Fence::always_open());
    let ws: Workspace = serde_norway::from_str(include_str!("../../tests/fixtures/workspace-ha-ingress.yaml")).unwrap();

    workspace::reconcile(Arc::new(ws), ctx.clone()).await.unwrap();
    ctx.events_sent().await;

    let requests = api.take();
    let applied: Vec<_> = requests
        .iter()
        .filter(|r| r.method == Method::PATCH && !r.path.ends_with("/status"))
        .map(|r| r.path.rsplit('/').nth(1).unwrap())
        .collect();
    assert_eq!(
        applied,
        ["serviceaccounts", "roles", "rolebindings", "networkpolicies", "poddisruptionbudgets"],
        "no foreign image, LoadBalancer or Ingress"
    );
    let status = requests.iter().find(|r| r.path.ends_with("/status")).expect("status written");
    assert_eq!(condition_in(&status.body, READY), ("False".into(), "PolicyViolation".into()));
}

#[test]
fn bindings_hear_of_a_workspace_only_when_its_spec_changes() {
    let mut changes = super::SpecChanges::default();
    let uid = |u: &str| Some(u.to_string());
    assert!(changes.changed("team/a".into(), uid("1"), Some(1)), "a Workspace seen for the first time");
    assert!(!changes.changed("team/a".into(), uid("1"), Some(1)), "a status write keeps the generation");
    assert!(changes.changed("team/b".into(), uid("2"), Some(1)), "another Workspace");
    assert!(changes.changed("team/a".into(), uid("1"), Some(2)), "a new spec");
    assert!(!changes.changed("team/a".into(), uid("1"), Some(2)));
    // Deleted and re-created under the same name before a prune: generation 1 again.
    assert!(changes.changed("team/b".into(), uid("3"), Some(1)), "a re-created Workspace is new");
    changes.prune(|key| key == "team/a");
    assert!(changes.changed("team/b".into(), uid("3"), Some(1)), "a deleted Workspace is forgotten");
}
