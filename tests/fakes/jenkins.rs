//! Jenkins JSON API (<https://www.jenkins.io/doc/book/using/remote-access-api/>):
//! `GET /job/A/job/B/api/json?tree=…` for job `A/B`, with `lastBuild` (possibly still
//! building) and `lastCompletedBuild` (the newest finished one), as `hudson.model.Job` exports
//! them. Path segments are
//! percent-decoded once (a '+' stays a '+', as in Jenkins' Stapler router). Without `tree=`
//! the whole job comes back, builds and all; with it, only the projected fields (plus
//! `_class`, which Jenkins always adds). No ETags, no rate-limit headers; Basic auth.

use super::{Dialect, Server, Shared, pct_decode, query_param};
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct Build {
    pub number: u64,
    /// `SUCCESS`, `FAILURE`, `UNSTABLE`, `ABORTED`; None while building.
    pub result: Option<String>,
    pub building: bool,
    /// Epoch milliseconds.
    pub timestamp: i64,
}

pub fn build(number: u64, result: Option<&str>, building: bool, timestamp: i64) -> Build {
    Build { number, result: result.map(str::to_string), building, timestamp }
}

pub struct Jenkins {
    pub server: Server,
    pub shared: Arc<Shared>,
    /// Full name (`folder/job`) to its builds, oldest first (empty: never built).
    pub jobs: Arc<Mutex<BTreeMap<String, Vec<Build>>>>,
}

fn job_url(base: &str, full_name: &str) -> String {
    let path: String = full_name.split('/').map(|p| format!("job/{}/", p.replace(' ', "%20"))).collect();
    format!("{base}/{path}")
}

/// The whole job document, as `api/json` without `tree` returns it.
fn job_json(base: &str, full_name: &str, builds: &[Build]) -> Value {
    let last = builds.last().cloned();
    let completed = builds.iter().rev().find(|b| !b.building).cloned();
    let url = job_url(base, full_name);
    let build_json = |b: &Build| {
        json!({"_class": "hudson.model.FreeStyleBuild", "number": b.number, "result": b.result, "building": b.building,
               "timestamp": b.timestamp, "duration": if b.building { 0 } else { 61_000 }, "url": format!("{url}{}/", b.number),
               "actions": [{"_class": "hudson.model.CauseAction", "causes": [{"shortDescription": "Started by an SCM change"}]}],
               "changeSet": {"items": []}})
    };
    let color = match &last {
        None => "notbuilt".to_string(),
        Some(b) => {
            let c = match b.result.as_deref() {
                Some("FAILURE") => "red",
                Some("UNSTABLE") => "yellow",
                Some("ABORTED") => "aborted",
                _ => "blue",
            };
            if b.building { format!("{c}_anime") } else { c.to_string() }
        }
    };
    let builds: Vec<Value> = last
        .iter()
        .flat_map(|b| {
            (1..=b.number)
                .rev()
                .take(50)
                .map(move |n| json!({"_class": "hudson.model.FreeStyleBuild", "number": n, "url": format!("{n}/")}))
        })
        .collect();
    json!({"_class": "hudson.model.FreeStyleProject", "name": full_name.rsplit('/').next().unwrap(),
           "fullName": full_name, "url": url, "color": color, "buildable": true,
           "healthReport": [{"description": "Build stability: 1 out of the last 5 builds failed.", "score": 80}],
           "lastBuild": last.as_ref().map(build_json), "lastCompletedBuild": completed.as_ref().map(build_json), "builds": builds, "property": [], "actions": []})
}

/// Applies a `tree=` projection such as `name,lastBuild[number,result]`.
pub fn project(value: &Value, tree: &str) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| project(v, tree)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            if let Some(class) = map.get("_class") {
                out.insert("_class".into(), class.clone());
            }
            for (name, sub) in split_tree(tree) {
                if let Some(v) = map.get(&name) {
                    out.insert(name, if let Some(sub) = sub { project(v, &sub) } else { v.clone() });
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn split_tree(tree: &str) -> Vec<(String, Option<String>)> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in tree.char_indices().chain(std::iter::once((tree.len(), ','))) {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                let part = tree[start..i].trim();
                if !part.is_empty() {
                    match part.split_once('[') {
                        Some((name, rest)) => {
                            parts.push((name.to_string(), Some(rest.trim_end_matches(']').to_string())));
                        }
                        None => parts.push((part.to_string(), None)),
                    }
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    parts
}

impl Jenkins {
    pub async fn start(jobs: BTreeMap<String, Vec<Build>>) -> Self {
        let shared = Shared::new(Dialect::None);
        shared.set_etags(false);
        let jobs = Arc::new(Mutex::new(jobs));
        let (s, j) = (shared.clone(), jobs.clone());
        let base = Arc::new(Mutex::new(String::new()));
        let b = base.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, jobs, base) = (s.clone(), j.clone(), b.clone());
            async move {
                let base = base.lock().unwrap().clone();
                let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
                let body = match segments.as_slice() {
                    [job @ .., "api", "json"] if !job.is_empty() && job.len() % 2 == 0 && job.chunks(2).all(|c| c[0] == "job") => {
                        let name: Vec<String> = job.chunks(2).map(|c| pct_decode(c[1])).collect();
                        let name = name.join("/");
                        let found = jobs.lock().unwrap().get(&name).cloned();
                        found.map(|builds| {
                            let full = job_json(&base, &name, &builds);
                            match query_param(&uri, "tree") {
                                Some(tree) => project(&full, &tree),
                                None => full,
                            }
                        })
                    }
                    _ => None,
                };
                shared.answer(&uri, &headers, body, None).await.into_response()
            }
        });
        let server = Server::start(app).await;
        *base.lock().unwrap() = server.url();
        Self { server, shared, jobs }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
