//! The engine's cache: the pages providers extracted, with their validators (ETag,
//! Last-Modified), and the rate-limit ledger. In memory by default, within a byte budget;
//! with Redis, written through to Redis (each entry size-capped, with a TTL) so a new leader
//! starts warm. A deleted binding's entries are removed. When Redis is unreachable the
//! memory copy serves alone, every operation skips Redis at once (no waiting on a dead
//! server), and one probe every 2 s reconnects; the fallback is reported meanwhile.

use crate::providers::http::{CachedResponse, ResponseCache};
use crate::providers::ledger::LedgerEntry;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::AsyncCommands;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Bytes of cached pages kept in memory; the least recently used go first.
pub const MEMORY_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// A page larger than this is not written to Redis (it stays in memory only).
pub const REDIS_MAX_ENTRY_BYTES: usize = 256 * 1024;
/// How long Redis keeps an entry nobody wrote again: twice the longest refresh interval.
pub const REDIS_TTL_SECONDS: u64 = 48 * 3600;
/// How often the probe tries Redis while in fallback.
const PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CacheLabels {
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub requests: Family<CacheLabels, Counter>,
    pub redis_fallback: Gauge,
}

struct Redis {
    client: redis::Client,
    /// Held only to clone or replace the handle, never across a connect.
    connection: Mutex<Option<redis::aio::ConnectionManager>>,
    prefix: String,
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Entry {
    used: u64,
    response: CachedResponse,
}

impl Entry {
    fn bytes(key: &str, response: &CachedResponse) -> usize {
        key.len()
            + response.body.len()
            + response.etag.as_ref().map_or(0, String::len)
            + response.last_modified.as_ref().map_or(0, String::len)
            + response.paging.next.as_ref().map_or(0, String::len)
            + 64
    }
}

/// Pages by key, stamped with a use counter for eviction, and the keys of each binding.
#[derive(Default)]
struct Responses {
    clock: u64,
    bytes: usize,
    entries: HashMap<String, Entry>,
    owners: HashMap<String, HashSet<String>>,
}

impl Responses {
    fn insert(&mut self, key: &str, response: CachedResponse, owner: &str) {
        self.clock += 1;
        let size = Entry::bytes(key, &response);
        if let Some(old) = self.entries.insert(key.to_string(), Entry { used: self.clock, response }) {
            self.bytes -= Entry::bytes(key, &old.response);
        }
        self.bytes += size;
        self.owners.entry(owner.to_string()).or_default().insert(key.to_string());
        if self.bytes > MEMORY_BUDGET_BYTES {
            // Down to three quarters at once, so eviction is not paid on every insert.
            let mut by_age: Vec<(u64, String)> = self.entries.iter().map(|(k, e)| (e.used, k.clone())).collect();
            by_age.sort_unstable();
            for (_, key) in by_age {
                if self.bytes <= MEMORY_BUDGET_BYTES * 3 / 4 {
                    break;
                }
                self.remove(&key);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= Entry::bytes(key, &old.response);
        }
    }

    fn get(&mut self, key: &str) -> Option<CachedResponse> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.used = clock;
        Some(entry.response.clone())
    }
}

struct Inner {
    responses: Mutex<Responses>,
    redis: Option<Redis>,
    fallback: AtomicBool,
    metrics: CacheMetrics,
}

impl Cache {
    pub fn memory(metrics: CacheMetrics) -> Self {
        Self::build(None, metrics)
    }

