//! The webhook receiver: tools tell the operator that something changed, and the binding is
//! polled at once instead of at its next interval.
//!
//! Every replica serves it (a tool's webhook may land on any pod behind the Service). A
//! request is matched to a binding by its path, `/hooks/<digest>` ([`verify::path_digest`]:
//! keyed with the binding's shared secret, so the path reveals nothing and cannot be guessed),
//! then verified the provider's way ([`verify`]). A verified request never trusts the payload:
//! it only records the time on the ToolBinding (annotation
//! [`REQUESTED_AT_ANNOTATION`](crate::api::REQUESTED_AT_ANNOTATION)), which the leader's
//! engine turns into an immediate conditional poll. Bursts are coalesced twice: each replica
//! writes the annotation at most once per [`COALESCE_WINDOW`] per binding (a request inside the
//! window is folded into one trailing write at its end, so the newest push is never lost), and
//! the engine starts at most one requested poll per binding per window.
//!
//! Secrets: the shared secret is read only from Secrets labelled `hyperpage.dev/credential=true`
//! (selected by the API server), kept in memory, and never logged, counted or written anywhere.
//! Refused requests are counted by reason; their bodies are never logged.

pub mod verify;

use crate::api::{Provider, REQUESTED_AT_ANNOTATION, ToolBinding};
use crate::metrics::Metrics;
use crate::providers::credential::LABEL;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// At most one poll request per binding per this long (on each replica, and again in the
/// engine): a burst of pushes costs one poll, plus one at the end of the window if more came.
pub const COALESCE_WINDOW: Duration = crate::engine::REQUESTED_POLL_GAP;
/// The default cap on a request body. GitHub caps payloads at 25 MB, but push events are far
/// smaller; a larger body is refused (413) before any HMAC is computed over it.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Even without a change seen, every binding's secret is read again this often.
const FULL_REFRESH: Duration = Duration::from_secs(300);
/// Changes seen within this long are looked at together.
const SETTLE: Duration = Duration::from_millis(300);
/// The field manager of the annotation writes.
pub const FIELD_MANAGER: &str = "hyperpage-webhook";

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub address: SocketAddr,
    pub max_body: usize,
    /// Namespaces to serve bindings of; empty: the whole cluster.
    pub watch_namespaces: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The binding's provider, or `unknown` when no binding has the path.
    pub provider: &'static str,
    /// accepted, coalesced, missing_header, malformed, mismatch, not_found, too_large, error.
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct WebhookMetrics {
    pub requests: Family<RequestLabels, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by provider and result (missing_header, malformed and mismatch were refused with 401)",
            metrics.requests.clone(),
        );
        metrics
    }

    fn count(&self, provider: &'static str, result: &'static str) {
        self.requests.get_or_create(&RequestLabels { provider, result }).inc();
    }
}

/// One binding that takes webhooks. Holds the shared secret: no `Debug`.
struct Hook {
    binding: ObjectRef<ToolBinding>,
    provider: Provider,
    secret: Vec<u8>,
}

/// What decides a binding's hook; when it is unchanged, the Secret is not read again.
#[derive(Clone, PartialEq, Eq)]
struct Fingerprint {
    uid: Option<String>,
    provider: Provider,
    secret: String,
    key: String,
}

/// A binding's hook under its path; `None` while its Secret is not usable.
type Entry = (Fingerprint, Option<(String, Arc<Hook>)>);

#[derive(Default)]
struct Index {
    by_path: HashMap<String, Arc<Hook>>,
    by_binding: HashMap<ObjectRef<ToolBinding>, Entry>,
}

/// The bindings that opted in (pure): their keys and fingerprints.
fn wanted(bindings: &[Arc<ToolBinding>]) -> Vec<(ObjectRef<ToolBinding>, Fingerprint)> {
    bindings
        .iter()
        .filter_map(|b| {
            let webhook = b.spec.webhook.as_ref()?;
            let fingerprint = Fingerprint {
                uid: b.metadata.uid.clone(),
                provider: b.spec.provider,
                secret: webhook.secret_ref.name.clone(),
                key: webhook.secret_ref.key.clone(),
            };
            Some((ObjectRef::from_obj(b.as_ref()), fingerprint))
        })
        .collect()
}

