//! Where the operator looks (`--watch-namespaces`): the whole cluster, or one namespaced
//! watch per namespace, merged into the single event stream a reflector store expects.
//!
//! A reflector treats `Init` … `InitDone` as "replace the whole store". Merging per-namespace
//! watches naively would let one namespace's relist wipe the others' objects, so the merge
//! keeps the last list of each namespace and turns any namespace's relist into one relist of
//! all of them (sent once every namespace has listed at least once).

use super::cached::Cached;
use super::child_cache::ChildCache;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Error, Event, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::broadcast;

type Item<K> = Result<Event<K>, Error>;

/// Client-side `kubectl apply` keeps the whole applied object in this annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// One namespace's watch (the namespace is empty for a cluster-wide watch).
type NamespaceWatch<K> = (String, BoxStream<'static, Item<K>>);

/// Where the operator looks: the whole cluster, or only the namespaces it was given.
#[derive(Clone)]
pub struct Scope {
    client: Client,
    namespaces: Vec<String>,
}

impl Scope {
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        Self { client, namespaces }
    }

    /// One watch of `K` per namespace (or one cluster-wide), managedFields and `kubectl
    /// apply`'s copy of the whole object (its last-applied annotation) stripped: the operator
    /// reads neither, and together they can be larger than the object.
    pub fn watches<K>(&self, config: watcher::Config) -> Vec<NamespaceWatch<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let apis: Vec<(String, Api<K>)> = if self.namespaces.is_empty() {
            vec![(String::new(), Api::all(self.client.clone()))]
        } else {
            self.namespaces.iter().map(|ns| (ns.clone(), Api::namespaced(self.client.clone(), ns))).collect()
        };
        apis.into_iter().map(|(ns, api)| (ns, watcher(api, config.clone()).default_backoff().modify(strip::<K>).boxed())).collect()
    }

    /// The watches of `K` in scope as one stream a reflector can own.
    pub fn merged_watch<K>(&self, config: watcher::Config) -> BoxStream<'static, Item<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut watches = self.watches::<K>(config);
        match watches.len() {
            1 => watches.remove(0).1,
            _ => merge_namespaces(watches).boxed(),
        }
    }

    /// A cache of the operator's children of kind `K` in scope (see [`ChildCache`]), and the
    /// future that keeps it current. Each namespace's watch relists on its own; no merge.
    pub fn child_cache<K>(&self, config: watcher::Config) -> (ChildCache<K>, impl std::future::Future<Output = ()> + Send + use<K>)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Send + Sync + 'static,
    {
        let watches = self.watches::<Cached<K>>(config);
        let cache = ChildCache::new(watches.len());
        (cache.clone(), cache.run(watches))
    }

    /// A watch cache of `K` in scope that lives as long as the process, and the future that
    /// keeps it current (on every replica: a standby's caches are warm when it takes over).
    pub fn warm_cache<K>(&self, config: watcher::Config) -> (WarmCache<K>, impl std::future::Future<Output = ()> + Send + use<K>)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.warm_cache_following(config, |_, _| {})
    }

    /// [`Scope::warm_cache`], with `follow` told of every event once the store applied it
    /// (to keep an index of the cache in step).
    pub fn warm_cache_following<K, F>(
        &self,
        config: watcher::Config,
        mut follow: F,
    ) -> (WarmCache<K>, impl std::future::Future<Output = ()> + Send + use<K, F>)
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        F: FnMut(&Event<K>, &Store<K>) + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let cache = WarmCache { store: store.clone(), changes: changes.clone() };
        let kind = K::kind(&()).to_string();
        let drive = self.merged_watch::<K>(config).reflect(writer).for_each(move |event| {
            if let Ok(event) = &event {
                follow(event, &store);
            }
            // Nobody subscribed (a standby) is fine: the store is what is kept.
            match event {
                Ok(Event::Apply(object) | Event::Delete(object)) => {
                    let _ = changes.send(ObjectRef::from_obj(&object));
                }
                // A relist may hide changes: every object is news.
                Ok(Event::InitDone) => {
                    for object in store.state() {
                        let _ = changes.send(ObjectRef::from_obj(object.as_ref()));
                    }
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(error) => tracing::warn!(%error, kind = %kind, "watch failed; retrying"),
            }
            std::future::ready(())
        });
        (cache, drive)
    }
}

