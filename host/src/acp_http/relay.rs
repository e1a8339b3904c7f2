//! A session's events, carried to one ACP connection: the bridge's event bus (the same one the
//! REST `/session/{id}/events` stream reads) turned back into ACP messages.
//!
//! - `session_update` -> a `session/update` notification, as the agent sent it (the bridge's
//!   echo of this connection's own prompt is left out; one from a REST client is relayed).
//! - `permission_request` -> a `session/request_permission` request to the client; its answer is
//!   a vote, so the first responder wins across ACP and REST clients. When another client
//!   decides first, the request is dropped, which sends the client `$/cancel_request`.
//! - `turn_complete` / `turn_error` / a queued prompt's `prompt_cancelled` -> the answer of the
//!   `session/prompt` this connection is waiting on.
//!
//! The relay is one bus subscriber with the bus's bounded queue: if it falls behind it is evicted
//! and resubscribes from the last event it handled, so the ring's replay fills the gap.

use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Client, UntypedMessage};

use super::rpc;
use crate::bridge::Session;
use crate::bridge::events::{Next, Subscription};
use crate::error::ApiError;

/// How long `session/load` waits for the replay to be handed to the transport.
const REPLAY_DEADLINE: Duration = Duration::from_secs(10);

pub enum TurnEnd {
    Stopped(String),
    Failed(agent_client_protocol::Error),
}

pub struct Relay {
    session: Arc<Session>,
    client_id: String,
    waiters: Mutex<HashMap<String, oneshot::Sender<TurnEnd>>>,
    /// Permission requests sent to the client and not answered yet, by bridge request id.
    asks: Mutex<HashMap<String, AbortHandle>>,
    task: Mutex<Option<AbortHandle>>,
    live: AtomicBool,
    replayed: watch::Sender<bool>,
}

impl Relay {
    /// Subscribes now (so nothing published after this call is missed) and relays in a task.
    pub fn start(
        cx: ConnectionTo<Client>,
        session: Arc<Session>,
        client_id: String,
        replay_from: Option<u64>,
    ) -> Result<Arc<Self>, ApiError> {
        let sub = session.bus.subscribe(replay_from, None)?;
        let relay = Arc::new(Self {
            session,
            client_id,
            waiters: Mutex::new(HashMap::new()),
            asks: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
            live: AtomicBool::new(true),
            replayed: watch::channel(false).0,
        });
        let task = tokio::spawn(relay.clone().run(cx, sub));
        *relay.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(relay)
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        self.live.store(false, Ordering::Release);
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        for (_, a) in self.asks.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            a.abort();
        }
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Resolves when the replay the relay started with has been handed to the transport.
    pub async fn replayed(&self) {
        let mut rx = self.replayed.subscribe();
        let _ = tokio::time::timeout(REPLAY_DEADLINE, rx.wait_for(|done| *done)).await;
    }

