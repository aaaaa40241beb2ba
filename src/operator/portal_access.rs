//! What each portal needs to decide who may see it, granted with the least privilege.
//!
//! A portal in the `kubernetes` access mode asks the API server two questions per visitor:
//! whose token is this (a TokenReview, cluster-scoped: there is no namespaced form) and may
//! they `get` this Workspace (a LocalSubjectAccessReview, namespaced). So:
//! - the portal's own Role gains `create` on `localsubjectaccessreviews` — it can ask about
//!   its own namespace only, not about the whole cluster as `system:auth-delegator` would;
//! - one ClusterRoleBinding, created empty by the chart, binds the chart's ClusterRole
//!   granting only `create` on `tokenreviews`; the operator keeps its subjects equal to the
//!   portals' ServiceAccounts. The operator needs `bind` on that one ClusterRole and
//!   `get`/`patch` on that one binding (both by `resourceNames`), not `create` or `escalate`.
//!
//! With browser sign-in configured (`--portal-oidc-*`, chart `portal.oidc.*`) every portal
//! also gets the issuer and client in its environment and a per-Workspace Secret
//! (`<workspace>-portal-session`) holding its session key and the client secret, mounted as
//! files. The operator creates that Secret once and never rewrites it: deleting it rotates the
//! key (everyone is signed out) and picks up a new client secret.

use super::children::{FIELD_MANAGER, child_name};
use super::context::Context;
use super::error::Error;
use crate::api::Workspace;
use crate::portal::session::KEY_BYTES;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Port of the portal's `/metrics` (`hyperpage portal --metrics-listen`), kept off the
/// Service so that only Prometheus, not the portal's users, reaches it.
pub const METRICS_PORT: i32 = 9090;

/// How the operator lets portals check their visitors.
#[derive(Clone, Debug, Default)]
pub struct PortalAccess {
    /// The ClusterRoleBinding whose subjects the operator keeps equal to the portals'
    /// ServiceAccounts (`--portal-token-review-binding`); `None`: left alone.
    pub token_review_binding: Option<String>,
    /// Browser sign-in for every portal; `None`: bearer tokens only.
    pub oidc: Option<PortalOidc>,
    /// The subjects last seen in or written to that binding, so that a converged operator
    /// makes no request at all. Held across the whole read-compare-write.
    applied: Arc<tokio::sync::Mutex<Option<Vec<Subject>>>>,
}

