//! GitHub: open pull requests, open issues (the issues list includes pull requests, which are
//! skipped) and the latest workflow run per workflow on the default branch. List endpoints
//! only — the search API has a 30-per-minute bucket of its own and is never used.

use super::http::{Request, UpstreamClient};
use super::{PollRequest, ProviderError, Snapshot, item};
use serde_json::Value;
use std::collections::BTreeMap;

const HEADERS: &[(&str, &str)] = &[("accept", "application/vnd.github+json"), ("x-github-api-version", "2022-11-28")];

fn api(base: &url::Url, path: &str) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    url
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.github.as_ref().ok_or_else(|| ProviderError::Config("spec.github is missing".into()))?;
    let mut snapshot = Snapshot::default();
    for repository in &spec.repositories {
        let get = |path: String, query: &str| -> Request<'_> {
            let mut url = api(&request.endpoint, &path);
            url.set_query(Some(query));
            request.upstream(url, HEADERS)
        };

        let pages = client.get_all(get(format!("repos/{repository}/pulls"), "state=open&per_page=100")).await?;
        for pr in pages.iter().flat_map(as_array) {
            snapshot.summary.code_reviews += 1;
            let state = if pr["draft"].as_bool() == Some(true) { "draft" } else { "open" };
            snapshot.items.code_reviews.push(item(
                format!("{repository}#{}", pr["number"]),
                pr["title"].as_str().unwrap_or_default(),
                pr["html_url"].as_str().unwrap_or_default(),
                Some(state),
                pr["user"]["login"].as_str(),
                &pr["updated_at"],
            ));
        }

        let pages = client.get_all(get(format!("repos/{repository}/issues"), "state=open&per_page=100")).await?;
        for issue in pages.iter().flat_map(as_array).filter(|i| i.get("pull_request").is_none()) {
            snapshot.summary.tickets += 1;
            snapshot.items.tickets.push(item(
                format!("{repository}#{}", issue["number"]),
                issue["title"].as_str().unwrap_or_default(),
                issue["html_url"].as_str().unwrap_or_default(),
                Some("open"),
                issue["assignee"]["login"].as_str().or(issue["user"]["login"].as_str()),
                &issue["updated_at"],
            ));
        }

        let repo = client.get_json(&get(format!("repos/{repository}"), "")).await?;
        let branch = repo.body["default_branch"].as_str().unwrap_or("main").to_string();
        let runs = client.get_json(&get(format!("repos/{repository}/actions/runs"), &format!("branch={branch}&per_page=50"))).await?;
        // The newest run of each workflow says whether that pipeline is red.
        let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
        for run in runs.body["workflow_runs"].as_array().into_iter().flatten() {
            let workflow = run["workflow_id"].to_string();
            let newer = latest.get(&workflow).is_none_or(|seen| seen["created_at"].as_str() < run["created_at"].as_str());
            if newer {
                latest.insert(workflow, run);
            }
        }
        for run in latest.values() {
            snapshot.summary.pipelines += 1;
            let conclusion = run["conclusion"].as_str();
            let failing = matches!(conclusion, Some("failure" | "timed_out" | "startup_failure"));
            if failing {
                snapshot.summary.failing_pipelines += 1;
            }
            let state = conclusion.or(run["status"].as_str());
            snapshot.items.pipelines.push(item(
                format!("{repository}/{}", run["name"].as_str().unwrap_or("workflow")),
                run["display_title"].as_str().or(run["name"].as_str()).unwrap_or_default(),
                run["html_url"].as_str().unwrap_or_default(),
                state,
                run["actor"]["login"].as_str(),
                &run["updated_at"],
            ));
        }
    }
    Ok(snapshot)
}

fn as_array(page: &Value) -> impl Iterator<Item = &Value> {
    page.as_array().into_iter().flatten()
}
