//! Pure builders: a Workspace in, the objects that make up its portal out.
//!
//! Nothing here talks to the API server, so every rule about what a portal looks like
//! (security context, probes, labels, when a PDB exists) is unit-tested with YAML fixtures.

use super::policy::{self, Policy};
use crate::api::workspace::{PortalSpec, Workspace};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, TCPSocketAction, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec as K8sIngressSpec,
    IngressTLS, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// The field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "hyperpage-operator";
/// Label on every child, used to scope the operator's watches to what it manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hyperpage-operator");
/// Label naming the owning Workspace, for `kubectl get all -l hyperpage.dev/workspace=NAME`.
pub const WORKSPACE_LABEL: &str = "hyperpage.dev/workspace";
/// Port `hyperpage portal` serves its page, API and probes on.
pub const PORTAL_PORT: i32 = 8080;

/// Label every namespace carries (set by the API server): what the NetworkPolicy selects.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Env var telling `hyperpage portal` its effective access mode.
pub const ACCESS_MODE_ENV: &str = "HYPERPAGE_ACCESS_MODE";

/// What the operator knows that the Workspace does not say.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Image that runs `hyperpage portal` (the operator's own image by default).
    pub portal_image: String,
    /// The platform's admin policy.
    pub policy: Policy,
    /// How portals check who may see them.
    pub portal_access: super::portal_access::PortalAccess,
}

impl BuildConfig {
    /// The default-deny policy for `portal_image` (see [`Policy::restrictive`]), portals
    /// signing in with bearer tokens only.
    pub fn new(portal_image: impl Into<String>) -> Self {
        let portal_image = portal_image.into();
        Self { policy: Policy::restrictive(&portal_image), portal_image, portal_access: Default::default() }
    }
}

/// Every child of one Workspace. Optional children are `None` when they must not exist.
#[derive(Clone, Debug)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
    pub ingress: Option<Ingress>,
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

/// The name all children of a Workspace share.
pub fn child_name(workspace_name: &str) -> String {
    format!("{workspace_name}-portal")
}

/// Replicas the portal should run: none while suspended.
pub fn effective_replicas(ws: &Workspace) -> i32 {
    if ws.spec.suspend { 0 } else { ws.spec.portal.replicas.max(0) }
}

/// The address users reach the portal at.
pub fn portal_url(ws: &Workspace) -> String {
    if let Some(ingress) = &ws.spec.portal.ingress {
        let scheme = if ingress.tls_secret_name.is_some() { "https" } else { "http" };
        return format!("{scheme}://{}/", ingress.host);
    }
    service_url(ws)
}

/// The in-cluster address of the portal's Service.
pub fn service_url(ws: &Workspace) -> String {
    let ns = ws.namespace().unwrap_or_default();
    let port = ws.spec.portal.service.port;
    let port_part = if port == 80 { String::new() } else { format!(":{port}") };
    format!("http://{}.{ns}.svc{port_part}/", child_name(&ws.name_any()))
}

fn selector_labels(ws: &Workspace) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "hyperpage-portal".to_string()),
        ("app.kubernetes.io/instance".to_string(), ws.name_any()),
    ])
}

fn labels(ws: &Workspace) -> BTreeMap<String, String> {
    let mut labels = selector_labels(ws);
    labels.insert("app.kubernetes.io/component".into(), "portal".into());
    labels.insert("app.kubernetes.io/part-of".into(), "hyperpage".into());
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(WORKSPACE_LABEL.into(), ws.name_any());
    labels
}

fn owner_reference(ws: &Workspace) -> OwnerReference {
    OwnerReference {
        api_version: Workspace::api_version(&()).into_owned(),
        kind: Workspace::kind(&()).into_owned(),
        name: ws.name_any(),
        uid: ws.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether a live object is this Workspace's own child: labelled for the operator and owned
/// (by uid) by this Workspace. Anything else with a child's name is never applied over.
pub fn is_owned_by(meta: &ObjectMeta, ws: &Workspace) -> bool {
    let labelled = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1);
    labelled && is_referenced_by_owner(meta, ws)
}

/// Whether an object names this Workspace (by uid) as an owner. For an object from the
/// operator's caches this is [`is_owned_by`]: they select on the label.
pub fn is_referenced_by_owner(meta: &ObjectMeta, ws: &Workspace) -> bool {
    let uid = ws.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == Workspace::kind(&()) && o.api_version.starts_with(crate::api::GROUP) && uid.as_deref() == Some(o.uid.as_str()))
}

