//! A Slack incoming webhook (<https://api.slack.com/messaging/webhooks>): `POST` JSON with a
//! `text` to `/services/T…/B…/…`; `200` with the body `ok`; `400 invalid_payload` without a
//! text; `404 no_service` for an unknown path; and, while throttling
//! (<https://api.slack.com/apis/rate-limits>: about one message per second per webhook),
//! `429` with `Retry-After` in seconds and the body `rate_limited`.

use super::Server;
use axum::http::{HeaderMap, Response, StatusCode, Uri};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// What the fake saw and how it answers.
#[derive(Default)]
pub struct State {
    /// The texts of the messages it accepted, in order.
    pub messages: Vec<String>,
    /// Every request: (path, status answered).
    pub attempts: Vec<(String, u16)>,
    /// Answer this many of the next requests with 429 and this Retry-After.
    pub throttle: Option<(usize, u64)>,
}

pub struct Slack {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
    /// The one path that is a webhook (the rest are `no_service`).
    pub path: String,
}

impl Slack {
    pub async fn start() -> Self {
        let path = "/services/T0E2E/B0E2E/e2eSlackWebhookSecretPath".to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (s, p) = (state.clone(), path.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, _headers: HeaderMap, body: axum::body::Bytes| {
            let (state, path) = (s.clone(), p.clone());
            async move {
                let mut state = state.lock().unwrap();
                let (status, text, retry_after) = if uri.path() != path {
                    (404, "no_service", None)
                } else if let Some((left, seconds)) = state.throttle.filter(|(left, _)| *left > 0) {
                    state.throttle = Some((left - 1, seconds));
                    (429, "rate_limited", Some(seconds))
                } else {
                    match serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["text"].as_str().map(str::to_string)) {
                        Some(message) => {
                            state.messages.push(message);
                            (200, "ok", None)
                        }
                        None => (400, "invalid_payload", None),
                    }
                };
                state.attempts.push((uri.path().to_string(), status));
                let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap()).header("content-type", "text/html");
                if let Some(seconds) = retry_after {
                    response = response.header("retry-after", seconds.to_string());
                }
                response.body(axum::body::Body::from(text)).unwrap()
            }
        });
        Self { server: Server::start(app).await, state, path }
    }

    /// The webhook URL (what the team puts in its Secret).
    pub fn webhook_url(&self) -> String {
        format!("{}{}", self.server.url(), self.path)
    }

    pub fn messages(&self) -> Vec<String> {
        self.state.lock().unwrap().messages.clone()
    }
}
