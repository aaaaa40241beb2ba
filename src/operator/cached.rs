//! Children as the operator's watch caches hold them: the identity and owner part of the
//! metadata, a fingerprint of the fields the operator's own field manager owns (read from
//! managedFields), and for a Deployment the replicas and status a Workspace's status reads.
//!
//! A typed k8s-openapi Deployment takes several KiB even when most of it is empty, and even
//! the owned fields alone (a Deployment's are its pod template) are a few hundred bytes to
//! 2 KiB per child, times six children per Workspace. What a reconcile needs of a child is
//! whom it belongs to (owner references; the label is what the watch selects on), whether the
//! fields it applies still hold its values (drift: one [`Fingerprint`]), and a Deployment's
//! progress: exactly what is kept. Ownership also makes drift precise: a field someone else
//! took over (`kubectl edit`, another manager's apply) is no longer the operator's, so it is
//! missing from the projection and the fingerprint differs from the desired object's.

use super::children::FIELD_MANAGER;
use super::diff::Fingerprint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::marker::PhantomData;

pub struct Cached<K> {
    /// Name, namespace, uid, resourceVersion, generation, deletionTimestamp and owner
    /// references: nothing else (labels and annotations are in [`Cached::owned`]).
    pub metadata: ObjectMeta,
    owned: Fingerprint,
    /// A Deployment's generation, `spec.replicas` and `status` as compact JSON; `None` for other kinds.
    progress: Option<Box<str>>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource<DynamicType = ()>> Cached<K> {
    /// From an object as the API server sends it (managedFields included).
    pub fn from_value(mut value: Value) -> Result<Self, serde_json::Error> {
        let Some(object) = value.as_object_mut() else {
            return Err(serde_json::Error::custom("an object was expected"));
        };
        let mut meta = match object.get_mut("metadata") {
            Some(Value::Object(meta)) => std::mem::take(meta),
            _ => Map::new(),
        };
        let managed: Vec<ManagedFieldsEntry> = meta.remove("managedFields").map(serde_json::from_value).transpose()?.unwrap_or_default();
        let metadata = identity(&meta)?;
        object.insert("metadata".into(), Value::Object(meta));
        let progress = (K::kind(&()) == "Deployment")
            .then(|| {
                let replicas = object.get("spec").and_then(|s| s.get("replicas")).cloned().unwrap_or(Value::Null);
                let status = object.get("status").cloned().unwrap_or(Value::Null);
                let generation = metadata.generation;
                serde_json::to_string(&serde_json::json!({"generation": generation, "spec": {"replicas": replicas}, "status": status}))
            })
            .transpose()?
            .map(String::into_boxed_str);
        // No managedFields at all (an object not from an API server): nothing to go by, so
        // all of its client-set fields count. Otherwise the operator's own apply entries say
        // what it owns.
        let owned = if managed.is_empty() {
            Fingerprint::of_object(&value)
        } else {
            let mut fields = Map::new();
            for entry in managed.iter().filter(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
                    && e.subresource.as_deref().unwrap_or_default().is_empty()
            }) {
                if let Some(Value::Object(tree)) = entry.fields_v1.as_ref().map(|f| &f.0) {
                    merge(&mut fields, tree);
                }
            }
            Fingerprint::of_owned(&project(&value, &fields))
        };
        Ok(Self { metadata, owned, progress, kind: PhantomData })
    }

    /// The fingerprint of the fields the operator owns (see [`Fingerprint`]).
    pub fn owned(&self) -> Fingerprint {
        self.owned
    }

    /// A Deployment's generation, `spec.replicas` and `status` as compact JSON (what
    /// [`super::child_cache::Child::progress`] reads); `None` for other kinds.
    pub fn progress_json(&self) -> Option<&str> {
        self.progress.as_deref()
    }
}

/// The part of the metadata the cache keeps.
fn identity(meta: &Map<String, Value>) -> Result<ObjectMeta, serde_json::Error> {
    fn field<T: DeserializeOwned>(meta: &Map<String, Value>, key: &str) -> Result<Option<T>, serde_json::Error> {
        meta.get(key).filter(|v| !v.is_null()).cloned().map(serde_json::from_value).transpose()
    }
    Ok(ObjectMeta {
        name: field(meta, "name")?,
        namespace: field(meta, "namespace")?,
        uid: field(meta, "uid")?,
        resource_version: field(meta, "resourceVersion")?,
        generation: field(meta, "generation")?,
        deletion_timestamp: field::<Time>(meta, "deletionTimestamp")?,
        owner_references: field::<Vec<OwnerReference>>(meta, "ownerReferences")?,
        ..Default::default()
    })
}

impl<K: Resource<DynamicType = ()> + Serialize> Cached<K> {
    /// From a typed object (tests, and anything that did not come from a watch).
    pub fn new(object: &K) -> Self {
        serde_json::to_value(object).and_then(Self::from_value).unwrap_or_else(|_| Self {
            metadata: ObjectMeta::default(),
            owned: Fingerprint::of_owned(&Value::Null),
            progress: None,
            kind: PhantomData,
        })
    }
}

/// Union of two fieldsV1 trees.
fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(more)) => merge(existing, more),
            (Some(_), _) => {}
            (None, _) => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// `value` reduced to the fields in the fieldsV1 tree `fields`: `f:name` a field, `k:{…}` a
