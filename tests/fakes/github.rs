//! GitHub REST: /repos/{o}/{r}/pulls, /issues (PRs included, marked `pull_request`),
//! /repos/{o}/{r} (default_branch), /actions/runs. Any /search request is recorded and
//! answered 422 so a test can prove it never happens.

use super::{Dialect, Server, Shared, paginate};
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub struct Repo {
    pub default_branch: String,
    pub pulls: Vec<Value>,
    pub issues: Vec<Value>,
    pub runs: Vec<Value>,
}

pub struct Github {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub repos: Arc<Mutex<BTreeMap<String, Repo>>>,
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

pub fn run(id: u64, workflow_id: u64, name: &str, conclusion: &str, created: &str) -> Value {
    json!({"id": id, "workflow_id": workflow_id, "name": name, "display_title": format!("{name} on main"),
           "status": "completed", "conclusion": conclusion, "head_branch": "main",
           "html_url": format!("https://github.com/acme/api/actions/runs/{id}"), "actor": {"login": "ci-bot"},
           "created_at": created, "updated_at": created})
}

impl Github {
    pub async fn start(repos: BTreeMap<String, Repo>) -> Self {
        let shared = Shared::new(Dialect::Github);
        let repos = Arc::new(Mutex::new(repos));
        let (s, r) = (shared.clone(), repos.clone());
        let base = Arc::new(Mutex::new(String::new()));
        let b = base.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, repos, base) = (s.clone(), r.clone(), b.clone());
            async move {
                let path = uri.path().trim_start_matches('/').to_string();
                let parts: Vec<&str> = path.split('/').collect();
                let base = base.lock().unwrap().clone();
                let (body, next) = if parts.first() == Some(&"search") {
                    (None, None)
                } else if parts.len() >= 3 && parts[0] == "repos" {
                    let name = format!("{}/{}", parts[1], parts[2]);
                    let repo = repos.lock().unwrap().get(&name).cloned();
                    match (repo, &parts[3..]) {
                        (Some(repo), []) => (Some(json!({"full_name": name, "default_branch": repo.default_branch})), None),
                        (Some(repo), ["pulls"]) => {
                            let (v, n) = paginate(&repo.pulls, &uri, &base);
                            (Some(v), n)
                        }
                        (Some(repo), ["issues"]) => {
                            let (v, n) = paginate(&repo.issues, &uri, &base);
                            (Some(v), n)
                        }
                        (Some(repo), ["actions", "runs"]) => {
                            let runs: Vec<Value> = repo
                                .runs
                                .iter()
                                .filter(|r| {
                                    uri.query()
                                        .unwrap_or_default()
                                        .contains(&format!("branch={}", r["head_branch"].as_str().unwrap_or_default()))
                                })
                                .cloned()
                                .collect();
                            (Some(json!({"total_count": runs.len(), "workflow_runs": runs})), None)
                        }
                        _ => (None, None),
                    }
                } else {
                    (None, None)
                };
                shared.answer(&uri, &headers, body, next).await.into_response()
            }
        });
        let server = Server::start(app).await;
        *base.lock().unwrap() = server.url();
        Self { server, shared, repos }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