    /// A Redis-backed cache. Never fails on an unreachable Redis: it starts in fallback and
    /// its probe (a task that ends with the cache) connects when Redis answers.
    pub fn redis(url: &str, prefix: &str, metrics: CacheMetrics) -> Result<Self, String> {
        // The URL may hold a password: the message never repeats it.
        let client = redis::Client::open(url).map_err(|e| format!("failed to parse the Redis URL ({:?})", e.kind()))?;
        let redis = Redis { client, connection: Mutex::new(None), prefix: prefix.to_string() };
        let cache = Self::build(Some(redis), metrics);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(Arc::downgrade(&cache.inner)));
        }
        Ok(cache)
    }

    fn build(redis: Option<Redis>, metrics: CacheMetrics) -> Self {
        let inner = Inner { responses: Mutex::new(Responses::default()), redis, fallback: AtomicBool::new(false), metrics };
        Self { inner: Arc::new(inner) }
    }

    pub fn uses_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// True while Redis is configured but unreachable.
    pub fn in_fallback(&self) -> bool {
        self.inner.fallback.load(Ordering::SeqCst)
    }

    /// Bytes of pages held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.inner.responses.lock().expect("cache lock").bytes
    }

    fn set_fallback(&self, on: bool, why: Option<&redis::RedisError>) {
        set_fallback(&self.inner, on, why);
    }

    /// The connection, unless in fallback (then nothing is tried: the probe reconnects).
    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let redis = self.inner.redis.as_ref()?;
        if self.in_fallback() {
            return None;
        }
        if let Some(c) = redis.connection.lock().expect("redis lock").clone() {
            return Some(c);
        }
        match connect(redis).await {
            Ok(c) => Some(c),
            Err(e) => {
                self.set_fallback(true, Some(&e));
                None
            }
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let prefix = self.inner.redis.as_ref().map(|r| r.prefix.as_str()).unwrap_or("hyperpage");
        format!("{prefix}:{kind}:{id}")
    }

    /// Runs a Redis command, switching to fallback when it fails.
    async fn with_redis<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: Fn(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        let result = match op(connection.clone()).await {
            // A connection that broke while unused (Redis restarted under a standby) fails its
            // first command, and the connection manager reconnects for the next: one retry
            // before falling back, or a new leader's warm start would lose the shared cache.
            Err(e) if e.is_connection_dropped() || e.is_io_error() => op(connection).await,
            other => other,
        };
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.set_fallback(true, Some(&e));
                None
            }
        }
    }

    pub async fn get_response(&self, id: &str, owner: &str) -> Option<CachedResponse> {
        let local = self.inner.responses.lock().expect("cache lock").get(id);
        let found = match (&local, self.uses_redis()) {
            (Some(_), _) | (None, false) => local,
            (None, true) => {
                let key = self.key("response", id);
                let key = &key;
                let raw: Option<Option<String>> = self.with_redis(|mut c| async move { c.get::<_, Option<String>>(key).await }).await;
                let found = raw.flatten().and_then(|s| serde_json::from_str::<CachedResponse>(&s).ok());
                if let Some(response) = &found {
                    self.inner.responses.lock().expect("cache lock").insert(id, response.clone(), owner);
                }
                found
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        self.inner.metrics.requests.get_or_create(&CacheLabels { result }).inc();
        found
    }

    pub async fn put_response(&self, id: &str, response: CachedResponse, owner: &str) {
        let value = serde_json::to_string(&response).expect("a cached response serializes");
        self.inner.responses.lock().expect("cache lock").insert(id, response, owner);
        if self.uses_redis() && value.len() <= REDIS_MAX_ENTRY_BYTES {
            self.set_owned(self.key("response", id), value, owner).await;
        }
    }

    /// Writes a key that belongs to a binding, and lists it under the binding for [`Cache::forget`].
    async fn set_owned(&self, key: String, value: String, owner: &str) {
        let (key, value, index) = (&key, &value, &self.key("owner", owner));
        self.with_redis(|mut c| async move {
            redis::pipe()
                .set_ex(key, value, REDIS_TTL_SECONDS)
                .sadd(index, key)
                .expire(index, REDIS_TTL_SECONDS as i64)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// Removes everything cached for a binding (`namespace/name`) that no longer exists.
    pub async fn forget(&self, owner: &str) {
        {
            let mut responses = self.inner.responses.lock().expect("cache lock");
            for key in responses.owners.remove(owner).unwrap_or_default() {
                responses.remove(&key);
            }
        }
        if self.uses_redis() {
            let index = &self.key("owner", owner);
            self.with_redis(|mut c| async move {
                let keys: Vec<String> = c.smembers(index).await?;
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.del(key);
                }
                pipe.del(index).query_async::<()>(&mut c).await
            })
            .await;
        }
    }

    pub async fn get_ledger(&self, credential: &str) -> Option<LedgerEntry> {
        if !self.uses_redis() {
            return None;
        }
        let key = &self.key("ledger", credential);
        let raw: Option<Option<String>> = self.with_redis(|mut c| async move { c.get::<_, Option<String>>(key).await }).await;
        raw.flatten().and_then(|s| serde_json::from_str(&s).ok())
    }

    pub async fn put_ledger(&self, credential: &str, entry: &LedgerEntry) {
        if self.uses_redis() {
            let key = self.key("ledger", credential);
            let value = serde_json::to_string(entry).expect("a ledger entry serializes");
            let (key, value) = (&key, &value);
            self.with_redis(|mut c| async move { c.set_ex::<_, _, ()>(key, value, 24 * 3600).await }).await;
        }
    }
}

/// When a binding was last polled, and for which generation of its spec: kept next to the
/// validators so that a new leader does not repeat a poll whose status write died with the
/// old leader (the status's `lastSyncTime` may be older).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Polled {
    pub at: jiff::Timestamp,
    pub generation: Option<i64>,
}

/// Keys fetched per MGET at a warm start.
const POLLED_BATCH: usize = 500;

impl Cache {
    /// Records a poll of `owner` (`namespace/name`); Redis only (a memory cache dies with
    /// its leader, so nothing would read it).
    pub async fn put_polled(&self, owner: &str, polled: Polled) {
        if !self.uses_redis() {
            return;
        }
        let value = serde_json::to_string(&polled).expect("a poll time serializes");
        self.set_owned(self.key("polled", owner), value, owner).await;
    }

    /// The recorded polls of these bindings (`namespace/name`), in batches; what Redis does
    /// not hold (or an unreachable Redis) is left out.
    pub async fn get_polled(&self, owners: &[String]) -> HashMap<String, Polled> {
        let mut found = HashMap::new();
        if !self.uses_redis() {
            return found;
        }
        for batch in owners.chunks(POLLED_BATCH) {
            let keys: &Vec<String> = &batch.iter().map(|owner| self.key("polled", owner)).collect();
            let values: Option<Vec<Option<String>>> =
                self.with_redis(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await }).await;
            let Some(values) = values else { break };
            for (owner, value) in batch.iter().zip(values) {
                if let Some(polled) = value.and_then(|v| serde_json::from_str(&v).ok()) {
                    found.insert(owner.clone(), polled);
                }
            }
        }
        found
    }
}

fn set_fallback(inner: &Inner, on: bool, why: Option<&redis::RedisError>) {
    let was = inner.fallback.swap(on, Ordering::SeqCst);
    inner.metrics.redis_fallback.set(i64::from(on));
    if on && !was {
        if let Some(redis) = &inner.redis {
            // The probe makes a fresh connection; operations stop trying this one.
            *redis.connection.lock().expect("redis lock") = None;
        }
        tracing::warn!(error = ?why.map(|e| e.kind()), "Redis unavailable; caching in memory until it returns");
    } else if !on && was {
        tracing::info!("Redis reachable again; cache shared once more");
    }
}

/// Connects and answers a PING; no lock is held meanwhile.
async fn connect(redis: &Redis) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    let mut connection = redis.client.get_connection_manager_with_config(config).await?;
    redis::cmd("PING").query_async::<String>(&mut connection).await?;
    *redis.connection.lock().expect("redis lock") = Some(connection.clone());
    Ok(connection)
}