    /// The end of prompt `prompt_id`'s turn. Register before admitting the prompt.
    pub fn await_turn(
        &self,
        prompt_id: &str,
    ) -> impl std::future::Future<Output = Result<TurnEnd, ApiError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prompt_id.to_string(), tx);
        let session = self.session.id.clone();
        async move {
            rx.await.map_err(|_| {
                ApiError::new(
                    410,
                    "session_closed",
                    "The session closed before the turn ended",
                )
                .with("sessionId", session)
            })
        }
    }

    /// A prompt that was not admitted: nothing will end it.
    pub fn forget(&self, prompt_id: &str) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prompt_id);
    }

    async fn run(self: Arc<Self>, cx: ConnectionTo<Client>, mut sub: Subscription) {
        let mut last = 0u64;
        'subscribed: loop {
            for frame in std::mem::take(&mut sub.preface) {
                if !self.handle(&cx, &frame, &mut last) {
                    break 'subscribed;
                }
            }
            self.replayed.send_replace(true);
            loop {
                match sub.next().await {
                    Next::Frame(frame) => {
                        if !self.handle(&cx, &frame, &mut last) {
                            break 'subscribed;
                        }
                    }
                    Next::Evicted(_) => {
                        tracing::debug!(session.id = %self.session.id, last, "relay fell behind; resubscribing");
                        match self
                            .session
                            .bus
                            .subscribe(Some(last), Some(self.session.bus.epoch()))
                        {
                            Ok(s) => {
                                sub = s;
                                continue 'subscribed;
                            }
                            Err(_) => break 'subscribed,
                        }
                    }
                    Next::Closed => break 'subscribed,
                }
            }
        }
        self.live.store(false, Ordering::Release);
        // Prompts still waiting learn that the session is gone (their senders drop).
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Relays one bus frame; false once the connection is gone or the session ended.
    fn handle(self: &Arc<Self>, cx: &ConnectionTo<Client>, frame: &Bytes, last: &mut u64) -> bool {
        let Some((id, env)) = parse_frame(frame) else {
            return true;
        };
        if let Some(id) = id {
            *last = id;
        }
        let data = &env["data"];
        let originator = env.get("originatorClientId").and_then(Value::as_str);
        match env["type"].as_str().unwrap_or_default() {
            "session_update" => {
                let own_echo = originator == Some(self.client_id.as_str())
                    && data.pointer("/update/_meta/source") == Some(&json!("bridge-echo"));
                if own_echo {
                    return true;
                }
                let Ok(n) = UntypedMessage::new("session/update", data.clone()) else {
                    return true;
                };
                cx.send_notification(n).is_ok()
            }
            "permission_request" => {
                self.ask(cx, data);
                true
            }
            "permission_resolved" => {
                if let Some(rid) = data.get("requestId").and_then(Value::as_str)
                    && let Some(a) = self
                        .asks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(rid)
                {
                    a.abort();
                }
                true
            }
            kind @ ("turn_complete" | "turn_error" | "prompt_cancelled") => {
                let Some(pid) = env.get("promptId").and_then(Value::as_str) else {
                    return true;
                };
                let end = match kind {
                    "turn_complete" => TurnEnd::Stopped(
                        data["stopReason"]
                            .as_str()
                            .unwrap_or("end_turn")
                            .to_string(),
                    ),
                    "turn_error" => TurnEnd::Failed(rpc::from_turn_error(data)),
                    // A running prompt's cancel ends its turn (`turn_complete`, cancelled); a
                    // queued one never runs.
                    _ if data["state"] == "queued" => TurnEnd::Stopped("cancelled".into()),
                    _ => return true,
                };
                if let Some(w) = self
                    .waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(pid)
                {
                    let _ = w.send(end);
                }
                true
            }
            "session_closed" | "session_died" => false,
            _ => true,
        }
    }

    /// Asks the client; its answer is this connection's vote.
    fn ask(self: &Arc<Self>, cx: &ConnectionTo<Client>, data: &Value) {
        let Some(rid) = data.get("requestId").and_then(Value::as_str) else {
            return;
        };
        // Replayed history names requests long decided: only a pending one is asked.
        if !self.session.has_pending_permission(rid) {
            return;
        }
        let params = json!({"sessionId": self.session.id, "toolCall": data["toolCall"], "options": data["options"]});
        let Ok(req) = UntypedMessage::new("session/request_permission", params) else {
            return;
        };
        let sent = cx.send_request(req);
        let me = self.clone();
        let rid = rid.to_string();
        let key = rid.clone();
        let mut asks = self.asks.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(async move {
            let answer = sent.block_task().await;
            me.asks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&rid);
            match answer {
                Ok(v) => {
                    let outcome = v.get("outcome").cloned().unwrap_or(Value::Null);
                    if let Err(e) = me.session.vote(&rid, &outcome, Some(&me.client_id)) {
                        // Another client decided first, or the answer named no offered option.
                        tracing::debug!(request.id = %rid, code = e.code, "ACP client's permission answer not taken");
                    }
                }
                Err(e) => {
                    tracing::debug!(request.id = %rid, "ACP client did not answer the permission request: {}", e.message);
                }
            }
        });
        asks.insert(key, task.abort_handle());
    }
}

/// `(id, envelope)` of an SSE frame the bus built (`id:` absent on synthetic frames).
fn parse_frame(frame: &[u8]) -> Option<(Option<u64>, Value)> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut id = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).ok();
        }
    }
    Some((id, data?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_and_without_ids() {
        let (id, env) =
            parse_frame(b"id: 7\nevent: x\ndata: {\"type\":\"x\",\"data\":{}}\n\n").unwrap();
        assert_eq!(id, Some(7));
        assert_eq!(env["type"], "x");
        let (id, _) = parse_frame(&crate::bridge::events::synthetic("y", json!({}))).unwrap();
        assert_eq!(id, None);
        assert!(parse_frame(b"event: x\n\n").is_none());
    }
}
