//! Workspace reconcile: dereference → validate → build → apply → status.

use super::children::{self, Children, effective_replicas, portal_url, service_url};
use super::context::{Context, object_key};
use super::error::Error;
use super::policy::{self, Refused, Violation};
use crate::api::conditions::{self, DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::api::duration;
use crate::api::workspace::{PortalStatus, ToolCounts, WorkspaceStatus, WorkspaceSummary};
use crate::api::{ToolBinding, Workspace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use std::sync::Arc;

pub const CONTROLLER: &str = "workspace";

/// How soon a Workspace with a name conflict is looked at again: the conflicting object
/// carries no label the operator watches, so its removal sends no event.
const CONFLICT_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Condition reasons for a Workspace the operator refuses (in part) to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The spec asks for more than the admin policy allows.
    PolicyViolation,
    /// An object with a child's name exists that is not this Workspace's.
    NameConflict,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PolicyViolation => "PolicyViolation",
            Refusal::NameConflict => "NameConflict",
        }
    }
}

/// What the operator holds back for one Workspace, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Policy rules the spec breaks (validate, pure).
    pub violations: Vec<Violation>,
    /// `Kind/name` of objects that carry a child's name but are not this Workspace's. While
    /// there is one, nothing of this Workspace is applied or deleted.
    pub conflicts: Vec<String>,
}

impl Refusals {
    /// Whether the policy holds back this child.
    pub fn refuses(&self, part: Refused) -> bool {
        self.violations.iter().any(|v| v.refuses() == Some(part))
    }
}

/// What the reconcile reads before deciding anything.
pub struct Observed {
    pub deployment: Option<Arc<Deployment>>,
    pub bindings: Vec<Arc<ToolBinding>>,
}

/// Dereference: everything comes from the watch caches, so this costs no API calls.
pub fn observe(ws: &Workspace, ctx: &Context) -> Observed {
    let namespace = ws.namespace().unwrap_or_default();
    let name = ws.name_any();
    let child = children::child_name(&name);
    let deployment = ctx.stores.deployments.get(&namespace, &child).and_then(|d| d.progress(&namespace, &child)).map(Arc::new);
    let bindings =
        ctx.stores.bindings_by_workspace.bindings_of(&namespace, &name).iter().filter_map(|key| ctx.stores.bindings.get(key)).collect();
    Observed { deployment, bindings }
}

/// The ToolBindings that reference a Workspace, sorted by name for stable output.
pub fn bindings_of(all: &[Arc<ToolBinding>], namespace: &str, workspace: &str) -> Vec<Arc<ToolBinding>> {
    let mut bindings: Vec<_> = all.iter().filter(|b| b.belongs_to(namespace, workspace)).cloned().collect();
    bindings.sort_by_key(|b| b.name_any());
    bindings
}

/// Validate: what the schema cannot guarantee (objects stored before a schema change).
pub fn validate(ws: &Workspace) -> Result<(), String> {
    if let Some(interval) = &ws.spec.refresh_interval {
        duration::parse(interval).map_err(|e| format!("spec.refreshInterval: {e}"))?;
    }
    if ws.name_any().len() > 50 {
        return Err("metadata.name is longer than 50 characters; the portal's Service name would not fit".into());
    }
    Ok(())
}

pub async fn reconcile(ws: Arc<Workspace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&ws, &ctx).await;
    ctx.observe_reconcile(CONTROLLER, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&object_key(ws.as_ref()));
    }
    result
}

