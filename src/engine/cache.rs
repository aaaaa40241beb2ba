//! The engine's cache: upstream responses with their validators (ETag, Last-Modified) and the
//! rate-limit ledger. In memory by default; with Redis, written through to Redis so a new
//! leader starts warm. When Redis is unreachable the in-memory copy serves alone, the
//! fallback is reported, and Redis is used again once it answers.

use crate::providers::http::{CachedResponse, ResponseCache};
use crate::providers::ledger::LedgerEntry;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Entries kept in memory before the oldest half is dropped.
const MEMORY_LIMIT: usize = 20_000;
/// How long Redis keeps a response nobody asked for again.
const REDIS_TTL_SECONDS: u64 = 7 * 24 * 3600;

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
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    prefix: String,
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// Responses by key, each stamped with a use counter so the oldest can be evicted.
#[derive(Default)]
struct Responses {
    clock: u64,
    entries: HashMap<String, (u64, CachedResponse)>,
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

    /// A Redis-backed cache. Never fails: an unreachable Redis starts in fallback.
    pub fn redis(url: &str, prefix: &str, metrics: CacheMetrics) -> Result<Self, String> {
        // The URL may hold a password: the message never repeats it.
        let client = redis::Client::open(url).map_err(|e| format!("failed to parse the Redis URL ({:?})", e.kind()))?;
        let redis = Redis { client, connection: tokio::sync::Mutex::new(None), prefix: prefix.to_string() };
        Ok(Self::build(Some(redis), metrics))
    }

    fn build(redis: Option<Redis>, metrics: CacheMetrics) -> Self {
        Self { inner: Arc::new(Inner { responses: Mutex::new(Responses::default()), redis, fallback: AtomicBool::new(false), metrics }) }
    }

    pub fn uses_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// True while Redis is configured but unreachable.
    pub fn in_fallback(&self) -> bool {
        self.inner.fallback.load(Ordering::SeqCst)
    }

    fn set_fallback(&self, on: bool, why: Option<&redis::RedisError>) {
        let was = self.inner.fallback.swap(on, Ordering::SeqCst);
        self.inner.metrics.redis_fallback.set(i64::from(on));
        if on && !was {
            tracing::warn!(error = ?why.map(|e| e.kind()), "Redis unavailable; caching in memory until it returns");
        } else if !on && was {
            tracing::info!("Redis reachable again; cache shared once more");
        }
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let redis = self.inner.redis.as_ref()?;
        let mut guard = redis.connection.lock().await;
        if guard.is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1);
            match redis.client.get_connection_manager_with_config(config).await {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    self.set_fallback(true, Some(&e));
                    return None;
                }
            }
        }
        guard.clone()
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let prefix = self.inner.redis.as_ref().map(|r| r.prefix.as_str()).unwrap_or("hyperpage");
        format!("{prefix}:{kind}:{id}")
    }

    /// Runs a Redis command, switching to (or out of) fallback on the outcome.
    async fn with_redis<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(redis::aio::ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match op(connection).await {
            Ok(value) => {
                self.set_fallback(false, None);
                Some(value)
            }
            Err(e) => {
                self.set_fallback(true, Some(&e));
                None
            }
        }
    }

    pub async fn get_response(&self, id: &str) -> Option<CachedResponse> {
        let local = {
            let responses = self.inner.responses.lock().expect("cache lock");
            responses.entries.get(id).map(|(_, r)| r.clone())
        };
        let found = match (&local, self.uses_redis()) {
            (Some(_), _) | (None, false) => local,
            (None, true) => {
                let key = self.key("response", id);
                let raw: Option<Option<String>> = self.with_redis(|mut c| async move { c.get::<_, Option<String>>(key).await }).await;
                let found = raw.flatten().and_then(|s| serde_json::from_str::<CachedResponse>(&s).ok());
                if let Some(response) = &found {
                    self.remember(id, response.clone());
                }
                found
            }
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        self.inner.metrics.requests.get_or_create(&CacheLabels { result }).inc();
        found
    }

    fn remember(&self, id: &str, response: CachedResponse) {
        let mut responses = self.inner.responses.lock().expect("cache lock");
        responses.clock += 1;
        let clock = responses.clock;
        let map = &mut responses.entries;
        map.insert(id.to_string(), (clock, response));
        if map.len() > MEMORY_LIMIT {
            let mut ages: Vec<u64> = map.values().map(|(age, _)| *age).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            map.retain(|_, (age, _)| *age > cutoff);
        }
    }

    pub async fn put_response(&self, id: &str, response: CachedResponse) {
        self.remember(id, response.clone());
        if self.uses_redis() {
            let key = self.key("response", id);
            let value = serde_json::to_string(&response).expect("a cached response serializes");
            self.with_redis(|mut c| async move { c.set_ex::<_, _, ()>(key, value, REDIS_TTL_SECONDS).await }).await;
        }
    }

    pub async fn get_ledger(&self, credential: &str) -> Option<LedgerEntry> {
        if !self.uses_redis() {
            return None;
        }
        let key = self.key("ledger", credential);
        let raw: Option<Option<String>> = self.with_redis(|mut c| async move { c.get::<_, Option<String>>(key).await }).await;
        raw.flatten().and_then(|s| serde_json::from_str(&s).ok())
    }

    pub async fn put_ledger(&self, credential: &str, entry: &LedgerEntry) {
        if self.uses_redis() {
            let key = self.key("ledger", credential);
            let value = serde_json::to_string(entry).expect("a ledger entry serializes");
            self.with_redis(|mut c| async move { c.set_ex::<_, _, ()>(key, value, 24 * 3600).await }).await;
        }
    }

    /// While in fallback, checks every few seconds whether Redis answers again.
    pub async fn watch_redis(self) {
        if !self.uses_redis() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if self.in_fallback() || self.connection().await.is_none() {
                let _: Option<String> = self.with_redis(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await;
            }
        }
    }
}

impl ResponseCache for Cache {
    fn get_response<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<CachedResponse>> {
        Box::pin(Cache::get_response(self, key))
    }
    fn put_response<'a>(&'a self, key: &'a str, response: CachedResponse) -> BoxFuture<'a, ()> {
        Box::pin(Cache::put_response(self, key, response))
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

    #[tokio::test]
    async fn memory_cache_round_trips_and_counts() {
        let metrics = CacheMetrics::default();
        let cache = Cache::memory(metrics.clone());
        assert_eq!(cache.get_response("k").await, None);
        let response = CachedResponse { etag: Some("\"abc\"".into()), last_modified: None, body: "[]".into(), paging: Default::default() };
        cache.put_response("k", response.clone()).await;
        assert_eq!(cache.get_response("k").await, Some(response));
        assert_eq!(metrics.requests.get_or_create(&CacheLabels { result: "hit" }).get(), 1);
        assert_eq!(metrics.requests.get_or_create(&CacheLabels { result: "miss" }).get(), 1);
        assert!(!cache.in_fallback());
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_memory() {
        let metrics = CacheMetrics::default();
        // Port 1 on loopback: nothing listens there.
        let cache = Cache::redis("redis://127.0.0.1:1/", "test", metrics.clone()).unwrap();
        let response = CachedResponse { etag: None, last_modified: None, body: "{}".into(), paging: Default::default() };
        cache.put_response("k", response.clone()).await;
        assert!(cache.in_fallback());
        assert_eq!(metrics.redis_fallback.get(), 1);
        assert_eq!(cache.get_response("k").await, Some(response), "memory still serves");
    }
}
