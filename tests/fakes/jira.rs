//! Jira Server / Data Center: `GET /rest/api/2/search?jql=&startAt=&maxResults=&fields=`
//! answering `{expand, startAt, maxResults, total, issues}`. `maxResults` is capped (the
//! `jira.search.views.default.max` property, 1000 unless set lower) and the answer says which
//! cap applied; only the requested `fields` come back. The JQL is recorded, not evaluated.
//! No ETags on search. Rate limits in `X-RateLimit-*`; 429 with `Retry-After`.

use super::{Dialect, Server, Shared, query_param};
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};

pub struct Jira {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub issues: Arc<Mutex<Vec<Value>>>,
    /// The server's `maxResults` cap.
    pub max_results: Arc<Mutex<usize>>,
    /// Every JQL string received, decoded.
    pub jqls: Arc<Mutex<Vec<String>>>,
}

/// An issue as search returns it, with more fields than anyone asked for (they are filtered).
pub fn issue(key: &str, summary: &str, status: &str, assignee: Option<&str>, updated: &str) -> Value {
    let id = key.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) + 10_000;
    json!({"expand": "operations,versionedRepresentations,editmeta,changelog,renderedFields", "id": id.to_string(),
           "self": format!("https://jira.example.com/rest/api/2/issue/{id}"), "key": key,
           "fields": {"summary": summary, "status": {"name": status, "statusCategory": {"key": "indeterminate"}},
                      "assignee": assignee.map(|a| json!({"name": a.to_lowercase().replace(' ', "."), "displayName": a})),
                      "updated": updated, "description": "A long description nobody asked for.",
                      "customfield_10010": [1, 2, 3]}})
}

impl Jira {
    pub async fn start(issues: Vec<Value>) -> Self {
        let shared = Shared::new(Dialect::Jira);
        shared.set_etags(false);
        let issues = Arc::new(Mutex::new(issues));
        let max_results = Arc::new(Mutex::new(1000));
        let jqls = Arc::new(Mutex::new(Vec::new()));
        let (s, i, m, j) = (shared.clone(), issues.clone(), max_results.clone(), jqls.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let (shared, issues, max_results, jqls) = (s.clone(), i.clone(), m.clone(), j.clone());
            async move {
                let body = (uri.path() == "/rest/api/2/search").then(|| {
                    if let Some(jql) = query_param(&uri, "jql") {
                        jqls.lock().unwrap().push(jql);
                    }
                    let number = |k: &str, d: usize| query_param(&uri, k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
                    let start = number("startAt", 0);
                    let max = number("maxResults", 50).min(*max_results.lock().unwrap());
                    let fields: Option<Vec<String>> =
                        query_param(&uri, "fields").map(|f| f.split(',').map(|s| s.trim().to_string()).collect());
                    let all = issues.lock().unwrap().clone();
                    let page: Vec<Value> = all
                        .iter()
                        .skip(start)
                        .take(max)
                        .map(|issue| {
                            let mut issue = issue.clone();
                            if let Some(fields) = &fields {
                                let kept: Map<String, Value> = issue["fields"]
                                    .as_object()
                                    .into_iter()
                                    .flatten()
                                    .filter(|(k, _)| fields.iter().any(|f| f == *k || f == "*all"))
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect();
                                issue["fields"] = Value::Object(kept);
                            }
                            issue
                        })
                        .collect();
                    json!({"expand": "schema,names", "startAt": start, "maxResults": max, "total": all.len(), "issues": page})
                });
                shared.answer(&uri, &headers, body, None).await.into_response()
            }
        });
        let server = Server::start(app).await;
        Self { server, shared, issues, max_results, jqls }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