async fn reconcile_inner(ws: &Workspace, ctx: &Context) -> Result<Action, Error> {
    ws.namespace().ok_or_else(|| Error::MissingNamespace(ws.name_any()))?;
    // The status this process wrote last, while the cache has not shown it yet.
    let with_written;
    let ws = match ctx.workspace_statuses.pending(&object_key(ws), ws.metadata.resource_version.as_deref()) {
        Some(status) => {
            with_written = Workspace { status: Some(status), ..ws.clone() };
            &with_written
        }
        None => ws,
    };
    if ws.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let observed = observe(ws, ctx);
    let now = Time(jiff::Timestamp::now());
    if let Err(message) = validate(ws) {
        let status = invalid_status(ws, &message, &now);
        write_status(ws, ctx, status).await?;
        return Ok(Action::await_change());
    }
    let mut refusals = Refusals { violations: policy::validate(ws, &ctx.build.policy), conflicts: Vec::new() };
    let desired = children::build(ws, &ctx.build);
    refusals.conflicts = conflicts(ctx, ws, &desired, &refusals).await?;
    if refusals.conflicts.is_empty() {
        super::portal_access::ensure_session_secret(ctx, CONTROLLER, ws, desired.service_account.metadata.clone()).await?;
        apply_children(ctx, ws, &desired, &refusals).await?;
    } else {
        tracing::warn!(workspace = %object_key(ws), conflicts = ?refusals.conflicts, "objects in the way are not the workspace's; applying nothing");
    }
    let status = compute_status(ws, observed.deployment.as_deref(), &observed.bindings, &refusals, &now);
    write_status(ws, ctx, status).await?;
    super::portal_access::ensure_token_reviewers(ctx, CONTROLLER).await?;
    // The resync comes from the controller's periodic pass (`WarmCache::every`); a name
    // conflict is looked at sooner.
    Ok(match refusals.conflicts.is_empty() {
        true => Action::await_change(),
        false => Action::requeue(ctx.resync.min(CONFLICT_RECHECK)),
    })
}

/// Every object the reconcile would apply that exists but is not this Workspace's own. The
/// checks are independent (each a cache look-up, or one read for a name the cache lacks), so
/// they run at once: a new Workspace costs one round trip here, not one per child.
async fn conflicts(ctx: &Context, ws: &Workspace, desired: &Children, refusals: &Refusals) -> Result<Vec<String>, Error> {
    let s = &ctx.stores;
    let found = tokio::try_join!(
        ctx.foreign_object(&s.service_accounts, &desired.service_account, ws),
        ctx.foreign_object(&s.roles, &desired.role, ws),
        ctx.foreign_object(&s.role_bindings, &desired.role_binding, ws),
        async {
            match refusals.refuses(Refused::Deployment) {
                true => Ok(None),
                false => ctx.foreign_object(&s.deployments, &desired.deployment, ws).await,
            }
        },
        async {
            match refusals.refuses(Refused::Service) {
                true => Ok(None),
                false => ctx.foreign_object(&s.services, &desired.service, ws).await,
            }
        },
        ctx.foreign_object(&s.network_policies, &desired.network_policy, ws),
        async {
            match (&desired.ingress, refusals.refuses(Refused::Ingress)) {
                (Some(ingress), false) => ctx.foreign_object(&s.ingresses, ingress, ws).await,
                _ => Ok(None),
            }
        },
        async {
            match &desired.pod_disruption_budget {
                Some(pdb) => ctx.foreign_object(&s.pod_disruption_budgets, pdb, ws).await,
                None => Ok(None),
            }
        },
    )?;
    let (sa, role, rb, deployment, service, np, ingress, pdb) = found;
    Ok([sa, role, rb, deployment, service, np, ingress, pdb].into_iter().flatten().collect())
}

