//! The aggregation engine: polls each ToolBinding's provider on its interval (with jitter,
//! bounded concurrency and the shared rate-limit ledger), keeps the newest result per
//! binding, and wakes the ToolBinding controller, which alone writes status.
//!
//! Only the leader runs it. A new leader starts from the bindings' `status.lastSyncTime`
//! (no immediate re-poll of everything) and, with Redis, from the cached responses and
//! ledger (unchanged data comes back as free 304s).

pub mod cache;
pub mod status;

use crate::api::duration::{self, DEFAULT_REFRESH_INTERVAL};
use crate::api::toolbinding::RateLimitStatus;
use crate::api::{ToolBinding, Workspace};
use crate::providers::http::{ClientConfig, UpstreamClient, UpstreamMetrics};
use crate::providers::{self, Budget, Credential, PollRequest, ProviderError, Scope, credential};
use cache::{Cache, CacheMetrics};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand::Rng;
use status::SyncRecord;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindingLabels {
    pub namespace: String,
    pub name: String,
}

/// Everything the engine exports; registered once per process.
#[derive(Clone)]
pub struct EngineMetrics {
    pub upstream: UpstreamMetrics,
    pub cache: CacheMetrics,
    pub poll_duration: Family<ProviderLabels, Histogram>,
    pub degraded: Family<BindingLabels, Gauge>,
}

impl EngineMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            upstream: UpstreamMetrics::default(),
            cache: CacheMetrics::default(),
            poll_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 14))),
            degraded: Family::default(),
        };
        registry.register(
            "upstream_requests",
            "Requests to the tools, by provider and status class (304 costs no quota)",
            metrics.upstream.requests.clone(),
        );
        registry.register(
            "ratelimit_remaining",
            "Requests left in the current window, per provider and Secret (namespace/name) holding the token",
            metrics.upstream.remaining.clone(),
        );
        registry.register(
            "ratelimit_limit",
            "Requests allowed per window, per provider and Secret (namespace/name) holding the token",
            metrics.upstream.limit.clone(),
        );
        registry.register("poll_duration_seconds", "Time one poll of one binding took", metrics.poll_duration.clone());
        registry.register("cache_requests", "Engine cache lookups by result (hit, miss)", metrics.cache.requests.clone());
        registry.register(
            "redis_fallback",
            "1 while Redis is configured but unreachable and the in-memory cache serves alone",
            metrics.cache.redis_fallback.clone(),
        );
        registry.register("toolbinding_degraded", "1 while a ToolBinding's newest poll failed", metrics.degraded.clone());
        metrics
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub client: ClientConfig,
    /// Bindings polled at once.
    pub concurrency: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { redis_url: None, redis_prefix: "hyperpage".into(), client: ClientConfig::default(), concurrency: 8 }
    }
}

struct Scheduled {
    due: Instant,
    generation: Option<i64>,
}

pub struct Engine {
    kube: Client,
    pub client: UpstreamClient,
    cache: Cache,
    metrics: EngineMetrics,
    records: Mutex<HashMap<ObjectRef<ToolBinding>, SyncRecord>>,
    schedule: Mutex<HashMap<ObjectRef<ToolBinding>, Scheduled>>,
    in_flight: Mutex<HashSet<ObjectRef<ToolBinding>>>,
    budgets: Mutex<HashMap<ObjectRef<ToolBinding>, Arc<Budget>>>,
    permits: Arc<Semaphore>,
}

