//! GitHub (REST, <https://docs.github.com/en/rest>): open pull requests, open issues and the
//! latest push run of each workflow on the default branch. List endpoints only — the search
//! API has a 30-per-minute bucket of its own and is never used.
//!
//! Counts are exact without reading everything: a list page of `per_page=1` has as many
//! pages as items, so its `rel="last"` page number is the total; open issues are the
//! repository's `open_issues_count` (which includes pull requests) minus the open pull
//! requests. Only the newest [`MAX_ITEMS`] of each list are read for display.
//!
//! A workflow is failing when its newest *finished* push run on the default branch
//! (`success`, `failure`, `timed_out`, `startup_failure`) failed: a run in progress, skipped
//! or cancelled does not hide an earlier failure, and runs of pull requests from forks
//! (whose branch may also be called `main`) never count (`event=push`).

use super::http::{Fetched, List, Request, UpstreamClient};
use super::{MAX_ITEMS, PollRequest, ProviderError, Snapshot, Text, User, item};
use crate::api::toolbinding::{Capability, Item};
use serde::{Deserialize, Serialize};

/// One `Accept` (GitHub's media type) and the API version.
const HEADERS: &[(&str, &str)] = &[("accept", "application/vnd.github+json"), ("x-github-api-version", "2022-11-28")];
/// Workflows whose runs are read, per repository.
const MAX_WORKFLOWS: usize = 20;
/// Issue pages (of 100, pull requests included) read to find the newest issues to show; the
/// count does not depend on it.
const ISSUE_PAGES: usize = 3;
/// Runs read per workflow to find the newest finished one.
const RUNS_PER_WORKFLOW: usize = 10;

#[derive(Serialize, Deserialize)]
struct Repository {
    #[serde(default)]
    default_branch: Option<Text>,
    #[serde(default)]
    open_issues_count: i64,
}

#[derive(Serialize, Deserialize)]
struct Pull {
    number: u64,
    #[serde(default)]
    title: Text,
    #[serde(default)]
    html_url: Text,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    updated_at: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct Issue {
    number: u64,
    #[serde(default)]
    title: Text,
    #[serde(default)]
    html_url: Text,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    assignee: Option<User>,
    #[serde(default)]
    updated_at: Option<Text>,
    /// Present (whatever its content) on pull requests, which the issues list includes.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "std::ops::Not::not")]
    pull_request: bool,
}

/// A list element only counted (any object).
#[derive(Serialize, Deserialize)]
struct Counted {}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<serde::de::IgnoredAny>::deserialize(d)?.is_some())
}

#[derive(Serialize, Deserialize)]
struct Workflows {
    #[serde(default)]
    workflows: List<Workflow>,
}

#[derive(Serialize, Deserialize)]
struct Workflow {
    id: u64,
    #[serde(default)]
    name: Text,
    #[serde(default)]
    state: Text,
}

#[derive(Serialize, Deserialize)]
struct Runs {
    #[serde(default)]
    workflow_runs: List<Run>,
}

#[derive(Serialize, Deserialize)]
struct Run {
    #[serde(default)]
    display_title: Option<Text>,
    #[serde(default)]
    status: Option<Text>,
    #[serde(default)]
    conclusion: Option<Text>,
    #[serde(default)]
    html_url: Text,
    #[serde(default)]
    actor: Option<User>,
    #[serde(default)]
    updated_at: Option<Text>,
}

impl Run {
    fn finished(&self) -> bool {
        matches!(self.conclusion.as_deref(), Some("success" | "failure" | "timed_out" | "startup_failure"))
    }
    fn failed(&self) -> bool {
        self.finished() && self.conclusion.as_deref() != Some("success")
    }
}

