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

use super::children::{FIELD_MANAGER, child_name};
use super::context::Context;
use super::error::Error;
use crate::api::Workspace;
use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, PolicyRule, Subject};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
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
    /// The subjects last seen in or written to that binding, so that a converged operator
    /// makes no request at all. Held across the whole read-compare-write.
    applied: Arc<tokio::sync::Mutex<Option<Vec<Subject>>>>,
}

impl PortalAccess {
    pub fn new(token_review_binding: Option<String>) -> Self {
        Self { token_review_binding: token_review_binding.filter(|n| !n.is_empty()), ..Self::default() }
    }
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
        assert!(PortalAccess::new(Some(String::new())).token_review_binding.is_none());
        assert_eq!(PortalAccess::new(Some("x".into())).token_review_binding.as_deref(), Some("x"));
    }
}
