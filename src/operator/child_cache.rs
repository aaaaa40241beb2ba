//! The operator's children as its caches keep them: per child, its uid, the Workspaces
//! named among its owner references, a [`Fingerprint`] of the fields the operator owns and,
//! for a Deployment, its progress. Nothing else: no `ObjectMeta`, no reflector key.
//!
//! A kube reflector store keeps each object whole under a key of four strings; even slimmed
//! to its identity, a child cost ~900 B there (a k8s-openapi `ObjectMeta` is ~350 B before
//! any of its strings, an owner reference four strings more) and ~1.5 KiB of RSS, six times
//! per Workspace. Here a child is one map entry of about 150 B. The watch events still arrive
//! as [`Cached`] (decoded once, dropped after the entry is made).
//!
//! The cache also says which Workspaces to look at: a child's change wakes its owners only
//! when what the operator reads of it changed (a new resourceVersion alone does not: the
//! controller manager's annotations, another manager's fields), and a delete wakes them too.

use super::cached::Cached;
use super::diff::Fingerprint;
use crate::api::Workspace;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{broadcast, watch};

/// A Kubernetes uid: a UUID in 16 bytes, or (never seen from an API server) the text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Uid {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl Uid {
    fn new(text: &str) -> Self {
        parse_uuid(text).map(Uid::Uuid).unwrap_or_else(|| Uid::Text(text.into()))
    }

    fn is(&self, text: &str) -> bool {
        match self {
            Uid::Uuid(bytes) => parse_uuid(text).is_some_and(|other| &other == bytes),
            Uid::Text(own) => own.as_ref() == text,
        }
    }

    fn text(&self) -> String {
        match self {
            Uid::Uuid(b) => {
                let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
                format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
            }
            Uid::Text(text) => text.to_string(),
        }
    }
}

/// The 16 bytes of a canonical, lower-case UUID (8-4-4-4-12 hex digits), or `None`: only the
/// form that prints back identically, so [`Uid::text`] returns what the API server sent.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    let digits: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'-').collect();
    if digits.len() != 32 || !digits.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        let nibble = |b: u8| if b.is_ascii_digit() { b - b'0' } else { b - b'a' + 10 };
        out[i] = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Some(out)
}

/// A Workspace among a child's owner references.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    name: Box<str>,
    uid: Uid,
}

/// One child, as far as a reconcile reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    uid: Option<Uid>,
    owners: Box<[Owner]>,
    /// Only compared: a child that starts being deleted wakes its owners.
    deleting: bool,
    owned: Fingerprint,
    /// A Deployment's generation, `spec.replicas` and `status` as compact JSON.
    progress: Option<Box<str>>,
}

impl Child {
    fn of<K: Resource<DynamicType = ()>>(cached: &Cached<K>) -> Self {
        let meta = &cached.metadata;
        let owners = meta
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.kind == Workspace::kind(&()) && o.api_version.starts_with(crate::api::GROUP))
            .map(|o| Owner { name: o.name.as_str().into(), uid: Uid::new(&o.uid) })
            .collect();
        Self {
            uid: meta.uid.as_deref().map(Uid::new),
            owners,
            deleting: meta.deletion_timestamp.is_some(),
            owned: cached.owned(),
            progress: cached.progress_json().map(Into::into),
        }
    }

    /// The fingerprint of the fields the operator owns (see [`Fingerprint`]).
    pub fn owned(&self) -> Fingerprint {
        self.owned
    }

    /// The child's uid, as the API server spells it.
    pub fn uid(&self) -> Option<String> {
        self.uid.as_ref().map(Uid::text)
    }

    /// Whether `ws` (by uid) is among the child's owners. The caches select on the operator's
    /// label, so for a cached child this is [`super::children::is_owned_by`].
    pub fn is_owned_by(&self, ws: &Workspace) -> bool {
        let uid = ws.uid();
        self.owners.iter().any(|o| uid.as_deref().is_some_and(|uid| o.uid.is(uid)))
    }

    /// The Deployment as far as a Workspace's status reads it: name, namespace, generation,
    /// `spec.replicas` and `status` (`None` for a child that is not a Deployment).
    pub fn progress(&self, namespace: &str, name: &str) -> Option<Deployment> {
        #[derive(serde::Deserialize)]
        struct Progress {
            generation: Option<i64>,
            spec: ProgressSpec,
            status: Option<k8s_openapi::api::apps::v1::DeploymentStatus>,
        }
        #[derive(serde::Deserialize)]
        struct ProgressSpec {
            replicas: Option<i32>,
        }
        let kept: Progress = serde_json::from_str(self.progress.as_deref()?).ok()?;
        Some(Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                generation: kept.generation,
                uid: self.uid(),
                deletion_timestamp: None,
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec { replicas: kept.spec.replicas, ..Default::default() }),
            status: kept.status,
        })
    }
}

