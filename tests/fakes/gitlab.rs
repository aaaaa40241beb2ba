//! GitLab REST v4: `/api/v4/projects/:id` (numeric ID or URL-encoded full path, e.g.
//! `payments%2Fledger`; an unencoded path is a 404 as on GitLab), and its
//! `/merge_requests`, `/issues` (both filtered by `state`) and `/pipelines` (filtered by
//! `ref`, newest first). Lists paginate with `page`/`per_page` (default 20, at most 100), an
//! absolute `Link` header and the `X-Page`/`X-Per-Page`/`X-Total`/`X-Next-Page` headers.
//! Rate limits in `RateLimit-*`; 429 with `Retry-After` when the quota is used up.

use super::{Dialect, Server, Shared, paginate_by, pct_decode, query_param};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const WEB: &str = "https://gitlab.example.com";

#[derive(Clone, Debug, Default)]
pub struct Project {
    pub id: u64,
    pub default_branch: String,
    pub merge_requests: Vec<Value>,
    pub issues: Vec<Value>,
    pub pipelines: Vec<Value>,
}

pub struct Gitlab {
    pub server: Server,
    pub shared: Arc<Shared>,
    /// Keyed by full path (`group/sub/project`).
    pub projects: Arc<Mutex<BTreeMap<String, Project>>>,
}

fn user(name: &str) -> Value {
    json!({"id": 1000 + name.len(), "username": name, "name": name.to_uppercase(), "state": "active",
           "web_url": format!("{WEB}/{name}")})
}

pub fn merge_request(project: &str, iid: u64, title: &str, state: &str, draft: bool, updated_at: &str) -> Value {
    json!({"id": 90_000 + iid, "iid": iid, "project_id": 1, "title": title, "state": state, "draft": draft,
           "work_in_progress": draft, "source_branch": format!("feature-{iid}"), "target_branch": "main",
           "author": user("alice"), "web_url": format!("{WEB}/{project}/-/merge_requests/{iid}"),
           "created_at": "2026-11-01T09:00:00.000Z", "updated_at": updated_at})
}

pub fn issue(project: &str, iid: u64, title: &str, state: &str, assignee: Option<&str>, updated_at: &str) -> Value {
    let assignee = assignee.map(user);
    json!({"id": 80_000 + iid, "iid": iid, "project_id": 1, "title": title, "state": state,
           "author": user("bob"), "assignee": assignee.clone().unwrap_or(Value::Null),
           "assignees": assignee.into_iter().collect::<Vec<_>>(),
           "web_url": format!("{WEB}/{project}/-/issues/{iid}"),
           "created_at": "2026-11-01T09:00:00.000Z", "updated_at": updated_at})
}

pub fn pipeline(project: &str, id: u64, status: &str, git_ref: &str, updated_at: &str) -> Value {
    json!({"id": id, "iid": id % 1000, "project_id": 1, "sha": format!("{id:040x}"), "ref": git_ref, "status": status,
           "source": "push", "web_url": format!("{WEB}/{project}/-/pipelines/{id}"),
           "created_at": updated_at, "updated_at": updated_at})
}

impl Gitlab {
    pub async fn start(projects: BTreeMap<String, Project>) -> Self {
        let shared = Shared::new(Dialect::Gitlab);
        let projects = Arc::new(Mutex::new(projects));
        let (s, p) = (shared.clone(), projects.clone());
        let base = Arc::new(Mutex::new(String::new()));
        let b = base.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, projects, base) = (s.clone(), p.clone(), b.clone());
            async move {
                let base = base.lock().unwrap().clone();
                let parts: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
                let mut extra = HeaderMap::new();
                let (body, next) = match parts.as_slice() {
                    ["api", "v4", "projects", id, rest @ ..] => {
                        // The router decodes the segment once: `payments%2Fledger` -> `payments/ledger`.
                        let id = pct_decode(id);
                        let found = projects
                            .lock()
                            .unwrap()
                            .iter()
                            .find(|(path, p)| **path == id || p.id.to_string() == id)
                            .map(|(path, p)| (path.clone(), p.clone()));
                        let state = query_param(&uri, "state");
                        let by_state = |list: &[Value]| -> Vec<Value> {
                            list.iter()
                                .filter(|v| state.as_deref().is_none_or(|s| s == "all" || v["state"].as_str() == Some(s)))
                                .cloned()
                                .collect()
                        };
                        let mut list = |items: Vec<Value>| {
                            let (v, n) = paginate_by(&items, &uri, &base, "per_page", 20);
                            page_headers(&mut extra, &uri, items.len());
                            (Some(v), n)
                        };
                        match (found, rest) {
                            (Some((path, p)), []) => (
                                Some(json!({"id": p.id, "path_with_namespace": path, "default_branch": p.default_branch,
                                            "web_url": format!("{WEB}/{path}"), "visibility": "private"})),
                                None,
                            ),
                            (Some((_, p)), ["merge_requests"]) => list(by_state(&p.merge_requests)),
                            (Some((_, p)), ["issues"]) => list(by_state(&p.issues)),
                            (Some((_, p)), ["pipelines"]) => {
                                let wanted = query_param(&uri, "ref");
                                let mut runs: Vec<Value> = p
                                    .pipelines
                                    .iter()
                                    .filter(|r| wanted.as_deref().is_none_or(|w| r["ref"].as_str() == Some(w)))
                                    .cloned()
                                    .collect();
                                // Default order: id descending.
                                runs.sort_by_key(|r| std::cmp::Reverse(r["id"].as_u64()));
                                list(runs)
                            }
                            _ => (None, None),
                        }
                    }
                    _ => (None, None),
                };
                shared.answer_with(&uri, &headers, body, next, extra).await.into_response()
            }
        });
        let server = Server::start(app).await;
        *base.lock().unwrap() = server.url();
        Self { server, shared, projects }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

fn page_headers(out: &mut HeaderMap, uri: &Uri, total: usize) {
    let get = |k: &str| query_param(uri, k).and_then(|v| v.parse::<usize>().ok());
    let per_page = get("per_page").unwrap_or(20).clamp(1, 100);
    let page = get("page").unwrap_or(1).max(1);
    let pages = total.div_ceil(per_page).max(1);
    let mut set = |k: &'static str, v: String| {
        out.insert(k, HeaderValue::from_str(&v).unwrap());
    };
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set("x-total", total.to_string());
    set("x-total-pages", pages.to_string());
    set("x-next-page", if page < pages { (page + 1).to_string() } else { String::new() });
}
