//! `Workspace`: one tenant's portal.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A team's developer portal: the operator runs a portal Deployment for it and rolls up the
/// state of every ToolBinding that references it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "hyperpage.dev",
    version = "v1alpha1",
    kind = "Workspace",
    plural = "workspaces",
    shortname = "hpws",
    category = "hyperpage",
    namespaced,
    status = "WorkspaceStatus",
    validation = Rule::new("self.metadata.name.size() <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter, use lowercase letters, digits and '-', and be at most 50 characters: it names the portal's Service"),
    doc = "A team's developer portal. The operator runs a portal for it and rolls up the state of the ToolBindings that reference it.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.tools.total", description = "ToolBindings that reference this workspace"),
    printcolumn(name = "PRs", type_ = "integer", json_path = ".status.summary.openPullRequests"),
    printcolumn(name = "Failing", type_ = "integer", json_path = ".status.summary.failingPipelines"),
    printcolumn(name = "Issues", type_ = "integer", json_path = ".status.summary.openIssues"),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.summary.lastSyncTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Human-readable name shown in the portal header. Defaults to the Workspace's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// Stop polling every tool of this workspace and scale the portal to zero replicas.
    /// Status and cached results are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Default polling interval for this workspace's ToolBindings (a binding's own
    /// refreshInterval wins), e.g. 30s, 5m, 1h. Between 30s and 24h; 5m when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(super::duration::DURATION_RULE).message(super::duration::DURATION_MESSAGE))]
    pub refresh_interval: Option<String>,

    /// How the portal runs and is exposed.
    #[serde(default)]
    pub portal: PortalSpec,

    /// Messages to the team's channels when a pipeline turns red or green, a tool degrades or
    /// recovers, its credentials are rejected or its quota runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationsSpec>,
}

/// Where transitions are announced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsSpec {
    /// The channels (1 to 10), each named uniquely.
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("each sink needs a name of its own"))]
    pub sinks: Vec<SinkSpec>,
}

/// One channel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.chatId) == (self.type == 'telegram')").message("chatId is required for telegram sinks and not allowed for the others"))]
pub struct SinkSpec {
    /// A name for the sink, used in status, Events and metrics.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("must be lowercase letters, digits and '-'"))]
    pub name: String,

    /// slack (incoming webhook), teams (workflow webhook), telegram (Bot API sendMessage) or
    /// webhook (a JSON POST to a URL of yours).
    #[serde(rename = "type")]
    pub type_: SinkType,

    /// The Secret (in this namespace, labelled hyperpage.dev/credential=true) and key holding
    /// the webhook URL (slack, teams, webhook) or the bot token (telegram). Its
    /// hyperpage.dev/endpoints annotation must allow the URL, except for Slack's
    /// https://hooks.slack.com and Telegram's https://api.telegram.org.
    pub secret_ref: super::toolbinding::SecretKeyRef,

    /// Telegram only: the chat to post to (a numeric ID such as -1001234567890, or @channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^(-?[0-9]+|@[A-Za-z0-9_]{5,32})$')").message("must be a numeric chat ID such as -1001234567890 or a @channelname"))]
    pub chat_id: Option<String>,

    /// Telegram only: the Bot API server; https://api.telegram.org when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && !self.contains('?') && !self.contains('#') && !self.matches('^[a-zA-Z]+://[^/]*@')").message("must be an http or https URL without user, query or fragment, such as https://api.telegram.org"))]
    pub api_url: Option<String>,

    /// Which transitions to send; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6))]
    pub events: Vec<NotificationEvent>,

    /// At most this many messages per minute to this sink (1 to 60, default 20); the rest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub max_per_minute: Option<i32>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Slack,
    Teams,
    Telegram,
    Webhook,
}

/// A transition a sink may be told about.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotificationEvent {
    PipelineFailed,
    PipelineRecovered,
    BindingDegraded,
    BindingRecovered,
    CredentialsRejected,
    QuotaExhausted,
}

impl NotificationEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::PipelineFailed => "PipelineFailed",
            NotificationEvent::PipelineRecovered => "PipelineRecovered",
            NotificationEvent::BindingDegraded => "BindingDegraded",
            NotificationEvent::BindingRecovered => "BindingRecovered",
            NotificationEvent::CredentialsRejected => "CredentialsRejected",
            NotificationEvent::QuotaExhausted => "QuotaExhausted",
        }
    }
}

