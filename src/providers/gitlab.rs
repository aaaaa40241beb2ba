//! GitLab (gitlab.com or self-hosted): open merge requests, open issues, and the latest
//! pipeline of each project's default branch.

use super::http::{Request, UpstreamClient};
use super::{PollRequest, ProviderError, Snapshot, item};
use serde_json::Value;

/// `group/sub/project` or a numeric ID, as the API wants it in a path segment.
fn project_id(project: &str) -> String {
    url::form_urlencoded::byte_serialize(project.as_bytes()).collect()
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.gitlab.as_ref().ok_or_else(|| ProviderError::Config("spec.gitlab is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/');
    let mut snapshot = Snapshot::default();
    for project in &spec.projects {
        let id = project_id(project);
        let get = |path: String| -> Result<Request<'_>, ProviderError> {
            let url = url::Url::parse(&format!("{base}/api/v4/projects/{id}{path}"))
                .map_err(|_| ProviderError::Config(format!("cannot build a URL for project {project}")))?;
            Ok(request.upstream(url, &[]))
        };

        let pages = client.get_all(get("/merge_requests?state=opened&per_page=100".into())?).await?;
        for mr in pages.iter().flat_map(as_array) {
            snapshot.summary.code_reviews += 1;
            let state = if mr["draft"].as_bool() == Some(true) { "draft" } else { "open" };
            snapshot.items.code_reviews.push(item(
                format!("{project}!{}", mr["iid"]),
                mr["title"].as_str().unwrap_or_default(),
                mr["web_url"].as_str().unwrap_or_default(),
                Some(state),
                mr["author"]["username"].as_str(),
                &mr["updated_at"],
            ));
        }

        let pages = client.get_all(get("/issues?state=opened&per_page=100".into())?).await?;
        for issue in pages.iter().flat_map(as_array) {
            snapshot.summary.tickets += 1;
            snapshot.items.tickets.push(item(
                format!("{project}#{}", issue["iid"]),
                issue["title"].as_str().unwrap_or_default(),
                issue["web_url"].as_str().unwrap_or_default(),
                Some("open"),
                issue["assignee"]["username"].as_str().or(issue["author"]["username"].as_str()),
                &issue["updated_at"],
            ));
        }

        let meta = client.get_json(&get(String::new())?).await?;
        let branch: String =
            url::form_urlencoded::byte_serialize(meta.body["default_branch"].as_str().unwrap_or("main").as_bytes()).collect();
        let pipelines = client.get_json(&get(format!("/pipelines?ref={branch}&per_page=1"))?).await?;
        if let Some(latest) = pipelines.body.as_array().and_then(|p| p.first()) {
            snapshot.summary.pipelines += 1;
            let status = latest["status"].as_str();
            if status == Some("failed") {
                snapshot.summary.failing_pipelines += 1;
            }
            snapshot.items.pipelines.push(item(
                format!("{project}/pipelines/{}", latest["id"]),
                &format!("{project} @ {}", latest["ref"].as_str().unwrap_or_default()),
                latest["web_url"].as_str().unwrap_or_default(),
                status,
                None,
                &latest["updated_at"],
            ));
        }
    }
    Ok(snapshot)
}

fn as_array(page: &Value) -> impl Iterator<Item = &Value> {
    page.as_array().into_iter().flatten()
}
