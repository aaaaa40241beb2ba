//! The reliability suite: faults at random moments against the local control plane while a
//! steady load of Workspace and upstream changes runs, with two operator replicas sharing a
//! Lease, and invariants checked after every fault. `make chaos` runs [`chaos`], `make soak`
//! runs [`soak`]; both need the cluster of `e2e/cluster.sh` (they call its component
//! subcommands) and are ignored by a plain `cargo test`.
//!
//! Invariants after each fault (see RELIABILITY.md):
//! - converged: every Workspace is Ready with a current observedGeneration, its spec is what
//!   the load last wrote, its children exist and the Deployment asks for the spec's replicas;
//!   every binding is Ready and its status shows what its upstream held within the last
//!   interval; both replicas are running;
//! - no write by a replica that was not the leader when the API server received it (audit
//!   log: user agent and the Lease's successful updates, in the API server's own order);
//! - quiet takeovers: after faults that change nothing the operator manages, no write for an
//!   object the load did not touch;
//! - no duplicate polling: no binding polled twice within half its interval (at the fakes).
//!
//! Knobs (environment): CHAOS_WORKSPACES (30; the soak's 40), CHAOS_TRIALS (trials per fault, 2),
//! CHAOS_FAULTS (comma-separated fault names, all by default), CHAOS_SEED, SOAK_MINUTES (30).
//! Results go to artifacts/chaos/.

