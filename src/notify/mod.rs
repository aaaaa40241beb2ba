//! Notifications: a message in the team's channel when something turns red or green.
//!
//! The leader's notifier looks at each Workspace with `spec.notifications` once a second:
//! [`transitions`] (pure) compares the red states of its bindings (failing pipelines, degraded
//! bindings, rejected credentials, exhausted quotas) with the ones already announced, recorded
//! in `status.notifications.announced`. The new record is written *before* the messages go
//! out, under the notifier's own field manager, so a new leader (or a restarted one) never
//! sends a transition again; the price is that a leader dying between that write and the send
//! loses those messages (at most once, never twice). Each sink has one worker: messages are
//! sent in order, at most `maxPerMinute`, retried on 429 and 5xx as the service asks
//! ([`sink`]). A sink that fails sets `Delivered=False` in `status.notifications.conditions`
//! and a Warning Event on the Workspace.

pub mod sink;

use crate::api::conditions::{self, DesiredCondition};
use crate::api::toolbinding::Item;
use crate::api::workspace::{NotificationEvent, NotificationsStatus, SinkSpec, SinkType};
use crate::api::{ToolBinding, Workspace};
use crate::providers::credential::{self, LABEL};
use crate::providers::safety::{EndpointPolicy, PolicyResolver};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The field manager of `status.notifications`.
pub const FIELD_MANAGER: &str = "hyperpage-notify";
/// The condition in `status.notifications.conditions`.
pub const DELIVERED: &str = "Delivered";
/// Announced states kept in status, at most.
pub const MAX_ANNOUNCED: usize = 200;
/// Messages waiting per sink, at most; more are dropped (and the sink reported failing).
const QUEUE: usize = 100;
const DEFAULT_PER_MINUTE: i32 = 20;

/// One message: what happened, where, with the link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub event: NotificationEvent,
    pub namespace: String,
    pub workspace: String,
    pub binding: String,
    pub provider: String,
    /// The pipeline (its id and title), when the transition is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The condition's message (binding transitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Message {
    pub fn text(&self) -> String {
        let what = match self.event {
            NotificationEvent::PipelineFailed => "pipeline failed",
            NotificationEvent::PipelineRecovered => "pipeline recovered",
            NotificationEvent::BindingDegraded => "tool degraded",
            NotificationEvent::BindingRecovered => "tool recovered",
            NotificationEvent::CredentialsRejected => "credentials rejected",
            NotificationEvent::QuotaExhausted => "API quota exhausted",
        };
        let mut text = format!("[{}/{}] {what}: {} ({})", self.namespace, self.workspace, self.binding, self.provider);
        if let Some(item) = &self.item {
            text += &format!(" — {item}");
        }
        if let Some(detail) = &self.detail {
            text += &format!(" — {}", detail.chars().take(300).collect::<String>());
        }
        if let Some(link) = &self.link {
            text += &format!("\n{link}");
        }
        text
    }
}

fn condition<'a>(binding: &'a ToolBinding, type_: &str) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    binding.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_))
}

fn pipelines(binding: &ToolBinding) -> &[Item] {
    binding.status.as_ref().and_then(|s| s.items.as_ref()).map(|i| i.pipelines.as_slice()).unwrap_or_default()
}

/// A message about `binding` (and the pipeline `item`, with its link).
fn message(workspace: &Workspace, binding: &ToolBinding, event: NotificationEvent, item: Option<&Item>, detail: Option<String>) -> Message {
    Message {
        event,
        namespace: workspace.namespace().unwrap_or_default(),
        workspace: workspace.name_any(),
        binding: binding.name_any(),
        provider: binding.spec.provider.as_str().into(),
        item: item.map(|i| format!("{} {}", i.id, i.title)),
        link: item.map(|i| i.url.clone()),
        detail,
    }
}

/// The red states of a Workspace's bindings (pure): key -> the message announcing it.
fn red_states(workspace: &Workspace, bindings: &[Arc<ToolBinding>]) -> BTreeMap<String, Message> {
    let mut red = BTreeMap::new();
    for binding in bindings {
        let name = binding.name_any();
        let message = |event, item: Option<&Item>, detail: Option<String>| message(workspace, binding, event, item, detail);
        for item in pipelines(binding).iter().filter(|p| p.failing) {
            red.insert(format!("pipeline/{name}/{}", item.id), message(NotificationEvent::PipelineFailed, Some(item), None));
        }
        if let Some(c) = condition(binding, conditions::DEGRADED).filter(|c| c.status == "True") {
            red.insert(format!("degraded/{name}"), message(NotificationEvent::BindingDegraded, None, Some(c.message.clone())));
        }
        if let Some(c) =
            condition(binding, conditions::CREDENTIALS_VALID).filter(|c| c.status == "False" && c.reason == crate::engine::status::REJECTED)
        {
            red.insert(format!("credentials/{name}"), message(NotificationEvent::CredentialsRejected, None, Some(c.message.clone())));
        }
        if let Some(c) = condition(binding, conditions::RATE_LIMITED).filter(|c| c.status == "True") {
            red.insert(format!("quota/{name}"), message(NotificationEvent::QuotaExhausted, None, Some(c.message.clone())));
        }
    }
    red
}