/// `desired` with the container images of `live` (matched by container name): how a
/// Deployment whose new image the policy refuses still gets every other change. `None` when
/// a container has no running counterpart (nothing accepted to keep).
pub fn keep_images(desired: &Deployment, live: &Deployment) -> Option<Deployment> {
    let live_containers = &live.spec.as_ref()?.template.spec.as_ref()?.containers;
    let mut kept = desired.clone();
    for container in &mut kept.spec.as_mut()?.template.spec.as_mut()?.containers {
        container.image = live_containers.iter().find(|c| c.name == container.name)?.image.clone();
    }
    Some(kept)
}

fn metadata(ws: &Workspace) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(&ws.name_any())),
        namespace: ws.namespace(),
        labels: Some(labels(ws)),
        owner_references: Some(vec![owner_reference(ws)]),
        ..Default::default()
    }
}

pub fn build(ws: &Workspace, config: &BuildConfig) -> Children {
    Children {
        service_account: service_account(ws),
        role: role(ws),
        role_binding: role_binding(ws),
        deployment: deployment(ws, config),
        service: service(ws),
        network_policy: network_policy(ws, &config.policy),
        ingress: ingress(ws, &config.policy),
        pod_disruption_budget: pod_disruption_budget(ws),
    }
}

fn service_account(ws: &Workspace) -> ServiceAccount {
    ServiceAccount { metadata: metadata(ws), ..Default::default() }
}

/// Read-only access to this namespace's Workspaces and ToolBindings: all the portal needs.
fn role(ws: &Workspace) -> Role {
    Role {
        metadata: metadata(ws),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![crate::api::GROUP.into()]),
                resources: Some(vec!["workspaces".into(), "toolbindings".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            super::portal_access::access_review_rule(),
        ]),
    }
}

fn role_binding(ws: &Workspace) -> RoleBinding {
    let name = child_name(&ws.name_any());
    RoleBinding {
        metadata: metadata(ws),
        role_ref: RoleRef { api_group: Some("rbac.authorization.k8s.io".into()), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject { kind: "ServiceAccount".into(), name, namespace: ws.namespace(), ..Default::default() }]),
    }
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_string())
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), quantity("10m")), ("memory".into(), quantity("32Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), quantity("128Mi"))])),
        ..Default::default()
    }
}

/// The "restricted" Pod Security Standard, container side.
fn restricted_container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String(port.into()), ..Default::default() }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: number, protocol: Some("TCP".into()), ..Default::default() }
}

