//! Jenkins (JSON API, <https://www.jenkins.io/doc/book/using/remote-access-api/>): the state
//! of each job, read with a `tree=` projection so each request returns a few hundred bytes
//! instead of the whole job.
//!
//! A job is failing when its last *completed* build (`lastCompletedBuild`) ended `FAILURE`
//! or `UNSTABLE` (failing tests): `lastBuild` is the running build, and reading it would
//! turn red into nothing while a fix builds. The item shows the running build when one runs.

use super::http::{Fetched, UpstreamClient};
use super::{PollRequest, ProviderError, Snapshot, Text, item};
use crate::api::toolbinding::Item;
use serde::{Deserialize, Serialize};

const TREE: &str =
    "name,url,color,lastBuild[number,result,building,timestamp,url],lastCompletedBuild[number,result,building,timestamp,url]";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    #[serde(default)]
    name: Option<Text>,
    #[serde(default)]
    url: Option<Text>,
    #[serde(default)]
    last_build: Option<Build>,
    #[serde(default)]
    last_completed_build: Option<Build>,
}

#[derive(Serialize, Deserialize)]
struct Build {
    #[serde(default)]
    number: Option<i64>,
    #[serde(default)]
    result: Option<Text>,
    #[serde(default)]
    building: bool,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    url: Option<Text>,
}

impl Build {
    fn failed(&self) -> bool {
        matches!(self.result.as_deref(), Some("FAILURE" | "UNSTABLE"))
    }
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.jenkins.as_ref().ok_or_else(|| ProviderError::Config("spec.jenkins is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/');
    let mut snapshot = Snapshot::default();
    for job in &spec.jobs {
        // folder/job -> /job/folder/job/job, each name percent-encoded as a path segment (a
        // space is %20: form encoding's '+' would reach Jenkins as a literal '+').
        let invalid = || ProviderError::Config(format!("cannot build a URL for job {job}"));
        let mut url = url::Url::parse(base).map_err(|_| invalid())?;
        {
            let mut segments = url.path_segments_mut().map_err(|_| invalid())?;
            segments.pop_if_empty();
            for part in job.split('/') {
                segments.push("job").push(part);
            }
            segments.push("api").push("json");
        }
        url.query_pairs_mut().append_pair("tree", TREE);
        let fetched: Fetched<Job> = client.get(&request.upstream(url, &[])).await?;
        let body = fetched.body;
        snapshot.summary.pipelines += 1;
        let failing = body.last_completed_build.as_ref().is_some_and(Build::failed);
        if failing {
            snapshot.summary.failing_pipelines += 1;
        }
        let running = body.last_build.as_ref().filter(|b| b.building);
        let shown = match (running, failing) {
            (Some(b), false) => Some(b),
            _ => body.last_completed_build.as_ref().or(body.last_build.as_ref()),
        };
        let state = match (running, shown) {
            (Some(_), _) if !failing => "building".into(),
            (_, Some(s)) => s.result.as_deref().unwrap_or("not built").to_ascii_lowercase(),
            (_, None) => "not built".into(),
        };
        let updated = shown.and_then(|b| b.timestamp).and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).map(|t| t.to_string());
        let number = shown.and_then(|b| b.number).map(|n| format!(" #{n}")).unwrap_or_default();
        snapshot.items.pipelines.push(Item {
            failing,
            ..item(
                format!("{job}{number}"),
                body.name.as_deref().unwrap_or(job),
                shown.and_then(|b| b.url.as_deref()).or(body.url.as_deref()).unwrap_or_default(),
                Some(&state),
                None,
                updated.as_deref(),
            )
        });
    }
    Ok(snapshot)
}
