//! Notifications end to end: a pipeline turns red at a fake GitHub -> exactly one message at a
//! fake Slack webhook and one at a fake Telegram bot (each answering the first attempt with
//! its documented 429 and retry-after), with the link; the leader is killed right after and
//! the new leader sends nothing again; the pipeline turns green -> one "recovered" message.

use crate::engine::fakes::github::{self, Github, Repo};
use crate::engine::fakes::slack::Slack;
use crate::engine::fakes::telegram::Telegram;
use crate::support::*;
use crate::webhook::post;
use hyperpage::api::conditions::{self, SYNCED};
use hyperpage::api::{ToolBinding, Workspace};
use hyperpage::webhook::verify::{path_digest, sign};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::time::Duration;

const TOKEN: &str = "ghp_e2eNotifyTokenMustNeverAppear";
const HOOK_SECRET: &str = "whsec-e2eNotifyHookSecret";
const BOT_TOKEN: &str = "123456789:AAe2eNotifyBotTokenMustNeverAppear";
const CHAT: &str = "-1001234567890";
const REPO: &str = "acme/payments-api";

fn repos() -> BTreeMap<String, Repo> {
    let repo = Repo {
        default_branch: "main".into(),
        runs: vec![github::run(1, 10, "build", "success", "2026-11-20T10:00:00Z")],
        ..Repo::default()
    };
    BTreeMap::from([(REPO.to_string(), repo)])
}

