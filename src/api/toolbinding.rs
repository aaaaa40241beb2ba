//! `ToolBinding`: one external tool wired to one Workspace.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One external tool (GitHub, GitLab, Jira, Jenkins, Harbor) wired to a Workspace in the same
/// namespace, with the Secret that holds its token.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hyperpage.dev",
    version = "v1alpha1",
    kind = "ToolBinding",
    plural = "toolbindings",
    shortname = "hptb",
    category = "hyperpage",
    namespaced,
    status = "ToolBindingStatus",
    doc = "One external tool wired to a Workspace in the same namespace. The operator polls it within its rate limits and publishes the results in status.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspaceRef.name"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(
        name = "Remaining",
        type_ = "integer",
        json_path = ".status.rateLimit.remaining",
        description = "Requests left in the current rate-limit window"
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.github) == (self.provider == 'github')").message("spec.github is required when provider is github, and not allowed for other providers: set exactly the one provider block that matches spec.provider"))]
#[x_kube(validation = Rule::new("has(self.gitlab) == (self.provider == 'gitlab')").message("spec.gitlab is required when provider is gitlab, and not allowed for other providers: set exactly the one provider block that matches spec.provider"))]
#[x_kube(validation = Rule::new("has(self.jira) == (self.provider == 'jira')").message("spec.jira is required when provider is jira, and not allowed for other providers: set exactly the one provider block that matches spec.provider"))]
#[x_kube(validation = Rule::new("has(self.jenkins) == (self.provider == 'jenkins')").message("spec.jenkins is required when provider is jenkins, and not allowed for other providers: set exactly the one provider block that matches spec.provider"))]
#[x_kube(validation = Rule::new("has(self.harbor) == (self.provider == 'harbor')").message("spec.harbor is required when provider is harbor, and not allowed for other providers: set exactly the one provider block that matches spec.provider"))]
#[x_kube(validation = Rule::new("has(self.endpoint) || self.provider in ['github', 'gitlab']").message("spec.endpoint is required for jira, jenkins and harbor: they have no public default address"))]
#[x_kube(validation = Rule::new("!has(self.webhook) || self.webhook.secretRef.name != self.credentialsSecretRef.name || self.webhook.secretRef.key != self.credentialsSecretRef.key").message("spec.webhook.secretRef must not be the API token (credentialsSecretRef): the webhook's shared secret is pasted into the tool's webhook settings, so give it its own key"))]
#[serde(rename_all = "camelCase")]
pub struct ToolBindingSpec {
    /// The Workspace (in this namespace) whose portal shows this tool.
    pub workspace_ref: WorkspaceRef,

    /// Which tool this is: github, gitlab, jira, jenkins or harbor. Exactly the matching
    /// provider block must be set.
    pub provider: Provider,

    /// Base URL of the tool's API. Defaults to https://api.github.com for github and
    /// https://gitlab.com for gitlab; required for the others. Self-hosted instances are fine.
    /// No user name, password, query or fragment. The credential's Secret must allow it (its
    /// hyperpage.dev/endpoints annotation; without one only the public default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("must be an absolute http or https URL such as https://gitlab.example.com"))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z]+://[^/]*@')").message("must not contain credentials or a user name (user@ or user:password@): put the token in the Secret named by credentialsSecretRef"))]
    #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#')").message("must not contain a query (?) or fragment (#): the operator appends the API paths to the endpoint, so give only scheme, host, port and base path"))]
    pub endpoint: Option<String>,

    /// The Secret (in this namespace) and the key in it that hold the API token.
    pub credentials_secret_ref: SecretKeyRef,

    /// GitHub settings; required when provider is github.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubSpec>,

    /// GitLab settings; required when provider is gitlab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<GitlabSpec>,

    /// Jira settings; required when provider is jira.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jira: Option<JiraSpec>,

    /// Jenkins settings; required when provider is jenkins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jenkins: Option<JenkinsSpec>,

    /// Harbor settings; required when provider is harbor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harbor: Option<HarborSpec>,