/// The shared secret's bytes from a Secret's data (pure): present and not blank.
fn secret_value(secret: Option<&Secret>, key: &str) -> Option<Vec<u8>> {
    let value = secret?.data.as_ref()?.get(key)?;
    let trimmed = value.0.trim_ascii();
    (!trimmed.is_empty()).then(|| trimmed.to_vec())
}

struct Receiver {
    client: Client,
    metrics: Metrics,
    index: RwLock<Index>,
    coalescer: Coalescer,
}

/// Per binding: the end of the current window, and whether a write waits for it.
#[derive(Default)]
struct Coalescer {
    slots: Mutex<HashMap<ObjectRef<ToolBinding>, (Instant, bool)>>,
}

/// What to do with a verified request (pure decision of [`Coalescer::admit`]).
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Write the annotation now.
    Now,
    /// Write it at this instant (the end of the window).
    At(Instant),
    /// A write is already due at the end of the window: nothing more.
    Folded,
}

impl Coalescer {
    fn admit(&self, key: &ObjectRef<ToolBinding>, now: Instant) -> Admission {
        let mut slots = self.slots.lock().expect("coalescer lock");
        let slot = slots.entry(key.clone()).or_insert((now, false));
        if now >= slot.0 {
            *slot = (now + COALESCE_WINDOW, false);
            Admission::Now
        } else if !slot.1 {
            slot.1 = true;
            Admission::At(slot.0)
        } else {
            Admission::Folded
        }
    }

    /// The trailing write is being made: a new window starts.
    fn trailing_done(&self, key: &ObjectRef<ToolBinding>, now: Instant) {
        if let Some(slot) = self.slots.lock().expect("coalescer lock").get_mut(key) {
            *slot = (now + COALESCE_WINDOW, false);
        }
    }

    fn forget_idle(&self, now: Instant) {
        self.slots.lock().expect("coalescer lock").retain(|_, (until, trailing)| *trailing || *until > now);
    }
}

/// Serves the receiver on `config.address` and keeps its index current, until dropped.
pub async fn run(client: Client, config: WebhookConfig, metrics: Metrics) -> Result<(), std::io::Error> {
    let receiver =
        Arc::new(Receiver { client: client.clone(), metrics, index: RwLock::new(Index::default()), coalescer: Coalescer::default() });
    let app =
        Router::new().route("/hooks/{digest}", post(receive)).layer(DefaultBodyLimit::max(config.max_body)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(config.address).await?;
    tracing::info!(address = %config.address, "webhook receiver listening on /hooks/<digest>");

    let changed = Arc::new(Notify::new());
    let dirty_secrets: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let apis: Vec<(Api<ToolBinding>, Api<PartialObjectMeta<Secret>>)> = if config.watch_namespaces.is_empty() {
        vec![(Api::all(client.clone()), Api::all(client.clone()))]
    } else {
        config.watch_namespaces.iter().map(|ns| (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns))).collect()
    };
    let mut stores = Vec::new();
    let mut watches: Vec<BoxFuture<'static, ()>> = Vec::new();
    for (bindings, secrets) in apis {
        let (store, writer) = reflector::store();
        stores.push(store);
        let notify = changed.clone();
        // The receiver needs the spec only: status (the bulk of a binding) is dropped.
        let stream = watcher(bindings, watcher::Config::default())
            .default_backoff()
            .modify(|b: &mut ToolBinding| {
                b.status = None;
                b.managed_fields_mut().clear();
            })
            .reflect(writer)
            .for_each(move |event| {
                if let Err(error) = event {
                    tracing::warn!(%error, "webhook receiver: ToolBinding watch failed; retrying");
                }
                notify.notify_one();
                std::future::ready(())
            });
        watches.push(futures::FutureExt::boxed(stream));
        let (notify, dirty) = (changed.clone(), dirty_secrets.clone());
        // Metadata of opted-in Secrets only: a rotated shared secret is read again at once.
        let opted_in = watcher::Config::default().labels(&format!("{LABEL}=true"));
        let stream = watcher(secrets, opted_in).default_backoff().touched_objects().for_each(move |secret| {
            if let Ok(secret) = secret {
                dirty.lock().expect("dirty lock").insert((secret.namespace().unwrap_or_default(), secret.name_any()));
                notify.notify_one();
            }
            std::future::ready(())
        });
        watches.push(futures::FutureExt::boxed(stream));
    }

    let refresher = {
        let receiver = receiver.clone();
        async move {
            let mut last_full = Instant::now();
            loop {
                let _ = tokio::time::timeout(FULL_REFRESH, changed.notified()).await;
                tokio::time::sleep(SETTLE).await;
                let full = last_full.elapsed() >= FULL_REFRESH;
                if full {
                    last_full = Instant::now();
                }
                let dirty = std::mem::take(&mut *dirty_secrets.lock().expect("dirty lock"));
                let bindings: Vec<Arc<ToolBinding>> = stores.iter().flat_map(|s| s.state()).collect();
                receiver.refresh(&bindings, &dirty, full).await;
                receiver.coalescer.forget_idle(Instant::now());
            }
        }
    };
    let server = async move { axum::serve(listener, app).await };
    tokio::select! {
        result = server => result,
        _ = futures::future::join_all(watches) => Ok(()),
        _ = refresher => Ok(()),
    }
}

