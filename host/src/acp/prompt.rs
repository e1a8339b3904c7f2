//! A turn's `session/prompt`, written to the agent by the task that starts the turn (see
//! `outbox`) rather than through the ACP crate's connection task, and its answer.
//!
//! The request carries an id of ours (`acpd-prompt-<n>`; the crate's own ids are UUIDs). Its
//! answer must reach the turn only after every `session/update` the agent wrote before it has
//! been routed, or a turn would end before its last chunks. The crate dispatches incoming
//! messages in order on one task, so the reader hands it our answers as a notification of our
//! own (`acpd/prompt_answer`) in their place in the stream, and the notification handler
//! completes the waiting turn.

use agent_client_protocol::v1::schema::{PromptRequest, PromptResponse};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

use super::PromptError;

const ID_PREFIX: &str = "acpd-prompt-";
/// The method the reader gives an answer to one of our requests. Not an ACP method: it only
/// exists between the reader and the dispatch loop. An agent that sends it itself can only
/// answer its own prompts, which it can do anyway.
pub(crate) const ANSWER_METHOD: &str = "acpd/prompt_answer";

/// Requests sent, not yet answered; an entry leaves when its answer arrives or its turn drops
/// the call (one per running turn at most).
#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<Value>>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new request's id and the receiver of its answer.
    pub(crate) fn open(&self) -> (u64, oneshot::Receiver<Value>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.next += 1;
        let n = inner.next;
        inner.waiting.insert(n, tx);
        (n, rx)
    }

    /// True when the request was still waiting for its answer.
    pub(crate) fn forget(&self, n: u64) -> bool {
        self.lock().waiting.remove(&n).is_some()
    }

    /// An answer, as the reader rerouted it (the whole JSON-RPC response).
    pub(crate) fn answer(&self, response: Value) {
        let n = response
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix(ID_PREFIX))
            .and_then(|n| n.parse::<u64>().ok());
        let tx = n.and_then(|n| self.lock().waiting.remove(&n));
        match tx {
            Some(tx) => {
                let _ = tx.send(response);
            }
            None => tracing::debug!("an answer to no waiting session/prompt dropped"),
        }
    }
}

/// A JSON-RPC message as one line: a request when it has an `id`, else a notification.
#[derive(Serialize)]
struct Message<'a, P> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    method: &'a str,
    params: &'a P,
}

/// A notification's line (`session/cancel`, `$/cancel_request`).
pub(crate) fn notification_line(
    method: &str,
    params: &impl Serialize,
) -> serde_json::Result<String> {
    serde_json::to_string(&Message {
        jsonrpc: "2.0",
        id: None,
        method,
        params,
    })
}

/// The request's line.
pub(crate) fn request_line(n: u64, req: &PromptRequest) -> serde_json::Result<String> {
    serde_json::to_string(&Message {
        jsonrpc: "2.0",
        id: Some(format!("{ID_PREFIX}{n}")),
        method: "session/prompt",
        params: req,
    })
}

/// `$/cancel_request` for a request the turn no longer waits for.
pub(crate) fn cancel_line(n: u64) -> serde_json::Result<String> {
    notification_line(
        "$/cancel_request",
        &serde_json::json!({"requestId": format!("{ID_PREFIX}{n}")}),
    )
}

/// One line from the agent, as the crate should see it: an answer to one of our requests
/// becomes an `acpd/prompt_answer` notification; anything else passes unchanged. Only lines
/// that mention our id prefix are parsed here.
pub(crate) fn reroute_answer(line: String) -> String {
    if !line.contains(ID_PREFIX) {
        return line;
    }
    let Ok(v) = serde_json::from_str::<Value>(&line) else {
        return line;
    };
    let ours = v.get("method").is_none()
        && v.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with(ID_PREFIX));
    if !ours {
        return line;
    }
    // The line is a JSON object (just parsed): it becomes the params as written.
    format!(r#"{{"jsonrpc":"2.0","method":"{ANSWER_METHOD}","params":{line}}}"#)
}