    /// How often to poll this tool, e.g. 30s, 5m, 1h (between 30s and 24h). Defaults to the
    /// Workspace's refreshInterval, then 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::duration::DURATION_RULE).message(super::duration::DURATION_MESSAGE))]
    pub refresh_interval: Option<String>,

    /// Limits on how much of the token's API quota this binding may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,

    /// Push-triggered polls: the tool calls the operator's webhook receiver when something
    /// changes, and the binding is polled at once instead of at its next interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// The annotation the webhook receiver writes (an RFC 3339 time) to ask for a poll now, the
/// way Flux's receiver asks for a reconcile. Anyone who may patch the binding may write it too.
pub const REQUESTED_AT_ANNOTATION: &str = "hyperpage.dev/requested-at";

/// How a tool's webhook proves it comes from the tool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// The Secret (in this namespace, labelled hyperpage.dev/credential=true) and the key
    /// holding the webhook's shared secret: GitHub's and Jira's webhook secret, GitLab's secret
    /// token, Harbor's auth header, or the HMAC key Jenkins signs with. It also keys the
    /// receiver's path for this binding (see the README).
    pub secret_ref: SecretKeyRef,
}

/// The supported tools.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Gitlab,
    Jira,
    Jenkins,
    Harbor,
}

impl ToolBinding {
    /// The Workspace this binding belongs to, as (namespace, name): the one its
    /// `spec.workspaceRef` names in the binding's own namespace (never another namespace's).
    pub fn workspace(&self) -> Option<(&str, &str)> {
        Some((self.metadata.namespace.as_deref()?, self.spec.workspace_ref.name.as_str()))
    }

    /// Whether this binding belongs to Workspace `namespace/workspace` (see [`ToolBinding::workspace`]).
    pub fn belongs_to(&self, namespace: &str, workspace: &str) -> bool {
        self.workspace() == Some((namespace, workspace))
    }
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Jira => "jira",
            Provider::Jenkins => "jenkins",
            Provider::Harbor => "harbor",
        }
    }
}

/// A Workspace in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceRef {
    /// Name of the Workspace.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = Rule::new(super::WORKSPACE_NAME_RULE).message(super::WORKSPACE_NAME_MESSAGE))]
    pub name: String,
}

/// A key in a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Name of the Secret. It must be in the ToolBinding's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::DNS1123_SUBDOMAIN_RULE).message("must be the name of a Secret in this namespace: lowercase letters, digits, '-' and '.'"))]
    pub name: String,

    /// Key in the Secret's data that holds the token.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("must be a Secret data key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

/// GitHub repositories to follow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GithubSpec {
    /// Repositories as owner/name, e.g. acme/payments-api (1 to 50).
    #[schemars(length(min = 1, max = 50), inner(length(min = 3, max = 140)))]
    #[x_kube(validation = Rule::new("self.all(r, r.matches('^[A-Za-z0-9][-A-Za-z0-9]*/[-._A-Za-z0-9]+$'))").message("each repository must be written owner/name, e.g. acme/payments-api"))]
    pub repositories: Vec<String>,
}

/// GitLab projects to follow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GitlabSpec {
    /// Projects by full path (group/subgroup/project) or numeric ID (1 to 50).
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^([0-9]+|[-._A-Za-z0-9]+(/[-._A-Za-z0-9]+)+)$'))").message("each project must be a full path such as platform/payments-api or a numeric project ID"))]
    pub projects: Vec<String>,
}

/// The Jira query to follow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JiraSpec {
    /// JQL selecting the tickets to show, e.g. `project = PAY AND statusCategory != Done`.
    #[schemars(length(min = 1, max = 2000))]
    pub jql: String,
    /// `cloud` (Atlassian's REST v3 enhanced search), `dataCenter` (Server/Data Center REST
    /// v2), or `auto` (the default): Cloud for `*.atlassian.net` and
    /// `api.atlassian.com/ex/jira/{cloudId}`, Data Center otherwise.
    #[serde(default)]
    pub deployment: JiraDeployment,
}