impl Engine {
    pub fn new(kube: Client, config: EngineConfig, metrics: EngineMetrics) -> Result<Self, String> {
        let cache = match &config.redis_url {
            Some(url) => Cache::redis(url, &config.redis_prefix, metrics.cache.clone())?,
            None => Cache::memory(metrics.cache.clone()),
        };
        let client = UpstreamClient::new(config.client.clone(), cache.clone(), metrics.upstream.clone());
        Ok(Self {
            kube,
            client,
            cache,
            metrics,
            records: Mutex::new(HashMap::new()),
            schedule: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            budgets: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The newest poll result of a binding, if it was polled in this leadership term.
    pub fn record(&self, binding: &ObjectRef<ToolBinding>) -> Option<SyncRecord> {
        self.records.lock().expect("records lock").get(binding).cloned()
    }

    /// How often a binding is polled: its own interval, its workspace's, then 5 minutes.
    pub fn interval(binding: &ToolBinding, workspace: Option<&Workspace>) -> Duration {
        binding
            .spec
            .refresh_interval
            .as_deref()
            .or(workspace.and_then(|w| w.spec.refresh_interval.as_deref()))
            .and_then(|i| duration::parse(i).ok())
            .unwrap_or(DEFAULT_REFRESH_INTERVAL)
    }

    /// ±10% so that bindings created together do not poll in lockstep.
    fn jittered(interval: Duration) -> Duration {
        let factor = rand::rng().random_range(0.9..1.1);
        interval.mul_f64(factor)
    }

    /// Decides, once a second, which bindings are due, and polls them.
    pub async fn run(
        self: Arc<Self>,
        bindings: Store<ToolBinding>,
        workspaces: Store<Workspace>,
        wake: mpsc::Sender<ObjectRef<ToolBinding>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut was_fallback = self.cache.in_fallback();
        let mut polls = tokio::task::JoinSet::new();
        loop {
            tick.tick().await;
            // Reap finished polls (their results are already recorded).
            while polls.try_join_next().is_some() {}
            let now = Instant::now();
            let fallback = self.cache.in_fallback();
            let current = bindings.state();
            self.forget_deleted(&current.iter().map(|b| ObjectRef::from_obj(b.as_ref())).collect());
            for binding in current {
                let key = ObjectRef::from_obj(binding.as_ref());
                let Some(namespace) = binding.namespace() else { continue };
                let workspace = workspaces.get(&ObjectRef::new(&binding.spec.workspace_ref.name).within(&namespace));
                let Some(workspace) = workspace else { continue };
                if workspace.spec.suspend || !validation_passed(&binding) {
                    continue;
                }
                if fallback != was_fallback {
                    // The Degraded condition mentions the cache: let the controller update it.
                    let _ = wake.try_send(key.clone());
                }
                let interval = Self::interval(&binding, Some(&workspace));
                let due = {
                    let mut schedule = self.schedule.lock().expect("schedule lock");
                    let entry = schedule.entry(key.clone()).or_insert_with(|| Scheduled {
                        // Warm start: continue from the last sync recorded in status.
                        due: warm_start_due(&binding, interval, now),
                        generation: binding.metadata.generation,
                    });
                    if entry.generation != binding.metadata.generation {
                        entry.generation = binding.metadata.generation;
                        entry.due = now;
                    }
                    entry.due <= now
                };
                if !due || !self.in_flight.lock().expect("in-flight lock").insert(key.clone()) {
                    continue;
                }
                let engine = self.clone();
                let wake = wake.clone();
                // Owned by this run: when leadership is lost and the run is dropped, every
                // poll in flight is cancelled (no quota spent, no cache written, by a deposed leader).
                polls.spawn(async move {
                    let _permit = engine.permits.clone().acquire_owned().await;
                    let record = engine.poll_once(&binding).await;
                    let next = match &record.error {
                        Some(ProviderError::RateLimited { until, .. }) => {
                            let wait = until.duration_since(jiff::Timestamp::now());
                            Instant::now() + Duration::try_from(wait).unwrap_or_default().max(Duration::from_secs(1))
                        }
                        _ => Instant::now() + Self::jittered(interval),
                    };
                    engine
                        .metrics
                        .degraded
                        .get_or_create(&BindingLabels { namespace: binding.namespace().unwrap_or_default(), name: binding.name_any() })
                        .set(i64::from(record.error.as_ref().is_some_and(|e| !matches!(e, ProviderError::RateLimited { .. }))));
                    let key = ObjectRef::from_obj(binding.as_ref());
                    engine.records.lock().expect("records lock").insert(key.clone(), record);
                    if let Some(s) = engine.schedule.lock().expect("schedule lock").get_mut(&key) {
                        s.due = next;
                    }
                    engine.in_flight.lock().expect("in-flight lock").remove(&key);
                    let _ = wake.send(key).await;
                });
            }
            was_fallback = fallback;
        }
    }

    /// Drops what the engine kept about bindings that no longer exist: their state, their
    /// metric series and their cache entries.
    fn forget_deleted(&self, known: &HashSet<ObjectRef<ToolBinding>>) {
        let gone: Vec<ObjectRef<ToolBinding>> =
            self.schedule.lock().expect("schedule lock").keys().filter(|k| !known.contains(*k)).cloned().collect();
        retain_known(&mut self.records.lock().expect("records lock"), known);
        retain_known(&mut self.schedule.lock().expect("schedule lock"), known);
        retain_known(&mut self.budgets.lock().expect("budgets lock"), known);
        for binding in gone {
            let namespace = binding.namespace.clone().unwrap_or_default();
            self.metrics.degraded.remove(&BindingLabels { namespace: namespace.clone(), name: binding.name.clone() });
            let cache = self.cache.clone();
            tokio::spawn(async move { cache.forget(&format!("{namespace}/{}", binding.name)).await });
        }
    }

    /// One poll: read the token, check the endpoint, ask the provider.
    pub async fn poll_once(&self, binding: &ToolBinding) -> SyncRecord {
        let started = std::time::Instant::now();
        let attempted_at = Time(jiff::Timestamp::now());
        let key = ObjectRef::from_obj(binding);
        let previous = self.record(&key);
        let provider = binding.spec.provider.as_str();
        let result = self.fetch(binding).await;
        self.metrics.poll_duration.get_or_create(&ProviderLabels { provider }).observe(started.elapsed().as_secs_f64());
        let (previous_success, previous_snapshot) = match previous {
            Some(p) => (p.succeeded_at, p.snapshot),
            None => (binding.status.as_ref().and_then(|s| s.last_successful_sync_time.clone()), None),
        };
        match result {
            Ok((snapshot, rate_limit)) => SyncRecord {
                attempted_at: attempted_at.clone(),
                succeeded_at: Some(attempted_at),
                unchanged: previous_snapshot.as_ref() == Some(&snapshot),
                snapshot: Some(snapshot),
                error: None,
                rate_limit,
            },
            Err((error, rate_limit)) => {
                tracing::info!(binding = %key, %error, "poll failed");
                SyncRecord {
                    attempted_at,
                    succeeded_at: previous_success,
                    snapshot: previous_snapshot,
                    error: Some(error),
                    rate_limit,
                    unchanged: false,
                }
            }
        }
    }

    async fn fetch(
        &self,
        binding: &ToolBinding,
    ) -> Result<(providers::Snapshot, Option<RateLimitStatus>), (ProviderError, Option<RateLimitStatus>)> {
        let target = credential::Target::for_binding(binding);
        let token = credential::read(&self.kube, &target).await.map_err(|e| (e.into(), None))?;
        let credential = Credential::new(binding.spec.provider, token.expose()).map_err(|e| (e, None))?;
        drop(token);
        let endpoint = binding.spec.endpoint.as_deref().or(providers::default_endpoint(binding.spec.provider)).unwrap_or_default();
        let endpoint = url::Url::parse(endpoint).map_err(|_| (ProviderError::Config("spec.endpoint is not a URL".into()), None))?;
        self.client.policy().check(&endpoint).await.map_err(|e| (e, None))?;
        let rate = binding.spec.rate_limit.clone().unwrap_or_default();
        let per_minute = rate.max_requests_per_minute.and_then(|n| u32::try_from(n).ok());
        let budget = {
            let mut budgets = self.budgets.lock().expect("budgets lock");
            let budget = budgets.entry(ObjectRef::from_obj(binding)).or_insert_with(|| Arc::new(Budget::new(per_minute)));
            if budget.per_minute() != per_minute {
                *budget = Arc::new(Budget::new(per_minute));
            }
            budget.clone()
        };
        let name = binding.name_any();
        let request = PollRequest {
            spec: &binding.spec,
            endpoint,
            credential: &credential,
            reserve: i64::from(rate.min_remaining.unwrap_or(0)),
            budget: &budget,
            scope: Scope { namespace: &target.namespace, binding: &name, secret: &target.secret },
        };
        let result = providers::poll(&self.client, &request).await;
        let rate_limit = self.client.ledger_entry(&credential).map(|e| RateLimitStatus {
            limit: e.limit,
            remaining: e.remaining,
            reset_at: e.reset_at.map(Time),
        });
        match result {
            Ok(snapshot) => Ok((snapshot, rate_limit)),
            Err(e) => Err((e, rate_limit)),
        }
    }
}

fn retain_known<V>(map: &mut HashMap<ObjectRef<ToolBinding>, V>, known: &HashSet<ObjectRef<ToolBinding>>) {
    map.retain(|key, _| known.contains(key));
}

/// A binding whose Secret or Workspace is missing is reported by validation, not polled.
fn validation_passed(binding: &ToolBinding) -> bool {
    let conditions = binding.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    crate::api::conditions::find(conditions, crate::api::conditions::CREDENTIALS_VALID)
        .is_none_or(|c| c.status != "False" || c.reason == "Rejected")
}

/// When a binding was last synced (per its status) plus its interval, as an Instant.
fn warm_start_due(binding: &ToolBinding, interval: Duration, now: Instant) -> Instant {
    let last = binding.status.as_ref().and_then(|s| s.last_sync_time.as_ref()).map(|t| t.0);
    match last {
        Some(last) => {
            let age = Duration::try_from(jiff::Timestamp::now().duration_since(last)).unwrap_or(interval);
            now + interval.saturating_sub(age)
        }
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_of_deleted_bindings_is_dropped() {
        let kept = ObjectRef::<ToolBinding>::new("github").within("team-a");
        let gone = ObjectRef::<ToolBinding>::new("old").within("team-a");
        let mut map = HashMap::from([(kept.clone(), 1), (gone.clone(), 2)]);
        retain_known(&mut map, &HashSet::from([kept.clone()]));
        assert_eq!(map.keys().collect::<Vec<_>>(), [&kept]);
    }

    #[test]
    fn the_interval_comes_from_the_binding_then_the_workspace_then_the_default() {
        let binding: ToolBinding = serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap();
        let mut workspace: Workspace = serde_norway::from_str(include_str!("../../tests/fixtures/workspace-basic.yaml")).unwrap();
        assert_eq!(Engine::interval(&binding, Some(&workspace)), Duration::from_secs(300));
        workspace.spec.refresh_interval = Some("2m".into());
        assert_eq!(Engine::interval(&binding, Some(&workspace)), Duration::from_secs(120));
        let mut own = binding.clone();
        own.spec.refresh_interval = Some("45s".into());
        assert_eq!(Engine::interval(&own, Some(&workspace)), Duration::from_secs(45));
        assert_eq!(Engine::interval(&binding, None), DEFAULT_REFRESH_INTERVAL);
    }
}