/// The turn's stop reason from the agent's answer, or its error, as the crate would have
/// reported them (an answer that is not a `PromptResponse` is a parse error).
pub(crate) fn outcome(mut response: Value) -> Result<String, PromptError> {
    if let Some(e) = response.get_mut("error").map(Value::take) {
        let e = serde_json::from_value::<agent_client_protocol::Error>(e)
            .unwrap_or_else(|_| agent_client_protocol::Error::internal_error());
        return Err(PromptError::Rpc {
            code: i32::from(e.code),
            message: super::rpc_text(&e),
        });
    }
    let result = response.get_mut("result").map_or(Value::Null, Value::take);
    match serde_json::from_value::<PromptResponse>(result) {
        Ok(r) => Ok(serde_json::to_value(r.stop_reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "end_turn".into())),
        Err(_) => {
            let e = agent_client_protocol::Error::parse_error();
            Err(PromptError::Rpc {
                code: i32::from(e.code),
                message: super::rpc_text(&e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client_protocol::v1::schema::{ContentBlock, SessionId};
    use serde_json::json;

    #[test]
    fn the_request_is_a_json_rpc_call_with_our_id() {
        let req = PromptRequest::new(SessionId::new("s1"), vec![ContentBlock::from("hi")]);
        let v: Value = serde_json::from_str(&request_line(7, &req).unwrap()).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], "acpd-prompt-7");
        assert_eq!(v["method"], "session/prompt");
        assert_eq!(v["params"], serde_json::to_value(&req).unwrap());
    }

    #[test]
    fn only_answers_to_our_requests_are_rerouted() {
        let answer = r#"{"jsonrpc":"2.0","id":"acpd-prompt-3","result":{"stopReason":"end_turn"}}"#;
        let v: Value = serde_json::from_str(&reroute_answer(answer.into())).unwrap();
        assert_eq!(v["method"], ANSWER_METHOD);
        assert_eq!(v["params"]["id"], "acpd-prompt-3");
        // The crate's own ids, an update that quotes our prefix, a request of the agent's
        // with an id like ours, and a line that is not JSON pass unchanged.
        for line in [
            r#"{"jsonrpc":"2.0","id":"0b1c-uuid","result":{}}"#,
            r#"{"jsonrpc":"2.0","method":"session/update","params":{"text":"acpd-prompt-3"}}"#,
            r#"{"jsonrpc":"2.0","id":"acpd-prompt-3","method":"fs/read_text_file","params":{}}"#,
            r#"not json acpd-prompt-3"#,
        ] {
            assert_eq!(reroute_answer(line.into()), line);
        }
    }

    #[test]
    fn an_answer_reaches_its_waiter_once() {
        let p = Pending::default();
        let (n, mut rx) = p.open();
        let (m, mut other) = p.open();
        assert_ne!(n, m);
        p.answer(json!({"id": format!("acpd-prompt-{n}"), "result": {"stopReason": "cancelled"}}));
        // A repeated or unknown answer is dropped.
        p.answer(json!({"id": format!("acpd-prompt-{n}"), "result": {}}));
        p.answer(json!({"id": "acpd-prompt-999", "result": {}}));
        let got = rx.try_recv().unwrap();
        assert_eq!(outcome(got).unwrap(), "cancelled");
        assert!(
            other.try_recv().is_err(),
            "the other request is still waiting"
        );
        assert!(p.forget(m), "it was waiting");
        assert!(!p.forget(n), "answered: nothing to cancel");
        assert!(p.lock().waiting.is_empty());
        let c: Value = serde_json::from_str(&cancel_line(m).unwrap()).unwrap();
        assert_eq!(c["method"], "$/cancel_request");
        assert!(c.get("id").is_none(), "a notification has no id: {c}");
        assert_eq!(c["params"]["requestId"], format!("acpd-prompt-{m}"));
    }

    #[test]
    fn errors_and_bad_answers_are_rpc_errors() {
        match outcome(json!({"id": "x", "error": {"code": -32000, "message": "quota"}})) {
            Err(PromptError::Rpc { code, message }) => {
                assert_eq!(code, -32000);
                assert!(message.contains("quota"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match outcome(json!({"id": "x", "result": {"stopReason": 5}})) {
            Err(PromptError::Rpc { code, .. }) => assert_eq!(code, -32700),
            other => panic!("{other:?}"),
        }
    }
}