/// Applies what the policy allows. A refused image keeps the running one (every other change
/// goes through; a new Workspace gets no Deployment); a refused Service is left as it is; a
/// refused Ingress is removed, since exposing the portal is exactly what the policy withholds.
///
/// Two rounds of requests sent at once: the ServiceAccount and the Role first, then the rest.
/// The portal's pods are admitted only once their ServiceAccount exists, and the API server
/// checks a RoleBinding against the Role it grants (an operator without `bind` on it may
/// bind only a Role that exists: sent together, the RoleBinding fails as "not found").
async fn apply_children(ctx: &Context, ws: &Workspace, desired: &Children, refusals: &Refusals) -> Result<(), Error> {
    let s = &ctx.stores;
    tokio::try_join!(
        ctx.apply_if_changed(CONTROLLER, &s.service_accounts, &desired.service_account),
        ctx.apply_if_changed(CONTROLLER, &s.roles, &desired.role),
    )?;
    let deployment = if refusals.refuses(Refused::Deployment) {
        // The running images are not in the cache (only a fingerprint of them): read them.
        let (namespace, name) = (ws.namespace().unwrap_or_default(), desired.deployment.name_any());
        let owned = s.deployments.get(&namespace, &name).is_some_and(|d| d.is_owned_by(ws));
        match owned {
            true => {
                ctx.read_live::<Deployment>(&namespace, &name).await?.and_then(|live| children::keep_images(&desired.deployment, &live))
            }
            false => None,
        }
    } else {
        Some(desired.deployment.clone())
    };
    let name = desired.deployment.name_any();
    tokio::try_join!(
        ctx.apply_if_changed(CONTROLLER, &s.role_bindings, &desired.role_binding),
        async {
            match &deployment {
                Some(deployment) => ctx.apply_if_changed(CONTROLLER, &s.deployments, deployment).await,
                None => Ok(false),
            }
        },
        async {
            match refusals.refuses(Refused::Service) {
                true => Ok(false),
                false => ctx.apply_if_changed(CONTROLLER, &s.services, &desired.service).await,
            }
        },
        ctx.apply_if_changed(CONTROLLER, &s.network_policies, &desired.network_policy),
        async {
            match (&desired.ingress, refusals.refuses(Refused::Ingress)) {
                (Some(ingress), false) => ctx.apply_if_changed(CONTROLLER, &s.ingresses, ingress).await,
                _ => ctx.delete_if_present(CONTROLLER, &s.ingresses, ws, &name).await,
            }
        },
        async {
            match &desired.pod_disruption_budget {
                Some(pdb) => ctx.apply_if_changed(CONTROLLER, &s.pod_disruption_budgets, pdb).await,
                None => ctx.delete_if_present(CONTROLLER, &s.pod_disruption_budgets, ws, &name).await,
            }
        },
    )?;
    Ok(())
}

/// Writes the status only when it differs from what is stored, and reports a change of
/// `Ready` as an Event.
async fn write_status(ws: &Workspace, ctx: &Context, status: WorkspaceStatus) -> Result<(), Error> {
    // status.notifications belongs to the notifier (its own field manager): never written here.
    let status = WorkspaceStatus { notifications: None, ..status };
    let previous = WorkspaceStatus { notifications: None, ..ws.status.clone().unwrap_or_default() };
    if previous == status {
        return Ok(());
    }
    ctx.apply_status(CONTROLLER, ws, &status).await?;
    ctx.workspace_statuses.wrote(object_key(ws), ws.metadata.resource_version.clone(), status.clone());
    let was = conditions::find(&previous.conditions, READY);
    if let Some(now) = conditions::find(&status.conditions, READY)
        && was.map(|c| (&c.status, &c.reason)) != Some((&now.status, &now.reason))
        && !is_first_rollout(was.map(|c| c.reason.as_str()), &now.reason)
    {
        let warning = now.status != "True" && now.reason != "RollingOut";
        ctx.publish_event(CONTROLLER, &ws.object_ref(&()), warning, &now.reason, now.message.clone(), "Reconcile");
    }
    // A name conflict is reported even when Ready already says why it is not ready.
    let conflict = Refusal::NameConflict.reason();
    let was = conditions::find(&previous.conditions, DEGRADED).map(|c| c.reason.as_str());
    let ready_reason = conditions::find(&status.conditions, READY).map(|c| c.reason.as_str());
    if let Some(now) = conditions::find(&status.conditions, DEGRADED)
        && now.reason == conflict
        && was != Some(conflict)
        && ready_reason != Some(conflict)
    {
        ctx.publish_event(CONTROLLER, &ws.object_ref(&()), true, conflict, now.message.clone(), "Reconcile");
    }
    Ok(())
}

/// `Ready`'s reason while a Workspace's portal has never been available, and the one once it is.
pub const CREATING: &str = "Creating";
pub const PORTAL_AVAILABLE: &str = "PortalAvailable";

/// Whether the portal has never been available: no `Ready` yet, or `Ready` still `Creating`.
/// A refusal or a problem in between counts as a history: what follows it is news.
fn never_ready(previous: &WorkspaceStatus) -> bool {
    conditions::find(&previous.conditions, READY).is_none_or(|c| c.reason == CREATING)
}

