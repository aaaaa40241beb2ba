//! ToolBinding reconcile: is everything the binding points at really there?
//!
//! dereference (workspace from the cache, the credential through the shared reader in
//! [`credential`], which reads only opted-in Secrets) → validate (pure) → status, with an
//! Event on every transition. The token is dropped at once; no message mentions it.

use super::context::{Context, object_key};
use super::error::Error;
use crate::api::conditions::{self, CREDENTIALS_VALID, DesiredCondition, RATE_LIMITED, READY, SYNCED};
use crate::api::toolbinding::RateLimitStatus;
use crate::api::{ToolBinding, ToolBindingStatus, Workspace, duration};
use crate::engine::Engine;
use crate::engine::status::{LastPoll, SyncRecord, compose};
use crate::providers::credential::{Problem, ReadError, Target};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::sync::Arc;

pub const CONTROLLER: &str = "toolbinding";

/// Validate (pure): the conditions this binding should carry, given what the credential
/// check found (see [`credential`]).
pub fn validate(binding: &ToolBinding, workspace_found: bool, credentials: &Result<(), Problem>) -> Vec<DesiredCondition> {
    let secret_ref = &binding.spec.credentials_secret_ref;
    let credentials = match credentials {
        Err(problem) => DesiredCondition::new(CREDENTIALS_VALID, false, problem.reason().as_str(), problem.to_string()),
        Ok(()) => DesiredCondition::new(
            CREDENTIALS_VALID,
            true,
            "SecretFound",
            format!("token found in Secret {:?} key {:?}, allowed for this endpoint", secret_ref.name, secret_ref.key),
        ),
    };
    let interval_error =
        binding.spec.refresh_interval.as_deref().and_then(|i| duration::parse(i).err()).map(|e| format!("spec.refreshInterval: {e}"));
    let ready = if !workspace_found {
        DesiredCondition::new(
            READY,
            false,
            "WorkspaceNotFound",
            format!("Workspace {:?} not found in this namespace", binding.spec.workspace_ref.name),
        )
    } else if let Some(message) = interval_error {
        DesiredCondition::new(READY, false, "InvalidSpec", message)
    } else if !credentials.is_true() {
        DesiredCondition::new(READY, false, credentials.reason, credentials.message.clone())
    } else {
        DesiredCondition::new(READY, true, "Configured", "workspace and credentials found")
    };
    vec![ready, credentials]
}

pub async fn reconcile(binding: Arc<ToolBinding>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&binding, &ctx).await;
    ctx.observe_reconcile(CONTROLLER, started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&object_key(binding.as_ref()));
    }
    result
}

async fn reconcile_inner(binding: &ToolBinding, ctx: &Context) -> Result<Action, Error> {
    let namespace = binding.namespace().ok_or_else(|| Error::MissingNamespace(binding.name_any()))?;
    if binding.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let workspace_found =
        ctx.stores.workspaces.get(&ObjectRef::<Workspace>::new(&binding.spec.workspace_ref.name).within(&namespace)).is_some();
    // The token itself is dropped at once: validation only needs to know it is usable.
    let credentials = match ctx.credentials.read(&Target::for_binding(binding)).await {
        Ok(_token) => Ok(()),
        Err(ReadError::Problem(problem)) => Err(problem),
        Err(error) => return Err(Error::ReadSecret(error)),
    };

    let validation = validate(binding, workspace_found, &credentials);
    let now = Time(jiff::Timestamp::now());
    let previous = binding.status.clone().unwrap_or_default();
    let record = ctx.engine.as_ref().and_then(|engine| engine.record(&ObjectRef::from_obj(binding)));
    let desired = match &ctx.engine {
        Some(engine) => compose(validation, LastPoll::of(record.as_ref(), binding), engine.cache().in_fallback()),
        None => validation,
    };
    let status = binding_status(binding, &previous, &desired, record.as_ref(), &now);
    let workspace = ctx.stores.workspaces.get(&ObjectRef::<Workspace>::new(&binding.spec.workspace_ref.name).within(&namespace));
    if let Some(engine) = &ctx.engine {
        // A new binding or spec is scheduled now, not at the engine's next rescan.
        engine.notice(binding, workspace.as_deref());
    }
    let heartbeat = Engine::interval(binding, workspace.as_deref()) * HEARTBEAT_INTERVALS;
    if needs_write(&previous, &status, heartbeat, &now) {
        ctx.apply_status(CONTROLLER, binding, &status).await?;
        publish_transitions(binding, ctx, &previous, &status).await;
    }
    // The resync comes from the controller's periodic pass (`WarmCache::every`).
    Ok(Action::await_change())
}

/// With nothing else changed, the sync timestamps are refreshed only this many intervals
/// apart: a poll that found nothing new (a 304) causes no status write.
pub const HEARTBEAT_INTERVALS: u32 = 6;

