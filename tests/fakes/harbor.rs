//! Harbor v2.0, following its API (<https://github.com/goharbor/harbor/blob/main/api/v2.0/swagger.yaml>):
//! `GET /api/v2.0/projects/:p/repositories` (names are `p/repo`, with the numeric
//! `project_id` and `artifact_count`; project ids are 1, 2, … in name order) and
//! `GET /api/v2.0/projects/:p/repositories/:repo/artifacts`, where a '/' inside the
//! repository name must be encoded twice (`team%252Fapi`): the router decodes once, so a
//! single `%2F` becomes a path separator and misses. `scan_overview` only comes with
//! `with_scan_overview=true`; `sort=-push_time` (artifacts) and `sort=-update_time`
//! (repositories; a push updates it) sort newest first. Lists paginate with
//! `page`/`page_size` (default 10, at most 100), `X-Total-Count` and a relative `Link`.
//! No ETags, no rate-limit headers; Basic auth (users or robot accounts).

use super::{Dialect, Server, Shared, paginate_by, pct_decode, query_param};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const REPORT: &str = "application/vnd.security.vulnerability.report; version=1.1";

/// Project name to its repositories (short name, e.g. `team/api`) and their artifacts.
pub type Projects = BTreeMap<String, BTreeMap<String, Vec<Value>>>;

pub struct Harbor {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub projects: Arc<Mutex<Projects>>,
}

/// An artifact; `scan` is (overall severity, critical count, high count), None if never scanned.
pub fn artifact(seed: u64, tag: Option<&str>, push_time: &str, scan: Option<(&str, u64, u64)>) -> Value {
    let digest = format!("sha256:{seed:064x}");
    let mut v = json!({"id": seed, "type": "IMAGE", "media_type": "application/vnd.oci.image.manifest.v1+json",
                       "manifest_media_type": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 31_457_280,
                       "push_time": push_time, "pull_time": "0001-01-01T00:00:00.000Z",
                       "tags": tag.map(|t| vec![json!({"id": seed, "name": t, "push_time": push_time, "immutable": false})]),
                       "labels": null});
    if let Some((severity, critical, high)) = scan {
        v["scan_overview"] = json!({REPORT: {"report_id": format!("r-{seed}"), "scan_status": "Success", "severity": severity,
            "duration": 12, "complete_percent": 100, "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.56.1"},
            "summary": {"total": critical + high + 3, "fixable": high, "summary": {"Critical": critical, "High": high, "Low": 3}}}});
    }
    v
}

impl Harbor {
    pub async fn start(projects: Projects) -> Self {
        let shared = Shared::new(Dialect::None);
        shared.set_etags(false);
        let projects = Arc::new(Mutex::new(projects));
        let (s, p) = (shared.clone(), projects.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, projects) = (s.clone(), p.clone());
            async move {
                let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
                let mut extra = HeaderMap::new();
                let mut list = |items: Vec<Value>| {
                    extra.insert("x-total-count", HeaderValue::from(items.len()));
                    // Harbor's Link header is relative to the host.
                    let (v, n) = paginate_by(&items, &uri, "", "page_size", 10);
                    (Some(v), n)
                };
                let (body, next) = match parts.as_slice() {
                    ["api", "v2.0", "projects", project, "repositories"] => {
                        let all = projects.lock().unwrap().clone();
                        let project_id = all.keys().position(|k| k == project).map(|i| i + 1).unwrap_or(0);
                        let repos = all.get(*project).cloned();
                        match repos {
                            Some(repos) => {
                                let mut listed: Vec<Value> = repos
                                    .iter()
                                    .enumerate()
                                    .map(|(i, (name, artifacts))| {
                                        // A push updates the repository's update_time.
                                        let pushed = artifacts
                                            .iter()
                                            .filter_map(|a| a["push_time"].as_str())
                                            .max()
                                            .unwrap_or("2026-10-01T08:00:00.000Z");
                                        json!({"id": i + 1, "project_id": project_id, "name": format!("{project}/{name}"),
                                               "artifact_count": artifacts.len(), "pull_count": 7,
                                               "creation_time": "2026-10-01T08:00:00.000Z", "update_time": pushed})
                                    })
                                    .collect();
                                if query_param(&uri, "sort").as_deref() == Some("-update_time") {
                                    listed.sort_by(|a, b| b["update_time"].as_str().cmp(&a["update_time"].as_str()));
                                }
                                list(listed)
                            }
                            None => (None, None),
                        }
                    }
                    ["api", "v2.0", "projects", project, "repositories", repo, "artifacts"] => {
                        // The router's single decode must not yield a '/', or the route would not match.
                        let once = pct_decode(repo);
                        let artifacts = if once.contains('/') {
                            None
                        } else {
                            projects.lock().unwrap().get(*project).and_then(|r| r.get(&pct_decode(&once)).cloned())
                        };
                        match artifacts {
                            Some(mut artifacts) => {
                                if query_param(&uri, "with_scan_overview").as_deref() != Some("true") {
                                    for a in &mut artifacts {
                                        if let Some(o) = a.as_object_mut() {
                                            o.remove("scan_overview");
                                        }
                                    }
                                }
                                if query_param(&uri, "sort").as_deref() == Some("-push_time") {
                                    artifacts.sort_by(|a, b| b["push_time"].as_str().cmp(&a["push_time"].as_str()));
                                }
                                list(artifacts)
                            }
                            None => (None, None),
                        }
                    }
                    _ => (None, None),
                };
                shared.answer_with(&uri, &headers, body, next, extra).await.into_response()
            }
        });
        let server = Server::start(app).await;
        Self { server, shared, projects }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