/// `namespace/name`: one allocation per child.
fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

/// The namespace part of a [`key`].
fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Owner wake-ups a term's subscriber may fall behind by; one further behind wakes every owner.
const CHANGES_BUFFER: usize = 1024;

/// The children of one kind, kept current by [`ChildCache::follow`] from one or more watches
/// (one per watched namespace, or one cluster-wide).
pub struct ChildCache<K> {
    inner: Arc<Inner>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for ChildCache<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), kind: PhantomData }
    }
}

struct Inner {
    children: RwLock<HashMap<Box<str>, Child>>,
    /// A watch's relist in progress: its scope (the namespace, empty for the cluster) and what
    /// it listed so far.
    listing: Mutex<HashMap<String, HashMap<Box<str>, Child>>>,
    /// Scopes that listed at least once, and how many there are.
    listed: Mutex<(HashSet<String>, usize)>,
    ready: watch::Sender<bool>,
    changes: broadcast::Sender<ObjectRef<Workspace>>,
}

impl<K: Resource<DynamicType = ()>> ChildCache<K> {
    /// An empty cache, ready once each of `scopes` watches listed once.
    pub fn new(scopes: usize) -> Self {
        let inner = Inner {
            children: RwLock::new(HashMap::new()),
            listing: Mutex::new(HashMap::new()),
            listed: Mutex::new((HashSet::new(), scopes.max(1))),
            ready: watch::Sender::new(false),
            changes: broadcast::channel(CHANGES_BUFFER).0,
        };
        Self { inner: Arc::new(inner), kind: PhantomData }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Child> {
        self.inner.children.read().expect("child cache lock poisoned").get(&key(namespace, name)).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.children.read().expect("child cache lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once every watch listed once.
    pub async fn wait_until_ready(&self) {
        let _ = self.inner.ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// One event of the watch of `scope` (a namespace; empty: cluster-wide) in.
    pub fn follow(&self, scope: &str, event: Event<Cached<K>>) {
        let mut wake: Vec<ObjectRef<Workspace>> = Vec::new();
        match event {
            Event::Init => {
                self.inner.listing.lock().expect("child cache lock poisoned").insert(scope.to_string(), HashMap::new());
            }
            Event::InitApply(object) => {
                let entry = entry(&object);
                let mut listing = self.inner.listing.lock().expect("child cache lock poisoned");
                if let Some(((key, child), listed)) = entry.zip(listing.get_mut(scope)) {
                    listed.insert(key, child);
                }
            }
            Event::InitDone => {
                let listed = self.inner.listing.lock().expect("child cache lock poisoned").remove(scope).unwrap_or_default();
                let mut children = self.inner.children.write().expect("child cache lock poisoned");
                // A relist may hide changes: what differs from before wakes its owners (old and new).
                let gone: Vec<Box<str>> = children
                    .keys()
                    .filter(|k| (scope.is_empty() || namespace_of(k) == scope) && !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(old) = children.remove(&key) {
                        wake.extend(owners(&key, &old));
                    }
                }
                for (key, child) in listed {
                    if children.get(&key) != Some(&child) {
                        wake.extend(owners(&key, &child));
                        if let Some(old) = children.insert(key.clone(), child) {
                            wake.extend(owners(&key, &old));
                        }
                    }
                }
                drop(children);
                let mut listed = self.inner.listed.lock().expect("child cache lock poisoned");
                listed.0.insert(scope.to_string());
                if listed.0.len() >= listed.1 {
                    self.inner.ready.send_replace(true);
                }
            }
            Event::Apply(object) => {
                if let Some((key, child)) = entry(&object) {
                    let mut children = self.inner.children.write().expect("child cache lock poisoned");
                    if children.get(&key) != Some(&child) {
                        wake.extend(owners(&key, &child));
                        if let Some(old) = children.insert(key.clone(), child) {
                            wake.extend(owners(&key, &old));
                        }
                    }
                }
            }
            Event::Delete(object) => {
                if let Some((key, _)) = entry(&object) {
                    let removed = self.inner.children.write().expect("child cache lock poisoned").remove(&key);
                    if let Some(old) = removed {
                        wake.extend(owners(&key, &old));
                    }
                }
            }
        }
        wake.dedup();
        for owner in wake {
            // Nobody subscribed (a standby) is fine: the map is what is kept.
            let _ = self.inner.changes.send(owner);
        }
    }

    /// For one term: the Workspaces whose children changed, as they change; a subscriber that
    /// fell behind gets every owner once. (A new term looks at every Workspace anyway.)
    pub fn owners_changed(&self) -> impl Stream<Item = ObjectRef<Workspace>> + Send + use<K> {
        let receiver = self.inner.changes.subscribe();
        let inner = self.inner.clone();
        futures::stream::unfold((receiver, inner), |(mut receiver, inner)| async move {
            let next = match receiver.recv().await {
                Ok(owner) => vec![owner],
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let children = inner.children.read().expect("child cache lock poisoned");
                    let all: HashSet<ObjectRef<Workspace>> = children.iter().flat_map(|(key, child)| owners(key, child)).collect();
                    all.into_iter().collect()
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((futures::stream::iter(next), (receiver, inner)))
        })
        .flatten()
    }

    /// Keeps the cache current from `watches` (scope, stream) until they end.
    pub async fn run<S>(self, watches: Vec<(String, S)>)
    where
        S: Stream<Item = Result<Event<Cached<K>>, watcher::Error>> + Send + Unpin + 'static,
    {
        let kind = K::kind(&()).to_string();
        let tagged = watches.into_iter().map(|(scope, stream)| stream.map(move |item| (scope.clone(), item)));
        let mut merged = futures::stream::select_all(tagged);
        while let Some((scope, item)) = merged.next().await {
            match item {
                Ok(event) => self.follow(&scope, event),
                Err(error) => tracing::warn!(%error, kind = %kind, "watch failed; retrying"),
            }
        }
    }
}

fn entry<K: Resource<DynamicType = ()>>(object: &Cached<K>) -> Option<(Box<str>, Child)> {
    let name = object.metadata.name.as_deref()?;
    Some((key(&object.namespace().unwrap_or_default(), name), Child::of(object)))
}

fn owners(key: &str, child: &Child) -> impl Iterator<Item = ObjectRef<Workspace>> + use<> {
    let namespace = namespace_of(key).to_string();
    child.owners.iter().map(move |o| ObjectRef::new(&o.name).within(&namespace)).collect::<Vec<_>>().into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use serde_json::json;

    const WS_UID: &str = "0b0c8a8e-6f2a-4c1d-9a77-3c5e8f1d2b4a";

    fn sa(namespace: &str, name: &str, label: &str) -> Cached<ServiceAccount> {
        Cached::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "uid": "5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
                         "labels": {"team": label},
                         "ownerReferences": [{"apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace", "name": "payments", "uid": WS_UID}]}
        }))
        .unwrap()
    }

    fn workspace(uid: &str) -> Workspace {
        serde_json::from_value(json!({"apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "payments", "namespace": "a", "uid": uid}, "spec": {"displayName": "Payments"}}))
        .unwrap()
    }

    #[test]
    fn uids_keep_their_spelling_and_compare_exactly() {
        for text in [WS_UID, "not-a-uuid", "0B0C8A8E-6F2A-4C1D-9A77-3C5E8F1D2B4A"] {
            assert_eq!(Uid::new(text).text(), text);
            assert!(Uid::new(text).is(text));
        }
        assert!(matches!(Uid::new(WS_UID), Uid::Uuid(_)));
        assert!(!Uid::new(WS_UID).is("0b0c8a8e-6f2a-4c1d-9a77-3c5e8f1d2b4b"));
    }

    #[test]
    fn a_deployment_keeps_its_generation_replicas_and_status_and_nothing_else_does() {
        let cache = ChildCache::<Deployment>::new(1);
        let deployment = Cached::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "payments-portal", "namespace": "a", "uid": WS_UID, "generation": 3},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "portal", "image": "x:1"}]}}},
            "status": {"replicas": 2, "availableReplicas": 2, "observedGeneration": 3}
        }))
        .unwrap();
        cache.follow("", Event::Apply(deployment));
        let kept = cache.get("a", "payments-portal").unwrap().progress("a", "payments-portal").unwrap();
        assert_eq!((kept.metadata.generation, kept.metadata.name.as_deref()), (Some(3), Some("payments-portal")));
        assert_eq!(kept.spec.unwrap().replicas, Some(2));
        assert_eq!(kept.status.unwrap().available_replicas, Some(2));

        let accounts = ChildCache::<ServiceAccount>::new(1);
        accounts.follow("", Event::Apply(sa("a", "payments-portal", "x")));
        assert!(accounts.get("a", "payments-portal").unwrap().progress("a", "payments-portal").is_none());
    }

    #[test]
    fn a_child_knows_its_owner_by_uid_only() {
        let cache = ChildCache::<ServiceAccount>::new(1);
        cache.follow("", Event::Apply(sa("a", "payments-portal", "x")));
        let child = cache.get("a", "payments-portal").expect("cached");
        assert!(child.is_owned_by(&workspace(WS_UID)));
        assert!(!child.is_owned_by(&workspace("0b0c8a8e-6f2a-4c1d-9a77-3c5e8f1d2b4b")), "same name, another Workspace");
        assert_eq!(child.uid().as_deref(), Some("5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"));
        assert!(cache.get("b", "payments-portal").is_none());
    }

    /// Owners wake when what the operator reads changed, and on deletes; a relist of one
    /// namespace replaces only that namespace's children and wakes only for what differs.
    #[tokio::test]
    async fn owners_wake_on_changes_that_matter_and_relists_keep_other_namespaces() {
        let cache = ChildCache::<ServiceAccount>::new(2);
        let mut woken = Box::pin(cache.owners_changed());
        let mut next = || woken.next().now_or_never().flatten().map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name));
        for ns in ["a", "b"] {
            cache.follow(ns, Event::Init);
            cache.follow(ns, Event::InitApply(sa(ns, "payments-portal", "x")));
            assert!(cache.wait_until_ready().now_or_never().is_none() || ns == "b", "ready only once both listed");
            cache.follow(ns, Event::InitDone);
        }
        assert!(cache.wait_until_ready().now_or_never().is_some());
        assert_eq!([next(), next(), next()], [Some("a/payments".into()), Some("b/payments".into()), None]);

        let mut same = sa("a", "payments-portal", "x");
        same.metadata.resource_version = Some("99".into());
        cache.follow("a", Event::Apply(same));
        assert_eq!(next(), None, "a new resourceVersion alone is not news");
        cache.follow("a", Event::Apply(sa("a", "payments-portal", "edited")));
        assert_eq!(next().as_deref(), Some("a/payments"), "an owned field changed");

        cache.follow("b", Event::Init);
        cache.follow("b", Event::InitDone);
        assert_eq!(next().as_deref(), Some("b/payments"), "gone in b's relist");
        assert!(cache.get("a", "payments-portal").is_some() && cache.get("b", "payments-portal").is_none());

        cache.follow("a", Event::Delete(sa("a", "payments-portal", "edited")));
        assert_eq!((next().as_deref(), cache.len()), (Some("a/payments"), 0), "a delete wakes the owner");
    }
}
