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
use crate::lease::Fence;
use crate::providers::credential::{self, Credentials};
use crate::providers::http::{ClientConfig, UpstreamClient, UpstreamMetrics};
use crate::providers::{self, Budget, Credential, PollRequest, ProviderError, Scope};
use cache::{Cache, CacheMetrics, Polled};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand::Rng;
use status::SyncRecord;
use std::collections::{BTreeSet, HashMap, HashSet};
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

/// Everything the engine keeps about one binding, in one place.
struct BindingState {
    /// The newest poll in this leadership term.
    record: Option<SyncRecord>,
    /// When it is next due, and the generation that due time was computed for.
    due: Instant,
    generation: Option<i64>,
    interval: Duration,
    in_flight: bool,
    /// The spec changed while a poll was in flight: poll again as soon as it finishes.
    poll_again: bool,
    budget: Option<Arc<Budget>>,
    /// When the newest poll started (webhook-requested polls keep [`REQUESTED_POLL_GAP`] from it).
    started: Option<Instant>,
    /// The newest `hyperpage.dev/requested-at` value acted on.
    requested: Option<String>,
    /// A webhook asked for a poll while one was in flight: poll again after the gap.
    requested_again: bool,
}

/// A webhook-requested poll starts no sooner than this after the previous poll of the binding
/// started (the receiver coalesces with the same window): a burst of pushes costs one or two polls.
pub const REQUESTED_POLL_GAP: Duration = Duration::from_secs(5);

/// The bindings' states and a queue ordered by due time: each tick looks only at the due
/// ones, not at every binding.
#[derive(Default)]
struct Schedule {
    states: HashMap<ObjectRef<ToolBinding>, BindingState>,
    /// (due, namespace, name): `ObjectRef` has no order.
    queue: BTreeSet<(Instant, String, String)>,
    /// Polls recorded in the shared cache (by an earlier leader) for bindings not yet
    /// noticed: taken into account when they are.
    polled: HashMap<ObjectRef<ToolBinding>, Polled>,
}

/// The cache's name for a binding (`namespace/name`), shared with the providers' scope.
fn owner(key: &ObjectRef<ToolBinding>) -> String {
    format!("{}/{}", key.namespace.as_deref().unwrap_or_default(), key.name)
}

fn queued(due: Instant, key: &ObjectRef<ToolBinding>) -> (Instant, String, String) {
    (due, key.namespace.clone().unwrap_or_default(), key.name.clone())
}

impl Schedule {
    fn set_due(&mut self, key: &ObjectRef<ToolBinding>, due: Instant) {
        if let Some(state) = self.states.get_mut(key) {
            self.queue.remove(&queued(state.due, key));
            state.due = due;
            self.queue.insert(queued(due, key));
        }
    }

    /// Registers a binding (due when its status says, for a warm start) or notices a new
    /// generation (due now).
    fn notice(&mut self, binding: &ToolBinding, interval: Duration, now: Instant) {
        let key = ObjectRef::from_obj(binding);
        match self.states.get_mut(&key) {
            Some(state) if state.generation == binding.metadata.generation => state.interval = interval,
            Some(state) => {
                state.generation = binding.metadata.generation;
                state.interval = interval;
                if state.in_flight {
                    state.poll_again = true;
                } else {
                    self.set_due(&key, now);
                }
            }
            None => {
                let polled = self.polled.remove(&key);
                let due = warm_start_due(binding, polled, interval, now);
                let state = BindingState {
                    record: None,
                    due,
                    generation: binding.metadata.generation,
                    interval,
                    in_flight: false,
                    poll_again: false,
                    budget: None,
                    started: None,
                    requested: None,
                    requested_again: false,
                };
                self.queue.insert(queued(due, &key));
                self.states.insert(key, state);
            }
        }
    }

    /// A poll an earlier leader recorded in the shared cache: a binding not polled in this
    /// term is not due before one interval after it (its status may name an older poll
    /// when the leader died before writing it).
    fn hint(&mut self, key: ObjectRef<ToolBinding>, polled: Polled, now: Instant) {
        let Some(state) = self.states.get(&key) else {
            self.polled.insert(key, polled);
            return;
        };
        if state.record.is_some() || state.in_flight || state.generation != polled.generation {
            return;
        }
        let due = now + state.interval.saturating_sub(age(polled.at));
        if due > state.due {
            self.set_due(&key, due);
        }
    }

