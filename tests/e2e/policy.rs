//! Tenant isolation on the Workspace side: the admin policy refuses escalations (and applies
//! nothing refused), objects the operator does not own are never adopted, and the portal's
//! NetworkPolicy admits only the namespaces it should.

use crate::support::*;
use hyperpage::api::Workspace;
use hyperpage::api::conditions::{self, DEGRADED, READY};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// (status, reason, message) of a Workspace's condition.
fn condition(ws: &Workspace, type_: &str) -> Option<(String, String, String)> {
    let c = conditions::find(&ws.status.as_ref()?.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the Workspace's current generation reports `type_` with `status`/`reason`;
/// returns the message.
async fn wait_condition(workspaces: &Api<Workspace>, name: &str, type_: &str, status: &str, reason: &str) -> String {
    wait_for(&format!("Workspace {name}: {type_}={status} {reason}"), WAIT, || async {
        let ws = workspaces.get(name).await.ok()?;
        let current = ws.status.as_ref()?.observed_generation == ws.metadata.generation;
        let (s, r, message) = condition(&ws, type_)?;
        (current && s == status && r == reason).then_some(message)
    })
    .await
}

/// Waits for a Warning Event with `reason` about Workspace `name`.
async fn wait_event(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("a {reason} Warning Event about {name}"), WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let ours = e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.involved_object.name.as_deref() == Some(name)
                && e.involved_object.kind.as_deref() == Some("Workspace");
            ours.then(|| e.message.unwrap_or_default())
        })
    })
    .await
}

fn workspace(name: &str, portal: serde_json::Value) -> String {
    let object = serde_json::json!({
        "apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": name}, "spec": {"portal": portal},
    });
    serde_json::to_string(&object).unwrap()
}