#[path = "fakes/mod.rs"]
mod fakes;
#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use fakes::github::{self, Github, Repo};
use fakes::gitlab::{self, Gitlab, Project};
use fakes::jira::{self, Jira};
use fakes::{Mode, Shared};
use hyperpage::api::conditions::{self, RATE_LIMITED, READY, SYNCED};
use hyperpage::api::{ToolBinding, Workspace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Where a run lives: its namespace (which its replicas alone watch), Lease and replicas. The
/// soak and the fault run have their own, so both can share one cluster.
#[derive(Clone, Copy)]
struct Names {
    namespace: &'static str,
    lease: &'static str,
    identities: [&'static str; 2],
}

const CHAOS: Names = Names { namespace: "chaos", lease: "chaos", identities: ["chaos-a", "chaos-b"] };
const SOAK: Names = Names { namespace: "soak", lease: "soak", identities: ["soak-a", "soak-b"] };
/// The bindings' refresh interval (the schema's minimum) and the jitter the engine adds.
const INTERVAL: Duration = Duration::from_secs(30);
/// The operators' lease duration (tests/e2e/support.rs starts them with 6s).
const LEASE_DURATION: Duration = Duration::from_secs(6);
/// How long a fault may take to heal before the trial counts as not recovered.
const RECOVERY_LIMIT: Duration = Duration::from_secs(150);
const GITHUB_TOKEN: &str = "ghp_chaosTokenNeverPrinted";
const GITLAB_TOKEN: &str = "glpat-chaosTokenNeverPrinted";
const JIRA_TOKEN: &str = "jira-pat-chaosTokenNeverPrinted";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn out_dir() -> std::path::PathBuf {
    let dir = repo().join("artifacts/chaos");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ws_name(i: usize) -> String {
    format!("ws-{i:03}")
}

fn repo_name(i: usize) -> String {
    format!("acme/r{i:03}")
}

/// The workspace index an object name belongs to (`ws-007`, `ws-007-portal`, `ws-007-github`,
/// `ws-007-portal.18a…` for an Event).
fn owner_index(name: &str) -> Option<usize> {
    name.strip_prefix("ws-")?.get(..3)?.parse().ok()
}

// --- Redis ---------------------------------------------------------------------------------

/// Debian's redis-server on a fixed loopback port, stoppable and restartable.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(port: u16) -> Self {
        let mut redis = Self { port, child: None };
        redis.up();
        redis
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// FLUSHALL over the wire (RESP inline command).
    fn flush(&self) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        stream.write_all(b"FLUSHALL\r\n").unwrap();
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n", "FLUSHALL");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

// --- the world: cluster objects, fakes, replicas, load ----------------------------------------

/// Upstream values over time, so "status reflects upstream" can allow for one interval of lag.
#[derive(Default)]
struct History {
    /// Per GitHub repository: (when, open pull requests from then on).
    pulls: HashMap<String, Vec<(Instant, i64)>>,
}

impl History {
    fn set(&mut self, repo: &str, count: i64) {
        self.pulls.entry(repo.to_string()).or_default().push((Instant::now(), count));
    }

    /// The values the repository had at some point in the last `window`.
    fn recent(&self, repo: &str, window: Duration) -> Vec<i64> {
        let Some(list) = self.pulls.get(repo) else { return vec![] };
        let since = Instant::now().checked_sub(window).unwrap_or_else(Instant::now);
        let mut values: Vec<i64> = list.iter().filter(|(t, _)| *t >= since).map(|(_, v)| *v).collect();
        // The value in force at the start of the window.
        if let Some((_, v)) = list.iter().rev().find(|(t, _)| *t < since) {
            values.push(*v);
        }
        values
    }
}

struct World {
    names: Names,
    client: Client,
    workspaces: usize,
    github: Github,
    gitlab: Gitlab,
    jira: Jira,
    redis: Mutex<Redis>,
    redis_url: String,
    key_file: std::path::PathBuf,
    replicas: Mutex<[Option<Operator>; 2]>,
    history: Mutex<History>,
    /// Replicas each Workspace's spec asks for, as the load last wrote it.
    desired: Mutex<Vec<i32>>,
    /// Workspaces whose spec or upstream the load changed in the current trial.
    touched: Mutex<BTreeSet<usize>>,
    /// The audit log's size at the start of each trial, to read back a little before a trial.
    audit_marks: Mutex<Vec<(Instant, u64)>>,
    load_on: AtomicBool,
    load_stop: AtomicBool,
}

/// Every third Workspace also has GitLab and Jira bindings; every one has GitHub.
fn has_more_tools(i: usize) -> bool {
    i.is_multiple_of(3)
}

impl World {
    async fn create(names: Names, workspaces: usize) -> Arc<Self> {
        let client = client().await;
        install_crds(&client).await;
        ensure_namespace(&client, LEASE_NAMESPACE).await;
        ensure_namespace(&client, names.namespace).await;
        let repos: BTreeMap<String, Repo> = (0..workspaces)
            .map(|i| {
                let name = repo_name(i);
                let pulls = (1..=3).map(|n| github::pull(&name, n, &format!("Change {n}"))).collect();
                let runs = vec![github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z")];
                (name, Repo { pulls, runs, ..Repo::default() })
            })
            .collect();
        let github = Github::start(repos).await;
        github.shared.expect_auth(&format!("Bearer {GITHUB_TOKEN}"));
        let path = "payments/ledger";
        let project = Project {
            id: 42,
            default_branch: "main".into(),
            merge_requests: vec![gitlab::merge_request(path, 1, "Ledger rounding", "opened", false, "2026-11-20T10:00:00Z")],
            pipelines: vec![gitlab::pipeline(path, 700, "success", "main", "2026-11-21T10:00:00Z")],
            ..Project::default()
        };
        let gitlab = Gitlab::start(BTreeMap::from([(path.to_string(), project)])).await;
        let jira = Jira::start(vec![jira::issue("PAY-1", "Ticket", "To Do", Some("Ada"), "2026-11-20T10:15:30.000+0000")]).await;

        let redis_port = free_port();
        let redis = Redis::start(redis_port);
        let key_file = std::env::temp_dir().join(format!("hyperpage-chaos-cache-key-{}", std::process::id()));
        std::fs::write(&key_file, "chaos-install-key-0123456789abcdef").unwrap();
        let mut history = History::default();
        for i in 0..workspaces {
            history.set(&repo_name(i), 3);
        }
        let world = Arc::new(Self {
            names,
            client,
            workspaces,
            github,
            gitlab,
            jira,
            redis: Mutex::new(redis),
            redis_url: format!("redis://127.0.0.1:{redis_port}/"),
            key_file,
            replicas: Mutex::new([None, None]),
            history: Mutex::new(history),
            desired: Mutex::new(vec![1; workspaces]),
            touched: Mutex::new(BTreeSet::new()),
            audit_marks: Mutex::new(Vec::new()),
            load_on: AtomicBool::new(false),
            load_stop: AtomicBool::new(false),
        });
        world.apply_objects().await;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(world.client.clone(), LEASE_NAMESPACE);
        let _ = leases.delete(names.lease, &Default::default()).await;
        for slot in 0..2 {
            world.start_replica(slot);
        }
        world
    }

    async fn apply_objects(&self) {
        let secret = |name: &str, token: &str, endpoint: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{hyperpage.dev/credential: \"true\"}}\n  \
                 annotations: {{hyperpage.dev/endpoints: \"{endpoint}\"}}\nstringData: {{token: {token}}}\n---\n"
            )
        };
        let mut yaml = [
            secret("github-token", GITHUB_TOKEN, &self.github.url()),
            secret("gitlab-token", GITLAB_TOKEN, &self.gitlab.url()),
            secret("jira-token", JIRA_TOKEN, &self.jira.url()),
        ]
        .concat();
        for i in 0..self.workspaces {
            let ws = ws_name(i);
            yaml += &format!(
                "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: {ws}}}\n\
                 spec: {{refreshInterval: {}s, portal: {{replicas: 1}}}}\n---\n",
                INTERVAL.as_secs()
            );
            let binding = |tool: &str, endpoint: &str, block: &str| {
                format!(
                    "apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: {ws}-{tool}}}\nspec:\n  \
                     workspaceRef: {{name: {ws}}}\n  provider: {tool}\n  endpoint: {endpoint}\n  \
                     credentialsSecretRef: {{name: {tool}-token, key: token}}\n  {block}\n---\n"
                )
            };
            yaml += &binding(
                "github",
                &self.github.url(),
                &format!("github: {{repositories: [{}]}}\n  rateLimit: {{minRemaining: 0}}", repo_name(i)),
            );
            if has_more_tools(i) {
                yaml += &binding("gitlab", &self.gitlab.url(), "gitlab: {projects: [payments/ledger]}");
                yaml += &binding("jira", &self.jira.url(), "jira: {jql: project = PAY}");
            }
        }
        apply_yaml(&self.client, self.names.namespace, &yaml).await;
        // Objects of an earlier, larger run would count against this one.
        let extra = |name: String| owner_index(&name).is_none_or(|i| i >= self.workspaces);
        let lp = ListParams::default();
        let workspaces: Api<Workspace> = Api::namespaced(self.client.clone(), self.names.namespace);
        let bindings: Api<ToolBinding> = Api::namespaced(self.client.clone(), self.names.namespace);
        for ws in workspaces.list(&lp).await.unwrap().items.into_iter().filter(|w| extra(w.name_any())) {
            workspaces.delete(&ws.name_any(), &Default::default()).await.unwrap();
        }
        for b in bindings.list(&lp).await.unwrap().items.into_iter().filter(|b| extra(b.name_any())) {
            bindings.delete(&b.name_any(), &Default::default()).await.unwrap();
        }
    }

    fn bindings(&self) -> usize {
        self.workspaces + 2 * (0..self.workspaces).filter(|i| has_more_tools(*i)).count()
    }

    fn start_replica(&self, slot: usize) {
        // Keep the log of the process this one replaces (the harness names logs by identity).
        let log = repo().join(format!("artifacts/e2e-logs/{}.log", self.names.identities[slot]));
        if log.exists() {
            let _ = std::fs::rename(
                &log,
                log.with_extension(format!(
                    "{}.log",
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                )),
            );
        }
        let redis = format!("--redis-url={}", self.redis_url);
        let key = format!("--cache-key-file={}", self.key_file.display());
        let watch = format!("--watch-namespaces={}", self.names.namespace);
        let extra = ["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true", &redis, &key, &watch];
        let operator =
            Operator::start(OperatorOptions { identity: self.names.identities[slot], lease_name: self.names.lease, extra: &extra });
        self.replicas.lock().unwrap()[slot] = Some(operator);
    }

    fn pid(&self, slot: usize) -> Option<i32> {
        self.replicas.lock().unwrap()[slot].as_ref().map(Operator::pid)
    }

    /// The slot of the replica that says it leads (both asked; a stopped one cannot answer).
    async fn leader(&self) -> Option<usize> {
        let ports: Vec<u16> = self.replicas.lock().unwrap().iter().map(|o| o.as_ref().map_or(0, |o| o.admin_port)).collect();
        for (slot, port) in ports.into_iter().enumerate() {
            let text = tokio::time::timeout(Duration::from_secs(2), http_get(port, "/metrics")).await.ok().flatten();
            if text.is_some_and(|t| t.lines().any(|l| l == "hyperpage_leader 1")) {
                return Some(slot);
            }
        }
        None
    }

    async fn wait_leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(60), || self.leader()).await
    }

    fn all_fakes(&self) -> [&Arc<Shared>; 3] {
        [&self.github.shared, &self.gitlab.shared, &self.jira.shared]
    }

    /// One step of the steady load: a Workspace's replicas or a repository's pull requests.
    async fn load_step(&self, rng: &mut StdRng) {
        let i = rng.random_range(0..self.workspaces);
        if rng.random_bool(0.5) {
            let replicas = if self.desired.lock().unwrap()[i] == 1 { 2 } else { 1 };
            let workspaces: Api<Workspace> = Api::namespaced(self.client.clone(), self.names.namespace);
            let patch = serde_json::json!({"spec": {"portal": {"replicas": replicas}}});
            // Refused during an API server or etcd outage: the load simply tries again later.
            if workspaces.patch(&ws_name(i), &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                self.desired.lock().unwrap()[i] = replicas;
                self.touched.lock().unwrap().insert(i);
            }
        } else {
            let name = repo_name(i);
            let count = {
                let mut repos = self.github.repos.lock().unwrap();
                let pulls = &mut repos.get_mut(&name).unwrap().pulls;
                if pulls.len() > 1 && rng.random_bool(0.5) {
                    pulls.pop();
                } else {
                    let n = pulls.iter().filter_map(|p| p["number"].as_u64()).max().unwrap_or(0) + 1;
                    pulls.push(github::pull(&name, n, &format!("Change {n}")));
                }
                pulls.len() as i64
            };
            self.history.lock().unwrap().set(&name, count);
            self.touched.lock().unwrap().insert(i);
        }
    }
}

/// The load task: a change every 0.5–1.5 s while `load_on`, until `load_stop`.
fn spawn_load(world: Arc<World>, seed: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x10ad);
        while !world.load_stop.load(Ordering::SeqCst) {
            if world.load_on.load(Ordering::SeqCst) {
                world.load_step(&mut rng).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        }
    })
}

