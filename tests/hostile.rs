//! A tenant may aim a binding at a server it controls. Against every provider, hostile
//! bodies — 8 MiB of `[0,0,…]` (and as much as the response cap lets through), arrays nested
//! 100,000 deep, endless pages of maximal size, a chunked body that never ends — must cost bounded memory, never crash the process, and
//! leave the binding `Degraded` with a reason a person understands.
//!
//! Alone in its test binary, so the peak RSS it reads from `/proc/self/status` is its own.

mod fakes;

use fakes::github::{self, Github, Repo};
use fakes::gitlab::{self, Gitlab, Project};
use fakes::harbor::{self, Harbor};
use fakes::jenkins::{self, Jenkins};
use fakes::jira::{self, Jira};
use fakes::{Hostile, Mode, Shared};
use hyperpage::api::ToolBindingSpec;
use hyperpage::api::conditions::{DEGRADED, DesiredCondition, READY};
use hyperpage::engine::cache::{Cache, CacheMetrics};
use hyperpage::engine::status::{LastPoll, SyncRecord, compose};
use hyperpage::providers::http::ClientConfig;
use hyperpage::providers::{self, Budget, Credential, PollRequest, ProviderError, Snapshot};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The stated bound on peak RSS growth while every provider is fed every hostile body, five
/// polls at a time (the README quotes it with the measured figure).
const PEAK_GROWTH_BOUND_MIB: u64 = 64;
const MIB: usize = 1024 * 1024;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn spec(yaml: &str) -> ToolBindingSpec {
    serde_norway::from_str(&format!("workspaceRef: {{name: w}}\ncredentialsSecretRef: {{name: s, key: k}}\n{yaml}")).unwrap()
}

struct Target {
    name: &'static str,
    shared: Arc<Shared>,
    url: String,
    spec: ToolBindingSpec,
    token: &'static str,
}

async fn poll(target: &Target) -> Result<Snapshot, ProviderError> {
    let client = fakes::loopback_client(ClientConfig::default(), Cache::memory(CacheMetrics::default()));
    let credential = Credential::new(target.spec.provider, target.token).unwrap();
    let budget = Budget::new(None);
    let request = PollRequest {
        spec: &target.spec,
        endpoint: url::Url::parse(&target.url).unwrap(),
        credential: &credential,
        reserve: 0,
        budget: &budget,
        scope: Default::default(),
    };
    providers::poll(&client, &request).await
}

