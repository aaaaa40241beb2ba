//! GitHub REST, following <https://docs.github.com/en/rest>:
//! - `GET /repos/{o}/{r}` (`default_branch`, `open_issues_count` — which counts open pull
//!   requests too, <https://docs.github.com/en/rest/repos/repos#get-a-repository>);
//! - `/pulls` and `/issues` (the issues list includes every open pull request, marked
//!   `pull_request`), with `state`, `sort=updated`, `direction`, `page`/`per_page` (default
//!   30, at most 100) and a `Link` header with `next`, `last`, `first`, `prev`
//!   (<https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api>);
//!   `/issues` answers 410 "Issues are disabled for this repo" when issues are off;
//! - `/actions/workflows` and `/actions/workflows/{id}/runs` (newest first, filtered by
//!   `branch` and `event`; pull-request runs from forks carry the fork's branch name);
//! - a renamed or transferred repository answers 301 with a `Location` on
//!   `/repositories/{id}/…` (<https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api#moved-permanently>).
//!
//! Links are absolute on the public URL, which for GitHub Enterprise behind another name
//! differs from the address used ([`Github::public_url`]). Any /search request is answered
//! 422 so a test can prove it never happens.

use super::{Dialect, Server, Shared, paginate, query_param};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct Repo {
    pub default_branch: String,
    pub pulls: Vec<Value>,
    /// Issues proper (pull requests are added to the issues list by the fake itself).
    pub issues: Vec<Value>,
    pub runs: Vec<Value>,
    pub issues_enabled: bool,
}

impl Default for Repo {
    fn default() -> Self {
        Self { default_branch: "main".into(), pulls: vec![], issues: vec![], runs: vec![], issues_enabled: true }
    }
}

pub struct Github {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub repos: Arc<Mutex<BTreeMap<String, Repo>>>,
    /// Old full name to the current one (301 on the old name).
    pub renamed: Arc<Mutex<BTreeMap<String, String>>>,
    /// The origin written into `Link` and `Location` headers; the server's own by default.
    pub public_url: Arc<Mutex<String>>,
}

pub fn pull(repo: &str, number: u64, title: &str) -> Value {
    json!({"number": number, "title": title, "html_url": format!("https://github.com/{repo}/pull/{number}"),
           "state": "open", "draft": false, "user": {"login": "octocat"}, "updated_at": format!("2026-11-{:02}T10:00:00Z", 1 + number % 28)})
}

pub fn issue(repo: &str, number: u64, title: &str, is_pull: bool) -> Value {
    let mut v = json!({"number": number, "title": title, "html_url": format!("https://github.com/{repo}/issues/{number}"),
           "state": "open", "user": {"login": "hubot"}, "assignee": null, "updated_at": "2026-11-20T10:00:00Z"});
    if is_pull {
        v["pull_request"] = json!({"url": format!("https://api.github.com/repos/{repo}/pulls/{number}")});
    }
    v
}

/// A push run on `main`.
pub fn run(id: u64, workflow_id: u64, name: &str, conclusion: &str, created: &str) -> Value {
    json!({"id": id, "workflow_id": workflow_id, "name": name, "display_title": format!("{name} on main"),
           "status": "completed", "conclusion": conclusion, "head_branch": "main", "event": "push",
           "head_repository": {"full_name": "acme/api"},
           "html_url": format!("https://github.com/acme/api/actions/runs/{id}"), "actor": {"login": "ci-bot"},
           "created_at": created, "updated_at": created})
}

/// A run still in progress (`conclusion` null).
pub fn running(id: u64, workflow_id: u64, name: &str, created: &str) -> Value {
    let mut v = run(id, workflow_id, name, "", created);
    v["status"] = "in_progress".into();
    v["conclusion"] = Value::Null;
    v
}

/// A pull-request run from a fork whose branch is also called `main`.
pub fn fork_run(id: u64, workflow_id: u64, name: &str, conclusion: &str, created: &str) -> Value {
    let mut v = run(id, workflow_id, name, conclusion, created);
    v["event"] = "pull_request".into();
    v["head_repository"] = json!({"full_name": "mallory/api"});
    v
}

fn pull_as_issue(pr: &Value) -> Value {
    let mut v = pr.clone();
    v["pull_request"] = json!({"url": pr["html_url"]});
    v["assignee"] = Value::Null;
    v
}

fn newest_first(items: &mut [Value], uri: &Uri) {
    if query_param(uri, "sort").as_deref() == Some("updated") {
        items.sort_by(|a, b| b["updated_at"].as_str().cmp(&a["updated_at"].as_str()));
        if query_param(uri, "direction").as_deref() == Some("asc") {
            items.reverse();
        }
    }
}

