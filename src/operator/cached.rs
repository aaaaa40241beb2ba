//! Children as the operator's watch caches hold them: the metadata, plus only the fields the
//! operator's own field manager owns (read from managedFields) and the status, kept as
//! compact JSON.
//!
//! A typed k8s-openapi Deployment takes several KiB even when most of it is empty (every
//! optional field of a pod spec and container is stored inline), and the API server adds
//! defaults the operator never looks at. What a reconcile needs of a child is its metadata
//! (ownership), whether the fields it applies still hold its values (drift), and a
//! Deployment's status: exactly what is kept. Ownership also makes drift precise: a field
//! someone else took over (`kubectl edit`, another manager's apply) is no longer the
//! operator's, so it is missing here and the next reconcile applies it again.

use super::children::FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::marker::PhantomData;

pub struct Cached<K> {
    pub metadata: ObjectMeta,
    /// Everything but `metadata`, `apiVersion` and `kind`, projected on the owned fields.
    body: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource<DynamicType = ()>> Cached<K> {
    /// From an object as the API server sends it (managedFields included).
    pub fn from_value(mut value: Value) -> Result<Self, serde_json::Error> {
        let Some(object) = value.as_object_mut() else {
            return Err(serde_json::Error::custom("an object was expected"));
        };
        let mut metadata: ObjectMeta = serde_json::from_value(object.remove("metadata").unwrap_or_default())?;
        object.remove("apiVersion");
        object.remove("kind");
        let managed = metadata.managed_fields.take().unwrap_or_default();
        // No managedFields at all (an object not from an API server): nothing to go by, so
        // all of it is kept. Otherwise the operator's own apply entries say what it owns.
        let body = if managed.is_empty() {
            value
        } else {
            let mut owned = Map::new();
            for entry in managed.iter().filter(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
                    && e.subresource.as_deref().unwrap_or_default().is_empty()
            }) {
                if let Some(Value::Object(fields)) = entry.fields_v1.as_ref().map(|f| &f.0) {
                    merge(&mut owned, fields);
                }
            }
            let status = object.remove("status");
            let mut projected = project(&value, &owned);
            if let (Some(status), Value::Object(map)) = (status, &mut projected) {
                map.insert("status".into(), status);
            }
            projected
        };
        Ok(Self { metadata, body: serde_json::to_string(&body)?.into_boxed_str(), kind: PhantomData })
    }

    /// The cached object as JSON: apiVersion, kind, metadata and the kept fields.
    pub fn value(&self) -> Value {
        let mut value: Value = serde_json::from_str(&self.body).unwrap_or_else(|_| Value::Object(Map::new()));
        if let Value::Object(map) = &mut value {
            map.insert("apiVersion".into(), Value::String(K::api_version(&()).into_owned()));
            map.insert("kind".into(), Value::String(K::kind(&()).into_owned()));
            map.insert("metadata".into(), serde_json::to_value(&self.metadata).unwrap_or_default());
        }
        value
    }

    /// The cached object as a `K` (fields the operator does not own are absent). If the kept
    /// fields do not make a valid `K` (a required field owned by someone else), only the
    /// metadata and status are.
    pub fn object(&self) -> Option<K>
    where
        K: DeserializeOwned,
    {
        let mut value = self.value();
        if let Ok(object) = serde_json::from_value(value.clone()) {
            return Some(object);
        }
        let map = value.as_object_mut()?;
        map.retain(|key, _| key == "metadata" || key == "status");
        serde_json::from_value(value).ok()
    }
}

impl<K: Resource<DynamicType = ()> + Serialize> Cached<K> {
    /// From a typed object (tests, and anything that did not come from a watch).
    pub fn new(object: &K) -> Self {
        serde_json::to_value(object).and_then(Self::from_value).unwrap_or_else(|_| Self {
            metadata: ObjectMeta::default(),
            body: "{}".into(),
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

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self { metadata: self.metadata.clone(), body: self.body.clone(), kind: PhantomData }
    }
}

impl<K: Resource<DynamicType = ()>> std::fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("kind", &K::kind(&())).field("name", &self.metadata.name).field("body", &self.body).finish()
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

    #[test]
    fn keeps_what_the_operator_owns_and_the_status() {
        let cached = Cached::<Deployment>::from_value(live()).unwrap();
        let value = cached.value();
        assert_eq!(value["spec"], json!({"replicas": 2, "template": {"spec": {"containers": [{"name": "portal", "args": ["portal"]}]}}}));
        assert_eq!(value["status"]["availableReplicas"], 2);
        assert_eq!(value["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2", "metadata is kept whole");
        assert!(value["metadata"].get("managedFields").is_none());
        assert!(value["spec"]["template"]["spec"]["containers"][0].get("image").is_none(), "the edited image is not ours any more");
    }

    #[test]
    fn a_partial_object_still_gives_metadata_and_status() {
        // The selector is required in a DeploymentSpec; the operator does not own it here.
        let deployment = Cached::<Deployment>::from_value(live()).unwrap().object().unwrap();
        assert_eq!(deployment.metadata.generation, Some(3));
        assert_eq!(deployment.status.unwrap().available_replicas, Some(2));
    }

    #[test]
    fn without_managed_fields_everything_is_kept() {
        let mut value = live();
        value["metadata"].as_object_mut().unwrap().remove("managedFields");
        let deployment = Cached::<Deployment>::from_value(value).unwrap().object().unwrap();
        assert_eq!(deployment.spec.unwrap().template.spec.unwrap().containers.len(), 2);
    }

    #[test]
    fn set_items_and_indices_are_matched() {
        let fields = json!({"f:finalizers": {"v:\"a\"": {}}, "f:list": {"i:1": {}}});
        let value = json!({"finalizers": ["a", "b"], "list": [1, 2, 3]});
        assert_eq!(project(&value, fields.as_object().unwrap()), json!({"finalizers": ["a"], "list": [2]}));
    }
}
