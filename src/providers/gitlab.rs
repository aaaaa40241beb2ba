//! GitLab (gitlab.com or self-hosted, REST v4, <https://docs.gitlab.com/api/rest/>): open
//! merge requests, open issues, and the latest finished pipeline of each project's default
//! branch.
//!
//! Counts come from `X-Total` (exact; GitLab leaves it out above 10,000 results, and then
//! the count is a lower bound and says so). Only the newest [`MAX_ITEMS`] are read. A
//! feature switched off or closed to the token (GitLab answers 403) is "n/a" for that
//! capability; the rest of the project's data stands.
//!
//! A project's pipeline is failing when its newest *finished* pipeline (`success` or
//! `failed`) on the default branch failed: a running, pending, skipped or cancelled newest
//! pipeline does not hide an earlier failure.

use super::http::{Fetched, List, Request, UpstreamClient};
use super::{MAX_ITEMS, PollRequest, ProviderError, Snapshot, Text, User, item};
use crate::api::toolbinding::{Capability, GapKind, Item};
use serde::{Deserialize, Serialize};

/// GitLab omits `X-Total` above this many results.
const TOTAL_LIMIT: i64 = 10_000;

#[derive(Serialize, Deserialize)]
struct Project {
    #[serde(default)]
    default_branch: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    iid: u64,
    #[serde(default)]
    title: Text,
    #[serde(default)]
    web_url: Text,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    author: Option<User>,
    #[serde(default)]
    assignee: Option<User>,
    #[serde(default)]
    updated_at: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct Pipeline {
    id: u64,
    #[serde(default)]
    status: Text,
    #[serde(default, rename = "ref")]
    git_ref: Text,
    #[serde(default)]
    web_url: Text,
    #[serde(default)]
    updated_at: Option<Text>,
}

impl Pipeline {
    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "success" | "failed")
    }
}

/// `group/sub/project` or a numeric ID, as the API wants it in a path segment.
fn project_id(project: &str) -> String {
    url::form_urlencoded::byte_serialize(project.as_bytes()).collect()
}

/// A list's count: `X-Total`, or (above GitLab's limit) a lower bound, marked as such.
fn count(page: &Fetched<List<Entry>>, capability: Capability, snapshot: &mut Snapshot) -> i64 {
    match page.paging.total {
        Some(total) => total,
        None if page.paging.next.is_none() => page.body.0.len() as i64,
        None => {
            snapshot.gap(capability, GapKind::Estimated, format!("GitLab gives no total above {TOTAL_LIMIT}: at least {TOTAL_LIMIT}"));
            TOTAL_LIMIT
        }
    }
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.gitlab.as_ref().ok_or_else(|| ProviderError::Config("spec.gitlab is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/');
    let mut snapshot = Snapshot::default();
    let per_page = MAX_ITEMS.to_string();
    for project in &spec.projects {
        let id = project_id(project);
        let get = |path: &str, query: &[(&str, &str)]| -> Result<Request<'_>, ProviderError> {
            let mut url = url::Url::parse(&format!("{base}/api/v4/projects/{id}{path}"))
                .map_err(|_| ProviderError::Config(format!("cannot build a URL for project {project}")))?;
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            Ok(request.upstream(url, &[]))
        };
        let meta: Fetched<Project> = client.get(&get("", &[])?).await?;
        let newest = [("state", "opened"), ("order_by", "updated_at"), ("sort", "desc"), ("per_page", per_page.as_str())];

        let merge_requests = client.get::<List<Entry>>(&get("/merge_requests", &newest)?).await;
        if let Some(page) = snapshot.capability(Capability::CodeReviews, merge_requests)? {
            snapshot.summary.code_reviews += count(&page, Capability::CodeReviews, &mut snapshot);
            for mr in page.body.0 {
                snapshot.items.code_reviews.push(item(
                    format!("{project}!{}", mr.iid),
                    &mr.title,
                    &mr.web_url,
                    Some(if mr.draft { "draft" } else { "open" }),
                    mr.author.and_then(|u| u.login).as_deref(),
                    mr.updated_at.as_deref(),
                ));
            }
        }

        let issues = client.get::<List<Entry>>(&get("/issues", &newest)?).await;
        if let Some(page) = snapshot.capability(Capability::Tickets, issues)? {
            snapshot.summary.tickets += count(&page, Capability::Tickets, &mut snapshot);
            for issue in page.body.0 {
                let person = issue.assignee.and_then(|u| u.login).or(issue.author.and_then(|u| u.login));
                snapshot.items.tickets.push(item(
                    format!("{project}#{}", issue.iid),
                    &issue.title,
                    &issue.web_url,
                    Some("open"),
                    person.as_deref(),
                    issue.updated_at.as_deref(),
                ));
            }
        }

        let branch = meta.body.default_branch.unwrap_or_else(|| "main".into());
        let pipelines =
            client.get::<List<Pipeline>>(&get("/pipelines", &[("ref", branch.as_str()), ("per_page", per_page.as_str())])?).await;
        if let Some(page) = snapshot.capability(Capability::Pipelines, pipelines)? {
            // Newest first (GitLab's default order is id descending).
            let runs = page.body.0;
            let Some(newest) = runs.first() else { continue };
            snapshot.summary.pipelines += 1;
            let decisive = runs.iter().find(|p| p.finished());
            let failing = decisive.is_some_and(|p| p.status == "failed");
            if failing {
                snapshot.summary.failing_pipelines += 1;
            }
            let shown = if failing { decisive.unwrap_or(newest) } else { newest };
            snapshot.items.pipelines.push(Item {
                failing,
                ..item(
                    format!("{project}/pipelines/{}", shown.id),
                    &format!("{project} @ {}", shown.git_ref),
                    &shown.web_url,
                    Some(shown.status.as_str()),
                    None,
                    shown.updated_at.as_deref(),
                )
            });
        }
    }
    Ok(snapshot)
}