    /// Takes the bindings due by `now` that are not being polled, marking them in flight.
    fn take_due(&mut self, now: Instant) -> Vec<ObjectRef<ToolBinding>> {
        let mut due = Vec::new();
        while let Some((when, namespace, name)) = self.queue.first().cloned() {
            if when > now {
                break;
            }
            self.queue.pop_first();
            let key = ObjectRef::new(&name).within(&namespace);
            // Only the entry of the current due time counts (set_due removes older ones).
            if let Some(state) = self.states.get_mut(&key).filter(|s| !s.in_flight && s.due == when) {
                state.in_flight = true;
                state.started = Some(now);
                due.push(key);
            }
        }
        due
    }

    /// Records a finished poll and queues the next one.
    fn finish(&mut self, key: &ObjectRef<ToolBinding>, record: SyncRecord, next: Instant) {
        if let Some(state) = self.states.get_mut(key) {
            let next = if std::mem::take(&mut state.poll_again) {
                Instant::now()
            } else if std::mem::take(&mut state.requested_again) {
                state.started.map_or(next, |s| (s + REQUESTED_POLL_GAP).max(Instant::now()).min(next))
            } else {
                next
            };
            state.record = Some(record);
            state.in_flight = false;
            state.due = next;
            self.queue.insert(queued(next, key));
        }
    }

    /// A binding skipped at its due time (suspended, invalid): looked at again a bit later.
    fn skip(&mut self, key: &ObjectRef<ToolBinding>, next: Instant) {
        if let Some(state) = self.states.get_mut(key) {
            state.in_flight = false;
        }
        self.set_due(key, next);
    }

    /// A webhook asked for a poll (`requested_at`, the annotation's value): due now, or when
    /// the gap since the last poll's start has passed. `served` says the binding's status
    /// already records a poll at or after that time: a new leader seeing an old request for
    /// the first time does not poll again for it.
    fn request(&mut self, key: &ObjectRef<ToolBinding>, requested_at: &str, served: bool, now: Instant) {
        let Some(state) = self.states.get_mut(key) else { return };
        if state.requested.as_deref() == Some(requested_at) {
            return;
        }
        let first = state.requested.replace(requested_at.to_string()).is_none();
        if first && served {
            return;
        }
        if state.in_flight {
            state.requested_again = true;
            return;
        }
        let due = state.started.map_or(now, |s| (s + REQUESTED_POLL_GAP).max(now));
        if due < state.due {
            self.set_due(key, due);
        }
    }

    /// Forgets everything from an earlier leadership term of this replica: its due times are
    /// stale (another leader polled meanwhile), so a new term starts, like a new process, from
    /// the bindings' status and the polls recorded in the shared cache.
    fn new_term(&mut self) {
        *self = Self::default();
    }

    /// Drops bindings that no longer exist; returns them.
    fn retain(&mut self, known: &HashSet<ObjectRef<ToolBinding>>) -> Vec<ObjectRef<ToolBinding>> {
        let gone: Vec<_> = self.states.keys().filter(|k| !known.contains(*k)).cloned().collect();
        for key in &gone {
            if let Some(state) = self.states.remove(key) {
                self.queue.remove(&queued(state.due, key));
            }
        }
        self.polled.retain(|key, _| known.contains(key));
        gone
    }
}

pub struct Engine {
    credentials: Credentials,
    pub client: UpstreamClient,
    cache: Cache,
    metrics: EngineMetrics,
    schedule: Mutex<Schedule>,
    permits: Arc<Semaphore>,
}

/// How often the whole store is looked at (new bindings the controller has not announced,
/// deleted ones, a change of the cache's fallback state); due polls are checked every second.
const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// When a due binding cannot be polled (suspended Workspace, failed validation), the next look.
const RECHECK_AFTER: Duration = Duration::from_secs(30);