/// How many of the most recently changed objects a new term looks at before the others.
const TAKEOVER_FIRST: usize = 32;
/// When a new term looks at the rest of the cached objects.
const TAKEOVER_REST_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Changes a term's subscriber may fall behind by; one further behind gets every object again.
/// (A slot keeps its reference until overwritten: a fixed ~150 KiB per cache.)
const CHANGES_BUFFER: usize = 1024;

/// A watch cache and the changes it sees. Each leadership term takes its own triggers from it
/// ([`WarmCache::objects`], [`WarmCache::changed`]); nothing waits for a subscriber, so a
/// standby holding the cache never stalls its watch.
pub struct WarmCache<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Store<K>,
    changes: broadcast::Sender<ObjectRef<K>>,
}

impl<K> WarmCache<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// For one term: every cached object once, the most recently changed first (a change that
    /// raced the takeover is what the new leader writes first), then each change as it comes,
    /// deletes included; a subscriber that fell behind gets every object again.
    ///
    /// Only the newest [`TAKEOVER_FIRST`] come at once; the rest follow after
    /// [`TAKEOVER_REST_AFTER`]: a controller's queue does not keep the order it is fed in, so a
    /// term fed thousands of converged objects at once reached the one that changed only after
    /// looking at most of them (about a second at 1,000 Workspaces).
    pub fn changed(&self) -> impl Stream<Item = ObjectRef<K>> + Send + use<K> {
        let receiver = self.changes.subscribe();
        let store = self.store.clone();
        let mut first = newest_first(&store.state());
        let rest = first.split_off(first.len().min(TAKEOVER_FIRST));
        let later = futures::stream::once(async move {
            tokio::time::sleep(TAKEOVER_REST_AFTER).await;
            futures::stream::iter(rest)
        })
        .flatten();
        let live = futures::stream::unfold((receiver, store), |(mut receiver, store)| async move {
            let next = match receiver.recv().await {
                Ok(changed) => vec![changed],
                Err(broadcast::error::RecvError::Lagged(_)) => newest_first(&store.state()),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((futures::stream::iter(next), (receiver, store)))
        })
        .flatten();
        futures::stream::select(futures::stream::iter(first).chain(later), live)
    }

    /// Every cached object once per `period`, the first pass one period from now: the
    /// resync. One pass for all, not a requeue per object: a requeue keeps an entry per
    /// object in the controller's scheduler (two copies of its reference, ~600 B) for as long
    /// as the object is converged, which is most of the time for all of them.
    pub fn every(&self, period: std::time::Duration) -> impl Stream<Item = ObjectRef<K>> + Send + use<K> {
        let store = self.store.clone();
        futures::stream::unfold(store, move |store| async move {
            tokio::time::sleep(period).await;
            let all: Vec<ObjectRef<K>> = store.state().iter().map(|o| ObjectRef::from_obj(o.as_ref())).collect();
            Some((futures::stream::iter(all), store))
        })
        .flatten()
    }

    /// [`WarmCache::changed`] as the cached objects (deleted ones left out), for a controller.
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + use<K> {
        let store = self.store.clone();
        self.changed().filter_map(move |changed| std::future::ready(store.get(&changed)))
    }
}

/// The objects' references, the highest resourceVersion first. A resourceVersion is opaque
/// to clients; it is used here only as an ordering hint (etcd's revision), never for correctness.
fn newest_first<K: Resource<DynamicType = ()>>(objects: &[Arc<K>]) -> Vec<ObjectRef<K>> {
    let mut refs: Vec<(u64, ObjectRef<K>)> = objects
        .iter()
        .map(|o| (o.meta().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0), ObjectRef::from_obj(o.as_ref())))
        .collect();
    refs.sort_by_key(|r| std::cmp::Reverse(r.0));
    refs.into_iter().map(|(_, r)| r).collect()
}

/// What the caches drop from every object they keep: managedFields and `kubectl apply`'s
/// copy of the whole object (the operator reads neither).
pub fn strip<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The state of the merge: each namespace's objects as last seen.
struct Merge<K> {
    namespaces: usize,
    current: BTreeMap<String, BTreeMap<String, K>>,
    listing: BTreeMap<String, BTreeMap<String, K>>,
    listed: BTreeSet<String>,
}