fn api(request: &PollRequest<'_>, path: &str, query: &[(&str, &str)]) -> url::Url {
    let mut url = request.endpoint.clone();
    let joined = format!("{}/{}", url.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    if !query.is_empty() {
        // query_pairs_mut percent-encodes: a branch such as `release/1.0+hotfix` arrives intact.
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

fn get<'r>(request: &'r PollRequest<'_>, path: &str, query: &[(&str, &str)]) -> Request<'r> {
    request.upstream(api(request, path, query), HEADERS)
}

/// The total of a list: the first page when it is the only one, else the `rel="last"` page
/// of a `per_page=1` listing.
async fn total<T: serde::de::DeserializeOwned + Serialize>(
    client: &UpstreamClient,
    request: &PollRequest<'_>,
    path: &str,
    query: &[(&str, &str)],
    first: &Fetched<List<T>>,
) -> Result<i64, ProviderError> {
    if first.paging.next.is_none() {
        return Ok(first.body.0.len() as i64);
    }
    let mut one: Vec<(&str, &str)> = query.iter().filter(|(k, _)| *k != "per_page").copied().collect();
    one.push(("per_page", "1"));
    let counted: Fetched<List<Counted>> = client.get(&get(request, path, &one)).await?;
    Ok(counted.paging.last_page.map(|n| n as i64).unwrap_or(counted.body.0.len() as i64))
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.github.as_ref().ok_or_else(|| ProviderError::Config("spec.github is missing".into()))?;
    let mut snapshot = Snapshot::default();
    let per_page = MAX_ITEMS.to_string();
    for repository in &spec.repositories {
        let repo: Fetched<Repository> = client.get(&get(request, &format!("repos/{repository}"), &[])).await?;

        let path = format!("repos/{repository}/pulls");
        let query = [("state", "open"), ("sort", "updated"), ("direction", "desc"), ("per_page", per_page.as_str())];
        let mut open_pulls = 0;
        let read = async {
            let first: Fetched<List<Pull>> = client.get(&get(request, &path, &query)).await?;
            let count = total(client, request, &path, &query, &first).await?;
            Ok((first, count))
        };
        if let Some((first, count)) = snapshot.capability(Capability::CodeReviews, read.await)? {
            open_pulls = count;
            snapshot.summary.code_reviews += count;
            for pr in first.body.0 {
                snapshot.items.code_reviews.push(item(
                    format!("{repository}#{}", pr.number),
                    &pr.title,
                    &pr.html_url,
                    Some(if pr.draft { "draft" } else { "open" }),
                    pr.user.and_then(|u| u.login).as_deref(),
                    pr.updated_at.as_deref(),
                ));
            }
        }

        let query = [("state", "open"), ("sort", "updated"), ("direction", "desc"), ("per_page", "100")];
        let pages = client.get_pages(get(request, &format!("repos/{repository}/issues"), &query), |pages: &[Fetched<List<Issue>>]| {
            pages.len() >= ISSUE_PAGES || pages.iter().flat_map(|p| &p.body.0).filter(|i| !i.pull_request).count() >= MAX_ITEMS
        });
        if let Some(pages) = snapshot.capability(Capability::Tickets, pages.await)? {
            snapshot.summary.tickets += (repo.body.open_issues_count - open_pulls).max(0);
            for issue in pages.into_iter().flat_map(|p| p.body.0).filter(|i| !i.pull_request).take(MAX_ITEMS) {
                let person = issue.assignee.and_then(|u| u.login).or(issue.user.and_then(|u| u.login));
                snapshot.items.tickets.push(item(
                    format!("{repository}#{}", issue.number),
                    &issue.title,
                    &issue.html_url,
                    Some("open"),
                    person.as_deref(),
                    issue.updated_at.as_deref(),
                ));
            }
        }

        let branch = repo.body.default_branch.unwrap_or_else(|| "main".into());
        let pipelines = workflows(client, request, repository, &branch, &mut snapshot).await;
        snapshot.capability(Capability::Pipelines, pipelines)?;
    }
    Ok(snapshot)
}

/// The newest push run of each active workflow on `branch`.
async fn workflows(
    client: &UpstreamClient,
    request: &PollRequest<'_>,
    repository: &str,
    branch: &str,
    snapshot: &mut Snapshot,
) -> Result<(), ProviderError> {
    let list: Fetched<Workflows> =
        client.get(&get(request, &format!("repos/{repository}/actions/workflows"), &[("per_page", "100")])).await?;
    let runs_per = RUNS_PER_WORKFLOW.to_string();
    for workflow in list.body.workflows.0.iter().filter(|w| w.state == "active").take(MAX_WORKFLOWS) {
        let query = [("branch", branch), ("event", "push"), ("exclude_pull_requests", "true"), ("per_page", runs_per.as_str())];
        let runs: Fetched<Runs> =
            client.get(&get(request, &format!("repos/{repository}/actions/workflows/{}/runs", workflow.id), &query)).await?;
        let runs = runs.body.workflow_runs.0;
        let Some(newest) = runs.first() else { continue };
        snapshot.summary.pipelines += 1;
        // Newest first, as the API lists them.
        let decisive = runs.iter().find(|r| r.finished());
        let failing = decisive.is_some_and(Run::failed);
        if failing {
            snapshot.summary.failing_pipelines += 1;
        }
        let shown = if failing { decisive.unwrap_or(newest) } else { newest };
        snapshot.items.pipelines.push(Item {
            failing,
            ..item(
                format!("{repository}/{}", workflow.name),
                shown.display_title.as_deref().unwrap_or(&workflow.name),
                &shown.html_url,
                shown.conclusion.as_deref().or(shown.status.as_deref()),
                shown.actor.as_ref().and_then(|u| u.login.as_deref()),
                shown.updated_at.as_deref(),
            )
        });
    }
    Ok(())
}
