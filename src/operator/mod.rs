//! `hyperpage operator`: leader election, the two controllers and the admin server.

pub mod cached;
pub mod child_cache;
pub mod children;
pub mod context;
pub mod diff;
pub mod error;
pub mod index;
pub mod policy;
pub mod portal_access;
pub mod scope;
pub mod toolbinding;
pub mod workspace;

#[cfg(test)]
mod tests;

use crate::admin::{self, Readiness};
use crate::api::{ToolBinding, Workspace};
use crate::engine::{Engine, EngineConfig};
use crate::lease::{Fence, FenceLayer, LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::providers::credential::{self, Credentials};
use child_cache::ChildCache;
use children::{BuildConfig, MANAGED_BY};
use context::{Context, Stores, object_key};
use error::Error;
use futures::{FutureExt, StreamExt};
use index::BindingIndex;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use scope::{Scope, WarmCache};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub admin_address: SocketAddr,
    /// `None`: this replica always acts (a single replica, or tests).
    pub lease: Option<LeaseConfig>,
    pub build: BuildConfig,
    pub resync: Duration,
    pub concurrency: u16,
    /// The aggregation engine's settings; `None` turns polling off.
    pub engine: Option<EngineConfig>,
    /// Namespaces to watch and act in; empty: the whole cluster.
    pub watch_namespaces: Vec<String>,
    /// The webhook receiver, served by every replica; `None`: off.
    pub webhook: Option<crate::webhook::WebhookConfig>,
}