fn access_mode(deployment: &Deployment) -> Option<String> {
    let container = &deployment.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    container.env.as_ref()?.iter().find(|e| e.name == "HYPERPAGE_ACCESS_MODE")?.value.clone()
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_policy_refuses_escalations_and_applies_nothing_refused() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-policy").await;
    // The default policy, plus one allowed host suffix so that the TLS rule is what refuses
    // a plain-HTTP Ingress.
    let strict_args = ["--policy-ingress-host-suffixes={namespace}.example.test"];
    let strict = Operator::start(OperatorOptions { identity: "policy-strict", lease_name: "e2e-policy-strict", extra: &strict_args });
    let host = |name: &str| format!("{name}.{}.example.test", ns.name);
    let tls = |name: &str| serde_json::json!({"host": host(name), "tlsSecretName": "portal-tls"});
    let cases = [
        ("lb", serde_json::json!({"service": {"type": "LoadBalancer"}}), "policy.allowedServiceTypes", "LoadBalancer".to_string()),
        ("foreign", serde_json::json!({"image": "docker.io/evil/portal:1"}), "policy.allowedImages", "docker.io/evil/portal:1".into()),
        (
            "wild",
            serde_json::json!({"ingress": {"host": format!("*.{}.example.test", ns.name), "tlsSecretName": "t"}}),
            "no wildcard hosts",
            "*.".into(),
        ),
        ("plain", serde_json::json!({"ingress": {"host": host("plain")}}), "policy.ingress.allowWithoutTLS", "tlsSecretName".into()),
        (
            "other-team",
            serde_json::json!({"ingress": {"host": "portal.team-b.example.test", "tlsSecretName": "t"}}),
            "policy.ingress.allowedHostSuffixes",
            "portal.team-b.example.test".into(),
        ),
        ("public", serde_json::json!({"access": {"mode": "public"}}), "policy.allowPublicPortals", "public".into()),
    ];
    for (name, portal, _, _) in &cases {
        apply_yaml(&client, &ns.name, &workspace(name, portal.clone())).await;
    }
    apply_yaml(&client, &ns.name, &workspace("fine", serde_json::json!({"ingress": tls("fine")}))).await;

    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    for (name, _, rule, value) in &cases {
        let message = wait_condition(&workspaces, name, READY, "False", "PolicyViolation").await;
        assert!(message.contains(rule) && message.contains(value.as_str()), "{name}: the message names {rule} and {value}: {message}");
        let event = wait_event(&client, &ns.name, name, "PolicyViolation").await;
        assert!(event.contains(rule), "{name}: the Event says why: {event}");
    }
    wait_condition(&workspaces, "fine", READY, "True", "PortalAvailable").await;

    // Nothing refused exists; the rest of each portal does.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    assert!(services.get_opt("lb-portal").await.unwrap().is_none(), "no LoadBalancer Service");
    assert!(deployments.get_opt("lb-portal").await.unwrap().is_some(), "the rest of lb's portal is applied");
    assert!(deployments.get_opt("foreign-portal").await.unwrap().is_none(), "no Deployment running the foreign image");
    for name in ["wild", "plain", "other-team"] {
        assert!(ingresses.get_opt(&format!("{name}-portal")).await.unwrap().is_none(), "no Ingress for {name}");
        assert!(services.get_opt(&format!("{name}-portal")).await.unwrap().is_some(), "{name} keeps its in-cluster Service");
    }
    let public = deployments.get("public-portal").await.unwrap();
    assert_eq!(access_mode(&public).as_deref(), Some("kubernetes"), "a refused public portal runs with sign-in");
    let fine = ingresses.get("fine-portal").await.unwrap();
    assert_eq!(fine.spec.unwrap().tls.unwrap()[0].hosts.as_deref(), Some(&[host("fine")][..]));
    drop(strict);

    // The platform allows them: each works.
    let open_args = [
        "--policy-ingress-host-suffixes={namespace}.example.test,example.test",
        "--policy-allowed-service-types=ClusterIP,LoadBalancer",
        "--policy-allowed-images=ghcr.io/hyperpage-dev/hyperpage,docker.io/evil/",
        "--policy-ingress-allow-without-tls=true",
        "--allow-public-portals=true",
        r#"--policy-ingress-annotations={"cert-manager.io/cluster-issuer":"e2e-issuer"}"#,
    ];
    let open = Operator::start(OperatorOptions { identity: "policy-open", lease_name: "e2e-policy-open", extra: &open_args });
    for name in ["lb", "foreign", "plain", "other-team", "public"] {
        wait_condition(&workspaces, name, READY, "True", "PortalAvailable").await;
    }
    let message = wait_condition(&workspaces, "wild", READY, "False", "PolicyViolation").await;
    assert!(message.contains("no wildcard hosts"), "wildcards stay refused: {message}");
    assert_eq!(services.get("lb-portal").await.unwrap().spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let foreign = deployments.get("foreign-portal").await.unwrap();
    assert_eq!(foreign.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("docker.io/evil/portal:1"));
    let plain = ingresses.get("plain-portal").await.unwrap();
    assert_eq!(plain.annotations().get("cert-manager.io/cluster-issuer").map(String::as_str), Some("e2e-issuer"));
    wait_for("the public portal to run in public mode", WAIT, || async {
        (access_mode(&deployments.get("public-portal").await.ok()?)? == "public").then_some(())
    })
    .await;
    drop(open);

    // The platform tightens its policy again: what is exposed by an Ingress it no longer
    // allows is removed at once, and a public portal goes back to sign-in.
    let strict =
        Operator::start(OperatorOptions { identity: "policy-strict-again", lease_name: "e2e-policy-strict-again", extra: &strict_args });
    wait_condition(&workspaces, "plain", READY, "False", "PolicyViolation").await;
    wait_for("the refused Ingress to be removed", WAIT, || async { ingresses.get_opt("plain-portal").await.ok()?.is_none().then_some(()) })
        .await;
    wait_for("the public portal to require sign-in again", WAIT, || async {
        (access_mode(&deployments.get("public-portal").await.ok()?)? == "kubernetes").then_some(())
    })
    .await;
    drop(strict);
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_foreign_object_with_a_childs_name_is_never_adopted() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-adopt").await;
    let _operator = Operator::start(OperatorOptions { identity: "adopt", lease_name: "e2e-adopt", extra: &[] });
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "x-portal", "labels": {"app": "someone-else"}},
        "spec": {"selector": {"app": "someone-else"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let before = services.create(&PostParams::default(), &theirs).await.unwrap();

    apply_yaml(&client, &ns.name, &workspace("x", serde_json::json!({"replicas": 1}))).await;
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    let message = wait_condition(&workspaces, "x", DEGRADED, "True", "NameConflict").await;
    assert!(message.contains("Service/x-portal"), "the condition names the object: {message}");
    let event = wait_event(&client, &ns.name, "x", "NameConflict").await;
    assert!(event.contains("Service/x-portal"), "{event}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("x-portal").await.unwrap().is_none(), "nothing of x is applied while its name is taken");

    let unchanged = |after: &Service| {
        assert_eq!(after.resource_version(), before.resource_version(), "never written to");
        assert_eq!(after.spec, before.spec);
        assert_eq!(after.metadata.labels, before.metadata.labels);
        assert!(after.metadata.owner_references.is_none(), "no owner reference added: {:?}", after.metadata.owner_references);
    };
    unchanged(&services.get("x-portal").await.unwrap());

    workspaces.delete("x", &DeleteParams::background()).await.unwrap();
    wait_for("Workspace x to be gone", WAIT, || async { workspaces.get_opt("x").await.ok()?.is_none().then_some(()) }).await;
    // The garbage collector had nothing of x to collect; give it time to prove it.
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), &ns.name);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(roles.get_opt("x-portal").await.unwrap().is_none());
    unchanged(&services.get("x-portal").await.expect("the foreign Service survives the Workspace's deletion"));
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_portal_network_policy_admits_only_its_namespace_and_the_ingress_controller() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-netpol").await;
    let args = ["--ingress-controller-namespace=e2e-ingress-nginx"];
    let _operator = Operator::start(OperatorOptions { identity: "netpol", lease_name: "e2e-netpol", extra: &args });
    apply_yaml(&client, &ns.name, &workspace("np", serde_json::json!({"replicas": 1}))).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let applied = wait_for("the portal's NetworkPolicy", WAIT, || async { policies.get_opt("np-portal").await.ok()? }).await;

    // What the API server makes of it (validation and defaults) through a server-side dry
    // run, then read the sources it admits.
    let mut object = applied.clone();
    object.metadata.managed_fields = None;
    object.metadata.resource_version = None;
    let mut params = PatchParams::apply(MANAGER).force();
    params.dry_run = true;
    let stored = policies.patch("np-portal", &params, &Patch::Apply(&object)).await.unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let mut sources: Vec<String> = rules[0]
        .from
        .as_ref()
        .expect("a from clause: not every pod of the cluster")
        .iter()
        .map(|peer| {
            assert!(peer.pod_selector.is_none() && peer.ip_block.is_none(), "{peer:?}");
            let selector = peer.namespace_selector.as_ref().expect("namespaces only");
            assert!(selector.match_expressions.is_none());
            let labels = selector.match_labels.as_ref().unwrap();
            assert_eq!(labels.len(), 1);
            labels["kubernetes.io/metadata.name"].clone()
        })
        .collect();
    sources.sort();
    let mut expected = vec![ns.name.clone(), "e2e-ingress-nginx".to_string()];
    expected.sort();
    assert_eq!(sources, expected);
    assert_eq!(rules[0].ports.as_ref().unwrap()[0].port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)));
}
