//! `make bench`, engine rows: the aggregation engine as the operator runs it (`Engine::run`
//! with its due-time queue, the `--poll-concurrency` default, the shared HTTP client, the
//! credentials read as the operator reads them: checked on a watch of the opted-in Secrets'
//! metadata, each value fetched from the API server once per Secret version) over N bindings against the local GitHub fake,
//! and the quota it spends next to naive polling of the same endpoints.
//!
//! What is real and what is not: the credentials come from a real kube-apiserver (the
//! local control plane, or `KUBECONFIG`), one labelled Secret per namespace of 100 bindings;
//! the bindings and Workspaces themselves live only in this process's reflector stores
//! (10,000 ToolBindings through the operator's controllers would measure the API server's
//! write rate, which the scale rows already do). The ToolBinding controller's status step is
//! run for every finished poll with the operator's own pure functions (`validate`, `compose`,
//! `binding_status`, `needs_write`), and a status it would write is stored back, so "status
//! writes" counts what the operator would send. The fake runs on its own OS thread, whose CPU
//! time is subtracted: "operator CPU" is the engine's alone.
//!
//!   engine --bindings 10000 --interval 40s --measure-secs 80 --out bench/results/current

#[path = "../../tests/fakes/mod.rs"]
mod fakes;
mod portal;

use clap::Parser;
use fakes::github::{self, Github, Repo};
use futures::StreamExt;
use hyperpage::api::{Provider, ToolBinding, Workspace};
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::engine::status::{LastPoll, compose};
use hyperpage::engine::{Engine, EngineConfig, EngineMetrics};
use hyperpage::operator::toolbinding::{HEARTBEAT_INTERVALS, binding_status, needs_write, validate};
use hyperpage::providers::credential::{self, Credentials};
use hyperpage::providers::http::ClientConfig;
use hyperpage::providers::safety::EndpointPolicy;
use hyperpage::providers::{self, Budget, Credential, PollRequest, Scope};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "Engine throughput and quota (make bench)")]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    bindings: usize,
    /// Every binding's refreshInterval: N / interval is the poll rate asked for.
    #[arg(long, default_value = "40s")]
    interval: String,
    /// The steady window, after every binding was polled once (cold).
    #[arg(long, default_value_t = 80)]
    measure_secs: u64,
    /// Repositories at the fake (bindings share them; each binding has its own cache entries).
    #[arg(long, default_value_t = 20)]
    repos: usize,
    /// Bindings polled with fresh caches for the naive reference.
    #[arg(long, default_value_t = 100)]
    naive_sample: usize,
    /// `--poll-concurrency` (default: the operator's).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds during which another client spends the same token's quota.
    #[arg(long, default_value_t = 30)]
    churn_secs: u64,
    /// Seconds of load per target in the portal row, in rounds of about 2 s with the targets
    /// taking turns (0: skip it).
    #[arg(long, default_value_t = 20)]
    portal_secs: u64,
    #[arg(long, default_value = "bench/results/current")]
    out: PathBuf,
}

const TOKEN: &str = "ghp_benchEngineToken0123456789";
const PER_NAMESPACE: usize = 100;

/// Clock ticks of CPU time (user + system) of this process, and of the fake's thread.
fn cpu_ticks() -> (u64, u64) {
    let ticks = |stat: &str| -> Option<u64> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let total = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| ticks(&s)).unwrap_or(0);
    let mut fake = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
            && stat.contains("(fake-github)")
        {
            fake += ticks(&stat).unwrap_or(0);
        }
    }
    (total, fake)
}

