//! Jira, in both deployments.
//!
//! Data Center (<https://docs.atlassian.com/software/jira/docs/api/REST/9.17.0/#api/2/search>):
//! `GET /rest/api/2/search?jql=&startAt=&maxResults=&fields=` answering `{expand, startAt,
//! maxResults, total, issues}`; `maxResults` is capped (`jira.search.views.default.max`,
//! 1000 unless set lower); only the requested `fields` come back. Rate limiting
//! (<https://confluence.atlassian.com/adminjiraserver/improving-instance-stability-with-rate-limiting-983794911.html>)
//! puts `X-RateLimit-*` and `retry-after: 0` on every answer; after failed logins a 403 with
//! `X-Authentication-Denied-Reason` (a CAPTCHA).
//!
//! Cloud (<https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/>),
//! on a site or under the API gateway prefix `/ex/jira/{cloudId}`
//! (<https://developer.atlassian.com/cloud/jira/platform/scopes-for-oauth-2-3LO-and-forge-apps/>):
//! `GET /rest/api/3/search/jql` (`{issues, nextPageToken?, isLast}`, no total, at most 100 per
//! page with fields), `POST /rest/api/3/search/approximate-count` (`{"count": n}`),
//! `GET /rest/api/3/serverInfo` (`baseUrl` of the site); `/rest/api/2/search` answers 410 Gone
//! (CHANGE-2046, <https://developer.atlassian.com/changelog/#CHANGE-2046>); an unbounded JQL
//! is a 400 with `errorMessages`. Rate-limit headers only on the 429.
//!
//! The JQL is recorded, not evaluated, except a trailing `ORDER BY updated DESC`. No ETags
//! on search.

use super::{Dialect, Server, Shared, query_param};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};

/// The site a Cloud fake reports in `serverInfo.baseUrl`.
pub const CLOUD_SITE: &str = "https://acme.atlassian.net";

