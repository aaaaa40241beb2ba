//! One size N: cold convergence, memory, converged resync, API load and leader failover of
//! the real `hyperpage operator` binary, then the reference client in the same cluster.

use crate::audit::{Entry, Log, tally};
use futures::{StreamExt, TryStreamExt};
use hyperpage::api::{ToolBinding, Workspace, conditions};
use hyperpage::operator::children::{self, BuildConfig, MANAGED_BY};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const IMAGE: &str = "ghcr.io/hyperpage-dev/hyperpage:bench";
const PER_NAMESPACE: usize = 100;
const BENCH_MANAGER: &str = "hyperpage-bench";
const REFERENCE_MANAGER: &str = "hyperpage-bench-reference";

#[derive(clap::Args)]
pub struct Args {
    /// Workspaces (each with one GitHub ToolBinding), 100 per namespace.
    #[arg(long)]
    n: usize,
    /// Where the results go (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The release `hyperpage` binary.
    #[arg(long, env = "HYPERPAGE_BENCH_BIN")]
    bin: PathBuf,
    /// The API server's audit log (e2e/cluster.sh writes it).
    #[arg(long, env = "HYPERPAGE_E2E_AUDIT_LOG")]
    audit_log: PathBuf,
    /// The --resync of the replica the converged-resync row watches for three periods (the
    /// cold start runs with the operator's default, as installed).
    #[arg(long, default_value_t = 20)]
    resync_secs: u64,
    /// Failover trials per signal (SIGTERM, SIGKILL), within --failover-budget-secs.
    #[arg(long, default_value_t = 20)]
    failover_trials: usize,
    #[arg(long, default_value_t = 600)]
    failover_budget_secs: u64,
    /// Run the reference client (off: the ratio is not measured at this size).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    reference: bool,
    /// The operator's --concurrency, and the reference client's.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Where the operators' logs go.
    #[arg(long, default_value = "bench/.run")]
    run_dir: PathBuf,
}