fn ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// The ToolBinding controller's status step for one finished poll, with the operator's own
/// pure functions: the record, whether it writes (the status is stored back when it does),
/// and whether the rule before the quota change (a move of `remaining` or `resetAt` writes)
/// would have.
fn status_step(
    engine: &Engine,
    bindings: &reflector::Store<ToolBinding>,
    writer: &mut reflector::store::Writer<ToolBinding>,
    key: &ObjectRef<ToolBinding>,
    heartbeat: Duration,
) -> Option<(hyperpage::engine::status::SyncRecord, bool, bool)> {
    let (record, binding) = (engine.record(key)?, bindings.get(key)?);
    let now = Time(jiff::Timestamp::now());
    let previous = binding.status.clone().unwrap_or_default();
    let desired = compose(validate(&binding, true, &Ok(())), LastPoll::of(Some(&record), &binding), false);
    let status = binding_status(&binding, &previous, &desired, Some(&record), &now);
    let write = needs_write(&previous, &status, heartbeat, &now);
    let moving = |s: &hyperpage::api::ToolBindingStatus| s.rate_limit.as_ref().map(|r| (r.remaining, r.reset_at.clone()));
    let old_rule = write || moving(&previous) != moving(&status);
    if write {
        let mut updated = (*binding).clone();
        updated.status = Some(status);
        writer.apply_watcher_event(&watcher::Event::Apply(updated));
    }
    Some((record, write, old_rule))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn repos(n: usize) -> BTreeMap<String, Repo> {
    (0..n)
        .map(|i| {
            let name = format!("acme/r{i}");
            let repo = Repo {
                pulls: (1..=3).map(|k| github::pull(&name, k, "change")).collect(),
                issues: vec![github::issue(&name, 100, "bug", false)],
                runs: vec![github::run(1, 1, "build", "success", "2026-11-20T10:00:00Z")],
                ..Repo::default()
            };
            (name, repo)
        })
        .collect()
}

/// The fake on its own thread and runtime, so that its CPU time can be told apart.
fn start_fake(repos: BTreeMap<String, Repo>) -> (String, Arc<fakes::Shared>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fake-github".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let fake = Github::start(repos).await;
                fake.shared.set_quota(i64::MAX / 4, Duration::from_secs(3600));
                tx.send((fake.url(), fake.shared.clone())).unwrap();
                std::future::pending::<()>().await;
            })
        })
        .unwrap();
    rx.recv().unwrap()
}

fn binding(i: usize, namespace: &str, endpoint: &str, repos: usize, interval: &str) -> ToolBinding {
    serde_json::from_value(json!({
        "apiVersion": "hyperpage.dev/v1alpha1", "kind": "ToolBinding",
        "metadata": {"name": format!("tb-{i}"), "namespace": namespace, "generation": 1, "uid": format!("uid-tb-{i}")},
        "spec": {"workspaceRef": {"name": format!("ws-{i}")}, "provider": "github", "endpoint": endpoint,
                 "credentialsSecretRef": {"name": "github-token", "key": "token"},
                 "github": {"repositories": [format!("acme/r{}", i % repos)]}, "refreshInterval": interval}
    }))
    .unwrap()
}

fn workspace(i: usize, namespace: &str) -> Workspace {
    serde_json::from_value(json!({
        "apiVersion": "hyperpage.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": format!("ws-{i}"), "namespace": namespace, "generation": 1, "uid": format!("uid-ws-{i}")},
        "spec": {}
    }))
    .unwrap()
}

async fn prepare_namespaces(client: &kube::Client, count: usize, endpoint: &str) -> Result<(), BoxError> {
    let apply = PatchParams::apply("hyperpage-bench-engine").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in 0..count {
        let name = format!("bench-engine-{n}");
        namespaces
            .patch(&name, &apply, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})))
            .await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &name);
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "github-token", "labels": {"hyperpage.dev/credential": "true"},
                         "annotations": {"hyperpage.dev/endpoints": endpoint}},
            "stringData": {"token": TOKEN}});
        secrets.patch("github-token", &apply, &Patch::Apply(secret)).await?;
    }
    Ok(())
}