/// A new Workspace's first rollout is no Event: `Creating` says so in its status, and so
/// does the `PortalAvailable` that ends it (with its `lastTransitionTime`). Creating a
/// Workspace that works costs no Event; whatever happens to it after that is news, and so
/// is a first status that is a problem.
fn is_first_rollout(was: Option<&str>, now: &str) -> bool {
    matches!(was, None | Some(CREATING)) && matches!(now, CREATING | PORTAL_AVAILABLE)
}

fn invalid_status(ws: &Workspace, message: &str, now: &Time) -> WorkspaceStatus {
    let previous = ws.status.clone().unwrap_or_default();
    let desired = [
        DesiredCondition::new(READY, false, "InvalidSpec", message),
        DesiredCondition::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
        DesiredCondition::new(DEGRADED, true, "InvalidSpec", message),
    ];
    WorkspaceStatus {
        observed_generation: ws.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &desired, ws.metadata.generation, now),
        ..previous
    }
}

/// The Deployment's own condition of `type_`, if it reports one.
fn deployment_condition<'a>(deployment: &'a Deployment, type_: &str) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    deployment.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Status (pure): from the Workspace, its Deployment, its bindings and what the operator
/// refused at time `now`.
pub fn compute_status(
    ws: &Workspace,
    deployment: Option<&Deployment>,
    bindings: &[Arc<ToolBinding>],
    refusals: &Refusals,
    now: &Time,
) -> WorkspaceStatus {
    let previous = ws.status.clone().unwrap_or_default();
    let generation = ws.metadata.generation;
    let desired_replicas = effective_replicas(ws);
    let dep_status = deployment.and_then(|d| d.status.clone()).unwrap_or_default();
    let ready_replicas = dep_status.ready_replicas.unwrap_or(0);
    let available = dep_status.available_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let total_pods = dep_status.replicas.unwrap_or(0);
    let dep_observed_current = deployment.is_some_and(|d| {
        dep_status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
            && d.spec.as_ref().and_then(|s| s.replicas) == Some(desired_replicas)
    });
    let pods = format!("{available}/{desired_replicas} portal pods available");

    let deadline_exceeded = deployment
        .and_then(|d| deployment_condition(d, "Progressing"))
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let replica_failure = deployment
        .and_then(|d| deployment_condition(d, "ReplicaFailure"))
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone().unwrap_or_else(|| "the Deployment cannot create pods".into()));

    let ready = if ws.spec.suspend {
        DesiredCondition::new(READY, false, "Suspended", "spec.suspend is true: polling is stopped and the portal is scaled to 0")
    } else if desired_replicas == 0 {
        DesiredCondition::new(READY, false, "ScaledToZero", "spec.portal.replicas is 0: the portal is not running")
    } else if deployment.is_some() && available >= desired_replicas {
        DesiredCondition::new(READY, true, PORTAL_AVAILABLE, format!("{pods} at {}", portal_url(ws)))
    } else if never_ready(&previous) {
        DesiredCondition::new(READY, false, CREATING, format!("creating the portal: {pods}"))
    } else {
        DesiredCondition::new(READY, false, "RollingOut", pods.clone())
    };

    let rolling = deployment.is_none()
        || !dep_observed_current
        || updated < desired_replicas
        || total_pods > desired_replicas
        || available < desired_replicas;
    let progressing = if deadline_exceeded {
        DesiredCondition::new(PROGRESSING, false, "ProgressDeadlineExceeded", "the portal Deployment did not finish rolling out in time")
    } else if rolling {
        // Only what Ready also reports: counts that move at every step of a rollout (pods
        // updated, the Deployment just created) would each cost a status write per Workspace.
        DesiredCondition::new(PROGRESSING, true, "RollingOut", format!("rolling out: {pods}"))
    } else {
        DesiredCondition::new(PROGRESSING, false, "RolloutComplete", pods.clone())
    };

    let failing: Vec<&ToolBinding> = bindings
        .iter()
        .map(|b| b.as_ref())
        .filter(|b| b.status.as_ref().and_then(|s| conditions::find(&s.conditions, READY)).is_some_and(|c| c.status == "False"))
        .collect();
    let ready_count = bindings.iter().filter(|b| b.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, READY))).count();
    let degraded = if deadline_exceeded {
        DesiredCondition::new(DEGRADED, true, "ProgressDeadlineExceeded", "the portal Deployment did not finish rolling out in time")
    } else if let Some(message) = replica_failure {
        DesiredCondition::new(DEGRADED, true, "ReplicaFailure", message)
    } else if !failing.is_empty() {
        let names: Vec<String> = failing
            .iter()
            .map(|b| {
                let reason =
                    b.status.as_ref().and_then(|s| conditions::find(&s.conditions, READY)).map(|c| c.reason.clone()).unwrap_or_default();
                format!("{} ({reason})", b.name_any())
            })
            .collect();
        DesiredCondition::new(
            DEGRADED,
            true,
            "ToolsFailing",
            format!("{} of {} tool bindings not ready: {}", failing.len(), bindings.len(), names.join(", ")),
        )
    } else {
        DesiredCondition::new(DEGRADED, false, "AsExpected", "the portal and all tool bindings are healthy")
    };

    let (ready, progressing, degraded) = refused_conditions(refusals).unwrap_or((ready, progressing, degraded));
    let conditions = conditions::merge(&previous.conditions, &[ready, progressing, degraded], generation, now);
    let url = if refusals.refuses(Refused::Ingress) { service_url(ws) } else { portal_url(ws) };
    WorkspaceStatus {
        observed_generation: generation,
        conditions,
        portal: Some(PortalStatus { url, replicas: desired_replicas, ready_replicas }),
        tools: Some(ToolCounts { total: count(bindings.len()), ready: count(ready_count), failing: count(failing.len()) }),
        summary: summarize(bindings),
        notifications: None,
    }
}