impl Receiver {
    /// Brings the index up to date: reads the Secret of each binding that is new, changed,
    /// or whose Secret changed (all of them when `full`), and drops bindings that are gone.
    async fn refresh(&self, bindings: &[Arc<ToolBinding>], dirty: &HashSet<(String, String)>, full: bool) {
        let mut reads = Vec::new();
        let mut keep = HashMap::new();
        {
            let index = self.index.read().expect("index lock");
            for (key, fingerprint) in wanted(bindings) {
                let namespace = key.namespace.clone().unwrap_or_default();
                let same = index.by_binding.get(&key).filter(|(f, _)| *f == fingerprint);
                match same {
                    Some(entry) if !full && !dirty.contains(&(namespace, fingerprint.secret.clone())) => {
                        keep.insert(key, (entry.0.clone(), entry.1.clone()));
                    }
                    _ => reads.push((key, fingerprint)),
                }
            }
        }
        if reads.is_empty() && keep.len() == self.index.read().expect("index lock").by_binding.len() {
            return;
        }
        for (key, fingerprint) in reads {
            let namespace = key.namespace.clone().unwrap_or_default();
            let hook = match self.read_secret(&namespace, &fingerprint.secret, &fingerprint.key).await {
                Some(secret) => {
                    let path = verify::path_digest(&namespace, &key.name, &secret);
                    Some((path, Arc::new(Hook { binding: key.clone(), provider: fingerprint.provider, secret })))
                }
                None => {
                    tracing::info!(
                        binding = %key,
                        secret = %fingerprint.secret,
                        key = %fingerprint.key,
                        "webhook secret not usable (missing, not labelled {LABEL}=true, or the key is empty); the binding takes no webhooks"
                    );
                    None
                }
            };
            keep.insert(key, (fingerprint, hook));
        }
        let by_path = keep.values().filter_map(|(_, hook)| hook.clone()).collect();
        *self.index.write().expect("index lock") = Index { by_path, by_binding: keep };
    }

    /// The shared secret, read like a credential: selected by name and label, so the API
    /// server never hands over a Secret that was not opted in.
    async fn read_secret(&self, namespace: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().labels(&format!("{LABEL}=true")).fields(&format!("metadata.name={name}"));
        match tokio::time::timeout(crate::providers::credential::READ_TIMEOUT, secrets.list(&params)).await {
            Ok(Ok(list)) => secret_value(list.items.first(), key),
            Ok(Err(error)) => {
                tracing::warn!(%error, namespace, secret = name, "failed to read a webhook secret");
                None
            }
            Err(_) => {
                tracing::warn!(namespace, secret = name, "failed to read a webhook secret in time");
                None
            }
        }
    }

    fn lookup(&self, digest: &str) -> Option<Arc<Hook>> {
        self.index.read().expect("index lock").by_path.get(digest).cloned()
    }