impl Engine {
    /// `credentials`: how polls read their tokens ([`Credentials::watched`] in the operator).
    pub fn new(credentials: Credentials, config: EngineConfig, metrics: EngineMetrics) -> Result<Self, String> {
        let cache = match &config.redis_url {
            Some(url) => Cache::redis(url, &config.redis_prefix, metrics.cache.clone())?,
            None => Cache::memory(metrics.cache.clone()),
        };
        let client = UpstreamClient::new(config.client.clone(), cache.clone(), metrics.upstream.clone());
        Ok(Self {
            credentials,
            client,
            cache,
            metrics,
            schedule: Mutex::new(Schedule::default()),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The newest poll result of a binding, if it was polled in this leadership term.
    pub fn record(&self, binding: &ObjectRef<ToolBinding>) -> Option<SyncRecord> {
        self.schedule.lock().expect("schedule lock").states.get(binding).and_then(|s| s.record.clone())
    }

    /// The ToolBinding controller announces each binding it reconciles: a new one is
    /// scheduled (from its status, for a warm start), a new generation is due at once.
    pub fn notice(&self, binding: &ToolBinding, workspace: Option<&Workspace>) {
        let interval = Self::interval(binding, workspace);
        let mut schedule = self.schedule.lock().expect("schedule lock");
        schedule.notice(binding, interval, Instant::now());
        if let Some(requested_at) = binding.annotations().get(crate::api::REQUESTED_AT_ANNOTATION) {
            schedule.request(&ObjectRef::from_obj(binding), requested_at, request_served(binding, requested_at), Instant::now());
        }
    }

    /// When a binding is next due, if the engine knows it.
    pub fn next_poll(&self, binding: &ObjectRef<ToolBinding>) -> Option<Instant> {
        self.schedule.lock().expect("schedule lock").states.get(binding).map(|s| s.due)
    }

    /// Reads the polls an earlier leader recorded in the shared cache for these bindings, so
    /// that none is polled again before its interval: called once when leadership starts.
    pub async fn warm_start(&self, bindings: &[ObjectRef<ToolBinding>]) {
        let owners: Vec<String> = bindings.iter().map(owner).collect();
        let found = self.cache.get_polled(&owners).await;
        let now = Instant::now();
        let mut schedule = self.schedule.lock().expect("schedule lock");
        for key in bindings {
            if let Some(polled) = found.get(&owner(key)) {
                schedule.hint(key.clone(), *polled, now);
            }
        }
    }

    /// Records the poll in the shared cache, polls one binding and queues the next. The record
    /// comes first: a leader that dies during the poll or before its status write (its
    /// requests already spent) must not make the next one repeat it.
    pub async fn poll_and_record(&self, binding: &ToolBinding, interval: Duration) -> ObjectRef<ToolBinding> {
        let key = ObjectRef::from_obj(binding);
        let polled = Polled { at: jiff::Timestamp::now(), generation: binding.metadata.generation };
        self.cache.put_polled(&owner(&key), polled).await;
        let record = self.poll_once(binding).await;
        let next = match &record.error {
            Some(ProviderError::RateLimited { until, .. }) => {
                let wait = until.duration_since(jiff::Timestamp::now());
                Instant::now() + Duration::try_from(wait).unwrap_or_default().max(Duration::from_secs(1))
            }
            _ => Instant::now() + Self::jittered(interval),
        };
        self.metrics
            .degraded
            .get_or_create(&BindingLabels { namespace: binding.namespace().unwrap_or_default(), name: binding.name_any() })
            .set(i64::from(record.error.as_ref().is_some_and(|e| !matches!(e, ProviderError::RateLimited { .. }))));
        self.schedule.lock().expect("schedule lock").finish(&key, record, next);
        key
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

    /// Polls the bindings as they fall due (checked once a second, from the queue), and
    /// looks at the whole store every [`RESCAN_EVERY`].
    pub async fn run(
        self: Arc<Self>,
        bindings: Store<ToolBinding>,
        workspaces: Store<Workspace>,
        wake: mpsc::Sender<ObjectRef<ToolBinding>>,
        fence: Fence,
    ) {
        self.schedule.lock().expect("schedule lock").new_term();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut was_fallback = self.cache.in_fallback();
        let mut rescanned: Option<Instant> = None;
        // Owned by this run: when leadership is lost and the run is dropped, every poll in
        // flight is cancelled (no quota spent, no cache written, by a deposed leader).
        let mut polls = tokio::task::JoinSet::new();
        let known: Vec<_> = bindings.state().iter().map(|b| ObjectRef::from_obj(b.as_ref())).collect();
        self.warm_start(&known).await;
        loop {
            tick.tick().await;
            while polls.try_join_next().is_some() {}
            let now = Instant::now();
            let fallback = self.cache.in_fallback();
            if rescanned.is_none_or(|at| now.duration_since(at) >= RESCAN_EVERY) || fallback != was_fallback {
                rescanned = Some(now);
                let current = bindings.state();
                self.forget_deleted(&current.iter().map(|b| ObjectRef::from_obj(b.as_ref())).collect());
                for binding in &current {
                    let workspace =
                        binding.namespace().and_then(|ns| workspaces.get(&ObjectRef::new(&binding.spec.workspace_ref.name).within(&ns)));
                    self.notice(binding, workspace.as_deref());
                    if fallback != was_fallback {
                        // The Degraded condition mentions the cache: let the controller update it.
                        let _ = wake.try_send(ObjectRef::from_obj(binding.as_ref()));
                    }
                }
                was_fallback = fallback;
            }
            // A leader frozen past its Lease (SIGSTOP, a long pause) wakes up here before its
            // elector has noticed: it starts no poll the next leader makes too.
            if !fence.is_open() {
                continue;
            }
            let due = self.schedule.lock().expect("schedule lock").take_due(now);
            for key in due {
                let binding = bindings.get(&key);
                let workspace = binding.as_ref().and_then(|b| {
                    let namespace = b.namespace()?;
                    workspaces.get(&ObjectRef::new(&b.spec.workspace_ref.name).within(&namespace))
                });
                let (Some(binding), Some(workspace)) = (binding, workspace) else {
                    self.schedule.lock().expect("schedule lock").skip(&key, now + RECHECK_AFTER);
                    continue;
                };
                if workspace.spec.suspend || !validation_passed(&binding) {
                    self.schedule.lock().expect("schedule lock").skip(&key, now + RECHECK_AFTER);
                    continue;
                }
                let interval = Self::interval(&binding, Some(&workspace));
                let engine = self.clone();
                let (wake, fence) = (wake.clone(), fence.clone());
                polls.spawn(async move {
                    let _permit = engine.permits.clone().acquire_owned().await;
                    if !fence.is_open() {
                        engine.schedule.lock().expect("schedule lock").skip(&ObjectRef::from_obj(binding.as_ref()), Instant::now());
                        return;
                    }
                    let key = engine.poll_and_record(&binding, interval).await;
                    let _ = wake.send(key).await;
                });
            }
        }
    }

    /// Drops what the engine kept about bindings that no longer exist: their state, their
    /// metric series and their cache entries.
    fn forget_deleted(&self, known: &HashSet<ObjectRef<ToolBinding>>) {
        let gone = self.schedule.lock().expect("schedule lock").retain(known);
        for binding in gone {
            let namespace = binding.namespace.clone().unwrap_or_default();
            self.metrics.degraded.remove(&BindingLabels { namespace, name: binding.name.clone() });
            let cache = self.cache.clone();
            tokio::spawn(async move { cache.forget(&owner(&binding)).await });
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
        let token = self.credentials.read(&target).await.map_err(|e| (e.into(), None))?;
        let credential = Credential::new(binding.spec.provider, token.expose()).map_err(|e| (e, None))?;
        drop(token);
        let endpoint = binding.spec.endpoint.as_deref().or(providers::default_endpoint(binding.spec.provider)).unwrap_or_default();
        let endpoint = url::Url::parse(endpoint).map_err(|_| (ProviderError::Config("spec.endpoint is not a URL".into()), None))?;
        self.client.policy().check(&endpoint).await.map_err(|e| (e, None))?;
        let rate = binding.spec.rate_limit.clone().unwrap_or_default();
        let per_minute = rate.max_requests_per_minute.and_then(|n| u32::try_from(n).ok());
        let budget = {
            let mut schedule = self.schedule.lock().expect("schedule lock");
            match schedule.states.get_mut(&ObjectRef::from_obj(binding)) {
                Some(state) => {
                    let budget = state.budget.get_or_insert_with(|| Arc::new(Budget::new(per_minute)));
                    if budget.per_minute() != per_minute {
                        *budget = Arc::new(Budget::new(per_minute));
                    }
                    budget.clone()
                }
                None => Arc::new(Budget::new(per_minute)),
            }
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

/// A binding whose Secret or Workspace is missing is reported by validation, not polled.
fn validation_passed(binding: &ToolBinding) -> bool {
    let conditions = binding.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    crate::api::conditions::find(conditions, crate::api::conditions::CREDENTIALS_VALID)
        .is_none_or(|c| c.status != "False" || c.reason == status::REJECTED)
}

/// Whether the binding's status records a poll at or after the requested time (an
/// unparseable time counts as served: it cannot be compared, and the interval still polls).
fn request_served(binding: &ToolBinding, requested_at: &str) -> bool {
    let Ok(requested) = requested_at.parse::<jiff::Timestamp>() else { return true };
    binding.status.as_ref().and_then(|s| s.last_sync_time.as_ref()).is_some_and(|t| t.0 >= requested)
}

/// How long ago `at` was (zero for a time in the future).
fn age(at: jiff::Timestamp) -> Duration {
    Duration::try_from(jiff::Timestamp::now().duration_since(at)).unwrap_or_default()
}

/// The newest poll known (its status's, or one recorded in the shared cache for the same
/// generation) plus the interval, as an Instant.
fn warm_start_due(binding: &ToolBinding, polled: Option<Polled>, interval: Duration, now: Instant) -> Instant {
    let in_status = binding.status.as_ref().and_then(|s| s.last_sync_time.as_ref()).map(|t| t.0);
    let recorded = polled.filter(|p| p.generation == binding.metadata.generation).map(|p| p.at);
    match in_status.max(recorded) {
        Some(last) => now + interval.saturating_sub(age(last)),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, generation: i64) -> ToolBinding {
        let mut b: ToolBinding = serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap();
        b.metadata.name = Some(name.into());
        b.metadata.namespace = Some("team-a".into());
        b.metadata.generation = Some(generation);
        b.status = None;
        b
    }

    fn empty_record() -> SyncRecord {
        SyncRecord {
            attempted_at: Time(jiff::Timestamp::now()),
            succeeded_at: None,
            snapshot: None,
            error: None,
            rate_limit: None,
            unchanged: false,
        }
    }

    #[test]
    fn the_queue_hands_out_due_bindings_once_and_forgets_deleted_ones() {
        let now = Instant::now();
        let mut schedule = Schedule::default();
        let interval = Duration::from_secs(60);
        schedule.notice(&binding("a", 1), interval, now);
        schedule.notice(&binding("b", 1), interval, now);
        let (a, b) = (ObjectRef::from_obj(&binding("a", 1)), ObjectRef::from_obj(&binding("b", 1)));
        assert_eq!(schedule.take_due(now).len(), 2, "never synced: due at once");
        assert!(schedule.take_due(now).is_empty(), "in flight: not handed out twice");
        let record = empty_record();
        schedule.finish(&a, record.clone(), now + interval);
        schedule.finish(&b, record, now + interval);
        assert!(schedule.take_due(now + Duration::from_secs(59)).is_empty());
        schedule.notice(&binding("b", 2), interval, now);
        assert_eq!(schedule.take_due(now), std::slice::from_ref(&b), "a new generation is due at once");
        schedule.notice(&binding("b", 3), interval, now);
        schedule.finish(&b, SyncRecord { unchanged: true, ..schedule.states[&b].record.clone().unwrap() }, now + interval);
        assert_eq!(schedule.take_due(Instant::now()), std::slice::from_ref(&b), "changed while in flight: polled again at once");
        schedule.finish(&b, schedule.states[&b].record.clone().unwrap(), now + interval);
        assert_eq!(schedule.take_due(now + interval), [a.clone(), b.clone()], "due again one interval on");
        assert_eq!(schedule.retain(&HashSet::from([a.clone()])), [b]);
        assert_eq!(schedule.states.keys().collect::<Vec<_>>(), [&a]);
        assert!(schedule.queue.iter().all(|(_, _, name)| name == "a"));
    }

    fn synced_ago(mut b: ToolBinding, ago: Duration) -> ToolBinding {
        let at = jiff::Timestamp::now() - jiff::SignedDuration::try_from(ago).unwrap();
        b.status = Some(crate::api::ToolBindingStatus { last_sync_time: Some(Time(at)), ..Default::default() });
        b
    }

    fn polled_ago(ago: Duration, generation: i64) -> Polled {
        Polled { at: jiff::Timestamp::now() - jiff::SignedDuration::try_from(ago).unwrap(), generation: Some(generation) }
    }

    /// Issue 14: a leader died after a poll, before its status write. The poll it recorded
    /// in the shared cache, not the older `lastSyncTime`, sets when the next leader polls,
    /// whichever of the two it learns first.
    #[test]
    fn a_poll_recorded_in_the_cache_defers_a_warm_start_past_an_older_status() {
        let now = Instant::now();
        let interval = Duration::from_secs(300);
        let stale = synced_ago(binding("a", 1), Duration::from_secs(290));
        let key = ObjectRef::from_obj(&stale);
        let mut schedule = Schedule::default();
        schedule.notice(&stale, interval, now);
        assert!(schedule.states[&key].due <= now + Duration::from_secs(10), "status alone: due in 10 s");
        schedule.hint(key.clone(), polled_ago(Duration::from_secs(2), 1), now);
        assert!(schedule.states[&key].due >= now + Duration::from_secs(290), "noticed first, then the hint");
        assert!(schedule.take_due(now + Duration::from_secs(60)).is_empty());

        let mut schedule = Schedule::default();
        schedule.hint(key.clone(), polled_ago(Duration::from_secs(2), 1), now);
        schedule.notice(&stale, interval, now);
        assert!(schedule.states[&key].due >= now + Duration::from_secs(290), "the hint first, then noticed");

        let mut schedule = Schedule::default();
        schedule.hint(key.clone(), polled_ago(Duration::from_secs(2), 1), now);
        schedule.notice(&synced_ago(binding("a", 2), Duration::from_secs(290)), interval, now);
        assert!(schedule.states[&key].due <= now + Duration::from_secs(10), "a poll of an older spec does not count");

        let mut schedule = Schedule::default();
        schedule.notice(&synced_ago(binding("a", 1), Duration::from_secs(10)), interval, now);
        let due = schedule.states[&key].due;
        schedule.hint(key.clone(), polled_ago(Duration::from_secs(200), 1), now);
        assert_eq!(schedule.states[&key].due, due, "an older recorded poll does not bring the due time forward");
        assert_eq!(schedule.queue.len(), 1);
    }

    /// A replica that leads again must not act on the due times of its earlier term: another
    /// leader polled meanwhile (its poll recorded in the shared cache, its status write lost).
    #[test]
    fn a_new_term_forgets_the_due_times_of_an_earlier_one() {
        let now = Instant::now();
        let interval = Duration::from_secs(300);
        let b = synced_ago(binding("a", 1), Duration::from_secs(600));
        let key = ObjectRef::from_obj(&b);
        let mut schedule = Schedule::default();
        schedule.notice(&b, interval, now);
        assert_eq!(schedule.take_due(now), std::slice::from_ref(&key));
        // The first term ends with the binding due again 1 s on; the replica leads again later.
        schedule.finish(&key, empty_record(), now + Duration::from_secs(1));
        let later = now + Duration::from_secs(2);
        let mut stale = Schedule { states: HashMap::new(), queue: schedule.queue.clone(), polled: HashMap::new() };
        std::mem::swap(&mut stale.states, &mut schedule.states);
        stale.hint(key.clone(), polled_ago(Duration::from_secs(1), 1), later);
        assert_eq!(stale.take_due(later), std::slice::from_ref(&key), "without a new term: polled again 1 s after the other leader");

        schedule.new_term();
        schedule.hint(key.clone(), polled_ago(Duration::from_secs(1), 1), later);
        schedule.notice(&b, interval, later);
        assert!(schedule.take_due(later).is_empty());
        assert!(schedule.states[&key].due >= later + Duration::from_secs(298), "due one interval after the other leader's poll");
    }

    /// A leader frozen past its Lease wakes up with its fence closed: it starts no poll.
    #[tokio::test]
    async fn a_closed_fence_starts_no_poll() {
        use kube::runtime::{reflector, watcher};
        let mut b = binding("a", 1);
        b.spec.refresh_interval = Some("5m".into());
        let mut ws: Workspace = serde_norway::from_str(include_str!("../../tests/fixtures/workspace-basic.yaml")).unwrap();
        ws.metadata.name = Some(b.spec.workspace_ref.name.clone());
        ws.metadata.namespace = Some("team-a".into());
        let key = ObjectRef::from_obj(&b);
        for (fence, polled) in [(Fence::closed(), false), (Fence::always_open(), true)] {
            let (bindings, mut bindings_writer) = reflector::store::<ToolBinding>();
            bindings_writer.apply_watcher_event(&watcher::Event::Apply(b.clone()));
            let (workspaces, mut workspaces_writer) = reflector::store::<Workspace>();
            workspaces_writer.apply_watcher_event(&watcher::Event::Apply(ws.clone()));
            // No API server: a poll fails at reading its credential, and is finished all the same.
            let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
            let engine = Arc::new(
                Engine::new(Credentials::direct(kube), EngineConfig::default(), EngineMetrics::register(&mut Registry::default())).unwrap(),
            );
            let (wake, _woken) = mpsc::channel(16);
            let run = tokio::spawn(engine.clone().run(bindings, workspaces, wake, fence));
            tokio::time::sleep(Duration::from_millis(2500)).await;
            run.abort();
            let due = engine.next_poll(&key).expect("noticed at the first tick");
            let moved = due > Instant::now() + Duration::from_secs(200);
            assert_eq!(moved, polled, "fence open: {polled}; due in {:?}", due.saturating_duration_since(Instant::now()));
        }
    }

    #[test]
    fn webhook_requests_poll_at_once_but_at_most_once_per_gap() {
        let now = Instant::now();
        let mut schedule = Schedule::default();
        let interval = Duration::from_secs(600);
        let b = binding("a", 1);
        let key = ObjectRef::from_obj(&b);
        schedule.notice(&b, interval, now);
        assert_eq!(schedule.take_due(now).len(), 1);
        let record = empty_record();
        schedule.finish(&key, record.clone(), now + interval);
        // A new leader's first sight of a request its status already answers: nothing.
        schedule.request(&key, "2026-11-23T22:00:00Z", true, now);
        assert!(schedule.take_due(now + Duration::from_secs(60)).is_empty());
        // A new request: due once the gap since the last poll's start has passed.
        let later = now + Duration::from_secs(2);
        schedule.request(&key, "2026-11-23T22:00:01Z", false, later);
        assert!(schedule.take_due(later).is_empty(), "within the gap");
        assert_eq!(schedule.take_due(now + REQUESTED_POLL_GAP), std::slice::from_ref(&key));
        // Requests while in flight fold into one poll after the gap.
        let started = now + REQUESTED_POLL_GAP;
        for n in 2..50 {
            schedule.request(&key, &format!("2026-11-23T22:00:{n:02}Z"), false, started);
        }
        schedule.finish(&key, record, started + interval);
        assert_eq!(schedule.states[&key].due, started + REQUESTED_POLL_GAP, "one poll, after the gap, not the interval");
        assert_eq!(schedule.take_due(started + REQUESTED_POLL_GAP), std::slice::from_ref(&key));
        // The same value again (a resync) asks for nothing.
        schedule.finish(&key, schedule.states[&key].record.clone().unwrap(), started + interval);
        schedule.request(&key, "2026-11-23T22:00:49Z", false, started + interval / 2);
        assert!(schedule.take_due(started + interval / 2).is_empty());
    }

    #[test]
    fn a_request_is_served_by_a_poll_at_or_after_it() {
        let mut b = binding("a", 1);
        assert!(!request_served(&b, "2026-11-23T22:00:00Z"), "never polled");
        b.status = Some(crate::api::ToolBindingStatus {
            last_sync_time: Some(Time("2026-11-23T22:00:05Z".parse().unwrap())),
            ..Default::default()
        });
        assert!(request_served(&b, "2026-11-23T22:00:00Z"));
        assert!(request_served(&b, "2026-11-23T22:00:05Z"));
        assert!(!request_served(&b, "2026-11-23T22:00:06Z"));
        assert!(request_served(&b, "not a time"));
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