// --- invariants -------------------------------------------------------------------------------

/// What is not (yet) as it should be; empty when the world has converged.
async fn divergences(world: &World) -> Vec<String> {
    let mut out = Vec::new();
    let c = &world.client;
    let ns = world.names.namespace;
    let lp = ListParams::default();
    let (Ok(workspaces), Ok(bindings), Ok(deployments), Ok(services), Ok(accounts), Ok(roles), Ok(role_bindings)) = (
        Api::<Workspace>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<ToolBinding>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<Deployment>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<Service>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<ServiceAccount>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<Role>::namespaced(c.clone(), ns).list(&lp).await,
        Api::<RoleBinding>::namespaced(c.clone(), ns).list(&lp).await,
    ) else {
        return vec!["the API server does not answer".into()];
    };
    let names = |list: Vec<String>| list.into_iter().collect::<BTreeSet<_>>();
    let (services, accounts) =
        (names(services.iter().map(|o| o.name_any()).collect()), names(accounts.iter().map(|o| o.name_any()).collect()));
    let (roles, role_bindings) =
        (names(roles.iter().map(|o| o.name_any()).collect()), names(role_bindings.iter().map(|o| o.name_any()).collect()));
    let deployments: HashMap<String, Deployment> = deployments.into_iter().map(|d| (d.name_any(), d)).collect();
    let desired = world.desired.lock().unwrap().clone();
    let by_name: HashMap<String, &Workspace> = workspaces.iter().map(|w| (w.name_any(), w)).collect();
    for (i, replicas) in desired.iter().enumerate() {
        let name = ws_name(i);
        let Some(ws) = by_name.get(&name) else {
            out.push(format!("Workspace {name} is gone"));
            continue;
        };
        if ws.spec.portal.replicas != *replicas {
            out.push(format!("Workspace {name} asks for {} replicas, the load wrote {replicas}", ws.spec.portal.replicas));
        }
        let status = ws.status.as_ref();
        if status.and_then(|s| s.observed_generation) != ws.metadata.generation {
            out.push(format!("Workspace {name}: observedGeneration is not current"));
        } else if !status.is_some_and(|s| conditions::is_true(&s.conditions, READY)) {
            out.push(format!("Workspace {name} is not Ready"));
        } else if !status.and_then(|s| s.tools.as_ref()).is_some_and(|t| t.failing == 0 && t.ready == t.total) {
            out.push(format!("Workspace {name}: the roll-up still counts a tool that is not ready"));
        } else if !status.and_then(|s| s.portal.as_ref()).is_some_and(|p| p.replicas == *replicas && p.ready_replicas == *replicas) {
            out.push(format!("Workspace {name}: its status does not yet show {replicas} ready portal pods"));
        }
        let child = format!("{name}-portal");
        match deployments.get(&child) {
            None => out.push(format!("Deployment {child} is missing")),
            Some(d) => {
                let spec = d.spec.as_ref().and_then(|s| s.replicas);
                let status = d.status.clone().unwrap_or_default();
                let available = status.available_replicas.unwrap_or(0);
                if spec != Some(*replicas) || available != *replicas {
                    out.push(format!("Deployment {child}: {spec:?} asked, {available} available, {replicas} wanted"));
                } else if status.observed_generation != d.metadata.generation
                    || status.updated_replicas != Some(*replicas)
                    || status.replicas != Some(*replicas)
                {
                    // Mid-rollout the available count can pass through the wanted one (new pods
                    // ready, old ones not yet gone) and move again after the trial ends.
                    out.push(format!(
                        "Deployment {child}: still rolling out ({:?} pods, {:?} updated, {replicas} wanted)",
                        status.replicas, status.updated_replicas
                    ));
                }
            }
        }
        for (kind, set) in [("Service", &services), ("ServiceAccount", &accounts), ("Role", &roles), ("RoleBinding", &role_bindings)] {
            if !set.contains(&child) {
                out.push(format!("{kind} {child} is missing"));
            }
        }
    }
    let window = INTERVAL.mul_f64(1.1) + Duration::from_secs(10);
    let history = world.history.lock().unwrap();
    let mut seen = 0;
    for binding in &bindings {
        let name = binding.name_any();
        seen += 1;
        let status = binding.status.as_ref();
        // Ready, and the last poll succeeded: an error or a wait from a fault is over.
        let synced = status.is_some_and(|s| {
            s.observed_generation == binding.metadata.generation
                && conditions::is_true(&s.conditions, READY)
                && conditions::is_true(&s.conditions, SYNCED)
                && !conditions::is_true(&s.conditions, RATE_LIMITED)
        });
        if !synced {
            out.push(format!("ToolBinding {name} is not Ready and Synced"));
            continue;
        }
        if let Some(repo) = binding.spec.github.as_ref().and_then(|g| g.repositories.first()) {
            let shown = status.and_then(|s| s.summary.as_ref()).map(|s| s.code_reviews);
            let recent = history.recent(repo, window);
            if !shown.is_some_and(|n| recent.contains(&n)) {
                out.push(format!("ToolBinding {name} shows {shown:?} pull requests; upstream had {recent:?} in the last interval"));
            }
        }
    }
    if seen != world.bindings() {
        out.push(format!("{seen} ToolBindings, {} expected", world.bindings()));
    }
    for slot in 0..2 {
        if !world.pid(slot).is_some_and(running) {
            out.push(format!("replica {} is not running", world.names.identities[slot]));
        }
    }
    out
}

