//! End-to-end suite against a real API server (the local control plane from `e2e/cluster.sh`,
//! or any cluster KUBECONFIG points at). Ignored by a plain `cargo test`; `make e2e` runs it.

mod chart;
mod engine;
mod image;
mod notify;
mod policy;
mod portal;
mod portal_auth;
mod prometheus;
mod support;
mod tenancy;
mod webhook;

use hyperpage::api::conditions::{self, CREDENTIALS_VALID, PROGRESSING, READY};
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::time::{Duration, Instant};
use support::*;

const ROLLOUT: Duration = Duration::from_secs(90);

pub(crate) async fn setup() -> Client {
    let client = client().await;
    install_crds(&client).await;
    ensure_namespace(&client, LEASE_NAMESPACE).await;
    client
}

/// A namespace that enforces the "restricted" Pod Security Standard, so the API server's
/// own admission proves the portal pods meet it.
async fn restricted_namespace(client: &Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(client, prefix).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces.patch(&ns.name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    ns
}

fn workspace_yaml(name: &str, replicas: i32) -> String {
    format!("apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: {name}}}\nspec: {{portal: {{replicas: {replicas}}}}}\n")
}

async fn wait_ready(workspaces: &Api<Workspace>, name: &str) -> Workspace {
    wait_for(&format!("Workspace {name} to be Ready with a current observedGeneration"), ROLLOUT, || async {
        let ws = workspaces.get(name).await.ok()?;
        let status = ws.status.as_ref()?;
        let current = status.observed_generation == ws.metadata.generation;
        (current && conditions::is_true(&status.conditions, READY)).then_some(ws)
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn crds_are_established_and_explained() {
    let _serial = serial().await;
    setup().await;
    let explained = kubectl(&["explain", "workspace.spec.portal"]);
    assert!(explained.contains("replicas") && explained.contains("PodDisruptionBudget"), "{explained}");
    let explained = kubectl(&["explain", "toolbinding.spec.credentialsSecretRef"]);
    assert!(explained.contains("holds the API token") || explained.contains("hold the API token"), "{explained}");
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_api_server_refuses_every_invalid_spec_and_accepts_the_examples() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-validation").await;
    let mut files: Vec<_> = std::fs::read_dir(repo().join("e2e/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus has at least 15 invalid specs");
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("first line says what to expect");
        // Exactly what a person types, so the message checked is the one they would read.
        let file_arg = file.to_string_lossy();
        let output = kubectl_output(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &file_arg]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            wrong.push(format!("{}: accepted", file.display()));
        } else if !stderr.contains(expect) {
            wrong.push(format!("{}: expected {expect:?}, got: {stderr}", file.display()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let objects = documents(&std::fs::read_to_string(&path).unwrap());
            apply(&client, &ns.name, &objects, true).await.unwrap_or_else(|e| panic!("{} refused: {e}", path.display()));
        }
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn the_examples_become_a_ready_portal() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = restricted_namespace(&client, "e2e-examples").await;
    let _operator = Operator::start(OperatorOptions { identity: "examples", lease_name: "e2e-examples", extra: &[] });
    apply_examples(&client, &ns.name).await;

    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    let ws = wait_ready(&workspaces, "payments").await;
    let uid = ws.uid().unwrap();

    let owned_by_ws = |owners: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        owners.is_some_and(|o| o.iter().any(|r| r.uid == uid && r.controller == Some(true)))
    };
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(deployment.metadata.owner_references.as_ref()));
    assert_eq!(deployment.status.unwrap().available_replicas, Some(2), "kwok made both pods ready");
    let service = Api::<Service>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(service.metadata.owner_references.as_ref()));
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(sa.metadata.owner_references.as_ref()));
    let role = Api::<Role>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(role.metadata.owner_references.as_ref()));
    let rb = Api::<RoleBinding>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(rb.metadata.owner_references.as_ref()));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name).get("payments-portal").await.unwrap();
    assert!(owned_by_ws(pdb.metadata.owner_references.as_ref()), "2 replicas get a PDB");

    // All three bindings validate, and the workspace counts them.
    let ws = wait_for("the workspace to count 3 ready tools", Duration::from_secs(30), || async {
        let ws = workspaces.get("payments").await.ok()?;
        let tools = ws.status.as_ref()?.tools.clone()?;
        (tools.total == 3 && tools.ready == 3).then_some(ws)
    })
    .await;
    assert_eq!(ws.status.unwrap().portal.unwrap().ready_replicas, 2);

    let table = kubectl(&["get", "workspaces", "-n", &ns.name]);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "READY", "TOOLS", "PRS", "FAILING", "ISSUES", "LAST SYNC", "AGE"] {
        assert!(header.contains(column), "column {column} in {header:?}");
    }
    assert!(table.lines().nth(1).unwrap().contains("True"), "{table}");
    let table = kubectl(&["get", "hptb", "-n", &ns.name]);
    for column in ["WORKSPACE", "PROVIDER", "READY", "REMAINING", "LAST SYNC"] {
        assert!(table.contains(column), "column {column} in {table}");
    }
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_missing_secret_is_reported_and_its_creation_noticed() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-secret").await;
    let _operator = Operator::start(OperatorOptions { identity: "secret", lease_name: "e2e-secret", extra: &[] });
    apply_file(&client, &ns.name, &repo().join("examples/workspace.yaml")).await;
    apply_file(&client, &ns.name, &repo().join("examples/toolbinding-github.yaml")).await;

    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    let condition = |b: &ToolBinding, t: &str| {
        b.status.as_ref().and_then(|s| conditions::find(&s.conditions, t).map(|c| (c.status.clone(), c.reason.clone())))
    };
    wait_for("CredentialsValid=False SecretNotOptedIn", Duration::from_secs(30), || async {
        let b = bindings.get("github").await.ok()?;
        (condition(&b, CREDENTIALS_VALID)? == ("False".into(), "SecretNotOptedIn".into())).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for("a SecretNotOptedIn Warning event", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("SecretNotOptedIn")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("github")
            })
            .then_some(())
    })
    .await;

    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "github-token", "labels": {"hyperpage.dev/credential": "true"}},
        "stringData": {"token": "ghp_e2eNeverShownAnywhere"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name).create(&Default::default(), &secret).await.unwrap();
    let started = Instant::now();
    let binding = wait_for("CredentialsValid=True after the Secret appears", Duration::from_secs(30), || async {
        let b = bindings.get("github").await.ok()?;
        (condition(&b, CREDENTIALS_VALID)? == ("True".into(), "SecretFound".into())).then_some(b)
    })
    .await;
    eprintln!("CredentialsValid flipped {:?} after the Secret was created", started.elapsed());
    assert_eq!(condition(&binding, READY).unwrap().0, "True");
    let status = serde_json::to_string(&binding.status).unwrap();
    assert!(!status.contains("ghp_e2eNeverShownAnywhere"), "the token must not reach status");
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn workspace_changes_reach_the_children_and_deletion_collects_them() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = restricted_namespace(&client, "e2e-changes").await;
    let _operator = Operator::start(OperatorOptions { identity: "changes", lease_name: "e2e-changes", extra: &[] });
    apply_yaml(&client, &ns.name, &workspace_yaml("web", 1)).await;
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    wait_ready(&workspaces, "web").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    assert!(pdbs.get_opt("web-portal").await.unwrap().is_none(), "no PDB for one replica");

    let patch = serde_json::json!({"spec": {"portal": {"replicas": 3, "image": "ghcr.io/hyperpage-dev/hyperpage:e2e-2"}}});
    workspaces.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the Deployment to follow replicas and image", ROLLOUT, || async {
        let d = deployments.get("web-portal").await.ok()?;
        let spec = d.spec?;
        let image = spec.template.spec?.containers[0].image.clone()?;
        (spec.replicas == Some(3) && image == "ghcr.io/hyperpage-dev/hyperpage:e2e-2").then_some(())
    })
    .await;
    wait_for("a PDB for 3 replicas", Duration::from_secs(30), || async { pdbs.get_opt("web-portal").await.ok()?.map(|_| ()) }).await;
    wait_ready(&workspaces, "web").await;
    // During the surge a fourth pod may be ready; the rollout ends at exactly three.
    wait_for("the rollout to complete with 3 ready pods", ROLLOUT, || async {
        let status = workspaces.get("web").await.ok()?.status?;
        let done = conditions::find(&status.conditions, PROGRESSING)?.reason == "RolloutComplete";
        (done && status.portal?.ready_replicas == 3).then_some(())
    })
    .await;

    let patch = serde_json::json!({"spec": {"portal": {"replicas": 1}}});
    workspaces.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the PDB to go with replicas back at 1", Duration::from_secs(30), || async {
        pdbs.get_opt("web-portal").await.ok()?.is_none().then_some(())
    })
    .await;

    workspaces.delete("web", &DeleteParams::background()).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the garbage collector to remove every child", Duration::from_secs(60), || async {
        let gone = deployments.get_opt("web-portal").await.ok()?.is_none()
            && services.get_opt("web-portal").await.ok()?.is_none()
            && roles.get_opt("web-portal").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

