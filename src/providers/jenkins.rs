//! Jenkins: the last build of each job, read with a `tree=` projection so each request
//! returns a few hundred bytes instead of the whole job.

use super::http::UpstreamClient;
use super::{PollRequest, ProviderError, Snapshot, item};

const TREE: &str = "name,url,color,lastBuild[number,result,building,timestamp,url]";

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
        let fetched = client.get_json(&request.upstream(url, &[])).await?;
        let body = &fetched.body;
        let last = &body["lastBuild"];
        snapshot.summary.pipelines += 1;
        let state = if last["building"].as_bool() == Some(true) { Some("building") } else { last["result"].as_str() };
        if matches!(last["result"].as_str(), Some("FAILURE")) && last["building"].as_bool() != Some(true) {
            snapshot.summary.failing_pipelines += 1;
        }
        let updated = last["timestamp"]
            .as_i64()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map(|t| serde_json::Value::String(t.to_string()))
            .unwrap_or_default();
        let number = last["number"].as_i64().map(|n| format!(" #{n}")).unwrap_or_default();
        snapshot.items.pipelines.push(item(
            format!("{job}{number}"),
            body["name"].as_str().unwrap_or(job),
            last["url"].as_str().or(body["url"].as_str()).unwrap_or_default(),
            state.map(|s| s.to_ascii_lowercase()).as_deref(),
            None,
            &updated,
        ));
    }
    Ok(snapshot)
}