/// The container running `hyperpage portal` (or `--api-only` beside a user's portal).
fn hyperpage_container(ws: &Workspace, portal: &PortalSpec, config: &BuildConfig, api_only: bool) -> Container {
    let mut args = vec!["portal".to_string()];
    if api_only {
        args.push("--api-only".into());
    }
    let (name, port_name, image, resources) = if api_only {
        ("hyperpage-api", "api", config.portal_image.clone(), default_resources())
    } else {
        (
            "portal",
            "http",
            portal.image.clone().unwrap_or_else(|| config.portal_image.clone()),
            portal.resources.clone().unwrap_or_else(default_resources),
        )
    };
    Container {
        name: name.into(),
        image: Some(image),
        args: Some(args),
        env: Some(
            vec![
                EnvVar {
                    name: "HYPERPAGE_NAMESPACE".into(),
                    value_from: Some(EnvVarSource {
                        // apiVersion set as the API server would default it: the field is owned whole, so
                        // leaving it to the default would make the stored object differ from the applied one.
                        field_ref: Some(ObjectFieldSelector { api_version: Some("v1".into()), field_path: "metadata.namespace".into() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar { name: "HYPERPAGE_WORKSPACE".into(), value: Some(ws.name_any()), ..Default::default() },
                // The effective mode, never the spec's wish: a refused `public` runs with sign-in.
                EnvVar {
                    name: ACCESS_MODE_ENV.into(),
                    value: Some(policy::effective_access_mode(ws, &config.policy).as_str().into()),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(super::portal_access::portal_env(ws, &config.portal_access, api_only))
            .collect(),
        ),
        volume_mounts: (!api_only)
            .then(|| super::portal_access::session_volume(ws, &config.portal_access).map(|(_, mount)| vec![mount]))
            .flatten(),
        ports: Some(vec![port(port_name, PORTAL_PORT), super::portal_access::metrics_port()]),
        liveness_probe: Some(http_probe("/healthz", port_name, 10)),
        readiness_probe: Some(http_probe("/readyz", port_name, 5)),
        resources: Some(resources),
        security_context: Some(restricted_container_security(true)),
        ..Default::default()
    }
}

fn deployment(ws: &Workspace, config: &BuildConfig) -> Deployment {
    let portal = &ws.spec.portal;
    let replicas = effective_replicas(ws);
    let mut volumes = None;
    let containers = match &portal.sidecar {
        None => vec![hyperpage_container(ws, portal, config, false)],
        Some(sidecar) => {
            // The user's image may write temporary files; give it a scratch /tmp instead of a
            // writable root filesystem.
            volumes = Some(vec![Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }]);
            let probe = Probe {
                tcp_socket: Some(TCPSocketAction { port: IntOrString::String("http".into()), ..Default::default() }),
                period_seconds: Some(10),
                ..Default::default()
            };
            vec![
                Container {
                    name: "portal".into(),
                    image: Some(sidecar.image.clone()),
                    ports: Some(vec![port("http", sidecar.port)]),
                    liveness_probe: Some(probe.clone()),
                    readiness_probe: Some(probe),
                    resources: Some(portal.resources.clone().unwrap_or_else(default_resources)),
                    security_context: Some(restricted_container_security(true)),
                    volume_mounts: Some(vec![VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() }]),
                    ..Default::default()
                },
                hyperpage_container(ws, portal, config, true),
            ]
        }
    };
    if let Some((volume, _)) = super::portal_access::session_volume(ws, &config.portal_access)
        && portal.sidecar.is_none()
    {
        volumes.get_or_insert_with(Vec::new).push(volume);
    }
    let topology_spread_constraints = (replicas > 1).then(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector { match_labels: Some(selector_labels(ws)), ..Default::default() }),
            ..Default::default()
        }]
    });
    Deployment {
        metadata: metadata(ws),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector { match_labels: Some(selector_labels(ws)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(ws)), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(child_name(&ws.name_any())),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    containers,
                    volumes,
                    topology_spread_constraints,
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(ws: &Workspace) -> Service {
    let svc = &ws.spec.portal.service;
    Service {
        metadata: metadata(ws),
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(ws)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: svc.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Only the portal's serving port is reachable, and only from pods of the Workspace's own
/// namespace and of the ingress controller's namespace (policy): not from every namespace.
fn network_policy(ws: &Workspace, policy: &Policy) -> NetworkPolicy {
    let serving_port = ws.spec.portal.sidecar.as_ref().map_or(PORTAL_PORT, |s| s.port);
    let own = ws.namespace().unwrap_or_default();
    let mut sources = vec![own.clone()];
    sources.extend(policy.ingress_controller_namespace.clone().filter(|ns| !ns.is_empty() && *ns != own));
    let from = sources
        .into_iter()
        .map(|namespace| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace)])),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    NetworkPolicy {
        metadata: metadata(ws),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector_labels(ws)), ..Default::default() }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(serving_port)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                from: Some(from),
            }]),
            ..Default::default()
        }),
    }
}

