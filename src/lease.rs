//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the holder of the Lease reconciles. The holder renews every `retry_period`; if it
//! cannot renew for `renew_deadline` it stops acting (the [`Fence`] closes on its own clock,
//! even while a renew request hangs) well before another replica may take over, which
//! happens only once the Lease record has stayed unchanged for `lease_duration` as observed
//! by that replica's own clock (so clock skew between nodes does not matter). On shutdown the
//! holder releases the Lease so a standby takes over at once; standbys watch the Lease to
//! notice that without waiting for their next poll. A deleted Lease counts as unchanged: its
//! last holder may still be acting, so nobody else re-creates it before it would have expired.

use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The timing rules that make fencing sound: the holder gives up before anyone may take over.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err("failed to configure leader election: --renew-deadline must be shorter than --lease-duration".into());
        }
        if self.retry_period >= self.renew_deadline {
            return Err("failed to configure leader election: --retry-period must be shorter than --renew-deadline".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("failed to configure leader election: --lease-duration must be at least 1s".into());
        }
        Ok(())
    }
}

/// Permission to write, held only while leadership is current.
///
/// Every mutating request of the reconcilers checks it first, so a replica that lost the
/// Lease makes no further writes even if a reconcile was already under way.
#[derive(Clone, Debug)]
pub struct Fence {
    leader_until: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    /// A fence that never closes: for `--leader-elect=false` and for tests.
    pub fn always_open() -> Self {
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        Self { leader_until: Arc::new(Mutex::new(Some(far))) }
    }

    pub fn closed() -> Self {
        Self { leader_until: Arc::new(Mutex::new(None)) }
    }

    pub fn is_open(&self) -> bool {
        let until = *self.leader_until.lock().expect("fence lock poisoned");
        until.is_some_and(|t| Instant::now() < t)
    }

    fn open_until(&self, until: Instant) {
        *self.leader_until.lock().expect("fence lock poisoned") = Some(until);
    }

    pub fn close(&self) {
        *self.leader_until.lock().expect("fence lock poisoned") = None;
    }

    fn deadline(&self) -> Option<Instant> {
        *self.leader_until.lock().expect("fence lock poisoned")
    }
}

/// Checks the [`Fence`] once more as a request leaves the client, after it waited in the
/// client's queue: a replica frozen between a reconcile's own check and the send (SIGSTOP, a
/// long pause) finds its fence closed on waking and the request is never sent. Reads pass.
#[derive(Clone, Debug)]
pub struct FenceLayer(pub Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FencedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FencedService { inner, fence: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct FencedService<S> {
    inner: S,
    fence: Fence,
}

/// The error a fenced write fails with; the reconcilers see it as a failed request.
#[derive(Debug, thiserror::Error)]
#[error("failed to send a write: this replica is not the leader")]
pub struct NotLeader;

impl<S, B> tower::Service<http::Request<B>> for FencedService<S>
where
    S: tower::Service<http::Request<B>, Error = tower::BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let read = matches!(*request.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
        if !read && !self.fence.is_open() {
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        Box::pin(self.inner.call(request))
    }
}

/// What a candidate should do with the Lease it just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// It is free, released or expired: take it.
    TakeOver,
    /// Someone else holds it and is alive.
    Follow,
}

/// The part of a Lease record whose change proves the holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
        }
    }
}

/// Pure decision: `unchanged_for` is how long this replica has seen the same record.
pub fn decide(spec: &LeaseSpec, identity: &str, unchanged_for: Duration, default_duration: Duration) -> Decision {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(_) => {
            let duration =
                spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs).unwrap_or(default_duration);
            if unchanged_for >= duration { Decision::TakeOver } else { Decision::Follow }
        }
    }
}

