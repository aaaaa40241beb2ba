//! GitLab REST v4, following <https://docs.gitlab.com/api/rest/>:
//! `/api/v4/projects/:id` (numeric ID or URL-encoded full path, e.g. `payments%2Fledger`; an
//! unencoded path is a 404 as on GitLab), and its `/merge_requests`, `/issues` (filtered by
//! `state`, ordered by `order_by=updated_at`/`sort`) and `/pipelines` (filtered by `ref`,
//! newest first).
//! - Pagination (<https://docs.gitlab.com/api/rest/#pagination>): `page`/`per_page` (default
//!   20, at most 100), `X-Page`/`X-Per-Page`/`X-Next-Page`/`X-Total`/`X-Total-Pages` —
//!   `X-Total` and `X-Total-Pages` left out above 10,000 results — and a `Link` header built
//!   from the configured external URL (`Gitlab.config.gitlab.host`), not from the address
//!   the request used ([`Gitlab::external_url`]).
//! - A feature switched off, or closed to a Guest token, answers `403 Forbidden`
//!   (<https://docs.gitlab.com/user/project/settings/#configure-project-features-and-permissions>).
//! - Rate limits (<https://docs.gitlab.com/security/rate_limits/#headers>): `RateLimit-*`
//!   and `Retry-After` only on the 429; 304s count against the throttles too.

use super::{Dialect, Server, Shared, paginate_by, pct_decode, query_param};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The instance's configured external URL: web links and `Link` headers use it.
const WEB: &str = "https://gitlab.example.com";

#[derive(Clone, Debug, Default)]
pub struct Project {
    pub id: u64,
    pub default_branch: String,
    pub merge_requests: Vec<Value>,
    pub issues: Vec<Value>,
    pub pipelines: Vec<Value>,
    /// Features switched off (`merge_requests`, `issues`, `pipelines`): 403.
    pub disabled: Vec<&'static str>,
}

pub struct Gitlab {
    pub server: Server,
    pub shared: Arc<Shared>,
    /// Keyed by full path (`group/sub/project`).
    pub projects: Arc<Mutex<BTreeMap<String, Project>>>,
    /// Where `Link` headers point: the configured external URL (default
    /// `https://gitlab.example.com`), whatever address the request came in on.
    pub external_url: Arc<Mutex<String>>,
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
        let external_url = Arc::new(Mutex::new(WEB.to_string()));
        let b = external_url.clone();
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
                        let mut list = |mut items: Vec<Value>| {
                            if query_param(&uri, "order_by").as_deref() == Some("updated_at") {
                                items.sort_by(|a, b| b["updated_at"].as_str().cmp(&a["updated_at"].as_str()));
                                if query_param(&uri, "sort").as_deref() == Some("asc") {
                                    items.reverse();
                                }
                            }
                            let (v, n) = paginate_by(&items, &uri, &base, "per_page", 20);
                            page_headers(&mut extra, &uri, items.len());
                            (Some(v), n)
                        };
                        let feature = rest.first().copied().unwrap_or_default();
                        if found.as_ref().is_some_and(|(_, p)| p.disabled.contains(&feature)) {
                            let body = json!({"message": "403 Forbidden"});
                            return shared.answer_status(&uri, &headers, 403, body, HeaderMap::new()).await.into_response();
                        }
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
        Self { server, shared, projects, external_url }
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
    if total <= 10_000 {
        set("x-total", total.to_string());
        set("x-total-pages", pages.to_string());
    }
    set("x-next-page", if page < pages { (page + 1).to_string() } else { String::new() });
}
