//! Jira: the tickets a JQL query selects.
//!
//! - Cloud (<https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-search/>):
//!   `*.atlassian.net`, or the API gateway `api.atlassian.com/ex/jira/{cloudId}` (required
//!   for scoped API tokens and service accounts), or `spec.jira.deployment: cloud`. Tickets
//!   from `GET /rest/api/3/search/jql` (the enhanced search, paged by `nextPageToken`; the old
//!   `/rest/api/2/search` is gone on Cloud), the count from
//!   `POST /rest/api/3/search/approximate-count` — approximate, and status says so. Item
//!   links go to the site (`serverInfo.baseUrl`), not the gateway.
//! - Server / Data Center (<https://docs.atlassian.com/software/jira/docs/api/REST/latest/>):
//!   `GET /rest/api/2/search` with an exact `total`.
//!
//! Only the first [`MAX_ITEMS`] tickets in the JQL's own order are read: the count comes
//! from the upstream, not from reading every page.

use super::http::{Fetched, List, UpstreamClient};
use super::{MAX_ITEMS, PollRequest, ProviderError, Snapshot, Text, User, item};
use crate::api::toolbinding::{Capability, GapKind, JiraDeployment};
use serde::{Deserialize, Serialize};

const FIELDS: &str = "summary,status,assignee,updated";

#[derive(Serialize, Deserialize)]
struct Search {
    #[serde(default)]
    issues: List<Issue>,
    /// Data Center only.
    #[serde(default)]
    total: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct Issue {
    #[serde(default)]
    key: Text,
    #[serde(default)]
    fields: Fields,
}

#[derive(Serialize, Deserialize, Default)]
struct Fields {
    #[serde(default)]
    summary: Text,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    assignee: Option<User>,
    #[serde(default)]
    updated: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct Status {
    #[serde(default)]
    name: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct Count {
    count: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerInfo {
    #[serde(default)]
    base_url: Option<Text>,
}

/// Is this endpoint Jira Cloud?
pub fn is_cloud(endpoint: &url::Url, deployment: JiraDeployment) -> bool {
    match deployment {
        JiraDeployment::Cloud => true,
        JiraDeployment::DataCenter => false,
        JiraDeployment::Auto => {
            let host = endpoint.host_str().unwrap_or_default();
            host.ends_with(".atlassian.net") || (host == "api.atlassian.com" && endpoint.path().starts_with("/ex/jira/"))
        }
    }
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.jira.as_ref().ok_or_else(|| ProviderError::Config("spec.jira is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/').to_string();
    let cloud = is_cloud(&request.endpoint, spec.deployment);
    let url = |path: &str| url::Url::parse(&format!("{base}{path}")).map_err(|_| ProviderError::Config("cannot build a Jira URL".into()));
    let mut snapshot = Snapshot::default();
    let max = MAX_ITEMS.to_string();

    let mut search = url(if cloud { "/rest/api/3/search/jql" } else { "/rest/api/2/search" })?;
    search.query_pairs_mut().append_pair("jql", &spec.jql).append_pair("fields", FIELDS).append_pair("maxResults", &max);
    let page: Fetched<Search> = client.get(&request.upstream(search, &[])).await?;
    let mut site = base.clone();
    if cloud {
        let body = serde_json::json!({ "jql": spec.jql }).to_string();
        let counted: Fetched<Count> = client
            .get(&super::http::Request { json: Some(&body), ..request.upstream(url("/rest/api/3/search/approximate-count")?, &[]) })
            .await?;
        snapshot.summary.tickets = counted.body.count;
        snapshot.gap(Capability::Tickets, GapKind::Estimated, "Jira Cloud gives an approximate count");
        if request.endpoint.host_str() == Some("api.atlassian.com") || !base.contains(".atlassian.net") {
            let info: Fetched<ServerInfo> = client.get(&request.upstream(url("/rest/api/3/serverInfo")?, &[])).await?;
            // Links only: the token never goes there.
            if let Some(found) = info.body.base_url.filter(|u| url::Url::parse(u).is_ok_and(|u| u.scheme() == "https")) {
                site = found.trim_end_matches('/').to_string();
            }
        }
    } else {
        snapshot.summary.tickets = page.body.total.unwrap_or(page.body.issues.0.len() as i64);
    }
    for issue in page.body.issues.0 {
        let key = issue.key;
        let fields = issue.fields;
        snapshot.items.tickets.push(item(
            key.to_string(),
            &fields.summary,
            &format!("{site}/browse/{key}"),
            fields.status.and_then(|s| s.name).as_deref(),
            fields.assignee.and_then(|u| u.login).as_deref(),
            jira_time(fields.updated.as_deref()).as_deref(),
        ));
    }
    Ok(snapshot)
}

/// Jira writes `2026-11-20T10:15:30.000+0000`; RFC 3339 wants a colon in the offset.
fn jira_time(value: Option<&str>) -> Option<String> {
    let s = value?;
    if s.len() > 5 && s.is_char_boundary(s.len() - 5) {
        let (head, offset) = s.split_at(s.len() - 5);
        if (offset.starts_with('+') || offset.starts_with('-')) && !offset.contains(':') {
            return Some(format!("{head}{}:{}", &offset[..3], &offset[3..]));
        }
    }
    Some(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_timestamps_become_rfc3339() {
        let fixed = jira_time(Some("2026-11-20T10:15:30.000+0000"));
        assert_eq!(fixed.as_deref(), Some("2026-11-20T10:15:30.000+00:00"));
        assert!(super::super::time(fixed.as_deref()).is_some());
    }

    #[test]
    fn cloud_is_detected_by_site_and_by_the_api_gateway_or_forced() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(is_cloud(&u("https://acme.atlassian.net"), JiraDeployment::Auto));
        assert!(is_cloud(&u("https://api.atlassian.com/ex/jira/11223344-a1b2-3b33-c444-def123456789"), JiraDeployment::Auto));
        assert!(!is_cloud(&u("https://api.atlassian.com/other"), JiraDeployment::Auto));
        assert!(!is_cloud(&u("https://jira.example.com"), JiraDeployment::Auto));
        assert!(is_cloud(&u("https://jira.internal:8443/ex/jira/x"), JiraDeployment::Cloud));
        assert!(!is_cloud(&u("https://acme.atlassian.net"), JiraDeployment::DataCenter));
    }
}