/// Pure decision for a Lease that is missing: whether this replica may create it. A deleted
/// Lease does not end its last holder's term: that holder keeps acting until its fence closes
/// on its own clock, so another replica re-creates the Lease only once the record it last saw
/// has been unchanged for the lease duration, as if the Lease had expired. When the last holder
/// seen was this replica, nobody, or no record was ever seen, it may at once.
pub fn may_create(last_holder: Option<&str>, unchanged_for: Duration, identity: &str, lease_duration: Duration) -> bool {
    match last_holder {
        Some(holder) if holder != identity => unchanged_for >= lease_duration,
        _ => true,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    fence: Fence,
    leading: watch::Sender<bool>,
    metrics: Metrics,
    observed: Option<(Record, Instant)>,
}

impl LeaderElector {
    /// Returns the elector, a receiver that tells whether this replica leads, and the fence.
    pub fn new(client: kube::Client, config: LeaseConfig, metrics: Metrics) -> (Self, watch::Receiver<bool>, Fence) {
        let api = Api::namespaced(client, &config.namespace);
        let fence = Fence::closed();
        let (leading, rx) = watch::channel(false);
        let elector = Self { api, config, fence: fence.clone(), leading, metrics, observed: None };
        (elector, rx, fence)
    }

    /// Campaigns and renews until `shutdown` resolves, then releases the Lease if held.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let watch_config = watcher::Config::default().fields(&format!("metadata.name={}", self.config.name));
        let mut lease_changes = watcher(self.api.clone(), watch_config).default_backoff().boxed();
        loop {
            let started = Instant::now();
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => {
                    self.fence.open_until(started + self.config.renew_deadline);
                    self.set_leading(true);
                }
                Ok(Ok(false)) => {
                    self.fence.close();
                    self.set_leading(false);
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.config.name, "failed to acquire or renew the leader lease");
                }
                Err(_) => tracing::warn!(lease = %self.config.name, "failed to renew the leader lease in time"),
            }
            if *self.leading.borrow() && !self.fence.is_open() {
                tracing::warn!("could not renew the leader lease before the renew deadline; stepping down");
                self.set_leading(false);
            }
            let leading = *self.leading.borrow();
            let fence_deadline = self.fence.deadline().unwrap_or_else(|| Instant::now() + self.config.lease_duration);
            tokio::select! {
                _ = &mut shutdown => {
                    if leading {
                        self.fence.close();
                        self.set_leading(false);
                        self.release().await;
                    }
                    return;
                }
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = tokio::time::sleep_until(fence_deadline), if leading => {}
                _ = lease_changes.next(), if !leading => {}
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        let changed = self.leading.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
        if changed {
            self.metrics.leader.set(i64::from(leading));
            self.metrics.leader_transitions.inc();
            if leading {
                tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became the leader");
            } else {
                tracing::info!(identity = %self.config.identity, lease = %self.config.name, "stopped leading");
            }
        }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let (last_holder, unchanged_for) = match &self.observed {
                Some((record, at)) => (record.holder.as_deref(), at.elapsed()),
                None => (None, Duration::MAX),
            };
            if !may_create(last_holder, unchanged_for, &self.config.identity, self.config.lease_duration) {
                return Ok(false);
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = Record::of(&spec);
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((record, now));
                now
            }
        };
        let decision = decide(&spec, &self.config.identity, observed_at.elapsed(), self.config.lease_duration);
        if decision == Decision::Follow {
            return Ok(false);
        }
        let taking_over = decision == Decision::TakeOver;
        let mut next = current.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if taking_over { Some(Self::now()) } else { spec.acquire_time.clone() },
            renew_time: Some(Self::now()),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(taking_over)),
            ..spec
        });
        // `replace` carries the resourceVersion we read: if anyone wrote in between, we lose.
        match self.api.replace(&self.config.name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands the Lease back so a standby need not wait for it to expire.
    async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(Self::now());
            self.api.replace(&self.config.name, &PostParams::default(), &lease).await.map(|_| ())
        };
        match tokio::time::timeout(self.config.retry_period, result).await {
            Ok(Ok(())) => tracing::info!(lease = %self.config.name, "released the leader lease"),
            Ok(Err(error)) => tracing::warn!(%error, "failed to release the leader lease; a standby takes over when it expires"),
            Err(_) => tracing::warn!("failed to release the leader lease in time; a standby takes over when it expires"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec { holder_identity: holder.map(str::to_string), lease_duration_seconds: Some(seconds), ..Default::default() }
    }

    const DEFAULT: Duration = Duration::from_secs(15);

    #[test]
    fn holder_renews_its_own_lease() {
        assert_eq!(decide(&spec(Some("a"), 15), "a", Duration::from_secs(60), DEFAULT), Decision::Renew);
    }

    #[test]
    fn a_live_holder_is_followed_until_its_record_is_stale_for_the_lease_duration() {
        assert_eq!(decide(&spec(Some("b"), 15), "a", Duration::from_secs(14), DEFAULT), Decision::Follow);
        assert_eq!(decide(&spec(Some("b"), 15), "a", Duration::from_secs(15), DEFAULT), Decision::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        assert_eq!(decide(&spec(None, 1), "a", Duration::ZERO, DEFAULT), Decision::TakeOver);
        assert_eq!(decide(&spec(Some(""), 1), "a", Duration::ZERO, DEFAULT), Decision::TakeOver);
    }

    #[test]
    fn a_deleted_lease_is_re_created_by_another_replica_only_after_the_lease_duration() {
        let duration = Duration::from_secs(6);
        // The chaos suite's delete-lease fault: the last holder b may act until its own fence
        // closes, so a takes nothing before b's record would have expired.
        assert!(!may_create(Some("b"), Duration::from_millis(300), "a", duration));
        assert!(!may_create(Some("b"), Duration::from_millis(5999), "a", duration));
        assert!(may_create(Some("b"), duration, "a", duration));
        // The holder itself re-creates it at once and keeps leading; so does anyone after a
        // release or without a record seen.
        assert!(may_create(Some("a"), Duration::ZERO, "a", duration));
        assert!(may_create(None, Duration::ZERO, "a", duration));
    }

    #[test]
    fn timing_that_would_break_fencing_is_refused() {
        let ok = LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert!(ok.validate().is_ok());
        let bad = LeaseConfig { renew_deadline: Duration::from_secs(15), ..ok.clone() };
        assert!(bad.validate().is_err());
        let bad = LeaseConfig { retry_period: Duration::from_secs(10), ..ok };
        assert!(bad.validate().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_on_its_own_at_the_deadline() {
        let fence = Fence::closed();
        assert!(!fence.is_open());
        fence.open_until(Instant::now() + Duration::from_secs(10));
        assert!(fence.is_open());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!fence.is_open(), "a leader that could not renew must stop writing by itself");
    }

    /// A service that answers 200 to whatever reaches it, counting the requests.
    fn counting() -> (impl tower::Service<http::Request<()>, Response = u16, Error = tower::BoxError, Future: Send> + Clone, Arc<Mutex<u32>>)
    {
        let sent = Arc::new(Mutex::new(0));
        let counter = sent.clone();
        let service = tower::service_fn(move |_: http::Request<()>| {
            *counter.lock().unwrap() += 1;
            std::future::ready(Ok::<u16, tower::BoxError>(200))
        });
        (service, sent)
    }

    fn request(method: http::Method) -> http::Request<()> {
        http::Request::builder().method(method).uri("/apis/apps/v1/namespaces/a/deployments/x").body(()).unwrap()
    }

    #[tokio::test]
    async fn a_closed_fence_stops_writes_as_they_leave_the_client_and_lets_reads_pass() {
        use tower::{Layer, Service};
        let fence = Fence::closed();
        let (inner, sent) = counting();
        let mut service = FenceLayer(fence.clone()).layer(inner);
        for method in [http::Method::PATCH, http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            let error = service.call(request(method)).await.unwrap_err();
            assert!(error.is::<NotLeader>(), "{error}");
        }
        assert_eq!(*sent.lock().unwrap(), 0, "no write reached the connection");
        assert_eq!(service.call(request(http::Method::GET)).await.unwrap(), 200);
        assert_eq!(*sent.lock().unwrap(), 1);

        fence.open_until(Instant::now() + Duration::from_secs(10));
        assert_eq!(service.call(request(http::Method::PATCH)).await.unwrap(), 200);
        assert_eq!(*sent.lock().unwrap(), 2, "the leader's write is sent");
    }
}
