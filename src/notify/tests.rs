use super::*;
use crate::api::toolbinding::{ToolBindingStatus, ToolItems};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

fn workspace() -> Workspace {
    let mut ws: Workspace = serde_norway::from_str(include_str!("../../tests/fixtures/workspace-basic.yaml")).unwrap();
    ws.metadata.namespace = Some("team-a".into());
    ws
}

fn pipeline(id: &str, failing: bool) -> Item {
    Item {
        id: id.into(),
        title: format!("{id} on main"),
        url: format!("https://github.com/acme/api/actions/runs/{id}"),
        failing,
        ..Item::default()
    }
}

fn cond(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{type_} is {status}"),
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

fn binding(pipelines: Vec<Item>, conditions: Vec<Condition>) -> Arc<ToolBinding> {
    let mut b: ToolBinding = serde_norway::from_str(include_str!("../../tests/fixtures/toolbinding-github.yaml")).unwrap();
    b.metadata.name = Some("github".into());
    b.metadata.namespace = Some("team-a".into());
    b.status = Some(ToolBindingStatus {
        conditions,
        items: Some(ToolItems { pipelines, ..ToolItems::default() }),
        ..ToolBindingStatus::default()
    });
    Arc::new(b)
}

fn events(messages: &[Message]) -> Vec<NotificationEvent> {
    messages.iter().map(|m| m.event).collect()
}

#[test]
fn a_red_pipeline_is_announced_once_and_its_recovery_once() {
    let ws = workspace();
    let green = binding(vec![pipeline("build", false)], vec![]);
    let (messages, announced) = transitions(&ws, std::slice::from_ref(&green), &BTreeSet::new());
    assert!(messages.is_empty() && announced.is_empty());

    let red = binding(vec![pipeline("build", true), pipeline("deploy", false)], vec![]);
    let (messages, announced) = transitions(&ws, std::slice::from_ref(&red), &announced);
    assert_eq!(events(&messages), [NotificationEvent::PipelineFailed]);
    let text = messages[0].text();
    assert!(text.contains("team-a/") && text.contains("github") && text.contains("build on main"), "{text}");
    assert!(text.contains("https://github.com/acme/api/actions/runs/build"), "the link: {text}");
    assert_eq!(announced.iter().collect::<Vec<_>>(), ["pipeline/github/build"]);

    // Still red (another poll, a new leader reading the record): nothing again.
    let (messages, again) = transitions(&ws, &[red], &announced);
    assert!(messages.is_empty());
    assert_eq!(again, announced);

    let (messages, announced) = transitions(&ws, &[green], &announced);
    assert_eq!(events(&messages), [NotificationEvent::PipelineRecovered]);
    assert!(announced.is_empty());
}

#[test]
fn a_pipeline_that_left_the_list_is_not_called_recovered() {
    let ws = workspace();
    let announced = BTreeSet::from(["pipeline/github/build".to_string()]);
    let (messages, announced) = transitions(&ws, &[binding(vec![pipeline("other", false)], vec![])], &announced);
    assert!(messages.is_empty());
    assert!(announced.is_empty());
}

#[test]
fn binding_states_degraded_rejected_and_quota() {
    let ws = workspace();
    let bad = binding(
        vec![],
        vec![
            cond(conditions::DEGRADED, "True", "PollFailed"),
            cond(conditions::CREDENTIALS_VALID, "False", crate::engine::status::REJECTED),
            cond(conditions::RATE_LIMITED, "True", "QuotaExhausted"),
        ],
    );
    let (messages, announced) = transitions(&ws, &[bad], &BTreeSet::new());
    let mut got = events(&messages);
    got.sort();
    assert_eq!(got, [NotificationEvent::BindingDegraded, NotificationEvent::CredentialsRejected, NotificationEvent::QuotaExhausted]);
    let good = binding(
        vec![],
        vec![
            cond(conditions::DEGRADED, "False", "AsExpected"),
            cond(conditions::CREDENTIALS_VALID, "True", "SecretFound"),
            cond(conditions::RATE_LIMITED, "False", "WithinLimits"),
        ],
    );
    let (messages, announced) = transitions(&ws, &[good], &announced);
    assert_eq!(events(&messages), [NotificationEvent::BindingRecovered], "credentials and quota clear silently");
    assert!(announced.is_empty());
}

#[test]
fn sinks_get_only_the_events_they_want() {
    let mut sink: SinkSpec = serde_json::from_value(serde_json::json!({
        "name": "s", "type": "slack", "secretRef": {"name": "hook", "key": "url"}
    }))
    .unwrap();
    assert!(wants(&sink, NotificationEvent::QuotaExhausted), "all when empty");
    sink.events = vec![NotificationEvent::PipelineFailed];
    assert!(wants(&sink, NotificationEvent::PipelineFailed));
    assert!(!wants(&sink, NotificationEvent::PipelineRecovered));
}

#[test]
fn destinations_are_pinned_like_credentials() {
    let sink = |json: serde_json::Value| -> SinkSpec { serde_json::from_value(json).unwrap() };
    let slack = sink(serde_json::json!({"name": "s", "type": "slack", "secretRef": {"name": "h", "key": "url"}}));
    let none = BTreeMap::new();
    assert!(target(&slack, "https://hooks.slack.com/services/T0/B0/xyz", &none).is_ok());
    let err = target(&slack, "https://attacker.example/services/x", &none).unwrap_err();
    assert!(!err.contains("attacker.example") && err.contains("hyperpage.dev/endpoints"), "names no URL: {err}");
    let pinned = BTreeMap::from([(credential::ENDPOINTS_ANNOTATION.to_string(), "http://127.0.0.1:9999".to_string())]);
    assert!(target(&slack, "http://127.0.0.1:9999/services/x", &pinned).is_ok());
    assert!(target(&slack, "https://hooks.slack.com/services/x", &pinned).is_err(), "the annotation replaces the default");

    let teams = sink(serde_json::json!({"name": "t", "type": "teams", "secretRef": {"name": "h", "key": "url"}}));
    assert!(target(&teams, "https://prod.westeurope.logic.azure.com/workflows/x", &none).is_err(), "no default host");

    let telegram =
        sink(serde_json::json!({"name": "tg", "type": "telegram", "chatId": "-100", "secretRef": {"name": "h", "key": "token"}}));
    let url = target(&telegram, "123456:ABC-def_ghi", &none).unwrap();
    assert_eq!(url.as_str(), "https://api.telegram.org/bot123456:ABC-def_ghi/sendMessage");
    assert!(target(&telegram, "123/../../evil", &none).is_err(), "a token cannot change the path");
    let own = sink(
        serde_json::json!({"name": "tg", "type": "telegram", "chatId": "-100", "apiUrl": "http://127.0.0.1:9999/", "secretRef": {"name": "h", "key": "token"}}),
    );
    assert!(target(&own, "1:a", &none).is_err());
    assert!(target(&own, "1:a", &pinned).is_ok());
}
