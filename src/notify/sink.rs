//! Delivering one message to one sink, the way each service documents it.
//!
//! - Slack incoming webhooks: `POST {"text": …}`; `200 ok`; `429` with `Retry-After` seconds
//!   (<https://api.slack.com/messaging/webhooks>, <https://api.slack.com/apis/rate-limits>).
//! - Microsoft Teams workflow webhooks: `POST` a message with an Adaptive Card attachment;
//!   `202`; `429` with `Retry-After`
//!   (<https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook>).
//! - Telegram Bot API: `POST /bot<token>/sendMessage {"chat_id", "text"}`; `{"ok": true}`, or
//!   `{"ok": false, "error_code": 429, "parameters": {"retry_after": N}}`
//!   (<https://core.telegram.org/bots/api#making-requests>, `ResponseParameters`).
//! - Generic: `POST` the message as JSON; any 2xx.
//!
//! The URL (Slack, Teams, generic) and the bot token (Telegram) are secrets: no error message
//! names them; errors name the sink and the status only.

use crate::api::workspace::SinkType;
use std::time::Duration;

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again after this long (429 or 5xx; the service's own wait when it gives one).
    Retry(Duration),
    /// Retrying will not help (4xx other than 429, a malformed answer).
    Failed(String),
}

/// The longest wait a sink may ask for before the message is given up.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Attempts per message.
pub const ATTEMPTS: u32 = 5;

/// Classifies a sink's answer (pure): the status, its `Retry-After` header, its body.
pub fn classify(kind: SinkType, status: u16, retry_after: Option<&str>, body: &[u8], attempt: u32) -> Outcome {
    let backoff = Duration::from_secs(1 << attempt.min(5));
    let header_wait = retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    if kind == SinkType::Telegram {
        let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if answer["ok"] == true && (200..300).contains(&status) {
            return Outcome::Delivered;
        }
        let wait = answer["parameters"]["retry_after"].as_u64().map(Duration::from_secs).or(header_wait);
        return match (status, answer["error_code"].as_u64()) {
            (429, _) | (_, Some(429)) => Outcome::Retry(wait.unwrap_or(backoff)),
            (500.., _) => Outcome::Retry(backoff),
            _ => Outcome::Failed(format!(
                "Telegram answered {status}: {}",
                answer["description"].as_str().unwrap_or("no description").chars().take(200).collect::<String>()
            )),
        };
    }
    match status {
        200..=299 => Outcome::Delivered,
        429 => Outcome::Retry(header_wait.unwrap_or(backoff)),
        500.. => Outcome::Retry(header_wait.unwrap_or(backoff)),
        _ => {
            // Slack answers with a short error code in plain text (invalid_payload, no_service …).
            let text: String = String::from_utf8_lossy(body).chars().take(100).filter(|c| !c.is_control()).collect();
            Outcome::Failed(format!("answered {status}: {text}"))
        }
    }
}

/// The request body for a sink (pure).
pub fn payload(kind: SinkType, chat_id: Option<&str>, message: &super::Message) -> serde_json::Value {
    match kind {
        SinkType::Slack => serde_json::json!({ "text": message.text(), "unfurl_links": false }),
        SinkType::Teams => serde_json::json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [{ "type": "TextBlock", "text": message.text(), "wrap": true }],
                    "actions": message.link.as_ref().map(|url| vec![serde_json::json!({"type": "Action.OpenUrl", "title": "Open", "url": url})]).unwrap_or_default(),
                }
            }]
        }),
        SinkType::Telegram => serde_json::json!({
            "chat_id": chat_id.unwrap_or_default(),
            "text": message.text(),
            "disable_web_page_preview": true,
        }),
        SinkType::Webhook => serde_json::to_value(message).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_and_teams_answers() {
        for kind in [SinkType::Slack, SinkType::Teams, SinkType::Webhook] {
            assert_eq!(classify(kind, 200, None, b"ok", 0), Outcome::Delivered);
            assert_eq!(classify(kind, 202, None, b"", 0), Outcome::Delivered);
            assert_eq!(classify(kind, 429, Some("7"), b"rate_limited", 0), Outcome::Retry(Duration::from_secs(7)));
            assert_eq!(classify(kind, 429, None, b"", 2), Outcome::Retry(Duration::from_secs(4)));
            assert_eq!(classify(kind, 503, None, b"", 1), Outcome::Retry(Duration::from_secs(2)));
            assert!(
                matches!(classify(kind, 404, None, b"no_service", 0), Outcome::Failed(m) if m.contains("404") && m.contains("no_service"))
            );
        }
    }

    #[test]
    fn telegram_answers() {
        let t = SinkType::Telegram;
        assert_eq!(classify(t, 200, None, br#"{"ok":true,"result":{"message_id":1}}"#, 0), Outcome::Delivered);
        let limited = br#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#;
        assert_eq!(classify(t, 429, None, limited, 0), Outcome::Retry(Duration::from_secs(3)));
        let bad = br#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#;
        assert!(matches!(classify(t, 400, None, bad, 0), Outcome::Failed(m) if m.contains("chat not found")));
        assert_eq!(classify(t, 502, None, b"<html>", 3), Outcome::Retry(Duration::from_secs(8)));
    }
}