/// Everything measured at one N (bench/results/N.json).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub n: usize,
    pub namespaces: usize,
    pub setup_seconds: f64,
    pub cold: Cold,
    pub memory: Memory,
    pub resync: Resync,
    pub api_load: ApiLoad,
    pub failover: Vec<Trial>,
    pub reference: Reference,
    /// Every row of this size was measured (false: the file was saved after an earlier row
    /// and the run stopped before the rest).
    #[serde(default)]
    pub complete: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cold {
    /// Start → every Workspace has a status for its generation (so all its children were
    /// applied first) and every ToolBinding is Ready=True: the operator's own work.
    pub applied_seconds: Option<f64>,
    /// Start → every Workspace Ready=True (also waits for the cluster to run the pods).
    pub ready_seconds: Option<f64>,
    /// The operator's mutating requests during the cold start, per `verb resource`.
    pub writes: BTreeMap<String, u64>,
    pub writes_total: u64,
    pub events: u64,
    /// CPU time (user + system) the operator process used until its work was done: whether
    /// it competes with the API server for the machine's cores.
    #[serde(default)]
    pub operator_cpu_seconds: Option<f64>,
    /// Reconciles per controller until the work was done (the operator's own counters).
    #[serde(default)]
    pub reconciles: BTreeMap<String, u64>,
    /// The cluster's own writes until the work was done, per client ([`Log::cluster_writes`]).
    #[serde(default)]
    pub cluster_writes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Workspaces + ToolBindings + labelled children in the cluster (what the caches hold).
    pub cached_objects: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Resync {
    pub period_seconds: u64,
    pub watched_seconds: f64,
    pub writes: BTreeMap<String, u64>,
    pub writes_total: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiLoad {
    pub seconds: f64,
    /// The leader's reads per `verb resource` from its start to the end of the resync row.
    pub requests: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    pub signal: String,
    /// Signal → the new leader's first Lease write (its acquisition).
    pub lease_ms: Option<f64>,
    /// Signal → the new leader's first write of anything else (the changed Workspace's).
    pub first_write_ms: Option<f64>,
    /// Non-Lease writes by the deposed leader after the signal.
    pub deposed_writes: u64,
    /// Status writes by the new leader for Workspaces/ToolBindings other than the changed one.
    pub unchanged_status_writes: u64,
    /// Any other write by the new leader not about the changed Workspace (Events aside).
    pub unrelated_writes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reference {
    /// The same children, server-side applied by a trivial kube-rs client with the same
    /// concurrency, into namespaces of their own in the same cluster.
    pub seconds: f64,
    pub applies: u64,
    /// The cluster's own writes while the reference ran, per client ([`Log::cluster_writes`]).
    #[serde(default)]
    pub cluster_writes: BTreeMap<String, u64>,
}

fn namespace_of(prefix: &str, i: usize) -> String {
    format!("{prefix}-{:03}", i / PER_NAMESPACE)
}

fn workspace_name(i: usize) -> String {
    format!("ws-{i:05}")
}

fn log(message: impl AsRef<str>) {
    eprintln!("[bench {}] {}", jiff::Timestamp::now().strftime("%H:%M:%S"), message.as_ref());
}

pub async fn run(args: Args) -> Result<(), BoxError> {
    let client = Client::try_default().await?;
    let audit = Log::new(&args.audit_log);
    std::fs::create_dir_all(&args.run_dir)?;
    let n = args.n;
    let mut outcome = Outcome { n, namespaces: n.div_ceil(PER_NAMESPACE), ..Default::default() };

    log(format!("N={n}: creating {n} Workspaces and ToolBindings in {} namespaces", outcome.namespaces));
    let started = Instant::now();
    create_objects(&client, "bench", n, true).await?;
    outcome.setup_seconds = started.elapsed().as_secs_f64();

    let watch = Watch::start(client.clone());
    watch.wait_for(|ws, _| ws.len() >= n, Duration::from_secs(120)).await;

    // Cold convergence: the operator starts after every object exists.
    let offset = audit.offset();
    let started = Instant::now();
    let leader = Replica::start(&args, "bench-a", None)?;
    let timeout = Duration::from_secs(180 + n as u64);
    // 10 ms at N = 100, 1 s at 10,000: under a thousandth of the time measured, and at most
    // one look (a scan of 2N objects) per settle. At 10,000 a settle of 100 ms made the bench
    // take a tenth of a core from the cluster it measures.
    let settle = Duration::from_micros((n as u64 * 100).max(10_000));
    let mut applied = None;
    let mut applied_offset = None;
    while started.elapsed() < timeout {
        let p = watch.progress("bench");
        if applied.is_none() && p.statused >= n && p.bindings_ready >= n {
            applied = Some(started.elapsed().as_secs_f64());
            applied_offset = Some(audit.offset());
            outcome.cold.operator_cpu_seconds = leader.cpu_seconds();
            outcome.cold.reconciles = leader.reconciles().await;
            log(format!(
                "N={n}: operator's work done in {:.1}s, {:.1}s of CPU",
                applied.unwrap_or_default(),
                outcome.cold.operator_cpu_seconds.unwrap_or_default()
            ));
        }
        if applied.is_some() && p.ready >= n {
            outcome.cold.ready_seconds = Some(started.elapsed().as_secs_f64());
            log(format!("N={n}: all Workspaces Ready in {:.1}s", started.elapsed().as_secs_f64()));
            break;
        }
        if !leader.alive() {
            return Err("the operator exited during the cold start".into());
        }
        watch.changed(settle, Duration::from_millis(250)).await;
    }
    outcome.cold.applied_seconds = applied;
    outcome.cold.cluster_writes = audit.cluster_writes(offset, applied_offset.unwrap_or_else(|| audit.offset()));
    let entries = audit.operator_entries(offset);
    let writes: Vec<&Entry> = entries.iter().filter(|e| e.by("bench-a") && e.is_write() && !e.is_lease()).collect();
    outcome.cold.writes_total = writes.len() as u64;
    outcome.cold.events = writes.iter().filter(|e| e.object_ref.resource == "events").count() as u64;
    outcome.cold.writes = tally(writes);

    // Memory once it settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_kib, hwm_kib) = leader.memory().ok_or("the operator's /proc status is unreadable")?;
    outcome.memory = Memory { rss_kib, hwm_kib, cached_objects: cached_objects(&client).await? };
    log(format!("N={n}: RSS {} MiB, peak {} MiB, {} cached objects", rss_kib / 1024, hwm_kib / 1024, outcome.memory.cached_objects));

    // API load: the leader's reads since it started.
    let all = audit.operator_entries(offset);
    outcome.api_load = ApiLoad {
        seconds: started.elapsed().as_secs_f64(),
        requests: tally(all.iter().filter(|e| e.by("bench-a") && !e.is_write() && !e.is_lease())),
    };

    save(&args.out, &outcome)?;

    // Converged resync: a replica with a short --resync takes over from the first (SIGTERM)
    // and is watched for three of its periods; no writes expected, the takeover's included.
    let mut first = leader;
    let leader = Replica::start(&args, "bench-r", Some(args.resync_secs))?;
    if !leader.wait_ready(Duration::from_secs(120)).await {
        return Err("the resync replica never became ready".into());
    }
    let resync_offset = audit.offset();
    let resync_started = Instant::now();
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(15)).await;
    drop(first);
    log(format!("N={n}: a replica with --resync {}s took over; watching 3 of its periods", args.resync_secs));
    tokio::time::sleep(Duration::from_secs(3 * args.resync_secs + 5)).await;
    let resync_entries = audit.operator_entries(resync_offset);
    let writes: Vec<&Entry> = resync_entries.iter().filter(|e| e.by("bench-r") && e.is_write() && !e.is_lease()).collect();
    outcome.resync = Resync {
        period_seconds: args.resync_secs,
        watched_seconds: resync_started.elapsed().as_secs_f64(),
        writes_total: writes.len() as u64,
        writes: tally(writes),
    };

    save(&args.out, &outcome)?;

    if args.failover_trials > 0 {
        outcome.failover = failover(&args, &client, &audit, &watch, leader).await?;
        save(&args.out, &outcome)?;
    } else {
        drop(leader);
    }

    if !args.reference {
        outcome.complete = true;
        save(&args.out, &outcome)?;
        log(format!("N={n}: no reference at this size; results in {}", args.out.display()));
        return Ok(());
    }
    // The reference, with no operator running.
    log(format!("N={n}: reference client"));
    create_objects(&client, "ref", n, false).await?;
    watch
        .wait_for(
            |ws, _| ws.iter().filter(|w| w.namespace().is_some_and(|ns| ns.starts_with("ref-"))).count() >= n,
            Duration::from_secs(120),
        )
        .await;
    let reference_offset = audit.offset();
    outcome.reference = reference(&client, &watch.workspaces, args.concurrency).await?;
    outcome.reference.cluster_writes = audit.cluster_writes(reference_offset, audit.offset());
    log(format!("N={n}: reference {} applies in {:.1}s", outcome.reference.applies, outcome.reference.seconds));

    outcome.complete = true;
    save(&args.out, &outcome)?;
    log(format!("N={n}: results in {}", args.out.display()));
    Ok(())
}

/// The results so far: each row is kept as soon as it is measured, so a run stopped later
/// (the reference at N = 10,000 alone took 23 to 66 minutes, depending on the machine) still reports what it measured.
fn save(out: &std::path::Path, outcome: &Outcome) -> Result<(), BoxError> {
    std::fs::write(out, serde_json::to_string_pretty(outcome)?)?;
    Ok(())
}

/// Namespaces (with a labelled GitHub token Secret when there are bindings), Workspaces and
/// ToolBindings, applied 16 at a time.
async fn create_objects(client: &Client, prefix: &str, n: usize, bindings: bool) -> Result<(), BoxError> {
    let params = PatchParams::apply(BENCH_MANAGER).force();
    for ns in 0..n.div_ceil(PER_NAMESPACE) {
        let name = namespace_of(prefix, ns * PER_NAMESPACE);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(&name, &params, &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})))
            .await?;
        if bindings {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &name);
            let secret = serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "github-token", "labels": {hyperpage::providers::credential::LABEL: "true"}},
                "stringData": {"token": "bench-token-not-used"},
            });
            secrets.patch("github-token", &params, &Patch::Apply(secret)).await?;
        }
    }
    futures::stream::iter(0..n)
        .map(|i| {
            let (client, params) = (client.clone(), params.clone());
            async move {
                let ns = namespace_of(prefix, i);
                let name = workspace_name(i);
                let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns);
                let ws = serde_json::json!({
                    "apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace",
                    "metadata": {"name": name},
                    "spec": {"displayName": format!("Team {i}"), "portal": {"replicas": 1}},
                });
                workspaces.patch(&name, &params, &Patch::Apply(ws)).await?;
                if bindings {
                    let api: Api<ToolBinding> = Api::namespaced(client, &ns);
                    let binding = serde_json::json!({
                        "apiVersion": "hyperpage.dev/v1alpha1", "kind": "ToolBinding",
                        "metadata": {"name": format!("{name}-github")},
                        "spec": {
                            "workspaceRef": {"name": name}, "provider": "github",
                            "credentialsSecretRef": {"name": "github-token", "key": "token"},
                            "github": {"repositories": [format!("acme/service-{i}")]},
                        },
                    });
                    api.patch(&format!("{name}-github"), &params, &Patch::Apply(binding)).await?;
                }
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// Workspaces and ToolBindings as the bench sees them (its own watches).
struct Watch {
    workspaces: Store<Workspace>,
    bindings: Store<ToolBinding>,
    /// Woken by every watch event of either, so a wait ends at the event that completes it
    /// rather than at the next poll.
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Progress {
    statused: usize,
    ready: usize,
    bindings_ready: usize,
}

impl Watch {
    fn start(client: Client) -> Self {
        fn cache<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        {
            let (reader, writer) = reflector::store();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
            tokio::spawn(stream.for_each(move |_| {
                changed.notify_one();
                std::future::ready(())
            }));
            reader
        }
        let changed = Arc::new(Notify::new());
        Self { workspaces: cache(Api::all(client.clone()), changed.clone()), bindings: cache(Api::all(client), changed.clone()), changed }
    }

    /// Until the next watch event (or `at_most`), then `settle` more so that a burst of
    /// events is looked at once: a look scans every object, and at N = 10,000 looking at each
    /// event would take the machine's CPU from what is measured.
    async fn changed(&self, settle: Duration, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.changed.notified()).await;
        tokio::time::sleep(settle).await;
    }

    async fn wait_for(&self, done: impl Fn(&[Arc<Workspace>], &[Arc<ToolBinding>]) -> bool, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout && !done(&self.workspaces.state(), &self.bindings.state()) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn progress(&self, prefix: &str) -> Progress {
        let mine = |ns: Option<String>| ns.is_some_and(|ns| ns.starts_with(prefix));
        let mut p = Progress::default();
        for ws in self.workspaces.state().iter().filter(|w| mine(w.namespace())) {
            if let Some(status) = &ws.status {
                if status.observed_generation.is_some() && status.observed_generation == ws.metadata.generation {
                    p.statused += 1;
                }
                if conditions::is_true(&status.conditions, conditions::READY) {
                    p.ready += 1;
                }
            }
        }
        p.bindings_ready = self
            .bindings
            .state()
            .iter()
            .filter(|b| mine(b.namespace()) && b.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY)))
            .count();
        p
    }
}

/// Workspaces + ToolBindings + every labelled child: what the operator's caches hold.
async fn cached_objects(client: &Client) -> Result<u64, BoxError> {
    async fn count<K>(client: &Client, labelled: bool) -> Result<u64, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let api: Api<K> = Api::all(client.clone());
        let params =
            if labelled { ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)) } else { ListParams::default() };
        Ok(api.list_metadata(&params).await?.items.len() as u64)
    }
    let counts = [
        count::<Workspace>(client, false).await?,
        count::<ToolBinding>(client, false).await?,
        count::<Deployment>(client, true).await?,
        count::<Service>(client, true).await?,
        count::<ServiceAccount>(client, true).await?,
        count::<Role>(client, true).await?,
        count::<RoleBinding>(client, true).await?,
        count::<NetworkPolicy>(client, true).await?,
        count::<Ingress>(client, true).await?,
        count::<PodDisruptionBudget>(client, true).await?,
    ];
    Ok(counts.iter().sum())
}

