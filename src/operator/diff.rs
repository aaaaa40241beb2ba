//! Does the live object already say everything we would apply?
//!
//! A server-side apply that changes nothing is still a PATCH request. To make a converged
//! Workspace cost zero writes, the operator compares what it would apply with what its field
//! manager owns in the cached live object, and skips the request when they are the same.
//!
//! The comparison is of fingerprints, not objects: the cache keeps one 64-bit hash of the
//! owned fields per child instead of the fields themselves (a Deployment's owned fields are
//! its whole pod template, about 2 KiB of JSON, times every Workspace). Both sides are put in
//! the same canonical form first: only what a client sets (no apiVersion, kind, status, or the
//! metadata the API server assigns), keys sorted, resource quantities in one spelling.
//! Fields the API server or other controllers add are not the operator's, so the projection
//! on its managedFields leaves them out; a field someone changed by hand is no longer the
//! operator's either, so it is missing there and the fingerprints differ: drift.

use serde_json::Value;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::OnceLock;

/// A hash of an object's client-set fields in canonical form. Keyed per process (random
/// keys): it is compared only within the process that computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

/// Metadata fields a client sets; the rest (name, namespace and uid are the identity, the
/// others the API server's) never count.
const CLIENT_METADATA: [&str; 4] = ["labels", "annotations", "ownerReferences", "finalizers"];

impl Fingerprint {
    /// Of an object as the operator would apply it, or as it stands where nothing says who
    /// owns what (an object not from an API server): its client-set fields.
    pub fn of_object(object: &Value) -> Self {
        let mut canonical = object.clone();
        if let Value::Object(map) = &mut canonical {
            map.remove("apiVersion");
            map.remove("kind");
            map.remove("status");
            if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
                metadata.retain(|key, _| CLIENT_METADATA.contains(&key.as_str()));
            }
        }
        Self::of_owned(&canonical)
    }

    /// Of fields already reduced to the owned ones (see `cached::project`).
    pub fn of_owned(fields: &Value) -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
        feed(fields, false, &mut hasher);
        Self(hasher.finish())
    }
}

/// Feeds `value` to `hasher` with its type and structure, object keys in sorted order (the
/// API server's order and serde's need not agree). Empty objects and arrays are kept: `{}`
/// and an absent field are different applies.
fn feed(value: &Value, quantities: bool, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => (2u8, n.to_string()).hash(hasher),
        Value::String(s) => match quantities.then(|| parse_quantity(s)).flatten() {
            Some(amount) => (3u8, amount.to_bits()).hash(hasher),
            None => (4u8, s).hash(hasher),
        },
        Value::Array(items) => {
            (5u8, items.len()).hash(hasher);
            for item in items {
                feed(item, quantities, hasher);
            }
        }
        Value::Object(map) => {
            (6u8, map.len()).hash(hasher);
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            for key in keys {
                key.hash(hasher);
                // Resource requests and limits: the API server rewrites them canonically
                // ("0.5" becomes "500m"); both spellings are the same amount.
                feed(&map[key], quantities || key == "limits" || key == "requests", hasher);
            }
        }
    }
}

/// An amount like "500m" or "1.5Gi", as a number.
pub fn parse_quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let s = s.trim();
    if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+' || c == '-') {
        return None;
    }
    let amount = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| s.strip_suffix(suffix).map(|number| number.parse::<f64>().ok().map(|n| n * factor)))
        .unwrap_or_else(|| s.parse::<f64>().ok())?;
    // Rounded to nine significant digits, so 0.5 and 500 × 0.001 are the same bits.
    Some(format!("{amount:.9e}").parse().unwrap_or(amount))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn same(a: Value, b: Value) -> bool {
        Fingerprint::of_object(&a) == Fingerprint::of_object(&b)
    }

    #[test]
    fn server_assigned_metadata_and_status_do_not_count() {
        let desired = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}},
                             "spec": {"ports": [{"port": 80}]}});
        let stored = json!({"metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7", "generation": 2,
                                         "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"x": "1"}},
                            "spec": {"ports": [{"port": 80}]}, "status": {"loadBalancer": {}}});
        assert!(same(desired, stored));
    }

    #[test]
    fn any_changed_missing_or_extra_field_is_a_difference() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        assert!(!same(desired.clone(), json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}})));
        assert!(!same(desired.clone(), json!({"spec": {"ports": [{"port": 80}]}})), "a field taken by someone else");
        assert!(!same(desired.clone(), json!({"spec": {"replicas": 2, "ports": [{"port": 80}, {"port": 81}]}})));
        assert!(
            !same(desired.clone(), json!({"spec": {"replicas": 2, "ports": [{"port": 80}], "paused": true}})),
            "a field no longer wanted"
        );
        assert!(!same(json!({"spec": {"a": "2"}}), json!({"spec": {"a": 2}})), "types count");
        assert!(!same(json!({"spec": {"a": {}}}), json!({"spec": {}})), "an empty object is a field");
        assert!(same(json!({"spec": {"b": 1, "a": 2}}), json!({"spec": {"a": 2, "b": 1}})), "key order does not");
    }

    #[test]
    fn canonicalised_quantities_are_equal_where_they_are_quantities() {
        let resources = |cpu: &str, memory: &str| json!({"spec": {"resources": {"limits": {"cpu": cpu, "memory": memory}}}});
        assert!(same(resources("0.5", "1536Mi"), resources("500m", "1.5Gi")));
        assert!(!same(resources("0.5", "128Mi"), resources("0.5", "128M")));
        assert!(!same(json!({"env": [{"value": "0.5"}]}), json!({"env": [{"value": "500m"}]})), "an env value is text");
    }
}