/// Which Jira the endpoint is.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum JiraDeployment {
    #[default]
    Auto,
    Cloud,
    DataCenter,
}

/// Jenkins jobs to follow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JenkinsSpec {
    /// Job names, with folders separated by '/', e.g. payments/build-main (1 to 50).
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new("self.all(j, !j.startsWith('/') && !j.endsWith('/') && !j.contains('//'))").message("each job must be a name or a folder path such as payments/build-main, without leading, trailing or double '/'"))]
    pub jobs: Vec<String>,
}

/// Harbor projects to follow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HarborSpec {
    /// Project names (1 to 50).
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9]+(?:[._-][a-z0-9]+)*$'))").message("each project must be a Harbor project name: lowercase letters, digits and '.', '_', '-' between them"))]
    pub projects: Vec<String>,
}

/// How much of the token's quota this binding may spend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Upper bound on requests per minute this binding sends, whatever the upstream allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_requests_per_minute: Option<i32>,

    /// Reserve: when the upstream reports this many requests or fewer remaining, stop and
    /// wait for the window to reset, leaving the rest of the quota to people and CI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub min_remaining: Option<i32>,
}

/// What the operator observed, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolBindingStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, CredentialsValid, Synced, RateLimited and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// When the operator last tried to sync this tool, as of the last status write. A poll
    /// that finds nothing new writes no status: this time then moves only every 6 refresh
    /// intervals (so it is at most that old while the binding is polled); any change of data
    /// or conditions writes it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// When a sync last succeeded; the data below is from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_sync_time: Option<Time>,

    /// The upstream's rate-limit window for this binding's token, as of the last status
    /// write. Other bindings of the same token move `remaining` between two polls, so a
    /// change of `remaining` or `resetAt` alone writes no status; crossing the reserve does
    /// (the `RateLimited` condition). The live figure is the metric
    /// `hyperpage_ratelimit_remaining`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitStatus>,

    /// Counts per capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ToolSummary>,

    /// The newest entries per capability (at most 20 each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ToolItems>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// Requests allowed per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Requests left in the current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// When the window resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolSummary {
    /// Open pull/merge requests.
    #[serde(default)]
    pub code_reviews: i64,
    /// Pipelines (workflows, jobs) followed.
    #[serde(default)]
    pub pipelines: i64,
    /// Of those, how many failed their latest run.
    #[serde(default)]
    pub failing_pipelines: i64,
    /// Open issues and tickets.
    #[serde(default)]
    pub tickets: i64,
    /// Container artifacts.
    #[serde(default)]
    pub artifacts: i64,
    /// Of those, how many have critical vulnerabilities.
    #[serde(default)]
    pub vulnerable_artifacts: i64,
    /// Counts that are not exact: a capability the upstream does not offer for this
    /// binding (its count is "n/a"), or a total the upstream only estimates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<CountGap>,
}

/// A count in the summary that is not an exact number, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountGap {
    /// codeReviews, pipelines, tickets or artifacts.
    pub capability: Capability,
    /// Unavailable (the count means nothing: "n/a") or Estimated (approximate or a lower bound).
    pub kind: GapKind,
    /// What the upstream said, for a person.
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Capability {
    CodeReviews,
    Pipelines,
    Tickets,
    Artifacts,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GapKind {
    Unavailable,
    Estimated,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolItems {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_reviews: Vec<Item>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<Item>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tickets: Vec<Item>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Item>,
}

/// One pull request, pipeline, ticket or artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    /// The upstream's identifier (#123, PAY-42, build 17, a digest).
    pub id: String,
    /// Title as the upstream shows it (untrusted text).
    pub title: String,
    /// Link to the item's page upstream.
    pub url: String,
    /// open, merged, failed, success, running, To Do, critical …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Author or assignee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// When the item last changed upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
    /// A pipeline that counts as failing (the provider's rule, see the README).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failing: bool,
}