/// list item by its key fields, `v:…` a list item by value; a field whose tree is empty (or
/// only `.`) is owned whole.
fn project(value: &Value, fields: &Map<String, Value>) -> Value {
    let children = fields.keys().any(|k| k != ".");
    if !children {
        return value.clone();
    }
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                if let Some(Value::Object(sub)) = fields.get(&format!("f:{key}")) {
                    out.insert(key.clone(), project(item, sub));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (index, item) in items.iter().enumerate() {
                for (key, sub) in fields {
                    let Value::Object(sub) = sub else { continue };
                    let matches = if let Some(json) = key.strip_prefix("k:") {
                        serde_json::from_str::<Map<String, Value>>(json)
                            .is_ok_and(|k| k.iter().all(|(name, want)| item.get(name) == Some(want)))
                    } else if let Some(json) = key.strip_prefix("v:") {
                        serde_json::from_str::<Value>(json).is_ok_and(|v| &v == item)
                    } else if let Some(i) = key.strip_prefix("i:") {
                        i.parse::<usize>().is_ok_and(|i| i == index)
                    } else {
                        false
                    };
                    if matches {
                        out.push(project(item, sub));
                        break;
                    }
                }
            }
            Value::Array(out)
        }
        other => other.clone(),
    }
}

/// `object` as the API server returns it after the operator applied `applied`: its
/// managedFields say the operator owns every field of `applied` (lists whole); `object` may
/// carry more (the server's defaults), which is then not the operator's.
#[cfg(test)]
pub fn as_applied<K: Resource<DynamicType = ()> + Serialize>(object: &K, applied: &K) -> Cached<K> {
    fn tree(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (format!("f:{k}"), tree(v))).collect()),
            _ => Value::Object(Map::new()),
        }
    }
    let mut fields = serde_json::to_value(applied).expect("serializable");
    if let Value::Object(map) = &mut fields {
        map.retain(|k, _| k != "apiVersion" && k != "kind" && k != "status");
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.retain(|k, _| ["labels", "annotations", "ownerReferences"].contains(&k.as_str()));
        }
    }
    let mut value = serde_json::to_value(object).expect("serializable");
    value["metadata"]["managedFields"] = serde_json::json!([{
        "manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": K::api_version(&()), "fieldsType": "FieldsV1",
        "fieldsV1": tree(&fields),
    }]);
    Cached::from_value(value).expect("a valid object")
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self { metadata: self.metadata.clone(), owned: self.owned, progress: self.progress.clone(), kind: PhantomData }
    }
}

impl<K: Resource<DynamicType = ()>> std::fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("kind", &K::kind(&())).field("name", &self.metadata.name).field("owned", &self.owned).finish()
    }
}

impl<'de, K: Resource<DynamicType = ()>> Deserialize<'de> for Cached<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Cached<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    /// A Deployment as the API server returns it after the operator's apply and a
    /// `kubectl edit` of the image: the server's defaults, another manager's annotation, the
    /// controller manager's status.
    fn live() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "payments-portal", "namespace": "team-payments", "uid": "u-1", "generation": 3,
                "labels": {"app.kubernetes.io/managed-by": "hyperpage-operator"},
                "annotations": {"deployment.kubernetes.io/revision": "2"},
                "managedFields": [
                    {"manager": "hyperpage-operator", "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}},
                                  "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                                      "k:{\"name\":\"portal\"}": {".": {}, "f:name": {}, "f:args": {}}}}}}}},
                    {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                                      "k:{\"name\":\"portal\"}": {"f:image": {}}}}}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "apiVersion": "apps/v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:replicas": {}}}}
                ]
            },
            "spec": {
                "replicas": 2, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                "selector": {"matchLabels": {"app": "portal"}},
                "template": {"spec": {"dnsPolicy": "ClusterFirst", "containers": [
                    {"name": "portal", "image": "edited:1", "args": ["portal"], "terminationMessagePath": "/dev/termination-log"},
                    {"name": "sidecar", "image": "theirs:1"}
                ]}}
            },
            "status": {"replicas": 2, "availableReplicas": 2, "observedGeneration": 3}
        })
    }

    /// What the operator applied in `live()`, before anyone edited the image.
    fn applied() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "payments-portal", "namespace": "team-payments",
                         "labels": {"app.kubernetes.io/managed-by": "hyperpage-operator"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "portal", "args": ["portal"], "image": "ours:1"}]}}}
        })
    }

    #[test]
    fn the_fingerprint_covers_exactly_what_the_operator_still_owns() {
        let cached = Cached::<Deployment>::from_value(live()).unwrap();
        let mut still_owned = applied();
        still_owned["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("image");
        assert_eq!(cached.owned(), Fingerprint::of_object(&still_owned), "defaults, others' fields and status left out");
        assert_ne!(cached.owned(), Fingerprint::of_object(&applied()), "the edited image is not ours any more: drift");
        assert!(cached.metadata.labels.is_none() && cached.metadata.annotations.is_none() && cached.metadata.managed_fields.is_none());
        assert_eq!((cached.metadata.uid.as_deref(), cached.metadata.generation), (Some("u-1"), Some(3)));
    }

    #[test]
    fn without_managed_fields_every_client_set_field_counts() {
        let mut value = live();
        value["metadata"].as_object_mut().unwrap().remove("managedFields");
        let mut expected = value.clone();
        expected["metadata"].as_object_mut().unwrap().retain(|k, _| k == "labels" || k == "annotations");
        assert_eq!(Cached::<Deployment>::from_value(value).unwrap().owned(), Fingerprint::of_object(&expected));
    }

    #[test]
    fn set_items_and_indices_are_matched() {
        let fields = json!({"f:finalizers": {"v:\"a\"": {}}, "f:list": {"i:1": {}}});
        let value = json!({"finalizers": ["a", "b"], "list": [1, 2, 3]});
        assert_eq!(project(&value, fields.as_object().unwrap()), json!({"finalizers": ["a"], "list": [2]}));
    }
}