/// Runs until SIGTERM/SIGINT.
/// `kube_config` is the cluster connection; the operator builds two clients from it: one for
/// its Lease, and one fenced client for everything else.
pub async fn run(kube_config: kube::Config, config: OperatorConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = Client::try_from(kube_config.clone())?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let admin_app = admin::router(metrics.clone(), readiness.clone());
    let listener = tokio::net::TcpListener::bind(config.admin_address).await?;
    tracing::info!(address = %config.admin_address, "admin server listening on /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, admin_app).await {
            tracing::error!(%error, "admin server stopped");
        }
    });

    if let Some(webhook) = config.webhook.clone() {
        // Every replica, with the unfenced client: a standby records a request too.
        let (client, metrics) = (client.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::webhook::run(client, webhook, metrics).await {
                tracing::error!(%error, "webhook receiver stopped");
            }
        });
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let (mut leading, fence, elector_task) = match &config.lease {
        Some(lease) => {
            let (elector, leading, fence) = LeaderElector::new(client.clone(), lease.clone(), metrics.clone());
            let mut rx = shutdown_rx.clone();
            let task = tokio::spawn(elector.run(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }));
            (leading, fence, Some(task))
        }
        None => {
            metrics.leader.set(1);
            let (_tx, rx) = watch::channel(true);
            // Keep the sender alive for the life of the process.
            std::mem::forget(_tx);
            (rx, Fence::always_open(), None)
        }
    };

    // The controllers' and the engine's requests pass the fence once more as they leave the
    // client, so a write queued before a freeze is not sent after it; the Lease client is not fenced.
    let fenced_client = kube::client::ClientBuilder::try_from(kube_config)?.with_layer(&FenceLayer(fence.clone())).build();

    // Every replica keeps the watch caches from its start (reads pass the fence).
    let (caches, drives) = Caches::start(&Scope::new(fenced_client.clone(), config.watch_namespaces.clone()));
    let drives = tokio::spawn(drives);
    let mut shutdown = shutdown_rx.clone();
    loop {
        // Standby: healthy and ready, waiting for the Lease.
        readiness.set(true);
        tokio::select! {
            result = leading.wait_for(|l| *l) => { if result.is_err() { break; } }
            _ = shutdown.wait_for(|s| *s) => break,
        }
        readiness.set(false);
        tracing::info!("starting controllers");
        let controllers = run_controllers(fenced_client.clone(), &config, &caches, fence.clone(), metrics.clone(), readiness.clone());
        tokio::select! {
            _ = controllers => tracing::warn!("controllers stopped"),
            _ = leading.wait_for(|l| !*l) => tracing::info!("lost leadership; controllers stopped"),
            _ = shutdown.wait_for(|s| *s) => {}
        }
        metrics.forget_leader_state();
        if *shutdown.borrow() {
            break;
        }
    }
    fence.close();
    drives.abort();
    if let Some(task) = elector_task {
        // The elector releases the Lease on shutdown; give it a moment to do so.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn managed_children() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

/// The watch caches, kept for the life of the process on every replica: a standby that takes
/// over has nothing to list, and its first pass over the objects finds them all current.
struct Caches {
    workspaces: WarmCache<Workspace>,
    bindings: WarmCache<ToolBinding>,
    bindings_by_workspace: BindingIndex,
    deployments: ChildCache<Deployment>,
    services: ChildCache<Service>,
    service_accounts: ChildCache<ServiceAccount>,
    roles: ChildCache<Role>,
    role_bindings: ChildCache<RoleBinding>,
    network_policies: ChildCache<NetworkPolicy>,
    ingresses: ChildCache<Ingress>,
    pod_disruption_budgets: ChildCache<PodDisruptionBudget>,
    /// Opted-in Secrets' metadata: the credential checks read it instead of the API server,
    /// and a change (deletes included) re-checks the bindings naming the Secret.
    opted_in_secrets: WarmCache<PartialObjectMeta<Secret>>,
}

impl Caches {
    /// The caches, and the future that keeps them all current.
    fn start(scope: &Scope) -> (Self, impl std::future::Future<Output = ()> + Send + use<>) {
        let all = watcher::Config::default;
        let (workspaces, ws) = scope.warm_cache(all());
        let bindings_by_workspace = BindingIndex::default();
        let index = bindings_by_workspace.clone();
        let (bindings, tb) = scope.warm_cache_following(all(), move |event, store| index.follow(event, || store.state()));
        let (deployments, deploy) = scope.child_cache(managed_children());
        let (services, svc) = scope.child_cache(managed_children());
        let (service_accounts, sa) = scope.child_cache(managed_children());
        let (roles, role) = scope.child_cache(managed_children());
        let (role_bindings, rb) = scope.child_cache(managed_children());
        let (network_policies, np) = scope.child_cache(managed_children());
        let (ingresses, ing) = scope.child_cache(managed_children());
        let (pod_disruption_budgets, pdb) = scope.child_cache(managed_children());
        let (opted_in_secrets, secrets) = scope.warm_cache(credential::opted_in());
        let drives = futures::future::join_all(vec![
            ws.boxed(),
            tb.boxed(),
            deploy.boxed(),
            svc.boxed(),
            sa.boxed(),
            role.boxed(),
            rb.boxed(),
            np.boxed(),
            ing.boxed(),
            pdb.boxed(),
            secrets.boxed(),
        ])
        .map(|_| ());
        let caches = Self {
            workspaces,
            bindings,
            bindings_by_workspace,
            deployments,
            services,
            service_accounts,
            roles,
            role_bindings,
            network_policies,
            ingresses,
            pod_disruption_budgets,
            opted_in_secrets,
        };
        (caches, drives)
    }

    fn stores(&self) -> Stores {
        Stores {
            workspaces: self.workspaces.store.clone(),
            bindings: self.bindings.store.clone(),
            bindings_by_workspace: self.bindings_by_workspace.clone(),
            deployments: self.deployments.clone(),
            services: self.services.clone(),
            service_accounts: self.service_accounts.clone(),
            roles: self.roles.clone(),
            role_bindings: self.role_bindings.clone(),
            network_policies: self.network_policies.clone(),
            ingresses: self.ingresses.clone(),
            pod_disruption_budgets: self.pod_disruption_budgets.clone(),
        }
    }
}

/// Runs both controllers, the engine and the notifier for one leadership term, until dropped.
async fn run_controllers(client: Client, config: &OperatorConfig, caches: &Caches, fence: Fence, metrics: Metrics, readiness: Readiness) {
    let stores = caches.stores();
    let (workspaces, bindings) = (stores.workspaces.clone(), stores.bindings.clone());
    let opted_in_secrets = caches.opted_in_secrets.store.clone();
    let credentials = Credentials::watched(client.clone(), opted_in_secrets.clone());
    let engine = match &config.engine {
        Some(engine_config) => match Engine::new(credentials.clone(), engine_config.clone(), metrics.engine.clone()) {
            Ok(engine) => Some(Arc::new(engine)),
            Err(error) => {
                tracing::error!(%error, "failed to start the aggregation engine; polling is off");
                None
            }
        },
        None => None,
    };
    // Nothing acts before every cache holds the cluster's state: a reconcile that ran earlier
    // would see children as missing and re-apply objects it has not looked at, so a new
    // leader would write on every takeover. The controllers still consume their watch streams
    // meanwhile (the shared caches must not wait for them); their reconciles wait here.
    let (synced_tx, synced_rx) = watch::channel(false);
    let ctx = Arc::new(
        Context::new(client.clone(), stores.clone(), config.build.clone(), fence, metrics, config.resync)
            .with_engine(engine.clone())
            .with_credentials(credentials),
    );
    // The engine wakes the ToolBinding controller when a poll finished.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<ObjectRef<ToolBinding>>(1024);
    let wakes = futures::stream::poll_fn(move |cx| wake_rx.poll_recv(cx));
    let polling = {
        let (bindings, workspaces, fence) = (bindings.clone(), workspaces.clone(), ctx.fence.clone());
        let mut synced = synced_rx.clone();
        async move {
            match engine {
                Some(engine) => {
                    let _ = synced.wait_for(|s| *s).await;
                    tracing::info!("aggregation engine started");
                    engine.run(bindings, workspaces, wake_tx, fence).await
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    // Leader only, like the controllers: messages on transitions (status.notifications).
    let notifier = {
        let (client, workspaces, bindings, mut synced) = (client.clone(), workspaces.clone(), bindings.clone(), synced_rx.clone());
        let policy = config.engine.as_ref().map(|e| e.client.policy.clone()).unwrap_or_default();
        let metrics = ctx.metrics.notify.clone();
        async move {
            let _ = synced.wait_for(|s| *s).await;
            crate::notify::run(client, workspaces, bindings, policy, metrics).await
        }
    };
    let controller_config = ControllerConfig::default().concurrency(config.concurrency);

    let workspace_controller = Controller::for_shared_stream(caches.workspaces.objects(), workspaces.clone())
        .reconcile_on(caches.deployments.owners_changed())
        .reconcile_on(caches.services.owners_changed())
        .reconcile_on(caches.service_accounts.owners_changed())
        .reconcile_on(caches.roles.owners_changed())
        .reconcile_on(caches.role_bindings.owners_changed())
        .reconcile_on(caches.network_policies.owners_changed())
        .reconcile_on(caches.ingresses.owners_changed())
        .reconcile_on(caches.pod_disruption_budgets.owners_changed())
        .reconcile_on(caches.workspaces.every(config.resync))
        .watches_shared_stream(caches.bindings.objects(), |binding: Arc<ToolBinding>| {
            binding.namespace().map(|ns| ObjectRef::<Workspace>::new(&binding.spec.workspace_ref.name).within(&ns))
        })
        .with_config(controller_config.clone())
        .run(after(synced_rx.clone(), workspace::reconcile), error_policy::<Workspace>, ctx.clone())
        .for_each(log_result("workspace"));

    let bindings_for_secret = bindings.clone();
    let bindings_for_workspace = stores.bindings_by_workspace.clone();
    let mut new_specs = SpecChanges::default();
    let known = workspaces.clone();
    let ws_spec_changes = caches.workspaces.objects().filter(move |ws| {
        // Deleted Workspaces are forgotten now and then (the object streams carry no deletes).
        new_specs.prune(|key| key.split_once('/').is_some_and(|(ns, name)| known.get(&ObjectRef::new(name).within(ns)).is_some()));
        std::future::ready(new_specs.changed(object_key(ws.as_ref()), ws.metadata.uid.clone(), ws.metadata.generation))
    });
    // A Secret that changed, lost its label or was deleted: the bindings naming it.
    let secret_changes = caches.opted_in_secrets.changed().flat_map(move |secret| {
        let ns = secret.namespace.clone().unwrap_or_default();
        futures::stream::iter(referencing(&bindings_for_secret, move |b| {
            b.metadata.namespace.as_deref() == Some(ns.as_str()) && b.spec.credentials_secret_ref.name == secret.name
        }))
    });
    let binding_controller = Controller::for_shared_stream(caches.bindings.objects(), bindings.clone())
        .watches_shared_stream(ws_spec_changes, move |ws: Arc<Workspace>| {
            bindings_for_workspace.bindings_of(ws.metadata.namespace.as_deref().unwrap_or_default(), &ws.name_any())
        })
        .reconcile_on(secret_changes)
        .reconcile_on(wakes)
        .reconcile_on(caches.bindings.every(config.resync))
        .with_config(controller_config)
        .run(after(synced_rx, toolbinding::reconcile), error_policy::<ToolBinding>, ctx.clone())
        .for_each(log_result("toolbinding"));

    let mark_synced = async move {
        caches_synced(&stores).await;
        let _ = opted_in_secrets.wait_until_ready().await;
        tracing::info!("caches synced");
        let _ = synced_tx.send(true);
        readiness.set(true);
        std::future::pending::<()>().await;
    };

    tokio::select! {
        _ = workspace_controller => {}
        _ = binding_controller => {}
        _ = mark_synced => {}
        _ = polling => {}
        _ = notifier => {}
    }
}

/// Which Workspace events concern its bindings: a new spec (generation), or one not seen
/// before — including one re-created under the same name (a new uid, generation 1 again). A binding reads only the Workspace's existence and spec; its status changes
/// several times while the portal rolls out, and each change used to cost a reconcile of
/// every binding of the Workspace (each reading its Secret twice).
#[derive(Default)]
struct SpecChanges {
    seen: std::collections::HashMap<String, (Option<String>, Option<i64>)>,
    prune_above: usize,
}

impl SpecChanges {
    fn changed(&mut self, key: String, uid: Option<String>, generation: Option<i64>) -> bool {
        let seen = (uid, generation);
        self.seen.insert(key, seen.clone()) != Some(seen)
    }

    /// Keeps only the keys `exists` confirms, once the map has doubled since the last time.
    fn prune(&mut self, exists: impl Fn(&str) -> bool) {
        if self.seen.len() > self.prune_above {
            self.seen.retain(|key, _| exists(key));
            self.prune_above = (2 * self.seen.len()).max(1024);
        }
    }
}

/// `reconcile`, held back until `synced` turns true.
fn after<K, F, Fut>(
    synced: watch::Receiver<bool>,
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object, ctx| {
        let mut synced = synced.clone();
        async move {
            let _ = synced.wait_for(|s| *s).await;
            reconcile(object, ctx).await
        }
        .boxed()
    }
}

/// Resolves once every watch cache has seen its first complete list.
async fn caches_synced(stores: &Stores) {
    let _ = futures::future::join(stores.workspaces.wait_until_ready(), stores.bindings.wait_until_ready()).await;
    futures::future::join_all([
        stores.deployments.wait_until_ready().boxed(),
        stores.services.wait_until_ready().boxed(),
        stores.service_accounts.wait_until_ready().boxed(),
        stores.roles.wait_until_ready().boxed(),
        stores.role_bindings.wait_until_ready().boxed(),
        stores.network_policies.wait_until_ready().boxed(),
        stores.ingresses.wait_until_ready().boxed(),
        stores.pod_disruption_budgets.wait_until_ready().boxed(),
    ])
    .await;
}

fn referencing(store: &Store<ToolBinding>, matches: impl Fn(&ToolBinding) -> bool) -> Vec<ObjectRef<ToolBinding>> {
    store.state().iter().filter(|b| matches(b)).map(|b| ObjectRef::from_obj(b.as_ref())).collect()
}

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let controller = if K::kind(&()) == "Workspace" { workspace::CONTROLLER } else { toolbinding::CONTROLLER };
    let key = object_key(object.as_ref());
    let wait = ctx.record_failure(controller, &key, error);
    if error.is_permanent() {
        tracing::error!(%error, object = %key, category = error.category(), "reconcile failed; waiting for a change");
        return Action::await_change();
    }
    tracing::warn!(%error, object = %key, category = error.category(), retry_in = ?wait, "reconcile failed; will retry");
    Action::requeue(wait)
}

fn log_result<T: Debug, E: std::fmt::Display>(controller: &'static str) -> impl FnMut(Result<T, E>) -> std::future::Ready<()> {
    move |result| {
        if let Err(error) = result {
            tracing::debug!(controller, %error, "controller event");
        }
        std::future::ready(())
    }
}
