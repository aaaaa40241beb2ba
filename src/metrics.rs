//! Prometheus metrics, all prefixed `hyperpage_`, served as OpenMetrics on the admin server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub kind: &'static str,
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

/// Every metric the operator emits. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub api_writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    pub leader_transitions: Counter,
    pub engine: crate::engine::EngineMetrics,
    pub webhook: crate::webhook::WebhookMetrics,
    pub notify: crate::notify::NotifyMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hyperpage");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconcile", "Reconciliations run, by controller", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register("reconcile_errors", "Reconciliations that failed, by controller and error category", reconcile_errors.clone());
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14)));
        registry.register("reconcile_duration_seconds", "Time one reconciliation took, by controller", reconcile_duration.clone());
        let api_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Mutating requests sent to the Kubernetes API, by controller, kind and verb; a converged cluster adds none",
            api_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease, else 0", leader.clone());
        let leader_transitions = Counter::default();
        registry.register("leader_transitions", "Times this replica became or stopped being the leader", leader_transitions.clone());
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: crate::VERSION }).set(1);
        registry.register("build_info", "The running hyperpage version", build_info);
        let engine = crate::engine::EngineMetrics::register(&mut registry);
        let webhook = crate::webhook::WebhookMetrics::register(&mut registry);
        let notify = crate::notify::NotifyMetrics::register(&mut registry);
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            api_writes,
            leader,
            leader_transitions,
            engine,
            webhook,
            notify,
        }
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn record_write(&self, controller: &'static str, kind: &'static str, verb: &'static str) {
        self.api_writes.get_or_create(&WriteLabels { controller, kind, verb }).inc();
    }

    /// Called when this replica stops leading: it polls nothing any more, so what it last saw
    /// of bindings, quotas and Redis would otherwise stay exported for as long as it runs, and
    /// `max by (namespace, name) (hyperpage_toolbinding_degraded)` would keep alerting on a
    /// binding the new leader finds healthy (or that was deleted since).
    pub fn forget_leader_state(&self) {
        self.engine.degraded.clear();
        self.engine.upstream.remaining.clear();
        self.engine.upstream.limit.clear();
        self.engine.cache.redis_fallback.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BindingLabels;

    #[test]
    fn a_replica_that_stops_leading_exports_nothing_it_saw_while_leading() {
        let metrics = Metrics::new();
        let binding = BindingLabels { namespace: "team".into(), name: "github".into() };
        metrics.engine.degraded.get_or_create(&binding).set(1);
        metrics.engine.cache.redis_fallback.set(1);
        metrics.reconciles.get_or_create(&ControllerLabels { controller: "workspace" }).inc();
        assert!(metrics.encode().contains("hyperpage_toolbinding_degraded{namespace=\"team\",name=\"github\"} 1"));

        metrics.forget_leader_state();
        let text = metrics.encode();
        assert!(!text.contains("hyperpage_toolbinding_degraded{"), "{text}");
        assert!(text.contains("hyperpage_redis_fallback 0"), "{text}");
        // Counters are history, not state: they stay.
        assert!(text.contains("hyperpage_reconcile_total{controller=\"workspace\"} 1"), "{text}");
    }
}