/// One `hyperpage operator` process with leader election on.
struct Replica {
    identity: String,
    admin_port: u16,
    child: Child,
}

impl Replica {
    /// `resync`: its --resync in seconds; `None`: the operator's default.
    fn start(args: &Args, identity: &str, resync: Option<u64>) -> Result<Self, BoxError> {
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(args.run_dir.join(format!("{identity}.log")))?;
        let child = Command::new(&args.bin)
            .args(["operator", "--admin-address", &format!("127.0.0.1:{admin_port}"), "--identity", identity])
            .args(["--lease-name", "hyperpage-bench", "--lease-namespace", "default"])
            .args(["--lease-duration", "6s", "--renew-deadline", "4s", "--retry-period", "1s"])
            .args(["--portal-image", IMAGE, "--polling=false"])
            .args(resync.map(|secs| ["--resync".to_string(), format!("{secs}s")]).into_iter().flatten())
            .args(["--concurrency", &args.concurrency.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        Ok(Self { identity: identity.to_string(), admin_port, child })
    }

    fn alive(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.child.id())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|s| s.contains(") Z "))
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |name: &str| status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok();
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU time so far (/proc/PID/stat fields 14 and 15, in clock ticks).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name may hold spaces: the fields counted from after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let per_second = Command::new("getconf").arg("CLK_TCK").output().ok()?;
        let per_second: f64 = String::from_utf8_lossy(&per_second.stdout).trim().parse().ok()?;
        (per_second > 0.0).then(|| ticks as f64 / per_second)
    }