impl<K: ResourceExt + Clone> Merge<K> {
    fn new(namespaces: usize) -> Self {
        Self { namespaces, current: BTreeMap::new(), listing: BTreeMap::new(), listed: BTreeSet::new() }
    }

    fn all_listed(&self) -> bool {
        self.listed.len() == self.namespaces
    }

    /// One event of namespace `ns` in; what the merged stream says out.
    fn step(&mut self, ns: &str, item: Item<K>) -> Vec<Item<K>> {
        let event = match item {
            Ok(event) => event,
            Err(error) => return vec![Err(error)],
        };
        match event {
            Event::Init => {
                self.listing.insert(ns.to_string(), BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                self.listing.entry(ns.to_string()).or_default().insert(object.name_any(), object);
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.listing.remove(ns).unwrap_or_default();
                self.current.insert(ns.to_string(), listed);
                self.listed.insert(ns.to_string());
                if !self.all_listed() {
                    return Vec::new();
                }
                let mut out = vec![Ok(Event::Init)];
                out.extend(self.current.values().flat_map(|objects| objects.values()).map(|o| Ok(Event::InitApply(o.clone()))));
                out.push(Ok(Event::InitDone));
                out
            }
            Event::Apply(object) => {
                self.current.entry(ns.to_string()).or_default().insert(object.name_any(), object.clone());
                if self.all_listed() { vec![Ok(Event::Apply(object))] } else { Vec::new() }
            }
            Event::Delete(object) => {
                self.current.entry(ns.to_string()).or_default().remove(&object.name_any());
                if self.all_listed() { vec![Ok(Event::Delete(object))] } else { Vec::new() }
            }
        }
    }
}

/// Merges one watch per namespace into one stream a reflector can own.
pub fn merge_namespaces<K, S>(streams: Vec<(String, S)>) -> impl Stream<Item = Item<K>> + Send
where
    K: ResourceExt + Clone + Send + 'static,
    S: Stream<Item = Item<K>> + Send + 'static,
{
    let mut merge = Merge::new(streams.len());
    let tagged = streams.into_iter().map(|(ns, stream)| stream.map(move |item| (ns.clone(), item)).boxed());
    futures::stream::select_all(tagged).flat_map(move |(ns, item)| futures::stream::iter(merge.step(&ns, item)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store::Writer;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}})).unwrap()
    }

    fn names(reader: &Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = reader.state().iter().map(|o| format!("{}/{}", o.namespace().unwrap(), o.name_any())).collect();
        names.sort();
        names
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others_and_drops_what_it_no_longer_has() {
        let mut merge = Merge::new(2);
        let mut writer = Writer::<ConfigMap>::default();
        let reader = writer.as_reader();
        let mut feed = |merge: &mut Merge<ConfigMap>, ns: &str, event: Event<ConfigMap>| {
            for out in merge.step(ns, Ok(event)) {
                writer.apply_watcher_event(&out.unwrap());
            }
            names(&reader)
        };
        feed(&mut merge, "a", Event::Init);
        feed(&mut merge, "a", Event::InitApply(cm("a", "one")));
        assert!(feed(&mut merge, "a", Event::InitDone).is_empty(), "nothing until every namespace listed");
        feed(&mut merge, "a", Event::Apply(cm("a", "two")));
        feed(&mut merge, "b", Event::Init);
        feed(&mut merge, "b", Event::InitApply(cm("b", "x")));
        assert_eq!(feed(&mut merge, "b", Event::InitDone), ["a/one", "a/two", "b/x"]);
        assert!(reader.wait_until_ready().now_or_never().is_some(), "the store is ready once all listed");
        // b relists after a watch error: x is gone, y is new; a's objects stay.
        feed(&mut merge, "b", Event::Init);
        feed(&mut merge, "b", Event::InitApply(cm("b", "y")));
        assert_eq!(feed(&mut merge, "b", Event::InitDone), ["a/one", "a/two", "b/y"]);
        assert_eq!(feed(&mut merge, "a", Event::Delete(cm("a", "one"))), ["a/two", "b/y"]);
    }

    fn versioned(name: &str, version: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "a", "resourceVersion": version}})).unwrap()
    }

    /// At a takeover of many objects the newest come at once and the rest later, while live
    /// changes pass straight through.
    #[tokio::test(start_paused = true)]
    async fn a_term_of_many_objects_sees_the_newest_first_and_the_rest_later() {
        let mut writer = Writer::<ConfigMap>::default();
        for i in 0..TAKEOVER_FIRST + 8 {
            writer.apply_watcher_event(&Event::Apply(versioned(&format!("cm-{i}"), &(100 + i).to_string())));
        }
        let (changes, _) = broadcast::channel(4);
        let cache = WarmCache { store: writer.as_reader(), changes: changes.clone() };
        let mut term = Box::pin(cache.changed());
        let mut at_once = Vec::new();
        while let Some(Some(changed)) = term.next().now_or_never() {
            at_once.push(changed.name);
        }
        assert_eq!(at_once.len(), TAKEOVER_FIRST);
        assert_eq!(at_once[0], format!("cm-{}", TAKEOVER_FIRST + 7), "the newest first");
        assert!(!at_once.contains(&"cm-0".to_string()), "the oldest wait");

        changes.send(ObjectRef::new("live").within("a")).unwrap();
        assert_eq!(term.next().now_or_never().flatten().map(|r| r.name).as_deref(), Some("live"), "a change does not wait");

        tokio::time::advance(TAKEOVER_REST_AFTER).await;
        let rest: Vec<String> = term.take(8).map(|r| r.name).collect().await;
        assert!(rest.contains(&"cm-0".to_string()) && rest.len() == 8, "then the rest: {rest:?}");
    }

    /// The resync: every cached object once per period, nothing before the first.
    #[tokio::test(start_paused = true)]
    async fn every_object_comes_once_per_period() {
        let mut writer = Writer::<ConfigMap>::default();
        for name in ["a", "b"] {
            writer.apply_watcher_event(&Event::Apply(versioned(name, "1")));
        }
        let (changes, _) = broadcast::channel(4);
        let cache = WarmCache { store: writer.as_reader(), changes };
        let period = std::time::Duration::from_secs(600);
        let mut passes = Box::pin(cache.every(period));
        assert!(passes.next().now_or_never().is_none(), "nothing before the first period");
        tokio::time::advance(period).await;
        let mut first: Vec<String> = vec![passes.next().await.unwrap().name, passes.next().await.unwrap().name];
        first.sort();
        assert_eq!(first, ["a", "b"]);
        assert!(passes.next().now_or_never().is_none(), "then nothing until the next period");
        tokio::time::advance(period).await;
        assert!(passes.next().await.is_some(), "the next pass");
    }

    /// A new term starts with every cached object, the latest change first, then follows
    /// changes (deletes too); one that fell behind starts over; a cache nobody follows (a
    /// standby's) never waits.
    #[tokio::test]
    async fn a_term_sees_every_object_newest_first_then_each_change() {
        let mut writer = Writer::<ConfigMap>::default();
        for (name, version) in [("old", "5"), ("newest", "90"), ("middle", "17")] {
            writer.apply_watcher_event(&Event::Apply(versioned(name, version)));
        }
        let (changes, _) = broadcast::channel(4);
        let cache = WarmCache { store: writer.as_reader(), changes: changes.clone() };
        for _ in 0..100 {
            let _ = changes.send(ObjectRef::new("unheard").within("a")); // a standby: nobody listens
        }
        let mut term = Box::pin(cache.changed());
        let mut next = || term.next().now_or_never().flatten().map(|r| r.name);
        assert_eq!([next(), next(), next()], [Some("newest".into()), Some("middle".into()), Some("old".into())]);
        assert_eq!(next(), None, "nothing more until something changes");

        changes.send(ObjectRef::new("middle").within("a")).unwrap();
        changes.send(ObjectRef::new("deleted").within("a")).unwrap();
        assert_eq!([next(), next()], [Some("middle".into()), Some("deleted".into())], "deletes are changes too");

        for _ in 0..10 {
            changes.send(ObjectRef::new("flood").within("a")).unwrap();
        }
        let again: Vec<_> = (0..3).map(|_| next()).collect();
        assert_eq!(again, [Some("newest".into()), Some("middle".into()), Some("old".into())], "fell behind: everything again");

        let objects = Box::pin(cache.objects());
        let names: Vec<String> = objects.take(3).map(|o| o.name_any()).collect().await;
        assert_eq!(names, ["newest", "middle", "old"]);
    }
}