/// Quota spent by polling `sample` bindings once each with no validators (a fresh cache per
/// poll), as a poller without conditional requests would.
async fn naive_polls(endpoint: &str, shared: &fakes::Shared, sample: usize, repos: usize) -> f64 {
    let before = shared.quota.lock().unwrap().remaining;
    let credential = Credential::new(Provider::Github, TOKEN).unwrap();
    let budget = Budget::new(None);
    for i in 0..sample {
        let b = binding(i, "bench-engine-0", endpoint, repos, "5m");
        let client = fakes::loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
        let request = PollRequest {
            spec: &b.spec,
            endpoint: url::Url::parse(endpoint).unwrap(),
            credential: &credential,
            reserve: 0,
            budget: &budget,
            scope: Scope::default(),
        };
        providers::poll(&client, &request).await.expect("naive poll");
    }
    (before - shared.quota.lock().unwrap().remaining) as f64 / sample as f64
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let interval = hyperpage::api::duration::parse(&args.interval)?;
    let (endpoint, shared) = start_fake(repos(args.repos));
    let client = kube::Client::try_default().await?;
    let namespaces = args.bindings.div_ceil(PER_NAMESPACE);
    eprintln!("[engine] {namespaces} namespaces with a credential Secret");
    prepare_namespaces(&client, namespaces, &endpoint).await?;

    let (bindings, mut binding_writer) = reflector::store::<ToolBinding>();
    let (workspaces, mut workspace_writer) = reflector::store::<Workspace>();
    binding_writer.apply_watcher_event(&watcher::Event::Init);
    workspace_writer.apply_watcher_event(&watcher::Event::Init);
    for i in 0..args.bindings {
        let namespace = format!("bench-engine-{}", i / PER_NAMESPACE);
        binding_writer.apply_watcher_event(&watcher::Event::InitApply(binding(i, &namespace, &endpoint, args.repos, &args.interval)));
        workspace_writer.apply_watcher_event(&watcher::Event::InitApply(workspace(i, &namespace)));
    }
    binding_writer.apply_watcher_event(&watcher::Event::InitDone);
    workspace_writer.apply_watcher_event(&watcher::Event::InitDone);

    // The operator's engine configuration with its flag defaults; loopback http allowed for
    // the fake, as the e2e suite passes --allow-private-cidrs and --allow-insecure-http.
    let policy = EndpointPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()], allow_http: true };
    let mut config = EngineConfig { client: ClientConfig { policy, ..ClientConfig::default() }, ..EngineConfig::default() };
    config.concurrency = args.concurrency.unwrap_or(config.concurrency);
    let concurrency = config.concurrency;
    // The operator's credential reader over a metadata watch of the opted-in Secrets.
    let (opted_in, secrets_writer) = reflector::store();
    let secret_watch = watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), credential::opted_in()).reflect(secrets_writer);
    tokio::spawn(secret_watch.for_each(|_| std::future::ready(())));
    opted_in.wait_until_ready().await?;
    let credentials = Credentials::watched(client.clone(), opted_in);
    let engine = Arc::new(Engine::new(credentials, config, EngineMetrics::register(&mut Default::default()))?);
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<ObjectRef<ToolBinding>>(1024);
    let started = Instant::now();
    let polling = tokio::spawn(engine.clone().run(bindings.clone(), workspaces.clone(), wake_tx, hyperpage::lease::Fence::always_open()));

    // The controller's status step for every finished poll; counts per phase.
    let heartbeat = interval * HEARTBEAT_INTERVALS;
    let mut polled: HashSet<ObjectRef<ToolBinding>> = HashSet::new();
    let mut cold_done: Option<Duration> = None;
    let mut window: Option<(Instant, (u64, u64), i64)> = None;
    let (mut polls, mut writes, mut failed) = (0u64, 0u64, 0u64);
    let mut latencies: Vec<f64> = Vec::new();
    let mut searches = 0usize;
    let measure = Duration::from_secs(args.measure_secs);
    let give_up = Duration::from_secs(args.measure_secs + 1800);
    loop {
        let key = match tokio::time::timeout(Duration::from_secs(1), wake_rx.recv()).await {
            Ok(Some(key)) => Some(key),
            Ok(None) => break,
            Err(_) => None,
        };
        // The fake keeps every request: count searches and let go of them now and then.
        if polls % 2000 == 0 {
            searches += shared.requests().iter().filter(|s| s.path.starts_with("/search")).count();
            shared.clear();
        }
        if let Some(key) = key
            && let Some((record, write, _)) = status_step(&engine, &bindings, &mut binding_writer, &key, heartbeat)
        {
            let now = Time(jiff::Timestamp::now());
            if window.is_some() {
                polls += 1;
                writes += u64::from(write);
                failed += u64::from(record.error.is_some());
                let took = now.0.duration_since(record.attempted_at.0).as_secs_f64();
                latencies.push(took);
            } else if record.error.is_some() {
                eprintln!("[engine] cold poll failed: {:?}", record.error);
            }
            polled.insert(key);
        }
        if cold_done.is_none() && polled.len() == args.bindings {
            cold_done = Some(started.elapsed());
            eprintln!("[engine] every binding polled once (cold) in {:.1} s", started.elapsed().as_secs_f64());
            // Start the window once the first cold polls are due again: the steady state.
            let until_due = interval.mul_f64(0.9).saturating_sub(started.elapsed());
            tokio::time::sleep(until_due).await;
            while let Ok(key) = wake_rx.try_recv() {
                polled.insert(key);
            }
            window = Some((Instant::now(), cpu_ticks(), shared.quota.lock().unwrap().remaining));
        }
        if let Some((from, _, _)) = window
            && from.elapsed() >= measure
        {
            break;
        }
        if started.elapsed() > give_up {
            return Err("the engine did not poll every binding in time".into());
        }
    }
    let (from, cpu_before, quota_before) = window.ok_or("no steady window")?;
    let elapsed = from.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks();
    let spent = quota_before - shared.quota.lock().unwrap().remaining;
    searches += shared.requests().iter().filter(|s| s.path.starts_with("/search")).count();
    let operator_cpu = ((cpu_after.0 - cpu_before.0) - (cpu_after.1 - cpu_before.1)) as f64 / ticks_per_second() / elapsed;
    let fake_cpu = (cpu_after.1 - cpu_before.1) as f64 / ticks_per_second() / elapsed;
    latencies.sort_by(f64::total_cmp);
    let polls_per_second = polls as f64 / elapsed;
    let asked = args.bindings as f64 / interval.as_secs_f64();
    let hours = elapsed / 3600.0;
    let engine_quota = spent as f64 / args.bindings as f64 / hours;
    eprintln!("[engine] naive reference: {} bindings with fresh caches", args.naive_sample);
    let naive_per_poll = naive_polls(&endpoint, &shared, args.naive_sample, args.repos).await;
    let naive_quota = naive_per_poll * 3600.0 / interval.as_secs_f64();

    // Churn: another client spends the same token's quota meanwhile, so `remaining` moves
    // between two polls of a binding (as other bindings of a token with changing data do).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spender = {
        let (stop, endpoint, shared, repos) = (stop.clone(), endpoint.clone(), shared.clone(), args.repos);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                naive_polls(&endpoint, &shared, 1, repos).await;
            }
        })
    };
    let churn_from = Instant::now();
    let quota_at_churn = shared.quota.lock().unwrap().remaining;
    let (mut churn_polls, mut churn_writes, mut churn_old_writes) = (0u64, 0u64, 0u64);
    while churn_from.elapsed() < Duration::from_secs(args.churn_secs) {
        if let Ok(Some(key)) = tokio::time::timeout(Duration::from_secs(1), wake_rx.recv()).await
            && let Some((_, write, old_rule)) = status_step(&engine, &bindings, &mut binding_writer, &key, heartbeat)
        {
            churn_polls += 1;
            churn_writes += u64::from(write);
            churn_old_writes += u64::from(old_rule);
        }
        if churn_polls % 2000 == 0 {
            shared.clear();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = spender.await;
    let churn_spent = quota_at_churn - shared.quota.lock().unwrap().remaining;
    eprintln!(
        "[engine] churn: {churn_writes} status writes in {churn_polls} polls (old rule: {churn_old_writes}), {churn_spent} quota spent by the other client"
    );
    polling.abort();

    // The portal of one Workspace, with its namespace's objects (as a portal watches them).
    let mut portal_rows =
        String::from("| portal: requests/s and p99 at 64 connections vs a bare axum server | not measured in this run | ≥ 0.7× |\n");
    let mut portal_json = json!(null);
    if args.portal_secs > 0 {
        let namespace = "bench-engine-0".to_string();
        let (ws_store, mut ws_writer) = reflector::store::<Workspace>();
        let (tb_store, mut tb_writer) = reflector::store::<ToolBinding>();
        for w in workspaces.state().iter().filter(|w| w.metadata.namespace.as_deref() == Some(&namespace)) {
            ws_writer.apply_watcher_event(&watcher::Event::Apply((**w).clone()));
        }
        for b in bindings.state().iter().filter(|b| b.metadata.namespace.as_deref() == Some(&namespace)) {
            tb_writer.apply_watcher_event(&watcher::Event::Apply((**b).clone()));
        }
        let token = portal::viewer_token(&client, &namespace, "ws-0").await?;
        let ws = workspaces.get(&ObjectRef::new("ws-0").within(&namespace)).ok_or("ws-0 is not in the store")?;
        let hosts = hyperpage::operator::portal_access::allowed_hosts(&ws);
        // As a client inside the cluster names it: the Service's full DNS name.
        let host = hosts.last().cloned().unwrap_or_default();
        let (portal_url, bare_url) = portal::serve(client.clone(), namespace, "ws-0".into(), ws_store, tb_store, hosts);
        let target = |url: String, token: Option<&str>| portal::Target { url, token: token.map(str::to_string), host: host.clone() };
        let targets = [
            ("bare axum \"hello JSON\"", target(format!("{bare_url}/hello"), None)),
            ("portal JSON API (`/api/v1/toolbindings`)", target(format!("{portal_url}/api/v1/toolbindings"), Some(&token))),
            ("portal page (`/`)", target(format!("{portal_url}/"), Some(&token))),
        ];
        let mut tallies: Vec<portal::Tally> = targets.iter().map(|_| portal::Tally::default()).collect();
        for (_, target) in &targets {
            portal::load(target, 64, 2.0, &mut portal::Tally::default()).await; // warm: connections open, identity reviewed and cached
        }
        let rounds = args.portal_secs.div_ceil(2).max(1);
        for _ in 0..rounds {
            for ((_, target), tally) in targets.iter().zip(&mut tallies) {
                portal::load(target, 64, args.portal_secs as f64 / rounds as f64, tally).await;
            }
        }
        let mut figures = Vec::new();
        for ((what, _), tally) in targets.iter().zip(&mut tallies) {
            let l = tally.summary();
            eprintln!("[engine] {what}: {:.0} requests/s, p99 {:.1} ms, {} errors", l.per_second, l.p99_ms, l.errors);
            figures.push((*what, l));
        }
        let bare = figures[0].1.per_second;
        portal_rows.clear();
        for (what, l) in &figures[1..] {
            let r = l.per_second / bare;
            portal_rows.push_str(&format!(
                "| {what}, 64 connections, access control on | {:.0} requests/s (p50 {:.1} ms, p99 {:.1} ms, {} errors) = {r:.2}× the bare server's {bare:.0} requests/s (p99 {:.1} ms) | ≥ 0.7×: {} |\n",
                l.per_second, l.p50_ms, l.p99_ms, l.errors, figures[0].1.p99_ms, if r >= 0.7 { "met" } else { "not met" }
            ));
        }
        portal_json = json!(figures.iter().map(|(what, l)| json!({"target": what, "per_second": l.per_second, "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "errors": l.errors})).collect::<Vec<_>>());
    }

    let result = json!({
        "bindings": args.bindings, "interval_seconds": interval.as_secs_f64(), "concurrency": concurrency,
        "cold_seconds": cold_done.map(|d| d.as_secs_f64()),
        "window_seconds": elapsed, "polls": polls, "polls_per_second": polls_per_second, "asked_per_second": asked,
        "failed_polls": failed,
        "operator_cores": operator_cpu, "fake_cores": fake_cpu,
        "latency_p50_seconds": percentile(&latencies, 0.5), "latency_p99_seconds": percentile(&latencies, 0.99),
        "status_writes": writes, "quota_spent": spent, "quota_per_binding_hour": engine_quota,
        "naive_quota_per_poll": naive_per_poll, "naive_quota_per_binding_hour": naive_quota, "search_calls": searches,
        "portal": portal_json,
        "churn": {"seconds": args.churn_secs, "polls": churn_polls, "status_writes": churn_writes,
                  "status_writes_by_the_previous_rule": churn_old_writes, "quota_spent_by_the_other_client": churn_spent},
    });
    std::fs::create_dir_all(&args.out)?;
    let name = |ext: &str| match args.concurrency {
        Some(c) => format!("engine-concurrency-{c}.{ext}"),
        None => format!("engine.{ext}"),
    };
    std::fs::write(args.out.join(name("json")), serde_json::to_string_pretty(&result)?)?;
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let ratio = if engine_quota > 0.0 { format!("{:.0}x fewer", naive_quota / engine_quota) } else { "none spent".into() };
    let md = format!(
        "## Engine{heading}\n\n\
         `bench/engine` (`cargo run --release --example engine`): `Engine::run` as the operator runs it (due-time queue, \
         `--poll-concurrency` {concurrency}, in-memory cache, credentials checked on a watch of the opted-in Secrets' metadata, each value read from the local kube-apiserver once per Secret version) \
         over {n} GitHub bindings of one repository each (in {namespaces} namespaces, one token per namespace), \
         `refreshInterval` {iv}, against the local GitHub fake; the steady window starts when the first cold polls fall due \
         again. The bindings live in the engine's stores, not in the API server; the ToolBinding controller's status step \
         (`validate` → `compose` → `binding_status` → `needs_write`) runs for every finished poll. The fake's own CPU \
         ({fake:.2} cores) is left out.\n\n\
         | what | figure | goal |\n|---|---|---|\n\
         | engine throughput, {n} bindings, unchanged data (all 304) | {pps:.0} polls/s sustained over {el:.0} s (asked for: {asked:.0}/s), \
         operator {cpu:.2} cores; cold first round {cold:.0} s; failed polls {failed} | ≥ 200 polls/s at ≤ 1 core: {m1} |\n\
         | poll latency (start of poll → controller told) | p50 {p50:.1} ms, p99 {p99:.1} ms | reported |\n\
         | status writes for unchanged data | {writes} in {polls} polls (tokens shared by 100 bindings) | 0: {m3} |\n\
         | status writes for unchanged data while another client spends the same tokens' quota ({cs} s, {churn_spent} requests) \
         | {churn_writes} in {churn_polls} polls; the rule before this change (any move of `remaining` writes) would have \
         written {churn_old_writes} | 0: {m5} |\n\
         | quota per binding-hour, unchanged upstream | engine {eq:.2}; naive polling of the same endpoints (no validators) \
         {nq:.0} ({npp:.0} per poll) — {ratio} | ≥ 10× fewer: {m2} |\n\
         | search calls | {searches} | 0: {m4} |\n\
         {portal_rows}",
        heading = args.concurrency.map(|c| format!(" with `--poll-concurrency` {c}")).unwrap_or_default(),
        n = args.bindings,
        iv = args.interval,
        fake = fake_cpu,
        pps = polls_per_second,
        el = elapsed,
        cpu = operator_cpu,
        cold = cold_done.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        m1 = met(polls_per_second >= 200.0 && operator_cpu <= 1.0),
        p50 = percentile(&latencies, 0.5) * 1000.0,
        p99 = percentile(&latencies, 0.99) * 1000.0,
        m3 = met(writes == 0),
        eq = engine_quota,
        nq = naive_quota,
        npp = naive_per_poll,
        m2 = met(engine_quota * 10.0 <= naive_quota),
        m4 = met(searches == 0),
        cs = args.churn_secs,
        m5 = met(churn_writes == 0),
    );
    std::fs::write(args.out.join(name("md")), &md)?;
    println!("{md}");
    Ok(())
}