/// Status (pure): the conditions plus the engine's data; without a fresh record the last
/// data in status is kept (stale, and marked so by the conditions), never dropped.
pub fn binding_status(
    binding: &ToolBinding,
    previous: &ToolBindingStatus,
    desired: &[DesiredCondition],
    record: Option<&SyncRecord>,
    now: &Time,
) -> ToolBindingStatus {
    let mut status = ToolBindingStatus {
        observed_generation: binding.metadata.generation,
        conditions: conditions::merge(&previous.conditions, desired, binding.metadata.generation, now),
        ..previous.clone()
    };
    if let Some(record) = record {
        status.last_sync_time = Some(record.attempted_at.clone());
        status.last_successful_sync_time = record.succeeded_at.clone().or(status.last_successful_sync_time);
        if record.rate_limit.is_some() {
            status.rate_limit = record.rate_limit.clone();
        }
        if let Some(snapshot) = &record.snapshot {
            status.summary = Some(snapshot.summary.clone());
            status.items = Some(snapshot.items.clone());
        }
    }
    status
}

/// Whether `new` must be written: anything but the sync timestamps and the quota's moving
/// figures (`remaining`, `resetAt`: other bindings of the token move them) changed, or the
/// timestamps are older than `heartbeat`. Those are written with any other change.
pub fn needs_write(previous: &ToolBindingStatus, new: &ToolBindingStatus, heartbeat: std::time::Duration, now: &Time) -> bool {
    let strip = |s: &ToolBindingStatus| ToolBindingStatus {
        last_sync_time: None,
        last_successful_sync_time: None,
        rate_limit: s.rate_limit.as_ref().map(|r| RateLimitStatus { limit: r.limit, ..Default::default() }),
        ..s.clone()
    };
    if strip(previous) != strip(new) {
        return true;
    }
    if new.last_sync_time.is_none() || previous.last_sync_time == new.last_sync_time {
        return false;
    }
    let stored_age = previous.last_sync_time.as_ref().map(|t| now.0.duration_since(t.0));
    stored_age.is_none_or(|age| age >= jiff::SignedDuration::try_from(heartbeat).unwrap_or(jiff::SignedDuration::MAX))
}

/// Events for a change of state: one Warning per problem that appeared (conditions naming the
/// same reason speak once), and one Normal Event for good news however many conditions it
/// turned (a binding that recovers: one Event, Ready's), plus one when pipelines start failing.
/// A new binding that is fine at first sight gets none: nothing changed that its status does
/// not already say, and at 10,000 new bindings that is 10,000 writes the API server is spared.
async fn publish_transitions(binding: &ToolBinding, ctx: &Context, previous: &ToolBindingStatus, status: &ToolBindingStatus) {
    let reference = binding.object_ref(&());
    for (warning, reason, message) in transitions(previous, status) {
        ctx.publish_event(CONTROLLER, &reference, warning, &reason, message, "Sync");
    }
    let failing = |s: &ToolBindingStatus| s.summary.as_ref().map_or(0, |s| s.failing_pipelines);
    if failing(status) > failing(previous) {
        let names: Vec<String> =
            status.items.iter().flat_map(|i| &i.pipelines).filter(|p| p.failing).map(|p| p.id.clone()).take(5).collect();
        let note = format!("{} pipelines failing (was {}): {}", failing(status), failing(previous), names.join(", "));
        ctx.publish_event(CONTROLLER, &reference, true, "PipelineFailing", note, "Sync");
    }
}