/// Transitions (pure): the messages to send, and the new set of announced red states.
/// A red state not announced yet is announced; an announced one that is gone is "recovered"
/// when there is evidence of green (the pipeline is listed and passing, the binding is not
/// degraded); rejected credentials and an exhausted quota clear silently.
pub fn transitions(workspace: &Workspace, bindings: &[Arc<ToolBinding>], announced: &BTreeSet<String>) -> (Vec<Message>, BTreeSet<String>) {
    let red = red_states(workspace, bindings);
    let mut messages: Vec<Message> = red.iter().filter(|(key, _)| !announced.contains(*key)).map(|(_, m)| m.clone()).collect();
    for key in announced.iter().filter(|k| !red.contains_key(*k)) {
        let mut parts = key.splitn(3, '/');
        let (kind, name, id) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
        let Some(binding) = bindings.iter().find(|b| b.name_any() == name) else { continue };
        let recovered = |event, item: Option<&Item>| message(workspace, binding, event, item, None);
        match (kind, id) {
            ("pipeline", Some(id)) => {
                if let Some(item) = pipelines(binding).iter().find(|p| p.id == id && !p.failing) {
                    messages.push(recovered(NotificationEvent::PipelineRecovered, Some(item)));
                }
            }
            ("degraded", None) if condition(binding, conditions::DEGRADED).is_some_and(|c| c.status == "False") => {
                messages.push(recovered(NotificationEvent::BindingRecovered, None));
            }
            _ => {}
        }
    }
    let announced = red.into_keys().take(MAX_ANNOUNCED).collect();
    (messages, announced)
}

/// Whether a sink wants an event (all when its list is empty).
fn wants(sink: &SinkSpec, event: NotificationEvent) -> bool {
    sink.events.is_empty() || sink.events.contains(&event)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub sink_type: &'static str,
    /// delivered, retried, failed, dropped.
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct NotifyMetrics {
    pub deliveries: Family<DeliveryLabels, Counter>,
}

impl NotifyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "notifications",
            "Notification attempts by sink type and result (delivered, retried, failed, dropped)",
            metrics.deliveries.clone(),
        );
        metrics
    }
}

fn sink_type(kind: SinkType) -> &'static str {
    match kind {
        SinkType::Slack => "slack",
        SinkType::Teams => "teams",
        SinkType::Telegram => "telegram",
        SinkType::Webhook => "webhook",
    }
}

/// The public host each sink type may use without the Secret naming it.
fn default_prefix(kind: SinkType) -> Option<&'static str> {
    match kind {
        SinkType::Slack => Some("https://hooks.slack.com"),
        SinkType::Telegram => Some("https://api.telegram.org"),
        SinkType::Teams | SinkType::Webhook => None,
    }
}

/// The URL a message goes to (pure): the Secret's value for URL sinks, the Bot API method for
/// Telegram; then the Secret's `hyperpage.dev/endpoints` pinning, as for tool credentials.
fn target(sink: &SinkSpec, value: &str, annotations: &BTreeMap<String, String>) -> Result<url::Url, String> {
    let (url, pinned) = match sink.type_ {
        SinkType::Telegram => {
            let base = sink.api_url.as_deref().unwrap_or("https://api.telegram.org");
            let base = url::Url::parse(base).map_err(|_| "apiUrl is not a URL".to_string())?;
            if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '_' || c == '-') {
                return Err("the bot token has characters a Telegram token does not have".into());
            }
            // set_path, not join: a token holds ':' and would read as a URL scheme.
            let mut url = base.clone();
            url.set_path(&format!("{}/bot{value}/sendMessage", base.path().trim_end_matches('/')));
            (url, base)
        }
        _ => {
            let url = url::Url::parse(value).map_err(|_| "the Secret's value is not a URL".to_string())?;
            (url.clone(), url)
        }
    };
    let allowed = match annotations.get(credential::ENDPOINTS_ANNOTATION) {
        Some(list) => list.split(',').filter_map(|p| url::Url::parse(p.trim()).ok()).any(|prefix| credential::covers(&prefix, &pinned)),
        None => default_prefix(sink.type_).and_then(|d| url::Url::parse(d).ok()).is_some_and(|d| credential::covers(&d, &pinned)),
    };
    if allowed {
        Ok(url)
    } else {
        Err(format!(
            "the Secret does not allow this destination: list its origin in the Secret's {} annotation",
            credential::ENDPOINTS_ANNOTATION
        ))
    }
}