    /// The operator's reconcile counters, per controller (`hyperpage_reconcile_total`).
    async fn reconciles(&self) -> BTreeMap<String, u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut body = String::new();
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await
            && stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_ok()
        {
            let _ = stream.read_to_string(&mut body).await;
        }
        body.lines()
            .filter_map(|line| line.strip_prefix("hyperpage_reconcile_total{controller=\""))
            .filter_map(|rest| {
                let (controller, value) = rest.split_once("\"} ")?;
                Some((controller.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// `/readyz` answers 200: a standby, or a leader whose caches synced.
    async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await else { return false };
        if stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
    }

    async fn wait_ready(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.ready().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn wait_exit(&mut self, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Leader failover trials: the leader gets SIGTERM or SIGKILL and, at the same moment, one
/// Workspace's spec changes, so the new leader has exactly one thing to write.
async fn failover(args: &Args, client: &Client, audit: &Log, watch: &Watch, first: Replica) -> Result<Vec<Trial>, BoxError> {
    let mut trials = Vec::new();
    let mut leader = first;
    let mut standby = Replica::start(args, "bench-b", None)?;
    if !standby.wait_ready(Duration::from_secs(60)).await {
        return Err("the standby replica never became ready".into());
    }
    let started = Instant::now();
    let budget = Duration::from_secs(args.failover_budget_secs);
    for trial in 0..2 * args.failover_trials {
        if started.elapsed() > budget {
            log(format!("failover: time budget spent after {trial} trials"));
            break;
        }
        let signal = if trial % 2 == 0 { "TERM" } else { "KILL" };
        let i = (trial * 37 + 11) % args.n;
        let (ns, name) = (namespace_of("bench", i), workspace_name(i));
        let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns);
        let current = workspaces.get(&name).await?;
        let replicas = if current.spec.portal.replicas == 1 { 2 } else { 1 };

        let offset = audit.offset();
        let signalled = jiff::Timestamp::now();
        leader.signal(signal);
        let patch = serde_json::json!({"spec": {"portal": {"replicas": replicas}}});
        let changed = workspaces.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let generation = changed.metadata.generation;
        leader.wait_exit(Duration::from_secs(15)).await;
        let key = (ns.clone(), name.clone());
        // Until the change is rolled out (Ready again with every pod of the new replica count),
        // so the next trial's takeover finds nothing of this one still moving: a status write
        // for this Workspace then would be counted there as one for an unchanged object.
        watch
            .wait_for(
                |ws, _| {
                    ws.iter().any(|w| {
                        (w.namespace().unwrap_or_default(), w.name_any()) == key
                            && w.status.as_ref().is_some_and(|s| {
                                s.observed_generation >= generation
                                    && conditions::is_true(&s.conditions, conditions::READY)
                                    && s.portal.as_ref().is_some_and(|p| p.ready_replicas == replicas)
                            })
                    })
                },
                Duration::from_secs(90),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let entries = audit.operator_entries(offset);
        let after = |e: &&Entry| e.request_received_timestamp >= signalled && e.is_write();
        let since = |e: &Entry| (e.request_received_timestamp.as_millisecond() - signalled.as_millisecond()) as f64;
        let child = children::child_name(&name);
        let about_changed = |e: &Entry| e.object_ref.namespace == ns && (e.object_ref.name == name || e.object_ref.name == child);
        let new = standby.identity.clone();
        let mut result = Trial { signal: signal.to_string(), ..Default::default() };
        result.lease_ms = entries.iter().filter(after).find(|e| e.by(&new) && e.is_lease()).map(since);
        result.first_write_ms = entries.iter().filter(after).find(|e| e.by(&new) && !e.is_lease()).map(since);
        result.deposed_writes = entries.iter().filter(after).filter(|e| e.by(&leader.identity) && !e.is_lease()).count() as u64;
        result.unchanged_status_writes =
            entries.iter().filter(after).filter(|e| e.by(&new) && e.object_ref.subresource == "status" && !about_changed(e)).count() as u64;
        result.unrelated_writes = entries
            .iter()
            .filter(after)
            .filter(|e| e.by(&new) && !e.is_lease() && e.object_ref.resource != "events" && !about_changed(e))
            .count() as u64;
        log(format!("failover {trial} ({signal}): {result:?}"));
        trials.push(result);

        // The deposed identity comes back as the next standby.
        let old = leader.identity.clone();
        drop(leader);
        leader = standby;
        standby = Replica::start(args, &old, None)?;
        if !standby.wait_ready(Duration::from_secs(60)).await {
            return Err("a restarted standby never became ready".into());
        }
        // Let the new leader finish its takeover before the next trial.
        if !leader.wait_ready(Duration::from_secs(120)).await {
            return Err("the new leader's caches never synced".into());
        }
    }
    drop(standby);
    drop(leader);
    Ok(trials)
}

async fn apply<K>(client: &Client, object: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    api.patch(&object.name_any(), &PatchParams::apply(REFERENCE_MANAGER).force(), &Patch::Apply(object)).await?;
    Ok(())
}

/// The trivial client: for each Workspace in the `ref-*` namespaces, the operator's own
/// children, server-side applied one after another, `concurrency` Workspaces at once.
async fn reference(client: &Client, workspaces: &Store<Workspace>, concurrency: usize) -> Result<Reference, BoxError> {
    let config = BuildConfig::new(IMAGE);
    let targets: Vec<_> = workspaces.state().into_iter().filter(|w| w.namespace().is_some_and(|ns| ns.starts_with("ref-"))).collect();
    let started = Instant::now();
    let applies: u64 = futures::stream::iter(targets)
        .map(|ws| {
            let desired = children::build(&ws, &config);
            let client = client.clone();
            async move {
                let mut applies = 6;
                apply(&client, &desired.service_account).await?;
                apply(&client, &desired.role).await?;
                apply(&client, &desired.role_binding).await?;
                apply(&client, &desired.deployment).await?;
                apply(&client, &desired.service).await?;
                apply(&client, &desired.network_policy).await?;
                if let Some(ingress) = &desired.ingress {
                    apply(&client, ingress).await?;
                    applies += 1;
                }
                if let Some(pdb) = &desired.pod_disruption_budget {
                    apply(&client, pdb).await?;
                    applies += 1;
                }
                Ok::<u64, kube::Error>(applies)
            }
        })
        .buffer_unordered(concurrency)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    Ok(Reference { seconds: started.elapsed().as_secs_f64(), applies, ..Default::default() })
}