fn degraded(error: &ProviderError) -> DesiredCondition {
    let record = SyncRecord {
        attempted_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        succeeded_at: None,
        snapshot: None,
        error: Some(error.clone()),
        rate_limit: None,
        unchanged: false,
    };
    let valid = vec![
        DesiredCondition::new(READY, true, "Configured", "ok"),
        DesiredCondition::new(hyperpage::api::conditions::CREDENTIALS_VALID, true, "SecretFound", "ok"),
    ];
    compose(valid, LastPoll::Fresh(&record), false).into_iter().find(|c| c.type_ == DEGRADED).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_cost_bounded_memory_and_degrade_the_binding() {
    let github = Github::start(BTreeMap::from([(
        "acme/api".to_string(),
        Repo {
            pulls: (1..=30).map(|n| github::pull("acme/api", n, "change")).collect(),
            issues: vec![github::issue("acme/api", 100, "bug", false)],
            runs: vec![github::run(1, 1, "build", "success", "2026-11-20T10:00:00Z")],
            ..Repo::default()
        },
    )]))
    .await;
    let gitlab = Gitlab::start(BTreeMap::from([(
        "team/app".to_string(),
        Project {
            id: 1,
            default_branch: "main".into(),
            merge_requests: vec![gitlab::merge_request("team/app", 1, "change", "opened", false, "2026-11-20T10:00:00.000Z")],
            issues: vec![gitlab::issue("team/app", 1, "bug", "opened", None, "2026-11-20T10:00:00.000Z")],
            pipelines: vec![gitlab::pipeline("team/app", 1, "success", "main", "2026-11-20T10:00:00.000Z")],
            ..Project::default()
        },
    )]))
    .await;
    let jira = Jira::start(vec![jira::issue("PAY-1", "ticket", "To Do", None, "2026-11-20T10:15:30.000+0000")]).await;
    let jenkins =
        Jenkins::start(BTreeMap::from([("build".to_string(), vec![jenkins::build(1, Some("SUCCESS"), false, 1_795_428_000_000)])])).await;
    let harbor = Harbor::start(BTreeMap::from([(
        "payments".to_string(),
        BTreeMap::from([("api".to_string(), vec![harbor::artifact(1, Some("v1"), "2026-11-20T10:00:00.000Z", None)])]),
    )]))
    .await;
    let targets = [
        Target {
            name: "github",
            shared: github.shared.clone(),
            url: github.url(),
            spec: spec("provider: github\ngithub: {repositories: [acme/api]}\n"),
            token: "ghp_hostile",
        },
        Target {
            name: "gitlab",
            shared: gitlab.shared.clone(),
            url: gitlab.url(),
            spec: spec("provider: gitlab\ngitlab: {projects: [team/app]}\n"),
            token: "glpat-hostile",
        },
        Target {
            name: "jira",
            shared: jira.shared.clone(),
            url: jira.url(),
            spec: spec("provider: jira\njira: {jql: project = PAY}\n"),
            token: "pat",
        },
        Target {
            name: "jenkins",
            shared: jenkins.shared.clone(),
            url: jenkins.url(),
            spec: spec("provider: jenkins\njenkins: {jobs: [build]}\n"),
            token: "u:t",
        },
        Target {
            name: "harbor",
            shared: harbor.shared.clone(),
            url: harbor.url(),
            spec: spec("provider: harbor\nharbor: {projects: [payments]}\n"),
            token: "robot$r:s",
        },
    ];
    // Warm up (allocator, TLS-free HTTP stack, the fakes' prebuilt bodies), then reset the peak.
    for target in &targets {
        poll(target).await.unwrap_or_else(|e| panic!("{}: {e}", target.name));
    }
    let zeros = Hostile::Zeros(8 * MIB);
    let nested = Hostile::Nested(100_000);
    fakes::hostile_bytes(zeros);
    fakes::hostile_bytes(nested);

    let cap = ClientConfig::default().max_body_bytes;
    let zeros_within_cap = Hostile::Zeros(cap);
    fakes::hostile_bytes(zeros_within_cap);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS (Linux >= 4.0)");
    let baseline = status_kib("VmHWM:");
    for hostile in [zeros, zeros_within_cap, nested, Hostile::MaximalPages(cap - 64 * 1024), Hostile::Endless] {
        for target in &targets {
            target.shared.set_mode(Mode::Hostile(hostile));
        }
        // Five bindings at once, as the engine would poll them.
        let results = futures::future::join_all(targets.iter().map(poll)).await;
        for (target, result) in targets.iter().zip(results) {
            match (hostile, result) {
                (Hostile::MaximalPages(_), Ok(snapshot)) => {
                    // Valid data: read within the page and item bounds.
                    let items = &snapshot.items;
                    for list in [&items.code_reviews, &items.pipelines, &items.tickets, &items.artifacts] {
                        assert!(list.len() <= providers::MAX_ITEMS, "{}: {} items", target.name, list.len());
                        assert!(list.iter().all(|i| i.title.len() <= 256 * 4 && i.url.len() <= 2048 * 4));
                    }
                    let pages = target.shared.requests().len();
                    assert!(pages <= 80, "{}: {pages} requests", target.name);
                }
                (_, Ok(snapshot)) => panic!("{} accepted a hostile body ({hostile:?}): {:?}", target.name, snapshot.summary),
                (_, Err(error)) => {
                    let condition = degraded(&error);
                    assert_eq!(condition.status, Some(true), "{}: {hostile:?}", target.name);
                    assert!(
                        matches!(condition.reason, "MalformedResponse" | "UpstreamError" | "NotFound"),
                        "{}: {hostile:?}: {error}",
                        target.name
                    );
                    let clear = ["not the JSON expected", "larger than", "cut off", "not found"];
                    assert!(clear.iter().any(|c| condition.message.contains(c)), "{}: {hostile:?}: {}", target.name, condition.message);
                    assert!(condition.message.len() < 400, "{}", condition.message);
                    eprintln!("{:>8} {hostile:?}: {}", target.name, condition.message);
                }
            }
            target.shared.clear();
        }
    }
    let growth_mib = (status_kib("VmHWM:").saturating_sub(baseline)) / 1024;
    eprintln!("peak RSS growth over all hostile bodies: {growth_mib} MiB (bound {PEAK_GROWTH_BOUND_MIB} MiB)");
    assert!(growth_mib < PEAK_GROWTH_BOUND_MIB, "peak RSS grew by {growth_mib} MiB");
}
