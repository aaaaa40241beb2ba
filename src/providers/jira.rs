//! Jira: the tickets a JQL query selects. Jira Cloud (`*.atlassian.net`) uses the enhanced
//! search endpoint with page tokens; Server and Data Center the classic one with `startAt`.

use super::http::UpstreamClient;
use super::{PollRequest, ProviderError, Snapshot, item};

const FIELDS: &str = "summary,status,assignee,updated";
const PAGE: usize = 100;

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.jira.as_ref().ok_or_else(|| ProviderError::Config("spec.jira is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/').to_string();
    let cloud = request.endpoint.host_str().is_some_and(|h| h.ends_with(".atlassian.net"));
    let mut snapshot = Snapshot::default();
    let mut token: Option<String> = None;
    let mut start = 0usize;
    for _ in 0..client.config().max_pages {
        let mut url = url::Url::parse(&format!("{base}{}", if cloud { "/rest/api/3/search/jql" } else { "/rest/api/2/search" }))
            .map_err(|_| ProviderError::Config("cannot build the Jira search URL".into()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("jql", &spec.jql).append_pair("fields", FIELDS).append_pair("maxResults", &PAGE.to_string());
            match (&token, cloud) {
                (Some(t), true) => {
                    q.append_pair("nextPageToken", t);
                }
                (_, false) => {
                    q.append_pair("startAt", &start.to_string());
                }
                _ => {}
            }
        }
        let page = client.get_json(&request.upstream(url, &[])).await?;
        let issues = page.body["issues"].as_array().cloned().unwrap_or_default();
        for issue in &issues {
            let key = issue["key"].as_str().unwrap_or_default();
            let fields = &issue["fields"];
            snapshot.items.tickets.push(item(
                key.to_string(),
                fields["summary"].as_str().unwrap_or_default(),
                &format!("{base}/browse/{key}"),
                fields["status"]["name"].as_str(),
                fields["assignee"]["displayName"].as_str(),
                &jira_time(&fields["updated"]),
            ));
        }
        // Server reports the total; Cloud's enhanced search does not, so count what we read.
        if let Some(total) = page.body["total"].as_i64() {
            snapshot.summary.tickets = total;
        } else {
            snapshot.summary.tickets += issues.len() as i64;
        }
        start += issues.len();
        token = page.body["nextPageToken"].as_str().map(str::to_string);
        let more =
            if cloud { token.is_some() && page.body["isLast"].as_bool() != Some(true) } else { (start as i64) < snapshot.summary.tickets };
        if issues.is_empty() || !more {
            break;
        }
    }
    Ok(snapshot)
}

/// Jira writes `2026-11-20T10:15:30.000+0000`; RFC 3339 wants a colon in the offset.
fn jira_time(value: &serde_json::Value) -> serde_json::Value {
    let Some(s) = value.as_str() else { return serde_json::Value::Null };
    if s.len() > 5 {
        let (head, offset) = s.split_at(s.len() - 5);
        if (offset.starts_with('+') || offset.starts_with('-')) && !offset.contains(':') {
            return serde_json::Value::String(format!("{head}{}:{}", &offset[..3], &offset[3..]));
        }
    }
    value.clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn jira_timestamps_become_rfc3339() {
        let fixed = super::jira_time(&serde_json::json!("2026-11-20T10:15:30.000+0000"));
        assert_eq!(fixed, "2026-11-20T10:15:30.000+00:00");
        assert!(super::super::time(&fixed).is_some());
    }
}
