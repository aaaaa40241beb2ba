//! What every reconcile shares: the client, the caches, the fence and the telemetry.

use super::cached::Cached;
use super::child_cache::ChildCache;
use super::children::{BuildConfig, FIELD_MANAGER, is_owned_by};
use super::diff::Fingerprint;
use super::error::{Error, backoff};
use super::index::BindingIndex;
use crate::api::workspace::WorkspaceStatus;
use crate::api::{ToolBinding, Workspace};
use crate::engine::Engine;
use crate::lease::Fence;
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};
use crate::providers::credential::Credentials;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, GetParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Read-only views of the watch caches the reconcilers work from. Children are cached as
/// [`super::child_cache::Child`]: uid, owners, the fields the operator owns, a Deployment's progress.
#[derive(Clone)]
pub struct Stores {
    pub workspaces: Store<Workspace>,
    pub bindings: Store<ToolBinding>,
    /// The bindings of each Workspace, kept in step with `bindings`.
    pub bindings_by_workspace: BindingIndex,
    pub deployments: ChildCache<Deployment>,
    pub services: ChildCache<Service>,
    pub service_accounts: ChildCache<ServiceAccount>,
    pub roles: ChildCache<Role>,
    pub role_bindings: ChildCache<RoleBinding>,
    pub network_policies: ChildCache<NetworkPolicy>,
    pub ingresses: ChildCache<Ingress>,
    pub pod_disruption_budgets: ChildCache<PodDisruptionBudget>,
}

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub build: BuildConfig,
    pub fence: Fence,
    pub metrics: Metrics,
    reporter: Reporter,
    /// How often a converged object is looked at again (reads only).
    pub resync: Duration,
    /// The aggregation engine, when polling is on.
    pub engine: Option<Arc<Engine>>,
    /// How bindings' credentials are read (shared with the engine).
    pub credentials: Credentials,
    failures: Mutex<HashMap<String, u32>>,
    /// `Kind/namespace/name` of children the API server stored differently from how they
    /// were applied: (fingerprint applied, fingerprint stored). Normally empty.
    stored_differently: Mutex<HashMap<String, (Fingerprint, Fingerprint)>>,
    /// Workspace statuses written whose echo the cache may not show yet.
    pub workspace_statuses: WrittenStatuses<WorkspaceStatus>,
    /// Events being published (see [`Context::publish_event`]).
    events_in_flight: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Statuses this process wrote, each with the resourceVersion the object had in the cache
/// when it was written. A reconcile that starts before the watch delivered the write (a
/// child's event wakes the Workspace while its own status write is in flight) would compare
/// its status with the stale one and write the same status again, and announce the same
/// transition twice; while the cache shows that same resourceVersion, the written status is
/// the one to compare with. An entry goes once the cache moved on.
pub struct WrittenStatuses<S> {
    written: Mutex<HashMap<String, (Option<String>, S)>>,
}

impl<S> Default for WrittenStatuses<S> {
    fn default() -> Self {
        Self { written: Mutex::new(HashMap::new()) }
    }
}

impl<S: Clone> WrittenStatuses<S> {
    /// The status written for `key`, if the cache still shows the object at the
    /// resourceVersion it had before that write.
    pub fn pending(&self, key: &str, cached_version: Option<&str>) -> Option<S> {
        let mut written = self.written.lock().expect("written statuses lock poisoned");
        match written.get(key) {
            Some((before, status)) if before.as_deref() == cached_version => Some(status.clone()),
            Some(_) => {
                written.remove(key);
                None
            }
            None => None,
        }
    }

    /// `status` was written over the object the cache showed at `cached_version`.
    pub fn wrote(&self, key: String, cached_version: Option<String>, status: S) {
        self.written.lock().expect("written statuses lock poisoned").insert(key, (cached_version, status));
    }
}

impl Context {
    pub fn new(client: Client, stores: Stores, build: BuildConfig, fence: Fence, metrics: Metrics, resync: Duration) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        let credentials = Credentials::direct(client.clone());
        Self {
            client,
            stores,
            build,
            fence,
            metrics,
            reporter,
            resync,
            engine: None,
            credentials,
            failures: Mutex::new(HashMap::new()),
            stored_differently: Mutex::new(HashMap::new()),
            workspace_statuses: WrittenStatuses::default(),
            events_in_flight: Mutex::new(Vec::new()),
        }
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn with_engine(mut self, engine: Option<Arc<Engine>>) -> Self {
        self.engine = engine;
        self
    }