fn manifests(github: &str, slack_url: &str, slack_origin: &str, telegram: &str) -> String {
    let secret = |name: &str, key: &str, value: &str, endpoints: Option<&str>| {
        let annotations = endpoints.map(|e| format!("\n  annotations: {{hyperpage.dev/endpoints: \"{e}\"}}")).unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{hyperpage.dev/credential: \"true\"}}{annotations}\n\
             stringData: {{{key}: \"{value}\"}}\n---\n"
        )
    };
    [
        secret("github-token", "token", TOKEN, Some(github)),
        secret("github-webhook", "secret", HOOK_SECRET, None),
        secret("team-slack", "url", slack_url, Some(slack_origin)),
        secret("team-telegram", "token", BOT_TOKEN, Some(telegram)),
        format!(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: Workspace\nmetadata: {{name: payments}}\nspec:\n  refreshInterval: 10m\n  \
             portal: {{replicas: 1}}\n  notifications:\n    sinks:\n    - {{name: slack, type: slack, secretRef: {{name: team-slack, key: url}}}}\n    \
             - {{name: telegram, type: telegram, chatId: \"{CHAT}\", apiUrl: \"{telegram}\", secretRef: {{name: team-telegram, key: token}}, \
             events: [PipelineFailed, PipelineRecovered]}}\n---\n"
        ),
        format!(
            "apiVersion: hyperpage.dev/v1alpha1\nkind: ToolBinding\nmetadata: {{name: github}}\nspec:\n  workspaceRef: {{name: payments}}\n  \
             provider: github\n  endpoint: {github}\n  credentialsSecretRef: {{name: github-token, key: token}}\n  \
             github: {{repositories: [{REPO}]}}\n  webhook: {{secretRef: {{name: github-webhook, key: secret}}}}\n"
        ),
    ]
    .concat()
}

fn start(identity: &str, hooks: u16) -> Operator {
    let address = format!("--webhook-address=127.0.0.1:{hooks}");
    Operator::start(OperatorOptions {
        identity,
        lease_name: "e2e-notify",
        extra: &["--polling=true", "--allow-private-cidrs=127.0.0.0/8", "--allow-insecure-http=true", &address],
    })
}

#[tokio::test]
#[ignore = "needs a cluster: make e2e"]
async fn a_red_pipeline_is_announced_once_across_a_failover_and_its_recovery_once() {
    let _serial = serial().await;
    let client = crate::setup().await;
    let ns = TestNamespace::create(&client, "e2e-notify").await;
    let fake = Github::start(repos()).await;
    fake.shared.expect_auth(&format!("Bearer {TOKEN}"));
    let slack = Slack::start().await;
    let telegram = Telegram::start(BOT_TOKEN, CHAT).await;
    let (first_hooks, second_hooks) = (free_port(), free_port());
    let mut first = start("e2e-notify-a", first_hooks);
    wait_for("the first operator to lead", Duration::from_secs(30), || async {
        (first.metric("hyperpage_leader ").await? == 1.0).then_some(())
    })
    .await;
    let second = start("e2e-notify-b", second_hooks);
    apply_yaml(&client, &ns.name, &manifests(&fake.url(), &slack.webhook_url(), &slack.server.url(), &telegram.url())).await;

    let bindings: Api<ToolBinding> = Api::namespaced(client.clone(), &ns.name);
    let workspaces: Api<Workspace> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the first, green sync", Duration::from_secs(60), || async {
        let b = bindings.get("github").await.ok()?;
        let synced = b.status.as_ref().and_then(|s| conditions::find(&s.conditions, SYNCED))?.status == "True";
        (synced && b.status?.summary?.pipelines == 1).then_some(())
    })
    .await;
    wait_for("the notifier's record", Duration::from_secs(10), || async {
        let n = workspaces.get("payments").await.ok()?.status?.notifications?;
        (conditions::find(&n.conditions, "Delivered")?.status == "True").then_some(())
    })
    .await;
    assert!(slack.messages().is_empty() && telegram.messages().is_empty(), "green: nothing to say");

    // Both services throttle the first attempt; the operator must wait as told, not drop it.
    slack.state.lock().unwrap().throttle = Some((1, 1));
    telegram.state.lock().unwrap().throttle = Some((1, 1));
    fake.repos.lock().unwrap().get_mut(REPO).unwrap().runs.insert(0, github::run(2, 10, "build", "failure", "2026-11-21T10:00:00Z"));
    let http = reqwest::Client::new();
    let push = r#"{"ref":"refs/heads/main"}"#;
    let signature = sign(HOOK_SECRET.as_bytes(), push.as_bytes());
    let digest = path_digest(&ns.name, "github", HOOK_SECRET.as_bytes());
    wait_for("the push to be accepted", Duration::from_secs(30), || async {
        (post(&http, &format!("http://127.0.0.1:{first_hooks}/hooks/{digest}"), Some(&signature), push).await == 202).then_some(())
    })
    .await;
    wait_for("one message at each sink", Duration::from_secs(30), || async {
        (slack.messages().len() == 1 && telegram.messages().len() == 1).then_some(())
    })
    .await;
    // The leader dies right after.
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let text = &slack.messages()[0];
    assert!(text.contains("pipeline failed") && text.contains("acme/payments-api/build"), "{text}");
    assert!(text.contains("https://github.com/acme/api/actions/runs/2"), "the link: {text}");
    assert!(text.contains(&format!("{}/payments", ns.name)), "names the workspace: {text}");
    assert_eq!(telegram.messages()[0].0, CHAT);
    assert!(telegram.messages()[0].1.contains("https://github.com/acme/api/actions/runs/2"));
    assert_eq!(slack.state.lock().unwrap().attempts.iter().map(|a| a.1).collect::<Vec<_>>(), [429, 200], "retried after the 429");
    assert_eq!(telegram.state.lock().unwrap().attempts, [429, 200], "retried after retry_after");

    wait_for("the second operator to lead", Duration::from_secs(30), || async {
        (second.metric("hyperpage_leader ").await? == 1.0).then_some(())
    })
    .await;
    // The new leader's notifier runs every second: give it several looks.
    wait_for("the new leader to have polled", Duration::from_secs(30), || async {
        (second.metric("hyperpage_poll_duration_seconds_count").await.unwrap_or(0.0) >= 1.0
            || second.metric("hyperpage_reconcile_total{controller=\"workspace\"}").await? >= 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(slack.messages().len(), 1, "the new leader did not send it again");
    assert_eq!(telegram.messages().len(), 1);

    // Green again: one "recovered" each.
    fake.repos.lock().unwrap().get_mut(REPO).unwrap().runs.insert(0, github::run(3, 10, "build", "success", "2026-11-22T10:00:00Z"));
    wait_for("the push to the new leader to be accepted", Duration::from_secs(30), || async {
        (post(&http, &format!("http://127.0.0.1:{second_hooks}/hooks/{digest}"), Some(&signature), push).await == 202).then_some(())
    })
    .await;
    wait_for("one recovered message at each sink", Duration::from_secs(30), || async {
        (slack.messages().len() == 2 && telegram.messages().len() == 2).then_some(())
    })
    .await;
    assert!(slack.messages()[1].contains("pipeline recovered"), "{}", slack.messages()[1]);
    assert!(telegram.messages()[1].1.contains("https://github.com/acme/api/actions/runs/3"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((slack.messages().len(), telegram.messages().len()), (2, 2), "nothing more");

    // A sink that refuses: Delivered=False naming it, and a Warning Event; no secret anywhere.
    slack.state.lock().unwrap().throttle = None;
    let mut bad = slack.webhook_url();
    bad.push_str("-revoked");
    apply_yaml(
        &client,
        &ns.name,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-slack\n  labels: {{hyperpage.dev/credential: \"true\"}}\n  \
         annotations: {{hyperpage.dev/endpoints: \"{}\"}}\nstringData: {{url: \"{bad}\"}}\n",
            slack.server.url()
        ),
    )
    .await;
    fake.repos.lock().unwrap().get_mut(REPO).unwrap().runs.insert(0, github::run(4, 10, "build", "failure", "2026-11-23T10:00:00Z"));
    tokio::time::sleep(hyperpage::webhook::COALESCE_WINDOW).await;
    assert_eq!(post(&http, &format!("http://127.0.0.1:{second_hooks}/hooks/{digest}"), Some(&signature), push).await, 202);
    let condition = wait_for("Delivered=False", Duration::from_secs(30), || async {
        let n = workspaces.get("payments").await.ok()?.status?.notifications?;
        let c = conditions::find(&n.conditions, "Delivered")?.clone();
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(condition.reason, "DeliveryFailed");
    assert!(condition.message.contains("\"slack\"") && condition.message.contains("404"), "{}", condition.message);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = wait_for("a NotificationFailed event", Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("NotificationFailed"))
    })
    .await;
    assert_eq!(telegram.messages().len(), 3, "the other sink still delivers");
    let mut haystack = serde_json::to_string(&workspaces.get("payments").await.unwrap().status).unwrap();
    haystack += &format!("{:?}", event.message);
    haystack += &second.metrics().await.unwrap();
    haystack += &std::fs::read_to_string(&second.log).unwrap();
    haystack += &std::fs::read_to_string(&first.log).unwrap();
    for needle in [BOT_TOKEN, "e2eSlackWebhookSecretPath", TOKEN] {
        assert!(!haystack.contains(needle), "{needle} leaked");
    }
    assert!(haystack.contains("hyperpage_notifications_total"), "the scan covered the metrics");
}