/// What a sink worker needs.
struct Worker {
    client: Client,
    http: reqwest::Client,
    policy: EndpointPolicy,
    namespace: String,
    sink: SinkSpec,
    metrics: NotifyMetrics,
    health: Health,
}

/// Per Workspace and sink: the last delivery failure, `None` once a delivery succeeds.
type Health = Arc<Mutex<HashMap<(ObjectRef<Workspace>, String), Option<String>>>>;

impl Worker {
    async fn run(self, workspace: ObjectRef<Workspace>, mut rx: mpsc::Receiver<Message>) {
        let per_minute = self.sink.max_per_minute.unwrap_or(DEFAULT_PER_MINUTE).clamp(1, 60);
        let spacing = Duration::from_secs(60) / per_minute as u32;
        let mut last: Option<tokio::time::Instant> = None;
        while let Some(message) = rx.recv().await {
            if let Some(last) = last {
                tokio::time::sleep_until(last + spacing).await;
            }
            last = Some(tokio::time::Instant::now());
            let result = self.deliver(&message).await;
            let kind = sink_type(self.sink.type_);
            let result_label = if result.is_ok() { "delivered" } else { "failed" };
            self.metrics.deliveries.get_or_create(&DeliveryLabels { sink_type: kind, result: result_label }).inc();
            if let Err(error) = &result {
                tracing::warn!(workspace = %workspace, sink = %self.sink.name, %error, "failed to deliver a notification");
            }
            self.health.lock().expect("health lock").insert((workspace.clone(), self.sink.name.clone()), result.err());
        }
    }

    async fn deliver(&self, message: &Message) -> Result<(), String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = ListParams::default().labels(&format!("{LABEL}=true")).fields(&format!("metadata.name={}", self.sink.secret_ref.name));
        let secret_name = &self.sink.secret_ref.name;
        let not_usable = || {
            format!("Secret {secret_name:?} is missing, not labelled {LABEL}=true, or has no value under {:?}", self.sink.secret_ref.key)
        };
        let list = tokio::time::timeout(credential::READ_TIMEOUT, secrets.list(&params))
            .await
            .map_err(|_| format!("failed to read Secret {secret_name:?} in time"))?
            .map_err(|e| format!("failed to read Secret {secret_name:?}: {e}"))?;
        let secret = list.items.first().ok_or_else(not_usable)?;
        let value = secret.data.as_ref().and_then(|d| d.get(&self.sink.secret_ref.key)).ok_or_else(not_usable)?;
        let value = String::from_utf8_lossy(&value.0).trim().to_string();
        if value.is_empty() {
            return Err(not_usable());
        }
        let url = target(&self.sink, &value, secret.annotations())?;
        drop(value);
        self.policy.check(&url).await.map_err(|e| format!("the destination is refused: {e}"))?;
        let body = sink::payload(self.sink.type_, self.sink.chat_id.as_deref(), message);
        let kind = sink_type(self.sink.type_);
        for attempt in 0..sink::ATTEMPTS {
            let outcome = match self.http.post(url.clone()).json(&body).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
                    // Answers are small; a huge one is cut (and then unparseable: a failure).
                    let bytes = response.bytes().await.unwrap_or_default();
                    let bytes = &bytes[..bytes.len().min(64 * 1024)];
                    sink::classify(self.sink.type_, status, retry_after.as_deref(), bytes, attempt)
                }
                Err(error) => {
                    // Without the URL: reqwest's errors name it, and it is a secret.
                    tracing::debug!(sink = %self.sink.name, error = %error.without_url(), "notification attempt failed");
                    sink::Outcome::Retry(Duration::from_secs(1 << attempt.min(5)))
                }
            };
            match outcome {
                sink::Outcome::Delivered => return Ok(()),
                sink::Outcome::Failed(why) => return Err(format!("sink {:?} refused the message: {why}", self.sink.name)),
                sink::Outcome::Retry(wait) if wait <= sink::MAX_RETRY_AFTER && attempt + 1 < sink::ATTEMPTS => {
                    self.metrics.deliveries.get_or_create(&DeliveryLabels { sink_type: kind, result: "retried" }).inc();
                    tokio::time::sleep(wait).await;
                }
                sink::Outcome::Retry(_) => break,
            }
        }
        Err(format!("sink {:?} did not take the message after {} attempts", self.sink.name, sink::ATTEMPTS))
    }
}

/// What the notifier keeps per Workspace during a leadership term.
struct WorkspaceState {
    uid: Option<String>,
    /// The status last written (or read at the start of the term).
    written: NotificationsStatus,
    sinks: HashMap<String, (SinkSpec, mpsc::Sender<Message>)>,
}