    /// Refuses every write once this replica is no longer the leader.
    pub fn ensure_leader(&self) -> Result<(), Error> {
        if self.fence.is_open() { Ok(()) } else { Err(Error::NotLeader) }
    }

    /// Server-side applies `desired` unless the cached live object already matches it.
    /// Returns whether a request was sent.
    pub async fn apply_if_changed<K>(&self, controller: &'static str, store: &ChildCache<K>, desired: &K) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let kind = kind_of::<K>();
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let mut body = serde_json::to_value(desired).map_err(|source| Error::Serialize { kind, source })?;
        let want = Fingerprint::of_object(&body);
        let stored_key = format!("{kind}/{namespace}/{name}");
        if let Some(live) = store.get(&namespace, &name) {
            let stored_as = self.stored_differently.lock().expect("stored_differently lock poisoned").get(&stored_key).copied();
            if live.owned() == want || stored_as == Some((want, live.owned())) {
                return Ok(false);
            }
            // The live object's uid makes the apply a precondition: should that object have
            // been replaced by someone else's since the cache saw it, the API server refuses
            // ("uid mismatch") instead of applying over the newcomer.
            if let Some(uid) = live.uid() {
                body["metadata"]["uid"] = serde_json::Value::String(uid);
            }
        }
        self.ensure_leader()?;
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let applied = api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|source| Error::Apply { kind, name: name.clone(), source })?;
        self.metrics.record_write(controller, kind, "apply");
        tracing::info!(kind, %namespace, %name, "applied");
        // Normally what the API server stored is what was applied. Where it is not (a value it
        // rewrites), the pair is remembered, so the next look finds the child converged
        // instead of applying it again on every reconcile.
        let stored = serde_json::to_value(&applied).ok().and_then(|v| Cached::<K>::from_value(v).ok()).map(|c| c.owned());
        let mut differently = self.stored_differently.lock().expect("stored_differently lock poisoned");
        match stored {
            Some(stored) if stored != want => {
                tracing::debug!(kind, %namespace, %name, "the API server stores this child differently from how it was applied");
                differently.insert(stored_key, (want, stored));
            }
            _ => {
                differently.remove(&stored_key);
            }
        }
        Ok(true)
    }

    /// `Kind/name` when an object with the name of `desired` exists but is not `owner`'s own
    /// child (unlabelled, or not owned by it): the operator must leave it alone. The label
    /// selected caches only hold labelled objects, so a name missing there is read once: its
    /// metadata, from the API server's watch cache (`resourceVersion=0`). A new Workspace
    /// costs six such reads; from etcd each took the API server and etcd half the CPU of an
    /// apply (0.92 ms against 0.46 ms from the cache, bench/results/notes.md item 19). The
    /// cache lags etcd by the watch's delivery, milliseconds: an object created within them
    /// is missed, as one created between this read and the apply always could be.
    pub async fn foreign_object<K>(&self, store: &ChildCache<K>, desired: &K, owner: &Workspace) -> Result<Option<String>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let kind = kind_of::<K>();
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let owned = match store.get(&namespace, &name) {
            Some(live) => live.is_owned_by(owner),
            None => {
                let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
                match api.get_metadata_opt_with(&name, &GetParams::any()).await {
                    Ok(Some(live)) => is_owned_by(&live.metadata, owner),
                    Ok(None) => true,
                    Err(source) => return Err(Error::Read { kind, name, source }),
                }
            }
        };
        Ok((!owned).then(|| format!("{kind}/{name}")))
    }

    /// The object as the API server has it now (the caches keep only part of a child).
    pub async fn read_live<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|source| Error::Read { kind: kind_of::<K>(), name: name.to_string(), source })
    }

    /// Deletes a child that must no longer exist (a PDB after scaling to one replica, an
    /// Ingress after it was removed from the spec), if the cache says `owner` owns it.
    pub async fn delete_if_present<K>(
        &self,
        controller: &'static str,
        store: &ChildCache<K>,
        owner: &Workspace,
        name: &str,
    ) -> Result<bool, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let namespace = owner.namespace().unwrap_or_default();
        let namespace = namespace.as_str();
        if !store.get(namespace, name).is_some_and(|live| live.is_owned_by(owner)) {
            return Ok(false);
        }
        self.ensure_leader()?;
        let kind = kind_of::<K>();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => return Err(Error::Delete { kind, name: name.to_string(), source }),
        }
        self.metrics.record_write(controller, kind, "delete");
        tracing::info!(kind, %namespace, %name, "deleted");
        Ok(true)
    }

    /// Server-side applies a status under the operator's field manager.
    pub async fn apply_status<K>(&self, controller: &'static str, object: &K, status: &impl Serialize) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        self.ensure_leader()?;
        let kind = kind_of::<K>();
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|source| Error::Status { kind, name, source })?;
        self.metrics.record_write(controller, kind, "status");
        Ok(())
    }

    /// Publishes an Event off the reconcile's path (on a task of its own): a failure is
    /// logged, never fatal, since the condition says it too, so the reconcile need not wait
    /// a round trip for it; at a cold start that was one more request per Workspace in a
    /// reconcile slot. Still fenced: a deposed leader's client refuses it.
    pub fn publish_event(
        &self,
        controller: &'static str,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
        action: &str,
    ) {
        if self.ensure_leader().is_err() {
            return;
        }
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A recorder per Event: kube's Recorder keeps every Event it published for six minutes
        // (to turn repeats into a series) and is swept only when the next one is published,
        // scanning all of them under one lock. The operator publishes one Event per
        // transition, so that cache held every cold start's Events (four per Workspace with
        // its binding) for as long as nothing else happened and serialised the publishing.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let (metrics, reference, reason) = (self.metrics.clone(), reference.clone(), reason.to_string());
        let publishing = tokio::spawn(async move {
            match recorder.publish(&event, &reference).await {
                Ok(()) => metrics.record_write(controller, "Event", "create"),
                Err(error) => tracing::warn!(%error, reason, "failed to publish event"),
            }
        });
        let mut in_flight = self.events_in_flight.lock().expect("events lock poisoned");
        in_flight.retain(|task| !task.is_finished());
        in_flight.push(publishing);
    }

    /// Resolves once every Event published so far was sent (or failed).
    pub async fn events_sent(&self) {
        let in_flight = std::mem::take(&mut *self.events_in_flight.lock().expect("events lock poisoned"));
        for task in in_flight {
            let _ = task.await;
        }
    }

    pub fn observe_reconcile(&self, controller: &'static str, seconds: f64) {
        let labels = ControllerLabels { controller };
        self.metrics.reconciles.get_or_create(&labels).inc();
        self.metrics.reconcile_duration.get_or_create(&labels).observe(seconds);
    }

    /// Forgets past failures of `key` after a success.
    pub fn reset_failures(&self, key: &str) {
        self.failures.lock().expect("failures lock poisoned").remove(key);
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn record_failure(&self, controller: &'static str, key: &str, error: &Error) -> Duration {
        self.metrics.reconcile_errors.get_or_create(&ErrorLabels { controller, category: error.category() }).inc();
        let mut failures = self.failures.lock().expect("failures lock poisoned");
        let count = failures.entry(key.to_string()).or_insert(0);
        *count += 1;
        backoff(*count)
    }
}

pub fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are static strings for every k8s-openapi and kube-derived type.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "Object",
    }
}

/// `namespace/name`, the key used in logs and the failure counter.
pub fn object_key<K: ResourceExt>(object: &K) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

#[cfg(test)]
mod tests {
    use super::WrittenStatuses;

    #[test]
    fn a_written_status_counts_until_the_cache_moves_on() {
        let statuses = WrittenStatuses::default();
        assert_eq!(statuses.pending("a/ws", Some("5")), None, "nothing written");
        statuses.wrote("a/ws".into(), Some("5".into()), "RollingOut");
        assert_eq!(statuses.pending("a/ws", Some("5")), Some("RollingOut"), "the cache still shows the object before the write");
        assert_eq!(statuses.pending("b/ws", Some("5")), None, "another object");
        assert_eq!(statuses.pending("a/ws", Some("6")), None, "the cache moved on: its status counts");
        assert_eq!(statuses.pending("a/ws", Some("5")), None, "and the entry is gone");
    }
}
