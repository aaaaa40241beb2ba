//! Harbor: the repositories of each project and their newest artifacts with the vulnerability
//! scan summary; an artifact with critical findings counts as vulnerable.

use super::http::{Request, UpstreamClient};
use super::{PollRequest, ProviderError, Snapshot, item};
use serde_json::Value;

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.harbor.as_ref().ok_or_else(|| ProviderError::Config("spec.harbor is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/');
    let mut snapshot = Snapshot::default();
    let get = |url: String| -> Result<Request<'_>, ProviderError> {
        let url = url::Url::parse(&url).map_err(|_| ProviderError::Config("cannot build a Harbor URL".into()))?;
        Ok(request.upstream(url, &[]))
    };
    for project in &spec.projects {
        let pages = client.get_all(get(format!("{base}/api/v2.0/projects/{project}/repositories?page_size=100"))?).await?;
        for repository in pages.iter().flat_map(|p| p.as_array().into_iter().flatten()) {
            let full = repository["name"].as_str().unwrap_or_default();
            let short = full.strip_prefix(&format!("{project}/")).unwrap_or(full);
            // Harbor wants a "/" inside a repository name encoded twice.
            let encoded = short.replace('/', "%252F");
            let artifacts = client
                .get_json(&get(format!(
                    "{base}/api/v2.0/projects/{project}/repositories/{encoded}/artifacts?with_scan_overview=true&page_size=10&sort=-push_time"
                ))?)
                .await?;
            for artifact in artifacts.body.as_array().into_iter().flatten() {
                snapshot.summary.artifacts += 1;
                let severity = scan_severity(artifact);
                let critical = critical_count(artifact);
                if critical > 0 || severity.as_deref() == Some("Critical") {
                    snapshot.summary.vulnerable_artifacts += 1;
                }
                let digest = artifact["digest"].as_str().unwrap_or_default();
                let tag = artifact["tags"][0]["name"].as_str();
                let title = match tag {
                    Some(tag) => format!("{full}:{tag}"),
                    None => format!("{full}@{}", digest.get(..19).unwrap_or(digest)),
                };
                let state = match (critical, severity) {
                    (n, _) if n > 0 => format!("{n} critical"),
                    (_, Some(s)) => s.to_ascii_lowercase(),
                    (_, None) => "not scanned".into(),
                };
                snapshot.items.artifacts.push(item(
                    digest.to_string(),
                    &title,
                    &format!("{base}/harbor/projects/{project}/repositories/{encoded}/artifacts-tab/artifacts/{digest}"),
                    Some(&state),
                    None,
                    &artifact["push_time"],
                ));
            }
        }
    }
    Ok(snapshot)
}

/// The scan overview is keyed by report MIME type; any report will do.
fn overview(artifact: &Value) -> Option<&Value> {
    artifact["scan_overview"].as_object()?.values().next()
}

fn scan_severity(artifact: &Value) -> Option<String> {
    overview(artifact)?["severity"].as_str().map(str::to_string)
}

fn critical_count(artifact: &Value) -> i64 {
    overview(artifact).and_then(|o| o["summary"]["summary"]["Critical"].as_i64()).unwrap_or(0)
}