/// Runs the notifier until dropped (the leader drops it with the controllers).
pub async fn run(
    client: Client,
    workspaces: Store<Workspace>,
    bindings: Store<ToolBinding>,
    policy: EndpointPolicy,
    metrics: NotifyMetrics,
) {
    let http = match reqwest::Client::builder()
        .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "failed to build the notification client; notifications are off");
            return std::future::pending().await;
        }
    };
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let health: Health = Arc::default();
    let mut states: HashMap<ObjectRef<Workspace>, WorkspaceState> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let all = workspaces.state();
        states.retain(|key, _| all.iter().any(|w| ObjectRef::from_obj(w.as_ref()) == *key && w.spec.notifications.is_some()));
        for ws in all.iter().filter(|w| w.spec.notifications.is_some()) {
            let key = ObjectRef::from_obj(ws.as_ref());
            let namespace = ws.namespace().unwrap_or_default();
            let state = states.entry(key.clone()).or_insert_with(|| WorkspaceState {
                uid: ws.metadata.uid.clone(),
                written: ws.status.as_ref().and_then(|s| s.notifications.clone()).unwrap_or_default(),
                sinks: HashMap::new(),
            });
            if state.uid != ws.metadata.uid {
                // Re-created under the same name: its own (empty) record counts.
                *state = WorkspaceState { uid: ws.metadata.uid.clone(), written: NotificationsStatus::default(), sinks: HashMap::new() };
            }
            let sinks = ws.spec.notifications.as_ref().map(|n| n.sinks.clone()).unwrap_or_default();
            state.sinks.retain(|name, (spec, _)| sinks.iter().any(|s| s.name == *name && s == spec));
            for sink in &sinks {
                state.sinks.entry(sink.name.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    let worker = Worker {
                        client: client.clone(),
                        http: http.clone(),
                        policy: policy.clone(),
                        namespace: namespace.clone(),
                        sink: sink.clone(),
                        metrics: metrics.clone(),
                        health: health.clone(),
                    };
                    tokio::spawn(worker.run(key.clone(), rx));
                    (sink.clone(), tx)
                });
            }
            let mine: Vec<Arc<ToolBinding>> = bindings.state().into_iter().filter(|b| b.belongs_to(&namespace, &ws.name_any())).collect();
            let announced: BTreeSet<String> = state.written.announced.iter().cloned().collect();
            let (messages, announced) = transitions(ws, &mine, &announced);
            let failures: Vec<String> = {
                let health = health.lock().expect("health lock");
                sinks.iter().filter_map(|s| health.get(&(key.clone(), s.name.clone())).cloned().flatten()).collect()
            };
            let delivered = match failures.first() {
                None => DesiredCondition::new(DELIVERED, true, "Delivered", "every sink took its messages"),
                Some(first) => DesiredCondition::new(DELIVERED, false, "DeliveryFailed", first.clone()),
            };
            let now = Time(jiff::Timestamp::now());
            let desired = NotificationsStatus {
                announced: announced.into_iter().collect(),
                conditions: conditions::merge(&state.written.conditions, &[delivered], ws.metadata.generation, &now),
            };
            if desired != state.written {
                let api: Api<Workspace> = Api::namespaced(client.clone(), &namespace);
                let body = serde_json::json!({
                    "apiVersion": Workspace::api_version(&()),
                    "kind": "Workspace",
                    "status": {"notifications": &desired},
                });
                if let Err(error) = api.patch_status(&ws.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await
                {
                    // Nothing is sent before the record is written: next second, again.
                    tracing::warn!(%error, workspace = %key, "failed to record notifications; sending nothing yet");
                    continue;
                }
                let was_failing = conditions::find(&state.written.conditions, DELIVERED).is_some_and(|c| c.status == "False");
                let now_failing = failures.first();
                if let (Some(why), false) = (now_failing, was_failing) {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: "NotificationFailed".into(),
                        note: Some(why.chars().take(1000).collect()),
                        action: "Notify".into(),
                        secondary: None,
                    };
                    if let Err(error) = Recorder::new(client.clone(), reporter.clone()).publish(&event, &ws.object_ref(&())).await {
                        tracing::warn!(%error, "failed to publish event");
                    }
                }
                state.written = desired;
            }
            for message in messages {
                for (spec, tx) in state.sinks.values() {
                    if wants(spec, message.event) && tx.try_send(message.clone()).is_err() {
                        metrics.deliveries.get_or_create(&DeliveryLabels { sink_type: sink_type(spec.type_), result: "dropped" }).inc();
                        health.lock().expect("health lock").insert(
                            (key.clone(), spec.name.clone()),
                            Some(format!("sink {:?} has more than {QUEUE} messages waiting; some were dropped", spec.name)),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
