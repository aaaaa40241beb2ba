//! Harbor (API v2.0, <https://goharbor.io/docs/main/build-customize-contribute/configure-swagger/>):
//! the repositories of each project and their newest artifacts with the vulnerability scan
//! summary; an artifact with critical findings counts as vulnerable.
//!
//! The artifact count is exact: the repository list already carries each `artifact_count`.
//! Vulnerabilities are read for the [`ARTIFACTS_PER_REPOSITORY`] newest artifacts of each
//! repository, in the [`SCANNED_REPOSITORIES`] most recently updated repositories; when
//! there are more, the vulnerable count says it is a lower bound.
//! Item links use the UI's route, which wants the numeric project id.

use super::http::{Fetched, List, UpstreamClient};
use super::{PollRequest, ProviderError, Snapshot, Text, item};
use crate::api::toolbinding::{Capability, GapKind};
use serde::{Deserialize, Serialize};

/// Artifacts whose scan is read, per repository.
pub const ARTIFACTS_PER_REPOSITORY: usize = 10;
/// Repositories (most recently pushed first) whose artifacts are read, per project: a
/// project of thousands of repositories costs a bounded number of requests per poll.
pub const SCANNED_REPOSITORIES: usize = 50;

#[derive(Serialize, Deserialize)]
struct Repository {
    #[serde(default)]
    name: Text,
    #[serde(default)]
    project_id: Option<u64>,
    #[serde(default)]
    artifact_count: i64,
}

#[derive(Serialize, Deserialize)]
struct Artifact {
    #[serde(default)]
    digest: Text,
    #[serde(default)]
    tags: Option<List<Tag>>,
    #[serde(default)]
    push_time: Option<Text>,
    /// Keyed by report MIME type; the first report will do.
    #[serde(default, deserialize_with = "first_value")]
    scan_overview: Option<Overview>,
}

#[derive(Serialize, Deserialize)]
struct Tag {
    #[serde(default)]
    name: Text,
}

#[derive(Serialize, Deserialize)]
struct Overview {
    #[serde(default)]
    severity: Option<Text>,
    #[serde(default)]
    summary: Option<Summary>,
}

#[derive(Serialize, Deserialize)]
struct Summary {
    #[serde(default)]
    summary: Option<Severities>,
}

#[derive(Serialize, Deserialize)]
struct Severities {
    #[serde(default, rename = "Critical")]
    critical: i64,
}

/// The first value of a JSON object (or the value itself, as the cache stores it), skipping
/// the rest unread.
fn first_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Overview>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Overview>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a scan overview")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut first: Option<Overview> = None;
            let mut fields = Overview { severity: None, summary: None };
            let mut direct = false;
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    // The cached form: the overview itself.
                    "severity" => {
                        direct = true;
                        fields.severity = map.next_value()?;
                    }
                    "summary" => {
                        direct = true;
                        fields.summary = map.next_value()?;
                    }
                    _ if first.is_none() && !direct => first = Some(map.next_value()?),
                    _ => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            Ok(if direct { Some(fields) } else { first })
        }
    }
    d.deserialize_option(Visitor)
}

impl Artifact {
    fn critical(&self) -> i64 {
        self.scan_overview.as_ref().and_then(|o| o.summary.as_ref()).and_then(|s| s.summary.as_ref()).map_or(0, |s| s.critical)
    }
    fn severity(&self) -> Option<&str> {
        self.scan_overview.as_ref().and_then(|o| o.severity.as_deref())
    }
}

/// One path segment, percent-encoded (a '/' inside becomes %2F).
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

pub async fn poll(client: &UpstreamClient, request: &PollRequest<'_>) -> Result<Snapshot, ProviderError> {
    let spec = request.spec.harbor.as_ref().ok_or_else(|| ProviderError::Config("spec.harbor is missing".into()))?;
    let base = request.endpoint.as_str().trim_end_matches('/');
    let mut snapshot = Snapshot::default();
    let get = |url: String| -> Result<_, ProviderError> {
        let url = url::Url::parse(&url).map_err(|_| ProviderError::Config("cannot build a Harbor URL".into()))?;
        Ok(request.upstream(url, &[]))
    };
    let per_repository = ARTIFACTS_PER_REPOSITORY.to_string();
    for project in &spec.projects {
        let pages = client
            .get_pages(
                get(format!("{base}/api/v2.0/projects/{}/repositories?page_size=100&sort=-update_time", segment(project)))?,
                |_: &[Fetched<List<Repository>>]| false,
            )
            .await?;
        for (index, repository) in pages.into_iter().flat_map(|p| p.body.0).enumerate() {
            let full = repository.name.as_str();
            let short = full.strip_prefix(&format!("{project}/")).unwrap_or(full);
            snapshot.summary.artifacts += repository.artifact_count;
            if repository.artifact_count > ARTIFACTS_PER_REPOSITORY as i64 {
                snapshot.gap(
                    Capability::Artifacts,
                    GapKind::Estimated,
                    format!("vulnerabilities are read for the {ARTIFACTS_PER_REPOSITORY} newest artifacts of each repository: the vulnerable count is a lower bound"),
                );
            }
            if repository.artifact_count == 0 {
                continue;
            }
            if index >= SCANNED_REPOSITORIES {
                snapshot.gap(
                    Capability::Artifacts,
                    GapKind::Estimated,
                    format!("vulnerabilities are read in the {SCANNED_REPOSITORIES} most recently updated repositories of each project: the vulnerable count is a lower bound"),
                );
                continue;
            }
            // The API wants a "/" inside a repository name encoded twice.
            let encoded = short.replace('/', "%252F");
            let artifacts: Fetched<List<Artifact>> = client
                .get(&get(format!(
                    "{base}/api/v2.0/projects/{}/repositories/{encoded}/artifacts?with_scan_overview=true&page_size={per_repository}&sort=-push_time",
                    segment(project)
                ))?)
                .await?;
            // The UI route: /harbor/projects/<numeric id>/repositories/<name, encoded once>/…
            let ui_project = repository.project_id.map(|id| id.to_string()).unwrap_or_else(|| segment(project));
            for artifact in artifacts.body.0 {
                let critical = artifact.critical();
                let severity = artifact.severity();
                if critical > 0 || severity == Some("Critical") {
                    snapshot.summary.vulnerable_artifacts += 1;
                }
                let digest = artifact.digest.as_str();
                let tag = artifact.tags.as_ref().and_then(|t| t.0.first()).map(|t| t.name.as_str());
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
                    &format!("{base}/harbor/projects/{ui_project}/repositories/{}/artifacts-tab/artifacts/{digest}", segment(short)),
                    Some(&state),
                    None,
                    artifact.push_time.as_deref(),
                ));
            }
        }
    }
    Ok(snapshot)
}