/// Lease holders over time, from the successful Lease writes in the audit log.
fn lease_timeline(events: &[serde_json::Value], lease: &str, before: Option<(jiff::Timestamp, String)>) -> Vec<(jiff::Timestamp, String)> {
    let mut timeline: Vec<(jiff::Timestamp, String)> = before.into_iter().collect();
    for e in events {
        let lease = e["objectRef"]["resource"] == "leases" && e["objectRef"]["name"] == lease;
        let ok = e["responseStatus"]["code"].as_u64().is_some_and(|c| (200..300).contains(&c));
        let write = ["create", "update", "patch"].contains(&e["verb"].as_str().unwrap_or(""));
        if lease
            && ok
            && write
            && e["stage"] == "ResponseComplete"
            && let (Some(who), Some(at)) = (identity_of(e), e["stageTimestamp"].as_str().and_then(|t| t.parse().ok()))
        {
            timeline.push((at, who));
        }
    }
    timeline.sort_by_key(|(t, _)| *t);
    timeline
}

fn identity_of(event: &serde_json::Value) -> Option<String> {
    let ua = event["userAgent"].as_str()?;
    let rest = ua.strip_prefix("hyperpage-operator/")?;
    Some(rest.split_once('(')?.1.trim_end_matches(')').to_string())
}