async fn leader_of<'a>(a: &'a Operator, b: &'a Operator) -> (&'a Operator, &'a Operator) {
    wait_for("exactly one leader", Duration::from_secs(30), || async {
        let la = a.metric("hyperpage_leader ").await?;
        let lb = b.metric("hyperpage_leader ").await?;
        match (la as i64, lb as i64) {
            (1, 0) => Some((a, b)),
            (0, 1) => Some((b, a)),
            _ => None,
        }
    })
    .await
}

async fn wait_children(deployments: &Api<Deployment>, name: &str, within: Duration) -> Duration {
    let started = Instant::now();
    wait_for(&format!("Deployment {name}"), within + Duration::from_secs(30), || async {
        deployments.get_opt(name).await.ok()?.map(|_| ())
    })
    .await;
    started.elapsed()
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn one_leader_acts_and_a_standby_takes_over() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-leader").await;
    let lease = "e2e-failover";
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let _ = leases.delete(lease, &DeleteParams::default()).await;
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    let mut a = Operator::start(OperatorOptions { identity: "leader-a", lease_name: lease, extra: &[] });
    let mut b = Operator::start(OperatorOptions { identity: "leader-b", lease_name: lease, extra: &[] });
    let (first, _) = leader_of(&a, &b).await;
    let first_id = first.identity.clone();
    let holder = leases.get(lease).await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_eq!(holder, first_id);
    apply_yaml(&client, &ns.name, &workspace_yaml("one", 1)).await;
    wait_ready(&workspaces, "one").await;

    // SIGTERM: the leader releases the Lease and the standby acts at once.
    let (leader, standby) = if first_id == a.identity { (&mut a, &mut b) } else { (&mut b, &mut a) };
    leader.signal("TERM");
    let terminated = Instant::now();
    assert!(leader.wait_exit(Duration::from_secs(10)).success(), "a clean exit on SIGTERM");
    apply_yaml(&client, &ns.name, &workspace_yaml("two", 1)).await;
    wait_children(&deployments, "two-portal", Duration::from_secs(2)).await;
    let took_over = terminated.elapsed();
    eprintln!("takeover after SIGTERM: {took_over:?}");
    assert!(took_over <= Duration::from_secs(2), "the standby acted {took_over:?} after SIGTERM");
    assert_eq!(standby.metric("hyperpage_leader ").await, Some(1.0));

    // SIGKILL: no release; the standby waits for the Lease to expire (6s here).
    let audit_from = audit_log_size();
    let c = Operator::start(OperatorOptions { identity: "leader-c", lease_name: lease, extra: &[] });
    wait_for("leader-c to be a standby", Duration::from_secs(30), || async { (c.metric("hyperpage_leader ").await? == 0.0).then_some(()) })
        .await;
    standby.signal("KILL");
    let killed = Instant::now();
    standby.wait_exit(Duration::from_secs(10));
    apply_yaml(&client, &ns.name, &workspace_yaml("three", 1)).await;
    wait_children(&deployments, "three-portal", Duration::from_secs(8)).await;
    let took_over = killed.elapsed();
    eprintln!("takeover after SIGKILL: {took_over:?}");
    assert!(took_over <= Duration::from_secs(6 + 2), "the standby acted {took_over:?} after SIGKILL (lease 6s)");

    // A frozen leader (SIGSTOP: a partition, a long GC pause) is replaced, and when it wakes
    // up it makes no writes: its fence closed on its own clock.
    // The write counter of the frozen replica cannot tell: a request it sent just before the
    // freeze is counted when its answer is read after waking. The API server's audit log says
    // when each request arrived, so the check is "nothing from leader-c after leader-d took over".
    let d = Operator::start(OperatorOptions { identity: "leader-d", lease_name: lease, extra: &[] });
    wait_for("leader-d to be a standby", Duration::from_secs(30), || async { (d.metric("hyperpage_leader ").await? == 0.0).then_some(()) })
        .await;
    c.signal("STOP");
    wait_for("leader-d to take over from the frozen leader", Duration::from_secs(20), || async {
        (d.metric("hyperpage_leader ").await? == 1.0).then_some(())
    })
    .await;
    let lease_now = leases.get(lease).await.unwrap().spec.unwrap();
    assert_eq!(lease_now.holder_identity.as_deref(), Some("leader-d"));
    let taken_over = lease_now.acquire_time.expect("a taken Lease records its acquire time").0;
    apply_yaml(&client, &ns.name, &workspace_yaml("four", 1)).await;
    wait_ready(&workspaces, "four").await;
    c.signal("CONT");
    let patch = serde_json::json!({"spec": {"portal": {"replicas": 2}}});
    workspaces.patch("four", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the new leader to scale four", Duration::from_secs(30), || async {
        (deployments.get("four-portal").await.ok()?.spec?.replicas == Some(2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.metric("hyperpage_leader ").await, Some(0.0), "the woken replica knows it is deposed");
    if let Some(offset) = audit_from {
        let writes = operator_writes(&audit_events_since(offset), "leader-c");
        assert!(!writes.is_empty(), "the audit log records leader-c's writes while it led (else this check proves nothing)");
        let late: Vec<_> = writes.iter().filter(|(received, _)| *received >= taken_over).collect();
        assert!(late.is_empty(), "the deposed replica wrote after leader-d took over at {taken_over}: {late:#?}\n{}", c.log_tail());
        eprintln!("audit log: {} writes by leader-c while it led, none after the takeover", writes.len());
    } else {
        eprintln!("no audit log (KUBECONFIG cluster): the deposed replica's writes are not checked");
    }
    drop(d);
    drop(c);
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn converged_workspaces_cost_zero_writes() {
    let _serial = serial().await;
    let client = setup().await;
    let ns = TestNamespace::create(&client, "e2e-quiet").await;
    let mut operator = Operator::start(OperatorOptions { identity: "quiet", lease_name: "e2e-quiet", extra: &["--resync", "2s"] });
    apply_file(&client, &ns.name, &repo().join("examples/secret-template.yaml")).await;
    for name in ["alpha", "beta", "gamma"] {
        apply_yaml(&client, &ns.name, &workspace_yaml(name, 2)).await;
    }
    apply_file(&client, &ns.name, &repo().join("examples/toolbinding-github.yaml")).await;
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    for name in ["alpha", "beta", "gamma"] {
        wait_ready(&workspaces, name).await;
    }
    // Let the last status writes and their echoes settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(operator.writes().await.unwrap() > 0.0, "the operator did write while converging");

    let offset = audit_log_size();
    let writes_before = operator.writes().await.unwrap();
    let reconciles_before = operator.metric("hyperpage_reconcile_total{controller=\"workspace\"}").await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let reconciles = operator.metric("hyperpage_reconcile_total{controller=\"workspace\"}").await.unwrap() - reconciles_before;
    assert!(reconciles >= 6.0, "three workspaces resynced at least twice each ({reconciles} reconciles)");
    assert_eq!(operator.writes().await.unwrap(), writes_before, "no writes counted by the operator");

    if let Some(offset) = offset {
        let writes: Vec<String> = operator_writes(&audit_events_since(offset), "quiet").into_iter().map(|(_, w)| w).collect();
        assert!(writes.is_empty(), "the API server's audit log shows writes by a converged operator:\n{}", writes.join("\n"));
        eprintln!("audit log: zero mutating requests (leases aside) over {reconciles} reconciles");
    }

    // A new process knows only what the API server stores: a child stored differently from
    // how it was applied (a default inside a field the operator owns whole) would be applied
    // again by every new leader. It must find everything converged too.
    operator.signal("TERM");
    assert!(operator.wait_exit(Duration::from_secs(10)).success(), "a clean exit on SIGTERM");
    let offset = audit_log_size();
    let restarted = Operator::start(OperatorOptions { identity: "quiet-again", lease_name: "e2e-quiet", extra: &["--resync", "2s"] });
    wait_for("the restarted operator to look at every workspace twice", Duration::from_secs(60), || async {
        (restarted.metric("hyperpage_reconcile_total{controller=\"workspace\"}").await? >= 6.0).then_some(())
    })
    .await;
    assert_eq!(restarted.writes().await, Some(0.0), "no writes counted by the restarted operator");
    if let Some(offset) = offset {
        let writes: Vec<String> = operator_writes(&audit_events_since(offset), "quiet-again").into_iter().map(|(_, w)| w).collect();
        assert!(writes.is_empty(), "a restarted operator wrote to converged workspaces:\n{}", writes.join("\n"));
    }
}