fn ingress(ws: &Workspace, policy: &Policy) -> Option<Ingress> {
    let spec = ws.spec.portal.ingress.as_ref()?;
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: child_name(&ws.name_any()),
            port: Some(ServiceBackendPort { number: Some(ws.spec.portal.service.port), ..Default::default() }),
        }),
        ..Default::default()
    };
    let mut meta = metadata(ws);
    // The platform's annotations (e.g. cert-manager's issuer); a tenant sets none.
    meta.annotations = (!policy.ingress.annotations.is_empty()).then(|| policy.ingress.annotations.clone());
    Some(Ingress {
        metadata: meta,
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec
                .tls_secret_name
                .as_ref()
                .map(|secret| vec![IngressTLS { hosts: Some(vec![spec.host.clone()]), secret_name: Some(secret.clone()) }]),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath { path: Some("/".into()), path_type: "Prefix".into(), backend }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A PDB only makes sense when more than one pod can stay up during a drain.
fn pod_disruption_budget(ws: &Workspace) -> Option<PodDisruptionBudget> {
    (effective_replicas(ws) > 1).then(|| PodDisruptionBudget {
        metadata: metadata(ws),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(ws)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(yaml: &str) -> Workspace {
        serde_norway::from_str(yaml).expect("fixture parses")
    }

    fn config() -> BuildConfig {
        BuildConfig::new("ghcr.io/hyperpage-dev/hyperpage:0.1.0")
    }

    const BASIC: &str = include_str!("../../tests/fixtures/workspace-basic.yaml");
    const HA: &str = include_str!("../../tests/fixtures/workspace-ha-ingress.yaml");
    const SIDECAR: &str = include_str!("../../tests/fixtures/workspace-sidecar.yaml");
    const SUSPENDED: &str = include_str!("../../tests/fixtures/workspace-suspended.yaml");

    fn pod_spec(children: &Children) -> &PodSpec {
        children.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn every_child_is_owned_labelled_and_named_after_the_workspace() {
        let ws = fixture(BASIC);
        let c = build(&ws, &config());
        let metas = [
            &c.service_account.metadata,
            &c.role.metadata,
            &c.role_binding.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &c.network_policy.metadata,
        ];
        for meta in metas {
            assert_eq!(meta.name.as_deref(), Some("payments-portal"));
            assert_eq!(meta.namespace.as_deref(), Some("team-payments"));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Workspace", "payments", Some(true)));
            assert_eq!(owner.uid, "7d6c1c5e-0000-4000-8000-000000000001");
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("hyperpage-operator"));
            assert_eq!(labels.get("app.kubernetes.io/instance").map(String::as_str), Some("payments"));
            assert_eq!(labels.get(WORKSPACE_LABEL).map(String::as_str), Some("payments"));
        }
        assert!(c.ingress.is_none(), "no ingress unless asked for");
        assert!(c.pod_disruption_budget.is_none(), "no PDB for a single replica");
    }

    #[test]
    fn the_portal_pod_meets_the_restricted_pod_security_standard() {
        for yaml in [BASIC, SIDECAR] {
            let c = build(&fixture(yaml), &config());
            let pod = pod_spec(&c);
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            for container in &pod.containers {
                let sc = container.security_context.as_ref().unwrap();
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", container.name);
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", container.name);
                assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
                assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some(), "{} has probes", container.name);
                let requests = container.resources.as_ref().unwrap().requests.as_ref().unwrap();
                assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{} has requests", container.name);
            }
        }
    }

    #[test]
    fn the_default_portal_runs_hyperpage_portal_with_its_own_service_account() {
        let c = build(&fixture(BASIC), &config());
        let pod = pod_spec(&c);
        assert_eq!(pod.service_account_name.as_deref(), Some("payments-portal"));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("ghcr.io/hyperpage-dev/hyperpage:0.1.0"));
        assert_eq!(container.args.as_deref(), Some(&["portal".to_string()][..]));
        let env: Vec<_> = container.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(env, ["HYPERPAGE_NAMESPACE", "HYPERPAGE_WORKSPACE", ACCESS_MODE_ENV, "HYPERPAGE_ALLOWED_HOSTS"]);
        assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, Some(1));
        let rule = &c.role.rules.as_ref().unwrap()[0];
        assert_eq!(rule.verbs, ["get", "list", "watch"], "the portal's Role is read-only");
        assert_eq!(rule.resources.as_deref(), Some(&["workspaces".to_string(), "toolbindings".to_string()][..]));
    }

    #[test]
    fn several_replicas_get_a_pdb_and_an_ingress_when_asked() {
        let ws = fixture(HA);
        let c = build(&ws, &config());
        let pdb = c.pod_disruption_budget.expect("PDB for 3 replicas");
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let ingress = c.ingress.expect("ingress");
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(spec.tls.unwrap()[0].secret_name.as_deref(), Some("portal-tls"));
        let rules = spec.rules.unwrap();
        let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
        assert_eq!(backend.service.as_ref().unwrap().port.as_ref().unwrap().number, Some(8443));
        let svc = c.service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.ports.unwrap()[0].port, 8443);
        let rebuilt = build(&ws, &config());
        let container = &pod_spec(&rebuilt).containers[0];
        assert_eq!(container.image.as_deref(), Some("registry.example.com/mirror/hyperpage:0.1.0"));
        assert_eq!(portal_url(&ws), "https://portal.payments.example.com/");
    }

    #[test]
    fn sidecar_mode_runs_the_users_image_beside_the_api() {
        let c = build(&fixture(SIDECAR), &config());
        let pod = pod_spec(&c);
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["portal", "hyperpage-api"]);
        assert_eq!(pod.containers[0].image.as_deref(), Some("ghcr.io/acme/custom-portal:2.0.0"));
        assert_eq!(pod.containers[0].ports.as_ref().unwrap()[0].container_port, 3000);
        assert_eq!(pod.containers[1].args.as_deref(), Some(&["portal".to_string(), "--api-only".to_string()][..]));
        let np_port = c.network_policy.spec.unwrap().ingress.unwrap()[0].ports.as_ref().unwrap()[0].port.clone();
        assert_eq!(np_port, Some(IntOrString::Int(3000)), "only the serving port is open");
    }

    #[test]
    fn suspend_scales_to_zero_and_drops_the_pdb() {
        let c = build(&fixture(SUSPENDED), &config());
        assert_eq!(c.deployment.spec.unwrap().replicas, Some(0));
        assert!(c.pod_disruption_budget.is_none());
    }

    fn access_mode(c: &Children) -> String {
        let env = pod_spec(c).containers[0].env.clone().unwrap();
        env.iter().find(|e| e.name == ACCESS_MODE_ENV).and_then(|e| e.value.clone()).unwrap()
    }

    #[test]
    fn the_portal_is_told_the_effective_access_mode_not_the_specs() {
        let mut ws = fixture(BASIC);
        assert_eq!(access_mode(&build(&ws, &config())), "kubernetes");
        ws.spec.portal.access = Some(crate::api::workspace::PortalAccessSpec { mode: crate::api::workspace::AccessMode::Public });
        assert_eq!(access_mode(&build(&ws, &config())), "kubernetes", "public refused by the default policy");
        let mut open = config();
        open.policy.allow_public_portals = true;
        assert_eq!(access_mode(&build(&ws, &open)), "public");
        let sidecar = build(&fixture(SIDECAR), &config());
        let api = pod_spec(&sidecar).containers.iter().find(|c| c.name == "hyperpage-api").unwrap();
        assert!(api.env.as_ref().unwrap().iter().any(|e| e.name == ACCESS_MODE_ENV), "the API beside a sidecar is told too");
    }

    fn sources(np: &NetworkPolicy) -> Vec<String> {
        let rule = &np.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        rule.from
            .as_ref()
            .unwrap()
            .iter()
            .map(|peer| {
                assert!(peer.pod_selector.is_none() && peer.ip_block.is_none(), "whole namespaces only: {peer:?}");
                peer.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL].clone()
            })
            .collect()
    }

    #[test]
    fn the_network_policy_admits_only_the_own_and_the_ingress_controllers_namespace() {
        let ws = fixture(BASIC);
        assert_eq!(sources(&build(&ws, &config()).network_policy), ["team-payments"]);
        let mut with_controller = config();
        with_controller.policy.ingress_controller_namespace = Some("ingress-nginx".into());
        assert_eq!(sources(&build(&ws, &with_controller).network_policy), ["team-payments", "ingress-nginx"]);
    }

    #[test]
    fn the_ingress_carries_the_platforms_annotations() {
        let ws = fixture(HA);
        assert!(build(&ws, &config()).ingress.unwrap().metadata.annotations.is_none());
        let mut platform = config();
        platform.policy.ingress.annotations = BTreeMap::from([("cert-manager.io/cluster-issuer".into(), "letsencrypt".into())]);
        let annotations = build(&ws, &platform).ingress.unwrap().metadata.annotations.unwrap();
        assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    }

    #[test]
    fn only_labelled_objects_owned_by_this_workspace_are_its_children() {
        let ws = fixture(BASIC);
        let ours = build(&ws, &config()).service.metadata;
        assert!(is_owned_by(&ours, &ws));
        let mut unlabelled = ours.clone();
        unlabelled.labels = None;
        assert!(!is_owned_by(&unlabelled, &ws), "someone's Service with the same name");
        let mut orphan = ours.clone();
        orphan.owner_references = None;
        assert!(!is_owned_by(&orphan, &ws), "labelled but owned by nobody");
        let mut other = ws.clone();
        other.metadata.uid = Some("another-uid".into());
        assert!(!is_owned_by(&ours, &other), "a recreated Workspace of the same name does not inherit");
    }

    #[test]
    fn a_refused_image_keeps_the_running_one_and_nothing_else() {
        let ws = fixture(BASIC);
        let live = build(&ws, &config()).deployment;
        let mut changed = ws.clone();
        changed.spec.portal.replicas = 4;
        changed.spec.portal.image = Some("docker.io/evil/portal:1".into());
        let kept = keep_images(&build(&changed, &config()).deployment, &live).unwrap();
        let spec = kept.spec.unwrap();
        assert_eq!(spec.replicas, Some(4), "other changes go through");
        assert_eq!(spec.template.spec.unwrap().containers[0].image.as_deref(), Some("ghcr.io/hyperpage-dev/hyperpage:0.1.0"));
        let sidecar = build(&fixture(SIDECAR), &config()).deployment;
        assert!(keep_images(&sidecar, &live).is_none(), "a new container has no accepted image to keep");
    }
}