    /// Records the request on the binding: the leader polls it.
    async fn request_poll(&self, binding: &ObjectRef<ToolBinding>) {
        let namespace = binding.namespace.clone().unwrap_or_default();
        let api: Api<ToolBinding> = Api::namespaced(self.client.clone(), &namespace);
        let now = jiff::Timestamp::now().round(jiff::Unit::Millisecond).unwrap_or_else(|_| jiff::Timestamp::now());
        let patch = serde_json::json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: now.to_string()}}});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        self.metrics.record_write("webhook", "ToolBinding", "patch");
        if let Err(error) = api.patch(&binding.name, &params, &Patch::Merge(&patch)).await {
            tracing::warn!(%error, %binding, "failed to record a webhook request on the binding");
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> StatusCode {
    let metrics = &receiver.metrics.webhook;
    let Some(hook) = receiver.lookup(&digest) else {
        metrics.count("unknown", "not_found");
        return StatusCode::NOT_FOUND;
    };
    let provider = hook.provider.as_str();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            metrics.count(provider, if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "error" });
            return status;
        }
    };
    let header = headers.get(verify::header_name(hook.provider)).map(|v| v.as_bytes());
    if let Err(rejection) = verify::verify(hook.provider, &hook.secret, header, &body) {
        metrics.count(provider, rejection.as_str());
        // Debug only: refusals are counted, and an attacker must not be able to flood the log.
        tracing::debug!(binding = %hook.binding, provider, reason = rejection.as_str(), "webhook refused");
        return StatusCode::UNAUTHORIZED;
    }
    let key = hook.binding.clone();
    match receiver.coalescer.admit(&key, Instant::now()) {
        Admission::Now => {
            metrics.count(provider, "accepted");
            receiver.request_poll(&key).await;
        }
        Admission::At(when) => {
            metrics.count(provider, "coalesced");
            let receiver = receiver.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(when).await;
                receiver.coalescer.trailing_done(&key, Instant::now());
                receiver.request_poll(&key).await;
            });
        }
        Admission::Folded => metrics.count(provider, "coalesced"),
    }
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn binding(name: &str, webhook: Option<(&str, &str)>) -> Arc<ToolBinding> {
        let mut b: ToolBinding = serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap();
        b.metadata.name = Some(name.into());
        b.metadata.namespace = Some("team-a".into());
        b.spec.webhook = webhook.map(|(secret, key)| crate::api::toolbinding::WebhookSpec {
            secret_ref: crate::api::toolbinding::SecretKeyRef { name: secret.into(), key: key.into() },
        });
        Arc::new(b)
    }

    #[test]
    fn only_bindings_that_opted_in_take_webhooks() {
        let all = [binding("a", Some(("hook", "secret"))), binding("b", None)];
        let wanted = wanted(&all);
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].0.name, "a");
        assert_eq!((wanted[0].1.secret.as_str(), wanted[0].1.key.as_str()), ("hook", "secret"));
    }

    #[test]
    fn the_secret_must_hold_a_non_blank_value() {
        let mut secret = Secret::default();
        assert_eq!(secret_value(Some(&secret), "secret"), None);
        secret.data = Some([("secret".to_string(), ByteString(b" \n".to_vec()))].into());
        assert_eq!(secret_value(Some(&secret), "secret"), None);
        secret.data = Some([("secret".to_string(), ByteString(b"s3cret\n".to_vec()))].into());
        assert_eq!(secret_value(Some(&secret), "secret").as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(secret_value(Some(&secret), "other"), None);
        assert_eq!(secret_value(None, "secret"), None);
    }

    #[test]
    fn a_burst_is_one_write_now_and_one_at_the_end_of_the_window() {
        let coalescer = Coalescer::default();
        let key = ObjectRef::from_obj(binding("a", None).as_ref());
        let t0 = Instant::now();
        assert_eq!(coalescer.admit(&key, t0), Admission::Now);
        assert_eq!(coalescer.admit(&key, t0 + Duration::from_millis(10)), Admission::At(t0 + COALESCE_WINDOW));
        for n in 2..100 {
            assert_eq!(coalescer.admit(&key, t0 + Duration::from_millis(10 * n)), Admission::Folded);
        }
        let other = ObjectRef::from_obj(binding("b", None).as_ref());
        assert_eq!(coalescer.admit(&other, t0), Admission::Now, "windows are per binding");
        let end = t0 + COALESCE_WINDOW;
        coalescer.trailing_done(&key, end);
        assert_eq!(coalescer.admit(&key, end + Duration::from_secs(1)), Admission::At(end + COALESCE_WINDOW));
        coalescer.forget_idle(end + COALESCE_WINDOW * 3);
        assert_eq!(coalescer.slots.lock().unwrap().len(), 1, "the pending trailing write is kept; idle slots go");
        assert_eq!(coalescer.admit(&other, end + COALESCE_WINDOW * 3), Admission::Now);
    }
}