impl Github {
    pub async fn start(repos: BTreeMap<String, Repo>) -> Self {
        let shared = Shared::new(Dialect::Github);
        let repos = Arc::new(Mutex::new(repos));
        let renamed = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
        let (s, r, n) = (shared.clone(), repos.clone(), renamed.clone());
        let public_url = Arc::new(Mutex::new(String::new()));
        let b = public_url.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, repos, renamed, base) = (s.clone(), r.clone(), n.clone(), b.clone());
            async move {
                let path = uri.path().trim_start_matches('/').to_string();
                let parts: Vec<&str> = path.split('/').collect();
                let base = base.lock().unwrap().clone();
                let all = repos.lock().unwrap().clone();
                // /repos/{o}/{r}/… or /repositories/{id}/… (id: position in the map, from 1).
                let (name, rest): (Option<String>, &[&str]) = match parts.as_slice() {
                    ["repos", owner, repo, rest @ ..] => (Some(format!("{owner}/{repo}")), rest),
                    ["repositories", id, rest @ ..] => {
                        let index = id.parse::<usize>().ok().and_then(|i| i.checked_sub(1));
                        (index.and_then(|i| all.keys().nth(i).cloned()), rest)
                    }
                    _ => (None, &[]),
                };
                if let Some(current) = name.as_ref().and_then(|n| renamed.lock().unwrap().get(n).cloned()) {
                    let id = all.keys().position(|k| *k == current).map(|i| i + 1).unwrap_or(0);
                    let suffix = rest.iter().map(|p| format!("/{p}")).collect::<String>();
                    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                    let location = format!("{base}/repositories/{id}{suffix}{query}");
                    let mut extra = HeaderMap::new();
                    extra.insert("location", HeaderValue::from_str(&location).unwrap());
                    let body = json!({"message": "Moved Permanently", "url": location,
                                      "documentation_url": "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects"});
                    return shared.answer_status(&uri, &headers, 301, body, extra).await.into_response();
                }
                let repo = name.as_ref().and_then(|n| all.get(n).cloned());
                let (body, link) = match (parts.first(), repo, rest) {
                    (Some(&"search"), _, _) => (None, None),
                    (_, Some(repo), []) => {
                        let open_issues =
                            repo.issues.iter().filter(|i| i.get("pull_request").is_none()).count() + repo.pulls.len();
                        let body = json!({"full_name": name, "default_branch": repo.default_branch,
                                          "open_issues_count": open_issues, "has_issues": repo.issues_enabled});
                        (Some(body), None)
                    }
                    (_, Some(repo), ["pulls"]) => {
                        let mut pulls = repo.pulls.clone();
                        newest_first(&mut pulls, &uri);
                        let (v, l) = paginate(&pulls, &uri, &base);
                        (Some(v), l)
                    }
                    (_, Some(repo), ["issues"]) => {
                        if !repo.issues_enabled {
                            let body = json!({"message": "Issues are disabled for this repo",
                                              "documentation_url": "https://docs.github.com/v3/issues/"});
                            return shared.answer_status(&uri, &headers, 410, body, HeaderMap::new()).await.into_response();
                        }
                        let mut issues: Vec<Value> = repo.issues.iter().cloned().chain(repo.pulls.iter().map(pull_as_issue)).collect();
                        newest_first(&mut issues, &uri);
                        let (v, l) = paginate(&issues, &uri, &base);
                        (Some(v), l)
                    }
                    (_, Some(repo), ["actions", "workflows"]) => {
                        let mut workflows: BTreeMap<u64, Value> = BTreeMap::new();
                        for r in &repo.runs {
                            let id = r["workflow_id"].as_u64().unwrap_or_default();
                            workflows.entry(id).or_insert_with(|| {
                                json!({"id": id, "name": r["name"], "path": format!(".github/workflows/{id}.yml"), "state": "active"})
                            });
                        }
                        let list: Vec<Value> = workflows.into_values().collect();
                        (Some(json!({"total_count": list.len(), "workflows": list})), None)
                    }
                    (_, Some(repo), ["actions", "workflows", id, "runs"]) => {
                        let branch = query_param(&uri, "branch");
                        let event = query_param(&uri, "event");
                        let mut runs: Vec<Value> = repo
                            .runs
                            .iter()
                            .filter(|r| r["workflow_id"].as_u64().map(|n| n.to_string()).as_deref() == Some(*id))
                            .filter(|r| branch.as_deref().is_none_or(|b| r["head_branch"].as_str() == Some(b)))
                            .filter(|r| event.as_deref().is_none_or(|e| r["event"].as_str() == Some(e)))
                            .cloned()
                            .collect();
                        runs.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
                        let (page, l) = paginate(&runs, &uri, &base);
                        (Some(json!({"total_count": runs.len(), "workflow_runs": page})), l)
                    }
                    _ => (None, None),
                };
                shared.answer(&uri, &headers, body, link).await.into_response()
            }
        });
        let server = Server::start(app).await;
        *public_url.lock().unwrap() = server.url();
        Self { server, shared, repos, renamed, public_url }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