/// Writes (other than to the Lease) by a replica that did not hold the Lease when the API
/// server received them, or whose last renewal was older than the lease duration.
fn non_leader_writes(events: &[serde_json::Value], identities: [&str; 2], timeline: &[(jiff::Timestamp, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for identity in identities {
        for (at, what) in operator_writes(events, identity) {
            let holder = timeline.iter().rev().find(|(t, _)| *t <= at);
            let own = timeline.iter().rev().find(|(t, who)| *t <= at && who == identity);
            let expired = own.is_some_and(|(t, _)| at.duration_since(*t) > jiff::SignedDuration::try_from(LEASE_DURATION).unwrap());
            match holder {
                Some((_, who)) if who != identity => out.push(format!("{identity} wrote {what} at {at} while {who} held the Lease")),
                _ if expired => out.push(format!("{identity} wrote {what} at {at}, more than a lease duration after its last renewal")),
                _ => {}
            }
        }
    }
    out
}

/// When each fake answered, on the wall clock the audit log uses.
struct Polls {
    /// GitHub requests by path.
    github: Vec<(String, jiff::Timestamp)>,
    gitlab: Vec<jiff::Timestamp>,
    jira: Vec<jiff::Timestamp>,
}

impl Polls {
    fn of(world: &World) -> Self {
        let (instant, now) = (Instant::now(), jiff::Timestamp::now());
        let wall = |at: Instant| now - jiff::SignedDuration::try_from(instant.saturating_duration_since(at)).unwrap();
        Self {
            github: world.github.shared.requests().into_iter().map(|s| (s.path, wall(s.at))).collect(),
            gitlab: world.gitlab.shared.requests().into_iter().map(|s| wall(s.at)).collect(),
            jira: world.jira.shared.requests().into_iter().map(|s| wall(s.at)).collect(),
        }
    }

    /// Whether binding `name` (`ws-007-github`) was polled in the `window` before `at`.
    fn polled(&self, name: &str, at: jiff::Timestamp, window: jiff::SignedDuration) -> bool {
        let recent = |t: &jiff::Timestamp| *t <= at && at.duration_since(*t) <= window;
        match (owner_index(name), name.rsplit('-').next()) {
            (Some(i), Some("github")) => {
                let prefix = format!("/repos/{}", repo_name(i));
                self.github.iter().any(|(p, t)| p.starts_with(&prefix) && recent(t))
            }
            (_, Some("gitlab")) => self.gitlab.iter().any(recent),
            (_, Some("jira")) => self.jira.iter().any(recent),
            _ => false,
        }
    }
}

/// Operator writes (Lease aside) for Workspaces the load did not touch that no poll explains:
/// a binding's status may follow its own poll (a new rate-limit reading, a sync time), its
/// Workspace's status the binding's, and Events those writes; anything else (a child, a
/// status without a poll before it) is a write for an unchanged object. Writes before `since`
/// (the trial's start) only explain later ones.
fn writes_to_untouched(
    events: &[serde_json::Value],
    since: jiff::Timestamp,
    identities: [&str; 2],
    touched: &BTreeSet<usize>,
    polls: &Polls,
) -> Vec<String> {
    let window = jiff::SignedDuration::from_secs(20);
    let mut writes: Vec<(jiff::Timestamp, &serde_json::Value)> = events
        .iter()
        .filter(|e| identity_of(e).is_some_and(|i| identities.contains(&i.as_str())))
        .filter(|e| ["create", "update", "patch", "delete", "deletecollection"].contains(&e["verb"].as_str().unwrap_or("")))
        .filter(|e| e["objectRef"]["resource"] != "leases" && e["stage"] == "ResponseComplete")
        .filter_map(|e| Some((e["requestReceivedTimestamp"].as_str()?.parse().ok()?, e)))
        .collect();
    writes.sort_by_key(|(t, _)| *t);
    // Status writes a poll explains, by object name ("ws-007", "ws-007-github").
    let mut explained: Vec<(String, jiff::Timestamp)> = Vec::new();
    let mut out = Vec::new();
    for (at, e) in writes {
        let name = e["objectRef"]["name"].as_str().unwrap_or("");
        let Some(owner) = owner_index(name) else {
            out.push(format!("{} wrote {} {} (no Workspace)", identity_of(e).unwrap_or_default(), e["verb"], e["requestURI"]));
            continue;
        };
        if touched.contains(&owner) && at >= since {
            continue;
        }
        let resource = e["objectRef"]["resource"].as_str().unwrap_or("");
        let status = e["objectRef"]["subresource"] == "status";
        let follows = |object: &str| explained.iter().any(|(n, t)| n == object && *t <= at && at.duration_since(*t) <= window);
        let ok = match resource {
            "toolbindings" if status => polls.polled(name, at, window),
            "workspaces" if status => {
                explained.iter().any(|(n, t)| n.starts_with(&format!("{name}-")) && *t <= at && at.duration_since(*t) <= window)
            }
            // An Event is named after its object and a suffix.
            "events" => follows(name.split('.').next().unwrap_or("")),
            _ => false,
        };
        if ok && status {
            explained.push((name.to_string(), at));
        }
        if !ok && at >= since {
            out.push(format!("{} wrote {} {} at {at} (unchanged)", identity_of(e).unwrap_or_default(), e["verb"], e["requestURI"]));
        }
    }
    out
}

/// Successful polls of one binding less than half an interval apart (counted at the fake by
/// the first request of a GitHub poll, `/repos/{owner}/{name}`).
fn duplicate_polls(github: &Shared, since: Instant) -> Vec<String> {
    let mut by_repo: HashMap<String, Vec<Instant>> = HashMap::new();
    for seen in github.requests() {
        if let Some(repo) = seen.path.strip_prefix("/repos/").filter(|p| p.matches('/').count() == 1)
            && matches!(seen.status, 200 | 304)
        {
            by_repo.entry(repo.to_string()).or_default().push(seen.at);
        }
    }
    let mut out = Vec::new();
    for (repo, mut times) in by_repo {
        times.sort();
        for pair in times.windows(2).filter(|p| p[1] >= since) {
            let gap = pair[1] - pair[0];
            if gap < INTERVAL / 2 {
                out.push(format!("{repo} polled twice {gap:.1?} apart"));
            }
        }
    }
    out
}

// --- faults -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    ApiserverRestart,
    EtcdRestart,
    EtcdOutage,
    LeaderKill,
    LeaderTerm,
    LeaderStop,
    RedisRestart,
    RedisFlush,
    Upstream5xx,
    UpstreamTimeout,
    UpstreamReset,
    UpstreamSlowBody,
    UpstreamTruncated,
    UpstreamMalformed,
    UpstreamContentType,
    UpstreamOversized,
    Upstream429RetryAfter,
    Upstream429Bare,
    DeleteChild,
    DeleteLease,
    DeleteNode,
}

impl Fault {
    const ALL: [Fault; 21] = [
        Fault::ApiserverRestart,
        Fault::EtcdRestart,
        Fault::EtcdOutage,
        Fault::LeaderKill,
        Fault::LeaderTerm,
        Fault::LeaderStop,
        Fault::RedisRestart,
        Fault::RedisFlush,
        Fault::Upstream5xx,
        Fault::UpstreamTimeout,
        Fault::UpstreamReset,
        Fault::UpstreamSlowBody,
        Fault::UpstreamTruncated,
        Fault::UpstreamMalformed,
        Fault::UpstreamContentType,
        Fault::UpstreamOversized,
        Fault::Upstream429RetryAfter,
        Fault::Upstream429Bare,
        Fault::DeleteChild,
        Fault::DeleteLease,
        Fault::DeleteNode,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::ApiserverRestart => "apiserver-restart",
            Fault::EtcdRestart => "etcd-restart",
            Fault::EtcdOutage => "etcd-outage",
            Fault::LeaderKill => "leader-sigkill",
            Fault::LeaderTerm => "leader-sigterm",
            Fault::LeaderStop => "leader-sigstop",
            Fault::RedisRestart => "redis-restart",
            Fault::RedisFlush => "redis-flushall",
            Fault::Upstream5xx => "upstream-5xx",
            Fault::UpstreamTimeout => "upstream-timeout",
            Fault::UpstreamReset => "upstream-reset",
            Fault::UpstreamSlowBody => "upstream-slow-body",
            Fault::UpstreamTruncated => "upstream-truncated-json",
            Fault::UpstreamMalformed => "upstream-malformed-json",
            Fault::UpstreamContentType => "upstream-wrong-content-type",
            Fault::UpstreamOversized => "upstream-oversized",
            Fault::Upstream429RetryAfter => "upstream-429-retry-after",
            Fault::Upstream429Bare => "upstream-429-no-retry-after",
            Fault::DeleteChild => "delete-child",
            Fault::DeleteLease => "delete-lease",
            Fault::DeleteNode => "delete-kwok-node",
        }
    }

    fn upstream_mode(self) -> Option<Mode> {
        Some(match self {
            Fault::Upstream5xx => Mode::ServerError,
            // Longer than the client's 15 s timeout.
            Fault::UpstreamTimeout => Mode::Slow(Duration::from_secs(20)),
            Fault::UpstreamReset => Mode::Reset,
            Fault::UpstreamSlowBody => Mode::SlowBody(Duration::from_secs(1)),
            Fault::UpstreamTruncated => Mode::Truncated,
            Fault::UpstreamMalformed => Mode::Malformed,
            Fault::UpstreamContentType => Mode::WrongContentType,
            // Over the client's 4 MiB cap.
            Fault::UpstreamOversized => Mode::Oversized(6 * 1024 * 1024),
            Fault::Upstream429RetryAfter => Mode::RetryAfter { status: 429, seconds: 5 },
            Fault::Upstream429Bare => Mode::TooManyRequests,
            _ => return None,
        })
    }

    /// Faults after which the operator has nothing to change: every write must be for an
    /// object the load touched. Not quiet: a Redis outage, which every binding's `Degraded`
    /// condition reports while the cache falls back to memory (a real transition).
    fn quiet(self) -> bool {
        !matches!(self, Fault::DeleteChild | Fault::DeleteNode | Fault::RedisRestart) && self.upstream_mode().is_none()
    }
}