/// The issuer and client every portal signs browsers in with.
#[derive(Clone, Default)]
pub struct PortalOidc {
    pub issuer_url: String,
    pub client_id: String,
    /// Copied into each Workspace's session Secret (portals run in the tenants' namespaces
    /// and cannot mount the operator's Secret).
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for PortalOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("PortalOidc").field("issuer_url", &self.issuer_url).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

impl PortalAccess {
    pub fn new(token_review_binding: Option<String>, oidc: Option<PortalOidc>) -> Self {
        Self { token_review_binding: token_review_binding.filter(|n| !n.is_empty()), oidc, ..Self::default() }
    }
}

/// Where the session Secret is mounted in the portal container.
pub const SESSION_MOUNT: &str = "/var/run/hyperpage/session";
/// Keys of the session Secret.
pub const SESSION_KEY: &str = "session-key";
pub const CLIENT_SECRET_KEY: &str = "oidc-client-secret";
const SESSION_VOLUME: &str = "session";

/// The per-Workspace Secret holding the portal's session key.
pub fn session_secret_name(ws: &Workspace) -> String {
    format!("{}-session", child_name(&ws.name_any()))
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The names a portal answers to: its Ingress host and its Service's DNS names (loopback
/// is always allowed; probes skip the check).
pub fn allowed_hosts(ws: &Workspace) -> Vec<String> {
    let service = child_name(&ws.name_any());
    let namespace = ws.namespace().unwrap_or_default();
    let mut hosts: Vec<String> = ws.spec.portal.ingress.iter().map(|i| i.host.clone()).collect();
    hosts.extend([
        service.clone(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]);
    hosts
}

/// The hyperpage container's access settings: the host names it answers to and, for the
/// page (not the sidecar's API container), sign-in: issuer, client, its own address for the
/// redirect URI (the Ingress host when it has one), and the mounted session Secret.
pub fn portal_env(ws: &Workspace, access: &PortalAccess, api_only: bool) -> Vec<EnvVar> {
    let hosts = env("HYPERPAGE_ALLOWED_HOSTS", &allowed_hosts(ws).join(","));
    let Some(oidc) = access.oidc.as_ref().filter(|_| !api_only) else { return vec![hosts] };
    let mut vars = vec![
        hosts,
        env("HYPERPAGE_OIDC_ISSUER_URL", &oidc.issuer_url),
        env("HYPERPAGE_OIDC_CLIENT_ID", &oidc.client_id),
        env("HYPERPAGE_EXTERNAL_URL", &super::children::portal_url(ws)),
        env("HYPERPAGE_SESSION_KEY_FILE", &format!("{SESSION_MOUNT}/{SESSION_KEY}")),
    ];
    if oidc.client_secret.is_some() {
        vars.push(env("HYPERPAGE_OIDC_CLIENT_SECRET_FILE", &format!("{SESSION_MOUNT}/{CLIENT_SECRET_KEY}")));
    }
    vars
}

/// The session Secret as a read-only volume, and where the portal container mounts it.
pub fn session_volume(ws: &Workspace, access: &PortalAccess) -> Option<(Volume, VolumeMount)> {
    access.oidc.as_ref()?;
    let volume = Volume {
        name: SESSION_VOLUME.into(),
        secret: Some(SecretVolumeSource { secret_name: Some(session_secret_name(ws)), default_mode: Some(0o440), ..Default::default() }),
        ..Default::default()
    };
    let mount = VolumeMount { name: SESSION_VOLUME.into(), mount_path: SESSION_MOUNT.into(), read_only: Some(true), ..Default::default() };
    Some((volume, mount))
}

/// A new session Secret: a fresh random key, and the client secret.
pub fn session_secret(ws: &Workspace, oidc: &PortalOidc, metadata: ObjectMeta) -> Secret {
    let mut key = vec![0u8; KEY_BYTES];
    rand::Rng::fill(&mut rand::rng(), key.as_mut_slice());
    let mut data = BTreeMap::from([(SESSION_KEY.to_string(), ByteString(key))]);
    if let Some(secret) = &oidc.client_secret {
        data.insert(CLIENT_SECRET_KEY.to_string(), ByteString(secret.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta { name: Some(session_secret_name(ws)), ..metadata },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Creates the Workspace's session Secret when sign-in is configured and it does not exist
/// (a metadata-only read; the operator never reads it back).
pub async fn ensure_session_secret(ctx: &Context, controller: &'static str, ws: &Workspace, metadata: ObjectMeta) -> Result<(), Error> {
    let Some(oidc) = &ctx.build.portal_access.oidc else { return Ok(()) };
    let namespace = ws.namespace().unwrap_or_default();
    let name = session_secret_name(ws);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.get_metadata_opt(&name).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(source) => return Err(Error::Read { kind: "Secret", name, source }),
    }
    ctx.ensure_leader()?;
    match api
        .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &session_secret(ws, oidc, metadata))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
        Err(source) => return Err(Error::Apply { kind: "Secret", name, source }),
    }
    ctx.metrics.record_write(controller, "Secret", "create");
    tracing::info!(%namespace, %name, "created the portal's session key");
    Ok(())
}

/// The rule each portal's Role gets: ask whether someone may see a Workspace, in this
/// namespace only.
pub fn access_review_rule() -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["authorization.k8s.io".into()]),
        resources: Some(vec!["localsubjectaccessreviews".into()]),
        verbs: vec!["create".into()],
        ..Default::default()
    }
}

/// The metrics port of the portal container.
pub fn metrics_port() -> ContainerPort {
    ContainerPort { name: Some("metrics".into()), container_port: METRICS_PORT, protocol: Some("TCP".into()), ..Default::default() }
}

/// The subjects of the token-review binding: every live Workspace's portal ServiceAccount,
/// sorted so that the same set always compares equal.
pub fn token_reviewers(workspaces: &[Arc<Workspace>]) -> Vec<Subject> {
    let mut subjects: Vec<Subject> = workspaces
        .iter()
        .filter(|ws| ws.metadata.deletion_timestamp.is_none())
        .map(|ws| Subject { kind: "ServiceAccount".into(), name: child_name(&ws.name_any()), namespace: ws.namespace(), api_group: None })
        .collect();
    subjects.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    subjects.dedup();
    subjects
}

/// Keeps the token-review binding's subjects equal to [`token_reviewers`] of the cached
/// Workspaces. Converged: no request.
pub async fn ensure_token_reviewers(ctx: &Context, controller: &'static str) -> Result<(), Error> {
    let access = &ctx.build.portal_access;
    let Some(name) = access.token_review_binding.as_deref() else { return Ok(()) };
    let mut applied = access.applied.lock().await;
    let desired = token_reviewers(&ctx.stores.workspaces.state());
    if applied.as_ref() == Some(&desired) {
        return Ok(());
    }
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let failed = |source| Error::Apply { kind: "ClusterRoleBinding", name: name.to_string(), source };
    if applied.is_none() {
        let live = api.get(name).await.map_err(failed)?;
        let mut subjects = live.subjects.unwrap_or_default();
        subjects.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        *applied = Some(subjects);
        if applied.as_ref() == Some(&desired) {
            return Ok(());
        }
    }
    ctx.ensure_leader()?;
    let patch = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "subjects": desired,
    });
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await.map_err(failed)?;
    ctx.metrics.record_write(controller, "ClusterRoleBinding", "apply");
    tracing::info!(name, subjects = desired.len(), "updated the portals' token-review binding");
    *applied = Some(desired);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(namespace: &str, name: &str, deleting: bool) -> Arc<Workspace> {
        let mut ws: Workspace = serde_norway::from_str(&format!(
            "{{apiVersion: hyperpage.dev/v1alpha1, kind: Workspace, metadata: {{name: {name}, namespace: {namespace}}}, spec: {{}}}}"
        ))
        .unwrap();
        if deleting {
            ws.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        }
        Arc::new(ws)
    }

    #[test]
    fn every_live_portal_account_reviews_tokens_in_a_stable_order() {
        let subjects = token_reviewers(&[ws("team-b", "web", false), ws("team-a", "payments", false), ws("team-a", "gone", true)]);
        let names: Vec<_> = subjects.iter().map(|s| format!("{}/{}", s.namespace.as_deref().unwrap(), s.name)).collect();
        assert_eq!(names, ["team-a/payments-portal", "team-b/web-portal"]);
        assert!(subjects.iter().all(|s| s.kind == "ServiceAccount" && s.api_group.is_none()));
        assert!(token_reviewers(&[]).is_empty());
    }

    #[test]
    fn the_portal_may_ask_about_its_own_namespace_only() {
        let rule = access_review_rule();
        assert_eq!(rule.resources.as_deref(), Some(&["localsubjectaccessreviews".to_string()][..]));
        assert_eq!(rule.verbs, ["create"]);
    }

    #[test]
    fn an_empty_binding_name_means_none() {
        assert!(PortalAccess::new(Some(String::new()), None).token_review_binding.is_none());
        assert_eq!(PortalAccess::new(Some("x".into()), None).token_review_binding.as_deref(), Some("x"));
    }

    fn oidc() -> PortalAccess {
        let oidc =
            PortalOidc { issuer_url: "https://idp.example".into(), client_id: "portals".into(), client_secret: Some("s3cret".into()) };
        PortalAccess::new(None, Some(oidc))
    }

    #[test]
    fn sign_in_settings_reach_the_portal_as_env_and_a_mounted_secret() {
        let mut ws = (*ws("team-a", "payments", false)).clone();
        let names = |vars: Vec<EnvVar>| vars.into_iter().map(|v| v.name).collect::<Vec<_>>();
        assert_eq!(names(portal_env(&ws, &PortalAccess::default(), false)), ["HYPERPAGE_ALLOWED_HOSTS"]);
        assert!(session_volume(&ws, &PortalAccess::default()).is_none());
        assert_eq!(
            names(portal_env(&ws, &oidc(), true)),
            ["HYPERPAGE_ALLOWED_HOSTS"],
            "the sidecar's API container takes bearer tokens only"
        );
        ws.spec.portal.ingress = serde_norway::from_str("{host: payments.portal.example, tlsSecretName: tls}").unwrap();
        let vars: BTreeMap<_, _> = portal_env(&ws, &oidc(), false).into_iter().map(|v| (v.name, v.value.unwrap())).collect();
        assert_eq!(
            vars["HYPERPAGE_ALLOWED_HOSTS"],
            "payments.portal.example,payments-portal,payments-portal.team-a,payments-portal.team-a.svc,payments-portal.team-a.svc.cluster.local"
        );
        assert_eq!(vars["HYPERPAGE_OIDC_ISSUER_URL"], "https://idp.example");
        assert_eq!(vars["HYPERPAGE_OIDC_CLIENT_ID"], "portals");
        assert_eq!(vars["HYPERPAGE_EXTERNAL_URL"], "https://payments.portal.example/", "the redirect URI follows the Ingress host");
        assert_eq!(vars["HYPERPAGE_SESSION_KEY_FILE"], "/var/run/hyperpage/session/session-key");
        assert_eq!(vars["HYPERPAGE_OIDC_CLIENT_SECRET_FILE"], "/var/run/hyperpage/session/oidc-client-secret");
        assert!(!vars.values().any(|v| v.contains("s3cret")), "the secret is never an env value");
        let (volume, mount) = session_volume(&ws, &oidc()).unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("payments-portal-session"));
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (SESSION_MOUNT, Some(true)));
    }

    #[test]
    fn each_session_secret_gets_its_own_random_key() {
        let ws = ws("team-a", "payments", false);
        let access = oidc();
        let a = session_secret(&ws, access.oidc.as_ref().unwrap(), ObjectMeta::default());
        let b = session_secret(&ws, access.oidc.as_ref().unwrap(), ObjectMeta::default());
        let key = |s: &Secret| s.data.as_ref().unwrap()[SESSION_KEY].0.clone();
        assert_eq!(key(&a).len(), KEY_BYTES);
        assert_ne!(key(&a), key(&b));
        assert_eq!(a.data.as_ref().unwrap()[CLIENT_SECRET_KEY].0, b"s3cret");
        assert_eq!(a.metadata.name.as_deref(), Some("payments-portal-session"));
        assert!(!format!("{:?}", access.oidc).contains("s3cret"), "Debug leaves the secret out");
    }
}
