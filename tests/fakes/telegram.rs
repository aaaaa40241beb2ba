//! The Telegram Bot API's `sendMessage` (<https://core.telegram.org/bots/api#making-requests>,
//! <https://core.telegram.org/bots/api#sendmessage>): `POST /bot<token>/sendMessage` with
//! JSON `chat_id` and `text`; every answer is JSON with `ok`. Success: `{"ok": true,
//! "result": Message}`. A wrong token: `401 {"ok": false, "error_code": 401, "description":
//! "Unauthorized"}`; an unknown chat: `400 … "Bad Request: chat not found"`; flood control:
//! `429 {"ok": false, "error_code": 429, "description": "Too Many Requests: retry after N",
//! "parameters": {"retry_after": N}}` (`ResponseParameters`).

use super::Server;
use axum::http::{Response, StatusCode, Uri};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct State {
    /// (chat_id, text) of the messages it accepted, in order.
    pub messages: Vec<(String, String)>,
    /// Every request's status.
    pub attempts: Vec<u16>,
    /// Answer this many of the next requests with 429 and this retry_after.
    pub throttle: Option<(usize, u64)>,
}

pub struct Telegram {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
}

impl Telegram {
    /// A bot with `token` that may post to `chat`.
    pub async fn start(token: &str, chat: &str) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (s, method, chat) = (state.clone(), format!("/bot{token}/sendMessage"), chat.to_string());
        let app = axum::Router::new().fallback(move |uri: Uri, body: axum::body::Bytes| {
            let (state, method, chat) = (s.clone(), method.clone(), chat.clone());
            async move {
                let mut state = state.lock().unwrap();
                let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                let chat_id = match &request["chat_id"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                let (status, answer) = if uri.path() != method {
                    (401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}))
                } else if let Some((left, seconds)) = state.throttle.filter(|(left, _)| *left > 0) {
                    state.throttle = Some((left - 1, seconds));
                    let description = format!("Too Many Requests: retry after {seconds}");
                    (429, json!({"ok": false, "error_code": 429, "description": description, "parameters": {"retry_after": seconds}}))
                } else if chat_id != chat {
                    (400, json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}))
                } else if let Some(text) = request["text"].as_str().filter(|t| !t.is_empty()) {
                    state.messages.push((chat_id.clone(), text.to_string()));
                    let id = state.messages.len();
                    (200, json!({"ok": true, "result": {"message_id": id, "chat": {"id": chat_id}, "text": text}}))
                } else {
                    (400, json!({"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"}))
                };
                state.attempts.push(status);
                Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(answer.to_string()))
                    .unwrap()
            }
        });
        Self { server: Server::start(app).await, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn messages(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().messages.clone()
    }
}