/// The Events a status change deserves (pure): `(warning, reason, message)`, warnings first.
fn transitions(previous: &ToolBindingStatus, status: &ToolBindingStatus) -> Vec<(bool, String, String)> {
    let mut warnings: Vec<(bool, String, String)> = Vec::new();
    let mut good_news = None;
    for type_ in [CREDENTIALS_VALID, RATE_LIMITED, SYNCED, READY] {
        let Some(now) = conditions::find(&status.conditions, type_) else { continue };
        let before = conditions::find(&previous.conditions, type_);
        if before.map(|c| (&c.status, &c.reason)) == Some((&now.status, &now.reason)) || now.status == "Unknown" {
            continue;
        }
        let warning = if type_ == RATE_LIMITED { now.status == "True" } else { now.status != "True" };
        if !warning {
            // Ready comes last: when it turned, it speaks for the rest. A condition seen for
            // the first time that is good did not turn: it was never anything else.
            if before.is_some() {
                good_news = Some((false, now.reason.clone(), now.message.clone()));
            }
        } else if !warnings.iter().any(|(_, reason, _)| *reason == now.reason) {
            warnings.push((true, now.reason.clone(), now.message.clone()));
        }
    }
    warnings.extend(good_news.filter(|(_, reason, _)| !warnings.iter().any(|(_, r, _)| r == reason)));
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::credential;

    fn binding() -> ToolBinding {
        serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap()
    }

    fn problem(target: &Target, labelled: bool) -> Problem {
        let mut secret = k8s_openapi::api::core::v1::Secret::default();
        if labelled {
            secret.metadata.labels = Some([(credential::LABEL.to_string(), "true".to_string())].into());
        }
        credential::check(target, Some(&secret)).unwrap_err()
    }

    #[test]
    fn conditions_name_the_first_problem() {
        let b = binding();
        let target = Target::for_binding(&b);
        let c = validate(&b, true, &Err(problem(&target, false)));
        assert_eq!((c[0].type_, c[0].status, c[0].reason), (READY, Some(false), "SecretNotOptedIn"));
        assert_eq!((c[1].type_, c[1].status, c[1].reason), (CREDENTIALS_VALID, Some(false), "SecretNotOptedIn"));
        assert_eq!(c[0].message, c[1].message);
        let c = validate(&b, false, &Ok(()));
        assert_eq!((c[0].status, c[0].reason), (Some(false), "WorkspaceNotFound"));
        assert_eq!((c[1].status, c[1].reason), (Some(true), "SecretFound"));
        let c = validate(&b, true, &Err(problem(&target, true)));
        assert_eq!(c[1].reason, "KeyNotFound");
        let c = validate(&b, true, &Ok(()));
        assert!(c.iter().all(|c| c.is_true()));
    }

    #[test]
    fn a_new_ready_binding_gets_no_event_a_recovery_one_and_each_problem_its_own() {
        let b = binding();
        let now = Time(jiff::Timestamp::now());
        let status_of = |desired: &[DesiredCondition], previous: &ToolBindingStatus| binding_status(&b, previous, desired, None, &now);
        let fresh = ToolBindingStatus::default();
        let ready = status_of(&validate(&b, true, &Ok(())), &fresh);
        assert!(transitions(&fresh, &ready).is_empty(), "fine at first sight: no Event");
        assert!(transitions(&ready, &ready).is_empty(), "no change, no Event");
        let target = Target::for_binding(&b);
        let broken = status_of(&validate(&b, true, &Err(problem(&target, false))), &fresh);
        let events = transitions(&fresh, &broken);
        assert_eq!(
            events.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(),
            [(true, "SecretNotOptedIn")],
            "a problem at first sight is news"
        );

        let unlabelled = status_of(&validate(&b, true, &Err(problem(&target, false))), &ready);
        let events = transitions(&ready, &unlabelled);
        assert_eq!(events.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(), [(true, "SecretNotOptedIn")], "one reason, one Event");
        let no_workspace = status_of(&validate(&b, false, &Err(problem(&target, true))), &ready);
        let events = transitions(&ready, &no_workspace);
        assert_eq!(events.iter().map(|e| (e.0, e.1.as_str())).collect::<Vec<_>>(), [(true, "KeyNotFound"), (true, "WorkspaceNotFound")]);
        let recovered = status_of(&validate(&b, true, &Ok(())), &no_workspace);
        assert_eq!(transitions(&no_workspace, &recovered).iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["Configured"]);
    }

    /// N bindings sharing a token must not mean N status writes per interval: the quota's
    /// moving figures alone write nothing, the timestamps only after the heartbeat.
    #[test]
    fn an_unchanged_poll_of_a_shared_token_writes_no_status() {
        let t = |s: &str| Time(s.parse().unwrap());
        let quota = |remaining, reset: &str| RateLimitStatus { limit: Some(5000), remaining: Some(remaining), reset_at: Some(t(reset)) };
        let previous = ToolBindingStatus {
            last_sync_time: Some(t("2026-11-23T10:00:00Z")),
            rate_limit: Some(quota(4000, "2026-11-23T11:00:00Z")),
            ..Default::default()
        };
        let heartbeat = std::time::Duration::from_secs(6 * 300);
        let later = ToolBindingStatus {
            last_sync_time: Some(t("2026-11-23T10:05:00Z")),
            rate_limit: Some(quota(3120, "2026-11-23T12:00:00Z")),
            ..previous.clone()
        };
        assert!(!needs_write(&previous, &later, heartbeat, &t("2026-11-23T10:05:00Z")), "remaining and resetAt moved: no write");
        assert!(needs_write(&previous, &later, heartbeat, &t("2026-11-23T10:30:00Z")), "the heartbeat writes them");
        let new_limit = ToolBindingStatus {
            rate_limit: Some(RateLimitStatus { limit: Some(15000), ..quota(3120, "2026-11-23T12:00:00Z") }),
            ..later.clone()
        };
        assert!(needs_write(&previous, &new_limit, heartbeat, &t("2026-11-23T10:05:00Z")), "a new limit is written");
        let first = ToolBindingStatus { rate_limit: None, ..previous.clone() };
        assert!(needs_write(&first, &later, heartbeat, &t("2026-11-23T10:05:00Z")), "the first quota seen is written");
    }
}