/// Ready, Progressing and Degraded when the operator holds something back: a policy
/// violation names each rule and value, a conflict each object in the way.
fn refused_conditions(refusals: &Refusals) -> Option<(DesiredCondition, DesiredCondition, DesiredCondition)> {
    let policy = Refusal::PolicyViolation.reason();
    let conflict = Refusal::NameConflict.reason();
    let violations = (!refusals.violations.is_empty()).then(|| {
        let list: Vec<String> = refusals.violations.iter().map(ToString::to_string).collect();
        format!("the operator's policy refuses {}; nothing refused is applied", list.join("; "))
    });
    let conflicts = (!refusals.conflicts.is_empty()).then(|| {
        format!(
            "{} already exist{} without the label app.kubernetes.io/managed-by=hyperpage-operator and an owner reference to this Workspace; the operator leaves {} untouched and applies nothing until {} deleted or renamed",
            refusals.conflicts.join(", "),
            if refusals.conflicts.len() == 1 { "s" } else { "" },
            if refusals.conflicts.len() == 1 { "it" } else { "them" },
            if refusals.conflicts.len() == 1 { "it is" } else { "they are" },
        )
    });
    let waiting = "waiting for the spec or the cluster to change";
    match (violations, conflicts) {
        (None, None) => None,
        (Some(v), None) => Some((
            DesiredCondition::new(READY, false, policy, v.clone()),
            DesiredCondition::new(PROGRESSING, false, policy, waiting),
            DesiredCondition::new(DEGRADED, true, policy, v),
        )),
        (Some(v), Some(c)) => Some((
            DesiredCondition::new(READY, false, policy, v),
            DesiredCondition::new(PROGRESSING, false, conflict, waiting),
            DesiredCondition::new(DEGRADED, true, conflict, c),
        )),
        (None, Some(c)) => Some((
            DesiredCondition::new(READY, false, conflict, c.clone()),
            DesiredCondition::new(PROGRESSING, false, conflict, waiting),
            DesiredCondition::new(DEGRADED, true, conflict, c),
        )),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Roll-up of the bindings' summaries; absent until at least one binding has synced.
pub fn summarize(bindings: &[Arc<ToolBinding>]) -> Option<WorkspaceSummary> {
    let statuses: Vec<_> = bindings.iter().filter_map(|b| b.status.as_ref()).filter(|s| s.summary.is_some()).collect();
    if statuses.is_empty() {
        return None;
    }
    let mut summary = WorkspaceSummary::default();
    for status in statuses {
        let s = status.summary.as_ref().expect("filtered above");
        summary.open_pull_requests += s.code_reviews;
        summary.failing_pipelines += s.failing_pipelines;
        summary.open_issues += s.tickets;
        if let Some(t) = &status.last_successful_sync_time
            && summary.last_sync_time.as_ref().is_none_or(|seen| seen.0 < t.0)
        {
            summary.last_sync_time = Some(t.clone());
        }
    }
    Some(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(yaml: &str) -> Workspace {
        serde_norway::from_str(yaml).unwrap()
    }
    fn deployment(yaml: &str) -> Deployment {
        serde_norway::from_str(yaml).unwrap()
    }
    fn bindings() -> Vec<Arc<ToolBinding>> {
        let all: Vec<ToolBinding> = serde_norway::from_str(include_str!("../../tests/fixtures/toolbindings-mixed.yaml")).unwrap();
        let all: Vec<_> = all.into_iter().map(Arc::new).collect();
        bindings_of(&all, "team-payments", "payments")
    }
    fn now() -> Time {
        Time("2026-11-02T00:00:00Z".parse().unwrap())
    }
    fn condition<'a>(status: &'a WorkspaceStatus, type_: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&status.conditions, type_).unwrap()
    }

    const BASIC: &str = include_str!("../../tests/fixtures/workspace-basic.yaml");
    const AVAILABLE: &str = include_str!("../../tests/fixtures/deployment-available.yaml");
    const STUCK: &str = include_str!("../../tests/fixtures/deployment-deadline-exceeded.yaml");

    #[test]
    fn ready_follows_the_deployments_availability() {
        let ws = ws(BASIC);
        let before = compute_status(&ws, None, &[], &Refusals::default(), &now());
        assert_eq!(condition(&before, READY).status, "False");
        assert_eq!(condition(&before, PROGRESSING).status, "True");

        let after = compute_status(&ws, Some(&deployment(AVAILABLE)), &[], &Refusals::default(), &now());
        let ready = condition(&after, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "PortalAvailable"));
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(condition(&after, PROGRESSING).reason, "RolloutComplete");
        assert_eq!(after.observed_generation, Some(1));
        assert_eq!(after.portal.as_ref().unwrap().ready_replicas, 1);
        assert_eq!(after.portal.as_ref().unwrap().url, "http://payments-portal.team-payments.svc/");
    }

    #[test]
    fn a_portal_never_available_is_creating_and_one_that_was_is_rolling_out() {
        let mut ws = ws(BASIC);
        let first = compute_status(&ws, None, &[], &Refusals::default(), &now());
        assert_eq!(condition(&first, READY).reason, CREATING);
        ws.status = Some(first);
        assert_eq!(
            condition(&compute_status(&ws, None, &[], &Refusals::default(), &now()), READY).reason,
            CREATING,
            "until it is available"
        );
        ws.status = Some(compute_status(&ws, Some(&deployment(AVAILABLE)), &[], &Refusals::default(), &now()));
        // Lost its pods, or scaled up: the portal was available before, so this is a rollout.
        let again = compute_status(&ws, None, &[], &Refusals::default(), &now());
        assert_eq!(condition(&again, READY).reason, "RollingOut");

        assert!(
            is_first_rollout(None, CREATING)
                && is_first_rollout(Some(CREATING), PORTAL_AVAILABLE)
                && is_first_rollout(None, PORTAL_AVAILABLE)
        );
        assert!(!is_first_rollout(Some(PORTAL_AVAILABLE), "RollingOut") && !is_first_rollout(Some("RollingOut"), PORTAL_AVAILABLE));
        assert!(
            !is_first_rollout(None, "PolicyViolation") && !is_first_rollout(Some("PolicyViolation"), PORTAL_AVAILABLE),
            "problems and recoveries are news"
        );
    }

    #[test]
    fn a_stuck_rollout_is_degraded() {
        let mut stuck_ws = ws(BASIC);
        stuck_ws.metadata.generation = Some(2);
        let status = compute_status(&stuck_ws, Some(&deployment(STUCK)), &[], &Refusals::default(), &now());
        assert_eq!(condition(&status, READY).status, "False");
        let degraded = condition(&status, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ProgressDeadlineExceeded"));
        assert_eq!(condition(&status, PROGRESSING).status, "False");
    }

    #[test]
    fn bindings_roll_up_into_counts_and_summary() {
        let status = compute_status(&ws(BASIC), Some(&deployment(AVAILABLE)), &bindings(), &Refusals::default(), &now());
        let tools = status.tools.as_ref().unwrap();
        assert_eq!((tools.total, tools.ready, tools.failing), (3, 2, 1), "the other workspace's binding is not counted");
        let summary = status.summary.as_ref().unwrap();
        assert_eq!((summary.open_pull_requests, summary.failing_pipelines, summary.open_issues), (6, 3, 8));
        assert_eq!(summary.last_sync_time, Some(Time("2026-11-01T10:07:00Z".parse().unwrap())));
        let degraded = condition(&status, DEGRADED);
        assert_eq!(degraded.reason, "ToolsFailing");
        assert!(degraded.message.contains("jira (SecretNotFound)"), "{}", degraded.message);
    }

    #[test]
    fn a_recomputed_status_is_identical_so_no_write_is_needed() {
        let mut ws = ws(BASIC);
        let first = compute_status(&ws, Some(&deployment(AVAILABLE)), &bindings(), &Refusals::default(), &now());
        ws.status = Some(first.clone());
        let later = Time("2026-11-03T00:00:00Z".parse().unwrap());
        assert_eq!(compute_status(&ws, Some(&deployment(AVAILABLE)), &bindings(), &Refusals::default(), &later), first);
    }

    #[test]
    fn suspended_and_zero_replicas_say_so() {
        let suspended =
            compute_status(&ws(include_str!("../../tests/fixtures/workspace-suspended.yaml")), None, &[], &Refusals::default(), &now());
        assert_eq!(condition(&suspended, READY).reason, "Suspended");
        assert_eq!(suspended.portal.unwrap().replicas, 0);
    }

    #[test]
    fn validate_catches_what_predates_the_schema() {
        let mut bad = ws(BASIC);
        bad.spec.refresh_interval = Some("5 minutes".into());
        assert!(validate(&bad).unwrap_err().contains("spec.refreshInterval"));
        assert!(validate(&ws(BASIC)).is_ok());
    }

    #[test]
    fn a_policy_violation_names_rule_and_value_and_keeps_the_service_url() {
        let ws = ws(include_str!("../../tests/fixtures/workspace-ha-ingress.yaml"));
        let policy = policy::Policy::restrictive("ghcr.io/hyperpage-dev/hyperpage:0.1.0");
        let refusals = Refusals { violations: policy::validate(&ws, &policy), conflicts: vec![] };
        assert!(refusals.refuses(Refused::Deployment) && refusals.refuses(Refused::Service) && refusals.refuses(Refused::Ingress));
        let status = compute_status(&ws, Some(&deployment(AVAILABLE)), &[], &refusals, &now());
        let ready = condition(&status, READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "PolicyViolation"));
        for needle in ["policy.allowedImages", "registry.example.com/mirror/hyperpage:0.1.0", "policy.allowedServiceTypes", "LoadBalancer"]
        {
            assert!(ready.message.contains(needle), "{needle} in {}", ready.message);
        }
        assert_eq!(condition(&status, DEGRADED).reason, "PolicyViolation");
        assert_eq!(status.portal.unwrap().url, "http://payments-portal.team-payments.svc:8443/", "no Ingress URL for a refused Ingress");
    }

    #[test]
    fn a_name_conflict_is_degraded_and_names_the_object() {
        let refusals = Refusals { violations: vec![], conflicts: vec!["Service/payments-portal".into()] };
        let status = compute_status(&ws(BASIC), Some(&deployment(AVAILABLE)), &[], &refusals, &now());
        let degraded = condition(&status, DEGRADED);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "NameConflict"));
        assert!(degraded.message.starts_with("Service/payments-portal already exists without the label"), "{}", degraded.message);
        assert_eq!(condition(&status, READY).reason, "NameConflict");
    }
}
