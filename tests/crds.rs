//! The committed CRDs are exactly what the code generates, and the schema documents and
//! closes every field.

use hyperpage::api::{crd_files, crds_yaml};
use serde_json::Value;
use std::path::Path;

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut committed: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    committed.sort();
    let generated = crd_files();
    let names: Vec<_> = generated.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(committed, names, "crds/ holds exactly one file per CRD; regenerate with `make crds`");
    for (name, yaml) in generated {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(on_disk == yaml, "crds/{name} is stale; regenerate with `make crds`");
    }
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/hyperpage-operator/crds");
    if chart.exists() {
        for (name, yaml) in crd_files() {
            let in_chart = std::fs::read_to_string(chart.join(&name)).unwrap_or_default();
            assert!(in_chart == yaml, "charts/hyperpage-operator/crds/{name} is stale; regenerate with `make crds`");
        }
    }
}

/// Walks a schema and reports properties without a description (bad `kubectl explain`) and
/// any place that would accept unknown fields.
fn check_schema(path: &str, schema: &Value, problems: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        problems.push(format!("{path} preserves unknown fields"));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            if prop.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                problems.push(format!("{child} has no description"));
            }
            check_schema(&child, prop, problems);
        }
    }
    if let Some(items) = schema.get("items") {
        check_schema(&format!("{path}[]"), items, problems);
    }
}

#[test]
fn every_spec_field_is_documented_and_unknown_fields_are_refused() {
    let docs: Vec<Value> =
        serde_norway::Deserializer::from_str(&crds_yaml()).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(docs.len(), 2);
    let mut problems = Vec::new();
    for crd in &docs {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}), "{kind} has a status subresource");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        check_schema(&format!("{kind}.spec"), spec, &mut problems);
    }
    assert!(problems.is_empty(), "schema problems:\n{}", problems.join("\n"));
}

#[test]
fn printer_columns_and_short_names_follow_the_contract() {
    let docs: Vec<Value> =
        serde_norway::Deserializer::from_str(&crds_yaml()).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let columns = |kind: &str| -> Vec<String> {
        let crd = docs.iter().find(|d| d["spec"]["names"]["kind"] == kind).unwrap();
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect()
    };
    assert_eq!(columns("Workspace"), ["READY", "TOOLS", "PRS", "FAILING", "ISSUES", "LAST SYNC", "AGE"]);
    assert_eq!(columns("ToolBinding"), ["WORKSPACE", "PROVIDER", "READY", "REMAINING", "LAST SYNC", "AGE"]);
    let short = |kind: &str| docs.iter().find(|d| d["spec"]["names"]["kind"] == kind).unwrap()["spec"]["names"]["shortNames"][0].clone();
    assert_eq!(short("Workspace"), "hpws");
    assert_eq!(short("ToolBinding"), "hptb");
}