fn cluster(args: &[&str]) {
    let status =
        Command::new("bash").arg(repo().join("e2e/cluster.sh")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "e2e/cluster.sh {args:?} failed (see e2e/.run/logs)");
}

/// Injects `fault` and returns once it has been healed (the moment recovery is timed from),
/// with a note of what was done.
async fn inject(world: &World, fault: Fault, rng: &mut StdRng) -> String {
    match fault {
        Fault::ApiserverRestart => {
            tokio::task::block_in_place(|| cluster(&["restart-component", "kube-apiserver"]));
            "restarted kube-apiserver".into()
        }
        Fault::EtcdRestart => {
            tokio::task::block_in_place(|| cluster(&["restart-component", "etcd"]));
            "restarted etcd".into()
        }
        Fault::EtcdOutage => {
            let secs = rng.random_range(7..=12).to_string();
            tokio::task::block_in_place(|| cluster(&["restart-component", "etcd", &secs]));
            format!("etcd down {secs}s (lease 6s)")
        }
        Fault::LeaderKill | Fault::LeaderTerm => {
            let slot = world.wait_leader().await;
            let signal = if fault == Fault::LeaderKill { "KILL" } else { "TERM" };
            {
                let mut replicas = world.replicas.lock().unwrap();
                let operator = replicas[slot].as_mut().unwrap();
                operator.signal(signal);
                operator.wait_exit(Duration::from_secs(30));
                replicas[slot] = None;
            }
            // Its Deployment would restart it.
            world.start_replica(slot);
            format!("SIG{signal} {}", world.names.identities[slot])
        }
        Fault::LeaderStop => {
            let slot = world.wait_leader().await;
            let pid = world.pid(slot).unwrap();
            let paused = Duration::from_millis(rng.random_range(500..12_000));
            Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
            tokio::time::sleep(paused).await;
            Command::new("kill").args(["-CONT", &pid.to_string()]).status().unwrap();
            format!("SIGSTOP {} for {paused:.1?}", world.names.identities[slot])
        }
        Fault::RedisRestart => {
            let down = Duration::from_millis(rng.random_range(0..8000));
            world.redis.lock().unwrap().down();
            tokio::time::sleep(down).await;
            tokio::task::block_in_place(|| world.redis.lock().unwrap().up());
            format!("Redis down {down:.1?}")
        }
        Fault::RedisFlush => {
            world.redis.lock().unwrap().flush();
            "FLUSHALL".into()
        }
        Fault::DeleteChild => {
            let i = rng.random_range(0..world.workspaces);
            let kind = ["deployment", "service", "serviceaccount", "role", "rolebinding"][rng.random_range(0..5)];
            world.touched.lock().unwrap().insert(i);
            let child = format!("{}-portal", ws_name(i));
            kubectl(&["delete", kind, &child, "-n", world.names.namespace, "--wait=false"]);
            format!("deleted {kind} {child}")
        }
        Fault::DeleteLease => {
            kubectl(&["delete", "lease", world.names.lease, "-n", LEASE_NAMESPACE, "--wait=false"]);
            "deleted the Lease".into()
        }
        Fault::DeleteNode => {
            let node = ["kwok-node-0", "kwok-node-1"][rng.random_range(0..2)];
            let deleted = Instant::now();
            kubectl(&["delete", "node", node, "--wait=true"]);
            // Every Workspace with a pod there is touched: its status follows the pods.
            world.touched.lock().unwrap().extend(0..world.workspaces);
            // The pods bound to it are collected (pod GC) and rescheduled on the other node;
            // the node comes back once none is left there.
            let pods: Api<Pod> = Api::all(world.client.clone());
            wait_for("the deleted node's pods to be collected", Duration::from_secs(180), || async {
                let list = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await.ok()?;
                list.items.is_empty().then_some(())
            })
            .await;
            tokio::task::block_in_place(|| cluster(&["nodes"]));
            format!("deleted {node}; its pods rescheduled after {:.0?}, node re-created", deleted.elapsed())
        }
        upstream => {
            let mode = upstream.upstream_mode().unwrap();
            let lasting = Duration::from_secs(rng.random_range(5..20));
            world.touched.lock().unwrap().extend(0..world.workspaces);
            for fake in world.all_fakes() {
                fake.set_mode(mode.clone());
            }
            tokio::time::sleep(lasting).await;
            for fake in world.all_fakes() {
                fake.set_mode(Mode::Normal);
            }
            format!("{mode:?} for {lasting:.0?}")
        }
    }
}

// --- trials and the report ----------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
struct Trial {
    fault: &'static str,
    note: String,
    recovered: bool,
    recovery_ms: u64,
    violations: Vec<String>,
}