/// The portal Deployment and how it is reached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortalSpec {
    /// Number of portal pods. 0 stops the portal without suspending polling. A
    /// PodDisruptionBudget is created when this is greater than 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,

    /// Portal container image. Defaults to the operator's own image, which runs
    /// `hyperpage portal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("must be an image reference without spaces, such as ghcr.io/acme/portal:1.2.3"))]
    pub image: Option<String>,

    /// CPU and memory for the portal container. Defaults to requests of 10m CPU and 32Mi
    /// memory and a 128Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The Service in front of the portal.
    #[serde(default)]
    pub service: PortalServiceSpec,

    /// Expose the portal through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Run a portal image of your own and put `hyperpage portal --api-only` beside it: your
    /// container serves the page on `port` and reads the data from the JSON API on
    /// http://localhost:8080/api/v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,

    /// Who may open the portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<PortalAccessSpec>,
}

impl PortalSpec {
    /// The access mode the spec asks for (`kubernetes` when unset). The operator's policy
    /// decides whether it is granted; the portal is told the effective mode, never this.
    pub fn requested_access_mode(&self) -> AccessMode {
        self.access.as_ref().map(|a| a.mode).unwrap_or_default()
    }
}

/// Who may open the portal.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortalAccessSpec {
    /// `kubernetes` (default): a signed-in user or a bearer token, allowed only when
    /// Kubernetes RBAC lets that identity `get` this Workspace. `public`: anyone who can
    /// reach the portal; accepted only when the operator's policy allows public portals
    /// (`policy.allowPublicPortals`), otherwise the Workspace reports PolicyViolation.
    #[serde(default)]
    pub mode: AccessMode,
}

/// How the portal decides who may see it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum AccessMode {
    #[default]
    Kubernetes,
    Public,
}

impl AccessMode {
    /// The value of the portal's `--access-mode` / `HYPERPAGE_ACCESS_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::Kubernetes => "kubernetes",
            AccessMode::Public => "public",
        }
    }
}

impl std::str::FromStr for AccessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kubernetes" => Ok(Self::Kubernetes),
            "public" => Ok(Self::Public),
            other => Err(format!("unknown access mode {other:?}: expected kubernetes or public")),
        }
    }
}

impl std::fmt::Display for AccessMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_replicas() -> i32 {
    1
}

impl Default for PortalSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
            service: PortalServiceSpec::default(),
            ingress: None,
            sidecar: None,
            access: None,
        }
    }
}

/// Service type of the portal Service.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The portal Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortalServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on (default 80).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_service_port() -> i32 {
    80
}

impl Default for PortalServiceSpec {
    fn default() -> Self {
        Self { type_: ServiceType::default(), port: default_service_port() }
    }
}

/// An Ingress for the portal.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name the portal is served on, e.g. portal.team-a.example.com.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a DNS host name such as portal.team-a.example.com (lowercase letters, digits, '-' and '.')"))]
    pub host: String,

    /// IngressClass to use; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Name of a kubernetes.io/tls Secret in this namespace holding the certificate for
    /// `host`. Plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(super::DNS1123_SUBDOMAIN_RULE).message("must be the name of a Secret: lowercase letters, digits, '-' and '.'"))]
    pub tls_secret_name: Option<String>,
}

/// A user-supplied portal image run beside `hyperpage portal --api-only`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of your portal container.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("must be an image reference without spaces, such as ghcr.io/acme/portal:1.2.3"))]
    pub image: String,

    /// Port your container serves HTTP on; the Service sends traffic there.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 8080").message("8080 is taken by the hyperpage API container beside yours; choose another port"))]
    pub port: i32,
}

/// What the operator observed, written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the portal serves), Progressing (a rollout is under way), Degraded (the portal
    /// cannot roll out, or tools are failing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Where the portal is and how many of its pods are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalStatus>,

    /// ToolBindings that reference this workspace, by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolCounts>,

    /// Roll-up across all of this workspace's ToolBindings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<WorkspaceSummary>,

    /// What the notifier announced (written by it alone, under its own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationsStatus>,
}

/// The notifier's record: which conditions are announced, so that a new leader sends none of
/// them again, and whether deliveries succeed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsStatus {
    /// Keys of the announced red states (pipeline/<binding>/<id>, degraded/<binding>,
    /// credentials/<binding>, quota/<binding>); at most 200.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced: Vec<String>,
    /// Delivered: True while every sink takes its messages; False with reason DeliveryFailed
    /// naming the sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortalStatus {
    /// In-cluster URL of the portal Service, or the Ingress URL when one is configured.
    pub url: String,
    /// Desired portal pods.
    pub replicas: i32,
    /// Portal pods that pass their readiness probe.
    pub ready_replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolCounts {
    /// ToolBindings that reference this workspace.
    pub total: i32,
    /// Of those, how many are Ready.
    pub ready: i32,
    /// Of those, how many are not Ready.
    pub failing: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSummary {
    /// Open pull and merge requests across all tools.
    pub open_pull_requests: i64,
    /// Pipelines whose latest run failed, across all tools.
    pub failing_pipelines: i64,
    /// Open issues and tickets across all tools.
    pub open_issues: i64,
    /// The most recent successful sync of any of this workspace's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}