/// The one task that reconnects while in fallback; it ends when the cache is dropped.
async fn probe(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(redis) = inner.redis.as_ref() else { return };
        if inner.fallback.load(Ordering::SeqCst) && connect(redis).await.is_ok() {
            set_fallback(&inner, false, None);
        }
    }
}

impl ResponseCache for Cache {
    fn get_response<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Option<CachedResponse>> {
        Box::pin(Cache::get_response(self, key, owner))
    }
    fn put_response<'a>(&'a self, key: &'a str, response: CachedResponse, owner: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Cache::put_response(self, key, response, owner))
    }
    fn get_ledger<'a>(&'a self, credential: &'a str) -> BoxFuture<'a, Option<LedgerEntry>> {
        Box::pin(Cache::get_ledger(self, credential))
    }
    fn put_ledger<'a>(&'a self, credential: &'a str, entry: &'a LedgerEntry) -> BoxFuture<'a, ()> {
        Box::pin(Cache::put_ledger(self, credential, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(body: &str) -> CachedResponse {
        CachedResponse { etag: Some("\"abc\"".into()), last_modified: None, body: body.into(), paging: Default::default() }
    }

    #[tokio::test]
    async fn memory_cache_round_trips_and_counts() {
        let metrics = CacheMetrics::default();
        let cache = Cache::memory(metrics.clone());
        assert_eq!(cache.get_response("k", "ns/b").await, None);
        cache.put_response("k", page("[]"), "ns/b").await;
        assert_eq!(cache.get_response("k", "ns/b").await, Some(page("[]")));
        assert_eq!(metrics.requests.get_or_create(&CacheLabels { result: "hit" }).get(), 1);
        assert_eq!(metrics.requests.get_or_create(&CacheLabels { result: "miss" }).get(), 1);
        assert!(!cache.in_fallback());
    }

    #[tokio::test]
    async fn memory_stays_within_its_byte_budget_and_keeps_the_recently_used() {
        let cache = Cache::memory(CacheMetrics::default());
        let big = "x".repeat(1024 * 1024);
        cache.put_response("first", page(&big), "ns/a").await;
        for n in 0..40 {
            cache.get_response("first", "ns/a").await;
            cache.put_response(&format!("k{n}"), page(&big), "ns/a").await;
        }
        assert!(cache.memory_bytes() <= MEMORY_BUDGET_BYTES, "{}", cache.memory_bytes());
        assert!(cache.get_response("first", "ns/a").await.is_some(), "recently used: kept");
        assert!(cache.get_response("k0", "ns/a").await.is_none(), "least recently used: evicted");
    }

    #[tokio::test]
    async fn a_deleted_bindings_entries_are_removed() {
        let cache = Cache::memory(CacheMetrics::default());
        cache.put_response("a1", page("[1]"), "ns/a").await;
        cache.put_response("b1", page("[2]"), "ns/b").await;
        cache.forget("ns/a").await;
        assert_eq!(cache.get_response("a1", "ns/a").await, None);
        assert!(cache.get_response("b1", "ns/b").await.is_some());
        assert_eq!(cache.memory_bytes(), Entry::bytes("b1", &page("[2]")));
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_memory_at_once() {
        let metrics = CacheMetrics::default();
        // Port 1 on loopback: nothing listens there.
        let cache = Cache::redis("redis://127.0.0.1:1/", "test", metrics.clone()).unwrap();
        cache.put_response("k", page("{}"), "ns/b").await;
        assert!(cache.in_fallback());
        assert_eq!(metrics.redis_fallback.get(), 1);
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(cache.get_response("k", "ns/b").await, Some(page("{}")), "memory still serves");
            cache.put_response("k", page("{}"), "ns/b").await;
        }
        assert!(started.elapsed() < Duration::from_millis(500), "no connect attempts in fallback: {:?}", started.elapsed());
    }
}