async fn run_trial(world: &World, fault: Fault, rng: &mut StdRng) -> Trial {
    world.touched.lock().unwrap().clear();
    // Requests of the last minute stay: a poll just before the trial explains a write in it.
    let started = Instant::now();
    for fake in world.all_fakes() {
        fake.seen.lock().unwrap().retain(|s| started.duration_since(s.at) < Duration::from_secs(60));
    }
    let offset = audit_log_size().expect("HYPERPAGE_E2E_AUDIT_LOG (source e2e/.run/env)");
    let since = jiff::Timestamp::now();
    // A write just before the trial (a binding's status after its poll) explains its
    // Workspace's roll-up just after it: read back further than the explanation window.
    let lookback = {
        let mut marks = world.audit_marks.lock().unwrap();
        marks.push((started, offset));
        marks.iter().rev().find(|(at, _)| started.duration_since(*at) > Duration::from_secs(30)).map_or(0, |(_, o)| *o)
    };
    let ids = world.names.identities;
    let leader_before = world.leader().await.map(|s| (jiff::Timestamp::now(), ids[s].to_string()));
    let before = statuses(world).await;
    world.load_on.store(true, Ordering::SeqCst);
    // A random moment under load.
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5000))).await;
    let note = inject(world, fault, rng).await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
    world.load_on.store(false, Ordering::SeqCst);

    let mut last = Vec::new();
    let mut recovered = None;
    while healed.elapsed() < RECOVERY_LIMIT {
        last = divergences(world).await;
        if last.is_empty() {
            recovered = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut violations: Vec<String> = last.iter().take(5).map(|d| format!("not converged: {d}")).collect();
    // Let writes in flight land in the audit log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = audit_events_since(offset);
    let timeline = lease_timeline(&events, world.names.lease, leader_before);
    violations.extend(non_leader_writes(&events, ids, &timeline));
    if fault.quiet() {
        let touched = world.touched.lock().unwrap().clone();
        let unchanged = writes_to_untouched(&audit_events_since(lookback), since, ids, &touched, &Polls::of(world));
        if !unchanged.is_empty() {
            violations.extend(status_changes(&before, &statuses(world).await, &unchanged));
        }
        violations.extend(unchanged);
    }
    if fault.upstream_mode().is_none() {
        violations.extend(duplicate_polls(&world.github.shared, started));
    }
    Trial {
        fault: fault.name(),
        note,
        recovered: recovered.is_some(),
        recovery_ms: recovered.unwrap_or(RECOVERY_LIMIT).as_millis() as u64,
        violations,
    }
}

/// Every Workspace's and ToolBinding's status by "kind/name", to show what a flagged write changed.
async fn statuses(world: &World) -> HashMap<String, serde_json::Value> {
    let mut out = HashMap::new();
    let lp = ListParams::default();
    if let Ok(list) = Api::<Workspace>::namespaced(world.client.clone(), world.names.namespace).list(&lp).await {
        out.extend(list.items.into_iter().map(|w| (format!("workspaces/{}", w.name_any()), serde_json::to_value(&w.status).unwrap())));
    }
    if let Ok(list) = Api::<ToolBinding>::namespaced(world.client.clone(), world.names.namespace).list(&lp).await {
        out.extend(list.items.into_iter().map(|b| (format!("toolbindings/{}", b.name_any()), serde_json::to_value(&b.status).unwrap())));
    }
    out
}

/// For the first few status writes flagged as unchanged: which status fields differ between
/// before the trial and after it (the evidence for a diagnosis).
fn status_changes(
    before: &HashMap<String, serde_json::Value>,
    after: &HashMap<String, serde_json::Value>,
    flagged: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for line in flagged.iter().filter(|l| l.contains("/status")).take(3) {
        let Some(key) = ["workspaces/", "toolbindings/"].iter().find_map(|k| {
            let at = line.find(k)?;
            Some(line[at..].split("/status").next()?.to_string())
        }) else {
            continue;
        };
        let (Some(old), Some(new)) = (before.get(&key), after.get(&key)) else { continue };
        let fields: Vec<String> = new
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| old.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k}: {} -> {}", old.get(k.as_str()).map(|o| o.to_string()).unwrap_or_default(), v))
            .map(|d| d.chars().take(400).collect())
            .collect();
        out.push(format!("status of {key} changed: {fields:?}"));
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(trials: &[Trial], seed: u64, workspaces: usize, bindings: usize) -> String {
    let mut by_fault: BTreeMap<&str, Vec<&Trial>> = BTreeMap::new();
    for t in trials {
        by_fault.entry(t.fault).or_default().push(t);
    }
    let mut out = format!(
        "Seed {seed}; {workspaces} Workspaces, {bindings} ToolBindings, two replicas; {} trials.\n\n\
         | fault | trials | invariants held | recovery p50 | recovery p99 |\n|---|---|---|---|---|\n",
        trials.len()
    );
    for (fault, list) in &by_fault {
        let held = list.iter().filter(|t| t.recovered && t.violations.is_empty()).count();
        let mut times: Vec<u64> = list.iter().filter(|t| t.recovered).map(|t| t.recovery_ms).collect();
        times.sort();
        let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        let _ = writeln!(
            out,
            "| {fault} | {} | {held}/{} | {} | {} |",
            list.len(),
            list.len(),
            secs(percentile(&times, 50.0)),
            secs(percentile(&times, 99.0))
        );
    }
    let broken: Vec<_> = trials.iter().filter(|t| !t.recovered || !t.violations.is_empty()).collect();
    if !broken.is_empty() {
        out += "\nBroken invariants:\n\n";
        for t in broken {
            let _ = writeln!(out, "- {} ({}): {}", t.fault, t.note, t.violations.iter().take(4).cloned().collect::<Vec<_>>().join("; "));
        }
    }
    out
}

async fn wait_converged(world: &World, what: &str) {
    let mut last = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        last = divergences(world).await;
        if last.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{what}: not converged: {last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the reliability suite: make chaos"]
async fn chaos() {
    let workspaces = env_or("CHAOS_WORKSPACES", 30usize);
    let trials_per_fault = env_or("CHAOS_TRIALS", 2usize);
    let seed = env_or("CHAOS_SEED", rand::random::<u64>() % 1_000_000);
    let only: Option<Vec<String>> = std::env::var("CHAOS_FAULTS").ok().map(|v| v.split(',').map(str::to_string).collect());
    let faults: Vec<Fault> = Fault::ALL.into_iter().filter(|f| only.as_ref().is_none_or(|o| o.iter().any(|n| n == f.name()))).collect();
    eprintln!("chaos: seed {seed}, {workspaces} Workspaces, {trials_per_fault} trials of {} faults", faults.len());
    let mut rng = StdRng::seed_from_u64(seed);
    let world = World::create(CHAOS, workspaces).await;
    let load = spawn_load(world.clone(), seed);
    wait_converged(&world, "the initial state").await;

    // A node deletion waits for pod garbage collection (about two minutes): fewer of those.
    let slow_trials = env_or("CHAOS_TRIALS_NODE", trials_per_fault.min(2));
    let mut plan: Vec<Fault> =
        faults.iter().flat_map(|f| std::iter::repeat_n(*f, if *f == Fault::DeleteNode { slow_trials } else { trials_per_fault })).collect();
    use rand::seq::SliceRandom;
    plan.shuffle(&mut rng);
    let mut trials = Vec::new();
    let log = out_dir().join("trials.jsonl");
    let mut file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    for (n, fault) in plan.iter().enumerate() {
        let trial = run_trial(&world, *fault, &mut rng).await;
        eprintln!(
            "[{:>4}s] {}/{} {} ({}): {} in {:.1}s{}",
            started.elapsed().as_secs(),
            n + 1,
            plan.len(),
            trial.fault,
            trial.note,
            if trial.recovered && trial.violations.is_empty() { "held" } else { "BROKEN" },
            trial.recovery_ms as f64 / 1000.0,
            if trial.violations.is_empty() {
                String::new()
            } else {
                format!(": {} violation(s), first {:?}", trial.violations.len(), &trial.violations[..trial.violations.len().min(6)])
            }
        );
        use std::io::Write;
        writeln!(file, "{}", serde_json::to_string(&trial).unwrap()).unwrap();
        trials.push(trial);
    }
    world.load_stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    // Nothing lost: after a quiet interval every status shows exactly what upstream holds.
    tokio::time::sleep(INTERVAL.mul_f64(1.2)).await;
    let final_state = divergences(&world).await;
    let mut text = report(&trials, seed, workspaces, world.bindings());
    let _ = writeln!(
        text,
        "\nAfter the last trial and a quiet interval: {}",
        if final_state.is_empty() { "converged, nothing lost".to_string() } else { format!("{final_state:?}") }
    );
    std::fs::write(out_dir().join("report.md"), &text).unwrap();
    eprintln!("{text}");
    let _ = std::fs::remove_file(&world.key_file);
    let broken = trials.iter().filter(|t| !t.recovered || !t.violations.is_empty()).count();
    assert!(broken == 0 && final_state.is_empty(), "{broken} of {} trials broke an invariant (artifacts/chaos/report.md)", trials.len());
}

/// True while the process exists and is not a zombie.
fn running(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// The resident memory (KiB) and open file descriptors of a process.
fn rss_and_fds(pid: i32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").trim().parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak run: make soak"]
async fn soak() {
    let workspaces = env_or("CHAOS_WORKSPACES", 40usize);
    let minutes = env_or("SOAK_MINUTES", 30u64);
    let seed = env_or("CHAOS_SEED", rand::random::<u64>() % 1_000_000);
    let world = World::create(SOAK, workspaces).await;
    let load = spawn_load(world.clone(), seed);
    wait_converged(&world, "the initial state").await;
    world.load_on.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut samples = String::from("| minute | leader RSS (MiB) | leader FDs | standby RSS (MiB) | standby FDs |\n|---|---|---|---|---|\n");
    let mut csv = String::from("seconds,identity,leader,rss_kib,fds\n");
    let leader = world.wait_leader().await;
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let mut row = format!("| {:.1} |", started.elapsed().as_secs_f64() / 60.0);
        for slot in [leader, 1 - leader] {
            let (rss, fds) = world.pid(slot).and_then(rss_and_fds).expect("both replicas run throughout the soak");
            let _ = write!(row, " {:.1} | {fds} |", rss as f64 / 1024.0);
            let _ = writeln!(csv, "{},{},{},{rss},{fds}", started.elapsed().as_secs(), world.names.identities[slot], slot == leader);
        }
        samples += &row;
        samples.push('\n');
        // The fakes' request logs are the test's memory, not the operator's.
        for fake in world.all_fakes() {
            fake.clear();
        }
        std::fs::write(out_dir().join("soak.csv"), &csv).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    world.load_on.store(false, Ordering::SeqCst);
    world.load_stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    // The fault run may share the cluster (its control-plane faults reach these replicas
    // too): a takeover is noted, not failed.
    let _ = writeln!(
        samples,
        "\nleader at the start: {}, at the end: {:?}",
        world.names.identities[leader],
        world.leader().await.map(|s| world.names.identities[s])
    );
    wait_converged(&world, "the end of the soak").await;
    std::fs::write(out_dir().join("soak.md"), &samples).unwrap();
    eprintln!("{samples}");
    let _ = std::fs::remove_file(&world.key_file);
}

/// The invariant-3 check itself: what explains a write, and what a look-back may not flag.
#[test]
fn a_roll_up_just_after_the_trial_started_is_explained_by_the_binding_write_before_it() {
    let write = |at: &str, resource: &str, name: &str| {
        serde_json::json!({
            "stage": "ResponseComplete", "verb": "patch", "requestReceivedTimestamp": at,
            "userAgent": "hyperpage-operator/0.1.0 (chaos-a)",
            "requestURI": format!("/{resource}/{name}/status"),
            "objectRef": {"resource": resource, "name": name, "subresource": "status"},
        })
    };
    let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let polls = Polls { github: vec![("/repos/acme/r026".into(), t("2026-11-23T22:29:52.500Z"))], gitlab: vec![], jira: vec![] };
    let events =
        [write("2026-11-23T22:29:52.722Z", "toolbindings", "ws-026-github"), write("2026-11-23T22:29:52.781Z", "workspaces", "ws-026")];
    let ids = ["chaos-a", "chaos-b"];
    let none = BTreeSet::new();
    // The trial began between the two writes: the binding's explains the roll-up.
    assert!(writes_to_untouched(&events, t("2026-11-23T22:29:52.750Z"), ids, &none, &polls).is_empty());
    // Without the binding write (no look-back), the roll-up is a write for an unchanged object.
    assert_eq!(writes_to_untouched(&events[1..], t("2026-11-23T22:29:52.750Z"), ids, &none, &polls).len(), 1);
    // A binding write with no poll before it is flagged, inside the trial, not before it.
    let unpolled = Polls { github: vec![], gitlab: vec![], jira: vec![] };
    assert_eq!(writes_to_untouched(&events[..1], t("2026-11-23T22:29:52.700Z"), ids, &none, &unpolled).len(), 1);
    assert!(writes_to_untouched(&events[..1], t("2026-11-23T22:29:52.750Z"), ids, &none, &unpolled).is_empty());
}