pub struct Jira {
    pub server: Server,
    pub shared: Arc<Shared>,
    pub issues: Arc<Mutex<Vec<Value>>>,
    /// The server's `maxResults` cap.
    pub max_results: Arc<Mutex<usize>>,
    /// Every JQL string received, decoded.
    pub jqls: Arc<Mutex<Vec<String>>>,
    /// Cloud: the path prefix (`/ex/jira/{cloudId}` behind the gateway, empty on a site).
    pub prefix: String,
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

fn project_fields(issue: &Value, fields: &Option<Vec<String>>) -> Value {
    let mut issue = issue.clone();
    if let Some(fields) = fields {
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
}

/// The issues in the JQL's order: only `ORDER BY updated DESC` is understood.
fn ordered(mut issues: Vec<Value>, jql: &str) -> Vec<Value> {
    if jql.to_ascii_lowercase().contains("order by updated desc") {
        let when = |i: &Value| {
            i["fields"]["updated"].as_str().and_then(|t| jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%.f%z", t).ok()?.to_timestamp().ok())
        };
        issues.sort_by_key(|i| std::cmp::Reverse(when(i)));
    }
    issues
}

/// Cloud refuses a JQL without a search restriction.
fn unbounded(jql: &str) -> bool {
    let jql = jql.trim().to_ascii_lowercase();
    jql.is_empty() || jql.starts_with("order by")
}

impl Jira {
    /// Data Center.
    pub async fn start(issues: Vec<Value>) -> Self {
        Self::start_as(issues, None).await
    }

    /// Cloud under `prefix` (`""` for a site, `/ex/jira/{cloudId}` for the gateway).
    pub async fn start_cloud(issues: Vec<Value>, prefix: &str) -> Self {
        Self::start_as(issues, Some(prefix.to_string())).await
    }

    async fn start_as(issues: Vec<Value>, cloud: Option<String>) -> Self {
        let shared = Shared::new(if cloud.is_some() { Dialect::JiraCloud } else { Dialect::JiraDataCenter });
        shared.set_etags(false);
        let issues = Arc::new(Mutex::new(issues));
        let max_results = Arc::new(Mutex::new(if cloud.is_some() { 100 } else { 1000 }));
        let jqls = Arc::new(Mutex::new(Vec::new()));
        let (s, i, m, j, c) = (shared.clone(), issues.clone(), max_results.clone(), jqls.clone(), cloud.clone());
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let (shared, issues, max_results, jqls, cloud) = (s.clone(), i.clone(), m.clone(), j.clone(), c.clone());
            async move {
                let number = |k: &str, d: usize| query_param(&uri, k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(d);
                let fields: Option<Vec<String>> = query_param(&uri, "fields").map(|f| f.split(',').map(|s| s.trim().to_string()).collect());
                let jql = query_param(&uri, "jql").unwrap_or_default();
                let all = ordered(issues.lock().unwrap().clone(), &jql);
                let Some(prefix) = cloud else {
                    let body = (uri.path() == "/rest/api/2/search").then(|| {
                        if let Some(jql) = query_param(&uri, "jql") {
                            jqls.lock().unwrap().push(jql);
                        }
                        let start = number("startAt", 0);
                        let max = number("maxResults", 50).min(*max_results.lock().unwrap());
                        let page: Vec<Value> = all.iter().skip(start).take(max).map(|i| project_fields(i, &fields)).collect();
                        json!({"expand": "schema,names", "startAt": start, "maxResults": max, "total": all.len(), "issues": page})
                    });
                    return shared.answer(&uri, &headers, body, None).await.into_response();
                };
                let path = uri.path().strip_prefix(prefix.as_str()).unwrap_or("/unknown");
                let errors = |messages: &[&str]| json!({"errorMessages": messages, "errors": {}});
                match (&method, path) {
                    (&Method::GET, "/rest/api/2/search") => {
                        let body = errors(&["The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"]);
                        shared.answer_status(&uri, &headers, 410, body, HeaderMap::new()).await.into_response()
                    }
                    (&Method::GET, "/rest/api/3/search/jql") => {
                        jqls.lock().unwrap().push(jql.clone());
                        if unbounded(&jql) {
                            let body = errors(&["Unbounded JQL queries are not allowed here. Please add a search restriction to your query.\u{0007}"]);
                            return shared.answer_status(&uri, &headers, 400, body, HeaderMap::new()).await.into_response();
                        }
                        // The token is opaque; this fake makes it the next offset.
                        let start = query_param(&uri, "nextPageToken").and_then(|t| t.strip_prefix("tok-").and_then(|n| n.parse().ok())).unwrap_or(0);
                        let max = number("maxResults", 50).min(*max_results.lock().unwrap());
                        let page: Vec<Value> = all.iter().skip(start).take(max).map(|i| project_fields(i, &fields)).collect();
                        let last = start + max >= all.len();
                        let mut body = json!({"issues": page, "isLast": last});
                        if !last {
                            body["nextPageToken"] = format!("tok-{}", start + max).into();
                        }
                        shared.answer(&uri, &headers, Some(body), None).await.into_response()
                    }
                    (&Method::POST, "/rest/api/3/search/approximate-count") => {
                        let jql = serde_json::from_slice::<Value>(&body).ok().and_then(|b| b["jql"].as_str().map(str::to_string));
                        let Some(jql) = jql else {
                            let body = errors(&["The request body is not valid: jql is required."]);
                            return shared.answer_status(&uri, &headers, 400, body, HeaderMap::new()).await.into_response();
                        };
                        jqls.lock().unwrap().push(jql);
                        shared.answer(&uri, &headers, Some(json!({"count": all.len()})), None).await.into_response()
                    }
                    (&Method::GET, "/rest/api/3/serverInfo") => {
                        let body = json!({"baseUrl": CLOUD_SITE, "displayUrl": CLOUD_SITE, "deploymentType": "Cloud",
                                          "version": "1001.0.0-SNAPSHOT", "scmInfo": "0123456789abcdef"});
                        shared.answer(&uri, &headers, Some(body), None).await.into_response()
                    }
                    _ => shared.answer(&uri, &headers, None, None).await.into_response(),
                }
            }
        });
        let server = Server::start(app).await;
        Self { server, shared, issues, max_results, jqls, prefix: cloud.unwrap_or_default() }
    }

    /// The endpoint a binding names: the server, plus the gateway prefix for Cloud.
    pub fn url(&self) -> String {
        format!("{}{}", self.server.url(), self.prefix)
    }
}
