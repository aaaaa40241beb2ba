//! Does the live object already say everything we would apply?
//!
//! A server-side apply that changes nothing is still a PATCH request. To make a converged
//! Workspace cost zero writes, the operator compares what it would apply with the cached live
//! object and skips the request when every field it sets already has that value. Fields the
//! API server or other controllers add (defaults, status, annotations) are ignored; a field
//! someone changed by hand is drift and gets re-applied.

use serde_json::Value;

/// True when every field present in `desired` has the same value in `current`. Lists must
/// match element by element (each element again as a subset), since apply replaces them.
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    match (desired, current) {
        (Value::Object(want), Value::Object(have)) => want.iter().all(|(key, value)| have.get(key).is_some_and(|h| is_subset(value, h))),
        (Value::Array(want), Value::Array(have)) => want.len() == have.len() && want.iter().zip(have).all(|(w, h)| is_subset(w, h)),
        (Value::String(want), Value::String(have)) => want == have || same_quantity(want, have),
        (want, have) => want == have,
    }
}

/// The API server rewrites resource quantities into canonical form ("0.5" becomes "500m");
/// both spellings mean the same amount and must not cause a write on every resync.
fn same_quantity(a: &str, b: &str) -> bool {
    match (parse_quantity(a), parse_quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0,
        _ => false,
    }
}

fn parse_quantity(s: &str) -> Option<f64> {
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
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = s.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_added_fields_do_not_count_as_drift() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.96.0.7"}, "status": {}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn changed_or_missing_fields_are_drift() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}});
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}})));
        assert!(!is_subset(&desired, &json!({"spec": {"ports": [{"port": 80}]}})));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 2, "ports": [{"port": 80}, {"port": 81}]}})));
    }

    #[test]
    fn canonicalised_quantities_are_equal() {
        assert!(is_subset(&json!({"cpu": "0.5"}), &json!({"cpu": "500m"})));
        assert!(is_subset(&json!({"memory": "1536Mi"}), &json!({"memory": "1.5Gi"})));
        assert!(!is_subset(&json!({"memory": "128Mi"}), &json!({"memory": "128M"})));
        assert!(!is_subset(&json!({"name": "portal"}), &json!({"name": "portal2"})));
    }
}
